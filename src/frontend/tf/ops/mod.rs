//! One converter per TensorFlow op family. `OPS` is the registry: op type
//! -> plain function. Adding an op = adding a line there and a function in
//! the family's file.

mod array;
mod control;
mod math;
mod nn;

use super::NodeCtx;
use crate::error::Result;
use crate::ir::Wire;

/// Converts one TF node; returns the IR wire of each TF output in order.
type Converter = fn(&mut NodeCtx) -> Result<Vec<Wire>>;

/// The registry: every TF op type faceall reads and its converter. It is
/// the one list of supported ops: `convert` dispatches through it,
/// `inspect` and the unsupported-op errors read it.
pub const OPS: &[(&str, Converter)] = &[
    ("Placeholder", array::placeholder),
    ("PlaceholderWithDefault", control::identity),
    ("Identity", control::identity),
    ("IdentityN", control::identity_n),
    ("StopGradient", control::identity),
    ("NoOp", |_| Ok(vec![])),
    ("Const", array::constant),
    ("Switch", control::switch),
    ("Merge", control::merge),
    ("Conv2D", |n| nn::conv2d(n, false)),
    ("DepthwiseConv2dNative", |n| nn::conv2d(n, true)),
    ("Conv2DBackpropInput", nn::conv2d_backprop_input),
    ("BiasAdd", nn::bias_add),
    ("FusedBatchNorm", nn::fused_batch_norm),
    ("FusedBatchNormV2", nn::fused_batch_norm),
    ("FusedBatchNormV3", nn::fused_batch_norm),
    ("Relu", nn::activation),
    ("Relu6", nn::activation),
    ("Elu", nn::activation),
    ("LeakyRelu", nn::activation),
    ("Sigmoid", nn::activation),
    ("Tanh", nn::activation),
    ("Softmax", nn::softmax),
    ("MaxPool", nn::pool),
    ("AvgPool", nn::pool),
    ("ResizeNearestNeighbor", nn::resize),
    ("ResizeBilinear", nn::resize),
    ("DepthToSpace", nn::space_depth),
    ("SpaceToDepth", nn::space_depth),
    ("Add", math::binary),
    ("AddV2", math::binary),
    ("Sub", math::binary),
    ("Mul", math::binary),
    ("RealDiv", math::binary),
    ("Maximum", math::binary),
    ("Minimum", math::binary),
    ("Square", math::unary),
    ("SquaredDifference", math::squared_difference),
    ("Sqrt", math::unary),
    ("Exp", math::unary),
    ("Log", math::unary),
    ("Erf", math::unary),
    ("Erfc", math::unary),
    ("Pow", math::pow),
    ("Rsqrt", math::unary),
    ("Neg", math::unary),
    ("Transpose", array::transpose),
    ("Sum", math::reduce),
    ("Mean", math::reduce),
    ("MatMul", math::matmul),
    ("ConcatV2", array::concat),
    ("Concat", array::concat),
    ("Reshape", array::reshape),
    ("Squeeze", array::squeeze),
    ("ExpandDims", array::expand_dims),
    ("Pad", array::pad),
    ("PadV2", array::pad),
    ("MirrorPad", array::mirror_pad),
    ("Shape", array::shape),
    ("StridedSlice", array::strided_slice),
    ("Slice", array::slice),
    ("Split", array::split),
    ("SplitV", array::split_v),
    ("Pack", array::pack),
    ("Unpack", array::unpack),
    ("Tile", array::tile),
    ("Cast", array::cast),
];

/// Whether faceall reads TF op type `op`.
pub fn is_supported(op: &str) -> bool {
    OPS.iter().any(|(name, _)| *name == op)
}

/// Convert one TF node through the registry.
pub fn convert(n: &mut NodeCtx) -> Result<Vec<Wire>> {
    let op = n.node.op.as_str();
    if let Some((_, f)) = OPS.iter().find(|(name, _)| *name == op) {
        return f(n);
    }
    match op {
        "If" | "StatelessIf" | "While" | "StatelessWhile" => Err(n.err(
            "TF2 functional control flow is not supported; faceall reads TF1 Switch/Merge \
             (export with tf.compat.v1.disable_control_flow_v2())",
        )),
        other => Err(n.err(format!(
            "op '{other}' is not supported (faceall reads {} TF op types; `faceall inspect MODEL.pb` marks the ones a graph lacks)",
            OPS.len()
        ))),
    }
}

/// Normalise a possibly negative axis against a rank.
pub(crate) fn axis(n: &NodeCtx, a: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    if a < -r || a >= r.max(1) {
        return Err(n.err(format!("axis {a} is out of range for rank {rank}")));
    }
    Ok(if a < 0 { (a + r) as usize } else { a as usize })
}
