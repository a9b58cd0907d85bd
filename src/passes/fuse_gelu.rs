//! GELU written out in elementary ops becomes one `Activation::Gelu`, so
//! each format can use its own GELU (Core ML's gelu layer, MIL's gelu) or
//! the exact erf form (ONNX), whatever order the source wrote it in:
//!
//! - TF / Keras `gelu(x)`: `0.5 * x * erfc(-x * (1 / sqrt 2))`;
//! - the erf form (PyTorch, BERT): `x * 0.5 * (1 + erf(x / sqrt 2))`;
//! - the tanh form: `0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))`,
//!   the cube as `Pow(x, 3)`, `x * x * x` or `x * square(x)`.
//!
//! Products are matched as multisets of factors through single-use `Mul`,
//! `Neg`, division by a constant, `Square` and integer `Pow`, so the
//! placement of `0.5` and of the negation does not matter. Constants must
//! equal the GELU's to 1e-6 relative; anything else is left alone.

use super::Rewrite;
use crate::error::Result;
use crate::ir::op::{FRAC_1_SQRT_2, GELU_CUBIC, SQRT_2_OVER_PI};
use crate::ir::{Activation, BinaryOp, Graph, Op, UnaryOp, Wire};

/// A product `scale * factors[0] * factors[1] * ...`.
struct Product {
    scale: f64,
    factors: Vec<Wire>,
}

/// The one value of a constant scalar (any shape of one element).
fn scalar(g: &Graph, w: Wire) -> Option<f64> {
    let t = g.const_of(w)?;
    if t.len() != 1 {
        return None;
    }
    t.as_f32().ok()?.first().map(|v| *v as f64)
}

/// `w` as a product. The node producing `w` is looked into when `w` is
/// the root or is read only once (so it disappears with the rewrite).
fn product(g: &Graph, w: Wire, root: bool) -> Product {
    let mut p = Product {
        scale: 1.0,
        factors: vec![],
    };
    collect(g, w, root, 1, &mut p, 0);
    p
}

fn collect(g: &Graph, w: Wire, open: bool, times: u32, p: &mut Product, depth: usize) {
    if let Some(c) = scalar(g, w) {
        p.scale *= c.powi(times as i32);
        return;
    }
    let n = &g.nodes[w.node];
    let leaf = |p: &mut Product| p.factors.extend(std::iter::repeat_n(w, times as usize));
    if depth > 8 || w.slot != 0 || !(open || g.single_use(w)) {
        return leaf(p);
    }
    match &n.op {
        Op::Binary(BinaryOp::Mul) if n.inputs.len() == 2 => {
            for &i in &n.inputs {
                collect(g, i, false, times, p, depth + 1);
            }
        }
        Op::Binary(BinaryOp::Div) if n.inputs.len() == 2 => match scalar(g, n.inputs[1]) {
            Some(c) if c != 0.0 => {
                p.scale /= c.powi(times as i32);
                collect(g, n.inputs[0], false, times, p, depth + 1);
            }
            _ => leaf(p),
        },
        Op::Unary(UnaryOp::Neg) => {
            if times % 2 == 1 {
                p.scale = -p.scale;
            }
            collect(g, n.inputs[0], false, times, p, depth + 1);
        }
        Op::Unary(UnaryOp::Square) => collect(g, n.inputs[0], false, times * 2, p, depth + 1),
        Op::Unary(UnaryOp::Pow { exponent })
            if *exponent >= 1.0 && *exponent <= 4.0 && exponent.fract() == 0.0 =>
        {
            collect(
                g,
                n.inputs[0],
                false,
                times * *exponent as u32,
                p,
                depth + 1,
            )
        }
        _ => leaf(p),
    }
}

fn near(v: f64, want: f32) -> bool {
    (v - want as f64).abs() <= 1e-6 * (want as f64).abs()
}

/// `w` is `scale * x` (one factor, x) with the given scale.
fn scaled_x(g: &Graph, w: Wire, x: Wire, scale: f32) -> bool {
    let p = product(g, w, false);
    p.factors == [x] && near(p.scale, scale)
}

/// The producer of `w` when it is `op` and read only here.
fn only(g: &Graph, w: Wire, f: impl Fn(&Op) -> bool) -> Option<&crate::ir::Node> {
    let n = &g.nodes[w.node];
    (w.slot == 0 && f(&n.op) && g.single_use(w)).then_some(n)
}

/// `1 + y` (either order): y.
fn one_plus(g: &Graph, w: Wire) -> Option<Wire> {
    let add = only(g, w, |o| matches!(o, Op::Binary(BinaryOp::Add)))?;
    match (scalar(g, add.inputs[0]), scalar(g, add.inputs[1])) {
        (Some(1.0), None) => Some(add.inputs[1]),
        (None, Some(1.0)) => Some(add.inputs[0]),
        _ => None,
    }
}

/// Whether `phi` is the factor of GELU that multiplies `x` (up to the
/// constant 0.5 found elsewhere in the product): `Some(approximate)`.
fn phi(g: &Graph, phi: Wire, x: Wire) -> Option<bool> {
    // erfc(-x / sqrt 2)
    if let Some(erfc) = only(g, phi, |o| matches!(o, Op::Unary(UnaryOp::Erfc))) {
        return scaled_x(g, erfc.inputs[0], x, -FRAC_1_SQRT_2).then_some(false);
    }
    let inner = one_plus(g, phi)?;
    // 1 + erf(x / sqrt 2)
    if let Some(erf) = only(g, inner, |o| matches!(o, Op::Unary(UnaryOp::Erf))) {
        return scaled_x(g, erf.inputs[0], x, FRAC_1_SQRT_2).then_some(false);
    }
    // 1 + tanh(k * (x + c * x^3))
    let tanh = only(g, inner, |o| matches!(o, Op::Activation(Activation::Tanh)))?;
    let arg = product(g, tanh.inputs[0], false);
    let [sum] = arg.factors[..] else {
        return None;
    };
    if !near(arg.scale, SQRT_2_OVER_PI) {
        return None;
    }
    // x + c * x^3, as an Add or as the WeightedSum fuse_residual makes of it.
    let add = only(g, sum, |o| {
        matches!(o, Op::Binary(BinaryOp::Add) | Op::WeightedSum { .. })
    })?;
    let coeffs = match &add.op {
        Op::WeightedSum { coeffs } => coeffs.clone(),
        _ => vec![1.0; add.inputs.len()],
    };
    if add.inputs.len() != 2 || coeffs.len() != 2 {
        return None;
    }
    for (a, b) in [(0, 1), (1, 0)] {
        if add.inputs[a] != x || coeffs[a] != 1.0 {
            continue;
        }
        let cube = product(g, add.inputs[b], false);
        if cube.factors == [x, x, x] && near(cube.scale * coeffs[b] as f64, GELU_CUBIC) {
            return Some(true);
        }
    }
    None
}

/// (x, approximate) if node `i` computes GELU of x.
fn matches(g: &Graph, i: usize) -> Option<(Wire, bool)> {
    let n = &g.nodes[i];
    if !matches!(n.op, Op::Binary(BinaryOp::Mul)) || n.outputs.len() != 1 {
        return None;
    }
    let p = product(g, Wire { node: i, slot: 0 }, true);
    let [a, b] = p.factors[..] else {
        return None;
    };
    if !near(p.scale, 0.5) {
        return None;
    }
    for (x, f) in [(a, b), (b, a)] {
        if let Some(approximate) = phi(g, f, x) {
            if g.fact(x).ok()?.shape == n.outputs[0].shape {
                return Some((x, approximate));
            }
        }
    }
    None
}

pub fn run(g: &mut Graph, log: &mut Vec<Rewrite>) -> Result<usize> {
    let mut changed = 0;
    for i in 0..g.nodes.len() {
        let Some((x, approximate)) = matches(g, i) else {
            continue;
        };
        let n = &mut g.nodes[i];
        n.op = Op::Activation(Activation::Gelu { approximate });
        n.inputs = vec![x];
        log.push(Rewrite {
            pass: "fuse_gelu",
            node: n.name.clone(),
            detail: if approximate {
                "x * 0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))) -> Gelu (tanh)"
            } else {
                "x * 0.5 * erfc(-x / sqrt 2) -> Gelu (exact)"
            }
            .into(),
        });
        changed += 1;
    }
    Ok(changed)
}
