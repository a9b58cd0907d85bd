//! Keras' PReLU, `relu(x) + (-alpha) * relu(-x)` (Relu, Neg, Relu, Mul,
//! Add with a constant per-channel `-alpha`), becomes one PRelu node
//! (Caffe's PReLU layer). MTCNN is built of it.

use super::Rewrite;
use crate::error::Result;
use crate::ir::{Activation, BinaryOp, Graph, Op, Tensor, UnaryOp, Wire};

/// The input of `w`'s producer if it is `f` and read only here.
fn through(g: &Graph, w: Wire, f: impl Fn(&Op) -> bool) -> Option<Wire> {
    let n = &g.nodes[w.node];
    (f(&n.op) && g.single_use(w)).then(|| n.inputs[0])
}

fn relu(o: &Op) -> bool {
    matches!(o, Op::Activation(Activation::Relu))
}

/// (x, alpha) if node `add` is the PReLU pattern.
fn matches(g: &Graph, add: usize) -> Option<(Wire, Vec<f32>)> {
    let a = &g.nodes[add];
    if !matches!(a.op, Op::Binary(BinaryOp::Add)) {
        return None;
    }
    for (pi, ni) in [(0, 1), (1, 0)] {
        let Some(x) = through(g, a.inputs[pi], relu) else {
            continue;
        };
        let mul = &g.nodes[a.inputs[ni].node];
        if !matches!(mul.op, Op::Binary(BinaryOp::Mul)) || !g.single_use(a.inputs[ni]) {
            continue;
        }
        let (c, r) = match (g.const_of(mul.inputs[0]), g.const_of(mul.inputs[1])) {
            (Some(c), None) => (c, mul.inputs[1]),
            (None, Some(c)) => (c, mul.inputs[0]),
            _ => continue,
        };
        let Some(neg) = through(g, r, relu) else {
            continue;
        };
        let Some(src) = through(g, neg, |o| matches!(o, Op::Unary(UnaryOp::Neg))) else {
            continue;
        };
        let channels = *g.fact(x).ok()?.shape.last()?;
        if src != x || c.len() != channels || g.fact(x).ok()?.shape != a.outputs[0].shape {
            continue;
        }
        let alpha = c.as_f32().ok()?.iter().map(|v| -v).collect();
        return Some((x, alpha));
    }
    None
}

pub fn run(g: &mut Graph, log: &mut Vec<Rewrite>) -> Result<usize> {
    let mut changed = 0;
    for i in 0..g.nodes.len() {
        let Some((x, alpha)) = matches(g, i) else {
            continue;
        };
        let c = alpha.len();
        let name = g.fresh_name(&format!("{}/alpha", g.nodes[i].name));
        let a = g.add_const(name, Tensor::f32(vec![c], alpha)?);
        let n = &mut g.nodes[i];
        n.op = Op::PRelu;
        n.inputs = vec![x, Wire { node: a, slot: 0 }];
        log.push(Rewrite {
            pass: "fuse_prelu",
            node: n.name.clone(),
            detail: format!("Relu/Neg/Relu/Mul/Add -> PRelu over {c} channels"),
        });
        changed += 1;
    }
    Ok(changed)
}
