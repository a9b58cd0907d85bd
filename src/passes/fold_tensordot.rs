//! A Dense layer applied to every position of an NHWC map, as Keras and
//! `tf.tensordot` write it (`Reshape [N*H*W, C]`, `MatMul` by a constant
//! `[C, K]`, `Reshape [N, H, W, K]`), becomes the 1x1 convolution it is:
//! the filter is the same bytes seen as `[1, 1, C, K]`. Every format then
//! writes a convolution on the channel-first map instead of transposing it
//! to TF's order and back around a matrix product (ConvNeXt's pointwise
//! layers, MLP-Mixer, transformer heads on feature maps), and the bias and
//! batch-norm folds apply to it as to any convolution. A 1x1 map (one
//! position, FaceNet's bottleneck) stays a Dense.

use super::Rewrite;
use crate::error::Result;
use crate::ir::{Conv2d, Graph, Layout, Op, Padding, Wire};

/// (x, filter [1, 1, C, K]) if node `i` is the pattern's final Reshape.
fn matches(g: &Graph, i: usize) -> Option<(Wire, crate::ir::Tensor)> {
    let n = &g.nodes[i];
    let Op::Reshape { shape: out_shape } = &n.op else {
        return None;
    };
    let mm_w = *n.inputs.first()?;
    let mm = &g.nodes[mm_w.node];
    let Op::MatMul {
        transpose_a: false,
        transpose_b: false,
    } = mm.op
    else {
        return None;
    };
    if mm_w.slot != 0 || !g.single_use(mm_w) {
        return None;
    }
    let (flat_w, w) = (*mm.inputs.first()?, *mm.inputs.get(1)?);
    let filter = g.const_of(w)?;
    let flat = &g.nodes[flat_w.node];
    if !matches!(flat.op, Op::Reshape { .. }) || flat_w.slot != 0 || !g.single_use(flat_w) {
        return None;
    }
    let x = *flat.inputs.first()?;
    let xs = &g.fact(x).ok()?.shape;
    let [n_, h, w_, c] = xs[..] else {
        return None;
    };
    let &[k_in, k] = filter.shape() else {
        return None;
    };
    let flat_shape = &g.fact(flat_w).ok()?.shape;
    // One position (a pooled 1x1 map) is a plain Dense: every format
    // already writes that as an inner product.
    if h * w_ == 1
        || k_in != c
        || flat_shape[..] != [n_ * h * w_, c]
        || out_shape[..] != [n_, h, w_, k]
    {
        return None;
    }
    Some((x, filter.reshaped(vec![1, 1, c, k]).ok()?))
}

pub fn run(g: &mut Graph, log: &mut Vec<Rewrite>) -> Result<usize> {
    let mut changed = 0;
    for i in 0..g.nodes.len() {
        let Some((x, filter)) = matches(g, i) else {
            continue;
        };
        let (c, k) = (filter.shape()[2], filter.shape()[3]);
        let name = g.fresh_name(&format!("{}/filter", g.nodes[i].name));
        let f = g.add_const(name, filter);
        let n = &mut g.nodes[i];
        n.op = Op::Conv2d(Conv2d {
            strides: [1, 1],
            dilations: [1, 1],
            padding: Padding::Valid,
            layout: Layout::Nhwc,
            depthwise: false,
        });
        n.inputs = vec![x, Wire { node: f, slot: 0 }];
        log.push(Rewrite {
            pass: "fold_tensordot",
            node: n.name.clone(),
            detail: format!("Reshape/MatMul/Reshape over every position -> 1x1 Conv2D {c} -> {k}"),
        });
        changed += 1;
    }
    Ok(changed)
}
