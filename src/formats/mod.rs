//! The model formats faceall writes and reads, one folder each: the
//! writer (IR after the passes -> the format's files), the reader and
//! executor verify-parity and bench run, and the mapping between the
//! format's layouts and TensorFlow's.

pub mod bundle;
pub mod caffe;
pub mod coreml;
pub mod files;
pub mod layout;

use std::collections::HashSet;

use crate::error::{Error, Result, Unsupported};
use crate::ir::Graph;

/// Visit, in graph order, every node the outputs need; `emit_node` returns
/// why a node has no form in the target. A node fed by a node that failed is
/// not reported again, and every failure is reported at once.
pub fn walk_needed(
    g: &Graph,
    target: &str,
    mut emit_node: impl FnMut(usize) -> std::result::Result<(), String>,
) -> Result<()> {
    let mut needed = vec![false; g.nodes.len()];
    let mut stack: Vec<usize> = g.outputs.iter().map(|w| w.node).collect();
    while let Some(i) = stack.pop() {
        if !std::mem::replace(&mut needed[i], true) {
            stack.extend(g.nodes[i].inputs.iter().map(|w| w.node));
        }
    }
    let mut failed = HashSet::new();
    let mut unsupported = vec![];
    for (i, node) in g.nodes.iter().enumerate() {
        if !needed[i] {
            continue;
        }
        if node.inputs.iter().any(|w| failed.contains(&w.node)) {
            failed.insert(i);
            continue;
        }
        if let Err(reason) = emit_node(i) {
            failed.insert(i);
            unsupported.push(Unsupported {
                node: node.name.clone(),
                op: node.source_op.clone(),
                reason: format!("no {target} form: {reason}"),
            });
        }
    }
    if unsupported.is_empty() {
        Ok(())
    } else {
        Err(Error::Unsupported(unsupported))
    }
}
