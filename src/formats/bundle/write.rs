//! The framework-neutral bundle: `NAME.safetensors` (every constant of the
//! graph after the passes, named after the TF node it came from) and
//! `NAME.graph.json` (the IR after the passes: ops with typed parameters,
//! wiring, input/output facts, the source graph's hash, faceall's version).
//! Together they are a complete model that faceall (and any safetensors
//! reader) loads without parsing protobuf.
//!
//! Layouts are TensorFlow's and are stated in both files' metadata:
//! activations NHWC, conv filters HWIO `[kh, kw, in, out]`, depthwise
//! `[kh, kw, in, multiplier]`, MatMul weights `[in, out]`, biases `[out]`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ir::{DType, Data, Fact, Graph, Op, Tensor};

/// Bumped when graph.json changes incompatibly; readers refuse newer files.
pub const FORMAT_VERSION: u32 = 1;

pub const LAYOUTS: &str = "activations NHWC; Conv2d filter HWIO [kh, kw, in, out]; depthwise filter [kh, kw, in, multiplier]; MatMul weights [in, out] (transposed when transpose_b); biases [out]";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Source {
    pub name: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeJson {
    pub name: String,
    pub source_op: String,
    /// The operation and its parameters; `{"op": "const", ...}` for weights
    /// stored in the safetensors file under the node's name.
    pub op: serde_json::Value,
    /// "node" or "node:slot".
    pub inputs: Vec<String>,
    pub outputs: Vec<Fact>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub absorbed: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub own_changed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GraphJson {
    pub format: String,
    pub format_version: u32,
    pub faceall_version: String,
    pub source: Source,
    /// The weights file, relative to graph.json.
    pub weights: String,
    pub weight_tensors: usize,
    pub layouts: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub nodes: Vec<NodeJson>,
}

fn st_dtype(d: DType) -> &'static str {
    match d {
        DType::F32 => "F32",
        DType::I32 => "I32",
        DType::I64 => "I64",
        DType::Bool => "BOOL",
    }
}

/// The graph as graph.json.
pub fn graph_json(g: &Graph, source: Source, weights_file: &str) -> Result<String> {
    let mut nodes = vec![];
    let mut consts = 0;
    for n in &g.nodes {
        if matches!(n.op, Op::Const(_)) {
            consts += 1;
        }
        let op = serde_json::to_value(&n.op)
            .map_err(|e| Error::node(&n.name, &n.source_op, format!("serialising: {e}")))?;
        nodes.push(NodeJson {
            name: n.name.clone(),
            source_op: n.source_op.clone(),
            op,
            inputs: n.inputs.iter().map(|w| g.wire_name(*w)).collect(),
            outputs: n.outputs.clone(),
            absorbed: n.absorbed.clone(),
            aliases: n.aliases.clone(),
            own_changed: n.own_changed,
        });
    }
    let j = GraphJson {
        format: "faceall-graph".into(),
        format_version: FORMAT_VERSION,
        faceall_version: env!("CARGO_PKG_VERSION").into(),
        source,
        weights: weights_file.into(),
        weight_tensors: consts,
        layouts: LAYOUTS.into(),
        inputs: g.inputs.iter().map(|&i| g.nodes[i].name.clone()).collect(),
        outputs: g.outputs.iter().map(|w| g.wire_name(*w)).collect(),
        nodes,
    };
    serde_json::to_string_pretty(&j)
        .map_err(|e| Error::Format(format!("serialising graph.json: {e}")))
}

/// Little-endian bytes of a tensor, borrowed when it already is bytes.
fn le_bytes(t: &Tensor) -> std::borrow::Cow<'_, [u8]> {
    match t.data() {
        Data::Raw(b) => std::borrow::Cow::Borrowed(&b[..]),
        Data::F32(v) => std::borrow::Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Data::I32(v) => std::borrow::Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Data::I64(v) => std::borrow::Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Data::Bool(v) => std::borrow::Cow::Owned(v.iter().map(|&x| x as u8).collect()),
    }
}

/// Stream the safetensors file: header (sorted by name, padded to 8 bytes)
/// then every constant's bytes, without building the file in memory.
pub fn write_safetensors(g: &Graph, source: &Source, w: &mut dyn std::io::Write) -> Result<()> {
    let mut tensors: BTreeMap<&str, &Tensor> = BTreeMap::new();
    for n in &g.nodes {
        if let Op::Const(t) = &n.op {
            tensors.insert(&n.name, t);
        }
    }
    let mut header = serde_json::Map::new();
    let mut meta = serde_json::Map::new();
    for (k, v) in [
        ("format", "faceall-weights".to_string()),
        ("format_version", FORMAT_VERSION.to_string()),
        ("faceall_version", env!("CARGO_PKG_VERSION").to_string()),
        ("source", source.name.clone()),
        ("source_sha256", source.sha256.clone()),
        ("layouts", LAYOUTS.to_string()),
    ] {
        meta.insert(k.into(), serde_json::Value::String(v));
    }
    header.insert("__metadata__".into(), serde_json::Value::Object(meta));
    let mut offset = 0usize;
    for (name, t) in &tensors {
        let len = t.len() * t.dtype().size();
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": st_dtype(t.dtype()), "shape": t.shape(), "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let mut h = serde_json::to_string(&header).map_err(|e| Error::Format(e.to_string()))?;
    while h.len() % 8 != 0 {
        h.push(' ');
    }
    w.write_all(&(h.len() as u64).to_le_bytes())?;
    w.write_all(h.as_bytes())?;
    for t in tensors.values() {
        w.write_all(&le_bytes(t))?;
    }
    Ok(())
}
