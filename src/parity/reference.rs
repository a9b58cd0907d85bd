//! Reference cases written by `scripts/gen_fixtures.py` and
//! `scripts/setup`: a model, inputs, and TensorFlow's values for named
//! tensors, described by `manifest.json`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::ir::Tensor;

#[derive(Debug, Deserialize)]
struct ArrayRef {
    name: String,
    file: String,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    #[serde(default)]
    case: String,
    #[serde(default)]
    model: Option<String>,
    inputs: Vec<ArrayRef>,
    outputs: Vec<String>,
    tensors: Vec<ArrayRef>,
}

/// A loaded reference case.
pub struct ReferenceCase {
    pub name: String,
    pub dir: PathBuf,
    pub model: PathBuf,
    pub inputs: HashMap<String, Tensor>,
    pub outputs: Vec<String>,
    /// (tensor name, TensorFlow's value) in the manifest's order.
    pub tensors: Vec<(String, Tensor)>,
}

impl ReferenceCase {
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::from(e).in_file(&path))?;
        let m: Manifest = serde_json::from_str(&text)
            .map_err(|e| Error::Format(format!("bad manifest: {e}")).in_file(&path))?;
        let model = match &m.model {
            Some(p) => dir.join(p),
            None => dir.join("model.pb"),
        };
        let mut inputs = HashMap::new();
        for a in &m.inputs {
            inputs.insert(a.name.clone(), crate::npy::read_f32(&dir.join(&a.file))?);
        }
        let tensors = m
            .tensors
            .iter()
            .map(|a| Ok((a.name.clone(), crate::npy::read_f32(&dir.join(&a.file))?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(ReferenceCase {
            name: if m.case.is_empty() {
                dir.file_name()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            } else {
                m.case
            },
            dir: dir.to_path_buf(),
            model,
            inputs,
            outputs: m.outputs,
            tensors,
        })
    }
}
