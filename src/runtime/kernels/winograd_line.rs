//! 1 x r and r x 1 stride-1 convolutions (Inception's factorised 1x7 and
//! 7x1, 1x3 and 3x1) by one-dimensional Winograd minimal filtering F(m, r):
//! each run of m outputs along the taps' axis costs m + r - 1 multiplies
//! per channel pair instead of m r. F(4, 7) does 10 where the direct product
//! does 28, or 22 once it skips the taps in the padding of an 8-wide map
//! (`gemm::LinePatches`).
//!
//! The transforms are Toom-Cook's, computed in f64 by a `const fn` for each
//! (m, r) from the points 0, +-1, +-2, +-1/2, +-3/2 and infinity, the first
//! m + r - 2 of them: B^T's rows are the coefficients of the products of
//! (x - p) over all points but one (and over all for infinity's row), A^T's
//! columns the points' powers, and G (applied to the filter at load) takes
//! the interpolation's denominators, so B^T and A^T hold small exact
//! float32 values, constants of each (m, r)'s kernel. The rest is the 2-D
//! module's: transformed inputs of a block of tiles multiplied by the
//! packed transformed filters, one gemm per transformed position, and the
//! same epilogue on the way out.
//!
//! Measured (`examples/bench_winograd`, batch 8, against the gemm that
//! skips the padding): F(4, 7) 1.3x-1.5x on FaceNet's 8x8 128 x 128 1x7 and
//! 7x1, 1.6x-1.7x on Inception-v3's 17x17 ones, F(4, 3) 1.6x on its 8x8
//! 384 x 384 1x3; F(2, 7) on 8x8 is no faster (0.9x; `worthwhile` says no).
//! In FaceNet, block17's 20 such steps go from 9.3 to 6.3 ms per batch-8
//! pass and from 1.5 to 1.2 ms at batch 1 (`FACEALL_PROFILE`).
//!
//! Accuracy: the sums are regrouped and F(4, 7)'s constants reach 17, so
//! results are ~4e-6 of the terms' magnitude from an f64 reference (~1e-6
//! for F(2, r) and F(4, 3); unit test below), F(4x4, 3x3)'s order.

use super::gemm::{Epilogue, PackedB};
use super::winograd::{
    check_sizes, load_lanes, load_product, products, store_lanes, Blocks, Job, LANES, SCRATCH,
};
use super::ConvGeometry;
#[cfg(target_arch = "x86_64")]
use crate::runtime::kernels::gemm::avx512;
use crate::runtime::kernels::gemm::SendPtr;

/// Interpolation points in the order F(m, r) takes them: its first
/// m + r - 2, then infinity. Small and exactly representable, so the
/// transforms' constants are too.
const POINTS: [f64; 9] = [0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 1.5, -1.5];
/// Most transformed positions (m + r - 1) a transform may have.
const MAX_N: usize = POINTS.len() + 1;

/// A 1 x r or r x 1 stride-1 convolution's weights, transformed and packed.
pub struct LineWinograd {
    /// Outputs per tile.
    m: usize,
    /// Taps.
    r: usize,
    /// The taps run down the columns (r x 1) rather than along rows.
    vertical: bool,
    c: usize,
    k: usize,
    /// One packed c x k matrix per transformed position.
    u: Vec<PackedB>,
    bias: Vec<f32>,
}

/// Whether `g` is a convolution F(m, r) computes here: one row or one
/// column of taps, stride and dilation 1, no padding across the taps' axis
/// (as TensorFlow's SAME and VALID give a 1-wide axis), and m + r - 1
/// within the points available.
pub fn supports(g: &ConvGeometry, m: usize) -> bool {
    let line = (g.kh == 1) != (g.kw == 1);
    let across = if g.kh > 1 {
        g.pad[1] == 0 && g.ow == g.w
    } else {
        g.pad[0] == 0 && g.oh == g.h
    };
    let r = g.kh.max(g.kw);
    line && across && g.stride == [1, 1] && g.dilation == [1, 1] && shape_ok(m, r)
}

/// The (m, r) this module has kernels for: m 2 or 4, r 2 to 7.
fn shape_ok(m: usize, r: usize) -> bool {
    matches!(m, 2 | 4) && (2..=MAX_R).contains(&r)
}

/// Whether it is also worth it: at least 1.4x fewer products than the
/// direct gemm (which skips the padding's taps) and channels enough for the
/// gemms to outweigh the transforms (32 x 32, as for F(4x4, 3x3)). On
/// FaceNet's 8x8 block17 1x7 and 7x1 (128 x 128) F(4, 7) does 2.2x fewer;
/// its 3-wide block8 lines are left to the gemm (7 products against 6).
pub fn worthwhile(g: &ConvGeometry, m: usize) -> bool {
    if !supports(g, m) || g.c * g.co < 32 * 32 {
        return false;
    }
    let (r, len, pad) = axis(g);
    let n = m + r - 1;
    // Taps inside the input, summed over the positions along the axis.
    let direct: usize = (0..len)
        .map(|v| {
            let lo = pad.saturating_sub(v);
            let hi = (axis_in(g) + pad).saturating_sub(v).min(r);
            hi.saturating_sub(lo)
        })
        .sum();
    let wino = len.div_ceil(m) * n;
    5 * direct >= 7 * wino
}

/// (taps, output positions along the taps' axis, padding before them).
fn axis(g: &ConvGeometry) -> (usize, usize, usize) {
    if g.kh > 1 {
        (g.kh, g.oh, g.pad[0])
    } else {
        (g.kw, g.ow, g.pad[1])
    }
}

/// Input positions along the taps' axis.
fn axis_in(g: &ConvGeometry) -> usize {
    if g.kh > 1 {
        g.h
    } else {
        g.w
    }
}

/// Largest m and r (m + r - 1 <= MAX_N for each m).
const MAX_M: usize = 4;
const MAX_R: usize = 7;

/// Toom-Cook's F(m, r) in f64, in arrays sized for the largest.
#[derive(Clone, Copy)]
struct Tables {
    /// B^T, n x n (n = m + r - 1): transformed positions from input points.
    bt: [[f64; MAX_N]; MAX_N],
    /// A^T, m x n: outputs from transformed positions.
    at: [[f64; MAX_N]; MAX_M],
    /// G, n x r: transformed filter from taps.
    g: [[f64; MAX_R]; MAX_N],
}

/// The product of (x - p) over the first `count` points except index
/// `skip` (none if `skip >= count`), coefficients lowest first.
const fn node(count: usize, skip: usize) -> [f64; MAX_N] {
    let mut poly = [0.0; MAX_N];
    poly[0] = 1.0;
    let mut deg = 0;
    let mut i = 0;
    while i < count {
        if i != skip {
            let p = POINTS[i];
            let mut d = deg + 1;
            while d > 0 {
                poly[d] = poly[d - 1] - p * poly[d];
                d -= 1;
            }
            poly[0] = -p * poly[0];
            deg += 1;
        }
        i += 1;
    }
    poly
}

/// F(m, r)'s transforms (m <= MAX_M, r <= MAX_R, m + r - 1 <= MAX_N). A
/// `const fn`, so each (m, r) kernel has B^T and A^T as constants and the
/// transforms compile to straight-line code without the zero terms.
const fn transforms(m: usize, r: usize) -> Tables {
    let n = m + r - 1;
    let mut t = Tables {
        bt: [[0.0; MAX_N]; MAX_N],
        at: [[0.0; MAX_N]; MAX_M],
        g: [[0.0; MAX_R]; MAX_N],
    };
    let mut j = 0;
    while j < n - 1 {
        let p = POINTS[j];
        t.bt[j] = node(n - 1, j);
        let mut den = 1.0;
        let mut i = 0;
        while i < n - 1 {
            if i != j {
                den *= p - POINTS[i];
            }
            i += 1;
        }
        let mut pow = 1.0;
        let mut e = 0;
        while e < r || e < m {
            if e < r {
                t.g[j][e] = pow / den;
            }
            if e < m {
                t.at[e][j] = pow;
            }
            pow *= p;
            e += 1;
        }
        j += 1;
    }
    t.bt[n - 1] = node(n - 1, n);
    t.g[n - 1][r - 1] = 1.0;
    t.at[m - 1][n - 1] = 1.0;
    t
}

/// F(M, R)'s float32 transforms, as constants of the kernel for (M, R).
struct Fmr<const M: usize, const R: usize>;

impl<const M: usize, const R: usize> Fmr<M, R> {
    const N: usize = M + R - 1;
    const BT: [[f32; MAX_N]; MAX_N] = to_f32(transforms(M, R).bt);
    const AT: [[f32; MAX_N]; MAX_M] = to_f32(transforms(M, R).at);
}

/// An f64 table in float32 (exact for B^T and A^T: unit test).
const fn to_f32<const ROWS: usize>(t: [[f64; MAX_N]; ROWS]) -> [[f32; MAX_N]; ROWS] {
    let mut out = [[0.0f32; MAX_N]; ROWS];
    let mut i = 0;
    while i < ROWS * MAX_N {
        out[i / MAX_N][i % MAX_N] = t[i / MAX_N][i % MAX_N] as f32;
        i += 1;
    }
    out
}

/// Where one tile's outputs and input points lie.
struct TilePlace {
    /// Sample, output row and column of its first output.
    b: usize,
    oy: usize,
    ox: usize,
    /// Outputs (m, fewer at a line's end).
    count: usize,
}

impl LineWinograd {
    /// `w` is HWIO [kh, kw, c, k] with kh or kw 1; `bias` has k values
    /// when present. `m` is the outputs per tile (2 or 4 in practice).
    ///
    /// Panics if `supports` would say no to the filter's shape.
    pub fn new(
        w: &[f32],
        [kh, kw]: [usize; 2],
        c: usize,
        k: usize,
        bias: Option<&[f32]>,
        m: usize,
    ) -> Self {
        let r = kh.max(kw);
        assert!(
            (kh == 1) != (kw == 1) && shape_ok(m, r),
            "line winograd: filter {kh}x{kw}, m {m}"
        );
        let n = m + r - 1;
        let gm = transforms(m, r).g;
        let mut u = Vec::with_capacity(n);
        let mut buf = vec![0.0f32; c * k];
        let mut row = vec![0.0f64; k];
        for gx in &gm[..n] {
            for ci in 0..c {
                row.fill(0.0);
                for (t, &coef) in gx.iter().enumerate().take(r) {
                    if coef == 0.0 {
                        continue;
                    }
                    let src = &w[(t * c + ci) * k..][..k];
                    for (acc, &v) in row.iter_mut().zip(src) {
                        *acc += coef * v as f64;
                    }
                }
                for (d, &v) in buf[ci * k..][..k].iter_mut().zip(&row) {
                    *d = v as f32;
                }
            }
            u.push(PackedB::pack(&buf, c, k, k, 1, None));
        }
        LineWinograd {
            m,
            r,
            vertical: kh > 1,
            c,
            k,
            u,
            bias: bias.map_or_else(|| vec![0.0; k], |b| b[..k].to_vec()),
        }
    }

    /// Bytes held (for memory accounting).
    pub fn bytes(&self) -> usize {
        self.u.iter().map(|p| p.bytes()).sum::<usize>() + self.bias.len() * 4
    }

    /// out (NHWC, one pixel every `ldc` floats) = epilogue(conv(x)), as
    /// `Winograd::run`: the residual has one row of k per output pixel.
    ///
    /// Panics if a slice is shorter than the geometry says, the geometry
    /// is not this filter's, or the epilogue has PReLU slopes.
    pub fn run(&self, x: &[f32], g: &ConvGeometry, out: &mut [f32], ldc: usize, epi: &Epilogue) {
        let taps = if self.vertical {
            [self.r, 1]
        } else {
            [1, self.r]
        };
        assert!(
            supports(g, self.m) && [g.kh, g.kw] == taps && g.c == self.c && g.co == self.k,
            "line winograd: geometry"
        );
        check_sizes(x, g, out.len(), ldc, epi);
        let tiles = g.n * self.lines(g) * self.per_line(g);
        if tiles == 0 {
            return;
        }
        let n = self.u.len();
        let optr = SendPtr(out.as_mut_ptr());
        let job = |t0, t1| Job {
            x,
            g,
            ldc,
            out: optr,
            epi,
            t0,
            t1,
        };
        let split = Blocks::new(tiles, n * (self.c + self.k));
        let run = |b: usize| {
            let mut scratch = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
            let job = job(split.start(b), split.start(b + 1));
            // SAFETY: blocks write the outputs of disjoint tiles.
            unsafe { self.block_best(&job, &mut scratch) };
            SCRATCH.with(|s| *s.borrow_mut() = scratch);
        };
        super::team::par_for(split.blocks, &run);
    }

    /// Lines of outputs along the taps' axis, per sample.
    fn lines(&self, g: &ConvGeometry) -> usize {
        if self.vertical {
            g.ow
        } else {
            g.oh
        }
    }

    /// Tiles per line.
    fn per_line(&self, g: &ConvGeometry) -> usize {
        if self.vertical {
            g.oh.div_ceil(self.m)
        } else {
            g.ow.div_ceil(self.m)
        }
    }

    /// Tile `t`'s place. Tiles go sample by sample, and within a sample in
    /// the order of their first output pixel (a vertical tile's next
    /// neighbour is one column to the right), so a block's outputs are
    /// close together.
    fn place(&self, g: &ConvGeometry, t: usize) -> TilePlace {
        let (lines, per) = (self.lines(g), self.per_line(g));
        let b = t / (lines * per);
        let rest = t % (lines * per);
        let m = self.m;
        let (oy, ox, len, pos) = if self.vertical {
            let (ty, ox) = (rest / lines, rest % lines);
            (ty * m, ox, g.oh, ty * m)
        } else {
            let (oy, tx) = (rest / per, rest % per);
            (oy, tx * m, g.ow, tx * m)
        };
        TilePlace {
            b,
            oy,
            ox,
            count: m.min(len - pos),
        }
    }

    /// # Safety
    /// As `block`.
    unsafe fn block_best(&self, job: &Job, scratch: &mut Vec<f32>) {
        #[cfg(target_arch = "x86_64")]
        {
            if avx512() {
                return self.block_avx512(job, scratch);
            }
        }
        self.dispatch::<false>(job, scratch)
    }

    /// # Safety
    /// As `block`, and the CPU has AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn block_avx512(&self, job: &Job, scratch: &mut Vec<f32>) {
        self.dispatch::<true>(job, scratch)
    }

    /// The kernel for this (m, r).
    ///
    /// # Safety
    /// As `block`.
    #[inline(always)]
    unsafe fn dispatch<const AVX512: bool>(&self, job: &Job, s: &mut Vec<f32>) {
        match (self.m, self.r) {
            (2, 2) => self.block::<2, 2, AVX512>(job, s),
            (2, 3) => self.block::<2, 3, AVX512>(job, s),
            (2, 4) => self.block::<2, 4, AVX512>(job, s),
            (2, 5) => self.block::<2, 5, AVX512>(job, s),
            (2, 6) => self.block::<2, 6, AVX512>(job, s),
            (2, 7) => self.block::<2, 7, AVX512>(job, s),
            (4, 2) => self.block::<4, 2, AVX512>(job, s),
            (4, 3) => self.block::<4, 3, AVX512>(job, s),
            (4, 4) => self.block::<4, 4, AVX512>(job, s),
            (4, 5) => self.block::<4, 5, AVX512>(job, s),
            (4, 6) => self.block::<4, 6, AVX512>(job, s),
            (4, 7) => self.block::<4, 7, AVX512>(job, s),
            // `new` admits only the shapes above (`shape_ok`).
            (m, r) => unreachable!("line winograd: no kernel for F({m}, {r})"),
        }
    }

    /// Tiles t0..t1 of `job`: transform in, n gemms, transform out.
    ///
    /// # Safety
    /// `job.out` covers the whole output; no other thread writes these
    /// tiles' outputs.
    #[inline(always)]
    unsafe fn block<const M: usize, const R: usize, const AVX512: bool>(
        &self,
        job: &Job,
        s: &mut Vec<f32>,
    ) {
        let (n, c, k) = (Fmr::<M, R>::N, self.c, self.k);
        let nt = job.t1 - job.t0;
        let need = n * nt * (c + k);
        if s.len() < need {
            s.resize(need, 0.0);
        }
        let (v, mm) = s.split_at_mut(n * nt * c);
        self.transform_in::<M, R>(job, v);
        products(&self.u, v, (n * c, c), mm, nt);
        self.transform_out::<M, R, AVX512>(job, mm);
    }

    /// The inputs of tiles t0..t1 transformed into `v`, tile by tile (n
    /// rows of c each, `products`' layout).
    #[inline(always)]
    fn transform_in<const M: usize, const R: usize>(&self, job: &Job, v: &mut [f32]) {
        let (n, c, g) = (Fmr::<M, R>::N, self.c, job.g);
        let (dy, dx) = if self.vertical { (1, 0) } else { (0, 1) };
        let mut d = [[0.0f32; LANES]; MAX_N];
        for t in 0..job.t1 - job.t0 {
            let p = self.place(g, job.t0 + t);
            // The first input point, wrapped below zero in the padding.
            let iy0 = p.oy.wrapping_sub(g.pad[0]);
            let ix0 = p.ox.wrapping_sub(g.pad[1]);
            let mut c0 = 0;
            while c0 < c {
                let w = LANES.min(c - c0);
                for (j, dj) in d.iter_mut().enumerate().take(n) {
                    let (iy, ix) = (iy0.wrapping_add(j * dy), ix0.wrapping_add(j * dx));
                    *dj = if iy >= g.h || ix >= g.w {
                        [0.0; LANES]
                    } else {
                        load_lanes(job.x, ((p.b * g.h + iy) * g.w + ix) * g.c + c0, w)
                    };
                }
                for xi in 0..n {
                    let r = comb(&Fmr::<M, R>::BT[xi], n, &d);
                    store_lanes(&mut v[(t * n + xi) * c + c0..], w, &r);
                }
                c0 += w;
            }
        }
    }

    /// Tiles t0..t1's products (`mm`: position by position, a row of k
    /// per tile) transformed back into the output, the epilogue applied.
    ///
    /// # Safety
    /// As `block`.
    #[inline(always)]
    unsafe fn transform_out<const M: usize, const R: usize, const AVX512: bool>(
        &self,
        job: &Job,
        mm: &[f32],
    ) {
        let (n, k, g) = (Fmr::<M, R>::N, self.k, job.g);
        let step = if self.vertical { g.ow } else { 1 };
        let mut d = [[0.0f32; LANES]; MAX_N];
        for tile in job.t0..job.t1 {
            let p = self.place(g, tile);
            let out0 = (p.b * g.oh + p.oy) * g.ow + p.ox;
            let (row, rows) = (tile - job.t0, job.t1 - job.t0);
            let mut k0 = 0;
            while k0 < k {
                for (xi, dx) in d.iter_mut().enumerate().take(n) {
                    *dx = load_product(&mm[(xi * rows + row) * k + k0..]);
                }
                for i in 0..p.count {
                    let y = comb(&Fmr::<M, R>::AT[i], n, &d);
                    // SAFETY: an output pixel of this tile (inside n*oh*ow:
                    // `count` stops at the line's end).
                    job.store::<AVX512>(out0 + i * step, k0, k, &y, &self.bias);
                }
                k0 += LANES;
            }
        }
    }
}

/// `sum_j coef[j] * src[j]` over j < n, skipping zero coefficients (which
/// are constants once inlined, so the skip costs nothing).
#[inline(always)]
fn comb(coef: &[f32; MAX_N], n: usize, src: &[[f32; LANES]; MAX_N]) -> [f32; LANES] {
    let mut acc = [0.0f32; LANES];
    for (&cf, s) in coef.iter().zip(src).take(n) {
        if cf != 0.0 {
            for (a, &v) in acc.iter_mut().zip(s) {
                *a += cf * v;
            }
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::kernels::gemm::Act;
    use crate::runtime::kernels::winograd::tests::{data, direct, worst};

    #[test]
    fn transforms_compute_correlation_exactly_in_f64() {
        for m in [2, 4] {
            for r in 2..=MAX_R {
                let n = m + r - 1;
                let t = transforms(m, r);
                let d: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
                let w: Vec<f64> = (0..r).map(|i| (i as f64 * 1.3 + 0.2).cos()).collect();
                let prod: Vec<f64> = (0..n)
                    .map(|xi| {
                        let u: f64 = (0..r).map(|k| t.g[xi][k] * w[k]).sum();
                        let v: f64 = (0..n).map(|l| t.bt[xi][l] * d[l]).sum();
                        u * v
                    })
                    .collect();
                for i in 0..m {
                    let got: f64 = (0..n).map(|xi| t.at[i][xi] * prod[xi]).sum();
                    let want: f64 = (0..r).map(|k| d[i + k] * w[k]).sum();
                    assert!((got - want).abs() < 1e-12, "F({m},{r}) output {i}");
                }
                // B^T and A^T are exact in float32 (the kernels' constants).
                let exact = |v: &f64| *v as f32 as f64 == *v;
                assert!(t.bt.iter().flatten().all(exact) && t.at.iter().flatten().all(exact));
            }
        }
    }

    #[test]
    fn matches_direct_convolution_along_rows_and_columns() {
        // (n, h, w, c, k, kh, kw, pad): SAME 1x7 / 7x1 on an 8x8 map (FaceNet's
        // block17), a 17-long line (ragged last tile), TF's uneven SAME of a
        // 1x4, VALID 1x5, 3x1; channels not multiples of 16 or 32.
        for &(n, h, w, c, k, kh, kw, pad) in &[
            (2, 8, 8, 19, 40, 1, 7, [0, 3]),
            (1, 8, 8, 33, 17, 7, 1, [3, 0]),
            (1, 17, 5, 16, 32, 7, 1, [3, 0]),
            (2, 3, 17, 24, 20, 1, 4, [0, 1]),
            (1, 6, 13, 8, 8, 1, 5, [0, 0]),
            (1, 9, 4, 5, 3, 3, 1, [1, 0]),
        ] {
            let r: usize = kh.max(kw);
            let (oh, ow) = if kh > 1 {
                (h + 2 * pad[0] + 1 - r + (r + 1) % 2, w)
            } else {
                (h, w + 2 * pad[1] + 1 - r + (r + 1) % 2)
            };
            let g = ConvGeometry {
                n,
                h,
                w,
                c,
                kh,
                kw,
                co: k,
                oh,
                ow,
                stride: [1, 1],
                dilation: [1, 1],
                pad,
            };
            let x = data(n * h * w * c, 1);
            let wt = data(r * c * k, 2);
            let bias = data(k, 3);
            let res = data(n * oh * ow * k, 4);
            let (want, mag) = direct(&x, &wt, &g);
            for m in [2, 4] {
                assert!(supports(&g, m));
                let lw = LineWinograd::new(&wt, [kh, kw], c, k, Some(&bias), m);
                let epi = Epilogue {
                    scale: 0.5,
                    residual: Some((&res, k, 2.0)),
                    act: Act::Relu,
                    slopes: None,
                };
                let mut out = vec![f32::NAN; n * oh * ow * k];
                lw.run(&x, &g, &mut out, k, &epi);
                // Into a wider row from column 3: the same values, the
                // other columns untouched.
                let row = k + 7;
                let mut wide = vec![-7.0f32; n * oh * ow * row];
                lw.run(&x, &g, &mut wide[3..], row, &epi);
                for (p, r) in wide.chunks(row).enumerate() {
                    assert_eq!(&r[3..3 + k], &out[p * k..][..k], "F({m}): pixel {p}");
                    assert!(r[..3].iter().chain(&r[3 + k..]).all(|&v| v == -7.0));
                }
                let worst = worst(&out, (&want, &mag), &bias, &res);
                eprintln!(
                    "F({m}) {kh}x{kw} {n}x{h}x{w}x{c}->{k}: worst {:.2e}",
                    worst.0
                );
                let bound = if m == 2 { 2e-6 } else { 1e-5 };
                assert!(
                    worst.0 < bound,
                    "F({m}) {kh}x{kw} {n}x{h}x{w}x{c}->{k}: worst {:.2e} at {}",
                    worst.0,
                    worst.1
                );
            }
        }
    }

    #[test]
    fn chosen_where_it_saves_products() {
        let g = |h: usize, w: usize, c: usize, kh: usize, kw: usize| ConvGeometry {
            n: 1,
            h,
            w,
            c,
            kh,
            kw,
            co: c,
            oh: h,
            ow: w,
            stride: [1, 1],
            dilation: [1, 1],
            pad: [(kh - 1) / 2, (kw - 1) / 2],
        };
        // FaceNet's block17 (8x8, 1x7 and 7x1) and Inception-v3's 17x17 1x7.
        assert!(worthwhile(&g(8, 8, 128, 1, 7), 4));
        assert!(worthwhile(&g(8, 8, 128, 7, 1), 4));
        assert!(worthwhile(&g(17, 17, 128, 1, 7), 4));
        // A 3-wide line (FaceNet's block8): 7 products against 6.
        assert!(!worthwhile(&g(3, 3, 192, 1, 3), 4));
        // Too few channels for the transforms to pay.
        assert!(!worthwhile(&g(8, 8, 16, 1, 7), 4));
        // Not a line filter, or strided.
        assert!(!supports(&g(8, 8, 128, 3, 3), 4));
        assert!(!supports(
            &ConvGeometry {
                stride: [1, 2],
                ..g(8, 8, 128, 1, 7)
            },
            4
        ));
    }
}
