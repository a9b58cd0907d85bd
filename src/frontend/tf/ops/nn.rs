//! Convolution, bias, batch norm, activations, pooling.

use crate::error::Result;
use crate::frontend::tf::{attrs, NodeCtx};
use crate::ir::{Activation, BatchNorm, Conv2d, Op, Padding, Pool, PoolKind, Wire};

/// TF-slim and tf.nn default for batch-norm epsilon when the attr is absent.
pub const DEFAULT_BN_EPSILON: f32 = 0.0001;

pub fn conv2d(n: &mut NodeCtx, depthwise: bool) -> Result<Vec<Wire>> {
    n.expect_inputs(2)?;
    let layout = attrs::layout(n.node)?;
    let strides = attrs::spatial(n.node, "strides", layout, None)?;
    let dilations = attrs::spatial(n.node, "dilations", layout, Some([1, 1]))?;
    let padding = attrs::padding(n.node, layout)?;
    if dilations != [1, 1] && strides != [1, 1] {
        return Err(n.err("dilation together with stride is not supported by TensorFlow on CPU"));
    }
    let ins = n.inputs.clone();
    n.push(
        Op::Conv2d(Conv2d {
            strides,
            dilations,
            padding,
            layout,
            depthwise,
        }),
        ins,
    )
}

pub fn bias_add(n: &mut NodeCtx) -> Result<Vec<Wire>> {
    n.expect_inputs(2)?;
    let layout = attrs::layout(n.node)?;
    let ins = n.inputs.clone();
    n.push(Op::BiasAdd { layout }, ins)
}

pub fn fused_batch_norm(n: &mut NodeCtx) -> Result<Vec<Wire>> {
    n.expect_inputs(5)?;
    let layout = attrs::layout(n.node)?;
    let epsilon = attrs::opt_f(n.node, "epsilon")?.unwrap_or(DEFAULT_BN_EPSILON);
    let training = attrs::opt_b(n.node, "is_training")?.unwrap_or(true);
    if let Some(f) = attrs::opt_f(n.node, "exponential_avg_factor")? {
        if training && f != 1.0 {
            return Err(n.err("training batch norm with a running average factor is not supported"));
        }
    }
    let ins = n.inputs.clone();
    n.push(
        Op::BatchNorm(BatchNorm {
            epsilon,
            layout,
            training,
        }),
        ins,
    )
}

pub fn activation(n: &mut NodeCtx) -> Result<Vec<Wire>> {
    n.expect_inputs(1)?;
    let a = match n.node.op.as_str() {
        "Relu" => Activation::Relu,
        "Relu6" => Activation::Relu6,
        "Elu" => Activation::Elu,
        "Sigmoid" => Activation::Sigmoid,
        _ => Activation::Tanh,
    };
    let ins = n.inputs.clone();
    n.push(Op::Activation(a), ins)
}

pub fn softmax(n: &mut NodeCtx) -> Result<Vec<Wire>> {
    n.expect_inputs(1)?;
    let ins = n.inputs.clone();
    n.push(Op::Softmax, ins)
}

pub fn pool(n: &mut NodeCtx) -> Result<Vec<Wire>> {
    n.expect_inputs(1)?;
    let layout = attrs::layout(n.node)?;
    let ksize = attrs::spatial(n.node, "ksize", layout, None)?;
    let strides = attrs::spatial(n.node, "strides", layout, None)?;
    let padding = attrs::padding(n.node, layout)?;
    if matches!(padding, Padding::Explicit(_)) {
        return Err(n.err("explicit padding on pooling is not supported"));
    }
    let kind = if n.node.op == "MaxPool" {
        PoolKind::Max
    } else {
        PoolKind::Avg
    };
    let ins = n.inputs.clone();
    n.push(
        Op::Pool(Pool {
            kind,
            ksize,
            strides,
            padding,
            layout,
        }),
        ins,
    )
}
