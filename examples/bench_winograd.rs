//! Winograd F(2x2)/F(4x4) 3x3 convolutions against the im2col gemm on
//! FaceNet's 3x3 stride-1 shapes, and 1-D F(2, r)/F(4, r) against the
//! padding-skipping gemm on 1 x r / r x 1 shapes (FaceNet's, Inception-v3's).
//! `bench_winograd [batch] [shape index]` (batch 8 by default).
use faceall::runtime::kernels::gemm::{gemm, Epilogue, LinePatches, PackedB, Patches};
use faceall::runtime::kernels::winograd::{Tile, Winograd};
use faceall::runtime::kernels::winograd_line::LineWinograd;
use faceall::runtime::kernels::ConvGeometry;
use std::time::Instant;

fn time(mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::MAX;
    for _ in 0..20 {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best * 1e3
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(8);
    let only: Option<usize> = std::env::args().nth(2).and_then(|a| a.parse().ok());
    // (h, c, k, pad)
    for (i, &(h, c, k, pad)) in [
        (79, 32, 32, 0),
        (77, 32, 64, 1),
        (38, 80, 192, 0),
        (17, 32, 32, 1),
        (17, 192, 192, 1),
        (8, 256, 256, 1),
    ]
    .iter()
    .enumerate()
    {
        if only.is_some_and(|o| o != i) {
            continue;
        }
        let oh = h + 2 * pad - 2;
        let g = ConvGeometry {
            n,
            h,
            w: h,
            c,
            kh: 3,
            kw: 3,
            co: k,
            oh,
            ow: oh,
            stride: [1, 1],
            dilation: [1, 1],
            pad: [pad, pad],
        };
        let x: Vec<f32> = (0..n * h * h * c).map(|i| (i % 97) as f32 / 97.0).collect();
        let wt: Vec<f32> = (0..9 * c * k).map(|i| (i % 89) as f32 / 89.0).collect();
        let mut out = vec![0.0; n * oh * oh * k];
        let pb = PackedB::pack(&wt, 9 * c, k, k, 1, None);
        let direct = time(|| {
            gemm(
                &Patches { x: &x, g },
                &pb,
                &mut out,
                k,
                &Epilogue::default(),
            )
        });
        let mut line = format!("{n}x{h}x{h}x{c} -> {k} pad {pad}: im2col {direct:.3} ms");
        for tile in [Tile::F2, Tile::F4] {
            let w = Winograd::new(&wt, c, k, None, tile);
            let ms = time(|| w.run(&x, &g, &mut out, k, &Epilogue::default()));
            line += &format!(", {tile:?} {ms:.3} ms ({:.2}x)", direct / ms);
        }
        println!("{line}");
    }
    // (h, w, c, k, kh, kw), SAME padding.
    for (i, &(h, w, c, k, kh, kw)) in [
        (8, 8, 128, 128, 1, 7),
        (8, 8, 128, 128, 7, 1),
        (17, 17, 128, 128, 1, 7),
        (17, 17, 192, 192, 7, 1),
        (8, 8, 384, 384, 1, 3),
        (3, 3, 192, 192, 1, 3),
    ]
    .iter()
    .enumerate()
    {
        if only.is_some_and(|o| o != 6 + i) {
            continue;
        }
        let g = ConvGeometry {
            n,
            h,
            w,
            c,
            kh,
            kw,
            co: k,
            oh: h,
            ow: w,
            stride: [1, 1],
            dilation: [1, 1],
            pad: [(kh - 1) / 2, (kw - 1) / 2],
        };
        let r = kh * kw;
        let x: Vec<f32> = (0..n * h * w * c).map(|i| (i % 97) as f32 / 97.0).collect();
        let wt: Vec<f32> = (0..r * c * k).map(|i| (i % 89) as f32 / 89.0).collect();
        let mut out = vec![0.0; n * h * w * k];
        let pb = PackedB::pack(&wt, r * c, k, k, 1, None);
        let lines = time(|| {
            gemm(
                &LinePatches { x: &x, g },
                &pb,
                &mut out,
                k,
                &Epilogue::default(),
            )
        });
        let mut line = format!("{n}x{h}x{w}x{c} {kh}x{kw} -> {k}: lines {lines:.3} ms");
        for m in [2, 4] {
            let lw = LineWinograd::new(&wt, [kh, kw], c, k, None, m);
            let ms = time(|| lw.run(&x, &g, &mut out, k, &Epilogue::default()));
            line += &format!(", F({m}, {r}) {ms:.3} ms ({:.2}x)", lines / ms);
        }
        println!("{line}");
    }
}
