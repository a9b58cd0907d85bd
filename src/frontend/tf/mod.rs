//! TensorFlow frozen GraphDef -> IR.
//!
//! The file is memory-mapped and decoded with `bytes::Bytes` fields, so
//! weights stay slices of the map. Nodes are converted in topological order
//! by the per-op functions in `ops/`; shape-computing subgraphs (Shape,
//! StridedSlice, Pack, ...) fold to constants on the way. Every node that
//! cannot be converted is collected and reported at once.

pub mod attrs;
pub mod build;
pub mod bundle;
pub mod ops;
pub mod saved;
pub mod tensor;

pub use saved::{ModelForm, SourceOptions};

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;

use bytes::Bytes;
use protobuf::Message;

use crate::error::{Error, Result, Unsupported};
use crate::ir::{Fact, Graph, Op, Tensor, Wire};
use crate::proto::graph::{GraphDef, NodeDef};

/// Options for reading a graph.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Shapes for inputs whose shape the graph leaves unknown (name -> dims).
    pub input_shapes: HashMap<String, Vec<usize>>,
    /// Graph outputs by tensor name; default: the signature's outputs of a
    /// SavedModel, else nodes nobody consumes.
    pub outputs: Vec<String>,
    /// Signature, tag set and checkpoint of a SavedModel or `.meta` file.
    pub source: SourceOptions,
}

/// A GraphDef decoded from a file (or resolved from a SavedModel or
/// checkpoint), with the bytes it borrows from.
pub struct TfModel {
    pub graph_def: GraphDef,
    /// Size of the model's files in bytes (graph plus checkpoint values).
    pub file_size: u64,
    pub form: ModelForm,
    /// The signature's inputs and outputs (empty for a frozen graph).
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    /// Variables read from a checkpoint.
    pub variables: usize,
    /// The files it was read from (graph first; then a checkpoint's index
    /// and shards).
    pub files: Vec<std::path::PathBuf>,
}

/// Map and decode a frozen GraphDef, SavedModel directory or `.meta` file
/// (with its checkpoint). Errors name the file.
pub fn read_graph_def(path: &Path) -> Result<TfModel> {
    read_model(path, &SourceOptions::default())
}

/// [`read_graph_def`] with the signature, tags and checkpoint to use.
pub fn read_model(path: &Path, src: &SourceOptions) -> Result<TfModel> {
    let resolved = if let Some(dir) = saved::saved_model_dir(path) {
        Some(saved::read_saved_model(&dir, src)?)
    } else if path.extension().is_some_and(|e| e == "meta") {
        Some(saved::read_meta_checkpoint(path, src)?)
    } else {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.ends_with(".index") || name.contains(".data-0") {
            return Err(Error::Format(
                "is part of a checkpoint; pass its .meta file (with --checkpoint PREFIX if it is not beside it)".into(),
            )
            .in_file(path));
        }
        None
    };
    if let Some(r) = resolved {
        let graph_size = match &r.form {
            ModelForm::SavedModel { dir, .. } => std::fs::metadata(dir.join("saved_model.pb"))
                .map(|m| m.len())
                .unwrap_or(0),
            ModelForm::Checkpoint { meta, .. } => {
                std::fs::metadata(meta).map(|m| m.len()).unwrap_or(0)
            }
            ModelForm::Frozen => 0,
        };
        return Ok(TfModel {
            graph_def: r.graph_def,
            file_size: graph_size + r.variable_bytes,
            form: r.form,
            inputs: r.inputs,
            outputs: r.outputs,
            variables: r.variables,
            files: r.files,
        });
    }
    read_graph_def_inner(path).map_err(|e| e.in_file(path))
}

/// A memory-mapped file as shared bytes (empty for an empty file): the
/// GraphDef's weights and a checkpoint's tensors stay slices of it.
pub(crate) fn map_file(path: &Path) -> Result<Bytes> {
    let file = std::fs::File::open(path)?;
    if file.metadata()?.len() == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: the map is read-only; faceall does not write model files it
    // reads, and a concurrent truncation by another process is outside what
    // any reader of a memory-mapped file can defend against.
    let map = unsafe { memmap2::Mmap::map(&file)? };
    Ok(Bytes::from_owner(map))
}

fn read_graph_def_inner(path: &Path) -> Result<TfModel> {
    let meta = std::fs::metadata(path)?;
    if meta.len() == 0 {
        return Err(Error::Format(
            "empty file: not a TensorFlow GraphDef".into(),
        ));
    }
    let bytes = map_file(path)?;
    let graph_def = saved::inline_frozen(parse_graph_def(&bytes)?, path)?;
    Ok(TfModel {
        graph_def,
        file_size: meta.len(),
        form: ModelForm::Frozen,
        inputs: vec![],
        outputs: vec![],
        variables: 0,
        files: vec![path.to_path_buf()],
    })
}

/// Decode GraphDef bytes and check that they look like one.
pub fn parse_graph_def(bytes: &Bytes) -> Result<GraphDef> {
    let g = GraphDef::parse_from_tokio_bytes(bytes)
        .map_err(|e| Error::Format(format!("not a TensorFlow GraphDef (protobuf: {e})")))?;
    if g.node.is_empty() {
        return Err(Error::Format(
            "not a TensorFlow GraphDef: it has no nodes".into(),
        ));
    }
    if let Some(bad) = g.node.iter().find(|n| n.name.is_empty() || n.op.is_empty()) {
        return Err(Error::Format(format!(
            "not a TensorFlow GraphDef: a node has an empty {} ('{}' / '{}')",
            if bad.name.is_empty() { "name" } else { "op" },
            bad.name,
            bad.op
        )));
    }
    Ok(g)
}

/// Read a frozen graph file into the IR.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Graph> {
    let model = read_model(path, &source_options(opts))?;
    import_model(&model, opts).map_err(|e| e.in_file(path))
}

/// The source options of `opts`, with its outputs (they decide what of a
/// SavedModel or meta graph is kept).
pub fn source_options(opts: &LoadOptions) -> SourceOptions {
    SourceOptions {
        outputs: opts.outputs.clone(),
        ..opts.source.clone()
    }
}

/// Import a read model: outputs default to its signature's.
///
/// A SavedModel or checkpoint almost always leaves the batch dimension of
/// its inputs unknown (`None` in Keras); an input whose only unknown
/// dimension is the first is read with batch 1 unless `--input-shape`
/// says otherwise. A frozen graph keeps asking (its author froze a shape).
pub fn import_model(model: &TfModel, opts: &LoadOptions) -> Result<Graph> {
    let mut with = opts.clone();
    if opts.outputs.is_empty() && !model.outputs.is_empty() {
        with.outputs = model.outputs.clone();
    }
    if model.form != ModelForm::Frozen {
        for n in &model.graph_def.node {
            if n.op != "Placeholder" || with.input_shapes.contains_key(&n.name) {
                continue;
            }
            let dims = attrs::opt_shape(n, "shape")
                .ok()
                .flatten()
                .and_then(tensor::shape_dims);
            if let Some(d) = dims {
                if let Some((None, rest)) = d.split_first() {
                    if let Some(rest) = rest.iter().copied().collect::<Option<Vec<usize>>>() {
                        let mut shape = vec![1];
                        shape.extend(rest);
                        with.input_shapes.insert(n.name.clone(), shape);
                    }
                }
            }
        }
    }
    import(&model.graph_def, &with)
}

/// A parsed input reference "name", "name:k" or "^ctrl".
struct InputRef<'a> {
    node: &'a str,
    slot: usize,
}

fn parse_input(s: &str) -> Option<InputRef<'_>> {
    if s.starts_with('^') {
        return None;
    }
    let (node, slot) = crate::ir::split_tensor_name(s);
    Some(InputRef { node, slot })
}

/// Order nodes so that every node comes after its data inputs.
fn topo_order(g: &GraphDef) -> Result<Vec<usize>> {
    let mut index = HashMap::with_capacity(g.node.len());
    for (i, n) in g.node.iter().enumerate() {
        if index.insert(n.name.as_str(), i).is_some() {
            return Err(Error::Graph(format!("two nodes named '{}'", n.name)));
        }
    }
    let mut indeg = vec![0usize; g.node.len()];
    let mut users = vec![vec![]; g.node.len()];
    for (i, n) in g.node.iter().enumerate() {
        for inp in &n.input {
            let name = inp.strip_prefix('^').unwrap_or(inp);
            let base = crate::ir::split_tensor_name(name).0;
            let j = *index.get(base).ok_or_else(|| {
                Error::node(
                    &n.name,
                    &n.op,
                    format!("input '{inp}' names no node in the graph"),
                )
            })?;
            indeg[i] += 1;
            users[j].push(i);
        }
    }
    let mut queue: VecDeque<usize> = (0..g.node.len()).filter(|&i| indeg[i] == 0).collect();
    let mut order = Vec::with_capacity(g.node.len());
    while let Some(i) = queue.pop_front() {
        order.push(i);
        for &u in &users[i] {
            indeg[u] -= 1;
            if indeg[u] == 0 {
                queue.push_back(u);
            }
        }
    }
    if order.len() != g.node.len() {
        let mut stuck: Vec<&str> = (0..g.node.len())
            .filter(|&i| indeg[i] > 0)
            .map(|i| g.node[i].name.as_str())
            .collect();
        let n = stuck.len();
        stuck.truncate(8);
        return Err(Error::Graph(format!(
            "the graph has a cycle through {n} node(s), e.g. {} (loops such as tf.while are not supported)",
            stuck.join(", ")
        )));
    }
    Ok(order)
}

/// State shared by the per-op converters.
pub struct Ctx<'a> {
    pub graph: Graph,
    /// TF (node, output) -> IR wire.
    map: HashMap<(&'a str, usize), Wire>,
    pub opts: &'a LoadOptions,
}

/// The inputs of one TF node as IR wires, with helpers for converters.
pub struct NodeCtx<'c, 'a> {
    pub ctx: &'c mut Ctx<'a>,
    pub node: &'a NodeDef,
    pub inputs: Vec<Wire>,
}

impl<'c, 'a> NodeCtx<'c, 'a> {
    pub fn err(&self, msg: impl Into<String>) -> Error {
        attrs::err(self.node, msg)
    }

    pub fn expect_inputs(&self, n: usize) -> Result<()> {
        if self.inputs.len() != n {
            return Err(self.err(format!("expects {n} inputs, has {}", self.inputs.len())));
        }
        Ok(())
    }

    pub fn input(&self, i: usize) -> Result<Wire> {
        self.inputs
            .get(i)
            .copied()
            .ok_or_else(|| self.err(format!("missing input #{i}")))
    }

    pub fn fact(&self, i: usize) -> Result<&Fact> {
        let w = self.input(i)?;
        self.ctx.graph.fact(w)
    }

    /// The value of input `i` if it is a constant.
    pub fn const_input(&self, i: usize) -> Result<Option<&Tensor>> {
        let w = self.input(i)?;
        Ok(match self.ctx.graph.nodes.get(w.node).map(|n| &n.op) {
            Some(Op::Const(t)) if w.slot == 0 => Some(t),
            _ => None,
        })
    }

    /// Input `i`, which must be constant (axes, shapes, paddings).
    pub fn required_const(&self, i: usize, what: &str) -> Result<&Tensor> {
        self.const_input(i)?
            .ok_or_else(|| self.err(format!("{what} (input #{i}) must be a constant")))
    }

    /// Add this TF node as one IR node with the given inputs.
    pub fn push(&mut self, op: Op, inputs: Vec<Wire>) -> Result<Vec<Wire>> {
        let n = op.num_outputs();
        let id = self
            .ctx
            .graph
            .push(&self.node.name, &self.node.op, op, inputs)?;
        Ok((0..n).map(|slot| Wire { node: id, slot }).collect())
    }

    /// Add this TF node as a constant (folded at import).
    pub fn push_const(&mut self, t: Tensor) -> Result<Vec<Wire>> {
        self.push(Op::Const(t), vec![])
    }
}

/// Convert a decoded GraphDef into the IR.
pub fn import(g: &GraphDef, opts: &LoadOptions) -> Result<Graph> {
    let order = topo_order(g)?;
    let mut ctx = Ctx {
        graph: Graph::default(),
        map: HashMap::new(),
        opts,
    };
    let mut unsupported = vec![];
    let mut failed: HashSet<&str> = HashSet::new();
    let mut consumed: HashSet<&str> = HashSet::new();
    for &i in &order {
        let node = &g.node[i];
        let refs: Vec<InputRef> = node.input.iter().filter_map(|s| parse_input(s)).collect();
        for r in &refs {
            consumed.insert(r.node);
        }
        // A node fed by a node that already failed is not reported again.
        if refs.iter().any(|r| failed.contains(r.node)) {
            failed.insert(&node.name);
            continue;
        }
        let mut inputs = Vec::with_capacity(refs.len());
        let mut missing = None;
        for r in &refs {
            match ctx.map.get(&(r.node, r.slot)) {
                Some(w) => inputs.push(*w),
                None => {
                    missing = Some(format!(
                        "reads output {} of '{}', which is not supported",
                        r.slot, r.node
                    ))
                }
            }
        }
        let result = match missing {
            Some(m) => Err(Error::node(&node.name, &node.op, m)),
            None => {
                let mut nc = NodeCtx {
                    ctx: &mut ctx,
                    node,
                    inputs,
                };
                ops::convert(&mut nc)
            }
        };
        match result {
            Ok(wires) => {
                for (slot, w) in wires.into_iter().enumerate() {
                    ctx.map.insert((node.name.as_str(), slot), w);
                }
            }
            Err(Error::Node { node: n, op, msg }) => {
                unsupported.push(Unsupported {
                    node: n,
                    op,
                    reason: msg,
                });
                failed.insert(&node.name);
            }
            Err(e) => {
                unsupported.push(Unsupported {
                    node: node.name.clone(),
                    op: node.op.clone(),
                    reason: e.to_string(),
                });
                failed.insert(&node.name);
            }
        }
    }
    if !unsupported.is_empty() {
        return Err(Error::Unsupported(unsupported));
    }
    let mut graph = ctx.graph;
    graph.inputs = graph
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| matches!(n.op, Op::Input))
        .map(|(i, _)| i)
        .collect();
    graph.outputs = if opts.outputs.is_empty() {
        order
            .iter()
            .map(|&i| &g.node[i])
            .filter(|n| !consumed.contains(n.name.as_str()))
            .filter(|n| !matches!(n.op.as_str(), "Const" | "NoOp" | "Placeholder" | "Assert"))
            .filter_map(|n| ctx.map.get(&(n.name.as_str(), 0)).copied())
            .filter(|w| !matches!(graph.nodes[w.node].op, Op::Const(_)))
            // Bool pivots of tf.cond and other non-float leftovers are not outputs.
            .filter(|w| graph.nodes[w.node].outputs[w.slot].dtype == crate::ir::DType::F32)
            .collect()
    } else {
        opts.outputs
            .iter()
            .map(|name| graph.wire_by_name(name))
            .collect::<Result<_>>()?
    };
    graph.validate()?;
    Ok(graph)
}
