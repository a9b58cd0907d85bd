//! tf.math.l2_normalize's subgraph `x * rsqrt(max(sum(square(x)), eps))`
//! -> one L2Normalize node (keeping the Mul's name, e.g. `embeddings`).

use super::Rewrite;
use crate::error::Result;
use crate::ir::{BinaryOp, Graph, Op, ReduceOp, UnaryOp, Wire};

/// The producer of `w` if it has op matching `f` and is read only here.
fn only(g: &Graph, w: Wire, f: impl Fn(&Op) -> bool) -> Option<&crate::ir::Node> {
    let n = &g.nodes[w.node];
    (f(&n.op) && g.single_use(w)).then_some(n)
}

/// (x, axis, epsilon) if `mul` is the l2_normalize pattern.
fn matches(g: &Graph, mul: usize) -> Option<(Wire, usize, f32)> {
    let m = &g.nodes[mul];
    if !matches!(m.op, Op::Binary(BinaryOp::Mul)) {
        return None;
    }
    for (xi, ri) in [(0, 1), (1, 0)] {
        let x = m.inputs[xi];
        let Some(rsqrt) = only(g, m.inputs[ri], |o| matches!(o, Op::Unary(UnaryOp::Rsqrt))) else {
            continue;
        };
        let Some(max) = only(g, rsqrt.inputs[0], |o| {
            matches!(o, Op::Binary(BinaryOp::Max))
        }) else {
            continue;
        };
        let (sum_w, eps) = match (g.const_of(max.inputs[0]), g.const_of(max.inputs[1])) {
            (None, Some(e)) => (max.inputs[0], e),
            (Some(e), None) => (max.inputs[1], e),
            _ => continue,
        };
        if eps.len() != 1 {
            continue;
        }
        let eps = *eps.as_f32().ok()?.first()?;
        let Some(sum) = only(
            g,
            sum_w,
            |o| matches!(o, Op::Reduce { reduce: ReduceOp::Sum, keep_dims: true, axes } if axes.len() == 1),
        ) else {
            continue;
        };
        let Op::Reduce { axes, .. } = &sum.op else {
            continue;
        };
        let Some(sq) = only(g, sum.inputs[0], |o| {
            matches!(o, Op::Unary(UnaryOp::Square))
        }) else {
            continue;
        };
        if sq.inputs[0] == x && g.fact(x).ok()?.shape == m.outputs[0].shape {
            return Some((x, axes[0], eps));
        }
    }
    None
}

pub fn run(g: &mut Graph, log: &mut Vec<Rewrite>) -> Result<usize> {
    let mut changed = 0;
    for i in 0..g.nodes.len() {
        let Some((x, axis, epsilon)) = matches(g, i) else {
            continue;
        };
        let n = &mut g.nodes[i];
        n.op = Op::L2Normalize { axis, epsilon };
        n.inputs = vec![x];
        log.push(Rewrite {
            pass: "fuse_l2_normalize",
            node: n.name.clone(),
            detail: format!(
                "Square/Sum/Maximum/Rsqrt/Mul -> L2Normalize(axis {axis}, epsilon {epsilon:e})"
            ),
        });
        changed += 1;
    }
    Ok(changed)
}
