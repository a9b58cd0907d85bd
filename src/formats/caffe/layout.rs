//! Caffe's blob layouts against TF's: faceall's Caffe blobs hold 4-D NHWC
//! values as NCHW, always (also when C happens to equal H and W), and a
//! blob written by a flatten of a spatial map in channel-first order.

use crate::error::{Error, Result};
use crate::ir::Tensor;
use crate::runtime::kernels::{nchw_to_nhwc, nhwc_to_nchw};

/// The Caffe input shape of a TF input: NHWC becomes NCHW.
pub fn input_shape(tf: &[usize]) -> Vec<usize> {
    match tf {
        &[n, h, w, c] => vec![n, c, h, w],
        s => s.to_vec(),
    }
}

/// A TF input as Caffe is fed it, into a blob declared as `declared`: one
/// declared in TF's own shape is a channel-first input (NCHW in TF already,
/// read only through a transpose to NHWC), fed as it is.
pub fn input_nchw(t: &Tensor, declared: Option<&[usize]>) -> Result<Tensor> {
    if declared == Some(t.shape()) {
        return Ok(t.clone());
    }
    let &[n, h, w, c] = t.shape() else {
        return Ok(t.clone());
    };
    Tensor::f32(vec![n, c, h, w], nhwc_to_nchw(&t.as_f32()?, [n, h, w, c]))
}

/// A Caffe blob as the TF tensor of shape `want`; `flat_of` is the
/// (C, H, W) of the map a flatten read.
pub fn to_tf(got: &Tensor, want: &[usize], flat_of: Option<[usize; 3]>) -> Result<Tensor> {
    let s = got.shape();
    if let (&[n, c, h, w], 4) = (s, want.len()) {
        if [n, h, w, c] == [want[0], want[1], want[2], want[3]] {
            return Tensor::f32(want.to_vec(), nchw_to_nhwc(&got.as_f32()?, [n, c, h, w]));
        }
        // A TF value that is itself channel-first (an NHWC map transposed
        // to NCHW) is held in TF's order.
        if s == want {
            return Ok(got.clone());
        }
        return Err(Error::Mismatch(format!(
            "shape {s:?} (NCHW) does not match TensorFlow's {want:?} (NHWC)"
        )));
    }
    if s == want {
        if let (Some([c, h, w]), 2) = (flat_of, want.len()) {
            if h * w > 1 {
                let v = nchw_to_nhwc(&got.as_f32()?, [want[0], c, h, w]);
                return Tensor::f32(want.to_vec(), v);
            }
        }
        return Ok(got.clone());
    }
    if got.len() == want.iter().product::<usize>() && want.len() != 4 {
        return got.reshaped(want.to_vec());
    }
    Err(Error::Mismatch(format!(
        "shape {s:?} does not match TensorFlow's {want:?}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nchw_blob_reads_back_as_nhwc() {
        // (1, 2, 1, 3) NHWC: pixels p0, p1, p2 with channels (a, b).
        let nhwc = Tensor::f32(vec![1, 1, 3, 2], vec![0., 10., 1., 11., 2., 12.]).unwrap();
        let nchw = input_nchw(&nhwc, None).unwrap();
        assert_eq!(nchw.shape(), &[1, 2, 1, 3]);
        assert_eq!(&*nchw.as_f32().unwrap(), &[0., 1., 2., 10., 11., 12.]);
        let back = to_tf(&nchw, &[1, 1, 3, 2], None).unwrap();
        assert_eq!(&*back.as_f32().unwrap(), &*nhwc.as_f32().unwrap());
    }

    #[test]
    fn a_channel_first_value_is_held_as_it_is() {
        let v = Tensor::f32(vec![1, 3, 2, 2], (0..12).map(|i| i as f32).collect()).unwrap();
        let same =
            |t: Tensor| t.shape() == v.shape() && *t.as_f32().unwrap() == *v.as_f32().unwrap();
        assert!(same(to_tf(&v, &[1, 3, 2, 2], None).unwrap()));
        assert!(same(input_nchw(&v, Some(&[1, 3, 2, 2])).unwrap()));
        // Not declared as it is: transposed to NCHW.
        assert!(!same(input_nchw(&v, None).unwrap()));
    }

    #[test]
    fn a_flatten_of_a_map_is_reordered_and_a_wrong_shape_refused() {
        // Channel-first flatten of (C=2, H=1, W=2) -> TF's (H, W, C) order.
        let flat = Tensor::f32(vec![1, 4], vec![0., 1., 10., 11.]).unwrap();
        let t = to_tf(&flat, &[1, 4], Some([2, 1, 2])).unwrap();
        assert_eq!(&*t.as_f32().unwrap(), &[0., 10., 1., 11.]);
        assert!(matches!(
            to_tf(&flat, &[1, 5], None),
            Err(Error::Mismatch(_))
        ));
    }
}
