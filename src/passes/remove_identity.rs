//! Bypass Identity nodes and reshapes that do nothing or follow a reshape.

use super::Rewrite;
use crate::error::Result;
use crate::ir::{Graph, Op, Wire};

fn is_reshape(op: &Op) -> bool {
    matches!(
        op,
        Op::Reshape { .. } | Op::Squeeze { .. } | Op::ExpandDims { .. }
    )
}

pub fn run(g: &mut Graph, log: &mut Vec<Rewrite>) -> Result<usize> {
    let mut changed = 0;
    for i in 0..g.nodes.len() {
        let node = &g.nodes[i];
        let Some(&input) = node.inputs.first() else {
            continue;
        };
        let me = Wire { node: i, slot: 0 };
        if g.users(me).is_empty() && !g.outputs.contains(&me) {
            continue;
        }
        let same_shape = g.fact(input)?.shape == node.outputs[0].shape;
        let bypass = matches!(node.op, Op::Identity) || (is_reshape(&node.op) && same_shape);
        if bypass {
            // An output can only be bypassed when its producer can carry its name.
            if g.outputs.contains(&me) && (input.slot != 0 || g.outputs.contains(&input)) {
                continue;
            }
            let name = node.name.clone();
            let mut names = vec![name.clone()];
            names.extend(node.aliases.iter().cloned());
            g.replace_uses(me, input);
            if input.slot == 0 {
                g.nodes[input.node].alias(names);
            }
            log.push(Rewrite {
                pass: "remove_identity",
                node: name,
                detail: "bypassed".into(),
            });
            changed += 1;
            continue;
        }
        // reshape(reshape(x)) -> reshape(x)
        if is_reshape(&node.op) && is_reshape(&g.nodes[input.node].op) {
            let inner = g.nodes[input.node].inputs[0];
            let shape = node.outputs[0].shape.clone();
            let name = node.name.clone();
            g.nodes[i].op = Op::Reshape { shape };
            g.nodes[i].inputs[0] = inner;
            log.push(Rewrite {
                pass: "remove_identity",
                node: name,
                detail: format!(
                    "merged with the reshape '{}' before it",
                    g.nodes[input.node].name
                ),
            });
            changed += 1;
        }
    }
    Ok(changed)
}
