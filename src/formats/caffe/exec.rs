//! A Caffe executor with Caffe's own semantics (symmetric padding,
//! ceil-rounded pooling with its last-window rule, Eltwise coefficients,
//! PReLU, ...), on NCHW blobs. It runs what faceall writes and third-party
//! models such as FaceAll's MTCNN.

use std::collections::HashMap;

pub use super::model::{CaffeModel, Layer};
use crate::error::{Error, Result};
use crate::ir::{numel, Tensor};
use crate::proto::caffe::{
    eltwise_parameter::EltwiseOp, pooling_parameter::PoolMethod, pooling_parameter::RoundMode,
};

use crate::runtime::kernels;

/// Every blob value in the order the layers produced them (a blob written
/// in place appears once per write).
pub type Trace = Vec<(String, Tensor)>;

fn f32v(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.as_f32()?.into_owned())
}

/// Normalise a possibly negative Caffe axis.
pub(super) fn axis_of(a: i32, rank: usize) -> Result<usize> {
    let r = rank as i32;
    if a < -r || a >= r.max(1) {
        return Err(Error::Usage(format!(
            "axis {a} out of range for rank {rank}"
        )));
    }
    Ok(if a < 0 { (a + r) as usize } else { a as usize })
}

/// Two spatial values from Caffe's `x` / `x_h`,`x_w` conventions.
fn hw(list: &[u32], h: Option<u32>, w: Option<u32>, default: usize) -> [usize; 2] {
    match (h, w) {
        (Some(h), Some(w)) => [h as usize, w as usize],
        _ => match list {
            [] => [default, default],
            [a] => [*a as usize, *a as usize],
            [a, b, ..] => [*a as usize, *b as usize],
        },
    }
}

impl CaffeModel {
    /// Run the net. Inputs may differ in H and W from the declared shape
    /// (Caffe reshapes; PNet runs on any image size).
    pub fn forward(
        &self,
        feeds: &HashMap<String, Tensor>,
    ) -> Result<(HashMap<String, Tensor>, Trace)> {
        let (blobs, trace, err) = self.forward_partial(feeds)?;
        match err {
            Some(e) => Err(e),
            None => Ok((blobs, trace)),
        }
    }

    /// Only the blobs named in `wanted`, each intermediate dropped after its
    /// last reader (no trace): what a detector needs, in the memory of a few
    /// layers rather than of all of them.
    pub fn forward_outputs(
        &self,
        feeds: &HashMap<String, Tensor>,
        wanted: &[&str],
    ) -> Result<HashMap<String, Tensor>> {
        let mut last_read: HashMap<&str, usize> = HashMap::new();
        for (i, l) in self.layers.iter().enumerate() {
            for b in &l.param.bottom {
                last_read.insert(b.as_str(), i);
            }
        }
        let mut blobs = self.fed(feeds)?;
        for (i, l) in self.layers.iter().enumerate() {
            let ins = bottoms(l, &blobs)?;
            let outs = run_layer(l, &ins).map_err(|e| in_layer(l, e))?;
            drop(ins);
            for b in &l.param.bottom {
                if last_read.get(b.as_str()) == Some(&i) && !wanted.contains(&b.as_str()) {
                    blobs.remove(b);
                }
            }
            for (top, t) in l.param.top.iter().zip(outs) {
                blobs.insert(top.clone(), t);
            }
        }
        blobs.retain(|k, _| wanted.contains(&k.as_str()));
        Ok(blobs)
    }

    /// Like `forward`, but a layer that fails stops the run and is returned
    /// with everything computed before it (verify-parity reports both).
    pub fn forward_partial(
        &self,
        feeds: &HashMap<String, Tensor>,
    ) -> Result<(HashMap<String, Tensor>, Trace, Option<Error>)> {
        let mut blobs = self.fed(feeds)?;
        let mut trace = vec![];
        for l in &self.layers {
            let outs = bottoms(l, &blobs)
                .and_then(|ins| run_layer(l, &ins))
                .map_err(|e| in_layer(l, e));
            let outs = match outs {
                Ok(o) => o,
                Err(e) => return Ok((blobs, trace, Some(e))),
            };
            for (top, t) in l.param.top.iter().zip(outs) {
                trace.push((top.clone(), t.clone()));
                blobs.insert(top.clone(), t);
            }
        }
        Ok((blobs, trace, None))
    }
}

impl CaffeModel {
    /// The fed inputs, checked against the declared shapes (H and W may
    /// differ).
    fn fed(&self, feeds: &HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
        let mut blobs = HashMap::new();
        for (name, shape) in &self.inputs {
            let t = feeds
                .get(name)
                .ok_or_else(|| Error::Usage(format!("no value fed for input '{name}'")))?;
            if t.shape().len() != shape.len() || t.shape().get(1) != shape.get(1) {
                return Err(Error::Usage(format!(
                    "input '{name}' is declared {shape:?}, was fed {:?}",
                    t.shape()
                )));
            }
            blobs.insert(name.clone(), t.clone());
        }
        Ok(blobs)
    }
}

/// Layer `l`'s bottoms, from the blobs computed so far.
fn bottoms(l: &Layer, blobs: &HashMap<String, Tensor>) -> Result<Vec<Tensor>> {
    l.param
        .bottom
        .iter()
        .map(|b| {
            blobs.get(b).cloned().ok_or_else(|| {
                Error::node(
                    l.name(),
                    l.kind(),
                    format!("bottom '{b}' is not produced by any layer before it"),
                )
            })
        })
        .collect()
}

/// An error of layer `l`, naming it unless it already names a node.
pub(super) fn in_layer(l: &Layer, e: Error) -> Error {
    match e {
        e @ Error::Node { .. } => e,
        e => Error::node(l.name(), l.kind(), e.to_string()),
    }
}

pub(super) fn run_layer(l: &Layer, ins: &[Tensor]) -> Result<Vec<Tensor>> {
    let p = &l.param;
    let x = ins.first().ok_or_else(|| Error::Usage("no bottom".into()));
    let blob = |i: usize| -> Result<&Tensor> {
        l.blobs.get(i).ok_or_else(|| {
            Error::Usage(format!(
                "weights blob #{i} is missing (no caffemodel, or a layer name that differs)"
            ))
        })
    };
    let same = |v: Vec<f32>, like: &Tensor| Tensor::f32(like.shape().to_vec(), v);
    match l.kind() {
        "Convolution" => {
            let x = x?;
            let s = x.shape();
            let &[n, c, h, w] = s else {
                return Err(Error::Usage(format!("needs a 4-D bottom, has {s:?}")));
            };
            let wt = blob(0)?;
            let g = conv_shape(&p.convolution_param, [c, h, w], wt.len())?;
            let bias = if p.convolution_param.bias_term() {
                Some(f32v(blob(1)?)?)
            } else {
                None
            };
            let y = kernels::conv_nchw(
                &x.as_f32()?,
                [n, c, h, w],
                &wt.as_f32()?,
                g.o,
                g.k,
                g.st,
                g.pad,
                g.dil,
                g.group,
                bias.as_deref(),
                [g.oh, g.ow],
            );
            Ok(vec![Tensor::f32(vec![n, g.o, g.oh, g.ow], y)?])
        }
        "Deconvolution" => {
            let x = x?;
            let s = x.shape();
            let &[n, c, h, w] = s else {
                return Err(Error::Usage(format!("needs a 4-D bottom, has {s:?}")));
            };
            let wt = blob(0)?;
            let g = deconv_shape(&p.convolution_param, [c, h, w], wt.len())?;
            let bias = if p.convolution_param.bias_term() {
                let b = f32v(blob(1)?)?;
                if b.len() != g.o {
                    return Err(Error::Usage(format!(
                        "{} biases for {} outputs",
                        b.len(),
                        g.o
                    )));
                }
                Some(b)
            } else {
                None
            };
            let geo = kernels::DeconvGeometry {
                k: g.k,
                stride: g.st,
                dilation: g.dil,
                crop: g.pad,
                out: [g.oh, g.ow],
            };
            let y = kernels::deconv_nchw(
                &x.as_f32()?,
                [n, c, h, w],
                &wt.as_f32()?,
                g.o,
                g.group,
                &geo,
                bias.as_deref(),
            );
            Ok(vec![Tensor::f32(vec![n, g.o, g.oh, g.ow], y)?])
        }
        "Pooling" => {
            let x = x?;
            let s = x.shape();
            let &[n, c, h, w] = s else {
                return Err(Error::Usage(format!("needs a 4-D bottom, has {s:?}")));
            };
            let g = pool_shape(&p.pooling_param, h, w)?;
            let y = pool_nchw(
                &x.as_f32()?,
                [n, c, h, w],
                g.max,
                g.k,
                g.st,
                g.pad,
                [g.oh, g.ow],
            );
            Ok(vec![Tensor::f32(vec![n, c, g.oh, g.ow], y)?])
        }
        "InnerProduct" => {
            let x = x?;
            let ip = &p.inner_product_param;
            let axis = axis_of(ip.axis(), x.shape().len())?;
            let m: usize = x.shape()[..axis].iter().product();
            let kk: usize = x.shape()[axis..].iter().product();
            let o = ip.num_output() as usize;
            let wt = blob(0)?;
            if wt.len() != o * kk {
                return Err(Error::Usage(format!(
                    "weights {:?} do not fit {kk} inputs x {o} outputs",
                    wt.shape()
                )));
            }
            let mut y = kernels::matmul(
                &x.as_f32()?,
                &wt.as_f32()?,
                m,
                kk,
                o,
                false,
                !ip.transpose(),
            );
            if ip.bias_term() {
                kernels::bias_add(&mut y, &blob(1)?.as_f32()?, 1);
            }
            let mut shape = x.shape()[..axis].to_vec();
            shape.push(o);
            Ok(vec![Tensor::f32(shape, y)?])
        }
        "ReLU" => {
            let x = x?;
            let slope = p.relu_param.negative_slope();
            let v = x
                .as_f32()?
                .iter()
                .map(|&v| if v > 0.0 { v } else { v * slope })
                .collect();
            Ok(vec![same(v, x)?])
        }
        "PReLU" => {
            let x = x?;
            let a = blob(0)?.as_f32()?.into_owned();
            let s = x.shape();
            let c = if s.len() > 1 { s[1] } else { 1 };
            let inner: usize = s.iter().skip(2).product();
            let shared = p.prelu_param.channel_shared();
            if !shared && a.len() != c {
                return Err(Error::Usage(format!("{} slopes for {c} channels", a.len())));
            }
            let v = x
                .as_f32()?
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let ch = if shared { 0 } else { (i / inner.max(1)) % c };
                    v.max(0.0) + a[ch] * v.min(0.0)
                })
                .collect();
            Ok(vec![same(v, x)?])
        }
        "Sigmoid" | "TanH" | "ELU" => {
            let x = x?;
            let mut v = f32v(x)?;
            match l.kind() {
                "Sigmoid" => kernels::activation(crate::ir::Activation::Sigmoid, &mut v),
                "TanH" => kernels::activation(crate::ir::Activation::Tanh, &mut v),
                _ => {
                    let alpha = p.elu_param.alpha();
                    v.iter_mut().for_each(|x| {
                        if *x < 0.0 {
                            *x = alpha * x.exp_m1()
                        }
                    });
                }
            }
            Ok(vec![same(v, x)?])
        }
        "Softmax" => {
            let x = x?;
            let axis = axis_of(p.softmax_param.axis(), x.shape().len())?;
            let mut v = f32v(x)?;
            softmax_axis(&mut v, split3(x.shape(), axis));
            Ok(vec![same(v, x)?])
        }
        "Eltwise" => {
            let e = &p.eltwise_param;
            let op = e
                .operation
                .map(|o| o.enum_value().unwrap_or(EltwiseOp::SUM))
                .unwrap_or(EltwiseOp::SUM);
            let first = x?;
            if ins.iter().any(|t| t.shape() != first.shape()) {
                return Err(Error::Usage("Eltwise bottoms differ in shape".into()));
            }
            if !e.coeff.is_empty() && (e.coeff.len() != ins.len() || op != EltwiseOp::SUM) {
                return Err(Error::Usage(
                    "Eltwise coeff needs SUM and one value per bottom".into(),
                ));
            }
            let mut acc = f32v(first)?;
            if op == EltwiseOp::SUM {
                let c0 = e.coeff.first().copied().unwrap_or(1.0);
                if c0 != 1.0 {
                    acc.iter_mut().for_each(|a| *a *= c0);
                }
            }
            for (i, t) in ins.iter().enumerate().skip(1) {
                let v = t.as_f32()?;
                let c = e.coeff.get(i).copied().unwrap_or(1.0);
                match op {
                    EltwiseOp::SUM => acc.iter_mut().zip(v.iter()).for_each(|(a, &b)| *a += c * b),
                    EltwiseOp::PROD => acc.iter_mut().zip(v.iter()).for_each(|(a, &b)| *a *= b),
                    EltwiseOp::MAX => acc
                        .iter_mut()
                        .zip(v.iter())
                        .for_each(|(a, &b)| *a = a.max(b)),
                }
            }
            Ok(vec![same(acc, first)?])
        }
        "Concat" => {
            let first = x?;
            let axis = axis_of(concat_axis(&p.concat_param), first.shape().len())?;
            let mut shape = first.shape().to_vec();
            shape[axis] = 0;
            for t in ins {
                let ok = t.shape().len() == shape.len()
                    && t.shape()
                        .iter()
                        .enumerate()
                        .all(|(i, &d)| i == axis || d == first.shape()[i]);
                if !ok {
                    return Err(Error::Usage(format!(
                        "cannot concatenate {:?} and {:?} on axis {axis}",
                        first.shape(),
                        t.shape()
                    )));
                }
                shape[axis] += t.shape()[axis];
            }
            let data = ins.iter().map(|t| t.as_f32()).collect::<Result<Vec<_>>>()?;
            let parts: Vec<(&[f32], &[usize])> = data
                .iter()
                .zip(ins)
                .map(|(d, t)| (&d[..], t.shape()))
                .collect();
            Ok(vec![Tensor::f32(shape, kernels::concat(&parts, axis))?])
        }
        "Slice" => {
            let x = x?;
            let axis = axis_of(slice_axis(&p.slice_param), x.shape().len())?;
            let d = x.shape()[axis];
            let bounds = slice_bounds(&p.slice_param, d, p.top.len())?;
            let (outer, _, inner) = split3(x.shape(), axis);
            let v = x.as_f32()?;
            bounds
                .windows(2)
                .map(|b| {
                    let len = b[1] - b[0];
                    let mut out = Vec::with_capacity(outer * len * inner);
                    for o in 0..outer {
                        out.extend_from_slice(&v[(o * d + b[0]) * inner..(o * d + b[1]) * inner]);
                    }
                    let mut shape = x.shape().to_vec();
                    shape[axis] = len;
                    Tensor::f32(shape, out)
                })
                .collect()
        }
        "Split" => {
            let x = x?;
            Ok(vec![x.clone(); p.top.len()])
        }
        "Silence" => Ok(vec![]),
        "Dropout" => Ok(vec![x?.clone()]),
        "Exp" | "Log" => {
            let x = x?;
            let (base, scale, shift) = if l.kind() == "Exp" {
                let e = &p.exp_param;
                (e.base(), e.scale(), e.shift())
            } else {
                let e = &p.log_param;
                (e.base(), e.scale(), e.shift())
            };
            // Caffe: base -1 is e; otherwise a positive base.
            let ln_base = if base == -1.0 { 1.0 } else { base.ln() };
            let exp = l.kind() == "Exp";
            let v = x
                .as_f32()?
                .iter()
                .map(|&v| {
                    let a = shift + scale * v;
                    match (exp, base == -1.0) {
                        (true, true) => a.exp(),
                        (true, false) => (a * ln_base).exp(),
                        (false, true) => a.ln(),
                        (false, false) => a.ln() / ln_base,
                    }
                })
                .collect();
            Ok(vec![same(v, x)?])
        }
        "Power" => {
            let x = x?;
            let pp = &p.power_param;
            let (pw, sc, sh) = (pp.power(), pp.scale(), pp.shift());
            let v = x
                .as_f32()?
                .iter()
                .map(|&v| {
                    let b = sh + sc * v;
                    if pw == 1.0 {
                        b
                    } else if pw == 2.0 {
                        b * b
                    } else {
                        b.powf(pw)
                    }
                })
                .collect();
            Ok(vec![same(v, x)?])
        }
        "Scale" | "Bias" => {
            let x = x?;
            let (axis, num_axes, bias_term) = if l.kind() == "Scale" {
                let sp = &p.scale_param;
                (sp.axis(), sp.num_axes(), sp.bias_term())
            } else {
                (p.bias_param.axis(), p.bias_param.num_axes(), true)
            };
            let axis = axis_of(axis, x.shape().len())?;
            let (factor, bias) = if l.kind() == "Bias" {
                let b = if ins.len() > 1 {
                    ins[1].clone()
                } else {
                    blob(0)?.clone()
                };
                (None, Some(b))
            } else if ins.len() > 1 {
                (
                    Some(ins[1].clone()),
                    if bias_term {
                        Some(blob(0)?.clone())
                    } else {
                        None
                    },
                )
            } else {
                (
                    Some(blob(0)?.clone()),
                    if bias_term {
                        Some(blob(1)?.clone())
                    } else {
                        None
                    },
                )
            };
            let span = match (&factor, &bias) {
                (Some(f), _) if ins.len() > 1 => f.shape().len(),
                _ if num_axes < 0 => x.shape().len() - axis,
                _ => num_axes as usize,
            };
            let covered: usize = x
                .shape()
                .get(axis..axis + span)
                .ok_or_else(|| Error::Usage("scale axes out of range".into()))?
                .iter()
                .product();
            let inner: usize = x.shape()[axis + span..].iter().product();
            let mut v = f32v(x)?;
            let fv = factor
                .as_ref()
                .map(|f| f.as_f32().map(|c| c.into_owned()))
                .transpose()?;
            let bv = bias
                .as_ref()
                .map(|b| b.as_f32().map(|c| c.into_owned()))
                .transpose()?;
            for (name, t) in [("scale", &fv), ("bias", &bv)] {
                if let Some(t) = t {
                    if t.len() != covered {
                        return Err(Error::Usage(format!(
                            "{name} has {} values for {covered} positions",
                            t.len()
                        )));
                    }
                }
            }
            for (i, val) in v.iter_mut().enumerate() {
                let j = (i / inner.max(1)) % covered.max(1);
                if let Some(f) = &fv {
                    *val *= f[j];
                }
                if let Some(b) = &bv {
                    *val += b[j];
                }
            }
            Ok(vec![same(v, x)?])
        }
        "BatchNorm" => {
            let x = x?;
            let eps = p.batch_norm_param.eps();
            let factor = blob(2)?.as_f32()?.first().copied().unwrap_or(1.0);
            let sf = if factor == 0.0 { 0.0 } else { 1.0 / factor };
            let mean: Vec<f32> = blob(0)?.as_f32()?.iter().map(|m| m * sf).collect();
            let var: Vec<f32> = blob(1)?.as_f32()?.iter().map(|v| v * sf).collect();
            let c = x.shape().get(1).copied().unwrap_or(1);
            if mean.len() != c || var.len() != c {
                return Err(Error::Usage(format!(
                    "statistics for {} channels, input has {c}",
                    mean.len()
                )));
            }
            let inner: usize = x.shape().iter().skip(2).product();
            let v = x
                .as_f32()?
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let ch = (i / inner.max(1)) % c;
                    (v - mean[ch]) / (var[ch] + eps).sqrt()
                })
                .collect();
            Ok(vec![same(v, x)?])
        }
        "Reshape" => {
            let x = x?;
            let rp = &p.reshape_param;
            let dims = rp.shape.as_ref().map(|s| s.dim.clone()).unwrap_or_default();
            let axis = axis_of(rp.axis(), x.shape().len() + 1)?;
            let end = if rp.num_axes() < 0 {
                x.shape().len()
            } else {
                (axis + rp.num_axes() as usize).min(x.shape().len())
            };
            let mut mid = vec![];
            let mut infer = None;
            for (i, &d) in dims.iter().enumerate() {
                match d {
                    0 => mid.push(
                        *x.shape()
                            .get(axis + i)
                            .ok_or_else(|| Error::Usage("dim 0 copies a missing axis".into()))?,
                    ),
                    -1 if infer.is_none() => {
                        infer = Some(mid.len());
                        mid.push(1);
                    }
                    d if d > 0 => mid.push(d as usize),
                    _ => return Err(Error::Usage(format!("bad reshape dims {dims:?}"))),
                }
            }
            let mut shape = x.shape()[..axis].to_vec();
            shape.extend(&mid);
            shape.extend(&x.shape()[end..]);
            if let Some(i) = infer {
                let known: usize = shape.iter().product();
                if known == 0 || x.len() % known != 0 {
                    return Err(Error::Usage(format!(
                        "cannot reshape {:?} with {dims:?}",
                        x.shape()
                    )));
                }
                shape[axis + i] = x.len() / known;
            }
            Ok(vec![x.reshaped(shape)?])
        }
        "Flatten" => {
            let x = x?;
            let fp = &p.flatten_param;
            let axis = axis_of(fp.axis(), x.shape().len())?;
            let end = axis_of(fp.end_axis(), x.shape().len())?;
            let mut shape = x.shape()[..axis].to_vec();
            shape.push(x.shape()[axis..=end.max(axis)].iter().product());
            shape.extend(&x.shape()[end.max(axis) + 1..]);
            Ok(vec![x.reshaped(shape)?])
        }
        "Crop" => {
            let (x, r) = (
                x?,
                ins.get(1)
                    .ok_or_else(|| Error::Usage("Crop needs two bottoms".into()))?,
            );
            let axis = axis_of(p.crop_param.axis(), x.shape().len())?;
            let rank = x.shape().len();
            let offs: Vec<usize> = (axis..rank)
                .map(|i| match p.crop_param.offset.as_slice() {
                    [] => 0,
                    [o] => *o as usize,
                    os => os.get(i - axis).copied().unwrap_or(0) as usize,
                })
                .collect();
            let mut shape = x.shape().to_vec();
            for i in axis..rank {
                if offs[i - axis] + r.shape()[i] > x.shape()[i] {
                    return Err(Error::Usage("crop exceeds the input".into()));
                }
                shape[i] = r.shape()[i];
            }
            let v = x.as_f32()?;
            let mut out = Vec::with_capacity(numel(&shape));
            let mut idx = vec![0usize; rank];
            for _ in 0..numel(&shape) {
                let mut at = 0;
                for d in 0..rank {
                    let o = if d >= axis { offs[d - axis] } else { 0 };
                    at = at * x.shape()[d] + idx[d] + o;
                }
                out.push(v[at]);
                for d in (0..rank).rev() {
                    idx[d] += 1;
                    if idx[d] < shape[d] {
                        break;
                    }
                    idx[d] = 0;
                }
            }
            Ok(vec![Tensor::f32(shape, out)?])
        }
        other => Err(Error::Usage(format!(
            "layer type '{other}' is not supported by faceall's Caffe executor"
        ))),
    }
}

/// A convolution's geometry as Caffe computes it from its parameters and
/// the bottom's (C, H, W), checked against the weights' length.
pub(super) struct ConvShape {
    pub k: [usize; 2],
    pub st: [usize; 2],
    pub pad: [usize; 2],
    pub dil: [usize; 2],
    pub group: usize,
    /// Output channels.
    pub o: usize,
    pub oh: usize,
    pub ow: usize,
}

/// The parameters a Convolution and a Deconvolution share, checked
/// against `weights` values of `c` input channels: those of a convolution
/// are [O, C / group, kh, kw], a deconvolution's [C, O / group, kh, kw],
/// the same count. The output size is left 0 for the caller.
fn conv_params(
    cp: &crate::proto::caffe::ConvolutionParameter,
    c: usize,
    weights: usize,
) -> Result<ConvShape> {
    let k = hw(&cp.kernel_size, cp.kernel_h, cp.kernel_w, 1);
    let st = hw(&cp.stride, cp.stride_h, cp.stride_w, 1);
    let pad = if cp.pad_h.is_some() || cp.pad_w.is_some() {
        [cp.pad_h() as usize, cp.pad_w() as usize]
    } else {
        hw(&cp.pad, None, None, 0)
    };
    let dil = hw(&cp.dilation, None, None, 1);
    let group = cp.group().max(1) as usize;
    let o = cp.num_output() as usize;
    if st.contains(&0) || dil.contains(&0) || k.contains(&0) {
        return Err(Error::Usage(
            "kernel, stride and dilation must be > 0".into(),
        ));
    }
    if weights != o * (c / group) * k[0] * k[1]
        || !c.is_multiple_of(group)
        || !o.is_multiple_of(group)
    {
        return Err(Error::Usage(format!(
            "{weights} weights do not fit {o} outputs from {c} channels, group {group}, kernel {k:?}"
        )));
    }
    Ok(ConvShape {
        k,
        st,
        pad,
        dil,
        group,
        o,
        oh: 0,
        ow: 0,
    })
}

pub(super) fn conv_shape(
    cp: &crate::proto::caffe::ConvolutionParameter,
    [c, h, w]: [usize; 3],
    weights: usize,
) -> Result<ConvShape> {
    let g = conv_params(cp, c, weights)?;
    let ek = |i: usize| (g.k[i] - 1) * g.dil[i] + 1;
    if h + 2 * g.pad[0] < ek(0) || w + 2 * g.pad[1] < ek(1) {
        return Err(Error::Usage("kernel larger than the padded input".into()));
    }
    Ok(ConvShape {
        oh: (h + 2 * g.pad[0] - ek(0)) / g.st[0] + 1,
        ow: (w + 2 * g.pad[1] - ek(1)) / g.st[1] + 1,
        ..g
    })
}

/// A Deconvolution's geometry: Caffe's convolution parameters read the
/// other way round (weights [C, O / group, kh, kw]; output
/// `stride * (in - 1) + dilated kernel - 2 * pad`).
pub(super) fn deconv_shape(
    cp: &crate::proto::caffe::ConvolutionParameter,
    [c, h, w]: [usize; 3],
    weights: usize,
) -> Result<ConvShape> {
    let g = conv_params(cp, c, weights)?;
    if h == 0 || w == 0 {
        return Err(Error::Usage("a deconvolution of an empty blob".into()));
    }
    let full = |i: usize, len: usize| g.st[i] * (len - 1) + (g.k[i] - 1) * g.dil[i] + 1;
    let (fh, fw) = (full(0, h), full(1, w));
    if fh <= 2 * g.pad[0] || fw <= 2 * g.pad[1] {
        return Err(Error::Usage(format!(
            "pad {:?} crops the whole {fh}x{fw} output",
            g.pad
        )));
    }
    Ok(ConvShape {
        oh: fh - 2 * g.pad[0],
        ow: fw - 2 * g.pad[1],
        ..g
    })
}

/// A pooling's geometry as Caffe computes it (ceil rounding unless FLOOR,
/// the last window starting inside the image or its top/left padding).
pub(super) struct PoolShape {
    pub max: bool,
    pub k: [usize; 2],
    pub st: [usize; 2],
    pub pad: [usize; 2],
    pub oh: usize,
    pub ow: usize,
}

pub(super) fn pool_shape(
    pp: &crate::proto::caffe::PoolingParameter,
    h: usize,
    w: usize,
) -> Result<PoolShape> {
    let (k, pad, st) = if pp.global_pooling() {
        ([h, w], [0, 0], [1, 1])
    } else {
        let k = hw(
            &pp.kernel_size.map(|v| vec![v]).unwrap_or_default(),
            pp.kernel_h,
            pp.kernel_w,
            1,
        );
        let pad = if pp.pad_h.is_some() || pp.pad_w.is_some() {
            [pp.pad_h() as usize, pp.pad_w() as usize]
        } else {
            [pp.pad() as usize; 2]
        };
        let st = if pp.stride_h.is_some() || pp.stride_w.is_some() {
            [pp.stride_h() as usize, pp.stride_w() as usize]
        } else {
            [pp.stride() as usize; 2]
        };
        (k, pad, st)
    };
    if st.contains(&0) || k.contains(&0) || pad[0] >= k[0] || pad[1] >= k[1] {
        return Err(Error::Usage(
            "bad pooling geometry (pad must be < kernel, stride > 0)".into(),
        ));
    }
    let floor = pp
        .round_mode
        .is_some_and(|m| m.enum_value() == Ok(RoundMode::FLOOR));
    let out = |i: usize, d: usize| -> Result<usize> {
        let span = (d + 2 * pad[i])
            .checked_sub(k[i])
            .ok_or_else(|| Error::Usage("kernel larger than the padded input".into()))?;
        let mut o = if floor {
            span / st[i]
        } else {
            span.div_ceil(st[i])
        } + 1;
        // Caffe: the last window must start inside the image or its top/left padding.
        if pad[i] > 0 && (o - 1) * st[i] >= d + pad[i] {
            o -= 1;
        }
        Ok(o)
    };
    Ok(PoolShape {
        max: pp
            .pool
            .is_none_or(|m| m.enum_value() == Ok(PoolMethod::MAX)),
        k,
        st,
        pad,
        oh: out(0, h)?,
        ow: out(1, w)?,
    })
}

/// A Concat's axis as written (`axis`, or the old `concat_dim`).
pub(super) fn concat_axis(cp: &crate::proto::caffe::ConcatParameter) -> i32 {
    if cp.axis.is_none() && cp.concat_dim.is_some() {
        cp.concat_dim() as i32
    } else {
        cp.axis()
    }
}

/// A Slice's axis as written (`axis`, or the old `slice_dim`).
pub(super) fn slice_axis(sp: &crate::proto::caffe::SliceParameter) -> i32 {
    if sp.axis.is_none() && sp.slice_dim.is_some() {
        sp.slice_dim() as i32
    } else {
        sp.axis()
    }
}

/// The bounds (0, points..., d) of a Slice of `d` into `ntop` parts.
pub(super) fn slice_bounds(
    sp: &crate::proto::caffe::SliceParameter,
    d: usize,
    ntop: usize,
) -> Result<Vec<usize>> {
    let mut points: Vec<usize> = sp.slice_point.iter().map(|&v| v as usize).collect();
    if points.is_empty() {
        if ntop == 0 || !d.is_multiple_of(ntop) {
            return Err(Error::Usage(format!(
                "cannot split {d} into {ntop} equal parts"
            )));
        }
        points = (1..ntop).map(|i| i * d / ntop).collect();
    }
    if points.len() + 1 != ntop
        || points.windows(2).any(|w| w[0] >= w[1])
        || points.iter().any(|&q| q == 0 || q >= d)
    {
        return Err(Error::Usage(format!(
            "slice points {points:?} do not split {d} into {ntop} parts"
        )));
    }
    let mut bounds = vec![0];
    bounds.extend(points);
    bounds.push(d);
    Ok(bounds)
}

/// Softmax over the middle axis of (outer, len, inner), in place.
pub(super) fn softmax_axis(v: &mut [f32], (outer, len, inner): (usize, usize, usize)) {
    for o in 0..outer {
        for i in 0..inner {
            let idx = |j: usize| (o * len + j) * inner + i;
            let m = (0..len)
                .map(|j| v[idx(j)])
                .fold(f32::NEG_INFINITY, f32::max);
            let mut s = 0.0;
            for j in 0..len {
                v[idx(j)] = (v[idx(j)] - m).exp();
                s += v[idx(j)];
            }
            for j in 0..len {
                v[idx(j)] /= s;
            }
        }
    }
}

/// (outer, axis length, inner) around `axis`.
pub(super) fn split3(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    )
}

/// Caffe pooling: windows start at -pad; MAX over the real pixels; AVE
/// divides by the window clipped to the padded input (padding counts).
#[allow(clippy::too_many_arguments)]
fn pool_nchw(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    max: bool,
    k: [usize; 2],
    st: [usize; 2],
    pad: [usize; 2],
    [oh, ow]: [usize; 2],
) -> Vec<f32> {
    let mut out = vec![0.0f32; n * c * oh * ow];
    for plane_i in 0..n * c {
        let plane = &x[plane_i * h * w..][..h * w];
        let dst = &mut out[plane_i * oh * ow..][..oh * ow];
        for oy in 0..oh {
            for ox in 0..ow {
                let hs = (oy * st[0]) as isize - pad[0] as isize;
                let ws = (ox * st[1]) as isize - pad[1] as isize;
                let he = (hs + k[0] as isize).min((h + pad[0]) as isize);
                let we = (ws + k[1] as isize).min((w + pad[1]) as isize);
                let pool_size = ((he - hs) * (we - ws)).max(1) as f32;
                let (hs, ws) = (hs.max(0) as usize, ws.max(0) as usize);
                let (he, we) = (
                    he.min(h as isize).max(0) as usize,
                    we.min(w as isize).max(0) as usize,
                );
                let mut acc = if max { f32::NEG_INFINITY } else { 0.0 };
                for iy in hs..he {
                    for ix in ws..we {
                        let v = plane[iy * w + ix];
                        if max {
                            acc = acc.max(v);
                        } else {
                            acc += v;
                        }
                    }
                }
                dst[oy * ow + ox] = if max { acc } else { acc / pool_size };
            }
        }
    }
    out
}
