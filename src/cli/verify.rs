//! `faceall verify-parity`: exit 0 when every converted model is within
//! tolerance, 1 when not, 2 on usage or input errors.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use faceall::formats;
use faceall::frontend::tf;
use faceall::parity::verify::{self, Reference, Report};
use faceall::parity::Tolerance;

#[derive(clap::Args)]
pub struct Args {
    /// The source TensorFlow model: frozen GraphDef (.pb), SavedModel
    /// directory, or TF1 meta graph (model.meta) with its checkpoint
    #[arg(long)]
    tf: PathBuf,
    #[command(flatten)]
    source: super::SourceArgs,
    /// Converted Caffe deploy net (with --caffemodel)
    #[arg(long, requires = "caffemodel")]
    caffe: Option<PathBuf>,
    /// Converted Caffe weights
    #[arg(long, requires = "caffe")]
    caffemodel: Option<PathBuf>,
    /// Converted Core ML model: NAME.mlmodel (NeuralNetwork) or NAME.mlpackage (ML Program)
    #[arg(long)]
    coreml: Option<PathBuf>,
    /// Converted ONNX model
    #[arg(long)]
    onnx: Option<PathBuf>,
    /// Converted bundle (NAME.graph.json, its NAME.safetensors beside it)
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Any converted model, its format known by its file name (NAME.prototxt,
    /// NAME.mlmodel, NAME.graph.json, NAME.onnx; companions beside it); repeatable
    #[arg(long = "model")]
    models: Vec<PathBuf>,
    /// Face photos: every .jpg/.png in DIR; with --mtcnn, the largest face
    /// found (margin 44, as FaceNet), else the centre square; resized, prewhitened
    #[arg(long, conflicts_with = "random")]
    images: Option<PathBuf>,
    /// MTCNN Caffe models (det1/det2/det3 .prototxt + .caffemodel) to find the faces in --images
    #[arg(long, requires = "images")]
    mtcnn: Option<PathBuf>,
    /// Number of seeded random inputs (default 1)
    #[arg(long)]
    random: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// exact (1e-6), close (1e-5, default) or approximate (1e-3): abs + rel x max|reference|
    #[arg(long, default_value = "close")]
    tolerance: String,
    /// Per-tensor override: NAME=exact|close|approximate (repeatable)
    #[arg(long = "tensor-tolerance")]
    tensor_tolerance: Vec<String>,
    /// builtin (faceall's TF executor) or tensorflow (real TensorFlow via Python)
    #[arg(long, default_value = "builtin")]
    reference: String,
    /// Python with TensorFlow, for --reference tensorflow
    #[arg(long, default_value = "python3")]
    python: PathBuf,
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long)]
    html: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<ExitCode> {
    match check(a) {
        Ok(report) => Ok(if report.passed {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }),
        Err(e) => {
            eprintln!("error: {}", super::one_line(&e));
            Ok(ExitCode::from(2))
        }
    }
}

fn level(s: &str) -> Result<Tolerance> {
    Tolerance::by_name(s)
        .with_context(|| format!("tolerance '{s}': use exact, close or approximate"))
}

fn check(a: Args) -> Result<Report> {
    // (format, its files in the format's order) for every model given.
    let mut models: Vec<(&dyn formats::Format, Vec<PathBuf>)> = vec![];
    if let (Some(p), Some(m)) = (&a.caffe, &a.caffemodel) {
        models.push((&formats::caffe::Caffe, vec![p.clone(), m.clone()]));
    }
    // --coreml takes either Core ML form: a NeuralNetwork .mlmodel or an
    // ML Program .mlpackage.
    let coreml: &dyn formats::Format = match &a.coreml {
        Some(p)
            if p.to_string_lossy()
                .trim_end_matches('/')
                .ends_with(".mlpackage") =>
        {
            &formats::mlprogram::MlProgram
        }
        _ => &formats::coreml::Coreml,
    };
    for (path, format) in [
        (&a.coreml, coreml),
        (&a.onnx, &formats::onnx::Onnx as &dyn formats::Format),
        (&a.bundle, &formats::bundle::Bundle),
    ] {
        if let Some(p) = path {
            models.push((format, formats::companions(format, p)));
        }
    }
    for p in &a.models {
        let Some(format) = formats::by_path(p) else {
            let exts: Vec<&str> = formats::FORMATS
                .iter()
                .filter_map(|f| f.extensions().first().copied())
                .collect();
            bail!(
                "--model {}: not a converted model faceall reads (the file name ends in one of {})",
                p.display(),
                exts.join(", ")
            );
        };
        models.push((format, formats::companions(format, p)));
    }
    if models.is_empty() {
        bail!("nothing to verify: give --model FILE, --caffe/--caffemodel, --coreml, --onnx and/or --bundle");
    }
    let tol = level(&a.tolerance)?;
    let mut overrides = verify::Overrides::new();
    for t in &a.tensor_tolerance {
        let (n, l) = t
            .rsplit_once('=')
            .with_context(|| format!("--tensor-tolerance {t}: expected NAME=LEVEL"))?;
        overrides.insert(n.to_string(), level(l)?);
    }
    let reference = match a.reference.as_str() {
        "builtin" => Reference::Builtin,
        "tensorflow" => Reference::TensorFlow {
            python: a.python.clone(),
            source: a.source.options(),
        },
        r => bail!("--reference {r}: use builtin or tensorflow"),
    };
    let g = tf::load(
        &a.tf,
        &tf::LoadOptions {
            source: a.source.options(),
            ..Default::default()
        },
    )?;
    let samples = match &a.images {
        Some(dir) => image_samples(&g, dir, a.mtcnn.as_deref())?,
        None => verify::random_samples(&g, a.random.unwrap_or(1).max(1), a.seed)?,
    };
    // The TF tensors that have a value in some converted model.
    let mut wanted: Vec<String> = vec![];
    let mut execs = vec![];
    for (format, files) in &models {
        let exec = format.open(files)?;
        wanted.extend(exec.computes());
        execs.push(exec);
    }
    wanted.extend(g.outputs.iter().map(|w| g.nodes[w.node].name.clone()));
    let refs = verify::reference_for(&a.tf, &g, &samples, &wanted, &reference)?;
    let checked = verify::Checked {
        model: &a.tf,
        graph: &g,
        samples: &samples,
        refs: &refs,
        tolerance: tol,
        overrides: &overrides,
    };
    let mut targets = vec![];
    for ((format, files), exec) in models.iter().zip(&execs) {
        targets.push(verify::verify(&checked, *format, files, exec.as_ref())?);
    }
    let report = Report {
        model: a.tf.display().to_string(),
        reference: a.reference.clone(),
        tolerance: tol,
        samples: samples.len(),
        passed: targets.iter().all(|t| t.passed),
        targets,
    };
    super::print_stdout(&table(&report));
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &a.html {
        std::fs::write(p, faceall::parity::html::render(&report))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(report)
}

fn image_samples(
    g: &faceall::ir::Graph,
    dir: &std::path::Path,
    mtcnn: Option<&std::path::Path>,
) -> Result<Vec<verify::Sample>> {
    let detector = mtcnn.map(faceall::detect::mtcnn::Mtcnn::load).transpose()?;
    let &[input] = g.inputs.as_slice() else {
        bail!("--images needs a graph with one input")
    };
    let shape = &g.nodes[input].outputs[0].shape;
    let &[1, h, w, 3] = shape.as_slice() else {
        bail!("--images needs a 1xHxWx3 input, the graph's is {shape:?}")
    };
    if h != w {
        bail!("--images needs a square input, the graph's is {shape:?}");
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("--images {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| {
                ["jpg", "jpeg", "png"].contains(&e.to_ascii_lowercase().to_str().unwrap_or(""))
            })
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("--images {}: no .jpg/.jpeg/.png files", dir.display());
    }
    files
        .iter()
        .map(|f| {
            let img = faceall::preprocess::decode(f)?;
            let crop = match &detector {
                Some(d) => {
                    let faces = d.detect(&img)?;
                    let area = |b: &[f32; 4]| (b[2] - b[0]) * (b[3] - b[1]);
                    let best = faces
                        .iter()
                        .max_by(|a, b| area(&a.bbox).total_cmp(&area(&b.bbox)))
                        .with_context(|| format!("{}: no face found", f.display()))?;
                    faceall::detect::mtcnn::face_crop(&img, best, 44.0)
                }
                None => faceall::preprocess::center_square(&img),
            };
            let t = faceall::preprocess::face_input(&img, crop, h as u32)?;
            Ok(std::collections::HashMap::from([(
                g.nodes[input].name.clone(),
                t,
            )]))
        })
        .collect()
}

fn table(r: &Report) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "verify-parity {} (reference {}, tolerance {}, {} sample(s)): {}",
        r.model,
        r.reference,
        r.tolerance.name,
        r.samples,
        if r.passed { "PASS" } else { "FAIL" }
    );
    for t in &r.targets {
        let _ = writeln!(
            o,
            "\n{} {}: {}",
            t.target,
            t.file,
            if t.passed { "PASS" } else { "FAIL" }
        );
        if let Some(f) = &t.first_failure {
            let l = t.layers.iter().find(|l| &l.tensor == f);
            let raw = t
                .outputs
                .iter()
                .find(|r| f.strip_suffix(" (raw output)") == Some(r.tensor.as_str()));
            let why = l
                .map(|l| (&l.comparison, &l.error))
                .or(raw.map(|r| (&r.comparison, &r.error)))
                .map(|(c, e)| {
                    c.as_ref()
                        .map(|c| c.to_string())
                        .or(e.clone())
                        .unwrap_or_default()
                })
                .unwrap_or_default();
            let _ = writeln!(o, "  FIRST LAYER OUTSIDE TOLERANCE: {f}\n    {why}");
        }
        if let Some(e) = &t.run_error {
            let _ = writeln!(o, "  the converted model failed to run: {e}");
        }
        let _ = writeln!(
            o,
            "  {:>4}  {:<64} {:>10} {:>10} {:>12}  ",
            "#", "TF tensor", "max abs", "max rel", "cosine"
        );
        for (i, l) in t.layers.iter().enumerate() {
            let name = shorten(&l.tensor, 64);
            let (a, rel, cos) = match &l.comparison {
                Some(c) => (
                    format!("{:.2e}", c.max_abs),
                    format!("{:.2e}", c.max_rel),
                    format!("{:.9}", c.cosine),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            let mark = if l.passed { "" } else { "  FAIL" };
            let _ = writeln!(
                o,
                "  {i:>4}  {name:<64} {a:>10} {rel:>10} {cos:>12}{mark}{}",
                if l.output { "  (output)" } else { "" }
            );
        }
        let _ = writeln!(
            o,
            "  outputs as the model returns them, element for element against TF's:"
        );
        for r in &t.outputs {
            let how = match (&r.comparison, &r.error) {
                (Some(c), _) => format!(
                    "max abs {:.2e}, max rel {:.2e}, {}/{} outside",
                    c.max_abs, c.max_rel, c.off, c.total
                ),
                (None, Some(e)) => e.clone(),
                (None, None) => String::new(),
            };
            let _ = writeln!(
                o,
                "    {} -> '{}' {:?} (TF {:?}, {}): {how}  {}",
                shorten(&r.tensor, 64),
                r.output,
                r.shape,
                r.tf_shape,
                r.layout,
                if r.passed { "PASS" } else { "FAIL" }
            );
        }
    }
    o
}

/// `s` cut to its last `max` characters (TF names can be long; a cut
/// never splits a character).
fn shorten(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_string();
    }
    let tail: String = s.chars().skip(n - (max - 3)).collect();
    format!("...{tail}")
}
