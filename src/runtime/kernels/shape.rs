//! Data movement: concat, pad, reductions, layout transposes.

use crate::ir::ReduceOp;

/// Concatenate along `axis`; each part given with its shape.
pub fn concat(parts: &[(&[f32], &[usize])], axis: usize) -> Vec<f32> {
    let Some((_, s0)) = parts.first() else {
        return vec![];
    };
    let outer: usize = s0[..axis].iter().product();
    let total: usize = parts.iter().map(|(d, _)| d.len()).sum();
    let mut out = Vec::with_capacity(total);
    for o in 0..outer {
        for (d, s) in parts {
            let inner: usize = s[axis..].iter().product();
            out.extend_from_slice(&d[o * inner..(o + 1) * inner]);
        }
    }
    out
}

/// Constant padding of any rank.
pub fn pad(x: &[f32], shape: &[usize], pads: &[[usize; 2]], value: f32) -> Vec<f32> {
    let out_shape: Vec<usize> = shape
        .iter()
        .zip(pads)
        .map(|(d, p)| d + p[0] + p[1])
        .collect();
    let n: usize = out_shape.iter().product();
    let mut out = vec![value; n];
    let rank = shape.len();
    if x.is_empty() || rank == 0 {
        if rank == 0 {
            out.copy_from_slice(x);
        }
        return out;
    }
    let mut ostrides = vec![1; rank];
    for d in (0..rank.saturating_sub(1)).rev() {
        ostrides[d] = ostrides[d + 1] * out_shape[d + 1];
    }
    let last = shape[rank - 1];
    let mut idx = vec![0usize; rank];
    for row in x.chunks_exact(last.max(1)) {
        let at: usize = (0..rank).map(|d| (idx[d] + pads[d][0]) * ostrides[d]).sum();
        out[at..at + last].copy_from_slice(row);
        for d in (0..rank - 1).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

/// `x[begin..end]` on every axis (step 1); the bounds are checked by the
/// IR's shape inference.
pub fn slice(x: &[f32], shape: &[usize], begin: &[usize], end: &[usize]) -> Vec<f32> {
    let rank = shape.len();
    let out_shape: Vec<usize> = begin.iter().zip(end).map(|(b, e)| e - b).collect();
    let n: usize = out_shape.iter().product();
    let mut out = Vec::with_capacity(n);
    if n == 0 || rank == 0 {
        out.extend_from_slice(&x[..n.min(x.len())]);
        return out;
    }
    let mut strides = vec![1; rank];
    for d in (0..rank - 1).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    let last = out_shape[rank - 1];
    let rows = n / last;
    let mut idx = vec![0usize; rank];
    for _ in 0..rows {
        let at: usize = (0..rank).map(|d| (idx[d] + begin[d]) * strides[d]).sum();
        out.extend_from_slice(&x[at..at + last]);
        for d in (0..rank - 1).rev() {
            idx[d] += 1;
            if idx[d] < out_shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

/// Sum or mean over `axes` (sorted); the output keeps the others in order.
pub fn reduce(x: &[f32], shape: &[usize], axes: &[usize], op: ReduceOp) -> Vec<f32> {
    let rank = shape.len();
    let mut ostrides = vec![0usize; rank];
    let mut s = 1;
    for d in (0..rank).rev() {
        if !axes.contains(&d) {
            ostrides[d] = s;
            s *= shape[d];
        }
    }
    let mut acc = vec![0.0f64; s];
    let mut idx = vec![0usize; rank];
    let mut o = 0usize;
    for &v in x {
        acc[o] += v as f64;
        for d in (0..rank).rev() {
            idx[d] += 1;
            o += ostrides[d];
            if idx[d] < shape[d] {
                break;
            }
            o -= ostrides[d] * idx[d];
            idx[d] = 0;
        }
    }
    let count: usize = axes.iter().map(|&a| shape[a]).product();
    acc.iter()
        .map(|&a| match op {
            ReduceOp::Sum => a as f32,
            ReduceOp::Mean => (a / count.max(1) as f64) as f32,
        })
        .collect()
}

pub fn nchw_to_nhwc(x: &[f32], [n, c, h, w]: [usize; 4]) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for b in 0..n {
        for ch in 0..c {
            for i in 0..h * w {
                out[(b * h * w + i) * c + ch] = x[(b * c + ch) * h * w + i];
            }
        }
    }
    out
}

pub fn nhwc_to_nchw(x: &[f32], [n, h, w, c]: [usize; 4]) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for b in 0..n {
        for i in 0..h * w {
            for ch in 0..c {
                out[(b * c + ch) * h * w + i] = x[(b * h * w + i) * c + ch];
            }
        }
    }
    out
}

/// Permute the axes: output axis i is input axis perm[i].
pub fn transpose(x: &[f32], shape: &[usize], perm: &[usize]) -> Vec<f32> {
    let rank = shape.len();
    let mut in_strides = vec![1usize; rank];
    for i in (0..rank.saturating_sub(1)).rev() {
        in_strides[i] = in_strides[i + 1] * shape[i + 1];
    }
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let n: usize = out_shape.iter().product();
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; rank];
    for _ in 0..n {
        let at: usize = (0..rank).map(|i| idx[i] * in_strides[perm[i]]).sum();
        out.push(x[at]);
        for i in (0..rank).rev() {
            idx[i] += 1;
            if idx[i] < out_shape[i] {
                break;
            }
            idx[i] = 0;
        }
    }
    out
}

/// tf.tile: `multiples[i]` whole copies along each axis.
pub fn tile(x: &[f32], shape: &[usize], multiples: &[usize]) -> Vec<f32> {
    let out_shape: Vec<usize> = shape.iter().zip(multiples).map(|(d, m)| d * m).collect();
    let n: usize = out_shape.iter().product();
    let rank = shape.len();
    let mut strides = vec![1usize; rank];
    for i in (0..rank.saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; rank];
    for _ in 0..n {
        let at: usize = (0..rank).map(|i| (idx[i] % shape[i]) * strides[i]).sum();
        out.push(x[at]);
        for i in (0..rank).rev() {
            idx[i] += 1;
            if idx[i] < out_shape[i] {
                break;
            }
            idx[i] = 0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_takes_the_box_in_row_major_order() {
        // A (2, 3, 4) ramp; take [1..2, 0..2, 1..4].
        let x: Vec<f32> = (0..24).map(|v| v as f32).collect();
        let got = slice(&x, &[2, 3, 4], &[1, 0, 1], &[2, 2, 4]);
        assert_eq!(got, vec![13.0, 14.0, 15.0, 17.0, 18.0, 19.0]);
        // The whole range is a copy; an empty range is empty.
        assert_eq!(slice(&x, &[2, 3, 4], &[0, 0, 0], &[2, 3, 4]), x);
        assert!(slice(&x, &[2, 3, 4], &[0, 1, 0], &[2, 1, 4]).is_empty());
    }

    #[test]
    fn tile_repeats_whole_copies() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let got = tile(&x, &[2, 3], &[2, 1]);
        assert_eq!(got, [x, x].concat());
        let got = tile(&x, &[2, 3, 1], &[1, 1, 2]);
        assert_eq!(
            got,
            vec![1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0, 5.0, 5.0, 6.0, 6.0]
        );
    }

    #[test]
    fn slice_undoes_pad() {
        let x: Vec<f32> = (0..12).map(|v| v as f32 * 0.5).collect();
        let p = pad(&x, &[1, 3, 4], &[[0, 0], [1, 2], [0, 3]], 9.0);
        assert_eq!(slice(&p, &[1, 6, 7], &[0, 1, 0], &[1, 4, 4]), x);
    }
}
