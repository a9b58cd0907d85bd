//! One converter per TensorFlow op family. `convert` is the registry: a
//! match from op type to a plain function. Adding an op = adding a line here
//! and a function in the family's file.

mod array;
mod control;
mod math;
mod nn;

use super::NodeCtx;
use crate::error::Result;
use crate::ir::Wire;

/// Every TF op type faceall reads, for `inspect` and documentation.
pub const SUPPORTED: &[&str] = &[
    "Placeholder",
    "PlaceholderWithDefault",
    "Const",
    "Identity",
    "NoOp",
    "Switch",
    "Merge",
    "Conv2D",
    "DepthwiseConv2dNative",
    "BiasAdd",
    "FusedBatchNorm",
    "FusedBatchNormV2",
    "FusedBatchNormV3",
    "Relu",
    "Relu6",
    "Elu",
    "Sigmoid",
    "Tanh",
    "Softmax",
    "MaxPool",
    "AvgPool",
    "ConcatV2",
    "Concat",
    "Add",
    "AddV2",
    "Sub",
    "Mul",
    "RealDiv",
    "Maximum",
    "Minimum",
    "Square",
    "Sqrt",
    "Rsqrt",
    "Sum",
    "Mean",
    "MatMul",
    "Reshape",
    "Squeeze",
    "ExpandDims",
    "Pad",
    "PadV2",
    "Shape",
    "StridedSlice",
    "Pack",
    "Cast",
];

/// Convert one TF node; returns the IR wire of each TF output in order.
pub fn convert(n: &mut NodeCtx) -> Result<Vec<Wire>> {
    match n.node.op.as_str() {
        "Placeholder" => array::placeholder(n),
        "PlaceholderWithDefault" | "Identity" | "StopGradient" => control::identity(n),
        "NoOp" => Ok(vec![]),
        "Const" => array::constant(n),
        "Switch" => control::switch(n),
        "Merge" => control::merge(n),
        "Conv2D" => nn::conv2d(n, false),
        "DepthwiseConv2dNative" => nn::conv2d(n, true),
        "BiasAdd" => nn::bias_add(n),
        "FusedBatchNorm" | "FusedBatchNormV2" | "FusedBatchNormV3" => nn::fused_batch_norm(n),
        "Relu" | "Relu6" | "Elu" | "Sigmoid" | "Tanh" => nn::activation(n),
        "Softmax" => nn::softmax(n),
        "MaxPool" | "AvgPool" => nn::pool(n),
        "Add" | "AddV2" | "Sub" | "Mul" | "RealDiv" | "Maximum" | "Minimum" => math::binary(n),
        "Square" | "Sqrt" | "Rsqrt" | "Neg" => math::unary(n),
        "Transpose" => array::transpose(n),
        "Sum" | "Mean" => math::reduce(n),
        "MatMul" => math::matmul(n),
        "ConcatV2" | "Concat" => array::concat(n),
        "Reshape" => array::reshape(n),
        "Squeeze" => array::squeeze(n),
        "ExpandDims" => array::expand_dims(n),
        "Pad" | "PadV2" => array::pad(n),
        "Shape" => array::shape(n),
        "StridedSlice" => array::strided_slice(n),
        "Pack" => array::pack(n),
        "Cast" => array::cast(n),
        "If" | "StatelessIf" | "While" | "StatelessWhile" => Err(n.err(
            "TF2 functional control flow is not supported; faceall reads TF1 Switch/Merge \
             (export with tf.compat.v1.disable_control_flow_v2())",
        )),
        other => Err(n.err(format!("op '{other}' is not supported"))),
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
