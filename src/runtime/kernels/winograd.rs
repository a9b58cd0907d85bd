//! 3x3 stride-1 convolutions by Winograd's minimal filtering, F(m x m, 3 x 3):
//! each m x m block of outputs costs (m+2)^2 multiplies per channel pair
//! instead of 9 m^2 (2.25x fewer for m = 2, 4x for m = 4). The filter is
//! transformed once at load (in f64) into (m+2)^2 packed matrices; at run
//! time input tiles are transformed, multiplied by them with the packed gemm
//! and transformed back, bias, residual and activation applied on the way
//! out. Work goes in blocks of tiles so the transformed data stays in cache.
//!
//! Sums are regrouped and the m = 4 transforms scale by up to 8, so results
//! differ from a direct float32 sum: against an f64 reference ~1e-7 of the
//! terms' magnitude for m = 2 and ~3e-6 for m = 4 (unit test below); on
//! FaceNet the embeddings stay within 1.8e-7 of TensorFlow's (engine tests).

// The transforms index small matrices the way their formulas do.
#![allow(clippy::needless_range_loop)]

#[cfg(target_arch = "x86_64")]
use super::gemm::avx512;
use super::gemm::{gemm_serial, Act, Dense, Epilogue, PackedB, SendPtr, MR};
use super::ConvGeometry;
use std::cell::RefCell;

/// Output block size m of F(m x m, 3 x 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tile {
    /// F(2x2, 3x3): 16 products per 4 outputs, transforms of +-1 only.
    F2,
    /// F(4x4, 3x3): 36 products per 16 outputs; larger transform constants.
    F4,
}

/// The transform matrices of one F(m x m, 3 x 3), as constants so the
/// transforms below compile to straight-line code (zero terms dropped, +-1
/// products folded). Arrays are sized for the largest (alpha = 6).
trait Kind {
    const M: usize;
    const ALPHA: usize;
    /// B^T, alpha x alpha (input transform).
    const BT: [[f32; 6]; 6];
    /// A^T, m x alpha (output transform).
    const AT: [[f32; 6]; 4];
    /// G, alpha x 3 (filter transform, in f64 at load).
    const G: [[f64; 3]; 6];
}

struct K2;
struct K4;

#[rustfmt::skip]
impl Kind for K2 {
    const M: usize = 2;
    const ALPHA: usize = 4;
    const BT: [[f32; 6]; 6] = [
        [1.0, 0.0, -1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 1.0, 0.0, 0.0, 0.0],
        [0.0, -1.0, 1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, -1.0, 0.0, 0.0],
        [0.0; 6],
        [0.0; 6],
    ];
    const AT: [[f32; 6]; 4] = [
        [1.0, 1.0, 1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, -1.0, -1.0, 0.0, 0.0],
        [0.0; 6],
        [0.0; 6],
    ];
    const G: [[f64; 3]; 6] = [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
        [0.0; 3],
        [0.0; 3],
    ];
}

#[rustfmt::skip]
impl Kind for K4 {
    const M: usize = 4;
    const ALPHA: usize = 6;
    const BT: [[f32; 6]; 6] = [
        [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
        [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
        [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
        [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
        [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
        [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
    ];
    const AT: [[f32; 6]; 4] = [
        [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
        [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
        [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
    ];
    const G: [[f64; 3]; 6] = [
        [1.0 / 4.0, 0.0, 0.0],
        [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
        [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
        [0.0, 0.0, 1.0],
    ];
}

/// Scratch floats a block may use for its transformed tiles (in and out
/// together): about a third of this machine kind's 1 MB L2.
const BLOCK_BYTES: usize = 384 * 1024;
/// At most this many MR-row tiles per block (more only adds imbalance).
const MAX_ROW_TILES: usize = 4;

/// A 3x3 stride-1 convolution's weights, transformed and packed.
pub struct Winograd {
    tile: Tile,
    c: usize,
    k: usize,
    /// One packed C x K matrix per transformed position (alpha^2 of them).
    u: Vec<PackedB>,
    bias: Vec<f32>,
}

/// Whether `g` is a convolution Winograd computes here: 3x3, stride 1.
pub fn supports(g: &ConvGeometry) -> bool {
    g.kh == 3 && g.kw == 3 && g.stride == [1, 1] && g.dilation == [1, 1]
}

/// Whether it is also worth it: faster than the im2col gemm, as measured on
/// FaceNet's shapes (`examples/bench_winograd`) - F(4x4) from 32 x 32
/// channels (1.2x-2.3x; equal at 32 x 32 on a 17x17 map, batch 1), F(2x2)
/// only from 80 x 192 (1.2x-1.4x; its 4x more tiles cost more in
/// transforms) - and on a map of at least 16 tiles: on smaller ones (8x8)
/// there is little to gain while the transformed weights take alpha^2 / 9
/// times the memory (Mixed_7a's 256 x 256 layer: +7 MB for F(4x4)).
pub fn worthwhile(g: &ConvGeometry, tile: Tile) -> bool {
    let (min, m) = match tile {
        Tile::F2 => (80 * 192, K2::M),
        Tile::F4 => (32 * 32, K4::M),
    };
    supports(g) && g.c * g.co >= min && g.oh.div_ceil(m) * g.ow.div_ceil(m) >= 16
}

/// Channels per transform step: one AVX-512 vector.
pub(super) const LANES: usize = 16;

impl Winograd {
    /// `w` is HWIO [3, 3, c, k]; `bias` has k values when present.
    pub fn new(w: &[f32], c: usize, k: usize, bias: Option<&[f32]>, tile: Tile) -> Self {
        let (alpha, gm) = match tile {
            Tile::F2 => (K2::ALPHA, K2::G),
            Tile::F4 => (K4::ALPHA, K4::G),
        };
        let mut u = Vec::with_capacity(alpha * alpha);
        let mut buf = vec![0.0f32; c * k];
        let mut row = vec![0.0f64; k];
        for x1 in 0..alpha {
            for x2 in 0..alpha {
                for ci in 0..c {
                    row.fill(0.0);
                    for a in 0..3 {
                        for b in 0..3 {
                            let coef = gm[x1][a] * gm[x2][b];
                            if coef == 0.0 {
                                continue;
                            }
                            let src = &w[((a * 3 + b) * c + ci) * k..][..k];
                            for (r, &v) in row.iter_mut().zip(src) {
                                *r += coef * v as f64;
                            }
                        }
                    }
                    for (d, &r) in buf[ci * k..][..k].iter_mut().zip(&row) {
                        *d = r as f32;
                    }
                }
                u.push(PackedB::pack(&buf, c, k, k, 1, None));
            }
        }
        Winograd {
            tile,
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

    /// out (NHWC, n x oh x ow x k, one pixel every `ldc` floats: k, or a
    /// wider row when the output is part of a concatenation) =
    /// epilogue(conv(x)). The epilogue's residual has one row of k per
    /// output pixel.
    ///
    /// Panics if a slice is shorter than the geometry says (the engine
    /// sizes them from its plan), or if the epilogue has PReLU slopes
    /// (the output transform applies bias, residual and activation only).
    pub fn run(&self, x: &[f32], g: &ConvGeometry, out: &mut [f32], ldc: usize, epi: &Epilogue) {
        assert!(
            supports(g) && g.c == self.c && g.co == self.k,
            "winograd: geometry"
        );
        check_sizes(x, g, out.len(), ldc, epi);
        let (m, alpha) = match self.tile {
            Tile::F2 => (K2::M, K2::ALPHA),
            Tile::F4 => (K4::M, K4::ALPHA),
        };
        let a2 = alpha * alpha;
        let tiles = g.n * g.oh.div_ceil(m) * g.ow.div_ceil(m);
        if tiles == 0 {
            return;
        }
        let split = Blocks::new(tiles, a2 * (self.c + self.k));
        let optr = SendPtr(out.as_mut_ptr());
        let run = |b: usize| {
            let job = Job {
                x,
                g,
                ldc,
                out: optr,
                epi,
                t0: split.start(b),
                t1: split.start(b + 1),
            };
            // The scratch is taken out of the thread-local so the work is
            // not inside a closure (closures lose the target features).
            let mut scratch = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
            // SAFETY: blocks write the outputs of disjoint tiles.
            unsafe {
                match self.tile {
                    Tile::F2 => self.block_best::<K2>(&job, &mut scratch),
                    Tile::F4 => self.block_best::<K4>(&job, &mut scratch),
                }
            }
            SCRATCH.with(|s| *s.borrow_mut() = scratch);
        };
        super::team::par_for(split.blocks, &run);
    }

    /// # Safety
    /// As `block`.
    unsafe fn block_best<K: Kind>(&self, job: &Job, scratch: &mut Vec<f32>) {
        #[cfg(target_arch = "x86_64")]
        {
            if avx512() {
                return self.block_avx512::<K>(job, scratch);
            }
        }
        self.block::<K, false>(job, scratch)
    }

    /// # Safety
    /// As `block`, and the CPU has AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn block_avx512<K: Kind>(&self, job: &Job, scratch: &mut Vec<f32>) {
        self.block::<K, true>(job, scratch)
    }

    /// Tiles t0..t1: transform in, alpha^2 gemms, transform out.
    ///
    /// # Safety
    /// `job.out` covers the whole output; no other thread writes these tiles.
    #[inline(always)]
    unsafe fn block<K: Kind, const AVX512: bool>(&self, job: &Job, s: &mut Vec<f32>) {
        let (alpha, m, c, k) = (K::ALPHA, K::M, self.c, self.k);
        let g = job.g;
        let a2 = alpha * alpha;
        let nt = job.t1 - job.t0;
        let (th, tw) = (g.oh.div_ceil(m), g.ow.div_ceil(m));
        let need = a2 * nt * (c + k);
        if s.len() < need {
            s.resize(need, 0.0);
        }
        let (v, mm) = s.split_at_mut(a2 * nt * c);
        // One tile's work arrays for the whole block: zeroed per tile and
        // chunk they were a memset call each time.
        let (mut d, mut tv): (Vecs, Vecs) = ([[[0.0; LANES]; 6]; 6], [[[0.0; LANES]; 6]; 6]);
        let mut y: Out = [[[0.0; LANES]; 4]; 4];
        for t in 0..nt {
            let tile = job.t0 + t;
            let (b, ty, tx) = (tile / (th * tw), tile / tw % th, tile % tw);
            let origin = [
                b,
                (ty * m).wrapping_sub(g.pad[0]),
                (tx * m).wrapping_sub(g.pad[1]),
            ];
            let mut c0 = 0;
            while c0 < c {
                let w = LANES.min(c - c0);
                input_chunk::<K>(
                    job.x,
                    g,
                    origin,
                    c0,
                    w,
                    &mut v[t * c + c0..],
                    nt * c,
                    (&mut d, &mut tv),
                );
                c0 += w;
            }
        }
        products(&self.u, v, (c, nt * c), mm, nt);
        for t in 0..nt {
            let tile = job.t0 + t;
            let (b, ty, tx) = (tile / (th * tw), tile / tw % th, tile % tw);
            let rows = m.min(g.oh - ty * m);
            let cols = m.min(g.ow - tx * m);
            let first = (b * g.oh + ty * m) * g.ow + tx * m;
            let mut k0 = 0;
            while k0 < k {
                let w = LANES.min(k - k0);
                output_chunk::<K>(&mm[t * k + k0..], nt * k, (&mut d, &mut tv, &mut y));
                for o1 in 0..rows {
                    for o2 in 0..cols {
                        // SAFETY: p < n*oh*ow (asserted in `run`): this tile's pixel.
                        job.store::<AVX512>(first + o1 * g.ow + o2, k0, k, &y[o1][o2], &self.bias);
                    }
                }
                k0 += w;
            }
        }
    }
}

/// `mm[xi] = v[xi] x u[xi]` for each transformed position `xi` of `u`'s:
/// tile t's c transformed inputs for position xi are at `v[t * ts + xi *
/// ps ..]` (the 2-D transforms store position by position, the 1-D ones
/// tile by tile); `mm` holds the products position by position, `nt` rows
/// of k each.
pub(super) fn products(
    u: &[PackedB],
    v: &[f32],
    (ts, ps): (usize, usize),
    mm: &mut [f32],
    nt: usize,
) {
    if nt == 0 {
        return;
    }
    for (xi, p) in u.iter().enumerate() {
        let (c, k) = (p.k(), p.n());
        let first = xi * ps;
        let a = Dense {
            a: &v[first..first + (nt - 1) * ts + c],
            m: nt,
            k: c,
            lda: ts,
        };
        gemm_serial(
            &a,
            p,
            &mut mm[xi * nt * k..][..nt * k],
            k,
            &Epilogue::default(),
        );
    }
}

/// Panics unless `x`, an output of `out_len` floats with a pixel every
/// `ldc`, and the epilogue fit `g` (g.co channels out) and the transforms:
/// no PReLU (the output transform applies bias, residual and activation
/// only), a residual of one row of g.co per pixel.
pub(super) fn check_sizes(x: &[f32], g: &ConvGeometry, out_len: usize, ldc: usize, epi: &Epilogue) {
    let k = g.co;
    assert!(epi.slopes.is_none(), "winograd: no PReLU epilogue");
    assert!(
        x.len() >= g.n * g.h * g.w * g.c,
        "winograd: input too small"
    );
    let pixels = g.n * g.oh * g.ow;
    assert!(
        ldc >= k && (pixels == 0 || out_len >= (pixels - 1) * ldc + k),
        "winograd: output too small"
    );
    if let Some((r, ldr, _)) = epi.residual {
        assert!(ldr == k && r.len() >= pixels * k, "winograd: residual");
    }
}

/// One block of tiles' inputs and destination.
pub(super) struct Job<'a> {
    pub(super) x: &'a [f32],
    pub(super) g: &'a ConvGeometry,
    /// Floats from one output pixel to the next.
    pub(super) ldc: usize,
    pub(super) out: SendPtr,
    pub(super) epi: &'a Epilogue<'a>,
    pub(super) t0: usize,
    pub(super) t1: usize,
}

impl Job<'_> {
    /// Output pixel `p`'s channels k0.. (up to 16, fewer at the end of
    /// `k`) = epilogue(`y` + bias).
    ///
    /// # Safety
    /// `p` is an output pixel of this job's tiles (< n*oh*ow, the output
    /// sized for it), written by no other thread; with `AVX512` the CPU has
    /// AVX-512F.
    #[inline(always)]
    pub(super) unsafe fn store<const AVX512: bool>(
        &self,
        p: usize,
        k0: usize,
        k: usize,
        y: &[f32; LANES],
        bias: &[f32],
    ) {
        let w = LANES.min(k - k0);
        let dst = std::slice::from_raw_parts_mut(self.out.get().add(p * self.ldc + k0), w);
        let res = self
            .epi
            .residual
            .map(|(r, _, s)| (&r[p * k + k0..][..w], s));
        let (scale, act, bias) = (self.epi.scale, self.epi.act, &bias[k0..k0 + w]);
        #[cfg(target_arch = "x86_64")]
        if AVX512 {
            finish_avx512(dst, y, scale, res, act, bias);
            return;
        }
        finish(dst, &y[..w], bias, scale, res, act);
    }
}

/// How a transform's tiles split into blocks: whole MR-row gemm tiles,
/// a block's transformed data within `BLOCK_BYTES`, as many blocks as a
/// multiple of the threads (when there are enough).
pub(super) struct Blocks {
    pub(super) blocks: usize,
    row_tiles: usize,
    tiles: usize,
}

impl Blocks {
    /// `floats` per tile: its transformed inputs and products together.
    pub(super) fn new(tiles: usize, floats: usize) -> Self {
        let row_tiles = tiles.div_ceil(MR);
        let threads = rayon::current_num_threads().max(1);
        let cap = (BLOCK_BYTES / (4 * floats * MR).max(1)).clamp(1, MAX_ROW_TILES);
        let blocks = row_tiles
            .div_ceil(cap)
            .next_multiple_of(threads)
            .min(row_tiles);
        Blocks {
            blocks,
            row_tiles,
            tiles,
        }
    }
    /// Block `b`'s first tile (`b == blocks`: the end).
    pub(super) fn start(&self, b: usize) -> usize {
        (b * self.row_tiles / self.blocks * MR).min(self.tiles)
    }
}

type Vecs = [[[f32; LANES]; 6]; 6];

/// `x[at..at + w]` as one vector, zeros past `w` (a whole vector is one
/// unaligned array read of a checked range: slice copies of a run-time
/// length were a memcpy call each).
#[inline(always)]
pub(super) fn load_lanes(x: &[f32], at: usize, w: usize) -> [f32; LANES] {
    match x.get(at..at + LANES) {
        // SAFETY: the range is inside `x` (checked by get).
        Some(s) if w == LANES => unsafe {
            std::ptr::read_unaligned(s.as_ptr() as *const [f32; LANES])
        },
        _ => {
            let mut v = [0.0; LANES];
            v[..w].copy_from_slice(&x[at..at + w]);
            v
        }
    }
}

/// The first `w` lanes of `r` into `dst`.
#[inline(always)]
pub(super) fn store_lanes(dst: &mut [f32], w: usize, r: &[f32; LANES]) {
    match dst.get_mut(..LANES) {
        // SAFETY: the range is inside `dst` (checked by get_mut).
        Some(o) if w == LANES => unsafe {
            std::ptr::write_unaligned(o.as_mut_ptr() as *mut [f32; LANES], *r)
        },
        _ => dst[..w].copy_from_slice(&r[..w]),
    }
}

/// One vector of a product row from `src` on; the block's last tile may
/// end within it (the lanes past the end are never stored: `Job::store`
/// takes the chunk's width of them).
#[inline(always)]
pub(super) fn load_product(src: &[f32]) -> [f32; LANES] {
    match src.get(..LANES) {
        // SAFETY: the range is inside `src` (checked by get).
        Some(s) => unsafe { std::ptr::read_unaligned(s.as_ptr() as *const [f32; LANES]) },
        None => {
            let mut v = [0.0; LANES];
            v[..src.len()].copy_from_slice(src);
            v
        }
    }
}

/// Transform channels c0..c0+w of one input tile (origin = sample, row,
/// column, the latter two wrapped below zero) into `v[xi * stride ..]`,
/// with the block's work arrays `d` and `t`.
///
/// Whole 16-lane vectors move as one unaligned array read or write of a
/// checked range: as slice copies of a length only known at run time, and
/// with the work arrays zeroed per call, each tile cost dozens of memcpy
/// and memset calls (a quarter of a 32-channel layer's time; F(4x4) on
/// FaceNet's stem 12-17% faster without them, `examples/bench_winograd`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn input_chunk<K: Kind>(
    x: &[f32],
    g: &ConvGeometry,
    origin: [usize; 3],
    c0: usize,
    w: usize,
    v: &mut [f32],
    stride: usize,
    (d, t): (&mut Vecs, &mut Vecs),
) {
    let a = K::ALPHA;
    for (i, row) in d.iter_mut().enumerate().take(a) {
        let iy = origin[1].wrapping_add(i);
        for (j, px) in row.iter_mut().enumerate().take(a) {
            let ix = origin[2].wrapping_add(j);
            *px = if iy >= g.h || ix >= g.w {
                [0.0; LANES]
            } else {
                load_lanes(x, ((origin[0] * g.h + iy) * g.w + ix) * g.c + c0, w)
            };
        }
    }
    // Rows: t[i][x2] = sum_j B^T[x2][j] d[i][j]; then columns.
    for i in 0..a {
        for x2 in 0..a {
            t[i][x2] = comb(&K::BT[x2], a, |j| &d[i][j]);
        }
    }
    for x1 in 0..a {
        for x2 in 0..a {
            let r = comb(&K::BT[x1], a, |i| &t[i][x2]);
            store_lanes(&mut v[(x1 * a + x2) * stride..], w, &r);
        }
    }
}

/// Y = A^T M A for 16 channels of one tile; `mm[xi * stride ..]` is M[xi].
#[inline(always)]
fn output_chunk<K: Kind>(mm: &[f32], stride: usize, (mv, t, y): (&mut Vecs, &mut Vecs, &mut Out)) {
    let (a, m) = (K::ALPHA, K::M);
    for x1 in 0..a {
        for x2 in 0..a {
            mv[x1][x2] = load_product(&mm[(x1 * a + x2) * stride..]);
        }
    }
    for x1 in 0..a {
        for o2 in 0..m {
            t[x1][o2] = comb(&K::AT[o2], a, |x2| &mv[x1][x2]);
        }
    }
    for o1 in 0..m {
        for o2 in 0..m {
            y[o1][o2] = comb(&K::AT[o1], a, |x1| &t[x1][o2]);
        }
    }
}

/// One tile's outputs for 16 channels.
type Out = [[[f32; LANES]; 4]; 4];

/// `sum_j coef[j] * src(j)` over j < n, skipping zero coefficients (which
/// are constants once inlined, so the skip costs nothing).
#[inline(always)]
fn comb<'a>(coef: &[f32; 6], n: usize, src: impl Fn(usize) -> &'a [f32; LANES]) -> [f32; LANES] {
    let mut acc = [0.0f32; LANES];
    for (j, &cf) in coef.iter().enumerate().take(n) {
        if cf != 0.0 {
            let s = src(j);
            for l in 0..LANES {
                acc[l] += cf * s[l];
            }
        }
    }
    acc
}

thread_local! {
    pub(super) static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `finish` in AVX-512 registers, masked to the chunk's lanes: the loop
/// over slices of a run-time length compiled to scalar code, one float at
/// a time for every output pixel (F(4x4) on FaceNet's 32-channel stem
/// layers 3-5% faster in registers, `examples/bench_winograd`; same sums).
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn finish_avx512(
    dst: &mut [f32],
    y: &[f32; LANES],
    scale: f32,
    res: Option<(&[f32], f32)>,
    act: Act,
    bias: &[f32],
) {
    use std::arch::x86_64::*;
    let w = dst.len().min(LANES);
    assert!(bias.len() >= w && res.is_none_or(|(r, _)| r.len() >= w));
    let mask: __mmask16 = if w == LANES { 0xffff } else { (1u16 << w) - 1 };
    let mut o = _mm512_mul_ps(
        _mm512_add_ps(
            _mm512_loadu_ps(y.as_ptr()),
            _mm512_maskz_loadu_ps(mask, bias.as_ptr()),
        ),
        _mm512_set1_ps(scale),
    );
    if let Some((r, s)) = res {
        let rv = _mm512_maskz_loadu_ps(mask, r.as_ptr());
        o = _mm512_add_ps(o, _mm512_mul_ps(rv, _mm512_set1_ps(s)));
    }
    let zero = _mm512_setzero_ps();
    o = match act {
        Act::None => o,
        Act::Relu => _mm512_max_ps(zero, o),
        Act::Relu6 => _mm512_min_ps(_mm512_set1_ps(6.0), _mm512_max_ps(zero, o)),
    };
    _mm512_mask_storeu_ps(dst.as_mut_ptr(), mask, o);
}

/// `dst = act((y + bias) * scale + res_scale * r)`, as the gemm epilogue does.
#[inline(always)]
fn finish(
    dst: &mut [f32],
    y: &[f32],
    bias: &[f32],
    scale: f32,
    res: Option<(&[f32], f32)>,
    act: Act,
) {
    for ((d, &v), &b) in dst.iter_mut().zip(y).zip(bias) {
        *d = (v + b) * scale;
    }
    if let Some((r, s)) = res {
        for (d, &r) in dst.iter_mut().zip(r) {
            *d += r * s;
        }
    }
    match act {
        Act::None => {}
        Act::Relu => dst.iter_mut().for_each(|v| *v = v.max(0.0)),
        Act::Relu6 => dst.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0)),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::runtime::kernels) fn data(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 7919 + seed * 104729) % 1000) as f32 - 500.0) / 500.0)
            .collect()
    }

    /// Direct convolution in f64, NHWC x HWIO (any kh x kw, stride 1), and
    /// the sum of |terms| (the scale float32 rounding is relative to).
    pub(in crate::runtime::kernels) fn direct(
        x: &[f32],
        w: &[f32],
        g: &ConvGeometry,
    ) -> (Vec<f64>, Vec<f64>) {
        let mut y = vec![0.0f64; g.n * g.oh * g.ow * g.co];
        let mut mag = y.clone();
        for b in 0..g.n {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    for ky in 0..g.kh {
                        for kx in 0..g.kw {
                            let iy = (oy + ky).checked_sub(g.pad[0]).filter(|&v| v < g.h);
                            let ix = (ox + kx).checked_sub(g.pad[1]).filter(|&v| v < g.w);
                            let (Some(iy), Some(ix)) = (iy, ix) else {
                                continue;
                            };
                            for ci in 0..g.c {
                                let xv = x[((b * g.h + iy) * g.w + ix) * g.c + ci] as f64;
                                for co in 0..g.co {
                                    let t =
                                        xv * w[((ky * g.kw + kx) * g.c + ci) * g.co + co] as f64;
                                    let o = ((b * g.oh + oy) * g.ow + ox) * g.co + co;
                                    y[o] += t;
                                    mag[o] += t.abs();
                                }
                            }
                        }
                    }
                }
            }
        }
        (y, mag)
    }

    /// The worst error of `out` against relu((want + bias) * 0.5 + 2 res)
    /// (the tests' epilogue), relative to the terms' scale, and where; NaN
    /// (an output never written) is the worst.
    pub(in crate::runtime::kernels) fn worst(
        out: &[f32],
        (want, mag): (&[f64], &[f64]),
        bias: &[f32],
        res: &[f32],
    ) -> (f64, usize) {
        let k = bias.len();
        let mut worst = (0.0f64, 0);
        for (i, &o) in out.iter().enumerate() {
            let w = ((want[i] + bias[i % k] as f64) * 0.5 + 2.0 * res[i] as f64).max(0.0);
            // Relative to the terms' scale, which is what rounding
            // follows (a direct float32 sum is ~1e-7 of it).
            let e = (o as f64 - w).abs() / (1.0 + 0.5 * mag[i]);
            if e.is_nan() || e > worst.0 {
                worst = (e, i);
            }
        }
        worst
    }

    #[test]
    fn matches_direct_convolution_with_padding_and_ragged_tiles() {
        // (n, h, w, c, k, pad): 'same' and 'valid', odd sizes, k not a multiple of 32.
        for &(n, h, w, c, k, pad) in &[
            (1, 7, 9, 5, 3, 1),
            (2, 11, 6, 17, 40, 0),
            (1, 20, 20, 32, 64, 1),
        ] {
            let (oh, ow) = (h + 2 * pad - 2, w + 2 * pad - 2);
            let g = ConvGeometry {
                n,
                h,
                w,
                c,
                kh: 3,
                kw: 3,
                co: k,
                oh,
                ow,
                stride: [1, 1],
                dilation: [1, 1],
                pad: [pad, pad],
            };
            let x = data(n * h * w * c, 1);
            let wt = data(9 * c * k, 2);
            let bias = data(k, 3);
            let res = data(n * oh * ow * k, 4);
            let (want, mag) = direct(&x, &wt, &g);
            for tile in [Tile::F2, Tile::F4] {
                let wg = Winograd::new(&wt, c, k, Some(&bias), tile);
                let mut out = vec![f32::NAN; n * oh * ow * k];
                let epi = Epilogue {
                    scale: 0.5,
                    residual: Some((&res, k, 2.0)),
                    act: Act::Relu,
                    slopes: None,
                };
                wg.run(&x, &g, &mut out, k, &epi);
                // Into a wider row (a concatenation's), from column 3: the
                // same values, the other columns untouched.
                let row = k + 7;
                let mut wide = vec![-7.0f32; n * oh * ow * row];
                wg.run(&x, &g, &mut wide[3..], row, &epi);
                for (p, r) in wide.chunks(row).enumerate() {
                    assert_eq!(&r[3..3 + k], &out[p * k..][..k], "{tile:?}: pixel {p}");
                    assert!(r[..3].iter().chain(&r[3 + k..]).all(|&v| v == -7.0));
                }
                let worst = worst(&out, (&want, &mag), &bias, &res);
                eprintln!("{tile:?} {n}x{h}x{w}x{c}->{k}: worst {:.2e}", worst.0);
                let bound = if tile == Tile::F2 { 1e-6 } else { 1e-5 };
                assert!(
                    worst.0 < bound,
                    "{tile:?} {n}x{h}x{w}x{c}->{k}: worst {:.2e} at {}",
                    worst.0,
                    worst.1
                );
            }
        }
    }
}
