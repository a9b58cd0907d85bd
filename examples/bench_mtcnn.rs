//! Time MTCNN detection on a photo: `bench_mtcnn MTCNN_DIR IMAGE`.
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let m = faceall::detect::mtcnn::Mtcnn::load(std::path::Path::new(&args[1]))?;
    let img = faceall::preprocess::decode(std::path::Path::new(&args[2]))?;
    for _ in 0..3 {
        let t = Instant::now();
        let f = m.detect(&img)?;
        println!(
            "{} faces in {:.1} ms ({}x{})",
            f.len(),
            t.elapsed().as_secs_f64() * 1e3,
            img.width(),
            img.height()
        );
    }
    Ok(())
}
