//! The forms TensorFlow models are kept in besides frozen graphs, read
//! without TensorFlow: SavedModel directories (TF1 and TF2) and TF1
//! checkpoints (`model.meta` + `model.ckpt-N.{index,data-*}`).
//!
//! Each becomes the frozen GraphDef the converter already reads:
//! 1. pick the meta graph (`--tag-set`, default `serve`) and the signature
//!    (`--signature`, default `serving_default`) whose inputs and outputs
//!    become the model's;
//! 2. inline every function call the outputs reach (`PartitionedCall`,
//!    `StatefulPartitionedCall`, or a node whose op is a library function),
//!    nested; inlined nodes are named `CALL/NODE`, so every name still leads
//!    back to a TF node;
//! 3. replace each variable by a `Const` holding its value from the
//!    checkpoint, a slice of the memory-mapped shard: TF1 `VariableV2` and
//!    `VarHandleOp` by name, TF2 `VarHandleOp` through the SavedModel's
//!    object graph (the objects a concrete function captures) and the
//!    checkpoint's object graph (each object's checkpoint key); a
//!    `ReadVariableOp` becomes an `Identity`;
//! 4. keep only what the outputs need (savers, initialisers and training
//!    ops drop out) and drop control edges (they order stateful ops, which
//!    an inference graph no longer has).

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use protobuf::Message;

use super::bundle::{index_path, Bundle};
use crate::error::{Error, Result};
use crate::proto::graph::{
    attr_value, AttrValue, FunctionDef, FunctionDefLibrary, GraphDef, NodeDef, OpDef, TensorProto,
};
use crate::proto::saved_model::{MetaGraphDef, SavedModel, TrackableObjectGraph};

/// Which part of a SavedModel or checkpoint to read.
#[derive(Debug, Clone, Default)]
pub struct SourceOptions {
    /// Signature key (default `serving_default`).
    pub signature: Option<String>,
    /// Comma-separated tags of the meta graph (default `serve`).
    pub tag_set: Option<String>,
    /// Checkpoint prefix for a `.meta` file (default: found next to it).
    pub checkpoint: Option<PathBuf>,
    /// Tensors the caller will take as outputs (`--output`), besides the
    /// signature's: what they need is kept.
    pub outputs: Vec<String>,
}

/// The form a model was read from, for reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelForm {
    Frozen,
    SavedModel {
        dir: PathBuf,
        tags: Vec<String>,
        /// The signature used, if the meta graph has any.
        signature: Option<String>,
        /// TF2 (object graph) or TF1 (variables by name).
        tf2: bool,
    },
    Checkpoint {
        meta: PathBuf,
        prefix: PathBuf,
    },
}

impl ModelForm {
    pub fn describe(&self) -> String {
        match self {
            ModelForm::Frozen => "frozen GraphDef".into(),
            ModelForm::SavedModel {
                tags,
                signature,
                tf2,
                ..
            } => format!(
                "{} SavedModel, tags {{{}}}{}",
                if *tf2 { "TF2" } else { "TF1" },
                tags.join(","),
                signature
                    .as_ref()
                    .map(|s| format!(", signature '{s}'"))
                    .unwrap_or_default()
            ),
            ModelForm::Checkpoint { prefix, .. } => {
                format!("TF1 meta graph + checkpoint {}", prefix.display())
            }
        }
    }
}

/// A model resolved to a frozen GraphDef.
pub struct Resolved {
    pub graph_def: GraphDef,
    pub form: ModelForm,
    /// Input and output tensors as the signature names them (empty when
    /// the meta graph declares no signature).
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    /// Variables replaced by checkpoint values, and their bytes.
    pub variables: usize,
    pub variable_bytes: u64,
    /// The files the model was read from: the graph, then the checkpoint's
    /// index and shards (provenance hashes cover them all).
    pub files: Vec<PathBuf>,
}

/// Is `path` a SavedModel directory, or its `saved_model.pb`?
pub fn saved_model_dir(path: &Path) -> Option<PathBuf> {
    if path.is_dir() {
        return Some(path.to_path_buf());
    }
    let parent = path.parent()?;
    (path.file_name()? == "saved_model.pb").then(|| parent.to_path_buf())
}

fn map(path: &Path) -> Result<Bytes> {
    let bytes = super::map_file(path)?;
    if bytes.is_empty() {
        return Err(Error::Format("empty file".into()));
    }
    Ok(bytes)
}

/// Read a SavedModel directory.
pub fn read_saved_model(dir: &Path, opts: &SourceOptions) -> Result<Resolved> {
    let pb = dir.join("saved_model.pb");
    if !pb.exists() {
        let hint = if dir.join("saved_model.pbtxt").exists() {
            "has a text saved_model.pbtxt only; faceall reads the binary saved_model.pb"
        } else if dir.join("keras_metadata.pb").exists() || dir.join("config.json").exists() {
            "is not a SavedModel (no saved_model.pb); a Keras model must be exported (model.export) first"
        } else {
            "is not a SavedModel: it has no saved_model.pb"
        };
        return Err(Error::Format(hint.into()).in_file(dir));
    }
    let bytes = map(&pb).map_err(|e| e.in_file(&pb))?;
    let sm = SavedModel::parse_from_tokio_bytes(&bytes)
        .map_err(|e| Error::Format(format!("not a SavedModel (protobuf: {e})")).in_file(&pb))?;
    let want: Vec<String> = opts
        .tag_set
        .as_deref()
        .unwrap_or("serve")
        .split(',')
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    let tags_of = |mg: &MetaGraphDef| -> Vec<String> {
        mg.meta_info_def
            .as_ref()
            .map(|m| m.tags.clone())
            .unwrap_or_default()
    };
    let same = |a: &[String], b: &[String]| {
        let (x, y): (HashSet<_>, HashSet<_>) = (a.iter().collect(), b.iter().collect());
        x == y
    };
    let n_graphs = sm.meta_graphs.len();
    let pick = sm
        .meta_graphs
        .iter()
        .position(|mg| same(&tags_of(mg), &want))
        .or_else(|| (opts.tag_set.is_none() && n_graphs == 1).then_some(0));
    let Some(pick) = pick else {
        let have: Vec<String> = sm
            .meta_graphs
            .iter()
            .map(|mg| format!("{{{}}}", tags_of(mg).join(",")))
            .collect();
        return Err(Error::Usage(format!(
            "no meta graph with tags {{{}}}; this SavedModel has {} (choose with --tag-set)",
            want.join(","),
            if have.is_empty() {
                "none".to_string()
            } else {
                have.join(", ")
            }
        ))
        .in_file(&pb));
    };
    let mut sm = sm;
    let mg = sm.meta_graphs.swap_remove(pick);
    let tags = tags_of(&mg);
    let prefix = dir.join("variables").join("variables");
    let bundle = if index_path(&prefix).exists() {
        Some(Bundle::open(&prefix)?)
    } else {
        None
    };
    let tf2 = mg
        .object_graph_def
        .as_ref()
        .is_some_and(|o| !o.concrete_functions.is_empty());
    let (mut resolved, signature) = resolve(mg, bundle.as_ref(), opts, &pb)?;
    if let Some(b) = &bundle {
        resolved.files.extend(b.files());
    }
    Ok(Resolved {
        form: ModelForm::SavedModel {
            dir: dir.to_path_buf(),
            tags,
            signature,
            tf2,
        },
        ..resolved
    })
}

/// The checkpoint prefix for `model.meta`: `--checkpoint`, else the prefix
/// named by a `checkpoint` file beside it, else the one `*.index` whose name
/// starts with the meta file's stem.
pub fn find_checkpoint(meta: &Path, opts: &SourceOptions) -> Result<PathBuf> {
    if let Some(p) = &opts.checkpoint {
        let p = p
            .to_str()
            .and_then(|s| s.strip_suffix(".index"))
            .map(PathBuf::from)
            .unwrap_or_else(|| p.clone());
        return Ok(p);
    }
    let dir = meta
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let stem = meta
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    let direct = dir.join(&stem);
    if index_path(&direct).exists() {
        return Ok(direct);
    }
    if let Ok(text) = std::fs::read_to_string(dir.join("checkpoint")) {
        for line in text.lines() {
            if let Some(rest) = line.trim().strip_prefix("model_checkpoint_path:") {
                // The file beside the meta graph first: a checkpoint
                // directory that was copied or moved keeps absolute paths
                // to where it was written.
                let name = Path::new(rest.trim().trim_matches('"'));
                let beside = name.file_name().map(|f| dir.join(f));
                let literal = if name.is_absolute() {
                    name.to_path_buf()
                } else {
                    dir.join(name)
                };
                for p in beside.into_iter().chain([literal]) {
                    if index_path(&p).exists() {
                        return Ok(p);
                    }
                }
            }
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let pre = name.strip_suffix(".index")?;
            pre.starts_with(&stem).then(|| dir.join(pre))
        })
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(Error::Usage(format!(
            "no checkpoint found for this meta graph (no {stem}*.index beside it and no 'checkpoint' file naming one); pass --checkpoint PREFIX"
        ))
        .in_file(meta)),
        _ => Err(Error::Usage(format!(
            "several checkpoints beside this meta graph ({}); choose one with --checkpoint PREFIX",
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .in_file(meta)),
    }
}

/// Read a TF1 `.meta` file and its checkpoint.
pub fn read_meta_checkpoint(meta: &Path, opts: &SourceOptions) -> Result<Resolved> {
    let bytes = map(meta).map_err(|e| e.in_file(meta))?;
    let mg = MetaGraphDef::parse_from_tokio_bytes(&bytes).map_err(|e| {
        Error::Format(format!("not a TensorFlow MetaGraphDef (protobuf: {e})")).in_file(meta)
    })?;
    if mg.graph_def.as_ref().is_none_or(|g| g.node.is_empty()) {
        return Err(
            Error::Format("not a TensorFlow MetaGraphDef: it has no graph".into()).in_file(meta),
        );
    }
    let prefix = find_checkpoint(meta, opts)?;
    let bundle = Bundle::open(&prefix)?;
    let (mut resolved, _) = resolve(mg, Some(&bundle), opts, meta)?;
    resolved.files.extend(bundle.files());
    Ok(Resolved {
        form: ModelForm::Checkpoint {
            meta: meta.to_path_buf(),
            prefix,
        },
        ..resolved
    })
}

const CALL_OPS: [&str; 2] = ["PartitionedCall", "StatefulPartitionedCall"];
const VARIABLE_OPS: [&str; 4] = ["VariableV2", "Variable", "VarHandleOp", "VariableV1"];
/// Nested calls deeper than this are taken for recursion.
const MAX_CALL_DEPTH: usize = 64;

/// Output arguments of common multi-output ops, for meta graphs without a
/// stripped op list (flat offset of each argument; all are single tensors).
fn builtin_output_args(op: &str) -> Option<&'static [&'static str]> {
    Some(match op {
        "FusedBatchNorm" | "FusedBatchNormV2" | "FusedBatchNormV3" => &[
            "y",
            "batch_mean",
            "batch_variance",
            "reserve_space_1",
            "reserve_space_2",
            "reserve_space_3",
        ],
        "Switch" | "RefSwitch" => &["output_false", "output_true"],
        "Merge" | "RefMerge" => &["output", "value_index"],
        "Unique" => &["y", "idx"],
        "TopKV2" => &["values", "indices"],
        "MaxPoolWithArgmax" => &["output", "argmax"],
        _ => return None,
    })
}

struct Inliner<'a> {
    functions: HashMap<&'a str, &'a FunctionDef>,
    op_defs: HashMap<&'a str, &'a OpDef>,
    file: &'a Path,
}

fn attr_count(node: &NodeDef, attr: &str) -> Option<usize> {
    let v = node.attr.get(attr)?;
    match &v.value {
        Some(attr_value::Value::I(i)) => usize::try_from(*i).ok(),
        Some(attr_value::Value::List(l)) => Some(l.type_.len()),
        _ => None,
    }
}

impl<'a> Inliner<'a> {
    /// The library's functions by name, and the op definitions (a meta
    /// graph's stripped op list) that number named output arguments.
    fn new(library: &'a FunctionDefLibrary, ops: &'a [OpDef], file: &'a Path) -> Self {
        Inliner {
            functions: library
                .function
                .iter()
                .filter_map(|f| f.signature.as_ref().map(|s| (s.name.as_str(), f)))
                .collect(),
            op_defs: ops.iter().map(|o| (o.name.as_str(), o)).collect(),
            file,
        }
    }

    fn err(&self, node: &NodeDef, msg: impl Into<String>) -> Error {
        Error::node(&node.name, &node.op, msg).in_file(self.file)
    }

    /// The function a node calls, if it is a call.
    fn callee(&self, node: &NodeDef) -> Result<Option<&'a FunctionDef>> {
        let name = if CALL_OPS.contains(&node.op.as_str()) {
            match node.attr.get("f").and_then(|a| a.value.as_ref()) {
                Some(attr_value::Value::Func(f)) => f.name.clone(),
                _ => return Err(self.err(node, "a call without a function attribute 'f'")),
            }
        } else if self.functions.contains_key(node.op.as_str()) {
            node.op.clone()
        } else {
            return Ok(None);
        };
        self.functions
            .get(name.as_str())
            .copied()
            .map(Some)
            .ok_or_else(|| {
                self.err(
                    node,
                    format!("calls function '{name}', which the graph's library does not have"),
                )
            })
    }

    /// Flat output index of `node`'s output argument `arg`, entry `idx`.
    fn flat_index(&self, node: &NodeDef, arg: &str, idx: usize) -> Result<usize> {
        let sig: Option<&OpDef> = if CALL_OPS.contains(&node.op.as_str()) {
            return Ok(idx);
        } else if let Some(f) = self.functions.get(node.op.as_str()) {
            f.signature.as_ref()
        } else {
            self.op_defs.get(node.op.as_str()).copied()
        };
        if let Some(sig) = sig {
            let mut off = 0;
            for a in &sig.output_arg {
                let n = if !a.number_attr.is_empty() {
                    attr_count(node, &a.number_attr)
                } else if !a.type_list_attr.is_empty() {
                    attr_count(node, &a.type_list_attr)
                } else {
                    Some(1)
                }
                .ok_or_else(|| {
                    self.err(
                        node,
                        format!("cannot tell how many tensors output '{}' has", a.name),
                    )
                })?;
                if a.name == arg {
                    return Ok(off + idx);
                }
                off += n;
            }
            return Err(self.err(node, format!("has no output argument '{arg}'")));
        }
        if let Some(args) = builtin_output_args(&node.op) {
            return args
                .iter()
                .position(|a| *a == arg)
                .map(|p| p + idx)
                .ok_or_else(|| self.err(node, format!("has no output argument '{arg}'")));
        }
        // Ops with one output argument (all others faceall converts).
        Ok(idx)
    }

    /// Inline `call` (a node of the working graph): its body goes into
    /// `nodes` named `CALL/NODE`, and the call becomes an `IdentityN` of the
    /// function's results, so `CALL:k` still names output k. Returns that
    /// node and the names of the body's nodes, in the function's order.
    fn inline(
        &self,
        call: &NodeDef,
        f: &FunctionDef,
        nodes: &mut HashMap<String, NodeDef>,
    ) -> Result<(NodeDef, Vec<String>)> {
        let sig = f
            .signature
            .as_ref()
            .ok_or_else(|| self.err(call, "its function has no signature"))?;
        let fname = &sig.name;
        let args: Vec<&str> = call
            .input
            .iter()
            .filter(|s| !s.starts_with('^'))
            .map(String::as_str)
            .collect();
        if sig
            .input_arg
            .iter()
            .any(|a| !a.number_attr.is_empty() || !a.type_list_attr.is_empty())
        {
            return Err(self.err(
                call,
                format!("function '{fname}' takes list arguments (not a concrete function)"),
            ));
        }
        if args.len() != sig.input_arg.len() {
            return Err(self.err(
                call,
                format!(
                    "passes {} inputs to function '{fname}', which takes {}",
                    args.len(),
                    sig.input_arg.len()
                ),
            ));
        }
        let arg_of: HashMap<&str, &str> = sig
            .input_arg
            .iter()
            .map(|a| a.name.as_str())
            .zip(args.iter().copied())
            .collect();
        let body: HashMap<&str, &NodeDef> =
            f.node_def.iter().map(|n| (n.name.as_str(), n)).collect();
        let prefix = &call.name;
        let rewrite = |s: &str, user: &NodeDef| -> Result<Option<String>> {
            if s.starts_with('^') {
                return Ok(None);
            }
            let parts: Vec<&str> = s.split(':').collect();
            match parts.as_slice() {
                [a] | [a, "0"] if arg_of.contains_key(a) => Ok(Some(arg_of[a].to_string())),
                [n, arg, idx] => {
                    let inner = body.get(n).ok_or_else(|| {
                        self.err(user, format!("in function '{fname}': input '{s}' names no node of the body"))
                    })?;
                    let idx: usize = idx.parse().map_err(|_| {
                        self.err(user, format!("in function '{fname}': bad input '{s}'"))
                    })?;
                    let k = self.flat_index(inner, arg, idx)?;
                    Ok(Some(if k == 0 {
                        format!("{prefix}/{n}")
                    } else {
                        format!("{prefix}/{n}:{k}")
                    }))
                }
                _ => Err(self.err(user, format!("in function '{fname}': input '{s}' is neither an argument nor node:output:index"))),
            }
        };
        let mut added = Vec::with_capacity(f.node_def.len());
        for n in &f.node_def {
            if n.attr
                .values()
                .any(|a| matches!(a.value, Some(attr_value::Value::Placeholder(_))))
            {
                return Err(self.err(
                    n,
                    format!("in function '{fname}': an attribute is a placeholder of the function (a polymorphic function, not a concrete one)"),
                ));
            }
            let mut m = n.clone();
            m.name = format!("{prefix}/{}", n.name);
            m.input = vec![];
            for s in &n.input {
                if let Some(r) = rewrite(s, n)? {
                    m.input.push(r);
                }
            }
            if nodes.contains_key(&m.name) {
                return Err(self.err(
                    call,
                    format!("inlining '{fname}' would create a second node '{}'", m.name),
                ));
            }
            added.push(m.name.clone());
            nodes.insert(m.name.clone(), m);
        }
        let mut id = NodeDef::new();
        id.name = call.name.clone();
        id.op = "IdentityN".into();
        for a in &sig.output_arg {
            let r = f.ret.get(&a.name).ok_or_else(|| {
                self.err(
                    call,
                    format!("function '{fname}' returns nothing for output '{}'", a.name),
                )
            })?;
            if let Some(r) = rewrite(r, call)? {
                id.input.push(r);
            }
        }
        Ok((id, added))
    }
}

/// Could a node nobody reads be a model's output? Not the parts of a
/// training graph that only train, save, initialise or branch.
fn is_inference_output(n: &NodeDef) -> bool {
    const NOT: &[&str] = &[
        "NoOp",
        "Const",
        "Assign",
        "AssignVariableOp",
        "AssignAdd",
        "AssignSub",
        "SaveV2",
        "RestoreV2",
        "MergeV2Checkpoints",
        "Placeholder",
        "PlaceholderWithDefault",
        "VariableV2",
        "VarHandleOp",
        "VarIsInitializedOp",
        "IsVariableInitialized",
        "Switch",
        "Merge",
        "Identity",
        "ReadVariableOp",
    ];
    let top = n.name.split('/').next().unwrap_or_default();
    !NOT.contains(&n.op.as_str())
        && !matches!(
            top,
            "save" | "init" | "report_uninitialized_variables" | "gradients"
        )
        && !n.name.starts_with("Adam")
        && !n.name.contains("/Initializer/")
}

fn const_node(name: &str, value: TensorProto) -> NodeDef {
    let mut n = NodeDef::new();
    n.name = name.to_string();
    n.op = "Const".into();
    let mut dt = AttrValue::new();
    dt.value = Some(attr_value::Value::Type(value.dtype));
    n.attr.insert("dtype".into(), dt);
    let mut v = AttrValue::new();
    v.value = Some(attr_value::Value::Tensor(value));
    n.attr.insert("value".into(), v);
    n
}

fn base(s: &str) -> &str {
    crate::ir::split_tensor_name(s.strip_prefix('^').unwrap_or(s)).0
}

/// TF2: graph variable node -> checkpoint key, through the concrete
/// functions' captured objects and the checkpoint's object graph.
fn tf2_variable_keys(mg: &MetaGraphDef, bundle: &Bundle) -> Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    let Some(og) = mg.object_graph_def.as_ref() else {
        return Ok(out);
    };
    if og.concrete_functions.is_empty() || !bundle.contains("_CHECKPOINTABLE_OBJECT_GRAPH") {
        return Ok(out);
    }
    let bytes = bundle.string_scalar("_CHECKPOINTABLE_OBJECT_GRAPH")?;
    let tog = TrackableObjectGraph::parse_from_tokio_bytes(&bytes).map_err(|e| {
        Error::Format(format!(
            "tensor '_CHECKPOINTABLE_OBJECT_GRAPH': corrupt object graph: {e}"
        ))
        .in_file(index_path(bundle.prefix()))
    })?;
    let key_of = |id: i32| -> Option<String> {
        let node = tog.nodes.get(usize::try_from(id).ok()?)?;
        node.attributes
            .iter()
            .find(|a| a.name == "VARIABLE_VALUE")
            .map(|a| a.checkpoint_key.clone())
    };
    let Some(g) = mg.graph_def.as_ref() else {
        return Ok(out);
    };
    for n in &g.node {
        if !CALL_OPS.contains(&n.op.as_str()) {
            continue;
        }
        let Some(attr_value::Value::Func(f)) = n.attr.get("f").and_then(|a| a.value.as_ref())
        else {
            continue;
        };
        let Some(cf) = og.concrete_functions.get(&f.name) else {
            continue;
        };
        let data: Vec<&String> = n.input.iter().filter(|s| !s.starts_with('^')).collect();
        let Some(first) = data.len().checked_sub(cf.bound_inputs.len()) else {
            continue;
        };
        for (inp, &id) in data[first..].iter().zip(&cf.bound_inputs) {
            if let Some(k) = key_of(id) {
                out.entry(base(inp).to_string()).or_insert(k);
            }
        }
    }
    Ok(out)
}

/// Inline the function calls of a frozen GraphDef that carries a function
/// library (Keras 3 keeps some layers as functions even when frozen with
/// `aggressive_inlining`: ConvNeXt's grouped convolutions). Every node is
/// kept; each call becomes an `IdentityN` of its inlined body (`CALL/NODE`),
/// nested calls too. A graph without calls is returned as it is.
pub fn inline_frozen(mut graph: GraphDef, file: &Path) -> Result<GraphDef> {
    let library = graph.library.take().unwrap_or_default();
    let inl = Inliner::new(&library, &[], file);
    let calls = |n: &NodeDef| {
        CALL_OPS.contains(&n.op.as_str()) || inl.functions.contains_key(n.op.as_str())
    };
    if !graph.node.iter().any(calls) {
        return Ok(graph);
    }
    let mut nodes: HashMap<String, NodeDef> = HashMap::with_capacity(graph.node.len());
    let mut order: Vec<(String, usize)> = vec![];
    for n in std::mem::take(&mut graph.node) {
        order.push((n.name.clone(), 0));
        if let Some(dup) = nodes.insert(n.name.clone(), n) {
            return Err(Error::Graph(format!("two nodes named '{}'", dup.name)).in_file(file));
        }
    }
    let mut i = 0;
    while let Some((name, depth)) = order.get(i).cloned() {
        i += 1;
        let Some(node) = nodes.get(&name) else {
            continue;
        };
        let Some(f) = inl.callee(node)? else {
            continue;
        };
        if depth >= MAX_CALL_DEPTH {
            return Err(inl.err(node, "function calls nest more than 64 deep (recursion?)"));
        }
        let node = node.clone();
        let (id, added) = inl.inline(&node, f, &mut nodes)?;
        order.extend(added.into_iter().map(|k| (k, depth + 1)));
        nodes.insert(name, id);
    }
    graph.node = order
        .into_iter()
        .filter_map(|(name, _)| nodes.remove(&name))
        .collect();
    Ok(graph)
}

/// Resolve a meta graph to a frozen GraphDef; returns it with the signature
/// used.
fn resolve(
    mut mg: MetaGraphDef,
    bundle: Option<&Bundle>,
    opts: &SourceOptions,
    file: &Path,
) -> Result<(Resolved, Option<String>)> {
    // The signature: its inputs and outputs name the model's.
    let sigs: Vec<String> = {
        let mut v: Vec<String> = mg
            .signature_def
            .keys()
            .filter(|k| !k.starts_with("__"))
            .cloned()
            .collect();
        v.sort();
        v
    };
    let chosen = match &opts.signature {
        Some(s) if mg.signature_def.contains_key(s) => Some(s.clone()),
        Some(s) => {
            return Err(Error::Usage(format!(
                "no signature '{s}'; the model has {}",
                if sigs.is_empty() {
                    "none".to_string()
                } else {
                    sigs.join(", ")
                }
            ))
            .in_file(file))
        }
        None if mg.signature_def.contains_key("serving_default") => {
            Some("serving_default".to_string())
        }
        None if sigs.len() == 1 => Some(sigs[0].clone()),
        None if sigs.is_empty() => None,
        None => {
            return Err(Error::Usage(format!(
                "no 'serving_default' signature; choose one with --signature: {}",
                sigs.join(", ")
            ))
            .in_file(file))
        }
    };
    let mut sig_inputs: Vec<(String, String)> = vec![];
    let mut sig_outputs: Vec<(String, String)> = vec![];
    if let Some(s) = chosen.as_ref().and_then(|c| mg.signature_def.get(c)) {
        sig_inputs = s
            .inputs
            .iter()
            .map(|(k, v)| (k.clone(), v.name.clone()))
            .collect();
        sig_outputs = s
            .outputs
            .iter()
            .map(|(k, v)| (k.clone(), v.name.clone()))
            .collect();
        sig_inputs.sort();
        sig_outputs.sort();
    }
    let tf2_keys = match bundle {
        Some(b) => tf2_variable_keys(&mg, b)?,
        None => HashMap::new(),
    };
    let graph = mg.graph_def.take().unwrap_or_default();
    let library = graph.library.clone().unwrap_or_default();
    let op_list = mg
        .meta_info_def
        .as_ref()
        .and_then(|m| m.stripped_op_list.as_ref())
        .map(|l| l.op.clone())
        .unwrap_or_default();
    let inl = Inliner::new(&library, &op_list, file);
    let mut nodes: HashMap<String, NodeDef> = HashMap::with_capacity(graph.node.len());
    let mut main_order = vec![];
    for n in graph.node {
        main_order.push(n.name.clone());
        if nodes.insert(n.name.clone(), n).is_some() {
            let last = main_order.last().cloned().unwrap_or_default();
            return Err(Error::Graph(format!("two nodes named '{last}'")).in_file(file));
        }
    }
    // Seeds: the signature's outputs and the caller's (those that name
    // nodes of the top-level graph; inlined names are reached through the
    // calls that hold them).
    let mut seeds: Vec<String> = sig_outputs
        .iter()
        .map(|(_, t)| base(t).to_string())
        .collect();
    seeds.extend(
        opts.outputs
            .iter()
            .map(|t| base(t).to_string())
            .filter(|b| nodes.contains_key(b)),
    );
    if seeds.is_empty() {
        // No signature (a TF1 training graph saved with its checkpoint, as
        // FaceNet's releases): the output is the one computation nobody
        // reads, if there is exactly one.
        let consumed: HashSet<&str> = nodes
            .values()
            .flat_map(|n| n.input.iter().map(|s| base(s)))
            .collect();
        let cand: Vec<String> = main_order
            .iter()
            .filter(|n| !consumed.contains(n.as_str()))
            .filter(|n| nodes.get(n.as_str()).is_some_and(is_inference_output))
            .cloned()
            .collect();
        if cand.len() != 1 {
            let mut shown = cand.clone();
            shown.truncate(8);
            return Err(Error::Usage(format!(
                "the meta graph declares no signature: name the outputs with --output (nodes nobody reads: {})",
                if shown.is_empty() { "none".to_string() } else { shown.join(", ") }
            ))
            .in_file(file));
        }
        sig_outputs.push((cand[0].clone(), cand[0].clone()));
        seeds.push(cand[0].clone());
    }
    let mut order: Vec<String> = vec![];
    let mut seen: HashSet<String> = HashSet::new();
    let mut depth: HashMap<String, usize> = HashMap::new();
    let mut queue: VecDeque<String> = seeds.into_iter().collect();
    let mut missing_vars = vec![];
    let mut variables = 0usize;
    let mut variable_bytes = 0u64;
    while let Some(name) = queue.pop_front() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let Some(node) = nodes.remove(&name) else {
            // Referenced but absent: the frontend reports the dangling input.
            continue;
        };
        let d = depth.get(&name).copied().unwrap_or(0);
        let mut node = if let Some(f) = inl.callee(&node)? {
            if d >= MAX_CALL_DEPTH {
                return Err(inl.err(&node, "function calls nest more than 64 deep (recursion?)"));
            }
            let (id, added) = inl.inline(&node, f, &mut nodes)?;
            for k in added {
                depth.insert(k, d + 1);
            }
            id
        } else if VARIABLE_OPS.contains(&node.op.as_str()) {
            let shared = match node.attr.get("shared_name").and_then(|a| a.value.as_ref()) {
                Some(attr_value::Value::S(s)) if !s.is_empty() => {
                    String::from_utf8(s.to_vec()).ok()
                }
                _ => None,
            };
            let key = tf2_keys
                .get(&node.name)
                .cloned()
                .or_else(|| {
                    bundle
                        .filter(|b| b.contains(&node.name))
                        .map(|_| node.name.clone())
                })
                .or_else(|| shared.filter(|s| bundle.is_some_and(|b| b.contains(s))));
            match (bundle, key) {
                (Some(b), Some(k)) => {
                    let t = b.tensor_proto(&k)?;
                    variables += 1;
                    variable_bytes += t.tensor_content.len() as u64;
                    const_node(&node.name, t)
                }
                (b, _) => {
                    missing_vars.push(format!("'{}' ({})", node.name, node.op));
                    if b.is_none() {
                        return Err(Error::Format(format!(
                            "variable '{}' ({}) needs a checkpoint, and there is no variables/variables.index",
                            node.name, node.op
                        ))
                        .in_file(file));
                    }
                    node
                }
            }
        } else if node.op == "ReadVariableOp" {
            let mut id = node.clone();
            id.op = "Identity".into();
            if let Some(dt) = id.attr.remove("dtype") {
                id.attr.insert("T".into(), dt);
            }
            id
        } else {
            node
        };
        node.input.retain(|s| !s.starts_with('^'));
        for s in &node.input {
            let b = base(s).to_string();
            if !seen.contains(&b) {
                if let Some(&dd) = depth.get(&name) {
                    depth.entry(b.clone()).or_insert(dd);
                }
                queue.push_back(b);
            }
        }
        order.push(name.clone());
        nodes.insert(name, node);
    }
    if !missing_vars.is_empty() {
        let prefix = bundle.map(|b| index_path(b.prefix())).unwrap_or_default();
        let n = missing_vars.len();
        missing_vars.truncate(12);
        return Err(Error::Format(format!(
            "{n} variable(s) have no value in the checkpoint: {}",
            missing_vars.join(", ")
        ))
        .in_file(prefix));
    }
    let mut out = GraphDef::new();
    out.versions = graph.versions.clone();
    // Name the model's inputs and outputs after the signature's keys (what
    // users of the SavedModel pass and read), where no node has the name.
    let mut rename: HashMap<String, String> = HashMap::new();
    let taken: HashSet<&str> = order.iter().map(String::as_str).collect();
    let mut inputs = vec![];
    for (key, t) in &sig_inputs {
        let b = base(t);
        if crate::ir::split_tensor_name(t).1 == 0
            && !taken.contains(key.as_str())
            && nodes.contains_key(b)
        {
            rename.insert(b.to_string(), key.clone());
            inputs.push(key.clone());
        } else {
            inputs.push(t.clone());
        }
    }
    for name in &order {
        if let Some(mut n) = nodes.remove(name) {
            if let Some(new) = rename.get(&n.name) {
                n.name = new.clone();
            }
            for s in n.input.iter_mut() {
                let (b, k) = crate::ir::split_tensor_name(s);
                if let Some(new) = rename.get(b) {
                    *s = if k == 0 {
                        new.clone()
                    } else {
                        format!("{new}:{k}")
                    };
                }
            }
            out.node.push(n);
        }
    }
    let mut outputs = vec![];
    let mut names: HashSet<String> = out.node.iter().map(|n| n.name.clone()).collect();
    for (key, t) in &sig_outputs {
        let (b, k) = crate::ir::split_tensor_name(t);
        let src = match rename.get(b) {
            Some(new) if k == 0 => new.clone(),
            Some(new) => format!("{new}:{k}"),
            None => t.clone(),
        };
        if names.contains(key) {
            outputs.push(src);
            continue;
        }
        let mut id = NodeDef::new();
        id.name = key.clone();
        id.op = "Identity".into();
        id.input.push(src);
        names.insert(key.clone());
        out.node.push(id);
        outputs.push(key.clone());
    }
    Ok((
        Resolved {
            graph_def: out,
            form: ModelForm::Frozen,
            inputs,
            outputs,
            variables,
            variable_bytes,
            files: vec![file.to_path_buf()],
        },
        chosen,
    ))
}
