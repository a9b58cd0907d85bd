//! Core ML ML Program (`NAME.mlpackage`, specification version 6 and up,
//! Apple's current format): `write` turns the IR into a MIL program and its
//! weight blobs, `read` reads a package back into the IR with MIL's
//! semantics for verify-parity and bench, `blob` is Core ML's weight file.
//!
//! The package is a directory: `Manifest.json`,
//! `Data/com.apple.CoreML/model.mlmodel` (the `Model` protobuf) and
//! `Data/com.apple.CoreML/weights/weight.bin`.

pub mod blob;
pub mod read;
pub mod write;

use std::path::{Path, PathBuf};

use sha2::Digest;

use super::graph_exec::GraphExecutor;
use super::{Executor, Format, WriteOptions, Written};
use crate::error::{Error, Result};
use crate::ir::Graph;

/// The Core ML ML Program format (`--to mlprogram`).
pub struct MlProgram;

/// Where the model and its weights sit inside the package.
pub const MODEL_DIR: &str = "Data/com.apple.CoreML";

/// A UUID-formatted identifier derived from `seed` (the manifest's item
/// keys: stable across runs, so a conversion is reproducible).
fn item_id(seed: &str) -> String {
    let h = sha2::Sha256::digest(seed.as_bytes());
    let x: String = h.iter().take(16).map(|b| format!("{b:02X}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

fn manifest(name: &str) -> serde_json::Value {
    let model_id = item_id(&format!("{name}/model"));
    let weights_id = item_id(&format!("{name}/weights"));
    serde_json::json!({
        "fileFormatVersion": "1.0.0",
        "itemInfoEntries": {
            model_id.clone(): {
                "author": "com.apple.CoreML",
                "description": "CoreML Model Specification",
                "name": "model.mlmodel",
                "path": "com.apple.CoreML/model.mlmodel"
            },
            weights_id: {
                "author": "com.apple.CoreML",
                "description": "CoreML Model Weights",
                "name": "weights",
                "path": "com.apple.CoreML/weights"
            }
        },
        "rootModelIdentifier": model_id
    })
}

fn write_file(
    path: &Path,
    produce: impl FnOnce(&mut dyn std::io::Write) -> Result<()>,
) -> Result<()> {
    let f = std::fs::File::create(path).map_err(|e| Error::from(e).in_file(path))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    produce(&mut w).map_err(|e| e.in_file(path))?;
    std::io::Write::flush(&mut w).map_err(|e| Error::from(e).in_file(path))
}

impl Format for MlProgram {
    fn name(&self) -> &'static str {
        "mlprogram"
    }

    fn unit(&self) -> &'static str {
        "MIL operations"
    }

    fn channel_first_outputs(&self) -> bool {
        true
    }
    fn extensions(&self) -> &'static [&'static str] {
        &[".mlpackage"]
    }

    fn needs_source_hash(&self) -> bool {
        true
    }

    fn write(
        &self,
        g: &Graph,
        o: &WriteOptions,
        out: &mut super::files::Staging,
    ) -> Result<Written> {
        let mut copts = o.coreml.clone();
        copts.source_name.clone_from(&o.source.name);
        copts.source_sha256.clone_from(&o.source.sha256);
        let p = write::emit(g, &copts, &o.mlprogram)?;
        let name = format!("{}.mlpackage", o.name);
        out.stage_dir(&name, |dir| {
            let mdir = dir.join(MODEL_DIR);
            let wdir = mdir.join("weights");
            std::fs::create_dir_all(&wdir).map_err(|e| Error::from(e).in_file(&wdir))?;
            write_file(&mdir.join("model.mlmodel"), |w| {
                use protobuf::Message;
                p.model
                    .write_to_writer(w)
                    .map_err(|e| Error::Format(format!("encoding the ML Program: {e}")))
            })?;
            write_file(&wdir.join("weight.bin"), |w| p.blobs.write(g, w))?;
            write_file(&dir.join("Manifest.json"), |w| {
                let text = serde_json::to_string_pretty(&manifest(&o.name))
                    .map_err(|e| Error::Format(e.to_string()))?;
                Ok(w.write_all(text.as_bytes())?)
            })
        })?;
        let mut report = serde_json::Map::new();
        report.insert("mlprogram_ops".into(), p.ops.into());
        report.insert("mlprogram_consts".into(), p.consts.into());
        report.insert("mlprogram_blobs".into(), p.blobs.count().into());
        report.insert("mlprogram_weight_bytes".into(), p.blobs.data_bytes().into());
        report.insert("mlprogram_target".into(), o.mlprogram.target.name().into());
        report.insert(
            "mlprogram_precision".into(),
            if copts.fp16 { "float16" } else { "float32" }.into(),
        );
        Ok(Written {
            layers: p.ops,
            notes: p.notes,
            report,
        })
    }

    fn open(&self, files: &[PathBuf]) -> Result<Box<dyn Executor>> {
        let path = files
            .first()
            .ok_or_else(|| Error::Usage("an ML Program is one .mlpackage directory".into()))?;
        let m = read::load(path)?;
        Ok(Box::new(GraphExecutor {
            graph: m.graph,
            file: path.clone(),
            carried: m.carried,
        }))
    }

    fn read_graph(&self, files: &[PathBuf]) -> Option<Result<Graph>> {
        let path = files.first()?;
        Some(read::load(path).map(|m| m.graph))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_names_the_model() {
        let m = manifest("facenet");
        let root = m["rootModelIdentifier"].as_str().unwrap();
        assert_eq!(
            m["itemInfoEntries"][root]["path"],
            "com.apple.CoreML/model.mlmodel"
        );
        assert_eq!(root.len(), 36);
        assert_eq!(item_id("a"), item_id("a"));
        assert_ne!(item_id("a"), item_id("b"));
    }
}
