//! Reading Caffe models as Caffe does: a deploy net (text prototxt, or
//! binary) filled with weights from a caffemodel by layer name, the old V1
//! `layers` format upgraded, TRAIN-only layers left out.

use std::collections::HashMap;
use std::path::Path;

use protobuf::Message;

use crate::error::{Error, Result};
use crate::ir::Tensor;
use crate::proto::caffe::{
    v1layer_parameter::LayerType, BlobProto, LayerParameter, NetParameter, Phase, V1LayerParameter,
};

/// One layer of a loaded net.
#[derive(Debug, Clone)]
pub struct Layer {
    pub param: LayerParameter,
    pub blobs: Vec<Tensor>,
}

impl CaffeModel {
    /// The net's outputs as Caffe defines them: blobs some layer writes and
    /// no later layer reads (a `Silence` counts as a reader), in the order
    /// they are first written.
    pub fn outputs(&self) -> Vec<String> {
        let mut out: Vec<String> = vec![];
        for l in &self.layers {
            for b in &l.param.bottom {
                // An in-place layer reads and rewrites its blob: it stays.
                if !l.param.top.contains(b) {
                    out.retain(|o| o != b);
                }
            }
            for t in &l.param.top {
                if !out.contains(t) {
                    out.push(t.clone());
                }
            }
        }
        out
    }
}

impl Layer {
    pub fn name(&self) -> &str {
        self.param.name()
    }
    pub fn kind(&self) -> &str {
        self.param.type_()
    }
}

/// A deploy net with its weights.
#[derive(Debug, Clone)]
pub struct CaffeModel {
    pub name: String,
    /// Declared inputs (blob name, NCHW shape).
    pub inputs: Vec<(String, Vec<usize>)>,
    pub layers: Vec<Layer>,
}

/// OpenCV's dialect writes field 13 as `ceil_mode` (bool); BVLC's is
/// `round_mode` (CEIL = 0, FLOOR = 1). Same number, opposite meaning.
fn translate_dialect(text: &str) -> String {
    text.lines()
        .map(|l| {
            let t = l.trim_start();
            if let Some(v) = t.strip_prefix("ceil_mode:") {
                let floor = v.trim().trim_end_matches(';') == "false";
                format!("round_mode: {}", if floor { "FLOOR" } else { "CEIL" })
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Parse a NetParameter from text or binary bytes.
pub fn parse_net(bytes: &[u8], text: bool) -> Result<NetParameter> {
    if text {
        let s = std::str::from_utf8(bytes)
            .map_err(|_| Error::Format("a prototxt must be UTF-8 text".into()))?;
        protobuf::text_format::parse_from_str::<NetParameter>(&translate_dialect(s))
            .map_err(|e| Error::Format(format!("not a Caffe prototxt: {e}")))
    } else {
        NetParameter::parse_from_bytes(bytes)
            .map_err(|e| Error::Format(format!("not a Caffe binary net: {e}")))
    }
}

fn v1_type(t: LayerType) -> &'static str {
    use LayerType::*;
    match t {
        ABSVAL => "AbsVal",
        CONCAT => "Concat",
        CONVOLUTION => "Convolution",
        DECONVOLUTION => "Deconvolution",
        DROPOUT => "Dropout",
        ELTWISE => "Eltwise",
        FLATTEN => "Flatten",
        INNER_PRODUCT => "InnerProduct",
        LRN => "LRN",
        POOLING => "Pooling",
        POWER => "Power",
        RELU => "ReLU",
        SIGMOID => "Sigmoid",
        SILENCE => "Silence",
        SOFTMAX => "Softmax",
        SPLIT => "Split",
        SLICE => "Slice",
        TANH => "TanH",
        DATA | HDF5_DATA | IMAGE_DATA | MEMORY_DATA | WINDOW_DATA | DUMMY_DATA => "Data",
        _ => "V1Unsupported",
    }
}

/// Caffe's upgrade of a V1 layer.
fn upgrade_v1(v: &V1LayerParameter) -> LayerParameter {
    let mut l = LayerParameter::new();
    l.set_name(v.name().to_string());
    let ty = v
        .type_
        .map(|t| t.enum_value().map(v1_type).unwrap_or("V1Unsupported"))
        .unwrap_or("V1Unsupported");
    l.set_type(ty.to_string());
    l.bottom = v.bottom.clone();
    l.top = v.top.clone();
    l.blobs = v.blobs.clone();
    l.include = v.include.clone();
    l.exclude = v.exclude.clone();
    l.concat_param = v.concat_param.clone();
    l.convolution_param = v.convolution_param.clone();
    l.dropout_param = v.dropout_param.clone();
    l.eltwise_param = v.eltwise_param.clone();
    l.inner_product_param = v.inner_product_param.clone();
    l.pooling_param = v.pooling_param.clone();
    l.power_param = v.power_param.clone();
    l.relu_param = v.relu_param.clone();
    l.sigmoid_param = v.sigmoid_param.clone();
    l.softmax_param = v.softmax_param.clone();
    l.slice_param = v.slice_param.clone();
    l.tanh_param = v.tanh_param.clone();
    l
}

fn layers_of(net: &NetParameter) -> Vec<LayerParameter> {
    if net.layer.is_empty() {
        net.layers.iter().map(upgrade_v1).collect()
    } else {
        net.layer.clone()
    }
}

/// Whether a layer runs in the TEST phase.
fn in_test_phase(l: &LayerParameter) -> bool {
    if !l.include.is_empty() {
        return l
            .include
            .iter()
            .any(|r| r.phase.is_none_or(|p| p.enum_value() == Ok(Phase::TEST)));
    }
    !l.exclude
        .iter()
        .any(|r| r.phase.is_some_and(|p| p.enum_value() == Ok(Phase::TEST)))
}

/// A blob as a tensor (shape, or the legacy num/channels/height/width).
pub fn blob_tensor(b: &BlobProto) -> Result<Tensor> {
    let shape: Vec<usize> = match b.shape.as_ref() {
        Some(s) => s
            .dim
            .iter()
            .map(|&d| {
                usize::try_from(d)
                    .map_err(|_| Error::Format(format!("negative blob dimension {d}")))
            })
            .collect::<Result<_>>()?,
        None => [b.num(), b.channels(), b.height(), b.width()]
            .iter()
            .map(|&d| {
                usize::try_from(d)
                    .map_err(|_| Error::Format(format!("negative blob dimension {d}")))
            })
            .collect::<Result<_>>()?,
    };
    let data: Vec<f32> = if !b.data.is_empty() {
        b.data.clone()
    } else {
        b.double_data.iter().map(|&x| x as f32).collect()
    };
    let shape = if shape.iter().product::<usize>() != data.len() && b.shape.is_none() {
        vec![data.len()]
    } else {
        shape
    };
    Tensor::f32(shape, data)
}

impl CaffeModel {
    /// Load a deploy net and, if given, fill it with a caffemodel's weights.
    pub fn load(prototxt: &Path, caffemodel: Option<&Path>) -> Result<Self> {
        let bytes = std::fs::read(prototxt).map_err(|e| Error::from(e).in_file(prototxt))?;
        let is_text = !prototxt
            .extension()
            .is_some_and(|e| e == "caffemodel" || e == "binaryproto");
        let net = parse_net(&bytes, is_text).map_err(|e| e.in_file(prototxt))?;
        let weights = match caffemodel {
            Some(p) => {
                let b = std::fs::read(p).map_err(|e| Error::from(e).in_file(p))?;
                Some(parse_net(&b, false).map_err(|e| e.in_file(p))?)
            }
            None => None,
        };
        Self::from_nets(&net, weights.as_ref()).map_err(|e| e.in_file(prototxt))
    }

    pub fn from_nets(net: &NetParameter, weights: Option<&NetParameter>) -> Result<Self> {
        let mut inputs = vec![];
        for (i, name) in net.input.iter().enumerate() {
            let shape: Vec<usize> = if let Some(s) = net.input_shape.get(i) {
                s.dim.iter().map(|&d| d.max(0) as usize).collect()
            } else if net.input_dim.len() >= 4 * (i + 1) {
                net.input_dim[4 * i..4 * i + 4]
                    .iter()
                    .map(|&d| d.max(0) as usize)
                    .collect()
            } else {
                return Err(Error::Format(format!("input '{name}' has no shape")));
            };
            inputs.push((name.clone(), shape));
        }
        let by_name: HashMap<String, Vec<BlobProto>> = match weights {
            Some(w) => layers_of(w)
                .into_iter()
                .filter(|l| !l.blobs.is_empty())
                .map(|l| (l.name().to_string(), l.blobs))
                .collect(),
            None => HashMap::new(),
        };
        let mut layers = vec![];
        for mut p in layers_of(net).into_iter().filter(in_test_phase) {
            if p.type_() == "Input" {
                for (j, top) in p.top.iter().enumerate() {
                    let s = p.input_param.shape.get(j).or(p.input_param.shape.first());
                    let shape = s
                        .map(|s| s.dim.iter().map(|&d| d.max(0) as usize).collect())
                        .unwrap_or_default();
                    inputs.push((top.clone(), shape));
                }
                continue;
            }
            let protos = match by_name.get(p.name()) {
                Some(b) => b.clone(),
                None => std::mem::take(&mut p.blobs),
            };
            let blobs = protos
                .iter()
                .map(blob_tensor)
                .collect::<Result<Vec<_>>>()
                .map_err(|e| Error::node(p.name(), p.type_(), e.to_string()))?;
            p.blobs.clear();
            layers.push(Layer { param: p, blobs });
        }
        Ok(CaffeModel {
            name: net.name().to_string(),
            inputs,
            layers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_the_blobs_nobody_reads() {
        // A flatten read by an inner product is no output; a blob read only
        // by an in-place layer still is; a Silence reads its blob away.
        let text = r#"
            name: "t"
            input: "data"
            input_shape { dim: 1 dim: 2 dim: 1 dim: 1 }
            layer { name: "flat" type: "Flatten" bottom: "data" top: "flat" }
            layer { name: "fc" type: "Power" bottom: "flat" top: "fc" }
            layer { name: "relu" type: "ReLU" bottom: "fc" top: "fc" }
            layer { name: "split" type: "Slice" bottom: "flat" top: "a" top: "b" slice_param { axis: 1 slice_point: 1 } }
            layer { name: "silence" type: "Silence" bottom: "b" }
        "#;
        let net = parse_net(text.as_bytes(), true).unwrap();
        let m = CaffeModel::from_nets(&net, None).unwrap();
        assert_eq!(m.outputs(), vec!["fc".to_string(), "a".to_string()]);
    }
}
