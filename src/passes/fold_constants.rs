//! Evaluate nodes whose inputs are all constants.

use super::Rewrite;
use crate::error::{Error, Result};
use crate::ir::{Graph, Op};

pub fn run(g: &mut Graph, log: &mut Vec<Rewrite>) -> Result<usize> {
    let mut changed = 0;
    for i in 0..g.nodes.len() {
        let node = &g.nodes[i];
        if matches!(node.op, Op::Input | Op::Const(_) | Op::Switch | Op::Merge)
            || node.inputs.is_empty()
        {
            continue;
        }
        let Some(inputs) = node
            .inputs
            .iter()
            .map(|w| g.const_of(*w).cloned())
            .collect::<Option<Vec<_>>>()
        else {
            continue;
        };
        let value = crate::runtime::eval_single(node, &inputs).map_err(|e| {
            Error::node(
                &node.name,
                &node.source_op,
                format!("constant folding: {e}"),
            )
        })?;
        let n = &mut g.nodes[i];
        log.push(Rewrite {
            pass: "fold_constants",
            node: n.name.clone(),
            detail: format!("{} of constants evaluated", n.op.kind()),
        });
        n.op = Op::Const(value);
        n.inputs.clear();
        changed += 1;
    }
    Ok(changed)
}
