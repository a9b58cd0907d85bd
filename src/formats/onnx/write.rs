//! IR (after the passes) -> ONNX `ModelProto`, opset [`OPSET`].
//!
//! The model keeps TensorFlow's boundary, as tf2onnx does: inputs and
//! outputs carry TF's names, shapes and NHWC layout, so one model can
//! replace the other. Inside, convolutions, pools and what sits between
//! them run channel-first (ONNX's Conv and pools are NCHW only): a 4-D NHWC
//! value is held NCHW under the name `TFNAME__nchw`, and turned back with
//! a Transpose (named TFNAME) only where something needs TF's order
//! (reshape, matmul, softmax, the outputs). Every other value that holds a
//! TF tensor is named after it, which is how verify-parity finds it.
//!
//! Weights are initializers: conv filters OIHW, everything else in TF's
//! order. A model whose weights pass 2 GB (protobuf's limit) keeps them in
//! `NAME.onnx.data` as ONNX external data.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use protobuf::{EnumOrUnknown, MessageField};

use crate::error::{Error, Result};
use crate::ir::{
    resolve_axis, Activation, BinaryOp, DType, Graph, Layout, Node, Op, PoolKind, ReduceOp,
    ResizeMode, Tensor, UnaryOp, Wire,
};
use crate::proto::onnx::{
    attribute_proto::AttributeType, tensor_proto::DataLocation, tensor_proto::DataType,
    tensor_shape_proto::dimension, tensor_shape_proto::Dimension, type_proto, AttributeProto,
    GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

/// The ONNX operator set faceall writes (ONNX 1.8, 2020; onnxruntime 1.6+).
pub const OPSET: i64 = 13;
/// The IR version that opset 13 needs.
pub const IR_VERSION: i64 = 7;
/// The suffix of the value holding a 4-D NHWC TF tensor channel-first.
pub const NCHW_SUFFIX: &str = "__nchw";
/// Protobuf cannot encode a message past 2 GB: weights beyond this total go
/// to external data.
pub const EXTERNAL_ABOVE: usize = 1 << 31;

/// Where the weights go.
#[derive(Debug, Clone, Default)]
pub struct OnnxOptions {
    /// Keep weights in `NAME.onnx.data` even under 2 GB.
    pub external_data: bool,
    /// The source graph's file name and SHA-256, for the metadata.
    pub source_name: String,
    pub source_sha256: String,
}

/// A written model: the ModelProto and, when the weights are external,
/// the bytes of `NAME.onnx.data` in order (borrowed from the graph where
/// they are already in ONNX's layout).
pub struct OnnxModel {
    pub model: ModelProto,
    pub external: Vec<Bytes>,
    /// How each IR node was written.
    pub notes: Vec<crate::formats::LayerNote>,
}

/// An ONNX value standing for an IR wire.
#[derive(Clone)]
struct Val {
    name: String,
    /// A 4-D NHWC IR value held as NCHW.
    nchw: bool,
}

type R<T> = std::result::Result<T, String>;

struct Em<'g> {
    g: &'g Graph,
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    vals: HashMap<Wire, Val>,
    /// TF-order values made from NCHW ones (and the reverse), by wire.
    tf_form: HashMap<Wire, String>,
    nchw_form: HashMap<Wire, String>,
    /// Constants already written as initializers, by wire.
    consts: HashMap<Wire, String>,
    names: HashSet<String>,
    /// ONNX nodes written for the IR node in hand (the report).
    current: Vec<String>,
}

fn attr_int(name: &str, v: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = EnumOrUnknown::new(AttributeType::INT);
    a.i = v;
    a
}

fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = EnumOrUnknown::new(AttributeType::INTS);
    a.ints = v.to_vec();
    a
}

fn attr_float(name: &str, v: f32) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = EnumOrUnknown::new(AttributeType::FLOAT);
    a.f = v;
    a
}

fn attr_str(name: &str, v: &str) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = EnumOrUnknown::new(AttributeType::STRING);
    a.s = Bytes::from(v.as_bytes().to_vec());
    a
}

fn ints(v: &[usize]) -> Vec<i64> {
    v.iter().map(|&d| d as i64).collect()
}

/// NHWC axis -> NCHW axis.
fn to_nchw_axis(a: usize) -> usize {
    [0, 2, 3, 1][a.min(3)]
}

fn le_f32(v: &[f32]) -> Bytes {
    Bytes::from(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
}

/// A tensor's little-endian bytes, shared with the graph when it holds
/// them as bytes already (weights memory-mapped from a bundle).
fn tensor_bytes(t: &Tensor) -> Bytes {
    use crate::ir::Data;
    match t.data() {
        Data::Raw(b) => b.clone(),
        Data::F32(v) => le_f32(v),
        Data::I32(v) => Bytes::from(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()),
        Data::I64(v) => Bytes::from(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()),
        Data::Bool(v) => Bytes::from(v.iter().map(|&x| x as u8).collect::<Vec<u8>>()),
    }
}

fn onnx_dtype(d: DType) -> DataType {
    match d {
        DType::F32 => DataType::FLOAT,
        DType::I32 => DataType::INT32,
        DType::I64 => DataType::INT64,
        DType::Bool => DataType::BOOL,
    }
}

fn value_info(name: &str, dtype: DType, shape: &[usize]) -> ValueInfoProto {
    let mut shp = TensorShapeProto::new();
    for &d in shape {
        let mut dim = Dimension::new();
        dim.value = Some(dimension::Value::DimValue(d as i64));
        shp.dim.push(dim);
    }
    let mut tt = type_proto::Tensor::new();
    tt.elem_type = onnx_dtype(dtype) as i32;
    tt.shape = MessageField::some(shp);
    let mut ty = TypeProto::new();
    ty.value = Some(type_proto::Value::TensorType(tt));
    let mut v = ValueInfoProto::new();
    v.name = name.into();
    v.type_ = MessageField::some(ty);
    v
}

impl<'g> Em<'g> {
    /// `base` if no value has that name yet, else `base_1`, `base_2`, ...
    fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 1;
        while self.names.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.names.insert(name.clone());
        name
    }

    fn node(&mut self, op: &str, inputs: &[&str], output: &str, attrs: Vec<AttributeProto>) {
        let mut n = NodeProto::new();
        n.op_type = op.into();
        n.name = output.into();
        n.input = inputs.iter().map(|s| s.to_string()).collect();
        n.output = vec![output.to_string()];
        n.attribute = attrs;
        self.current.push(format!("{op} {output}"));
        self.nodes.push(n);
    }

    fn init(&mut self, base: &str, dtype: DType, shape: &[usize], raw: Bytes) -> String {
        let name = self.fresh(base);
        let mut t = TensorProto::new();
        t.name = name.clone();
        t.dims = ints(shape);
        t.data_type = onnx_dtype(dtype) as i32;
        t.raw_data = raw;
        self.inits.push(t);
        name
    }

    fn init_f32(&mut self, base: &str, shape: &[usize], v: &[f32]) -> String {
        self.init(base, DType::F32, shape, le_f32(v))
    }

    /// GELU in opset 13 (ONNX's own Gelu is opset 20): exactly
    /// `0.5 * x * (1 + erf(x / sqrt 2))`, or the tanh form written out.
    fn gelu(&mut self, base: &str, x: &str, out: &str, approximate: bool) {
        use crate::ir::op::{FRAC_1_SQRT_2, GELU_CUBIC, SQRT_2_OVER_PI};
        let k =
            |em: &mut Self, what: &str, v: f32| em.init_f32(&format!("{base}/{what}"), &[], &[v]);
        let t = |em: &mut Self, what: &str| em.fresh(&format!("{base}/{what}"));
        let one = k(self, "one", 1.0);
        let half = k(self, "half", 0.5);
        let inner = if approximate {
            let sq = t(self, "square");
            self.node("Mul", &[x, x], &sq, vec![]);
            let cube = t(self, "cube");
            self.node("Mul", &[&sq, x], &cube, vec![]);
            let c = k(self, "cubic", GELU_CUBIC);
            let cc = t(self, "cubic_term");
            self.node("Mul", &[&cube, &c], &cc, vec![]);
            let sum = t(self, "poly");
            self.node("Add", &[x, &cc], &sum, vec![]);
            let s = k(self, "sqrt_2_over_pi", SQRT_2_OVER_PI);
            let arg = t(self, "arg");
            self.node("Mul", &[&sum, &s], &arg, vec![]);
            let th = t(self, "tanh");
            self.node("Tanh", &[&arg], &th, vec![]);
            th
        } else {
            let s = k(self, "frac_1_sqrt_2", FRAC_1_SQRT_2);
            let arg = t(self, "arg");
            self.node("Mul", &[x, &s], &arg, vec![]);
            let e = t(self, "erf");
            self.node("Erf", &[&arg], &e, vec![]);
            e
        };
        let p1 = t(self, "one_plus");
        self.node("Add", &[&inner, &one], &p1, vec![]);
        let hx = t(self, "half_x");
        self.node("Mul", &[x, &half], &hx, vec![]);
        self.node("Mul", &[&hx, &p1], out, vec![]);
    }

    fn init_i64(&mut self, base: &str, v: &[i64]) -> String {
        let raw = Bytes::from(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
        self.init(base, DType::I64, &[v.len()], raw)
    }

    fn shape(&self, w: Wire) -> R<Vec<usize>> {
        self.g
            .fact(w)
            .map(|f| f.shape.clone())
            .map_err(|e| e.to_string())
    }

    /// A constant input's values.
    fn konst(&self, w: Wire) -> R<std::borrow::Cow<'g, [f32]>> {
        crate::formats::layout::const_f32(self.g, w)
    }

    /// The value of `w` as the IR holds it (a constant becomes an
    /// initializer on first use).
    fn val(&mut self, w: Wire) -> R<Val> {
        if let Some(v) = self.vals.get(&w) {
            return Ok(v.clone());
        }
        if let Some(name) = self.consts.get(&w) {
            return Ok(Val {
                name: name.clone(),
                nchw: false,
            });
        }
        let g: &'g Graph = self.g;
        let t = g
            .const_of(w)
            .ok_or_else(|| format!("'{}' was not written before it is read", g.wire_name(w)))?;
        let base = g.nodes[w.node].name.clone();
        let name = self.init(&base, t.dtype(), t.shape(), tensor_bytes(t));
        self.consts.insert(w, name.clone());
        Ok(Val { name, nchw: false })
    }

    /// `w` in TF's order (NHWC for 4-D activations).
    fn tf(&mut self, w: Wire) -> R<String> {
        let v = self.val(w)?;
        if !v.nchw {
            return Ok(v.name);
        }
        if let Some(n) = self.tf_form.get(&w) {
            return Ok(n.clone());
        }
        let base = v
            .name
            .strip_suffix(NCHW_SUFFIX)
            .unwrap_or(&v.name)
            .to_string();
        let out = self.fresh(&base);
        self.node(
            "Transpose",
            &[&v.name],
            &out,
            vec![attr_ints("perm", &[0, 2, 3, 1])],
        );
        self.tf_form.insert(w, out.clone());
        Ok(out)
    }

    /// A 4-D NHWC `w` channel-first.
    fn nchw(&mut self, w: Wire) -> R<String> {
        let v = self.val(w)?;
        if v.nchw {
            return Ok(v.name);
        }
        if let Some(n) = self.nchw_form.get(&w) {
            return Ok(n.clone());
        }
        if self.shape(w)?.len() != 4 {
            return Err("expects a 4-D activation".into());
        }
        // A constant is transposed here, not in the graph.
        if let Some(t) = self.g.const_of(w) {
            let s = t.shape().to_vec();
            let x = t.as_f32().map_err(|e| e.to_string())?;
            let v = crate::runtime::kernels::nhwc_to_nchw(&x, [s[0], s[1], s[2], s[3]]);
            let base = format!("{}{NCHW_SUFFIX}", self.g.nodes[w.node].name);
            let name = self.init_f32(&base, &[s[0], s[3], s[1], s[2]], &v);
            self.nchw_form.insert(w, name.clone());
            return Ok(name);
        }
        let out = self.fresh(&format!("{}{NCHW_SUFFIX}", v.name));
        self.node(
            "Transpose",
            &[&v.name],
            &out,
            vec![attr_ints("perm", &[0, 3, 1, 2])],
        );
        self.nchw_form.insert(w, out.clone());
        Ok(out)
    }

    /// An operand of a channel-first elementwise op with a 4-D output:
    /// 4-D values channel-first, lower ranks broadcast as TF would (against
    /// the trailing NHWC axes), then laid out channel-first.
    fn broadcast_nchw(&mut self, w: Wire) -> R<String> {
        let s = self.shape(w)?;
        if s.len() == 4 {
            return self.nchw(w);
        }
        let mut s4 = vec![1; 4 - s.len()];
        s4.extend(&s);
        let perm = [s4[0], s4[3], s4[1], s4[2]];
        if let Some(t) = self.g.const_of(w) {
            let x = t.as_f32().map_err(|e| e.to_string())?;
            let v = crate::runtime::kernels::nhwc_to_nchw(&x, [s4[0], s4[1], s4[2], s4[3]]);
            let base = format!("{}{NCHW_SUFFIX}", self.g.nodes[w.node].name);
            return Ok(self.init_f32(&base, &perm, &v));
        }
        let x = self.tf(w)?;
        let shape = self.init_i64(&format!("{x}/shape4"), &ints(&s4));
        let r = self.fresh(&format!("{x}/rank4"));
        self.node("Reshape", &[&x, &shape], &r, vec![]);
        let out = self.fresh(&format!("{x}/rank4{NCHW_SUFFIX}"));
        self.node(
            "Transpose",
            &[&r],
            &out,
            vec![attr_ints("perm", &[0, 3, 1, 2])],
        );
        Ok(out)
    }

    /// The name of the value node `n` writes, in form `nchw`.
    fn out_name(&mut self, n: &Node, nchw: bool) -> String {
        let base = n
            .carries()
            .map(str::to_string)
            .unwrap_or_else(|| format!("{}/folded", n.name));
        if nchw {
            self.fresh(&format!("{base}{NCHW_SUFFIX}"))
        } else {
            self.fresh(&base)
        }
    }

    /// Whether an elementwise op over `inputs` with output shape `out`
    /// runs channel-first: a 4-D output with an input already so.
    fn elementwise_nchw(&self, inputs: &[Wire], out: &[usize]) -> bool {
        out.len() == 4
            && inputs
                .iter()
                .any(|w| self.vals.get(w).is_some_and(|v| v.nchw))
    }

    fn spatial(
        &self,
        padding: &crate::ir::Padding,
        hw: [usize; 2],
        k: [usize; 2],
        s: [usize; 2],
        d: [usize; 2],
    ) -> R<Vec<i64>> {
        let (_, [t, b]) =
            resolve_axis(padding, 0, hw[0], k[0], s[0], d[0]).ok_or("window does not fit")?;
        let (_, [l, r]) =
            resolve_axis(padding, 1, hw[1], k[1], s[1], d[1]).ok_or("window does not fit")?;
        Ok(ints(&[t, l, b, r]))
    }

    fn emit(&mut self, idx: usize) -> R<Option<Val>> {
        let g: &'g Graph = self.g;
        let n: &'g Node = &g.nodes[idx];
        let out_shape = n
            .outputs
            .first()
            .map(|f| f.shape.clone())
            .unwrap_or_default();
        let input = |i: usize| -> R<Wire> {
            n.inputs
                .get(i)
                .copied()
                .ok_or_else(|| format!("input {i} is missing"))
        };
        match &n.op {
            Op::Const(_) => Ok(None),
            Op::Input => {
                let f = &n.outputs[0];
                if f.dtype != DType::F32 {
                    return Err("only float32 inputs".into());
                }
                let name = self.fresh(&n.name);
                Ok(Some(Val { name, nchw: false }))
            }
            Op::Identity => Ok(Some(self.val(input(0)?)?)),
            Op::Switch | Op::Merge => {
                Err("TF1 control flow has no ONNX form (run the resolve_switch pass)".into())
            }
            Op::Conv2d(c) => {
                let xw = input(0)?;
                let xs = self.shape(xw)?;
                let x = match c.layout {
                    Layout::Nhwc => self.nchw(xw)?,
                    Layout::Nchw => self.tf(xw)?,
                };
                let ws = self.shape(input(1)?)?;
                let &[kh, kw, ci, co] = ws.as_slice() else {
                    return Err(format!("filter of shape {ws:?}"));
                };
                let w = self.konst(input(1)?)?;
                let wc =
                    crate::formats::layout::conv_oihw(&w, [kh, kw, ci, co], c.depthwise, false);
                let (oshape, group) = if c.depthwise {
                    ([ci * co, 1, kh, kw], ci)
                } else {
                    ([co, ci, kh, kw], 1)
                };
                let wname = self.init_f32(&format!("{}/weights", n.name), &oshape, &wc);
                let mut ins = vec![x, wname];
                if let Some(&b) = n.inputs.get(2) {
                    let bias = self.konst(b)?;
                    ins.push(self.init_f32(&format!("{}/bias", n.name), &[bias.len()], &bias));
                }
                let [ha, wa, _] = c.layout.hwc();
                let pads = self.spatial(
                    &c.padding,
                    [xs[ha], xs[wa]],
                    [kh, kw],
                    c.strides,
                    c.dilations,
                )?;
                let nchw = c.layout == Layout::Nhwc;
                let out = self.out_name(n, nchw);
                let refs: Vec<&str> = ins.iter().map(|s| s.as_str()).collect();
                self.node(
                    "Conv",
                    &refs,
                    &out,
                    vec![
                        attr_ints("kernel_shape", &ints(&[kh, kw])),
                        attr_ints("strides", &ints(&c.strides)),
                        attr_ints("dilations", &ints(&c.dilations)),
                        attr_ints("pads", &pads),
                        attr_int("group", group as i64),
                    ],
                );
                Ok(Some(Val { name: out, nchw }))
            }
            Op::Pool(p) => {
                let xw = input(0)?;
                let xs = self.shape(xw)?;
                let x = match p.layout {
                    Layout::Nhwc => self.nchw(xw)?,
                    Layout::Nchw => self.tf(xw)?,
                };
                let [ha, wa, _] = p.layout.hwc();
                let pads =
                    self.spatial(&p.padding, [xs[ha], xs[wa]], p.ksize, p.strides, [1, 1])?;
                let nchw = p.layout == Layout::Nhwc;
                let out = self.out_name(n, nchw);
                let mut attrs = vec![
                    attr_ints("kernel_shape", &ints(&p.ksize)),
                    attr_ints("strides", &ints(&p.strides)),
                    attr_ints("pads", &pads),
                ];
                let op = match p.kind {
                    PoolKind::Max => "MaxPool",
                    PoolKind::Avg => {
                        // TF averages over the window's valid part only.
                        attrs.push(attr_int("count_include_pad", 0));
                        "AveragePool"
                    }
                };
                self.node(op, &[&x], &out, attrs);
                Ok(Some(Val { name: out, nchw }))
            }
            Op::BiasAdd { layout } => {
                let xw = input(0)?;
                let b = self.konst(input(1)?)?;
                let xs = self.shape(xw)?;
                let (x, bshape, nchw) = match (layout, xs.len()) {
                    (Layout::Nhwc, 4) => (self.nchw(xw)?, vec![b.len(), 1, 1], true),
                    (Layout::Nchw, 4) => (self.tf(xw)?, vec![b.len(), 1, 1], false),
                    _ => (self.tf(xw)?, vec![b.len()], false),
                };
                let bias = self.init_f32(&format!("{}/bias", n.name), &bshape, &b);
                let out = self.out_name(n, nchw);
                self.node("Add", &[&x, &bias], &out, vec![]);
                Ok(Some(Val { name: out, nchw }))
            }
            Op::BatchNorm(bn) => {
                if bn.training {
                    return Err("a training-mode batch norm has no ONNX inference form".into());
                }
                let xw = input(0)?;
                let xs = self.shape(xw)?;
                let (x, nchw) = match (bn.layout, xs.len()) {
                    (Layout::Nhwc, 4) => (self.nchw(xw)?, true),
                    (_, 2) | (Layout::Nchw, 4) => (self.tf(xw)?, false),
                    _ => return Err(format!("a batch norm over shape {xs:?}")),
                };
                let mut ins = vec![x];
                for (i, what) in ["scale", "offset", "mean", "variance"].iter().enumerate() {
                    let v = self.konst(input(i + 1)?)?;
                    ins.push(self.init_f32(&format!("{}/{what}", n.name), &[v.len()], &v));
                }
                let out = self.out_name(n, nchw);
                let refs: Vec<&str> = ins.iter().map(|s| s.as_str()).collect();
                self.node(
                    "BatchNormalization",
                    &refs,
                    &out,
                    vec![attr_float("epsilon", bn.epsilon)],
                );
                Ok(Some(Val { name: out, nchw }))
            }
            Op::Activation(a) => {
                let v = self.val(input(0)?)?;
                let out = self.out_name(n, v.nchw);
                match a {
                    Activation::Relu => self.node("Relu", &[&v.name], &out, vec![]),
                    Activation::Relu6 => {
                        let lo = self.init_f32("relu6/min", &[], &[0.0]);
                        let hi = self.init_f32("relu6/max", &[], &[6.0]);
                        self.node("Clip", &[&v.name, &lo, &hi], &out, vec![]);
                    }
                    Activation::Elu => {
                        self.node("Elu", &[&v.name], &out, vec![attr_float("alpha", 1.0)])
                    }
                    Activation::Sigmoid => self.node("Sigmoid", &[&v.name], &out, vec![]),
                    Activation::Tanh => self.node("Tanh", &[&v.name], &out, vec![]),
                    Activation::LeakyRelu { alpha } => self.node(
                        "LeakyRelu",
                        &[&v.name],
                        &out,
                        vec![attr_float("alpha", *alpha)],
                    ),
                    Activation::Gelu { approximate } => {
                        self.gelu(&n.name, &v.name, &out, *approximate)
                    }
                }
                Ok(Some(Val {
                    name: out,
                    nchw: v.nchw,
                }))
            }
            Op::Softmax => {
                let x = self.tf(input(0)?)?;
                let out = self.out_name(n, false);
                self.node("Softmax", &[&x], &out, vec![attr_int("axis", -1)]);
                Ok(Some(Val {
                    name: out,
                    nchw: false,
                }))
            }
            Op::Concat { axis } => {
                let nchw = self.elementwise_nchw(&n.inputs, &out_shape);
                let mut ins = vec![];
                for &w in &n.inputs {
                    ins.push(if nchw { self.nchw(w)? } else { self.tf(w)? });
                }
                let axis = if nchw { to_nchw_axis(*axis) } else { *axis };
                let out = self.out_name(n, nchw);
                let refs: Vec<&str> = ins.iter().map(|s| s.as_str()).collect();
                self.node("Concat", &refs, &out, vec![attr_int("axis", axis as i64)]);
                Ok(Some(Val { name: out, nchw }))
            }
            Op::Binary(b) => {
                let nchw = self.elementwise_nchw(&n.inputs, &out_shape);
                let mut ins = vec![];
                for &w in &n.inputs {
                    ins.push(if nchw {
                        self.broadcast_nchw(w)?
                    } else {
                        self.tf(w)?
                    });
                }
                let op = match b {
                    BinaryOp::Add => "Add",
                    BinaryOp::Sub => "Sub",
                    BinaryOp::Mul => "Mul",
                    BinaryOp::Div => "Div",
                    BinaryOp::Max => "Max",
                    BinaryOp::Min => "Min",
                };
                let out = self.out_name(n, nchw);
                self.node(op, &[&ins[0], &ins[1]], &out, vec![]);
                Ok(Some(Val { name: out, nchw }))
            }
            Op::Unary(u) => {
                let v = self.val(input(0)?)?;
                let out = self.out_name(n, v.nchw);
                match u {
                    UnaryOp::Square => self.node("Mul", &[&v.name, &v.name], &out, vec![]),
                    UnaryOp::Sqrt => self.node("Sqrt", &[&v.name], &out, vec![]),
                    UnaryOp::Neg => self.node("Neg", &[&v.name], &out, vec![]),
                    UnaryOp::Exp => self.node("Exp", &[&v.name], &out, vec![]),
                    UnaryOp::Log => self.node("Log", &[&v.name], &out, vec![]),
                    UnaryOp::Erf => self.node("Erf", &[&v.name], &out, vec![]),
                    UnaryOp::Erfc => {
                        // Opset 13 has no Erfc: 1 - erf(x), exact to an
                        // absolute 6e-8 (the far right tail rounds to 0).
                        let e = self.fresh(&format!("{}/erf", n.name));
                        self.node("Erf", &[&v.name], &e, vec![]);
                        let one = self.init_f32(&format!("{}/one", n.name), &[], &[1.0]);
                        self.node("Sub", &[&one, &e], &out, vec![]);
                    }
                    UnaryOp::Pow { exponent } => {
                        let p = self.init_f32(&format!("{}/exponent", n.name), &[], &[*exponent]);
                        self.node("Pow", &[&v.name, &p], &out, vec![]);
                    }
                    UnaryOp::Rsqrt => {
                        let s = self.fresh(&format!("{}/sqrt", n.name));
                        self.node("Sqrt", &[&v.name], &s, vec![]);
                        self.node("Reciprocal", &[&s], &out, vec![]);
                    }
                }
                Ok(Some(Val {
                    name: out,
                    nchw: v.nchw,
                }))
            }
            Op::Reduce {
                reduce,
                axes,
                keep_dims,
            } => {
                let xw = input(0)?;
                let v = self.val(xw)?;
                // Channel-first when the kept axes stay in TF's order.
                let kept: Vec<usize> = [0usize, 3, 1, 2]
                    .into_iter()
                    .filter(|a| !axes.contains(a))
                    .collect();
                let in_order = kept.windows(2).all(|p| p[0] < p[1]);
                let nchw = v.nchw && (*keep_dims || in_order);
                let (x, axes): (String, Vec<usize>) = if nchw {
                    (v.name, axes.iter().map(|&a| to_nchw_axis(a)).collect())
                } else {
                    (self.tf(xw)?, axes.clone())
                };
                let out_nchw = nchw && *keep_dims;
                let out = self.out_name(n, out_nchw);
                let kd = attr_int("keepdims", *keep_dims as i64);
                match reduce {
                    // Opset 13: ReduceSum takes its axes as an input,
                    // ReduceMean as an attribute.
                    ReduceOp::Sum => {
                        let a = self.init_i64(&format!("{}/axes", n.name), &ints(&axes));
                        self.node("ReduceSum", &[&x, &a], &out, vec![kd]);
                    }
                    ReduceOp::Mean => {
                        self.node(
                            "ReduceMean",
                            &[&x],
                            &out,
                            vec![attr_ints("axes", &ints(&axes)), kd],
                        );
                    }
                }
                Ok(Some(Val {
                    name: out,
                    nchw: out_nchw,
                }))
            }
            Op::MatMul {
                transpose_a,
                transpose_b,
            } => {
                let aw = input(0)?;
                let bw = input(1)?;
                let (ra, rb) = (self.shape(aw)?.len(), self.shape(bw)?.len());
                let a = self.tf(aw)?;
                let b = self.tf(bw)?;
                let out = self.out_name(n, false);
                if ra == 2 && rb == 2 {
                    let mut ins = vec![a, b];
                    if let Some(&c) = n.inputs.get(2) {
                        ins.push(self.tf(c)?);
                    }
                    let refs: Vec<&str> = ins.iter().map(|s| s.as_str()).collect();
                    self.node(
                        "Gemm",
                        &refs,
                        &out,
                        vec![
                            attr_int("transA", *transpose_a as i64),
                            attr_int("transB", *transpose_b as i64),
                        ],
                    );
                    return Ok(Some(Val {
                        name: out,
                        nchw: false,
                    }));
                }
                let mut swap = |x: String, rank: usize, yes: bool| -> String {
                    if !yes {
                        return x;
                    }
                    let mut perm: Vec<usize> = (0..rank).collect();
                    perm.swap(rank - 1, rank - 2);
                    let t = self.fresh(&format!("{x}/transposed"));
                    self.node(
                        "Transpose",
                        &[&x],
                        &t,
                        vec![attr_ints("perm", &ints(&perm))],
                    );
                    t
                };
                if ra < 2 || rb < 2 {
                    return Err("a matmul of vectors".into());
                }
                let a = swap(a, ra, *transpose_a);
                let b = swap(b, rb, *transpose_b);
                match n.inputs.get(2) {
                    None => self.node("MatMul", &[&a, &b], &out, vec![]),
                    Some(&c) => {
                        let c = self.tf(c)?;
                        let m = self.fresh(&format!("{}/matmul", n.name));
                        self.node("MatMul", &[&a, &b], &m, vec![]);
                        self.node("Add", &[&m, &c], &out, vec![]);
                    }
                }
                Ok(Some(Val {
                    name: out,
                    nchw: false,
                }))
            }
            Op::WeightedSum { coeffs } => {
                let nchw = self.elementwise_nchw(&n.inputs, &out_shape);
                let mut terms = vec![];
                for (&w, &c) in n.inputs.iter().zip(coeffs) {
                    let x = if nchw { self.nchw(w)? } else { self.tf(w)? };
                    if c == 1.0 {
                        terms.push(x);
                    } else {
                        let k = self.init_f32(&format!("{}/coeff", n.name), &[], &[c]);
                        let t = self.fresh(&format!("{x}/scaled"));
                        self.node("Mul", &[&x, &k], &t, vec![]);
                        terms.push(t);
                    }
                }
                let out = self.out_name(n, nchw);
                let mut acc = terms.first().cloned().ok_or("a weighted sum of nothing")?;
                for (i, t) in terms.iter().enumerate().skip(1) {
                    let dst = if i + 1 == terms.len() {
                        out.clone()
                    } else {
                        self.fresh(&format!("{}/partial", n.name))
                    };
                    self.node("Add", &[&acc, t], &dst, vec![]);
                    acc = dst;
                }
                if terms.len() == 1 {
                    self.node("Identity", &[&acc], &out, vec![]);
                }
                Ok(Some(Val { name: out, nchw }))
            }
            Op::L2Normalize { axis, epsilon } => {
                let xw = input(0)?;
                let v = self.val(xw)?;
                let (x, axis) = if v.nchw {
                    (v.name.clone(), to_nchw_axis(*axis))
                } else {
                    (v.name.clone(), *axis)
                };
                let ss = self.fresh(&format!("{}/sum_square", n.name));
                self.node(
                    "ReduceSumSquare",
                    &[&x],
                    &ss,
                    vec![attr_ints("axes", &[axis as i64]), attr_int("keepdims", 1)],
                );
                let eps = self.init_f32(&format!("{}/epsilon", n.name), &[], &[*epsilon]);
                let m = self.fresh(&format!("{}/max", n.name));
                self.node("Max", &[&ss, &eps], &m, vec![]);
                let r = self.fresh(&format!("{}/norm", n.name));
                self.node("Sqrt", &[&m], &r, vec![]);
                let out = self.out_name(n, v.nchw);
                self.node("Div", &[&x, &r], &out, vec![]);
                Ok(Some(Val {
                    name: out,
                    nchw: v.nchw,
                }))
            }
            Op::Reshape { shape } => {
                let x = self.tf(input(0)?)?;
                let s = self.init_i64(&format!("{}/shape", n.name), &ints(shape));
                let out = self.out_name(n, false);
                self.node("Reshape", &[&x, &s], &out, vec![]);
                Ok(Some(Val {
                    name: out,
                    nchw: false,
                }))
            }
            Op::Squeeze { axes } => {
                let x = self.tf(input(0)?)?;
                let a = self.init_i64(&format!("{}/axes", n.name), &ints(axes));
                let out = self.out_name(n, false);
                self.node("Squeeze", &[&x, &a], &out, vec![]);
                Ok(Some(Val {
                    name: out,
                    nchw: false,
                }))
            }
            Op::ExpandDims { axis } => {
                let x = self.tf(input(0)?)?;
                let a = self.init_i64(&format!("{}/axes", n.name), &[*axis as i64]);
                let out = self.out_name(n, false);
                self.node("Unsqueeze", &[&x, &a], &out, vec![]);
                Ok(Some(Val {
                    name: out,
                    nchw: false,
                }))
            }
            Op::Deconv2d(d) => {
                let xw = input(0)?;
                let xs = self.shape(xw)?;
                let x = self.nchw(xw)?;
                let ws = self.shape(input(1)?)?;
                let &[kh, kw, co, ci] = ws.as_slice() else {
                    return Err(format!("filter of shape {ws:?}"));
                };
                let pads = d
                    .pads([xs[1], xs[2]], [kh, kw])
                    .ok_or("the deconvolution does not fit its input")?;
                let w = self.konst(input(1)?)?;
                let wc = crate::formats::layout::conv_oihw(&w, [kh, kw, co, ci], false, false);
                let wname = self.init_f32(&format!("{}/weights", n.name), &[ci, co, kh, kw], &wc);
                let mut ins = vec![x, wname];
                if let Some(&b) = n.inputs.get(2) {
                    let bias = self.konst(b)?;
                    ins.push(self.init_f32(&format!("{}/bias", n.name), &[bias.len()], &bias));
                }
                let attrs = vec![
                    attr_ints("kernel_shape", &ints(&[kh, kw])),
                    attr_ints("strides", &ints(&d.strides)),
                    attr_ints("dilations", &ints(&d.dilations)),
                    attr_ints(
                        "pads",
                        &ints(&[pads[0][0], pads[1][0], pads[0][1], pads[1][1]]),
                    ),
                ];
                let out = self.out_name(n, true);
                let refs: Vec<&str> = ins.iter().map(|s| s.as_str()).collect();
                self.node("ConvTranspose", &refs, &out, attrs);
                Ok(Some(Val {
                    name: out,
                    nchw: true,
                }))
            }
            Op::Resize(r) if r.mode == ResizeMode::Nearest => {
                // Nearest picks whole pixels: a Gather per spatial axis with
                // the source indices TF computes (its float32 `in / out`,
                // which rounds down for some factors: 41, 47, 55, ... under
                // the legacy rule), so every rule and factor is exact. ONNX
                // Resize recomputes the coordinates in its own arithmetic
                // (`dst / (out / in)`) and reads one pixel early there.
                let x = self.nchw(input(0)?)?;
                let &[_, h, w, _] = self.shape(input(0)?)?.as_slice() else {
                    return Err("a resize of a map that is not rank 4".into());
                };
                let mut cur = x;
                for (axis, (from, to)) in [(2i64, (h, r.size[0])), (3, (w, r.size[1]))] {
                    if from == to {
                        continue;
                    }
                    let idx: Vec<i64> = r
                        .nearest_sources(from, to)
                        .iter()
                        .map(|&i| i as i64)
                        .collect();
                    let idx = self.init_i64(&format!("{}/sources_{axis}", n.name), &idx);
                    let out = if axis == 3 || w == r.size[1] {
                        self.out_name(n, true)
                    } else {
                        self.fresh(&format!("{}/rows{NCHW_SUFFIX}", n.name))
                    };
                    self.node("Gather", &[&cur, &idx], &out, vec![attr_int("axis", axis)]);
                    cur = out;
                }
                if h == r.size[0] && w == r.size[1] {
                    let out = self.out_name(n, true);
                    self.node("Identity", &[&cur], &out, vec![]);
                    cur = out;
                }
                Ok(Some(Val {
                    name: cur,
                    nchw: true,
                }))
            }
            Op::Resize(r) => {
                // Resize-13 (linear) on the channel-first form: TF's
                // coordinate rules have ONNX names.
                let x = self.nchw(input(0)?)?;
                let s = self.shape(input(0)?)?;
                let coords = match (r.align_corners, r.half_pixel_centers) {
                    (true, _) => "align_corners",
                    (false, true) => "half_pixel",
                    (false, false) => "asymmetric",
                };
                let attrs = vec![
                    attr_str("coordinate_transformation_mode", coords),
                    attr_str("mode", "linear"),
                ];
                let sizes = self.init_i64(
                    &format!("{}/sizes", n.name),
                    &ints(&[s[0], s[3], r.size[0], r.size[1]]),
                );
                let out = self.out_name(n, true);
                self.node("Resize", &[&x, "", "", &sizes], &out, attrs);
                Ok(Some(Val {
                    name: out,
                    nchw: true,
                }))
            }
            Op::Tile { multiples } => {
                let x = self.tf(input(0)?)?;
                let reps = self.init_i64(&format!("{}/repeats", n.name), &ints(multiples));
                let out = self.out_name(n, false);
                self.node("Tile", &[&x, &reps], &out, vec![]);
                Ok(Some(Val {
                    name: out,
                    nchw: false,
                }))
            }
            Op::SpaceDepth(sd) => {
                // TF's depth order is ONNX's DCR (and SpaceToDepth's only).
                let x = self.nchw(input(0)?)?;
                let mut attrs = vec![attr_int("blocksize", sd.block as i64)];
                let op = if sd.to_space {
                    attrs.push(attr_str("mode", "DCR"));
                    "DepthToSpace"
                } else {
                    "SpaceToDepth"
                };
                let out = self.out_name(n, true);
                self.node(op, &[&x], &out, attrs);
                Ok(Some(Val {
                    name: out,
                    nchw: true,
                }))
            }
            Op::Pad { pads, value } => {
                let xw = input(0)?;
                let v = self.val(xw)?;
                let (x, p): (String, Vec<[usize; 2]>) = if v.nchw && pads.len() == 4 {
                    (v.name.clone(), vec![pads[0], pads[3], pads[1], pads[2]])
                } else {
                    (self.tf(xw)?, pads.clone())
                };
                let nchw = v.nchw && pads.len() == 4;
                let mut flat: Vec<i64> = p.iter().map(|q| q[0] as i64).collect();
                flat.extend(p.iter().map(|q| q[1] as i64));
                let pn = self.init_i64(&format!("{}/pads", n.name), &flat);
                let cv = self.init_f32(&format!("{}/value", n.name), &[], &[*value]);
                let out = self.out_name(n, nchw);
                self.node("Pad", &[&x, &pn, &cv], &out, vec![]);
                Ok(Some(Val { name: out, nchw }))
            }
            Op::Slice { begin, end } => {
                // Slice in the value's own order: a channel-first 4-D value
                // is sliced with its bounds permuted to (N, C, H, W).
                let xw = input(0)?;
                let v = self.val(xw)?;
                let nchw = v.nchw && begin.len() == 4;
                let (x, b, e) = if nchw {
                    let p = |a: &[usize]| vec![a[0], a[3], a[1], a[2]];
                    (v.name.clone(), p(begin), p(end))
                } else {
                    (self.tf(xw)?, begin.clone(), end.clone())
                };
                let axes: Vec<i64> = (0..b.len() as i64).collect();
                let bi: Vec<i64> = b.iter().map(|&v| v as i64).collect();
                let ei: Vec<i64> = e.iter().map(|&v| v as i64).collect();
                let starts = self.init_i64(&format!("{}/starts", n.name), &bi);
                let ends = self.init_i64(&format!("{}/ends", n.name), &ei);
                let ax = self.init_i64(&format!("{}/axes", n.name), &axes);
                let out = self.out_name(n, nchw);
                self.node("Slice", &[&x, &starts, &ends, &ax], &out, vec![]);
                Ok(Some(Val { name: out, nchw }))
            }
            Op::Transpose { perm } => {
                let x = self.tf(input(0)?)?;
                let out = self.out_name(n, false);
                self.node(
                    "Transpose",
                    &[&x],
                    &out,
                    vec![attr_ints("perm", &ints(perm))],
                );
                Ok(Some(Val {
                    name: out,
                    nchw: false,
                }))
            }
            Op::PRelu => {
                let xw = input(0)?;
                let v = self.val(xw)?;
                let alpha = self.konst(input(1)?)?;
                let shape = if v.nchw {
                    vec![alpha.len(), 1, 1]
                } else {
                    vec![alpha.len()]
                };
                let slope = self.init_f32(&format!("{}/alpha", n.name), &shape, &alpha);
                let out = self.out_name(n, v.nchw);
                self.node("PRelu", &[&v.name, &slope], &out, vec![]);
                Ok(Some(Val {
                    name: out,
                    nchw: v.nchw,
                }))
            }
        }
    }
}

/// Write the nodes the outputs need. Every node without an ONNX form is
/// reported, all at once.
pub fn emit(g: &Graph, opts: &OnnxOptions) -> Result<OnnxModel> {
    let mut em = Em {
        g,
        nodes: vec![],
        inits: vec![],
        vals: HashMap::new(),
        tf_form: HashMap::new(),
        nchw_form: HashMap::new(),
        consts: HashMap::new(),
        names: HashSet::new(),
        current: vec![],
    };
    // Inputs and outputs keep TF's names: claim them first so nothing
    // inside takes them.
    for &i in &g.inputs {
        em.names.insert(g.nodes[i].name.clone());
    }
    // An output is known by the TF tensor it carries (a folded batch norm's
    // name, not its conv's).
    let out_names: Vec<String> = g
        .outputs
        .iter()
        .map(
            |w| match (w.slot, g.nodes.get(w.node).and_then(|n| n.carries())) {
                (0, Some(t)) => t.to_string(),
                _ => g.wire_name(*w),
            },
        )
        .collect();
    let mut notes = vec![];
    crate::formats::walk_needed(g, "ONNX", |i| {
        let node = &g.nodes[i];
        em.current.clear();
        // An input's name was claimed above; take it back to name the value.
        if matches!(node.op, Op::Input) {
            em.names.remove(&node.name);
        }
        if let Some(v) = em.emit(i)? {
            em.vals.insert(Wire { node: i, slot: 0 }, v);
            let note = if node.absorbed.is_empty() {
                String::new()
            } else {
                format!("absorbed {}", node.absorbed.join(", "))
            };
            notes.push(crate::formats::LayerNote {
                node: node.name.clone(),
                op: node.op.kind().to_string(),
                layers: em.current.clone(),
                note,
            });
        }
        Ok(())
    })?;
    let mut graph = GraphProto::new();
    graph.name = "faceall".into();
    for &i in &g.inputs {
        let f = &g.nodes[i].outputs[0];
        graph
            .input
            .push(value_info(&g.nodes[i].name, f.dtype, &f.shape));
    }
    // Outputs: in TF's order, under TF's names.
    for (w, name) in g.outputs.iter().zip(&out_names) {
        let v = em
            .tf(*w)
            .map_err(|e| Error::Graph(format!("output '{name}': {e}")))?;
        if &v != name {
            em.names.remove(name);
            let out = em.fresh(name);
            if &out != name {
                return Err(Error::Graph(format!(
                    "output '{name}': the name is taken by another value"
                )));
            }
            em.node("Identity", &[&v], name, vec![]);
        }
        let f = g.fact(*w)?;
        graph.output.push(value_info(name, f.dtype, &f.shape));
    }
    graph.node = std::mem::take(&mut em.nodes);
    let total: usize = em.inits.iter().map(|t| t.raw_data.len()).sum();
    let mut external = vec![];
    if opts.external_data || total >= EXTERNAL_ABOVE {
        external = externalise(&mut em.inits, "");
    }
    graph.initializer = std::mem::take(&mut em.inits);
    let mut model = ModelProto::new();
    model.ir_version = IR_VERSION;
    let mut opset = OperatorSetIdProto::new();
    opset.domain = String::new();
    opset.version = OPSET;
    model.opset_import.push(opset);
    model.producer_name = "faceall".into();
    model.producer_version = env!("CARGO_PKG_VERSION").into();
    model.doc_string = format!(
        "Converted by faceall {} from {}: TF's inputs and outputs (NHWC); values named TF_TENSOR{NCHW_SUFFIX} hold that TF tensor channel-first.",
        env!("CARGO_PKG_VERSION"),
        if opts.source_name.is_empty() {
            "a TensorFlow graph"
        } else {
            &opts.source_name
        }
    );
    for (k, v) in [
        ("faceall.source", opts.source_name.as_str()),
        ("faceall.source_sha256", opts.source_sha256.as_str()),
    ] {
        if !v.is_empty() {
            let mut e = StringStringEntryProto::new();
            e.key = k.into();
            e.value = v.into();
            model.metadata_props.push(e);
        }
    }
    model.graph = MessageField::some(graph);
    Ok(OnnxModel {
        model,
        external,
        notes,
    })
}

/// The name the external data file gets beside `NAME.onnx`, set by the
/// writer once it knows NAME.
pub const EXTERNAL_LOCATION_KEY: &str = "location";

/// Move every initializer of 1 KiB or more to external data (location
/// filled in by `set_location`); returns the bytes in file order, each
/// starting at a multiple of 4096 (as ONNX advises, for mapping).
fn externalise(inits: &mut [TensorProto], location: &str) -> Vec<Bytes> {
    let mut out = vec![];
    let mut offset = 0usize;
    for t in inits.iter_mut() {
        if t.raw_data.len() < 1024 {
            continue;
        }
        let pad = offset.next_multiple_of(4096) - offset;
        if pad > 0 {
            out.push(Bytes::from(vec![0u8; pad]));
            offset += pad;
        }
        let data = std::mem::take(&mut t.raw_data);
        let len = data.len();
        t.data_location = EnumOrUnknown::new(DataLocation::EXTERNAL);
        for (k, v) in [
            (EXTERNAL_LOCATION_KEY, location.to_string()),
            ("offset", offset.to_string()),
            ("length", len.to_string()),
        ] {
            let mut e = StringStringEntryProto::new();
            e.key = k.into();
            e.value = v;
            t.external_data.push(e);
        }
        out.push(data);
        offset += len;
    }
    out
}

/// Point every external tensor at `location` (the data file's name).
pub fn set_location(model: &mut ModelProto, location: &str) {
    if let Some(g) = model.graph.as_mut() {
        for t in &mut g.initializer {
            for e in &mut t.external_data {
                if e.key == EXTERNAL_LOCATION_KEY {
                    e.value = location.into();
                }
            }
        }
    }
}

/// The binary model, streamed to `w`.
pub fn write_onnx(model: &ModelProto, w: &mut dyn std::io::Write) -> Result<()> {
    use protobuf::Message;
    model
        .write_to_writer(w)
        .map_err(|e| Error::Format(format!("encoding the ONNX model: {e}")))
}
