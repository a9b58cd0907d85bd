//! Identity and TF1 control flow (Switch/Merge).

use crate::error::Result;
use crate::frontend::tf::NodeCtx;
use crate::ir::{Op, Wire};

/// Identity, StopGradient, and PlaceholderWithDefault (read as its default:
/// faceall converts graphs for inference, so `phase_train` stays false).
pub fn identity(n: &mut NodeCtx) -> Result<Vec<Wire>> {
    n.expect_inputs(1)?;
    if let Some(t) = n.const_input(0)? {
        if t.dtype() != crate::ir::DType::F32 {
            let t = t.clone();
            return n.push_const(t);
        }
    }
    let x = n.input(0)?;
    n.push(Op::Identity, vec![x])
}

/// IdentityN (Keras' swish and custom gradients: `IdentityN(f(x), x)`):
/// output k is input k. The first is an Identity node under the TF name
/// (what users and the graph's readers name); the others are the inputs'
/// own wires.
pub fn identity_n(n: &mut NodeCtx) -> Result<Vec<Wire>> {
    if n.inputs.is_empty() {
        return Err(n.err("IdentityN without inputs"));
    }
    let ins = n.inputs.clone();
    let mut out = n.push(Op::Identity, vec![ins[0]])?;
    out.extend(ins.into_iter().skip(1));
    Ok(out)
}

pub fn switch(n: &mut NodeCtx) -> Result<Vec<Wire>> {
    n.expect_inputs(2)?;
    let ins = n.inputs.clone();
    n.push(Op::Switch, ins)
}

pub fn merge(n: &mut NodeCtx) -> Result<Vec<Wire>> {
    let ins = n.inputs.clone();
    if ins.is_empty() {
        return Err(n.err("Merge without inputs"));
    }
    n.push(Op::Merge, ins)
}
