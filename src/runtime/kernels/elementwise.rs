//! Elementwise kernels: activations, unary math, broadcasting binary ops,
//! per-channel bias and batch norm.

use crate::ir::op::{FRAC_1_SQRT_2, GELU_CUBIC, SQRT_2_OVER_PI};
use crate::ir::{Activation, BinaryOp, UnaryOp};

pub fn activation(a: Activation, x: &mut [f32]) {
    match a {
        Activation::Relu => x.iter_mut().for_each(|v| *v = v.max(0.0)),
        Activation::Relu6 => x.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0)),
        Activation::Elu => x.iter_mut().for_each(|v| {
            if *v < 0.0 {
                *v = v.exp_m1()
            }
        }),
        Activation::Sigmoid => x.iter_mut().for_each(|v| *v = 1.0 / (1.0 + (-*v).exp())),
        Activation::Tanh => x.iter_mut().for_each(|v| *v = v.tanh()),
        Activation::LeakyRelu { alpha } => x.iter_mut().for_each(|v| {
            if *v < 0.0 {
                *v *= alpha
            }
        }),
        Activation::Gelu { approximate } => x.iter_mut().for_each(|v| *v = gelu(*v, approximate)),
    }
}

/// GELU in the order TF evaluates it: `0.5 * x * erfc(-x / sqrt 2)`
/// (erfc keeps the left tail accurate where `1 + erf` would cancel), or
/// `0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))`.
pub fn gelu(x: f32, approximate: bool) -> f32 {
    if approximate {
        let inner = SQRT_2_OVER_PI * (x + GELU_CUBIC * (x * x * x));
        0.5 * x * (1.0 + inner.tanh())
    } else {
        0.5 * x * libm::erfcf(-x * FRAC_1_SQRT_2)
    }
}

pub fn unary(u: UnaryOp, x: &mut [f32]) {
    match u {
        UnaryOp::Square => x.iter_mut().for_each(|v| *v *= *v),
        UnaryOp::Sqrt => x.iter_mut().for_each(|v| *v = v.sqrt()),
        UnaryOp::Rsqrt => x.iter_mut().for_each(|v| *v = 1.0 / v.sqrt()),
        UnaryOp::Neg => x.iter_mut().for_each(|v| *v = -*v),
        UnaryOp::Exp => x.iter_mut().for_each(|v| *v = v.exp()),
        UnaryOp::Log => x.iter_mut().for_each(|v| *v = v.ln()),
        UnaryOp::Erf => x.iter_mut().for_each(|v| *v = libm::erff(*v)),
        UnaryOp::Erfc => x.iter_mut().for_each(|v| *v = libm::erfcf(*v)),
        UnaryOp::Pow { exponent } => x.iter_mut().for_each(|v| *v = v.powf(exponent)),
    }
}

#[inline]
fn apply(op: BinaryOp, a: f32, b: f32) -> f32 {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        // TF propagates NaN from either side.
        BinaryOp::Max => {
            if a.is_nan() || b.is_nan() {
                f32::NAN
            } else {
                a.max(b)
            }
        }
        BinaryOp::Min => {
            if a.is_nan() || b.is_nan() {
                f32::NAN
            } else {
                a.min(b)
            }
        }
    }
}

/// Strides of `shape` right-aligned into `rank` dims, 0 where broadcast.
fn bcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let rank = out.len();
    let mut strides = vec![0; rank];
    let mut s = 1;
    for i in (0..shape.len()).rev() {
        let o = rank - shape.len() + i;
        strides[o] = if shape[i] == 1 { 0 } else { s };
        s *= shape[i];
    }
    strides
}

/// Broadcasting binary op; `out_shape` must be the broadcast of both shapes.
pub fn binary(
    op: BinaryOp,
    a: &[f32],
    ash: &[usize],
    b: &[f32],
    bsh: &[usize],
    out_shape: &[usize],
) -> Vec<f32> {
    let n: usize = out_shape.iter().product();
    if a.len() == n && b.len() == n {
        return a.iter().zip(b).map(|(&x, &y)| apply(op, x, y)).collect();
    }
    if a.len() == n && b.len() == 1 {
        return a.iter().map(|&x| apply(op, x, b[0])).collect();
    }
    if b.len() == n && a.len() == 1 {
        return b.iter().map(|&y| apply(op, a[0], y)).collect();
    }
    let inner = out_shape.last().copied().unwrap_or(1);
    if a.len() == n && b.len() == inner && bsh.last() == Some(&inner) && inner > 0 {
        let mut out = Vec::with_capacity(n);
        for row in a.chunks_exact(inner) {
            out.extend(row.iter().zip(b).map(|(&x, &y)| apply(op, x, y)));
        }
        return out;
    }
    let sa = bcast_strides(ash, out_shape);
    let sb = bcast_strides(bsh, out_shape);
    let rank = out_shape.len();
    let mut idx = vec![0usize; rank];
    let mut out = Vec::with_capacity(n);
    let (mut ia, mut ib) = (0usize, 0usize);
    for _ in 0..n {
        out.push(apply(op, a[ia], b[ib]));
        for d in (0..rank).rev() {
            idx[d] += 1;
            ia += sa[d];
            ib += sb[d];
            if idx[d] < out_shape[d] {
                break;
            }
            ia -= sa[d] * idx[d];
            ib -= sb[d] * idx[d];
            idx[d] = 0;
        }
    }
    out
}

/// x[..., c, inner...] + bias[c], where `inner` is the size after the channel axis.
pub fn bias_add(x: &mut [f32], bias: &[f32], inner: usize) {
    let c = bias.len();
    for (i, chunk) in x.chunks_mut(inner.max(1)).enumerate() {
        let b = bias[i % c];
        chunk.iter_mut().for_each(|v| *v += b);
    }
}

/// Inference batch norm per channel: y = (x - mean) * rsqrt(var + eps) * gamma + beta.
/// With `training`, mean and (biased) variance come from x itself.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm(
    x: &mut [f32],
    c: usize,
    inner: usize,
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f32,
    training: bool,
) {
    let inner = inner.max(1);
    let (mean, var) = if training {
        let mut sum = vec![0.0f64; c];
        let mut sq = vec![0.0f64; c];
        let mut count = 0usize;
        for (i, chunk) in x.chunks(inner).enumerate() {
            let ch = i % c;
            for &v in chunk {
                sum[ch] += v as f64;
                sq[ch] += (v as f64) * (v as f64);
            }
            if ch == 0 {
                count += chunk.len();
            }
        }
        let count = count.max(1) as f64;
        let m: Vec<f32> = sum.iter().map(|s| (s / count) as f32).collect();
        let v: Vec<f32> = sq
            .iter()
            .zip(&sum)
            .map(|(q, s)| ((q / count) - (s / count) * (s / count)).max(0.0) as f32)
            .collect();
        (m, v)
    } else {
        (mean.to_vec(), var.to_vec())
    };
    let scale: Vec<f32> = (0..c).map(|i| gamma[i] / (var[i] + eps).sqrt()).collect();
    let shift: Vec<f32> = (0..c).map(|i| beta[i] - mean[i] * scale[i]).collect();
    for (i, chunk) in x.chunks_mut(inner).enumerate() {
        let ch = i % c;
        let (s, t) = (scale[ch], shift[ch]);
        chunk.iter_mut().for_each(|v| *v = *v * s + t);
    }
}

/// Softmax over the last axis of rows of length `n`.
pub fn softmax_last(x: &mut [f32], n: usize) {
    for row in x.chunks_mut(n.max(1)) {
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut s = 0.0;
        for v in row.iter_mut() {
            *v = (*v - m).exp();
            s += *v;
        }
        row.iter_mut().for_each(|v| *v /= s);
    }
}

/// out = sum_i c_i * x_i (residual sums), accumulated in input order; a
/// coefficient of 1 adds without multiplying, as TF's `x + branch` does.
pub fn weighted_sum_into<'a>(out: &mut [f32], terms: impl IntoIterator<Item = (&'a [f32], f32)>) {
    out.fill(0.0);
    for (x, c) in terms {
        if c == 1.0 {
            out.iter_mut().zip(x).for_each(|(a, &v)| *a += v);
        } else {
            out.iter_mut().zip(x).for_each(|(a, &v)| *a += c * v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_is_x_times_the_normal_cdf() {
        // Phi(1) = 0.8413447460685429, Phi(-1) = 0.15865525393145707.
        assert!((gelu(1.0, false) - 0.841_344_7).abs() < 2e-7);
        assert!((gelu(-1.0, false) + 0.158_655_26).abs() < 1e-7);
        assert_eq!(gelu(0.0, false), 0.0);
        // The tails: x far right, a tiny negative far left (erfc keeps it).
        assert_eq!(gelu(10.0, false), 10.0);
        let left = gelu(-6.0, false);
        assert!(left < 0.0 && left > -1e-8, "{left}");
        // The tanh form stays within 1e-3 of the exact one.
        for i in -60..=60 {
            let x = i as f32 / 10.0;
            assert!((gelu(x, true) - gelu(x, false)).abs() < 1e-3, "{x}");
        }
    }

    #[test]
    fn erf_erfc_and_pow() {
        let mut v = vec![0.5f32, -2.0];
        unary(UnaryOp::Erf, &mut v);
        assert!((v[0] - 0.520_499_9).abs() < 1e-7 && (v[1] + 0.995_322_3).abs() < 1e-7);
        let mut v = vec![4.0f32];
        unary(UnaryOp::Erfc, &mut v);
        // erfc(4) = 1.541725790028002e-8: no cancellation against 1.
        assert!((v[0] / 1.541_725_8e-8 - 1.0).abs() < 1e-5, "{}", v[0]);
        let mut v = vec![-2.0f32, 3.0];
        unary(UnaryOp::Pow { exponent: 3.0 }, &mut v);
        assert_eq!(v, vec![-8.0, 27.0]);
    }
}
