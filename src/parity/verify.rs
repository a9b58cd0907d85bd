//! verify-parity: run the source graph and each converted model on the same
//! inputs and compare every layer that carries a TF tensor's value.
//!
//! Converted layers are found by name: the emitters name blobs after the TF
//! tensors they compute (after folding, a conv's blob is its batch norm's
//! name). Layout is read off the shapes: NCHW/(C, H, W) blobs are compared
//! with NHWC values transposed, and a blob written by a flatten of a spatial
//! map is compared in channel-first order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{compare, Comparison, Tolerance};
use crate::error::{Error, Result};
use crate::ir::{Graph, Tensor};
use crate::runtime::kernels::nchw_to_nhwc;

/// Where reference values come from.
#[derive(Debug, Clone)]
pub enum Reference {
    /// faceall's own TF executor on the original graph.
    Builtin,
    /// Real TensorFlow through a Python subprocess.
    TensorFlow { python: PathBuf },
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

#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    pub target: String,
    pub file: String,
    pub layers: Vec<LayerResult>,
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
) -> Result<Vec<Tensor>> {
    match r {
        Reference::Builtin => crate::runtime::run(g, sample, names),
        Reference::TensorFlow { python } => tensorflow_oracle(python, model, sample, names),
    }
}

const ORACLE: &str = include_str!("../../scripts/tf_oracle.py");

fn tensorflow_oracle(
    python: &Path,
    model: &Path,
    sample: &Sample,
    names: &[String],
) -> Result<Vec<Tensor>> {
    let dir = tempfile_dir()?;
    let script = dir.join("tf_oracle.py");
    std::fs::write(&script, ORACLE)?;
    let mut cmd = std::process::Command::new(python);
    cmd.arg(&script).arg(model).arg(dir.join("out"));
    for (i, (name, t)) in sample.iter().enumerate() {
        let p = dir.join(format!("in{i}.npy"));
        crate::npy::write_f32(&p, t)?;
        cmd.arg(format!("{name}={}", p.display()));
    }
    cmd.arg("--fetch").args(names);
    let out = cmd.output().map_err(|e| {
        Error::Usage(format!(
            "--reference tensorflow needs Python ({}): {e}; install Python 3 and `pip install tensorflow-cpu==2.21.0 numpy`, or pass --python",
            python.display()
        ))
    })?;
    let _cleanup = RemoveOnDrop(dir.clone());
    if out.status.code() == Some(3) {
        return Err(Error::Usage(format!(
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
        return Err(Error::Usage(format!(
            "TensorFlow failed on {}: {last}",
            model.display()
        )));
    }
    (0..names.len())
        .map(|i| crate::npy::read_f32(&dir.join(format!("out/{i}.npy"))))
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

/// A converted value in TF's layout. faceall's Caffe blobs hold 4-D NHWC
/// values as NCHW, always (also when C happens to equal H and W), and a
/// blob written by a flatten of a spatial map in channel-first order.
fn caffe_to_tf(got: &Tensor, want: &[usize], flat_of: Option<[usize; 3]>) -> Result<Tensor> {
    let s = got.shape();
    if let (&[n, c, h, w], 4) = (s, want.len()) {
        if [n, h, w, c] == [want[0], want[1], want[2], want[3]] {
            return Tensor::f32(want.to_vec(), nchw_to_nhwc(&got.as_f32()?, [n, c, h, w]));
        }
        return Err(Error::Usage(format!(
            "shape {s:?} (NCHW) does not match TensorFlow's {want:?} (NHWC)"
        )));
    }
    if s == want {
        if let (Some([c, h, w]), 2) = (flat_of, want.len()) {
            if h * w > 1 {
                let v = nchw_to_nhwc(&got.as_f32()?, [want[0], c, h, w]);
                return Tensor::f32(want.to_vec(), v);
            }
        }
        return Ok(got.clone());
    }
    if got.len() == want.iter().product::<usize>() && want.len() != 4 {
        return got.reshaped(want.to_vec());
    }
    Err(Error::Usage(format!(
        "shape {s:?} does not match TensorFlow's {want:?}"
    )))
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
    run_error: Option<String>,
) -> TargetReport {
    let first_failure = layers.iter().find(|l| !l.passed).map(|l| l.tensor.clone());
    let passed = first_failure.is_none() && run_error.is_none() && layers.iter().any(|l| l.output);
    TargetReport {
        target: target.into(),
        file: file.display().to_string(),
        layers,
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

/// Compare a Caffe model with the reference, layer by layer, over all samples.
pub fn verify_caffe(c: &Checked, prototxt: &Path, caffemodel: &Path) -> Result<TargetReport> {
    let (model, g, samples, refs, tol, overrides) = (
        c.model,
        c.graph,
        c.samples,
        c.refs,
        c.tolerance,
        c.overrides,
    );
    let net = crate::formats::caffe::exec::CaffeModel::load(prototxt, Some(caffemodel))?;
    for (name, shape) in &net.inputs {
        let Some(i) = g.node_by_name(name).filter(|i| g.inputs.contains(i)) else {
            return Err(Error::Usage(format!(
                "{}: input '{name}' is not an input of {}",
                prototxt.display(),
                model.display()
            )));
        };
        let tf = &g.nodes[i].outputs[0].shape;
        let want = if tf.len() == 4 {
            vec![tf[0], tf[3], tf[1], tf[2]]
        } else {
            tf.clone()
        };
        if shape != &want {
            return Err(Error::Usage(format!("{}: input '{name}' is {shape:?}, the TF graph's is {tf:?} ({want:?} in NCHW): these files do not belong together", prototxt.display())));
        }
    }
    // Layers that need weights must have found them in the caffemodel.
    for l in &net.layers {
        let needs = match l.kind() {
            "Convolution" | "InnerProduct" | "BatchNorm" | "PReLU" => 1,
            "Scale" if l.param.bottom.len() == 1 => 1,
            _ => 0,
        };
        if l.blobs.len() < needs {
            return Err(Error::Usage(format!(
                "{}: layer '{}' ({}) has no weights in {}: the prototxt and caffemodel do not belong together",
                prototxt.display(),
                l.name(),
                l.kind(),
                caffemodel.display()
            )));
        }
    }
    // Which layer type writes each blob, and a flatten's input shape.
    let mut flat_of: HashMap<&str, [usize; 3]> = HashMap::new();
    let mut layers = vec![];
    let mut run_error = None;
    for (s, sample) in samples.iter().enumerate() {
        let feeds: HashMap<String, Tensor> = sample
            .iter()
            .map(|(k, t)| {
                Ok((
                    k.clone(),
                    if t.shape().len() == 4 {
                        nchw_input(t)?
                    } else {
                        t.clone()
                    },
                ))
            })
            .collect::<Result<_>>()?;
        let (blobs, _, err) = net.forward_partial(&feeds)?;
        if let Some(e) = err {
            run_error.get_or_insert(e.to_string());
        }
        for l in &net.layers {
            if l.kind() == "Flatten" {
                if let (Some(b), Some(t)) = (
                    l.param.bottom.first().and_then(|b| blobs.get(b)),
                    l.param.top.first(),
                ) {
                    if let &[_, c, h, w] = b.shape() {
                        flat_of.insert(t.as_str(), [c, h, w]);
                    }
                }
            }
        }
        let mut i = 0;
        for node in &g.nodes {
            let Some(want) = refs[s].get(&node.name) else {
                continue;
            };
            let output = g
                .outputs
                .iter()
                .any(|w| w.node == g.node_by_name(&node.name).unwrap_or(usize::MAX));
            let tol = overrides.get(&node.name).copied().unwrap_or(tol);
            let blob_exists = net
                .layers
                .iter()
                .any(|l| l.param.top.iter().any(|t| t == &node.name));
            if !blob_exists {
                continue;
            }
            let got = blobs
                .get(&node.name)
                .ok_or_else(|| Error::Usage("not computed (an earlier layer failed)".into()))
                .and_then(|b| {
                    caffe_to_tf(b, want.shape(), flat_of.get(node.name.as_str()).copied())
                });
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
    Ok(finish("caffe", caffemodel, layers, run_error))
}

/// Keep, per layer, the worst result over samples.
fn merge_sample(layers: &mut Vec<LayerResult>, i: usize, r: LayerResult) {
    match layers.get_mut(i) {
        None => layers.push(r),
        Some(prev) => {
            let worse = match (&prev.comparison, &r.comparison) {
                (_, None) => true,
                (None, Some(_)) => false,
                (Some(a), Some(b)) => b.max_abs > a.max_abs,
            };
            if worse && (prev.passed || !r.passed) {
                *prev = r;
            }
        }
    }
}

fn nchw_input(t: &Tensor) -> Result<Tensor> {
    let &[n, h, w, c] = t.shape() else {
        return Ok(t.clone());
    };
    Tensor::f32(
        vec![n, c, h, w],
        crate::runtime::kernels::nhwc_to_nchw(&t.as_f32()?, [n, h, w, c]),
    )
}

/// Compare a Core ML model with the reference, one sample (and one batch
/// element) per prediction.
pub fn verify_coreml(c: &Checked, mlmodel: &Path) -> Result<TargetReport> {
    let (model, g, samples, refs, tol, overrides) = (
        c.model,
        c.graph,
        c.samples,
        c.refs,
        c.tolerance,
        c.overrides,
    );
    let m = crate::formats::coreml::exec::CoremlModel::load(mlmodel)?;
    for (name, shape) in &m.inputs {
        let Some(i) = g.node_by_name(name).filter(|i| g.inputs.contains(i)) else {
            return Err(Error::Usage(format!(
                "{}: input '{name}' is not an input of {}",
                mlmodel.display(),
                model.display()
            )));
        };
        let tf = &g.nodes[i].outputs[0].shape;
        let want: Vec<usize> = match tf.as_slice() {
            [_, h, w, c] => vec![*c, *h, *w],
            [_, k] => vec![*k],
            _ => tf[1..].to_vec(),
        };
        if shape != &want {
            return Err(Error::Usage(format!("{}: input '{name}' is {shape:?}, the TF graph's {tf:?} needs {want:?} per sample: these files do not belong together", mlmodel.display())));
        }
    }
    let produced: std::collections::HashSet<&str> = m
        .layers()
        .iter()
        .flat_map(|l| l.output.iter().map(|s| s.as_str()))
        .collect();
    let flat: HashMap<&str, &str> = m
        .layers()
        .iter()
        .filter(|l| {
            matches!(
                l.layer,
                Some(crate::proto::coreml::neural_network_layer::Layer::Flatten(
                    _
                ))
            )
        })
        .filter_map(|l| Some((l.output.first()?.as_str(), l.input.first()?.as_str())))
        .collect();
    let mut layers = vec![];
    let mut run_error = None;
    for (s, sample) in samples.iter().enumerate() {
        let batch = sample
            .values()
            .next()
            .and_then(|t| t.shape().first().copied())
            .unwrap_or(1)
            .max(1);
        for n in 0..batch {
            let mut feeds = HashMap::new();
            for (name, t) in sample {
                let per = t.len() / batch.max(1);
                let v = t.as_f32()?[n * per..(n + 1) * per].to_vec();
                let v = match t.shape() {
                    &[_, h, w, c] => crate::runtime::kernels::nhwc_to_nchw(&v, [1, h, w, c]),
                    _ => v,
                };
                let declared = m
                    .inputs
                    .iter()
                    .find(|(i, _)| i == name)
                    .map(|(_, s)| s.clone())
                    .unwrap_or_default();
                feeds.insert(name.clone(), Tensor::f32(declared, v)?);
            }
            let blobs = match m.predict(&feeds) {
                Ok(b) => b,
                Err(e) => {
                    run_error.get_or_insert(e.to_string());
                    continue;
                }
            };
            let mut i = 0;
            for node in &g.nodes {
                let Some(want) = refs[s].get(&node.name) else {
                    continue;
                };
                if !produced.contains(node.name.as_str())
                    && !m.inputs.iter().any(|(x, _)| x == &node.name)
                {
                    continue;
                }
                let output = g.outputs.iter().any(|w| g.nodes[w.node].name == node.name);
                let tol = overrides.get(&node.name).copied().unwrap_or(tol);
                let per = want.len() / want.shape().first().copied().unwrap_or(1).max(1);
                let want_n = Tensor::f32(
                    std::iter::once(1)
                        .chain(want.shape()[1..].iter().copied())
                        .collect(),
                    want.as_f32()?[n * per..(n + 1) * per].to_vec(),
                )?;
                let flat_in = flat
                    .get(node.name.as_str())
                    .and_then(|b| blobs.get(*b))
                    .map(|t| t.shape().to_vec());
                let got = blobs
                    .get(&node.name)
                    .ok_or_else(|| Error::Usage("not computed".into()))
                    .and_then(|b| {
                        let [c, h, w] = match b.shape() {
                            &[c, h, w] => [c, h, w],
                            s => return Err(Error::Usage(format!("blob shape {s:?}"))),
                        };
                        let v = b.as_f32()?;
                        let ws = want_n.shape();
                        if ws.len() == 4 {
                            if [ws[1], ws[2], ws[3]] != [h, w, c]
                                && !(ws[3] == 1 && [ws[1], ws[2]] == [h, w] && c == 1)
                            {
                                return Err(Error::Usage(format!(
                                    "shape (C, H, W) {:?} does not match TensorFlow's {ws:?}",
                                    [c, h, w]
                                )));
                            }
                            return Tensor::f32(ws.to_vec(), nchw_to_nhwc(&v, [1, c, h, w]));
                        }
                        if let Some(&[fc, fh, fw]) = flat_in.as_deref() {
                            if fh * fw > 1 {
                                return Tensor::f32(ws.to_vec(), nchw_to_nhwc(&v, [1, fc, fh, fw]));
                            }
                        }
                        if b.len() != want_n.len() {
                            return Err(Error::Usage(format!(
                                "{} values where TensorFlow has {}",
                                b.len(),
                                want_n.len()
                            )));
                        }
                        b.reshaped(ws.to_vec())
                    });
                merge_sample(
                    &mut layers,
                    i,
                    judge(
                        &node.name,
                        &node.source_op,
                        &node.name,
                        output,
                        got,
                        &want_n,
                        tol,
                    ),
                );
                i += 1;
            }
        }
    }
    Ok(finish("coreml", mlmodel, layers, run_error))
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
    let names: Vec<String> = g
        .nodes
        .iter()
        .filter(|n| {
            wanted.contains(&n.name)
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
            Ok(names.iter().cloned().zip(v).collect())
        })
        .collect()
}
