//! Loading the converted FaceNet: the safetensors bundle (memory-mapped)
//! against the caffemodel (protobuf decode), median of repeated loads.
//!
//!     cargo run --release --example bench_bundle_load -- DIR NAME
//!
//! DIR holds NAME.graph.json + NAME.safetensors and NAME.prototxt +
//! NAME.caffemodel from `faceall convert-tf --to safetensors,caffe`.

use std::path::PathBuf;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (dir, name) = match args.as_slice() {
        [_, d, n] => (PathBuf::from(d), n.clone()),
        _ => return Err("usage: bench_bundle_load DIR NAME".into()),
    };
    let runs = 9;
    let mut bundle = vec![];
    let mut caffe = vec![];
    for _ in 0..runs {
        let t = Instant::now();
        let g = faceall::formats::bundle::read::load(&dir.join(format!("{name}.graph.json")))?;
        // Touch every weight once, as a forward pass would.
        let mut s = 0.0f32;
        for n in &g.nodes {
            if let faceall::ir::Op::Const(t) = &n.op {
                if t.dtype() == faceall::ir::DType::F32 {
                    s += t.as_f32()?.iter().step_by(1024).sum::<f32>();
                }
            }
        }
        bundle.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let m = faceall::formats::caffe::exec::CaffeModel::load(
            &dir.join(format!("{name}.prototxt")),
            Some(&dir.join(format!("{name}.caffemodel"))),
        )?;
        caffe.push(t.elapsed().as_secs_f64());
        std::hint::black_box((s, m.layers.len()));
    }
    let (b, c) = (median(bundle), median(caffe));
    println!(
        "load FaceNet bundle (graph.json + mmap safetensors): {:.1} ms",
        b * 1000.0
    );
    println!(
        "load FaceNet caffemodel (prototxt + protobuf decode): {:.1} ms",
        c * 1000.0
    );
    println!(
        "bundle takes {:.1}% of the caffemodel's load time ({:.0}x faster)",
        100.0 * b / c,
        c / b
    );
    Ok(())
}
