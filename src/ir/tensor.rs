//! Tensors held by the IR: constants and executor values.
//!
//! Weights read from a file stay as little-endian bytes borrowed from it
//! (`Data::Raw` over the memory map); values computed by faceall are typed
//! buffers. `as_f32` borrows where alignment allows and copies otherwise.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    I32,
    I64,
    Bool,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::I64 => 8,
            DType::Bool => 1,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::Bool => "bool",
        }
    }
}

#[derive(Clone)]
pub enum Data {
    /// Little-endian bytes, usually a slice of the model file.
    Raw(Bytes),
    F32(Arc<[f32]>),
    I32(Arc<[i32]>),
    I64(Arc<[i64]>),
    Bool(Arc<[bool]>),
}

#[derive(Clone)]
pub struct Tensor {
    dtype: DType,
    shape: Vec<usize>,
    data: Data,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({} {:?})", self.dtype.name(), self.shape)
    }
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    /// A tensor over raw little-endian bytes; checks the length.
    pub fn from_raw(dtype: DType, shape: Vec<usize>, bytes: Bytes) -> Result<Self> {
        let want = numel(&shape) * dtype.size();
        if bytes.len() != want {
            return Err(Error::Format(format!(
                "{} tensor of shape {:?} needs {} bytes, has {}",
                dtype.name(),
                shape,
                want,
                bytes.len()
            )));
        }
        Ok(Tensor {
            dtype,
            shape,
            data: Data::Raw(bytes),
        })
    }

    fn checked(dtype: DType, shape: Vec<usize>, len: usize, data: Data) -> Result<Self> {
        if numel(&shape) != len {
            return Err(Error::Format(format!(
                "{} tensor of shape {:?} needs {} elements, has {}",
                dtype.name(),
                shape,
                numel(&shape),
                len
            )));
        }
        Ok(Tensor { dtype, shape, data })
    }

    pub fn f32(shape: Vec<usize>, v: Vec<f32>) -> Result<Self> {
        let n = v.len();
        Self::checked(DType::F32, shape, n, Data::F32(v.into()))
    }
    pub fn i32(shape: Vec<usize>, v: Vec<i32>) -> Result<Self> {
        let n = v.len();
        Self::checked(DType::I32, shape, n, Data::I32(v.into()))
    }
    pub fn i64(shape: Vec<usize>, v: Vec<i64>) -> Result<Self> {
        let n = v.len();
        Self::checked(DType::I64, shape, n, Data::I64(v.into()))
    }
    pub fn bool(shape: Vec<usize>, v: Vec<bool>) -> Result<Self> {
        let n = v.len();
        Self::checked(DType::Bool, shape, n, Data::Bool(v.into()))
    }
    /// A float tensor from a shared buffer without copying it.
    pub fn f32_shared(shape: Vec<usize>, v: Arc<[f32]>) -> Result<Self> {
        let n = v.len();
        Self::checked(DType::F32, shape, n, Data::F32(v))
    }
    pub fn scalar_f32(v: f32) -> Self {
        Tensor {
            dtype: DType::F32,
            shape: vec![],
            data: Data::F32(vec![v].into()),
        }
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn len(&self) -> usize {
        numel(&self.shape)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn data(&self) -> &Data {
        &self.data
    }
    /// The same data under another shape with as many elements.
    pub fn reshaped(&self, shape: Vec<usize>) -> Result<Self> {
        if numel(&shape) != self.len() {
            return Err(Error::Usage(format!(
                "cannot reshape {:?} to {:?}",
                self.shape, shape
            )));
        }
        Ok(Tensor {
            dtype: self.dtype,
            shape,
            data: self.data.clone(),
        })
    }

    fn wrong(&self, want: &str) -> Error {
        Error::Usage(format!(
            "expected a {want} tensor, found {}",
            self.dtype.name()
        ))
    }

    /// The values as f32, borrowed when possible.
    pub fn as_f32(&self) -> Result<Cow<'_, [f32]>> {
        match &self.data {
            Data::F32(v) => Ok(Cow::Borrowed(v)),
            Data::Raw(b) if self.dtype == DType::F32 => Ok(match bytemuck::try_cast_slice(b) {
                Ok(s) if cfg!(target_endian = "little") => Cow::Borrowed(s),
                _ => Cow::Owned(
                    b.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                ),
            }),
            _ => Err(self.wrong("float32")),
        }
    }

    /// The f32 values without a copy: the slice itself, or the
    /// little-endian bytes of the model file where they sit unaligned (a
    /// `tensor_content` in a .pb usually does), read a run at a time.
    pub fn f32_view(&self) -> Result<F32View<'_>> {
        match &self.data {
            Data::F32(v) => Ok(F32View::F32(v)),
            Data::Raw(b) if self.dtype == DType::F32 => Ok(match bytemuck::try_cast_slice(b) {
                Ok(s) if cfg!(target_endian = "little") => F32View::F32(s),
                _ => F32View::Le(&b[..b.len() / 4 * 4]),
            }),
            _ => Err(self.wrong("float32")),
        }
    }

    /// Integer values (int32 or int64) widened to i64: shapes, axes, paddings.
    pub fn to_i64_vec(&self) -> Result<Vec<i64>> {
        match (&self.data, self.dtype) {
            (Data::I32(v), _) => Ok(v.iter().map(|&x| x as i64).collect()),
            (Data::I64(v), _) => Ok(v.to_vec()),
            (Data::Raw(b), DType::I32) => Ok(b
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect()),
            (Data::Raw(b), DType::I64) => Ok(b
                .chunks_exact(8)
                .map(|c| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(c);
                    i64::from_le_bytes(a)
                })
                .collect()),
            _ => Err(self.wrong("integer")),
        }
    }

    pub fn to_bool_vec(&self) -> Result<Vec<bool>> {
        match &self.data {
            Data::Bool(v) => Ok(v.to_vec()),
            Data::Raw(b) if self.dtype == DType::Bool => Ok(b.iter().map(|&x| x != 0).collect()),
            _ => Err(self.wrong("bool")),
        }
    }

    /// Numbers of any dtype as f64, for constant folding of small tensors.
    pub fn to_f64_vec(&self) -> Result<Vec<f64>> {
        match self.dtype {
            DType::F32 => Ok(self.as_f32()?.iter().map(|&x| x as f64).collect()),
            DType::I32 | DType::I64 => Ok(self.to_i64_vec()?.iter().map(|&x| x as f64).collect()),
            DType::Bool => Ok(self
                .to_bool_vec()?
                .iter()
                .map(|&x| if x { 1.0 } else { 0.0 })
                .collect()),
        }
    }

    /// Build a tensor of `dtype` from f64 values (inverse of `to_f64_vec`).
    pub fn from_f64(dtype: DType, shape: Vec<usize>, v: &[f64]) -> Result<Self> {
        match dtype {
            DType::F32 => Self::f32(shape, v.iter().map(|&x| x as f32).collect()),
            DType::I32 => Self::i32(shape, v.iter().map(|&x| x as i32).collect()),
            DType::I64 => Self::i64(shape, v.iter().map(|&x| x as i64).collect()),
            DType::Bool => Self::bool(shape, v.iter().map(|&x| x != 0.0).collect()),
        }
    }
}

/// A float32 tensor's values as they lie in memory (see `Tensor::f32_view`).
#[derive(Clone, Copy)]
pub enum F32View<'a> {
    F32(&'a [f32]),
    /// Little-endian bytes, a multiple of 4 long.
    Le(&'a [u8]),
}

impl F32View<'_> {
    pub fn len(&self) -> usize {
        match self {
            F32View::F32(v) => v.len(),
            F32View::Le(b) => b.len() / 4,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values `start .. start + 8`, `None` when not inside the tensor: the
    /// transposes' tile loads (one 32-byte read, no call to memcpy).
    #[inline]
    pub fn read8(&self, start: usize) -> Option<[f32; 8]> {
        match self {
            F32View::F32(v) => v.get(start..start.checked_add(8)?)?.try_into().ok(),
            F32View::Le(b) => {
                let at = start.checked_mul(4)?;
                let s: &[u8; 32] = b.get(at..at.checked_add(32)?)?.try_into().ok()?;
                let mut out = [0.0f32; 8];
                for (o, c) in out.iter_mut().zip(s.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
                Some(out)
            }
        }
    }

    /// Value `i`, `None` when not inside the tensor.
    #[inline]
    pub fn get(&self, i: usize) -> Option<f32> {
        match self {
            F32View::F32(v) => v.get(i).copied(),
            F32View::Le(b) => {
                let at = i.checked_mul(4)?;
                let c = b.get(at..at.checked_add(4)?)?;
                Some(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            }
        }
    }

    /// Values `start .. start + out.len()` into `out`; false (and `out`
    /// untouched) when the run is not inside the tensor.
    pub fn read(&self, start: usize, out: &mut [f32]) -> bool {
        match self {
            F32View::F32(v) => match v.get(start..start + out.len()) {
                Some(s) => {
                    out.copy_from_slice(s);
                    true
                }
                None => false,
            },
            F32View::Le(b) => match b.get(start * 4..(start + out.len()) * 4) {
                Some(s) => {
                    for (o, c) in out.iter_mut().zip(s.chunks_exact(4)) {
                        *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    }
                    true
                }
                None => false,
            },
        }
    }
}
