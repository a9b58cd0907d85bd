//! The executor of the formats that read back into faceall's IR (the
//! bundle, ONNX): the IR reference executor runs the graph read from the
//! files, and each value the format names after a TF tensor is handed back
//! in TF's layout.

use std::collections::HashMap;
use std::path::PathBuf;

use super::{Executor, RawOutput, Run};
use crate::error::Result;
use crate::ir::{Graph, Tensor, Wire};
use crate::runtime::kernels::nchw_to_nhwc;

/// A value of the graph that holds a TF tensor.
#[derive(Debug, Clone)]
pub struct Carried {
    pub node: usize,
    /// The TF tensor's name.
    pub tensor: String,
    /// The value is the NCHW form of the 4-D NHWC tensor.
    pub nchw: bool,
}

pub struct GraphExecutor {
    pub graph: Graph,
    pub file: PathBuf,
    pub carried: Vec<Carried>,
}

impl Executor for GraphExecutor {
    fn inputs(&self) -> Vec<(String, Vec<usize>)> {
        self.graph
            .inputs
            .iter()
            .map(|&i| {
                let n = &self.graph.nodes[i];
                let shape = n.outputs.first().map(|f| f.shape.clone());
                (n.name.clone(), shape.unwrap_or_default())
            })
            .collect()
    }

    fn check_inputs(&self, tf_inputs: &[(String, Vec<usize>)]) -> Result<()> {
        super::check_declared_inputs(&self.file, &self.inputs(), tf_inputs, <[usize]>::to_vec, "")
    }

    fn computes(&self) -> Vec<String> {
        self.carried.iter().map(|c| c.tensor.clone()).collect()
    }

    fn run(
        &self,
        feeds: &HashMap<String, Tensor>,
        want: &HashMap<String, Vec<usize>>,
    ) -> Result<Run> {
        let fetch: Vec<&Carried> = self
            .carried
            .iter()
            .filter(|c| want.contains_key(&c.tensor))
            .collect();
        // The outputs too: a run computes the whole model (bench times it).
        let mut wires: Vec<Wire> = fetch
            .iter()
            .map(|c| Wire {
                node: c.node,
                slot: 0,
            })
            .collect();
        wires.extend(self.graph.outputs.iter().copied());
        let got = match crate::runtime::run_wires(&self.graph, feeds, &wires) {
            Ok(v) => v,
            Err(e) => {
                return Ok(Run {
                    failure: Some(e.to_string()),
                    ..Run::default()
                })
            }
        };
        let n_fetch = fetch.len();
        let outputs = self
            .graph
            .outputs
            .iter()
            .zip(got.iter().skip(n_fetch))
            .map(|(w, t)| {
                // Named after the TF tensor it carries (a bypassed
                // Identity's name), as the other formats name it.
                let carried = self
                    .carried
                    .iter()
                    .find(|c| c.node == w.node && w.slot == 0);
                RawOutput {
                    name: carried
                        .map(|c| c.tensor.clone())
                        .unwrap_or_else(|| self.graph.wire_name(*w)),
                    value: t.clone(),
                    channel_first: carried.is_some_and(|c| c.nchw),
                }
            })
            .collect();
        let mut values = HashMap::new();
        for (c, t) in fetch.into_iter().zip(got) {
            let Some(shape) = want.get(&c.tensor) else {
                continue;
            };
            values.insert(c.tensor.clone(), to_tf(&t, shape, c.nchw));
        }
        Ok(Run {
            values,
            failure: None,
            outputs,
        })
    }
}

fn to_tf(t: &Tensor, want: &[usize], nchw: bool) -> std::result::Result<Tensor, String> {
    let s = t.shape();
    if nchw {
        let &[n, c, h, w] = s else {
            return Err(format!("an NCHW value of shape {s:?}"));
        };
        if [n, h, w, c] != *want {
            return Err(format!(
                "shape {s:?} (NCHW) does not match TensorFlow's {want:?} (NHWC)"
            ));
        }
        let v = t.as_f32().map_err(|e| e.to_string())?;
        return Tensor::f32(want.to_vec(), nchw_to_nhwc(&v, [n, c, h, w]))
            .map_err(|e| e.to_string());
    }
    // (N, K) held as (N, K, 1, 1) (an ML Program's column form): the same
    // elements in the same order.
    if s.len() == want.len() + 2 && s[..want.len()] == *want && s[want.len()..] == [1, 1] {
        return t.reshaped(want.to_vec()).map_err(|e| e.to_string());
    }
    if s != want {
        return Err(format!("shape {s:?} does not match TensorFlow's {want:?}"));
    }
    Ok(t.clone())
}
