//! A Core ML NeuralNetwork executor with Core ML's semantics, on one sample
//! at a time: every blob is (C, H, W). Core ML itself runs only on Apple
//! systems; this reads the written .mlmodel back and runs it here.

use std::collections::HashMap;
use std::path::Path;

use protobuf::Message;

use crate::error::{Error, Result};
use crate::ir::Tensor;
use crate::proto::coreml::{
    activation_params::NonlinearityType, convolution_layer_params::ConvolutionPaddingType,
    feature_type, gelu_layer_params, model, neural_network_layer::Layer,
    padding_layer_params::PaddingType, pooling_layer_params, reduce_layer_params,
    slice_layer_params, unary_function_layer_params, BorderAmounts, ConvolutionLayerParams, Model,
    NeuralNetworkLayer, WeightParams,
};

use crate::runtime::kernels;

/// A loaded .mlmodel with a neural network.
pub struct CoremlModel {
    pub model: Model,
    /// Declared inputs: name and per-sample shape as declared.
    pub inputs: Vec<(String, Vec<usize>)>,
    pub outputs: Vec<String>,
}

fn bad(m: impl Into<String>) -> Error {
    Error::Usage(m.into())
}

/// Weights as f32 from float32 or float16 storage.
pub fn weight_values(w: &WeightParams) -> Result<Vec<f32>> {
    if !w.floatValue.is_empty() {
        return Ok(w.floatValue.clone());
    }
    if !w.float16Value.is_empty() {
        if !w.float16Value.len().is_multiple_of(2) {
            return Err(bad("float16 weights with an odd byte count"));
        }
        return Ok(w
            .float16Value
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect());
    }
    if !w.rawValue.is_empty() {
        return Err(bad("raw (quantized) weights are not supported"));
    }
    Ok(vec![])
}

/// A deconvolution layer on a (C, H, W) blob: weights [C, O / groups, kh,
/// kw]; valid padding amounts crop the full scatter edge by edge.
fn deconvolution(p: &ConvolutionLayerParams, x: &Tensor, [c, h, w]: [usize; 3]) -> Result<Tensor> {
    let two = |v: &[u64], d: u64| -> Result<[usize; 2]> {
        match v {
            [] => Ok([d as usize; 2]),
            [a, b] if *a > 0 && *b > 0 => Ok([*a as usize, *b as usize]),
            v => Err(bad(format!("{v:?} is not two positive sizes"))),
        }
    };
    let (k, st) = (two(&p.kernelSize, 3)?, two(&p.stride, 1)?);
    let groups = (p.nGroups as usize).max(1);
    let o = p.outputChannels as usize;
    if p.kernelChannels as usize != c || !o.is_multiple_of(groups) || !c.is_multiple_of(groups) {
        return Err(bad(format!(
            "{c} input channels do not match kernelChannels {} in {groups} groups",
            p.kernelChannels
        )));
    }
    let pads = match &p.ConvolutionPaddingType {
        Some(ConvolutionPaddingType::Valid(v)) => {
            v.paddingAmounts.as_ref().map(amounts).unwrap_or_default()
        }
        None => [[0; 2]; 2],
        Some(ConvolutionPaddingType::Same(_)) => {
            return Err(bad("a deconvolution with same padding is not read"))
        }
    };
    if h == 0 || w == 0 {
        return Err(bad("a deconvolution of an empty blob"));
    }
    let full = [st[0] * (h - 1) + k[0], st[1] * (w - 1) + k[1]];
    let out = [
        full[0].checked_sub(pads[0][0] + pads[0][1]),
        full[1].checked_sub(pads[1][0] + pads[1][1]),
    ];
    let [Some(oh), Some(ow)] = out else {
        return Err(bad("padding crops more than the deconvolution's output"));
    };
    if !p.outputShape.is_empty() && p.outputShape != [oh as u64, ow as u64] {
        return Err(bad(format!(
            "outputShape {:?} differs from the {oh}x{ow} the padding gives",
            p.outputShape
        )));
    }
    let wt = weight_values(p.weights.as_ref().ok_or_else(|| bad("no weights"))?)?;
    if wt.len() != c * (o / groups) * k[0] * k[1] {
        return Err(bad(format!(
            "{} weights for {c}x{}x{k:?}",
            wt.len(),
            o / groups
        )));
    }
    let bias = if p.hasBias {
        let b = weight_values(p.bias.as_ref().ok_or_else(|| bad("hasBias without bias"))?)?;
        if b.len() != o {
            return Err(bad(format!("{} biases for {o} outputs", b.len())));
        }
        Some(b)
    } else {
        None
    };
    let g = kernels::DeconvGeometry {
        k,
        stride: st,
        dilation: [1, 1],
        crop: [pads[0][0], pads[1][0]],
        out: [oh, ow],
    };
    let y = kernels::deconv_nchw(
        &x.as_f32()?,
        [1, c, h, w],
        &wt,
        o,
        groups,
        &g,
        bias.as_deref(),
    );
    Tensor::f32(vec![o, oh, ow], y)
}

/// Resize a (C, H, W) blob: each channel plane is an NHWC map of depth 1.
fn planar_resize(x: &Tensor, [c, h, w]: [usize; 3], r: &crate::ir::Resize) -> Result<Tensor> {
    if h == 0 || w == 0 {
        return Err(bad("resizing an empty blob"));
    }
    let y = kernels::resize_nhwc(&x.as_f32()?, [c, h, w, 1], r);
    Tensor::f32(vec![c, r.size[0], r.size[1]], y)
}

fn chw(t: &Tensor) -> Result<[usize; 3]> {
    match t.shape() {
        [c, h, w] => Ok([*c, *h, *w]),
        s => Err(bad(format!("expected a (C, H, W) blob, got {s:?}"))),
    }
}

fn amounts(b: &BorderAmounts) -> [[usize; 2]; 2] {
    let mut p = [[0; 2]; 2];
    for (i, e) in b.borderAmounts.iter().take(2).enumerate() {
        p[i] = [e.startEdgeSize as usize, e.endEdgeSize as usize];
    }
    p
}

/// Constant padding of a (C, H, W) blob.
fn pad_chw(
    x: &[f32],
    [c, h, w]: [usize; 3],
    p: [[usize; 2]; 2],
    value: f32,
) -> (Vec<f32>, [usize; 3]) {
    let (oh, ow) = (h + p[0][0] + p[0][1], w + p[1][0] + p[1][1]);
    let mut out = vec![value; c * oh * ow];
    for ch in 0..c {
        for y in 0..h {
            let src = &x[(ch * h + y) * w..][..w];
            out[(ch * oh + y + p[0][0]) * ow + p[1][0]..][..w].copy_from_slice(src);
        }
    }
    (out, [c, oh, ow])
}

/// Core ML `same` padding for one axis (BOTTOM_RIGHT_HEAVY puts the extra at the end).
fn same_pad(i: usize, k: usize, s: usize, top_left_heavy: bool) -> [usize; 2] {
    let o = i.div_ceil(s.max(1));
    let total = ((o.saturating_sub(1)) * s + k).saturating_sub(i);
    let small = total / 2;
    if top_left_heavy {
        [total - small, small]
    } else {
        [small, total - small]
    }
}

impl CoremlModel {
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::from(e).in_file(path))?;
        Self::from_bytes(&bytes).map_err(|e| e.in_file(path))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let model = Model::parse_from_bytes(bytes)
            .map_err(|e| Error::Format(format!("not a Core ML model: {e}")))?;
        if !matches!(model.Type, Some(model::Type::NeuralNetwork(_))) {
            return Err(Error::Format("not a Core ML neuralNetwork model".into()));
        }
        let desc = model
            .description
            .as_ref()
            .ok_or_else(|| Error::Format("no model description".into()))?;
        let mut inputs = vec![];
        for f in &desc.input {
            let shape = match f.type_.as_ref().and_then(|t| t.Type.as_ref()) {
                Some(feature_type::Type::MultiArrayType(a)) => {
                    a.shape.iter().map(|&d| d.max(0) as usize).collect()
                }
                _ => {
                    return Err(Error::Format(format!(
                        "input '{}' is not a multi-array",
                        f.name
                    )))
                }
            };
            inputs.push((f.name.clone(), shape));
        }
        let outputs = desc.output.iter().map(|f| f.name.clone()).collect();
        Ok(CoremlModel {
            model,
            inputs,
            outputs,
        })
    }

    pub fn layers(&self) -> &[NeuralNetworkLayer] {
        match &self.model.Type {
            Some(model::Type::NeuralNetwork(n)) => &n.layers,
            _ => &[],
        }
    }

    /// Run one sample. Feeds are per-sample arrays ((C, H, W) or (K));
    /// returns every blob as (C, H, W).
    pub fn predict(&self, feeds: &HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
        let mut blobs = HashMap::new();
        for (name, shape) in &self.inputs {
            let t = feeds
                .get(name)
                .ok_or_else(|| bad(format!("no value fed for input '{name}'")))?;
            if t.len() != shape.iter().product::<usize>() {
                return Err(bad(format!(
                    "input '{name}' is declared {shape:?}, was fed {:?}",
                    t.shape()
                )));
            }
            let s3 = match shape.as_slice() {
                [c, h, w] => vec![*c, *h, *w],
                [k] => vec![*k, 1, 1],
                s => {
                    return Err(bad(format!(
                        "input '{name}' has rank {} (1 or 3 expected)",
                        s.len()
                    )))
                }
            };
            blobs.insert(name.clone(), t.reshaped(s3)?);
        }
        for l in self.layers() {
            let ins = l
                .input
                .iter()
                .map(|b| {
                    blobs.get(b).cloned().ok_or_else(|| {
                        Error::node(
                            &l.name,
                            kind(l),
                            format!("input '{b}' is not produced before it"),
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let out = run_layer(l, &ins).map_err(|e| match e {
                e @ Error::Node { .. } => e,
                e => Error::node(&l.name, kind(l), e.to_string()),
            })?;
            let name = l
                .output
                .first()
                .ok_or_else(|| Error::node(&l.name, kind(l), "no output"))?;
            blobs.insert(name.clone(), out);
        }
        Ok(blobs)
    }
}

pub fn kind(l: &NeuralNetworkLayer) -> &'static str {
    match &l.layer {
        Some(Layer::Convolution(_)) => "convolution",
        Some(Layer::Pooling(_)) => "pooling",
        Some(Layer::Activation(_)) => "activation",
        Some(Layer::InnerProduct(_)) => "innerProduct",
        Some(Layer::Batchnorm(_)) => "batchnorm",
        Some(Layer::L2normalize(_)) => "l2normalize",
        Some(Layer::Softmax(_)) => "softmax",
        Some(Layer::Padding(_)) => "padding",
        Some(Layer::Unary(_)) => "unary",
        Some(Layer::Add(_)) => "add",
        Some(Layer::Multiply(_)) => "multiply",
        Some(Layer::Scale(_)) => "scale",
        Some(Layer::Reduce(_)) => "reduce",
        Some(Layer::Reshape(_)) => "reshape",
        Some(Layer::Flatten(_)) => "flatten",
        Some(Layer::Concat(_)) => "concat",
        Some(Layer::Permute(_)) => "permute",
        Some(Layer::Gelu(_)) => "gelu",
        Some(Layer::Crop(_)) => "crop",
        Some(Layer::Slice(_)) => "slice",
        Some(Layer::Upsample(_)) => "upsample",
        Some(Layer::ResizeBilinear(_)) => "resizeBilinear",
        Some(Layer::ReorganizeData(_)) => "reorganizeData",
        None => "unknown",
    }
}

/// Broadcast `b` (same shape, (C,1,1), (1,H,W) or (1,1,1)) against `a`.
fn broadcast(
    a: &mut [f32],
    [c, h, w]: [usize; 3],
    b: &Tensor,
    f: impl Fn(f32, f32) -> f32,
) -> Result<()> {
    let [bc, bh, bw] = chw(b)?;
    let bv = b.as_f32()?;
    let fits = (bc == c || bc == 1) && (bh == h || bh == 1) && (bw == w || bw == 1);
    if !fits {
        return Err(bad(format!(
            "cannot broadcast {:?} to {:?}",
            [bc, bh, bw],
            [c, h, w]
        )));
    }
    for ch in 0..c {
        for y in 0..h {
            for x in 0..w {
                let j = ((if bc == 1 { 0 } else { ch }) * bh + if bh == 1 { 0 } else { y }) * bw
                    + if bw == 1 { 0 } else { x };
                let i = (ch * h + y) * w + x;
                a[i] = f(a[i], bv[j]);
            }
        }
    }
    Ok(())
}

fn run_layer(l: &NeuralNetworkLayer, ins: &[Tensor]) -> Result<Tensor> {
    let x = ins.first().ok_or_else(|| bad("no input"));
    let layer = l
        .layer
        .as_ref()
        .ok_or_else(|| bad("a layer without parameters"))?;
    match layer {
        Layer::Convolution(p) => {
            let x = x?;
            let [c, h, w] = chw(x)?;
            if p.isDeconvolution {
                return deconvolution(p, x, [c, h, w]);
            }
            let k = [
                *p.kernelSize.first().unwrap_or(&3) as usize,
                *p.kernelSize.get(1).unwrap_or(&3) as usize,
            ];
            let st = [
                *p.stride.first().unwrap_or(&1) as usize,
                *p.stride.get(1).unwrap_or(&1) as usize,
            ];
            let dil = [
                *p.dilationFactor.first().unwrap_or(&1) as usize,
                *p.dilationFactor.get(1).unwrap_or(&1) as usize,
            ];
            let groups = (p.nGroups as usize).max(1);
            let o = p.outputChannels as usize;
            if p.kernelChannels as usize * groups != c || !o.is_multiple_of(groups) {
                return Err(bad(format!(
                    "{c} input channels do not match kernelChannels {} x nGroups {groups}",
                    p.kernelChannels
                )));
            }
            let ek = |i: usize| (k[i] - 1) * dil[i] + 1;
            let pads = match &p.ConvolutionPaddingType {
                Some(ConvolutionPaddingType::Valid(v)) => {
                    v.paddingAmounts.as_ref().map(amounts).unwrap_or_default()
                }
                Some(ConvolutionPaddingType::Same(s)) => {
                    let tl = s.asymmetryMode.enum_value()
                        == Ok(crate::proto::coreml::same_padding::SamePaddingMode::TOP_LEFT_HEAVY);
                    [same_pad(h, ek(0), st[0], tl), same_pad(w, ek(1), st[1], tl)]
                }
                None => [[0; 2]; 2],
            };
            let wt = weight_values(p.weights.as_ref().ok_or_else(|| bad("no weights"))?)?;
            if wt.len() != o * (c / groups) * k[0] * k[1] {
                return Err(bad(format!(
                    "{} weights for {o}x{}x{}x{}",
                    wt.len(),
                    c / groups,
                    k[0],
                    k[1]
                )));
            }
            let bias = if p.hasBias {
                Some(weight_values(
                    p.bias.as_ref().ok_or_else(|| bad("hasBias without bias"))?,
                )?)
            } else {
                None
            };
            let (xp, [_, hp, wp]) = pad_chw(&x.as_f32()?, [c, h, w], pads, 0.0);
            if hp < ek(0) || wp < ek(1) {
                return Err(bad("kernel larger than the padded input"));
            }
            let (oh, ow) = ((hp - ek(0)) / st[0] + 1, (wp - ek(1)) / st[1] + 1);
            let y = kernels::conv_nchw(
                &xp,
                [1, c, hp, wp],
                &wt,
                o,
                k,
                st,
                [0, 0],
                dil,
                groups,
                bias.as_deref(),
                [oh, ow],
            );
            Tensor::f32(vec![o, oh, ow], y)
        }
        Layer::Pooling(p) => {
            let x = x?;
            let [c, h, w] = chw(x)?;
            let (k, st) = if p.globalPooling {
                ([h, w], [1, 1])
            } else {
                (
                    [
                        *p.kernelSize.first().unwrap_or(&3) as usize,
                        *p.kernelSize.get(1).unwrap_or(&3) as usize,
                    ],
                    [
                        *p.stride.first().unwrap_or(&1) as usize,
                        *p.stride.get(1).unwrap_or(&1) as usize,
                    ],
                )
            };
            if k.contains(&0) || st.contains(&0) {
                return Err(bad("zero kernel or stride"));
            }
            use pooling_layer_params::PoolingPaddingType as P;
            let (pads, ceil) = match (&p.PoolingPaddingType, p.globalPooling) {
                (_, true) => ([[0; 2]; 2], false),
                (Some(P::Valid(v)), _) => (
                    v.paddingAmounts.as_ref().map(amounts).unwrap_or_default(),
                    false,
                ),
                (Some(P::Same(_)), _) => (
                    [
                        same_pad(h, k[0], st[0], false),
                        same_pad(w, k[1], st[1], false),
                    ],
                    false,
                ),
                (Some(P::IncludeLastPixel(v)), _) => {
                    let a = |i: usize| *v.paddingAmounts.get(i).unwrap_or(&0) as usize;
                    ([[a(0), a(0)], [a(1), a(1)]], true)
                }
                (None, _) => ([[0; 2]; 2], false),
            };
            let out = |i: usize, d: usize| -> Result<usize> {
                let span = (d + pads[i][0] + pads[i][1])
                    .checked_sub(k[i])
                    .ok_or_else(|| bad("kernel larger than the padded input"))?;
                let mut o = if ceil {
                    span.div_ceil(st[i])
                } else {
                    span / st[i]
                } + 1;
                if ceil && (o - 1) * st[i] >= d + pads[i][0] {
                    o -= 1;
                }
                Ok(o)
            };
            let (oh, ow) = (out(0, h)?, out(1, w)?);
            let max = p.type_.enum_value() == Ok(pooling_layer_params::PoolingType::MAX);
            if !max && p.type_.enum_value() != Ok(pooling_layer_params::PoolingType::AVERAGE) {
                return Err(bad("only MAX and AVERAGE pooling"));
            }
            let xv = x.as_f32()?;
            let mut y = vec![0.0f32; c * oh * ow];
            for ch in 0..c {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let y0 = (oy * st[0]) as isize - pads[0][0] as isize;
                        let x0 = (ox * st[1]) as isize - pads[1][0] as isize;
                        let (mut acc, mut n) = (if max { f32::NEG_INFINITY } else { 0.0 }, 0usize);
                        for iy in y0.max(0)..(y0 + k[0] as isize).min(h as isize) {
                            for ix in x0.max(0)..(x0 + k[1] as isize).min(w as isize) {
                                let v = xv[(ch * h + iy as usize) * w + ix as usize];
                                acc = if max { acc.max(v) } else { acc + v };
                                n += 1;
                            }
                        }
                        y[(ch * oh + oy) * ow + ox] = if max {
                            acc
                        } else if p.avgPoolExcludePadding {
                            acc / n.max(1) as f32
                        } else {
                            acc / (k[0] * k[1]) as f32
                        };
                    }
                }
            }
            Tensor::f32(vec![c, oh, ow], y)
        }
        Layer::Activation(a) => {
            let x = x?;
            let mut v = x.as_f32()?.into_owned();
            match &a.NonlinearityType {
                Some(NonlinearityType::Linear(l)) => {
                    v.iter_mut().for_each(|x| *x = l.alpha * *x + l.beta)
                }
                Some(NonlinearityType::ReLU(_)) => {
                    kernels::activation(crate::ir::Activation::Relu, &mut v)
                }
                Some(NonlinearityType::Tanh(_)) => {
                    kernels::activation(crate::ir::Activation::Tanh, &mut v)
                }
                Some(NonlinearityType::Sigmoid(_)) => {
                    kernels::activation(crate::ir::Activation::Sigmoid, &mut v)
                }
                Some(NonlinearityType::LeakyReLU(e)) => {
                    kernels::activation(crate::ir::Activation::LeakyRelu { alpha: e.alpha }, &mut v)
                }
                Some(NonlinearityType::ELU(e)) => v.iter_mut().for_each(|x| {
                    if *x < 0.0 {
                        *x = e.alpha * x.exp_m1()
                    }
                }),
                None => return Err(bad("activation without a type")),
            }
            Tensor::f32(x.shape().to_vec(), v)
        }
        Layer::Gelu(p) => {
            use gelu_layer_params::GeluMode;
            let x = x?;
            let approximate = match p.mode.enum_value() {
                Ok(GeluMode::EXACT) => false,
                Ok(GeluMode::TANH_APPROXIMATION) => true,
                Ok(GeluMode::SIGMOID_APPROXIMATION) | Err(_) => {
                    return Err(bad(
                        "gelu: only the EXACT and TANH_APPROXIMATION modes are run",
                    ))
                }
            };
            let mut v = x.as_f32()?.into_owned();
            kernels::activation(crate::ir::Activation::Gelu { approximate }, &mut v);
            Tensor::f32(x.shape().to_vec(), v)
        }
        Layer::InnerProduct(p) => {
            let x = x?;
            let (k, o) = (p.inputChannels as usize, p.outputChannels as usize);
            if x.len() != k {
                return Err(bad(format!(
                    "input has {} values, inputChannels is {k}",
                    x.len()
                )));
            }
            let wt = weight_values(p.weights.as_ref().ok_or_else(|| bad("no weights"))?)?;
            if wt.len() != k * o {
                return Err(bad(format!("{} weights for {o}x{k}", wt.len())));
            }
            let mut y = kernels::matmul(&x.as_f32()?, &wt, 1, k, o, false, true);
            if p.hasBias {
                let b = weight_values(p.bias.as_ref().ok_or_else(|| bad("hasBias without bias"))?)?;
                y.iter_mut().zip(&b).for_each(|(v, b)| *v += b);
            }
            Tensor::f32(vec![o, 1, 1], y)
        }
        Layer::Batchnorm(p) => {
            let x = x?;
            let [c, h, w] = chw(x)?;
            if p.computeMeanVar || p.instanceNormalization {
                return Err(bad(
                    "batchnorm computing its own statistics is not supported",
                ));
            }
            let get = |w: &protobuf::MessageField<WeightParams>| -> Result<Vec<f32>> {
                weight_values(w.as_ref().ok_or_else(|| bad("missing batchnorm weights"))?)
            };
            let (g, b, m, v) = (
                get(&p.gamma)?,
                get(&p.beta)?,
                get(&p.mean)?,
                get(&p.variance)?,
            );
            if [g.len(), b.len(), m.len(), v.len()] != [c; 4] {
                return Err(bad("batchnorm weights do not match the channels"));
            }
            let mut out = x.as_f32()?.into_owned();
            for ch in 0..c {
                let s = g[ch] / (v[ch] + p.epsilon).sqrt();
                let t = b[ch] - m[ch] * s;
                out[ch * h * w..(ch + 1) * h * w]
                    .iter_mut()
                    .for_each(|x| *x = *x * s + t);
            }
            Tensor::f32(vec![c, h, w], out)
        }
        Layer::L2normalize(p) => {
            let x = x?;
            let v = x.as_f32()?;
            let s: f32 = v.iter().map(|a| a * a).sum();
            let d = (s + p.epsilon).sqrt();
            Tensor::f32(x.shape().to_vec(), v.iter().map(|a| a / d).collect())
        }
        Layer::Softmax(_) => {
            let x = x?;
            let [c, h, w] = chw(x)?;
            let mut v = x.as_f32()?.into_owned();
            for i in 0..h * w {
                let m = (0..c)
                    .map(|ch| v[ch * h * w + i])
                    .fold(f32::NEG_INFINITY, f32::max);
                let mut s = 0.0;
                for ch in 0..c {
                    let e = (v[ch * h * w + i] - m).exp();
                    v[ch * h * w + i] = e;
                    s += e;
                }
                for ch in 0..c {
                    v[ch * h * w + i] /= s;
                }
            }
            Tensor::f32(vec![c, h, w], v)
        }
        Layer::Upsample(p) => {
            use crate::proto::coreml::upsample_layer_params::{
                InterpolationMode, LinearUpsampleMode,
            };
            let x = x?;
            let [c, h, w] = chw(x)?;
            if !p.fractionalScalingFactor.is_empty() {
                return Err(bad("fractional scaling factors are not read"));
            }
            let f = match p.scalingFactor.as_slice() {
                [] => [1, 1],
                [a, b] if *a > 0 && *b > 0 => [*a as usize, *b as usize],
                s => return Err(bad(format!("scalingFactor {s:?}"))),
            };
            let bilinear = p.mode.enum_value() == Ok(InterpolationMode::BILINEAR);
            let grid = p.linearUpsampleMode.enum_value();
            let r = crate::ir::Resize {
                mode: if bilinear {
                    crate::ir::ResizeMode::Bilinear
                } else {
                    crate::ir::ResizeMode::Nearest
                },
                size: [h * f[0], w * f[1]],
                align_corners: bilinear && grid == Ok(LinearUpsampleMode::ALIGN_CORNERS_TRUE),
                half_pixel_centers: bilinear && grid == Ok(LinearUpsampleMode::ALIGN_CORNERS_FALSE),
            };
            planar_resize(x, [c, h, w], &r)
        }
        Layer::ResizeBilinear(p) => {
            use crate::proto::coreml::sampling_mode::Method;
            let x = x?;
            let [c, h, w] = chw(x)?;
            let size = match p.targetSize.as_slice() {
                [] => [1, 1],
                [a, b] if *a > 0 && *b > 0 => [*a as usize, *b as usize],
                s => return Err(bad(format!("targetSize {s:?}"))),
            };
            // The two grids of TF's: linspace(0, X - X/N) and, for
            // STRICT_ALIGN_ENDPOINTS_MODE, linspace(0, X - 1).
            let method = p.mode.as_ref().map(|m| m.samplingMethod.enum_value());
            let align = match method.unwrap_or(Ok(Method::STRICT_ALIGN_ENDPOINTS_MODE)) {
                Ok(Method::STRICT_ALIGN_ENDPOINTS_MODE) => true,
                Ok(Method::UPSAMPLE_MODE) => false,
                m => return Err(bad(format!("sampling mode {m:?} is not read"))),
            };
            let r = crate::ir::Resize {
                mode: crate::ir::ResizeMode::Bilinear,
                size,
                align_corners: align,
                half_pixel_centers: false,
            };
            planar_resize(x, [c, h, w], &r)
        }
        Layer::ReorganizeData(p) => {
            use crate::proto::coreml::reorganize_data_layer_params::ReorganizationType;
            let x = x?;
            let [c, h, w] = chw(x)?;
            let to_space = match p.mode.enum_value() {
                Ok(ReorganizationType::DEPTH_TO_SPACE) => true,
                Ok(ReorganizationType::SPACE_TO_DEPTH) => false,
                m => return Err(bad(format!("reorganization {m:?} is not read"))),
            };
            let sd = crate::ir::SpaceDepth {
                block: p.blockSize as usize,
                to_space,
            };
            let fact = crate::ir::Fact::f32(vec![1, h, w, c]);
            let out = crate::ir::Op::SpaceDepth(sd.clone())
                .infer(&[&fact])
                .map_err(bad)?;
            let o = &out[0].shape;
            let y = kernels::space_depth_nhwc(
                &kernels::nchw_to_nhwc(&x.as_f32()?, [1, c, h, w]),
                [1, h, w, c],
                &sd,
            );
            Tensor::f32(
                vec![o[3], o[1], o[2]],
                kernels::nhwc_to_nchw(&y, [1, o[1], o[2], o[3]]),
            )
        }
        Layer::Padding(p) => {
            let x = x?;
            let value = match &p.PaddingType {
                Some(PaddingType::Constant(c)) => c.value,
                None => return Err(bad("padding without a type")),
            };
            let pads = p.paddingAmounts.as_ref().map(amounts).unwrap_or_default();
            let (v, s) = pad_chw(&x.as_f32()?, chw(x)?, pads, value);
            Tensor::f32(s.to_vec(), v)
        }
        Layer::Crop(p) => {
            let x = x?;
            if !p.offset.is_empty() {
                return Err(bad("crop: only the one-input form (cropAmounts) is run"));
            }
            let [c, h, w] = chw(x)?;
            let a = p.cropAmounts.as_ref().map(amounts).unwrap_or_default();
            if a[0][0] + a[0][1] > h || a[1][0] + a[1][1] > w {
                return Err(bad(format!("crop {a:?} of a {h}x{w} blob")));
            }
            let end = [c, h - a[0][1], w - a[1][1]];
            let v = crate::runtime::kernels::slice(
                &x.as_f32()?,
                &[c, h, w],
                &[0, a[0][0], a[1][0]],
                &end,
            );
            Tensor::f32(vec![c, end[1] - a[0][0], end[2] - a[1][0]], v)
        }
        Layer::Slice(p) => {
            use slice_layer_params::SliceAxis;
            let x = x?;
            let dims = chw(x)?;
            let axis = match p.axis.enum_value() {
                Ok(SliceAxis::CHANNEL_AXIS) => 0,
                Ok(SliceAxis::HEIGHT_AXIS) => 1,
                Ok(SliceAxis::WIDTH_AXIS) => 2,
                Err(v) => return Err(bad(format!("slice: unknown axis {v}"))),
            };
            let d = dims[axis] as i64;
            // Negative indices count from the end (endIndex -1: the end).
            let at = |i: i64, end: bool| if i < 0 { d + i + end as i64 } else { i };
            let (b, e) = (at(p.startIndex, false), at(p.endIndex, true));
            if p.stride != 1 || b < 0 || e > d || b > e {
                return Err(bad(format!(
                    "slice {}..{} step {} of an axis of {d}",
                    p.startIndex, p.endIndex, p.stride
                )));
            }
            let (mut begin, mut end) = ([0; 3], dims);
            begin[axis] = b as usize;
            end[axis] = e as usize;
            let v = crate::runtime::kernels::slice(&x.as_f32()?, &dims, &begin, &end);
            let shape = (0..3).map(|i| end[i] - begin[i]).collect();
            Tensor::f32(shape, v)
        }
        Layer::Unary(p) => {
            use unary_function_layer_params::Operation as O;
            let x = x?;
            let op = p
                .type_
                .enum_value()
                .map_err(|v| bad(format!("unknown unary op {v}")))?;
            let v = x
                .as_f32()?
                .iter()
                .map(|&a| {
                    let a = p.scale * a + p.shift;
                    match op {
                        O::SQRT => Ok(a.sqrt()),
                        O::RSQRT => Ok(1.0 / (a + p.epsilon).sqrt()),
                        O::INVERSE => Ok(1.0 / (a + p.epsilon)),
                        O::POWER => Ok(a.powf(p.alpha)),
                        O::EXP => Ok(a.exp()),
                        O::LOG => Ok((a + p.epsilon).ln()),
                        O::ABS => Ok(a.abs()),
                        O::THRESHOLD => Ok(a.max(p.alpha)),
                    }
                })
                .collect::<Result<Vec<f32>>>()?;
            Tensor::f32(x.shape().to_vec(), v)
        }
        Layer::Add(_) | Layer::Multiply(_) => {
            let is_add = matches!(layer, Layer::Add(_));
            let alpha = match layer {
                Layer::Add(a) => a.alpha,
                Layer::Multiply(m) => m.alpha,
                _ => 0.0,
            };
            // The largest input sets the shape; the others broadcast.
            let big = ins
                .iter()
                .max_by_key(|t| t.len())
                .ok_or_else(|| bad("no input"))?;
            let s = chw(big)?;
            let mut acc = vec![if is_add { 0.0 } else { 1.0 }; big.len()];
            for t in ins {
                if is_add {
                    broadcast(&mut acc, s, t, |a, b| a + b)?;
                } else {
                    broadcast(&mut acc, s, t, |a, b| a * b)?;
                }
            }
            if ins.len() == 1 {
                acc.iter_mut()
                    .for_each(|v| if is_add { *v += alpha } else { *v *= alpha });
            }
            Tensor::f32(s.to_vec(), acc)
        }
        Layer::Scale(p) => {
            let x = x?;
            let s = chw(x)?;
            let mut v = x.as_f32()?.into_owned();
            let shaped = |vals: Vec<f32>, shape: &[u64]| -> Result<Tensor> {
                let d: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
                let d3 = match d.as_slice() {
                    [c] => vec![*c, 1, 1],
                    [c, h, w] => vec![*c, *h, *w],
                    _ => return Err(bad(format!("scale shape {d:?}"))),
                };
                Tensor::f32(d3, vals)
            };
            let sc = weight_values(p.scale.as_ref().ok_or_else(|| bad("no scale"))?)?;
            broadcast(&mut v, s, &shaped(sc, &p.shapeScale)?, |a, b| a * b)?;
            if p.hasBias {
                let b = weight_values(p.bias.as_ref().ok_or_else(|| bad("no bias"))?)?;
                broadcast(&mut v, s, &shaped(b, &p.shapeBias)?, |a, b| a + b)?;
            }
            Tensor::f32(s.to_vec(), v)
        }
        Layer::Reduce(p) => {
            use reduce_layer_params::{ReduceAxis as A, ReduceOperation as M};
            let x = x?;
            let [c, h, w] = chw(x)?;
            let mode = p
                .mode
                .enum_value()
                .map_err(|v| bad(format!("unknown reduce mode {v}")))?;
            if !matches!(mode, M::SUM | M::AVG) {
                return Err(bad("only SUM and AVG reductions"));
            }
            let axis = p
                .axis
                .enum_value()
                .map_err(|v| bad(format!("unknown reduce axis {v}")))?;
            let xs = x.as_f32()?;
            let (axes, shape): (Vec<usize>, Vec<usize>) = match axis {
                A::CHW => (vec![0, 1, 2], vec![1, 1, 1]),
                A::HW => (vec![1, 2], vec![c, 1, 1]),
                A::C => (vec![0], vec![1, h, w]),
                A::H => (vec![1], vec![c, 1, w]),
                A::W => (vec![2], vec![c, h, 1]),
            };
            let op = if mode == M::SUM {
                crate::ir::ReduceOp::Sum
            } else {
                crate::ir::ReduceOp::Mean
            };
            Tensor::f32(shape, kernels::reduce(&xs, &[c, h, w], &axes, op))
        }
        Layer::Reshape(p) => {
            let x = x?;
            let d: Vec<usize> = p.targetShape.iter().map(|&d| d.max(0) as usize).collect();
            let d3 = match d.as_slice() {
                [c, h, w] => vec![*c, *h, *w],
                [_, c, h, w] => vec![*c, *h, *w],
                _ => return Err(bad(format!("reshape target {d:?}"))),
            };
            if p.mode.enum_value()
                != Ok(crate::proto::coreml::reshape_layer_params::ReshapeOrder::CHANNEL_FIRST)
            {
                return Err(bad("only CHANNEL_FIRST reshapes"));
            }
            x.reshaped(d3)
        }
        Layer::Flatten(p) => {
            let x = x?;
            let [c, h, w] = chw(x)?;
            let v = if p.mode.enum_value()
                == Ok(crate::proto::coreml::flatten_layer_params::FlattenOrder::CHANNEL_LAST)
            {
                kernels::nchw_to_nhwc(&x.as_f32()?, [1, c, h, w])
            } else {
                x.as_f32()?.into_owned()
            };
            Tensor::f32(vec![c * h * w, 1, 1], v)
        }
        Layer::Permute(p) => {
            // Axes of (Seq, C, H, W); a blob here is one sample's (C, H, W)
            // with Seq = 1, which must stay first.
            let x = x?;
            let dims = chw(x)?;
            let perm: Vec<usize> = p.axis.iter().map(|&a| a as usize).collect();
            let mut seen = [false; 4];
            let valid = perm.len() == 4
                && perm[0] == 0
                && perm
                    .iter()
                    .all(|&a| a < 4 && !std::mem::replace(&mut seen[a], true));
            if !valid {
                return Err(bad(format!(
                    "permute {:?} (a permutation of (Seq, C, H, W) keeping Seq first)",
                    p.axis
                )));
            }
            let p3: Vec<usize> = perm[1..].iter().map(|a| a - 1).collect();
            let v = crate::runtime::kernels::transpose(&x.as_f32()?, &dims, &p3);
            Tensor::f32(p3.iter().map(|&a| dims[a]).collect(), v)
        }
        Layer::Concat(p) => {
            if p.sequenceConcat {
                return Err(bad("sequence concat is not supported"));
            }
            let first = chw(x?)?;
            let mut c = 0;
            for t in ins {
                let s = chw(t)?;
                if s[1..] != first[1..] {
                    return Err(bad(format!("cannot concatenate {s:?} with {first:?}")));
                }
                c += s[0];
            }
            let mut v = Vec::with_capacity(c * first[1] * first[2]);
            for t in ins {
                v.extend_from_slice(&t.as_f32()?);
            }
            Tensor::f32(vec![c, first[1], first[2]], v)
        }
    }
}
