//! Caffe: `NAME.prototxt` + `NAME.caffemodel`, in the dialect both BVLC
//! Caffe and OpenCV 4.x's importer accept. `write` turns the IR into a
//! `NetParameter`, `exec` runs one with Caffe's semantics (for
//! verify-parity, bench and FaceAll's MTCNN), `model` reads the files and
//! `layout` maps Caffe's blobs to TF's layouts.

pub mod exec;
pub mod fast;
pub mod layout;
pub mod model;
pub mod write;

use std::collections::HashMap;
use std::path::PathBuf;

use super::{Executor, Format, RawOutput, Run, WriteOptions, Written};
use crate::error::{Error, Result};
use crate::ir::{Graph, Tensor};

/// The Caffe format (`--to caffe`).
pub struct Caffe;

impl Format for Caffe {
    fn name(&self) -> &'static str {
        "caffe"
    }

    fn channel_first_outputs(&self) -> bool {
        true
    }
    fn extensions(&self) -> &'static [&'static str] {
        &[".prototxt", ".caffemodel"]
    }

    fn write(
        &self,
        g: &Graph,
        o: &WriteOptions,
        out: &mut super::files::Staging,
    ) -> Result<Written> {
        let mut c = write::emit_with_faults(g, &o.name, &o.caffe_faults)?;
        let text = write::prototxt(&mut c.net);
        out.stage(&format!("{}.prototxt", o.name), |w| {
            Ok(w.write_all(text.as_bytes())?)
        })?;
        out.stage(&format!("{}.caffemodel", o.name), |w| {
            write::write_caffemodel(&mut c, g, w)
        })?;
        let layers = c.net.layer.len();
        let mut report = serde_json::Map::new();
        report.insert("caffe_layers".into(), layers.into());
        report.insert("layers".into(), to_value(&c.notes)?);
        report.insert("blobs".into(), to_value(&c.blobs)?);
        Ok(Written {
            layers,
            notes: c.notes,
            report,
        })
    }

    fn open(&self, files: &[PathBuf]) -> Result<Box<dyn Executor>> {
        let [prototxt, caffemodel, ..] = files else {
            return Err(Error::Usage(
                "a Caffe model is a .prototxt and its .caffemodel".into(),
            ));
        };
        let net = exec::CaffeModel::load(prototxt, Some(caffemodel))?;
        // Layers that need weights must have found them in the caffemodel.
        for l in &net.layers {
            let needs = match l.kind() {
                "Convolution" | "InnerProduct" | "BatchNorm" | "PReLU" => 1,
                "Scale" if l.param.bottom.len() == 1 => 1,
                _ => 0,
            };
            if l.blobs.len() < needs {
                return Err(Error::Mismatch(format!(
                    "{}: layer '{}' ({}) has no weights in {}: the prototxt and caffemodel do not belong together",
                    prototxt.display(),
                    l.name(),
                    l.kind(),
                    caffemodel.display()
                )));
            }
        }
        Ok(Box::new(CaffeExecutor {
            net,
            prototxt: prototxt.clone(),
        }))
    }
}

pub(crate) fn to_value(v: &impl serde::Serialize) -> Result<serde_json::Value> {
    serde_json::to_value(v).map_err(|e| Error::Format(format!("encoding the report: {e}")))
}

struct CaffeExecutor {
    net: exec::CaffeModel,
    prototxt: PathBuf,
}

impl Executor for CaffeExecutor {
    fn inputs(&self) -> Vec<(String, Vec<usize>)> {
        let nhwc = |s: &Vec<usize>| match s.as_slice() {
            &[n, c, h, w] => vec![n, h, w, c],
            s => s.to_vec(),
        };
        self.net
            .inputs
            .iter()
            .map(|(n, s)| (n.clone(), nhwc(s)))
            .collect()
    }

    fn check_inputs(&self, tf_inputs: &[(String, Vec<usize>)]) -> Result<()> {
        let file = &self.prototxt;
        super::check_declared_inputs(
            file,
            &self.net.inputs,
            tf_inputs,
            layout::input_shape,
            "in NCHW",
        )
    }

    fn computes(&self) -> Vec<String> {
        self.net
            .layers
            .iter()
            .flat_map(|l| l.param.top.iter().cloned())
            .collect()
    }

    fn run(
        &self,
        feeds: &HashMap<String, Tensor>,
        want: &HashMap<String, Vec<usize>>,
    ) -> Result<Run> {
        let feeds: HashMap<String, Tensor> = feeds
            .iter()
            .map(|(k, t)| {
                let declared = self
                    .net
                    .inputs
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, s)| s.as_slice());
                Ok((k.clone(), layout::input_nchw(t, declared)?))
            })
            .collect::<Result<_>>()?;
        let (blobs, _, err) = self.net.forward_partial(&feeds)?;
        // A flatten's input shape: its output is in channel-first order.
        let mut flat_of: HashMap<&str, [usize; 3]> = HashMap::new();
        for l in &self.net.layers {
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
        let mut values = HashMap::new();
        for (name, b) in &blobs {
            if let Some(shape) = want.get(name) {
                let t = layout::to_tf(b, shape, flat_of.get(name.as_str()).copied());
                values.insert(name.clone(), t.map_err(|e| e.to_string()));
            }
        }
        let outputs = self
            .net
            .outputs()
            .into_iter()
            .filter_map(|name| {
                let value = blobs.get(&name)?.clone();
                Some(RawOutput {
                    name,
                    value,
                    channel_first: true,
                })
            })
            .collect();
        Ok(Run {
            values,
            failure: err.map(|e| e.to_string()),
            outputs,
        })
    }
}
