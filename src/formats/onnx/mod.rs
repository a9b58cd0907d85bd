//! ONNX (`NAME.onnx`, opset 13): `write` turns the IR into a `ModelProto`
//! with TF's names and NHWC layout at the boundary, `read` maps one back
//! into the IR so the reference executor runs it (verify-parity, bench).
//! Values named `TFNAME__nchw` hold a TF tensor channel-first; the executor
//! hands them back in TF's layout.

pub mod read;
pub mod write;

use std::path::PathBuf;

use super::graph_exec::GraphExecutor;
use super::{Executor, Format, WriteOptions, Written};
use crate::error::{Error, Result};
use crate::ir::Graph;

/// The ONNX format (`--to onnx`).
pub struct Onnx;

impl Format for Onnx {
    fn name(&self) -> &'static str {
        "onnx"
    }

    fn unit(&self) -> &'static str {
        "nodes"
    }

    fn extensions(&self) -> &'static [&'static str] {
        &[".onnx"]
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
        let opts = write::OnnxOptions {
            external_data: o.onnx_external_data,
            source_name: o.source.name.clone(),
            source_sha256: o.source.sha256.clone(),
        };
        let mut m = write::emit(g, &opts)?;
        let data_file = format!("{}.onnx.data", o.name);
        if !m.external.is_empty() {
            write::set_location(&mut m.model, &data_file);
            let parts = std::mem::take(&mut m.external);
            out.stage(&data_file, |w| {
                for p in &parts {
                    w.write_all(p)?;
                }
                Ok(())
            })?;
        }
        out.stage(&format!("{}.onnx", o.name), |w| {
            write::write_onnx(&m.model, w)
        })?;
        let graph = m.model.graph.as_ref();
        let nodes = graph.map(|g| g.node.len()).unwrap_or(0);
        let mut report = serde_json::Map::new();
        report.insert("onnx_nodes".into(), nodes.into());
        report.insert("onnx_opset".into(), write::OPSET.into());
        report.insert(
            "onnx_initializers".into(),
            graph.map(|g| g.initializer.len()).unwrap_or(0).into(),
        );
        let external =
            graph.is_some_and(|g| g.initializer.iter().any(|t| !t.external_data.is_empty()));
        report.insert("onnx_external_data".into(), external.into());
        Ok(Written {
            layers: nodes,
            notes: vec![],
            report,
        })
    }

    fn read_graph(&self, files: &[PathBuf]) -> Option<Result<Graph>> {
        files.first().map(|p| read::load(p).map(|o| o.graph))
    }

    fn open(&self, files: &[PathBuf]) -> Result<Box<dyn Executor>> {
        let path = files
            .first()
            .ok_or_else(|| Error::Usage("an ONNX model is one .onnx file".into()))?;
        let o = read::load(path)?;
        Ok(Box::new(GraphExecutor {
            graph: o.graph,
            file: path.clone(),
            carried: o.carried,
        }))
    }
}
