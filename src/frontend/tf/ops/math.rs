//! Elementwise arithmetic, reductions and MatMul. Integer arithmetic on
//! constants (shape computations) folds at import.

use super::axis;
use crate::error::Result;
use crate::frontend::tf::{attrs, NodeCtx};
use crate::ir::{broadcast_shapes, BinaryOp, DType, Op, ReduceOp, Tensor, UnaryOp, Wire};

fn binary_op(op: &str) -> BinaryOp {
    match op {
        "Sub" => BinaryOp::Sub,
        "Mul" => BinaryOp::Mul,
        "RealDiv" => BinaryOp::Div,
        "Maximum" => BinaryOp::Max,
        "Minimum" => BinaryOp::Min,
        _ => BinaryOp::Add,
    }
}

pub fn apply_binary(op: BinaryOp, a: f64, b: f64) -> f64 {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Max => a.max(b),
        BinaryOp::Min => a.min(b),
    }
}

pub fn binary(n: &mut NodeCtx) -> Result<Vec<Wire>> {
    n.expect_inputs(2)?;
    let op = binary_op(&n.node.op);
    if n.fact(0)?.dtype != n.fact(1)?.dtype {
        return Err(n.err("inputs have different dtypes"));
    }
    if n.fact(0)?.dtype != DType::F32 {
        // Integer shape arithmetic: fold now, or give up.
        let (Some(a), Some(b)) = (n.const_input(0)?, n.const_input(1)?) else {
            return Err(n.err("integer arithmetic on non-constant values is not supported"));
        };
        let shape = broadcast_shapes(a.shape(), b.shape()).map_err(|m| n.err(m))?;
        if a.len() != b.len() && a.len() != 1 && b.len() != 1 {
            return Err(n.err("folding integer broadcasts beyond scalars is not supported"));
        }
        let (av, bv) = (a.to_f64_vec()?, b.to_f64_vec()?);
        let len = av.len().max(bv.len());
        let v: Vec<f64> = (0..len)
            .map(|i| {
                let x = av[if av.len() == 1 { 0 } else { i }];
                let y = bv[if bv.len() == 1 { 0 } else { i }];
                if op == BinaryOp::Div {
                    (x / y).trunc()
                } else {
                    apply_binary(op, x, y)
                }
            })
            .collect();
        let t = Tensor::from_f64(a.dtype(), shape, &v)?;
        return n.push_const(t);
    }
    let ins = n.inputs.clone();
    n.push(Op::Binary(op), ins)
}

/// SquaredDifference(x, y) = (x - y)^2, as TF computes it: a Sub that is
/// no TF tensor of its own (`NAME/difference`), then Square under the TF
/// name. (Keras' LayerNormalization and tf.nn.moments use it.)
pub fn squared_difference(n: &mut NodeCtx) -> Result<Vec<Wire>> {
    n.expect_inputs(2)?;
    if n.fact(0)?.dtype != DType::F32 || n.fact(1)?.dtype != DType::F32 {
        return Err(n.err("only float32 is supported"));
    }
    let ins = n.inputs.clone();
    let name = format!("{}/difference", n.node.name);
    let d = n
        .ctx
        .graph
        .push(&name, &n.node.op, Op::Binary(BinaryOp::Sub), ins)?;
    if let Some(node) = n.ctx.graph.nodes.get_mut(d) {
        node.own_changed = true;
    }
    n.push(Op::Unary(UnaryOp::Square), vec![Wire { node: d, slot: 0 }])
}

pub fn unary(n: &mut NodeCtx) -> Result<Vec<Wire>> {
    n.expect_inputs(1)?;
    if n.fact(0)?.dtype != DType::F32 {
        return Err(n.err("only float32 is supported"));
    }
    let op = match n.node.op.as_str() {
        "Square" => UnaryOp::Square,
        "Sqrt" => UnaryOp::Sqrt,
        "Neg" => UnaryOp::Neg,
        "Exp" => UnaryOp::Exp,
        "Log" => UnaryOp::Log,
        "Erf" => UnaryOp::Erf,
        "Erfc" => UnaryOp::Erfc,
        _ => UnaryOp::Rsqrt,
    };
    let ins = n.inputs.clone();
    n.push(Op::Unary(op), ins)
}

/// `Pow(x, e)` with `e` one constant (a scalar, or any shape of one
/// element that broadcasts away): `x^e` elementwise.
pub fn pow(n: &mut NodeCtx) -> Result<Vec<Wire>> {
    n.expect_inputs(2)?;
    if n.fact(0)?.dtype != DType::F32 {
        return Err(n.err("only float32 is supported"));
    }
    let e = n.required_const(1, "exponent")?;
    let rank_x = n.fact(0)?.shape.len();
    let exponent = match (e.as_f32()?.as_ref(), e.shape().len() <= rank_x) {
        ([v], true) => *v,
        _ => {
            return Err(n.err(format!(
                "an exponent of shape {:?} (faceall reads Pow with one constant exponent)",
                e.shape()
            )))
        }
    };
    let x = n.input(0)?;
    n.push(Op::Unary(UnaryOp::Pow { exponent }), vec![x])
}

pub fn reduce(n: &mut NodeCtx) -> Result<Vec<Wire>> {
    n.expect_inputs(2)?;
    let rank = n.fact(0)?.shape.len();
    let raw = n.required_const(1, "reduction_indices")?.to_i64_vec()?;
    let mut axes = raw
        .iter()
        .map(|&a| axis(n, a, rank))
        .collect::<Result<Vec<_>>>()?;
    axes.sort_unstable();
    axes.dedup();
    let keep_dims = attrs::opt_b(n.node, "keep_dims")?.unwrap_or(false);
    let reduce = if n.node.op == "Sum" {
        ReduceOp::Sum
    } else {
        ReduceOp::Mean
    };
    let x = n.input(0)?;
    n.push(
        Op::Reduce {
            reduce,
            axes,
            keep_dims,
        },
        vec![x],
    )
}

pub fn matmul(n: &mut NodeCtx) -> Result<Vec<Wire>> {
    n.expect_inputs(2)?;
    let transpose_a = attrs::opt_b(n.node, "transpose_a")?.unwrap_or(false);
    let transpose_b = attrs::opt_b(n.node, "transpose_b")?.unwrap_or(false);
    let ins = n.inputs.clone();
    n.push(
        Op::MatMul {
            transpose_a,
            transpose_b,
        },
        ins,
    )
}
