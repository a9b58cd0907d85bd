//! Peak and current memory (VmHWM / VmRSS) of the serving pipeline, photo by
//! photo: `cargo run --release --example mem_pipeline -- BUNDLE MTCNN_DIR PHOTO...`
fn vm() -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("VmHWM") || l.starts_with("VmRSS"))
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(", ")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, mtcnn, photos @ ..] = &args[..] else {
        return Err("usage: mem_pipeline BUNDLE MTCNN_DIR PHOTO...".into());
    };
    let p = faceall::serve::pipeline::Pipeline::load(model.as_ref(), mtcnn.as_ref())?;
    println!("loaded: {}", vm());
    for f in photos {
        let img = image::open(f)?.to_rgb8();
        println!("decoded {f} {}x{}: {}", img.width(), img.height(), vm());
        let n = p.faces(&img)?.len();
        println!("  {n} faces: {}", vm());
    }
    Ok(())
}
