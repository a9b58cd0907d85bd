//! Peak memory of the serving pipeline, photo by photo (VmHWM / VmRSS).
fn vm() -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("VmHWM") || l.starts_with("VmRSS"))
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(", ")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let p = faceall::serve::pipeline::Pipeline::load(args[1].as_ref(), args[2].as_ref()).unwrap();
    println!("loaded: {}", vm());
    for f in &args[3..] {
        let img = image::open(f).unwrap().to_rgb8();
        println!("decoded {f} {}x{}: {}", img.width(), img.height(), vm());
        let n = p.faces(&img).unwrap().len();
        println!("  {n} faces: {}", vm());
    }
}
