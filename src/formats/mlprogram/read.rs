//! An ML Program package (`NAME.mlpackage`) -> faceall's IR, with MIL's
//! semantics: each MIL operation becomes IR ops that compute what the MIL
//! op defines (channel-first convs and pools keep their layout; `l2_norm`
//! is x / sqrt(sum over the last three axes + eps); `rsqrt` adds its
//! epsilon), so the IR reference executor runs the program as Core ML
//! would in float32. A float16 program's weights are read as the float16
//! values they are; its `cast`s are identities (activations are not
//! rounded to float16).
//!
//! The package is read through its `Manifest.json`; the model and the
//! weight file are memory-mapped and float32 weights are slices of the map.
//! Every operation the reader cannot map is reported at once. Nothing read
//! from the files is trusted: offsets, shapes and parameters are checked.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use protobuf::Message;

use super::blob::{BlobFile, BlobType};
use super::write::{COL_SUFFIX, INPUT_LAYOUT_KEY, NCHW_SUFFIX};
use crate::error::{Error, Result, Unsupported};
use crate::formats::files::map_file;
use crate::formats::graph_exec::Carried;
use crate::formats::layout::{
    axis, checked_numel, oihw_depthwise_to_hwcm, oihw_to_hwio, reshape_target,
};
use crate::ir::{
    Activation, BatchNorm, BinaryOp, Conv2d, DType, Deconv2d, Fact, Graph, Layout, Op, Padding,
    Pool, PoolKind, ReduceOp, Resize, ResizeMode, SpaceDepth, Tensor, UnaryOp, Wire,
};
use crate::proto::coreml::{model, Model};
use crate::proto::mil::{
    argument::binding, dimension, tensor_value, value, value_type, DataType, Operation, Value,
};

/// Manifest.json is a few hundred bytes; refuse anything absurd.
const MAX_MANIFEST: u64 = 1 << 20;

/// A program read into the IR.
pub struct MilGraph {
    pub graph: Graph,
    pub carried: Vec<Carried>,
    /// The program computes in float16.
    pub fp16: bool,
    pub specification_version: i32,
    pub opset: String,
}

fn bad(m: impl Into<String>) -> Error {
    Error::Format(m.into())
}

/// A path inside the package from a string read from it: relative, no `..`.
fn inside(root: &Path, rel: &str) -> Result<PathBuf> {
    let p = Path::new(rel);
    if p.is_absolute()
        || p.components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(bad(format!("path '{rel}' is not inside the package")));
    }
    Ok(root.join(p))
}

/// The root model file of a package, as its manifest names it.
pub fn model_path(pkg: &Path) -> Result<PathBuf> {
    let mpath = pkg.join("Manifest.json");
    let meta = std::fs::metadata(&mpath).map_err(|e| {
        if pkg.is_dir() {
            Error::from(e).in_file(&mpath)
        } else {
            bad("an ML Program is a .mlpackage directory (with Manifest.json)").in_file(pkg)
        }
    })?;
    if meta.len() > MAX_MANIFEST {
        return Err(bad("Manifest.json is too large").in_file(&mpath));
    }
    let text = std::fs::read(&mpath).map_err(|e| Error::from(e).in_file(&mpath))?;
    let m: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| bad(format!("not JSON: {e}")).in_file(&mpath))?;
    let root = m
        .get("rootModelIdentifier")
        .and_then(|v| v.as_str())
        .ok_or_else(|| bad("no rootModelIdentifier").in_file(&mpath))?;
    let rel = m
        .get("itemInfoEntries")
        .and_then(|e| e.get(root))
        .and_then(|e| e.get("path"))
        .and_then(|p| p.as_str())
        .ok_or_else(|| bad(format!("no item '{root}' with a path")).in_file(&mpath))?;
    inside(&pkg.join("Data"), rel).map_err(|e| e.in_file(&mpath))
}

/// Read the package at `pkg` into the IR.
pub fn load(pkg: &Path) -> Result<MilGraph> {
    let mfile = model_path(pkg)?;
    let bytes = map_file(&mfile)?;
    let model = Model::parse_from_tokio_bytes(&bytes)
        .map_err(|e| bad(format!("not a Core ML model: {e}")).in_file(&mfile))?;
    let dir = mfile.parent().unwrap_or(Path::new(".")).to_path_buf();
    from_model(&model, &dir).map_err(|e| e.in_file(&mfile))
}

/// Read a parsed model; blob files are looked up under `dir` (the model
/// file's folder, which `@model_path` names).
pub fn from_model(model: &Model, dir: &Path) -> Result<MilGraph> {
    let Some(model::Type::MlProgram(program)) = &model.Type else {
        return Err(bad(
            "the model is not an ML Program (a NeuralNetwork model is a .mlmodel file: --coreml X.mlmodel)",
        ));
    };
    let func = program
        .functions
        .get("main")
        .ok_or_else(|| bad("the program has no 'main' function"))?;
    let block = func.block_specializations.get(&func.opset).ok_or_else(|| {
        bad(format!(
            "'main' has no block for its opset '{}'",
            func.opset
        ))
    })?;
    let layouts: Vec<String> = model
        .description
        .as_ref()
        .and_then(|d| d.metadata.as_ref())
        .map(|m| {
            m.userDefined
                .iter()
                .filter(|e| e.value == "NCHW")
                .filter_map(|e| e.key.strip_prefix(&format!("{INPUT_LAYOUT_KEY}.")))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let mut r = Reader {
        g: Graph::default(),
        wires: HashMap::new(),
        params: HashMap::new(),
        carried: vec![],
        dir: dir.to_path_buf(),
        blobs: None,
        fp16: false,
    };
    for inp in &func.inputs {
        let (dt, shape) =
            tensor_of(inp.type_.as_ref()).map_err(|e| bad(format!("input '{}': {e}", inp.name)))?;
        if dt != DataType::FLOAT32 {
            return Err(bad(format!("input '{}' is not float32", inp.name)));
        }
        let nchw = layouts.contains(&inp.name) && shape.len() == 4;
        let tf_shape = if nchw {
            vec![shape[0], shape[2], shape[3], shape[1]]
        } else {
            shape.clone()
        };
        let i = r.g.nodes.len();
        r.g.nodes.push(crate::ir::Node::new(
            inp.name.clone(),
            "input".into(),
            Op::Input,
            vec![],
            vec![Fact::f32(tf_shape)],
        ));
        r.g.inputs.push(i);
        r.carried.push(Carried {
            node: i,
            tensor: inp.name.clone(),
            nchw: false,
        });
        let mut w = Wire { node: i, slot: 0 };
        if nchw {
            w = r
                .push(
                    &format!("{}/nchw", inp.name),
                    "input",
                    Op::Transpose {
                        perm: vec![0, 3, 1, 2],
                    },
                    vec![w],
                )
                .map_err(bad)?;
        }
        r.wires.insert(inp.name.clone(), w);
    }
    let mut unsupported: Vec<Unsupported> = vec![];
    let mut failed: Vec<String> = vec![];
    for op in &block.operations {
        let out = op
            .outputs
            .first()
            .map(|o| o.name.clone())
            .unwrap_or_default();
        let fed_by_failed = op.inputs.values().any(|a| {
            a.arguments.iter().any(
                |b| matches!(&b.binding, Some(binding::Binding::Name(n)) if failed.contains(n)),
            )
        });
        if fed_by_failed {
            failed.push(out);
            continue;
        }
        if let Err(reason) = r.op(op) {
            // A constant that cannot be read is a damaged file, not an
            // operation faceall lacks.
            if op.type_ == "const" {
                return Err(bad(format!("constant '{out}': {reason}")));
            }
            unsupported.push(Unsupported {
                node: label(op).unwrap_or_else(|| out.clone()),
                op: op.type_.clone(),
                reason,
            });
            failed.push(out);
        }
    }
    if !unsupported.is_empty() {
        return Err(Error::Unsupported(unsupported));
    }
    for o in &block.outputs {
        let w = *r
            .wires
            .get(o)
            .ok_or_else(|| bad(format!("output '{o}' is not computed by any operation")))?;
        r.g.outputs.push(w);
    }
    if r.g.outputs.is_empty() {
        return Err(bad("the program declares no outputs"));
    }
    r.g.validate()?;
    Ok(MilGraph {
        graph: r.g,
        carried: r.carried,
        fp16: r.fp16,
        specification_version: model.specificationVersion,
        opset: func.opset.clone(),
    })
}

fn label(op: &Operation) -> Option<String> {
    let v = op.attributes.get("name")?;
    match value_tensor(v).ok()? {
        tensor_value::Value::Strings(s) => s.values.first().cloned(),
        _ => None,
    }
}

fn value_tensor(v: &Value) -> std::result::Result<&tensor_value::Value, String> {
    match &v.value {
        Some(value::Value::ImmediateValue(iv)) => match &iv.value {
            Some(value::immediate_value::Value::Tensor(t)) => t
                .value
                .as_ref()
                .ok_or_else(|| "an empty tensor value".to_string()),
            _ => Err("an immediate value that is not a tensor".into()),
        },
        _ => Err("not an immediate value".into()),
    }
}

fn tensor_of(
    vt: Option<&crate::proto::mil::ValueType>,
) -> std::result::Result<(DataType, Vec<usize>), String> {
    let Some(value_type::Type::TensorType(t)) = vt.and_then(|v| v.type_.as_ref()) else {
        return Err("not a tensor".into());
    };
    let dt = t
        .dataType
        .enum_value()
        .map_err(|x| format!("data type {x} is not read by faceall"))?;
    let mut dims = vec![];
    for d in &t.dimensions {
        match &d.dimension {
            Some(dimension::Dimension::Constant(c)) => {
                dims.push(usize::try_from(c.size).map_err(|_| format!("dimension {}", c.size))?)
            }
            _ => return Err("an unknown dimension (faceall runs fixed shapes)".into()),
        }
    }
    if t.rank != dims.len() as i64 {
        return Err(format!("rank {} with {} dimensions", t.rank, dims.len()));
    }
    checked_numel(&dims)?;
    Ok((dt, dims))
}

/// A non-float constant: an operation parameter.
#[derive(Debug, Clone)]
enum Param {
    Ints(Vec<i64>),
    Bools(Vec<bool>),
    Str(String),
}

struct Reader {
    g: Graph,
    wires: HashMap<String, Wire>,
    params: HashMap<String, Param>,
    carried: Vec<Carried>,
    dir: PathBuf,
    blobs: Option<(PathBuf, BlobFile)>,
    fp16: bool,
}

type R<T> = std::result::Result<T, String>;

fn padding_of(pad_type: &str, pad: Option<&[i64]>) -> R<Padding> {
    match pad_type {
        "valid" => Ok(Padding::Valid),
        "same" => Ok(Padding::Same),
        "custom" => {
            let p = pad.ok_or("pad_type 'custom' without 'pad'")?;
            let u: Vec<usize> = p
                .iter()
                .map(|&x| usize::try_from(x).map_err(|_| format!("negative padding {p:?}")))
                .collect::<R<_>>()?;
            match u.as_slice() {
                &[t, b, l, r] => Ok(Padding::Explicit([[t, b], [l, r]])),
                _ => Err(format!("pad {p:?} is not 2-D")),
            }
        }
        t => Err(format!("pad_type '{t}' is not read by faceall")),
    }
}

fn pair(v: &[i64], what: &str) -> R<[usize; 2]> {
    match v {
        &[a, b] if a > 0 && b > 0 => Ok([a as usize, b as usize]),
        _ => Err(format!("{what} {v:?} is not two positive numbers")),
    }
}

impl Reader {
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

    fn konst(&mut self, base: &str, t: Tensor) -> Wire {
        let name = self.g.fresh_name(base);
        Wire {
            node: self.g.add_const(name, t),
            slot: 0,
        }
    }

    fn names<'o>(&self, op: &'o Operation, k: &str) -> R<Vec<&'o str>> {
        let a = op
            .inputs
            .get(k)
            .ok_or_else(|| format!("input '{k}' is missing"))?;
        a.arguments
            .iter()
            .map(|b| match &b.binding {
                Some(binding::Binding::Name(n)) => Ok(n.as_str()),
                _ => Err(format!("input '{k}' is not bound by name")),
            })
            .collect()
    }

    fn has(&self, op: &Operation, k: &str) -> bool {
        op.inputs.contains_key(k)
    }

    fn wire(&self, op: &Operation, k: &str) -> R<Wire> {
        let n = self.names(op, k)?;
        let [one] = n.as_slice() else {
            return Err(format!("input '{k}' binds {} values", n.len()));
        };
        self.wires
            .get(*one)
            .copied()
            .ok_or_else(|| format!("'{one}' is not a tensor computed before it"))
    }

    fn param(&self, op: &Operation, k: &str) -> R<&Param> {
        let n = self.names(op, k)?;
        let [one] = n.as_slice() else {
            return Err(format!("parameter '{k}' binds {} values", n.len()));
        };
        self.params
            .get(*one)
            .ok_or_else(|| format!("parameter '{k}' ('{one}') is not a constant"))
    }

    fn ints(&self, op: &Operation, k: &str) -> R<Vec<i64>> {
        match self.param(op, k)? {
            Param::Ints(v) => Ok(v.clone()),
            p => Err(format!("parameter '{k}' is {p:?}, not integers")),
        }
    }

    fn int(&self, op: &Operation, k: &str) -> R<i64> {
        match self.ints(op, k)?.as_slice() {
            [x] => Ok(*x),
            v => Err(format!("parameter '{k}' is {v:?}, not one integer")),
        }
    }

    fn bool_or(&self, op: &Operation, k: &str, default: bool) -> R<bool> {
        if !self.has(op, k) {
            return Ok(default);
        }
        match self.param(op, k)? {
            Param::Bools(v) if v.len() == 1 => Ok(v[0]),
            p => Err(format!("parameter '{k}' is {p:?}, not a bool")),
        }
    }

    fn string(&self, op: &Operation, k: &str) -> R<String> {
        match self.param(op, k)? {
            Param::Str(s) => Ok(s.clone()),
            p => Err(format!("parameter '{k}' is {p:?}, not a string")),
        }
    }

    /// A float constant input's values.
    fn floats(&self, op: &Operation, k: &str) -> R<Vec<f32>> {
        let w = self.wire(op, k)?;
        let t = self
            .g
            .const_of(w)
            .ok_or_else(|| format!("'{k}' must be a constant"))?;
        Ok(t.as_f32().map_err(|e| e.to_string())?.into_owned())
    }

    fn float_or(&self, op: &Operation, k: &str, default: f32) -> R<f32> {
        if !self.has(op, k) {
            return Ok(default);
        }
        match self.floats(op, k)?.as_slice() {
            [x] => Ok(*x),
            v => Err(format!("'{k}' has {} values, not one", v.len())),
        }
    }

    fn shape(&self, w: Wire) -> R<Vec<usize>> {
        self.g
            .fact(w)
            .map(|f| f.shape.clone())
            .map_err(|e| e.to_string())
    }

    fn blob(&mut self, file: &str, offset: u64) -> R<(BlobType, Bytes)> {
        let rel = file
            .strip_prefix("@model_path/")
            .ok_or_else(|| format!("blob file '{file}' is not under @model_path"))?;
        let path = inside(&self.dir, rel).map_err(|e| e.to_string())?;
        if self.blobs.as_ref().map(|(p, _)| p != &path).unwrap_or(true) {
            let bytes = map_file(&path).map_err(|e| e.to_string())?;
            let f = BlobFile::new(bytes).map_err(|e| format!("{}: {e}", path.display()))?;
            self.blobs = Some((path.clone(), f));
        }
        let (_, f) = self.blobs.as_ref().ok_or("the weight file vanished")?;
        f.get(offset)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    fn constant(&mut self, op: &Operation, out: &str) -> R<()> {
        let v = op.attributes.get("val").ok_or("a const without 'val'")?;
        let (dt, shape) = tensor_of(v.type_.as_ref())?;
        let n = checked_numel(&shape)?;
        let floats = |x: Vec<f32>| -> R<Tensor> {
            if x.len() != n {
                return Err(format!("{} values for shape {shape:?}", x.len()));
            }
            Tensor::f32(shape.clone(), x).map_err(|e| e.to_string())
        };
        if let Some(value::Value::BlobFileValue(b)) = &v.value {
            let (ty, bytes) = self.blob(&b.fileName, b.offset)?;
            let want = match dt {
                DataType::FLOAT16 => BlobType::F16,
                DataType::FLOAT32 => BlobType::F32,
                d => return Err(format!("a blob of type {d:?} is not read by faceall")),
            };
            if ty != want || bytes.len() != n * ty.size() {
                return Err(format!(
                    "blob at offset {} holds {} bytes of {ty:?}, the constant is {n} x {dt:?}",
                    b.offset,
                    bytes.len()
                ));
            }
            let t = match ty {
                BlobType::F32 => {
                    Tensor::from_raw(DType::F32, shape.clone(), bytes).map_err(|e| e.to_string())?
                }
                BlobType::F16 => {
                    self.fp16 = true;
                    floats(
                        bytes
                            .chunks_exact(2)
                            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                            .collect(),
                    )?
                }
            };
            let w = self.konst(out, t);
            self.wires.insert(out.to_string(), w);
            return Ok(());
        }
        let tv = value_tensor(v)?;
        match (dt, tv) {
            (DataType::FLOAT32, tensor_value::Value::Floats(f)) => {
                let w = self.konst(out, floats(f.values.clone())?);
                self.wires.insert(out.to_string(), w);
            }
            (DataType::FLOAT16, tensor_value::Value::Bytes(b)) => {
                self.fp16 = true;
                let x: Vec<f32> = b
                    .values
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect();
                let w = self.konst(out, floats(x)?);
                self.wires.insert(out.to_string(), w);
            }
            (DataType::FLOAT16, tensor_value::Value::Floats(f)) => {
                self.fp16 = true;
                let w = self.konst(out, floats(f.values.clone())?);
                self.wires.insert(out.to_string(), w);
            }
            (DataType::INT32 | DataType::INT64 | DataType::INT16 | DataType::INT8, t) => {
                let v: Vec<i64> = match t {
                    tensor_value::Value::Ints(i) => i.values.iter().map(|&x| x as i64).collect(),
                    tensor_value::Value::LongInts(i) => i.values.clone(),
                    _ => return Err("integers stored in another field".into()),
                };
                if v.len() != n {
                    return Err(format!("{} values for shape {shape:?}", v.len()));
                }
                self.params.insert(out.to_string(), Param::Ints(v));
            }
            (DataType::BOOL, tensor_value::Value::Bools(b)) => {
                self.params
                    .insert(out.to_string(), Param::Bools(b.values.clone()));
            }
            (DataType::STRING, tensor_value::Value::Strings(s)) => {
                let one = s.values.first().cloned().unwrap_or_default();
                self.params.insert(out.to_string(), Param::Str(one));
            }
            (d, _) => return Err(format!("a constant of type {d:?} is not read by faceall")),
        }
        Ok(())
    }

    /// Record which TF tensor the value holds, from the op's `name`.
    fn carry(&mut self, w: Wire, label: &str) {
        let rank4 = self.shape(w).map(|s| s.len() == 4).unwrap_or(false);
        let (tensor, nchw) = if let Some(t) = label.strip_suffix(NCHW_SUFFIX) {
            (t, rank4)
        } else if let Some(t) = label.strip_suffix(COL_SUFFIX) {
            (t, false)
        } else if label.ends_with("__flat") {
            return;
        } else {
            (label, false)
        };
        if tensor.is_empty() || (label.ends_with(NCHW_SUFFIX) && !rank4) {
            return;
        }
        self.carried.push(Carried {
            node: w.node,
            tensor: tensor.to_string(),
            nchw,
        });
    }

    fn op(&mut self, op: &Operation) -> R<()> {
        let [out] = op.outputs.as_slice() else {
            return Err(format!(
                "{} outputs (faceall reads single-output ops)",
                op.outputs.len()
            ));
        };
        let out = out.name.clone();
        if self.wires.contains_key(&out) || self.params.contains_key(&out) {
            return Err(format!("value '{out}' is written twice"));
        }
        let ty = op.type_.as_str();
        if ty == "const" {
            return self.constant(op, &out);
        }
        let helper = |k: &str| format!("{out}/{k}");
        let unary = |r: &mut Self, o: Op| -> R<Wire> {
            let x = r.wire(op, "x")?;
            r.push(&out, ty, o, vec![x])
        };
        let binary = |r: &mut Self, b: BinaryOp| -> R<Wire> {
            let x = r.wire(op, "x")?;
            let y = r.wire(op, "y")?;
            r.push(&out, ty, Op::Binary(b), vec![x, y])
        };
        let w = match ty {
            "identity" | "cast" => {
                if ty == "cast" {
                    let d = self.string(op, "dtype")?;
                    if d != "fp16" && d != "fp32" {
                        return Err(format!("a cast to '{d}' is not read by faceall"));
                    }
                }
                unary(self, Op::Identity)?
            }
            "conv" => {
                let x = self.wire(op, "x")?;
                let xs = self.shape(x)?;
                let wv = self.wire(op, "weight")?;
                let ws = self.shape(wv)?;
                let &[co, cig, kh, kw] = ws.as_slice() else {
                    return Err(format!(
                        "a conv weight of shape {ws:?} (faceall reads 2-D convolutions)"
                    ));
                };
                if xs.len() != 4 {
                    return Err(format!("a conv on shape {xs:?}"));
                }
                let groups = if self.has(op, "groups") {
                    self.int(op, "groups")?
                } else {
                    1
                };
                let groups = usize::try_from(groups).map_err(|_| "groups < 0")?;
                let ci = xs[1];
                let w = self.floats(op, "weight")?;
                let (filter, fshape, depthwise) = if groups == 1 && cig == ci {
                    (oihw_to_hwio(&w, [co, ci, kh, kw]), [kh, kw, ci, co], false)
                } else if groups == ci && cig == 1 && groups > 0 && co % ci == 0 {
                    let m = co / ci;
                    (
                        oihw_depthwise_to_hwcm(&w, [ci, m, kh, kw]),
                        [kh, kw, ci, m],
                        true,
                    )
                } else {
                    return Err(format!(
                        "groups {groups} over {ci} channels with weight {ws:?} (faceall reads plain and depthwise convolutions)"
                    ));
                };
                let strides = if self.has(op, "strides") {
                    pair(&self.ints(op, "strides")?, "strides")?
                } else {
                    [1, 1]
                };
                let dilations = if self.has(op, "dilations") {
                    pair(&self.ints(op, "dilations")?, "dilations")?
                } else {
                    [1, 1]
                };
                let pt = if self.has(op, "pad_type") {
                    self.string(op, "pad_type")?
                } else {
                    "valid".into()
                };
                let pad = if self.has(op, "pad") {
                    Some(self.ints(op, "pad")?)
                } else {
                    None
                };
                let padding = padding_of(&pt, pad.as_deref())?;
                let f = self.konst(
                    &helper("filter"),
                    Tensor::f32(fshape.to_vec(), filter).map_err(|e| e.to_string())?,
                );
                let mut ins = vec![x, f];
                if self.has(op, "bias") {
                    ins.push(self.wire(op, "bias")?);
                }
                self.push(
                    &out,
                    ty,
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
            "max_pool" | "avg_pool" => {
                let x = self.wire(op, "x")?;
                if self.shape(x)?.len() != 4 {
                    return Err("a pool on a value that is not 4-D".into());
                }
                if self.bool_or(op, "ceil_mode", false)? {
                    return Err("ceil_mode true is not read by faceall".into());
                }
                let ksize = pair(&self.ints(op, "kernel_sizes")?, "kernel_sizes")?;
                let strides = if self.has(op, "strides") {
                    pair(&self.ints(op, "strides")?, "strides")?
                } else {
                    [1, 1]
                };
                let pt = self.string(op, "pad_type")?;
                let pad = if self.has(op, "pad") {
                    Some(self.ints(op, "pad")?)
                } else {
                    None
                };
                let padding = padding_of(&pt, pad.as_deref())?;
                let kind = if ty == "max_pool" {
                    PoolKind::Max
                } else {
                    let padded = !matches!(padding, Padding::Valid)
                        && padding != Padding::Explicit([[0, 0], [0, 0]]);
                    if padded && !self.bool_or(op, "exclude_padding_from_average", false)? {
                        return Err(
                            "an average pool that counts padding is not read by faceall".into()
                        );
                    }
                    PoolKind::Avg
                };
                self.push(
                    &out,
                    ty,
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
            "batch_norm" => {
                let x = self.wire(op, "x")?;
                let xs = self.shape(x)?;
                if xs.len() != 4 {
                    return Err(format!(
                        "a batch norm over shape {xs:?} (faceall reads 4-D)"
                    ));
                }
                let c = xs[1];
                let mean = self.wire(op, "mean")?;
                let var = self.wire(op, "variance")?;
                let gamma = if self.has(op, "gamma") {
                    self.wire(op, "gamma")?
                } else {
                    self.konst(
                        &helper("gamma"),
                        Tensor::f32(vec![c], vec![1.0; c]).map_err(|e| e.to_string())?,
                    )
                };
                let beta = if self.has(op, "beta") {
                    self.wire(op, "beta")?
                } else {
                    self.konst(
                        &helper("beta"),
                        Tensor::f32(vec![c], vec![0.0; c]).map_err(|e| e.to_string())?,
                    )
                };
                let epsilon = self.float_or(op, "epsilon", 1e-5)?;
                self.push(
                    &out,
                    ty,
                    Op::BatchNorm(BatchNorm {
                        epsilon,
                        layout: Layout::Nchw,
                        training: false,
                    }),
                    vec![x, gamma, beta, mean, var],
                )?
            }
            "relu" => unary(self, Op::Activation(Activation::Relu))?,
            "relu6" => unary(self, Op::Activation(Activation::Relu6))?,
            "sigmoid" => unary(self, Op::Activation(Activation::Sigmoid))?,
            "tanh" => unary(self, Op::Activation(Activation::Tanh))?,
            "leaky_relu" => {
                let alpha = self.float_or(op, "alpha", 0.01)?;
                unary(self, Op::Activation(Activation::LeakyRelu { alpha }))?
            }
            "elu" => {
                if self.float_or(op, "alpha", 1.0)? != 1.0 {
                    return Err("elu with alpha other than 1 is not read by faceall".into());
                }
                unary(self, Op::Activation(Activation::Elu))?
            }
            "square" => unary(self, Op::Unary(UnaryOp::Square))?,
            "sqrt" => unary(self, Op::Unary(UnaryOp::Sqrt))?,
            "exp" => unary(self, Op::Unary(UnaryOp::Exp))?,
            "erf" => unary(self, Op::Unary(UnaryOp::Erf))?,
            "gelu" => {
                let approximate = match self.string(op, "mode")?.as_str() {
                    "EXACT" => false,
                    "TANH_APPROXIMATION" => true,
                    m => return Err(format!("gelu mode {m} is not read by faceall")),
                };
                unary(self, Op::Activation(Activation::Gelu { approximate }))?
            }
            "pow" => {
                let x = self.wire(op, "x")?;
                let exponent =
                    match self.floats(op, "y")?.as_slice() {
                        [e] => *e,
                        _ => return Err(
                            "pow with an exponent that is not one constant is not read by faceall"
                                .into(),
                        ),
                    };
                self.push(&out, ty, Op::Unary(UnaryOp::Pow { exponent }), vec![x])?
            }
            "log" => {
                let eps = self.float_or(op, "epsilon", 1e-45)?;
                if eps != 0.0 {
                    return Err(format!(
                        "log with epsilon {eps} is not read by faceall (it writes 0)"
                    ));
                }
                unary(self, Op::Unary(UnaryOp::Log))?
            }
            "rsqrt" => {
                let x = self.wire(op, "x")?;
                let eps = self.float_or(op, "epsilon", 1e-12)?;
                let x = if eps != 0.0 {
                    let e = self.konst(&helper("epsilon"), Tensor::scalar_f32(eps));
                    self.push(
                        &helper("plus_epsilon"),
                        ty,
                        Op::Binary(BinaryOp::Add),
                        vec![x, e],
                    )?
                } else {
                    x
                };
                self.push(&out, ty, Op::Unary(UnaryOp::Rsqrt), vec![x])?
            }
            "add" => binary(self, BinaryOp::Add)?,
            "sub" => binary(self, BinaryOp::Sub)?,
            "mul" => binary(self, BinaryOp::Mul)?,
            "real_div" => binary(self, BinaryOp::Div)?,
            "maximum" => binary(self, BinaryOp::Max)?,
            "minimum" => binary(self, BinaryOp::Min)?,
            "softmax" => {
                let x = self.wire(op, "x")?;
                let rank = self.shape(x)?.len();
                let a = axis(
                    if self.has(op, "axis") {
                        self.int(op, "axis")?
                    } else {
                        -1
                    },
                    rank,
                )?;
                if a + 1 == rank {
                    self.push(&out, ty, Op::Softmax, vec![x])?
                } else {
                    // IR softmax is over the last axis: move `a` there and back.
                    let mut perm: Vec<usize> = (0..rank).filter(|&i| i != a).collect();
                    perm.push(a);
                    let mut inv = vec![0; rank];
                    for (i, &p) in perm.iter().enumerate() {
                        inv[p] = i;
                    }
                    let t = self.push(&helper("moved"), ty, Op::Transpose { perm }, vec![x])?;
                    let s = self.push(&helper("softmax"), ty, Op::Softmax, vec![t])?;
                    self.push(&out, ty, Op::Transpose { perm: inv }, vec![s])?
                }
            }
            "concat" => {
                if self.bool_or(op, "interleave", false)? {
                    return Err("an interleaved concat is not read by faceall".into());
                }
                let names = self.names(op, "values")?;
                let mut ins = vec![];
                for n in names {
                    ins.push(
                        *self
                            .wires
                            .get(n)
                            .ok_or_else(|| format!("'{n}' is not a tensor computed before it"))?,
                    );
                }
                let rank = self
                    .shape(*ins.first().ok_or("a concat of nothing")?)?
                    .len();
                let a = axis(self.int(op, "axis")?, rank)?;
                self.push(&out, ty, Op::Concat { axis: a }, ins)?
            }
            "reduce_sum" | "reduce_mean" | "reduce_sum_square" => {
                let mut x = self.wire(op, "x")?;
                let rank = self.shape(x)?.len();
                let axes: Vec<usize> = if self.has(op, "axes") {
                    self.ints(op, "axes")?
                        .iter()
                        .map(|&a| axis(a, rank))
                        .collect::<R<_>>()?
                } else {
                    (0..rank).collect()
                };
                let keep_dims = self.bool_or(op, "keep_dims", false)?;
                if ty == "reduce_sum_square" {
                    x = self.push(&helper("square"), ty, Op::Unary(UnaryOp::Square), vec![x])?;
                }
                let reduce = if ty == "reduce_mean" {
                    ReduceOp::Mean
                } else {
                    ReduceOp::Sum
                };
                self.push(
                    &out,
                    ty,
                    Op::Reduce {
                        reduce,
                        axes,
                        keep_dims,
                    },
                    vec![x],
                )?
            }
            "l2_norm" => {
                // x / sqrt(sum of squares over the last three axes + eps)
                let x = self.wire(op, "x")?;
                let rank = self.shape(x)?.len();
                if rank < 3 {
                    return Err("l2_norm of a value of rank below 3".into());
                }
                let eps = self.float_or(op, "epsilon", 1e-6)?;
                let sq = self.push(&helper("square"), ty, Op::Unary(UnaryOp::Square), vec![x])?;
                let s = self.push(
                    &helper("sum"),
                    ty,
                    Op::Reduce {
                        reduce: ReduceOp::Sum,
                        axes: (rank - 3..rank).collect(),
                        keep_dims: true,
                    },
                    vec![sq],
                )?;
                let e = self.konst(&helper("epsilon"), Tensor::scalar_f32(eps));
                let se = self.push(
                    &helper("plus_epsilon"),
                    ty,
                    Op::Binary(BinaryOp::Add),
                    vec![s, e],
                )?;
                let r = self.push(&helper("rsqrt"), ty, Op::Unary(UnaryOp::Rsqrt), vec![se])?;
                self.push(&out, ty, Op::Binary(BinaryOp::Mul), vec![x, r])?
            }
            "matmul" => {
                let x = self.wire(op, "x")?;
                let y = self.wire(op, "y")?;
                let transpose_a = self.bool_or(op, "transpose_x", false)?;
                let transpose_b = self.bool_or(op, "transpose_y", false)?;
                self.push(
                    &out,
                    ty,
                    Op::MatMul {
                        transpose_a,
                        transpose_b,
                    },
                    vec![x, y],
                )?
            }
            "linear" => {
                let x = self.wire(op, "x")?;
                let w = self.wire(op, "weight")?;
                let mut ins = vec![x, w];
                if self.has(op, "bias") {
                    ins.push(self.wire(op, "bias")?);
                }
                let mm = Op::MatMul {
                    transpose_a: false,
                    transpose_b: true,
                };
                if ins.len() == 3 {
                    let b = ins.pop().ok_or("no bias")?;
                    let m = self.push(&helper("matmul"), ty, mm, ins)?;
                    self.push(&out, ty, Op::Binary(BinaryOp::Add), vec![m, b])?
                } else {
                    self.push(&out, ty, mm, ins)?
                }
            }
            "reshape" => {
                let x = self.wire(op, "x")?;
                let xs = self.shape(x)?;
                let shape = reshape_target(&xs, &self.ints(op, "shape")?)?;
                self.push(&out, ty, Op::Reshape { shape }, vec![x])?
            }
            "transpose" => {
                let x = self.wire(op, "x")?;
                let rank = self.shape(x)?.len();
                let perm: Vec<usize> = self
                    .ints(op, "perm")?
                    .iter()
                    .map(|&a| axis(a, rank))
                    .collect::<R<_>>()?;
                let mut seen = perm.clone();
                seen.sort_unstable();
                if seen != (0..rank).collect::<Vec<_>>() {
                    return Err(format!("perm {perm:?} is not a permutation"));
                }
                self.push(&out, ty, Op::Transpose { perm }, vec![x])?
            }
            "slice_by_index" => {
                let x = self.wire(op, "x")?;
                let shape = self.shape(x)?;
                let rank = shape.len();
                let b = self.ints(op, "begin")?;
                let e = self.ints(op, "end")?;
                let masks = |k: &str| -> R<Vec<bool>> {
                    if !self.has(op, k) {
                        return Ok(vec![false; rank]);
                    }
                    match self.param(op, k)? {
                        Param::Bools(v) if v.len() == rank => Ok(v.clone()),
                        p => Err(format!("parameter '{k}' is {p:?}, not {rank} bools")),
                    }
                };
                let (bm, em, sq) = (
                    masks("begin_mask")?,
                    masks("end_mask")?,
                    masks("squeeze_mask")?,
                );
                if sq.iter().any(|&v| v) {
                    return Err("slice_by_index with a squeeze_mask is not read by faceall".into());
                }
                if self.has(op, "stride") && self.ints(op, "stride")?.iter().any(|&v| v != 1) {
                    return Err(
                        "slice_by_index with strides other than 1 is not read by faceall".into(),
                    );
                }
                if b.len() != rank || e.len() != rank {
                    return Err(format!(
                        "slice_by_index bounds {b:?}..{e:?} for rank {rank}"
                    ));
                }
                let mut begin = vec![];
                let mut end = vec![];
                for i in 0..rank {
                    let d = shape[i] as i64;
                    let clamp = |v: i64| (if v < 0 { v + d } else { v }).clamp(0, d) as usize;
                    let lo = if bm[i] { 0 } else { clamp(b[i]) };
                    let hi = if em[i] { d as usize } else { clamp(e[i]) };
                    begin.push(lo);
                    end.push(hi.max(lo));
                }
                self.push(&out, ty, Op::Slice { begin, end }, vec![x])?
            }
            "conv_transpose" => {
                let x = self.wire(op, "x")?;
                let xs = self.shape(x)?;
                let wv = self.wire(op, "weight")?;
                let ws = self.shape(wv)?;
                let &[ci, co, kh, kw] = ws.as_slice() else {
                    return Err(format!("a conv_transpose weight of shape {ws:?}"));
                };
                if xs.len() != 4 || xs[1] != ci {
                    return Err(format!("a conv_transpose of {xs:?} with weight {ws:?}"));
                }
                if self.has(op, "groups") && self.int(op, "groups")? != 1 {
                    return Err("a grouped conv_transpose (faceall reads groups 1)".into());
                }
                let two = |r: &Self, k: &str| -> R<[usize; 2]> {
                    if r.has(op, k) {
                        pair(&r.ints(op, k)?, k)
                    } else {
                        Ok([1, 1])
                    }
                };
                let (strides, dilations) = (two(self, "strides")?, two(self, "dilations")?);
                let pt = if self.has(op, "pad_type") {
                    self.string(op, "pad_type")?
                } else {
                    "valid".into()
                };
                let p = if self.has(op, "pad") {
                    self.ints(op, "pad")?
                } else {
                    vec![0; 4]
                };
                if pt != "custom" && pt != "valid" {
                    return Err(format!(
                        "conv_transpose pad_type '{pt}' (faceall reads custom and valid)"
                    ));
                }
                let p = if pt == "valid" { vec![0; 4] } else { p };
                let &[t, b, l, r] = p.as_slice() else {
                    return Err(format!("pad {p:?} for a 2-D window"));
                };
                let crop = |v: i64| usize::try_from(v).map_err(|_| "a negative pad".to_string());
                let crops = [[crop(t)?, crop(b)?], [crop(l)?, crop(r)?]];
                let d = Deconv2d::from_crops(
                    [xs[2], xs[3]],
                    [kh, kw],
                    strides,
                    dilations,
                    crops,
                    [0, 0],
                )
                .ok_or_else(|| format!("conv_transpose pad {p:?} does not fit {xs:?}"))?;
                let size = d.size;
                if self.has(op, "output_shape") {
                    let want = self.ints(op, "output_shape")?;
                    if want.len() < 2 || want[want.len() - 2..] != [size[0] as i64, size[1] as i64]
                    {
                        return Err(format!(
                            "conv_transpose output_shape {want:?} differs from the pads' {size:?}"
                        ));
                    }
                }
                let w = self.floats(op, "weight")?;
                let filter = oihw_to_hwio(&w, [ci, co, kh, kw]);
                let f = self.konst(
                    &helper("filter"),
                    Tensor::f32(vec![kh, kw, co, ci], filter).map_err(|e| e.to_string())?,
                );
                let mut rest = vec![f];
                if self.has(op, "bias") {
                    rest.push(self.wire(op, "bias")?);
                }
                crate::formats::layout::push_between_transposes(
                    &mut self.g,
                    &out,
                    ty,
                    Op::Deconv2d(d),
                    x,
                    rest,
                )?
            }
            "upsample_nearest_neighbor" | "upsample_bilinear" | "resize_bilinear" => {
                let x = self.wire(op, "x")?;
                let xs = self.shape(x)?;
                if xs.len() != 4 {
                    return Err(format!("{ty} of shape {xs:?} (faceall reads 4-D maps)"));
                }
                let whole = |r: &Self, k: &str| -> R<usize> {
                    if !r.has(op, k) {
                        return Ok(1);
                    }
                    match r.ints(op, k)?.as_slice() {
                        [v] if *v > 0 => Ok(*v as usize),
                        v => Err(format!("{k} {v:?} (faceall reads whole factors)")),
                    }
                };
                let (mode, size, align_corners, half_pixel_centers) = match ty {
                    "resize_bilinear" => {
                        let size = [
                            whole(self, "target_size_height")?,
                            whole(self, "target_size_width")?,
                        ];
                        let (a, h) = match self.string(op, "sampling_mode")?.as_str() {
                            "DEFAULT" => (false, false),
                            "STRICT_ALIGN_CORNERS" => (true, false),
                            "UNALIGN_CORNERS" => (false, true),
                            m => return Err(format!("resize_bilinear sampling_mode '{m}' (faceall reads TF's grids: DEFAULT, STRICT_ALIGN_CORNERS, UNALIGN_CORNERS)")),
                        };
                        (ResizeMode::Bilinear, size, a, h)
                    }
                    _ => {
                        let f = [
                            whole(self, "scale_factor_height")?,
                            whole(self, "scale_factor_width")?,
                        ];
                        let size = [xs[2] * f[0], xs[3] * f[1]];
                        if ty == "upsample_nearest_neighbor" {
                            (ResizeMode::Nearest, size, false, false)
                        } else {
                            // iOS 16's half_pixel_centers defaults to
                            // !align_corners; both false is TF's legacy grid.
                            let a = self.bool_or(op, "align_corners", true)?;
                            let h = self.bool_or(op, "half_pixel_centers", !a)?;
                            if a && h {
                                return Err("upsample_bilinear with both align_corners and half_pixel_centers".into());
                            }
                            (ResizeMode::Bilinear, size, a, h)
                        }
                    }
                };
                let r = Resize {
                    mode,
                    size,
                    align_corners,
                    half_pixel_centers,
                };
                crate::formats::layout::push_between_transposes(
                    &mut self.g,
                    &out,
                    ty,
                    Op::Resize(r),
                    x,
                    vec![],
                )?
            }
            "tile" => {
                let x = self.wire(op, "x")?;
                let reps = self.ints(op, "reps")?;
                let multiples = reps
                    .iter()
                    .map(|&v| usize::try_from(v).ok())
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| format!("tile reps {reps:?}"))?;
                self.push(&out, ty, Op::Tile { multiples }, vec![x])?
            }
            "depth_to_space" | "space_to_depth" => {
                let x = self.wire(op, "x")?;
                let block = match self.ints(op, "block_size")?.as_slice() {
                    [v] if *v > 1 => *v as usize,
                    v => return Err(format!("block_size {v:?}")),
                };
                let sd = SpaceDepth {
                    block,
                    to_space: ty == "depth_to_space",
                };
                crate::formats::layout::push_between_transposes(
                    &mut self.g,
                    &out,
                    ty,
                    Op::SpaceDepth(sd),
                    x,
                    vec![],
                )?
            }
            "pad" => {
                let x = self.wire(op, "x")?;
                let rank = self.shape(x)?.len();
                let mode = if self.has(op, "mode") {
                    self.string(op, "mode")?
                } else {
                    "constant".into()
                };
                if mode != "constant" {
                    return Err(format!("pad mode '{mode}' is not read by faceall"));
                }
                let p = self.ints(op, "pad")?;
                if p.len() % 2 != 0 || p.len() / 2 > rank || p.iter().any(|&v| v < 0) {
                    return Err(format!("pad {p:?} for rank {rank}"));
                }
                let mut pads = vec![[0usize, 0]; rank - p.len() / 2];
                pads.extend(p.chunks_exact(2).map(|c| [c[0] as usize, c[1] as usize]));
                let value = self.float_or(op, "constant_val", 0.0)?;
                self.push(&out, ty, Op::Pad { pads, value }, vec![x])?
            }
            "prelu" => {
                // x if x > 0 else alpha * x, alpha per channel (axis 1):
                // max(x, 0) + alpha * min(x, 0), exact.
                let x = self.wire(op, "x")?;
                let xs = self.shape(x)?;
                let alpha = self.floats(op, "alpha")?;
                if xs.len() < 3 || xs.get(1) != Some(&alpha.len()) {
                    return Err(format!("prelu of {xs:?} with {} slopes", alpha.len()));
                }
                let mut ashape = vec![1; xs.len()];
                ashape[1] = alpha.len();
                let a = self.konst(
                    &helper("alpha"),
                    Tensor::f32(ashape, alpha).map_err(|e| e.to_string())?,
                );
                let zero = self.konst(&helper("zero"), Tensor::scalar_f32(0.0));
                let pos = self.push(
                    &helper("positive"),
                    ty,
                    Op::Binary(BinaryOp::Max),
                    vec![x, zero],
                )?;
                let neg = self.push(
                    &helper("negative"),
                    ty,
                    Op::Binary(BinaryOp::Min),
                    vec![x, zero],
                )?;
                let scaled = self.push(
                    &helper("scaled"),
                    ty,
                    Op::Binary(BinaryOp::Mul),
                    vec![neg, a],
                )?;
                self.push(&out, ty, Op::Binary(BinaryOp::Add), vec![pos, scaled])?
            }
            t => return Err(format!("MIL operation '{t}' is not read by faceall")),
        };
        self.wires.insert(out.clone(), w);
        let l = label(op).unwrap_or(out);
        self.carry(w, &l);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_package() {
        let root = Path::new("/p");
        assert!(inside(root, "com.apple.CoreML/model.mlmodel").is_ok());
        assert!(inside(root, "../etc/passwd").is_err());
        assert!(inside(root, "/etc/passwd").is_err());
    }

    #[test]
    fn paddings() {
        assert_eq!(
            padding_of("custom", Some(&[1, 2, 3, 4])).unwrap(),
            Padding::Explicit([[1, 2], [3, 4]])
        );
        assert!(padding_of("custom", Some(&[1, -2, 3, 4])).is_err());
        assert!(padding_of("custom", None).is_err());
        assert_eq!(padding_of("valid", None).unwrap(), Padding::Valid);
        assert!(padding_of("bogus", None).is_err());
    }

    #[test]
    fn not_a_package_is_an_error() {
        let d = std::env::temp_dir().join(format!("faceall-mlp-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("Manifest.json"), b"{\"rootModelIdentifier\": \"x\"}").unwrap();
        assert!(load(&d).is_err());
        std::fs::write(d.join("Manifest.json"), b"not json").unwrap();
        assert!(load(&d).is_err());
        std::fs::write(
            d.join("Manifest.json"),
            br#"{"rootModelIdentifier": "x", "itemInfoEntries": {"x": {"path": "../../etc/passwd"}}}"#,
        )
        .unwrap();
        assert!(load(&d).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
