//! IR -> Core ML `Model` with a `neuralNetwork` (specification version 1,
//! the lowest that has every layer used; 3 with a resizeBilinear, 4 when a
//! GELU needs the gelu layer or a bilinear upsample its half-pixel grid),
//! with TensorFlow's semantics:
//!
//! - one sample per prediction (Core ML's rank-5 mapping; the TF batch axis
//!   is the prediction API's): an NHWC value is a (C, H, W) blob, an (N, K)
//!   value a (K) vector;
//! - convolution and pooling use `valid` padding with explicit per-edge
//!   amounts (TF's asymmetric SAME exactly; pooling rounds down like TF),
//!   average pooling excludes padding as TF does;
//! - batch norms arrive folded; one that could not fold is a `batchnorm`
//!   layer with TF's epsilon;
//! - `x + s * branch` is `activation linear(s)` then a two-input `add`
//!   (never a 3-input add), Relu6 is `6 - relu(6 - relu(x))`;
//! - L2 normalisation is `l2normalize`, which computes x / sqrt(sum + eps)
//!   where TF computes x * rsqrt(max(sum, eps)): equal unless the squared
//!   norm is below eps (an all-zero embedding);
//! - MatMul after an NHWC flatten gets permuted innerProduct weights (Core
//!   ML flattens channel-first).
//!
//! Blob names are the TF tensor names they carry, as in the Caffe emitter.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ir::{
    resolve_axis, Activation, BinaryOp, DType, Graph, Layout, Node, Op, PoolKind, ReduceOp,
    ResizeMode, UnaryOp, Wire,
};
use crate::proto::coreml::{
    activation_params::NonlinearityType, array_feature_type::ArrayDataType,
    border_amounts::EdgeSizes, feature_type, gelu_layer_params, model, neural_network_layer::Layer,
    padding_layer_params, pooling_layer_params, reduce_layer_params, reorganize_data_layer_params,
    sampling_mode, slice_layer_params, unary_function_layer_params, upsample_layer_params,
    ActivationELU, ActivationLeakyReLU, ActivationLinear, ActivationParams, ActivationReLU,
    ActivationSigmoid, ActivationTanh, AddLayerParams, ArrayFeatureType, BatchnormLayerParams,
    BorderAmounts, ConcatLayerParams, ConvolutionLayerParams, CropLayerParams, FeatureDescription,
    FeatureType, FlattenLayerParams, GeluLayerParams, InnerProductLayerParams,
    L2NormalizeLayerParams, Metadata, Model, ModelDescription, MultiplyLayerParams, NeuralNetwork,
    NeuralNetworkLayer, PaddingLayerParams, PermuteLayerParams, PoolingLayerParams,
    ReduceLayerParams, ReorganizeDataLayerParams, ResizeBilinearLayerParams, SamplingMode,
    ScaleLayerParams, SliceLayerParams, SoftmaxLayerParams, StringEntry, UnaryFunctionLayerParams,
    UpsampleLayerParams, ValidPadding, WeightParams,
};

/// How a Core ML blob holds an IR value (per sample).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CoremlLayout {
    /// TF (N, H, W, C) as (C, H, W).
    Chw,
    /// TF (N, K) as (K, 1, 1); TF (N, A, B) as (1, A, B): the same order.
    Same,
    /// TF (N, H*W*C) flattened from NHWC, held channel-first.
    FlatChw { h: usize, w: usize, c: usize },
}

/// Where the value of a TF tensor lives in the Core ML model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CoremlBlob {
    pub tensor: String,
    pub blob: String,
    pub layout: CoremlLayout,
    /// Per-sample (C, H, W).
    pub chw: [usize; 3],
}

/// What the caller states about the model (metadata, precision).
#[derive(Debug, Clone, Default)]
pub struct CoremlOptions {
    pub short_description: Option<String>,
    pub author: Option<String>,
    pub version: Option<String>,
    pub license: Option<String>,
    /// Store weights as float16.
    pub fp16: bool,
    /// The source graph's file name and SHA-256, for the metadata.
    pub source_name: String,
    pub source_sha256: String,
}

pub struct CoremlModel {
    /// The model, with the weights in `later` still empty.
    pub model: Model,
    pub blobs: Vec<CoremlBlob>,
    later: Vec<Later>,
    fp16: bool,
}

#[derive(Clone)]
struct Val {
    blob: String,
    layout: CoremlLayout,
    chw: [usize; 3],
}

type R<T> = std::result::Result<T, String>;

fn chw_of(shape: &[usize]) -> R<([usize; 3], CoremlLayout)> {
    match shape {
        [_, h, w, c] => Ok(([*c, *h, *w], CoremlLayout::Chw)),
        [_, k] => Ok(([*k, 1, 1], CoremlLayout::Same)),
        [_, a, b] => Ok(([1, *a, *b], CoremlLayout::Same)),
        [_] => Ok(([1, 1, 1], CoremlLayout::Same)),
        s => Err(format!(
            "a value of shape {s:?} has no Core ML (C, H, W) form"
        )),
    }
}

/// Whether the (C, H, W) blob holds the TF sample in TF's own order.
fn same_order(v: &Val) -> bool {
    match v.layout {
        CoremlLayout::Same => true,
        CoremlLayout::Chw => v.chw[0] == 1 || v.chw[1] * v.chw[2] == 1,
        CoremlLayout::FlatChw { .. } => false,
    }
}

struct Em<'g> {
    g: &'g Graph,
    fp16: bool,
    layers: Vec<NeuralNetworkLayer>,
    vals: HashMap<Wire, Val>,
    names: HashSet<String>,
    /// The lowest specification version that has every layer written: 1,
    /// or 4 once a gelu layer is.
    spec_version: i32,
    later: Vec<Later>,
}

/// A convolution's or inner product's weights, left empty in its layer
/// and computed from the graph a run at a time as `write_mlmodel` writes
/// that layer (see `formats::splice`): the writer never holds a second
/// copy of the model's weights.
pub struct Later {
    layer: usize,
    /// The layer's parameters field (convolution 100, innerProduct 140)
    /// and their `weights` field (90, 20).
    path: [(u32, usize); 2],
    count: usize,
    fill: crate::formats::splice::Fill,
}

fn weights(v: &[f32], fp16: bool) -> WeightParams {
    let mut w = WeightParams::new();
    if fp16 {
        let b: Vec<u8> = v
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect();
        w.float16Value = b.into();
    } else {
        w.floatValue = v.to_vec();
    }
    w
}

/// A permute layer: output axis i of (Seq, C, H, W) is input axis `axis[i]`.
fn permute(axis: [u64; 4]) -> Layer {
    let mut p = PermuteLayerParams::new();
    p.axis = axis.to_vec();
    Layer::Permute(p)
}

fn borders(pairs: [[usize; 2]; 2]) -> BorderAmounts {
    let mut b = BorderAmounts::new();
    for [s, e] in pairs {
        let mut es = EdgeSizes::new();
        es.startEdgeSize = s as u64;
        es.endEdgeSize = e as u64;
        b.borderAmounts.push(es);
    }
    b
}

fn activation(t: NonlinearityType) -> Layer {
    let mut a = ActivationParams::new();
    a.NonlinearityType = Some(t);
    Layer::Activation(a)
}

fn linear(alpha: f32, beta: f32) -> Layer {
    let mut l = ActivationLinear::new();
    l.alpha = alpha;
    l.beta = beta;
    activation(NonlinearityType::Linear(l))
}

impl<'g> Em<'g> {
    fn layer(&mut self, name: &str, inputs: &[&str], output: &str, l: Layer) {
        let mut n = output.to_string();
        if n.is_empty() {
            n = name.to_string();
        }
        let mut unique = n.clone();
        let mut i = 1;
        while self.names.contains(&unique) {
            unique = format!("{n}_{i}");
            i += 1;
        }
        self.names.insert(unique.clone());
        let mut nl = NeuralNetworkLayer::new();
        nl.name = unique;
        nl.input = inputs.iter().map(|s| s.to_string()).collect();
        nl.output = vec![output.to_string()];
        nl.layer = Some(l);
        self.layers.push(nl);
    }

    fn val(&self, w: Wire) -> R<Val> {
        self.vals
            .get(&w)
            .cloned()
            .ok_or_else(|| format!("input '{}' has no Core ML blob", self.g.wire_name(w)))
    }

    fn konst(&self, w: Wire) -> R<std::borrow::Cow<'g, [f32]>> {
        crate::formats::layout::const_f32(self.g, w)
    }

    fn need_chw(v: &Val) -> R<()> {
        if v.layout != CoremlLayout::Chw {
            return Err("expects a 4-D NHWC activation".into());
        }
        Ok(())
    }

    fn emit(&mut self, idx: usize) -> R<Option<Val>> {
        let g = self.g;
        let n: &Node = &g.nodes[idx];
        let out = n
            .carries()
            .map(str::to_string)
            .unwrap_or_else(|| format!("{}/folded", n.name));
        let name = n.name.clone();
        if let Op::Const(_) = n.op {
            return Ok(None);
        }
        let (chw, lay) = chw_of(&n.outputs[0].shape)?;
        let done = |blob: String| {
            Ok(Some(Val {
                blob,
                layout: lay.clone(),
                chw,
            }))
        };
        match &n.op {
            Op::Const(_) => Ok(None),
            Op::Input => {
                if n.outputs[0].dtype != DType::F32 {
                    return Err("only float32 inputs".into());
                }
                if let (true, &[_, c, h, w]) = (
                    crate::formats::layout::channel_first_input(g, idx),
                    n.outputs[0].shape.as_slice(),
                ) {
                    // Fed as it is: a TF (C, H, W) sample.
                    return Ok(Some(Val {
                        blob: out,
                        layout: CoremlLayout::Same,
                        chw: [c, h, w],
                    }));
                }
                done(out)
            }
            Op::Identity => {
                let x = self.val(n.inputs[0])?;
                self.layer(&name, &[&x.blob], &out, linear(1.0, 0.0));
                Ok(Some(Val { blob: out, ..x }))
            }
            Op::Switch | Op::Merge => {
                Err("TF1 control flow has no Core ML form (run the resolve_switch pass)".into())
            }
            Op::Conv2d(c) => {
                if c.layout != Layout::Nhwc {
                    return Err("NCHW data_format is not supported by the Core ML emitter".into());
                }
                let x = self.val(n.inputs[0])?;
                Self::need_chw(&x)?;
                let ws = g
                    .fact(n.inputs[1])
                    .map_err(|e| e.to_string())?
                    .shape
                    .clone();
                let &[kh, kw, ci, co] = ws.as_slice() else {
                    return Err(format!("filter of shape {ws:?}"));
                };
                let (_, ph) =
                    resolve_axis(&c.padding, 0, x.chw[1], kh, c.strides[0], c.dilations[0])
                        .ok_or("window does not fit")?;
                let (_, pw) =
                    resolve_axis(&c.padding, 1, x.chw[2], kw, c.strides[1], c.dilations[1])
                        .ok_or("window does not fit")?;
                let (num_out, groups, kernel_ch) = if c.depthwise {
                    (ci * co, ci, 1)
                } else {
                    (co, 1, ci)
                };
                let p = self.conv_params(
                    [num_out, kernel_ch, groups],
                    [kh, kw],
                    c.strides,
                    c.dilations,
                    [ph, pw],
                    n.inputs.get(2).copied(),
                )?;
                self.layer(&name, &[&x.blob], &out, Layer::Convolution(p));
                let (w_wire, depthwise) = (n.inputs[1], c.depthwise);
                self.defer(CONVOLUTION, CONV_WEIGHTS, kh * kw * ci * co, crate::formats::layout::conv_fill(w_wire, [kh, kw, ci, co], depthwise, false))?;
                done(out)
            }
            Op::Deconv2d(d) => {
                // A deconvolution crops its valid padding amounts from the
                // full scatter, each edge on its own. No outputShape: the
                // specification ignores the padding when one is set.
                if d.dilations != [1, 1] {
                    return Err("a dilated transposed convolution has no Core ML NeuralNetwork form (deconvolution ignores dilationFactor)".into());
                }
                let x = self.val(n.inputs[0])?;
                Self::need_chw(&x)?;
                let ws = g
                    .fact(n.inputs[1])
                    .map_err(|e| e.to_string())?
                    .shape
                    .clone();
                let &[kh, kw, co, ci] = ws.as_slice() else {
                    return Err(format!("filter of shape {ws:?}"));
                };
                let pads = d
                    .pads([x.chw[1], x.chw[2]], [kh, kw])
                    .ok_or("the deconvolution does not fit its input")?;
                let mut p = self.conv_params(
                    [co, ci, 1],
                    [kh, kw],
                    d.strides,
                    [1, 1],
                    pads,
                    n.inputs.get(2).copied(),
                )?;
                p.isDeconvolution = true;
                self.layer(&name, &[&x.blob], &out, Layer::Convolution(p));
                let w_wire = n.inputs[1];
                self.defer(CONVOLUTION, CONV_WEIGHTS, kh * kw * co * ci, crate::formats::layout::conv_fill(w_wire, [kh, kw, co, ci], false, false))?;
                done(out)
            }
            Op::BiasAdd { .. } => {
                let x = self.val(n.inputs[0])?;
                let b = self.konst(n.inputs[1])?;
                self.scale_layer(&name, &x, &out, vec![1.0; b.len()], Some(b.to_vec()))?;
                Ok(Some(Val { blob: out, ..x }))
            }
            Op::BatchNorm(bn) => {
                if bn.training || bn.layout != Layout::Nhwc {
                    return Err("only inference NHWC batch norm".into());
                }
                let x = self.val(n.inputs[0])?;
                Self::need_chw(&x)?;
                let p: Vec<Vec<f32>> = (1..5)
                    .map(|i| self.konst(n.inputs[i]).map(|c| c.into_owned()))
                    .collect::<R<_>>()?;
                let mut b = BatchnormLayerParams::new();
                b.channels = p[0].len() as u64;
                b.epsilon = bn.epsilon;
                b.gamma = Some(weights(&p[0], self.fp16)).into();
                b.beta = Some(weights(&p[1], self.fp16)).into();
                b.mean = Some(weights(&p[2], self.fp16)).into();
                b.variance = Some(weights(&p[3], self.fp16)).into();
                self.layer(&name, &[&x.blob], &out, Layer::Batchnorm(b));
                Ok(Some(Val { blob: out, ..x }))
            }
            Op::Activation(a) => {
                let x = self.val(n.inputs[0])?;
                match a {
                    Activation::Relu => self.layer(
                        &name,
                        &[&x.blob],
                        &out,
                        activation(NonlinearityType::ReLU(ActivationReLU::new())),
                    ),
                    Activation::Sigmoid => self.layer(
                        &name,
                        &[&x.blob],
                        &out,
                        activation(NonlinearityType::Sigmoid(ActivationSigmoid::new())),
                    ),
                    Activation::Tanh => self.layer(
                        &name,
                        &[&x.blob],
                        &out,
                        activation(NonlinearityType::Tanh(ActivationTanh::new())),
                    ),
                    Activation::LeakyRelu { alpha } => {
                        let mut e = ActivationLeakyReLU::new();
                        e.alpha = *alpha;
                        self.layer(
                            &name,
                            &[&x.blob],
                            &out,
                            activation(NonlinearityType::LeakyReLU(e)),
                        )
                    }
                    Activation::Elu => {
                        let mut e = ActivationELU::new();
                        e.alpha = 1.0;
                        self.layer(
                            &name,
                            &[&x.blob],
                            &out,
                            activation(NonlinearityType::ELU(e)),
                        )
                    }
                    Activation::Gelu { approximate } => {
                        use gelu_layer_params::GeluMode;
                        let mut p = GeluLayerParams::new();
                        p.mode = if *approximate {
                            GeluMode::TANH_APPROXIMATION
                        } else {
                            GeluMode::EXACT
                        }
                        .into();
                        // The gelu layer is specification version 4 (iOS 14).
                        self.spec_version = self.spec_version.max(4);
                        self.layer(&name, &[&x.blob], &out, Layer::Gelu(p))
                    }
                    Activation::Relu6 => {
                        // min(r, 6) = 6 - relu(6 - r), r = relu(x)
                        let r = format!("{name}/relu");
                        self.layer(
                            &r,
                            &[&x.blob],
                            &r,
                            activation(NonlinearityType::ReLU(ActivationReLU::new())),
                        );
                        let m = format!("{name}/six_minus");
                        self.layer(&m, &[&r], &m, linear(-1.0, 6.0));
                        let r2 = format!("{name}/relu_six_minus");
                        self.layer(
                            &r2,
                            &[&m],
                            &r2,
                            activation(NonlinearityType::ReLU(ActivationReLU::new())),
                        );
                        self.layer(&name, &[&r2], &out, linear(-1.0, 6.0));
                    }
                }
                Ok(Some(Val { blob: out, ..x }))
            }
            Op::Softmax => {
                let x = self.val(n.inputs[0])?;
                if !matches!(
                    (&x.layout, n.outputs[0].shape.len()),
                    (CoremlLayout::Chw, 4) | (CoremlLayout::Same, 2)
                ) {
                    return Err("softmax over the channel axis only".into());
                }
                self.layer(
                    &name,
                    &[&x.blob],
                    &out,
                    Layer::Softmax(SoftmaxLayerParams::new()),
                );
                Ok(Some(Val { blob: out, ..x }))
            }
            Op::Pool(p) => {
                if p.layout != Layout::Nhwc {
                    return Err("NCHW data_format is not supported by the Core ML emitter".into());
                }
                let x = self.val(n.inputs[0])?;
                Self::need_chw(&x)?;
                let (_, ph) = resolve_axis(&p.padding, 0, x.chw[1], p.ksize[0], p.strides[0], 1)
                    .ok_or("window does not fit")?;
                let (_, pw) = resolve_axis(&p.padding, 1, x.chw[2], p.ksize[1], p.strides[1], 1)
                    .ok_or("window does not fit")?;
                let mut pp = PoolingLayerParams::new();
                pp.type_ = match p.kind {
                    PoolKind::Max => pooling_layer_params::PoolingType::MAX,
                    PoolKind::Avg => pooling_layer_params::PoolingType::AVERAGE,
                }
                .into();
                pp.kernelSize = vec![p.ksize[0] as u64, p.ksize[1] as u64];
                pp.stride = vec![p.strides[0] as u64, p.strides[1] as u64];
                let mut v = ValidPadding::new();
                v.paddingAmounts = Some(borders([ph, pw])).into();
                pp.PoolingPaddingType = Some(pooling_layer_params::PoolingPaddingType::Valid(v));
                pp.avgPoolExcludePadding = true;
                self.layer(&name, &[&x.blob], &out, Layer::Pooling(pp));
                done(out)
            }
            Op::Concat { axis } => {
                let vs: Vec<Val> = n.inputs.iter().map(|w| self.val(*w)).collect::<R<_>>()?;
                let rank = n.outputs[0].shape.len();
                let flat = vs
                    .iter()
                    .any(|v| matches!(v.layout, CoremlLayout::FlatChw { .. }));
                let refs: Vec<&str> = vs.iter().map(|v| v.blob.as_str()).collect();
                if *axis == rank - 1 && (rank == 4 || rank == 2) && !flat {
                    self.layer(&name, &refs, &out, Layer::Concat(ConcatLayerParams::new()));
                    return done(out);
                }
                // Rows (NHWC axis 1) or columns (axis 2) of CHW maps, as
                // MirrorPad's mirrored rows are joined: the NeuralNetwork
                // concat joins channels only, so each part is permuted to
                // bring that axis to C, joined, and permuted back (each
                // permutation swaps two axes: its own inverse). Copies: exact.
                let swap = match (rank, *axis, flat) {
                    (4, 1, false) => [0, 2, 1, 3],
                    (4, 2, false) => [0, 3, 2, 1],
                    _ => return Err(format!("concatenation on axis {axis} of a rank-{rank} value has no Core ML NeuralNetwork form (concat joins channels; rows and columns of 4-D maps are joined through permute)")),
                };
                let mut parts = vec![];
                for (i, v) in vs.iter().enumerate() {
                    let p = format!("{name}/permuted_{i}");
                    self.layer(&p, &[&v.blob], &p, permute(swap));
                    parts.push(p);
                }
                let joined = format!("{name}/joined");
                let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
                self.layer(&joined, &refs, &joined, Layer::Concat(ConcatLayerParams::new()));
                self.layer(&name, &[&joined], &out, permute(swap));
                done(out)
            }
            Op::WeightedSum { coeffs } => {
                let vs: Vec<Val> = n.inputs.iter().map(|w| self.val(*w)).collect::<R<_>>()?;
                let mut terms = vec![];
                for (i, (v, &c)) in vs.iter().zip(coeffs).enumerate() {
                    if c == 1.0 {
                        terms.push(v.blob.clone());
                    } else {
                        let s = format!("{name}/scaled_{i}");
                        self.layer(&s, &[&v.blob], &s, linear(c, 0.0));
                        terms.push(s);
                    }
                }
                // Two inputs per add: onnxmltools mis-converts 3-input adds.
                let mut acc = terms[0].clone();
                for (i, t) in terms.iter().enumerate().skip(1) {
                    let o = if i + 1 == terms.len() {
                        out.clone()
                    } else {
                        format!("{name}/partial_{i}")
                    };
                    self.layer(&o, &[&acc, t], &o, Layer::Add(AddLayerParams::new()));
                    acc = o;
                }
                Ok(Some(Val {
                    blob: out,
                    ..vs[0].clone()
                }))
            }
            Op::Binary(b) => self.binary(n, *b, out),
            Op::Unary(u) => {
                let x = self.val(n.inputs[0])?;
                match u {
                    UnaryOp::Square => self.layer(
                        &name,
                        &[&x.blob, &x.blob],
                        &out,
                        Layer::Multiply(MultiplyLayerParams::new()),
                    ),
                    UnaryOp::Neg => self.layer(&name, &[&x.blob], &out, linear(-1.0, 0.0)),
                    UnaryOp::Erf | UnaryOp::Erfc => {
                        return Err(format!(
                            "{} has no Core ML NeuralNetwork form (no erf layer; a GELU built of it is written as the gelu layer)",
                            n.op.kind()
                        ))
                    }
                    UnaryOp::Sqrt
                    | UnaryOp::Rsqrt
                    | UnaryOp::Exp
                    | UnaryOp::Log
                    | UnaryOp::Pow { .. } => {
                        use unary_function_layer_params::Operation;
                        let mut p = UnaryFunctionLayerParams::new();
                        p.type_ = match u {
                            UnaryOp::Sqrt => Operation::SQRT,
                            UnaryOp::Rsqrt => Operation::RSQRT,
                            UnaryOp::Exp => Operation::EXP,
                            UnaryOp::Pow { .. } => Operation::POWER,
                            _ => Operation::LOG,
                        }
                        .into();
                        // alpha is POWER's exponent; the others ignore it.
                        p.alpha = match u {
                            UnaryOp::Pow { exponent } => *exponent,
                            _ => 1.0,
                        };
                        p.scale = 1.0;
                        if *u == UnaryOp::Log {
                            // LOG computes log(x + epsilon), and a runtime may
                            // read 0 as its default 1e-6: the smallest normal
                            // float is explicit and vanishes next to any x
                            // whose log is finite in float32 use.
                            p.epsilon = f32::MIN_POSITIVE;
                        }
                        self.layer(&name, &[&x.blob], &out, Layer::Unary(p));
                    }
                }
                Ok(Some(Val { blob: out, ..x }))
            }
            Op::Reduce { reduce, axes, .. } => {
                let x = self.val(n.inputs[0])?;
                let in_rank = g.fact(n.inputs[0]).map_err(|e| e.to_string())?.shape.len();
                // keep_dims or not, the per-sample (C, H, W) blob is the same:
                // a reduced axis is 1 either way.
                let axis = match (in_rank, axes.as_slice(), &x.layout) {
                    (4, [1, 2], CoremlLayout::Chw) => reduce_layer_params::ReduceAxis::HW,
                    (4, [3], CoremlLayout::Chw) | (2, [1], CoremlLayout::Same) => reduce_layer_params::ReduceAxis::C,
                    _ => return Err(format!("reduction over axes {axes:?} of a rank-{in_rank} value has no Core ML form here")),
                };
                let mut p = ReduceLayerParams::new();
                p.mode = match reduce {
                    ReduceOp::Sum => reduce_layer_params::ReduceOperation::SUM,
                    ReduceOp::Mean => reduce_layer_params::ReduceOperation::AVG,
                }
                .into();
                p.axis = axis.into();
                self.layer(&name, &[&x.blob], &out, Layer::Reduce(p));
                done(out)
            }
            Op::MatMul {
                transpose_a,
                transpose_b,
            } => {
                if *transpose_a {
                    return Err("transpose_a is not supported".into());
                }
                let x = self.val(n.inputs[0])?;
                if x.layout == CoremlLayout::Chw {
                    return Err("MatMul of a 4-D value".into());
                }
                let bs = g
                    .fact(n.inputs[1])
                    .map_err(|e| e.to_string())?
                    .shape
                    .clone();
                let flat = match x.layout {
                    CoremlLayout::FlatChw { h, w, c } => Some([h, w, c]),
                    _ => None,
                };
                let (k, nout) = crate::formats::layout::inner_product_dims(&bs, *transpose_b);
                let mut p = InnerProductLayerParams::new();
                p.inputChannels = k as u64;
                p.outputChannels = nout as u64;
                // Filled by `later`.
                p.weights = Some(WeightParams::new()).into();
                if let Some(b) = n.inputs.get(2) {
                    p.hasBias = true;
                    p.bias = Some(weights(&self.konst(*b)?, self.fp16)).into();
                }
                self.layer(&name, &[&x.blob], &out, Layer::InnerProduct(p));
                let (w_wire, tb) = (n.inputs[1], *transpose_b);
                self.defer(INNER_PRODUCT, INNER_PRODUCT_WEIGHTS, k * nout, crate::formats::layout::inner_product_fill(w_wire, k, nout, tb, flat))?;
                done(out)
            }
            Op::Reshape { .. } | Op::Squeeze { .. } | Op::ExpandDims { .. } => {
                let x = self.val(n.inputs[0])?;
                let target = Val {
                    blob: out.clone(),
                    layout: lay.clone(),
                    chw,
                };
                if same_order(&x) && same_order(&target) {
                    if x.chw == chw {
                        // Same blob, another TF name: no layer needed.
                        return Ok(Some(Val {
                            blob: x.blob,
                            layout: lay,
                            chw,
                        }));
                    }
                    let mut p = crate::proto::coreml::ReshapeLayerParams::new();
                    p.targetShape = chw.iter().map(|&d| d as i64).collect();
                    self.layer(&name, &[&x.blob], &out, Layer::Reshape(p));
                    return done(out);
                }
                let ins = &g.fact(n.inputs[0]).map_err(|e| e.to_string())?.shape;
                if x.layout == CoremlLayout::Chw && n.outputs[0].shape.len() == 2 {
                    // A flatten the user reads (a declared output) flattens
                    // in TF's (H, W, C) order; one feeding an innerProduct
                    // stays channel-first and the weights are permuted.
                    let mut p = FlattenLayerParams::new();
                    if g.outputs.iter().any(|w| w.node == idx) {
                        p.mode =
                            crate::proto::coreml::flatten_layer_params::FlattenOrder::CHANNEL_LAST
                                .into();
                        self.layer(&name, &[&x.blob], &out, Layer::Flatten(p));
                        return Ok(Some(Val {
                            blob: out,
                            layout: CoremlLayout::Same,
                            chw,
                        }));
                    }
                    self.layer(&name, &[&x.blob], &out, Layer::Flatten(p));
                    let layout = CoremlLayout::FlatChw {
                        h: ins[1],
                        w: ins[2],
                        c: ins[3],
                    };
                    return Ok(Some(Val {
                        blob: out,
                        layout,
                        chw,
                    }));
                }
                Err(format!(
                    "reshape {ins:?} -> {:?} changes the data order",
                    n.outputs[0].shape
                ))
            }
            // The (C, H, W) blob of an NHWC map is its NCHW transpose in
            // TF's own order, and the other way round: a change of label
            // (copied, so the TF name has a layer). Any other transpose
            // has no form here.
            Op::Transpose { perm } => {
                let x = self.val(n.inputs[0])?;
                let rank = g.fact(n.inputs[0]).map_err(|e| e.to_string())?.shape.len();
                let layout =
                    match (&x.layout, perm.as_slice()) {
                        (CoremlLayout::Chw, [0, 3, 1, 2]) => CoremlLayout::Same,
                        (CoremlLayout::Same, [0, 2, 3, 1]) if rank == 4 => CoremlLayout::Chw,
                        _ => return Err(
                            "a transpose has no Core ML form here: only NHWC<->NCHW of a map is"
                                .into(),
                        ),
                    };
                self.layer(&name, &[&x.blob], &out, linear(1.0, 0.0));
                Ok(Some(Val {
                    blob: out,
                    layout,
                    chw: x.chw,
                }))
            }
            Op::PRelu => Err(format!(
                "{} has no Core ML form here (Caffe only for now)",
                n.op.kind()
            )),
            Op::Slice { begin, end } => {
                // Height and width: one crop layer; channels: a slice layer.
                let x = self.val(n.inputs[0])?;
                let vector =
                    x.layout == CoremlLayout::Same && begin.len() == 2 && x.chw[1..] == [1, 1];
                if vector {
                    // (N, K) is a (K, 1, 1) blob: a channel slice.
                    if begin[0] != 0 || end[0] != n.outputs[0].shape[0] {
                        return Err("slicing the batch axis has no Core ML form".into());
                    }
                    self.layer(&name, &[&x.blob], &out, channel_slice(begin[1], end[1]));
                    return Ok(Some(Val {
                        blob: out,
                        layout: CoremlLayout::Same,
                        chw: [end[1] - begin[1], 1, 1],
                    }));
                }
                if x.layout == CoremlLayout::Same && begin.len() == 3 && x.chw[0] == 1 {
                    // (N, A, B) is a (1, A, B) blob: rows and columns are
                    // its height and width (tf.unstack of a matrix).
                    use slice_layer_params::SliceAxis;
                    if begin[0] != 0 || end[0] != n.outputs[0].shape[0] {
                        return Err("slicing the batch axis has no Core ML form".into());
                    }
                    let mut v = x;
                    let cut: Vec<usize> = (1..3)
                        .filter(|&i| begin[i] != 0 || end[i] != v.chw[i])
                        .collect();
                    for (j, &i) in cut.iter().enumerate() {
                        let top = if j + 1 == cut.len() {
                            out.clone()
                        } else {
                            format!("{name}/rows")
                        };
                        let axis = if i == 1 { SliceAxis::HEIGHT_AXIS } else { SliceAxis::WIDTH_AXIS };
                        self.layer(&top, &[&v.blob], &top, axis_slice(axis, begin[i], end[i]));
                        v.blob = top;
                        v.chw[i] = end[i] - begin[i];
                    }
                    if cut.is_empty() {
                        self.layer(&name, &[&v.blob], &out, linear(1.0, 0.0));
                        v.blob = out;
                    }
                    return Ok(Some(v));
                }
                if x.layout != CoremlLayout::Chw || begin.len() != 4 {
                    return Err(
                        "only slices of a 4-D map or an (N, K) matrix have a Core ML form here"
                            .into(),
                    );
                }
                let full = |i: usize, d: usize| begin[i] == 0 && end[i] == d;
                if !full(0, n.outputs[0].shape[0]) {
                    return Err("slicing the batch axis has no Core ML form".into());
                }
                let [c, h, w] = x.chw;
                let mut v = x;
                let spatial = !full(1, h) || !full(2, w);
                let channel = !full(3, c);
                if spatial {
                    let top = if channel {
                        format!("{name}/crop")
                    } else {
                        out.clone()
                    };
                    let mut p = CropLayerParams::new();
                    p.cropAmounts =
                        Some(borders([[begin[1], h - end[1]], [begin[2], w - end[2]]])).into();
                    self.layer(&top, &[&v.blob], &top, Layer::Crop(p));
                    v = Val {
                        blob: top,
                        layout: CoremlLayout::Chw,
                        chw: [c, end[1] - begin[1], end[2] - begin[2]],
                    };
                }
                if channel || !spatial {
                    self.layer(&name, &[&v.blob], &out, channel_slice(begin[3], end[3]));
                    v = Val {
                        blob: out.clone(),
                        layout: CoremlLayout::Chw,
                        chw: [end[3] - begin[3], v.chw[1], v.chw[2]],
                    };
                }
                Ok(Some(v))
            }
            Op::Pad { pads, value } => {
                let x = self.val(n.inputs[0])?;
                Self::need_chw(&x)?;
                if pads[0] != [0, 0] || pads[3] != [0, 0] {
                    return Err("padding the batch or channel axis".into());
                }
                let mut p = PaddingLayerParams::new();
                let mut c = padding_layer_params::PaddingConstant::new();
                c.value = *value;
                p.PaddingType = Some(padding_layer_params::PaddingType::Constant(c));
                p.paddingAmounts = Some(borders([pads[1], pads[2]])).into();
                self.layer(&name, &[&x.blob], &out, Layer::Padding(p));
                done(out)
            }
            Op::Resize(r) => {
                // upsample repeats (NN) or blends (BILINEAR) by whole
                // factors; resizeBilinear reaches any size on TF's legacy
                // grid (UPSAMPLE_MODE) or its align_corners grid
                // (STRICT_ALIGN_ENDPOINTS_MODE: linspace(0, X - 1, N),
                // which is TF's even for one output pixel).
                let x = self.val(n.inputs[0])?;
                Self::need_chw(&x)?;
                let whole = r.whole_factors([x.chw[1], x.chw[2]]);
                let layer = match (r.mode, whole, r.align_corners, r.half_pixel_centers) {
                    (ResizeMode::Nearest, Some(f), _, _) => {
                        let mut p = UpsampleLayerParams::new();
                        p.scalingFactor = vec![f[0] as u64, f[1] as u64];
                        p.mode = upsample_layer_params::InterpolationMode::NN.into();
                        Layer::Upsample(p)
                    }
                    (ResizeMode::Bilinear, Some(f), false, true) => {
                        // ALIGN_CORNERS_FALSE: src = (dst + 0.5) * in / out - 0.5.
                        let mut p = UpsampleLayerParams::new();
                        p.scalingFactor = vec![f[0] as u64, f[1] as u64];
                        p.mode = upsample_layer_params::InterpolationMode::BILINEAR.into();
                        p.linearUpsampleMode =
                            upsample_layer_params::LinearUpsampleMode::ALIGN_CORNERS_FALSE.into();
                        self.spec_version = self.spec_version.max(4);
                        Layer::Upsample(p)
                    }
                    (ResizeMode::Bilinear, _, align, false) => {
                        let mut m = SamplingMode::new();
                        m.samplingMethod = if align {
                            sampling_mode::Method::STRICT_ALIGN_ENDPOINTS_MODE
                        } else {
                            sampling_mode::Method::UPSAMPLE_MODE
                        }
                        .into();
                        let mut p = ResizeBilinearLayerParams::new();
                        p.targetSize = vec![r.size[0] as u64, r.size[1] as u64];
                        p.mode = Some(m).into();
                        self.spec_version = self.spec_version.max(3);
                        Layer::ResizeBilinear(p)
                    }
                    (ResizeMode::Bilinear, _, _, true) => return Err(
                        "a half-pixel bilinear resize by no whole factor has no exact Core ML NeuralNetwork form: resizeBilinear's ROI_ALIGN_MODE grid is not TF's, and upsample's fractional factors fix the output size by rounding (ONNX and the safetensors bundle carry it)"
                            .into(),
                    ),
                    (ResizeMode::Nearest, None, _, _) => return Err(
                        "a nearest resize that is no repeat by a whole factor in TF's arithmetic (another size, align_corners, or a legacy factor TF rounds early: 41, 47, ...) has no Core ML NeuralNetwork form: upsample repeats pixels by whole factors only (ONNX and the safetensors bundle carry it)"
                            .into(),
                    ),
                };
                self.layer(&name, &[&x.blob], &out, layer);
                done(out)
            }
            Op::Tile { .. } => Err(
                "Tile has no Core ML NeuralNetwork form faceall writes (a tf.repeat of a map's rows or columns is a nearest resize: the fuse_repeat pass makes it one)"
                    .into(),
            ),
            Op::SpaceDepth(sd) => {
                // Core ML's SPACE_TO_DEPTH / DEPTH_TO_SPACE use TF's depth
                // order (PIXEL_SHUFFLE is PyTorch's).
                let x = self.val(n.inputs[0])?;
                Self::need_chw(&x)?;
                let mut p = ReorganizeDataLayerParams::new();
                p.mode = if sd.to_space {
                    reorganize_data_layer_params::ReorganizationType::DEPTH_TO_SPACE
                } else {
                    reorganize_data_layer_params::ReorganizationType::SPACE_TO_DEPTH
                }
                .into();
                p.blockSize = sd.block as u64;
                self.layer(&name, &[&x.blob], &out, Layer::ReorganizeData(p));
                done(out)
            }
            Op::L2Normalize { axis, epsilon } => {
                let x = self.val(n.inputs[0])?;
                if x.layout != CoremlLayout::Same || n.outputs[0].shape.len() != 2 || *axis != 1 {
                    return Err("L2 normalisation is emitted for (N, C) values over C only".into());
                }
                let mut p = L2NormalizeLayerParams::new();
                p.epsilon = *epsilon;
                self.layer(&name, &[&x.blob], &out, Layer::L2normalize(p));
                Ok(Some(Val { blob: out, ..x }))
            }
        }
    }

    /// A convolution layer's parameters: [outputs, kernel channels, groups],
    /// kernel, strides, dilations, valid padding amounts [[top, bottom],
    /// [left, right]], weights in Core ML's order and an optional bias input.
    #[allow(clippy::too_many_arguments)]
    fn conv_params(
        &self,
        [out, kernel_ch, groups]: [usize; 3],
        k: [usize; 2],
        strides: [usize; 2],
        dilations: [usize; 2],
        pads: [[usize; 2]; 2],
        bias: Option<Wire>,
    ) -> R<ConvolutionLayerParams> {
        let mut p = ConvolutionLayerParams::new();
        p.outputChannels = out as u64;
        p.kernelChannels = kernel_ch as u64;
        p.nGroups = groups as u64;
        p.kernelSize = vec![k[0] as u64, k[1] as u64];
        p.stride = vec![strides[0] as u64, strides[1] as u64];
        p.dilationFactor = vec![dilations[0] as u64, dilations[1] as u64];
        let mut v = ValidPadding::new();
        v.paddingAmounts = Some(borders(pads)).into();
        p.ConvolutionPaddingType =
            Some(crate::proto::coreml::convolution_layer_params::ConvolutionPaddingType::Valid(v));
        // Filled by `later` (see `defer`).
        p.weights = Some(WeightParams::new()).into();
        if let Some(b) = bias {
            p.hasBias = true;
            p.bias = Some(weights(&self.konst(b)?, self.fp16)).into();
        }
        Ok(p)
    }

    /// The last layer's weights (empty in it) are `count` values that
    /// `fill` computes as the model is written.
    fn defer(
        &mut self,
        params_field: u32,
        weights_field: u32,
        count: usize,
        fill: impl Fn(&Graph, &mut crate::formats::layout::Sink<'_>) -> R<()> + 'static,
    ) -> R<()> {
        let layer = self
            .layers
            .len()
            .checked_sub(1)
            .ok_or("internal: weights before any layer")?;
        self.later.push(Later {
            layer,
            path: [(params_field, 0), (weights_field, 0)],
            count,
            fill: Box::new(fill),
        });
        Ok(())
    }

    fn scale_layer(
        &mut self,
        name: &str,
        x: &Val,
        out: &str,
        scale: Vec<f32>,
        bias: Option<Vec<f32>>,
    ) -> R<()> {
        if matches!(x.layout, CoremlLayout::FlatChw { .. }) || scale.len() != x.chw[0] {
            return Err("per-channel constant on a value without that channel axis".into());
        }
        let mut p = ScaleLayerParams::new();
        p.shapeScale = vec![scale.len() as u64];
        p.scale = Some(weights(&scale, self.fp16)).into();
        if let Some(b) = bias {
            p.hasBias = true;
            p.shapeBias = vec![b.len() as u64];
            p.bias = Some(weights(&b, self.fp16)).into();
        }
        self.layer(name, &[&x.blob], out, Layer::Scale(p));
        Ok(())
    }

    fn binary(&mut self, n: &Node, op: BinaryOp, out: String) -> R<Option<Val>> {
        let name = n.name.clone();
        let (a, b) = (n.inputs[0], n.inputs[1]);
        let (ca, cb) = (self.g.const_of(a).is_some(), self.g.const_of(b).is_some());
        if !ca && !cb {
            let (va, vb) = (self.val(a)?, self.val(b)?);
            let same = va.chw == vb.chw && va.layout == vb.layout;
            // Core ML broadcasts a (C, 1, 1) or (1, 1, 1) factor over (C, H, W).
            let bcast = |big: &Val, small: &Val| {
                !matches!(big.layout, CoremlLayout::FlatChw { .. })
                    && small.chw[1] == 1
                    && small.chw[2] == 1
                    && (small.chw[0] == big.chw[0] || small.chw[0] == 1)
            };
            // ... and a (1, H, W) map (a mean or norm over channels) over
            // (C, H, W), for add and multiply alike.
            let spatial = |big: &Val, small: &Val| {
                big.layout == CoremlLayout::Chw
                    && small.layout == CoremlLayout::Chw
                    && small.chw[0] == 1
                    && small.chw[1..] == big.chw[1..]
            };
            let any = same
                || spatial(&va, &vb)
                || spatial(&vb, &va)
                || bcast(&va, &vb)
                || bcast(&vb, &va);
            match op {
                BinaryOp::Add if any => self.layer(
                    &name,
                    &[&va.blob, &vb.blob],
                    &out,
                    Layer::Add(AddLayerParams::new()),
                ),
                BinaryOp::Sub if any => {
                    let neg = format!("{name}/negated");
                    self.layer(&neg, &[&vb.blob], &neg, linear(-1.0, 0.0));
                    self.layer(
                        &name,
                        &[&va.blob, &neg],
                        &out,
                        Layer::Add(AddLayerParams::new()),
                    );
                }
                BinaryOp::Mul if any => self.layer(
                    &name,
                    &[&va.blob, &vb.blob],
                    &out,
                    Layer::Multiply(MultiplyLayerParams::new()),
                ),
                BinaryOp::Div if same || bcast(&va, &vb) || spatial(&va, &vb) => {
                    let inv = format!("{name}/inverse");
                    let mut p = UnaryFunctionLayerParams::new();
                    p.type_ = unary_function_layer_params::Operation::INVERSE.into();
                    p.alpha = 1.0;
                    p.scale = 1.0;
                    self.layer(&inv, &[&vb.blob], &inv, Layer::Unary(p));
                    self.layer(
                        &name,
                        &[&va.blob, &inv],
                        &out,
                        Layer::Multiply(MultiplyLayerParams::new()),
                    );
                }
                _ => {
                    return Err(format!(
                        "{} of {:?} and {:?} has no Core ML form here",
                        n.op.kind(),
                        va.chw,
                        vb.chw
                    ))
                }
            }
            let big = if va.chw.iter().product::<usize>() >= vb.chw.iter().product::<usize>() {
                va
            } else {
                vb
            };
            return Ok(Some(Val { blob: out, ..big }));
        }
        if ca && cb {
            return Err("both inputs constant (run the fold_constants pass)".into());
        }
        let (x, k, k_first) = if ca { (b, a, true) } else { (a, b, false) };
        let v = self.val(x)?;
        let kt = self.g.const_of(k).ok_or("constant vanished")?;
        let kv = kt.as_f32().map_err(|e| e.to_string())?.into_owned();
        if self.g.fact(x).map_err(|e| e.to_string())?.shape != n.outputs[0].shape {
            // A (1, H, W) map and a per-channel constant (`rsqrt(var) *
            // gamma` of a LayerNorm): a 1x1 convolution from one channel
            // to C with the constant as weights (and bias).
            let c = *n.outputs[0].shape.last().unwrap_or(&0);
            let ks = kt.shape();
            let per_channel = kv.len() == c && crate::formats::layout::is_per_channel(ks, c);
            let one_channel = v.chw[0] == 1
                && (v.layout == CoremlLayout::Chw
                    || (v.layout == CoremlLayout::Same && v.chw == [1, 1, 1]));
            if one_channel && per_channel {
                let (scale, bias) = crate::formats::layout::per_channel_affine(op, k_first, kv, c)
                    .ok_or("per-channel Max/Min and a constant divided by a value have no Core ML form here")?;
                let mut p = ConvolutionLayerParams::new();
                p.outputChannels = c as u64;
                p.kernelChannels = 1;
                p.nGroups = 1;
                p.kernelSize = vec![1, 1];
                p.stride = vec![1, 1];
                p.dilationFactor = vec![1, 1];
                let mut vp = ValidPadding::new();
                vp.paddingAmounts = Some(borders([[0, 0], [0, 0]])).into();
                p.ConvolutionPaddingType = Some(
                    crate::proto::coreml::convolution_layer_params::ConvolutionPaddingType::Valid(
                        vp,
                    ),
                );
                p.weights = Some(weights(&scale, self.fp16)).into();
                if let Some(b) = bias {
                    p.hasBias = true;
                    p.bias = Some(weights(&b, self.fp16)).into();
                }
                self.layer(&name, &[&v.blob], &out, Layer::Convolution(p));
                return Ok(Some(Val {
                    blob: out,
                    layout: v.layout,
                    chw: [c, v.chw[1], v.chw[2]],
                }));
            }
            return Err("the constant broadcasts the value to a larger shape".into());
        }
        if kv.len() == 1 {
            let c = kv[0];
            let (alpha, beta) = match (op, k_first) {
                (BinaryOp::Add, _) => (1.0, c),
                (BinaryOp::Sub, false) => (1.0, -c),
                (BinaryOp::Sub, true) => (-1.0, c),
                (BinaryOp::Mul, _) => (c, 0.0),
                (BinaryOp::Div, false) => (1.0 / c, 0.0),
                (BinaryOp::Max, _) | (BinaryOp::Min, _) => {
                    // max(x, c) = relu(x - c) + c; min(x, c) = c - relu(c - x)
                    let s = if op == BinaryOp::Max { 1.0 } else { -1.0 };
                    let shifted = format!("{name}/shifted");
                    self.layer(&shifted, &[&v.blob], &shifted, linear(s, -s * c));
                    let r = format!("{name}/relu");
                    self.layer(
                        &r,
                        &[&shifted],
                        &r,
                        activation(NonlinearityType::ReLU(ActivationReLU::new())),
                    );
                    self.layer(&name, &[&r], &out, linear(s, c));
                    return Ok(Some(Val { blob: out, ..v }));
                }
                (BinaryOp::Div, true) => return Err("constant divided by a value".into()),
            };
            self.layer(&name, &[&v.blob], &out, linear(alpha, beta));
            return Ok(Some(Val { blob: out, ..v }));
        }
        let c = *n.outputs[0].shape.last().unwrap_or(&0);
        let ks = kt.shape();
        let per_channel = kv.len() == c && crate::formats::layout::is_per_channel(ks, c);
        if !per_channel {
            return Err(format!(
                "constant of shape {ks:?} is neither a scalar nor per-channel"
            ));
        }
        let (scale, bias) = crate::formats::layout::per_channel_affine(op, k_first, kv, c).ok_or(
            "per-channel Max/Min and a constant divided by a value have no Core ML form here",
        )?;
        self.scale_layer(&name, &v, &out, scale, bias)?;
        Ok(Some(Val { blob: out, ..v }))
    }
}

/// Channels `begin..end` of a blob (a `slice` layer, step 1).
fn channel_slice(begin: usize, end: usize) -> Layer {
    axis_slice(slice_layer_params::SliceAxis::CHANNEL_AXIS, begin, end)
}

fn axis_slice(axis: slice_layer_params::SliceAxis, begin: usize, end: usize) -> Layer {
    let mut p = SliceLayerParams::new();
    p.startIndex = begin as i64;
    p.endIndex = end as i64;
    p.stride = 1;
    p.axis = axis.into();
    Layer::Slice(p)
}

fn feature(
    name: &str,
    chw: [usize; 3],
    layout: &CoremlLayout,
    description: String,
) -> FeatureDescription {
    let mut a = ArrayFeatureType::new();
    a.shape = match layout {
        CoremlLayout::Chw => chw.iter().map(|&d| d as i64).collect(),
        // A map in TF's own order (TF (N, A, B), or a channel-first
        // (N, C, H, W) value) keeps its three axes.
        _ if chw[1] > 1 || chw[2] > 1 => chw.iter().map(|&d| d as i64).collect(),
        _ => vec![chw[0] as i64],
    };
    a.dataType = ArrayDataType::FLOAT32.into();
    let mut t = FeatureType::new();
    t.Type = Some(feature_type::Type::MultiArrayType(a));
    let mut f = FeatureDescription::new();
    f.name = name.to_string();
    f.shortDescription = description;
    f.type_ = Some(t).into();
    f
}

/// Emit the model; every node without a Core ML form is reported at once.
pub fn emit(g: &Graph, opts: &CoremlOptions) -> Result<CoremlModel> {
    let mut em = Em {
        g,
        fp16: opts.fp16,
        layers: vec![],
        vals: HashMap::new(),
        names: HashSet::new(),
        spec_version: 1,
        later: vec![],
    };
    let mut blobs = vec![];
    crate::formats::walk_needed(g, "Core ML", |i| {
        if let Some(v) = em.emit(i)? {
            if let Some(t) = g.nodes[i].carries() {
                blobs.push(CoremlBlob {
                    tensor: t.to_string(),
                    blob: v.blob.clone(),
                    layout: v.layout.clone(),
                    chw: v.chw,
                });
            }
            em.vals.insert(Wire { node: i, slot: 0 }, v);
        }
        Ok(())
    })?;
    let mut desc = ModelDescription::new();
    for &i in &g.inputs {
        let v = em
            .vals
            .get(&Wire { node: i, slot: 0 })
            .ok_or_else(|| Error::Graph("input not emitted".into()))?;
        let text = match v.layout {
            CoremlLayout::Chw => format!(
                "float32 {}x{}x{} (C, H, W: channel-first) for TF input '{}' {:?}; one sample per prediction",
                v.chw[0], v.chw[1], v.chw[2], g.nodes[i].name, g.nodes[i].outputs[0].shape
            ),
            _ => format!("float32 vector for TF input '{}' {:?}; one sample per prediction", g.nodes[i].name, g.nodes[i].outputs[0].shape),
        };
        desc.input.push(feature(&v.blob, v.chw, &v.layout, text));
    }
    // Core ML outputs are layer outputs named after the TF outputs: a
    // value that kept another tensor's blob (a reshape that needed no
    // layer) is copied under the output's name by an identity (linear 1, 0).
    let produced: HashSet<String> = em.layers.iter().flat_map(|l| l.output.clone()).collect();
    for w in &g.outputs {
        let mut v =
            em.vals.get(w).cloned().ok_or_else(|| {
                Error::Graph(format!("output '{}' was not emitted", g.wire_name(*w)))
            })?;
        if let Some(t) = g.nodes[w.node].carries() {
            if v.blob != t && !produced.contains(t) && !em.names.contains(t) {
                let t = t.to_string();
                em.layer(&t, &[&v.blob], &t, linear(1.0, 0.0));
                v.blob = t;
            }
        }
        let text = format!("TF output '{}' {:?}", g.wire_name(*w), g.fact(*w)?.shape);
        desc.output.push(feature(&v.blob, v.chw, &v.layout, text));
    }
    let mut meta = Metadata::new();
    meta.shortDescription = opts.short_description.clone().unwrap_or_else(|| {
        format!(
            "{} converted from TensorFlow by faceall {}",
            opts.source_name,
            env!("CARGO_PKG_VERSION")
        )
    });
    meta.author = opts.author.clone().unwrap_or_default();
    meta.versionString = opts.version.clone().unwrap_or_default();
    meta.license = opts.license.clone().unwrap_or_default();
    for (k, v) in [
        ("faceall.source", opts.source_name.clone()),
        ("faceall.source_sha256", opts.source_sha256.clone()),
        ("faceall.version", env!("CARGO_PKG_VERSION").to_string()),
        (
            "faceall.weights",
            if opts.fp16 { "float16" } else { "float32" }.to_string(),
        ),
    ] {
        let mut e = StringEntry::new();
        e.key = k.into();
        e.value = v;
        meta.userDefined.push(e);
    }
    desc.metadata = Some(meta).into();
    let mut nn = NeuralNetwork::new();
    let spec_version = em.spec_version;
    nn.layers = em.layers;
    let mut model = Model::new();
    model.specificationVersion = spec_version;
    model.description = Some(desc).into();
    model.Type = Some(model::Type::NeuralNetwork(nn));
    Ok(CoremlModel {
        model,
        blobs,
        later: em.later,
        fp16: opts.fp16,
    })
}

/// NeuralNetworkLayer's `convolution` and `innerProduct` fields and their
/// parameters' `weights` fields (NeuralNetwork.proto).
const CONVOLUTION: u32 = 100;
const CONV_WEIGHTS: u32 = 90;
const INNER_PRODUCT: u32 = 140;
const INNER_PRODUCT_WEIGHTS: u32 = 20;
/// Model's `neuralNetwork` field and NeuralNetwork's `layers` field.
const NEURAL_NETWORK: u32 = 500;
const LAYERS: u32 = 1;

/// The .mlmodel, streamed to `w`: the model's head, then a layer at a time
/// with its deferred weights (`Later`) computed from `g` a run at a time
/// and spliced in (`formats::splice`). The bytes are those of encoding the
/// whole model at once (rust-protobuf writes fields in declaration order:
/// the network last in Model, its layers first in NeuralNetwork; the test
/// beside this checks it).
pub fn write_mlmodel(c: &mut CoremlModel, g: &Graph, w: &mut dyn std::io::Write) -> Result<()> {
    use crate::formats::splice::{spliced_len, write_spliced, Deferred, Elem};
    use protobuf::Message;
    let enc = |e: protobuf::Error| Error::Format(format!("encoding the mlmodel: {e}"));
    let Some(model::Type::NeuralNetwork(mut nn)) = c.model.Type.take() else {
        return c.model.write_to_writer(w).map_err(enc);
    };
    let head = c.model.write_to_bytes().map_err(enc);
    let layers = std::mem::take(&mut nn.layers);
    let rest = nn.write_to_bytes().map_err(enc);
    let encoded: std::result::Result<Vec<Vec<u8>>, _> = layers
        .iter()
        .map(|l| l.write_to_bytes().map_err(enc))
        .collect();
    nn.layers = layers;
    c.model.Type = Some(model::Type::NeuralNetwork(nn));
    let (head, rest, encoded) = (head?, rest?, encoded?);
    let elem = if c.fp16 { Elem::F16 } else { Elem::F32 };
    let field = if c.fp16 { 2 } else { 1 };
    let deferred: Vec<Option<Deferred>> = {
        let mut d: Vec<Option<Deferred>> = (0..encoded.len()).map(|_| None).collect();
        for l in &c.later {
            let slot = d
                .get_mut(l.layer)
                .ok_or_else(|| Error::Format("internal: deferred weights of no layer".into()))?;
            *slot = Some(Deferred {
                path: l.path.to_vec(),
                field,
                count: l.count,
                elem,
                fill: &*l.fill,
            });
        }
        d
    };
    let mut lens = Vec::with_capacity(encoded.len());
    for (bytes, d) in encoded.iter().zip(&deferred) {
        lens.push(match d {
            Some(d) => spliced_len(bytes, d)?,
            None => bytes.len(),
        });
    }
    let nn_len: usize = lens
        .iter()
        .map(|&l| tag_len(LAYERS) + varint_len(l) + l)
        .sum::<usize>()
        + rest.len();
    w.write_all(&head)?;
    write_len_tag(w, NEURAL_NETWORK, nn_len)?;
    for ((bytes, d), len) in encoded.iter().zip(&deferred).zip(lens) {
        write_len_tag(w, LAYERS, len)?;
        match d {
            Some(d) => write_spliced(w, bytes, d, g)?,
            None => w.write_all(bytes)?,
        }
    }
    w.write_all(&rest)?;
    Ok(())
}

fn varint_len(v: usize) -> usize {
    let mut n = 1;
    let mut v = v >> 7;
    while v > 0 {
        v >>= 7;
        n += 1;
    }
    n
}

fn tag_len(field: u32) -> usize {
    varint_len((field as usize) << 3)
}

/// A length-delimited field's tag and length.
fn write_len_tag(w: &mut dyn std::io::Write, field: u32, len: usize) -> Result<()> {
    let mut os = protobuf::CodedOutputStream::new(w);
    os.write_tag(field, protobuf::rt::WireType::LengthDelimited)
        .and_then(|()| os.write_raw_varint64(len as u64))
        .and_then(|()| os.flush())
        .map_err(|e| Error::Format(format!("encoding the mlmodel: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::Message;

    /// Streaming the .mlmodel with its weights spliced in a run at a time
    /// gives the bytes of encoding the whole model at once, in float32 and
    /// float16, for convolutions, depthwise ones and inner products.
    #[test]
    fn streamed_mlmodel_is_the_whole_model_encoded() {
        for case in ["matmul_bn", "depthwise_relu6", "flatten_output", "deconv"] {
            for fp16 in [false, true] {
                let g = crate::formats::fixture_graph(case);
                let opts = CoremlOptions {
                    fp16,
                    ..Default::default()
                };
                let mut c = emit(&g, &opts).unwrap();
                assert!(!c.later.is_empty(), "{case}: no deferred weights");
                let mut streamed = vec![];
                write_mlmodel(&mut c, &g, &mut streamed).unwrap();
                let mut whole = c.model.clone();
                let Some(model::Type::NeuralNetwork(nn)) = &mut whole.Type else {
                    panic!("{case}: not a neural network");
                };
                for d in &c.later {
                    let data = crate::formats::splice::collect(&*d.fill, &g).unwrap();
                    let w = match nn.layers[d.layer].layer.as_mut().unwrap() {
                        Layer::Convolution(p) => p.weights.as_mut().unwrap(),
                        Layer::InnerProduct(p) => p.weights.as_mut().unwrap(),
                        _ => panic!("{case}: deferred weights of another layer"),
                    };
                    *w = weights(&data, fp16);
                }
                assert_eq!(
                    streamed,
                    whole.write_to_bytes().unwrap(),
                    "{case} fp16 {fp16}"
                );
            }
        }
    }
}
