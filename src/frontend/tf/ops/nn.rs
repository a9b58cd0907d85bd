//! Convolution, bias, batch norm, activations, pooling.

use crate::error::Result;
use crate::frontend::tf::{attrs, NodeCtx};
use crate::ir::{
    Activation, BatchNorm, Conv2d, DType, Deconv2d, Layout, Op, Padding, Pool, PoolKind, Resize,
    ResizeMode, SpaceDepth, Wire,
};

/// TF-slim and tf.nn default for batch-norm epsilon when the attr is absent.
pub const DEFAULT_BN_EPSILON: f32 = 0.0001;

/// TensorFlow's default `alpha` of LeakyRelu (tf.nn.leaky_relu).
pub const DEFAULT_LEAKY_RELU_ALPHA: f32 = 0.2;

pub fn conv2d(n: &mut NodeCtx, depthwise: bool) -> Result<Vec<Wire>> {
    n.expect_inputs(2)?;
    let layout = attrs::layout(n.node)?;
    let strides = attrs::spatial(n.node, "strides", layout, None)?;
    let dilations = attrs::spatial(n.node, "dilations", layout, Some([1, 1]))?;
    let padding = attrs::padding(n.node, layout)?;
    if dilations != [1, 1] && strides != [1, 1] {
        return Err(n.err("dilation together with stride is not supported by TensorFlow on CPU"));
    }
    let mut ins = n.inputs.clone();
    let mut depthwise = depthwise;
    if !depthwise {
        if let Some(filter) = grouped_as_depthwise(n, layout)? {
            let id = n.ctx.graph.push(
                format!("{}/depthwise_filter", n.node.name),
                "Const",
                Op::Const(filter),
                vec![],
            )?;
            ins[1] = Wire { node: id, slot: 0 };
            depthwise = true;
        }
    }
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

/// A grouped Conv2D with one input channel per group (Keras 3 writes its
/// depthwise convolutions this way: filter `[kh, kw, 1, co]` on an input of
/// C channels, C groups) is a depthwise convolution with multiplier co / C:
/// output channel `c * m + j` reads input channel c in both, so the filter
/// is the same data seen as `[kh, kw, C, m]` (no copy). None when the
/// Conv2D is an ordinary one, or its filter is not a constant.
fn grouped_as_depthwise(
    n: &NodeCtx,
    layout: crate::ir::Layout,
) -> Result<Option<crate::ir::Tensor>> {
    let x = n.fact(0)?.shape.clone();
    // The filter may reach the Conv2D through Identities (an inlined
    // function's ReadVariableOp of a frozen variable).
    let g = &n.ctx.graph;
    let mut wire = n.input(1)?;
    let w = loop {
        match g.nodes.get(wire.node).map(|d| (&d.op, d.inputs.first())) {
            Some((Op::Const(t), _)) if wire.slot == 0 => break t,
            Some((Op::Identity, Some(&src))) => wire = src,
            _ => return Ok(None),
        }
    };
    let c = match (x.len(), layout) {
        (4, crate::ir::Layout::Nhwc) => x[3],
        (4, _) => x[1],
        _ => return Ok(None),
    };
    match w.shape() {
        &[kh, kw, 1, co] if c > 1 && co % c == 0 => {
            Ok(Some(w.reshaped(vec![kh, kw, c, co / c])?))
        }
        _ => Ok(None),
    }
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
        "LeakyRelu" => Activation::LeakyRelu {
            alpha: attrs::opt_f(n.node, "alpha")?.unwrap_or(DEFAULT_LEAKY_RELU_ALPHA),
        },
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

/// ResizeNearestNeighbor / ResizeBilinear (images, size): the size must be
/// constant (Keras' UpSampling2D computes it from the static shape, which
/// folds at import).
pub fn resize(n: &mut NodeCtx) -> Result<Vec<Wire>> {
    n.expect_inputs(2)?;
    if n.fact(0)?.dtype != DType::F32 {
        return Err(n.err("only float32 images are resized"));
    }
    let size = n.required_const(1, "size")?.to_f64_vec()?;
    let &[h, w] = size.as_slice() else {
        return Err(n.err(format!("size must hold 2 values, has {}", size.len())));
    };
    if h < 1.0 || w < 1.0 {
        return Err(n.err(format!("size [{h}, {w}] must be positive")));
    }
    let mode = if n.node.op == "ResizeBilinear" {
        ResizeMode::Bilinear
    } else {
        ResizeMode::Nearest
    };
    let r = Resize {
        mode,
        size: [h as usize, w as usize],
        align_corners: attrs::opt_b(n.node, "align_corners")?.unwrap_or(false),
        half_pixel_centers: attrs::opt_b(n.node, "half_pixel_centers")?.unwrap_or(false),
    };
    let x = n.input(0)?;
    n.push(Op::Resize(r), vec![x])
}

/// DepthToSpace / SpaceToDepth in NHWC (TF runs the NCHW forms on GPUs only).
pub fn space_depth(n: &mut NodeCtx) -> Result<Vec<Wire>> {
    n.expect_inputs(1)?;
    if attrs::layout(n.node)? != Layout::Nhwc {
        return Err(n.err("only NHWC DepthToSpace/SpaceToDepth are supported"));
    }
    let block = attrs::opt_i(n.node, "block_size")?
        .ok_or_else(|| n.err("missing attribute 'block_size'"))?;
    let block = usize::try_from(block).map_err(|_| n.err(format!("block_size {block}")))?;
    let s = SpaceDepth {
        block,
        to_space: n.node.op == "DepthToSpace",
    };
    let x = n.input(0)?;
    n.push(Op::SpaceDepth(s), vec![x])
}

/// Conv2DBackpropInput (input_sizes, filter [kh, kw, out, in], x):
/// `tf.nn.conv2d_transpose`, Keras `Conv2DTranspose`. The output size must
/// be constant (Keras computes it from the static shape).
pub fn conv2d_backprop_input(n: &mut NodeCtx) -> Result<Vec<Wire>> {
    n.expect_inputs(3)?;
    let layout = attrs::layout(n.node)?;
    if layout != Layout::Nhwc {
        return Err(n.err("only NHWC Conv2DBackpropInput is supported (TF's CPU kernel)"));
    }
    let strides = attrs::spatial(n.node, "strides", layout, None)?;
    let dilations = attrs::spatial(n.node, "dilations", layout, Some([1, 1]))?;
    let padding = attrs::padding(n.node, layout)?;
    let sizes = n.required_const(0, "input_sizes")?.to_f64_vec()?;
    let &[_, h, w, _] = sizes.as_slice() else {
        return Err(n.err(format!(
            "input_sizes must hold 4 values, has {}",
            sizes.len()
        )));
    };
    if h < 1.0 || w < 1.0 {
        return Err(n.err(format!("input_sizes {sizes:?} must be positive")));
    }
    let d = Deconv2d {
        strides,
        dilations,
        padding,
        size: [h as usize, w as usize],
    };
    let (x, f) = (n.input(2)?, n.input(1)?);
    n.push(Op::Deconv2d(d), vec![x, f])
}
