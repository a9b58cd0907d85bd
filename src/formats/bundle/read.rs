//! Loading a faceall bundle (NAME.graph.json + NAME.safetensors) into the
//! IR: the weights file is memory-mapped and every constant is a slice of
//! it, so loading costs the header, not the weights.

use std::collections::HashMap;
use std::path::Path;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::formats::bundle::write::{GraphJson, FORMAT_VERSION};
use crate::ir::{DType, Graph, Node, Op, Tensor, Wire};

fn dtype(s: &str) -> Result<DType> {
    match s {
        "F32" => Ok(DType::F32),
        "I32" => Ok(DType::I32),
        "I64" => Ok(DType::I64),
        "BOOL" => Ok(DType::Bool),
        other => Err(Error::Format(format!(
            "tensor dtype {other} is not used by faceall"
        ))),
    }
}

/// Load `NAME.graph.json` and the safetensors file it names.
pub fn load(graph_json: &Path) -> Result<Graph> {
    load_with(graph_json, true)
}

/// As `load`, but every constant owns its bytes (read, not mapped), so a
/// consumer that drops weights as it repacks them (the fast engine) gives
/// their memory back at once; a mapped file stays resident until unmapped.
pub fn load_owned(graph_json: &Path) -> Result<Graph> {
    load_with(graph_json, false)
}

fn load_with(graph_json: &Path, mapped: bool) -> Result<Graph> {
    let text =
        std::fs::read_to_string(graph_json).map_err(|e| Error::from(e).in_file(graph_json))?;
    let gj: GraphJson = serde_json::from_str(&text)
        .map_err(|e| Error::Format(format!("not a faceall graph.json: {e}")).in_file(graph_json))?;
    if gj.format != "faceall-graph" {
        return Err(
            Error::Format(format!("format '{}' is not faceall-graph", gj.format))
                .in_file(graph_json),
        );
    }
    if gj.format_version > FORMAT_VERSION {
        return Err(Error::Format(format!(
            "format version {} is newer than this faceall reads ({FORMAT_VERSION}; written by faceall {}): upgrade faceall",
            gj.format_version, gj.faceall_version
        ))
        .in_file(graph_json));
    }
    let weights = graph_json
        .parent()
        .unwrap_or(Path::new("."))
        .join(&gj.weights);
    let bytes = map(&weights).map_err(|e| e.in_file(&weights))?;
    let mut g = build(&gj, &bytes).map_err(|e| e.in_file(&weights))?;
    if !mapped {
        // Read each tensor into its own allocation, so each can be freed on
        // its own; the map's data pages are never touched.
        let file = std::fs::File::open(&weights).map_err(|e| Error::from(e).in_file(&weights))?;
        let base = bytes.as_ptr() as usize;
        for n in &mut g.nodes {
            if let Op::Const(t) = &mut n.op {
                if let crate::ir::Data::Raw(b) = t.data() {
                    let mut own = vec![0u8; b.len()];
                    read_at(&file, &mut own, (b.as_ptr() as usize - base) as u64)
                        .map_err(|e| Error::from(e).in_file(&weights))?;
                    *t = Tensor::from_raw(t.dtype(), t.shape().to_vec(), Bytes::from(own))?;
                }
            }
        }
    }
    Ok(g)
}

#[cfg(unix)]
fn read_at(f: &std::fs::File, buf: &mut [u8], at: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(f, buf, at)
}

#[cfg(not(unix))]
fn read_at(mut f: &std::fs::File, buf: &mut [u8], at: u64) -> std::io::Result<()> {
    use std::io::{Read, Seek};
    f.seek(std::io::SeekFrom::Start(at))?;
    f.read_exact(buf)
}

fn map(path: &Path) -> Result<Bytes> {
    let file = std::fs::File::open(path)?;
    // SAFETY: read-only map of a file faceall does not modify while it runs.
    let m = unsafe { memmap2::Mmap::map(&file)? };
    Ok(Bytes::from_owner(m))
}

fn build(gj: &GraphJson, bytes: &Bytes) -> Result<Graph> {
    let (header_len, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::Format(format!("not a valid safetensors file: {e}")))?;
    let data_start = 8 + header_len;
    let file_meta = meta.metadata().clone().unwrap_or_default();
    let version: u32 = file_meta
        .get("format_version")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if version > FORMAT_VERSION {
        return Err(Error::Format(format!(
            "weights format version {version} is newer than this faceall reads ({FORMAT_VERSION})"
        )));
    }
    if file_meta.get("source_sha256") != Some(&gj.source.sha256) {
        return Err(Error::Format(format!(
            "these weights come from another model than the graph.json (source sha256 {} vs {})",
            file_meta
                .get("source_sha256")
                .map(String::as_str)
                .unwrap_or("missing"),
            gj.source.sha256
        )));
    }
    let infos = meta.tensors();
    if infos.len() != gj.weight_tensors {
        return Err(Error::Format(format!(
            "the graph.json expects {} weight tensors, the file has {}: they do not belong together",
            gj.weight_tensors,
            infos.len()
        )));
    }
    let mut g = Graph::default();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for nj in &gj.nodes {
        let err = |m: String| Error::node(&nj.name, &nj.source_op, m);
        let tag = nj.op.get("op").and_then(|v| v.as_str()).unwrap_or("");
        let op = if tag == "const" {
            let info = infos
                .get(&nj.name)
                .ok_or_else(|| err("no such tensor in the weights file".into()))?;
            let (b, e) = info.data_offsets;
            let slice = bytes
                .get(data_start + b..data_start + e)
                .ok_or_else(|| err("tensor data lies outside the file (truncated?)".into()))?;
            let t = Tensor::from_raw(
                dtype(&format!("{:?}", info.dtype))?,
                info.shape.clone(),
                bytes.slice_ref(slice),
            )
            .map_err(|e| err(e.to_string()))?;
            if nj.outputs.first().map(|f| (f.dtype, &f.shape))
                != Some((t.dtype(), &t.shape().to_vec()))
            {
                return Err(err(
                    "the weights file's tensor differs from the graph.json's".into(),
                ));
            }
            Op::Const(t)
        } else {
            serde_json::from_value::<Op>(nj.op.clone()).map_err(|e| err(format!("bad op: {e}")))?
        };
        let mut inputs = vec![];
        for i in &nj.inputs {
            let (base, slot) = crate::ir::split_tensor_name(i);
            let node = *index
                .get(base)
                .ok_or_else(|| err(format!("input '{i}' is not an earlier node")))?;
            inputs.push(Wire { node, slot });
        }
        let id = g.nodes.len();
        let mut node = Node::new(
            nj.name.clone(),
            nj.source_op.clone(),
            op,
            inputs,
            nj.outputs.clone(),
        );
        node.absorbed = nj.absorbed.clone();
        node.aliases = nj.aliases.clone();
        node.own_changed = nj.own_changed;
        g.nodes.push(node);
        if index.insert(&nj.name, id).is_some() {
            return Err(err("two nodes with this name".into()));
        }
    }
    g.inputs = gj
        .inputs
        .iter()
        .map(|n| {
            index
                .get(n.as_str())
                .copied()
                .ok_or_else(|| Error::Format(format!("input '{n}' is not a node")))
        })
        .collect::<Result<_>>()?;
    // Outputs name IR nodes (unique), "NODE" or "NODE:k": resolved by node
    // name, not as TF tensor names (a node whose value a pass changed, a
    // matmul that took its bias, is still the output).
    g.outputs = gj
        .outputs
        .iter()
        .map(|o| {
            let (base, slot) = crate::ir::split_tensor_name(o);
            let node = index
                .get(base)
                .copied()
                .ok_or_else(|| Error::Format(format!("output '{o}' is not a node")))?;
            if g.nodes.get(node).is_none_or(|n| slot >= n.outputs.len()) {
                return Err(Error::Format(format!("output '{o}': no such output slot")));
            }
            Ok(crate::ir::Wire { node, slot })
        })
        .collect::<Result<_>>()?;
    g.validate()?;
    Ok(g)
}
