//! ONNX `ModelProto` -> faceall's IR, for verify-parity and bench: each ONNX
//! node becomes the IR op with the same semantics (NCHW convolutions and
//! pools keep their layout), so the IR reference executor runs the model as
//! onnxruntime would. The file is memory-mapped and float initializers are
//! slices of it; external data (`location` beside the model) is mapped too.
//!
//! Every node the reader cannot map is reported at once, with its name and
//! op type. Nothing read from the file is trusted: shapes, indices and
//! attribute values are checked before use.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use protobuf::Message;

use crate::error::{Error, Result, Unsupported};
use crate::ir::{
    Activation, BatchNorm, BinaryOp, Conv2d, DType, Deconv2d, Fact, Graph, Layout, Op, Padding,
    Pool, PoolKind, ReduceOp, Resize, ResizeMode, SpaceDepth, Tensor, UnaryOp, Wire,
};
use crate::proto::onnx::{
    attribute_proto::AttributeType, tensor_proto::DataLocation, tensor_proto::DataType,
    tensor_shape_proto::dimension, type_proto, AttributeProto, ModelProto, NodeProto, TensorProto,
    ValueInfoProto,
};

use super::write::NCHW_SUFFIX;
use crate::formats::files::map_file;
use crate::formats::graph_exec::Carried;
use crate::formats::layout::{
    axis, checked_numel, oihw_depthwise_to_hwcm, oihw_to_hwio, reshape_target,
};

/// A model read into the IR: the graph, and which of its nodes hold which
/// TF tensor (by the value names the writer gave).
pub struct OnnxGraph {
    pub graph: Graph,
    pub carried: Vec<Carried>,
    pub opset: i64,
}

fn bad(m: impl Into<String>) -> Error {
    Error::Format(m.into())
}

/// Read `path` (and its external data) into the IR.
pub fn load(path: &Path) -> Result<OnnxGraph> {
    let bytes = map_file(path)?;
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    from_bytes(&bytes, &dir).map_err(|e| e.in_file(path))
}

/// Parse a model from bytes; external data is looked up under `dir`.
pub fn from_bytes(bytes: &Bytes, dir: &Path) -> Result<OnnxGraph> {
    let model = ModelProto::parse_from_tokio_bytes(bytes)
        .map_err(|e| bad(format!("not an ONNX model: {e}")))?;
    let opset = model
        .opset_import
        .iter()
        .filter(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .max()
        .ok_or_else(|| bad("the model imports no ONNX operator set"))?;
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| bad("the model has no graph"))?;
    let mut r = Reader {
        g: Graph::default(),
        wires: HashMap::new(),
        external: HashMap::new(),
        dir: dir.to_path_buf(),
        carried: vec![],
        opset,
    };
    for t in &graph.initializer {
        let tensor = r.tensor(t)?;
        let i = r.g.add_const(t.name.clone(), tensor);
        r.wires.insert(t.name.clone(), Wire { node: i, slot: 0 });
    }
    for v in &graph.input {
        if r.wires.contains_key(&v.name) {
            continue; // an initializer listed as an input (IR < 4)
        }
        let (dtype, shape) = value_type(v)?;
        if dtype != DType::F32 {
            return Err(bad(format!("input '{}' is not float32", v.name)));
        }
        let i = r.g.nodes.len();
        r.g.nodes.push(crate::ir::Node::new(
            v.name.clone(),
            "input".into(),
            Op::Input,
            vec![],
            vec![Fact::f32(shape)],
        ));
        r.g.inputs.push(i);
        r.wires.insert(v.name.clone(), Wire { node: i, slot: 0 });
        r.carry(i, &v.name);
    }
    let mut unsupported = vec![];
    for n in &graph.node {
        // A node fed by one that failed is not reported again.
        let fed_by_failed = n.input.iter().any(|x| {
            !x.is_empty() && !r.wires.contains_key(x) && unsupported_outputs(&unsupported, x)
        });
        if fed_by_failed {
            mark_failed(&mut unsupported, n);
            continue;
        }
        if let Err(reason) = r.node(n) {
            unsupported.push((
                Unsupported {
                    node: node_name(n),
                    op: n.op_type.clone(),
                    reason,
                },
                n.output.clone(),
            ));
        }
    }
    let unsupported: Vec<Unsupported> = unsupported
        .into_iter()
        .filter(|(u, _)| !u.reason.is_empty())
        .map(|(u, _)| u)
        .collect();
    if !unsupported.is_empty() {
        return Err(Error::Unsupported(unsupported));
    }
    for v in &graph.output {
        let w = *r
            .wires
            .get(&v.name)
            .ok_or_else(|| bad(format!("output '{}' is not computed by any node", v.name)))?;
        r.g.outputs.push(w);
    }
    if r.g.outputs.is_empty() {
        return Err(bad("the graph declares no outputs"));
    }
    r.g.validate()?;
    Ok(OnnxGraph {
        graph: r.g,
        carried: r.carried,
        opset,
    })
}

fn node_name(n: &NodeProto) -> String {
    if n.name.is_empty() {
        n.output.first().cloned().unwrap_or_default()
    } else {
        n.name.clone()
    }
}

fn unsupported_outputs(list: &[(Unsupported, Vec<String>)], value: &str) -> bool {
    list.iter().any(|(_, outs)| outs.iter().any(|o| o == value))
}

/// Record that `n` cannot be read because an input failed (not reported).
fn mark_failed(list: &mut Vec<(Unsupported, Vec<String>)>, n: &NodeProto) {
    list.push((
        Unsupported {
            node: node_name(n),
            op: n.op_type.clone(),
            reason: String::new(),
        },
        n.output.clone(),
    ));
}

fn value_type(v: &ValueInfoProto) -> Result<(DType, Vec<usize>)> {
    let Some(type_proto::Value::TensorType(t)) = v.type_.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Err(bad(format!("'{}' is not a tensor", v.name)));
    };
    let dtype = dtype(t.elem_type).map_err(|e| bad(format!("'{}': {e}", v.name)))?;
    let shape = t
        .shape
        .as_ref()
        .ok_or_else(|| bad(format!("'{}' has no shape", v.name)))?;
    let mut dims = vec![];
    for d in &shape.dim {
        match d.value {
            Some(dimension::Value::DimValue(k)) if k >= 0 => dims.push(k as usize),
            _ => {
                return Err(bad(format!(
                    "'{}' has a symbolic or negative dimension (faceall runs fixed shapes)",
                    v.name
                )))
            }
        }
    }
    checked_numel(&dims).map_err(bad)?;
    Ok((dtype, dims))
}

fn dtype(t: i32) -> std::result::Result<DType, String> {
    match t {
        x if x == DataType::FLOAT as i32 => Ok(DType::F32),
        x if x == DataType::INT64 as i32 => Ok(DType::I64),
        x if x == DataType::INT32 as i32 => Ok(DType::I32),
        x if x == DataType::BOOL as i32 => Ok(DType::Bool),
        x => Err(format!("element type {x} is not read by faceall")),
    }
}

struct Reader {
    g: Graph,
    wires: HashMap<String, Wire>,
    external: HashMap<String, Bytes>,
    dir: PathBuf,
    carried: Vec<Carried>,
    opset: i64,
}

type R<T> = std::result::Result<T, String>;

fn attr<'a>(n: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}

fn attr_i(n: &NodeProto, name: &str, default: i64) -> R<i64> {
    match attr(n, name) {
        None => Ok(default),
        Some(a) if a.type_.enum_value() == Ok(AttributeType::INT) => Ok(a.i),
        Some(_) => Err(format!("attribute '{name}' is not an int")),
    }
}

fn attr_f(n: &NodeProto, name: &str, default: f32) -> R<f32> {
    match attr(n, name) {
        None => Ok(default),
        Some(a) if a.type_.enum_value() == Ok(AttributeType::FLOAT) => Ok(a.f),
        Some(_) => Err(format!("attribute '{name}' is not a float")),
    }
}

fn attr_ints(n: &NodeProto, name: &str) -> R<Option<Vec<i64>>> {
    match attr(n, name) {
        None => Ok(None),
        Some(a) if a.type_.enum_value() == Ok(AttributeType::INTS) => Ok(Some(a.ints.clone())),
        Some(_) => Err(format!("attribute '{name}' is not a list of ints")),
    }
}

fn attr_s(n: &NodeProto, name: &str) -> R<Option<String>> {
    match attr(n, name) {
        None => Ok(None),
        Some(a) if a.type_.enum_value() == Ok(AttributeType::STRING) => {
            Ok(Some(String::from_utf8_lossy(&a.s).into_owned()))
        }
        Some(_) => Err(format!("attribute '{name}' is not a string")),
    }
}

fn usizes(v: &[i64], what: &str) -> R<Vec<usize>> {
    v.iter()
        .map(|&x| usize::try_from(x).map_err(|_| format!("{what} {v:?} has a negative value")))
        .collect()
}

fn pair(v: &[usize], what: &str) -> R<[usize; 2]> {
    match v {
        [a, b] => Ok([*a, *b]),
        _ => Err(format!(
            "{what} {v:?} is not 2-D (faceall reads 2-D convolutions and pools)"
        )),
    }
}

impl Reader {
    fn carry(&mut self, node: usize, value: &str) {
        let rank4 = self
            .g
            .nodes
            .get(node)
            .and_then(|n| n.outputs.first())
            .is_some_and(|f| f.shape.len() == 4);
        let (tensor, nchw) = match value.strip_suffix(NCHW_SUFFIX) {
            Some(t) if rank4 && !t.is_empty() => (t.to_string(), true),
            _ => (value.to_string(), false),
        };
        self.carried.push(Carried { node, tensor, nchw });
    }

    fn tensor(&mut self, t: &TensorProto) -> Result<Tensor> {
        let what = |m: String| bad(format!("initializer '{}': {m}", t.name));
        let dt = dtype(t.data_type).map_err(what)?;
        let shape = usizes(&t.dims, "dims").map_err(what)?;
        let n = checked_numel(&shape).map_err(what)?;
        let raw = if t.data_location.enum_value() == Ok(DataLocation::EXTERNAL) {
            Some(self.external_bytes(t)?)
        } else if !t.raw_data.is_empty() || n == 0 {
            Some(t.raw_data.clone())
        } else {
            None
        };
        if let Some(raw) = raw {
            if raw.len() != n * dt.size() {
                return Err(what(format!(
                    "{} bytes for {n} elements of {}",
                    raw.len(),
                    dt.name()
                )));
            }
            return Tensor::from_raw(dt, shape, raw);
        }
        let len_ok = |len: usize| -> Result<()> {
            if len != n {
                return Err(what(format!("{len} values for shape {:?}", t.dims)));
            }
            Ok(())
        };
        match dt {
            DType::F32 => {
                len_ok(t.float_data.len())?;
                Tensor::f32(shape, t.float_data.clone())
            }
            DType::I64 => {
                len_ok(t.int64_data.len())?;
                Tensor::i64(shape, t.int64_data.clone())
            }
            DType::I32 => {
                len_ok(t.int32_data.len())?;
                Tensor::i32(shape, t.int32_data.clone())
            }
            DType::Bool => {
                len_ok(t.int32_data.len())?;
                Tensor::bool(shape, t.int32_data.iter().map(|&b| b != 0).collect())
            }
        }
    }

    fn external_bytes(&mut self, t: &TensorProto) -> Result<Bytes> {
        let what = |m: String| bad(format!("initializer '{}': {m}", t.name));
        let get = |k: &str| {
            t.external_data
                .iter()
                .find(|e| e.key == k)
                .map(|e| e.value.clone())
        };
        let location =
            get("location").ok_or_else(|| what("external data without a location".into()))?;
        // The data must sit in the model's folder: no absolute paths, no `..`.
        let rel = Path::new(&location);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(what(format!(
                "external data location '{location}' is not a file beside the model"
            )));
        }
        if !self.external.contains_key(&location) {
            let bytes = map_file(&self.dir.join(rel))?;
            self.external.insert(location.clone(), bytes);
        }
        let file = &self.external[&location];
        let num = |k: &str| -> Result<Option<usize>> {
            get(k)
                .map(|v| {
                    v.parse::<usize>()
                        .map_err(|_| what(format!("external data {k} '{v}'")))
                })
                .transpose()
        };
        let offset = num("offset")?.unwrap_or(0);
        let length = match num("length")? {
            Some(l) => l,
            None => file.len().saturating_sub(offset),
        };
        let end = offset
            .checked_add(length)
            .filter(|&e| e <= file.len())
            .ok_or_else(|| {
                what(format!(
                    "external data {offset}+{length} is past the end of '{location}' ({} bytes)",
                    file.len()
                ))
            })?;
        Ok(file.slice(offset..end))
    }

    fn input(&self, n: &NodeProto, i: usize) -> R<Wire> {
        let name = n
            .input
            .get(i)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("input {i} is missing"))?;
        self.wires
            .get(name)
            .copied()
            .ok_or_else(|| format!("input '{name}' is not produced before it"))
    }

    fn opt_input(&self, n: &NodeProto, i: usize) -> R<Option<Wire>> {
        match n.input.get(i) {
            Some(s) if !s.is_empty() => self.input(n, i).map(Some),
            _ => Ok(None),
        }
    }

    fn shape(&self, w: Wire) -> R<Vec<usize>> {
        self.g
            .fact(w)
            .map(|f| f.shape.clone())
            .map_err(|e| e.to_string())
    }

    fn konst(&self, w: Wire) -> R<&Tensor> {
        self.g
            .const_of(w)
            .ok_or_else(|| format!("'{}' must be a constant", self.g.wire_name(w)))
    }

    fn konst_f32(&self, w: Wire) -> R<Vec<f32>> {
        Ok(self
            .konst(w)?
            .as_f32()
            .map_err(|e| e.to_string())?
            .into_owned())
    }

    fn konst_i64(&self, w: Wire) -> R<Vec<i64>> {
        self.konst(w)?.to_i64_vec().map_err(|e| e.to_string())
    }

    /// Push an IR node; its name is fresh unless it is the ONNX value's.
    /// A resize of the NCHW value `x` (from a Resize, Upsample or the
    /// Gathers of a nearest resize): an NHWC IR resize between transposes.
    fn push_resize(&mut self, name: &str, source: &str, r: Resize, x: Wire) -> R<Wire> {
        crate::formats::layout::push_between_transposes(
            &mut self.g,
            name,
            source,
            Op::Resize(r),
            x,
            vec![],
        )
    }

    fn push(&mut self, name: &str, source: &str, op: Op, inputs: Vec<Wire>) -> R<Wire> {
        let name = if self.g.node_by_name(name).is_some() {
            self.g.fresh_name(name)
        } else {
            name.to_string()
        };
        let i = self.g.push(name, source, op, inputs).map_err(|e| match e {
            Error::Node { msg, .. } => msg,
            e => e.to_string(),
        })?;
        Ok(Wire { node: i, slot: 0 })
    }

    fn scalar(&mut self, base: &str, v: f32) -> Wire {
        let name = self.g.fresh_name(base);
        let i = self.g.add_const(name, Tensor::scalar_f32(v));
        Wire { node: i, slot: 0 }
    }

    fn node(&mut self, n: &NodeProto) -> R<()> {
        if !(n.domain.is_empty() || n.domain == "ai.onnx") {
            return Err(format!(
                "operator domain '{}' is not read by faceall",
                n.domain
            ));
        }
        let out = n
            .output
            .first()
            .filter(|s| !s.is_empty())
            .ok_or("the node has no output")?
            .clone();
        if self.wires.contains_key(&out) {
            return Err(format!("value '{out}' is written twice"));
        }
        let op = n.op_type.as_str();
        let helper = |k: &str| format!("{out}/{k}");
        let w = match op {
            "Identity" | "Dropout" => {
                let x = self.input(n, 0)?;
                self.push(&out, op, Op::Identity, vec![x])?
            }
            "Constant" => {
                let a = attr(n, "value").ok_or("a Constant without a 'value' tensor")?;
                let t =
                    a.t.as_ref()
                        .ok_or("a Constant without a 'value' tensor")?
                        .clone();
                let tensor = self.tensor(&t).map_err(|e| e.to_string())?;
                let i = self.g.add_const(out.clone(), tensor);
                Wire { node: i, slot: 0 }
            }
            "Conv" => {
                let x = self.input(n, 0)?;
                let wv = self.input(n, 1)?;
                let ws = self.shape(wv)?;
                let xs = self.shape(x)?;
                let &[co, cig, kh, kw] = ws.as_slice() else {
                    return Err(format!(
                        "a Conv weight of shape {ws:?} (faceall reads 2-D convolutions)"
                    ));
                };
                if xs.len() != 4 {
                    return Err(format!("a Conv on shape {xs:?}"));
                }
                let group = usize::try_from(attr_i(n, "group", 1)?).map_err(|_| "group < 0")?;
                let ci = xs[1];
                let w = self.konst_f32(wv)?;
                let (filter, fshape, depthwise) = if group == 1 && cig == ci {
                    (oihw_to_hwio(&w, [co, ci, kh, kw]), [kh, kw, ci, co], false)
                } else if group == ci && cig == 1 && group > 0 && co % ci == 0 {
                    let m = co / ci;
                    (
                        oihw_depthwise_to_hwcm(&w, [ci, m, kh, kw]),
                        [kh, kw, ci, m],
                        true,
                    )
                } else {
                    return Err(format!(
                        "group {group} over {ci} channels with weight {ws:?} (faceall reads plain and depthwise convolutions)"
                    ));
                };
                let kernel = attr_ints(n, "kernel_shape")?;
                if let Some(k) = &kernel {
                    if usizes(k, "kernel_shape")? != [kh, kw] {
                        return Err(format!("kernel_shape {k:?} does not match weight {ws:?}"));
                    }
                }
                let strides = pair(
                    &usizes(&attr_ints(n, "strides")?.unwrap_or(vec![1, 1]), "strides")?,
                    "strides",
                )?;
                let dilations = pair(
                    &usizes(
                        &attr_ints(n, "dilations")?.unwrap_or(vec![1, 1]),
                        "dilations",
                    )?,
                    "dilations",
                )?;
                let padding = self.padding(n, [xs[2], xs[3]], [kh, kw], strides, dilations)?;
                let fname = self.g.fresh_name(&helper("filter"));
                let fi = self.g.add_const(
                    fname,
                    Tensor::f32(fshape.to_vec(), filter).map_err(|e| e.to_string())?,
                );
                let mut ins = vec![x, Wire { node: fi, slot: 0 }];
                if let Some(b) = self.opt_input(n, 2)? {
                    ins.push(b);
                }
                self.push(
                    &out,
                    op,
                    Op::Conv2d(Conv2d {
                        strides,
                        dilations,
                        padding,
                        layout: Layout::Nchw,
                        depthwise,
                    }),
                    ins,
                )?
            }
            "MaxPool" | "AveragePool" => {
                let x = self.input(n, 0)?;
                let xs = self.shape(x)?;
                if xs.len() != 4 {
                    return Err(format!("a pool on shape {xs:?}"));
                }
                if n.output.len() > 1 && n.output.get(1).is_some_and(|s| !s.is_empty()) {
                    return Err("MaxPool's indices output is not read by faceall".into());
                }
                if attr_i(n, "ceil_mode", 0)? != 0 {
                    return Err("ceil_mode 1 is not read by faceall".into());
                }
                let ksize = pair(
                    &usizes(
                        &attr_ints(n, "kernel_shape")?.ok_or("a pool without kernel_shape")?,
                        "kernel_shape",
                    )?,
                    "kernel_shape",
                )?;
                let strides = pair(
                    &usizes(&attr_ints(n, "strides")?.unwrap_or(vec![1, 1]), "strides")?,
                    "strides",
                )?;
                if let Some(d) = attr_ints(n, "dilations")? {
                    if d.iter().any(|&x| x != 1) {
                        return Err("dilated pools are not read by faceall".into());
                    }
                }
                let padding = self.padding(n, [xs[2], xs[3]], ksize, strides, [1, 1])?;
                let kind = if op == "MaxPool" {
                    PoolKind::Max
                } else {
                    let padded = !matches!(padding, Padding::Valid)
                        && padding != Padding::Explicit([[0, 0], [0, 0]]);
                    if attr_i(n, "count_include_pad", 0)? != 0 && padded {
                        return Err(
                            "count_include_pad 1 with padding is not read by faceall".into()
                        );
                    }
                    PoolKind::Avg
                };
                self.push(
                    &out,
                    op,
                    Op::Pool(Pool {
                        kind,
                        ksize,
                        strides,
                        padding,
                        layout: Layout::Nchw,
                    }),
                    vec![x],
                )?
            }
            "GlobalAveragePool" => {
                let x = self.input(n, 0)?;
                self.push(
                    &out,
                    op,
                    Op::Reduce {
                        reduce: ReduceOp::Mean,
                        axes: vec![2, 3],
                        keep_dims: true,
                    },
                    vec![x],
                )?
            }
            "BatchNormalization" => {
                let x = self.input(n, 0)?;
                let xs = self.shape(x)?;
                if xs.len() != 4 {
                    return Err(format!(
                        "a batch norm over shape {xs:?} (faceall reads 4-D)"
                    ));
                }
                if n.output.iter().skip(1).any(|s| !s.is_empty()) {
                    return Err("training-mode outputs are not read by faceall".into());
                }
                let mut ins = vec![x];
                for i in 1..5 {
                    ins.push(self.input(n, i)?);
                }
                let epsilon = attr_f(n, "epsilon", 1e-5)?;
                self.push(
                    &out,
                    op,
                    Op::BatchNorm(BatchNorm {
                        epsilon,
                        layout: Layout::Nchw,
                        training: false,
                    }),
                    ins,
                )?
            }
            "Relu" | "Sigmoid" | "Tanh" | "Elu" | "LeakyRelu" => {
                let a = match op {
                    "Relu" => Activation::Relu,
                    // ONNX's default alpha is 0.01.
                    "LeakyRelu" => Activation::LeakyRelu {
                        alpha: attr_f(n, "alpha", 0.01)?,
                    },
                    "Sigmoid" => Activation::Sigmoid,
                    "Tanh" => Activation::Tanh,
                    _ => {
                        if attr_f(n, "alpha", 1.0)? != 1.0 {
                            return Err("Elu with alpha other than 1 is not read by faceall".into());
                        }
                        Activation::Elu
                    }
                };
                let x = self.input(n, 0)?;
                self.push(&out, op, Op::Activation(a), vec![x])?
            }
            "Clip" => {
                let x = self.input(n, 0)?;
                let bound = |r: &Self, i: usize, name: &str| -> R<Option<f32>> {
                    if r.opset >= 11 {
                        match r.opt_input(n, i)? {
                            Some(w) => Ok(r.konst_f32(w)?.first().copied()),
                            None => Ok(None),
                        }
                    } else {
                        Ok(attr(n, name).map(|a| a.f))
                    }
                };
                let lo = bound(self, 1, "min")?;
                let hi = bound(self, 2, "max")?;
                let a = match (lo, hi) {
                    (Some(l), Some(h)) if l == 0.0 && h == 6.0 => Activation::Relu6,
                    (Some(0.0), None) => Activation::Relu,
                    _ => {
                        return Err(format!(
                            "Clip to [{lo:?}, {hi:?}] (faceall reads relu and relu6)"
                        ))
                    }
                };
                self.push(&out, op, Op::Activation(a), vec![x])?
            }
            "Softmax" => {
                let x = self.input(n, 0)?;
                let rank = self.shape(x)?.len();
                let a = axis(attr_i(n, "axis", -1)?, rank)?;
                if a + 1 != rank && !(self.opset < 13 && a + 2 == rank) {
                    return Err(format!(
                        "Softmax over axis {a} of rank {rank} (faceall reads the last axis)"
                    ));
                }
                self.push(&out, op, Op::Softmax, vec![x])?
            }
            "Concat" => {
                let ins = (0..n.input.len())
                    .map(|i| self.input(n, i))
                    .collect::<R<Vec<_>>>()?;
                let first = ins.first().ok_or("a Concat of nothing")?;
                let rank = self.shape(*first)?.len();
                let a = axis(attr_i(n, "axis", 0)?, rank)?;
                self.push(&out, op, Op::Concat { axis: a }, ins)?
            }
            "Add" | "Sub" | "Mul" | "Div" | "Max" | "Min" | "Sum" => {
                let b = match op {
                    "Add" | "Sum" => BinaryOp::Add,
                    "Sub" => BinaryOp::Sub,
                    "Mul" => BinaryOp::Mul,
                    "Div" => BinaryOp::Div,
                    "Max" => BinaryOp::Max,
                    _ => BinaryOp::Min,
                };
                let ins = (0..n.input.len())
                    .map(|i| self.input(n, i))
                    .collect::<R<Vec<_>>>()?;
                match ins.as_slice() {
                    [x] => self.push(&out, op, Op::Identity, vec![*x])?,
                    [first, rest @ ..] => {
                        let mut acc = *first;
                        for (k, &y) in rest.iter().enumerate() {
                            let name = if k + 1 == rest.len() {
                                out.clone()
                            } else {
                                helper("partial")
                            };
                            acc = self.push(&name, op, Op::Binary(b), vec![acc, y])?;
                        }
                        acc
                    }
                    [] => return Err(format!("{op} of nothing")),
                }
            }
            "Sqrt" | "Neg" | "Exp" | "Log" | "Erf" => {
                let u = match op {
                    "Sqrt" => UnaryOp::Sqrt,
                    "Exp" => UnaryOp::Exp,
                    "Log" => UnaryOp::Log,
                    "Erf" => UnaryOp::Erf,
                    _ => UnaryOp::Neg,
                };
                let x = self.input(n, 0)?;
                self.push(&out, op, Op::Unary(u), vec![x])?
            }
            "Pow" => {
                let x = self.input(n, 0)?;
                let e = self.input(n, 1)?;
                let exponent =
                    match self.konst_f32(e)?.as_slice() {
                        [v] => *v,
                        _ => return Err(
                            "Pow with an exponent that is not one constant is not read by faceall"
                                .into(),
                        ),
                    };
                self.push(&out, op, Op::Unary(UnaryOp::Pow { exponent }), vec![x])?
            }
            "Reciprocal" => {
                let x = self.input(n, 0)?;
                let one = self.scalar(&helper("one"), 1.0);
                self.push(&out, op, Op::Binary(BinaryOp::Div), vec![one, x])?
            }
            "ReduceSum" | "ReduceMean" | "ReduceSumSquare" => {
                let x = self.input(n, 0)?;
                let rank = self.shape(x)?.len();
                let listed = match self.opt_input(n, 1)? {
                    Some(a) => Some(self.konst_i64(a)?),
                    None => attr_ints(n, "axes")?,
                };
                let axes: Vec<usize> = match listed {
                    Some(a) if !a.is_empty() => {
                        a.iter().map(|&x| axis(x, rank)).collect::<R<_>>()?
                    }
                    _ => {
                        if attr_i(n, "noop_with_empty_axes", 0)? != 0 {
                            return Err("noop_with_empty_axes is not read by faceall".into());
                        }
                        (0..rank).collect()
                    }
                };
                let keep_dims = attr_i(n, "keepdims", 1)? != 0;
                let reduce = if op == "ReduceMean" {
                    ReduceOp::Mean
                } else {
                    ReduceOp::Sum
                };
                let src = if op == "ReduceSumSquare" {
                    self.push(&helper("square"), op, Op::Unary(UnaryOp::Square), vec![x])?
                } else {
                    x
                };
                self.push(
                    &out,
                    op,
                    Op::Reduce {
                        reduce,
                        axes,
                        keep_dims,
                    },
                    vec![src],
                )?
            }
            "MatMul" => {
                let a = self.input(n, 0)?;
                let b = self.input(n, 1)?;
                self.push(
                    &out,
                    op,
                    Op::MatMul {
                        transpose_a: false,
                        transpose_b: false,
                    },
                    vec![a, b],
                )?
            }
            "Gemm" => {
                if attr_f(n, "alpha", 1.0)? != 1.0 || attr_f(n, "beta", 1.0)? != 1.0 {
                    return Err(
                        "Gemm with alpha or beta other than 1 is not read by faceall".into(),
                    );
                }
                let a = self.input(n, 0)?;
                let b = self.input(n, 1)?;
                let mm = Op::MatMul {
                    transpose_a: attr_i(n, "transA", 0)? != 0,
                    transpose_b: attr_i(n, "transB", 0)? != 0,
                };
                match self.opt_input(n, 2)? {
                    None => self.push(&out, op, mm, vec![a, b])?,
                    Some(c) if self.shape(c)?.len() == 1 => {
                        self.push(&out, op, mm, vec![a, b, c])?
                    }
                    Some(c) => {
                        let m = self.push(&helper("matmul"), op, mm, vec![a, b])?;
                        self.push(&out, op, Op::Binary(BinaryOp::Add), vec![m, c])?
                    }
                }
            }
            "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" => {
                let x = self.input(n, 0)?;
                let xs = self.shape(x)?;
                let shape = match op {
                    "Reshape" => {
                        let s = self.konst_i64(self.input(n, 1)?)?;
                        reshape_target(&xs, &s)?
                    }
                    "Flatten" => {
                        let a = axis(attr_i(n, "axis", 1)?, xs.len() + 1)?;
                        let a = a.min(xs.len());
                        vec![xs[..a].iter().product(), xs[a..].iter().product()]
                    }
                    _ => {
                        let listed = match self.opt_input(n, 1)? {
                            Some(a) => Some(self.konst_i64(a)?),
                            None => attr_ints(n, "axes")?,
                        };
                        if op == "Squeeze" {
                            let axes: Vec<usize> = match listed {
                                Some(a) => {
                                    a.iter().map(|&v| axis(v, xs.len())).collect::<R<_>>()?
                                }
                                None => (0..xs.len()).filter(|&i| xs[i] == 1).collect(),
                            };
                            if axes.iter().any(|&a| xs[a] != 1) {
                                return Err(format!("Squeeze of axes {axes:?} of shape {xs:?}"));
                            }
                            xs.iter()
                                .enumerate()
                                .filter(|(i, _)| !axes.contains(i))
                                .map(|(_, &d)| d)
                                .collect()
                        } else {
                            let listed = listed.ok_or("Unsqueeze without axes")?;
                            let rank = xs.len() + listed.len();
                            let mut axes: Vec<usize> =
                                listed.iter().map(|&v| axis(v, rank)).collect::<R<_>>()?;
                            axes.sort_unstable();
                            axes.dedup();
                            if axes.len() != listed.len() {
                                return Err("Unsqueeze with repeated axes".into());
                            }
                            let mut it = xs.iter();
                            (0..rank)
                                .map(|i| {
                                    if axes.contains(&i) {
                                        Some(1)
                                    } else {
                                        it.next().copied()
                                    }
                                })
                                .collect::<Option<Vec<_>>>()
                                .ok_or("Unsqueeze axes out of range")?
                        }
                    }
                };
                self.push(&out, op, Op::Reshape { shape }, vec![x])?
            }
            "Pad" => {
                let x = self.input(n, 0)?;
                let rank = self.shape(x)?.len();
                let mode = attr_s(n, "mode")?.unwrap_or_else(|| "constant".into());
                if mode != "constant" {
                    return Err(format!("Pad mode '{mode}' (faceall reads constant)"));
                }
                let (p, value) = if self.opset >= 11 {
                    let p = self.konst_i64(self.input(n, 1)?)?;
                    let v = match self.opt_input(n, 2)? {
                        Some(c) => self.konst_f32(c)?.first().copied().unwrap_or(0.0),
                        None => 0.0,
                    };
                    (p, v)
                } else {
                    (
                        attr_ints(n, "pads")?.ok_or("Pad without pads")?,
                        attr_f(n, "value", 0.0)?,
                    )
                };
                if p.len() != 2 * rank {
                    return Err(format!("{} pads for rank {rank}", p.len()));
                }
                let p = usizes(&p, "pads")?;
                let pads = (0..rank).map(|i| [p[i], p[i + rank]]).collect();
                self.push(&out, op, Op::Pad { pads, value }, vec![x])?
            }
            "Slice" => {
                if self.opset < 10 {
                    return Err("Slice before opset 10 (attributes) is not read by faceall".into());
                }
                let x = self.input(n, 0)?;
                let shape = self.shape(x)?;
                let rank = shape.len() as i64;
                let starts = self.konst_i64(self.input(n, 1)?)?;
                let ends = self.konst_i64(self.input(n, 2)?)?;
                let axes = match self.opt_input(n, 3)? {
                    Some(a) => self.konst_i64(a)?,
                    None => (0..starts.len() as i64).collect(),
                };
                if let Some(st) = self.opt_input(n, 4)? {
                    if self.konst_i64(st)?.iter().any(|&s| s != 1) {
                        return Err("Slice with steps other than 1 is not read by faceall".into());
                    }
                }
                if starts.len() != ends.len() || axes.len() != starts.len() {
                    return Err("Slice: starts, ends and axes differ in length".into());
                }
                let mut begin = vec![0usize; shape.len()];
                let mut end = shape.clone();
                for ((&a, &b), &e) in axes.iter().zip(&starts).zip(&ends) {
                    let a = if a < 0 { a + rank } else { a };
                    if !(0..rank).contains(&a) {
                        return Err(format!("Slice axis {a} of a rank-{rank} value"));
                    }
                    let d = shape[a as usize] as i64;
                    let clamp = |v: i64| (if v < 0 { v + d } else { v }).clamp(0, d) as usize;
                    begin[a as usize] = clamp(b);
                    end[a as usize] = clamp(e).max(clamp(b));
                }
                self.push(&out, op, Op::Slice { begin, end }, vec![x])?
            }
            "ConvTranspose" => {
                let x = self.input(n, 0)?;
                let xs = self.shape(x)?;
                let wv = self.input(n, 1)?;
                let ws = self.shape(wv)?;
                let &[ci, co, kh, kw] = ws.as_slice() else {
                    return Err(format!(
                        "a ConvTranspose weight of shape {ws:?} (faceall reads 2-D ones)"
                    ));
                };
                if xs.len() != 4 || xs[1] != ci {
                    return Err(format!("a ConvTranspose of {xs:?} with weight {ws:?}"));
                }
                if attr_i(n, "group", 1)? != 1 {
                    return Err("a grouped ConvTranspose (faceall reads group 1)".into());
                }
                let two = |k: &str, d: usize| -> R<[usize; 2]> {
                    match attr_ints(n, k)? {
                        None => Ok([d, d]),
                        Some(v) => pair(&usizes(&v, k)?, k),
                    }
                };
                let (strides, dilations) = (two("strides", 1)?, two("dilations", 1)?);
                let extra = two("output_padding", 0)?;
                if attr_ints(n, "output_shape")?.is_some()
                    || attr_s(n, "auto_pad")?.is_some_and(|a| a != "NOTSET")
                {
                    return Err(
                        "ConvTranspose with output_shape or auto_pad (faceall reads explicit pads)"
                            .into(),
                    );
                }
                let p = usizes(&attr_ints(n, "pads")?.unwrap_or(vec![0; 4]), "pads")?;
                let &[t, l, b, r] = p.as_slice() else {
                    return Err(format!("pads {p:?} for a 2-D window"));
                };
                let d = Deconv2d::from_crops(
                    [xs[2], xs[3]],
                    [kh, kw],
                    strides,
                    dilations,
                    [[t, b], [l, r]],
                    extra,
                )
                .ok_or_else(|| {
                    format!(
                        "ConvTranspose pads {p:?} and output_padding {extra:?} do not fit {xs:?}"
                    )
                })?;
                let w = self.konst_f32(wv)?;
                let filter = oihw_to_hwio(&w, [ci, co, kh, kw]);
                let fname = self.g.fresh_name(&helper("filter"));
                let fi = self.g.add_const(
                    fname,
                    Tensor::f32(vec![kh, kw, co, ci], filter).map_err(|e| e.to_string())?,
                );
                let mut rest = vec![Wire { node: fi, slot: 0 }];
                if let Some(b) = self.opt_input(n, 2)? {
                    rest.push(b);
                }
                crate::formats::layout::push_between_transposes(
                    &mut self.g,
                    &out,
                    op,
                    Op::Deconv2d(d),
                    x,
                    rest,
                )?
            }
            "Resize" | "Upsample" => {
                let x = self.input(n, 0)?;
                let xs = self.shape(x)?;
                if xs.len() != 4 {
                    return Err(format!(
                        "a {op} of shape {xs:?} (faceall reads 2-D resizes)"
                    ));
                }
                let mode = attr_s(n, "mode")?.unwrap_or_else(|| "nearest".into());
                let coords = attr_s(n, "coordinate_transformation_mode")?
                    .unwrap_or_else(|| "half_pixel".into());
                // Before opset 11 there are only the asymmetric rules.
                let coords = if op == "Upsample" || self.opset < 11 {
                    "asymmetric".to_string()
                } else {
                    coords
                };
                let nearest = attr_s(n, "nearest_mode")?.unwrap_or_else(|| {
                    if self.opset < 11 {
                        "floor"
                    } else {
                        "round_prefer_floor"
                    }
                    .into()
                });
                let mode = match mode.as_str() {
                    "nearest" => ResizeMode::Nearest,
                    "linear" | "bilinear" => ResizeMode::Bilinear,
                    m => {
                        return Err(format!(
                            "{op} mode '{m}' (faceall reads nearest and linear)"
                        ))
                    }
                };
                let rule = match (mode, coords.as_str(), nearest.as_str()) {
                    (ResizeMode::Bilinear, "asymmetric", _)
                    | (ResizeMode::Nearest, "asymmetric", "floor") => Some((false, false)),
                    (ResizeMode::Bilinear, "half_pixel", _)
                    | (ResizeMode::Nearest, "half_pixel", "round_prefer_ceil")
                    | (ResizeMode::Nearest, "tf_half_pixel_for_nn", "floor") => Some((false, true)),
                    (ResizeMode::Bilinear, "align_corners", _)
                    | (ResizeMode::Nearest, "align_corners", "round_prefer_ceil") => {
                        Some((true, false))
                    }
                    _ => None,
                };
                let Some((align_corners, half_pixel_centers)) = rule else {
                    return Err(format!(
                        "{op} with coordinate_transformation_mode '{coords}' and nearest_mode '{nearest}' (faceall reads TensorFlow's rules: asymmetric, half_pixel, align_corners)"
                    ));
                };
                // Sizes (input 3) or scales (input 2 from opset 11, else 1).
                let scales_at = if self.opset >= 11 { 2 } else { 1 };
                let size = if let Some(s) = self.opt_input(n, 3)? {
                    usizes(&self.konst_i64(s)?, "sizes")?
                } else {
                    let s = self
                        .opt_input(n, scales_at)?
                        .ok_or("a Resize with neither scales nor sizes")?;
                    let f = self.konst_f32(s)?;
                    if f.len() != 4 || f.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
                        return Err(format!("Resize scales {f:?}"));
                    }
                    xs.iter()
                        .zip(&f)
                        .map(|(&d, &k)| (d as f32 * k).floor() as usize)
                        .collect()
                };
                if size.len() != 4 || size[0] != xs[0] || size[1] != xs[1] {
                    return Err(format!(
                        "a Resize of {xs:?} to {size:?} (faceall resizes height and width)"
                    ));
                }
                let r = Resize {
                    mode,
                    size: [size[2], size[3]],
                    align_corners,
                    half_pixel_centers,
                };
                self.push_resize(&out, op, r, x)?
            }
            "Gather" => {
                // What faceall writes for a nearest resize: a Gather of
                // constant source indices along height or width of an NCHW
                // map. Read as the resize of that one axis whose TF rule
                // (legacy, half-pixel or align_corners) picks exactly
                // these indices; any other Gather is refused by name.
                let x = self.input(n, 0)?;
                let xs = self.shape(x)?;
                let axis = attr_i(n, "axis", 0)?;
                let idx = self.konst_i64(self.input(n, 1)?)?;
                let ax = match (xs.len(), axis) {
                    (4, 2 | -2) => 0,
                    (4, 3 | -1) => 1,
                    _ => {
                        return Err(format!(
                            "a Gather on axis {axis} of shape {xs:?} (faceall reads the Gathers of a nearest resize: height or width of a 4-D map)"
                        ))
                    }
                };
                let from = xs[2 + ax];
                let mut size = [xs[2], xs[3]];
                size[ax] = idx.len();
                let rule = [(false, false), (false, true), (true, false)]
                    .into_iter()
                    .map(|(align_corners, half_pixel_centers)| Resize {
                        mode: ResizeMode::Nearest,
                        size,
                        align_corners,
                        half_pixel_centers,
                    })
                    .find(|r| {
                        r.nearest_sources(from, idx.len())
                            .iter()
                            .zip(&idx)
                            .all(|(&a, &b)| a as i64 == b)
                    });
                let Some(r) = rule else {
                    return Err(format!(
                        "a Gather of {} indices from {from} that no TensorFlow nearest-resize rule picks",
                        idx.len()
                    ));
                };
                self.push_resize(&out, op, r, x)?
            }
            "Tile" => {
                let x = self.input(n, 0)?;
                let reps = usizes(&self.konst_i64(self.input(n, 1)?)?, "repeats")?;
                self.push(&out, op, Op::Tile { multiples: reps }, vec![x])?
            }
            "DepthToSpace" | "SpaceToDepth" => {
                let x = self.input(n, 0)?;
                let block = usize::try_from(attr_i(n, "blocksize", 0)?)
                    .map_err(|_| "blocksize < 0".to_string())?;
                let to_space = op == "DepthToSpace";
                if to_space && attr_s(n, "mode")?.is_some_and(|m| m != "DCR") {
                    return Err("DepthToSpace in CRD mode (PixelShuffle; faceall reads DCR, TensorFlow's order)".into());
                }
                crate::formats::layout::push_between_transposes(
                    &mut self.g,
                    &out,
                    op,
                    Op::SpaceDepth(SpaceDepth { block, to_space }),
                    x,
                    vec![],
                )?
            }
            "Transpose" => {
                let x = self.input(n, 0)?;
                let rank = self.shape(x)?.len();
                let perm = match attr_ints(n, "perm")? {
                    Some(p) => usizes(&p, "perm")?,
                    None => (0..rank).rev().collect(),
                };
                let mut seen = perm.clone();
                seen.sort_unstable();
                if seen != (0..rank).collect::<Vec<_>>() {
                    return Err(format!("perm {perm:?} is not a permutation of rank {rank}"));
                }
                self.push(&out, op, Op::Transpose { perm }, vec![x])?
            }
            "PRelu" => {
                // max(x, 0) + slope * min(x, 0), with ONNX's broadcasting.
                let x = self.input(n, 0)?;
                let slope = self.input(n, 1)?;
                let zero = self.scalar(&helper("zero"), 0.0);
                let pos =
                    self.push(&helper("pos"), op, Op::Binary(BinaryOp::Max), vec![x, zero])?;
                let neg =
                    self.push(&helper("neg"), op, Op::Binary(BinaryOp::Min), vec![x, zero])?;
                let scaled = self.push(
                    &helper("scaled"),
                    op,
                    Op::Binary(BinaryOp::Mul),
                    vec![slope, neg],
                )?;
                self.push(&out, op, Op::Binary(BinaryOp::Add), vec![pos, scaled])?
            }
            other => return Err(format!("op '{other}' is not read by faceall's ONNX reader")),
        };
        if n.output.iter().skip(1).any(|s| !s.is_empty()) && !matches!(op, "Dropout") {
            return Err(format!("{op} with more than one output"));
        }
        self.wires.insert(out.clone(), w);
        self.carry(w.node, &out);
        Ok(())
    }

    /// ONNX `pads` / `auto_pad` as the IR's explicit padding.
    fn padding(
        &self,
        n: &NodeProto,
        hw: [usize; 2],
        k: [usize; 2],
        s: [usize; 2],
        d: [usize; 2],
    ) -> R<Padding> {
        let auto = attr_s(n, "auto_pad")?.unwrap_or_else(|| "NOTSET".into());
        match auto.as_str() {
            "NOTSET" => {}
            "VALID" => return Ok(Padding::Valid),
            // SAME_UPPER puts the extra row at the end, as TF's SAME does.
            "SAME_UPPER" => return Ok(Padding::Same),
            "SAME_LOWER" => {
                let mut p = [[0; 2]; 2];
                for i in 0..2 {
                    let (_, b, a) = crate::ir::same_padding(hw[i], k[i], s[i], d[i]);
                    p[i] = [a, b];
                }
                return Ok(Padding::Explicit(p));
            }
            other => return Err(format!("auto_pad '{other}'")),
        }
        let p = match attr_ints(n, "pads")? {
            None => return Ok(Padding::Explicit([[0, 0], [0, 0]])),
            Some(p) => usizes(&p, "pads")?,
        };
        let &[t, l, b, r] = p.as_slice() else {
            return Err(format!("pads {p:?} for a 2-D window"));
        };
        Ok(Padding::Explicit([[t, b], [l, r]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_targets_follow_onnx_rules() {
        assert_eq!(reshape_target(&[2, 3, 4], &[0, -1]).unwrap(), vec![2, 12]);
        assert_eq!(reshape_target(&[2, 3, 4], &[24]).unwrap(), vec![24]);
        assert!(reshape_target(&[2, 3, 4], &[5, -1]).is_err());
        assert!(reshape_target(&[2, 3, 4], &[-1, -1]).is_err());
        assert!(reshape_target(&[2, 3], &[0, 0, 0]).is_err());
    }

    #[test]
    fn weight_layouts_invert_the_writer() {
        let hwio: Vec<f32> = (0..2 * 3 * 4 * 5).map(|i| i as f32).collect();
        let oihw = crate::formats::layout::conv_oihw(&hwio, [2, 3, 4, 5], false, false);
        assert_eq!(oihw_to_hwio(&oihw, [5, 4, 2, 3]), hwio);
        let hwcm: Vec<f32> = (0..2 * 3 * 4 * 2).map(|i| i as f32).collect();
        let dw = crate::formats::layout::conv_oihw(&hwcm, [2, 3, 4, 2], true, false);
        assert_eq!(oihw_depthwise_to_hwcm(&dw, [4, 2, 2, 3]), hwcm);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            &b""[..],
            b"\x08\x07",
            b"not an onnx model at all",
            b"\x3a\x05\x0a\x03\x12\x01x",
        ] {
            assert!(from_bytes(&Bytes::copy_from_slice(bytes), Path::new(".")).is_err());
        }
    }
}
