//! Reference executor: runs an IR graph with TensorFlow's semantics and can
//! return any intermediate value by name.
//!
//! TF1 control flow runs as TensorFlow runs it: the untaken output of a
//! `Switch` is dead, deadness propagates, and `Merge` forwards its one live
//! input. Values are freed after their last use unless fetched.

pub mod engine;
pub mod kernels;

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::ir::{numel, DType, Graph, Layout, Node, Op, Padding, Tensor, Wire};
use kernels::ConvGeometry;

#[derive(Clone)]
enum Slot {
    Live(Tensor),
    Dead,
}

/// Feeds by input name, fetches by tensor name ("node" or "node:k").
pub fn run(
    graph: &Graph,
    feeds: &HashMap<String, Tensor>,
    fetch: &[String],
) -> Result<Vec<Tensor>> {
    let wires = fetch
        .iter()
        .map(|f| graph.wire_by_name(f))
        .collect::<Result<Vec<_>>>()?;
    run_wires(graph, feeds, &wires)
}

pub fn run_wires(
    graph: &Graph,
    feeds: &HashMap<String, Tensor>,
    fetch: &[Wire],
) -> Result<Vec<Tensor>> {
    for name in feeds.keys() {
        match graph.node_by_name(name).map(|i| &graph.nodes[i].op) {
            Some(Op::Input) => {}
            _ => {
                return Err(Error::Usage(format!(
                    "'{name}' is not an input of the graph"
                )))
            }
        }
    }
    // Nodes needed for the fetches, and how many times each is read.
    let mut needed = vec![false; graph.nodes.len()];
    let mut stack: Vec<usize> = fetch.iter().map(|w| w.node).collect();
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut needed[i], true) {
            continue;
        }
        stack.extend(graph.nodes[i].inputs.iter().map(|w| w.node));
    }
    let mut uses = vec![0usize; graph.nodes.len()];
    for (i, n) in graph.nodes.iter().enumerate() {
        if needed[i] {
            for w in &n.inputs {
                uses[w.node] += 1;
            }
        }
    }
    for w in fetch {
        uses[w.node] += 1;
    }
    let mut values: Vec<Option<Vec<Slot>>> = vec![None; graph.nodes.len()];
    for (i, node) in graph.nodes.iter().enumerate() {
        if !needed[i] {
            continue;
        }
        let mut ins = Vec::with_capacity(node.inputs.len());
        for w in &node.inputs {
            let slot = values[w.node]
                .as_ref()
                .and_then(|v| v.get(w.slot))
                .cloned()
                .ok_or_else(|| Error::Graph(format!("value {w:?} read before it was computed")))?;
            ins.push(slot);
            uses[w.node] -= 1;
            if uses[w.node] == 0 {
                values[w.node] = None;
            }
        }
        let t0 = profile().then(std::time::Instant::now);
        let out = eval_node(node, ins, feeds).map_err(|e| match e {
            e @ Error::Node { .. } => e,
            e => Error::node(&node.name, &node.source_op, e.to_string()),
        })?;
        if let Some(t0) = t0 {
            eprintln!(
                "profile {} {:.3}",
                node.op.kind(),
                t0.elapsed().as_secs_f64() * 1000.0
            );
        }
        values[i] = Some(out);
    }
    fetch
        .iter()
        .map(
            |w| match values[w.node].as_ref().and_then(|v| v.get(w.slot)) {
                Some(Slot::Live(t)) => Ok(t.clone()),
                Some(Slot::Dead) => Err(Error::Usage(format!(
                    "'{}' is on a branch not taken (dead)",
                    graph.wire_name(*w)
                ))),
                None => Err(Error::Graph(format!(
                    "'{}' was not computed",
                    graph.wire_name(*w)
                ))),
            },
        )
        .collect()
}

fn profile() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("FACEALL_PROFILE").is_some())
}

fn eval_node(node: &Node, ins: Vec<Slot>, feeds: &HashMap<String, Tensor>) -> Result<Vec<Slot>> {
    let n_out = node.op.num_outputs();
    if let Op::Merge = node.op {
        let (idx, t) = ins
            .into_iter()
            .enumerate()
            .find_map(|(i, s)| match s {
                Slot::Live(t) => Some((i, t)),
                Slot::Dead => None,
            })
            .ok_or_else(|| Error::Usage("every input of the Merge is dead".into()))?;
        return Ok(vec![
            Slot::Live(t),
            Slot::Live(Tensor::i32(vec![], vec![idx as i32])?),
        ]);
    }
    let mut live = Vec::with_capacity(ins.len());
    for s in ins {
        match s {
            Slot::Live(t) => live.push(t),
            Slot::Dead => return Ok(vec![Slot::Dead; n_out]),
        }
    }
    if let Op::Switch = node.op {
        let pred = live[1].to_bool_vec()?;
        let take = *pred
            .first()
            .ok_or_else(|| Error::Usage("empty predicate".into()))?;
        let t = Slot::Live(live[0].clone());
        return Ok(if take {
            vec![Slot::Dead, t]
        } else {
            vec![t, Slot::Dead]
        });
    }
    let out = eval_op(node, &live, feeds)?;
    Ok(vec![Slot::Live(out)])
}

fn out_shape(node: &Node) -> Vec<usize> {
    node.outputs
        .first()
        .map(|f| f.shape.clone())
        .unwrap_or_default()
}

/// Owned f32 copy of an input (kernels that work in place).
fn owned(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.as_f32()?.into_owned())
}

fn f32_out(node: &Node, v: Vec<f32>) -> Result<Tensor> {
    Tensor::f32(out_shape(node), v)
}

fn to_nhwc(t: &Tensor, layout: Layout) -> Result<(Vec<f32>, [usize; 4])> {
    let s = t.shape();
    let &[a, b, c, d] = s else {
        return Err(Error::Usage(format!("needs a 4-D input, has {s:?}")));
    };
    Ok(match layout {
        Layout::Nhwc => (owned(t)?, [a, b, c, d]),
        Layout::Nchw => (
            kernels::nchw_to_nhwc(&t.as_f32()?, [a, b, c, d]),
            [a, c, d, b],
        ),
    })
}

fn from_nhwc(v: Vec<f32>, layout: Layout, nhwc: [usize; 4]) -> Vec<f32> {
    match layout {
        Layout::Nhwc => v,
        Layout::Nchw => kernels::nhwc_to_nchw(&v, nhwc),
    }
}

/// Spatial padding before (top, left) and the output size.
pub(crate) fn geometry(
    padding: &Padding,
    hw: [usize; 2],
    k: [usize; 2],
    s: [usize; 2],
    d: [usize; 2],
) -> Result<([usize; 2], [usize; 2])> {
    let mut out = [0; 2];
    let mut pad = [0; 2];
    for i in 0..2 {
        let (o, p) = crate::ir::resolve_axis(padding, i, hw[i], k[i], s[i], d[i])
            .ok_or_else(|| Error::Usage("window does not fit the input".into()))?;
        out[i] = o;
        pad[i] = p[0];
    }
    Ok((out, pad))
}

fn eval_op(node: &Node, ins: &[Tensor], feeds: &HashMap<String, Tensor>) -> Result<Tensor> {
    let x = ins.first();
    let x0 = || x.ok_or_else(|| Error::Usage("missing input".into()));
    match &node.op {
        Op::Input => {
            let t = feeds
                .get(&node.name)
                .ok_or_else(|| Error::Usage(format!("no value fed for input '{}'", node.name)))?;
            let want = &node.outputs[0];
            if t.shape() != want.shape.as_slice() || t.dtype() != want.dtype {
                return Err(Error::Usage(format!(
                    "input '{}' expects {} {:?}, was fed {} {:?}",
                    node.name,
                    want.dtype.name(),
                    want.shape,
                    t.dtype().name(),
                    t.shape()
                )));
            }
            Ok(t.clone())
        }
        Op::Const(t) => Ok(t.clone()),
        Op::Identity => Ok(x0()?.clone()),
        Op::Reshape { .. } | Op::Squeeze { .. } | Op::ExpandDims { .. } => {
            x0()?.reshaped(out_shape(node))
        }
        Op::Switch | Op::Merge => Err(Error::Graph("control flow reached eval_op".into())),
        Op::Conv2d(c) => {
            let (xv, [n, h, w, ch]) = to_nhwc(&ins[0], c.layout)?;
            let ws = ins[1].shape();
            let (kh, kw) = (ws[0], ws[1]);
            let ([oh, ow], pad) = geometry(&c.padding, [h, w], [kh, kw], c.strides, c.dilations)?;
            let g = ConvGeometry {
                n,
                h,
                w,
                c: ch,
                kh,
                kw,
                co: ws[3],
                oh,
                ow,
                stride: c.strides,
                dilation: c.dilations,
                pad,
            };
            let wv = ins[1].as_f32()?;
            let y = if c.depthwise {
                kernels::depthwise_nhwc(&xv, &wv, &g)
            } else {
                kernels::conv2d_nhwc(&xv, &wv, &g)
            };
            let oc = if c.depthwise { ch * ws[3] } else { ws[3] };
            let mut y = y;
            if let Some(b) = ins.get(2) {
                kernels::bias_add(&mut y, &b.as_f32()?, 1);
            }
            f32_out(node, from_nhwc(y, c.layout, [n, oh, ow, oc]))
        }
        Op::Deconv2d(d) => {
            let (xv, [n, h, w, ci]) = to_nhwc(&ins[0], Layout::Nhwc)?;
            let ws = ins[1].shape();
            let &[kh, kw, co, _] = ws else {
                return Err(Error::Usage(format!("filter of shape {ws:?}")));
            };
            let pads = d
                .pads([h, w], [kh, kw])
                .ok_or_else(|| Error::Usage("the deconvolution does not fit its input".into()))?;
            let g = kernels::DeconvGeometry {
                k: [kh, kw],
                stride: d.strides,
                dilation: d.dilations,
                crop: [pads[0][0], pads[1][0]],
                out: d.size,
            };
            let mut y = kernels::deconv2d_nhwc(&xv, [n, h, w, ci], &ins[1].as_f32()?, co, &g);
            if let Some(b) = ins.get(2) {
                kernels::bias_add(&mut y, &b.as_f32()?, 1);
            }
            f32_out(node, y)
        }
        Op::BiasAdd { layout } => {
            let mut v = owned(&ins[0])?;
            let s = ins[0].shape();
            let axis = if s.len() == 4 {
                layout.channel_axis()
            } else {
                s.len() - 1
            };
            kernels::bias_add(&mut v, &ins[1].as_f32()?, numel(&s[axis + 1..]));
            f32_out(node, v)
        }
        Op::BatchNorm(bn) => {
            let mut v = owned(&ins[0])?;
            let s = ins[0].shape();
            let axis = bn.layout.channel_axis();
            let [g, b, m, var] = [&ins[1], &ins[2], &ins[3], &ins[4]].map(|t| t.as_f32());
            kernels::batch_norm(
                &mut v,
                s[axis],
                numel(&s[axis + 1..]),
                &g?,
                &b?,
                &m?,
                &var?,
                bn.epsilon,
                bn.training,
            );
            f32_out(node, v)
        }
        Op::Activation(a) => {
            let mut v = owned(x0()?)?;
            kernels::activation(*a, &mut v);
            f32_out(node, v)
        }
        Op::Unary(u) => {
            let mut v = owned(x0()?)?;
            kernels::unary(*u, &mut v);
            f32_out(node, v)
        }
        Op::Softmax => {
            let mut v = owned(x0()?)?;
            let last = x0()?.shape().last().copied().unwrap_or(1);
            kernels::softmax_last(&mut v, last);
            f32_out(node, v)
        }
        Op::Pool(p) => {
            let (xv, [n, h, w, c]) = to_nhwc(&ins[0], p.layout)?;
            let ([oh, ow], pad) = geometry(&p.padding, [h, w], p.ksize, p.strides, [1, 1])?;
            let y =
                kernels::pool_nhwc(&xv, [n, h, w, c], p.kind, p.ksize, p.strides, pad, [oh, ow]);
            f32_out(node, from_nhwc(y, p.layout, [n, oh, ow, c]))
        }
        Op::Concat { axis } => {
            if ins.iter().any(|t| t.dtype() != DType::F32) {
                let parts = ins
                    .iter()
                    .map(|t| Ok((t.to_f64_vec()?, t.shape().to_vec())))
                    .collect::<Result<Vec<_>>>()?;
                let outer: usize = parts[0].1[..*axis].iter().product();
                let mut out = vec![];
                for o in 0..outer {
                    for (d, s) in &parts {
                        let inner: usize = s[*axis..].iter().product();
                        out.extend_from_slice(&d[o * inner..(o + 1) * inner]);
                    }
                }
                return Tensor::from_f64(ins[0].dtype(), out_shape(node), &out);
            }
            let data = ins.iter().map(|t| t.as_f32()).collect::<Result<Vec<_>>>()?;
            let parts: Vec<(&[f32], &[usize])> = data
                .iter()
                .zip(ins)
                .map(|(d, t)| (&d[..], t.shape()))
                .collect();
            f32_out(node, kernels::concat(&parts, *axis))
        }
        Op::Binary(b) => {
            let (a, c) = (ins[0].as_f32()?, ins[1].as_f32()?);
            f32_out(
                node,
                kernels::binary(*b, &a, ins[0].shape(), &c, ins[1].shape(), &out_shape(node)),
            )
        }
        Op::Reduce { reduce, axes, .. } => {
            let v = x0()?.as_f32()?;
            f32_out(node, kernels::reduce(&v, x0()?.shape(), axes, *reduce))
        }
        Op::MatMul {
            transpose_a,
            transpose_b,
        } => {
            let (a, b) = (ins[0].as_f32()?, ins[1].as_f32()?);
            let (sa, sb) = (ins[0].shape(), ins[1].shape());
            let (m, k) = if *transpose_a {
                (sa[1], sa[0])
            } else {
                (sa[0], sa[1])
            };
            let n = if *transpose_b { sb[0] } else { sb[1] };
            let mut y = kernels::matmul(&a, &b, m, k, n, *transpose_a, *transpose_b);
            if let Some(b) = ins.get(2) {
                kernels::bias_add(&mut y, &b.as_f32()?, 1);
            }
            f32_out(node, y)
        }
        Op::WeightedSum { coeffs } => {
            let mut acc = vec![0.0f32; numel(&out_shape(node))];
            let vals = ins.iter().map(|t| t.as_f32()).collect::<Result<Vec<_>>>()?;
            kernels::weighted_sum_into(
                &mut acc,
                vals.iter().map(|v| &v[..]).zip(coeffs.iter().copied()),
            );
            f32_out(node, acc)
        }
        Op::L2Normalize { axis, epsilon } => {
            let x = x0()?;
            let v = x.as_f32()?;
            let s = x.shape();
            let sq: Vec<f32> = v.iter().map(|a| a * a).collect();
            let sums = kernels::reduce(&sq, s, &[*axis], crate::ir::ReduceOp::Sum);
            let inner: usize = s[axis + 1..].iter().product();
            let len = s[*axis];
            let mut out = v.into_owned();
            for (i, o) in out.iter_mut().enumerate() {
                let outer = i / (inner * len).max(1);
                let r = sums[outer * inner + i % inner.max(1)];
                *o *= 1.0 / r.max(*epsilon).sqrt();
            }
            f32_out(node, out)
        }
        Op::Transpose { perm } => {
            let x = x0()?;
            f32_out(node, kernels::transpose(&x.as_f32()?, x.shape(), perm))
        }
        Op::PRelu => {
            let mut v = owned(&ins[0])?;
            let a = ins[1].as_f32()?;
            for row in v.chunks_mut(a.len().max(1)) {
                for (x, &al) in row.iter_mut().zip(a.iter()) {
                    if *x < 0.0 {
                        *x *= al;
                    }
                }
            }
            f32_out(node, v)
        }
        Op::Slice { begin, end } => {
            let v = x0()?.as_f32()?;
            f32_out(node, kernels::slice(&v, x0()?.shape(), begin, end))
        }
        Op::Pad { pads, value } => {
            let v = x0()?.as_f32()?;
            f32_out(node, kernels::pad(&v, x0()?.shape(), pads, *value))
        }
        Op::Tile { multiples } => {
            let v = x0()?.as_f32()?;
            f32_out(node, kernels::tile(&v, x0()?.shape(), multiples))
        }
        Op::Resize(r) => {
            let (v, s) = to_nhwc(x0()?, Layout::Nhwc)?;
            f32_out(node, kernels::resize_nhwc(&v, s, r))
        }
        Op::SpaceDepth(sd) => {
            let (v, s) = to_nhwc(x0()?, Layout::Nhwc)?;
            f32_out(node, kernels::space_depth_nhwc(&v, s, sd))
        }
    }
}

/// Evaluate one single-output node on given inputs (constant folding).
pub fn eval_single(node: &Node, inputs: &[Tensor]) -> Result<Tensor> {
    eval_op(node, inputs, &HashMap::new())
}
