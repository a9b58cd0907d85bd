//! Reading and writing `.npy` arrays (reference inputs and outputs).

use std::path::Path;

use crate::error::{Error, Result};
use crate::ir::{DType, Tensor};

/// Read a float32 (or float64, narrowed) `.npy` file.
pub fn read_f32(path: &Path) -> Result<Tensor> {
    read_inner(path).map_err(|e| e.in_file(path))
}

fn read_inner(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path)?;
    let npy = npyz::NpyFile::new(&bytes[..])
        .map_err(|e| Error::Format(format!("not an .npy file: {e}")))?;
    if npy.order() != npyz::Order::C {
        return Err(Error::Format(
            "Fortran-ordered arrays are not supported".into(),
        ));
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let ty = npy
        .dtype()
        .descr()
        .trim_matches(|c| c == '\'' || c == '"')
        .to_string();
    let data: Vec<f32> = match ty.as_str() {
        "<f4" => npy.into_vec::<f32>(),
        "<f8" => npy
            .into_vec::<f64>()
            .map(|v| v.into_iter().map(|x| x as f32).collect()),
        other => {
            return Err(Error::Format(format!(
                "dtype {other} is not float32/float64"
            )))
        }
    }
    .map_err(|e| Error::Format(format!("bad .npy data: {e}")))?;
    Tensor::f32(shape, data)
}

/// Write a float32 tensor as `.npy`.
pub fn write_f32(path: &Path, t: &Tensor) -> Result<()> {
    if t.dtype() != DType::F32 {
        return Err(Error::Usage("only float32 tensors are written".into()));
    }
    let data = t.as_f32()?;
    let shape: Vec<u64> = t.shape().iter().map(|&d| d as u64).collect();
    use npyz::WriterBuilder;
    let mut buf = vec![];
    {
        let mut w = npyz::WriteOptions::<f32>::new()
            .default_dtype()
            .shape(&shape)
            .writer(&mut buf)
            .begin_nd()
            .map_err(Error::Io)?;
        w.extend(data.iter().copied()).map_err(Error::Io)?;
        w.finish().map_err(Error::Io)?;
    }
    std::fs::write(path, buf)?;
    Ok(())
}
