//! IR -> Caffe (`NetParameter`), with TensorFlow's exact semantics, using
//! only constructions that both BVLC Caffe and OpenCV 4.x's importer accept
//! (see ../shared/docs/CONVERSION-NOTES.md):
//!
//! - activations are NCHW; weights HWIO -> OIHW, depthwise -> grouped conv,
//!   MatMul [in, out] -> InnerProduct [out, in] with rows permuted when the
//!   input was flattened from NHWC;
//! - asymmetric padding: the symmetric part stays in the layer's `pad`, the
//!   extra rows/columns are built from the data (Slice the edge, Power with
//!   scale 0 for zeros, Concat, Silence the leftover);
//! - pooling never relies on Caffe's rounding: the input is cropped (Slice)
//!   and padded explicitly so Caffe's ceil gives TF's floor (FaceNet's
//!   Mixed_7a); SAME average pooling divides by the count of real pixels
//!   through a pooled ones-map;
//! - L2 normalisation: Power(2) -> 1x1 conv of ones -> Power(-0.5, shift eps)
//!   -> Reshape -> Scale with two bottoms. It computes x * rsqrt(sum + eps)
//!   where TF computes x * rsqrt(max(sum, eps)): equal unless the squared
//!   norm is below eps (1e-10 in FaceNet), i.e. for an all-zero embedding.
//!
//! Blob names are the TF tensor names the values carry (after folding), so
//! verify-parity can map layers back; helper blobs are `<layer>/<what>`.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ir::{
    resolve_axis, Activation, BinaryOp, DType, Graph, Layout, Node, Op, PoolKind, ReduceOp,
    ResizeMode, UnaryOp, Wire,
};
use crate::proto::caffe::{
    eltwise_parameter::EltwiseOp, pooling_parameter::PoolMethod, BlobProto, BlobShape,
    LayerParameter, NetParameter,
};

/// A deliberate conversion mistake, for testing that verify-parity catches
/// (and names) each classic error. Never used by a normal conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// Unfolded batch norm written with Caffe's default epsilon 1e-5.
    BnEpsilon,
    /// SAME padding's extra row/column put on the top/left.
    SamePadTopLeft,
    /// Pooling left to Caffe's ceil rounding.
    PoolCeil,
    /// InnerProduct after an NHWC flatten without permuting its rows.
    FlattenNchw,
    /// Conv weights read as IHWO instead of HWIO.
    WeightsIhwo,
    /// Residual `x + s * branch` written as `x + branch`.
    DropResidualScale,
    /// L2 normalisation left out.
    DropL2Norm,
    /// A declared output flattened from a map left in Caffe's (C, H, W)
    /// order (what every layout-mapping comparison misses).
    FlattenOutputChw,
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        serde_json::from_value(serde_json::Value::String(s.into())).map_err(|_| {
            format!("unknown fault '{s}' (bn-epsilon, same-pad-top-left, pool-ceil, flatten-nchw, weights-ihwo, drop-residual-scale, drop-l2-norm, flatten-output-chw)")
        })
    }
}

/// How a Caffe blob holds an IR value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobLayout {
    /// Same shape and order.
    Plain,
    /// A 4-D NHWC value held as NCHW.
    Nchw,
    /// A 2-D (N, H*W*C) value flattened from NHWC, held in (C, H, W) order.
    FlatChw { h: usize, w: usize, c: usize },
}

/// Where the value of a TF tensor lives in the Caffe net.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlobMap {
    pub tensor: String,
    pub blob: String,
    /// The layer that writes the blob (OpenCV fetches outputs by layer name);
    /// empty for a net input.
    pub layer: String,
    pub layout: BlobLayout,
}

pub use crate::formats::LayerNote;

pub struct CaffeNet {
    /// The deploy net with weights (write without blobs for the prototxt).
    /// The blobs that are a layout change of a TF constant (convolution
    /// and inner-product weights) are empty here and filled from `later`
    /// as `write_caffemodel` reaches their layer.
    pub net: NetParameter,
    pub blobs: Vec<BlobMap>,
    pub notes: Vec<LayerNote>,
    pub outputs: Vec<String>,
    later: Vec<Later>,
}

/// A weight blob computed when the caffemodel is written: the writer then
/// holds one layer's re-laid-out weights at a time, not a second copy of
/// the whole model next to the memory-mapped source (FaceNet: 94 MB).
struct Later {
    layer: usize,
    blob: usize,
    count: usize,
    fill: crate::formats::splice::Fill,
}

#[derive(Clone)]
struct Val {
    blob: String,
    layout: BlobLayout,
    /// Caffe shape.
    shape: Vec<usize>,
}

#[derive(Clone, Copy)]
enum Fill {
    Const(f32),
    Edge,
}

const NO_RESIZE: &str = "a resize by no whole factor, with align_corners, or a legacy nearest one TF does not compute as a repeat (factors 41, 47, ...), has no Caffe form: Caffe has no resize layer both OpenCV and BVLC Caffe read, and a Deconvolution repeats one stencil, which only whole factors have (ONNX, Core ML and the safetensors bundle carry it)";

/// One axis of a resize by the whole factor `f` as a Deconvolution with
/// stride `f`: (taps, pad, [edge rows before, after]). Nearest repeats each
/// pixel `f` times (every TF rule without align_corners floors to
/// `dst / f`). Bilinear's taps are `1 - |k - centre| / f`, over the input
/// with its edge row repeated where TF clamps: half-pixel centres
/// (`src = (dst + 0.5) / f - 0.5`) clamp at both ends, the legacy rule
/// (`src = dst / f`) at the far end only. Pads crop the stencil's overhang
/// so output `o` reads inputs `floor(src)` and `floor(src) + 1`.
fn resize_taps(mode: ResizeMode, half_pixel: bool, f: usize) -> (Vec<f32>, usize, [usize; 2]) {
    if f == 1 {
        return (vec![1.0], 0, [0, 0]);
    }
    let ff = f as f32;
    match (mode, half_pixel) {
        (ResizeMode::Nearest, _) => (vec![1.0; f], 0, [0, 0]),
        (ResizeMode::Bilinear, true) => {
            let k = 2 * f - f % 2;
            let centre = (k - 1) as f32 / 2.0;
            let taps = (0..k)
                .map(|i| 1.0 - (i as f32 - centre).abs() / ff)
                .collect();
            (taps, (3 * f - f % 2) / 2, [1, 1])
        }
        (ResizeMode::Bilinear, false) => {
            let taps = (0..2 * f)
                .map(|i| 1.0 - (i as f32 - ff).abs() / ff)
                .collect();
            (taps, f, [0, 1])
        }
    }
}

fn nchw(s: &[usize]) -> Vec<usize> {
    if s.len() == 4 {
        vec![s[0], s[3], s[1], s[2]]
    } else {
        s.to_vec()
    }
}

fn blob(shape: &[usize], data: Vec<f32>) -> BlobProto {
    let mut b = BlobProto::new();
    let mut s = BlobShape::new();
    s.dim = shape.iter().map(|&d| d as i64).collect();
    b.shape = Some(s).into();
    b.data = data;
    b
}

fn shape_proto(dims: &[i64]) -> BlobShape {
    let mut s = BlobShape::new();
    s.dim = dims.to_vec();
    s
}

/// NHWC axis -> NCHW axis for 4-D values.
fn caffe_axis(axis: usize, rank: usize) -> usize {
    if rank == 4 {
        [0, 2, 3, 1][axis]
    } else {
        axis
    }
}

struct Em<'g> {
    g: &'g Graph,
    faults: &'g [Fault],
    net: NetParameter,
    vals: HashMap<Wire, Val>,
    layer_names: HashSet<String>,
    current: Vec<String>,
    later: Vec<Later>,
}

type R<T> = std::result::Result<T, String>;

/// `Some(C)` when `small` is a one-channel NCHW map of `big`'s batch and
/// spatial size and `big` has C > 1 channels.
/// Or both are (N, C) matrices and `small` is (N, 1).
fn channel_broadcast(big: &Val, small: &Val) -> Option<usize> {
    let ok = |v: &Val| {
        (v.layout == BlobLayout::Nchw && v.shape.len() == 4)
            || (v.layout == BlobLayout::Plain && v.shape.len() == 2)
    };
    (ok(big)
        && ok(small)
        && big.layout == small.layout
        && big.shape.len() == small.shape.len()
        && small.shape[1] == 1
        && big.shape[1] > 1
        && small.shape[0] == big.shape[0]
        && small.shape[2..] == big.shape[2..])
        .then(|| big.shape[1])
}

/// Why Erf, Erfc and GELU are refused: neither dialect has the function,
/// and a polynomial stand-in would not be TF's values.
const NO_ERF: &str = "erf (and the exact GELU built on it) has no Caffe form: BVLC Caffe has no Erf/GELU layer, and OpenCV's importer reads only the layers both know";

impl<'g> Em<'g> {
    /// Add a layer. A single-top layer is named after its top (the TF tensor
    /// it computes): OpenCV addresses outputs by layer name, users by tensor.
    fn layer(
        &mut self,
        name: &str,
        ty: &str,
        bottoms: &[&str],
        tops: &[&str],
    ) -> &mut LayerParameter {
        let mut name = match tops {
            [top] => top.to_string(),
            _ => name.to_string(),
        };
        let mut i = 1;
        while self.layer_names.contains(&name) {
            name = format!("{name}_{i}");
            i += 1;
        }
        self.layer_names.insert(name.clone());
        self.current.push(name.clone());
        let mut l = LayerParameter::new();
        l.set_name(name);
        l.set_type(ty.into());
        l.bottom = bottoms.iter().map(|s| s.to_string()).collect();
        l.top = tops.iter().map(|s| s.to_string()).collect();
        self.net.layer.push(l);
        let last = self.net.layer.len() - 1;
        &mut self.net.layer[last]
    }

    fn power(&mut self, name: &str, bottom: &str, power: f32, scale: f32, shift: f32) -> String {
        let l = self.layer(name, "Power", &[bottom], &[name]);
        let p = l.power_param.mut_or_insert_default();
        p.set_power(power);
        p.set_scale(scale);
        p.set_shift(shift);
        name.to_string()
    }

    fn val(&self, w: Wire) -> R<Val> {
        self.vals
            .get(&w)
            .cloned()
            .ok_or_else(|| format!("input '{}' has no Caffe blob", self.g.wire_name(w)))
    }

    /// One edge row/column (`first` or last) of `v` along `axis`, as a blob.
    fn edge(&mut self, base: &str, v: &Val, axis: usize, first: bool) -> String {
        let d = v.shape[axis];
        if d == 1 {
            return v.blob.clone();
        }
        let point = if first { 1 } else { d - 1 };
        let (a, b) = (format!("{base}/part"), format!("{base}/edge"));
        let tops = if first {
            [b.clone(), a.clone()]
        } else {
            [a.clone(), b.clone()]
        };
        let l = self.layer(base, "Slice", &[&v.blob], &[&tops[0], &tops[1]]);
        let sp = l.slice_param.mut_or_insert_default();
        sp.set_axis(axis as i32);
        sp.slice_point = vec![point as u32];
        self.layer(&format!("{base}/silence"), "Silence", &[&a], &[]);
        b
    }

    /// Add `before`/`after` rows along `axis` (2 or 3) filled with a constant or the edge values.
    fn pad_axis(
        &mut self,
        base: &str,
        v: Val,
        axis: usize,
        before: usize,
        after: usize,
        fill: Fill,
    ) -> Val {
        if before == 0 && after == 0 {
            return v;
        }
        let mut parts = vec![];
        let make = |em: &mut Self, first: bool, n: usize| -> Vec<String> {
            let tag = if first { "before" } else { "after" };
            let edge = em.edge(&format!("{base}/{tag}_edge"), &v, axis, first);
            let row = match fill {
                Fill::Const(c) => em.power(&format!("{base}/{tag}_fill"), &edge, 1.0, 0.0, c),
                Fill::Edge => edge,
            };
            vec![row; n]
        };
        let top_rows = if before > 0 {
            make(self, true, before)
        } else {
            vec![]
        };
        let bottom_rows = if after > 0 {
            make(self, false, after)
        } else {
            vec![]
        };
        parts.extend(top_rows);
        parts.push(v.blob.clone());
        parts.extend(bottom_rows);
        let out = format!("{base}/padded");
        let refs: Vec<&str> = parts.iter().map(|s| s.as_str()).collect();
        let l = self.layer(base, "Concat", &refs, &[&out]);
        l.concat_param.mut_or_insert_default().set_axis(axis as i32);
        let mut shape = v.shape.clone();
        shape[axis] += before + after;
        Val {
            blob: out,
            layout: v.layout,
            shape,
        }
    }

    /// Keep the first `keep` entries along `axis`.
    fn crop_axis(&mut self, base: &str, v: Val, axis: usize, keep: usize) -> Val {
        if keep >= v.shape[axis] {
            return v;
        }
        let (a, b) = (format!("{base}/kept"), format!("{base}/dropped"));
        let l = self.layer(base, "Slice", &[&v.blob], &[&a, &b]);
        let sp = l.slice_param.mut_or_insert_default();
        sp.set_axis(axis as i32);
        sp.slice_point = vec![keep as u32];
        self.layer(&format!("{base}/silence"), "Silence", &[&b], &[]);
        let mut shape = v.shape;
        shape[axis] = keep;
        Val {
            blob: a,
            layout: v.layout,
            shape,
        }
    }

    /// A bias-free Deconvolution layer named `top`: `io` = [input, output]
    /// channels, weights [input, output / group, kh, kw] (Caffe's order).
    #[allow(clippy::too_many_arguments)]
    fn deconv(
        &mut self,
        top: &str,
        bottom: &str,
        io: [usize; 2],
        group: usize,
        k: [usize; 2],
        stride: [usize; 2],
        pad: [usize; 2],
        weights: Vec<f32>,
    ) {
        let l = self.layer(top, "Deconvolution", &[bottom], &[top]);
        let p = l.convolution_param.mut_or_insert_default();
        p.set_num_output(io[1] as u32);
        p.set_kernel_h(k[0] as u32);
        p.set_kernel_w(k[1] as u32);
        p.set_stride_h(stride[0] as u32);
        p.set_stride_w(stride[1] as u32);
        if pad != [0, 0] {
            p.set_pad_h(pad[0] as u32);
            p.set_pad_w(pad[1] as u32);
        }
        if group > 1 {
            p.set_group(group as u32);
        }
        p.set_bias_term(false);
        l.blobs
            .push(blob(&[io[0], io[1] / group, k[0], k[1]], weights));
    }

    fn need_nchw(&self, v: &Val) -> R<()> {
        if v.layout != BlobLayout::Nchw {
            return Err("expects a 4-D NHWC activation".into());
        }
        Ok(())
    }

    /// A constant input's values, borrowed from the graph where possible.
    fn konst(&self, w: Wire) -> R<std::borrow::Cow<'g, [f32]>> {
        crate::formats::layout::const_f32(self.g, w)
    }

    /// Give the last layer an empty blob of `shape` whose values `fill`
    /// computes when the caffemodel is written (see `Later`).
    fn push_later(
        &mut self,
        shape: &[usize],
        fill: impl Fn(&Graph, &mut crate::formats::layout::Sink<'_>) -> R<()> + 'static,
    ) -> R<()> {
        let layer = self
            .net
            .layer
            .len()
            .checked_sub(1)
            .ok_or("internal: a weight blob before any layer")?;
        let l = &mut self.net.layer[layer];
        if self.later.last().is_some_and(|d| d.layer == layer) {
            return Err("internal: two deferred blobs in one layer".into());
        }
        l.blobs.push(blob(shape, vec![]));
        self.later.push(Later {
            layer,
            blob: l.blobs.len() - 1,
            count: shape.iter().product(),
            fill: Box::new(fill),
        });
        Ok(())
    }

    fn emit(&mut self, idx: usize) -> R<Option<Val>> {
        let g = self.g;
        let n: &Node = &g.nodes[idx];
        let out_blob = n
            .carries()
            .map(str::to_string)
            .unwrap_or_else(|| format!("{}/folded", n.name));
        let out_fact = &n.outputs[0];
        let out_shape = nchw(&out_fact.shape);
        let lay4 = |s: &[usize]| {
            if s.len() == 4 {
                BlobLayout::Nchw
            } else {
                BlobLayout::Plain
            }
        };
        let done = |blob: String, shape: Vec<usize>| {
            Ok(Some(Val {
                blob,
                layout: lay4(&out_fact.shape),
                shape,
            }))
        };
        let name = n.name.clone();
        match &n.op {
            Op::Const(_) => Ok(None),
            Op::Input => {
                if out_fact.dtype != DType::F32 {
                    return Err("only float32 inputs".into());
                }
                // An NCHW input that is only read through a transpose to
                // NHWC (a channel-first graph) is fed as it is.
                let (layout, shape) = if crate::formats::layout::channel_first_input(g, idx) {
                    (BlobLayout::Plain, out_fact.shape.clone())
                } else {
                    (lay4(&out_fact.shape), out_shape)
                };
                self.net.input.push(out_blob.clone());
                self.net.input_shape.push(shape_proto(
                    &shape.iter().map(|&d| d as i64).collect::<Vec<_>>(),
                ));
                Ok(Some(Val {
                    blob: out_blob,
                    layout,
                    shape,
                }))
            }
            Op::Identity => {
                let x = self.val(n.inputs[0])?;
                let top = self.power(&out_blob, &x.blob, 1.0, 1.0, 0.0);
                Ok(Some(Val { blob: top, ..x }))
            }
            Op::Switch | Op::Merge => {
                Err("TF1 control flow has no Caffe form (run the resolve_switch pass)".into())
            }
            Op::Conv2d(c) => {
                if c.layout != Layout::Nhwc {
                    return Err("NCHW data_format is not supported by the Caffe emitter".into());
                }
                let x = self.val(n.inputs[0])?;
                self.need_nchw(&x)?;
                let ws = g
                    .fact(n.inputs[1])
                    .map_err(|e| e.to_string())?
                    .shape
                    .clone();
                let w_wire = n.inputs[1];
                crate::formats::layout::const_view(self.g, w_wire)?;
                let (kh, kw, ci, co) = (ws[0], ws[1], ws[2], ws[3]);
                let [_, _, h, wd] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
                let (oh, [pt, pb]) =
                    resolve_axis(&c.padding, 0, h, kh, c.strides[0], c.dilations[0])
                        .ok_or("window does not fit")?;
                let (ow, [pl, pr]) =
                    resolve_axis(&c.padding, 1, wd, kw, c.strides[1], c.dilations[1])
                        .ok_or("window does not fit")?;
                let (sh, sw) = (pt.min(pb), pl.min(pr));
                let (pt, pb, pl, pr) = if self.faults.contains(&Fault::SamePadTopLeft) {
                    (pb, pt, pr, pl)
                } else {
                    (pt, pb, pl, pr)
                };
                let mut x = self.pad_axis(
                    &format!("{name}/pad_h"),
                    x,
                    2,
                    pt - sh,
                    pb - sh,
                    Fill::Const(0.0),
                );
                x = self.pad_axis(
                    &format!("{name}/pad_w"),
                    x,
                    3,
                    pl - sw,
                    pr - sw,
                    Fill::Const(0.0),
                );
                // OIHW (depthwise: [C*M, 1, kh, kw], group C)
                let (num_out, group, per_group_in) = if c.depthwise {
                    (ci * co, ci, 1)
                } else {
                    (co, 1, ci)
                };
                let (depthwise, ihwo) = (c.depthwise, self.faults.contains(&Fault::WeightsIhwo));
                let bias = match n.inputs.get(2) {
                    Some(b) => Some(self.konst(*b)?.into_owned()),
                    None => None,
                };
                let ek = |k: usize, d: usize| (k - 1) * d + 1;
                let ch = (x.shape[2] + 2 * sh - ek(kh, c.dilations[0])) / c.strides[0] + 1;
                let cw = (x.shape[3] + 2 * sw - ek(kw, c.dilations[1])) / c.strides[1] + 1;
                if (ch, cw) != (oh, ow) {
                    return Err(format!(
                        "internal: Caffe would give {ch}x{cw}, TF gives {oh}x{ow}"
                    ));
                }
                let l = self.layer(&name, "Convolution", &[&x.blob], &[&out_blob]);
                let p = l.convolution_param.mut_or_insert_default();
                p.set_num_output(num_out as u32);
                p.set_kernel_h(kh as u32);
                p.set_kernel_w(kw as u32);
                p.set_stride_h(c.strides[0] as u32);
                p.set_stride_w(c.strides[1] as u32);
                if sh > 0 || sw > 0 {
                    p.set_pad_h(sh as u32);
                    p.set_pad_w(sw as u32);
                }
                if c.dilations != [1, 1] {
                    p.dilation = vec![c.dilations[0] as u32, c.dilations[1] as u32];
                }
                if group > 1 {
                    p.set_group(group as u32);
                }
                p.set_bias_term(bias.is_some());
                self.push_later(&[num_out, per_group_in, kh, kw], crate::formats::layout::conv_fill(w_wire, [kh, kw, ci, co], depthwise, ihwo))?;
                if let (Some(b), Some(l)) = (bias, self.net.layer.last_mut()) {
                    l.blobs.push(blob(&[num_out], b));
                }
                done(out_blob, out_shape)
            }
            Op::Deconv2d(d) => {
                // Caffe's Deconvolution crops `pad` from both sides of the
                // full scatter; TF's SAME crops any odd row after, which a
                // Slice then drops.
                let x = self.val(n.inputs[0])?;
                self.need_nchw(&x)?;
                let ws = g
                    .fact(n.inputs[1])
                    .map_err(|e| e.to_string())?
                    .shape
                    .clone();
                let &[kh, kw, co, ci] = ws.as_slice() else {
                    return Err(format!("filter of shape {ws:?}"));
                };
                let pads = d
                    .pads([x.shape[2], x.shape[3]], [kh, kw])
                    .ok_or("the deconvolution does not fit its input")?;
                if pads.iter().any(|p| p[0] > p[1]) {
                    return Err(
                        "a transposed convolution that crops more before than after has no Caffe form (Deconvolution crops both sides alike)"
                            .into(),
                    );
                }
                let w = crate::formats::layout::conv_oihw(
                    &self.konst(n.inputs[1])?,
                    [kh, kw, co, ci],
                    false,
                    false,
                );
                let extra = [pads[0][1] - pads[0][0], pads[1][1] - pads[1][0]];
                let full = if extra == [0, 0] {
                    out_blob.clone()
                } else {
                    format!("{name}/uncropped")
                };
                self.deconv(
                    &full,
                    &x.blob,
                    [ci, co],
                    1,
                    [kh, kw],
                    d.strides,
                    [pads[0][0], pads[1][0]],
                    w,
                );
                if let Some(l) = self.net.layer.last_mut() {
                    let p = l.convolution_param.mut_or_insert_default();
                    if d.dilations != [1, 1] {
                        p.dilation = vec![d.dilations[0] as u32, d.dilations[1] as u32];
                    }
                    if let Some(&b) = n.inputs.get(2) {
                        p.set_bias_term(true);
                        let b = self.konst(b)?.into_owned();
                        if let Some(l) = self.net.layer.last_mut() {
                            l.blobs.push(blob(&[co], b));
                        }
                    }
                }
                if extra == [0, 0] {
                    return done(out_blob, out_shape);
                }
                let mut shape = out_shape.clone();
                shape[2] += extra[0];
                shape[3] += extra[1];
                let v = Val {
                    blob: full,
                    layout: BlobLayout::Nchw,
                    shape,
                };
                let v = self.crop_axis(&format!("{name}/crop_h"), v, 2, out_shape[2]);
                let v = self.crop_axis(&format!("{name}/crop_w"), v, 3, out_shape[3]);
                let top = self.power(&out_blob, &v.blob, 1.0, 1.0, 0.0);
                Ok(Some(Val { blob: top, ..v }))
            }
            Op::BiasAdd { .. } => {
                let x = self.val(n.inputs[0])?;
                let b = self.konst(n.inputs[1])?;
                let c = b.len();
                let axis = if x.layout == BlobLayout::Nchw {
                    1
                } else {
                    x.shape.len() - 1
                };
                let l = self.layer(&name, "Scale", &[&x.blob], &[&out_blob]);
                let p = l.scale_param.mut_or_insert_default();
                p.set_axis(axis as i32);
                p.set_bias_term(true);
                l.blobs.push(blob(&[c], vec![1.0; c]));
                l.blobs.push(blob(&[c], b.into_owned()));
                Ok(Some(Val {
                    blob: out_blob,
                    ..x
                }))
            }
            Op::BatchNorm(bn) => {
                if bn.training || bn.layout != Layout::Nhwc {
                    return Err("only inference NHWC batch norm".into());
                }
                let x = self.val(n.inputs[0])?;
                self.need_nchw(&x)?;
                let p: Vec<Vec<f32>> = (1..5)
                    .map(|i| self.konst(n.inputs[i]).map(|c| c.into_owned()))
                    .collect::<R<_>>()?;
                let c = p[0].len();
                let norm = format!("{name}/normalized");
                let eps = if self.faults.contains(&Fault::BnEpsilon) {
                    1e-5
                } else {
                    bn.epsilon
                };
                let l = self.layer(&format!("{name}/bn"), "BatchNorm", &[&x.blob], &[&norm]);
                let bp = l.batch_norm_param.mut_or_insert_default();
                bp.set_use_global_stats(true);
                bp.set_eps(eps);
                l.blobs.push(blob(&[c], p[2].clone()));
                l.blobs.push(blob(&[c], p[3].clone()));
                l.blobs.push(blob(&[1], vec![1.0]));
                let l = self.layer(&format!("{name}/scale"), "Scale", &[&norm], &[&out_blob]);
                l.scale_param.mut_or_insert_default().set_bias_term(true);
                l.blobs.push(blob(&[c], p[0].clone()));
                l.blobs.push(blob(&[c], p[1].clone()));
                Ok(Some(Val {
                    blob: out_blob,
                    ..x
                }))
            }
            Op::Activation(a) => {
                let x = self.val(n.inputs[0])?;
                match a {
                    Activation::Relu => {
                        self.layer(&name, "ReLU", &[&x.blob], &[&out_blob]);
                    }
                    Activation::Sigmoid => {
                        self.layer(&name, "Sigmoid", &[&x.blob], &[&out_blob]);
                    }
                    Activation::Tanh => {
                        self.layer(&name, "TanH", &[&x.blob], &[&out_blob]);
                    }
                    Activation::Elu => {
                        let l = self.layer(&name, "ELU", &[&x.blob], &[&out_blob]);
                        l.elu_param.mut_or_insert_default().set_alpha(1.0);
                    }
                    Activation::Gelu { approximate: false } => {
                        return Err(NO_ERF.into());
                    }
                    Activation::Gelu { approximate: true } => {
                        // x * (0.5 + 0.5 * tanh(k * (x + c * x^3))): Power,
                        // Eltwise and TanH, every step a float op TF does too.
                        use crate::ir::op::{GELU_CUBIC, SQRT_2_OVER_PI};
                        let cube = self.power(&format!("{name}/cube"), &x.blob, 3.0, 1.0, 0.0);
                        let poly = format!("{name}/poly");
                        let l = self.layer(&poly, "Eltwise", &[&x.blob, &cube], &[&poly]);
                        let e = l.eltwise_param.mut_or_insert_default();
                        e.set_operation(EltwiseOp::SUM);
                        e.coeff = vec![1.0, GELU_CUBIC];
                        let arg =
                            self.power(&format!("{name}/arg"), &poly, 1.0, SQRT_2_OVER_PI, 0.0);
                        let th = format!("{name}/tanh");
                        self.layer(&th, "TanH", &[&arg], &[&th]);
                        let phi = self.power(&format!("{name}/half_one_plus"), &th, 1.0, 0.5, 0.5);
                        let l = self.layer(&name, "Eltwise", &[&x.blob, &phi], &[&out_blob]);
                        l.eltwise_param
                            .mut_or_insert_default()
                            .set_operation(EltwiseOp::PROD);
                    }
                    Activation::LeakyRelu { alpha } => {
                        // max(x, 0) + slope * min(x, 0): alpha * x below 0, exact.
                        let l = self.layer(&name, "ReLU", &[&x.blob], &[&out_blob]);
                        l.relu_param
                            .mut_or_insert_default()
                            .set_negative_slope(*alpha);
                    }
                    Activation::Relu6 => {
                        // min(relu(x), 6) = -max(-relu(x), -6), every step exact.
                        let r = format!("{name}/relu");
                        self.layer(&r, "ReLU", &[&x.blob], &[&r]);
                        let neg = self.power(&format!("{name}/neg"), &r, 1.0, -1.0, 0.0);
                        let six = self.power(&format!("{name}/minus_six"), &x.blob, 1.0, 0.0, -6.0);
                        let m = format!("{name}/max");
                        let l = self.layer(&m, "Eltwise", &[&neg, &six], &[&m]);
                        l.eltwise_param
                            .mut_or_insert_default()
                            .set_operation(EltwiseOp::MAX);
                        let l = self.layer(&name, "Power", &[&m], &[&out_blob]);
                        l.power_param.mut_or_insert_default().set_scale(-1.0);
                    }
                }
                Ok(Some(Val {
                    blob: out_blob,
                    ..x
                }))
            }
            Op::Softmax => {
                let x = self.val(n.inputs[0])?;
                let axis = caffe_axis(out_fact.shape.len() - 1, out_fact.shape.len());
                let l = self.layer(&name, "Softmax", &[&x.blob], &[&out_blob]);
                l.softmax_param
                    .mut_or_insert_default()
                    .set_axis(axis as i32);
                Ok(Some(Val {
                    blob: out_blob,
                    ..x
                }))
            }
            Op::Pool(p) => self.pool(n, p, out_blob, out_shape),
            Op::Concat { axis } => {
                let vs: Vec<Val> = n.inputs.iter().map(|w| self.val(*w)).collect::<R<_>>()?;
                if vs
                    .iter()
                    .any(|v| matches!(v.layout, BlobLayout::FlatChw { .. }))
                {
                    return Err("concatenating flattened NHWC values".into());
                }
                let refs: Vec<&str> = vs.iter().map(|v| v.blob.as_str()).collect();
                let ax = caffe_axis(*axis, out_fact.shape.len());
                let l = self.layer(&name, "Concat", &refs, &[&out_blob]);
                l.concat_param.mut_or_insert_default().set_axis(ax as i32);
                done(out_blob, out_shape)
            }
            Op::WeightedSum { coeffs } => {
                let vs: Vec<Val> = n.inputs.iter().map(|w| self.val(*w)).collect::<R<_>>()?;
                let refs: Vec<&str> = vs.iter().map(|v| v.blob.as_str()).collect();
                let coeff = if self.faults.contains(&Fault::DropResidualScale) {
                    vec![]
                } else {
                    coeffs.clone()
                };
                let l = self.layer(&name, "Eltwise", &refs, &[&out_blob]);
                let e = l.eltwise_param.mut_or_insert_default();
                e.set_operation(EltwiseOp::SUM);
                e.coeff = coeff;
                Ok(Some(Val {
                    blob: out_blob,
                    ..vs[0].clone()
                }))
            }
            Op::Binary(b) => self.binary(n, *b, out_blob),
            Op::Unary(u) => {
                let x = self.val(n.inputs[0])?;
                // Exp and Log layers with their defaults: base e, scale 1, shift 0.
                let ty = match u {
                    UnaryOp::Exp => Some("Exp"),
                    UnaryOp::Log => Some("Log"),
                    _ => None,
                };
                if let Some(ty) = ty {
                    self.layer(&name, ty, &[&x.blob], &[&out_blob]);
                    return Ok(Some(Val {
                        blob: out_blob,
                        ..x
                    }));
                }
                let (p, scale) = match u {
                    UnaryOp::Square => (2.0, 1.0),
                    UnaryOp::Sqrt => (0.5, 1.0),
                    UnaryOp::Rsqrt => (-0.5, 1.0),
                    UnaryOp::Pow { exponent } => (*exponent, 1.0),
                    UnaryOp::Erf | UnaryOp::Erfc => return Err(NO_ERF.into()),
                    _ => (1.0, -1.0),
                };
                let l = self.layer(&name, "Power", &[&x.blob], &[&out_blob]);
                let pp = l.power_param.mut_or_insert_default();
                pp.set_power(p);
                if scale != 1.0 {
                    pp.set_scale(scale);
                }
                Ok(Some(Val {
                    blob: out_blob,
                    ..x
                }))
            }
            Op::Reduce {
                reduce,
                axes,
                keep_dims,
            } => {
                let x = self.val(n.inputs[0])?;
                let in_shape = g
                    .fact(n.inputs[0])
                    .map_err(|e| e.to_string())?
                    .shape
                    .clone();
                if x.layout == BlobLayout::Plain && in_shape.len() == 2 && axes == &[1] {
                    // (N, C) -> (N, C, 1, 1) -> 1x1 conv of ones (or 1/C) -> (N, 1) or (N)
                    let c = in_shape[1];
                    let k = if *reduce == ReduceOp::Mean {
                        1.0 / c as f32
                    } else {
                        1.0
                    };
                    let x4 = format!("{name}/as_4d");
                    let l = self.layer(&x4, "Reshape", &[&x.blob], &[&x4]);
                    l.reshape_param.mut_or_insert_default().shape =
                        Some(shape_proto(&[0, c as i64, 1, 1])).into();
                    let s4 = format!("{name}/sum_4d");
                    let l = self.layer(&s4, "Convolution", &[&x4], &[&s4]);
                    let p = l.convolution_param.mut_or_insert_default();
                    p.set_num_output(1);
                    p.kernel_size = vec![1];
                    p.set_bias_term(false);
                    l.blobs.push(blob(&[1, c, 1, 1], vec![k; c]));
                    let dims: Vec<i64> = if *keep_dims { vec![0, 1] } else { vec![0] };
                    let l = self.layer(&out_blob, "Reshape", &[&s4], &[&out_blob]);
                    l.reshape_param.mut_or_insert_default().shape = Some(shape_proto(&dims)).into();
                    return done(out_blob, out_shape);
                }
                self.need_nchw(&x)?;
                if axes == &[1, 2] {
                    let pooled = if *keep_dims {
                        out_blob.clone()
                    } else {
                        format!("{name}/pooled")
                    };
                    let l = self.layer(&name, "Pooling", &[&x.blob], &[&pooled]);
                    let p = l.pooling_param.mut_or_insert_default();
                    p.set_pool(PoolMethod::AVE);
                    p.set_kernel_h(x.shape[2] as u32);
                    p.set_kernel_w(x.shape[3] as u32);
                    let mut val = Val {
                        blob: pooled.clone(),
                        layout: BlobLayout::Nchw,
                        shape: vec![x.shape[0], x.shape[1], 1, 1],
                    };
                    if *reduce == ReduceOp::Sum {
                        let k = (x.shape[2] * x.shape[3]) as f32;
                        let s = self.power(&format!("{name}/sum"), &pooled, 1.0, k, 0.0);
                        val.blob = s;
                    }
                    if !*keep_dims {
                        self.layer(
                            &format!("{name}/flatten"),
                            "Flatten",
                            &[&val.blob],
                            &[&out_blob],
                        );
                        return done(out_blob, out_shape);
                    }
                    if val.blob != out_blob {
                        let b = val.blob.clone();
                        val.blob = self.power(&out_blob, &b, 1.0, 1.0, 0.0);
                    }
                    return Ok(Some(val));
                }
                if axes == &[3] {
                    let c = x.shape[1];
                    let k = if *reduce == ReduceOp::Mean {
                        1.0 / c as f32
                    } else {
                        1.0
                    };
                    let summed = if *keep_dims {
                        out_blob.clone()
                    } else {
                        format!("{name}/sum_4d")
                    };
                    let l = self.layer(&name, "Convolution", &[&x.blob], &[&summed]);
                    let p = l.convolution_param.mut_or_insert_default();
                    p.set_num_output(1);
                    p.kernel_size = vec![1];
                    p.set_bias_term(false);
                    l.blobs.push(blob(&[1, c, 1, 1], vec![k; c]));
                    if !*keep_dims {
                        // (N, 1, H, W) holds (N, H, W) in order.
                        let l = self.layer(&out_blob, "Reshape", &[&summed], &[&out_blob]);
                        let d: Vec<i64> = std::iter::once(0)
                            .chain(out_fact.shape[1..].iter().map(|&v| v as i64))
                            .collect();
                        l.reshape_param.mut_or_insert_default().shape =
                            Some(shape_proto(&d)).into();
                    }
                    return done(out_blob, out_shape);
                }
                Err(format!("reduction over NHWC axes {axes:?} (keep_dims {keep_dims}) has no Caffe form here"))
            }
            Op::MatMul {
                transpose_a,
                transpose_b,
            } => {
                if *transpose_a {
                    return Err("transpose_a is not supported".into());
                }
                let x = self.val(n.inputs[0])?;
                let w_wire = n.inputs[1];
                crate::formats::layout::const_view(self.g, w_wire)?;
                let bs = g
                    .fact(n.inputs[1])
                    .map_err(|e| e.to_string())?
                    .shape
                    .clone();
                let flat = match x.layout {
                    BlobLayout::FlatChw { h, w, c }
                        if !self.faults.contains(&Fault::FlattenNchw) =>
                    {
                        Some([h, w, c])
                    }
                    _ => None,
                };
                let (k, nout) = crate::formats::layout::inner_product_dims(&bs, *transpose_b);
                let tb = *transpose_b;
                let bias = match n.inputs.get(2) {
                    Some(b) => Some(self.konst(*b)?.into_owned()),
                    None => None,
                };
                let l = self.layer(&name, "InnerProduct", &[&x.blob], &[&out_blob]);
                let p = l.inner_product_param.mut_or_insert_default();
                p.set_num_output(nout as u32);
                p.set_bias_term(bias.is_some());
                self.push_later(&[nout, k], crate::formats::layout::inner_product_fill(w_wire, k, nout, tb, flat))?;
                if let (Some(b), Some(l)) = (bias, self.net.layer.last_mut()) {
                    l.blobs.push(blob(&[nout], b));
                }
                done(out_blob, out_shape)
            }
            Op::Reshape { .. } | Op::Squeeze { .. } | Op::ExpandDims { .. } => {
                self.reshape(n, out_blob)
            }
            Op::PRelu => {
                let x = self.val(n.inputs[0])?;
                if matches!(x.layout, BlobLayout::FlatChw { .. }) {
                    return Err("PReLU on a flattened feature map".into());
                }
                let alpha = self
                    .g
                    .const_of(n.inputs[1])
                    .ok_or("PReLU alpha is not constant")?
                    .as_f32()
                    .map_err(|e| e.to_string())?
                    .into_owned();
                // Caffe's PReLU: one slope per channel (axis 1), which is where
                // the IR's last axis lives in Caffe's NCHW / (N, C) blobs.
                let l = self.layer(&name, "PReLU", &[&x.blob], &[&out_blob]);
                l.blobs.push(blob(&[alpha.len()], alpha));
                Ok(Some(Val {
                    blob: out_blob,
                    ..x
                }))
            }
            // A Caffe blob of an NHWC map is already that map's NCHW
            // transpose in TF's order, and the other way round: the two
            // layout transposes are a change of label (copied, so the TF
            // name has a layer of its own). Any other has no form in either
            // dialect (BVLC Caffe has no Permute).
            Op::Transpose { perm } => {
                let x = self.val(n.inputs[0])?;
                let layout = match (&x.layout, perm.as_slice()) {
                    (BlobLayout::Nchw, [0, 3, 1, 2]) => BlobLayout::Plain,
                    (BlobLayout::Plain, [0, 2, 3, 1]) if x.shape.len() == 4 => BlobLayout::Nchw,
                    _ => return Err(
                        "a transpose has no Caffe form here: only NHWC<->NCHW of a map is (sink_transpose cancels pairs; fold_transpose folds one that only feeds a flatten + matmul)"
                            .into(),
                    ),
                };
                let top = self.power(&out_blob, &x.blob, 1.0, 1.0, 0.0);
                Ok(Some(Val {
                    blob: top,
                    layout,
                    shape: x.shape,
                }))
            }
            Op::Slice { begin, end } => {
                // One Slice layer per cut axis (Caffe's axis order); the
                // parts outside the range go to a Silence layer. Copies only.
                let x = self.val(n.inputs[0])?;
                let caffe_axes: Vec<usize> = match (&x.layout, begin.len()) {
                    (BlobLayout::Nchw, 4) => vec![0, 2, 3, 1],
                    (BlobLayout::Plain, r) => (0..r).collect(),
                    _ => {
                        return Err(
                            "slicing a flattened channel-first value has no Caffe form here".into(),
                        )
                    }
                };
                let mut v = x;
                let cuts: Vec<usize> = (0..begin.len())
                    .filter(|&i| begin[i] > 0 || end[i] < v.shape[caffe_axes[i]])
                    .collect();
                if cuts.is_empty() {
                    let b = v.blob.clone();
                    v.blob = self.power(&out_blob, &b, 1.0, 1.0, 0.0);
                    return Ok(Some(v));
                }
                for (k, &i) in cuts.iter().enumerate() {
                    let axis = caffe_axes[i];
                    let d = v.shape[axis];
                    // A runtime fetches a layer's first top by the layer's
                    // name: the value's own layer must put it first, so a
                    // kept part after a cut-off one is copied out under it.
                    let last = k + 1 == cuts.len();
                    let top = if last && begin[i] == 0 {
                        out_blob.clone()
                    } else {
                        format!("{name}/axis{axis}")
                    };
                    let (before, after) = (format!("{top}/before"), format!("{top}/after"));
                    let mut tops = vec![];
                    let mut points = vec![];
                    if begin[i] > 0 {
                        tops.push(before.clone());
                        points.push(begin[i] as u32);
                    }
                    tops.push(top.clone());
                    if end[i] < d {
                        tops.push(after.clone());
                        points.push(end[i] as u32);
                    }
                    let refs: Vec<&str> = tops.iter().map(|t| t.as_str()).collect();
                    let l = self.layer(&top, "Slice", &[&v.blob], &refs);
                    let sp = l.slice_param.mut_or_insert_default();
                    sp.set_axis(axis as i32);
                    sp.slice_point = points;
                    let unused: Vec<&str> = refs.iter().copied().filter(|t| *t != top).collect();
                    self.layer(&format!("{top}/silence"), "Silence", &unused, &[]);
                    v.blob = top;
                    v.shape[axis] = end[i] - begin[i];
                }
                if v.blob != out_blob {
                    let b = v.blob.clone();
                    v.blob = self.power(&out_blob, &b, 1.0, 1.0, 0.0);
                }
                Ok(Some(v))
            }
            Op::Resize(r) => {
                let x = self.val(n.inputs[0])?;
                self.need_nchw(&x)?;
                let c = x.shape[1];
                let Some(f) = r.whole_factors([x.shape[2], x.shape[3]]) else {
                    return Err(NO_RESIZE.into());
                };
                if f == [1, 1] {
                    let top = self.power(&out_blob, &x.blob, 1.0, 1.0, 0.0);
                    return Ok(Some(Val { blob: top, ..x }));
                }
                let (mut v, mut taps, mut pad) = (x, vec![], [0; 2]);
                for (i, &fi) in f.iter().enumerate() {
                    let (t, p, edge) = resize_taps(r.mode, r.half_pixel_centers, fi);
                    // The stencil's clamp to the edge: one repeated edge row
                    // before and/or after (a no-op for a unit factor).
                    v = self.pad_axis(
                        &format!("{name}/edge{}", i + 2),
                        v,
                        i + 2,
                        edge[0],
                        edge[1],
                        Fill::Edge,
                    );
                    taps.push(t);
                    pad[i] = p;
                }
                let k = [taps[0].len(), taps[1].len()];
                let kernel: Vec<f32> = taps[0]
                    .iter()
                    .flat_map(|a| taps[1].iter().map(move |b| a * b))
                    .collect();
                let weights: Vec<f32> = (0..c).flat_map(|_| kernel.iter().copied()).collect();
                self.deconv(&out_blob, &v.blob, [c, c], c, k, f, pad, weights);
                done(out_blob, out_shape)
            }
            Op::Tile { .. } => Err(
                "Tile has no Caffe form that BVLC Caffe and OpenCV both read (a tf.repeat of a map's rows or columns is a nearest resize: the fuse_repeat pass makes it one)"
                    .into(),
            ),
            Op::SpaceDepth(sd) => {
                // A one-hot (de)convolution with stride = kernel = block:
                // each output is one input times 1 plus zeros, exact.
                let x = self.val(n.inputs[0])?;
                self.need_nchw(&x)?;
                let b = sd.block;
                let (deep, wide) = if sd.to_space {
                    (x.shape[1], x.shape[1] / (b * b))
                } else {
                    (x.shape[1] * b * b, x.shape[1])
                };
                // weights[deep slot][wide channel][i][j], slot = (i*b+j)*wide + c
                let mut w = vec![0.0f32; deep * wide * b * b];
                for i in 0..b {
                    for j in 0..b {
                        for c in 0..wide {
                            let slot = (i * b + j) * wide + c;
                            w[((slot * wide + c) * b + i) * b + j] = 1.0;
                        }
                    }
                }
                if sd.to_space {
                    self.deconv(
                        &out_blob,
                        &x.blob,
                        [deep, wide],
                        1,
                        [b, b],
                        [b, b],
                        [0, 0],
                        w,
                    );
                } else {
                    let l = self.layer(&name, "Convolution", &[&x.blob], &[&out_blob]);
                    let p = l.convolution_param.mut_or_insert_default();
                    p.set_num_output(deep as u32);
                    p.set_kernel_h(b as u32);
                    p.set_kernel_w(b as u32);
                    p.set_stride_h(b as u32);
                    p.set_stride_w(b as u32);
                    p.set_bias_term(false);
                    l.blobs.push(blob(&[deep, wide, b, b], w));
                }
                done(out_blob, out_shape)
            }
            Op::Pad { pads, value } => {
                let x = self.val(n.inputs[0])?;
                self.need_nchw(&x)?;
                if pads[0] != [0, 0] || pads[3] != [0, 0] {
                    return Err("padding the batch or channel axis".into());
                }
                let v = self.pad_axis(
                    &format!("{name}/h"),
                    x,
                    2,
                    pads[1][0],
                    pads[1][1],
                    Fill::Const(*value),
                );
                let v = self.pad_axis(
                    &format!("{name}/w"),
                    v,
                    3,
                    pads[2][0],
                    pads[2][1],
                    Fill::Const(*value),
                );
                let top = self.power(&out_blob, &v.blob, 1.0, 1.0, 0.0);
                Ok(Some(Val { blob: top, ..v }))
            }
            Op::L2Normalize { axis, epsilon } => {
                let x = self.val(n.inputs[0])?;
                if self.faults.contains(&Fault::DropL2Norm) {
                    let top = self.power(&out_blob, &x.blob, 1.0, 1.0, 0.0);
                    return Ok(Some(Val { blob: top, ..x }));
                }
                if x.shape.len() != 2 || *axis != 1 || x.layout != BlobLayout::Plain {
                    return Err("L2 normalisation is emitted for (N, C) values over C only".into());
                }
                let (nb, c) = (x.shape[0], x.shape[1]);
                let sq = self.power(&format!("{name}/square"), &x.blob, 2.0, 1.0, 0.0);
                let sq4 = format!("{name}/square_4d");
                let l = self.layer(&sq4, "Reshape", &[&sq], &[&sq4]);
                l.reshape_param.mut_or_insert_default().shape =
                    Some(shape_proto(&[0, c as i64, 1, 1])).into();
                let sum = format!("{name}/sum");
                let l = self.layer(&sum, "Convolution", &[&sq4], &[&sum]);
                let p = l.convolution_param.mut_or_insert_default();
                p.set_num_output(1);
                p.kernel_size = vec![1];
                p.set_bias_term(false);
                l.blobs.push(blob(&[1, c, 1, 1], vec![1.0; c]));
                let inv = self.power(&format!("{name}/rsqrt"), &sum, -0.5, 1.0, *epsilon);
                let flat = format!("{name}/rsqrt_flat");
                let l = self.layer(&flat, "Reshape", &[&inv], &[&flat]);
                l.reshape_param.mut_or_insert_default().shape =
                    Some(shape_proto(&[nb as i64])).into();
                let l = self.layer(&name, "Scale", &[&x.blob, &flat], &[&out_blob]);
                l.scale_param.mut_or_insert_default().set_axis(0);
                Ok(Some(Val {
                    blob: out_blob,
                    ..x
                }))
            }
        }
    }

    fn pool(
        &mut self,
        n: &Node,
        p: &crate::ir::Pool,
        out_blob: String,
        out_shape: Vec<usize>,
    ) -> R<Option<Val>> {
        if p.layout != Layout::Nhwc {
            return Err("NCHW data_format is not supported by the Caffe emitter".into());
        }
        let name = n.name.clone();
        let x = self.val(n.inputs[0])?;
        self.need_nchw(&x)?;
        if self.faults.contains(&Fault::PoolCeil) {
            let l = self.layer(&name, "Pooling", &[&x.blob], &[&out_blob]);
            let pp = l.pooling_param.mut_or_insert_default();
            pp.set_pool(if p.kind == PoolKind::Max {
                PoolMethod::MAX
            } else {
                PoolMethod::AVE
            });
            pp.set_kernel_h(p.ksize[0] as u32);
            pp.set_kernel_w(p.ksize[1] as u32);
            pp.set_stride_h(p.strides[0] as u32);
            pp.set_stride_w(p.strides[1] as u32);
            return Ok(Some(Val {
                blob: out_blob,
                layout: BlobLayout::Nchw,
                shape: out_shape,
            }));
        }
        let mut plan = vec![];
        for (i, axis) in [2usize, 3].into_iter().enumerate() {
            let dim = x.shape[axis];
            let (o, [before, _]) = resolve_axis(&p.padding, i, dim, p.ksize[i], p.strides[i], 1)
                .ok_or("window does not fit")?;
            // Padded length whose windows Caffe's ceil rounding counts exactly `o` times.
            let needed = (o - 1) * p.strides[i] + p.ksize[i];
            let keep = dim.min(needed - before);
            plan.push((axis, before, keep, needed - before - keep));
        }
        let fill = match p.kind {
            PoolKind::Max => Fill::Edge,
            PoolKind::Avg => Fill::Const(0.0),
        };
        let mut v = x.clone();
        for &(axis, _, keep, _) in &plan {
            v = self.crop_axis(&format!("{name}/crop{axis}"), v, axis, keep);
        }
        let cropped = v.clone();
        for &(axis, before, _, after) in &plan {
            v = self.pad_axis(&format!("{name}/pad{axis}"), v, axis, before, after, fill);
        }
        let padded = plan.iter().any(|&(_, b, _, a)| b > 0 || a > 0);
        let avg_count = p.kind == PoolKind::Avg && padded;
        let pooled = if avg_count {
            format!("{name}/sum_avg")
        } else {
            out_blob.clone()
        };
        let pool_layer = |em: &mut Self, lname: &str, bottom: &str, top: &str| {
            let l = em.layer(lname, "Pooling", &[bottom], &[top]);
            let pp = l.pooling_param.mut_or_insert_default();
            pp.set_pool(match p.kind {
                PoolKind::Max => PoolMethod::MAX,
                PoolKind::Avg => PoolMethod::AVE,
            });
            pp.set_kernel_h(p.ksize[0] as u32);
            pp.set_kernel_w(p.ksize[1] as u32);
            pp.set_stride_h(p.strides[0] as u32);
            pp.set_stride_w(p.strides[1] as u32);
        };
        pool_layer(self, &name, &v.blob, &pooled);
        if avg_count {
            // TF divides by the real pixels in each window: avg(x_padded) / avg(ones_padded).
            let ones = self.power(&format!("{name}/ones"), &cropped.blob, 1.0, 0.0, 1.0);
            let mut o = Val {
                blob: ones,
                ..cropped
            };
            for &(axis, before, _, after) in &plan {
                o = self.pad_axis(
                    &format!("{name}/ones_pad{axis}"),
                    o,
                    axis,
                    before,
                    after,
                    Fill::Const(0.0),
                );
            }
            let frac = format!("{name}/real_fraction");
            pool_layer(self, &frac, &o.blob, &frac);
            let inv = self.power(&format!("{name}/inv_fraction"), &frac, -1.0, 1.0, 0.0);
            let l = self.layer(
                &format!("{name}/divide"),
                "Eltwise",
                &[&pooled, &inv],
                &[&out_blob],
            );
            l.eltwise_param
                .mut_or_insert_default()
                .set_operation(EltwiseOp::PROD);
        }
        Ok(Some(Val {
            blob: out_blob,
            layout: BlobLayout::Nchw,
            shape: out_shape,
        }))
    }

    fn binary(&mut self, n: &Node, op: BinaryOp, out_blob: String) -> R<Option<Val>> {
        let name = n.name.clone();
        let (a, b) = (n.inputs[0], n.inputs[1]);
        let (ca, cb) = (self.g.const_of(a).is_some(), self.g.const_of(b).is_some());
        if !ca && !cb {
            let (mut va, mut vb) = (self.val(a)?, self.val(b)?);
            // A one-channel map against a C-channel one (a mean or norm over
            // the channel axis, as in LayerNorm): copied to C channels by
            // a 1x1 convolution of ones (exact), then elementwise.
            if let Some(c) = channel_broadcast(&va, &vb) {
                vb = self.expand_channels(&format!("{name}/broadcast_b"), &vb, vec![1.0; c], None);
            } else if let Some(c) = channel_broadcast(&vb, &va) {
                va = self.expand_channels(&format!("{name}/broadcast_a"), &va, vec![1.0; c], None);
            }
            if va.shape != vb.shape || va.layout != vb.layout {
                return self.broadcast_scale(n, op, va, vb, out_blob);
            }
            let eltwise = |em: &mut Self,
                           lname: &str,
                           bottoms: &[&str],
                           top: &str,
                           o: EltwiseOp,
                           coeff: Vec<f32>| {
                let l = em.layer(lname, "Eltwise", bottoms, &[top]);
                let e = l.eltwise_param.mut_or_insert_default();
                e.set_operation(o);
                e.coeff = coeff;
            };
            match op {
                BinaryOp::Add => eltwise(
                    self,
                    &name,
                    &[&va.blob, &vb.blob],
                    &out_blob,
                    EltwiseOp::SUM,
                    vec![],
                ),
                BinaryOp::Sub => eltwise(
                    self,
                    &name,
                    &[&va.blob, &vb.blob],
                    &out_blob,
                    EltwiseOp::SUM,
                    vec![1.0, -1.0],
                ),
                BinaryOp::Mul => eltwise(
                    self,
                    &name,
                    &[&va.blob, &vb.blob],
                    &out_blob,
                    EltwiseOp::PROD,
                    vec![],
                ),
                BinaryOp::Max => eltwise(
                    self,
                    &name,
                    &[&va.blob, &vb.blob],
                    &out_blob,
                    EltwiseOp::MAX,
                    vec![],
                ),
                BinaryOp::Min => {
                    let na = self.power(&format!("{name}/neg_a"), &va.blob, 1.0, -1.0, 0.0);
                    let nb = self.power(&format!("{name}/neg_b"), &vb.blob, 1.0, -1.0, 0.0);
                    let m = format!("{name}/max");
                    eltwise(self, &m, &[&na, &nb], &m, EltwiseOp::MAX, vec![]);
                    self.power(&out_blob, &m, 1.0, -1.0, 0.0);
                }
                BinaryOp::Div => {
                    let inv = self.power(&format!("{name}/inv"), &vb.blob, -1.0, 1.0, 0.0);
                    eltwise(
                        self,
                        &name,
                        &[&va.blob, &inv],
                        &out_blob,
                        EltwiseOp::PROD,
                        vec![],
                    );
                }
            }
            return Ok(Some(Val {
                blob: out_blob,
                ..va
            }));
        }
        if ca && cb {
            return Err("both inputs constant (run the fold_constants pass)".into());
        }
        let (x, k, k_first) = if ca { (b, a, true) } else { (a, b, false) };
        let v = self.val(x)?;
        let kt = self.g.const_of(k).ok_or("constant vanished")?;
        let kv = kt.as_f32().map_err(|e| e.to_string())?.into_owned();
        let c_out = *n.outputs[0].shape.last().unwrap_or(&0);
        if self.g.fact(x).map_err(|e| e.to_string())?.shape != n.outputs[0].shape {
            // A one-channel map and a per-channel constant (`rsqrt(var) *
            // gamma` of a LayerNorm): a 1x1 convolution from one channel to
            // C with the constant as weights (and bias), each output one
            // float op as in TF.
            let ks = kt.shape();
            let per_channel =
                kv.len() == c_out && crate::formats::layout::is_per_channel(ks, c_out);
            let one_channel = (v.layout == BlobLayout::Nchw && v.shape.len() == 4)
                || (v.layout == BlobLayout::Plain && v.shape.len() == 2);
            if one_channel && v.shape[1] == 1 && per_channel {
                let (scale, bias) = crate::formats::layout::per_channel_affine(
                    op, k_first, kv, c_out,
                )
                .ok_or(
                    "per-channel Max/Min and a constant divided by a value have no Caffe form here",
                )?;
                let mut e = self.expand_channels(&name, &v, scale, bias);
                if e.blob != out_blob {
                    let b = e.blob.clone();
                    e.blob = self.power(&out_blob, &b, 1.0, 1.0, 0.0);
                }
                return Ok(Some(e));
            }
            return Err("the constant broadcasts the value to a larger shape".into());
        }
        if kv.len() == 1 {
            let c = kv[0];
            let (power, scale, shift) = match (op, k_first) {
                (BinaryOp::Add, _) => (1.0, 1.0, c),
                (BinaryOp::Sub, false) => (1.0, 1.0, -c),
                (BinaryOp::Sub, true) => (1.0, -1.0, c),
                (BinaryOp::Mul, _) => (1.0, c, 0.0),
                (BinaryOp::Div, false) => (1.0, 1.0 / c, 0.0),
                (BinaryOp::Max, _) => {
                    // max(x, c) = relu(x - c) + c
                    let s = self.power(&format!("{name}/shift"), &v.blob, 1.0, 1.0, -c);
                    let r = format!("{name}/relu");
                    self.layer(&r, "ReLU", &[&s], &[&r]);
                    self.power(&out_blob, &r, 1.0, 1.0, c);
                    return Ok(Some(Val {
                        blob: out_blob,
                        ..v
                    }));
                }
                (BinaryOp::Min, _) => {
                    // min(x, c) = c - relu(c - x)
                    let s = self.power(&format!("{name}/shift"), &v.blob, 1.0, -1.0, c);
                    let r = format!("{name}/relu");
                    self.layer(&r, "ReLU", &[&s], &[&r]);
                    self.power(&out_blob, &r, 1.0, -1.0, c);
                    return Ok(Some(Val {
                        blob: out_blob,
                        ..v
                    }));
                }
                (BinaryOp::Div, true) => return Err("constant divided by a value".into()),
            };
            self.power(&out_blob, &v.blob, power, scale, shift);
            return Ok(Some(Val {
                blob: out_blob,
                ..v
            }));
        }
        // Per-channel constant on the channel axis -> Scale.
        let c = *n.outputs[0].shape.last().unwrap_or(&0);
        let ks = kt.shape();
        let per_channel = kv.len() == c && crate::formats::layout::is_per_channel(ks, c);
        if !per_channel || matches!(v.layout, BlobLayout::FlatChw { .. }) {
            return Err(format!(
                "constant of shape {ks:?} is neither a scalar nor per-channel"
            ));
        }
        let axis = if v.layout == BlobLayout::Nchw {
            1
        } else {
            v.shape.len() - 1
        };
        let (scale, bias) = crate::formats::layout::per_channel_affine(op, k_first, kv, c).ok_or(
            "per-channel Max/Min and a constant divided by a value have no Caffe form here",
        )?;
        let l = self.layer(&name, "Scale", &[&v.blob], &[&out_blob]);
        let p = l.scale_param.mut_or_insert_default();
        p.set_axis(axis as i32);
        p.set_bias_term(bias.is_some());
        l.blobs.push(blob(&[c], scale));
        if let Some(b) = bias {
            l.blobs.push(blob(&[c], b));
        }
        Ok(Some(Val {
            blob: out_blob,
            ..v
        }))
    }

    /// A one-channel NCHW value spread to `scale.len()` channels by a 1x1
    /// convolution: channel c is `scale[c] * x (+ bias[c])`.
    fn expand_channels(
        &mut self,
        name: &str,
        v: &Val,
        scale: Vec<f32>,
        bias: Option<Vec<f32>>,
    ) -> Val {
        let c = scale.len();
        let top = name.to_string();
        let has_bias = bias.is_some();
        let l = if v.shape.len() == 4 {
            let l = self.layer(name, "Convolution", &[&v.blob], &[&top]);
            let p = l.convolution_param.mut_or_insert_default();
            p.set_num_output(c as u32);
            p.kernel_size = vec![1];
            p.set_bias_term(has_bias);
            l.blobs.push(blob(&[c, 1, 1, 1], scale));
            l
        } else {
            // (N, 1) -> (N, C)
            let l = self.layer(name, "InnerProduct", &[&v.blob], &[&top]);
            let p = l.inner_product_param.mut_or_insert_default();
            p.set_num_output(c as u32);
            p.set_bias_term(has_bias);
            l.blobs.push(blob(&[c, 1], scale));
            l
        };
        if let Some(b) = bias {
            l.blobs.push(blob(&[c], b));
        }
        let mut shape = v.shape.clone();
        shape[1] = c;
        Val {
            blob: top,
            layout: v.layout.clone(),
            shape,
        }
    }

    /// x * y or x / y where y's Caffe shape is a prefix of x's followed by
    /// ones (a per-sample or per-channel factor): Reshape y to that prefix,
    /// then Scale with two bottoms at axis 0.
    fn broadcast_scale(
        &mut self,
        n: &Node,
        op: BinaryOp,
        va: Val,
        vb: Val,
        out_blob: String,
    ) -> R<Option<Val>> {
        let name = n.name.clone();
        let (big, small, small_first) =
            if va.shape.iter().product::<usize>() >= vb.shape.iter().product::<usize>() {
                (va, vb, false)
            } else {
                (vb, va, true)
            };
        let ok_layouts = !matches!(big.layout, BlobLayout::FlatChw { .. })
            && !matches!(small.layout, BlobLayout::FlatChw { .. });
        let k = small
            .shape
            .iter()
            .rposition(|&d| d != 1)
            .map(|i| i + 1)
            .unwrap_or(1);
        let prefix_ok = small.shape.len() == big.shape.len() && small.shape[..k] == big.shape[..k];
        let supported = matches!(
            (op, small_first),
            (BinaryOp::Mul, _) | (BinaryOp::Div, false)
        );
        if !ok_layouts || !prefix_ok || !supported {
            return Err(format!(
                "broadcasting {:?} with {:?} ({}) has no Caffe form here",
                big.shape,
                small.shape,
                n.op.kind()
            ));
        }
        let mut factor = small.blob.clone();
        if op == BinaryOp::Div {
            factor = self.power(&format!("{name}/inverse"), &factor, -1.0, 1.0, 0.0);
        }
        let flat = format!("{name}/factor");
        let dims: Vec<i64> = small.shape[..k].iter().map(|&d| d as i64).collect();
        let l = self.layer(&flat, "Reshape", &[&factor], &[&flat]);
        l.reshape_param.mut_or_insert_default().shape = Some(shape_proto(&dims)).into();
        let l = self.layer(&out_blob, "Scale", &[&big.blob, &flat], &[&out_blob]);
        l.scale_param.mut_or_insert_default().set_axis(0);
        Ok(Some(Val {
            blob: out_blob,
            ..big
        }))
    }

    /// The blob `v`, a (N, C*H*W) flatten in (C, H, W) order, rewritten in
    /// TF's (H, W, C) order under the same name: the flatten's blob and
    /// every reader of it are renamed `<blob>/chw`, then Reshape (N, C, H*W)
    /// -> Slice along H*W -> Concat along C -> Reshape (N, H*W*C). Only
    /// layers both BVLC Caffe and OpenCV read; values are copied, never
    /// recomputed, so the result is exact.
    fn flat_to_hwc(&mut self, v: &Val, [h, w, c]: [usize; 3]) -> Val {
        let name = v.blob.clone();
        let chw = format!("{name}/chw");
        for l in &mut self.net.layer {
            for b in l.bottom.iter_mut().chain(l.top.iter_mut()) {
                if *b == name {
                    *b = chw.clone();
                }
            }
            if l.name() == name {
                l.set_name(chw.clone());
                self.layer_names.insert(chw.clone());
            }
        }
        self.layer_names.remove(&name);
        let p = h * w;
        let grid = format!("{name}/c_hw");
        let l = self.layer(&grid, "Reshape", &[&chw], &[&grid]);
        l.reshape_param.mut_or_insert_default().shape =
            Some(shape_proto(&[0, c as i64, p as i64])).into();
        let pieces: Vec<String> = (0..p).map(|i| format!("{name}/hw{i}")).collect();
        let refs: Vec<&str> = pieces.iter().map(|s| s.as_str()).collect();
        let l = self.layer(&format!("{name}/slice"), "Slice", &[&grid], &refs);
        let sp = l.slice_param.mut_or_insert_default();
        sp.set_axis(2);
        sp.slice_point = (1..p as u32).collect();
        let joined = format!("{name}/hwc");
        let l = self.layer(&joined, "Concat", &refs, &[&joined]);
        l.concat_param.mut_or_insert_default().set_axis(1);
        let l = self.layer(&name, "Reshape", &[&joined], &[&name]);
        l.reshape_param.mut_or_insert_default().shape =
            Some(shape_proto(&[0, (p * c) as i64])).into();
        Val {
            blob: name,
            layout: BlobLayout::Plain,
            shape: v.shape.clone(),
        }
    }

    fn reshape(&mut self, n: &Node, out_blob: String) -> R<Option<Val>> {
        let name = n.name.clone();
        let x = self.val(n.inputs[0])?;
        let ins = &self.g.fact(n.inputs[0]).map_err(|e| e.to_string())?.shape;
        let outs = &n.outputs[0].shape;
        // NHWC and NCHW hold a 4-D value in the same order when H*W or C is 1.
        let same_order = |s: &[usize]| s.len() != 4 || s[1] * s[2] == 1 || s[3] == 1;
        let reshape_to = |em: &mut Self, dims: Vec<usize>, layout: BlobLayout| -> R<Option<Val>> {
            let mut d: Vec<i64> = dims.iter().map(|&v| v as i64).collect();
            if ins.first() == outs.first() && !d.is_empty() {
                d[0] = 0;
            }
            let l = em.layer(&name, "Reshape", &[&x.blob], &[&out_blob]);
            l.reshape_param.mut_or_insert_default().shape = Some(shape_proto(&d)).into();
            Ok(Some(Val {
                blob: out_blob.clone(),
                layout,
                shape: dims,
            }))
        };
        let plain_like =
            x.layout == BlobLayout::Plain || (x.layout == BlobLayout::Nchw && same_order(ins));
        match (ins.len(), outs.len(), &x.layout) {
            _ if plain_like && same_order(outs) => {
                let layout = if outs.len() == 4 {
                    BlobLayout::Nchw
                } else {
                    BlobLayout::Plain
                };
                reshape_to(self, nchw(outs), layout)
            }
            (4, 2, BlobLayout::Nchw) if outs[0] == ins[0] => {
                self.layer(&name, "Flatten", &[&x.blob], &[&out_blob]);
                let layout = BlobLayout::FlatChw {
                    h: ins[1],
                    w: ins[2],
                    c: ins[3],
                };
                Ok(Some(Val {
                    blob: out_blob,
                    layout,
                    shape: outs.clone(),
                }))
            }
            _ => Err(format!(
                "reshape {ins:?} -> {outs:?} changes the NHWC/NCHW data order"
            )),
        }
    }
}

/// Emit the nodes the outputs need. Every node without a Caffe form is
/// reported, all at once.
pub fn emit(g: &Graph, name: &str) -> Result<CaffeNet> {
    emit_with_faults(g, name, &[])
}

/// `emit` with deliberate mistakes (see `Fault`), for verify-parity's tests.
#[doc(hidden)]
pub fn emit_with_faults(g: &Graph, name: &str, faults: &[Fault]) -> Result<CaffeNet> {
    let mut em = Em {
        g,
        faults,
        net: NetParameter::new(),
        vals: HashMap::new(),
        layer_names: HashSet::new(),
        current: vec![],
        later: vec![],
    };
    em.net.set_name(name.to_string());
    let mut notes = vec![];
    let mut blobs = vec![];
    crate::formats::walk_needed(g, "Caffe", |i| {
        let node = &g.nodes[i];
        em.current.clear();
        if let Some(v) = em.emit(i)? {
            if let Some(tensor) = node.carries() {
                let layer = em
                    .net
                    .layer
                    .iter()
                    .rev()
                    .find(|l| l.top.contains(&v.blob))
                    .map(|l| l.name().to_string())
                    .unwrap_or_default();
                blobs.push(BlobMap {
                    tensor: tensor.to_string(),
                    blob: v.blob.clone(),
                    layer,
                    layout: v.layout.clone(),
                });
            }
            em.vals.insert(Wire { node: i, slot: 0 }, v);
            let note = if node.absorbed.is_empty() {
                String::new()
            } else {
                format!("absorbed {}", node.absorbed.join(", "))
            };
            notes.push(LayerNote {
                node: node.name.clone(),
                op: node.op.kind().to_string(),
                layers: em.current.clone(),
                note,
            });
        }
        Ok(())
    })?;
    // A declared output held in channel-first flatten order is put in
    // TF's order: the user reads the blob, not faceall's layout map.
    for w in &g.outputs {
        let Some(v) = em.vals.get(w).cloned() else {
            continue;
        };
        if let BlobLayout::FlatChw { h, w: wd, c } = v.layout {
            if em.faults.contains(&Fault::FlattenOutputChw) {
                continue;
            }
            let exact = em.flat_to_hwc(&v, [h, wd, c]);
            for b in blobs.iter_mut().filter(|b| b.blob == v.blob) {
                b.layout = BlobLayout::Plain;
            }
            em.vals.insert(*w, exact);
        }
    }
    let outputs = g
        .outputs
        .iter()
        .map(|w| {
            em.vals.get(w).map(|v| v.blob.clone()).ok_or_else(|| {
                Error::Graph(format!("output '{}' was not emitted", g.wire_name(*w)))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(CaffeNet {
        net: em.net,
        blobs,
        notes,
        outputs,
        later: em.later,
    })
}

/// The deploy prototxt: the net without its weights, in text format.
pub fn prototxt(net: &mut NetParameter) -> String {
    // Take the weights out instead of cloning the net: they are most of it.
    let blobs: Vec<_> = net
        .layer
        .iter_mut()
        .map(|l| std::mem::take(&mut l.blobs))
        .collect();
    let text = protobuf::text_format::print_to_string_pretty(net);
    for (l, b) in net.layer.iter_mut().zip(blobs) {
        l.blobs = b;
    }
    text
}

/// The binary caffemodel (net with weights), streamed to `w` a layer at a
/// time: each layer's deferred weights (`Later`) are computed from `g` a
/// run at a time and spliced into the layer's encoding as it is written
/// (`formats::splice`), so the writer never holds a layer's weights. The
/// bytes are those of encoding the whole net at once (protobuf writes
/// fields in number order, and `layer` = 100 is NetParameter's highest
/// set field; the test beside this checks it).
pub fn write_caffemodel(c: &mut CaffeNet, g: &Graph, w: &mut dyn std::io::Write) -> Result<()> {
    use crate::formats::splice::{spliced_len, write_spliced, Deferred, Elem};
    use protobuf::Message;
    let enc = |e: protobuf::Error| Error::Format(format!("encoding the caffemodel: {e}"));
    let layers = std::mem::take(&mut c.net.layer);
    let head = c.net.write_to_bytes().map_err(enc);
    c.net.layer = layers;
    w.write_all(&head?)?;
    let mut later = c.later.iter().peekable();
    let tag = |w: &mut dyn std::io::Write, len: usize| -> Result<()> {
        let mut os = protobuf::CodedOutputStream::new(w);
        os.write_tag(LAYER_FIELD, protobuf::rt::WireType::LengthDelimited)
            .and_then(|()| os.write_raw_varint64(len as u64))
            .and_then(|()| os.flush())
            .map_err(enc)
    };
    for (i, l) in c.net.layer.iter().enumerate() {
        let bytes = l.write_to_bytes().map_err(enc)?;
        match later.next_if(|d| d.layer == i) {
            None => {
                tag(w, bytes.len())?;
                w.write_all(&bytes)?;
            }
            Some(d) => {
                let d = Deferred {
                    path: vec![(7, d.blob)],
                    field: 5,
                    count: d.count,
                    elem: Elem::F32,
                    fill: &*d.fill,
                };
                tag(w, spliced_len(&bytes, &d)?)?;
                write_spliced(w, &bytes, &d, g)
                    .map_err(|e| Error::Format(format!("layer '{}': {e}", l.name())))?;
            }
        }
    }
    Ok(())
}

/// NetParameter's `layer` field number (caffe.proto).
const LAYER_FIELD: u32 = 100;

impl BlobLayout {
    /// A Caffe blob's value in TensorFlow's layout (NCHW -> NHWC, CHW-flat -> HWC-flat).
    pub fn to_tf(&self, t: &crate::ir::Tensor) -> Result<crate::ir::Tensor> {
        match self {
            BlobLayout::Plain => Ok(t.clone()),
            BlobLayout::Nchw => {
                let &[n, c, h, w] = t.shape() else {
                    return Err(Error::Usage(format!(
                        "expected a 4-D blob, got {:?}",
                        t.shape()
                    )));
                };
                let v = crate::runtime::kernels::nchw_to_nhwc(&t.as_f32()?, [n, c, h, w]);
                crate::ir::Tensor::f32(vec![n, h, w, c], v)
            }
            BlobLayout::FlatChw { h, w, c } => {
                let n = t.shape().first().copied().unwrap_or(1);
                let v = crate::runtime::kernels::nchw_to_nhwc(&t.as_f32()?, [n, *c, *h, *w]);
                crate::ir::Tensor::f32(vec![n, h * w * c], v)
            }
        }
    }

    /// A TensorFlow value in this blob's layout (the inverse of `to_tf`).
    pub fn from_tf(&self, t: &crate::ir::Tensor) -> Result<crate::ir::Tensor> {
        match self {
            BlobLayout::Plain => Ok(t.clone()),
            BlobLayout::Nchw => {
                let &[n, h, w, c] = t.shape() else {
                    return Err(Error::Usage(format!(
                        "expected a 4-D NHWC value, got {:?}",
                        t.shape()
                    )));
                };
                let v = crate::runtime::kernels::nhwc_to_nchw(&t.as_f32()?, [n, h, w, c]);
                crate::ir::Tensor::f32(vec![n, c, h, w], v)
            }
            BlobLayout::FlatChw { h, w, c } => {
                let n = t.shape().first().copied().unwrap_or(1);
                let v = crate::runtime::kernels::nhwc_to_nchw(&t.as_f32()?, [n, *h, *w, *c]);
                crate::ir::Tensor::f32(vec![n, h * w * c], v)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::Message;

    /// The bilinear stencils reproduce TF's weights: half-pixel factor 2
    /// blends 0.25/0.75 around each pixel, legacy factor 3 reads 1, 2/3,
    /// 1/3 of a pixel; the pads crop the stencil's overhang so the output
    /// keeps `f` times the input's length.
    #[test]
    fn bilinear_stencils_are_tfs_weights() {
        let (t, p, edge) = resize_taps(ResizeMode::Bilinear, true, 2);
        assert_eq!((t, p, edge), (vec![0.25, 0.75, 0.75, 0.25], 3, [1, 1]));
        let (t, p, edge) = resize_taps(ResizeMode::Bilinear, false, 3);
        let want = [0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0, 2.0 / 3.0, 1.0 / 3.0];
        assert!(
            t.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-7),
            "{t:?}"
        );
        assert_eq!((p, edge), (3, [0, 1]));
        for f in 1..6 {
            for half in [false, true] {
                let (t, p, e) = resize_taps(ResizeMode::Bilinear, half, f);
                let n = 4;
                // Caffe's Deconvolution length, on the edge-padded input.
                let full = f * (n + e[0] + e[1] - 1) + t.len();
                assert_eq!(full - 2 * p, f * n, "f {f} half {half}");
            }
        }
    }

    /// Streaming the caffemodel a layer at a time gives the bytes of
    /// encoding the whole net at once, with every deferred blob filled.
    #[test]
    fn streamed_caffemodel_is_the_whole_net_encoded() {
        for case in ["matmul_bn", "depthwise_relu6", "flatten_output"] {
            let g = crate::formats::fixture_graph(case);
            let mut c = emit(&g, "net").unwrap();
            assert!(!c.later.is_empty(), "{case}: no deferred weights");
            let mut streamed = vec![];
            write_caffemodel(&mut c, &g, &mut streamed).unwrap();
            // The deferred blobs are empty again after writing.
            for d in &c.later {
                assert!(c.net.layer[d.layer].blobs[d.blob].data.is_empty());
            }
            let mut whole = c.net.clone();
            for d in &c.later {
                let data = crate::formats::splice::collect(&*d.fill, &g).unwrap();
                whole.layer[d.layer].blobs[d.blob].data = data;
            }
            assert_eq!(streamed, whole.write_to_bytes().unwrap(), "{case}");
        }
    }
}
