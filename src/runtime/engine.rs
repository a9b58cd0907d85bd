//! The fast engine: runs a converted (batch-norm-folded) graph for serving
//! and benchmarks. Compiling it packs every convolution and matmul weight
//! once (`kernels::gemm::PackedB`), fuses conv + bias + residual add +
//! ReLU into one gemm epilogue, and plans activation buffers by liveness so
//! a call allocates nothing large after the first. Batches of samples run
//! as one: their rows stack in every gemm.
//!
//! Before buffers are planned (`Builder::finish`), in this order: sibling
//! 1x1 convolutions of one input become one gemm (`merge_siblings`), then
//! convolutions whose only reader is a channel concatenation write into
//! it in place (`concat_in_place`). Neither changes a sum: each output
//! column is the same products in the same order.
//!
//! Only the hot ops have fast steps (NHWC Conv2d, MatMul, pooling, concat,
//! activations, residual sums, L2 normalisation, reshapes); any other op
//! runs through the reference executor's kernels one sample at a time, so
//! every graph the reference executor runs, this runs too.

use std::collections::HashMap;
use std::sync::Mutex;

use super::kernels::gemm::{self, Act, Dense, Dest, Epilogue, LinePatches, PackedB, Patches, NR};
use super::kernels::winograd::{self, Winograd};
use super::kernels::winograd_line::{self, LineWinograd};
use super::kernels::{self, ConvGeometry};
use crate::error::{Error, Result};
use crate::ir::{numel, Activation, DType, Graph, Layout, Node, Op, PoolKind, Tensor, Wire};

/// A value the steps read: a planned buffer or a constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Val {
    /// Logical activation value (index into `Engine::values`).
    Act(usize),
    Const(usize),
}

#[derive(Debug, Clone)]
struct ValueInfo {
    /// Shape of one sample (the graph's facts).
    shape: Vec<usize>,
    buf: usize,
}

/// How a gemm step reads its input, with its packed weights.
enum GemmA {
    /// Rows of k contiguous floats (1x1 stride-1 conv, matmul).
    Dense { k: usize, w: PackedB },
    /// im2col of an NHWC image per sample (n = 1 here; scaled at run time).
    Patches(ConvGeometry, PackedB),
    /// As `Patches`, a 1 x k or k x 1 convolution whose taps in the padding
    /// are skipped (`gemm::LinePatches`).
    Lines(ConvGeometry, PackedB),
    /// A 3x3 stride-1 convolution by Winograd transforms (n = 1 here).
    Winograd(ConvGeometry, Box<Winograd>),
    /// A 1 x r or r x 1 stride-1 convolution by 1-D Winograd transforms.
    LineWinograd(ConvGeometry, Box<LineWinograd>),
}

impl GemmA {
    /// Output channels.
    fn n(&self) -> usize {
        match self {
            GemmA::Dense { w, .. } | GemmA::Patches(_, w) | GemmA::Lines(_, w) => w.n(),
            GemmA::Winograd(g, _) | GemmA::LineWinograd(g, _) => g.co,
        }
    }
    /// Multiply-adds per output row, as a direct product would do them.
    fn k(&self) -> usize {
        match self {
            GemmA::Dense { w, .. } | GemmA::Patches(_, w) | GemmA::Lines(_, w) => w.k(),
            GemmA::Winograd(g, _) | GemmA::LineWinograd(g, _) => g.kh * g.kw * g.c,
        }
    }
    fn bytes(&self) -> usize {
        match self {
            GemmA::Dense { w, .. } | GemmA::Patches(_, w) | GemmA::Lines(_, w) => w.bytes(),
            GemmA::Winograd(_, w) => w.bytes(),
            GemmA::LineWinograd(_, w) => w.bytes(),
        }
    }
}

// A plan holds a few hundred steps, built once: the size of the gemm
// variant (its packed weights' handles inline) costs nothing measurable.
#[allow(clippy::large_enum_variant)]
enum Step {
    Input {
        index: usize,
        out: usize,
    },
    Gemm {
        name: String,
        x: usize,
        a: GemmA,
        scale: f32,
        residual: Option<(usize, f32)>,
        act: Act,
        out: usize,
        /// Written straight into the concatenation that is its only
        /// reader: (first column, row length of the concatenation).
        into: Option<(usize, usize)>,
        /// Sibling 1x1 convolutions of the same input merged into this
        /// gemm: their outputs, each from a panel of the merged weights.
        /// `out` holds the columns before the first of them.
        extra: Vec<Extra>,
    },
    Pool {
        x: usize,
        kind: PoolKind,
        dims: [usize; 4],
        k: [usize; 2],
        s: [usize; 2],
        pad: [usize; 2],
        ohw: [usize; 2],
        out: usize,
    },
    /// Concatenation on an axis >= 1: every output row is one row of each
    /// part, (value, row length) side by side. Parts marked `written` are
    /// there already (their gemm wrote them in place).
    Concat {
        parts: Vec<(usize, usize)>,
        written: Vec<bool>,
        out: usize,
    },
    Activation {
        x: usize,
        act: Activation,
        out: usize,
    },
    WeightedSum {
        ins: Vec<(usize, f32)>,
        out: usize,
    },
    /// L2 normalisation over the last axis of length `len`.
    L2Normalize {
        x: usize,
        len: usize,
        epsilon: f32,
        out: usize,
    },
    /// Any other op, through the reference executor, one sample at a time.
    Fallback {
        node: Box<Node>,
        ins: Vec<Val>,
        out: usize,
    },
}

impl Step {
    fn reads(&self) -> Vec<usize> {
        match self {
            Step::Input { .. } => vec![],
            Step::Gemm { x, residual, .. } => {
                let mut v = vec![*x];
                v.extend(residual.map(|r| r.0));
                v
            }
            Step::Pool { x, .. } | Step::Activation { x, .. } | Step::L2Normalize { x, .. } => {
                vec![*x]
            }
            Step::Concat { parts, .. } => parts.iter().map(|p| p.0).collect(),
            Step::WeightedSum { ins, .. } => ins.iter().map(|p| p.0).collect(),
            Step::Fallback { ins, .. } => ins
                .iter()
                .filter_map(|v| match v {
                    Val::Act(i) => Some(*i),
                    Val::Const(_) => None,
                })
                .collect(),
        }
    }
    /// For `FACEALL_PROFILE=1` lines.
    fn label(&self) -> String {
        match self {
            Step::Input { .. } => "Input".into(),
            Step::Gemm { name, .. } => format!("Gemm {name}"),
            Step::Pool { .. } => "Pool".into(),
            Step::Concat { .. } => "Concat".into(),
            Step::Activation { .. } => "Activation".into(),
            Step::WeightedSum { .. } => "WeightedSum".into(),
            Step::L2Normalize { .. } => "L2Normalize".into(),
            Step::Fallback { node, .. } => format!("Fallback {} {}", node.source_op, node.name),
        }
    }

    /// Every value the step writes: `writes()` and a merged gemm's others.
    fn all_writes(&self) -> Vec<usize> {
        let mut v = vec![self.writes()];
        if let Step::Gemm { extra, .. } = self {
            v.extend(extra.iter().map(|e| e.out));
        }
        v
    }

    fn writes(&self) -> usize {
        match self {
            Step::Input { out, .. }
            | Step::Gemm { out, .. }
            | Step::Pool { out, .. }
            | Step::Concat { out, .. }
            | Step::Activation { out, .. }
            | Step::WeightedSum { out, .. }
            | Step::L2Normalize { out, .. }
            | Step::Fallback { out, .. } => *out,
        }
    }
}

/// One more output of a merged gemm (see `Builder::merge_siblings`).
struct Extra {
    out: usize,
    /// Its first panel (NR columns) in the merged weights.
    first_panel: usize,
    /// Its columns.
    cols: usize,
    into: Option<(usize, usize)>,
}

/// Choices that trade exactness of summation order for speed, switchable
/// so parity can be checked with and without each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    /// Run 3x3 stride-1 convolutions by Winograd's F(m x m, 3 x 3), and
    /// 1 x k / k x 1 ones by F(m, k) where it pays (None: as im2col gemms
    /// like every other convolution).
    pub winograd: Option<winograd::Tile>,
    /// Use Winograd on every 3x3 stride-1 (and 1 x k / k x 1) convolution,
    /// also those it is slower for (tests: small fixtures exercise the
    /// transforms).
    pub winograd_everywhere: bool,
}

impl Default for EngineOptions {
    /// Winograd F(4x4, 3x3) on, unless `FACEALL_WINOGRAD` says `off` (or
    /// `2` for F(2x2, 3x3)).
    fn default() -> Self {
        let winograd = std::env::var("FACEALL_WINOGRAD")
            .ok()
            .and_then(|v| Self::winograd_named(&v))
            .unwrap_or(Some(winograd::Tile::F4));
        EngineOptions {
            winograd,
            winograd_everywhere: false,
        }
    }
}

impl EngineOptions {
    /// The Winograd choice a name gives: `f4`/`4`, `f2`/`2`, `off`/`0`
    /// (None for any other name).
    pub fn winograd_named(name: &str) -> Option<Option<winograd::Tile>> {
        match name {
            "f4" | "4" => Some(Some(winograd::Tile::F4)),
            "f2" | "2" => Some(Some(winograd::Tile::F2)),
            "off" | "0" => Some(None),
            _ => None,
        }
    }
}

/// One graph input or output.
#[derive(Debug, Clone)]
pub struct Port {
    pub name: String,
    /// Shape of one sample.
    pub shape: Vec<usize>,
    value: usize,
}

/// Reusable activation buffers, one set per concurrent call.
#[derive(Default)]
struct Workspace {
    bufs: Vec<Vec<f32>>,
}

/// A compiled graph. `run` may be called from many threads at once.
pub struct Engine {
    steps: Vec<Step>,
    values: Vec<ValueInfo>,
    consts: Vec<Tensor>,
    /// Floats per sample of each buffer.
    buf_sizes: Vec<usize>,
    inputs: Vec<Port>,
    outputs: Vec<Port>,
    weight_bytes: usize,
    fused: usize,
    spare: Mutex<Vec<Workspace>>,
}

/// What compiling did, for `faceall bench` and the README.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EngineStats {
    pub steps: usize,
    pub gemm_steps: usize,
    /// Of those, 3x3 convolutions by Winograd transforms.
    pub winograd_steps: usize,
    /// Of those, 1 x k or k x 1 convolutions skipping their padding's taps.
    pub line_steps: usize,
    /// Of those, 1 x k or k x 1 convolutions by 1-D Winograd transforms
    /// (F(m, k), m = 2 or 4 as the Winograd tile says).
    pub line_winograd_steps: usize,
    pub fallback_steps: usize,
    /// Concatenation parts their gemm writes in place (no copy).
    pub concat_parts_in_place: usize,
    /// Sibling 1x1 convolutions run as part of another's gemm.
    pub merged_siblings: usize,
    pub fused_nodes: usize,
    pub packed_weight_bytes: usize,
    pub activation_floats_per_sample: usize,
}

fn act_of(a: &Activation) -> Option<Act> {
    match a {
        Activation::Relu => Some(Act::Relu),
        Activation::Relu6 => Some(Act::Relu6),
        _ => None,
    }
}

impl Engine {
    /// Compile `graph` with the default options (`EngineOptions::default`).
    pub fn compile(graph: Graph) -> Result<Engine> {
        Self::compile_with(graph, &EngineOptions::default())
    }

    /// Compile `graph`, taking its weights: each one is dropped as soon as it
    /// is packed, so a graph whose constants own their bytes (see
    /// `bundle::load_owned`) never holds two copies of the model.
    pub fn compile_with(mut graph: Graph, opts: &EngineOptions) -> Result<Engine> {
        graph.validate()?;
        let n_nodes = graph.nodes.len();
        // Nodes needed for the outputs, and how often each output is read.
        let mut needed = vec![false; n_nodes];
        let mut stack: Vec<usize> = graph.outputs.iter().map(|w| w.node).collect();
        while let Some(i) = stack.pop() {
            if !std::mem::replace(&mut needed[i], true) {
                stack.extend(graph.nodes[i].inputs.iter().map(|w| w.node));
            }
        }
        let mut uses: HashMap<Wire, usize> = HashMap::new();
        let mut users: HashMap<Wire, Vec<usize>> = HashMap::new();
        for (i, n) in graph.nodes.iter().enumerate().filter(|(i, _)| needed[*i]) {
            for w in &n.inputs {
                *uses.entry(*w).or_default() += 1;
                users.entry(*w).or_default().push(i);
            }
        }
        for w in &graph.outputs {
            *uses.entry(*w).or_default() += 1;
        }
        let sole_user = |w: Wire| -> Option<usize> {
            match (uses.get(&w), users.get(&w)) {
                (Some(1), Some(u)) if u.len() == 1 => Some(u[0]),
                _ => None,
            }
        };

        let mut b = Builder::default();
        let mut done = vec![false; n_nodes];
        for i in 0..n_nodes {
            if !needed[i] || done[i] {
                continue;
            }
            // A clone (constants are reference-counted) so the graph can lend
            // its weights out mutably below.
            let node = &graph.nodes[i].clone();
            let here = Wire { node: i, slot: 0 };
            let err = |m: String| Error::node(&node.name, &node.source_op, m);
            if node.outputs.len() != 1 && !matches!(node.op, Op::Switch | Op::Merge) {
                return Err(err("the fast engine handles single-output ops only".into()));
            }
            match &node.op {
                // Constants are taken when a step reads them (`Builder::input`),
                // so packed weights are not kept twice.
                Op::Const(_) => {}
                Op::Input => {
                    let out = b.value(node.outputs[0].shape.clone(), node.outputs[0].dtype, &err)?;
                    b.inputs.push(Port {
                        name: node.name.clone(),
                        shape: node.outputs[0].shape.clone(),
                        value: out,
                    });
                    b.steps.push(Step::Input {
                        index: b.inputs.len() - 1,
                        out,
                    });
                    b.wires.insert(here, Val::Act(out));
                }
                Op::Switch | Op::Merge => {
                    return Err(err(
                        "control flow left in the graph: convert it with the resolve_switch pass first"
                            .into(),
                    ))
                }
                Op::Identity | Op::Reshape { .. } | Op::Squeeze { .. } | Op::ExpandDims { .. }
                    if matches!(b.wires.get(&node.inputs[0]), Some(Val::Act(_))) =>
                {
                    // Same bytes, another shape: share the buffer.
                    let src = b.act(node.inputs[0], &err)?;
                    let id = b.values.len();
                    b.values.push(ValueInfo {
                        shape: node.outputs[0].shape.clone(),
                        buf: b.values[src].buf,
                    });
                    b.alias_of.push(Some(src));
                    b.wires.insert(here, Val::Act(id));
                }
                Op::Conv2d(c)
                    if c.layout == Layout::Nhwc
                        && !c.depthwise
                        && graph.const_of(node.inputs[1]).is_some()
                        && node.inputs.get(2).is_none_or(|w| graph.const_of(*w).is_some()) =>
                {
                    let x = b.act(node.inputs[0], &err)?;
                    let xs = b.values[x].shape.clone();
                    let ws = graph.fact(node.inputs[1])?.shape.clone();
                    let [n, h, w, ch] = xs[..] else {
                        return Err(err(format!("input of rank {} (want 4)", xs.len())));
                    };
                    let [kh, kw, ci, co] = ws[..] else {
                        return Err(err("filter is not 4-D".into()));
                    };
                    if ci != ch {
                        return Err(err(format!("filter takes {ci} channels, input has {ch}")));
                    }
                    let (ohw, pad) = super::geometry(
                        &c.padding,
                        [h, w],
                        [kh, kw],
                        c.strides,
                        c.dilations,
                    )
                    .map_err(|e| err(e.to_string()))?;
                    let g = ConvGeometry {
                        n,
                        h,
                        w,
                        c: ch,
                        kh,
                        kw,
                        co,
                        oh: ohw[0],
                        ow: ohw[1],
                        stride: c.strides,
                        dilation: c.dilations,
                        pad,
                    };
                    let pointwise =
                        kh == 1 && kw == 1 && c.strides == [1, 1] && pad == [0, 0] && ohw == [h, w];
                    let tile = opts.winograd.filter(|t| {
                        winograd::worthwhile(&g, *t)
                            || (opts.winograd_everywhere && winograd::supports(&g))
                    });
                    // The same tile choice for 1-D filters: F(2, r) or F(4, r).
                    let line = opts.winograd.map(line_tile).filter(|&m| {
                        winograd_line::worthwhile(&g, m)
                            || (opts.winograd_everywhere && winograd_line::supports(&g, m))
                    });
                    let a = take_packed(&mut graph, i, 1, (kh * kw * ci, co), |wt, bias| {
                        match (tile, line) {
                            _ if pointwise => GemmA::Dense {
                                k: ch,
                                w: PackedB::pack(wt, ch, co, co, 1, bias),
                            },
                            (Some(t), _) => {
                                GemmA::Winograd(g, Box::new(Winograd::new(wt, ch, co, bias, t)))
                            }
                            (None, Some(m)) => GemmA::LineWinograd(
                                g,
                                Box::new(LineWinograd::new(wt, [kh, kw], ch, co, bias, m)),
                            ),
                            (None, None) => {
                                let w = PackedB::pack(wt, kh * kw * ci, co, co, 1, bias);
                                if LinePatches::suits(&g) {
                                    GemmA::Lines(g, w)
                                } else {
                                    GemmA::Patches(g, w)
                                }
                            }
                        }
                    })?;
                    let fused = fuse_tail(&graph, here, &sole_user, &b, &mut done)?;
                    b.gemm(&graph, i, x, a, fused)?;
                }
                Op::MatMul {
                    transpose_a: false,
                    transpose_b,
                } if graph.const_of(node.inputs[1]).is_some()
                    && node.inputs.get(2).is_none_or(|w| graph.const_of(*w).is_some()) =>
                {
                    let x = b.act(node.inputs[0], &err)?;
                    let bs = graph.fact(node.inputs[1])?.shape.clone();
                    let [r, c] = bs[..] else {
                        return Err(err("matmul weights are not 2-D".into()));
                    };
                    let (k, n, rs, cs) = if *transpose_b {
                        (c, r, 1, c)
                    } else {
                        (r, c, c, 1)
                    };
                    let w = take_packed(&mut graph, i, 1, (k, n), |wt, bias| {
                        PackedB::pack(wt, k, n, rs, cs, bias)
                    })?;
                    let fused = fuse_tail(&graph, here, &sole_user, &b, &mut done)?;
                    b.gemm(&graph, i, x, GemmA::Dense { k, w }, fused)?;
                }
                Op::Pool(p)
                    if p.layout == Layout::Nhwc
                        && matches!(b.wires.get(&node.inputs[0]), Some(Val::Act(_))) =>
                {
                    let x = b.act(node.inputs[0], &err)?;
                    let [n, h, w, c] = b.values[x].shape[..] else {
                        return Err(err("pooling input is not 4-D".into()));
                    };
                    let (ohw, pad) =
                        super::geometry(&p.padding, [h, w], p.ksize, p.strides, [1, 1])
                            .map_err(|e| err(e.to_string()))?;
                    let out = b.value(node.outputs[0].shape.clone(), DType::F32, &err)?;
                    b.steps.push(Step::Pool {
                        x,
                        kind: p.kind,
                        dims: [n, h, w, c],
                        k: p.ksize,
                        s: p.strides,
                        pad,
                        ohw,
                        out,
                    });
                    b.wires.insert(here, Val::Act(out));
                }
                Op::Concat { axis }
                    if node
                        .inputs
                        .iter()
                        .all(|w| matches!(b.wires.get(w), Some(Val::Act(_)))) =>
                {
                    let outer = numel(&node.outputs[0].shape[..*axis]);
                    let mut parts = vec![];
                    for w in &node.inputs {
                        let v = b.act(*w, &err)?;
                        parts.push((v, numel(&b.values[v].shape) / outer.max(1)));
                    }
                    let out = b.value(node.outputs[0].shape.clone(), DType::F32, &err)?;
                    let written = vec![false; parts.len()];
                    b.steps.push(Step::Concat {
                        parts,
                        written,
                        out,
                    });
                    b.wires.insert(here, Val::Act(out));
                }
                Op::Activation(a) if matches!(b.wires.get(&node.inputs[0]), Some(Val::Act(_))) => {
                    let x = b.act(node.inputs[0], &err)?;
                    let out = b.value(node.outputs[0].shape.clone(), DType::F32, &err)?;
                    b.steps.push(Step::Activation { x, act: *a, out });
                    b.wires.insert(here, Val::Act(out));
                }
                Op::WeightedSum { coeffs }
                    if node.inputs.iter().all(|w| {
                        matches!(b.wires.get(w), Some(Val::Act(v)) if b.values[*v].shape == node.outputs[0].shape)
                    }) =>
                {
                    let mut ins = vec![];
                    for (w, c) in node.inputs.iter().zip(coeffs) {
                        ins.push((b.act(*w, &err)?, *c));
                    }
                    let out = b.value(node.outputs[0].shape.clone(), DType::F32, &err)?;
                    b.steps.push(Step::WeightedSum { ins, out });
                    b.wires.insert(here, Val::Act(out));
                }
                Op::L2Normalize { axis, epsilon }
                    if *axis + 1 == node.outputs[0].shape.len()
                        && matches!(b.wires.get(&node.inputs[0]), Some(Val::Act(_))) =>
                {
                    let x = b.act(node.inputs[0], &err)?;
                    let out = b.value(node.outputs[0].shape.clone(), DType::F32, &err)?;
                    b.steps.push(Step::L2Normalize {
                        x,
                        len: node.outputs[0].shape[*axis],
                        epsilon: *epsilon,
                        out,
                    });
                    b.wires.insert(here, Val::Act(out));
                }
                _ => {
                    let mut ins = vec![];
                    for w in &node.inputs {
                        ins.push(b.input(&graph, *w, &err)?);
                    }
                    if ins.iter().all(|v| matches!(v, Val::Const(_))) {
                        // Constant subgraph the passes left: evaluate it now.
                        let ts: Vec<Tensor> = ins
                            .iter()
                            .filter_map(|v| match v {
                                Val::Const(c) => Some(b.consts[*c].clone()),
                                Val::Act(_) => None,
                            })
                            .collect();
                        let t = super::eval_single(node, &ts)
                            .map_err(|e| err(format!("constant evaluation failed: {e}")))?;
                        b.consts.push(t);
                        b.wires.insert(here, Val::Const(b.consts.len() - 1));
                        continue;
                    }
                    let out = b.value(node.outputs[0].shape.clone(), node.outputs[0].dtype, &err)?;
                    b.steps.push(Step::Fallback {
                        node: Box::new(node.clone()),
                        ins,
                        out,
                    });
                    b.wires.insert(here, Val::Act(out));
                }
            }
        }
        let mut outputs = vec![];
        for w in &graph.outputs {
            // The TF name users asked for ("embeddings"), even when a pass
            // folded that node into its producer.
            let name = match graph.nodes[w.node].carries() {
                Some(n) if w.slot == 0 => n.to_string(),
                _ => graph.wire_name(*w),
            };
            match b.wires.get(w) {
                Some(Val::Act(v)) => outputs.push(Port {
                    name,
                    shape: b.values[*v].shape.clone(),
                    value: *v,
                }),
                _ => {
                    return Err(Error::Usage(format!(
                        "output '{name}' is a constant; nothing to run"
                    )))
                }
            }
        }
        drop(graph);
        b.finish(outputs)
    }

    pub fn inputs(&self) -> &[Port] {
        &self.inputs
    }
    pub fn outputs(&self) -> &[Port] {
        &self.outputs
    }

    pub fn stats(&self) -> EngineStats {
        let gemms = |which: fn(&GemmA) -> bool| {
            self.steps
                .iter()
                .filter(|s| matches!(s, Step::Gemm { a, .. } if which(a)))
                .count()
        };
        EngineStats {
            steps: self.steps.len(),
            gemm_steps: gemms(|_| true),
            winograd_steps: gemms(|a| matches!(a, GemmA::Winograd(..))),
            line_steps: gemms(|a| matches!(a, GemmA::Lines(..))),
            line_winograd_steps: gemms(|a| matches!(a, GemmA::LineWinograd(..))),
            fallback_steps: self
                .steps
                .iter()
                .filter(|s| matches!(s, Step::Fallback { .. }))
                .count(),
            concat_parts_in_place: self
                .steps
                .iter()
                .map(|s| match s {
                    Step::Gemm { into, extra, .. } => {
                        usize::from(into.is_some())
                            + extra.iter().filter(|e| e.into.is_some()).count()
                    }
                    _ => 0,
                })
                .sum(),
            merged_siblings: self
                .steps
                .iter()
                .map(|s| match s {
                    Step::Gemm { extra, .. } => extra.len(),
                    _ => 0,
                })
                .sum(),
            fused_nodes: self.fused,
            packed_weight_bytes: self.weight_bytes,
            activation_floats_per_sample: self.buf_sizes.iter().sum(),
        }
    }

    /// Run `n` samples. `inputs[i]` holds n samples of input i back to back.
    /// Each output comes back with its leading axis multiplied by n.
    pub fn run(&self, inputs: &[&[f32]], n: usize) -> Result<Vec<Tensor>> {
        if inputs.len() != self.inputs.len() {
            return Err(Error::Usage(format!(
                "the model takes {} inputs, {} given",
                self.inputs.len(),
                inputs.len()
            )));
        }
        for (p, x) in self.inputs.iter().zip(inputs) {
            if x.len() != n * numel(&p.shape) {
                return Err(Error::Usage(format!(
                    "input '{}' of {n} samples of {:?} needs {} floats, got {}",
                    p.name,
                    p.shape,
                    n * numel(&p.shape),
                    x.len()
                )));
            }
        }
        let mut ws = self
            .spare
            .lock()
            .map_err(|_| Error::Usage("engine workspace poisoned".into()))?
            .pop()
            .unwrap_or_default();
        // The pool's other workers spin for the length of the pass, so each
        // kernel's split reaches them without a wake-up (kernels::team).
        let out = crate::runtime::kernels::team::with_team(|| self.run_in(&mut ws, inputs, n));
        if let Ok(mut spare) = self.spare.lock() {
            spare.push(ws);
        }
        out
    }

    fn run_in(&self, ws: &mut Workspace, inputs: &[&[f32]], n: usize) -> Result<Vec<Tensor>> {
        ws.bufs.resize_with(self.buf_sizes.len(), Vec::new);
        for (b, &size) in ws.bufs.iter_mut().zip(&self.buf_sizes) {
            if b.len() < size * n {
                b.resize(size * n, 0.0);
            }
        }
        let profile = std::env::var_os("FACEALL_PROFILE").is_some();
        for step in &self.steps {
            let o = self.values[step.writes()].buf;
            let mut out = std::mem::take(&mut ws.bufs[o]);
            // A merged gemm's other outputs (in buffers of their own: the
            // planner never shares one between outputs of a step).
            let mut more: Vec<(usize, Vec<f32>)> = match step {
                Step::Gemm { extra, .. } => extra
                    .iter()
                    .map(|e| {
                        let b = self.values[e.out].buf;
                        (b, std::mem::take(&mut ws.bufs[b]))
                    })
                    .collect(),
                _ => vec![],
            };
            let t = profile.then(std::time::Instant::now);
            let r = self.step(step, ws, &mut out, &mut more, inputs, n);
            for (b, v) in more {
                ws.bufs[b] = v;
            }
            if let Some(t) = t {
                eprintln!(
                    "profile {} {:.3} {}",
                    step.label(),
                    t.elapsed().as_secs_f64() * 1e3,
                    self.flops(step, n)
                );
            }
            ws.bufs[o] = out;
            r?;
        }
        self.outputs
            .iter()
            .map(|p| {
                let len = numel(&p.shape) * n;
                let mut shape = p.shape.clone();
                match shape.first_mut() {
                    Some(d) => *d *= n,
                    None if n != 1 => shape.insert(0, n),
                    None => {}
                }
                Tensor::f32(shape, ws.bufs[self.values[p.value].buf][..len].to_vec())
            })
            .collect()
    }

    /// Multiply-adds x 2 of a gemm step for `n` samples (0 for others).
    fn flops(&self, step: &Step, n: usize) -> usize {
        match step {
            Step::Gemm { a, out, .. } => {
                2 * numel(&self.values[*out].shape) / step_cols(step).max(1) * n * a.k() * a.n()
            }
            _ => 0,
        }
    }

    fn view<'w>(&self, ws: &'w Workspace, v: usize, n: usize) -> &'w [f32] {
        &ws.bufs[self.values[v].buf][..numel(&self.values[v].shape) * n]
    }

    fn step(
        &self,
        step: &Step,
        ws: &Workspace,
        out: &mut [f32],
        more: &mut [(usize, Vec<f32>)],
        inputs: &[&[f32]],
        n: usize,
    ) -> Result<()> {
        let len = numel(&self.values[step.writes()].shape) * n;
        let whole = out;
        let out = &mut whole[..len];
        match step {
            Step::Input { index, .. } => out.copy_from_slice(inputs[*index]),
            Step::Gemm {
                x,
                a,
                scale,
                residual,
                act,
                into,
                extra,
                ..
            } => {
                let xv = self.view(ws, *x, n);
                let epi = Epilogue {
                    scale: *scale,
                    residual: residual.map(|(r, s)| (self.view(ws, r, n), a.n(), s)),
                    act: *act,
                    slopes: None,
                };
                // In place in a concatenation: from the part's first column,
                // rows as long as the concatenation's.
                let (out, ldc) = match into {
                    Some((col, row)) => (&mut whole[*col..], *row),
                    None => (out, step_cols(step)),
                };
                match a {
                    GemmA::Dense { k, w } => {
                        let src = Dense {
                            a: xv,
                            m: xv.len() / k,
                            k: *k,
                            lda: *k,
                        };
                        let mut dests = vec![Dest {
                            first_panel: 0,
                            c: out,
                            ldc,
                        }];
                        for (e, (_, buf)) in extra.iter().zip(more.iter_mut()) {
                            let (c, ldc) = match e.into {
                                Some((col, row)) => (&mut buf[col..], row),
                                None => (&mut buf[..], e.cols),
                            };
                            dests.push(Dest {
                                first_panel: e.first_panel,
                                c,
                                ldc,
                            });
                        }
                        gemm::gemm_to(&src, w, &mut dests, &epi)
                    }
                    GemmA::Patches(g, w) => {
                        let g = ConvGeometry { n: g.n * n, ..*g };
                        gemm::gemm(&Patches { x: xv, g }, w, out, ldc, &epi)
                    }
                    GemmA::Lines(g, w) => {
                        let g = ConvGeometry { n: g.n * n, ..*g };
                        gemm::gemm(&LinePatches { x: xv, g }, w, out, ldc, &epi)
                    }
                    GemmA::Winograd(g, w) => {
                        let g = ConvGeometry { n: g.n * n, ..*g };
                        w.run(xv, &g, out, ldc, &epi)
                    }
                    GemmA::LineWinograd(g, w) => {
                        let g = ConvGeometry { n: g.n * n, ..*g };
                        w.run(xv, &g, out, ldc, &epi)
                    }
                }
            }
            Step::Pool {
                x,
                kind,
                dims,
                k,
                s,
                pad,
                ohw,
                ..
            } => {
                let [b, h, w, c] = *dims;
                kernels::pool_nhwc_into(
                    self.view(ws, *x, n),
                    [b * n, h, w, c],
                    *kind,
                    *k,
                    *s,
                    *pad,
                    *ohw,
                    out,
                );
            }
            Step::Concat { parts, written, .. } => {
                // Each output row is the parts' rows side by side; rows are
                // copied in parallel when there are many bytes to move.
                // Parts written in place are skipped (their value shares
                // this buffer, which is taken out of the workspace now).
                let row_len: usize = parts.iter().map(|p| p.1).sum();
                let mut srcs: Vec<(usize, &[f32], usize)> = vec![];
                let mut at = 0;
                for ((v, inner), &done) in parts.iter().zip(written) {
                    if !done {
                        srcs.push((at, self.view(ws, *v, n), *inner));
                    }
                    at += inner;
                }
                if !srcs.is_empty() {
                    let row = |(o, dst): (usize, &mut [f32])| {
                        for (at, src, inner) in &srcs {
                            dst[*at..at + inner].copy_from_slice(&src[o * inner..][..*inner]);
                        }
                    };
                    kernels::for_each_row(out, row_len, row);
                }
            }
            Step::Activation { x, act, .. } => {
                out.copy_from_slice(self.view(ws, *x, n));
                kernels::activation(*act, out);
            }
            Step::WeightedSum { ins, .. } => {
                kernels::weighted_sum_into(
                    out,
                    ins.iter().map(|(v, c)| (self.view(ws, *v, n), *c)),
                );
            }
            Step::L2Normalize {
                x, len, epsilon, ..
            } => {
                let src = self.view(ws, *x, n);
                for (o, i) in out.chunks_mut(*len).zip(src.chunks(*len)) {
                    let sum: f32 = i.iter().map(|v| v * v).sum();
                    let inv = 1.0 / sum.max(*epsilon).sqrt();
                    o.iter_mut().zip(i).for_each(|(o, &v)| *o = v * inv);
                }
            }
            Step::Fallback { node, ins, out: o } => {
                let per = numel(&self.values[*o].shape);
                for s in 0..n {
                    let ts = ins
                        .iter()
                        .map(|v| match v {
                            Val::Const(c) => Ok(self.consts[*c].clone()),
                            Val::Act(a) => {
                                let shape = self.values[*a].shape.clone();
                                let per_in = numel(&shape);
                                Tensor::f32(
                                    shape,
                                    self.view(ws, *a, n)[s * per_in..][..per_in].to_vec(),
                                )
                            }
                        })
                        .collect::<Result<Vec<_>>>()?;
                    let y = super::eval_single(node, &ts)?;
                    out[s * per..][..per].copy_from_slice(&y.as_f32()?);
                }
            }
        }
        Ok(())
    }
}

/// Columns of a gemm step's first output: all of them, or those before the
/// first merged sibling's panel.
fn step_cols(step: &Step) -> usize {
    match step {
        Step::Gemm { a, extra, .. } => extra.first().map_or(a.n(), |e| e.first_panel * NR),
        _ => 0,
    }
}

/// What follows a gemm and folds into its epilogue.
struct Fused {
    scale: f32,
    residual: Option<(Wire, f32)>,
    act: Act,
    /// The node whose output the fused step produces.
    last: usize,
    nodes: usize,
}

/// Conv/MatMul -> [WeightedSum with an earlier value] -> [Relu/Relu6], each
/// link only when the intermediate has no other reader.
fn fuse_tail(
    graph: &Graph,
    start: Wire,
    sole_user: &dyn Fn(Wire) -> Option<usize>,
    b: &Builder,
    done: &mut [bool],
) -> Result<Fused> {
    let mut f = Fused {
        scale: 1.0,
        residual: None,
        act: Act::None,
        last: start.node,
        nodes: 0,
    };
    let mut at = start;
    if let Some(j) = sole_user(at) {
        let node = &graph.nodes[j];
        if let Op::WeightedSum { coeffs } = &node.op {
            if node.inputs.len() == 2 && coeffs.len() == 2 {
                let mine = node.inputs.iter().position(|w| *w == at);
                let other = mine.map(|m| (node.inputs[1 - m], coeffs[m], coeffs[1 - m]));
                if let Some((o, cm, co)) = other {
                    let ready = matches!(b.wires.get(&o), Some(Val::Act(v))
                        if b.values[*v].shape == node.outputs[0].shape);
                    if o != at && ready {
                        f.scale = cm;
                        f.residual = Some((o, co));
                        f.last = j;
                        f.nodes += 1;
                        done[j] = true;
                        at = Wire { node: j, slot: 0 };
                    }
                }
            }
        }
    }
    if let Some(j) = sole_user(at) {
        if let Op::Activation(a) = &graph.nodes[j].op {
            if let Some(act) = act_of(a) {
                f.act = act;
                f.last = j;
                f.nodes += 1;
                done[j] = true;
            }
        }
    }
    Ok(f)
}

/// Outputs per tile of the 1-D Winograd transforms that go with a 2-D
/// tile: F(2, r) with F(2x2, 3x3), F(4, r) with F(4x4, 3x3).
fn line_tile(t: winograd::Tile) -> usize {
    match t {
        winograd::Tile::F2 => 2,
        winograd::Tile::F4 => 4,
    }
}

/// Pack the weights (input `slot` of node `i`, `k * n` values) and the
/// node's bias (input 2) if it has one with `pack`, reading them in place,
/// then free the graph's copy once nothing else reads it, so the packed
/// form is the only one kept.
fn take_packed<T>(
    graph: &mut Graph,
    i: usize,
    slot: usize,
    (k, n): (usize, usize),
    pack: impl FnOnce(&[f32], Option<&[f32]>) -> T,
) -> Result<T> {
    let node = &graph.nodes[i];
    let err = |m: String| Error::node(&node.name, &node.source_op, m);
    let wt = graph
        .const_of(node.inputs[slot])
        .ok_or_else(|| err("weights are not constant".into()))?;
    let wv = wt.as_f32()?;
    if wv.len() != k * n {
        return Err(err(format!(
            "weights hold {} values, want {k} x {n}",
            wv.len()
        )));
    }
    let bias = match node.inputs.get(2) {
        Some(w) => {
            let t = graph
                .const_of(*w)
                .ok_or_else(|| err("bias is not constant".into()))?;
            let v = t.as_f32()?;
            if v.len() != n {
                return Err(err(format!("bias has {} values for {n} channels", v.len())));
            }
            Some(v)
        }
        None => None,
    };
    let packed = pack(&wv, bias.as_deref());
    drop((wv, bias));
    let w = node.inputs[slot];
    if graph.users(w).len() == 1 {
        graph.nodes[w.node].op = Op::Const(Tensor::scalar_f32(0.0));
    }
    Ok(packed)
}

#[derive(Default)]
struct Builder {
    steps: Vec<Step>,
    values: Vec<ValueInfo>,
    /// For aliases (reshape): the value whose buffer they share.
    alias_of: Vec<Option<usize>>,
    consts: Vec<Tensor>,
    wires: HashMap<Wire, Val>,
    inputs: Vec<Port>,
    fused: usize,
}

impl Builder {
    fn value(
        &mut self,
        shape: Vec<usize>,
        dtype: DType,
        err: &dyn Fn(String) -> Error,
    ) -> Result<usize> {
        if dtype != DType::F32 {
            return Err(err(format!(
                "computes {} at run time; the fast engine runs float32 graphs",
                dtype.name()
            )));
        }
        self.values.push(ValueInfo {
            shape,
            buf: usize::MAX,
        });
        self.alias_of.push(None);
        Ok(self.values.len() - 1)
    }

    /// The value on wire `w`; a constant is taken from the graph on first use.
    fn input(&mut self, graph: &Graph, w: Wire, err: &dyn Fn(String) -> Error) -> Result<Val> {
        if let Some(v) = self.wires.get(&w) {
            return Ok(*v);
        }
        match graph.const_of(w) {
            Some(t) => {
                self.consts.push(t.clone());
                let v = Val::Const(self.consts.len() - 1);
                self.wires.insert(w, v);
                Ok(v)
            }
            None => Err(err("input computed after its user".into())),
        }
    }

    fn act(&self, w: Wire, err: &dyn Fn(String) -> Error) -> Result<usize> {
        match self.wires.get(&w) {
            Some(Val::Act(v)) => Ok(*v),
            Some(Val::Const(_)) => Err(err("a constant where an activation was expected".into())),
            None => Err(err("input computed after its user".into())),
        }
    }

    fn gemm(&mut self, graph: &Graph, i: usize, x: usize, a: GemmA, f: Fused) -> Result<()> {
        let last = &graph.nodes[f.last];
        let err = |m: String| Error::node(&last.name, &last.source_op, m);
        let out = self.value(last.outputs[0].shape.clone(), DType::F32, &err)?;
        let residual = match f.residual {
            Some((wire, s)) => Some((self.act(wire, &err)?, s)),
            None => None,
        };
        if !numel(&self.values[out].shape).is_multiple_of(a.n()) {
            return Err(err("output size is not a multiple of the channels".into()));
        }
        self.fused += f.nodes;
        self.steps.push(Step::Gemm {
            name: graph.nodes[i].name.clone(),
            x,
            a,
            scale: f.scale,
            residual,
            act: f.act,
            out,
            into: None,
            extra: vec![],
        });
        self.wires.insert(
            Wire {
                node: f.last,
                slot: 0,
            },
            Val::Act(out),
        );
        Ok(())
    }

    /// Assign buffers by liveness: a value's buffer is free again after
    /// its last reader; an output never is.
    fn finish(mut self, outputs: Vec<Port>) -> Result<Engine> {
        let root = |mut v: usize, alias_of: &[Option<usize>]| {
            while let Some(a) = alias_of[v] {
                v = a;
            }
            v
        };
        self.merge_siblings();
        let nv = self.values.len();
        let mut last_read = vec![0usize; nv];
        for (si, s) in self.steps.iter().enumerate() {
            for r in s.reads() {
                let r = root(r, &self.alias_of);
                last_read[r] = last_read[r].max(si);
            }
        }
        for p in &outputs {
            last_read[root(p.value, &self.alias_of)] = usize::MAX;
        }
        let part_of = self.concat_in_place(&outputs);
        let mut sizes: Vec<usize> = vec![];
        let mut free: Vec<usize> = vec![];
        let mut buf_of = vec![usize::MAX; nv];
        let mut ends: Vec<(usize, usize)> = vec![];
        for si in 0..self.steps.len() {
            for w in self.steps[si].all_writes() {
                // A part written in place lives in its concatenation's
                // buffer, which is taken at the first such part and lives
                // until the concatenation's last reader; a concatenation
                // whose buffer is taken already only fills in its other parts.
                let v = match part_of[w] {
                    Some(c) if buf_of[c] != usize::MAX => {
                        buf_of[w] = buf_of[c];
                        None
                    }
                    Some(c) => Some(c),
                    None if buf_of[w] != usize::MAX => None,
                    None => Some(w),
                };
                let Some(v) = v else {
                    continue;
                };
                // Roots are written by steps, so every root gets a buffer here.
                let need: usize =
                    numel(&self.values[v].shape).max(self.alias_need(v, &self.alias_of));
                let pick = free
                    .iter()
                    .enumerate()
                    .filter(|(_, &b)| sizes[b] >= need)
                    .min_by_key(|(_, &b)| sizes[b])
                    .or_else(|| free.iter().enumerate().max_by_key(|(_, &b)| sizes[b]))
                    .map(|(i, _)| i);
                let buf = match pick {
                    Some(i) => free.swap_remove(i),
                    None => {
                        sizes.push(0);
                        sizes.len() - 1
                    }
                };
                sizes[buf] = sizes[buf].max(need);
                buf_of[v] = buf;
                buf_of[w] = buf;
                ends.push((last_read[v].max(si), buf));
            }
            // Free what was read for the last time here (and dead writes).
            let mut keep = vec![];
            for (end, b) in ends.drain(..) {
                if end <= si {
                    free.push(b);
                } else {
                    keep.push((end, b));
                }
            }
            ends = keep;
        }
        for v in 0..nv {
            let r = root(v, &self.alias_of);
            self.values[v].buf = buf_of[r];
            if buf_of[r] == usize::MAX {
                return Err(Error::Graph(format!(
                    "value of shape {:?} is never written",
                    self.values[v].shape
                )));
            }
        }
        let weight_bytes = self
            .steps
            .iter()
            .map(|s| match s {
                Step::Gemm { a, .. } => a.bytes(),
                _ => 0,
            })
            .sum();
        Ok(Engine {
            steps: self.steps,
            values: self.values,
            consts: self.consts,
            buf_sizes: sizes,
            inputs: self.inputs,
            outputs,
            weight_bytes,
            fused: self.fused,
            spare: Mutex::new(vec![]),
        })
    }

    /// Mark the concatenation parts a gemm can write in place (the concat
    /// then copies only the others) and return, per value, the
    /// concatenation it is written into. A part qualifies when a gemm step
    /// writes it, the concat step is its only reader, it is no output and
    /// no reshape shares it, and its rows are the gemm's channels (a concat
    /// on the channel axis of NHWC maps: the Inception branches).
    fn concat_in_place(&mut self, outputs: &[Port]) -> Vec<Option<usize>> {
        let nv = self.values.len();
        let mut readers = vec![0usize; nv];
        for s in &self.steps {
            for r in s.reads() {
                readers[r] += 1;
            }
        }
        let mut shared = vec![false; nv];
        for (v, a) in self.alias_of.iter().enumerate() {
            if let Some(a) = a {
                shared[v] = true;
                shared[*a] = true;
            }
        }
        for p in outputs {
            shared[p.value] = true;
        }
        let mut producer = vec![usize::MAX; nv];
        for (si, s) in self.steps.iter().enumerate() {
            for w in s.all_writes() {
                producer[w] = si;
            }
        }
        // The columns of gemm output `v` (None: not a gemm's output, or
        // already in place).
        let gemm_cols = |steps: &[Step], v: usize| match steps.get(producer[v]) {
            Some(st @ Step::Gemm { out, into, .. }) if *out == v => {
                into.is_none().then(|| step_cols(st))
            }
            Some(Step::Gemm { extra, .. }) => extra
                .iter()
                .find(|e| e.out == v && e.into.is_none())
                .map(|e| e.cols),
            _ => None,
        };
        // (part value, concat step, part index, first column, row length)
        let mut found = vec![];
        for (ci, step) in self.steps.iter().enumerate() {
            let Step::Concat { parts, out, .. } = step else {
                continue;
            };
            if shared[*out] {
                continue;
            }
            let row: usize = parts.iter().map(|p| p.1).sum();
            let mut col = 0;
            // One part per producing step: two outputs of a merged gemm in
            // one concatenation would share a buffer the step takes twice.
            let mut producers = vec![];
            for (pi, (v, inner)) in parts.iter().enumerate() {
                if readers[*v] == 1
                    && !shared[*v]
                    && gemm_cols(&self.steps, *v) == Some(*inner)
                    && !producers.contains(&producer[*v])
                {
                    producers.push(producer[*v]);
                    found.push((*v, ci, pi, col, row));
                }
                col += inner;
            }
        }
        let mut part_of = vec![None; nv];
        for (v, ci, pi, col, row) in found {
            if let Some(Step::Gemm {
                out, into, extra, ..
            }) = self.steps.get_mut(producer[v])
            {
                if *out == v {
                    *into = Some((col, row));
                } else if let Some(e) = extra.iter_mut().find(|e| e.out == v) {
                    e.into = Some((col, row));
                }
            }
            if let Some(Step::Concat { written, out, .. }) = self.steps.get_mut(ci) {
                written[pi] = true;
                part_of[v] = Some(*out);
            }
        }
        part_of
    }

    /// Merge sibling 1x1 convolutions - gemm steps reading the same input
    /// in place (`GemmA::Dense`) with no residual and the same scale and
    /// activation, like the first convolution of each Inception branch -
    /// into the first of them: one gemm over their weights side by side,
    /// each sibling's panels written to its own output. The input is read
    /// once instead of once per sibling and the threads share more panels
    /// (block35's three 256 -> 32 convolutions had one panel each). A
    /// sibling joins only if every weight matrix before it fills its
    /// panels (channels a multiple of 32) and it has no output written in
    /// place yet. Runs before buffers are planned.
    fn merge_siblings(&mut self) {
        // What siblings share: the input, k, scale and activation of a
        // 1x1 gemm with no residual, not yet merged or written in place.
        let key = |st: &Step| match st {
            Step::Gemm {
                x,
                a: GemmA::Dense { k, w },
                scale,
                residual: None,
                act,
                into: None,
                extra,
                ..
            } if extra.is_empty() => Some(((*x, *k, *scale, *act), w.n())),
            _ => None,
        };
        let mut i = 0;
        while i < self.steps.len() {
            let Some((kx, n)) = key(&self.steps[i]) else {
                i += 1;
                continue;
            };
            // The siblings after it, while every one before fills its panels.
            let mut group = vec![i];
            let mut full = n % NR == 0;
            for j in i + 1..self.steps.len() {
                match key(&self.steps[j]) {
                    Some((kj, nj)) if kj == kx && full => {
                        group.push(j);
                        full = nj % NR == 0;
                    }
                    _ => {}
                }
            }
            if group.len() < 2 {
                i += 1;
                continue;
            }
            let (x, k, scale, act) = kx;
            let refs: Vec<&PackedB> = group
                .iter()
                .filter_map(|&g| match &self.steps[g] {
                    Step::Gemm {
                        a: GemmA::Dense { w, .. },
                        ..
                    } => Some(w),
                    _ => None,
                })
                .collect();
            let Some(merged) = PackedB::concat(&refs) else {
                i += 1;
                continue;
            };
            // Take the siblings out (last first, so indices hold); the
            // first's place gets the merged step.
            let mut names = vec![];
            let mut outs = vec![];
            for &j in group.iter().rev() {
                let st = if j == i {
                    std::mem::replace(&mut self.steps[j], Step::Input { index: 0, out: 0 })
                } else {
                    self.steps.remove(j)
                };
                if let Step::Gemm { name, a, out, .. } = st {
                    names.push(name);
                    outs.push((out, a.n()));
                }
            }
            names.reverse();
            outs.reverse();
            let mut extra = vec![];
            let mut panel = outs[0].1 / NR;
            for &(out, cols) in &outs[1..] {
                extra.push(Extra {
                    out,
                    first_panel: panel,
                    cols,
                    into: None,
                });
                panel += cols.div_ceil(NR);
            }
            self.steps[i] = Step::Gemm {
                name: names.join(" + "),
                x,
                a: GemmA::Dense { k, w: merged },
                scale,
                residual: None,
                act,
                out: outs[0].0,
                into: None,
                extra,
            };
            i += 1;
        }
    }

    /// The largest alias of value `v` (a reshape never changes the size, but
    /// be safe).
    fn alias_need(&self, v: usize, alias_of: &[Option<usize>]) -> usize {
        (0..self.values.len())
            .filter(|&a| alias_of[a] == Some(v))
            .map(|a| numel(&self.values[a].shape))
            .max()
            .unwrap_or(0)
    }
}
