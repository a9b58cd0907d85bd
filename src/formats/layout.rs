//! Weight layouts shared by the Caffe and Core ML emitters (both take
//! OIHW convolutions and [out, in] inner products on channel-first data).

/// The f32 values of constant `w`, for the writers (their errors are
/// strings that become per-node messages).
pub fn const_f32(
    g: &crate::ir::Graph,
    w: crate::ir::Wire,
) -> Result<std::borrow::Cow<'_, [f32]>, String> {
    let t = g.const_of(w).ok_or_else(|| {
        format!(
            "'{}' must be a constant (run the fold_constants pass)",
            g.wire_name(w)
        )
    })?;
    t.as_f32().map_err(|e| e.to_string())
}

/// TF HWIO `[kh, kw, ci, co]` (or depthwise `[kh, kw, ci, multiplier]`) to
/// OIHW (depthwise: `[ci * multiplier, 1, kh, kw]`, output channel
/// `c * multiplier + m` as TF numbers it). `read_ihwo` is a deliberate
/// mistake for verify-parity's tests.
pub fn conv_oihw(
    w: &[f32],
    [kh, kw, ci, co]: [usize; 4],
    depthwise: bool,
    read_ihwo: bool,
) -> Vec<f32> {
    let mut out = vec![0.0f32; w.len()];
    if depthwise || read_ihwo || w.len() != kh * kw * ci * co {
        for y in 0..kh {
            for x in 0..kw {
                for i in 0..ci {
                    for o in 0..co {
                        let src = if read_ihwo {
                            ((i * kh + y) * kw + x) * co + o
                        } else {
                            ((y * kw + x) * ci + i) * co + o
                        };
                        let dst = if depthwise {
                            ((i * co + o) * kh + y) * kw + x
                        } else {
                            ((o * ci + i) * kh + y) * kw + x
                        };
                        if let (Some(d), Some(s)) = (out.get_mut(dst), w.get(src)) {
                            *d = *s;
                        }
                    }
                }
            }
        }
        return out;
    }
    // A transpose of (tap, i, o) to (o, i, tap): output channels in blocks
    // (each block a contiguous part of the result, filled on its own
    // thread), so the strided writes of a block stay in cache (VGG16's
    // 3x3x512x512: 1.2 MB per block of 64).
    use rayon::prelude::*;
    const BLOCK: usize = 64;
    let taps = kh * kw;
    let per_o = ci * taps;
    out.par_chunks_mut(BLOCK * per_o.max(1))
        .enumerate()
        .for_each(|(b, chunk)| {
            let o0 = b * BLOCK;
            let os = chunk.len() / per_o.max(1);
            for tap in 0..taps {
                for i in 0..ci {
                    let row = &w[(tap * ci + i) * co + o0..][..os];
                    for (j, &v) in row.iter().enumerate() {
                        chunk[(j * ci + i) * taps + tap] = v;
                    }
                }
            }
        });
    out
}

/// `inner_product` for weights of TF shape `shape` (2-D, checked by shape
/// inference): returns the `[n, k]` weights, k and n.
pub fn inner_product_of(
    w: &[f32],
    shape: &[usize],
    transpose_b: bool,
    flat_hwc: Option<[usize; 3]>,
) -> (Vec<f32>, usize, usize) {
    let (k, n) = match shape {
        [_, _] => inner_product_dims(shape, transpose_b),
        _ => (w.len(), 1),
    };
    (inner_product(w, k, n, transpose_b, flat_hwc), k, n)
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
/// (c, h, w) order.
pub fn inner_product(
    w: &[f32],
    k: usize,
    n: usize,
    transpose_b: bool,
    flat_hwc: Option<[usize; 3]>,
) -> Vec<f32> {
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
    let mut out = vec![0.0f32; k * n];
    // Shape inference has checked that the weights are `k x n` and the
    // flattened map has `k` values; anything else would be a bug upstream,
    // and gives zeros here rather than reading out of bounds.
    if k == 0 || n == 0 || w.len() < k * n || dest.iter().any(|&d| d >= k) {
        return out;
    }
    if transpose_b {
        // `[n, k]` already: each output row is its weight row, permuted.
        out.par_chunks_mut(k).enumerate().for_each(|(o, row)| {
            let src = &w[o * k..][..k];
            for (r, &v) in src.iter().enumerate() {
                row[dest[r]] = v;
            }
        });
        return out;
    }
    // A blocked transpose of `[k, n]`: output rows in blocks (contiguous,
    // one thread each), weight rows in blocks, so reads and the strided
    // writes of a block stay in cache (VGG16's 25088x4096 fc6 went from
    // seconds to a fraction of one).
    const BLOCK: usize = 64;
    out.par_chunks_mut(BLOCK * k)
        .enumerate()
        .for_each(|(b, chunk)| {
            let o0 = b * BLOCK;
            let os = chunk.len() / k;
            for r0 in (0..k).step_by(BLOCK) {
                for r in r0..(r0 + BLOCK).min(k) {
                    let src = &w[r * n + o0..][..os];
                    let d = dest[r];
                    for (j, &v) in src.iter().enumerate() {
                        chunk[j * k + d] = v;
                    }
                }
            }
        });
    out
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
}
