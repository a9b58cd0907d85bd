//! Numerical agreement between tensors: named tolerances and a comparison
//! that reports the worst element, where it is, and how many are off.

pub mod html;
pub mod reference;
pub mod verify;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::ir::Tensor;

/// How close two float32 results must be. An element passes when
/// |a - e| <= abs + rel * scale, where `scale` is the largest |e| of the
/// whole tensor (at least 1): float32 reorderings err relative to the
/// magnitudes summed, not to each small element.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Tolerance {
    pub name: &'static str,
    pub abs: f32,
    pub rel: f32,
}

impl Tolerance {
    /// Bit-for-bit up to float32 reordering of a few terms.
    pub const EXACT: Tolerance = Tolerance {
        name: "exact",
        abs: 1e-6,
        rel: 1e-6,
    };
    /// Different summation order over long dot products (the default).
    pub const CLOSE: Tolerance = Tolerance {
        name: "close",
        abs: 1e-5,
        rel: 1e-5,
    };
    /// Reduced precision such as float16 weights.
    pub const APPROXIMATE: Tolerance = Tolerance {
        name: "approximate",
        abs: 1e-3,
        rel: 1e-3,
    };

    pub fn by_name(name: &str) -> Option<Tolerance> {
        [Self::EXACT, Self::CLOSE, Self::APPROXIMATE]
            .into_iter()
            .find(|t| t.name == name)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub max_abs: f32,
    pub max_rel: f32,
    pub cosine: f64,
    /// Index of the worst element (by abs error), per dimension.
    pub worst_index: Vec<usize>,
    pub worst_actual: f32,
    pub worst_expected: f32,
    /// Elements outside the tolerance.
    pub off: usize,
    pub total: usize,
    pub tolerance: Tolerance,
}

impl Comparison {
    pub fn passed(&self) -> bool {
        self.off == 0
    }
}

impl std::fmt::Display for Comparison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "max abs {:.3e}, max rel {:.3e}, cosine {:.9}, worst at {:?} (got {}, want {}), {}/{} outside '{}'",
            self.max_abs,
            self.max_rel,
            self.cosine,
            self.worst_index,
            self.worst_actual,
            self.worst_expected,
            self.off,
            self.total,
            self.tolerance.name
        )
    }
}

fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        let s = shape[d].max(1);
        idx[d] = i % s;
        i /= s;
    }
    idx
}

/// Compare `actual` with `expected` (same shape) under `tol`.
pub fn compare(actual: &Tensor, expected: &Tensor, tol: Tolerance) -> Result<Comparison> {
    if actual.shape() != expected.shape() {
        return Err(Error::Usage(format!(
            "shapes differ: {:?} vs expected {:?}",
            actual.shape(),
            expected.shape()
        )));
    }
    let (a, e) = (actual.as_f32()?, expected.as_f32()?);
    let scale = e.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let limit = tol.abs + tol.rel * scale;
    let (mut max_abs, mut max_rel, mut worst, mut off) = (0.0f32, 0.0f32, 0usize, 0usize);
    let (mut dot, mut na, mut ne) = (0.0f64, 0.0f64, 0.0f64);
    for (i, (&x, &y)) in a.iter().zip(e.iter()).enumerate() {
        let d = (x - y).abs();
        let d = if d.is_nan() { f32::INFINITY } else { d };
        if d > max_abs || (i == 0 && d.is_infinite()) {
            max_abs = d;
            worst = i;
        }
        max_rel = max_rel.max(d / y.abs().max(1e-6));
        if d > limit {
            off += 1;
        }
        dot += x as f64 * y as f64;
        na += x as f64 * x as f64;
        ne += y as f64 * y as f64;
    }
    let cosine = if na == 0.0 && ne == 0.0 {
        1.0
    } else {
        dot / (na.sqrt() * ne.sqrt()).max(f64::MIN_POSITIVE)
    };
    Ok(Comparison {
        max_abs,
        max_rel,
        cosine,
        worst_index: unravel(worst, actual.shape()),
        worst_actual: a.get(worst).copied().unwrap_or(0.0),
        worst_expected: e.get(worst).copied().unwrap_or(0.0),
        off,
        total: a.len(),
        tolerance: tol,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_worst_element_and_count() {
        let e = Tensor::f32(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let a = Tensor::f32(vec![2, 2], vec![1.0, 2.0, 3.5, 4.0 + 1e-7]).unwrap();
        let c = compare(&a, &e, Tolerance::CLOSE).unwrap();
        assert_eq!(c.worst_index, vec![1, 0]);
        assert_eq!(c.off, 1);
        assert!((c.max_abs - 0.5).abs() < 1e-6);
        assert!(!c.passed());
    }

    #[test]
    fn nan_is_never_close() {
        let e = Tensor::f32(vec![2], vec![1.0, 2.0]).unwrap();
        let a = Tensor::f32(vec![2], vec![1.0, f32::NAN]).unwrap();
        let c = compare(&a, &e, Tolerance::APPROXIMATE).unwrap();
        assert_eq!(c.off, 1);
        assert_eq!(c.worst_index, vec![1]);
    }
}
