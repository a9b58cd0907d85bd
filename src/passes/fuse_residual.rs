//! `x + scale * branch` (InceptionResNet's residual) -> one WeightedSum.

use super::Rewrite;
use crate::error::Result;
use crate::ir::{BinaryOp, Graph, Op, Wire};

/// If `w` is `Mul(branch, scalar)` read only here, return (branch, scalar).
fn scaled(g: &Graph, w: Wire) -> Option<(Wire, f32)> {
    let n = &g.nodes[w.node];
    if !matches!(n.op, Op::Binary(BinaryOp::Mul)) || !g.single_use(w) {
        return None;
    }
    let (b, k) = match (g.const_of(n.inputs[0]), g.const_of(n.inputs[1])) {
        (None, Some(k)) => (n.inputs[0], k),
        (Some(k), None) => (n.inputs[1], k),
        _ => return None,
    };
    if k.len() != 1 || g.fact(b).ok()?.shape != n.outputs[0].shape {
        return None;
    }
    Some((b, *k.as_f32().ok()?.first()?))
}

pub fn run(g: &mut Graph, log: &mut Vec<Rewrite>) -> Result<usize> {
    let mut changed = 0;
    for i in 0..g.nodes.len() {
        let node = &g.nodes[i];
        if !matches!(node.op, Op::Binary(BinaryOp::Add)) {
            continue;
        }
        let [a, b] = [node.inputs[0], node.inputs[1]];
        if g.fact(a)?.shape != g.fact(b)?.shape
            || g.const_of(a).is_some()
            || g.const_of(b).is_some()
        {
            continue;
        }
        let (inputs, coeffs, mul) = match (scaled(g, a), scaled(g, b)) {
            (_, Some((br, s))) => (vec![a, br], vec![1.0, s], b.node),
            (Some((br, s)), None) => (vec![br, b], vec![s, 1.0], a.node),
            (None, None) => continue,
        };
        let mul_name = g.nodes[mul].name.clone();
        let n = &mut g.nodes[i];
        n.op = Op::WeightedSum {
            coeffs: coeffs.clone(),
        };
        n.inputs = inputs;
        log.push(Rewrite {
            pass: "fuse_residual",
            node: n.name.clone(),
            detail: format!("absorbed '{mul_name}': sum with coefficients {coeffs:?}"),
        });
        changed += 1;
    }
    Ok(changed)
}
