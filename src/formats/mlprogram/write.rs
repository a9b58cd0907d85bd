//! IR (after the passes) -> a Core ML ML Program: a `Model` holding an
//! `mlProgram` whose `main` function is one block of MIL operations of the
//! chosen opset, weights in Core ML's blob file.
//!
//! The choices, made so that the program means TF's graph on a device and
//! so that coremltools' own route off macOS (milproto loader -> MIL ->
//! NeuralNetwork -> onnxmltools -> onnxruntime) can run it too:
//!
//! - MIL's conv and pools are channel-first: a 4-D NHWC value is held NCHW,
//!   and a 4-D input or output is declared NCHW (Core ML's convention, as in
//!   the `.mlmodel`); no `transpose` at the boundary (the NeuralNetwork
//!   translation of `transpose` has no onnxmltools converter);
//! - a TF (N, K) value is held (N, K, 1, 1), the same element order: a
//!   MatMul by constant weights is a 1x1 `conv`, an L2 normalisation
//!   `l2_norm`, and a flatten of a spatial map is a rank-4 `reshape` to
//!   (N, C*H*W, 1, 1) with the MatMul's weight rows permuted to match (the
//!   translations of rank-2 `reshape` and of `linear` on rank 4 do not run
//!   there); only a declared (N, K) output is reshaped to rank 2;
//! - a value that must be read in TF's order (a flatten that is not followed
//!   by a MatMul, a Transpose, a MatMul of two activations) gets a MIL
//!   `transpose`: exact on a device, not runnable through onnxmltools;
//! - `--fp16`: every float constant is stored float16, the input is cast to
//!   fp16 first and each output cast back to fp32 last, so the program
//!   computes in fp16 as Core ML does on the GPU and Neural Engine;
//! - `l2_norm` computes x / sqrt(sum + eps) where TF computes
//!   x * rsqrt(max(sum, eps)): equal unless the squared norm is below eps.
//!
//! Variable names are TF's tensor names made identifiers ('/' -> '_'); each
//! operation's `name` attribute is the TF tensor name itself, with
//! `__nchw` (channel-first) or `__col` ((N, K) as (N, K, 1, 1)) when the
//! value is not in TF's shape, which is how faceall's executor finds them.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use protobuf::{EnumOrUnknown, MessageField};

use super::blob::{BlobType, BlobWriter};
use crate::error::{Error, Result};
use crate::formats::coreml::write::CoremlOptions;
use crate::ir::{
    resolve_axis, Activation, BinaryOp, DType, Graph, Layout, Node, Op, PoolKind, ReduceOp,
    ResizeMode, UnaryOp, Wire,
};
use crate::proto::coreml::{
    array_feature_type::ArrayDataType, feature_type, model, ArrayFeatureType, FeatureDescription,
    FeatureType, Metadata, Model, ModelDescription, StringEntry,
};
use crate::proto::mil::{
    argument::{binding, Binding},
    dimension::{self, ConstantDimension},
    tensor_value::{self, RepeatedBytes, RepeatedFloats, RepeatedInts, RepeatedStrings},
    value::{self, BlobFileValue, ImmediateValue},
    value_type, Argument, Block, DataType, Dimension, Function, NamedValueType, Operation, Program,
    TensorType, TensorValue, Value, ValueType,
};

/// The suffix of an operation's `name` attribute when it holds a 4-D NHWC
/// TF tensor channel-first.
pub const NCHW_SUFFIX: &str = "__nchw";
/// ... when it holds a TF (N, K) tensor as (N, K, 1, 1).
pub const COL_SUFFIX: &str = "__col";
/// The blob file, as the program names it.
pub const WEIGHT_FILE: &str = "@model_path/weights/weight.bin";
/// Float constants with more elements than this go to the blob file.
const INLINE_MAX: usize = 10;
/// The metadata key marking a 4-D input declared channel-first.
pub const INPUT_LAYOUT_KEY: &str = "faceall.input_layout";

/// The oldest OS an ML Program runs on: it fixes the specification version
/// and the MIL opset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Target {
    #[default]
    #[value(name = "iOS15")]
    Ios15,
    #[value(name = "iOS16")]
    Ios16,
    #[value(name = "iOS17")]
    Ios17,
    #[value(name = "iOS18")]
    Ios18,
}

impl Target {
    pub fn specification_version(self) -> i32 {
        match self {
            Target::Ios15 => 6,
            Target::Ios16 => 7,
            Target::Ios17 => 8,
            Target::Ios18 => 9,
        }
    }

    pub fn opset(self) -> &'static str {
        match self {
            Target::Ios15 => "CoreML5",
            Target::Ios16 => "CoreML6",
            Target::Ios17 => "CoreML7",
            Target::Ios18 => "CoreML8",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Target::Ios15 => "iOS15",
            Target::Ios16 => "iOS16",
            Target::Ios17 => "iOS17",
            Target::Ios18 => "iOS18",
        }
    }
}

/// What the caller chooses beyond the Core ML metadata.
#[derive(Debug, Clone, Default)]
pub struct MlProgramOptions {
    pub target: Target,
}

/// A written program: the model and its weight blobs.
pub struct MlProgram {
    pub model: Model,
    pub blobs: BlobWriter,
    /// Operations other than `const`.
    pub ops: usize,
    /// `const` operations.
    pub consts: usize,
    pub notes: Vec<crate::formats::LayerNote>,
}

/// How a MIL value holds the IR value (of TF shape `s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// TF's shape and order.
    Tf,
    /// 4-D NHWC held (N, C, H, W).
    Nchw,
    /// (N, K) held (N, K, 1, 1).
    Col,
    /// (N, H*W*C), the flatten of an NHWC map, held (N, C*H*W, 1, 1) in
    /// channel-first order.
    Flat([usize; 3]),
}

fn mil_shape(tf: &[usize], form: Form) -> Vec<usize> {
    match (form, tf) {
        (Form::Nchw, &[n, h, w, c]) => vec![n, c, h, w],
        (Form::Col | Form::Flat(_), &[n, k]) => vec![n, k, 1, 1],
        _ => tf.to_vec(),
    }
}

/// A 4-D NHWC shape whose NCHW form has the same element order.
fn order_kept(tf: &[usize]) -> bool {
    matches!(tf, &[_, h, w, c] if c == 1 || h * w == 1)
}

#[derive(Debug, Clone)]
struct Val {
    var: String,
    form: Form,
}

type R<T> = std::result::Result<T, String>;

/// `s` as a MIL identifier: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn ident(s: &str) -> String {
    let mut o: String = s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if o.is_empty() || o.starts_with(|c: char| c.is_ascii_digit()) {
        o.insert(0, '_');
    }
    o
}

fn dim(d: usize) -> Dimension {
    let mut c = ConstantDimension::new();
    c.size = d as u64;
    let mut x = Dimension::new();
    x.dimension = Some(dimension::Dimension::Constant(c));
    x
}

fn tensor_type(dt: DataType, shape: &[usize]) -> ValueType {
    let mut t = TensorType::new();
    t.dataType = EnumOrUnknown::new(dt);
    t.rank = shape.len() as i64;
    t.dimensions = shape.iter().map(|&d| dim(d)).collect();
    let mut v = ValueType::new();
    v.type_ = Some(value_type::Type::TensorType(t));
    v
}

fn immediate(dt: DataType, shape: &[usize], tv: tensor_value::Value) -> Value {
    let mut t = TensorValue::new();
    t.value = Some(tv);
    let mut iv = ImmediateValue::new();
    iv.value = Some(value::immediate_value::Value::Tensor(t));
    let mut v = Value::new();
    v.type_ = MessageField::some(tensor_type(dt, shape));
    v.value = Some(value::Value::ImmediateValue(iv));
    v
}

fn string_value(s: &str) -> Value {
    let mut r = RepeatedStrings::new();
    r.values = vec![s.to_string()];
    immediate(DataType::STRING, &[], tensor_value::Value::Strings(r))
}

fn named(name: &str, ty: ValueType) -> NamedValueType {
    let mut n = NamedValueType::new();
    n.name = name.to_string();
    n.type_ = MessageField::some(ty);
    n
}

fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
        .collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// NHWC axis -> NCHW axis.
fn to_nchw_axis(a: usize) -> usize {
    [0, 2, 3, 1][a.min(3)]
}

struct Em<'g> {
    g: &'g Graph,
    fp16: bool,
    ops: Vec<Operation>,
    blobs: BlobWriter,
    vals: HashMap<Wire, Val>,
    names: HashSet<String>,
    /// Output variable names, claimed until their value is written.
    claimed: HashSet<String>,
    tf_form: HashMap<Wire, String>,
    consts: usize,
    current: Vec<String>,
}

enum Arg<'a> {
    One(&'a str),
    Many(Vec<String>),
}

impl<'g> Em<'g> {
    /// The activations' MIL type.
    fn act(&self) -> DataType {
        if self.fp16 {
            DataType::FLOAT16
        } else {
            DataType::FLOAT32
        }
    }

    fn fresh(&mut self, base: &str) -> String {
        let base = ident(base);
        let mut name = base.clone();
        let mut k = 1;
        while self.names.contains(&name) || self.claimed.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.names.insert(name.clone());
        name
    }

    fn shape(&self, w: Wire) -> R<Vec<usize>> {
        self.g
            .fact(w)
            .map(|f| f.shape.clone())
            .map_err(|e| e.to_string())
    }

    /// An operation with one output `out` of `shape` (activation type).
    fn op(&mut self, ty: &str, args: Vec<(&str, Arg)>, out: &str, shape: &[usize], label: &str) {
        let dt = self.act();
        self.op_typed(ty, args, out, tensor_type(dt, shape), label);
    }

    fn op_typed(
        &mut self,
        ty: &str,
        args: Vec<(&str, Arg)>,
        out: &str,
        vt: ValueType,
        label: &str,
    ) {
        let mut o = Operation::new();
        o.type_ = ty.to_string();
        for (k, a) in args {
            let names: Vec<String> = match a {
                Arg::One(s) => vec![s.to_string()],
                Arg::Many(v) => v,
            };
            let mut arg = Argument::new();
            for n in names {
                let mut b = Binding::new();
                b.binding = Some(binding::Binding::Name(n));
                arg.arguments.push(b);
            }
            o.inputs.insert(k.to_string(), arg);
        }
        o.outputs.push(named(out, vt));
        o.attributes.insert(
            "name".into(),
            string_value(if label.is_empty() { out } else { label }),
        );
        if ty != "const" {
            self.current.push(format!("{ty} {out}"));
        }
        self.ops.push(o);
    }

    fn const_op(&mut self, base: &str, v: Value, vt: ValueType) -> String {
        let name = self.fresh(base);
        let mut o = Operation::new();
        o.type_ = "const".into();
        o.outputs.push(named(&name, vt));
        o.attributes.insert("val".into(), v);
        o.attributes.insert("name".into(), string_value(&name));
        self.ops.push(o);
        self.consts += 1;
        name
    }

    /// A float constant in the activations' type (float16 with --fp16).
    fn const_f(&mut self, base: &str, shape: &[usize], v: &[f32]) -> String {
        let dt = self.act();
        let vt = tensor_type(dt, shape);
        let value = if v.len() > INLINE_MAX {
            let (ty, bytes) = if self.fp16 {
                (BlobType::F16, f16_bytes(v))
            } else {
                (BlobType::F32, f32_bytes(v))
            };
            self.blob_value(dt, shape, ty, Bytes::from(bytes))
        } else if self.fp16 {
            let mut r = RepeatedBytes::new();
            r.values = Bytes::from(f16_bytes(v));
            immediate(dt, shape, tensor_value::Value::Bytes(r))
        } else {
            let mut r = RepeatedFloats::new();
            r.values = v.to_vec();
            immediate(dt, shape, tensor_value::Value::Floats(r))
        };
        self.const_op(base, value, vt)
    }

    /// A constant of `count` values that `fill` computes from the graph:
    /// a large one is a blob filled as the weight file is written (the
    /// writer never holds the re-laid-out weights of the whole model), a
    /// small one is computed now and written inline.
    fn const_later(
        &mut self,
        base: &str,
        shape: &[usize],
        count: usize,
        fill: impl Fn(&Graph, &mut crate::formats::layout::Sink<'_>) -> R<()> + 'static,
    ) -> R<String> {
        if count <= INLINE_MAX {
            let v = crate::formats::splice::collect(&fill, self.g)?;
            return Ok(self.const_f(base, shape, &v));
        }
        let dt = self.act();
        let ty = if self.fp16 {
            BlobType::F16
        } else {
            BlobType::F32
        };
        let data = super::blob::BlobData::Later {
            count,
            fill: Box::new(fill),
        };
        let value = self.blob_value(dt, shape, ty, data);
        Ok(self.const_op(base, value, tensor_type(dt, shape)))
    }

    /// A float32 constant whose bytes the graph already holds (no copy).
    fn const_bytes(&mut self, base: &str, shape: &[usize], w: Wire) -> R<String> {
        let t = self
            .g
            .const_of(w)
            .ok_or_else(|| format!("'{}' must be a constant", self.g.wire_name(w)))?;
        if self.fp16 || t.len() <= INLINE_MAX || t.dtype() != DType::F32 {
            let v = t.as_f32().map_err(|e| e.to_string())?;
            return Ok(self.const_f(base, shape, &v));
        }
        let bytes = match t.data() {
            crate::ir::Data::Raw(b) => b.clone(),
            _ => Bytes::from(f32_bytes(&t.as_f32().map_err(|e| e.to_string())?)),
        };
        let v = self.blob_value(DataType::FLOAT32, shape, BlobType::F32, bytes);
        Ok(self.const_op(base, v, tensor_type(DataType::FLOAT32, shape)))
    }

    fn blob_value(
        &mut self,
        dt: DataType,
        shape: &[usize],
        ty: BlobType,
        data: impl Into<super::blob::BlobData>,
    ) -> Value {
        let offset = self.blobs.add(ty, data);
        let mut b = BlobFileValue::new();
        b.fileName = WEIGHT_FILE.into();
        b.offset = offset;
        let mut v = Value::new();
        v.type_ = MessageField::some(tensor_type(dt, shape));
        v.value = Some(value::Value::BlobFileValue(b));
        v
    }

    fn const_ints(&mut self, base: &str, v: &[i64]) -> String {
        self.const_ints_shaped(base, v, &[v.len()])
    }

    fn const_ints_shaped(&mut self, base: &str, v: &[i64], shape: &[usize]) -> String {
        let mut r = RepeatedInts::new();
        r.values = v.iter().map(|&x| x as i32).collect();
        let value = immediate(DataType::INT32, shape, tensor_value::Value::Ints(r));
        self.const_op(base, value, tensor_type(DataType::INT32, shape))
    }

    fn const_int(&mut self, base: &str, v: i64) -> String {
        self.const_ints_shaped(base, &[v], &[])
    }

    fn const_bool(&mut self, base: &str, b: bool) -> String {
        let mut r = tensor_value::RepeatedBools::new();
        r.values = vec![b];
        let value = immediate(DataType::BOOL, &[], tensor_value::Value::Bools(r));
        self.const_op(base, value, tensor_type(DataType::BOOL, &[]))
    }

    fn const_str(&mut self, base: &str, s: &str) -> String {
        self.const_op(base, string_value(s), tensor_type(DataType::STRING, &[]))
    }

    fn konst(&self, w: Wire) -> R<std::borrow::Cow<'g, [f32]>> {
        crate::formats::layout::const_f32(self.g, w)
    }

    fn val(&self, w: Wire) -> R<Val> {
        self.vals.get(&w).cloned().ok_or_else(|| {
            if self.g.const_of(w).is_some() {
                format!(
                    "constant '{}' used as an activation (run the fold_constants pass)",
                    self.g.wire_name(w)
                )
            } else {
                format!(
                    "'{}' was not written before it is read",
                    self.g.wire_name(w)
                )
            }
        })
    }

    /// `w` in TF's shape and order.
    fn tf(&mut self, w: Wire) -> R<String> {
        if self.g.const_of(w).is_some() {
            let s = self.shape(w)?;
            let base = format!("{}_const", self.g.nodes[w.node].name);
            return self.const_bytes(&base, &s, w);
        }
        let v = self.val(w)?;
        let s = self.shape(w)?;
        if v.form == Form::Tf {
            return Ok(v.var);
        }
        if let Some(n) = self.tf_form.get(&w) {
            return Ok(n.clone());
        }
        let base = format!("{}_tf", v.var);
        let out = match v.form {
            Form::Tf => unreachable!("handled above"),
            Form::Nchw if order_kept(&s) => self.reshape(&v.var, &s, &base),
            Form::Col => self.reshape(&v.var, &s, &base),
            Form::Nchw => self.transpose(&v.var, &mil_shape(&s, Form::Nchw), &[0, 2, 3, 1], &base),
            Form::Flat([h, wd, c]) => {
                let n = s[0];
                let x = self.reshape(&v.var, &[n, c, h, wd], &format!("{base}_chw"));
                let t = self.transpose(&x, &[n, c, h, wd], &[0, 2, 3, 1], &format!("{base}_hwc"));
                self.reshape(&t, &s, &base)
            }
        };
        self.tf_form.insert(w, out.clone());
        Ok(out)
    }

    fn reshape(&mut self, x: &str, to: &[usize], base: &str) -> String {
        let out = self.fresh(base);
        let shape = self.const_ints(
            &format!("{out}_shape"),
            &to.iter().map(|&d| d as i64).collect::<Vec<_>>(),
        );
        self.op(
            "reshape",
            vec![("x", Arg::One(x)), ("shape", Arg::One(&shape))],
            &out,
            to,
            "",
        );
        out
    }

    fn transpose(&mut self, x: &str, from: &[usize], perm: &[usize], base: &str) -> String {
        let out = self.fresh(base);
        let to: Vec<usize> = perm.iter().map(|&p| from[p]).collect();
        let p = self.const_ints(
            &format!("{out}_perm"),
            &perm.iter().map(|&d| d as i64).collect::<Vec<_>>(),
        );
        self.op(
            "transpose",
            vec![("x", Arg::One(x)), ("perm", Arg::One(&p))],
            &out,
            &to,
            "",
        );
        out
    }

    /// A 4-D NHWC `w` channel-first.
    fn nchw(&mut self, w: Wire) -> R<String> {
        let s = self.shape(w)?;
        let &[n, h, wd, c] = s.as_slice() else {
            return Err(format!("expects a 4-D activation, not {s:?}"));
        };
        if let Some(t) = self.g.const_of(w) {
            let x = t.as_f32().map_err(|e| e.to_string())?;
            let v = crate::runtime::kernels::nhwc_to_nchw(&x, [n, h, wd, c]);
            let base = format!("{}_nchw", self.g.nodes[w.node].name);
            return Ok(self.const_f(&base, &[n, c, h, wd], &v));
        }
        let v = self.val(w)?;
        match v.form {
            Form::Nchw => Ok(v.var),
            _ if order_kept(&s) => {
                let x = self.tf(w)?;
                Ok(self.reshape(&x, &[n, c, h, wd], &format!("{}_nchw", v.var)))
            }
            _ => {
                let x = self.tf(w)?;
                Ok(self.transpose(&x, &s, &[0, 3, 1, 2], &format!("{}_nchw", v.var)))
            }
        }
    }

    /// A TF (N, K) `w` as (N, K, 1, 1).
    fn col(&mut self, w: Wire) -> R<String> {
        let s = self.shape(w)?;
        let &[n, k] = s.as_slice() else {
            return Err(format!("expects an (N, K) value, not {s:?}"));
        };
        if self.g.const_of(w).is_some() {
            let v = self.konst(w)?.into_owned();
            let base = format!("{}_col", self.g.nodes[w.node].name);
            return Ok(self.const_f(&base, &[n, k, 1, 1], &v));
        }
        let v = self.val(w)?;
        match v.form {
            Form::Col => Ok(v.var),
            _ => {
                let x = self.tf(w)?;
                Ok(self.reshape(&x, &[n, k, 1, 1], &format!("{}_col", v.var)))
            }
        }
    }

    /// An operand of an elementwise op whose output has TF shape `out` and
    /// is held in `form`: constants are laid out (and broadcast) to match,
    /// scalars stay scalars.
    fn operand(&mut self, w: Wire, out: &[usize], form: Form) -> R<String> {
        let s = self.shape(w)?;
        if let Some(t) = self.g.const_of(w) {
            let v = t.as_f32().map_err(|e| e.to_string())?.into_owned();
            let base = format!("{}_const", self.g.nodes[w.node].name);
            if v.len() == 1 {
                return Ok(self.const_f(&base, &[], &v));
            }
            // Broadcast against the trailing TF axes, then lay out.
            let mut s4 = vec![1; out.len().saturating_sub(s.len())];
            s4.extend(&s);
            return match form {
                Form::Nchw => {
                    let &[a, b, c, d] = s4.as_slice() else {
                        return Err(format!("a constant of shape {s:?} against {out:?}"));
                    };
                    let x = crate::runtime::kernels::nhwc_to_nchw(&v, [a, b, c, d]);
                    Ok(self.const_f(&base, &[a, d, b, c], &x))
                }
                Form::Col => Ok(self.const_f(&base, &mil_shape(&s4, Form::Col), &v)),
                _ => Ok(self.const_f(&base, &s4, &v)),
            };
        }
        match form {
            Form::Nchw if s.len() == 4 => self.nchw(w),
            Form::Col if s.len() == 2 => self.col(w),
            Form::Tf => self.tf(w),
            _ => Err(format!(
                "an activation of shape {s:?} broadcast against {out:?}"
            )),
        }
    }

    /// The form of an elementwise op over `inputs` with TF output shape `out`.
    fn elementwise_form(&self, inputs: &[Wire], out: &[usize]) -> Form {
        let forms: Vec<Form> = inputs
            .iter()
            .filter_map(|w| self.vals.get(w).map(|v| v.form))
            .collect();
        if out.len() == 4 && forms.contains(&Form::Nchw) {
            Form::Nchw
        } else if out.len() == 2
            && forms.contains(&Form::Col)
            && !forms.iter().any(|f| matches!(f, Form::Flat(_)))
        {
            Form::Col
        } else {
            Form::Tf
        }
    }

    /// The variable and label for node `n`'s value in `form`.
    fn out_name(&mut self, n: &Node, form: Form) -> (String, String) {
        let tensor = n
            .carries()
            .map(str::to_string)
            .unwrap_or_else(|| format!("{}/folded", n.name));
        let base = ident(&tensor);
        // A declared output whose value needs no conversion takes its name.
        let out_ready = !self.fp16
            && self.claimed.contains(&base)
            && matches!(
                (form, n.outputs[0].shape.len()),
                (Form::Nchw, 4) | (Form::Tf, _)
            );
        let var = if out_ready {
            self.claimed.remove(&base);
            self.fresh(&base)
        } else {
            self.fresh(&base)
        };
        let label = match form {
            Form::Nchw => format!("{tensor}{NCHW_SUFFIX}"),
            Form::Col => format!("{tensor}{COL_SUFFIX}"),
            Form::Flat(_) => format!("{tensor}__flat"),
            Form::Tf => tensor,
        };
        (var, label)
    }

    fn pads(
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
        Ok(vec![t as i64, b as i64, l as i64, r as i64])
    }

    fn unary(&mut self, ty: &str, x: &str, out: &str, shape: &[usize], label: &str) {
        self.op(ty, vec![("x", Arg::One(x))], out, shape, label);
    }

    fn binary_op(&mut self, ty: &str, x: &str, y: &str, out: &str, shape: &[usize], label: &str) {
        self.op(
            ty,
            vec![("x", Arg::One(x)), ("y", Arg::One(y))],
            out,
            shape,
            label,
        );
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
        let done = |var: String, form: Form| Ok(Some(Val { var, form }));
        match &n.op {
            Op::Const(_) => Ok(None),
            Op::Input => Err("inputs are declared by the function".into()),
            Op::Identity => Ok(Some(self.val(input(0)?)?)),
            Op::Switch | Op::Merge => {
                Err("TF1 control flow has no MIL form (run the resolve_switch pass)".into())
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
                let (oshape, groups) = if c.depthwise {
                    ([ci * co, 1, kh, kw], ci)
                } else {
                    ([co, ci, kh, kw], 1)
                };
                let [ha, wa, _] = c.layout.hwc();
                let pad = self.pads(
                    &c.padding,
                    [xs[ha], xs[wa]],
                    [kh, kw],
                    c.strides,
                    c.dilations,
                )?;
                let form = match c.layout {
                    Layout::Nhwc => Form::Nchw,
                    Layout::Nchw => Form::Tf,
                };
                let (out, label) = self.out_name(n, form);
                let (w_wire, depthwise) = (input(1)?, c.depthwise);
                let weight = self.const_later(
                    &format!("{out}_weight"),
                    &oshape,
                    kh * kw * ci * co,
                    crate::formats::layout::conv_fill(w_wire, [kh, kw, ci, co], depthwise, false),
                )?;
                let mut args = vec![("x", Arg::One(&x)), ("weight", Arg::One(&weight))];
                let bias = match n.inputs.get(2) {
                    Some(&b) => Some(self.const_bytes(&format!("{out}_bias"), &[oshape[0]], b)?),
                    None => None,
                };
                if let Some(b) = &bias {
                    args.push(("bias", Arg::One(b)));
                }
                let strides = self.const_ints(
                    &format!("{out}_strides"),
                    &[c.strides[0] as i64, c.strides[1] as i64],
                );
                let dil = self.const_ints(
                    &format!("{out}_dilations"),
                    &[c.dilations[0] as i64, c.dilations[1] as i64],
                );
                let pad_type = self.const_str(&format!("{out}_pad_type"), "custom");
                let pad = self.const_ints(&format!("{out}_pad"), &pad);
                let groups = self.const_int(&format!("{out}_groups"), groups as i64);
                args.extend([
                    ("strides", Arg::One(&strides)),
                    ("pad_type", Arg::One(&pad_type)),
                    ("pad", Arg::One(&pad)),
                    ("dilations", Arg::One(&dil)),
                    ("groups", Arg::One(&groups)),
                ]);
                let shape = mil_shape(&out_shape, form);
                self.op("conv", args, &out, &shape, &label);
                done(out, form)
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
                let (out, label) = self.out_name(n, Form::Nchw);
                let w_wire = input(1)?;
                let weight = self.const_later(
                    &format!("{out}_weight"),
                    &[ci, co, kh, kw],
                    kh * kw * co * ci,
                    crate::formats::layout::conv_fill(w_wire, [kh, kw, co, ci], false, false),
                )?;
                let mut args = vec![("x", Arg::One(&x)), ("weight", Arg::One(&weight))];
                let bias = match n.inputs.get(2) {
                    Some(&b) => Some(self.const_bytes(&format!("{out}_bias"), &[co], b)?),
                    None => None,
                };
                if let Some(b) = &bias {
                    args.push(("bias", Arg::One(b)));
                }
                let ints = |v: [usize; 2]| [v[0] as i64, v[1] as i64];
                let strides = self.const_ints(&format!("{out}_strides"), &ints(d.strides));
                let dil = self.const_ints(&format!("{out}_dilations"), &ints(d.dilations));
                let pad_type = self.const_str(&format!("{out}_pad_type"), "custom");
                let pad = self.const_ints(
                    &format!("{out}_pad"),
                    &[
                        pads[0][0] as i64,
                        pads[0][1] as i64,
                        pads[1][0] as i64,
                        pads[1][1] as i64,
                    ],
                );
                let groups = self.const_int(&format!("{out}_groups"), 1);
                args.extend([
                    ("strides", Arg::One(&strides)),
                    ("pad_type", Arg::One(&pad_type)),
                    ("pad", Arg::One(&pad)),
                    ("dilations", Arg::One(&dil)),
                    ("groups", Arg::One(&groups)),
                ]);
                let shape = mil_shape(&out_shape, Form::Nchw);
                self.op("conv_transpose", args, &out, &shape, &label);
                done(out, Form::Nchw)
            }
            Op::Pool(p) => {
                let xw = input(0)?;
                let xs = self.shape(xw)?;
                let x = match p.layout {
                    Layout::Nhwc => self.nchw(xw)?,
                    Layout::Nchw => self.tf(xw)?,
                };
                let [ha, wa, _] = p.layout.hwc();
                let pad = self.pads(&p.padding, [xs[ha], xs[wa]], p.ksize, p.strides, [1, 1])?;
                let form = match p.layout {
                    Layout::Nhwc => Form::Nchw,
                    Layout::Nchw => Form::Tf,
                };
                let (out, label) = self.out_name(n, form);
                let k = self.const_ints(
                    &format!("{out}_kernel_sizes"),
                    &[p.ksize[0] as i64, p.ksize[1] as i64],
                );
                let s = self.const_ints(
                    &format!("{out}_strides"),
                    &[p.strides[0] as i64, p.strides[1] as i64],
                );
                let pt = self.const_str(&format!("{out}_pad_type"), "custom");
                let pad = self.const_ints(&format!("{out}_pad"), &pad);
                let ceil = self.const_bool(&format!("{out}_ceil_mode"), false);
                let mut args = vec![
                    ("x", Arg::One(&x)),
                    ("kernel_sizes", Arg::One(&k)),
                    ("strides", Arg::One(&s)),
                    ("pad_type", Arg::One(&pt)),
                    ("pad", Arg::One(&pad)),
                    ("ceil_mode", Arg::One(&ceil)),
                ];
                let excl;
                let ty = match p.kind {
                    PoolKind::Max => "max_pool",
                    PoolKind::Avg => {
                        // TF averages over the window's valid part only.
                        excl =
                            self.const_bool(&format!("{out}_exclude_padding_from_average"), true);
                        args.push(("exclude_padding_from_average", Arg::One(&excl)));
                        "avg_pool"
                    }
                };
                let shape = mil_shape(&out_shape, form);
                self.op(ty, args, &out, &shape, &label);
                done(out, form)
            }
            Op::BiasAdd { layout } => {
                let xw = input(0)?;
                let v = self.val(xw)?;
                let b = input(1)?;
                let blen = self.konst(b)?.len();
                let (x, bshape, form) = match (layout, v.form, out_shape.len()) {
                    (Layout::Nhwc, _, 4) => (self.nchw(xw)?, vec![1, blen, 1, 1], Form::Nchw),
                    (Layout::Nchw, _, 4) => (self.tf(xw)?, vec![1, blen, 1, 1], Form::Tf),
                    (_, Form::Col, 2) => (v.var.clone(), vec![1, blen, 1, 1], Form::Col),
                    _ => (self.tf(xw)?, vec![blen], Form::Tf),
                };
                let (out, label) = self.out_name(n, form);
                let bias = self.const_bytes(&format!("{out}_bias"), &bshape, b)?;
                let shape = mil_shape(&out_shape, form);
                self.binary_op("add", &x, &bias, &out, &shape, &label);
                done(out, form)
            }
            Op::BatchNorm(bn) => {
                if bn.training {
                    return Err("a training-mode batch norm has no inference form".into());
                }
                let xw = input(0)?;
                let v = self.val(xw)?;
                let (x, form) = match (bn.layout, v.form, out_shape.len()) {
                    (Layout::Nhwc, _, 4) => (self.nchw(xw)?, Form::Nchw),
                    (Layout::Nchw, _, 4) => (self.tf(xw)?, Form::Tf),
                    (_, _, 2) => (self.col(xw)?, Form::Col),
                    _ => return Err(format!("a batch norm over shape {out_shape:?}")),
                };
                let (out, label) = self.out_name(n, form);
                let mut names = vec![];
                for (i, what) in ["gamma", "beta", "mean", "variance"].iter().enumerate() {
                    let w = input(i + 1)?;
                    let len = self.konst(w)?.len();
                    names.push(self.const_bytes(&format!("{out}_{what}"), &[len], w)?);
                }
                let eps = self.const_f(&format!("{out}_epsilon"), &[], &[bn.epsilon]);
                let shape = mil_shape(&out_shape, form);
                self.op(
                    "batch_norm",
                    vec![
                        ("x", Arg::One(&x)),
                        ("mean", Arg::One(&names[2])),
                        ("variance", Arg::One(&names[3])),
                        ("gamma", Arg::One(&names[0])),
                        ("beta", Arg::One(&names[1])),
                        ("epsilon", Arg::One(&eps)),
                    ],
                    &out,
                    &shape,
                    &label,
                );
                done(out, form)
            }
            Op::Activation(a) => {
                let v = self.val(input(0)?)?;
                let (out, label) = self.out_name(n, v.form);
                let shape = mil_shape(&out_shape, v.form);
                match a {
                    Activation::Relu => self.unary("relu", &v.var, &out, &shape, &label),
                    Activation::Relu6 => self.unary("relu6", &v.var, &out, &shape, &label),
                    Activation::Sigmoid => self.unary("sigmoid", &v.var, &out, &shape, &label),
                    Activation::Tanh => self.unary("tanh", &v.var, &out, &shape, &label),
                    Activation::LeakyRelu { alpha } => {
                        let alpha = self.const_f(&format!("{out}_alpha"), &[], &[*alpha]);
                        self.op(
                            "leaky_relu",
                            vec![("x", Arg::One(&v.var)), ("alpha", Arg::One(&alpha))],
                            &out,
                            &shape,
                            &label,
                        );
                    }
                    Activation::Gelu { approximate } => {
                        let mode = if *approximate {
                            "TANH_APPROXIMATION"
                        } else {
                            "EXACT"
                        };
                        let mode = self.const_str(&format!("{out}_mode"), mode);
                        self.op(
                            "gelu",
                            vec![("x", Arg::One(&v.var)), ("mode", Arg::One(&mode))],
                            &out,
                            &shape,
                            &label,
                        );
                    }
                    Activation::Elu => {
                        let alpha = self.const_f(&format!("{out}_alpha"), &[], &[1.0]);
                        self.op(
                            "elu",
                            vec![("x", Arg::One(&v.var)), ("alpha", Arg::One(&alpha))],
                            &out,
                            &shape,
                            &label,
                        );
                    }
                }
                done(out, v.form)
            }
            Op::Softmax => {
                let xw = input(0)?;
                let v = self.val(xw)?;
                let (x, form, axis) = match v.form {
                    Form::Nchw | Form::Col => (v.var.clone(), v.form, 1),
                    _ => (self.tf(xw)?, Form::Tf, -1),
                };
                let (out, label) = self.out_name(n, form);
                let ax = self.const_int(&format!("{out}_axis"), axis);
                let shape = mil_shape(&out_shape, form);
                self.op(
                    "softmax",
                    vec![("x", Arg::One(&x)), ("axis", Arg::One(&ax))],
                    &out,
                    &shape,
                    &label,
                );
                done(out, form)
            }
            Op::Concat { axis } => {
                let form = self.elementwise_form(&n.inputs, &out_shape);
                let mut ins = vec![];
                for &w in &n.inputs {
                    ins.push(self.operand(w, &out_shape, form)?);
                }
                let axis = match form {
                    Form::Nchw => to_nchw_axis(*axis),
                    _ => *axis,
                };
                let (out, label) = self.out_name(n, form);
                let ax = self.const_int(&format!("{out}_axis"), axis as i64);
                let il = self.const_bool(&format!("{out}_interleave"), false);
                let shape = mil_shape(&out_shape, form);
                self.op(
                    "concat",
                    vec![
                        ("values", Arg::Many(ins)),
                        ("axis", Arg::One(&ax)),
                        ("interleave", Arg::One(&il)),
                    ],
                    &out,
                    &shape,
                    &label,
                );
                done(out, form)
            }
            Op::Binary(b) => {
                let form = self.elementwise_form(&n.inputs, &out_shape);
                let x = self.operand(input(0)?, &out_shape, form)?;
                let y = self.operand(input(1)?, &out_shape, form)?;
                let ty = match b {
                    BinaryOp::Add => "add",
                    BinaryOp::Sub => "sub",
                    BinaryOp::Mul => "mul",
                    BinaryOp::Div => "real_div",
                    BinaryOp::Max => "maximum",
                    BinaryOp::Min => "minimum",
                };
                let (out, label) = self.out_name(n, form);
                let shape = mil_shape(&out_shape, form);
                self.binary_op(ty, &x, &y, &out, &shape, &label);
                done(out, form)
            }
            Op::Unary(u) => {
                let v = self.val(input(0)?)?;
                let (out, label) = self.out_name(n, v.form);
                let shape = mil_shape(&out_shape, v.form);
                match u {
                    UnaryOp::Square => self.unary("square", &v.var, &out, &shape, &label),
                    UnaryOp::Sqrt => self.unary("sqrt", &v.var, &out, &shape, &label),
                    UnaryOp::Exp => self.unary("exp", &v.var, &out, &shape, &label),
                    UnaryOp::Erf => self.unary("erf", &v.var, &out, &shape, &label),
                    UnaryOp::Erfc => {
                        // MIL has no erfc: 1 - erf(x), exact to an absolute
                        // 6e-8 (the far right tail rounds to 0).
                        let e = format!("{out}_erf");
                        self.unary("erf", &v.var, &e, &shape, &format!("{label}/erf"));
                        let one = self.const_f(&format!("{out}_one"), &[], &[1.0]);
                        self.binary_op("sub", &one, &e, &out, &shape, &label);
                    }
                    UnaryOp::Pow { exponent } => {
                        let y = self.const_f(&format!("{out}_exponent"), &[], &[*exponent]);
                        self.binary_op("pow", &v.var, &y, &out, &shape, &label);
                    }
                    UnaryOp::Log => {
                        // MIL's log adds epsilon (default 1e-45); TF adds none.
                        let eps = self.const_f(&format!("{out}_epsilon"), &[], &[0.0]);
                        self.op(
                            "log",
                            vec![("x", Arg::One(&v.var)), ("epsilon", Arg::One(&eps))],
                            &out,
                            &shape,
                            &label,
                        );
                    }
                    UnaryOp::Rsqrt => {
                        // MIL's rsqrt adds epsilon (default 1e-12); TF adds none.
                        let eps = self.const_f(&format!("{out}_epsilon"), &[], &[0.0]);
                        self.op(
                            "rsqrt",
                            vec![("x", Arg::One(&v.var)), ("epsilon", Arg::One(&eps))],
                            &out,
                            &shape,
                            &label,
                        );
                    }
                    UnaryOp::Neg => {
                        let m = self.const_f(&format!("{out}_minus_one"), &[], &[-1.0]);
                        self.binary_op("mul", &v.var, &m, &out, &shape, &label);
                    }
                }
                done(out, v.form)
            }
            Op::Reduce {
                reduce,
                axes,
                keep_dims,
            } => {
                let xw = input(0)?;
                let v = self.val(xw)?;
                let xs = self.shape(xw)?;
                let ty = match reduce {
                    ReduceOp::Sum => "reduce_sum",
                    ReduceOp::Mean => "reduce_mean",
                };
                // Without keep_dims, a channel-first reduction whose kept
                // result has TF's order (what is left is C alone, or H and W
                // are gone) is one reduce and at most one reshape.
                let mut kept = xs.clone();
                for &a in axes {
                    if let Some(d) = kept.get_mut(a) {
                        *d = 1;
                    }
                }
                if v.form == Form::Nchw && !*keep_dims && order_kept(&kept) {
                    let form = if out_shape.len() == 2 {
                        Form::Col
                    } else {
                        Form::Tf
                    };
                    let to = mil_shape(&out_shape, form);
                    let red = mil_shape(&kept, Form::Nchw);
                    let (out, label) = self.out_name(n, form);
                    let mid = if to == red {
                        out.clone()
                    } else {
                        self.fresh(&format!("{out}_kept"))
                    };
                    let mil_axes: Vec<i64> = axes.iter().map(|&a| to_nchw_axis(a) as i64).collect();
                    let ax = self.const_ints(&format!("{mid}_axes"), &mil_axes);
                    let kd = self.const_bool(&format!("{mid}_keep_dims"), true);
                    let lab = if to == red {
                        label.clone()
                    } else {
                        String::new()
                    };
                    self.op(
                        ty,
                        vec![
                            ("x", Arg::One(&v.var)),
                            ("axes", Arg::One(&ax)),
                            ("keep_dims", Arg::One(&kd)),
                        ],
                        &mid,
                        &red,
                        &lab,
                    );
                    if to != red {
                        let sh = self.const_ints(
                            &format!("{out}_shape"),
                            &to.iter().map(|&d| d as i64).collect::<Vec<_>>(),
                        );
                        self.op(
                            "reshape",
                            vec![("x", Arg::One(&mid)), ("shape", Arg::One(&sh))],
                            &out,
                            &to,
                            &label,
                        );
                    }
                    return done(out, form);
                }
                // Over H and W of a channel-first map: keep the axes and the
                // result is the (N, C) value as (N, C, 1, 1).
                let (x, mil_axes, keep, form) = match v.form {
                    Form::Nchw if *keep_dims => (
                        v.var.clone(),
                        axes.iter().map(|&a| to_nchw_axis(a)).collect::<Vec<_>>(),
                        true,
                        Form::Nchw,
                    ),
                    Form::Col if *keep_dims => (v.var.clone(), axes.clone(), true, Form::Col),
                    _ => (self.tf(xw)?, axes.clone(), *keep_dims, Form::Tf),
                };
                let (out, label) = self.out_name(n, form);
                let ax = self.const_ints(
                    &format!("{out}_axes"),
                    &mil_axes.iter().map(|&a| a as i64).collect::<Vec<_>>(),
                );
                let kd = self.const_bool(&format!("{out}_keep_dims"), keep);
                let shape = mil_shape(&out_shape, form);
                self.op(
                    ty,
                    vec![
                        ("x", Arg::One(&x)),
                        ("axes", Arg::One(&ax)),
                        ("keep_dims", Arg::One(&kd)),
                    ],
                    &out,
                    &shape,
                    &label,
                );
                done(out, form)
            }
            Op::MatMul {
                transpose_a,
                transpose_b,
            } => {
                let aw = input(0)?;
                let bw = input(1)?;
                let (sa, sb) = (self.shape(aw)?, self.shape(bw)?);
                if let (false, Some(_), 2, 2) = (*transpose_a, g.const_of(bw), sa.len(), sb.len()) {
                    // (N, K) x const (K, M): a 1x1 convolution of (N, K, 1, 1).
                    let v = self.val(aw)?;
                    let (x, flat) = match v.form {
                        Form::Flat(hwc) => (v.var.clone(), Some(hwc)),
                        _ => (self.col(aw)?, None),
                    };
                    let (k, m) = crate::formats::layout::inner_product_dims(&sb, *transpose_b);
                    let (out, label) = self.out_name(n, Form::Col);
                    let tb = *transpose_b;
                    let weight = self.const_later(
                        &format!("{out}_weight"),
                        &[m, k, 1, 1],
                        k * m,
                        crate::formats::layout::inner_product_fill(bw, k, m, tb, flat),
                    )?;
                    let mut args = vec![("x", Arg::One(&x)), ("weight", Arg::One(&weight))];
                    let bias = match n.inputs.get(2) {
                        Some(&b) => Some(self.const_bytes(&format!("{out}_bias"), &[m], b)?),
                        None => None,
                    };
                    if let Some(b) = &bias {
                        args.push(("bias", Arg::One(b)));
                    }
                    let one = self.const_ints(&format!("{out}_strides"), &[1, 1]);
                    let dil = self.const_ints(&format!("{out}_dilations"), &[1, 1]);
                    let pt = self.const_str(&format!("{out}_pad_type"), "valid");
                    let groups = self.const_int(&format!("{out}_groups"), 1);
                    args.extend([
                        ("strides", Arg::One(&one)),
                        ("pad_type", Arg::One(&pt)),
                        ("dilations", Arg::One(&dil)),
                        ("groups", Arg::One(&groups)),
                    ]);
                    let shape = mil_shape(&out_shape, Form::Col);
                    self.op("conv", args, &out, &shape, &label);
                    return done(out, Form::Col);
                }
                let a = self.tf(aw)?;
                let b = self.tf(bw)?;
                let (out, label) = self.out_name(n, Form::Tf);
                let ta = self.const_bool(&format!("{out}_transpose_x"), *transpose_a);
                let tb = self.const_bool(&format!("{out}_transpose_y"), *transpose_b);
                let mm = if n.inputs.len() > 2 {
                    self.fresh(&format!("{out}_matmul"))
                } else {
                    out.clone()
                };
                let lab = if n.inputs.len() > 2 {
                    String::new()
                } else {
                    label.clone()
                };
                self.op(
                    "matmul",
                    vec![
                        ("x", Arg::One(&a)),
                        ("y", Arg::One(&b)),
                        ("transpose_x", Arg::One(&ta)),
                        ("transpose_y", Arg::One(&tb)),
                    ],
                    &mm,
                    &out_shape,
                    &lab,
                );
                if let Some(&c) = n.inputs.get(2) {
                    let bias = self.tf(c)?;
                    self.binary_op("add", &mm, &bias, &out, &out_shape, &label);
                }
                done(out, Form::Tf)
            }
            Op::WeightedSum { coeffs } => {
                let form = self.elementwise_form(&n.inputs, &out_shape);
                let shape = mil_shape(&out_shape, form);
                let (out, label) = self.out_name(n, form);
                let mut terms = vec![];
                for (&w, &c) in n.inputs.iter().zip(coeffs) {
                    let x = self.operand(w, &out_shape, form)?;
                    if c == 1.0 {
                        terms.push(x);
                    } else {
                        let k = self.const_f(&format!("{x}_coeff"), &[], &[c]);
                        let t = self.fresh(&format!("{x}_scaled"));
                        self.binary_op("mul", &x, &k, &t, &shape, "");
                        terms.push(t);
                    }
                }
                let mut acc = terms.first().cloned().ok_or("a weighted sum of nothing")?;
                if terms.len() == 1 {
                    self.unary("identity", &acc, &out, &shape, &label);
                }
                for (i, t) in terms.iter().enumerate().skip(1) {
                    let last = i + 1 == terms.len();
                    let dst = if last {
                        out.clone()
                    } else {
                        self.fresh(&format!("{out}_partial"))
                    };
                    self.binary_op("add", &acc, t, &dst, &shape, if last { &label } else { "" });
                    acc = dst;
                }
                done(out, form)
            }
            Op::L2Normalize { axis, epsilon } => {
                let xw = input(0)?;
                let v = self.val(xw)?;
                let xs = self.shape(xw)?;
                let last = xs.len().saturating_sub(1);
                // l2_norm normalises over the last three axes: the channel
                // axis alone when the spatial axes are 1.
                let whole = *axis == last
                    && match v.form {
                        Form::Col => true,
                        Form::Nchw => xs[1] * xs[2] == 1,
                        _ => false,
                    };
                if whole {
                    let (out, label) = self.out_name(n, v.form);
                    let eps = self.const_f(&format!("{out}_epsilon"), &[], &[*epsilon]);
                    let shape = mil_shape(&out_shape, v.form);
                    self.op(
                        "l2_norm",
                        vec![("x", Arg::One(&v.var)), ("epsilon", Arg::One(&eps))],
                        &out,
                        &shape,
                        &label,
                    );
                    return done(out, v.form);
                }
                let (x, form, ax) = match v.form {
                    Form::Nchw => (v.var.clone(), Form::Nchw, to_nchw_axis(*axis)),
                    Form::Col if *axis == 1 => (v.var.clone(), Form::Col, 1),
                    _ => (self.tf(xw)?, Form::Tf, *axis),
                };
                let (out, label) = self.out_name(n, form);
                let shape = mil_shape(&out_shape, form);
                let mut red = shape.clone();
                if let Some(d) = red.get_mut(ax) {
                    *d = 1;
                }
                let axes = self.const_ints(&format!("{out}_axes"), &[ax as i64]);
                let kd = self.const_bool(&format!("{out}_keep_dims"), true);
                let ss = self.fresh(&format!("{out}_sum_square"));
                self.op(
                    "reduce_sum_square",
                    vec![
                        ("x", Arg::One(&x)),
                        ("axes", Arg::One(&axes)),
                        ("keep_dims", Arg::One(&kd)),
                    ],
                    &ss,
                    &red,
                    "",
                );
                let eps = self.const_f(&format!("{out}_epsilon"), &[], &[*epsilon]);
                let m = self.fresh(&format!("{out}_max"));
                self.binary_op("maximum", &ss, &eps, &m, &red, "");
                let zero = self.const_f(&format!("{out}_rsqrt_epsilon"), &[], &[0.0]);
                let r = self.fresh(&format!("{out}_rsqrt"));
                self.op(
                    "rsqrt",
                    vec![("x", Arg::One(&m)), ("epsilon", Arg::One(&zero))],
                    &r,
                    &red,
                    "",
                );
                self.binary_op("mul", &x, &r, &out, &shape, &label);
                done(out, form)
            }
            Op::Reshape { .. } | Op::Squeeze { .. } | Op::ExpandDims { .. } => {
                let xw = input(0)?;
                let v = self.val(xw)?;
                let xs = self.shape(xw)?;
                let t = &out_shape;
                let src_ordered = match v.form {
                    Form::Tf | Form::Col => true,
                    Form::Nchw => order_kept(&xs),
                    Form::Flat(_) => false,
                };
                // A flatten of a channel-first map: channel-first order,
                // which the MatMul after it reads with permuted weights.
                if let (Form::Nchw, &[nb, k], false) = (v.form, t.as_slice(), src_ordered) {
                    if xs.len() == 4 && nb == xs[0] && k == xs[1] * xs[2] * xs[3] {
                        let flat = Form::Flat([xs[1], xs[2], xs[3]]);
                        let (out, label) = self.out_name(n, flat);
                        let s =
                            self.const_ints(&format!("{out}_shape"), &[nb as i64, k as i64, 1, 1]);
                        self.op(
                            "reshape",
                            vec![("x", Arg::One(&v.var)), ("shape", Arg::One(&s))],
                            &out,
                            &[nb, k, 1, 1],
                            &label,
                        );
                        return done(out, flat);
                    }
                }
                let form = match t.len() {
                    4 => Form::Nchw,
                    2 => Form::Col,
                    _ => Form::Tf,
                };
                let dst_ordered = match form {
                    Form::Nchw => order_kept(t),
                    _ => true,
                };
                if src_ordered && dst_ordered {
                    let to = mil_shape(t, form);
                    let from = mil_shape(&xs, v.form);
                    if to == from {
                        return done(v.var, form);
                    }
                    let (out, label) = self.out_name(n, form);
                    let s = self.const_ints(
                        &format!("{out}_shape"),
                        &to.iter().map(|&d| d as i64).collect::<Vec<_>>(),
                    );
                    self.op(
                        "reshape",
                        vec![("x", Arg::One(&v.var)), ("shape", Arg::One(&s))],
                        &out,
                        &to,
                        &label,
                    );
                    return done(out, form);
                }
                let x = self.tf(xw)?;
                let (out, label) = self.out_name(n, Form::Tf);
                let s = self.const_ints(
                    &format!("{out}_shape"),
                    &t.iter().map(|&d| d as i64).collect::<Vec<_>>(),
                );
                self.op(
                    "reshape",
                    vec![("x", Arg::One(&x)), ("shape", Arg::One(&s))],
                    &out,
                    t,
                    &label,
                );
                done(out, Form::Tf)
            }
            Op::Resize(r) => {
                // On the channel-first form (MIL resizes the last two axes).
                let xw = input(0)?;
                let xs = self.shape(xw)?;
                let x = self.nchw(xw)?;
                let (out, label) = self.out_name(n, Form::Nchw);
                let shape = mil_shape(&out_shape, Form::Nchw);
                let whole = r.whole_factors([xs[1], xs[2]]);
                match (r.mode, whole, r.align_corners, r.half_pixel_centers) {
                    (ResizeMode::Nearest, Some(f), _, _) => {
                        let fh = self.const_int(&format!("{out}_scale_factor_height"), f[0] as i64);
                        let fw = self.const_int(&format!("{out}_scale_factor_width"), f[1] as i64);
                        self.op(
                            "upsample_nearest_neighbor",
                            vec![
                                ("x", Arg::One(&x)),
                                ("scale_factor_height", Arg::One(&fh)),
                                ("scale_factor_width", Arg::One(&fw)),
                            ],
                            &out,
                            &shape,
                            &label,
                        );
                    }
                    (ResizeMode::Bilinear, Some(f), false, true) => {
                        // align_corners false: TF's half-pixel grid.
                        let fh = self.const_int(&format!("{out}_scale_factor_height"), f[0] as i64);
                        let fw = self.const_int(&format!("{out}_scale_factor_width"), f[1] as i64);
                        let ac = self.const_bool(&format!("{out}_align_corners"), false);
                        self.op(
                            "upsample_bilinear",
                            vec![
                                ("x", Arg::One(&x)),
                                ("scale_factor_height", Arg::One(&fh)),
                                ("scale_factor_width", Arg::One(&fw)),
                                ("align_corners", Arg::One(&ac)),
                            ],
                            &out,
                            &shape,
                            &label,
                        );
                    }
                    (ResizeMode::Bilinear, _, align, false) => {
                        // DEFAULT is TF's legacy grid; STRICT_ALIGN_CORNERS
                        // its align_corners grid, one output pixel included.
                        let th = self.const_int(&format!("{out}_target_size_height"), r.size[0] as i64);
                        let tw = self.const_int(&format!("{out}_target_size_width"), r.size[1] as i64);
                        let mode = self.const_str(
                            &format!("{out}_sampling_mode"),
                            if align { "STRICT_ALIGN_CORNERS" } else { "DEFAULT" },
                        );
                        self.op(
                            "resize_bilinear",
                            vec![
                                ("x", Arg::One(&x)),
                                ("target_size_height", Arg::One(&th)),
                                ("target_size_width", Arg::One(&tw)),
                                ("sampling_mode", Arg::One(&mode)),
                            ],
                            &out,
                            &shape,
                            &label,
                        );
                    }
                    (ResizeMode::Bilinear, _, _, true) => return Err(
                        "a half-pixel bilinear resize by no whole factor has no ML Program form faceall writes: upsample_bilinear fixes the output size by rounding a fractional factor, and resize_bilinear's UNALIGN_CORNERS (iOS 16) has no NeuralNetwork form to check it by"
                            .into(),
                    ),
                    (ResizeMode::Nearest, None, _, _) => return Err(
                        "a nearest resize that is no repeat by a whole factor in TF's arithmetic (another size, align_corners, or a legacy factor TF rounds early: 41, 47, ...) has no ML Program form faceall writes: resize_nearest_neighbor does not state TF's rounding rules"
                            .into(),
                    ),
                }
                done(out, Form::Nchw)
            }
            Op::Tile { multiples } => {
                let x = self.tf(input(0)?)?;
                let (out, label) = self.out_name(n, Form::Tf);
                let reps: Vec<i64> = multiples.iter().map(|&m| m as i64).collect();
                let reps = self.const_ints(&format!("{out}_reps"), &reps);
                let shape = mil_shape(&out_shape, Form::Tf);
                self.op(
                    "tile",
                    vec![("x", Arg::One(&x)), ("reps", Arg::One(&reps))],
                    &out,
                    &shape,
                    &label,
                );
                done(out, Form::Tf)
            }
            Op::SpaceDepth(sd) => {
                // MIL's depth_to_space / space_to_depth use TF's depth order
                // (pixel_shuffle is PyTorch's).
                let x = self.nchw(input(0)?)?;
                let (out, label) = self.out_name(n, Form::Nchw);
                let shape = mil_shape(&out_shape, Form::Nchw);
                let b = self.const_int(&format!("{out}_block_size"), sd.block as i64);
                let ty = if sd.to_space {
                    "depth_to_space"
                } else {
                    "space_to_depth"
                };
                self.op(
                    ty,
                    vec![("x", Arg::One(&x)), ("block_size", Arg::One(&b))],
                    &out,
                    &shape,
                    &label,
                );
                done(out, Form::Nchw)
            }
            Op::Pad { pads, value } => {
                let xw = input(0)?;
                let v = self.val(xw)?;
                let spatial_only = pads.len() == 4 && pads[0] == [0, 0] && pads[3] == [0, 0];
                let (x, form, flat): (String, Form, Vec<i64>) =
                    if v.form == Form::Nchw && spatial_only {
                        (
                            v.var.clone(),
                            Form::Nchw,
                            vec![
                                pads[1][0] as i64,
                                pads[1][1] as i64,
                                pads[2][0] as i64,
                                pads[2][1] as i64,
                            ],
                        )
                    } else {
                        (
                            self.tf(xw)?,
                            Form::Tf,
                            pads.iter()
                                .flat_map(|p| [p[0] as i64, p[1] as i64])
                                .collect(),
                        )
                    };
                let (out, label) = self.out_name(n, form);
                let p = self.const_ints(&format!("{out}_pad"), &flat);
                let mode = self.const_str(&format!("{out}_mode"), "constant");
                let cv = self.const_f(&format!("{out}_constant_val"), &[], &[*value]);
                let shape = mil_shape(&out_shape, form);
                self.op(
                    "pad",
                    vec![
                        ("x", Arg::One(&x)),
                        ("pad", Arg::One(&p)),
                        ("mode", Arg::One(&mode)),
                        ("constant_val", Arg::One(&cv)),
                    ],
                    &out,
                    &shape,
                    &label,
                );
                done(out, form)
            }
            Op::Slice { begin, end } => {
                // Sliced in the value's own order: a channel-first 4-D value
                // with its bounds permuted to (N, C, H, W).
                let xw = input(0)?;
                let v = self.val(xw)?;
                let (x, form, b, e) = if v.form == Form::Nchw && begin.len() == 4 {
                    let p = |a: &[usize]| vec![a[0] as i64, a[3] as i64, a[1] as i64, a[2] as i64];
                    (v.var.clone(), Form::Nchw, p(begin), p(end))
                } else {
                    let i = |a: &[usize]| a.iter().map(|&v| v as i64).collect::<Vec<_>>();
                    (self.tf(xw)?, Form::Tf, i(begin), i(end))
                };
                let (out, label) = self.out_name(n, form);
                let bc = self.const_ints(&format!("{out}_begin"), &b);
                let ec = self.const_ints(&format!("{out}_end"), &e);
                let shape = mil_shape(&out_shape, form);
                self.op(
                    "slice_by_index",
                    vec![
                        ("x", Arg::One(&x)),
                        ("begin", Arg::One(&bc)),
                        ("end", Arg::One(&ec)),
                    ],
                    &out,
                    &shape,
                    &label,
                );
                done(out, form)
            }
            Op::Transpose { perm } => {
                let xw = input(0)?;
                // An NHWC map held channel-first is its NCHW transpose
                // already, and the other way round: an identity under the
                // TF name, no transpose.
                let xs = self.shape(xw)?;
                let xv = self.val(xw)?;
                let relabel = match (perm.as_slice(), xv.form) {
                    ([0, 3, 1, 2], Form::Nchw) => Some((Form::Tf, mil_shape(&xs, Form::Nchw))),
                    ([0, 2, 3, 1], Form::Tf) if xs.len() == 4 => Some((Form::Nchw, xs.clone())),
                    _ => None,
                };
                if let Some((form, to)) = relabel {
                    let (out, label) = self.out_name(n, form);
                    self.unary("identity", &xv.var, &out, &to, &label);
                    return done(out, form);
                }
                let x = self.tf(xw)?;
                let (out, label) = self.out_name(n, Form::Tf);
                let p = self.const_ints(
                    &format!("{out}_perm"),
                    &perm.iter().map(|&d| d as i64).collect::<Vec<_>>(),
                );
                let to: Vec<usize> = perm.iter().filter_map(|&i| xs.get(i).copied()).collect();
                self.op(
                    "transpose",
                    vec![("x", Arg::One(&x)), ("perm", Arg::One(&p))],
                    &out,
                    &to,
                    &label,
                );
                done(out, Form::Tf)
            }
            Op::PRelu => {
                let xw = input(0)?;
                let v = self.val(xw)?;
                if !matches!(v.form, Form::Nchw | Form::Col) {
                    return Err("PReLU over the channel axis of a 4-D or (N, C) value only".into());
                }
                let (out, label) = self.out_name(n, v.form);
                let aw = input(1)?;
                let len = self.konst(aw)?.len();
                let alpha = self.const_bytes(&format!("{out}_alpha"), &[len], aw)?;
                let shape = mil_shape(&out_shape, v.form);
                self.op(
                    "prelu",
                    vec![("x", Arg::One(&v.var)), ("alpha", Arg::One(&alpha))],
                    &out,
                    &shape,
                    &label,
                );
                done(out, v.form)
            }
        }
    }
}

fn feature(name: &str, shape: &[usize], description: String) -> FeatureDescription {
    let mut a = ArrayFeatureType::new();
    a.shape = shape.iter().map(|&d| d as i64).collect();
    a.dataType = ArrayDataType::FLOAT32.into();
    let mut t = FeatureType::new();
    t.Type = Some(feature_type::Type::MultiArrayType(a));
    let mut f = FeatureDescription::new();
    f.name = name.to_string();
    f.shortDescription = description;
    f.type_ = Some(t).into();
    f
}

/// Emit the program; every node without a MIL form is reported at once.
pub fn emit(g: &Graph, copts: &CoremlOptions, opts: &MlProgramOptions) -> Result<MlProgram> {
    let mut em = Em {
        g,
        fp16: copts.fp16,
        ops: vec![],
        blobs: BlobWriter::default(),
        vals: HashMap::new(),
        names: HashSet::new(),
        claimed: HashSet::new(),
        tf_form: HashMap::new(),
        consts: 0,
        current: vec![],
    };
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
    let mut inputs = vec![];
    let mut desc = ModelDescription::new();
    let mut layouts = vec![];
    for &i in &g.inputs {
        let node = &g.nodes[i];
        let f = &node.outputs[0];
        if f.dtype != DType::F32 {
            return Err(Error::Unsupported(vec![crate::error::Unsupported {
                node: node.name.clone(),
                op: node.source_op.clone(),
                reason: "no MIL form: only float32 inputs".into(),
            }]));
        }
        // A channel-first input (read only through a transpose to NHWC)
        // is fed as it is.
        let form = if f.shape.len() == 4 && !crate::formats::layout::channel_first_input(g, i) {
            Form::Nchw
        } else {
            Form::Tf
        };
        let shape = mil_shape(&f.shape, form);
        let var = em.fresh(&node.name);
        inputs.push(named(&var, tensor_type(DataType::FLOAT32, &shape)));
        let text = if form == Form::Nchw {
            layouts.push(var.clone());
            format!(
                "float32 {shape:?} (N, C, H, W: channel-first) for TF input '{}' {:?}",
                node.name, f.shape
            )
        } else {
            format!("float32 {shape:?} for TF input '{}'", node.name)
        };
        desc.input.push(feature(&var, &shape, text));
        let value = if em.fp16 {
            let dt = em.const_str(&format!("{var}_dtype"), "fp16");
            let cast = em.fresh(&format!("{var}_fp16"));
            let label = match form {
                Form::Nchw => format!("{}{NCHW_SUFFIX}", node.name),
                _ => node.name.clone(),
            };
            em.op(
                "cast",
                vec![("x", Arg::One(&var)), ("dtype", Arg::One(&dt))],
                &cast,
                &shape,
                &label,
            );
            cast
        } else {
            var
        };
        em.vals
            .insert(Wire { node: i, slot: 0 }, Val { var: value, form });
    }
    for name in &out_names {
        let id = ident(name);
        if em.names.contains(&id) {
            continue; // an input returned as an output
        }
        em.claimed.insert(id);
    }
    let mut notes = vec![];
    crate::formats::walk_needed(g, "MIL", |i| {
        let node = &g.nodes[i];
        if matches!(node.op, Op::Input) {
            return Ok(());
        }
        em.current.clear();
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
    // Outputs: under TF's names (made identifiers), 4-D ones channel-first,
    // the others in TF's shape; float32 at the boundary.
    let mut block_outputs = vec![];
    for (w, name) in g.outputs.iter().zip(&out_names) {
        let fail = |e: String| Error::Graph(format!("output '{name}': {e}"));
        let f = g.fact(*w)?.clone();
        let id = ident(name);
        let v = em
            .vals
            .get(w)
            .cloned()
            .ok_or_else(|| fail("was not written".into()))?;
        // An NCHW transpose of a map is TF's own order already.
        let form = if f.shape.len() == 4 && !crate::formats::layout::is_nchw_transpose(g, *w) {
            Form::Nchw
        } else {
            Form::Tf
        };
        let shape = mil_shape(&f.shape, form);
        let x = match form {
            Form::Nchw => em.nchw(*w).map_err(fail)?,
            _ => em.tf(*w).map_err(fail)?,
        };
        em.claimed.remove(&id);
        // A conversion made just now for this output takes its name.
        let x = match em.ops.last_mut() {
            Some(last)
                if !em.fp16
                    && x != v.var
                    && x != id
                    && !em.names.contains(&id)
                    && last.outputs.first().is_some_and(|o| o.name == x) =>
            {
                last.outputs[0].name = id.clone();
                em.names.insert(id.clone());
                em.tf_form.retain(|_, n| n != &x);
                id.clone()
            }
            _ => x,
        };
        let label = match form {
            Form::Nchw => format!("{name}{NCHW_SUFFIX}"),
            _ => name.clone(),
        };
        let out = if x == id {
            if let Some(last) = em.ops.last_mut() {
                if last.outputs.first().is_some_and(|o| o.name == id) {
                    last.attributes.insert("name".into(), string_value(&label));
                }
            }
            x
        } else {
            if em.names.contains(&id) {
                return Err(fail(format!("the name '{id}' is taken by another value")));
            }
            em.names.insert(id.clone());
            if em.fp16 {
                let dt = em.const_str(&format!("{id}_dtype"), "fp32");
                em.op_typed(
                    "cast",
                    vec![("x", Arg::One(&x)), ("dtype", Arg::One(&dt))],
                    &id,
                    tensor_type(DataType::FLOAT32, &shape),
                    &label,
                );
            } else {
                em.unary("identity", &x, &id, &shape, &label);
            }
            id.clone()
        };
        let text = match form {
            Form::Nchw => format!(
                "float32 {shape:?} (N, C, H, W: channel-first) for TF output '{name}' {:?}",
                f.shape
            ),
            _ => format!("float32 {shape:?}: TF output '{name}'"),
        };
        desc.output.push(feature(&out, &shape, text));
        block_outputs.push(out);
    }
    let mut meta = Metadata::new();
    meta.shortDescription = copts.short_description.clone().unwrap_or_else(|| {
        format!(
            "{} converted from TensorFlow by faceall {}",
            copts.source_name,
            env!("CARGO_PKG_VERSION")
        )
    });
    meta.author = copts.author.clone().unwrap_or_default();
    meta.versionString = copts.version.clone().unwrap_or_default();
    meta.license = copts.license.clone().unwrap_or_default();
    let mut user = vec![
        ("faceall.source".to_string(), copts.source_name.clone()),
        ("faceall.source_sha256".into(), copts.source_sha256.clone()),
        (
            "faceall.version".into(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
        (
            "faceall.precision".into(),
            if copts.fp16 { "float16" } else { "float32" }.to_string(),
        ),
        (
            "faceall.minimum_deployment_target".into(),
            opts.target.name().into(),
        ),
    ];
    for l in layouts {
        user.push((format!("{INPUT_LAYOUT_KEY}.{l}"), "NCHW".into()));
    }
    for (k, v) in user {
        let mut e = StringEntry::new();
        e.key = k;
        e.value = v;
        meta.userDefined.push(e);
    }
    desc.metadata = Some(meta).into();

    let ops = em.ops.len() - em.consts;
    let consts = em.consts;
    let mut block = Block::new();
    block.outputs = block_outputs;
    block.operations = std::mem::take(&mut em.ops);
    let mut func = Function::new();
    func.inputs = inputs;
    func.opset = opts.target.opset().into();
    func.block_specializations
        .insert(opts.target.opset().into(), block);
    let mut program = Program::new();
    program.version = 1;
    program.functions.insert("main".into(), func);
    let mut model = Model::new();
    model.specificationVersion = opts.target.specification_version();
    model.description = Some(desc).into();
    model.Type = Some(model::Type::MlProgram(program));
    Ok(MlProgram {
        model,
        blobs: em.blobs,
        ops,
        consts,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert_eq!(
            ident("InceptionResnetV1/Conv2d_1a_3x3/Relu"),
            "InceptionResnetV1_Conv2d_1a_3x3_Relu"
        );
        assert_eq!(ident("0abc"), "_0abc");
        assert_eq!(ident(""), "_");
        assert_eq!(ident("a:0"), "a_0");
    }

    #[test]
    fn forms_keep_or_change_order() {
        assert_eq!(mil_shape(&[1, 4, 5, 3], Form::Nchw), vec![1, 3, 4, 5]);
        assert_eq!(mil_shape(&[2, 7], Form::Col), vec![2, 7, 1, 1]);
        assert!(order_kept(&[1, 1, 1, 9]));
        assert!(order_kept(&[1, 3, 3, 1]));
        assert!(!order_kept(&[1, 2, 2, 3]));
    }
}
