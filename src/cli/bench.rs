//! `faceall bench MODEL`: time faceall's fast engine on a model after a
//! warm-up (0.3 s of batches): a batch of N images runs as one call. MODEL
//! is a converted bundle (NAME.graph.json; a directory holding one) or a TF
//! graph; `--engine reference` times the reference executor instead (image
//! by image). Any other converted model (Caffe NAME.prototxt, Core ML, ONNX:
//! the formats table) runs on its format's executor, image by image.
//!
//! `faceall bench MTCNN_DIR --photos P...` times face detection instead:
//! each photo as it is (no downscale), median ms and the faces found
//! (`scripts/bench_detect` sets it next to PyPI mtcnn on the same pixels).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use faceall::ir::Tensor;
use serde::Serialize;

#[derive(clap::Args)]
pub struct Args {
    /// NAME.graph.json (or a directory with one), NAME.prototxt (with
    /// NAME.caffemodel beside it), NAME.mlmodel, NAME.onnx or MODEL.pb
    model: PathBuf,
    /// fast (packed, fused, batched) or reference (the exact executor)
    #[arg(long, default_value = "fast")]
    engine: String,
    /// Images per timed batch
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Timed batches (after warm-up batches for 0.3 s)
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Winograd convolutions in the fast engine: f4 (default: F(4x4, 3x3)
    /// and 1-D F(4, k) for 1 x k / k x 1), f2 (F(2x2, 3x3), F(2, k)) or off
    /// (also FACEALL_WINOGRAD=4|2|off)
    #[arg(long)]
    winograd: Option<String>,
    /// Time MTCNN detection on these photos (MODEL is then a directory with
    /// det1/det2/det3 Caffe files); `--engine reference` runs its nets on
    /// the reference Caffe executor
    #[arg(long, num_args = 1..)]
    photos: Vec<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct PhotoOut {
    photo: String,
    width: u32,
    height: u32,
    ms: f64,
    faces: Vec<faceall::detect::mtcnn::Face>,
}

/// `bench --photos`: each photo detected after a warm-up, median of `iters`.
fn detect(a: &Args) -> Result<ExitCode> {
    let mut m = faceall::detect::mtcnn::Mtcnn::load(&a.model)?;
    m.reference = a.engine == "reference";
    let mut rows = vec![];
    for p in &a.photos {
        let img = faceall::preprocess::decode(p)?;
        let warm = Instant::now();
        let mut faces = m.detect(&img)?;
        while warm.elapsed() < WARM_UP {
            faces = m.detect(&img)?;
        }
        let mut ms = vec![];
        for _ in 0..a.iters {
            let t = Instant::now();
            m.detect(&img)?;
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        ms.sort_by(|x, y| x.total_cmp(y));
        rows.push(PhotoOut {
            photo: p.to_string_lossy().into_owned(),
            width: img.width(),
            height: img.height(),
            ms: ms[ms.len() / 2],
            faces,
        });
    }
    if a.json {
        super::print_stdout(&(serde_json::to_string_pretty(&rows)? + "\n"));
    } else {
        for r in &rows {
            super::print_stdout(&format!(
                "{} ({}x{}): {} faces, median {:.1} ms over {} runs\n",
                r.photo,
                r.width,
                r.height,
                r.faces.len(),
                r.ms,
                a.iters
            ));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// How long `bench` runs the model before timing it.
const WARM_UP: std::time::Duration = std::time::Duration::from_millis(300);

#[derive(Serialize)]
struct Out {
    model: String,
    engine: &'static str,
    batch: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    stats: Option<faceall::runtime::engine::EngineStats>,
    iters: usize,
    ms_per_image: f64,
    images_per_second: f64,
}

pub fn run(a: Args) -> Result<ExitCode> {
    if a.batch == 0 || a.iters == 0 {
        bail!("--batch and --iters must be at least 1");
    }
    if a.engine != "fast" && a.engine != "reference" {
        bail!("--engine is fast or reference, not '{}'", a.engine);
    }
    if !a.photos.is_empty() {
        return detect(&a);
    }
    let mut opts = faceall::runtime::engine::EngineOptions::default();
    if let Some(w) = &a.winograd {
        opts.winograd = faceall::runtime::engine::EngineOptions::winograd_named(w)
            .with_context(|| format!("--winograd is f4, f2 or off, not '{w}'"))?;
    }
    let model = super::resolve_bundle(&a.model)?;
    let path = model.to_string_lossy().into_owned();
    // One call = one batch for the fast engine, one image for the others.
    let run_one: Box<dyn Fn() -> Result<()>>;
    let per_call;
    let engine;
    let mut stats = None;
    // The fast engine runs bundles and TF graphs; other formats run on
    // their own executors.
    let other_format = faceall::formats::by_path(&model).filter(|f| f.name() != "safetensors");
    if a.engine == "fast" && other_format.is_none() {
        let g = if path.ends_with(".graph.json") {
            engine = "fast engine (bundle)";
            faceall::formats::bundle::read::load_owned(&model)?
        } else {
            engine = "fast engine (TF graph)";
            let mut g = faceall::frontend::tf::load(&model, &Default::default())?;
            faceall::passes::run(&mut g, &Default::default())?;
            g
        };
        let e = faceall::runtime::engine::Engine::compile_with(g, &opts)?;
        stats = Some(e.stats());
        let xs: Vec<Vec<f32>> = e
            .inputs()
            .iter()
            .map(|p| {
                let mut shape = p.shape.clone();
                if let Some(d) = shape.first_mut() {
                    *d *= a.batch;
                }
                Ok(input(&shape)?.as_f32()?.into_owned())
            })
            .collect::<Result<_>>()?;
        let batch = a.batch;
        per_call = a.batch;
        run_one = Box::new(move || {
            let refs: Vec<&[f32]> = xs.iter().map(|v| &v[..]).collect();
            e.run(&refs, batch)?;
            Ok(())
        });
    } else if let Some(format) = faceall::formats::by_path(&model) {
        // A converted model on its format's executor, image by image.
        let exec = format.open(&faceall::formats::companions(format, &model))?;
        let feeds: HashMap<String, Tensor> = exec
            .inputs()
            .iter()
            .map(|(n, s)| Ok((n.clone(), input(s)?)))
            .collect::<Result<_>>()?;
        engine = match format.name() {
            "caffe" => "caffe executor",
            "coreml" => "core ml executor",
            "onnx" => "onnx (IR executor)",
            "mlprogram" => "ml program (IR executor)",
            _ => "bundle (IR executor)",
        };
        per_call = 1;
        let none = HashMap::new();
        run_one = Box::new(move || {
            if let Some(e) = exec.run(&feeds, &none)?.failure {
                bail!("{e}");
            }
            Ok(())
        });
    } else {
        engine = "TF graph (IR executor)";
        let g = faceall::frontend::tf::load(&model, &Default::default())?;
        per_call = 1;
        let feeds: HashMap<String, Tensor> = g
            .inputs
            .iter()
            .map(|&i| {
                Ok((
                    g.nodes[i].name.clone(),
                    input(&g.nodes[i].outputs[0].shape)?,
                ))
            })
            .collect::<Result<_>>()?;
        let outs: Vec<String> = g.outputs.iter().map(|w| g.wire_name(*w)).collect();
        run_one = Box::new(move || {
            faceall::runtime::run(&g, &feeds, &outs)?;
            Ok(())
        });
    }
    let calls = a.batch / per_call;
    // Warm-up: whole batches for at least WARM_UP (first-touch page faults,
    // thread-local scratch, the thread pool spinning up), at least one.
    let warm = Instant::now();
    loop {
        for _ in 0..calls {
            run_one().context("warm-up")?;
        }
        if warm.elapsed() >= WARM_UP {
            break;
        }
    }
    let mut per_image = vec![];
    for _ in 0..a.iters {
        let t = Instant::now();
        for _ in 0..calls {
            run_one()?;
        }
        per_image.push(t.elapsed().as_secs_f64() * 1000.0 / a.batch as f64);
    }
    per_image.sort_by(|x, y| x.total_cmp(y));
    let ms = per_image[per_image.len() / 2];
    let out = Out {
        model: path,
        engine,
        batch: a.batch,
        stats,
        iters: a.iters,
        ms_per_image: ms,
        images_per_second: 1000.0 / ms,
    };
    if a.json {
        super::print_stdout(&(serde_json::to_string_pretty(&out)? + "\n"));
    } else {
        super::print_stdout(&format!(
            "{} ({}), batch {}: median {:.2} ms per image, {:.1} images/s over {} batches\n",
            out.model, out.engine, out.batch, out.ms_per_image, out.images_per_second, out.iters
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// A deterministic input of the given shape in the scale of prewhitened crops.
fn input(shape: &[usize]) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    Ok(Tensor::f32(
        shape.to_vec(),
        (0..n)
            .map(|i| ((i * 7919 % 255) as f32 - 127.0) / 64.0)
            .collect(),
    )?)
}
