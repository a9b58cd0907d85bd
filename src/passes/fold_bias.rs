//! Fold BiasAdd, or Add/Sub of a per-channel constant, into the conv or
//! MatMul before it.

use super::fold_batch_norm::{absorb_affine, affine_producer, finish_fold, per_channel};
use super::Rewrite;
use crate::error::Result;
use crate::ir::{BinaryOp, Graph, Layout, Op};

pub fn run(g: &mut Graph, log: &mut Vec<Rewrite>) -> Result<usize> {
    let mut changed = 0;
    for i in 0..g.nodes.len() {
        let node = &g.nodes[i];
        let c = *node.outputs[0].shape.last().unwrap_or(&0);
        let (x, k, negate) = match &node.op {
            Op::BiasAdd { layout }
                if *layout == Layout::Nhwc || node.outputs[0].shape.len() != 4 =>
            {
                (node.inputs[0], node.inputs[1], false)
            }
            Op::Binary(BinaryOp::Add) | Op::Binary(BinaryOp::Sub) => {
                let sub = matches!(node.op, Op::Binary(BinaryOp::Sub));
                match (
                    g.const_of(node.inputs[0]).is_some(),
                    g.const_of(node.inputs[1]).is_some(),
                ) {
                    (false, true) => (node.inputs[0], node.inputs[1], sub),
                    (true, false) if !sub => (node.inputs[1], node.inputs[0], false),
                    _ => continue,
                }
            }
            _ => continue,
        };
        let Some(kt) = g.const_of(k) else { continue };
        if g.fact(x)?.shape != node.outputs[0].shape {
            continue;
        }
        let Some(mut shift) = per_channel(kt, c) else {
            continue;
        };
        if negate {
            shift.iter_mut().for_each(|v| *v = -*v);
        }
        let Some((producer, _)) = affine_producer(g, x) else {
            continue;
        };
        absorb_affine(g, producer, None, Some(&shift))?;
        finish_fold(g, producer, i, x, log, "fold_bias");
        changed += 1;
    }
    Ok(changed)
}
