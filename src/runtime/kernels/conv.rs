//! Convolution and matrix multiply through im2col + SGEMM
//! (`matrixmultiply`, which blocks and vectorises for the host CPU).

/// Everything a 2-D convolution needs to know about sizes (NHWC, HWIO).
#[derive(Debug, Clone, Copy)]
pub struct ConvGeometry {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub kh: usize,
    pub kw: usize,
    /// Output channels (conv) or channel multiplier (depthwise).
    pub co: usize,
    pub oh: usize,
    pub ow: usize,
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    /// Padding before (top, left); what is after follows from the sizes.
    pub pad: [usize; 2],
}

/// C[m,n] = A[m,k] * B[k,n] with arbitrary strides; sizes are the caller's
/// responsibility, checked here before the unsafe call.
#[allow(clippy::too_many_arguments)]
fn sgemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    rsa: usize,
    csa: usize,
    b: &[f32],
    rsb: usize,
    csb: usize,
    c: &mut [f32],
) {
    let last = |r: usize, rs: usize, cc: usize, cs: usize| {
        if r == 0 || cc == 0 {
            0
        } else {
            (r - 1) * rs + (cc - 1) * cs + 1
        }
    };
    assert!(a.len() >= last(m, rsa, k, csa) && b.len() >= last(k, rsb, n, csb) && c.len() >= m * n);
    // SAFETY: the asserted lengths cover every element the strides reach.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            rsa as isize,
            csa as isize,
            b.as_ptr(),
            rsb as isize,
            csb as isize,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

/// [m,k] x [k,n] (each optionally stored transposed) -> [m,n].
pub fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, ta: bool, tb: bool) -> Vec<f32> {
    let mut c = vec![0.0; m * n];
    let (rsa, csa) = if ta { (1, m) } else { (k, 1) };
    let (rsb, csb) = if tb { (1, k) } else { (n, 1) };
    sgemm(m, k, n, a, rsa, csa, b, rsb, csb, &mut c);
    c
}

/// Conv2D, NHWC input, HWIO filter, zero padding.
pub fn conv2d_nhwc(x: &[f32], w: &[f32], g: &ConvGeometry) -> Vec<f32> {
    let k = g.kh * g.kw * g.c;
    let rows = g.oh * g.ow;
    let mut out = vec![0.0; g.n * rows * g.co];
    let pointwise = g.kh == 1 && g.kw == 1 && g.stride == [1, 1] && g.pad == [0, 0];
    let mut col = if pointwise {
        vec![]
    } else {
        vec![0.0; rows * k]
    };
    for b in 0..g.n {
        let img = &x[b * g.h * g.w * g.c..(b + 1) * g.h * g.w * g.c];
        let dst = &mut out[b * rows * g.co..(b + 1) * rows * g.co];
        if pointwise {
            sgemm(rows, k, g.co, img, k, 1, w, g.co, 1, dst);
            continue;
        }
        im2col(img, g, &mut col);
        sgemm(rows, k, g.co, &col, k, 1, w, g.co, 1, dst);
    }
    out
}

/// Rows of (oh, ow), columns of (kh, kw, c); zeros where the window is in padding.
fn im2col(img: &[f32], g: &ConvGeometry, col: &mut [f32]) {
    let k = g.kh * g.kw * g.c;
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            let row = &mut col[(oy * g.ow + ox) * k..(oy * g.ow + ox + 1) * k];
            for ky in 0..g.kh {
                let iy = (oy * g.stride[0] + ky * g.dilation[0]) as isize - g.pad[0] as isize;
                for kx in 0..g.kw {
                    let ix = (ox * g.stride[1] + kx * g.dilation[1]) as isize - g.pad[1] as isize;
                    let dst = &mut row[(ky * g.kw + kx) * g.c..(ky * g.kw + kx + 1) * g.c];
                    if iy < 0 || ix < 0 || iy as usize >= g.h || ix as usize >= g.w {
                        dst.fill(0.0);
                    } else {
                        let at = (iy as usize * g.w + ix as usize) * g.c;
                        dst.copy_from_slice(&img[at..at + g.c]);
                    }
                }
            }
        }
    }
}

/// DepthwiseConv2dNative, NHWC input, filter [kh, kw, c, multiplier];
/// output channel c * multiplier + m.
pub fn depthwise_nhwc(x: &[f32], w: &[f32], g: &ConvGeometry) -> Vec<f32> {
    let mult = g.co;
    let oc = g.c * mult;
    let mut out = vec![0.0; g.n * g.oh * g.ow * oc];
    for b in 0..g.n {
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                let dst = &mut out[((b * g.oh + oy) * g.ow + ox) * oc..][..oc];
                for ky in 0..g.kh {
                    let iy = (oy * g.stride[0] + ky * g.dilation[0]) as isize - g.pad[0] as isize;
                    if iy < 0 || iy as usize >= g.h {
                        continue;
                    }
                    for kx in 0..g.kw {
                        let ix =
                            (ox * g.stride[1] + kx * g.dilation[1]) as isize - g.pad[1] as isize;
                        if ix < 0 || ix as usize >= g.w {
                            continue;
                        }
                        let src = &x[((b * g.h + iy as usize) * g.w + ix as usize) * g.c..][..g.c];
                        let wk = &w[(ky * g.kw + kx) * g.c * mult..][..g.c * mult];
                        for (i, d) in dst.iter_mut().enumerate() {
                            *d += src[i / mult] * wk[i];
                        }
                    }
                }
            }
        }
    }
    out
}

/// Convolution on NCHW with OIHW weights and symmetric zero padding, in
/// groups (Caffe's and Core ML's layout).
#[allow(clippy::too_many_arguments)]
pub fn conv_nchw(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    wt: &[f32],
    o: usize,
    k: [usize; 2],
    st: [usize; 2],
    pad: [usize; 2],
    dil: [usize; 2],
    group: usize,
    bias: Option<&[f32]>,
    [oh, ow]: [usize; 2],
) -> Vec<f32> {
    if group == 1 {
        return conv_nchw_fast(x, [n, c, h, w], wt, o, k, st, pad, dil, bias, [oh, ow]);
    }
    let cg = c / group;
    let og = o / group;
    let kk = cg * k[0] * k[1];
    let mut out = vec![0.0f32; n * o * oh * ow];
    let mut col = vec![0.0f32; kk * oh * ow];
    for b in 0..n {
        for g in 0..group {
            // col[(ci, ky, kx), (oy, ox)]
            for ci in 0..cg {
                let plane = &x[((b * c) + g * cg + ci) * h * w..][..h * w];
                for ky in 0..k[0] {
                    for kx in 0..k[1] {
                        let row = &mut col[((ci * k[0] + ky) * k[1] + kx) * oh * ow..][..oh * ow];
                        for oy in 0..oh {
                            let iy = (oy * st[0] + ky * dil[0]) as isize - pad[0] as isize;
                            for ox in 0..ow {
                                let ix = (ox * st[1] + kx * dil[1]) as isize - pad[1] as isize;
                                row[oy * ow + ox] =
                                    if iy < 0 || ix < 0 || iy as usize >= h || ix as usize >= w {
                                        0.0
                                    } else {
                                        plane[iy as usize * w + ix as usize]
                                    };
                            }
                        }
                    }
                }
            }
            let wg = &wt[g * og * kk..(g + 1) * og * kk];
            let y = matmul(wg, &col, og, kk, oh * ow, false, false);
            let dst = &mut out[(b * o + g * og) * oh * ow..][..og * oh * ow];
            dst.copy_from_slice(&y);
            if let Some(bias) = bias {
                for (j, chunk) in dst.chunks_mut(oh * ow).enumerate() {
                    let bv = bias[g * og + j];
                    chunk.iter_mut().for_each(|v| *v += bv);
                }
            }
        }
    }
    out
}

/// Ungrouped NCHW convolution through the fast engine's gemm: the input is
/// moved to NHWC, patches are gathered block by block, the OIHW filter is
/// packed as HWIO columns with the bias in the epilogue, and the NHWC result
/// is moved back. Sums run over the same terms as the im2col path, in
/// (ky, kx, c) order instead of (c, ky, kx): differences are float
/// rounding, ~1e-7 relative.
#[allow(clippy::too_many_arguments)]
fn conv_nchw_fast(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    wt: &[f32],
    o: usize,
    k: [usize; 2],
    st: [usize; 2],
    pad: [usize; 2],
    dil: [usize; 2],
    bias: Option<&[f32]>,
    [oh, ow]: [usize; 2],
) -> Vec<f32> {
    use super::gemm::{gemm, Epilogue, PackedB, Patches};
    let nhwc = super::nchw_to_nhwc(x, [n, c, h, w]);
    let kk = k[0] * k[1] * c;
    // B[(ky, kx, ci), oc] = wt[oc, ci, ky, kx]
    let mut hwio = vec![0.0f32; kk * o];
    for oc in 0..o {
        for ci in 0..c {
            for ky in 0..k[0] {
                for kx in 0..k[1] {
                    hwio[((ky * k[1] + kx) * c + ci) * o + oc] =
                        wt[((oc * c + ci) * k[0] + ky) * k[1] + kx];
                }
            }
        }
    }
    let b = PackedB::pack(&hwio, kk, o, o, 1, bias);
    let g = ConvGeometry {
        n,
        h,
        w,
        c,
        kh: k[0],
        kw: k[1],
        co: o,
        oh,
        ow,
        stride: st,
        dilation: dil,
        pad,
    };
    let mut y = vec![0.0f32; n * oh * ow * o];
    gemm(
        &Patches { x: &nhwc, g },
        &b,
        &mut y,
        o,
        &Epilogue::default(),
    );
    super::nhwc_to_nchw(&y, [n, oh, ow, o])
}

/// Where a transposed convolution scatters, shared by its layouts: kernel,
/// strides, dilations, the rows/columns cropped before the output starts,
/// and the output size.
#[derive(Debug, Clone, Copy)]
pub struct DeconvGeometry {
    pub k: [usize; 2],
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    pub crop: [usize; 2],
    pub out: [usize; 2],
}

impl DeconvGeometry {
    /// The output index input `i` with kernel tap `t` lands on, on `axis`.
    fn at(&self, axis: usize, i: usize, t: usize) -> Option<usize> {
        (i * self.stride[axis] + t * self.dilation[axis])
            .checked_sub(self.crop[axis])
            .filter(|&o| o < self.out[axis])
    }
}

/// Transposed convolution on NHWC with TF's filter [kh, kw, out, in]
/// (`Conv2DBackpropInput`): every input pixel scatters its kernel.
pub fn deconv2d_nhwc(
    x: &[f32],
    [n, h, w, ci]: [usize; 4],
    wt: &[f32],
    co: usize,
    g: &DeconvGeometry,
) -> Vec<f32> {
    let [oh, ow] = g.out;
    let mut out = vec![0.0f32; n * oh * ow * co];
    for b in 0..n {
        for i in 0..h {
            for j in 0..w {
                let xin = &x[((b * h + i) * w + j) * ci..][..ci];
                for ky in 0..g.k[0] {
                    let Some(oy) = g.at(0, i, ky) else { continue };
                    for kx in 0..g.k[1] {
                        let Some(ox) = g.at(1, j, kx) else { continue };
                        let o = &mut out[((b * oh + oy) * ow + ox) * co..][..co];
                        let wk = &wt[(ky * g.k[1] + kx) * co * ci..][..co * ci];
                        for (c, ov) in o.iter_mut().enumerate() {
                            let row = &wk[c * ci..][..ci];
                            *ov += row.iter().zip(xin).map(|(a, b)| a * b).sum::<f32>();
                        }
                    }
                }
            }
        }
    }
    out
}

/// Transposed convolution on NCHW with weights [C, O / group, kh, kw]
/// (Caffe's Deconvolution and Core ML's deconvolution), in groups.
pub fn deconv_nchw(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    wt: &[f32],
    o: usize,
    group: usize,
    g: &DeconvGeometry,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let (og, cg) = (o / group.max(1), c / group.max(1));
    let [oh, ow] = g.out;
    let mut out = vec![0.0f32; n * o * oh * ow];
    for b in 0..n {
        for ch in 0..c {
            let grp = ch / cg.max(1);
            for i in 0..h {
                for j in 0..w {
                    let v = x[((b * c + ch) * h + i) * w + j];
                    for col in 0..og {
                        let co = grp * og + col;
                        for ky in 0..g.k[0] {
                            let Some(oy) = g.at(0, i, ky) else { continue };
                            for kx in 0..g.k[1] {
                                let Some(ox) = g.at(1, j, kx) else { continue };
                                let wv = wt[((ch * og + col) * g.k[0] + ky) * g.k[1] + kx];
                                out[((b * o + co) * oh + oy) * ow + ox] += v * wv;
                            }
                        }
                    }
                }
            }
        }
    }
    if let Some(bias) = bias {
        for (i, v) in out.iter_mut().enumerate() {
            *v += bias[(i / (oh * ow)) % o];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transposed convolution is the adjoint of the convolution with the
    /// same geometry: <conv(x), y> = <x, deconv(y)> for any x and y, here
    /// with SAME's odd row (pads 0 before, 1 after) and a dilation.
    #[test]
    fn deconvolution_is_the_adjoint_of_convolution() {
        let (h, w, ci, co, k) = (7, 6, 3, 2, 3);
        let mut seed = 7u32;
        let mut rnd = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for (stride, dilation, pad) in [([2, 2], [1, 1], [0, 0]), ([1, 1], [2, 2], [2, 1])] {
            let ek = |d: usize| (k - 1) * d + 1;
            let oh = (h + 2 * pad[0] - ek(dilation[0]) + 1).div_ceil(stride[0]);
            let ow = (w + 2 * pad[1] - ek(dilation[1]) + 1).div_ceil(stride[1]);
            let g = ConvGeometry {
                n: 1,
                h,
                w,
                c: ci,
                kh: k,
                kw: k,
                co,
                oh,
                ow,
                stride,
                dilation,
                pad,
            };
            // Conv filter [kh, kw, ci, co]; the transposed one reads it as
            // [kh, kw, out = ci, in = co].
            let wt: Vec<f32> = (0..k * k * ci * co).map(|_| rnd()).collect();
            let x: Vec<f32> = (0..h * w * ci).map(|_| rnd()).collect();
            let y: Vec<f32> = (0..oh * ow * co).map(|_| rnd()).collect();
            let cx = conv2d_nhwc(&x, &wt, &g);
            let dg = DeconvGeometry {
                k: [k, k],
                stride,
                dilation,
                crop: pad,
                out: [h, w],
            };
            let dy = deconv2d_nhwc(&y, [1, oh, ow, co], &wt, ci, &dg);
            let lhs: f32 = cx.iter().zip(&y).map(|(a, b)| a * b).sum();
            let rhs: f32 = x.iter().zip(&dy).map(|(a, b)| a * b).sum();
            assert!((lhs - rhs).abs() < 1e-4, "{lhs} vs {rhs}");
        }
    }
}
