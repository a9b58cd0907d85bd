//! Core ML NeuralNetwork (`NAME.mlmodel`, specification version 1): `write`
//! turns the IR into a `Model`, `exec` reads one back and runs it with Core
//! ML's semantics (Core ML itself runs only on Apple systems), `layout` maps
//! its per-sample blobs to TF's layouts.

pub mod exec;
pub mod layout;
pub mod write;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use super::{Executor, Format, RawOutput, Run, WriteOptions, Written};
use crate::error::{Error, Result};
use crate::ir::{Graph, Tensor};
use crate::proto::coreml::neural_network_layer::Layer;

/// The Core ML NeuralNetwork format (`--to coreml`).
pub struct Coreml;

impl Format for Coreml {
    fn name(&self) -> &'static str {
        "coreml"
    }

    fn channel_first_outputs(&self) -> bool {
        true
    }
    fn extensions(&self) -> &'static [&'static str] {
        &[".mlmodel"]
    }

    fn needs_source_hash(&self) -> bool {
        true
    }

    fn write(
        &self,
        g: &Graph,
        o: &WriteOptions,
        out: &mut super::files::Staging,
    ) -> Result<Written> {
        let mut copts = o.coreml.clone();
        copts.source_name.clone_from(&o.source.name);
        copts.source_sha256.clone_from(&o.source.sha256);
        let mut c = write::emit(g, &copts)?;
        out.stage(&format!("{}.mlmodel", o.name), |w| {
            write::write_mlmodel(&mut c, g, w)
        })?;
        let layers = match &c.model.Type {
            Some(crate::proto::coreml::model::Type::NeuralNetwork(n)) => n.layers.len(),
            _ => 0,
        };
        let mut report = serde_json::Map::new();
        report.insert("coreml_layers".into(), layers.into());
        report.insert("coreml_blobs".into(), super::caffe::to_value(&c.blobs)?);
        Ok(Written {
            layers,
            notes: vec![],
            report,
        })
    }

    fn open(&self, files: &[PathBuf]) -> Result<Box<dyn Executor>> {
        let path = files
            .first()
            .ok_or_else(|| Error::Usage("a Core ML model is one .mlmodel file".into()))?;
        let model = exec::CoremlModel::load(path)?;
        Ok(Box::new(CoremlExecutor {
            model,
            path: path.clone(),
        }))
    }
}

struct CoremlExecutor {
    model: exec::CoremlModel,
    path: PathBuf,
}

impl Executor for CoremlExecutor {
    fn inputs(&self) -> Vec<(String, Vec<usize>)> {
        let tf = |s: &Vec<usize>| match s.as_slice() {
            &[c, h, w] => vec![1, h, w, c],
            s => std::iter::once(1).chain(s.iter().copied()).collect(),
        };
        self.model
            .inputs
            .iter()
            .map(|(n, s)| (n.clone(), tf(s)))
            .collect()
    }

    fn check_inputs(&self, tf_inputs: &[(String, Vec<usize>)]) -> Result<()> {
        let file = &self.path;
        super::check_declared_inputs(
            file,
            &self.model.inputs,
            tf_inputs,
            layout::input_shape,
            "per sample",
        )
    }

    fn computes(&self) -> Vec<String> {
        let mut names: Vec<String> = self.model.inputs.iter().map(|(n, _)| n.clone()).collect();
        names.extend(
            self.model
                .layers()
                .iter()
                .flat_map(|l| l.output.iter().cloned()),
        );
        names
    }

    /// One prediction per batch element (Core ML runs one sample at a
    /// time); the samples' values are joined back into TF's batch.
    fn run(
        &self,
        feeds: &HashMap<String, Tensor>,
        want: &HashMap<String, Vec<usize>>,
    ) -> Result<Run> {
        let batch = feeds
            .values()
            .next()
            .and_then(|t| t.shape().first().copied())
            .unwrap_or(1)
            .max(1);
        let flat: HashMap<&str, &str> = self
            .model
            .layers()
            .iter()
            .filter(|l| {
                matches!(&l.layer, Some(Layer::Flatten(p))
                    if p.mode.enum_value()
                        != Ok(crate::proto::coreml::flatten_layer_params::FlattenOrder::CHANNEL_LAST))
            })
            .filter_map(|l| Some((l.output.first()?.as_str(), l.input.first()?.as_str())))
            .collect();
        let mut per_name: HashMap<String, Vec<Tensor>> = HashMap::new();
        let mut errors: HashMap<String, String> = HashMap::new();
        let mut failure = None;
        // The declared outputs per sample, as predictions return them.
        let mut raw: Vec<Vec<f32>> = vec![vec![]; self.model.outputs.len()];
        let mut raw_shape: Vec<Vec<usize>> = vec![vec![]; self.model.outputs.len()];
        for n in 0..batch {
            let mut sample = HashMap::new();
            for (name, shape) in &self.model.inputs {
                let t = feeds
                    .get(name)
                    .ok_or_else(|| Error::Usage(format!("no value fed for input '{name}'")))?;
                sample.insert(name.clone(), layout::input_sample(t, n, shape)?);
            }
            let blobs = match self.model.predict(&sample) {
                Ok(b) => b,
                Err(e) => {
                    failure = Some(e.to_string());
                    break;
                }
            };
            for (i, name) in self.model.outputs.iter().enumerate() {
                if let (Some(b), Some(acc)) = (blobs.get(name), raw.get_mut(i)) {
                    acc.extend(b.as_f32()?.iter());
                    raw_shape[i] = b.shape().to_vec();
                }
            }
            for (name, shape) in want {
                let Some(b) = blobs.get(name) else {
                    continue;
                };
                let one: Vec<usize> = std::iter::once(1)
                    .chain(shape.iter().skip(1).copied())
                    .collect();
                let flat_in = flat
                    .get(name.as_str())
                    .and_then(|b| blobs.get(*b))
                    .map(|t| t.shape().to_vec());
                match layout::to_tf(b, &one, flat_in.as_deref()) {
                    Ok(t) => per_name.entry(name.clone()).or_default().push(t),
                    Err(e) => {
                        errors.entry(name.clone()).or_insert(e.to_string());
                    }
                }
            }
        }
        let mut values = HashMap::new();
        let done: HashSet<&String> = per_name.keys().chain(errors.keys()).collect();
        for name in done {
            let v = match errors.get(name) {
                Some(e) => Err(e.clone()),
                None => match per_name.get(name) {
                    Some(parts) if parts.len() == batch => {
                        layout::join_batch(parts).map_err(|e| e.to_string())
                    }
                    _ => continue,
                },
            };
            values.insert(name.clone(), v);
        }
        let mut outputs = vec![];
        if failure.is_none() {
            for ((name, data), shape) in self.model.outputs.iter().zip(raw).zip(raw_shape) {
                let shape: Vec<usize> = std::iter::once(batch).chain(shape).collect();
                outputs.push(RawOutput {
                    name: name.clone(),
                    value: Tensor::f32(shape, data)?,
                    channel_first: true,
                });
            }
        }
        Ok(Run {
            values,
            failure,
            outputs,
        })
    }
}
