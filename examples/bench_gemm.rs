//! GFLOP/s of the fast engine's packed gemm on FaceNet's heaviest conv shapes.
use faceall::runtime::kernels::gemm::{gemm, Epilogue, PackedB, Patches};
use faceall::runtime::kernels::ConvGeometry;
use std::time::Instant;

fn main() {
    // (h, w, c, k, co, stride)
    for &(h, w, c, k, co, s) in &[
        (8, 12, 256, 1, 64, 1),
        (8, 12, 1024, 1, 64, 1),
        (48, 12, 512, 1, 64, 1),
        (64, 64, 128, 1, 128, 1),
        (64, 64, 256, 1, 256, 1),
        (36, 36, 80, 3, 192, 1),
        (8, 8, 896, 1, 128, 1),
        (24, 24, 896, 1, 128, 1),
        (73, 73, 80, 3, 192, 1),
        (71, 71, 192, 3, 256, 2),
        (35, 35, 256, 1, 32, 1),
        (17, 17, 896, 1, 128, 1),
        (8, 8, 1792, 1, 192, 1),
        (79, 79, 32, 3, 32, 1),
        (160, 160, 3, 3, 32, 2),
    ] {
        let oh = (h - k) / s + 1;
        let g = ConvGeometry {
            n: 1,
            h,
            w,
            c,
            kh: k,
            kw: k,
            co,
            oh,
            ow: oh,
            stride: [s, s],
            dilation: [1, 1],
            pad: [0, 0],
        };
        let x: Vec<f32> = (0..h * w * c).map(|i| (i % 97) as f32 / 97.0).collect();
        let wt: Vec<f32> = (0..k * k * c * co)
            .map(|i| (i % 89) as f32 / 89.0)
            .collect();
        let kk = k * k * c;
        let pb = PackedB::pack(&wt, kk, co, co, 1, None);
        let mut out = vec![0.0; oh * oh * co];
        let a = Patches { x: &x, g };
        gemm(&a, &pb, &mut out, co, &Epilogue::default());
        let iters = 200;
        let t = Instant::now();
        for _ in 0..iters {
            gemm(&a, &pb, &mut out, co, &Epilogue::default());
        }
        let sec = t.elapsed().as_secs_f64() / iters as f64;
        let flop = 2.0 * (oh * oh) as f64 * kk as f64 * co as f64;
        println!(
            "{h}x{w}x{c} k{k} s{s} -> {co}: {:.3} ms, {:.1} GFLOP/s",
            sec * 1e3,
            flop / sec / 1e9
        );
    }
}
