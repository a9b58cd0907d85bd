//! Where a search request's time goes: decode, detect (downscale + MTCNN),
//! embed, for one photo, median of N runs:
//! `time_pipeline BUNDLE MTCNN_DIR PHOTO [N]`.
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, mtcnn, photo, rest @ ..] = &args[..] else {
        return Err("usage: time_pipeline BUNDLE MTCNN_DIR PHOTO [N]".into());
    };
    let n: usize = rest.first().map_or(Ok(20), |s| s.parse())?;
    let p = faceall::serve::pipeline::Pipeline::load(model.as_ref(), mtcnn.as_ref())?;
    let bytes = std::fs::read(photo)?;
    let (mut dec, mut det, mut emb, mut all) = (vec![], vec![], vec![], vec![]);
    for _ in 0..n {
        let t0 = Instant::now();
        let img = faceall::preprocess::decode_bytes(&bytes)?;
        let t1 = Instant::now();
        let faces = p.detect_stepwise(&img, &mut || Ok(()))?;
        let t2 = Instant::now();
        let found = p.embed_stepwise(&img, faces, &mut || Ok(()))?;
        let t3 = Instant::now();
        dec.push((t1 - t0).as_secs_f64() * 1e3);
        det.push((t2 - t1).as_secs_f64() * 1e3);
        emb.push((t3 - t2).as_secs_f64() * 1e3);
        all.push((t3 - t0).as_secs_f64() * 1e3);
        assert!(!found.is_empty());
    }
    println!(
        "median ms: decode {:.1}, detect {:.1}, embed {:.1}, total {:.1}",
        median(dec),
        median(det),
        median(emb),
        median(all)
    );
    Ok(())
}
