//! Move Transposes down the graph, through the ops that only care where an
//! axis is, until they meet their inverse and cancel.
//!
//! A graph that came from PyTorch (through ONNX and onnx-tf) or was trained
//! channel-first on a GPU holds its activations NCHW between Transposes:
//! `x -> Transpose(0,3,1,2) -> bias/relu/add/concat/mean in NCHW ->
//! Transpose(0,2,3,1) -> Conv2D (NHWC) -> ...`. Caffe and Core ML have no
//! general transpose, and every one costs a copy in the engine. For an op
//! `U` reading `T(x)`, `U(T(x)) == T'(U'(x))`, where `U'` is the same op with
//! its axes, layout or constant operand re-indexed for `x`; the new `T'` is
//! then one step further down. Two that meet compose (`T2(T1(x))` is one
//! Transpose, or none when the perms cancel).
//!
//! A Transpose read by several nodes moves into each reader that can take
//! it and stays for the rest. `U'` computes a value TF never has (its
//! transpose is TF's), so it is marked changed; the `T'` after it carries
//! the TF name, until it cancels.

use super::Rewrite;
use crate::error::{Error, Result};
use crate::ir::{Graph, Layout, Op, Tensor, Wire};

/// `perm` undone: `inv[perm[i]] = i`.
fn inverse(perm: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        if let Some(slot) = inv.get_mut(p) {
            *slot = i;
        }
    }
    inv
}

fn is_identity(perm: &[usize]) -> bool {
    perm.iter().enumerate().all(|(i, &p)| i == p)
}

/// The perm of a Transpose node's output wire, when it is one.
fn transpose_of(g: &Graph, w: Wire) -> Option<(Wire, &[usize])> {
    match &g.nodes.get(w.node)?.op {
        Op::Transpose { perm } if w.slot == 0 => Some((g.nodes[w.node].inputs[0], perm)),
        _ => None,
    }
}

/// A constant broadcast against `T(x)` re-indexed for `x`: padded to the
/// rank with leading ones, then transposed by the inverse perm.
fn permute_const(t: &Tensor, perm: &[usize]) -> Option<Tensor> {
    let rank = perm.len();
    let s = t.shape();
    if s.len() > rank {
        return None;
    }
    let mut padded = vec![1; rank - s.len()];
    padded.extend_from_slice(s);
    let inv = inverse(perm);
    let v = t.as_f32().ok()?;
    let moved = crate::runtime::kernels::transpose(&v, &padded, &inv);
    let shape: Vec<usize> = inv.iter().map(|&a| padded[a]).collect();
    Tensor::f32(shape, moved).ok()
}

/// What reading `x` instead of `T(x)` makes of the reader.
struct Sunk {
    op: Op,
    inputs: Vec<Wire>,
    /// New constants to add, by input slot.
    consts: Vec<(usize, Tensor)>,
    /// The Transpose to put after the reader (None: its value is TF's).
    after: Option<Vec<usize>>,
    what: &'static str,
}

/// Whether node `u` can read `x` in place of `T(x)` (T = `t`, perm `perm`).
fn sink(g: &Graph, u: usize, t: Wire, perm: &[usize]) -> Option<Sunk> {
    let node = &g.nodes[u];
    let rank = perm.len();
    let (x, _) = transpose_of(g, t)?;
    let ranked = |w: Wire| g.fact(w).ok().map(|f| f.shape.len()) == Some(rank);
    // Every reader below keeps the rank, except a reduction that drops axes.
    let reduces = matches!(node.op, Op::Reduce { .. });
    if node.outputs.len() != 1 || !(reduces || ranked(Wire { node: u, slot: 0 })) {
        return None;
    }
    let same = |op: Op, what| {
        Some(Sunk {
            op,
            inputs: vec![x],
            consts: vec![],
            after: Some(perm.to_vec()),
            what,
        })
    };
    let inv = inverse(perm);
    match &node.op {
        Op::Activation(_) | Op::Unary(_) | Op::Identity if node.inputs.len() == 1 => {
            same(node.op.clone(), "elementwise")
        }
        // Every operand is T(x) of the same perm, or a constant.
        Op::Binary(_) | Op::WeightedSum { .. } => {
            let mut inputs = vec![];
            let mut consts = vec![];
            let mut moved = false;
            for (slot, &w) in node.inputs.iter().enumerate() {
                if let Some((src, p)) = transpose_of(g, w) {
                    if p == perm {
                        inputs.push(src);
                        moved = true;
                        continue;
                    }
                }
                let c = g.const_of(w)?;
                consts.push((slot, permute_const(c, perm)?));
                inputs.push(w);
            }
            moved.then(|| Sunk {
                op: node.op.clone(),
                inputs,
                consts,
                after: Some(perm.to_vec()),
                what: "elementwise",
            })
        }
        Op::BiasAdd { layout } if node.inputs.first() == Some(&t) => {
            let c = if rank == 4 {
                layout.channel_axis()
            } else {
                rank - 1
            };
            let layout = match perm.get(c)? {
                &a if a + 1 == rank => Layout::Nhwc,
                1 if rank == 4 => Layout::Nchw,
                _ => return None,
            };
            Some(Sunk {
                op: Op::BiasAdd { layout },
                inputs: vec![x, node.inputs[1]],
                consts: vec![],
                after: Some(perm.to_vec()),
                what: "bias axis",
            })
        }
        // A channel-first conv, pool or batch norm of an NHWC map moved to
        // channel-first: the same op channel-last.
        Op::Conv2d(_) | Op::Pool(_) | Op::BatchNorm(_)
            if perm == [0, 3, 1, 2] && node.inputs.first() == Some(&t) =>
        {
            let op = match &node.op {
                Op::Conv2d(c) if c.layout == Layout::Nchw => Op::Conv2d(crate::ir::Conv2d {
                    layout: Layout::Nhwc,
                    ..c.clone()
                }),
                Op::Pool(p) if p.layout == Layout::Nchw => Op::Pool(crate::ir::Pool {
                    layout: Layout::Nhwc,
                    ..p.clone()
                }),
                Op::BatchNorm(b) if b.layout == Layout::Nchw => {
                    Op::BatchNorm(crate::ir::BatchNorm {
                        layout: Layout::Nhwc,
                        ..b.clone()
                    })
                }
                _ => return None,
            };
            let mut inputs = node.inputs.clone();
            inputs[0] = x;
            Some(Sunk {
                op,
                inputs,
                consts: vec![],
                after: Some(perm.to_vec()),
                what: "channel-first layout",
            })
        }
        Op::Concat { axis } => {
            let mut inputs = vec![];
            for &w in &node.inputs {
                let (src, p) = transpose_of(g, w)?;
                if p != perm {
                    return None;
                }
                inputs.push(src);
            }
            same(Op::Concat { axis: perm[*axis] }, "concat axis").map(|s| Sunk { inputs, ..s })
        }
        Op::Reduce {
            reduce,
            axes,
            keep_dims,
        } => {
            let mut new_axes: Vec<usize> = axes.iter().map(|&a| perm[a]).collect();
            new_axes.sort_unstable();
            let op = Op::Reduce {
                reduce: *reduce,
                axes: new_axes.clone(),
                keep_dims: *keep_dims,
            };
            if *keep_dims {
                return same(op, "reduced axes");
            }
            // Kept axes: in T's order they are x's axes perm[i]; the reduced
            // x keeps them in x's order.
            let kept_x: Vec<usize> = (0..rank).filter(|a| !new_axes.contains(a)).collect();
            let after: Vec<usize> = (0..rank)
                .filter(|i| !axes.contains(i))
                .map(|i| kept_x.iter().position(|&a| a == perm[i]))
                .collect::<Option<_>>()?;
            Some(Sunk {
                op,
                inputs: vec![x],
                consts: vec![],
                after: (!is_identity(&after)).then_some(after),
                what: "reduced axes",
            })
        }
        Op::Pad { pads, value } => same(
            Op::Pad {
                pads: inv.iter().map(|&i| pads[i]).collect(),
                value: *value,
            },
            "pad axes",
        ),
        Op::Slice { begin, end } => same(
            Op::Slice {
                begin: inv.iter().map(|&i| begin[i]).collect(),
                end: inv.iter().map(|&i| end[i]).collect(),
            },
            "slice axes",
        ),
        Op::L2Normalize { axis, epsilon } => same(
            Op::L2Normalize {
                axis: perm[*axis],
                epsilon: *epsilon,
            },
            "normalised axis",
        ),
        Op::Softmax if perm.last() == Some(&(rank - 1)) => same(Op::Softmax, "elementwise rows"),
        _ => None,
    }
}

/// Recompute node `i`'s output facts from its inputs.
fn reinfer(g: &mut Graph, i: usize) -> Result<()> {
    let facts = g.nodes[i]
        .inputs
        .iter()
        .map(|w| g.fact(*w).cloned())
        .collect::<Result<Vec<_>>>()?;
    let refs: Vec<_> = facts.iter().collect();
    let n = &g.nodes[i];
    let outputs =
        n.op.infer(&refs)
            .map_err(|m| Error::node(&n.name, &n.source_op, m))?;
    g.nodes[i].outputs = outputs;
    Ok(())
}

/// `T2(T1(x))` read as one Transpose of `x`, or `x` itself.
fn compose(g: &mut Graph, u: usize, log: &mut Vec<Rewrite>) -> Result<bool> {
    let Op::Transpose { perm: outer } = &g.nodes[u].op else {
        return Ok(false);
    };
    let Some((x, inner)) = transpose_of(g, g.nodes[u].inputs[0]) else {
        return Ok(false);
    };
    let perm: Vec<usize> = outer.iter().map(|&o| inner[o]).collect();
    let me = Wire { node: u, slot: 0 };
    let name = g.nodes[u].name.clone();
    if !is_identity(&perm) {
        g.nodes[u].op = Op::Transpose { perm: perm.clone() };
        g.nodes[u].inputs[0] = x;
        log.push(Rewrite {
            pass: "sink_transpose",
            node: name,
            detail: format!("two transposes composed into one, perm {perm:?}"),
        });
        return Ok(true);
    }
    // The value is x's: x's producer carries the name when it can.
    let x_named_elsewhere = x.slot != 0 || g.outputs.contains(&x);
    if g.outputs.contains(&me) && x_named_elsewhere {
        g.nodes[u].op = Op::Identity;
        g.nodes[u].inputs[0] = x;
    } else {
        let mut names = vec![name.clone()];
        names.extend(g.nodes[u].aliases.iter().cloned());
        g.replace_uses(me, x);
        if x.slot == 0 && g.nodes[u].carries().is_some() {
            g.nodes[x.node].alias(names);
        }
    }
    log.push(Rewrite {
        pass: "sink_transpose",
        node: name,
        detail: "cancelled against the transpose before it".into(),
    });
    Ok(true)
}

/// Nodes the outputs need: a reader nothing needs is left alone (with
/// `remove_dead` switched off it stays, and must not be rewritten again on
/// every round).
fn live(g: &Graph) -> Vec<bool> {
    let mut live = vec![false; g.nodes.len()];
    let mut stack: Vec<usize> = g.outputs.iter().map(|w| w.node).collect();
    while let Some(i) = stack.pop() {
        if let Some(l) = live.get_mut(i) {
            if !*l {
                *l = true;
                stack.extend(g.nodes[i].inputs.iter().map(|w| w.node));
            }
        }
    }
    live
}

pub fn run(g: &mut Graph, log: &mut Vec<Rewrite>) -> Result<usize> {
    let mut changed = 0;
    let count = g.nodes.len();
    let mut live = live(g);
    for t in 0..count {
        if !live[t] {
            continue;
        }
        let Op::Transpose { perm } = &g.nodes[t].op else {
            continue;
        };
        let perm = perm.clone();
        let tw = Wire { node: t, slot: 0 };
        let mut users = g.users(tw);
        users.dedup();
        for u in users {
            if !live.get(u).copied().unwrap_or(true) {
                continue;
            }
            if compose(g, u, log)? {
                // Bypassed when the perms cancel: nothing reads it now.
                if g.users(Wire { node: u, slot: 0 }).is_empty()
                    && !g.outputs.contains(&Wire { node: u, slot: 0 })
                {
                    live[u] = false;
                }
                changed += 1;
                continue;
            }
            let Some(s) = sink(g, u, tw, &perm) else {
                continue;
            };
            let mut inputs = s.inputs;
            for (slot, c) in s.consts {
                let name = g.fresh_name(&format!("{}/{}", g.nodes[u].name, "transposed"));
                let k = g.add_const(name, c);
                inputs[slot] = Wire { node: k, slot: 0 };
            }
            let me = Wire { node: u, slot: 0 };
            let old = g.nodes[u].clone();
            g.nodes[u].op = s.op;
            g.nodes[u].inputs = inputs;
            reinfer(g, u)?;
            let detail = format!(
                "reads '{}' before its transpose ({})",
                g.nodes[t].name, s.what
            );
            if let Some(after) = s.after {
                // The reader now computes a value TF does not have; the
                // transpose after it computes the reader's TF value.
                let name = g.fresh_name(&format!("{}/transposed", old.name));
                let mut tn = old.clone();
                tn.name = name;
                tn.source_op = "Transpose".into();
                tn.op = Op::Transpose { perm: after };
                tn.inputs = vec![me];
                tn.absorbed.clear();
                tn.aliases.clear();
                tn.own_changed = true;
                if let Some(c) = old.carries() {
                    tn.alias([c.to_string()]);
                }
                g.nodes.push(tn);
                let new = Wire {
                    node: g.nodes.len() - 1,
                    slot: 0,
                };
                g.replace_uses(me, new);
                g.nodes[new.node].inputs[0] = me;
                g.nodes[u].mark_changed();
            }
            log.push(Rewrite {
                pass: "sink_transpose",
                node: old.name,
                detail,
            });
            changed += 1;
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_undoes_the_perm() {
        let p = [0, 3, 1, 2];
        let inv = inverse(&p);
        assert_eq!(inv, vec![0, 2, 3, 1]);
        let both: Vec<usize> = p.iter().map(|&a| inv[a]).collect();
        assert!(is_identity(&both));
    }

    #[test]
    fn a_channel_constant_moves_to_the_last_axis() {
        // (1, 3, 1, 1) against an NCHW view of an NHWC map is (1, 1, 1, 3).
        let c = Tensor::f32(vec![1, 3, 1, 1], vec![1.0, 2.0, 3.0]).unwrap();
        let moved = permute_const(&c, &[0, 3, 1, 2]).unwrap();
        assert_eq!(moved.shape(), &[1, 1, 1, 3]);
        assert_eq!(&*moved.as_f32().unwrap(), &[1.0, 2.0, 3.0]);
        // A (H, W) constant keeps its order, moved to axes 1 and 2.
        let hw = Tensor::f32(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let moved = permute_const(&hw, &[0, 3, 1, 2]).unwrap();
        assert_eq!(moved.shape(), &[1, 2, 2, 1]);
        assert_eq!(&*moved.as_f32().unwrap(), &[1.0, 2.0, 3.0, 4.0]);
    }
}
