//! TF1 Switch/Merge with a constant predicate: wire the taken branch
//! through and leave the other dead (remove_dead drops it).

use super::Rewrite;
use crate::error::Result;
use crate::ir::{Graph, Op, Tensor, Wire};

pub fn run(g: &mut Graph, log: &mut Vec<Rewrite>) -> Result<usize> {
    let n = g.nodes.len();
    // dead[i][slot]: the value is never produced at inference.
    let mut dead: Vec<Vec<bool>> = g
        .nodes
        .iter()
        .map(|x| vec![false; x.outputs.len()])
        .collect();
    let mut any = false;
    for i in 0..n {
        let node = &g.nodes[i];
        match node.op {
            Op::Switch => {
                let Some(pred) = g
                    .const_of(node.inputs[1])
                    .and_then(|t| t.to_bool_vec().ok())
                else {
                    continue;
                };
                let Some(&p) = pred.first() else { continue };
                if dead[node.inputs[0].node][node.inputs[0].slot] {
                    dead[i] = vec![true, true];
                } else {
                    dead[i][usize::from(!p)] = true;
                }
                any = true;
            }
            Op::Merge => {
                let live = node.inputs.iter().filter(|w| !dead[w.node][w.slot]).count();
                if live == 0 {
                    dead[i] = vec![true, true];
                }
            }
            _ => {
                if node.inputs.iter().any(|w| dead[w.node][w.slot]) {
                    dead[i] = vec![true; node.outputs.len()];
                }
            }
        }
    }
    if !any {
        return Ok(0);
    }
    let mut changed = 0;
    for i in 0..n {
        match g.nodes[i].op {
            Op::Switch if dead[i].iter().any(|&d| d) && !dead[i].iter().all(|&d| d) => {
                let data = g.nodes[i].inputs[0];
                let live = dead[i].iter().position(|&d| !d).unwrap_or(0);
                let me = Wire {
                    node: i,
                    slot: live,
                };
                if !g.users(me).is_empty() {
                    g.replace_uses(me, data);
                    changed += 1;
                    log.push(Rewrite {
                        pass: "resolve_switch",
                        node: g.nodes[i].name.clone(),
                        detail: format!(
                            "takes the {} branch",
                            if live == 1 { "true" } else { "false" }
                        ),
                    });
                }
            }
            Op::Merge if !dead[i][0] => {
                let inputs = g.nodes[i].inputs.clone();
                let live: Vec<(usize, Wire)> = inputs
                    .iter()
                    .copied()
                    .enumerate()
                    .filter(|(_, w)| !dead[w.node][w.slot])
                    .collect();
                let [(idx, w)] = live.as_slice() else {
                    continue;
                };
                let me = Wire { node: i, slot: 0 };
                let index = Wire { node: i, slot: 1 };
                let name = g.nodes[i].name.clone();
                let had_users = !g.users(me).is_empty() || !g.users(index).is_empty();
                if !had_users {
                    continue;
                }
                // Keep the Merge's name on the value: it is what TF users fetch.
                g.replace_uses(me, *w);
                if !g.users(index).is_empty() {
                    let c = g.add_const(
                        g.fresh_name(&format!("{name}/value_index")),
                        Tensor::i32(vec![], vec![*idx as i32])?,
                    );
                    g.replace_uses(index, Wire { node: c, slot: 0 });
                }
                if w.slot == 0 {
                    g.nodes[w.node].alias([name.clone()]);
                }
                changed += 1;
                log.push(Rewrite {
                    pass: "resolve_switch",
                    node: name,
                    detail: format!("merges only input #{idx}"),
                });
            }
            _ => {}
        }
    }
    Ok(changed)
}
