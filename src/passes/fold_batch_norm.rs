//! Fold inference batch norms, and per-channel constant multiplies (the
//! decomposed form), into the conv or MatMul before them.

use super::Rewrite;
use crate::error::{Error, Result};
use crate::ir::{Graph, Layout, Op, Tensor, Wire};

/// A per-output-channel vector from a constant that broadcasts only along
/// the channel (last) axis: a scalar, [C] or [1, .., 1, C].
pub(crate) fn per_channel(t: &Tensor, c: usize) -> Option<Vec<f32>> {
    let v = t.as_f32().ok()?;
    let s = t.shape();
    if v.len() == 1 {
        return Some(vec![v[0]; c]);
    }
    let leading_ones = s.iter().rev().skip(1).all(|&d| d == 1);
    (v.len() == c && s.last() == Some(&c) && leading_ones).then(|| v.into_owned())
}

/// A conv (channel-last) or MatMul whose output is read only by `reader`,
/// found through reshapes that keep the last axis; returns (producer, channels).
pub(crate) fn affine_producer(g: &Graph, mut w: Wire) -> Option<(usize, usize)> {
    loop {
        if !g.single_use(w) || w.slot != 0 {
            return None;
        }
        let node = &g.nodes[w.node];
        match &node.op {
            Op::Conv2d(c) if c.layout == Layout::Nhwc => {
                return Some((w.node, *node.outputs[0].shape.last()?))
            }
            Op::MatMul { .. } => return Some((w.node, *node.outputs[0].shape.last()?)),
            Op::Reshape { .. } | Op::Squeeze { .. } | Op::ExpandDims { .. } => {
                let inp = *node.inputs.first()?;
                let before = &g.fact(inp).ok()?.shape;
                let after = &node.outputs[0].shape;
                if before.last() != after.last() || before.first() != after.first() {
                    return None;
                }
                w = inp;
            }
            _ => return None,
        }
    }
}

/// Replace the constant at `w` with `t`: in place when only `user` reads it
/// (keeping its TF name), else as a new constant.
fn set_const(g: &mut Graph, user: usize, slot: usize, w: Wire, t: Tensor, name: &str) {
    if g.users(w).len() == 1 && !g.outputs.contains(&w) && g.const_of(w).is_some() {
        let n = &mut g.nodes[w.node];
        n.outputs[0].shape = t.shape().to_vec();
        n.op = Op::Const(t);
    } else {
        let id = g.add_const(g.fresh_name(name), t);
        g.nodes[user].inputs[slot] = Wire { node: id, slot: 0 };
    }
}

/// y' = y * scale + shift per output channel, absorbed into the producer's
/// weights and bias. The one place where folding math lives.
pub(crate) fn absorb_affine(
    g: &mut Graph,
    producer: usize,
    scale: Option<&[f32]>,
    shift: Option<&[f32]>,
) -> Result<()> {
    let node = &g.nodes[producer];
    let err = |m: &str| Error::node(&node.name, &node.source_op, m.to_string());
    let c = *node.outputs[0]
        .shape
        .last()
        .ok_or_else(|| err("rank-0 output"))?;
    let (w_wire, transpose_b) = match &node.op {
        Op::Conv2d(_) => (node.inputs[1], false),
        Op::MatMul { transpose_b, .. } => (node.inputs[1], *transpose_b),
        _ => return Err(err("not a conv or MatMul")),
    };
    let w = g
        .const_of(w_wire)
        .ok_or_else(|| err("weights are not constant"))?;
    let old_bias = match node.inputs.get(2) {
        Some(b) => Some(
            g.const_of(*b)
                .ok_or_else(|| err("bias is not constant"))?
                .as_f32()?
                .into_owned(),
        ),
        None => None,
    };
    let name = node.name.clone();
    if let Some(scale) = scale {
        let mut wv = w.as_f32()?.into_owned();
        if transpose_b {
            // [n, k]: row j scales
            let k = wv.len() / c;
            for (j, row) in wv.chunks_mut(k.max(1)).enumerate() {
                row.iter_mut().for_each(|x| *x *= scale[j]);
            }
        } else {
            // [.., c]: column j scales (HWIO, depthwise [kh, kw, in, mult] and [k, n] alike)
            for row in wv.chunks_mut(c) {
                row.iter_mut().zip(scale).for_each(|(x, s)| *x *= s);
            }
        }
        let t = Tensor::f32(w.shape().to_vec(), wv)?;
        set_const(g, producer, 1, w_wire, t, &format!("{name}/folded_weights"));
    }
    if scale.is_some() && old_bias.is_none() && shift.is_none() {
        return Ok(());
    }
    let mut bias = old_bias.unwrap_or_else(|| vec![0.0; c]);
    if let Some(scale) = scale {
        bias.iter_mut().zip(scale).for_each(|(b, s)| *b *= s);
    }
    if let Some(shift) = shift {
        bias.iter_mut().zip(shift).for_each(|(b, t)| *b += t);
    }
    let t = Tensor::f32(vec![c], bias)?;
    match g.nodes[producer].inputs.get(2).copied() {
        Some(bw) => set_const(g, producer, 2, bw, t, &format!("{name}/folded_bias")),
        None => {
            let id = g.add_const(g.fresh_name(&format!("{name}/folded_bias")), t);
            g.nodes[producer].inputs.push(Wire { node: id, slot: 0 });
        }
    }
    Ok(())
}

/// Record that `producer` now carries `folded`'s value and bypass `folded`.
pub(crate) fn finish_fold(
    g: &mut Graph,
    producer: usize,
    folded: usize,
    through: Wire,
    log: &mut Vec<Rewrite>,
    pass: &'static str,
) {
    let f = &g.nodes[folded];
    let (fname, fop) = (f.name.clone(), f.source_op.clone());
    // The names whose value the folded node had: its own (unless a pass
    // changed it) and its aliases.
    let mut names: Vec<String> = if f.own_changed {
        vec![]
    } else {
        vec![fname.clone()]
    };
    names.extend(f.aliases.iter().cloned());
    g.replace_uses(
        Wire {
            node: folded,
            slot: 0,
        },
        through,
    );
    g.nodes[through.node].absorb(names);
    // Folded through reshapes: the producer's own value changed.
    if through.node != producer {
        g.nodes[producer].mark_changed();
    }
    log.push(Rewrite {
        pass,
        node: g.nodes[producer].name.clone(),
        detail: format!("absorbed '{fname}' ({fop})"),
    });
}

pub fn run(g: &mut Graph, log: &mut Vec<Rewrite>) -> Result<usize> {
    let mut changed = 0;
    for i in 0..g.nodes.len() {
        let node = &g.nodes[i];
        let (x, scale, shift) = match &node.op {
            Op::BatchNorm(bn) if !bn.training && bn.layout == Layout::Nhwc => {
                let c = *node.outputs[0].shape.last().unwrap_or(&0);
                let p: Option<Vec<Vec<f32>>> = node.inputs[1..]
                    .iter()
                    .map(|w| g.const_of(*w).and_then(|t| per_channel(t, c)))
                    .collect();
                let Some(p) = p else { continue };
                let (gamma, beta, mean, var) = (&p[0], &p[1], &p[2], &p[3]);
                let scale: Vec<f32> = (0..c)
                    .map(|j| gamma[j] / (var[j] + bn.epsilon).sqrt())
                    .collect();
                let shift: Vec<f32> = (0..c).map(|j| beta[j] - mean[j] * scale[j]).collect();
                (node.inputs[0], scale, Some(shift))
            }
            Op::Binary(crate::ir::BinaryOp::Mul) => {
                let c = *node.outputs[0].shape.last().unwrap_or(&0);
                let (x, k) = match (g.const_of(node.inputs[0]), g.const_of(node.inputs[1])) {
                    (None, Some(k)) => (node.inputs[0], k),
                    (Some(k), None) => (node.inputs[1], k),
                    _ => continue,
                };
                if g.fact(x)?.shape != node.outputs[0].shape {
                    continue;
                }
                let Some(scale) = per_channel(k, c) else {
                    continue;
                };
                (x, scale, None)
            }
            _ => continue,
        };
        let Some((producer, _)) = affine_producer(g, x) else {
            continue;
        };
        absorb_affine(g, producer, Some(&scale), shift.as_deref())?;
        finish_fold(g, producer, i, x, log, "fold_batch_norm");
        changed += 1;
    }
    Ok(changed)
}
