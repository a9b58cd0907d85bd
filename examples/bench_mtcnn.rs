//! Time MTCNN detection on a photo: `bench_mtcnn MTCNN_DIR IMAGE [MAX_SIDE]`
//! (the photo scaled to at most MAX_SIDE pixels on its longer side first, as
//! the server does with 640).
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let m = faceall::detect::mtcnn::Mtcnn::load(std::path::Path::new(&args[1]))?;
    let mut img = faceall::preprocess::decode(std::path::Path::new(&args[2]))?;
    if let Some(side) = args.get(3) {
        let side: f32 = side.parse()?;
        let s = side / img.width().max(img.height()) as f32;
        if s < 1.0 {
            let (w, h) = (
                (img.width() as f32 * s).round() as u32,
                (img.height() as f32 * s).round() as u32,
            );
            img = image::imageops::resize(&img, w, h, image::imageops::FilterType::Triangle);
        }
    }
    let mut times = vec![];
    for _ in 0..20 {
        let t = Instant::now();
        let f = m.detect(&img)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        if times.len() == 1 {
            println!("{} faces ({}x{})", f.len(), img.width(), img.height());
        }
    }
    times.sort_by(f64::total_cmp);
    println!("median {:.1} ms, best {:.1} ms", times[10], times[0]);
    Ok(())
}
