//! The IR graph: an arena of nodes in topological order, wired by
//! (node, slot), each keeping its TensorFlow name.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::op::{Fact, Op, PoolKind};
use crate::error::{Error, Result};

/// Output `slot` of node `node`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Wire {
    pub node: usize,
    pub slot: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Node {
    /// The TensorFlow node name (users debug with it).
    pub name: String,
    /// The TensorFlow op type it came from (e.g. "FusedBatchNormV3").
    pub source_op: String,
    pub op: Op,
    pub inputs: Vec<Wire>,
    /// One fact per output.
    pub outputs: Vec<Fact>,
    /// TF nodes folded into this one by passes, in order (the record for
    /// the conversion report).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub absorbed: Vec<String>,
    /// TF tensor names whose value equals this node's output now, besides
    /// its own (see `own_changed`); the last is the one it is known by.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// A pass changed the value, so the node's own TF name no longer names it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub own_changed: bool,
}

impl Node {
    pub fn new(
        name: String,
        source_op: String,
        op: Op,
        inputs: Vec<Wire>,
        outputs: Vec<Fact>,
    ) -> Self {
        Node {
            name,
            source_op,
            op,
            inputs,
            outputs,
            absorbed: vec![],
            aliases: vec![],
            own_changed: false,
        }
    }

    /// The TF tensor whose value this node's output is (None when folding
    /// turned it into a value TF never computes).
    pub fn carries(&self) -> Option<&str> {
        match self.aliases.last() {
            Some(a) => Some(a),
            None if !self.own_changed => Some(&self.name),
            None => None,
        }
    }

    /// Whether the output equals the TF tensor `name`.
    pub fn is(&self, name: &str) -> bool {
        (!self.own_changed && self.name == name) || self.aliases.iter().any(|a| a == name)
    }

    /// This node now also computes `names` without its value changing
    /// (a bypassed Identity, a resolved Merge).
    pub fn alias(&mut self, names: impl IntoIterator<Item = String>) {
        let names: Vec<String> = names.into_iter().collect();
        self.absorbed.extend(names.iter().cloned());
        self.aliases.extend(names);
    }

    /// A pass folded `names` into this node: its value is now theirs.
    pub fn absorb(&mut self, names: impl IntoIterator<Item = String>) {
        self.own_changed = true;
        self.aliases.clear();
        self.alias(names);
    }

    /// A pass changed the value into one no TF tensor has.
    pub fn mark_changed(&mut self) {
        self.own_changed = true;
        self.aliases.clear();
    }
}

/// A dataflow graph whose nodes only read nodes before them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub inputs: Vec<usize>,
    pub outputs: Vec<Wire>,
}

impl Graph {
    /// Append a node, inferring its output facts. The error names the node.
    pub fn push(
        &mut self,
        name: impl Into<String>,
        source_op: impl Into<String>,
        op: Op,
        inputs: Vec<Wire>,
    ) -> Result<usize> {
        let name = name.into();
        let source_op = source_op.into();
        let facts = inputs
            .iter()
            .map(|w| self.fact(*w))
            .collect::<Result<Vec<_>>>()
            .map_err(|e| Error::node(&name, &source_op, e.to_string()))?;
        let outputs = op
            .infer(&facts)
            .map_err(|m| Error::node(&name, &source_op, m))?;
        self.nodes
            .push(Node::new(name, source_op, op, inputs, outputs));
        Ok(self.nodes.len() - 1)
    }

    pub fn fact(&self, w: Wire) -> Result<&Fact> {
        self.nodes
            .get(w.node)
            .and_then(|n| n.outputs.get(w.slot))
            .ok_or_else(|| Error::Graph(format!("no value at {w:?}")))
    }

    pub fn node_by_name(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Resolve "name" or "name:k" to a wire.
    pub fn wire_by_name(&self, name: &str) -> Result<Wire> {
        let (base, slot) = split_tensor_name(name);
        // The node with that name, unless a pass changed its value; else the
        // node a pass folded it into.
        let node = match self.node_by_name(base) {
            Some(n) if slot > 0 || self.nodes[n].is(base) => n,
            _ if slot == 0 => self
                .nodes
                .iter()
                .position(|n| n.is(base))
                .ok_or_else(|| Error::Usage(format!("no node named '{base}' in the graph")))?,
            _ => return Err(Error::Usage(format!("no node named '{base}' in the graph"))),
        };
        if slot >= self.nodes[node].outputs.len() {
            return Err(Error::Usage(format!(
                "node '{base}' has {} output(s), not {}",
                self.nodes[node].outputs.len(),
                slot + 1
            )));
        }
        Ok(Wire { node, slot })
    }

    /// "name" for slot 0, "name:k" otherwise.
    pub fn wire_name(&self, w: Wire) -> String {
        let n = self
            .nodes
            .get(w.node)
            .map(|n| n.name.as_str())
            .unwrap_or("?");
        if w.slot == 0 {
            n.to_string()
        } else {
            format!("{n}:{}", w.slot)
        }
    }

    /// Check the graph's invariants: unique names, wires to earlier nodes and
    /// existing slots, arities, and facts that agree with re-inference.
    pub fn validate(&self) -> Result<()> {
        let mut names = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(prev) = names.insert(n.name.as_str(), i) {
                return Err(Error::Graph(format!(
                    "two nodes named '{}' (#{prev} and #{i})",
                    n.name
                )));
            }
            let err = |m: String| Error::node(&n.name, &n.source_op, m);
            let mut facts = vec![];
            for w in &n.inputs {
                if w.node >= i {
                    return Err(err(format!(
                        "reads node #{} which is not before it",
                        w.node
                    )));
                }
                facts.push(self.fact(*w).map_err(|e| err(e.to_string()))?);
            }
            if !matches!(n.op, Op::Input) {
                let inferred = n.op.infer(&facts).map_err(err)?;
                if inferred != n.outputs {
                    return Err(err(format!(
                        "recorded facts {:?} disagree with inferred {:?}",
                        n.outputs, inferred
                    )));
                }
            } else if n.outputs.len() != 1 {
                return Err(err("an Input has exactly one output".into()));
            }
        }
        for &i in &self.inputs {
            if !matches!(self.nodes.get(i).map(|n| &n.op), Some(Op::Input)) {
                return Err(Error::Graph(format!(
                    "graph input #{i} is not an Input node"
                )));
            }
        }
        for w in &self.outputs {
            self.fact(*w)?;
        }
        Ok(())
    }

    /// The constant carried by a wire, if it is one.
    pub fn const_of(&self, w: Wire) -> Option<&super::tensor::Tensor> {
        match self.nodes.get(w.node).map(|n| &n.op) {
            Some(Op::Const(t)) if w.slot == 0 => Some(t),
            _ => None,
        }
    }

    /// Nodes reading `w` (once per read).
    pub fn users(&self, w: Wire) -> Vec<usize> {
        let mut u = vec![];
        for (i, n) in self.nodes.iter().enumerate() {
            for x in &n.inputs {
                if *x == w {
                    u.push(i);
                }
            }
        }
        u
    }

    /// True when `w` is read by exactly one node and is not a graph output:
    /// the producer may then be rewritten for that one reader.
    pub fn single_use(&self, w: Wire) -> bool {
        self.users(w).len() == 1 && !self.outputs.contains(&w)
    }

    /// Make every reader of `old` (and the graph outputs) read `new`.
    pub fn replace_uses(&mut self, old: Wire, new: Wire) {
        for n in &mut self.nodes {
            for x in &mut n.inputs {
                if *x == old {
                    *x = new;
                }
            }
        }
        for o in &mut self.outputs {
            if *o == old {
                *o = new;
            }
        }
    }

    /// Append a constant node (placed correctly by the next `compact`).
    pub fn add_const(&mut self, name: String, t: super::tensor::Tensor) -> usize {
        let fact = Fact {
            dtype: t.dtype(),
            shape: t.shape().to_vec(),
        };
        self.nodes.push(Node::new(
            name,
            "Const".into(),
            Op::Const(t),
            vec![],
            vec![fact],
        ));
        self.nodes.len() - 1
    }

    /// A node name not used yet, based on `base`.
    pub fn fresh_name(&self, base: &str) -> String {
        let taken: std::collections::HashSet<&str> =
            self.nodes.iter().map(|n| n.name.as_str()).collect();
        if !taken.contains(base) {
            return base.to_string();
        }
        (1..)
            .map(|i| format!("{base}_{i}"))
            .find(|n| !taken.contains(n.as_str()))
            .unwrap_or_default()
    }

    /// Restore topological order (stable: original order where possible),
    /// optionally dropping nodes the outputs do not need.
    pub fn compact(&mut self, prune: bool) -> Result<()> {
        let n = self.nodes.len();
        let keep: Vec<bool> = if prune {
            let mut k = vec![false; n];
            let mut stack: Vec<usize> = self.outputs.iter().map(|w| w.node).collect();
            stack.extend(self.inputs.iter().copied());
            while let Some(i) = stack.pop() {
                if i < n && !std::mem::replace(&mut k[i], true) {
                    stack.extend(self.nodes[i].inputs.iter().map(|w| w.node));
                }
            }
            k
        } else {
            vec![true; n]
        };
        let mut indeg = vec![0usize; n];
        let mut users = vec![vec![]; n];
        for (i, node) in self.nodes.iter().enumerate() {
            if !keep[i] {
                continue;
            }
            for w in &node.inputs {
                if w.node >= n || !keep[w.node] {
                    return Err(Error::node(
                        &node.name,
                        &node.source_op,
                        "reads a removed node",
                    ));
                }
                indeg[i] += 1;
                users[w.node].push(i);
            }
        }
        let mut heap: std::collections::BinaryHeap<std::cmp::Reverse<usize>> = (0..n)
            .filter(|&i| keep[i] && indeg[i] == 0)
            .map(std::cmp::Reverse)
            .collect();
        let mut order = Vec::with_capacity(n);
        while let Some(std::cmp::Reverse(i)) = heap.pop() {
            order.push(i);
            for &u in &users[i] {
                indeg[u] -= 1;
                if indeg[u] == 0 {
                    heap.push(std::cmp::Reverse(u));
                }
            }
        }
        if order.len() != keep.iter().filter(|&&k| k).count() {
            return Err(Error::Graph("a pass created a cycle".into()));
        }
        let mut new_index = vec![usize::MAX; n];
        for (new, &old) in order.iter().enumerate() {
            new_index[old] = new;
        }
        let mut old_nodes: Vec<Option<Node>> = std::mem::take(&mut self.nodes)
            .into_iter()
            .map(Some)
            .collect();
        for &old in &order {
            if let Some(mut node) = old_nodes[old].take() {
                for w in &mut node.inputs {
                    w.node = new_index[w.node];
                }
                self.nodes.push(node);
            }
        }
        for w in &mut self.outputs {
            w.node = new_index[w.node];
        }
        self.inputs = self
            .inputs
            .iter()
            .filter(|&&i| keep[i])
            .map(|&i| new_index[i])
            .collect();
        Ok(())
    }

    /// Count of consumers of each node (by node index).
    pub fn consumers(&self) -> Vec<Vec<usize>> {
        let mut c = vec![vec![]; self.nodes.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            for w in &n.inputs {
                c[w.node].push(i);
            }
        }
        c
    }

    /// Summary numbers for `inspect`.
    pub fn stats(&self) -> Stats {
        let mut ops = BTreeMap::new();
        let mut source_ops = BTreeMap::new();
        let mut params = 0usize;
        let mut flops = 0u64;
        for n in &self.nodes {
            *ops.entry(n.op.kind().to_string()).or_insert(0) += 1;
            *source_ops.entry(n.source_op.clone()).or_insert(0) += 1;
            if let Op::Const(t) = &n.op {
                if t.dtype() == super::tensor::DType::F32 && !t.shape().is_empty() {
                    params += t.len();
                }
            }
            flops += self.node_flops(n);
        }
        Stats {
            nodes: self.nodes.len(),
            ops,
            source_ops,
            params,
            flops,
        }
    }

    /// Multiply-adds count twice; elementwise work counts once per element.
    fn node_flops(&self, n: &Node) -> u64 {
        let out: u64 = n
            .outputs
            .first()
            .map(|f| f.shape.iter().product::<usize>() as u64)
            .unwrap_or(0);
        let in_fact = |i: usize| n.inputs.get(i).and_then(|w| self.fact(*w).ok());
        match &n.op {
            Op::Conv2d(c) => {
                let Some(w) = in_fact(1) else { return 0 };
                let per_out = if c.depthwise {
                    w.shape[0] * w.shape[1]
                } else {
                    w.shape[0] * w.shape[1] * w.shape[2]
                };
                2 * out * per_out as u64
            }
            Op::MatMul { transpose_a, .. } => {
                let Some(a) = in_fact(0) else { return 0 };
                let k = if *transpose_a { a.shape[0] } else { a.shape[1] };
                2 * out * k as u64
            }
            Op::Pool(p) => {
                let k = (p.ksize[0] * p.ksize[1]) as u64;
                match p.kind {
                    PoolKind::Max | PoolKind::Avg => out * k,
                }
            }
            Op::Const(_) | Op::Input | Op::Identity | Op::Switch | Op::Merge => 0,
            Op::L2Normalize { .. } => 3 * out,
            Op::Reshape { .. } | Op::Squeeze { .. } | Op::ExpandDims { .. } | Op::Concat { .. } => {
                0
            }
            _ => out,
        }
    }
}

/// Split "name:k" into ("name", k); "name" is slot 0.
pub fn split_tensor_name(name: &str) -> (&str, usize) {
    if let Some((base, k)) = name.rsplit_once(':') {
        if let Ok(k) = k.parse() {
            return (base, k);
        }
    }
    (name, 0)
}

#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub nodes: usize,
    /// IR op kinds.
    pub ops: BTreeMap<String, usize>,
    /// TensorFlow op types as found in the file.
    pub source_ops: BTreeMap<String, usize>,
    /// Elements of non-scalar float constants (weights).
    pub params: usize,
    pub flops: u64,
}
