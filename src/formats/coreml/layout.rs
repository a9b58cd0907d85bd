//! Core ML's blob layouts against TF's. Core ML NeuralNetwork models run one
//! sample at a time and hold every blob as (C, H, W): TF's (N, H, W, C) as
//! (C, H, W), (N, K) as (K, 1, 1), and a flatten of a spatial map in
//! channel-first order.

use crate::error::{Error, Result};
use crate::ir::Tensor;
use crate::runtime::kernels::{nchw_to_nhwc, nhwc_to_nchw};

/// The per-sample Core ML input shape of a TF input shape.
pub fn input_shape(tf: &[usize]) -> Vec<usize> {
    match tf {
        [_, h, w, c] => vec![*c, *h, *w],
        [_, k] => vec![*k],
        _ => tf.get(1..).unwrap_or_default().to_vec(),
    }
}

/// Sample `n` of a TF input, as Core ML is fed it (declared shape `shape`).
pub fn input_sample(t: &Tensor, n: usize, shape: &[usize]) -> Result<Tensor> {
    let batch = t.shape().first().copied().unwrap_or(1).max(1);
    let per = t.len() / batch;
    let all = t.as_f32()?;
    let v = all
        .get(n * per..(n + 1) * per)
        .ok_or_else(|| Error::Usage(format!("no sample {n} in a batch of {batch}")))?
        .to_vec();
    // An input declared as TF's own sample is channel-first already (read
    // only through a transpose to NHWC) and is fed as it is.
    let v = match t.shape() {
        [_, rest @ ..] if rest == shape => v,
        &[_, h, w, c] => nhwc_to_nchw(&v, [1, h, w, c]),
        _ => v,
    };
    Tensor::f32(shape.to_vec(), v)
}

/// A (C, H, W) blob as one sample of the TF tensor, of shape `want`
/// (batch 1); `flat_in` is the (C, H, W) of the map a flatten read.
pub fn to_tf(b: &Tensor, want: &[usize], flat_in: Option<&[usize]>) -> Result<Tensor> {
    let &[c, h, w] = b.shape() else {
        return Err(Error::Mismatch(format!("blob shape {:?}", b.shape())));
    };
    let v = b.as_f32()?;
    if let &[_, th, tw, tc] = want {
        // A channel-first TF value (an NHWC map transposed to NCHW) is
        // held in TF's own order.
        if [th, tw, tc] == [c, h, w] && [th, tw, tc] != [h, w, c] {
            return b.reshaped(want.to_vec());
        }
        if [th, tw, tc] != [h, w, c] && !(tc == 1 && [th, tw] == [h, w] && c == 1) {
            return Err(Error::Mismatch(format!(
                "shape (C, H, W) {:?} does not match TensorFlow's {want:?}",
                [c, h, w]
            )));
        }
        return Tensor::f32(want.to_vec(), nchw_to_nhwc(&v, [1, c, h, w]));
    }
    if let Some(&[fc, fh, fw]) = flat_in {
        if fh * fw > 1 && fc * fh * fw == b.len() {
            return Tensor::f32(want.to_vec(), nchw_to_nhwc(&v, [1, fc, fh, fw]));
        }
    }
    if b.len() != want.iter().product::<usize>() {
        return Err(Error::Mismatch(format!(
            "{} values where TensorFlow has {}",
            b.len(),
            want.iter().product::<usize>()
        )));
    }
    b.reshaped(want.to_vec())
}

/// Samples of one tensor, in order, joined along the batch axis.
pub fn join_batch(parts: &[Tensor]) -> Result<Tensor> {
    let first = parts
        .first()
        .ok_or_else(|| Error::Usage("no samples".into()))?;
    let mut shape = first.shape().to_vec();
    let mut v = Vec::with_capacity(first.len() * parts.len());
    for p in parts {
        v.extend_from_slice(&p.as_f32()?);
    }
    if let Some(d) = shape.first_mut() {
        *d = parts.len();
    }
    Tensor::f32(shape, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_goes_in_channel_first_and_comes_back() {
        let x = Tensor::f32(vec![2, 1, 2, 2], (0..8).map(|i| i as f32).collect()).unwrap();
        let s1 = input_sample(&x, 1, &[2, 1, 2]).unwrap();
        assert_eq!(&*s1.as_f32().unwrap(), &[4., 6., 5., 7.]);
        let back = to_tf(&s1, &[1, 1, 2, 2], None).unwrap();
        assert_eq!(&*back.as_f32().unwrap(), &[4., 5., 6., 7.]);
        let s0 = to_tf(
            &input_sample(&x, 0, &[2, 1, 2]).unwrap(),
            &[1, 1, 2, 2],
            None,
        )
        .unwrap();
        let joined = join_batch(&[s0, back]).unwrap();
        assert_eq!(joined.shape(), &[2, 1, 2, 2]);
        assert_eq!(&*joined.as_f32().unwrap(), &*x.as_f32().unwrap());
        assert!(input_sample(&x, 2, &[2, 1, 2]).is_err());
    }
}
