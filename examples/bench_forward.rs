//! The bare forward passes verify-parity makes for one FaceNet input: the TF
//! graph in faceall's executor, the Caffe model, the Core ML model.
//!
//!     cargo run --release --example bench_forward -- DIR NAME

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, name] = args.as_slice() else {
        return Err("usage: bench_forward DIR NAME".into());
    };
    let dir = PathBuf::from(dir);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let g = faceall::frontend::tf::load(
        &root.join(".cache/models/graph_final.pb"),
        &Default::default(),
    )?;
    let x = faceall::ir::Tensor::f32(
        vec![1, 160, 160, 3],
        (0..160 * 160 * 3)
            .map(|i| ((i % 255) as f32 - 127.0) / 64.0)
            .collect(),
    )?;
    let t = Instant::now();
    faceall::runtime::run(
        &g,
        &HashMap::from([("input".to_string(), x.clone())]),
        &["embeddings".to_string()],
    )?;
    let tf = t.elapsed().as_secs_f64() * 1000.0;
    let caffe = faceall::formats::caffe::exec::CaffeModel::load(
        &dir.join(format!("{name}.prototxt")),
        Some(&dir.join(format!("{name}.caffemodel"))),
    )?;
    let nchw = faceall::ir::Tensor::f32(
        vec![1, 3, 160, 160],
        faceall::runtime::kernels::nhwc_to_nchw(&x.as_f32()?, [1, 160, 160, 3]),
    )?;
    let t = Instant::now();
    caffe.forward(&HashMap::from([("input".to_string(), nchw.clone())]))?;
    let cf = t.elapsed().as_secs_f64() * 1000.0;
    let cm =
        faceall::formats::coreml::exec::CoremlModel::load(&dir.join(format!("{name}.mlmodel")))?;
    let t = Instant::now();
    cm.predict(&HashMap::from([(
        "input".to_string(),
        nchw.reshaped(vec![3, 160, 160])?,
    )]))?;
    let ml = t.elapsed().as_secs_f64() * 1000.0;
    println!("forward TF graph (faceall executor): {tf:.0} ms");
    println!("forward Caffe model: {cf:.0} ms");
    println!("forward Core ML model: {ml:.0} ms");
    println!("forward total: {:.0} ms", tf + cf + ml);
    Ok(())
}
