//! Max and average pooling, NHWC. Average divides by the number of real
//! (non-padding) pixels in the window, as TensorFlow does.

use super::gemm::SendPtr;
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
    let p = Pool {
        x,
        dims: [n, h, w, c],
        kind,
        window: [k, stride, pad],
        out_hw: [oh, ow],
    };
    let row_len = ow * c;
    if row_len == 0 || oh == 0 {
        return;
    }
    let rows = n * oh;
    let out = &mut out[..rows * row_len];
    if out.len() < super::PARALLEL_FROM {
        out.chunks_mut(row_len)
            .enumerate()
            .for_each(|(r, d)| p.row_best(r, d));
        return;
    }
    let ptr = SendPtr(out.as_mut_ptr());
    super::team::par_for(rows, &|r| {
        // SAFETY: task r writes row r only, inside `out`.
        let d = unsafe { std::slice::from_raw_parts_mut(ptr.get().add(r * row_len), row_len) };
        p.row_best(r, d)
    });
}

/// One pooling's operands.
struct Pool<'a> {
    x: &'a [f32],
    dims: [usize; 4],
    kind: PoolKind,
    /// Window size, stride and leading padding, (rows, columns) each.
    window: [[usize; 2]; 3],
    out_hw: [usize; 2],
}

impl Pool<'_> {
    fn row_best(&self, r: usize, dst: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if super::gemm::avx512() {
            // SAFETY: the CPU has AVX-512F.
            unsafe { self.row_avx512(r, dst) };
            return;
        }
        self.row::<false>(r, dst)
    }

    /// # Safety
    /// The CPU has AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn row_avx512(&self, r: usize, dst: &mut [f32]) {
        self.row::<true>(r, dst)
    }

    /// Output row `r` (sample r / oh, row r % oh) into `dst`; inlined into
    /// the AVX-512 variant so its combines compile to vector code with no
    /// call per pixel.
    #[inline(always)]
    fn row<const AVX512: bool>(&self, r: usize, dst: &mut [f32]) {
        let [_, h, w, c] = self.dims;
        let ([k, stride, pad], kind) = (self.window, self.kind);
        let (b, oy) = (r / self.out_hw[0], r % self.out_hw[0]);
        let y0 = (oy * stride[0]) as isize - pad[0] as isize;
        let ys = y0.max(0) as usize..((y0 + k[0] as isize).min(h as isize)).max(0) as usize;
        for (ox, d) in dst.chunks_mut(c).enumerate() {
            let x0 = (ox * stride[1]) as isize - pad[1] as isize;
            let xs = x0.max(0) as usize..((x0 + k[1] as isize).min(w as isize)).max(0) as usize;
            d.fill(match kind {
                PoolKind::Max => f32::NEG_INFINITY,
                PoolKind::Avg => 0.0,
            });
            let count = ys.len() * xs.len();
            // The window: ys.len() runs of xs.len() adjacent pixels.
            let runs = ys.clone().map(|iy| ((b * h + iy) * w + xs.start) * c);
            if AVX512 && count > 0 {
                // The window's last pixel, checked here for the unchecked
                // loads of the vector path.
                let last = ((b * h + ys.end - 1) * w + xs.end - 1) * c;
                assert!(last + c <= self.x.len(), "pool: window outside the input");
                #[cfg(target_arch = "x86_64")]
                // SAFETY: only reached from `row_avx512`; every pixel of
                // the window lies at or before `last`.
                unsafe {
                    pixel_avx512(kind, d, self.x, runs, xs.len())
                };
            } else {
                for at in runs {
                    for t in 0..xs.len() {
                        combine(kind, d, &self.x[at + t * c..][..c]);
                    }
                }
            }
            if kind == PoolKind::Avg {
                let count = count.max(1) as f32;
                d.iter_mut().for_each(|a| *a /= count);
            }
        }
    }
}

/// `d = max(d, s)` or `d += s`, element by element.
fn combine(kind: PoolKind, d: &mut [f32], s: &[f32]) {
    match kind {
        PoolKind::Max => d.iter_mut().zip(s).for_each(|(a, &v)| *a = a.max(v)),
        PoolKind::Avg => d.iter_mut().zip(s).for_each(|(a, &v)| *a += v),
    }
}

/// One output pixel: `d` (already holding the start value) combined with
/// the `n` adjacent pixels of `x` from each offset of `runs`, in order, 64
/// channels at a time in registers: each element's result as `combine`
/// gives it (`max_ps(v, a)` returns `a`, never NaN, when `v` is NaN, as
/// f32::max keeps it). Accumulating through `d` instead stalls on every
/// masked store read back; the scalar loop, for baseline x86-64, runs four
/// lanes.
///
/// # Safety
/// The CPU has AVX-512F; every pixel named lies inside `x`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pixel_avx512(
    kind: PoolKind,
    d: &mut [f32],
    x: &[f32],
    runs: impl Iterator<Item = usize> + Clone,
    n: usize,
) {
    use std::arch::x86_64::*;
    const V: usize = 4;
    let c = d.len();
    let mut c0 = 0;
    while c0 < c {
        let masks: [u16; V] = std::array::from_fn(|v| {
            let from = c0 + 16 * v;
            if from < c {
                super::gemm::mask_for(c - from)
            } else {
                0
            }
        });
        // Wrapping pointer steps: a masked-off vector may point past the
        // end (its lanes are never touched).
        let mut acc: [__m512; V] = std::array::from_fn(|v| {
            _mm512_maskz_loadu_ps(masks[v], d.as_ptr().wrapping_add(c0 + 16 * v))
        });
        for at in runs.clone() {
            let mut p = x.as_ptr().wrapping_add(at + c0);
            for _ in 0..n {
                for v in 0..V {
                    let val = _mm512_maskz_loadu_ps(masks[v], p.wrapping_add(16 * v));
                    acc[v] = match kind {
                        PoolKind::Max => _mm512_max_ps(val, acc[v]),
                        PoolKind::Avg => _mm512_add_ps(acc[v], val),
                    };
                }
                p = p.wrapping_add(c);
            }
        }
        for v in 0..V {
            _mm512_mask_storeu_ps(d.as_mut_ptr().wrapping_add(c0 + 16 * v), masks[v], acc[v]);
        }
        c0 += 16 * V;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_path_equals_the_scalar_loop_nans_included() {
        // 70 channels: a full chunk of 64 and a masked one; padding so
        // windows differ in size (the average divides by real pixels).
        let (h, w, c) = (5, 6, 70);
        let x: Vec<f32> = (0..h * w * c)
            .map(|i| match i % 11 {
                3 => f32::NAN,
                5 => f32::NEG_INFINITY,
                _ => ((i * 7919) % 101) as f32 - 50.0,
            })
            .collect();
        for kind in [PoolKind::Max, PoolKind::Avg] {
            let p = Pool {
                x: &x,
                dims: [1, h, w, c],
                kind,
                window: [[3, 3], [2, 2], [1, 1]],
                out_hw: [3, 3],
            };
            let got = pool_nhwc(&x, [1, h, w, c], kind, [3, 3], [2, 2], [1, 1], [3, 3]);
            let mut want = vec![0.0; 3 * 3 * c];
            for (r, d) in want.chunks_mut(3 * c).enumerate() {
                p.row::<false>(r, d);
            }
            let same = |a: f32, b: f32| a == b || (a.is_nan() && b.is_nan());
            let bad: Vec<usize> = (0..want.len())
                .filter(|&i| !same(want[i], got[i]))
                .collect();
            assert!(
                bad.is_empty(),
                "{kind:?}: {} differ, first {:?}",
                bad.len(),
                bad.first()
            );
        }
    }
}
