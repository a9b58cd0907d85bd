//! faceall's gallery index (usearch HNSW, `serve::storage::ann`) in
//! process, on the gallery `scripts/bench_index` writes, so it can be set
//! next to hnswlib's in-process numbers from the same run:
//!
//!     cargo run --release --example bench_ann -- GALLERY.npy QUERIES.npy [--ef 16,32,48,64] [--precision f16|f32] [--expansion-add 128] [--save DIR]
//!     cargo run --release --example bench_ann -- GALLERY.npy QUERIES.npy --reuse DIR [--ef ...]
//!
//! Prints one JSON line: build rate (batches of 5,000, as the API adds
//! them), save time, and per ef the identity recall@5 and queries/s at
//! batch 1 (one thread) and batch 500 (all threads) of the index as built;
//! with `--reuse DIR`, the load time and the same numbers of the index a
//! `--save DIR` run left, loaded in this fresh process (as a restarted
//! server has it).

use std::time::Instant;

use faceall::serve::storage::ann::{Ann, AnnOptions, Precision};
use rayon::prelude::*;

fn load(path: &str) -> Result<(Vec<f32>, usize), Box<dyn std::error::Error>> {
    let bytes = std::fs::read(path)?;
    let npy = npyz::NpyFile::new(&bytes[..])?;
    let shape = npy.shape().to_vec();
    let data: Vec<f32> = npy.into_vec()?;
    let rows = *shape.first().ok_or("empty shape")? as usize;
    Ok((data, rows))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err("usage: bench_ann GALLERY.npy QUERIES.npy [--ef LIST] [--precision f16|f32] [--expansion-add N]".into());
    }
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let efs: Vec<usize> = flag("--ef")
        .unwrap_or_else(|| "16,32,48,64".into())
        .split(',')
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    let mut opts = AnnOptions::default();
    if let Some(p) = flag("--precision") {
        opts.precision = p.parse::<Precision>()?;
    }
    if let Some(e) = flag("--expansion-add") {
        opts.expansion_add = e.parse()?;
    }
    let (g, n) = load(&args[1])?;
    let (q, nq) = load(&args[2])?;
    let dim = g.len() / n.max(1);
    // --reuse DIR: search the index a --save run left there, in this fresh
    // process (what a restarted server searches).
    if let Some(dir) = flag("--reuse") {
        let dir = std::path::PathBuf::from(dir);
        let t = Instant::now();
        let (loaded, _) = Ann::load(&dir, dim, opts)?.ok_or("no saved index there")?;
        let load_s = t.elapsed().as_secs_f64();
        let per_ef = measure(&loaded, &q, nq, dim, &efs)?;
        println!(
            r#"{{"faces": {}, "reused": true, "load_s": {load_s:.3}, "memory_mb": {:.0}, "ef": [{}]}}"#,
            loaded.len(),
            loaded.memory() as f64 / 1048576.0,
            per_ef.join(", ")
        );
        return Ok(());
    }
    // Build, search the index as built, save it (into --save DIR, kept for
    // a --reuse run, or a temporary directory).
    let ann = Ann::new(dim, opts)?;
    let t = Instant::now();
    let tail_rate = build(&ann, &g, n, dim)?;
    let build = t.elapsed().as_secs_f64();
    eprintln!(
        "last tenth built at {tail_rate:.0} faces/s; kernels: {}",
        ann.hardware_acceleration()
    );
    let per_ef = measure(&ann, &q, nq, dim, &efs)?;
    let keep = flag("--save").map(std::path::PathBuf::from);
    let dir = match &keep {
        Some(d) => d.clone(),
        None => tempfile_dir()?,
    };
    std::fs::create_dir_all(&dir)?;
    let t = Instant::now();
    ann.save(&dir, 1)?;
    let save = t.elapsed().as_secs_f64();
    if keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!(
        r#"{{"faces": {n}, "build_s": {build:.2}, "build_faces_per_s": {:.0}, "memory_mb": {:.0}, "save_s": {save:.3}, "ef": [{}]}}"#,
        n as f64 / build,
        ann.memory() as f64 / 1048576.0,
        per_ef.join(", ")
    );
    Ok(())
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("faceall-bench-ann-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// Identity recall@5 and queries/s at batch 1 (one thread) and batch 500
/// (all threads), per ef, as JSON objects.
fn measure(
    loaded: &Ann,
    q: &[f32],
    nq: usize,
    dim: usize,
    efs: &[usize],
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let mut per_ef = vec![];
    for &ef in efs {
        loaded.set_expansion_search(ef);
        let query = |i: usize| loaded.search(&q[i * dim..(i + 1) * dim], 5);
        let t = Instant::now();
        let mut hits = 0usize;
        for i in 0..nq {
            let r = query(i)?;
            hits += r.iter().any(|(k, _)| *k as usize / 5 == i) as usize;
        }
        let b1 = nq as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        for lo in (0..nq).step_by(500) {
            (lo..(lo + 500).min(nq))
                .into_par_iter()
                .map(query)
                .collect::<Result<Vec<_>, String>>()?;
        }
        let b500 = nq as f64 / t.elapsed().as_secs_f64();
        per_ef.push(format!(
            r#"{{"ef": {ef}, "recall5": {:.4}, "qps_batch1": {b1:.0}, "qps_batch500": {b500:.0}}}"#,
            hits as f64 / nq as f64
        ));
    }
    Ok(per_ef)
}

/// Add the gallery in batches of 5,000 as the API does; the rate over the
/// last tenth (faces/s).
fn build(ann: &Ann, g: &[f32], n: usize, dim: usize) -> Result<f64, String> {
    let mut tail = Instant::now();
    for lo in (0..n).step_by(5000) {
        if lo == n - n / 10 {
            tail = Instant::now();
        }
        let hi = (lo + 5000).min(n);
        let items: Vec<(u64, &[f32])> = (lo..hi)
            .map(|i| (i as u64, &g[i * dim..(i + 1) * dim]))
            .collect();
        // The gallery holds five faces per person, in order.
        let groups: Vec<u64> = (lo..hi).map(|i| (i / 5) as u64).collect();
        ann.add_many(&items, &groups)?;
    }
    Ok((n / 10) as f64 / tail.elapsed().as_secs_f64())
}
