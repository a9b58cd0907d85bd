//! `faceall bench MODEL`: time faceall's engine on a model, one image after
//! another (batches are run image by image: batched kernels are issue #7's
//! work), after a warm-up. MODEL is a converted bundle (NAME.graph.json), a
//! Caffe deploy net (NAME.prototxt beside NAME.caffemodel) or a TF graph.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use faceall::ir::Tensor;
use serde::Serialize;

#[derive(clap::Args)]
pub struct Args {
    /// NAME.graph.json, NAME.prototxt (with NAME.caffemodel beside it) or MODEL.pb
    model: PathBuf,
    /// Images per timed batch
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Timed batches (after one warm-up batch)
    #[arg(long, default_value_t = 10)]
    iters: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Out {
    model: String,
    engine: &'static str,
    batch: usize,
    iters: usize,
    ms_per_image: f64,
    images_per_second: f64,
}

pub fn run(a: Args) -> Result<ExitCode> {
    if a.batch == 0 || a.iters == 0 {
        bail!("--batch and --iters must be at least 1");
    }
    let path = a.model.to_string_lossy().into_owned();
    let run_one: Box<dyn Fn() -> Result<()>>;
    let engine;
    if path.ends_with(".prototxt") {
        let weights = a.model.with_extension("caffemodel");
        let net = faceall::runtime::caffe::CaffeModel::load(&a.model, Some(&weights))?;
        let feeds: HashMap<String, Tensor> = net
            .inputs
            .iter()
            .map(|(n, s)| Ok((n.clone(), input(s)?)))
            .collect::<Result<_>>()?;
        engine = "caffe executor";
        run_one = Box::new(move || {
            net.forward(&feeds)?;
            Ok(())
        });
    } else {
        let g = if path.ends_with(".graph.json") {
            engine = "bundle (IR executor)";
            faceall::runtime::bundle::load(&a.model)?
        } else {
            engine = "TF graph (IR executor)";
            faceall::frontend::tf::load(&a.model, &Default::default())?
        };
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
    for _ in 0..a.batch {
        run_one().context("warm-up")?;
    }
    let mut per_image = vec![];
    for _ in 0..a.iters {
        let t = Instant::now();
        for _ in 0..a.batch {
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
