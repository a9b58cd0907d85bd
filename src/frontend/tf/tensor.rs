//! TensorProto decoding: raw `tensor_content` stays a slice of the file;
//! typed `*_val` fields follow TF's rule that the last value fills the rest
//! (a single value splats over the whole shape).

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::ir::{numel, DType, Tensor};
use crate::proto::graph::{DataType, TensorProto, TensorShapeProto};

pub fn dtype(dt: DataType) -> Option<DType> {
    match dt {
        DataType::DT_FLOAT | DataType::DT_FLOAT_REF => Some(DType::F32),
        DataType::DT_INT32 | DataType::DT_INT32_REF => Some(DType::I32),
        DataType::DT_INT64 | DataType::DT_INT64_REF => Some(DType::I64),
        DataType::DT_BOOL | DataType::DT_BOOL_REF => Some(DType::Bool),
        _ => None,
    }
}

/// Dimensions of a shape proto; `None` for unknown rank, `Some(-1)`-style
/// unknown dimensions come back as `None` entries.
pub fn shape_dims(s: &TensorShapeProto) -> Option<Vec<Option<usize>>> {
    if s.unknown_rank {
        return None;
    }
    Some(
        s.dim
            .iter()
            .map(|d| {
                if d.size >= 0 {
                    Some(d.size as usize)
                } else {
                    None
                }
            })
            .collect(),
    )
}

fn fill<T: Copy>(vals: &[T], n: usize, zero: T, what: &str) -> Result<Vec<T>> {
    if vals.len() > n {
        return Err(Error::Format(format!(
            "{} {what} values for a tensor of {n} elements",
            vals.len()
        )));
    }
    let last = vals.last().copied().unwrap_or(zero);
    let mut v = vals.to_vec();
    v.resize(n, last);
    Ok(v)
}

/// Largest tensor built from typed `*_val` fields (256 MB of float32).
pub const MAX_EXPANDED: usize = 1 << 26;

pub fn decode(t: &TensorProto) -> Result<Tensor> {
    let dt = t
        .dtype
        .enum_value()
        .map_err(|v| Error::Format(format!("unknown dtype {v}")))?;
    let ty = dtype(dt).ok_or_else(|| Error::Format(format!("dtype {dt:?} is not supported")))?;
    let dims = t
        .tensor_shape
        .as_ref()
        .map(|s| shape_dims(s).unwrap_or_default())
        .unwrap_or_default();
    let shape = dims
        .into_iter()
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| Error::Format("constant with an unknown dimension".into()))?;
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n.checked_mul(8).is_some())
        .ok_or_else(|| Error::Format(format!("constant shape {shape:?} is too large")))?;
    if !t.tensor_content.is_empty() {
        return Tensor::from_raw(ty, shape, Bytes::clone(&t.tensor_content));
    }
    // Typed values expand in memory; cap them (real weights use tensor_content).
    if n > MAX_EXPANDED {
        return Err(Error::Format(format!(
            "constant shape {shape:?} is too large"
        )));
    }
    debug_assert_eq!(n, numel(&shape));
    match ty {
        DType::F32 => Tensor::f32(shape, fill(&t.float_val, n, 0.0, "float")?),
        DType::I32 => Tensor::i32(shape, fill(&t.int_val, n, 0, "int")?),
        DType::I64 => Tensor::i64(shape, fill(&t.int64_val, n, 0, "int64")?),
        DType::Bool => Tensor::bool(shape, fill(&t.bool_val, n, false, "bool")?),
    }
}
