//! `faceall convert-tf MODEL.pb --to caffe --out-dir DIR`

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use faceall::formats;
use faceall::frontend::tf;
use faceall::passes::{self, PassOptions};
use serde::Serialize;
use sha2::Digest;

#[derive(clap::Args)]
#[command(after_help = super::passes_help())]
pub struct Args {
    /// TensorFlow model: a frozen GraphDef (.pb), a SavedModel directory
    /// (TF1 or TF2), or a TF1 meta graph (model.meta) with its checkpoint
    model: PathBuf,
    #[command(flatten)]
    source: super::SourceArgs,
    /// Target formats, comma-separated: caffe, coreml (NeuralNetwork .mlmodel),
    /// safetensors, onnx, mlprogram (Core ML ML Program .mlpackage)
    #[arg(long, value_delimiter = ',', required = true)]
    to: Vec<String>,
    /// Directory for the written files (created, as `mkdir -p` would, if missing)
    #[arg(long = "out-dir")]
    out_dir: PathBuf,
    /// Base name of the written files (default: the model file's stem)
    #[arg(long)]
    name: Option<String>,
    /// Input names, comma-separated or repeated (default: every Placeholder)
    #[arg(long = "input", value_delimiter = ',')]
    input: Vec<String>,
    /// Output tensor names, comma-separated or repeated (default: nodes
    /// nobody consumes)
    #[arg(long = "output", value_delimiter = ',')]
    output: Vec<String>,
    /// Shape for an input the graph leaves unknown: NAME=D0,D1,... (repeatable)
    #[arg(long = "input-shape", value_parser = super::parse_input_shape)]
    input_shape: Vec<(String, Vec<usize>)>,
    /// Switch a pass off (repeatable); the passes are listed below
    #[arg(long = "no-pass", value_parser = super::pass_name)]
    no_pass: Vec<String>,
    /// Same as --no-pass fold_batch_norm
    #[arg(long = "no-fold-bn")]
    no_fold_bn: bool,
    /// ONNX: keep the weights in NAME.onnx.data (external data) even under
    /// 2 GB; above it they always are
    #[arg(long = "onnx-external-data")]
    onnx_external_data: bool,
    /// Core ML: store weights as float16 (the parity reached is reported by
    /// verify-parity); an ML Program also computes in float16
    #[arg(long)]
    fp16: bool,
    /// ML Program: the oldest OS it runs on (its specification version and
    /// MIL opset)
    #[arg(
        long = "minimum-deployment-target",
        value_enum,
        default_value = "iOS15"
    )]
    minimum_deployment_target: formats::mlprogram::write::Target,
    /// Core ML metadata: short description
    #[arg(long)]
    description: Option<String>,
    /// Core ML metadata: author
    #[arg(long)]
    author: Option<String>,
    /// Core ML metadata: version string
    #[arg(long = "model-version")]
    model_version: Option<String>,
    /// Core ML metadata: license
    #[arg(long)]
    license: Option<String>,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
    /// Print nothing but errors (the exit code says how it went)
    #[arg(long, short, conflicts_with = "json")]
    quiet: bool,
    /// Testing only: write a Caffe model with a deliberate mistake (repeatable)
    #[arg(long = "inject-fault", hide = true)]
    inject_fault: Vec<formats::caffe::write::Fault>,
    /// List every layer in the text report
    #[arg(long, short)]
    verbose: bool,
}

/// One declared output: TF's shape, and per written format whether the
/// model returns it in TF's element order or channel-first (the format's
/// convention for a 4-D tensor: Caffe, Core ML and ML Programs are NCHW).
#[derive(Serialize)]
struct OutputLayout {
    name: String,
    shape: Vec<usize>,
    /// Format name -> "as TF" or "NCHW (channel-first)".
    layouts: std::collections::BTreeMap<String, String>,
}

#[derive(Serialize)]
struct Report {
    model: String,
    /// What was read: frozen GraphDef, TF1/TF2 SavedModel (tags,
    /// signature), or meta graph + checkpoint.
    form: String,
    /// Variables whose values came from a checkpoint.
    variables: usize,
    files: Vec<String>,
    seconds: f64,
    passes: passes::Report,
    /// Each written format's own fields (caffe_layers, coreml_blobs, ...).
    #[serde(flatten)]
    formats: serde_json::Map<String, serde_json::Value>,
    /// The declared outputs and how each written model returns them.
    outputs: Vec<OutputLayout>,
    #[serde(skip)]
    written: Vec<(&'static str, &'static str, formats::Written)>,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let t0 = Instant::now();
    for t in &a.to {
        if formats::by_name(t).is_none() {
            bail!("--to {t}: supported targets are: {}", formats::names());
        }
    }
    let chosen: Vec<&dyn formats::Format> = formats::FORMATS
        .iter()
        .copied()
        .filter(|f| a.to.iter().any(|t| t == f.name()))
        .collect();
    let opts = tf::LoadOptions {
        input_shapes: a.input_shape.into_iter().collect(),
        outputs: a.output,
        source: a.source.options(),
    };
    let progress = Progress::new(!a.json && !a.quiet);
    progress.stage("reading the graph");
    let model = tf::read_model(&a.model, &tf::source_options(&opts))?;
    // The source's SHA-256 (for the Core ML and bundle metadata) is
    // computed on its own thread while the graph is imported and the
    // passes run. The file is streamed through a small buffer: a second
    // map would count the whole file again in the resident set. A
    // SavedModel or checkpoint: the hash covers its graph, index and
    // shards, in that order.
    let hashing = chosen.iter().any(|f| f.needs_source_hash()).then(|| {
        let files = model.files.clone();
        std::thread::spawn(move || -> Result<String> {
            let mut h = sha2::Sha256::new();
            for file in &files {
                let mut f = std::fs::File::open(file)
                    .with_context(|| format!("{}: opening for its hash", file.display()))?;
                std::io::copy(&mut f, &mut h)
                    .with_context(|| format!("{}: reading for its hash", file.display()))?;
            }
            Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
        })
    });
    let mut graph = tf::import_model(&model, &opts).map_err(|e| e.in_file(&a.model))?;
    if !a.input.is_empty() {
        for name in &a.input {
            let ok = graph
                .node_by_name(name)
                .is_some_and(|i| graph.inputs.contains(&i));
            if !ok {
                bail!(
                    "{}: --input {name}: no such input (Placeholder) in the graph",
                    a.model.display()
                );
            }
        }
    }
    let mut popts = PassOptions::default();
    for p in &a.no_pass {
        popts = popts.without(p);
    }
    if a.no_fold_bn {
        popts = popts.without("fold_batch_norm");
    }
    progress.stage("running the passes");
    let report = passes::run(&mut graph, &popts).map_err(|e| e.in_file(&a.model))?;
    progress.stage("emitting");
    // A SavedModel is named after its directory.
    let named_by = match &model.form {
        tf::ModelForm::SavedModel { dir, .. } => dir.clone(),
        _ => a.model.clone(),
    };
    let name = match a.name {
        Some(n) => n,
        None => named_by
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into()),
    };
    let source = formats::bundle::write::Source {
        name: named_by
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        sha256: String::new(),
    };
    let wopts = formats::WriteOptions {
        name,
        source,
        coreml: formats::coreml::write::CoremlOptions {
            short_description: a.description.clone(),
            author: a.author.clone(),
            version: a.model_version.clone(),
            license: a.license.clone(),
            fp16: a.fp16,
            ..Default::default()
        },
        caffe_faults: a.inject_fault.clone(),
        onnx_external_data: a.onnx_external_data,
        mlprogram: formats::mlprogram::write::MlProgramOptions {
            target: a.minimum_deployment_target,
        },
    };
    std::fs::create_dir_all(&a.out_dir)
        .with_context(|| format!("--out-dir {}: creating it", a.out_dir.display()))?;
    let mut staging =
        formats::files::Staging::new(&a.out_dir).context("writing the converted model")?;
    // The targets are written side by side, each on its own thread into
    // its own staged files (the writers stream their weights a run at a
    // time, so this holds a few runs per target, not a model each): one
    // target's file writes overlap another's weight transposes. Those
    // that put the source's hash in their metadata start once it is done.
    let write_one = |f: &dyn formats::Format,
                     o: &formats::WriteOptions|
     -> faceall::Result<(formats::Written, formats::files::Staging)> {
        let mut st = formats::files::Staging::new(&a.out_dir)?;
        let w = f.write(&graph, o, &mut st)?;
        Ok((w, st))
    };
    let panicked = || {
        Err(faceall::Error::Format(
            "a writer stopped unexpectedly".into(),
        ))
    };
    let mut results: Vec<(usize, faceall::Result<_>)> = std::thread::scope(|s| {
        let early: Vec<_> = chosen
            .iter()
            .enumerate()
            .filter(|(_, f)| !f.needs_source_hash())
            .map(|(i, f)| (i, s.spawn(|| write_one(*f, &wopts))))
            .collect();
        let late_ids: Vec<usize> = (0..chosen.len())
            .filter(|&i| chosen[i].needs_source_hash())
            .collect();
        let (chosen, wopts, write_one) = (&chosen, &wopts, &write_one);
        let late = s.spawn(move || -> Result<Vec<(usize, faceall::Result<_>)>> {
            let sha = match hashing {
                Some(h) => h
                    .join()
                    .map_err(|_| anyhow::anyhow!("hashing the source failed"))??,
                None => String::new(),
            };
            let mut o = wopts.clone();
            o.source.sha256 = sha;
            let o = &o;
            Ok(std::thread::scope(|s2| {
                let hs: Vec<_> = late_ids
                    .iter()
                    .map(|&i| (i, s2.spawn(move || write_one(chosen[i], o))))
                    .collect();
                hs.into_iter()
                    .map(|(i, h)| (i, h.join().unwrap_or_else(|_| panicked())))
                    .collect()
            }))
        });
        let mut all: Vec<(usize, faceall::Result<_>)> = early
            .into_iter()
            .map(|(i, h)| (i, h.join().unwrap_or_else(|_| panicked())))
            .collect();
        match late.join() {
            Ok(r) => all.extend(r?),
            Err(_) => anyhow::bail!("a writer stopped unexpectedly"),
        }
        Ok(all)
    })?;
    results.sort_by_key(|(i, _)| *i);
    let mut fields = serde_json::Map::new();
    let mut written = vec![];
    // A target that cannot express the graph is reported; the others are
    // still written.
    let mut failed = vec![];
    for (i, r) in results {
        let f = chosen[i];
        match r {
            Ok((w, st)) => {
                staging.absorb(st);
                fields.extend(w.report.clone());
                written.push((f.name(), f.unit(), w));
            }
            Err(e @ faceall::Error::Unsupported(_)) if chosen.len() > 1 => {
                failed.push((f.name(), e.in_file(&a.model)));
            }
            Err(e) => return Err(e.in_file(&a.model).into()),
        }
    }
    progress.stage("writing the files");
    let written_files = staging.commit().context("writing the converted model")?;
    drop(progress);
    let outputs = graph
        .outputs
        .iter()
        .map(|w| {
            let shape = graph.fact(*w).map(|f| f.shape.clone()).unwrap_or_default();
            let layouts = written
                .iter()
                .map(|(f, _, _)| {
                    let cf = shape.len() == 4
                        && !formats::layout::is_nchw_transpose(&graph, *w)
                        && formats::by_name(f).is_some_and(|f| f.channel_first_outputs());
                    let how = if cf { "NCHW (channel-first)" } else { "as TF" };
                    (f.to_string(), how.to_string())
                })
                .collect();
            let name = match graph.nodes[w.node].carries() {
                Some(t) if w.slot == 0 => t.to_string(),
                _ => graph.wire_name(*w),
            };
            OutputLayout {
                name,
                shape,
                layouts,
            }
        })
        .collect();
    let r = Report {
        model: a.model.display().to_string(),
        form: model.form.describe(),
        variables: model.variables,
        files: written_files
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        seconds: t0.elapsed().as_secs_f64(),
        passes: report,
        formats: fields,
        outputs,
        written,
    };

    let text = if a.json {
        serde_json::to_string_pretty(&r)? + "\n"
    } else {
        render(&r, a.verbose)
    };
    if !a.quiet {
        super::print_stdout(&text);
    }
    if failed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for (name, e) in &failed {
        eprintln!("error: --to {name}: {e}");
    }
    Ok(ExitCode::FAILURE)
}

fn render(r: &Report, verbose: bool) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "converted {} in {:.0} ms", r.model, r.seconds * 1000.0);
    if r.variables > 0 {
        let _ = writeln!(o, "  read as {}, {} variables", r.form, r.variables);
    }
    for f in &r.files {
        let _ = writeln!(o, "  wrote {f}");
    }
    let p = &r.passes;
    let _ = writeln!(
        o,
        "passes: {} -> {} IR nodes in {} round(s)",
        p.nodes_before, p.nodes_after, p.iterations
    );
    for passes::Pass { name, .. } in passes::PASSES {
        let n = p.count(name);
        if n > 0 {
            let _ = writeln!(o, "  {name:<18} {n} rewrite(s)");
        }
    }
    for (format, unit, w) in &r.written {
        let _ = writeln!(o, "{format}: {} {unit}", w.layers);
        let mut hidden = 0;
        for l in &w.notes {
            if verbose || l.layers.len() > 1 {
                let extra = if l.note.is_empty() {
                    String::new()
                } else {
                    format!("  [{}]", l.note)
                };
                let _ = writeln!(
                    o,
                    "  {} ({}) -> {}{extra}",
                    l.node,
                    l.op,
                    l.layers.join(", ")
                );
            } else {
                hidden += 1;
            }
        }
        if hidden > 0 {
            let _ = writeln!(o, "  ({hidden} nodes map to one layer each; --verbose lists them with what they absorbed)");
        }
    }
    let _ = writeln!(o, "outputs (element for element as TF's, unless marked):");
    for out in &r.outputs {
        let cf: Vec<&str> = out
            .layouts
            .iter()
            .filter(|(_, l)| l.as_str() != "as TF")
            .map(|(f, _)| f.as_str())
            .collect();
        let how = if cf.is_empty() {
            String::new()
        } else {
            format!(
                "  [{}: NCHW, channel-first, as the format's convention]",
                cf.join(", ")
            )
        };
        let _ = writeln!(o, "  {} {:?}{how}", out.name, out.shape);
    }
    o
}

/// Stage-by-stage progress on a terminal (stderr), erased when done; silent
/// when stderr is not a terminal or with --json.
struct Progress {
    on: bool,
    start: Instant,
}

impl Progress {
    fn new(wanted: bool) -> Self {
        use std::io::IsTerminal;
        Progress {
            on: wanted && std::io::stderr().is_terminal(),
            start: Instant::now(),
        }
    }

    fn stage(&self, what: &str) {
        if self.on {
            eprint!(
                "\r\x1b[2K[{:>6.2} s] {what}...",
                self.start.elapsed().as_secs_f64()
            );
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.on {
            eprint!("\r\x1b[2K");
        }
    }
}
