//! Graph passes between the TF frontend and the emitters, in order:
//!
//! | # | pass | what it does |
//! | --- | --- | --- |
//! | 1 | `remove_identity` | Identity, and reshapes that change nothing or follow another reshape, are bypassed |
//! | 2 | `resolve_switch` | TF1 Switch/Merge with a constant predicate: the taken branch is wired through, the other is dead |
//! | 3 | `fold_constants` | nodes whose inputs are all constant are evaluated once (the decomposed batch norm's `rsqrt(var + eps) * gamma`, shape arithmetic) |
//! | 4 | `fold_bias` | BiasAdd / Add / Sub of a per-channel constant after a Conv2D, depthwise conv or MatMul becomes its bias |
//! | 5 | `fold_batch_norm` | FusedBatchNorm (V1/V2/V3, inference) and a per-channel constant Mul (the decomposed form) after a conv or MatMul fold into its weights and bias, also through reshapes that only add unit dimensions (FaceNet's bottleneck); what cannot fold stays a BatchNorm |
//! | 6 | `fuse_residual` | `x + scale * branch` becomes one WeightedSum (Caffe Eltwise SUM with coefficients) |
//! | 7 | `fuse_l2_normalize` | `x * rsqrt(max(sum(x^2), eps))` becomes one L2Normalize |
//! | 8 | `fuse_prelu` | Keras' PReLU `relu(x) - alpha * relu(-x)` becomes one PRelu (Caffe PReLU) |
//! | 9 | `fold_transpose` | a transpose that only feeds flatten + MatMul folds into the weight rows (Keras Permute + Flatten + Dense) |
//! | 10 | `remove_dead` | nodes the outputs do not need are dropped |
//!
//! The list runs to a fixed point (until no pass changes anything), because
//! folding can expose more folding (a BiasAdd folded into a conv lets the
//! following batch norm fold too). After each pass the graph is re-sorted and
//! validated, and an error names the pass. Every pass can be switched off,
//! so parity can be checked with and without it; the math of folding lives
//! in `fold_batch_norm::absorb_affine` only.

mod fold_batch_norm;
mod fold_bias;
mod fold_constants;
mod fold_transpose;
mod fuse_l2_normalize;
mod fuse_prelu;
mod fuse_residual;
mod remove_dead;
mod remove_identity;
mod resolve_switch;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::ir::Graph;

/// One rewrite done by a pass, for the conversion report.
#[derive(Debug, Clone, Serialize)]
pub struct Rewrite {
    pub pass: &'static str,
    /// The node that remains (or was rewritten).
    pub node: String,
    pub detail: String,
}

/// What the passes did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub rewrites: Vec<Rewrite>,
    pub iterations: usize,
    pub nodes_before: usize,
    pub nodes_after: usize,
}

impl Report {
    pub fn count(&self, pass: &str) -> usize {
        self.rewrites.iter().filter(|r| r.pass == pass).count()
    }
}

type PassFn = fn(&mut Graph, &mut Vec<Rewrite>) -> Result<usize>;

/// Every pass in order: (name, function).
pub const PASSES: &[(&str, PassFn)] = &[
    ("remove_identity", remove_identity::run),
    ("resolve_switch", resolve_switch::run),
    ("fold_constants", fold_constants::run),
    ("fold_bias", fold_bias::run),
    ("fold_batch_norm", fold_batch_norm::run),
    ("fuse_residual", fuse_residual::run),
    ("fuse_l2_normalize", fuse_l2_normalize::run),
    ("fuse_prelu", fuse_prelu::run),
    ("fold_transpose", fold_transpose::run),
    ("remove_dead", remove_dead::run),
];

/// Which passes run; all by default.
#[derive(Debug, Clone, Default)]
pub struct PassOptions {
    pub disabled: Vec<String>,
}

impl PassOptions {
    pub fn none() -> Self {
        PassOptions {
            disabled: PASSES.iter().map(|(n, _)| n.to_string()).collect(),
        }
    }
    pub fn without(mut self, pass: &str) -> Self {
        self.disabled.push(pass.to_string());
        self
    }
    pub fn enabled(&self, pass: &str) -> bool {
        !self.disabled.iter().any(|d| d == pass)
    }
    /// Check that every disabled name is a pass.
    pub fn check(&self) -> Result<()> {
        for d in &self.disabled {
            if !PASSES.iter().any(|(n, _)| n == d) {
                let names: Vec<&str> = PASSES.iter().map(|(n, _)| *n).collect();
                return Err(Error::Usage(format!(
                    "no pass named '{d}' (passes: {})",
                    names.join(", ")
                )));
            }
        }
        Ok(())
    }
}

/// Run the enabled passes to a fixed point.
pub fn run(graph: &mut Graph, opts: &PassOptions) -> Result<Report> {
    opts.check()?;
    let mut report = Report {
        nodes_before: graph.nodes.len(),
        ..Report::default()
    };
    for iteration in 1..=16 {
        report.iterations = iteration;
        let mut changed = 0;
        for (name, pass) in PASSES {
            if !opts.enabled(name) {
                continue;
            }
            let n = pass(graph, &mut report.rewrites)
                .map_err(|e| Error::Graph(format!("pass {name}: {e}")))?;
            graph
                .compact(false)
                .and_then(|_| graph.validate())
                .map_err(|e| Error::Graph(format!("after pass {name}: {e}")))?;
            changed += n;
        }
        if changed == 0 {
            break;
        }
    }
    report.nodes_after = graph.nodes.len();
    Ok(report)
}
