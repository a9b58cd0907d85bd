//! The closed set of operations of faceall's IR, with typed parameters and
//! shape inference. Parameters that TensorFlow passes as constant inputs
//! (axes, shapes, paddings) are resolved at import and live here.

use serde::{Deserialize, Serialize};

use super::tensor::{DType, Tensor};

/// Where the channel axis of a 4-D activation lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    Nhwc,
    Nchw,
}

impl Layout {
    /// Axes of (H, W, C) in a 4-D shape.
    pub fn hwc(self) -> [usize; 3] {
        match self {
            Layout::Nhwc => [1, 2, 3],
            Layout::Nchw => [2, 3, 1],
        }
    }
    pub fn channel_axis(self) -> usize {
        self.hwc()[2]
    }
}

/// Spatial padding as TensorFlow states it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Padding {
    Same,
    Valid,
    /// [[top, bottom], [left, right]]
    Explicit([[usize; 2]; 2]),
}

/// TF's SAME rule for one spatial axis: (output size, pad before, pad after).
pub fn same_padding(
    input: usize,
    k: usize,
    stride: usize,
    dilation: usize,
) -> (usize, usize, usize) {
    let out = input.div_ceil(stride.max(1));
    let eff_k = (k.max(1) - 1) * dilation + 1;
    let total = ((out.saturating_sub(1)) * stride + eff_k).saturating_sub(input);
    (out, total / 2, total - total / 2)
}

/// Resolve padding into output size and [before, after] for one axis.
/// `None` when the window does not fit.
pub fn resolve_axis(
    padding: &Padding,
    axis: usize,
    input: usize,
    k: usize,
    stride: usize,
    dilation: usize,
) -> Option<(usize, [usize; 2])> {
    let eff_k = (k.max(1) - 1) * dilation + 1;
    let stride = stride.max(1);
    match padding {
        Padding::Same => {
            let (o, b, a) = same_padding(input, k, stride, dilation);
            Some((o, [b, a]))
        }
        Padding::Valid => {
            if input < eff_k {
                return None;
            }
            Some(((input - eff_k) / stride + 1, [0, 0]))
        }
        Padding::Explicit(p) => {
            let pads = p[axis];
            let padded = input + pads[0] + pads[1];
            if padded < eff_k {
                return None;
            }
            Some(((padded - eff_k) / stride + 1, pads))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conv2d {
    pub strides: [usize; 2],
    pub dilations: [usize; 2],
    pub padding: Padding,
    pub layout: Layout,
    /// DepthwiseConv2dNative: filter [kh, kw, in, multiplier].
    pub depthwise: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PoolKind {
    Max,
    Avg,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pool {
    pub kind: PoolKind,
    pub ksize: [usize; 2],
    pub strides: [usize; 2],
    pub padding: Padding,
    pub layout: Layout,
}

/// TF `Conv2DBackpropInput` (`tf.nn.conv2d_transpose`, Keras
/// `Conv2DTranspose`) on NHWC: (x, filter [kh, kw, out, in][, bias]). The
/// transpose of a convolution with these strides, dilations and padding
/// whose input is `size` ([height, width]): input pixel (i, j) adds
/// `x * filter[ky, kx]` at `(i * stride + ky * dilation - pad_before, ...)`,
/// pads as TF's forward rule gives them for an input of `size`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deconv2d {
    pub strides: [usize; 2],
    pub dilations: [usize; 2],
    pub padding: Padding,
    pub size: [usize; 2],
}

impl Deconv2d {
    /// The transposed convolution ONNX's ConvTranspose and MIL's
    /// conv_transpose state: rows `crops` ([before, after] per axis) cut
    /// from the full scatter of an `input` map by a `k` kernel, then
    /// `extra` rows added after (ONNX's output_padding). None when an input
    /// or kernel side is empty or the crops take more than there is.
    pub fn from_crops(
        input: [usize; 2],
        k: [usize; 2],
        strides: [usize; 2],
        dilations: [usize; 2],
        crops: [[usize; 2]; 2],
        extra: [usize; 2],
    ) -> Option<Deconv2d> {
        let mut size = [0; 2];
        let mut pads = [[0; 2]; 2];
        for i in 0..2 {
            let full =
                strides[i] * input[i].checked_sub(1)? + k[i].checked_sub(1)? * dilations[i] + 1;
            let [before, after] = crops[i];
            size[i] = (full + extra[i]).checked_sub(before + after)?;
            // The forward convolution of the output with these pads gives
            // the input back.
            pads[i] = [before, after.checked_sub(extra[i])?];
        }
        Some(Deconv2d {
            strides,
            dilations,
            padding: Padding::Explicit(pads),
            size,
        })
    }

    /// [[top, bottom], [left, right]] cropped from the full scatter, for a
    /// `k` kernel on an `input` (height, width) map; None when the forward
    /// convolution of `size` would not give `input`.
    pub fn pads(&self, input: [usize; 2], k: [usize; 2]) -> Option<[[usize; 2]; 2]> {
        let mut out = [[0; 2]; 2];
        for i in 0..2 {
            let (o, p) = resolve_axis(
                &self.padding,
                i,
                self.size[i],
                k[i],
                self.strides[i],
                self.dilations[i],
            )?;
            if o != input[i] {
                return None;
            }
            out[i] = p;
        }
        Some(out)
    }
}

/// How `Resize` picks or blends source pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResizeMode {
    Nearest,
    Bilinear,
}

/// TF `ResizeNearestNeighbor` / `ResizeBilinear` of an NHWC map to `size`
/// ([height, width]). The two flags are TF's and select how an output
/// coordinate maps to the source (TF refuses both at once):
/// - neither: `src = dst * in / out` (TF1's default, Keras' legacy resize);
/// - `align_corners`: `src = dst * (in - 1) / (out - 1)`, nearest rounds;
/// - `half_pixel_centers`: `src = (dst + 0.5) * in / out`, minus 0.5 for
///   bilinear (TF2's `tf.image.resize`, Keras `UpSampling2D`).
///
/// Nearest floors (rounds under `align_corners`) and clamps to the input;
/// bilinear blends the two neighbours of `floor(src)`, clamped to the edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resize {
    pub mode: ResizeMode,
    pub size: [usize; 2],
    pub align_corners: bool,
    pub half_pixel_centers: bool,
}

/// One output index's bilinear neighbours and the weight of the upper one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lerp {
    pub lower: usize,
    pub upper: usize,
    pub frac: f32,
}

impl Resize {
    /// TF's `CalculateResizeScale`: input pixels per output pixel, float32.
    fn scale(&self, input: usize, output: usize) -> f32 {
        if self.align_corners && output > 1 {
            (input - 1) as f32 / (output - 1) as f32
        } else {
            input as f32 / output as f32
        }
    }

    /// The source index each of `output` indices reads from an axis of
    /// `input` (nearest), in TF's float32 arithmetic.
    pub fn nearest_sources(&self, input: usize, output: usize) -> Vec<usize> {
        let s = self.scale(input, output);
        (0..output)
            .map(|o| {
                let at = if self.half_pixel_centers {
                    (o as f32 + 0.5) * s
                } else {
                    o as f32 * s
                };
                let i = if self.align_corners {
                    at.round()
                } else {
                    at.floor()
                };
                // Negative only through rounding; TF clamps at both ends.
                (i.max(0.0) as usize).min(input.saturating_sub(1))
            })
            .collect()
    }

    /// TF's `compute_interpolation_weights` for one axis (bilinear).
    pub fn bilinear_weights(&self, input: usize, output: usize) -> Vec<Lerp> {
        let s = self.scale(input, output);
        let last = input.saturating_sub(1);
        (0..output)
            .map(|o| {
                let at = if self.half_pixel_centers {
                    (o as f32 + 0.5) * s - 0.5
                } else {
                    o as f32 * s
                };
                let f = at.floor();
                Lerp {
                    lower: (f.max(0.0) as usize).min(last),
                    upper: (at.ceil().max(0.0) as usize).min(last),
                    frac: at - f,
                }
            })
            .collect()
    }

    /// The whole factor `out / in` of each spatial axis when the resize is
    /// a fixed pattern every format can hold: nearest that repeats each
    /// input pixel `f` times in TF's own float32 arithmetic (which the
    /// legacy rule misses for some factors: 41, 47, 55, ... round `in /
    /// out` down and read one pixel early), or bilinear without
    /// `align_corners` (a fixed stencil; TF's float weights differ from it
    /// by rounding only). The unit factor always.
    pub fn whole_factors(&self, input: [usize; 2]) -> Option<[usize; 2]> {
        let mut f = [0; 2];
        for i in 0..2 {
            let (a, b) = (input[i], self.size[i]);
            if a == 0 || b % a != 0 {
                return None;
            }
            f[i] = b / a;
            if self.align_corners && f[i] != 1 {
                return None;
            }
            let repeats = || {
                self.nearest_sources(a, b)
                    .iter()
                    .enumerate()
                    .all(|(o, &src)| src == o / f[i])
            };
            if self.mode == ResizeMode::Nearest && !repeats() {
                return None;
            }
        }
        Some(f)
    }
}

/// TF `DepthToSpace` (`to_space`) or `SpaceToDepth` of an NHWC map, block
/// `block`: depth index `(i * block + j) * C' + c` <-> pixel offset (i, j),
/// channel c (ONNX's DCR order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceDepth {
    pub block: usize,
    pub to_space: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchNorm {
    pub epsilon: f32,
    pub layout: Layout,
    /// is_training: normalise with the batch's own statistics.
    pub training: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Activation {
    Relu,
    Relu6,
    Elu,
    Sigmoid,
    Tanh,
    /// `x` where `x >= 0`, else `alpha * x` (TF's LeakyRelu, default alpha 0.2).
    LeakyRelu {
        alpha: f32,
    },
    /// `x * Phi(x)`, Phi the standard normal CDF: exactly
    /// `0.5 * x * erfc(-x / sqrt 2)` (Keras, `tf.nn.gelu`), or with
    /// `approximate` the tanh form
    /// `0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))`.
    /// The `fuse_gelu` pass builds it from either pattern.
    Gelu {
        approximate: bool,
    },
}

/// `1 / sqrt(2)` of the exact GELU, as float32.
pub const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// `sqrt(2 / pi)` of the tanh GELU, as float32.
pub const SQRT_2_OVER_PI: f32 = 0.797_884_6;
/// The cubic coefficient of the tanh GELU.
pub const GELU_CUBIC: f32 = 0.044_715;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum UnaryOp {
    Square,
    Sqrt,
    Rsqrt,
    Neg,
    Exp,
    /// Natural logarithm.
    Log,
    /// The error function (TF `Erf`).
    Erf,
    /// `1 - erf(x)`, computed without cancellation (TF `Erfc`).
    Erfc,
    /// `x^exponent`, a constant exponent (TF `Pow` of a scalar constant;
    /// the tanh GELU's `x^3`).
    Pow {
        exponent: f32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReduceOp {
    Sum,
    Mean,
}

/// One IR operation. Inputs are wires on the node; see `Op::arity`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", content = "params", rename_all = "snake_case")]
pub enum Op {
    /// A graph input (TF Placeholder); its shape is the node's output fact.
    Input,
    /// The value lives beside the graph (safetensors); JSON holds dtype and shape.
    #[serde(serialize_with = "ser_const", skip_deserializing)]
    Const(Tensor),
    /// Passes its input through (TF Identity, PlaceholderWithDefault).
    Identity,
    /// TF1 Switch: (data, pred) -> (output_false, output_true); one is dead.
    Switch,
    /// TF1 Merge: the one live input -> (output, value_index).
    Merge,
    /// (x, filter[, bias]); the bias appears once a pass folds one in.
    Conv2d(Conv2d),
    /// (x, filter [kh, kw, out, in][, bias]); see `Deconv2d`.
    Deconv2d(Deconv2d),
    /// (x, bias)
    BiasAdd {
        layout: Layout,
    },
    /// (x, gamma, beta, mean, variance)
    BatchNorm(BatchNorm),
    Activation(Activation),
    /// Softmax over the last axis.
    Softmax,
    Pool(Pool),
    Concat {
        axis: usize,
    },
    Binary(BinaryOp),
    Unary(UnaryOp),
    Reduce {
        reduce: ReduceOp,
        axes: Vec<usize>,
        keep_dims: bool,
    },
    /// (a, b)
    MatMul {
        transpose_a: bool,
        transpose_b: bool,
    },
    /// sum_i coeffs[i] * inputs[i], inputs of one shape (residual `x + s * branch`).
    WeightedSum {
        coeffs: Vec<f32>,
    },
    /// x * rsqrt(max(sum(x^2 over axis), epsilon)), as tf.math.l2_normalize.
    L2Normalize {
        axis: usize,
        epsilon: f32,
    },
    Reshape {
        shape: Vec<usize>,
    },
    Squeeze {
        axes: Vec<usize>,
    },
    ExpandDims {
        axis: usize,
    },
    Pad {
        pads: Vec<[usize; 2]>,
        value: f32,
    },
    /// `x[begin[0]..end[0], begin[1]..end[1], ...]`, step 1 (TF `Slice`,
    /// and `StridedSlice` with unit strides: Keras Cropping2D).
    Slice {
        begin: Vec<usize>,
        end: Vec<usize>,
    },
    /// Output axis i is input axis perm[i].
    Transpose {
        perm: Vec<usize>,
    },
    /// (x, alpha): max(x, 0) + alpha * min(x, 0), alpha one per channel of
    /// the last axis (Keras PReLU; `fuse_prelu` builds it).
    PRelu,
    /// NHWC spatial resize; see `Resize`.
    Resize(Resize),
    /// TF `Tile`: the value repeated `multiples[i]` times along axis i
    /// (whole copies, as tf.tile; tf.repeat tiles an inserted unit axis,
    /// which `fuse_repeat` turns into a nearest resize).
    Tile {
        multiples: Vec<usize>,
    },
    /// NHWC DepthToSpace / SpaceToDepth; see `SpaceDepth`.
    SpaceDepth(SpaceDepth),
}

fn ser_const<S: serde::Serializer>(t: &Tensor, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut st = s.serialize_struct("Const", 2)?;
    st.serialize_field("dtype", &t.dtype())?;
    st.serialize_field("shape", t.shape())?;
    st.end()
}

/// The type and shape of one value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fact {
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl Fact {
    pub fn f32(shape: Vec<usize>) -> Self {
        Fact {
            dtype: DType::F32,
            shape,
        }
    }
}

/// Numpy/TF broadcasting of two shapes.
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            1
        };
        let db = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return Err(format!("shapes {a:?} and {b:?} do not broadcast")),
        };
    }
    Ok(out)
}

impl Op {
    /// TF-like name of the op kind, for messages and histograms.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Input => "Input",
            Op::Const(_) => "Const",
            Op::Identity => "Identity",
            Op::Switch => "Switch",
            Op::Merge => "Merge",
            Op::Conv2d(c) if c.depthwise => "DepthwiseConv2d",
            Op::Conv2d(_) => "Conv2d",
            Op::Deconv2d(_) => "Conv2DBackpropInput",
            Op::BiasAdd { .. } => "BiasAdd",
            Op::BatchNorm(_) => "BatchNorm",
            Op::Activation(a) => match a {
                Activation::Relu => "Relu",
                Activation::Relu6 => "Relu6",
                Activation::Elu => "Elu",
                Activation::Sigmoid => "Sigmoid",
                Activation::Tanh => "Tanh",
                Activation::LeakyRelu { .. } => "LeakyRelu",
                Activation::Gelu { approximate: false } => "Gelu",
                Activation::Gelu { approximate: true } => "GeluTanh",
            },
            Op::Softmax => "Softmax",
            Op::Pool(p) => match p.kind {
                PoolKind::Max => "MaxPool",
                PoolKind::Avg => "AvgPool",
            },
            Op::Concat { .. } => "Concat",
            Op::Binary(b) => match b {
                BinaryOp::Add => "Add",
                BinaryOp::Sub => "Sub",
                BinaryOp::Mul => "Mul",
                BinaryOp::Div => "Div",
                BinaryOp::Max => "Maximum",
                BinaryOp::Min => "Minimum",
            },
            Op::Unary(u) => match u {
                UnaryOp::Square => "Square",
                UnaryOp::Sqrt => "Sqrt",
                UnaryOp::Rsqrt => "Rsqrt",
                UnaryOp::Neg => "Neg",
                UnaryOp::Exp => "Exp",
                UnaryOp::Log => "Log",
                UnaryOp::Erf => "Erf",
                UnaryOp::Erfc => "Erfc",
                UnaryOp::Pow { .. } => "Pow",
            },
            Op::Reduce { reduce, .. } => match reduce {
                ReduceOp::Sum => "Sum",
                ReduceOp::Mean => "Mean",
            },
            Op::MatMul { .. } => "MatMul",
            Op::WeightedSum { .. } => "WeightedSum",
            Op::L2Normalize { .. } => "L2Normalize",
            Op::Reshape { .. } => "Reshape",
            Op::Squeeze { .. } => "Squeeze",
            Op::ExpandDims { .. } => "ExpandDims",
            Op::Pad { .. } => "Pad",
            Op::Slice { .. } => "Slice",
            Op::Transpose { .. } => "Transpose",
            Op::PRelu => "PRelu",
            Op::Resize(r) => match r.mode {
                ResizeMode::Nearest => "ResizeNearestNeighbor",
                ResizeMode::Bilinear => "ResizeBilinear",
            },
            Op::Tile { .. } => "Tile",
            Op::SpaceDepth(s) if s.to_space => "DepthToSpace",
            Op::SpaceDepth(_) => "SpaceToDepth",
        }
    }

    /// Allowed number of inputs: (min, max).
    pub fn arity(&self) -> (usize, usize) {
        match self {
            Op::Input | Op::Const(_) => (0, 0),
            Op::Switch | Op::BiasAdd { .. } | Op::Binary(_) | Op::PRelu => (2, 2),
            Op::Conv2d(_) | Op::Deconv2d(_) | Op::MatMul { .. } => (2, 3),
            Op::WeightedSum { coeffs } => (coeffs.len(), coeffs.len()),
            Op::BatchNorm(_) => (5, 5),
            Op::Merge | Op::Concat { .. } => (1, usize::MAX),
            _ => (1, 1),
        }
    }

    /// Number of outputs.
    pub fn num_outputs(&self) -> usize {
        match self {
            Op::Switch | Op::Merge => 2,
            _ => 1,
        }
    }

    /// Output facts from input facts. Errors are plain messages; the caller
    /// adds the node name and op.
    pub fn infer(&self, inputs: &[&Fact]) -> Result<Vec<Fact>, String> {
        let (lo, hi) = self.arity();
        if inputs.len() < lo || inputs.len() > hi {
            return Err(format!(
                "expects {} input(s), has {}",
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}..")
                },
                inputs.len()
            ));
        }
        let x = inputs.first().map(|f| &f.shape);
        let rank4 = |s: &Vec<usize>| -> Result<(), String> {
            if s.len() != 4 {
                Err(format!("needs a 4-D input, has shape {s:?}"))
            } else {
                Ok(())
            }
        };
        let f32s = |shape: Vec<usize>| Ok(vec![Fact::f32(shape)]);
        match self {
            Op::Input => Err("an Input's fact is set by the frontend".into()),
            Op::Const(t) => Ok(vec![Fact {
                dtype: t.dtype(),
                shape: t.shape().to_vec(),
            }]),
            Op::Identity => Ok(vec![inputs[0].clone()]),
            Op::Switch => {
                if inputs[1].dtype != DType::Bool || !inputs[1].shape.is_empty() {
                    return Err("the predicate must be a scalar bool".into());
                }
                Ok(vec![inputs[0].clone(), inputs[0].clone()])
            }
            Op::Merge => {
                let first = inputs[0];
                if inputs.iter().any(|f| *f != first) {
                    return Err("merged values have different shapes".into());
                }
                Ok(vec![
                    first.clone(),
                    Fact {
                        dtype: DType::I32,
                        shape: vec![],
                    },
                ])
            }
            Op::Conv2d(c) => {
                let x = &inputs[0].shape;
                let w = &inputs[1].shape;
                rank4(x)?;
                if w.len() != 4 {
                    return Err(format!("filter must be 4-D, has shape {w:?}"));
                }
                let [ha, wa, ca] = c.layout.hwc();
                if w[2] != x[ca] {
                    return Err(format!(
                        "filter {w:?} expects {} input channels, input {x:?} has {}",
                        w[2], x[ca]
                    ));
                }
                let mut out = x.clone();
                for (i, (axis, k)) in [(ha, w[0]), (wa, w[1])].into_iter().enumerate() {
                    let (o, _) =
                        resolve_axis(&c.padding, i, x[axis], k, c.strides[i], c.dilations[i])
                            .ok_or_else(|| format!("window {k} does not fit the input {x:?}"))?;
                    out[axis] = o;
                }
                out[ca] = if c.depthwise { w[2] * w[3] } else { w[3] };
                if let Some(b) = inputs.get(2) {
                    if b.shape != [out[ca]] {
                        return Err(format!(
                            "bias {:?} does not match {} output channels",
                            b.shape, out[ca]
                        ));
                    }
                }
                f32s(out)
            }
            Op::Deconv2d(d) => {
                let (x, w) = (&inputs[0].shape, &inputs[1].shape);
                rank4(x)?;
                if w.len() != 4 || w[3] != x[3] {
                    return Err(format!(
                        "filter {w:?} does not take the {} channels of {x:?}",
                        x[3]
                    ));
                }
                if d.pads([x[1], x[2]], [w[0], w[1]]).is_none() {
                    return Err(format!(
                        "a {}x{} map is not what a {:?} convolution of {:?} with stride {:?} gives",
                        x[1], x[2], d.padding, d.size, d.strides
                    ));
                }
                if let Some(b) = inputs.get(2) {
                    if b.shape != [w[2]] {
                        return Err(format!(
                            "bias {:?} does not match {} outputs",
                            b.shape, w[2]
                        ));
                    }
                }
                f32s(vec![x[0], d.size[0], d.size[1], w[2]])
            }
            Op::BiasAdd { layout } => {
                let x = &inputs[0].shape;
                let axis = if x.len() == 4 {
                    layout.channel_axis()
                } else {
                    x.len().checked_sub(1).ok_or("BiasAdd needs rank >= 1")?
                };
                if inputs[1].shape != [x[axis]] {
                    return Err(format!(
                        "bias {:?} does not match {} channels",
                        inputs[1].shape, x[axis]
                    ));
                }
                f32s(x.clone())
            }
            Op::BatchNorm(bn) => {
                let x = &inputs[0].shape;
                rank4(x)?;
                let c = x[bn.layout.channel_axis()];
                for (i, name) in [(1, "scale"), (2, "offset"), (3, "mean"), (4, "variance")] {
                    let s = &inputs[i].shape;
                    let ok =
                        s == &[c] || (bn.training && i >= 3 && s.iter().product::<usize>() == 0);
                    if !ok {
                        return Err(format!("{name} {s:?} does not match {c} channels"));
                    }
                }
                f32s(x.clone())
            }
            Op::Activation(_) | Op::Softmax | Op::Unary(_) => Ok(vec![inputs[0].clone()]),
            Op::Pool(p) => {
                let x = &inputs[0].shape;
                rank4(x)?;
                let [ha, wa, _] = p.layout.hwc();
                let mut out = x.clone();
                for (i, axis) in [ha, wa].into_iter().enumerate() {
                    let (o, _) = resolve_axis(&p.padding, i, x[axis], p.ksize[i], p.strides[i], 1)
                        .ok_or_else(|| format!("window {:?} does not fit {x:?}", p.ksize))?;
                    out[axis] = o;
                }
                f32s(out)
            }
            Op::Concat { axis } => {
                let first = &inputs[0].shape;
                if *axis >= first.len() {
                    return Err(format!("axis {axis} out of range for {first:?}"));
                }
                let mut out = first.clone();
                out[*axis] = 0;
                for f in inputs {
                    let s = &f.shape;
                    let same = s.len() == first.len()
                        && s.iter()
                            .zip(first)
                            .enumerate()
                            .all(|(i, (a, b))| i == *axis || a == b);
                    if !same || f.dtype != inputs[0].dtype {
                        return Err(format!(
                            "cannot concatenate {first:?} with {s:?} on axis {axis}"
                        ));
                    }
                    out[*axis] += s[*axis];
                }
                Ok(vec![Fact {
                    dtype: inputs[0].dtype,
                    shape: out,
                }])
            }
            Op::Binary(_) => {
                let s = broadcast_shapes(&inputs[0].shape, &inputs[1].shape)?;
                Ok(vec![Fact {
                    dtype: inputs[0].dtype,
                    shape: s,
                }])
            }
            Op::Reduce {
                axes, keep_dims, ..
            } => {
                let x = &inputs[0].shape;
                if axes.iter().any(|&a| a >= x.len()) {
                    return Err(format!("axes {axes:?} out of range for {x:?}"));
                }
                let out = x
                    .iter()
                    .enumerate()
                    .filter_map(|(i, &d)| match (axes.contains(&i), keep_dims) {
                        (true, true) => Some(1),
                        (true, false) => None,
                        (false, _) => Some(d),
                    })
                    .collect();
                f32s(out)
            }
            Op::MatMul {
                transpose_a,
                transpose_b,
            } => {
                let (a, b) = (&inputs[0].shape, &inputs[1].shape);
                if a.len() != 2 || b.len() != 2 {
                    return Err(format!("MatMul needs 2-D inputs, has {a:?} and {b:?}"));
                }
                let (m, ka) = if *transpose_a {
                    (a[1], a[0])
                } else {
                    (a[0], a[1])
                };
                let (kb, n) = if *transpose_b {
                    (b[1], b[0])
                } else {
                    (b[0], b[1])
                };
                if ka != kb {
                    return Err(format!("inner dimensions differ: {a:?} x {b:?}"));
                }
                if let Some(b) = inputs.get(2) {
                    if b.shape != [n] {
                        return Err(format!("bias {:?} does not match {n} outputs", b.shape));
                    }
                }
                f32s(vec![m, n])
            }
            Op::WeightedSum { .. } => {
                if inputs.iter().any(|f| f.shape != inputs[0].shape) {
                    return Err("weighted sum of values with different shapes".into());
                }
                f32s(inputs[0].shape.clone())
            }
            Op::L2Normalize { axis, .. } => {
                if *axis >= inputs[0].shape.len() {
                    return Err(format!(
                        "axis {axis} out of range for {:?}",
                        inputs[0].shape
                    ));
                }
                f32s(inputs[0].shape.clone())
            }
            Op::Reshape { shape } => {
                let n: usize = x.map(|s| s.iter().product()).unwrap_or(0);
                if shape.iter().product::<usize>() != n {
                    return Err(format!("cannot reshape {:?} to {shape:?}", x));
                }
                Ok(vec![Fact {
                    dtype: inputs[0].dtype,
                    shape: shape.clone(),
                }])
            }
            Op::Squeeze { axes } => {
                let x = &inputs[0].shape;
                for &a in axes {
                    if x.get(a) != Some(&1) {
                        return Err(format!("cannot squeeze axis {a} of {x:?}"));
                    }
                }
                let out = x
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !axes.contains(i))
                    .map(|(_, &d)| d)
                    .collect();
                Ok(vec![Fact {
                    dtype: inputs[0].dtype,
                    shape: out,
                }])
            }
            Op::ExpandDims { axis } => {
                let mut out = inputs[0].shape.clone();
                if *axis > out.len() {
                    return Err(format!("axis {axis} out of range for {out:?}"));
                }
                out.insert(*axis, 1);
                Ok(vec![Fact {
                    dtype: inputs[0].dtype,
                    shape: out,
                }])
            }
            Op::Slice { begin, end } => {
                let x = &inputs[0].shape;
                if begin.len() != x.len()
                    || end.len() != x.len()
                    || begin
                        .iter()
                        .zip(end)
                        .zip(x)
                        .any(|((b, e), d)| b > e || e > d)
                {
                    return Err(format!("slice {begin:?}..{end:?} does not fit {x:?}"));
                }
                Ok(vec![Fact {
                    dtype: inputs[0].dtype,
                    shape: begin.iter().zip(end).map(|(b, e)| e - b).collect(),
                }])
            }
            Op::Pad { pads, .. } => {
                let x = &inputs[0].shape;
                if pads.len() != x.len() {
                    return Err(format!(
                        "{} paddings for a rank-{} input",
                        pads.len(),
                        x.len()
                    ));
                }
                f32s(x.iter().zip(pads).map(|(d, p)| d + p[0] + p[1]).collect())
            }
            Op::Transpose { perm } => {
                let x = &inputs[0].shape;
                let mut seen = vec![false; x.len()];
                if perm.len() != x.len()
                    || perm
                        .iter()
                        .any(|&p| p >= x.len() || std::mem::replace(&mut seen[p], true))
                {
                    return Err(format!("permutation {perm:?} does not fit {x:?}"));
                }
                Ok(vec![Fact {
                    dtype: inputs[0].dtype,
                    shape: perm.iter().map(|&p| x[p]).collect(),
                }])
            }
            Op::Resize(r) => {
                let x = &inputs[0].shape;
                rank4(x)?;
                if r.size.contains(&0) || x[1] == 0 || x[2] == 0 {
                    return Err(format!("cannot resize {x:?} to {:?}", r.size));
                }
                if r.align_corners && r.half_pixel_centers {
                    return Err("align_corners and half_pixel_centers are exclusive".into());
                }
                f32s(vec![x[0], r.size[0], r.size[1], x[3]])
            }
            Op::Tile { multiples } => {
                let x = &inputs[0].shape;
                if multiples.len() != x.len() || multiples.contains(&0) {
                    return Err(format!("multiples {multiples:?} do not fit {x:?}"));
                }
                Ok(vec![Fact {
                    dtype: inputs[0].dtype,
                    shape: x.iter().zip(multiples).map(|(d, m)| d * m).collect(),
                }])
            }
            Op::SpaceDepth(s) => {
                let x = &inputs[0].shape;
                rank4(x)?;
                let b = s.block;
                if b < 2 {
                    return Err(format!("block size {b} must be at least 2"));
                }
                let out = if s.to_space {
                    if !x[3].is_multiple_of(b * b) {
                        return Err(format!("depth of {x:?} is not a multiple of {}", b * b));
                    }
                    vec![x[0], x[1] * b, x[2] * b, x[3] / (b * b)]
                } else {
                    if !x[1].is_multiple_of(b) || !x[2].is_multiple_of(b) {
                        return Err(format!("{x:?} is not a whole number of {b}x{b} blocks"));
                    }
                    vec![x[0], x[1] / b, x[2] / b, x[3] * b * b]
                };
                Ok(vec![Fact {
                    dtype: inputs[0].dtype,
                    shape: out,
                }])
            }
            Op::PRelu => {
                let (x, a) = (&inputs[0].shape, &inputs[1].shape);
                if x.last() != Some(&a.iter().product::<usize>()) {
                    return Err(format!("alpha {a:?} is not one per channel of {x:?}"));
                }
                f32s(x.clone())
            }
        }
    }
}
