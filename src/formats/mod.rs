//! The model formats faceall writes and reads, one folder each: the
//! writer (IR after the passes -> the format's files), the reader and
//! executor verify-parity and bench run, and the mapping between the
//! format's layouts and TensorFlow's.
//!
//! Every format implements [`Format`], and [`FORMATS`] is the one table
//! convert-tf, verify-parity, bench and inspect iterate: adding a format is
//! one folder and one line here.

pub mod bundle;
pub mod caffe;
pub mod coreml;
pub mod files;
pub mod graph_exec;
pub mod layout;
pub mod mlprogram;
pub mod onnx;
pub mod splice;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result, Unsupported};
use crate::ir::{Graph, Tensor};

/// What a writer needs besides the graph. Options that belong to one
/// format are read by that format only.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// Base name of the written files (`NAME.onnx`, ...).
    pub name: String,
    /// The source graph's file name and SHA-256 (metadata of the formats
    /// that carry it).
    pub source: bundle::write::Source,
    /// Core ML: metadata and float16 weights.
    pub coreml: coreml::write::CoremlOptions,
    /// Caffe, testing only: deliberate mistakes.
    pub caffe_faults: Vec<caffe::write::Fault>,
    /// ONNX: weights in `NAME.onnx.data` even under protobuf's 2 GB.
    pub onnx_external_data: bool,
    /// ML Program: the deployment target (precision and metadata are
    /// `coreml`'s).
    pub mlprogram: mlprogram::write::MlProgramOptions,
}

/// How one IR node was written (a line of convert-tf's report).
#[derive(Debug, Clone, Serialize)]
pub struct LayerNote {
    pub node: String,
    pub op: String,
    pub layers: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// What a writer reports: its size in the format's own units, the IR nodes
/// that took more than one layer (or none), and the format's own fields of
/// convert-tf's JSON report (merged into it under their names).
#[derive(Debug, Clone, Default)]
pub struct Written {
    pub layers: usize,
    pub notes: Vec<LayerNote>,
    pub report: serde_json::Map<String, serde_json::Value>,
}

/// One model format: what convert-tf writes and verify-parity and bench
/// open.
pub trait Format: Sync {
    /// The `--to` name.
    fn name(&self) -> &'static str;
    /// What one unit of the written model is called in reports ("layers").
    fn unit(&self) -> &'static str {
        "layers"
    }
    /// The suffixes of the files written for NAME, the main one first
    /// (".prototxt", ".caffemodel").
    fn extensions(&self) -> &'static [&'static str];
    /// Whether a 4-D output is returned channel-first (NCHW) rather than in
    /// TF's NHWC: the format's convention (Caffe, Core ML). Every other
    /// output is returned in TF's element order by every format.
    fn channel_first_outputs(&self) -> bool {
        false
    }
    /// Whether the writer reads the source graph's SHA-256.
    fn needs_source_hash(&self) -> bool {
        false
    }
    /// Write the graph (after the passes) as `NAME + extension` files.
    fn write(&self, g: &Graph, opts: &WriteOptions, out: &mut files::Staging) -> Result<Written>;
    /// Open written files (one per extension, in that order) to run them.
    fn open(&self, files: &[PathBuf]) -> Result<Box<dyn Executor>>;
    /// The files read back into faceall's IR, for the formats that map onto
    /// it one to one (inspect summarises that graph).
    fn read_graph(&self, _files: &[PathBuf]) -> Option<Result<Graph>> {
        None
    }
}

/// A converted model run with its format's semantics, seen through TF's
/// names and layouts.
pub trait Executor {
    /// The model's inputs by TF name, with their shapes in TF's layout
    /// (batch 1 for a model that runs one sample at a time).
    fn inputs(&self) -> Vec<(String, Vec<usize>)>;
    /// Check the model's inputs against the TF graph's (name, NHWC shape):
    /// a `Mismatch` error says the files do not belong together.
    fn check_inputs(&self, tf_inputs: &[(String, Vec<usize>)]) -> Result<()>;
    /// The TF tensors whose values the model holds, by TF name.
    fn computes(&self) -> Vec<String>;
    /// Run on inputs in TF's layout: the values of the tensors in `want`
    /// (TF name -> TF shape) that the model computed, in TF's layout.
    fn run(
        &self,
        feeds: &HashMap<String, Tensor>,
        want: &HashMap<String, Vec<usize>>,
    ) -> Result<Run>;
}

/// What one run of a converted model gave.
#[derive(Debug, Default)]
pub struct Run {
    /// By TF name: the value in TF's layout, or why the model's value
    /// cannot be read as the TF tensor (shape, layout).
    pub values: HashMap<String, std::result::Result<Tensor, String>>,
    /// The layer whose failure stopped the run, if one did (values computed
    /// before it are kept).
    pub failure: Option<String>,
    /// The model's declared outputs, in its order, exactly as its user
    /// reads them (no layout mapping): verify-parity compares these with
    /// TF's outputs element for element.
    pub outputs: Vec<RawOutput>,
}

/// One declared output of a converted model, as the model returns it.
#[derive(Debug, Clone)]
pub struct RawOutput {
    /// The output's name in the model.
    pub name: String,
    /// The value; a model that runs one sample at a time returns the
    /// samples stacked on a new leading axis.
    pub value: Tensor,
    /// The format's convention puts a 4-D output channel-first (NCHW, or
    /// (C, H, W) per sample) where TF's is NHWC.
    pub channel_first: bool,
}

/// Check a model's declared inputs (name, shape in the format's layout)
/// against the TF graph's (name, NHWC shape); `to_format` maps a TF shape
/// to the format's, `layout` says how ("in NCHW", "per sample").
pub fn check_declared_inputs(
    file: &Path,
    declared: &[(String, Vec<usize>)],
    tf_inputs: &[(String, Vec<usize>)],
    to_format: impl Fn(&[usize]) -> Vec<usize>,
    layout: &str,
) -> Result<()> {
    for (name, shape) in declared {
        let Some((_, tf)) = tf_inputs.iter().find(|(n, _)| n == name) else {
            return Err(Error::Mismatch(format!(
                "{}: input '{name}' is not an input of the TF graph",
                file.display()
            )));
        };
        let want = to_format(tf);
        // An input declared in TF's own shape (Caffe) or sample shape
        // (Core ML) is channel-first in TF already and is fed as it is.
        if shape != &want && shape != tf && Some(shape.as_slice()) != tf.get(1..) {
            let how = if &want == tf {
                String::new()
            } else {
                format!(" ({want:?} {layout})")
            };
            return Err(Error::Mismatch(format!(
                "{}: input '{name}' is {shape:?}, the TF graph's is {tf:?}{how}: these files do not belong together",
                file.display()
            )));
        }
    }
    Ok(())
}

/// Every format faceall writes, in the order convert-tf writes them.
pub static FORMATS: &[&dyn Format] = &[
    &caffe::Caffe,
    &coreml::Coreml,
    &bundle::Bundle,
    &onnx::Onnx,
    &mlprogram::MlProgram,
];

/// The format called `name` (`--to`; "safetensors" is the bundle).
pub fn by_name(name: &str) -> Option<&'static dyn Format> {
    FORMATS.iter().copied().find(|f| f.name() == name)
}

/// The format whose main file `path` is, by its suffix.
pub fn by_path(path: &Path) -> Option<&'static dyn Format> {
    let s = path.to_string_lossy();
    let s = s.trim_end_matches('/');
    FORMATS
        .iter()
        .copied()
        .find(|f| f.extensions().first().is_some_and(|e| s.ends_with(e)))
}

/// The files of the model whose main file is `main`: the companions sit
/// beside it with the other suffixes (NAME.caffemodel for NAME.prototxt).
pub fn companions(format: &dyn Format, main: &Path) -> Vec<PathBuf> {
    let s = main.to_string_lossy();
    let exts = format.extensions();
    let stem = exts
        .first()
        .and_then(|e| s.strip_suffix(e))
        .unwrap_or(&s)
        .to_string();
    exts.iter()
        .enumerate()
        .map(|(i, e)| {
            if i == 0 {
                main.to_path_buf()
            } else {
                PathBuf::from(format!("{stem}{e}"))
            }
        })
        .collect()
}

/// The names `--to` accepts, for messages.
pub fn names() -> String {
    FORMATS
        .iter()
        .map(|f| f.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Visit, in graph order, every node the outputs need; `emit_node` returns
/// why a node has no form in the target. A node fed by a node that failed is
/// not reported again, and every failure is reported at once.
pub fn walk_needed(
    g: &Graph,
    target: &str,
    mut emit_node: impl FnMut(usize) -> std::result::Result<(), String>,
) -> Result<()> {
    let mut needed = vec![false; g.nodes.len()];
    let mut stack: Vec<usize> = g.outputs.iter().map(|w| w.node).collect();
    while let Some(i) = stack.pop() {
        if !std::mem::replace(&mut needed[i], true) {
            stack.extend(g.nodes[i].inputs.iter().map(|w| w.node));
        }
    }
    let mut failed = HashSet::new();
    let mut unsupported = vec![];
    for (i, node) in g.nodes.iter().enumerate() {
        if !needed[i] {
            continue;
        }
        if node.inputs.iter().any(|w| failed.contains(&w.node)) {
            failed.insert(i);
            continue;
        }
        if let Err(reason) = emit_node(i) {
            failed.insert(i);
            unsupported.push(Unsupported {
                node: node.name.clone(),
                op: node.source_op.clone(),
                reason: format!("no {target} form: {reason}"),
            });
        }
    }
    if unsupported.is_empty() {
        Ok(())
    } else {
        Err(Error::Unsupported(unsupported))
    }
}

/// A fixture's graph after the default passes, as the writers get it
/// (their unit tests).
#[cfg(test)]
pub(crate) fn fixture_graph(case: &str) -> Graph {
    let model = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(case)
        .join("model.pb");
    let mut g = crate::frontend::tf::load(&model, &Default::default()).unwrap();
    crate::passes::run(&mut g, &Default::default()).unwrap();
    g
}
