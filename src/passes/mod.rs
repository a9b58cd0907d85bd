//! Graph passes between the TF frontend and the writers. [`PASSES`] is the
//! one list of them, in the order they run, each with what it does (the
//! `--no-pass` help is generated from it).
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
mod fold_tensordot;
mod fold_transpose;
mod fuse_gelu;
mod fuse_l2_normalize;
mod fuse_prelu;
mod fuse_repeat;
mod fuse_residual;
mod remove_dead;
mod remove_identity;
mod resolve_switch;
mod sink_transpose;

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

/// One pass: its name (`--no-pass NAME`), what it does, and the function.
pub struct Pass {
    pub name: &'static str,
    pub what: &'static str,
    pub run: PassFn,
}

/// Every pass, in the order they run.
pub const PASSES: &[Pass] = &[
    Pass {
        name: "remove_identity",
        what: "Identity, and reshapes that change nothing or follow another reshape, are bypassed",
        run: remove_identity::run,
    },
    Pass {
        name: "resolve_switch",
        what: "TF1 Switch/Merge with a constant predicate: the taken branch is wired through, the other is dead",
        run: resolve_switch::run,
    },
    Pass {
        name: "fold_constants",
        what: "nodes whose inputs are all constant are evaluated once (the decomposed batch norm's `rsqrt(var + eps) * gamma`, shape arithmetic)",
        run: fold_constants::run,
    },
    Pass {
        name: "sink_transpose",
        what: "a Transpose moves below the ops that only care where an axis is (elementwise ops with constants re-indexed, bias, channel-first conv/pool/batch norm made channel-last, concat, reductions, pad, slice) until it meets its inverse and both go (onnx-tf and channel-first GPU graphs)",
        run: sink_transpose::run,
    },
    Pass {
        name: "fold_tensordot",
        what: "a Dense layer on every position of an NHWC map (Reshape [N*H*W, C], MatMul by a constant, Reshape back; Keras Dense on 4-D, tf.tensordot) becomes a 1x1 Conv2D with the same weight bytes",
        run: fold_tensordot::run,
    },
    Pass {
        name: "fold_bias",
        what: "BiasAdd / Add / Sub of a per-channel constant after a Conv2D, depthwise conv or MatMul becomes its bias",
        run: fold_bias::run,
    },
    Pass {
        name: "fold_batch_norm",
        what: "FusedBatchNorm (V1/V2/V3, inference) and a per-channel constant Mul (the decomposed form) after a conv or MatMul fold into its weights and bias, also through reshapes that only add unit dimensions (FaceNet's bottleneck); what cannot fold stays a BatchNorm",
        run: fold_batch_norm::run,
    },
    Pass {
        name: "fuse_residual",
        what: "`x + scale * branch` becomes one WeightedSum (Caffe Eltwise SUM with coefficients)",
        run: fuse_residual::run,
    },
    Pass {
        name: "fuse_l2_normalize",
        what: "`x * rsqrt(max(sum(x^2), eps))` becomes one L2Normalize",
        run: fuse_l2_normalize::run,
    },
    Pass {
        name: "fuse_prelu",
        what: "Keras' PReLU `relu(x) - alpha * relu(-x)` becomes one PRelu (Caffe PReLU)",
        run: fuse_prelu::run,
    },
    Pass {
        name: "fuse_repeat",
        what: "tf.repeat of an NHWC map's rows or columns (ExpandDims, Tile of the new axis, Reshape back; Keras 3's nearest UpSampling2D) becomes one nearest resize by that whole factor",
        run: fuse_repeat::run,
    },
    Pass {
        name: "fuse_gelu",
        what: "GELU written out (`0.5 * x * erfc(-x / sqrt 2)`, `x * 0.5 * (1 + erf(x / sqrt 2))`, or the tanh form with `x^3`) becomes one Gelu (Core ML gelu layer, MIL gelu)",
        run: fuse_gelu::run,
    },
    Pass {
        name: "fold_transpose",
        what: "a transpose that only feeds flatten + MatMul folds into the weight rows (Keras Permute + Flatten + Dense)",
        run: fold_transpose::run,
    },
    Pass {
        name: "remove_dead",
        what: "nodes the outputs do not need are dropped",
        run: remove_dead::run,
    },
];

/// Which passes run; all by default.
#[derive(Debug, Clone, Default)]
pub struct PassOptions {
    pub disabled: Vec<String>,
}

impl PassOptions {
    pub fn none() -> Self {
        PassOptions {
            disabled: PASSES.iter().map(|p| p.name.to_string()).collect(),
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
            if !PASSES.iter().any(|p| p.name == d) {
                let names: Vec<&str> = PASSES.iter().map(|p| p.name).collect();
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
        for Pass { name, run, .. } in PASSES {
            if !opts.enabled(name) {
                continue;
            }
            let n = run(graph, &mut report.rewrites)
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
