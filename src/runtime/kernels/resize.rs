//! Spatial resampling with TensorFlow's own arithmetic (float32 scales and
//! source coordinates, as `resize_nearest_neighbor_op.cc` and
//! `resize_bilinear_op.cc` compute them), and the depth <-> space shuffles.

use crate::ir::{Resize, ResizeMode, SpaceDepth};

/// TF's `CalculateResizeScale`: input pixels per output pixel.
fn scale(input: usize, output: usize, align_corners: bool) -> f32 {
    if align_corners && output > 1 {
        (input - 1) as f32 / (output - 1) as f32
    } else {
        input as f32 / output as f32
    }
}

/// The source index each output index of one axis reads (nearest).
pub fn nearest_sources(r: &Resize, input: usize, output: usize) -> Vec<usize> {
    let s = scale(input, output, r.align_corners);
    (0..output)
        .map(|o| {
            let at = if r.half_pixel_centers {
                (o as f32 + 0.5) * s
            } else {
                o as f32 * s
            };
            let i = if r.align_corners {
                at.round()
            } else {
                at.floor()
            };
            // Negative only through rounding; TF clamps at both ends.
            (i.max(0.0) as usize).min(input - 1)
        })
        .collect()
}

/// One output index's bilinear neighbours and the weight of the upper one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lerp {
    pub lower: usize,
    pub upper: usize,
    pub frac: f32,
}

/// TF's `compute_interpolation_weights` for one axis.
pub fn bilinear_weights(r: &Resize, input: usize, output: usize) -> Vec<Lerp> {
    let s = scale(input, output, r.align_corners);
    (0..output)
        .map(|o| {
            let at = if r.half_pixel_centers {
                (o as f32 + 0.5) * s - 0.5
            } else {
                o as f32 * s
            };
            let f = at.floor();
            Lerp {
                lower: (f.max(0.0) as usize).min(input - 1),
                upper: (at.ceil().max(0.0) as usize).min(input - 1),
                frac: at - f,
            }
        })
        .collect()
}

/// Resize an NHWC map `[n, h, w, c]` as `r` says.
pub fn resize_nhwc(x: &[f32], [n, h, w, c]: [usize; 4], r: &Resize) -> Vec<f32> {
    let [oh, ow] = r.size;
    let mut out = Vec::with_capacity(n * oh * ow * c);
    let at = |b: usize, y: usize, xx: usize| ((b * h + y) * w + xx) * c;
    match r.mode {
        ResizeMode::Nearest => {
            let (ys, xs) = (nearest_sources(r, h, oh), nearest_sources(r, w, ow));
            for b in 0..n {
                for &y in &ys {
                    for &xx in &xs {
                        let p = at(b, y, xx);
                        out.extend_from_slice(&x[p..p + c]);
                    }
                }
            }
        }
        ResizeMode::Bilinear => {
            let (ys, xs) = (bilinear_weights(r, h, oh), bilinear_weights(r, w, ow));
            for b in 0..n {
                for ly in &ys {
                    for lx in &xs {
                        let (tl, tr) = (at(b, ly.lower, lx.lower), at(b, ly.lower, lx.upper));
                        let (bl, br) = (at(b, ly.upper, lx.lower), at(b, ly.upper, lx.upper));
                        for k in 0..c {
                            let top = x[tl + k] + (x[tr + k] - x[tl + k]) * lx.frac;
                            let bottom = x[bl + k] + (x[br + k] - x[bl + k]) * lx.frac;
                            out.push(top + (bottom - top) * ly.frac);
                        }
                    }
                }
            }
        }
    }
    out
}

/// DepthToSpace / SpaceToDepth of an NHWC map `[n, h, w, c]`.
pub fn space_depth_nhwc(x: &[f32], [n, h, w, c]: [usize; 4], s: &SpaceDepth) -> Vec<f32> {
    let b = s.block;
    let mut out = vec![0.0; x.len()];
    // Walk the deep side (h, w, (i, j, c')) and pair it with the wide side
    // (h * b + i, w * b + j, c').
    let (dh, dw, cs) = if s.to_space {
        (h, w, c / (b * b))
    } else {
        (h / b, w / b, c)
    };
    let (sh, sw) = (dh * b, dw * b);
    for bn in 0..n {
        for y in 0..dh {
            for xx in 0..dw {
                for i in 0..b {
                    for j in 0..b {
                        let deep = (((bn * dh + y) * dw + xx) * b * b + i * b + j) * cs;
                        let wide = ((bn * sh + y * b + i) * sw + xx * b + j) * cs;
                        let (from, to) = if s.to_space {
                            (deep, wide)
                        } else {
                            (wide, deep)
                        };
                        out[to..to + cs].copy_from_slice(&x[from..from + cs]);
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(mode: ResizeMode, size: [usize; 2], ac: bool, hp: bool) -> Resize {
        Resize {
            mode,
            size,
            align_corners: ac,
            half_pixel_centers: hp,
        }
    }

    #[test]
    fn nearest_follows_each_coordinate_rule() {
        let legacy = r(ResizeMode::Nearest, [1, 5], false, false);
        // 3 -> 5: dst * 0.6 floored.
        assert_eq!(nearest_sources(&legacy, 3, 5), vec![0, 0, 1, 1, 2]);
        let half = r(ResizeMode::Nearest, [1, 5], false, true);
        // (dst + 0.5) * 0.6 floored: 0.3 0.9 1.5 2.1 2.7.
        assert_eq!(nearest_sources(&half, 3, 5), vec![0, 0, 1, 2, 2]);
        let corners = r(ResizeMode::Nearest, [1, 5], true, false);
        // dst * 0.5 rounded half away from zero: 0 0.5 1 1.5 2.
        assert_eq!(nearest_sources(&corners, 3, 5), vec![0, 1, 1, 2, 2]);
    }

    #[test]
    fn bilinear_clamps_at_both_edges() {
        let half = r(ResizeMode::Bilinear, [1, 4], false, true);
        let w = bilinear_weights(&half, 2, 4);
        // src = (dst + 0.5) / 2 - 0.5: -0.25 0.25 0.75 1.25.
        assert_eq!((w[0].lower, w[0].upper), (0, 0));
        assert_eq!((w[3].lower, w[3].upper), (1, 1));
        assert!((w[1].frac - 0.25).abs() < 1e-7 && (w[2].frac - 0.75).abs() < 1e-7);
        let x = [0.0, 4.0];
        let got = resize_nhwc(&x, [1, 1, 2, 1], &half);
        assert_eq!(got, vec![0.0, 1.0, 3.0, 4.0]);
    }

    #[test]
    fn depth_to_space_inverts_space_to_depth() {
        let x: Vec<f32> = (0..2 * 4 * 6 * 3).map(|v| v as f32).collect();
        let s2d = SpaceDepth {
            block: 2,
            to_space: false,
        };
        let d2s = SpaceDepth {
            block: 2,
            to_space: true,
        };
        let deep = space_depth_nhwc(&x, [2, 4, 6, 3], &s2d);
        // Pixel (0, 1) of block (0, 0) is depth slot 1: channels 3..6.
        assert_eq!(&deep[3..6], &x[3..6]);
        // Pixel (1, 0) is slot 2: the second row's first pixel.
        assert_eq!(&deep[6..9], &x[18..21]);
        assert_eq!(space_depth_nhwc(&deep, [2, 2, 3, 12], &d2s), x);
    }
}
