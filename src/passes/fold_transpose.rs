//! `Transpose -> Reshape(flatten) -> MatMul(constant weights)`: the
//! transpose only reorders the rows the matmul reads, so it folds into the
//! weights (rows permuted) and the flatten reads the untransposed value.
//! Keras MTCNN's Permute before Flatten + Dense is this.

use super::Rewrite;
use crate::error::Result;
use crate::ir::{numel, Graph, Op, Tensor, Wire};

/// (transpose input, perm, reshape node, weights wire) for MatMul node `m`.
fn matches(g: &Graph, m: usize) -> Option<(Wire, Vec<usize>, usize, Wire)> {
    let mm = &g.nodes[m];
    if !matches!(
        mm.op,
        Op::MatMul {
            transpose_a: false,
            transpose_b: false
        }
    ) {
        return None;
    }
    let w = mm.inputs[1];
    g.const_of(w)?;
    let r = mm.inputs[0];
    let rn = &g.nodes[r.node];
    if !matches!(rn.op, Op::Reshape { .. }) || !g.single_use(r) {
        return None;
    }
    let t = rn.inputs[0];
    let tn = &g.nodes[t.node];
    let Op::Transpose { perm } = &tn.op else {
        return None;
    };
    if !g.single_use(t) || perm.first() != Some(&0) || !g.single_use(w) {
        return None;
    }
    let x = tn.inputs[0];
    let xs = &g.fact(x).ok()?.shape;
    // The reshape must keep the leading axis and flatten the rest.
    if rn.outputs[0].shape != [xs[0], numel(&xs[1..])] {
        return None;
    }
    Some((x, perm.clone(), r.node, w))
}

pub fn run(g: &mut Graph, log: &mut Vec<Rewrite>) -> Result<usize> {
    let mut changed = 0;
    for m in 0..g.nodes.len() {
        let Some((x, perm, reshape, w)) = matches(g, m) else {
            continue;
        };
        let xs = g.fact(x)?.shape.clone();
        let ts: Vec<usize> = perm.iter().map(|&p| xs[p]).collect();
        let wt = g.const_of(w).expect("matched a constant");
        let ws = wt.shape().to_vec();
        let wv = wt.as_f32()?.into_owned();
        let (rows, cols) = (ws[0], ws[1]);
        let inner = &xs[1..];
        if rows != numel(inner) {
            continue;
        }
        // Row j of the new weights is the row the transposed flatten put the
        // same element at.
        let mut out = vec![0.0f32; wv.len()];
        let mut idx = vec![0usize; xs.len()];
        for j in 0..rows {
            // idx = multi-index of flat j in xs (leading axis 0).
            let mut rem = j;
            for a in (1..xs.len()).rev() {
                idx[a] = rem % xs[a];
                rem /= xs[a];
            }
            idx[0] = 0;
            let mut tpos = 0;
            for a in 1..ts.len() {
                tpos = tpos * ts[a] + idx[perm[a]];
            }
            out[j * cols..(j + 1) * cols].copy_from_slice(&wv[tpos * cols..(tpos + 1) * cols]);
        }
        let name = g.fresh_name(&format!("{}/permuted", g.nodes[w.node].name));
        let c = g.add_const(name, Tensor::f32(ws, out)?);
        g.nodes[m].inputs[1] = Wire { node: c, slot: 0 };
        g.nodes[reshape].inputs[0] = x;
        // The flatten now holds the elements in another order than TF's.
        g.nodes[reshape].mark_changed();
        let node = g.nodes[m].name.clone();
        log.push(Rewrite {
            pass: "fold_transpose",
            node,
            detail: format!("transpose {perm:?} before the flatten folded into the weight rows"),
        });
        changed += 1;
    }
    Ok(changed)
}
