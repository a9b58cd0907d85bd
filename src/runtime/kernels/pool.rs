//! Max and average pooling, NHWC. Average divides by the number of real
//! (non-padding) pixels in the window, as TensorFlow does.

use crate::ir::PoolKind;

/// Pool into a new buffer (see `pool_nhwc_into`).
#[allow(clippy::too_many_arguments)]
pub fn pool_nhwc(
    x: &[f32],
    dims: [usize; 4],
    kind: PoolKind,
    k: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 2],
    out_hw: [usize; 2],
) -> Vec<f32> {
    let mut out = vec![0.0; dims[0] * out_hw[0] * out_hw[1] * dims[3]];
    pool_nhwc_into(x, dims, kind, k, stride, pad, out_hw, &mut out);
    out
}

/// As `pool_nhwc`, into `out` (n * oh * ow * c floats). Rows of output run
/// in parallel when there are many; each element's sum or max is taken in
/// the same order either way.
#[allow(clippy::too_many_arguments)]
pub fn pool_nhwc_into(
    x: &[f32],
    [n, h, w, c]: [usize; 4],
    kind: PoolKind,
    k: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 2],
    [oh, ow]: [usize; 2],
    out: &mut [f32],
) {
    let row_len = ow * c;
    if row_len == 0 || oh == 0 {
        return;
    }
    let row = |(r, dst): (usize, &mut [f32])| {
        let (b, oy) = (r / oh, r % oh);
        let y0 = (oy * stride[0]) as isize - pad[0] as isize;
        let ys = y0.max(0) as usize..((y0 + k[0] as isize).min(h as isize)).max(0) as usize;
        for (ox, d) in dst.chunks_mut(c).enumerate() {
            let x0 = (ox * stride[1]) as isize - pad[1] as isize;
            let xs = x0.max(0) as usize..((x0 + k[1] as isize).min(w as isize)).max(0) as usize;
            d.fill(match kind {
                PoolKind::Max => f32::NEG_INFINITY,
                PoolKind::Avg => 0.0,
            });
            let mut count = 0usize;
            for iy in ys.clone() {
                for ix in xs.clone() {
                    let src = &x[((b * h + iy) * w + ix) * c..][..c];
                    count += 1;
                    match kind {
                        PoolKind::Max => d.iter_mut().zip(src).for_each(|(a, &v)| *a = a.max(v)),
                        PoolKind::Avg => d.iter_mut().zip(src).for_each(|(a, &v)| *a += v),
                    }
                }
            }
            if kind == PoolKind::Avg {
                let count = count.max(1) as f32;
                d.iter_mut().for_each(|a| *a /= count);
            }
        }
    };
    super::for_each_row(&mut out[..n * oh * row_len], row_len, row);
}
