//! Drop nodes the graph's outputs do not need.

use super::Rewrite;
use crate::error::Result;
use crate::ir::Graph;

pub fn run(g: &mut Graph, log: &mut Vec<Rewrite>) -> Result<usize> {
    let before = g.nodes.len();
    let names: Vec<String> = g.nodes.iter().map(|n| n.name.clone()).collect();
    g.compact(true)?;
    let kept: std::collections::HashSet<&str> = g.nodes.iter().map(|n| n.name.as_str()).collect();
    let removed: Vec<&String> = names
        .iter()
        .filter(|n| !kept.contains(n.as_str()))
        .collect();
    if !removed.is_empty() {
        log.push(Rewrite {
            pass: "remove_dead",
            node: String::new(),
            detail: format!("{} node(s) removed", removed.len()),
        });
    }
    Ok(before - g.nodes.len())
}
