//! verify-parity: run the source graph and each converted model on the same
//! inputs and compare every layer that carries a TF tensor's value.
//!
//! Converted layers are found by name: the writers name values after the TF
//! tensors they compute (after folding, a conv's blob is its batch norm's
//! name). One comparison serves every format: each format's executor
//! (`formats::Format::open`) hands its values back in TF's layout.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{compare, Comparison, Tolerance};
use crate::error::{Error, Result};
use crate::formats::{Executor, Format};
use crate::ir::{Graph, Tensor};

/// Where reference values come from.
#[derive(Debug, Clone)]
pub enum Reference {
    /// faceall's own TF executor on the original graph.
    Builtin,
    /// Real TensorFlow through a Python subprocess. A SavedModel or
    /// checkpoint is loaded by TensorFlow's own loader with `source`'s
    /// signature, tags and checkpoint; TF cannot show the tensors inside a
    /// TF2 function body, so those layers have no reference and are not
    /// compared (the declared outputs always are).
    TensorFlow {
        python: PathBuf,
        source: crate::frontend::tf::SourceOptions,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerResult {
    /// TF tensor name (graph order).
    pub tensor: String,
    pub op: String,
    /// Blob in the converted model.
    pub blob: String,
    pub output: bool,
    pub passed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comparison: Option<Comparison>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One declared output of the converted model, as its user reads it,
/// against TF's output element for element.
#[derive(Debug, Clone, Serialize)]
pub struct OutputResult {
    /// The TF output.
    pub tensor: String,
    /// The model's output standing for it (empty when it has none).
    pub output: String,
    /// TF's shape and the model's (its batch stacked first).
    pub tf_shape: Vec<usize>,
    pub shape: Vec<usize>,
    /// "as TF" or "channel-first (NCHW)": how TF's value is arranged for
    /// the element-by-element comparison (the format's convention).
    pub layout: String,
    pub passed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comparison: Option<Comparison>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    pub target: String,
    pub file: String,
    pub layers: Vec<LayerResult>,
    /// The model's declared outputs, raw, against TF's.
    pub outputs: Vec<OutputResult>,
    /// The first layer (graph order) outside its tolerance.
    pub first_failure: Option<String>,
    /// A converted layer that failed to run, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_error: Option<String>,
    pub passed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub model: String,
    pub reference: String,
    pub tolerance: Tolerance,
    pub samples: usize,
    pub targets: Vec<TargetReport>,
    pub passed: bool,
}

/// Inputs for every sample: input name -> tensor (batch as the graph declares).
pub type Sample = HashMap<String, Tensor>;

/// Seeded N(0, 1) inputs (FaceNet's prewhitened crops have that scale).
pub fn random_samples(g: &Graph, n: usize, seed: u64) -> Result<Vec<Sample>> {
    let mut s = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut out = vec![];
    for _ in 0..n {
        let mut sample = HashMap::new();
        for &i in &g.inputs {
            let f = &g.nodes[i].outputs[0];
            let len: usize = f.shape.iter().product();
            // Box-Muller
            let v: Vec<f32> = (0..len)
                .map(|_| {
                    let (u1, u2) = (next().max(1e-12), next());
                    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
                })
                .collect();
            sample.insert(g.nodes[i].name.clone(), Tensor::f32(f.shape.clone(), v)?);
        }
        out.push(sample);
    }
    Ok(out)
}

/// The reference values of `names` for one sample.
fn reference_values(
    model: &Path,
    g: &Graph,
    sample: &Sample,
    names: &[String],
    r: &Reference,
) -> Result<Vec<Option<Tensor>>> {
    match r {
        Reference::Builtin => Ok(crate::runtime::run(g, sample, names)?
            .into_iter()
            .map(Some)
            .collect()),
        Reference::TensorFlow { python, source } => {
            tensorflow_oracle(python, model, source, sample, names)
        }
    }
}

const ORACLE: &str = include_str!("../../scripts/tf_oracle.py");

fn tensorflow_oracle(
    python: &Path,
    model: &Path,
    source: &crate::frontend::tf::SourceOptions,
    sample: &Sample,
    names: &[String],
) -> Result<Vec<Option<Tensor>>> {
    let dir = tempfile_dir()?;
    let script = dir.join("tf_oracle.py");
    std::fs::write(&script, ORACLE)?;
    let mut cmd = std::process::Command::new(python);
    cmd.arg(&script).arg(model).arg(dir.join("out"));
    if let Some(s) = &source.signature {
        cmd.arg("--signature").arg(s);
    }
    if let Some(t) = &source.tag_set {
        cmd.arg("--tag-set").arg(t);
    }
    if model.extension().is_some_and(|e| e == "meta") {
        cmd.arg("--checkpoint")
            .arg(crate::frontend::tf::saved::find_checkpoint(model, source)?);
    }
    for (i, (name, t)) in sample.iter().enumerate() {
        let p = dir.join(format!("in{i}.npy"));
        crate::npy::write_f32(&p, t)?;
        cmd.arg(format!("{name}={}", p.display()));
    }
    cmd.arg("--fetch").args(names);
    let out = cmd.output().map_err(|e| {
        Error::Reference(format!(
            "--reference tensorflow needs Python ({}): {e}; install Python 3 and `pip install tensorflow-cpu==2.21.0 numpy`, or pass --python",
            python.display()
        ))
    })?;
    let _cleanup = RemoveOnDrop(dir.clone());
    if out.status.code() == Some(3) {
        return Err(Error::Reference(format!(
            "--reference tensorflow: {} cannot import TensorFlow ({}); install it with `{} -m pip install tensorflow-cpu==2.21.0 numpy` (scripts/setup does)",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim(),
            python.display()
        )));
    }
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(Error::Reference(format!(
            "TensorFlow failed on {}: {last}",
            model.display()
        )));
    }
    let listed = dir.join("out/fetched.json");
    let fetched: HashSet<usize> = std::fs::read_to_string(&listed)
        .ok()
        .and_then(|t| serde_json::from_str::<Vec<usize>>(&t).ok())
        .ok_or_else(|| Error::Reference("the TensorFlow oracle wrote no fetched.json".into()))?
        .into_iter()
        .collect();
    (0..names.len())
        .map(|i| {
            fetched
                .contains(&i)
                .then(|| crate::npy::read_f32(&dir.join(format!("out/{i}.npy"))))
                .transpose()
        })
        .collect()
}

struct RemoveOnDrop(PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir() -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!(
        "faceall-oracle-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn judge(
    tensor: &str,
    op: &str,
    blob: &str,
    output: bool,
    got: Result<Tensor>,
    want: &Tensor,
    tol: Tolerance,
) -> LayerResult {
    let (comparison, error) = match got.and_then(|g| compare(&g, want, tol)) {
        Ok(c) => (Some(c), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let passed = comparison.as_ref().is_some_and(|c| c.passed());
    LayerResult {
        tensor: tensor.into(),
        op: op.into(),
        blob: blob.into(),
        output,
        passed,
        comparison,
        error,
    }
}

fn finish(
    target: &str,
    file: &Path,
    layers: Vec<LayerResult>,
    outputs: Vec<OutputResult>,
    run_error: Option<String>,
) -> TargetReport {
    let first_failure = layers
        .iter()
        .find(|l| !l.passed)
        .map(|l| l.tensor.clone())
        .or_else(|| {
            outputs
                .iter()
                .find(|o| !o.passed)
                .map(|o| format!("{} (raw output)", o.tensor))
        });
    let passed = first_failure.is_none()
        && run_error.is_none()
        && layers.iter().any(|l| l.output)
        && !outputs.is_empty();
    TargetReport {
        target: target.into(),
        file: file.display().to_string(),
        layers,
        outputs,
        first_failure,
        run_error,
        passed,
    }
}

/// Per-output tolerance overrides by tensor name.
pub type Overrides = HashMap<String, Tolerance>;

/// What every target is checked against.
pub struct Checked<'a> {
    pub model: &'a Path,
    pub graph: &'a Graph,
    pub samples: &'a [Sample],
    /// Reference values per sample, by TF tensor name.
    pub refs: &'a [HashMap<String, Tensor>],
    pub tolerance: Tolerance,
    pub overrides: &'a Overrides,
}

/// Compare a converted model (`files` of `format`, opened as `exec`) with
/// the reference, layer by layer, over all samples: every TF tensor the
/// model holds under its TF name, read back in TF's layout by the format's
/// executor.
pub fn verify(
    c: &Checked,
    format: &dyn Format,
    files: &[PathBuf],
    exec: &dyn Executor,
) -> Result<TargetReport> {
    let g = c.graph;
    let inputs: Vec<(String, Vec<usize>)> = g
        .inputs
        .iter()
        .map(|&i| {
            let shape = g.nodes[i].outputs.first().map(|f| f.shape.clone());
            (g.nodes[i].name.clone(), shape.unwrap_or_default())
        })
        .collect();
    exec.check_inputs(&inputs)?;
    let computes: HashSet<String> = exec.computes().into_iter().collect();
    let outputs: HashSet<&str> = g
        .outputs
        .iter()
        .map(|w| g.nodes[w.node].name.as_str())
        .collect();
    let mut layers = vec![];
    let mut raw_results: Vec<OutputResult> = vec![];
    let mut declared: HashSet<String> = HashSet::new();
    let mut run_error = None;
    for (s, sample) in c.samples.iter().enumerate() {
        let want: HashMap<String, Vec<usize>> = c.refs[s]
            .iter()
            .filter(|(k, _)| computes.contains(*k))
            .map(|(k, v)| (k.clone(), v.shape().to_vec()))
            .collect();
        let mut run = exec.run(sample, &want)?;
        if let Some(e) = run.failure.take() {
            run_error.get_or_insert(e);
        }
        // The model's declared outputs, each against the TF tensor of its
        // name, as the model returns it.
        for (i, o) in run.outputs.iter().enumerate() {
            let tensor = tf_tensor_of(g, &o.name);
            let r = match tensor {
                Some(t) => {
                    let tol = c.overrides.get(t).copied().unwrap_or(c.tolerance);
                    judge_raw(t, o, c.refs[s].get(t), tol)
                }
                None => unmatched(o),
            };
            declared.insert(r.tensor.clone());
            match raw_results.get_mut(i) {
                None => raw_results.push(r),
                Some(prev) => {
                    if replaces((&prev.comparison, prev.passed), (&r.comparison, r.passed)) {
                        *prev = r;
                    }
                }
            }
        }
        // A TF output the model computes but does not return is a user
        // reading something else (Caffe's outputs are the blobs no layer
        // reads: a flatten that feeds a MatMul is none).
        if s == 0 {
            for w in &g.outputs {
                let tensor = g.wire_name(*w);
                if computes.contains(&tensor) && !declared.contains(&tensor) {
                    raw_results.push(OutputResult {
                        tensor: tensor.clone(),
                        output: String::new(),
                        tf_shape: c.refs[s].get(&tensor).map(|t| t.shape().to_vec()).unwrap_or_default(),
                        shape: vec![],
                        layout: String::new(),
                        passed: false,
                        comparison: None,
                        error: Some(
                            "the model computes this TF output but does not declare it as an output"
                                .into(),
                        ),
                    });
                }
            }
        }
        let mut i = 0;
        for node in &g.nodes {
            let Some(want) = c.refs[s].get(&node.name) else {
                continue;
            };
            if !computes.contains(&node.name) {
                continue;
            }
            let tol = c.overrides.get(&node.name).copied().unwrap_or(c.tolerance);
            let got = match run.values.remove(&node.name) {
                Some(Ok(t)) => Ok(t),
                Some(Err(e)) => Err(Error::Mismatch(e)),
                None => Err(Error::Usage(
                    "not computed (an earlier layer failed)".into(),
                )),
            };
            let output =
                outputs.contains(node.name.as_str()) || declared.contains(node.name.as_str());
            let r = judge(
                &node.name,
                &node.source_op,
                &node.name,
                output,
                got,
                want,
                tol,
            );
            merge_sample(&mut layers, i, r);
            i += 1;
        }
    }
    let file = files.last().cloned().unwrap_or_default();
    Ok(finish(format.name(), &file, layers, raw_results, run_error))
}

/// The TF tensor a model output stands for: the graph node of its name,
/// exactly or as formats spell names (identifiers: other characters become
/// '_').
fn tf_tensor_of<'g>(g: &'g Graph, name: &str) -> Option<&'g str> {
    let spelled = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect()
    };
    let want = spelled(name);
    g.node_by_name(name)
        .map(|i| g.nodes[i].name.as_str())
        .or_else(|| {
            g.nodes
                .iter()
                .find(|n| spelled(&n.name) == want)
                .map(|n| n.name.as_str())
        })
}

fn unmatched(o: &crate::formats::RawOutput) -> OutputResult {
    OutputResult {
        tensor: o.name.clone(),
        output: o.name.clone(),
        tf_shape: vec![],
        shape: o.value.shape().to_vec(),
        layout: String::new(),
        passed: false,
        comparison: None,
        error: Some(
            "the model declares this output, but the TF graph has no tensor of that name".into(),
        ),
    }
}

/// Judge one raw output: TF's value arranged by the format's convention
/// (4-D channel-first where the format says so, else as TF), against the
/// model's value read in its own element order.
fn judge_raw(
    tensor: &str,
    o: &crate::formats::RawOutput,
    want: Option<&Tensor>,
    tol: Tolerance,
) -> OutputResult {
    let mut r = OutputResult {
        tensor: tensor.into(),
        output: String::new(),
        tf_shape: want.map(|t| t.shape().to_vec()).unwrap_or_default(),
        shape: vec![],
        layout: "as TF".into(),
        passed: false,
        comparison: None,
        error: None,
    };
    r.output = o.name.clone();
    r.shape = o.value.shape().to_vec();
    let Some(want) = want else {
        r.error = Some("no reference value (not a float tensor of the TF graph)".into());
        return r;
    };
    // A 4-D output returned in TF's own shape is compared as TF's; in the
    // NCHW permutation of it, channel-first; when both read alike (C == H
    // == W), by the format's convention.
    let channel_first = match want.shape() {
        &[n, h, w, ch] => {
            let raw = o.value.shape();
            let as_tf = raw.iter().product::<usize>() == want.len() && raw == want.shape();
            let as_cf = raw == [n, ch, h, w];
            match (as_tf, as_cf) {
                (true, false) => false,
                (false, true) => true,
                _ => o.channel_first,
            }
        }
        _ => false,
    };
    let arranged = match (want.shape(), channel_first) {
        (&[n, h, w, ch], true) => {
            r.layout = "channel-first (NCHW)".into();
            want.as_f32().and_then(|v| {
                Tensor::f32(
                    vec![n, ch, h, w],
                    crate::runtime::kernels::nhwc_to_nchw(&v, [n, h, w, ch]),
                )
            })
        }
        _ => Ok(want.clone()),
    };
    let got = arranged.and_then(|e| {
        if o.value.len() != e.len() {
            return Err(Error::Mismatch(format!(
                "the model's output '{}' has {} elements ({:?}), TF's has {} ({:?})",
                o.name,
                o.value.len(),
                o.value.shape(),
                e.len(),
                want.shape()
            )));
        }
        let g = o.value.reshaped(e.shape().to_vec())?;
        compare(&g, &e, tol)
    });
    match got {
        Ok(c) => {
            r.passed = c.passed();
            r.comparison = Some(c);
        }
        Err(e) => r.error = Some(e.to_string()),
    }
    r
}

/// Keep, per layer, the worst result over samples.
fn merge_sample(layers: &mut Vec<LayerResult>, i: usize, r: LayerResult) {
    match layers.get_mut(i) {
        None => layers.push(r),
        Some(prev) => {
            if replaces((&prev.comparison, prev.passed), (&r.comparison, r.passed)) {
                *prev = r;
            }
        }
    }
}

/// Whether a later sample's result (`new`) is the one to keep over `prev`:
/// it is worse (no comparison at all, or a larger error) and does not hide
/// an earlier failure behind a pass.
fn replaces(prev: (&Option<Comparison>, bool), new: (&Option<Comparison>, bool)) -> bool {
    let worse = match (prev.0, new.0) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(a), Some(b)) => b.max_abs > a.max_abs,
    };
    worse && (prev.1 || !new.1)
}

/// The reference values each target needs: every float node whose name is
/// a blob of some target (plus the outputs).
pub fn reference_for(
    model: &Path,
    g: &Graph,
    samples: &[Sample],
    wanted: &[String],
    r: &Reference,
) -> Result<Vec<HashMap<String, Tensor>>> {
    let wanted: HashSet<&str> = wanted.iter().map(|s| s.as_str()).collect();
    let names: Vec<String> = g
        .nodes
        .iter()
        .filter(|n| {
            wanted.contains(n.name.as_str())
                && n.outputs
                    .first()
                    .is_some_and(|f| f.dtype == crate::ir::DType::F32)
        })
        .map(|n| n.name.clone())
        .collect();
    samples
        .iter()
        .map(|s| {
            let v = reference_values(model, g, s, &names, r)?;
            Ok(names
                .iter()
                .cloned()
                .zip(v)
                .filter_map(|(n, t)| Some((n, t?)))
                .collect())
        })
        .collect()
}

#[cfg(test)]
mod raw_tests {
    use super::*;
    use crate::formats::RawOutput;

    fn nhwc() -> Tensor {
        // (1, 2, 2, 3): distinct values so any reordering shows.
        Tensor::f32(vec![1, 2, 2, 3], (0..12).map(|v| v as f32).collect()).unwrap()
    }

    #[test]
    fn a_4d_output_may_be_channel_first() {
        let t = nhwc();
        let v = crate::runtime::kernels::nhwc_to_nchw(&t.as_f32().unwrap(), [1, 2, 2, 3]);
        let o = RawOutput {
            name: "y".into(),
            value: Tensor::f32(vec![1, 3, 2, 2], v).unwrap(),
            channel_first: true,
        };
        let r = judge_raw("y", &o, Some(&t), Tolerance::EXACT);
        assert!(r.passed, "{r:?}");
        assert_eq!(r.layout, "channel-first (NCHW)");
    }

    #[test]
    fn a_flat_output_in_channel_major_order_fails() {
        // TF's (1, 12) flatten of the map in (h, w, c) order, returned in
        // (c, h, w) order: same values, other places.
        let t = nhwc().reshaped(vec![1, 12]).unwrap();
        let v = crate::runtime::kernels::nhwc_to_nchw(&nhwc().as_f32().unwrap(), [1, 2, 2, 3]);
        let o = RawOutput {
            name: "flat".into(),
            value: Tensor::f32(vec![1, 12], v).unwrap(),
            channel_first: true,
        };
        let r = judge_raw("flat", &o, Some(&t), Tolerance::CLOSE);
        assert!(!r.passed, "{r:?}");
        assert_eq!(r.layout, "as TF");
    }
}
