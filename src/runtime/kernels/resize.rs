//! Spatial resampling with TensorFlow's own arithmetic (the float32 source
//! coordinates of `Resize::nearest_sources` and `Resize::bilinear_weights`,
//! as `resize_nearest_neighbor_op.cc` and `resize_bilinear_op.cc` compute
//! them), and the depth <-> space shuffles.

use crate::ir::{Resize, ResizeMode, SpaceDepth};

/// Resize an NHWC map `[n, h, w, c]` as `r` says.
pub fn resize_nhwc(x: &[f32], [n, h, w, c]: [usize; 4], r: &Resize) -> Vec<f32> {
    let [oh, ow] = r.size;
    let mut out = Vec::with_capacity(n * oh * ow * c);
    let at = |b: usize, y: usize, xx: usize| ((b * h + y) * w + xx) * c;
    match r.mode {
        ResizeMode::Nearest => {
            let (ys, xs) = (r.nearest_sources(h, oh), r.nearest_sources(w, ow));
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
            let (ys, xs) = (r.bilinear_weights(h, oh), r.bilinear_weights(w, ow));
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
        assert_eq!(legacy.nearest_sources(3, 5), vec![0, 0, 1, 1, 2]);
        let half = r(ResizeMode::Nearest, [1, 5], false, true);
        // (dst + 0.5) * 0.6 floored: 0.3 0.9 1.5 2.1 2.7.
        assert_eq!(half.nearest_sources(3, 5), vec![0, 0, 1, 2, 2]);
        let corners = r(ResizeMode::Nearest, [1, 5], true, false);
        // dst * 0.5 rounded half away from zero: 0 0.5 1 1.5 2.
        assert_eq!(corners.nearest_sources(3, 5), vec![0, 1, 1, 2, 2]);
    }

    /// TF's legacy nearest rule rounds `in / out` down for some whole
    /// factors and reads a pixel early: those are not a repeat, so no
    /// target writes them as one.
    #[test]
    fn nearest_by_a_whole_factor_repeats_unless_tf_rounds_early() {
        let legacy = r(ResizeMode::Nearest, [2, 82], false, false);
        assert_eq!(legacy.whole_factors([1, 2]), None);
        let src = legacy.nearest_sources(2, 82);
        assert_eq!(src[41], 0, "TF reads pixel 0 at output 41");
        let up = r(ResizeMode::Nearest, [2, 8], false, false);
        assert_eq!(up.whole_factors([1, 2]), Some([2, 4]));
        let half = r(ResizeMode::Nearest, [2, 82], false, true);
        assert_eq!(half.whole_factors([1, 2]), Some([2, 41]));
    }

    #[test]
    fn bilinear_clamps_at_both_edges() {
        let half = r(ResizeMode::Bilinear, [1, 4], false, true);
        let w = half.bilinear_weights(2, 4);
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
