//! The fast engine's matrix multiply: C = epilogue(A x B) with B (the
//! weights) packed once at load into panels of `NR` columns, A packed per
//! block of rows while it is gathered (so im2col never materialises the whole
//! patch matrix), and bias, residual add and ReLU applied in registers before
//! the one store. Rows are split across the threads (kernels::team).
//!
//! The microkernel is AVX-512 (12 x 32 tile, 24 accumulators) when the CPU
//! has it, and a portable loop otherwise; both sum over k in the same order,
//! one product at a time, so results do not depend on the path.

use std::cell::RefCell;

/// Columns per packed panel of B: two AVX-512 vectors.
pub const NR: usize = 32;
/// Rows per microkernel tile.
pub const MR: usize = 12;
/// Bytes of packed A each task keeps hot (an eighth of L2; 64 KB to 512 KB
/// measured the same within this machine's noise, and blocking k did not
/// help either).
const A_BLOCK_BYTES: usize = 128 * 1024;
const MAX_BLOCK_ROWS: usize = 16 * MR;
/// How many k steps ahead the AVX-512 kernel prefetches its B panel.
const PREFETCH_STEPS: usize = 32;

/// A 64-byte aligned f32 buffer (vector loads never straddle a cache line).
#[derive(Clone, Default)]
pub struct AlignedBuf {
    raw: Vec<f32>,
    offset: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn zeroed(len: usize) -> Self {
        let raw = vec![0.0f32; len + 16];
        let offset = raw.as_ptr().align_offset(64).min(15);
        AlignedBuf { raw, offset, len }
    }
    pub fn as_slice(&self) -> &[f32] {
        &self.raw[self.offset..self.offset + self.len]
    }
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.raw[self.offset..self.offset + self.len]
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// B [k, n] packed: panel j holds columns j*NR.. as k rows of NR floats
/// (zero past n), panels one after another; the bias padded likewise.
#[derive(Clone)]
pub struct PackedB {
    k: usize,
    n: usize,
    panels: AlignedBuf,
    bias: AlignedBuf,
}

impl PackedB {
    /// `b[i * rs + j * cs]` is B[i, j]; `bias` has n entries when present.
    pub fn pack(b: &[f32], k: usize, n: usize, rs: usize, cs: usize, bias: Option<&[f32]>) -> Self {
        let np = n.div_ceil(NR);
        let mut panels = AlignedBuf::zeroed(np * k * NR);
        let dst = panels.as_mut_slice();
        for j in 0..np {
            let cols = NR.min(n - j * NR);
            for i in 0..k {
                let row = &mut dst[(j * k + i) * NR..][..cols];
                for (c, d) in row.iter_mut().enumerate() {
                    *d = b[i * rs + (j * NR + c) * cs];
                }
            }
        }
        let mut padded = AlignedBuf::zeroed(np * NR);
        if let Some(bias) = bias {
            padded.as_mut_slice()[..n].copy_from_slice(&bias[..n]);
        }
        PackedB {
            k,
            n,
            panels,
            bias: padded,
        }
    }
    /// The columns of several packed matrices side by side, one matrix:
    /// sibling 1x1 convolutions of one input as one gemm. Every part but
    /// the last must fill its panels (n a multiple of NR) so the panels
    /// just follow one another; None if they do not, or if k differs.
    pub fn concat(parts: &[&PackedB]) -> Option<PackedB> {
        let (first, rest) = parts.split_first()?;
        let k = first.k;
        let fits = parts.iter().all(|p| p.k == k)
            && parts[..parts.len() - 1].iter().all(|p| p.n % NR == 0);
        if !fits || rest.is_empty() {
            return None;
        }
        let n: usize = parts.iter().map(|p| p.n).sum();
        let mut panels = AlignedBuf::zeroed(n.div_ceil(NR) * k * NR);
        let mut bias = AlignedBuf::zeroed(n.div_ceil(NR) * NR);
        let (mut at, mut bat) = (0, 0);
        for p in parts {
            let src = p.panels.as_slice();
            panels.as_mut_slice()[at..at + src.len()].copy_from_slice(src);
            at += src.len();
            let b = p.bias.as_slice();
            bias.as_mut_slice()[bat..bat + b.len()].copy_from_slice(b);
            bat += b.len();
        }
        Some(PackedB { k, n, panels, bias })
    }
    pub fn k(&self) -> usize {
        self.k
    }
    pub fn n(&self) -> usize {
        self.n
    }
    /// Bytes held (for memory accounting).
    pub fn bytes(&self) -> usize {
        (self.panels.len() + self.bias.len()) * 4
    }
    fn panel(&self, j: usize) -> &[f32] {
        &self.panels.as_slice()[j * self.k * NR..][..self.k * NR]
    }
}

/// Activation applied last, in registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    None,
    Relu,
    Relu6,
}

/// What happens to a tile of A x B before it is stored:
/// `prelu(act(res_scale * R + scale * (acc + bias)))`, R being the residual.
#[derive(Clone, Copy)]
pub struct Epilogue<'a> {
    pub scale: f32,
    /// (values with row stride, res_scale)
    pub residual: Option<(&'a [f32], usize, f32)>,
    pub act: Act,
    /// Per-column slopes of a PReLU (`max(y, 0) + slope * min(y, 0)`),
    /// padded to whole panels ([`padded_columns`]): MTCNN's PReLU costs no
    /// pass of its own.
    pub slopes: Option<&'a [f32]>,
}

impl Default for Epilogue<'_> {
    fn default() -> Self {
        Epilogue {
            scale: 1.0,
            residual: None,
            act: Act::None,
            slopes: None,
        }
    }
}

/// `v` zero-padded to a whole number of panels (per-column epilogue data
/// such as PReLU slopes is read a panel at a time).
pub fn padded_columns(v: &[f32]) -> Vec<f32> {
    let mut p = v.to_vec();
    p.resize(v.len().div_ceil(NR) * NR, 0.0);
    p
}

/// One microkernel tile of A: which rows of C it fills and which rows of B
/// it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TileRows {
    /// Rows of the tile (at most MR).
    pub rows: usize,
    /// The row of C its first row fills, and how many rows of C lie from
    /// one of its rows to the next.
    pub first: usize,
    pub step: usize,
    /// The rows of B (columns of A) it multiplies: the products outside
    /// `k0..k1` are all zero (taps in a convolution's padding).
    pub k0: usize,
    pub k1: usize,
}

/// Where the rows of A come from. `pack` writes rows `m0..m0+rows` (rows <=
/// MR) as MR row-major rows of k floats, zeros for rows past `rows`.
///
/// # Safety
/// `tile` must cover each row of C exactly once over `0..tiles()`: the
/// gemm's threads write their tiles' rows without synchronisation.
pub unsafe trait ASource: Sync {
    fn rows(&self) -> usize;
    fn k(&self) -> usize;
    fn pack(&self, m0: usize, rows: usize, dst: &mut [f32]);
    /// Row-major storage with its row stride, when the kernel can read A
    /// in place (no packing at all).
    fn direct(&self) -> Option<(&[f32], usize)> {
        None
    }
    /// How many tiles cover A: by default MR consecutive rows each.
    fn tiles(&self) -> usize {
        self.rows().div_ceil(MR)
    }
    /// Tile `t` (< `tiles()`): see the trait's safety contract (rows
    /// outside C are caught by an assert).
    fn tile(&self, t: usize) -> TileRows {
        let first = t * MR;
        TileRows {
            rows: MR.min(self.rows() - first),
            first,
            step: 1,
            k0: 0,
            k1: self.k(),
        }
    }
    /// Pack tile `tile`: MR row-major rows of `k1 - k0` floats, zeros for
    /// rows past its own.
    fn pack_tile(&self, tile: &TileRows, dst: &mut [f32]) {
        self.pack(tile.first, tile.rows, dst)
    }
}

/// Copy `len` floats of each of MR sources (None = zeros) into MR rows of
/// `ld` floats: plain row copies, which vectorise, where a k-major
/// interleave would move one float at a time.
#[inline]
fn gather(src: &[Option<&[f32]>; MR], len: usize, dst: &mut [f32], ld: usize) {
    for (r, s) in src.iter().enumerate() {
        let d = &mut dst[r * ld..][..len];
        match s {
            Some(s) => d.copy_from_slice(&s[..len]),
            None => d.fill(0.0),
        }
    }
}

/// A dense row-major A (a 1x1 convolution's input, a matmul's activations).
pub struct Dense<'a> {
    pub a: &'a [f32],
    pub m: usize,
    pub k: usize,
    pub lda: usize,
}

// SAFETY: the default tiles, MR consecutive rows each.
unsafe impl ASource for Dense<'_> {
    fn rows(&self) -> usize {
        self.m
    }
    fn k(&self) -> usize {
        self.k
    }
    fn pack(&self, m0: usize, rows: usize, dst: &mut [f32]) {
        let src: [Option<&[f32]>; MR] =
            std::array::from_fn(|r| (r < rows).then(|| &self.a[(m0 + r) * self.lda..][..self.k]));
        gather(&src, self.k, dst, self.k);
    }
    fn direct(&self) -> Option<(&[f32], usize)> {
        Some((self.a, self.lda))
    }
}

/// Patches of an NHWC batch, gathered row by row (im2col one block at a time).
pub struct Patches<'a> {
    pub x: &'a [f32],
    pub g: super::ConvGeometry,
}

// SAFETY: the default tiles, MR consecutive rows each.
unsafe impl ASource for Patches<'_> {
    fn rows(&self) -> usize {
        self.g.n * self.g.oh * self.g.ow
    }
    fn k(&self) -> usize {
        self.g.kh * self.g.kw * self.g.c
    }
    fn pack(&self, m0: usize, rows: usize, dst: &mut [f32]) {
        let g = &self.g;
        let k = self.k();
        let per_image = g.oh * g.ow;
        // One filter row (kw pixels of c floats) at a time: a single copy
        // when its pixels are adjacent and inside the image.
        let seg = g.kw * g.c;
        // The output pixel of row m0, then stepped row by row: no divisions
        // per row in the gather that dominates few-channel convolutions.
        let pix = m0 % per_image;
        let (mut b, mut oy, mut ox) = (m0 / per_image, pix / g.ow.max(1), pix % g.ow.max(1));
        for r in 0..MR {
            let d = &mut dst[r * k..][..k];
            if r >= rows {
                d.fill(0.0);
                continue;
            }
            if r > 0 {
                ox += 1;
                if ox == g.ow {
                    ox = 0;
                    oy += 1;
                    if oy == g.oh {
                        oy = 0;
                        b += 1;
                    }
                }
            }
            let ix0 = (ox * g.stride[1]) as isize - g.pad[1] as isize;
            for ky in 0..g.kh {
                let dk = &mut d[ky * seg..][..seg];
                let iy = (oy * g.stride[0] + ky * g.dilation[0])
                    .checked_sub(g.pad[0])
                    .filter(|&iy| iy < g.h);
                let Some(iy) = iy else {
                    dk.fill(0.0);
                    continue;
                };
                let row = &self.x[(b * g.h + iy) * g.w * g.c..][..g.w * g.c];
                if g.dilation[1] == 1 && ix0 >= 0 && ix0 as usize + g.kw <= g.w {
                    dk.copy_from_slice(&row[ix0 as usize * g.c..][..seg]);
                    continue;
                }
                for (kx, dd) in dk.chunks_mut(g.c).enumerate() {
                    let ix = ix0 + (kx * g.dilation[1]) as isize;
                    if ix >= 0 && (ix as usize) < g.w {
                        dd.copy_from_slice(&row[ix as usize * g.c..][..g.c]);
                    } else {
                        dd.fill(0.0);
                    }
                }
            }
        }
    }
}

/// Patches of a one-dimensional convolution (1 x k or k x 1, stride 1) on
/// a map so small that many of its taps fall in the zero padding: FaceNet's
/// 1x7 and 7x1 on 8x8 maps (21% of their products are zeros), its 1x3 and
/// 3x1 on 3x3 (22%). Each tile holds pixels of one line across the taps'
/// axis, which all see the same taps inside the image, and multiplies only
/// those: the same nonzero products in the same order as [`Patches`], so the
/// same sums.
pub struct LinePatches<'a> {
    pub x: &'a [f32],
    pub g: super::ConvGeometry,
}

impl LinePatches<'_> {
    /// Whether `g` is such a convolution, with at least a sixth of its
    /// products in the padding (fewer and the shorter tiles, one line
    /// each, cost more than the zeros).
    pub fn suits(g: &super::ConvGeometry) -> bool {
        let simple = g.stride == [1, 1] && g.dilation == [1, 1] && (g.kh == 1) != (g.kw == 1);
        let across = if g.kh > 1 {
            g.pad[1] == 0 && g.ow == g.w
        } else {
            g.pad[0] == 0 && g.oh == g.h
        };
        if !simple || !across {
            return false;
        }
        let (taps, len, _, _) = Self::axis(g);
        let inside: usize = (0..len).map(|v| Self::window(g, v).len()).sum();
        6 * inside <= 5 * taps * len
    }
    /// The same patches, every tap gathered.
    fn plain(&self) -> Patches<'_> {
        Patches {
            x: self.x,
            g: self.g,
        }
    }
    /// (taps, output positions along the taps' axis, positions across it,
    /// output rows from one position across to the next).
    fn axis(g: &super::ConvGeometry) -> (usize, usize, usize, usize) {
        if g.kh > 1 {
            (g.kh, g.oh, g.ow, 1)
        } else {
            (g.kw, g.ow, g.oh, g.ow)
        }
    }
    /// The taps of output position `v` (along the taps' axis) that fall
    /// inside the input.
    fn window(g: &super::ConvGeometry, v: usize) -> std::ops::Range<usize> {
        let (taps, extent, pad) = if g.kh > 1 {
            (g.kh, g.h, g.pad[0])
        } else {
            (g.kw, g.w, g.pad[1])
        };
        let t0 = pad.saturating_sub(v).min(taps);
        let t1 = (extent + pad).saturating_sub(v).min(taps).max(t0);
        t0..t1
    }
}

// SAFETY: tile t is line t / per_line (sample, position along the taps'
// axis) and its chunk t % per_line of the positions across: each output
// pixel in exactly one (the unit test counts them).
unsafe impl ASource for LinePatches<'_> {
    fn rows(&self) -> usize {
        self.plain().rows()
    }
    fn k(&self) -> usize {
        self.plain().k()
    }
    fn pack(&self, m0: usize, rows: usize, dst: &mut [f32]) {
        self.plain().pack(m0, rows, dst)
    }
    fn tiles(&self) -> usize {
        let (_, len, across, _) = Self::axis(&self.g);
        self.g.n * len * across.div_ceil(MR)
    }
    fn tile(&self, t: usize) -> TileRows {
        let g = &self.g;
        let (_, len, across, step) = Self::axis(g);
        let per_line = across.div_ceil(MR);
        let (line, q) = (t / per_line, t % per_line);
        let (b, v) = (line / len, line % len);
        let u0 = q * MR;
        // Along y a line is an output row (x across, one row apart); along
        // x it is an output column (y across, ow rows apart).
        let first = b * g.oh * g.ow
            + if g.kh > 1 {
                v * g.ow + u0
            } else {
                u0 * g.ow + v
            };
        let w = Self::window(g, v);
        TileRows {
            rows: MR.min(across - u0),
            first,
            step,
            k0: w.start * g.c,
            k1: w.end * g.c,
        }
    }
    fn pack_tile(&self, tile: &TileRows, dst: &mut [f32]) {
        let g = &self.g;
        let (kk, c) = (tile.k1 - tile.k0, g.c);
        let (t0, taps) = (tile.k0 / c, kk / c);
        for r in 0..MR {
            let d = &mut dst[r * kk..][..kk];
            if r >= tile.rows {
                d.fill(0.0);
                continue;
            }
            let m = tile.first + r * tile.step;
            let (b, pix) = (m / (g.oh * g.ow), m % (g.oh * g.ow));
            let (oy, ox) = (pix / g.ow, pix % g.ow);
            if g.kh > 1 {
                // Taps down a column: one pixel each, a row apart.
                for (i, dd) in d.chunks_mut(c).enumerate().take(taps) {
                    let iy = oy + t0 + i - g.pad[0];
                    dd.copy_from_slice(&self.x[((b * g.h + iy) * g.w + ox) * c..][..c]);
                }
            } else {
                // Taps along a row: adjacent pixels, one copy.
                let ix = ox + t0 - g.pad[1];
                d.copy_from_slice(&self.x[((b * g.h + oy) * g.w + ix) * c..][..kk]);
            }
        }
    }
}

/// One tile's destination and epilogue, as raw pointers for the kernels.
struct Tile {
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    bias: *const f32,
    res: *const f32,
    ldr: usize,
    res_scale: f32,
    scale: f32,
    act: Act,
    /// PReLU slopes of the tile's columns (NR floats), or null.
    slope: *const f32,
}

thread_local! {
    static A_PACK: RefCell<AlignedBuf> = RefCell::new(AlignedBuf::default());
}

/// An output pointer shared by parallel tasks.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: every user has its tasks write disjoint parts (tiles of C in
// `gemm`, pixels of tiles in Winograd).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// A method, so closures capture the wrapper and not its raw field.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// Where the columns of B's panels `first_panel..` (up to the next
/// destination's) go: their own matrix, `ldc` floats from one row to the
/// next. One gemm can so fill several outputs (sibling convolutions).
pub struct Dest<'a> {
    pub first_panel: usize,
    pub c: &'a mut [f32],
    pub ldc: usize,
}

/// Assert the operands fit together; false when there is nothing to do.
fn check_sizes(a: &dyn ASource, b: &PackedB, dests: &[Dest], epi: &Epilogue) -> bool {
    let (m, k, n) = (a.rows(), b.k(), b.n());
    assert_eq!(a.k(), k, "gemm: A has {} columns, B {} rows", a.k(), k);
    if m == 0 || n == 0 {
        return false;
    }
    assert!(
        dests.first().is_some_and(|d| d.first_panel == 0)
            && dests
                .windows(2)
                .all(|w| w[0].first_panel < w[1].first_panel),
        "gemm: destinations do not cover the panels in order"
    );
    for (i, d) in dests.iter().enumerate() {
        let end = dests.get(i + 1).map_or(n, |e| e.first_panel * NR);
        let cols = end.saturating_sub(d.first_panel * NR);
        assert!(
            cols > 0 && d.ldc >= cols && d.c.len() >= (m - 1) * d.ldc + cols,
            "gemm: C too small"
        );
    }
    assert!(
        dests.len() == 1 || epi.residual.is_none(),
        "gemm: a residual with several destinations"
    );
    if let Some((r, ldr, _)) = epi.residual {
        assert!(
            ldr >= n && r.len() >= (m - 1) * ldr + n,
            "gemm: residual too small"
        );
    }
    if let Some(s) = epi.slopes {
        assert!(s.len() >= n.div_ceil(NR) * NR, "gemm: slopes not padded");
    }
    true
}

/// C[m, n] (row stride ldc, n = b.n()) = epilogue(A x B).
///
/// Panics if a slice is shorter than the sizes say: the engine sizes every
/// buffer from the plan, so a short one is a bug, not bad input.
pub fn gemm(a: &dyn ASource, b: &PackedB, c: &mut [f32], ldc: usize, epi: &Epilogue) {
    gemm_to(
        a,
        b,
        &mut [Dest {
            first_panel: 0,
            c,
            ldc,
        }],
        epi,
    )
}

/// As `gemm`, each range of panels into its own destination (in panel
/// order, the first from panel 0; no residual then).
pub fn gemm_to(a: &dyn ASource, b: &PackedB, dests: &mut [Dest], epi: &Epilogue) {
    let (k, n) = (b.k(), b.n());
    if !check_sizes(a, b, dests, epi) {
        return;
    }
    let outs: Vec<(usize, SendPtr, usize)> = dests
        .iter_mut()
        .map(|d| (d.first_panel, SendPtr(d.c.as_mut_ptr()), d.ldc))
        .collect();
    let threads = rayon::current_num_threads().max(1);
    let tiles_total = a.tiles();
    let cap_tiles = (A_BLOCK_BYTES / (4 * k.max(1)) / MR).clamp(1, MAX_BLOCK_ROWS / MR);
    let panels = n.div_ceil(NR);
    let (row_blocks, panel_groups) = if tiles_total < 4 * threads && panels >= threads {
        // Few rows (batch 1 at 8x8: 64 = 5 x 12 + 4): row blocks would be
        // uneven, so each thread takes all rows of its share of panels.
        (tiles_total.div_ceil(cap_tiles), threads)
    } else {
        // Row blocks: as many as the A budget needs, rounded up to a
        // multiple of the threads, with tiles shared out evenly; too few
        // rows for every thread and the panels are split too.
        let rb = tiles_total
            .div_ceil(cap_tiles)
            .next_multiple_of(threads)
            .min(tiles_total);
        let pg = if rb >= threads {
            1
        } else {
            threads.div_ceil(rb).min(panels)
        };
        (rb, pg)
    };
    let block_start = |b: usize| b * tiles_total / row_blocks;
    let per_group = panels.div_ceil(panel_groups);
    let tasks = row_blocks * panel_groups;
    let kernel = pick_kernel();
    let run = |t: usize| {
        // Panel-group major: rayon halves the range, so each thread gets
        // whole panel groups.
        let (rb, pg) = (t % row_blocks, t / row_blocks);
        let j0 = pg * per_group;
        let j1 = ((pg + 1) * per_group).min(panels);
        // SAFETY: sizes asserted above; tasks cover disjoint tiles.
        unsafe {
            run_block(
                a,
                b,
                &outs,
                epi,
                (block_start(rb), block_start(rb + 1)),
                (j0, j1),
                kernel,
            )
        };
    };
    super::team::par_for(tasks, &run);
}

/// As `gemm`, all on the calling thread (for callers that parallelise
/// over something else, like Winograd's tile blocks).
pub fn gemm_serial(a: &dyn ASource, b: &PackedB, c: &mut [f32], ldc: usize, epi: &Epilogue) {
    let (k, n) = (b.k(), b.n());
    let dest = [Dest {
        first_panel: 0,
        c,
        ldc,
    }];
    if !check_sizes(a, b, &dest, epi) {
        return;
    }
    let outs = [(0, SendPtr(dest[0].c.as_mut_ptr()), ldc)];
    let kernel = pick_kernel();
    let per_block = (MAX_BLOCK_ROWS / MR).min((A_BLOCK_BYTES / (4 * k.max(1)) / MR).max(1));
    let tiles = a.tiles();
    let mut t0 = 0;
    while t0 < tiles {
        let t1 = (t0 + per_block).min(tiles);
        // SAFETY: sizes asserted above.
        unsafe { run_block(a, b, &outs, epi, (t0, t1), (0, n.div_ceil(NR)), kernel) };
        t0 = t1;
    }
}

/// Tiles `t0..t1` of A times panels `j0..j1`: pack the tiles once, then
/// sweep the panels over them. `outs` are the destinations (first panel,
/// matrix, row stride), in panel order from panel 0.
///
/// # Safety
/// Each destination and the epilogue's residual cover the rows of these
/// tiles in their panels' columns; no other thread writes them meanwhile.
unsafe fn run_block(
    a: &dyn ASource,
    b: &PackedB,
    outs: &[(usize, SendPtr, usize)],
    epi: &Epilogue,
    (t0, t1): (usize, usize),
    (j0, j1): (usize, usize),
    kernel: &Kernels,
) {
    let (k, n) = (b.k(), b.n());
    // On the stack: Winograd runs a block's 36 small gemms per call.
    let mut all = [TileRows::default(); MAX_BLOCK_ROWS / MR];
    let specs = &mut all[..t1 - t0];
    let m = a.rows();
    for (s, t) in specs.iter_mut().zip(t0..t1) {
        *s = a.tile(t);
        // The raw writes below stay inside C (sized for m rows) only if
        // the source's tiles do.
        assert!(
            (1..=MR).contains(&s.rows)
                && s.first + (s.rows - 1) * s.step < m
                && s.k0 <= s.k1
                && s.k1 <= k,
            "gemm: tile {t} {s:?} outside {m} x {k}"
        );
    }
    // A dense A is read in place by full tiles of consecutive rows that
    // take every k.
    let in_place = |s: &TileRows| s.rows == MR && s.step == 1 && s.k0 == 0 && s.k1 == k;
    A_PACK.with(|buf| {
        let mut buf = buf.borrow_mut();
        // Grown to the largest block seen, not to MAX_BLOCK_ROWS rows: the
        // A budget keeps blocks near A_BLOCK_BYTES, and each pool thread
        // holds its buffer for good (204 rows of FaceNet's k = 3456 were
        // 2.8 MB a thread, 17x what its blocks use).
        if buf.len() < specs.len() * k * MR {
            *buf = AlignedBuf::zeroed(specs.len() * k * MR);
        }
        let ap = buf.as_mut_slice();
        // Full tiles of a dense A are read in place; the rest is packed.
        let direct = a.direct();
        for (i, s) in specs.iter().enumerate() {
            if direct.is_none() || !in_place(s) {
                a.pack_tile(s, &mut ap[i * k * MR..][..(s.k1 - s.k0) * MR]);
            }
        }
        for j in j0..j1 {
            let bp = b.panel(j);
            let cols = NR.min(n - j * NR);
            // The destination holding panel j, and the panel's first column
            // in it.
            let Some(&(first, c, ldc)) = outs.iter().rev().find(|o| o.0 <= j) else {
                continue;
            };
            let c = c.get().add((j - first) * NR);
            for (i, s) in specs.iter().enumerate() {
                let (res, ldr, res_scale) = match epi.residual {
                    Some((r, ldr, sc)) => {
                        (r.as_ptr().add(s.first * ldr + j * NR), ldr * s.step, sc)
                    }
                    None => (std::ptr::null(), 0, 0.0),
                };
                let tile = Tile {
                    c: c.add(s.first * ldc),
                    ldc: ldc * s.step,
                    rows: s.rows,
                    cols,
                    bias: b.bias.as_slice()[j * NR..].as_ptr(),
                    res,
                    ldr,
                    res_scale,
                    scale: epi.scale,
                    act: epi.act,
                    slope: epi
                        .slopes
                        .map_or(std::ptr::null(), |sl| sl[j * NR..].as_ptr()),
                };
                let kk = s.k1 - s.k0;
                let (aptr, rs) = match direct {
                    Some((d, lda)) if in_place(s) => (d[s.first * lda..].as_ptr(), lda),
                    _ => (ap[i * k * MR..].as_ptr(), kk),
                };
                // SAFETY: A covers MR rows x kk at (rs, 1); B's rows k0..k1
                // are kk * NR floats from k0 * NR.
                let table = if cols <= 16 {
                    &kernel.narrow
                } else {
                    &kernel.wide
                };
                table[s.rows](kk, aptr, rs, 1, bp[s.k0 * NR..].as_ptr(), &tile);
            }
        }
    });
}

type Kernel = unsafe fn(usize, *const f32, usize, usize, *const f32, &Tile);

/// The microkernels for each row count 1..=MR (index 0 unused): `wide`
/// computes a whole panel, `narrow` only its first 16 columns, for panels
/// with no more (PNet's 10- and 16-channel convolutions, its 2- and
/// 4-channel heads, the last panel of n = 80): half the multiplies, and the
/// same sums in the same order.
struct Kernels {
    wide: [Kernel; MR + 1],
    narrow: [Kernel; MR + 1],
}

fn pick_kernel() -> &'static Kernels {
    #[cfg(target_arch = "x86_64")]
    {
        /// The AVX-512 kernel for each row count, V vectors wide.
        macro_rules! by_rows {
            ($v:literal) => {
                [
                    kernel_avx512::<1, $v>,
                    kernel_avx512::<1, $v>,
                    kernel_avx512::<2, $v>,
                    kernel_avx512::<3, $v>,
                    kernel_avx512::<4, $v>,
                    kernel_avx512::<5, $v>,
                    kernel_avx512::<6, $v>,
                    kernel_avx512::<7, $v>,
                    kernel_avx512::<8, $v>,
                    kernel_avx512::<9, $v>,
                    kernel_avx512::<10, $v>,
                    kernel_avx512::<11, $v>,
                    kernel_avx512::<12, $v>,
                ]
            };
        }
        static AVX512: Kernels = Kernels {
            wide: by_rows!(2),
            narrow: by_rows!(1),
        };
        if avx512() {
            return &AVX512;
        }
    }
    static PORTABLE: Kernels = Kernels {
        wide: [kernel_portable; MR + 1],
        narrow: [kernel_portable; MR + 1],
    };
    &PORTABLE
}

/// Whether to use AVX-512 code: the CPU has it and `FACEALL_NO_AVX512` is
/// unset (read once; it is looked up on every gemm otherwise).
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx512() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        std::env::var_os("FACEALL_NO_AVX512").is_none()
            && std::arch::is_x86_feature_detected!("avx512f")
    })
}

#[inline(always)]
fn finish(
    v: f32,
    bias: f32,
    res: Option<(f32, f32)>,
    scale: f32,
    act: Act,
    slope: Option<f32>,
) -> f32 {
    let mut y = (v + bias) * scale;
    if let Some((r, s)) = res {
        y += r * s;
    }
    let y = match act {
        Act::None => y,
        Act::Relu => y.max(0.0),
        Act::Relu6 => y.clamp(0.0, 6.0),
    };
    match slope {
        Some(a) => a.mul_add(y.min(0.0), y.max(0.0)),
        None => y,
    }
}

/// # Safety
/// A(r, p) is `a[r * rs + p * cs]` for r < MR, p < k; `b` holds k*NR
/// floats; the tile's pointers cover rows x cols.
unsafe fn kernel_portable(k: usize, a: *const f32, rs: usize, cs: usize, b: *const f32, t: &Tile) {
    let mut acc = [[0.0f32; NR]; MR];
    for p in 0..k {
        let bs = std::slice::from_raw_parts(b.add(p * NR), NR);
        for (r, row) in acc.iter_mut().enumerate() {
            let av = *a.add(r * rs + p * cs);
            for (x, &bv) in row.iter_mut().zip(bs) {
                *x = av.mul_add(bv, *x);
            }
        }
    }
    for (r, row) in acc.iter().enumerate().take(t.rows) {
        for (cc, &v) in row.iter().enumerate().take(t.cols) {
            let res = (!t.res.is_null()).then(|| (*t.res.add(r * t.ldr + cc), t.res_scale));
            let slope = (!t.slope.is_null()).then(|| *t.slope.add(cc));
            *t.c.add(r * t.ldc + cc) = finish(v, *t.bias.add(cc), res, t.scale, t.act, slope);
        }
    }
}

/// R rows and V vectors of 16 columns of the tile (R = t.rows <= MR, tails
/// of m get their own R so no products are wasted on padding rows: 64 rows
/// = 5 x 12 + 4; V = 1 when the panel has at most 16 columns).
///
/// # Safety
/// As `kernel_portable` for R rows, and the CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kernel_avx512<const R: usize, const V: usize>(
    k: usize,
    a: *const f32,
    rs: usize,
    cs: usize,
    b: *const f32,
    t: &Tile,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    for p in 0..k {
        // B comes from memory at batch 1 (each layer's weights are read
        // once per pass): asking for it a few steps early took FaceNet on
        // one core from 50.7 to 43.8 ms (interleaved; 16 and 32 steps ahead
        // measured alike, 8 less). A prefetch past the end never faults.
        let ahead = b.wrapping_add((p + PREFETCH_STEPS) * NR) as *const i8;
        for h in 0..V {
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * h));
        }
        let bv: [__m512; V] = std::array::from_fn(|h| _mm512_load_ps(b.add(p * NR + 16 * h)));
        let ap = a.add(p * cs);
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*ap.add(r * rs));
            for (x, &bh) in row.iter_mut().zip(&bv) {
                *x = _mm512_fmadd_ps(av, bh, *x);
            }
        }
    }
    let bias: [__m512; V] = std::array::from_fn(|h| _mm512_loadu_ps(t.bias.add(16 * h)));
    let scale = _mm512_set1_ps(t.scale);
    let res_scale = _mm512_set1_ps(t.res_scale);
    let zero = _mm512_setzero_ps();
    let six = _mm512_set1_ps(6.0);
    let masks: [__mmask16; 2] = [
        mask_for(t.cols.min(16)),
        mask_for(t.cols.saturating_sub(16)),
    ];
    let slope: Option<[__m512; V]> =
        (!t.slope.is_null()).then(|| std::array::from_fn(|h| _mm512_loadu_ps(t.slope.add(16 * h))));
    for (r, row) in acc.iter().enumerate().take(t.rows) {
        for h in 0..V {
            if masks[h] == 0 {
                continue;
            }
            let mut y = _mm512_mul_ps(_mm512_add_ps(row[h], bias[h]), scale);
            if !t.res.is_null() {
                let rv = _mm512_maskz_loadu_ps(masks[h], t.res.add(r * t.ldr + h * 16));
                y = _mm512_add_ps(y, _mm512_mul_ps(rv, res_scale));
            }
            y = match t.act {
                Act::None => y,
                Act::Relu => _mm512_max_ps(zero, y),
                Act::Relu6 => _mm512_min_ps(six, _mm512_max_ps(zero, y)),
            };
            if let Some(a) = slope {
                // The portable path's a.mul_add(min(y, 0), max(y, 0)).
                y = _mm512_fmadd_ps(a[h], _mm512_min_ps(y, zero), _mm512_max_ps(y, zero));
            }
            _mm512_mask_storeu_ps(t.c.add(r * t.ldc + h * 16), masks[h], y);
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) fn mask_for(cols: usize) -> u16 {
    if cols >= 16 {
        0xffff
    } else {
        ((1u32 << cols) - 1) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut c = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    c[i * n + j] = a[i * k + p].mul_add(b[p * n + j], c[i * n + j]);
                }
            }
        }
        c
    }

    fn data(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 7919 + seed * 104729) % 1000) as f32 - 500.0) / 250.0)
            .collect()
    }

    #[test]
    fn matches_naive_on_ragged_sizes_with_epilogue() {
        for &(m, k, n) in &[
            (1, 1, 1),
            (13, 27, 33),
            (50, 300, 80),
            (200, 17, 64),
            (7, 1000, 5),
        ] {
            let a = data(m * k, 1);
            let b = data(k * n, 2);
            let bias = data(n, 3);
            let res = data(m * n, 4);
            let pb = PackedB::pack(&b, k, n, n, 1, Some(&bias));
            let mut c = vec![f32::NAN; m * n];
            let epi = Epilogue {
                scale: 0.17,
                residual: Some((&res, n, 1.0)),
                act: Act::Relu,
                slopes: None,
            };
            gemm(
                &Dense {
                    a: &a,
                    m,
                    k,
                    lda: k,
                },
                &pb,
                &mut c,
                n,
                &epi,
            );
            let want = naive(&a, &b, m, k, n);
            for i in 0..m * n {
                let w = (((want[i] + bias[i % n]) * 0.17) + res[i]).max(0.0);
                assert!(
                    (c[i] - w).abs() <= 1e-4 * (1.0 + w.abs()),
                    "{m}x{k}x{n} at {i}: {} vs {w}",
                    c[i]
                );
            }
        }
    }

    #[test]
    fn merged_weights_fill_each_destination_as_separate_gemms_would() {
        // Three siblings of one input (64, 32 and 20 columns; the last may
        // end inside a panel), the first written into a wider row from
        // column 5; rows past one tile so both threads take part.
        let (m, k) = (77, 45);
        let a = data(m * k, 1);
        let src = Dense {
            a: &a,
            m,
            k,
            lda: k,
        };
        let ns = [64, 32, 20];
        let parts: Vec<PackedB> = ns
            .iter()
            .enumerate()
            .map(|(i, &n)| PackedB::pack(&data(k * n, 2 + i), k, n, n, 1, Some(&data(n, 9 + i))))
            .collect();
        let epi = Epilogue {
            scale: 0.5,
            residual: None,
            act: Act::Relu,
            slopes: None,
        };
        let alone: Vec<Vec<f32>> = parts
            .iter()
            .map(|p| {
                let mut c = vec![f32::NAN; m * p.n()];
                gemm(&src, p, &mut c, p.n(), &epi);
                c
            })
            .collect();
        let refs: Vec<&PackedB> = parts.iter().collect();
        let merged = PackedB::concat(&refs).unwrap();
        assert_eq!(merged.n(), 116);
        let (row, col) = (64 + 9, 5);
        let mut wide = vec![-3.0f32; m * row];
        let mut c1 = vec![f32::NAN; m * 32];
        let mut c2 = vec![f32::NAN; m * 20];
        gemm_to(
            &src,
            &merged,
            &mut [
                Dest {
                    first_panel: 0,
                    c: &mut wide[col..],
                    ldc: row,
                },
                Dest {
                    first_panel: 2,
                    c: &mut c1,
                    ldc: 32,
                },
                Dest {
                    first_panel: 3,
                    c: &mut c2,
                    ldc: 20,
                },
            ],
            &epi,
        );
        for r in 0..m {
            let w = &wide[r * row..][..row];
            assert_eq!(&w[col..col + 64], &alone[0][r * 64..][..64], "row {r}");
            assert!(w[..col].iter().chain(&w[col + 64..]).all(|&v| v == -3.0));
        }
        assert_eq!(c1, alone[1]);
        assert_eq!(c2, alone[2]);
        // A part that ends inside a panel can only come last.
        assert!(PackedB::concat(&[&parts[2], &parts[0]]).is_none());
    }

    #[test]
    fn line_patches_skip_only_padding_and_give_the_same_sums() {
        use super::super::ConvGeometry;
        // (h, w, kh, kw, pad, oh, ow): FaceNet's 1x7 and 7x1 on 8x8 and
        // 1x3 on 3x3, a line longer than a tile (17 = 12 + 5), a 1x4 with
        // TensorFlow's uneven SAME padding (1 before, 2 after).
        for &(h, w, kh, kw, pad, oh, ow) in &[
            (8, 8, 1, 7, [0, 3], 8, 8),
            (8, 8, 7, 1, [3, 0], 8, 8),
            (3, 3, 1, 3, [0, 1], 3, 3),
            (17, 5, 7, 1, [3, 0], 17, 5),
            (5, 17, 1, 7, [0, 3], 5, 17),
            (6, 6, 1, 4, [0, 1], 6, 6),
        ] {
            let (n, c, co) = (2, 20, 40);
            let g = ConvGeometry {
                n,
                h,
                w,
                c,
                kh,
                kw,
                co,
                oh,
                ow,
                stride: [1, 1],
                dilation: [1, 1],
                pad,
            };
            let x = data(n * h * w * c, 1);
            let k = kh * kw * c;
            let pb = PackedB::pack(&data(k * co, 2), k, co, co, 1, Some(&data(co, 3)));
            let m = n * oh * ow;
            let res = data(m * co, 4);
            let epi = Epilogue {
                scale: 0.5,
                residual: Some((&res, co, 0.3)),
                act: Act::Relu,
                slopes: None,
            };
            let mut want = vec![f32::NAN; m * co];
            gemm(&Patches { x: &x, g }, &pb, &mut want, co, &epi);
            // Into a wider row (a concatenation's), from column 3.
            let row = co + 7;
            let mut got = vec![-5.0; m * row];
            let lines = LinePatches { x: &x, g };
            gemm(&lines, &pb, &mut got[3..], row, &epi);
            for r in 0..m {
                assert_eq!(
                    &got[r * row + 3..][..co],
                    &want[r * co..][..co],
                    "{kh}x{kw} row {r}"
                );
            }
            // Every output row in exactly one tile.
            let mut seen = vec![0; m];
            for s in (0..lines.tiles()).map(|t| lines.tile(t)) {
                (0..s.rows).for_each(|r| seen[s.first + r * s.step] += 1);
            }
            assert!(seen.iter().all(|&n| n == 1), "{kh}x{kw}: {seen:?}");
            // Each tile skips exactly the taps in the padding.
            let zeros: usize = (0..lines.tiles())
                .map(|t| lines.tile(t))
                .map(|s| s.rows * (k - (s.k1 - s.k0)))
                .sum();
            let padded = (0..m)
                .map(|r| {
                    let (oy, ox) = ((r % (oh * ow)) / ow, r % ow);
                    (0..kh * kw)
                        .filter(|t| {
                            let iy = (oy + t / kw) as isize - pad[0] as isize;
                            let ix = (ox + t % kw) as isize - pad[1] as isize;
                            iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize
                        })
                        .count()
                        * c
                })
                .sum::<usize>();
            assert_eq!(zeros, padded, "{kh}x{kw}");
        }
        let g = |h, w, kh, kw, pad| ConvGeometry {
            n: 1,
            h,
            w,
            c: 8,
            kh,
            kw,
            co: 8,
            oh: h,
            ow: w,
            stride: [1, 1],
            dilation: [1, 1],
            pad,
        };
        assert!(LinePatches::suits(&g(8, 8, 1, 7, [0, 3])));
        assert!(LinePatches::suits(&g(8, 8, 7, 1, [3, 0])));
        assert!(LinePatches::suits(&g(3, 3, 3, 1, [1, 0])));
        // 17 wide: 10% padding, not worth shorter tiles; 3x3 is two axes.
        assert!(!LinePatches::suits(&g(17, 17, 1, 7, [0, 3])));
        assert!(!LinePatches::suits(&g(8, 8, 3, 3, [1, 1])));
    }

    #[test]
    fn portable_and_simd_kernels_agree_exactly() {
        let (m, k, n) = (30, 77, 45);
        let a = data(m * k, 5);
        let b = data(k * n, 6);
        let pb = PackedB::pack(&b, k, n, n, 1, None);
        let mut c1 = vec![0.0; m * n];
        gemm(
            &Dense {
                a: &a,
                m,
                k,
                lda: k,
            },
            &pb,
            &mut c1,
            n,
            &Epilogue::default(),
        );
        let mut ap = AlignedBuf::zeroed(k * MR);
        let mut c2 = vec![0.0; m * n];
        for m0 in (0..m).step_by(MR) {
            let rows = MR.min(m - m0);
            Dense {
                a: &a,
                m,
                k,
                lda: k,
            }
            .pack(m0, rows, ap.as_mut_slice());
            for j in 0..n.div_ceil(NR) {
                let t = Tile {
                    c: c2[m0 * n + j * NR..].as_mut_ptr(),
                    ldc: n,
                    rows,
                    cols: NR.min(n - j * NR),
                    bias: pb.bias.as_slice()[j * NR..].as_ptr(),
                    res: std::ptr::null(),
                    ldr: 0,
                    res_scale: 0.0,
                    scale: 1.0,
                    act: Act::None,
                    slope: std::ptr::null(),
                };
                unsafe {
                    kernel_portable(k, ap.as_slice().as_ptr(), k, 1, pb.panel(j).as_ptr(), &t)
                };
            }
        }
        let bad: Vec<usize> = (0..m * n).filter(|&i| c1[i] != c2[i]).collect();
        assert!(
            bad.is_empty(),
            "{} differ, first at {:?}",
            bad.len(),
            bad.first().map(|&i| (i / n, i % n, c1[i], c2[i]))
        );
    }
}
