//! `faceall inspect MODEL`: a frozen TF graph (what faceall can and cannot
//! read of it) or a converted model of any format in the formats table.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use faceall::error::Error;
use faceall::frontend::tf;
use serde::Serialize;

#[derive(clap::Args)]
pub struct Args {
    /// TensorFlow model (frozen GraphDef .pb, SavedModel directory, model.meta
    /// with its checkpoint), or a converted model (NAME.graph.json,
    /// NAME.onnx, NAME.prototxt, NAME.mlmodel)
    model: PathBuf,
    #[command(flatten)]
    source: super::SourceArgs,
    /// Shape for an input the graph leaves unknown: NAME=D0,D1,... (repeatable)
    #[arg(long = "input-shape", value_parser = super::parse_input_shape)]
    input_shape: Vec<(String, Vec<usize>)>,
    /// Output tensor names (default: nodes nobody consumes)
    #[arg(long = "output")]
    output: Vec<String>,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Value {
    name: String,
    dtype: &'static str,
    shape: Vec<usize>,
}

#[derive(Serialize)]
struct UnsupportedNode {
    node: String,
    op: String,
    reason: String,
}

#[derive(Serialize)]
struct Report {
    file: String,
    file_bytes: u64,
    /// frozen GraphDef, TF1/TF2 SavedModel (tags, signature), or meta graph + checkpoint.
    form: String,
    /// Variables whose values came from a checkpoint.
    variables: usize,
    /// Nodes of the graph as read (for a SavedModel or checkpoint: after
    /// inlining its functions and keeping what the outputs need).
    nodes: usize,
    /// TensorFlow op types as found in the file.
    ops: BTreeMap<String, usize>,
    /// The op types of `ops` faceall does not read (its op registry).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unsupported_ops: Vec<String>,
    inputs: Vec<Value>,
    outputs: Vec<Value>,
    parameters: usize,
    /// Multiply-adds of Conv2D/MatMul counted as two, plus elementwise work.
    flops: u64,
    unsupported: Vec<UnsupportedNode>,
}

pub fn run(a: Args) -> Result<ExitCode> {
    if let Some(format) = faceall::formats::by_path(&a.model) {
        return converted(a, format);
    }
    let mut src = a.source.options();
    src.outputs = a.output.clone();
    let model = tf::read_model(&a.model, &src)?;
    let mut ops = BTreeMap::new();
    for n in &model.graph_def.node {
        *ops.entry(n.op.clone()).or_insert(0) += 1;
    }
    let opts = tf::LoadOptions {
        input_shapes: a.input_shape.into_iter().collect(),
        outputs: a.output,
        source: src,
    };
    let unsupported_ops = ops
        .keys()
        .filter(|op| !tf::ops::is_supported(op))
        .cloned()
        .collect();
    let mut report = Report {
        file: a.model.display().to_string(),
        file_bytes: model.file_size,
        form: model.form.describe(),
        variables: model.variables,
        nodes: model.graph_def.node.len(),
        ops,
        unsupported_ops,
        inputs: vec![],
        outputs: vec![],
        parameters: 0,
        flops: 0,
        unsupported: vec![],
    };
    match tf::import_model(&model, &opts) {
        Ok(g) => {
            let value = |w: faceall::ir::Wire| -> Result<Value> {
                let f = g.fact(w)?;
                Ok(Value {
                    name: g.wire_name(w),
                    dtype: f.dtype.name(),
                    shape: f.shape.clone(),
                })
            };
            report.inputs = g
                .inputs
                .iter()
                .map(|&i| value(faceall::ir::Wire { node: i, slot: 0 }))
                .collect::<Result<_>>()?;
            report.outputs = g.outputs.iter().map(|&w| value(w)).collect::<Result<_>>()?;
            let s = g.stats();
            report.parameters = s.params;
            report.flops = s.flops;
        }
        Err(Error::Unsupported(list)) => {
            report.unsupported = list
                .into_iter()
                .map(|u| UnsupportedNode {
                    node: u.node,
                    op: u.op,
                    reason: u.reason,
                })
                .collect();
        }
        Err(e) => return Err(e.in_file(&a.model).into()),
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    if report.unsupported.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        let list: Vec<String> = report
            .unsupported
            .iter()
            .map(|u| format!("node '{}' ({}): {}", u.node, u.op, u.reason))
            .collect();
        eprintln!(
            "error: {}: {} unsupported node(s): {}",
            report.file,
            list.len(),
            list.join("; ")
        );
        Ok(ExitCode::from(1))
    }
}

fn print_text(r: &Report) {
    println!(
        "model:      {} ({:.1} MB)",
        r.file,
        r.file_bytes as f64 / 1e6
    );
    println!("form:       {}", r.form);
    if r.variables > 0 {
        println!("variables:  {} (from the checkpoint)", r.variables);
    }
    println!("nodes:      {}", r.nodes);
    for v in &r.inputs {
        println!("input:      {} {} {:?}", v.name, v.dtype, v.shape);
    }
    for v in &r.outputs {
        println!("output:     {} {} {:?}", v.name, v.dtype, v.shape);
    }
    // Parameters and FLOPs are counted on a graph; a Caffe or Core ML file
    // is summarised by its inputs and the TF tensors it holds only.
    if r.unsupported.is_empty() && !r.ops.is_empty() {
        println!(
            "parameters: {} ({:.2} M)",
            r.parameters,
            r.parameters as f64 / 1e6
        );
        println!(
            "FLOPs:      {} ({:.2} G per run)",
            r.flops,
            r.flops as f64 / 1e9
        );
    }
    println!("ops:");
    let mut ops: Vec<_> = r.ops.iter().collect();
    ops.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (op, n) in ops {
        let mark = if r.unsupported_ops.contains(op) {
            "  (not supported)"
        } else {
            ""
        };
        println!("  {op:<24} {n}{mark}");
    }
    if !r.unsupported.is_empty() {
        println!("unsupported ({}):", r.unsupported.len());
        for u in &r.unsupported {
            println!("  {} ({}): {}", u.node, u.op, u.reason);
        }
    }
}

/// `inspect` of a converted model: the formats that read back into the IR
/// (bundle, ONNX) are summarised as faceall loads them; the others by their
/// inputs and the TF tensors they hold.
fn converted(a: Args, format: &dyn faceall::formats::Format) -> Result<ExitCode> {
    let files = faceall::formats::companions(format, &a.model);
    let t0 = std::time::Instant::now();
    let file_bytes = files.iter().map(|f| bytes_under(f)).sum();
    let report = match format.read_graph(&files) {
        Some(g) => {
            let g = g?;
            let value = |w: faceall::ir::Wire| -> Result<Value> {
                let f = g.fact(w)?;
                Ok(Value {
                    name: g.wire_name(w),
                    dtype: f.dtype.name(),
                    shape: f.shape.clone(),
                })
            };
            let s = g.stats();
            Report {
                file: a.model.display().to_string(),
                file_bytes,
                form: format!("converted model ({})", format.name()),
                variables: 0,
                nodes: s.nodes,
                ops: s.ops,
                unsupported_ops: vec![],
                inputs: g
                    .inputs
                    .iter()
                    .map(|&i| value(faceall::ir::Wire { node: i, slot: 0 }))
                    .collect::<Result<_>>()?,
                outputs: g.outputs.iter().map(|&w| value(w)).collect::<Result<_>>()?,
                parameters: s.params,
                flops: s.flops,
                unsupported: vec![],
            }
        }
        None => {
            let exec = format.open(&files)?;
            let held = exec.computes();
            Report {
                file: a.model.display().to_string(),
                file_bytes,
                form: format!("converted model ({})", format.name()),
                variables: 0,
                nodes: held.len(),
                ops: BTreeMap::new(),
                unsupported_ops: vec![],
                inputs: exec
                    .inputs()
                    .into_iter()
                    .map(|(name, shape)| Value {
                        name,
                        dtype: "f32",
                        shape,
                    })
                    .collect(),
                outputs: vec![],
                parameters: 0,
                flops: 0,
                unsupported: vec![],
            }
        }
    };
    let secs = t0.elapsed().as_secs_f64();
    if a.json {
        super::print_stdout(&(serde_json::to_string_pretty(&report)? + "\n"));
    } else {
        print_text(&report);
        println!(
            "loaded the {} model in {:.1} ms",
            format.name(),
            secs * 1000.0
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A file's size, or the total of the files under a directory (a package).
fn bytes_under(p: &std::path::Path) -> u64 {
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => std::fs::read_dir(p)
            .map(|r| r.flatten().map(|e| bytes_under(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}
