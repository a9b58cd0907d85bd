//! Inputs, constants, and shape manipulation. Shape, StridedSlice, Pack and
//! Cast must fold to constants: faceall's IR has static shapes.

use super::axis;
use crate::error::Result;
use crate::frontend::tf::{attrs, tensor, NodeCtx};
use crate::ir::{numel, DType, Fact, Op, Tensor, Wire};

pub fn placeholder(n: &mut NodeCtx) -> Result<Vec<Wire>> {
    let dt = attrs::opt_type(n.node, "dtype")?.ok_or_else(|| n.err("missing attribute 'dtype'"))?;
    let dtype =
        tensor::dtype(dt).ok_or_else(|| n.err(format!("input dtype {dt:?} is not supported")))?;
    let given = n.ctx.opts.input_shapes.get(&n.node.name).cloned();
    let declared = attrs::opt_shape(n.node, "shape")?.and_then(tensor::shape_dims);
    let shape = match (given, declared) {
        (Some(s), Some(d)) => {
            let fits =
                s.len() == d.len() && s.iter().zip(&d).all(|(a, b)| b.is_none_or(|b| b == *a));
            if !fits {
                return Err(n.err(format!(
                    "--input-shape {s:?} does not fit the declared shape {d:?}"
                )));
            }
            s
        }
        (Some(s), None) => s,
        (None, Some(d)) => d
            .iter()
            .copied()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                n.err(format!(
                    "input shape {} is not fully known; give it with --input-shape {}=D0,D1,...",
                    fmt_dims(&d),
                    n.node.name
                ))
            })?,
        (None, None) => {
            return Err(n.err(format!(
                "input shape is unknown; give it with --input-shape {}=D0,D1,...",
                n.node.name
            )))
        }
    };
    let id = n.ctx.graph.nodes.len();
    n.ctx.graph.nodes.push(crate::ir::Node::new(
        n.node.name.clone(),
        n.node.op.clone(),
        Op::Input,
        vec![],
        vec![Fact { dtype, shape }],
    ));
    Ok(vec![Wire { node: id, slot: 0 }])
}

fn fmt_dims(d: &[Option<usize>]) -> String {
    let v: Vec<String> = d
        .iter()
        .map(|x| x.map(|v| v.to_string()).unwrap_or_else(|| "?".into()))
        .collect();
    format!("[{}]", v.join(", "))
}

pub fn constant(n: &mut NodeCtx) -> Result<Vec<Wire>> {
    let proto = attrs::tensor(n.node, "value")?;
    let t = tensor::decode(proto).map_err(|e| n.err(e.to_string()))?;
    if let Some(dt) = attrs::opt_type(n.node, "dtype")? {
        if tensor::dtype(dt) != Some(t.dtype()) {
            return Err(n.err(format!(
                "attribute dtype {dt:?} disagrees with the value's dtype"
            )));
        }
    }
    n.push_const(t)
}

pub fn concat(n: &mut NodeCtx) -> Result<Vec<Wire>> {
    if n.inputs.len() < 2 {
        return Err(n.err("needs at least one value and an axis"));
    }
    let (axis_i, data): (usize, Vec<Wire>) = if n.node.op == "Concat" {
        (0, n.inputs[1..].to_vec())
    } else {
        (n.inputs.len() - 1, n.inputs[..n.inputs.len() - 1].to_vec())
    };
    let a = n.required_const(axis_i, "axis")?.to_i64_vec()?;
    let &[a] = a.as_slice() else {
        return Err(n.err("axis must be a scalar"));
    };
    let rank = n.ctx.graph.fact(data[0])?.shape.len();
    let axis = axis(n, a, rank)?;
    // Integer constants (shapes being built, as tf.repeat does) join now.
    let consts: Option<Vec<&Tensor>> = data
        .iter()
        .map(|w| match n.ctx.graph.nodes.get(w.node).map(|d| &d.op) {
            Some(Op::Const(t)) if w.slot == 0 && t.dtype() != DType::F32 => Some(t),
            _ => None,
        })
        .collect();
    if let Some(ts) = consts {
        if rank == 1 && ts.iter().all(|t| t.dtype() == ts[0].dtype()) {
            let mut v = vec![];
            for t in &ts {
                v.extend(t.to_f64_vec()?);
            }
            let t = Tensor::from_f64(ts[0].dtype(), vec![v.len()], &v)?;
            return n.push_const(t);
        }
    }
    n.push(Op::Concat { axis }, data)
}

pub fn reshape(n: &mut NodeCtx) -> Result<Vec<Wire>> {
    n.expect_inputs(2)?;
    let want = n.required_const(1, "shape")?.to_i64_vec()?;
    let total = numel(&n.fact(0)?.shape);
    let known: i64 = want.iter().filter(|&&d| d >= 0).product();
    let unknown = want.iter().filter(|&&d| d == -1).count();
    if unknown > 1 || want.iter().any(|&d| d < -1) {
        return Err(n.err(format!("invalid target shape {want:?}")));
    }
    let shape = want
        .iter()
        .map(|&d| {
            if d == -1 {
                if known == 0 || total as i64 % known != 0 {
                    Err(n.err(format!(
                        "cannot reshape {:?} to {want:?}",
                        n.fact(0).map(|f| f.shape.clone()).unwrap_or_default()
                    )))
                } else {
                    Ok(total / known as usize)
                }
            } else {
                Ok(d as usize)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    if let Some(t) = n.const_input(0)? {
        if t.dtype() != DType::F32 {
            let t = t.reshaped(shape)?;
            return n.push_const(t);
        }
    }
    let x = n.input(0)?;
    n.push(Op::Reshape { shape }, vec![x])
}

pub fn squeeze(n: &mut NodeCtx) -> Result<Vec<Wire>> {
    n.expect_inputs(1)?;
    let shape = n.fact(0)?.shape.clone();
    let dims = attrs::opt_ints(n.node, "squeeze_dims")?
        .or(attrs::opt_ints(n.node, "axis")?)
        .unwrap_or_default();
    let mut axes = if dims.is_empty() {
        (0..shape.len()).filter(|&i| shape[i] == 1).collect()
    } else {
        dims.iter()
            .map(|&a| axis(n, a, shape.len()))
            .collect::<Result<Vec<_>>>()?
    };
    axes.sort_unstable();
    axes.dedup();
    let x = n.input(0)?;
    n.push(Op::Squeeze { axes }, vec![x])
}

pub fn transpose(n: &mut NodeCtx) -> Result<Vec<Wire>> {
    n.expect_inputs(2)?;
    let rank = n.fact(0)?.shape.len();
    let raw = n.required_const(1, "perm")?.to_i64_vec()?;
    let perm = raw
        .iter()
        .map(|&a| axis(n, a, rank))
        .collect::<Result<Vec<_>>>()?;
    let x = n.input(0)?;
    n.push(Op::Transpose { perm }, vec![x])
}

pub fn expand_dims(n: &mut NodeCtx) -> Result<Vec<Wire>> {
    n.expect_inputs(2)?;
    let a = n.required_const(1, "dim")?.to_i64_vec()?;
    let &[a] = a.as_slice() else {
        return Err(n.err("dim must be a scalar"));
    };
    let rank = n.fact(0)?.shape.len();
    let axis = axis(n, a, rank + 1)?;
    let x = n.input(0)?;
    n.push(Op::ExpandDims { axis }, vec![x])
}

/// A Pad's constant `[rank, 2]` paddings, non-negative.
fn paddings(n: &NodeCtx) -> Result<Vec<[usize; 2]>> {
    let rank = n.fact(0)?.shape.len();
    let p = n.required_const(1, "paddings")?;
    if p.shape() != [rank, 2] {
        return Err(n.err(format!(
            "paddings of shape {:?} for a rank-{rank} input",
            p.shape()
        )));
    }
    let v = p.to_i64_vec()?;
    if v.iter().any(|&x| x < 0) {
        return Err(n.err("negative paddings are not supported"));
    }
    Ok(v.chunks_exact(2)
        .map(|c| [c[0] as usize, c[1] as usize])
        .collect())
}

pub fn pad(n: &mut NodeCtx) -> Result<Vec<Wire>> {
    let pads = paddings(n)?;
    let value = if n.node.op == "PadV2" {
        n.expect_inputs(3)?;
        let c = n.required_const(2, "constant_values")?.as_f32()?;
        *c.first().ok_or_else(|| n.err("empty constant_values"))?
    } else {
        n.expect_inputs(2)?;
        0.0
    };
    let x = n.input(0)?;
    n.push(Op::Pad { pads, value }, vec![x])
}

pub fn shape(n: &mut NodeCtx) -> Result<Vec<Wire>> {
    n.expect_inputs(1)?;
    let s: Vec<i64> = n.fact(0)?.shape.iter().map(|&d| d as i64).collect();
    let len = s.len();
    let t = match attrs::opt_type(n.node, "out_type")?.and_then(tensor::dtype) {
        Some(DType::I64) => Tensor::i64(vec![len], s)?,
        _ => Tensor::i32(vec![len], s.iter().map(|&d| d as i32).collect())?,
    };
    n.push_const(t)
}

pub fn cast(n: &mut NodeCtx) -> Result<Vec<Wire>> {
    n.expect_inputs(1)?;
    let dt = attrs::opt_type(n.node, "DstT")?.ok_or_else(|| n.err("missing attribute 'DstT'"))?;
    let to = tensor::dtype(dt).ok_or_else(|| n.err(format!("cast to {dt:?} is not supported")))?;
    if n.fact(0)?.dtype == to {
        // A constant stays one (shape arithmetic reads it at import).
        if let Some(t) = n.const_input(0)? {
            let t = t.clone();
            return n.push_const(t);
        }
        let x = n.input(0)?;
        return n.push(Op::Identity, vec![x]);
    }
    let t = n
        .const_input(0)?
        .ok_or_else(|| n.err("Cast of a non-constant value is not supported"))?;
    let v = t.to_f64_vec()?;
    let t = Tensor::from_f64(to, t.shape().to_vec(), &v)?;
    n.push_const(t)
}

pub fn pack(n: &mut NodeCtx) -> Result<Vec<Wire>> {
    if n.inputs.is_empty() {
        return Err(n.err("Pack without inputs"));
    }
    let mut parts = vec![];
    for i in 0..n.inputs.len() {
        parts.push(n.required_const(i, "every packed value")?.clone());
    }
    let shape0 = parts[0].shape().to_vec();
    if parts
        .iter()
        .any(|p| p.shape() != shape0 || p.dtype() != parts[0].dtype())
    {
        return Err(n.err("packed values differ in shape or dtype"));
    }
    let a = attrs::opt_i(n.node, "axis")?.unwrap_or(0);
    let axis = axis(n, a, shape0.len() + 1)?;
    let outer: usize = shape0[..axis].iter().product();
    let inner: usize = shape0[axis..].iter().product();
    let vals = parts
        .iter()
        .map(|p| p.to_f64_vec())
        .collect::<Result<Vec<_>>>()?;
    let mut out = Vec::with_capacity(outer * inner * parts.len());
    for o in 0..outer {
        for v in &vals {
            out.extend_from_slice(&v[o * inner..(o + 1) * inner]);
        }
    }
    let mut shape = shape0;
    shape.insert(axis, parts.len());
    let t = Tensor::from_f64(parts[0].dtype(), shape, &out)?;
    n.push_const(t)
}

/// What a StridedSlice asks for: its constant bounds and masks.
struct SliceArgs {
    begin: Vec<i64>,
    end: Vec<i64>,
    strides: Vec<i64>,
    begin_mask: i64,
    end_mask: i64,
    shrink_mask: i64,
}

/// The bounds and masks of a StridedSlice; ellipsis and new axes are refused.
fn slice_args(n: &NodeCtx) -> Result<SliceArgs> {
    let mask = |name: &str| -> Result<i64> { Ok(attrs::opt_i(n.node, name)?.unwrap_or(0)) };
    if mask("ellipsis_mask")? != 0 || mask("new_axis_mask")? != 0 {
        return Err(n.err("ellipsis_mask and new_axis_mask are not supported"));
    }
    Ok(SliceArgs {
        begin: n.required_const(1, "begin")?.to_i64_vec()?,
        end: n.required_const(2, "end")?.to_i64_vec()?,
        strides: n.required_const(3, "strides")?.to_i64_vec()?,
        begin_mask: mask("begin_mask")?,
        end_mask: mask("end_mask")?,
        shrink_mask: mask("shrink_axis_mask")?,
    })
}

/// StridedSlice of an activation with unit strides (Keras Cropping2D,
/// `x[:, 1:, 1:, :]`): one Slice, then a Squeeze for shrunk axes.
fn strided_slice_value(n: &mut NodeCtx) -> Result<Vec<Wire>> {
    let shape = n.fact(0)?.shape.clone();
    let rank = shape.len();
    let SliceArgs {
        begin,
        end,
        strides,
        begin_mask: bm,
        end_mask: em,
        shrink_mask: sm,
    } = slice_args(n)?;
    // Axes past the given entries are taken whole (`x[:, 1]` of a 4-D x).
    let given = begin.len();
    if given > rank || end.len() != given || strides.len() != given {
        return Err(n.err(format!(
            "begin, end and strides need the same number of entries, at most one per axis of the rank-{rank} input"
        )));
    }
    if let Some(s) = strides.iter().find(|&&s| s != 1) {
        return Err(n.err(format!(
            "a stride of {s} over an activation has no IR form (faceall slices with step 1)"
        )));
    }
    let (mut b, mut e, mut shrink) = (vec![], vec![], vec![]);
    for (i, &d) in shape.iter().enumerate() {
        if i >= given {
            b.push(0);
            e.push(d);
            continue;
        }
        let len = d as i64;
        let norm = |v: i64| if v < 0 { v + len } else { v };
        let bit = 1i64 << i;
        if sm & bit != 0 {
            let at = norm(begin[i]);
            if !(0..len).contains(&at) {
                return Err(n.err(format!(
                    "index {} out of range for axis {i} of {d}",
                    begin[i]
                )));
            }
            b.push(at as usize);
            e.push(at as usize + 1);
            shrink.push(i);
            continue;
        }
        let lo = if bm & bit != 0 {
            0
        } else {
            norm(begin[i]).clamp(0, len)
        };
        let hi = if em & bit != 0 {
            len
        } else {
            norm(end[i]).clamp(0, len)
        };
        b.push(lo as usize);
        e.push(hi.max(lo) as usize);
    }
    let x = n.input(0)?;
    if shrink.is_empty() {
        return n.push(Op::Slice { begin: b, end: e }, vec![x]);
    }
    let name = format!("{}/slice", n.node.name);
    let s = n
        .ctx
        .graph
        .push(&name, &n.node.op, Op::Slice { begin: b, end: e }, vec![x])?;
    if let Some(node) = n.ctx.graph.nodes.get_mut(s) {
        node.own_changed = true;
    }
    n.push(
        Op::Squeeze { axes: shrink },
        vec![Wire { node: s, slot: 0 }],
    )
}

/// TF `Slice(x, begin, size)` of an activation (size -1: to the end).
pub fn slice(n: &mut NodeCtx) -> Result<Vec<Wire>> {
    n.expect_inputs(3)?;
    let shape = n.fact(0)?.shape.clone();
    let begin = n.required_const(1, "begin")?.to_i64_vec()?;
    let size = n.required_const(2, "size")?.to_i64_vec()?;
    if begin.len() != shape.len() || size.len() != shape.len() {
        return Err(n.err("begin and size need one entry per axis"));
    }
    let (mut b, mut e) = (vec![], vec![]);
    for ((&d, &at), &sz) in shape.iter().zip(&begin).zip(&size) {
        let stop = if sz < 0 { d as i64 } else { at + sz };
        if at < 0 || stop < at || stop > d as i64 {
            return Err(n.err(format!(
                "begin {begin:?} size {size:?} do not fit {shape:?}"
            )));
        }
        b.push(at as usize);
        e.push(stop as usize);
    }
    let x = n.input(0)?;
    n.push(Op::Slice { begin: b, end: e }, vec![x])
}

/// Split: `num_split` equal parts of input 1 along the constant axis of
/// input 0, one IR [`Op::Slice`] each (see [`parts`]).
pub fn split(n: &mut NodeCtx) -> Result<Vec<Wire>> {
    n.expect_inputs(2)?;
    let rank = n.fact(1)?.shape.len();
    let ax = const_axis(n, 0, rank)?;
    let dim = n.fact(1)?.shape.get(ax).copied().unwrap_or(0);
    let num = num_split(n)?;
    if dim % num != 0 {
        return Err(n.err(format!(
            "{num} equal parts of an axis of {dim} (num_split must divide it)"
        )));
    }
    parts(n, 1, ax, &vec![dim / num; num])
}

/// SplitV: parts of input 0 of the sizes in constant input 1 (one of them
/// may be -1: the rest of the axis) along the constant axis of input 2.
pub fn split_v(n: &mut NodeCtx) -> Result<Vec<Wire>> {
    n.expect_inputs(3)?;
    let rank = n.fact(0)?.shape.len();
    let ax = const_axis(n, 2, rank)?;
    let dim = n.fact(0)?.shape.get(ax).copied().unwrap_or(0);
    let raw = n.required_const(1, "size_splits")?.to_i64_vec()?;
    if raw.len() != num_split(n)? {
        return Err(n.err(format!("size_splits {raw:?} has not num_split entries")));
    }
    // Checked: the sizes come from the file.
    let known = raw
        .iter()
        .filter(|&&v| v >= 0)
        .try_fold(0i64, |a, &v| a.checked_add(v));
    let unknown = raw.iter().filter(|&&v| v < 0).count();
    let fill = known.map(|k| dim as i64 - k);
    let fits = match (unknown, fill) {
        (0, Some(f)) => f == 0,
        (1, Some(f)) => f >= 0 && raw.iter().all(|&v| v >= -1),
        _ => false,
    };
    let fill = fill.unwrap_or(0);
    if !fits {
        return Err(n.err(format!(
            "size_splits {raw:?} do not add up to the axis of {dim}"
        )));
    }
    let sizes: Vec<usize> = raw
        .iter()
        .map(|&v| if v < 0 { fill as usize } else { v as usize })
        .collect();
    parts(n, 0, ax, &sizes)
}

/// The `num_split` attribute: at least 1.
fn num_split(n: &NodeCtx) -> Result<usize> {
    match attrs::opt_i(n.node, "num_split")? {
        Some(v) if v >= 1 => Ok(v as usize),
        v => Err(n.err(format!("num_split {v:?} (want at least 1)"))),
    }
}

/// The scalar constant axis of input `i`, for a value of rank `rank`.
fn const_axis(n: &NodeCtx, i: usize, rank: usize) -> Result<usize> {
    let a = n.required_const(i, "axis")?.to_i64_vec()?;
    let &[a] = a.as_slice() else {
        return Err(n.err(format!("axis {a:?} is not a scalar")));
    };
    axis(n, a, rank)
}

/// Input `input` cut along axis `ax` into consecutive parts of `sizes`:
/// one IR Slice per part. Part 0 is named as the TF node; part k is
/// `NODE/output_k` (a name with `:` would read as an output slot, and
/// `NODE_k` is what TF names the node's next namesake).
fn parts(n: &mut NodeCtx, input: usize, ax: usize, sizes: &[usize]) -> Result<Vec<Wire>> {
    let shape = n.fact(input)?.shape.clone();
    let x = n.input(input)?;
    let mut out = Vec::with_capacity(sizes.len());
    let mut at = 0;
    for (k, &size) in sizes.iter().enumerate() {
        let (mut begin, mut end) = (vec![0; shape.len()], shape.clone());
        if let (Some(b), Some(e)) = (begin.get_mut(ax), end.get_mut(ax)) {
            (*b, *e) = (at, at + size);
        }
        at += size;
        let name = match k {
            0 => n.node.name.clone(),
            _ => format!("{}/output_{k}", n.node.name),
        };
        let id = n
            .ctx
            .graph
            .push(name, &n.node.op, Op::Slice { begin, end }, vec![x])?;
        out.push(Wire { node: id, slot: 0 });
    }
    Ok(out)
}

/// StridedSlice of a constant (typically `tf.shape(x)[0]`), or of an
/// activation with unit strides.
pub fn strided_slice(n: &mut NodeCtx) -> Result<Vec<Wire>> {
    n.expect_inputs(4)?;
    let Some(x) = n.const_input(0)?.cloned() else {
        return strided_slice_value(n);
    };
    if x.shape().len() != 1 {
        return Err(n.err("StridedSlice is supported on 1-D constants only"));
    }
    let SliceArgs {
        begin,
        end,
        strides,
        begin_mask: bm,
        end_mask: em,
        shrink_mask: sm,
    } = slice_args(n)?;
    let (&[b], &[e], &[s]) = (begin.as_slice(), end.as_slice(), strides.as_slice()) else {
        return Err(n.err("begin, end and strides must have one entry for a 1-D input"));
    };
    if s == 0 {
        return Err(n.err("stride 0"));
    }
    let len = x.len() as i64;
    let norm = |i: i64| if i < 0 { i + len } else { i };
    let vals = x.to_f64_vec()?;
    let out: Vec<f64> = if sm & 1 != 0 {
        let i = norm(b);
        if i < 0 || i >= len {
            return Err(n.err(format!("index {b} out of range for {len} elements")));
        }
        vec![vals[i as usize]]
    } else {
        let (mut i, stop) = if s > 0 {
            (
                if bm & 1 != 0 {
                    0
                } else {
                    norm(b).clamp(0, len)
                },
                if em & 1 != 0 {
                    len
                } else {
                    norm(e).clamp(0, len)
                },
            )
        } else {
            (
                if bm & 1 != 0 {
                    len - 1
                } else {
                    norm(b).clamp(-1, len - 1)
                },
                if em & 1 != 0 {
                    -1
                } else {
                    norm(e).clamp(-1, len - 1)
                },
            )
        };
        let mut v = vec![];
        while (s > 0 && i < stop) || (s < 0 && i > stop) {
            v.push(vals[i as usize]);
            i += s;
        }
        v
    };
    let shape = if sm & 1 != 0 { vec![] } else { vec![out.len()] };
    let t = Tensor::from_f64(x.dtype(), shape, &out)?;
    n.push_const(t)
}

/// MirrorPad (REFLECT, or SYMMETRIC which repeats the edge row): on each
/// padded axis, the mirrored rows as one-row Slices concatenated around the
/// value. Copies only, so exact wherever Slice and Concat on that axis are
/// (Caffe, ONNX, the bundle, ML Programs; Core ML NeuralNetwork
/// concatenates channels only and refuses it by name).
pub fn mirror_pad(n: &mut NodeCtx) -> Result<Vec<Wire>> {
    n.expect_inputs(2)?;
    let mut shape = n.fact(0)?.shape.clone();
    let pads = paddings(n)?;
    let reflect = match attrs::s(n.node, "mode")?.as_str() {
        "REFLECT" => true,
        "SYMMETRIC" => false,
        other => return Err(n.err(format!("mode '{other}' (REFLECT or SYMMETRIC)"))),
    };
    let padded: Vec<(usize, usize, usize)> = pads
        .iter()
        .enumerate()
        .filter(|(_, c)| c[0] > 0 || c[1] > 0)
        .map(|(ax, c)| (ax, c[0], c[1]))
        .collect();
    let mut x = n.input(0)?;
    if padded.is_empty() {
        return n.push(Op::Identity, vec![x]);
    }
    let name = n.node.name.clone();
    let op = n.node.op.clone();
    for (k, &(ax, before, after)) in padded.iter().enumerate() {
        let dim = shape[ax];
        // TF's bounds: REFLECT mirrors about the edge row, SYMMETRIC
        // repeats it.
        let most = if reflect { dim.saturating_sub(1) } else { dim };
        if before > most || after > most {
            return Err(n.err(format!(
                "{} padding of {before}/{after} on an axis of {dim} (at most {most})",
                if reflect { "REFLECT" } else { "SYMMETRIC" }
            )));
        }
        // The source row of each row of the result; None is the value itself.
        let rows: Vec<Option<usize>> = (0..before)
            .map(|j| Some(if reflect { before - j } else { before - 1 - j }))
            .chain(std::iter::once(None))
            .chain((0..after).map(|j| Some(if reflect { dim - 2 - j } else { dim - 1 - j })))
            .collect();
        let mut parts = Vec::with_capacity(rows.len());
        for (i, &r) in rows.iter().enumerate() {
            parts.push(match r {
                None => x,
                Some(r) => row_slice(n, format!("{name}/axis{ax}/row{i}"), x, &shape, ax, r)?,
            });
        }
        let cat = if k + 1 == padded.len() {
            name.clone()
        } else {
            format!("{name}/axis{ax}")
        };
        let id = n.ctx.graph.push(cat, &op, Op::Concat { axis: ax }, parts)?;
        x = Wire { node: id, slot: 0 };
        shape[ax] += before + after;
    }
    Ok(vec![x])
}

/// Unpack (tf.unstack) of an activation: one Slice per index of the axis,
/// the axis squeezed; output k is `NODE/output_k` (output 0 the node's name),
/// as Split's parts.
pub fn unpack(n: &mut NodeCtx) -> Result<Vec<Wire>> {
    n.expect_inputs(1)?;
    let shape = n.fact(0)?.shape.clone();
    let a = attrs::opt_i(n.node, "axis")?.unwrap_or(0);
    let ax = axis(n, a, shape.len())?;
    let count = shape[ax];
    if let Some(num) = attrs::opt_i(n.node, "num")? {
        if num != count as i64 {
            return Err(n.err(format!("num {num} for an axis of {count}")));
        }
    }
    let x = n.input(0)?;
    let name = n.node.name.clone();
    let op = n.node.op.clone();
    let mut out = Vec::with_capacity(count);
    for k in 0..count {
        let part = match k {
            0 => name.clone(),
            _ => format!("{name}/output_{k}"),
        };
        let s = row_slice(n, format!("{part}/slice"), x, &shape, ax, k)?;
        let id = n
            .ctx
            .graph
            .push(part, &op, Op::Squeeze { axes: vec![ax] }, vec![s])?;
        out.push(Wire { node: id, slot: 0 });
    }
    Ok(out)
}

/// Index `r` of axis `ax` of `x` (of `shape`), the axis kept: a Slice node
/// called `name`, under the converted node's TF op.
fn row_slice(
    n: &mut NodeCtx,
    name: String,
    x: Wire,
    shape: &[usize],
    ax: usize,
    r: usize,
) -> Result<Wire> {
    let (mut begin, mut end) = (vec![0; shape.len()], shape.to_vec());
    begin[ax] = r;
    end[ax] = r + 1;
    let op = n.node.op.clone();
    let id = n
        .ctx
        .graph
        .push(name, &op, Op::Slice { begin, end }, vec![x])?;
    Ok(Wire { node: id, slot: 0 })
}

/// Tile (x, multiples): of a float value; constant multiples.
pub fn tile(n: &mut NodeCtx) -> Result<Vec<Wire>> {
    n.expect_inputs(2)?;
    if n.fact(0)?.dtype != DType::F32 {
        return Err(n.err("only float32 values are tiled"));
    }
    let m = n.required_const(1, "multiples")?.to_i64_vec()?;
    let multiples = m
        .iter()
        .map(|&v| usize::try_from(v).ok().filter(|&v| v > 0))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| n.err(format!("multiples {m:?} must be positive")))?;
    let x = n.input(0)?;
    n.push(Op::Tile { multiples }, vec![x])
}
