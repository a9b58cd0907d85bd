//! Weight layouts shared by the Caffe and Core ML emitters (both take
//! OIHW convolutions and [out, in] inner products on channel-first data).

/// Constant `w`'s tensor, for the writers (their errors are strings that
/// become per-node messages).
fn const_tensor(g: &crate::ir::Graph, w: crate::ir::Wire) -> Result<&crate::ir::Tensor, String> {
    g.const_of(w).ok_or_else(|| {
        format!(
            "'{}' must be a constant (run the fold_constants pass)",
            g.wire_name(w)
        )
    })
}

/// The f32 values of constant `w`, borrowed where they are aligned.
pub fn const_f32(
    g: &crate::ir::Graph,
    w: crate::ir::Wire,
) -> Result<std::borrow::Cow<'_, [f32]>, String> {
    const_tensor(g, w)?.as_f32().map_err(|e| e.to_string())
}

/// Where a writer's re-laid-out weights go, a run of values at a time
/// (the writers stream them into the file; errors are per-node strings).
pub type Sink<'s> = dyn FnMut(&[f32]) -> Result<(), String> + 's;

/// Floats of output each streamed run holds (4 MB): the writer holds one
/// run of a layer's weights, not the layer (VGG16's fc1: 134 MB).
const RUN_FLOATS: usize = 1 << 20;

/// Rows of a blocked transpose: each block of output rows is filled on its
/// own thread, so its strided writes stay in cache (VGG16's 3x3x512x512:
/// 1.2 MB per block of 64).
const BLOCK: usize = 64;

/// Computes runs `0..runs` of `len(r)` floats each with `compute` (which
/// may use the rayon pool) and hands them to `sink` in order, computing
/// run r + 1 on another thread while `sink` writes run r: the writer's
/// copy into the file overlaps the next transpose.
fn pipelined(
    runs: usize,
    max_len: usize,
    len: impl Fn(usize) -> usize,
    compute: impl Fn(usize, &mut [f32]) + Sync,
    sink: &mut Sink<'_>,
) -> Result<(), String> {
    if runs == 0 {
        return Ok(());
    }
    let mut cur = vec![0.0f32; max_len];
    let mut next = vec![0.0f32; if runs > 1 { max_len } else { 0 }];
    compute(0, &mut cur[..len(0)]);
    for r in 0..runs {
        if r + 1 < runs {
            let n = &mut next[..len(r + 1)];
            let written = std::thread::scope(|s| {
                let c = &compute;
                s.spawn(move || c(r + 1, n));
                sink(&cur[..len(r)])
            });
            written?;
            std::mem::swap(&mut cur, &mut next);
        } else {
            sink(&cur[..len(r)])?;
        }
    }
    Ok(())
}

/// The constant `w` as it lies in memory (see `Tensor::f32_view`), for the
/// streaming re-layouts below: no copy of an unaligned weight.
pub fn const_view(
    g: &crate::ir::Graph,
    w: crate::ir::Wire,
) -> Result<crate::ir::tensor::F32View<'_>, String> {
    const_tensor(g, w)?.f32_view().map_err(|e| e.to_string())
}

/// A writer's deferred convolution weights: constant `w` (HWIO, or
/// depthwise) in OIHW, streamed by `conv_oihw_stream` when the file is
/// written.
pub fn conv_fill(
    w: crate::ir::Wire,
    dims: [usize; 4],
    depthwise: bool,
    read_ihwo: bool,
) -> impl Fn(&crate::ir::Graph, &mut Sink<'_>) -> Result<(), String> + 'static {
    move |g, sink| conv_oihw_stream(const_view(g, w)?, dims, depthwise, read_ihwo, sink)
}

/// A writer's deferred inner-product weights: constant `w` as `[n, k]`,
/// streamed by `inner_product_stream` when the file is written.
pub fn inner_product_fill(
    w: crate::ir::Wire,
    k: usize,
    n: usize,
    transpose_b: bool,
    flat_hwc: Option<[usize; 3]>,
) -> impl Fn(&crate::ir::Graph, &mut Sink<'_>) -> Result<(), String> + 'static {
    move |g, sink| inner_product_stream(const_view(g, w)?, k, n, transpose_b, flat_hwc, sink)
}

/// TF HWIO `[kh, kw, ci, co]` (or depthwise `[kh, kw, ci, multiplier]`) to
/// OIHW (depthwise: `[ci * multiplier, 1, kh, kw]`, output channel
/// `c * multiplier + m` as TF numbers it). `read_ihwo` is a deliberate
/// mistake for verify-parity's tests.
pub fn conv_oihw(w: &[f32], dims: [usize; 4], depthwise: bool, read_ihwo: bool) -> Vec<f32> {
    let mut out = Vec::with_capacity(w.len());
    let done = conv_oihw_stream(
        crate::ir::tensor::F32View::F32(w),
        dims,
        depthwise,
        read_ihwo,
        &mut |run| {
            out.extend_from_slice(run);
            Ok(())
        },
    );
    // Shape inference has checked the filter's size; anything else is a
    // bug upstream and gives zeros rather than a short or partial filter.
    if done.is_err() || out.len() != w.len() {
        return vec![0.0; w.len()];
    }
    out
}

/// `conv_oihw`, handed to `sink` in runs of whole output channels.
pub fn conv_oihw_stream(
    w: crate::ir::tensor::F32View<'_>,
    [kh, kw, ci, co]: [usize; 4],
    depthwise: bool,
    read_ihwo: bool,
    sink: &mut Sink<'_>,
) -> Result<(), String> {
    if w.len() != kh * kw * ci * co {
        return Err(format!(
            "the filter holds {} values, not {kh} x {kw} x {ci} x {co}",
            w.len()
        ));
    }
    if depthwise || read_ihwo {
        // Small (depthwise filters) or a test's deliberate mistake: whole.
        let mut src = vec![0.0f32; w.len()];
        w.read(0, &mut src);
        let mut out = vec![0.0f32; w.len()];
        for y in 0..kh {
            for x in 0..kw {
                for i in 0..ci {
                    for o in 0..co {
                        let from = if read_ihwo {
                            ((i * kh + y) * kw + x) * co + o
                        } else {
                            ((y * kw + x) * ci + i) * co + o
                        };
                        let to = if depthwise {
                            ((i * co + o) * kh + y) * kw + x
                        } else {
                            ((o * ci + i) * kh + y) * kw + x
                        };
                        if let (Some(d), Some(s)) = (out.get_mut(to), src.get(from)) {
                            *d = *s;
                        }
                    }
                }
            }
        }
        return sink(&out);
    }
    // A transpose of (tap, i, o) to (o, i, tap): output column i * taps +
    // tap of row o reads source row tap * ci + i, in runs of output
    // channels.
    let taps = kh * kw;
    let per_o = ci * taps;
    if per_o == 0 || co == 0 {
        return Ok(());
    }
    let src: Vec<usize> = (0..per_o).map(|q| (q % taps) * ci + q / taps).collect();
    let run_o = (RUN_FLOATS / per_o).div_ceil(BLOCK).max(1) * BLOCK;
    pipelined(
        co.div_ceil(run_o),
        run_o.min(co) * per_o,
        |r| run_o.min(co - r * run_o) * per_o,
        |r, out| gather_transpose(w, co, &src, r * run_o, out),
        sink,
    )
}

/// Rows `o0 ..` of the `[n, k]` transpose of a `[rows, n]` matrix `w`
/// whose output column q reads source row `src[q]` (a permutation: a
/// flatten's (h, w, c) -> (c, h, w), a filter's (tap, i) -> (i, tap)):
/// `out[o][q] = w[src[q] * n + o]`. Blocks of `BLOCK` output rows go to the
/// rayon pool; inside one, 8 x 8 tiles: eight 32-byte loads from eight
/// source rows, eight 32-byte stores into eight output rows, so neither
/// side walks memory one float at a time. The caller has checked that
/// every `src[q] * n + o` is inside `w`; a read outside leaves zeros.
fn gather_transpose(
    w: crate::ir::tensor::F32View<'_>,
    n: usize,
    src: &[usize],
    o0: usize,
    out: &mut [f32],
) {
    use rayon::prelude::*;
    let k = src.len();
    if k == 0 {
        return;
    }
    out.par_chunks_mut(BLOCK * k)
        .enumerate()
        .for_each(|(b, chunk)| {
            let ob = o0 + b * BLOCK;
            let rows = chunk.len() / k;
            for (q0, srcs) in src.chunks(8).enumerate().map(|(t, s)| (t * 8, s)) {
                for j0 in (0..rows).step_by(8) {
                    let jn = (rows - j0).min(8);
                    let mut tile = [[0.0f32; 8]; 8];
                    for (t, &s) in tile.iter_mut().zip(srcs) {
                        let at = s * n + ob + j0;
                        if jn == 8 {
                            if let Some(v) = w.read8(at) {
                                *t = v;
                            }
                        } else {
                            for (j, v) in t.iter_mut().take(jn).enumerate() {
                                *v = w.get(at + j).unwrap_or(0.0);
                            }
                        }
                    }
                    if jn == 8 && srcs.len() == 8 {
                        let cols = transpose8(&tile);
                        for (j, c) in cols.iter().enumerate() {
                            let at = (j0 + j) * k + q0;
                            if let Some(row) = chunk.get_mut(at..at + 8) {
                                row.copy_from_slice(c);
                            }
                        }
                        continue;
                    }
                    for j in 0..jn {
                        let row = &mut chunk[(j0 + j) * k + q0..][..srcs.len()];
                        for (o, t) in row.iter_mut().zip(&tile) {
                            *o = t[j];
                        }
                    }
                }
            }
        });
}

/// `out[j][i] = t[i][j]` for an 8 x 8 tile: on x86-64 four 4 x 4 SSE2
/// transposes (unpack, move halves), baseline on every x86-64 CPU; a plain
/// loop elsewhere.
#[inline]
fn transpose8(t: &[[f32; 8]; 8]) -> [[f32; 8]; 8] {
    let mut out = [[0.0f32; 8]; 8];
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        for bi in [0, 4] {
            for bj in [0, 4] {
                // SAFETY: SSE2 is part of x86-64; every pointer is to four
                // floats inside an [f32; 8] row (bj, bi <= 4).
                unsafe {
                    let r0 = _mm_loadu_ps(t[bi].as_ptr().add(bj));
                    let r1 = _mm_loadu_ps(t[bi + 1].as_ptr().add(bj));
                    let r2 = _mm_loadu_ps(t[bi + 2].as_ptr().add(bj));
                    let r3 = _mm_loadu_ps(t[bi + 3].as_ptr().add(bj));
                    let lo01 = _mm_unpacklo_ps(r0, r1);
                    let lo23 = _mm_unpacklo_ps(r2, r3);
                    let hi01 = _mm_unpackhi_ps(r0, r1);
                    let hi23 = _mm_unpackhi_ps(r2, r3);
                    _mm_storeu_ps(out[bj].as_mut_ptr().add(bi), _mm_movelh_ps(lo01, lo23));
                    _mm_storeu_ps(out[bj + 1].as_mut_ptr().add(bi), _mm_movehl_ps(lo23, lo01));
                    _mm_storeu_ps(out[bj + 2].as_mut_ptr().add(bi), _mm_movelh_ps(hi01, hi23));
                    _mm_storeu_ps(out[bj + 3].as_mut_ptr().add(bi), _mm_movehl_ps(hi23, hi01));
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for (i, row) in t.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            out[j][i] = v;
        }
    }
    out
}

/// (k, n) of a MatMul's 2-D weights of TF shape `shape` (`[k, n]`, or
/// `[n, k]` with `transpose_b`); anything else is read as one output.
pub fn inner_product_dims(shape: &[usize], transpose_b: bool) -> (usize, usize) {
    match (shape, transpose_b) {
        (&[a, b], false) => (a, b),
        (&[a, b], true) => (b, a),
        _ => (shape.iter().product(), 1),
    }
}

/// TF MatMul weights (`[k, n]`, or `[n, k]` with `transpose_b`) to `[n, k]`
/// for an input held channel-first: when the input was flattened from an
/// NHWC map of `flat_hwc` (h, w, c), its rows are permuted from (h, w, c) to
/// (c, h, w) order. (The writers stream it: `inner_product_stream`.)
#[cfg(test)]
pub fn inner_product(
    w: &[f32],
    k: usize,
    n: usize,
    transpose_b: bool,
    flat_hwc: Option<[usize; 3]>,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(k * n);
    let done = inner_product_stream(
        crate::ir::tensor::F32View::F32(w),
        k,
        n,
        transpose_b,
        flat_hwc,
        &mut |run| {
            out.extend_from_slice(run);
            Ok(())
        },
    );
    // Shape inference has checked that the weights are `k x n` and the
    // flattened map has `k` values; anything else would be a bug upstream,
    // and gives zeros here rather than reading out of bounds.
    if done.is_err() || out.len() != k * n {
        return vec![0.0; k * n];
    }
    out
}

/// `inner_product`, handed to `sink` in runs of whole output rows.
pub fn inner_product_stream(
    w: crate::ir::tensor::F32View<'_>,
    k: usize,
    n: usize,
    transpose_b: bool,
    flat_hwc: Option<[usize; 3]>,
    sink: &mut Sink<'_>,
) -> Result<(), String> {
    use rayon::prelude::*;
    // Where row r of the weights goes in an output row.
    let dest: Vec<usize> = (0..k)
        .map(|r| match flat_hwc {
            Some([h, wd, c]) if wd * c > 0 && c > 0 => {
                let (hh, rest) = (r / (wd * c), r % (wd * c));
                let (ww, cc) = (rest / c, rest % c);
                (cc * h + hh) * wd + ww
            }
            _ => r,
        })
        .collect();
    if w.len() != k * n || dest.iter().any(|&d| d >= k) {
        return Err(format!(
            "the inner product's weights hold {} values, not {k} x {n} (or its flattened input is not {k} long)",
            w.len()
        ));
    }
    if k == 0 || n == 0 {
        return Ok(());
    }
    let run_rows = (RUN_FLOATS / k).div_ceil(BLOCK).max(1) * BLOCK;
    let len = |r: usize| run_rows.min(n - r * run_rows) * k;
    if transpose_b {
        // `[n, k]` already: each output row is its weight row, permuted.
        let dest = &dest;
        return pipelined(
            n.div_ceil(run_rows),
            run_rows.min(n) * k,
            len,
            |r, out: &mut [f32]| {
                out.par_chunks_mut(k).enumerate().for_each(|(o, row)| {
                    let at = (r * run_rows + o) * k;
                    for (i, &d) in dest.iter().enumerate() {
                        row[d] = w.get(at + i).unwrap_or(0.0);
                    }
                })
            },
            sink,
        );
    }
    // Output column dest[r] reads weight row r: invert the permutation.
    let mut src = vec![usize::MAX; k];
    for (r, &d) in dest.iter().enumerate() {
        src[d] = r;
    }
    if src.contains(&usize::MAX) {
        return Err(format!(
            "the flattened input of the inner product ({flat_hwc:?}) is not {k} values"
        ));
    }
    pipelined(
        n.div_ceil(run_rows),
        run_rows.min(n) * k,
        len,
        |r, out| gather_transpose(w, n, &src, r * run_rows, out),
        sink,
    )
}

/// Whether a constant of `shape` holds one value per channel of the last
/// axis (`c` values, every other axis 1).
pub fn is_per_channel(shape: &[usize], c: usize) -> bool {
    shape.last() == Some(&c) && shape.iter().rev().skip(1).all(|&d| d == 1)
}

/// `x op k` (or `k op x` when `k_first`) with a per-channel constant `k`
/// of `c` values as the affine `x * scale + bias` both channel-first
/// formats' Scale layers take; `None` for Max/Min and `k / x`, which are
/// not affine. Division is multiplication by the reciprocal: within an ulp
/// of TF's quotient (Keras' Normalization layer divides by per-channel
/// deviations).
pub fn per_channel_affine(
    op: crate::ir::BinaryOp,
    k_first: bool,
    k: Vec<f32>,
    c: usize,
) -> Option<(Vec<f32>, Option<Vec<f32>>)> {
    use crate::ir::BinaryOp;
    Some(match (op, k_first) {
        (BinaryOp::Mul, _) => (k, None),
        (BinaryOp::Add, _) => (vec![1.0; c], Some(k)),
        (BinaryOp::Sub, false) => (vec![1.0; c], Some(k.iter().map(|x| -x).collect())),
        (BinaryOp::Sub, true) => (vec![-1.0; c], Some(k)),
        (BinaryOp::Div, false) => (k.iter().map(|x| 1.0 / x).collect(), None),
        _ => return None,
    })
}

/// OIHW -> TF's HWIO.
pub fn oihw_to_hwio(w: &[f32], [co, ci, kh, kw]: [usize; 4]) -> Vec<f32> {
    let mut out = vec![0.0; w.len()];
    for o in 0..co {
        for i in 0..ci {
            for y in 0..kh {
                for x in 0..kw {
                    out[((y * kw + x) * ci + i) * co + o] = w[((o * ci + i) * kh + y) * kw + x];
                }
            }
        }
    }
    out
}

/// A depthwise OIHW weight (ONNX, MIL) `[C*M, 1, kh, kw]` -> TF's `[kh, kw, C, M]`.
pub fn oihw_depthwise_to_hwcm(w: &[f32], [c, m, kh, kw]: [usize; 4]) -> Vec<f32> {
    let mut out = vec![0.0; w.len()];
    for ch in 0..c {
        for j in 0..m {
            for y in 0..kh {
                for x in 0..kw {
                    out[((y * kw + x) * c + ch) * m + j] = w[((ch * m + j) * kh + y) * kw + x];
                }
            }
        }
    }
    out
}

/// A Reshape's target (ONNX's and MIL's rules): 0 copies the input's dimension, -1 is inferred.
pub fn reshape_target(xs: &[usize], s: &[i64]) -> Result<Vec<usize>, String> {
    let total: usize = xs.iter().product();
    let mut out = vec![];
    let mut infer = None;
    for (i, &d) in s.iter().enumerate() {
        match d {
            0 => out.push(
                *xs.get(i)
                    .ok_or("Reshape copies a dimension the input lacks")?,
            ),
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            d if d > 0 => out.push(d as usize),
            d => return Err(format!("Reshape dimension {d}")),
        }
    }
    if let Some(i) = infer {
        let known: usize = out.iter().product();
        if known == 0 || !total.is_multiple_of(known) {
            return Err(format!("cannot reshape {xs:?} to {s:?}"));
        }
        out[i] = total / known;
    }
    if out.iter().product::<usize>() != total {
        return Err(format!("cannot reshape {xs:?} to {s:?}"));
    }
    Ok(out)
}

/// The largest tensor the readers accept (elements), far past any face
/// model, so a hostile header cannot ask for an absurd allocation.
pub const MAX_ELEMENTS: usize = 1 << 32;

pub fn checked_numel(shape: &[usize]) -> std::result::Result<usize, String> {
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS)
        .ok_or_else(|| format!("shape {shape:?} is too large"))?;
    Ok(n)
}

/// Normalise a possibly negative axis.
pub fn axis(a: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    if a < -r || a >= r.max(1) {
        return Err(format!("axis {a} is out of range for rank {rank}"));
    }
    Ok(if a < 0 { (a + r) as usize } else { a as usize })
}

/// Whether graph input `idx` is a channel-first map (NCHW in TF already)
/// that the graph reads only through a transpose to NHWC. The
/// channel-first formats feed it as it is: their blob of the NHWC map it
/// becomes is that very order (Caffe's NCHW, Core ML's (C, H, W)).
pub fn channel_first_input(g: &crate::ir::Graph, idx: usize) -> bool {
    let me = crate::ir::Wire { node: idx, slot: 0 };
    let users = g.users(me);
    g.nodes.get(idx).is_some_and(|n| n.outputs[0].shape.len() == 4)
        && !users.is_empty()
        && !g.outputs.contains(&me)
        && users.iter().all(|&u| {
            matches!(&g.nodes[u].op, crate::ir::Op::Transpose { perm } if perm == &[0, 2, 3, 1])
        })
}

/// Whether `w` is an NHWC map transposed to NCHW: the channel-first formats
/// hold it in TF's own order (so a declared output of it is not
/// channel-first by their convention, it is TF's).
pub fn is_nchw_transpose(g: &crate::ir::Graph, w: crate::ir::Wire) -> bool {
    matches!(g.nodes.get(w.node).map(|n| &n.op), Some(crate::ir::Op::Transpose { perm }) if perm == &[0, 3, 1, 2])
}

/// Push an IR op that works on NHWC maps onto a reader's channel-first
/// value `x`: Transpose to NHWC, the op (with `rest` as its other inputs),
/// Transpose back under `name` (fresh if taken); `sink_transpose` cancels
/// the pairs between such ops. How ONNX and MIL readers carry Resize,
/// DepthToSpace and transposed convolutions, which the IR holds in NHWC.
pub fn push_between_transposes(
    g: &mut crate::ir::Graph,
    name: &str,
    source: &str,
    op: crate::ir::Op,
    x: crate::ir::Wire,
    rest: Vec<crate::ir::Wire>,
) -> Result<crate::ir::Wire, String> {
    use crate::ir::{Op, Wire};
    let push = |g: &mut crate::ir::Graph, n: String, src: &str, op: Op, ins: Vec<Wire>| {
        let node = g.push(n, src, op, ins).map_err(|e| match e {
            crate::error::Error::Node { msg, .. } => msg,
            e => e.to_string(),
        })?;
        Ok::<Wire, String>(Wire { node, slot: 0 })
    };
    let t = g.fresh_name(&format!("{name}/nhwc"));
    let perm = vec![0, 2, 3, 1];
    let to = push(g, t, "Transpose", Op::Transpose { perm }, vec![x])?;
    let y = g.fresh_name(&format!("{name}/{source}"));
    let mut ins = vec![to];
    ins.extend(rest);
    let y = push(g, y, source, op, ins)?;
    let out = if g.node_by_name(name).is_some() {
        g.fresh_name(name)
    } else {
        name.to_string()
    };
    let perm = vec![0, 3, 1, 2];
    push(g, out, "Transpose", Op::Transpose { perm }, vec![y])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_and_depthwise_layouts() {
        // HWIO 1x1x2x3: w[0,0,i,o] = 10*i + o
        let w: Vec<f32> = (0..6).map(|j| (10 * (j / 3) + j % 3) as f32).collect();
        assert_eq!(
            conv_oihw(&w, [1, 1, 2, 3], false, false),
            vec![0.0, 10.0, 1.0, 11.0, 2.0, 12.0]
        );
        // depthwise [1,1,2 channels,3 mult]: output channel c*3+m keeps TF's order
        assert_eq!(conv_oihw(&w, [1, 1, 2, 3], true, false), w);
    }

    #[test]
    fn inner_product_permutes_flattened_rows() {
        // input (h=1, w=2, c=2) flattened hwc: r = w*2 + c; weights [4, 1] = r
        let w = vec![0.0, 1.0, 2.0, 3.0];
        // channel-first order (c, w): c0w0=r0, c0w1=r2, c1w0=r1, c1w1=r3
        assert_eq!(
            inner_product(&w, 4, 1, false, Some([1, 2, 2])),
            vec![0.0, 2.0, 1.0, 3.0]
        );
        assert_eq!(inner_product(&w, 4, 1, false, None), w);
    }

    #[test]
    fn blocked_transposes_match_the_definition() {
        // Sizes that leave partial blocks of 64 on every axis.
        let (kh, kw, ci, co) = (3, 2, 5, 131);
        let w: Vec<f32> = (0..kh * kw * ci * co).map(|v| v as f32).collect();
        let got = conv_oihw(&w, [kh, kw, ci, co], false, false);
        for (y, x, i, o) in (0..kh).flat_map(|y| {
            (0..kw).flat_map(move |x| (0..ci).flat_map(move |i| (0..co).map(move |o| (y, x, i, o))))
        }) {
            let src = ((y * kw + x) * ci + i) * co + o;
            assert_eq!(got[((o * ci + i) * kh + y) * kw + x], w[src]);
        }
        let (h, wd, c, n) = (3, 5, 7, 70);
        let k = h * wd * c;
        let w: Vec<f32> = (0..k * n).map(|v| v as f32).collect();
        for (tb, flat) in [
            (false, None),
            (false, Some([h, wd, c])),
            (true, Some([h, wd, c])),
        ] {
            let got = inner_product(&w, k, n, tb, flat);
            for r in 0..k {
                let d = match flat {
                    Some(_) => ((r % c) * h + r / (wd * c)) * wd + (r % (wd * c)) / c,
                    None => r,
                };
                for o in 0..n {
                    let src = if tb { o * k + r } else { r * n + o };
                    assert_eq!(got[o * k + d], w[src], "tb {tb} r {r} o {o}");
                }
            }
        }
    }

    #[test]
    fn runs_and_unaligned_bytes_give_the_same_transpose() {
        // More than one 4 MB run, read from bytes at an odd address (how
        // a .pb holds them), against the definition.
        let (k, n) = (1100, 1003);
        let w: Vec<f32> = (0..k * n).map(|v| (v % 9973) as f32 - 4000.0).collect();
        let mut bytes = vec![0u8];
        bytes.extend(w.iter().flat_map(|v| v.to_le_bytes()));
        let view = crate::ir::tensor::F32View::Le(&bytes[1..]);
        let mut got = Vec::new();
        let mut runs = 0;
        inner_product_stream(view, k, n, false, None, &mut |run| {
            runs += 1;
            got.extend_from_slice(run);
            Ok(())
        })
        .unwrap();
        assert!(runs > 1);
        for r in 0..k {
            for o in 0..n {
                assert_eq!(got[o * k + r], w[r * n + o], "r {r} o {o}");
            }
        }
        let dims = [3, 3, 100, 1003];
        let mut got = Vec::new();
        let part = crate::ir::tensor::F32View::Le(&bytes[1..1 + 9 * 100 * 1003 * 4]);
        conv_oihw_stream(part, dims, false, false, &mut |run| {
            got.extend_from_slice(run);
            Ok(())
        })
        .unwrap();
        let (taps, ci, co) = (9, 100, 1003);
        for tap in 0..taps {
            for i in 0..ci {
                for o in 0..co {
                    assert_eq!(got[(o * ci + i) * taps + tap], w[(tap * ci + i) * co + o]);
                }
            }
        }
    }

    #[test]
    fn tile_transpose_is_a_transpose() {
        let mut t = [[0.0f32; 8]; 8];
        for (i, row) in t.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = (i * 8 + j) as f32;
            }
        }
        let o = transpose8(&t);
        for i in 0..8 {
            for j in 0..8 {
                assert_eq!(o[j][i], t[i][j]);
            }
        }
    }
}
