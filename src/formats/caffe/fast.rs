//! A fast Caffe executor for serving (MTCNN): the same layers as
//! [`super::exec`], compiled once. Convolution and InnerProduct weights are
//! packed for the engine's gemm at compile time, a PReLU or ReLU that follows
//! a convolution is applied in the gemm's epilogue, and 4-D blobs stay NHWC
//! from the input to the outputs (no transposes around every layer). Shapes
//! are not fixed: every call takes its own H and W (PNet runs on each level
//! of the image pyramid) and any batch (RNet and ONet on all candidates).
//!
//! Only what MTCNN-like nets need has a fast step (Convolution with one
//! group, PReLU, ReLU, Pooling, InnerProduct, Softmax, Concat, Slice,
//! Flatten, Split, Silence, Dropout); any other layer runs through the
//! reference executor on its NCHW blobs, so every net the reference runs,
//! this runs too. The reference stays the exact yardstick in the tests.

use std::collections::{HashMap, HashSet};

use super::exec::{
    axis_of, concat_axis, conv_shape, in_layer, pool_shape, run_layer, slice_axis, slice_bounds,
    softmax_axis, split3, PoolShape,
};
use super::model::{CaffeModel, Layer};
use crate::error::{Error, Result};
use crate::ir::Tensor;
use crate::runtime::kernels::gemm::{self, Act, Dense, Epilogue, PackedB, Patches};
use crate::runtime::kernels::{self, ConvGeometry};

/// A blob while the net runs: 4-D blobs are stored NHWC (their Caffe shape
/// is N, C, H, W), every other rank as Caffe lays it out.
#[derive(Clone)]
struct Blob {
    v: Vec<f32>,
    /// Caffe's (logical) shape.
    shape: Vec<usize>,
}

impl Blob {
    fn nhwc(&self) -> bool {
        self.shape.len() == 4
    }
    /// Dimensions in storage order.
    fn stored_shape(&self) -> Vec<usize> {
        match self.shape[..] {
            [n, c, h, w] => vec![n, h, w, c],
            _ => self.shape.clone(),
        }
    }
    /// The storage axis of Caffe axis `a` (N, C, H, W -> 0, 3, 1, 2).
    fn stored_axis(&self, a: usize) -> usize {
        if self.nhwc() {
            [0, 3, 1, 2][a]
        } else {
            a
        }
    }
    /// As a tensor in Caffe's layout (for the reference executor and the
    /// caller).
    fn to_tensor(&self) -> Result<Tensor> {
        match self.shape[..] {
            [n, c, h, w] => Tensor::f32(
                self.shape.clone(),
                kernels::nhwc_to_nchw(&self.v, [n, h, w, c]),
            ),
            _ => Tensor::f32(self.shape.clone(), self.v.clone()),
        }
    }
    fn from_tensor(t: &Tensor) -> Result<Blob> {
        let v = t.as_f32()?;
        let v = match t.shape() {
            &[n, c, h, w] => kernels::nchw_to_nhwc(&v, [n, c, h, w]),
            _ => v.into_owned(),
        };
        Ok(Blob {
            v,
            shape: t.shape().to_vec(),
        })
    }
}

/// What a layer's outputs go through in the convolution's epilogue.
enum Fused {
    None,
    Relu,
    /// Per-channel slopes, padded to whole gemm panels.
    PRelu(Vec<f32>),
}

enum Kind {
    Conv {
        w: PackedB,
        /// Input channels.
        c: usize,
        fused: Fused,
    },
    InnerProduct {
        w: PackedB,
    },
    /// A PReLU (or leaky ReLU) on its own: slopes per channel (one value
    /// when shared).
    PRelu(Vec<f32>),
    Pool,
    Softmax,
    Concat,
    /// Which tops to fill: a top only a Silence layer reads (convert-tf's
    /// SAME-pool edge padding slices a whole blob to keep its last row)
    /// keeps its shape and no data.
    Slice(Vec<bool>),
    Flatten,
    /// Split, Dropout: every top is the bottom.
    Copy,
    Silence,
    /// Through the reference executor.
    Reference,
}

struct Step {
    /// Index into the model's layers (parameters, names for errors).
    layer: usize,
    /// The blobs written (a fused activation's tops for a fused conv).
    tops: Vec<String>,
    kind: Kind,
}

/// A Caffe net compiled for repeated calls; see the module doc.
pub struct FastCaffe {
    model: CaffeModel,
    steps: Vec<Step>,
    /// For each step, the blobs whose last reader it is (dropped after it).
    drop_after: Vec<Vec<String>>,
    outputs: Vec<String>,
}

impl FastCaffe {
    /// Compile `model` to compute `outputs` (blobs fused away or dropped
    /// early are never among them).
    pub fn compile(model: CaffeModel, outputs: &[&str]) -> Result<FastCaffe> {
        let layers = &model.layers;
        let mut readers: HashMap<&str, usize> = HashMap::new();
        for l in layers {
            for b in &l.param.bottom {
                *readers.entry(b.as_str()).or_default() += 1;
            }
        }
        let known: HashSet<&str> = layers
            .iter()
            .flat_map(|l| l.param.top.iter().map(String::as_str))
            .chain(model.inputs.iter().map(|(n, _)| n.as_str()))
            .collect();
        if let Some(o) = outputs.iter().find(|o| !known.contains(**o)) {
            return Err(Error::Usage(format!(
                "{}: no layer writes '{o}'",
                model.name
            )));
        }
        let mut steps = vec![];
        let mut i = 0;
        while i < layers.len() {
            let (at, l) = (i, &layers[i]);
            let mut tops = l.param.top.clone();
            let kind = match l.kind() {
                "Convolution" if l.param.convolution_param.group() <= 1 => {
                    // The next layer fuses when it is the only reader of this
                    // layer's top (an in-place activation rewrites it).
                    let next = layers.get(i + 1).filter(|n| {
                        let top = l.param.top.first();
                        n.param.bottom.len() == 1
                            && top == n.param.bottom.first()
                            && n.param.top.len() == 1
                            && top.is_some_and(|t| {
                                readers.get(t.as_str()) == Some(&1)
                                    && (!outputs.contains(&t.as_str()) || n.param.top[0] == *t)
                            })
                    });
                    let fused = match next.map(|n| (n, n.kind())) {
                        Some((n, "ReLU")) => {
                            let s = n.param.relu_param.negative_slope();
                            let co = l.param.convolution_param.num_output() as usize;
                            Some(if s == 0.0 {
                                Fused::Relu
                            } else {
                                Fused::PRelu(gemm::padded_columns(&vec![s; co]))
                            })
                        }
                        Some((n, "PReLU")) => {
                            let co = l.param.convolution_param.num_output() as usize;
                            prelu_slopes(n, co)
                                .ok()
                                .map(|s| Fused::PRelu(gemm::padded_columns(&s)))
                        }
                        _ => None,
                    };
                    let fused = match (fused, next) {
                        (Some(f), Some(n)) => {
                            tops = n.param.top.clone();
                            i += 1;
                            f
                        }
                        _ => Fused::None,
                    };
                    let (w, c) = conv_weights(l)?;
                    Kind::Conv { w, c, fused }
                }
                "InnerProduct" => Kind::InnerProduct {
                    w: inner_product_weights(l)?,
                },
                "PReLU" => Kind::PRelu(prelu_slopes(l, 0)?),
                "ReLU" => Kind::PRelu(vec![l.param.relu_param.negative_slope()]),
                "Pooling" => Kind::Pool,
                "Softmax" => Kind::Softmax,
                "Concat" => Kind::Concat,
                "Slice" => Kind::Slice(
                    l.param
                        .top
                        .iter()
                        .map(|t| {
                            outputs.contains(&t.as_str())
                                || layers
                                    .iter()
                                    .any(|r| r.kind() != "Silence" && r.param.bottom.contains(t))
                        })
                        .collect(),
                ),
                "Flatten" => Kind::Flatten,
                "Split" | "Dropout" => Kind::Copy,
                "Silence" => Kind::Silence,
                _ => Kind::Reference,
            };
            steps.push(Step {
                layer: at,
                tops,
                kind,
            });
            i += 1;
        }
        // Liveness: a blob is dropped after the last step that reads it,
        // unless it is an output.
        let mut last: HashMap<String, usize> = HashMap::new();
        for (si, s) in steps.iter().enumerate() {
            let mut read = layers[s.layer].param.bottom.clone();
            if matches!(s.kind, Kind::Conv { .. }) {
                // A fused activation reads only the conv's own top.
                read.truncate(1);
            }
            for b in read {
                last.insert(b, si);
            }
        }
        let mut drop_after = vec![vec![]; steps.len()];
        for (b, si) in last {
            if !outputs.contains(&b.as_str()) {
                drop_after[si].push(b);
            }
        }
        Ok(FastCaffe {
            model,
            steps,
            drop_after,
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
        })
    }

    /// The net's first input: name and Caffe shape (N, C, H, W).
    pub fn input(&self) -> Option<&(String, Vec<usize>)> {
        self.model.inputs.first()
    }

    pub fn model(&self) -> &CaffeModel {
        &self.model
    }

    /// The outputs `run_nhwc` returns, in order.
    pub fn outputs(&self) -> Vec<&str> {
        self.outputs.iter().map(String::as_str).collect()
    }

    /// Run on one NHWC batch `x` (`dims` = N, H, W, C) fed to the first
    /// input; the outputs asked for at compile time, in that order, in
    /// Caffe's layout (4-D ones N, C, H, W).
    pub fn run_nhwc(&self, x: Vec<f32>, [n, h, w, c]: [usize; 4]) -> Result<Vec<Tensor>> {
        let (name, declared) = self
            .input()
            .ok_or_else(|| Error::Usage(format!("{}: the net has no input", self.model.name)))?;
        if declared.len() != 4 || declared[1] != c || x.len() != n * h * w * c {
            return Err(Error::Usage(format!(
                "input '{name}' is declared {declared:?}, was fed N, H, W, C = {:?}",
                [n, h, w, c]
            )));
        }
        let mut blobs: HashMap<String, Blob> = HashMap::new();
        blobs.insert(
            name.clone(),
            Blob {
                v: x,
                shape: vec![n, c, h, w],
            },
        );
        let mut pool = Pool::default();
        for (si, s) in self.steps.iter().enumerate() {
            let l = &self.model.layers[s.layer];
            // An elementwise step that is its bottom's last reader works
            // in place on it.
            let owned = match (&s.kind, &l.param.bottom[..]) {
                (Kind::PRelu(_) | Kind::Softmax, [b]) if self.drop_after[si].contains(b) => {
                    blobs.remove(b)
                }
                _ => None,
            };
            let outs = self
                .step(s, l, &blobs, owned, &mut pool)
                .map_err(|e| in_layer(l, e))?;
            for b in &self.drop_after[si] {
                if let Some(dead) = blobs.remove(b) {
                    pool.recycle(dead.v);
                }
            }
            for (top, b) in s.tops.iter().zip(outs) {
                blobs.insert(top.clone(), b);
            }
        }
        self.outputs
            .iter()
            .map(|o| {
                blobs
                    .get(o)
                    .ok_or_else(|| Error::Usage(format!("{}: no blob '{o}'", self.model.name)))?
                    .to_tensor()
            })
            .collect()
    }

    /// One step's outputs; `owned` is its only bottom when the step may
    /// overwrite it.
    fn step(
        &self,
        s: &Step,
        l: &Layer,
        blobs: &HashMap<String, Blob>,
        owned: Option<Blob>,
        pool: &mut Pool,
    ) -> Result<Vec<Blob>> {
        let p = &l.param;
        let bottom = |i: usize| -> Result<&Blob> {
            let name = p
                .bottom
                .get(i)
                .ok_or_else(|| Error::Usage(format!("needs bottom #{i}")))?;
            blobs.get(name).ok_or_else(|| {
                Error::Usage(format!(
                    "bottom '{name}' is not produced by any layer before it"
                ))
            })
        };
        let four = |b: &Blob| -> Result<[usize; 4]> {
            match b.shape[..] {
                [n, c, h, w] => Ok([n, c, h, w]),
                _ => Err(Error::Usage(format!(
                    "needs a 4-D bottom, has {:?}",
                    b.shape
                ))),
            }
        };
        match &s.kind {
            Kind::Conv { w, c, fused } => {
                let x = bottom(0)?;
                let [n, xc, h, wd] = four(x)?;
                if xc != *c {
                    return Err(Error::Usage(format!(
                        "the weights take {c} channels, the bottom has {xc}"
                    )));
                }
                // One group: the packed K x N is the weights' length.
                let cs = conv_shape(&p.convolution_param, [xc, h, wd], w.k() * w.n())?;
                let g = ConvGeometry {
                    n,
                    h,
                    w: wd,
                    c: xc,
                    kh: cs.k[0],
                    kw: cs.k[1],
                    co: cs.o,
                    oh: cs.oh,
                    ow: cs.ow,
                    stride: cs.st,
                    dilation: cs.dil,
                    pad: cs.pad,
                };
                let mut out = pool.buffer(n * cs.oh * cs.ow * cs.o);
                let epi = Epilogue {
                    act: if matches!(fused, Fused::Relu) {
                        Act::Relu
                    } else {
                        Act::None
                    },
                    slopes: match fused {
                        Fused::PRelu(s) => Some(s),
                        _ => None,
                    },
                    ..Epilogue::default()
                };
                let pointwise = cs.k == [1, 1] && cs.st == [1, 1] && cs.pad == [0, 0];
                if pointwise {
                    let src = Dense {
                        a: &x.v,
                        m: n * h * wd,
                        k: xc,
                        lda: xc,
                    };
                    gemm::gemm(&src, w, &mut out, cs.o, &epi);
                } else {
                    gemm::gemm(&Patches { x: &x.v, g }, w, &mut out, cs.o, &epi);
                }
                Ok(vec![Blob {
                    v: out,
                    shape: vec![n, cs.o, cs.oh, cs.ow],
                }])
            }
            Kind::InnerProduct { w } => {
                let x = bottom(0)?;
                let axis = axis_of(p.inner_product_param.axis(), x.shape.len())?;
                let m: usize = x.shape[..axis].iter().product();
                let k: usize = x.shape[axis..].iter().product();
                if k != w.k() {
                    return Err(Error::Usage(format!(
                        "weights take {} inputs, the bottom has {k}",
                        w.k()
                    )));
                }
                // Caffe flattens C, H, W in that order.
                let nchw;
                let a = match x.shape[..] {
                    [n, c, h, wd] if axis >= 1 => {
                        nchw = kernels::nhwc_to_nchw(&x.v, [n, h, wd, c]);
                        &nchw[..]
                    }
                    _ => &x.v[..],
                };
                let mut out = pool.buffer(m * w.n());
                gemm::gemm(
                    &Dense { a, m, k, lda: k },
                    w,
                    &mut out,
                    w.n(),
                    &Epilogue::default(),
                );
                let mut shape = x.shape[..axis].to_vec();
                shape.push(w.n());
                Ok(vec![Blob { v: out, shape }])
            }
            Kind::PRelu(slopes) => {
                let x = match &owned {
                    Some(b) => b,
                    None => bottom(0)?,
                };
                let (c, inner) = if x.nhwc() {
                    (x.shape[1], 1)
                } else if x.shape.len() >= 2 {
                    (x.shape[1], x.shape[2..].iter().product())
                } else {
                    (1, 1)
                };
                if slopes.len() != 1 && slopes.len() != c {
                    return Err(Error::Usage(format!(
                        "{} slopes for {c} channels",
                        slopes.len()
                    )));
                }
                let shape = x.shape.clone();
                let mut v = match owned {
                    Some(b) => b.v,
                    None => x.v.clone(),
                };
                for (i, e) in v.iter_mut().enumerate() {
                    let a = if slopes.len() == 1 {
                        slopes[0]
                    } else {
                        slopes[(i / inner.max(1)) % c]
                    };
                    *e = e.max(0.0) + a * e.min(0.0);
                }
                Ok(vec![Blob { v, shape }])
            }
            Kind::Pool => {
                let x = bottom(0)?;
                let [n, c, h, w] = four(x)?;
                let g = pool_shape(&p.pooling_param, h, w)?;
                let out = pool.buffer(n * g.oh * g.ow * c);
                let v = pool_nhwc_caffe(&x.v, [n, h, w, c], &g, out);
                Ok(vec![Blob {
                    v,
                    shape: vec![n, c, g.oh, g.ow],
                }])
            }
            Kind::Softmax => {
                let x = match &owned {
                    Some(b) => b,
                    None => bottom(0)?,
                };
                let axis = x.stored_axis(axis_of(p.softmax_param.axis(), x.shape.len())?);
                let (stored, shape) = (x.stored_shape(), x.shape.clone());
                let mut v = match owned {
                    Some(b) => b.v,
                    None => x.v.clone(),
                };
                softmax_axis(&mut v, split3(&stored, axis));
                Ok(vec![Blob { v, shape }])
            }
            Kind::Concat => {
                let ins = (0..p.bottom.len())
                    .map(bottom)
                    .collect::<Result<Vec<_>>>()?;
                let first = *ins
                    .first()
                    .ok_or_else(|| Error::Usage("Concat has no bottom".into()))?;
                let axis = axis_of(concat_axis(&p.concat_param), first.shape.len())?;
                let mut shape = first.shape.clone();
                shape[axis] = 0;
                for t in &ins {
                    let fits = t.shape.len() == shape.len()
                        && t.shape
                            .iter()
                            .enumerate()
                            .all(|(i, &d)| i == axis || d == first.shape[i]);
                    if !fits {
                        return Err(Error::Usage(format!(
                            "cannot concatenate {:?} and {:?} on axis {axis}",
                            first.shape, t.shape
                        )));
                    }
                    shape[axis] += t.shape[axis];
                }
                let stored: Vec<Vec<usize>> = ins.iter().map(|t| t.stored_shape()).collect();
                let parts: Vec<(&[f32], &[usize])> = ins
                    .iter()
                    .zip(&stored)
                    .map(|(t, s)| (&t.v[..], &s[..]))
                    .collect();
                let v = kernels::concat(&parts, first.stored_axis(axis));
                Ok(vec![Blob { v, shape }])
            }
            Kind::Slice(fill) => {
                let x = bottom(0)?;
                let axis = axis_of(slice_axis(&p.slice_param), x.shape.len())?;
                let bounds = slice_bounds(&p.slice_param, x.shape[axis], p.top.len())?;
                let stored = x.stored_shape();
                let sa = x.stored_axis(axis);
                let (outer, d, inner) = split3(&stored, sa);
                Ok(bounds
                    .windows(2)
                    .zip(fill.iter().chain(std::iter::repeat(&true)))
                    .map(|(b, &fill)| {
                        let mut v = Vec::with_capacity(outer * (b[1] - b[0]) * inner);
                        for o in (0..outer).filter(|_| fill) {
                            v.extend_from_slice(
                                &x.v[(o * d + b[0]) * inner..(o * d + b[1]) * inner],
                            );
                        }
                        let mut shape = x.shape.clone();
                        shape[axis] = b[1] - b[0];
                        Blob { v, shape }
                    })
                    .collect())
            }
            Kind::Flatten => {
                let x = bottom(0)?;
                let t = x.to_tensor()?;
                let out = run_layer(l, &[t])?;
                out.iter().map(Blob::from_tensor).collect()
            }
            Kind::Copy => {
                let x = bottom(0)?;
                Ok(vec![x.clone(); s.tops.len()])
            }
            Kind::Silence => Ok(vec![]),
            Kind::Reference => {
                let ins = (0..p.bottom.len())
                    .map(|i| bottom(i)?.to_tensor())
                    .collect::<Result<Vec<_>>>()?;
                let out = run_layer(l, &ins)?;
                out.iter().map(Blob::from_tensor).collect()
            }
        }
    }
}

/// Buffers of blobs that died earlier in a call, for its later steps: a
/// fresh allocation of a few MB is a fresh mmap, and its page faults cost
/// as much as RNet's convolutions. Per call, so nothing is held between
/// calls (a server runs detections on many threads).
#[derive(Default)]
struct Pool(Vec<Vec<f32>>);

/// Buffers a call keeps.
const POOL_BUFFERS: usize = 8;

impl Pool {
    /// A zeroed buffer of `len` floats, reusing a pooled one when one is
    /// big enough (the smallest such).
    fn buffer(&mut self, len: usize) -> Vec<f32> {
        let best = (0..self.0.len())
            .filter(|&i| self.0[i].capacity() >= len)
            .min_by_key(|&i| self.0[i].capacity());
        let mut v = best.map(|i| self.0.swap_remove(i)).unwrap_or_default();
        v.clear();
        v.resize(len, 0.0);
        v
    }

    /// Keep a dead blob's buffer (the smallest one goes when full).
    fn recycle(&mut self, v: Vec<f32>) {
        self.0.push(v);
        if self.0.len() > POOL_BUFFERS {
            if let Some(i) = (0..self.0.len()).min_by_key(|&i| self.0[i].capacity()) {
                self.0.swap_remove(i);
            }
        }
    }
}

/// Conv weights (Caffe O, C, KH, KW) packed as B[(ky * kw + kx) * C + c, o],
/// the row order of [`Patches`]; and C.
fn conv_weights(l: &Layer) -> Result<(PackedB, usize)> {
    let cp = &l.param.convolution_param;
    let wt = l
        .blobs
        .first()
        .ok_or_else(|| Error::Usage("weights blob #0 is missing".into()))?;
    let &[o, c, kh, kw] = wt.shape() else {
        return Err(Error::Usage(format!(
            "convolution weights {:?} are not O, C, KH, KW",
            wt.shape()
        )));
    };
    if o != cp.num_output() as usize {
        return Err(Error::Usage(format!(
            "weights {:?} do not fit {} outputs",
            wt.shape(),
            cp.num_output()
        )));
    }
    let v = wt.as_f32()?;
    let k = kh * kw * c;
    let mut b = vec![0.0f32; k * o];
    for oo in 0..o {
        for cc in 0..c {
            for y in 0..kh {
                for x in 0..kw {
                    b[((y * kw + x) * c + cc) * o + oo] = v[((oo * c + cc) * kh + y) * kw + x];
                }
            }
        }
    }
    let bias = bias_of(l, cp.bias_term(), o)?;
    Ok((PackedB::pack(&b, k, o, o, 1, bias.as_deref()), c))
}

fn inner_product_weights(l: &Layer) -> Result<PackedB> {
    let ip = &l.param.inner_product_param;
    let o = ip.num_output() as usize;
    let wt = l
        .blobs
        .first()
        .ok_or_else(|| Error::Usage("weights blob #0 is missing".into()))?;
    if o == 0 || wt.len() % o != 0 {
        return Err(Error::Usage(format!(
            "weights {:?} do not fit {o} outputs",
            wt.shape()
        )));
    }
    let k = wt.len() / o;
    let v = wt.as_f32()?;
    let bias = bias_of(l, ip.bias_term(), o)?;
    // Caffe stores O x K unless `transpose` (K x O).
    Ok(if ip.transpose() {
        PackedB::pack(&v, k, o, o, 1, bias.as_deref())
    } else {
        PackedB::pack(&v, k, o, 1, k, bias.as_deref())
    })
}

fn bias_of(l: &Layer, present: bool, o: usize) -> Result<Option<Vec<f32>>> {
    if !present {
        return Ok(None);
    }
    let b = l
        .blobs
        .get(1)
        .ok_or_else(|| Error::Usage("bias blob #1 is missing".into()))?;
    if b.len() != o {
        return Err(Error::Usage(format!("{} biases for {o} outputs", b.len())));
    }
    Ok(Some(b.as_f32()?.into_owned()))
}

/// A PReLU's slopes: `co` values (one repeated when channel-shared); with
/// `co` = 0, as stored.
fn prelu_slopes(l: &Layer, co: usize) -> Result<Vec<f32>> {
    let a = l
        .blobs
        .first()
        .ok_or_else(|| Error::Usage("slopes blob #0 is missing".into()))?
        .as_f32()?
        .into_owned();
    let shared = l.param.prelu_param.channel_shared();
    match (shared, co) {
        (_, 0) => Ok(a),
        (true, co) if a.len() == 1 => Ok(vec![a[0]; co]),
        (false, co) if a.len() == co => Ok(a),
        _ => Err(Error::Usage(format!(
            "{} slopes for {co} channels",
            a.len()
        ))),
    }
}

/// Caffe pooling (see `exec::pool_nchw`) on NHWC: windows start at -pad;
/// MAX over the real pixels; AVE divides by the window clipped to the padded
/// input. Channels are innermost, so each window is a few vector max/adds.
/// `out` holds N x OH x OW x C floats.
fn pool_nhwc_caffe(
    x: &[f32],
    [n, h, w, c]: [usize; 4],
    g: &PoolShape,
    mut out: Vec<f32>,
) -> Vec<f32> {
    let (max, k, st, pad, oh, ow) = (g.max, g.k, g.st, g.pad, g.oh, g.ow);
    debug_assert_eq!(out.len(), n * oh * ow * c);
    kernels::for_each_row(&mut out, ow * c, |(row, dst)| {
        let (b, oy) = (row / oh, row % oh);
        let hs = (oy * st[0]) as isize - pad[0] as isize;
        let he = (hs + k[0] as isize).min((h + pad[0]) as isize);
        let (y0, y1) = (hs.max(0) as usize, he.min(h as isize).max(0) as usize);
        for ox in 0..ow {
            let ws = (ox * st[1]) as isize - pad[1] as isize;
            let we = (ws + k[1] as isize).min((w + pad[1]) as isize);
            let pool_size = ((he - hs) * (we - ws)).max(1) as f32;
            let (x0, x1) = (ws.max(0) as usize, we.min(w as isize).max(0) as usize);
            let acc = &mut dst[ox * c..][..c];
            acc.fill(if max { f32::NEG_INFINITY } else { 0.0 });
            for iy in y0..y1 {
                for ix in x0..x1 {
                    let px = &x[((b * h + iy) * w + ix) * c..][..c];
                    if max {
                        acc.iter_mut().zip(px).for_each(|(a, &v)| *a = a.max(v));
                    } else {
                        acc.iter_mut().zip(px).for_each(|(a, &v)| *a += v);
                    }
                }
            }
            if !max {
                acc.iter_mut().for_each(|a| *a /= pool_size);
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Deterministic pseudo-random values in [-1, 1).
    fn data(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Each MTCNN net of both flavours (FaceAll's and the converted one),
    /// at several sizes and batches: the fast executor's outputs equal the
    /// reference executor's.
    #[test]
    fn mtcnn_nets_match_the_reference_executor() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dirs = [
            root.join("converted/mtcnn"),
            root.join("../shared/models/mtcnn"),
        ];
        for dir in dirs.iter().filter(|d| d.join("det1.prototxt").exists()) {
            for (net, sizes) in [
                ("det1", &[(1, 12, 12), (1, 37, 61), (2, 50, 23)][..]),
                ("det2", &[(1, 24, 24), (5, 24, 24)][..]),
                ("det3", &[(1, 48, 48), (3, 48, 48)][..]),
            ] {
                let m = CaffeModel::load(
                    &dir.join(format!("{net}.prototxt")),
                    Some(&dir.join(format!("{net}.caffemodel"))),
                )
                .unwrap();
                let outs = m.outputs();
                let names: Vec<&str> = outs.iter().map(String::as_str).collect();
                let input = m.inputs[0].0.clone();
                let fast = FastCaffe::compile(m.clone(), &names).unwrap();
                for &(n, h, w) in sizes {
                    let x = data(n * h * w * 3, (n * 1000 + h * 10 + w) as u64);
                    let got = fast.run_nhwc(x.clone(), [n, h, w, 3]).unwrap();
                    let nchw =
                        Tensor::f32(vec![n, 3, h, w], kernels::nhwc_to_nchw(&x, [n, h, w, 3]))
                            .unwrap();
                    let want = m
                        .forward_outputs(&HashMap::from([(input.clone(), nchw)]), &names)
                        .unwrap();
                    for (name, g) in names.iter().zip(&got) {
                        let r = &want[*name];
                        assert_eq!(g.shape(), r.shape(), "{net} {name}");
                        let (g, r) = (g.as_f32().unwrap(), r.as_f32().unwrap());
                        let peak = r.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                        let worst = g
                            .iter()
                            .zip(r.iter())
                            .map(|(a, b)| (a - b).abs())
                            .fold(0.0f32, f32::max);
                        assert!(
                            worst <= 1e-5 * peak.max(1.0),
                            "{} {net} {name} at {n}x{h}x{w}: worst {worst}, peak {peak}",
                            dir.display()
                        );
                    }
                }
            }
        }
    }
}
