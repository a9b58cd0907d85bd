//! faceall's bundle: `NAME.graph.json` (the IR after the passes) and
//! `NAME.safetensors` (its constants). `write` produces both, `read` loads
//! them back into the IR (weights memory-mapped) for the engine.

pub mod read;
pub mod write;

use std::path::PathBuf;

use super::graph_exec::{Carried, GraphExecutor};
use super::{Executor, Format, WriteOptions, Written};
use crate::error::{Error, Result};
use crate::ir::Graph;

/// The bundle (`--to safetensors`).
pub struct Bundle;

impl Format for Bundle {
    fn name(&self) -> &'static str {
        "safetensors"
    }

    fn unit(&self) -> &'static str {
        "IR nodes"
    }

    fn extensions(&self) -> &'static [&'static str] {
        &[".graph.json", ".safetensors"]
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
        let weights = format!("{}.safetensors", o.name);
        let json = write::graph_json(g, o.source.clone(), &weights)?;
        out.stage(&weights, |w| write::write_safetensors(g, &o.source, w))?;
        out.stage(&format!("{}.graph.json", o.name), |w| {
            Ok(w.write_all(json.as_bytes())?)
        })?;
        Ok(Written {
            layers: g.nodes.len(),
            ..Default::default()
        })
    }

    fn read_graph(&self, files: &[PathBuf]) -> Option<Result<Graph>> {
        files.first().map(|p| read::load(p))
    }

    fn open(&self, files: &[PathBuf]) -> Result<Box<dyn Executor>> {
        let path = files
            .first()
            .ok_or_else(|| Error::Usage("a bundle is opened by its NAME.graph.json".into()))?;
        let graph = read::load(path)?;
        let carried = graph
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| !matches!(n.op, crate::ir::Op::Const(_)))
            .filter_map(|(i, n)| {
                Some(Carried {
                    node: i,
                    tensor: n.carries()?.to_string(),
                    nchw: false,
                })
            })
            .collect();
        Ok(Box::new(GraphExecutor {
            graph,
            file: path.clone(),
            carried,
        }))
    }
}
