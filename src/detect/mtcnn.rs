//! MTCNN (Zhang et al. 2016): PNet over an image pyramid, then RNet and
//! ONet on the candidates, with box regression, NMS and five landmarks, run
//! by faceall's fast Caffe executor (`formats::caffe::fast`: weights packed
//! once, PReLU in the gemm epilogue, NHWC throughout, PNet at each level's
//! own size, RNet and ONet batched over the candidates), or by the
//! reference executor when asked (`Mtcnn::reference`, for tests). The
//! algorithm and constants follow FaceNet's `detect_face.py` (which feeds
//! these same weights): pixels scaled as (x - 127.5) / 128, and fed
//! transposed to FaceAll's models (they were trained column-major).

use std::collections::HashMap;
use std::path::Path;

use image::RgbImage;

use crate::error::{Error, Result};
use crate::formats::caffe::exec::CaffeModel;
use crate::formats::caffe::fast::FastCaffe;
use crate::ir::Tensor;

/// One detected face: box (x1, y1, x2, y2) in pixels, score, landmarks
/// (left eye, right eye, nose, mouth left, mouth right) as (x, y).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Face {
    pub bbox: [f32; 4],
    pub score: f32,
    pub landmarks: [[f32; 2]; 5],
}

/// Blob names and input orientation of one MTCNN flavour.
struct Flavour {
    /// FaceAll's (MATLAB-trained) nets take images transposed (N, C, W, H);
    /// those converted from PyPI mtcnn's Keras weights take (N, C, H, W).
    transposed: bool,
    pnet: [&'static str; 2],
    rnet: [&'static str; 2],
    onet: [&'static str; 3],
}

/// FaceAll's original Caffe models.
const FACEALL: Flavour = Flavour {
    transposed: true,
    pnet: ["prob1", "conv4-2"],
    rnet: ["prob1", "conv5-2"],
    onet: ["prob1", "conv6-2", "conv6-3"],
};

/// `scripts/convert_mtcnn.py`'s conversion of PyPI mtcnn==1.0.0.
const CONVERTED: Flavour = Flavour {
    transposed: false,
    pnet: ["prob", "regression"],
    rnet: ["prob", "regression"],
    onet: ["prob", "regression", "landmarks_out"],
};

pub struct Mtcnn {
    flavour: &'static Flavour,
    pnet: FastCaffe,
    rnet: FastCaffe,
    onet: FastCaffe,
    /// Run the nets on the reference Caffe executor (slow, exact: the
    /// yardstick the fast one is tested against).
    pub reference: bool,
    /// Smallest face searched, in pixels.
    pub min_size: f32,
    pub factor: f32,
    pub thresholds: [f32; 3],
}

#[derive(Clone, Copy)]
struct Cand {
    b: [f32; 4],
    score: f32,
    reg: [f32; 4],
}

impl Mtcnn {
    /// Load det1/det2/det3 (.prototxt + .caffemodel) from a directory.
    pub fn load(dir: &Path) -> Result<Self> {
        let net = |n: &str, outs: &[&str]| {
            let m = CaffeModel::load(
                &dir.join(format!("{n}.prototxt")),
                Some(&dir.join(format!("{n}.caffemodel"))),
            )?;
            FastCaffe::compile(m, outs)
        };
        let det1 = dir.join("det1.prototxt");
        let text = std::fs::read_to_string(&det1).map_err(|e| Error::from(e).in_file(&det1))?;
        let flavour = if text.contains("\"prob1\"") {
            &FACEALL
        } else {
            &CONVERTED
        };
        Ok(Mtcnn {
            flavour,
            pnet: net("det1", &flavour.pnet)?,
            rnet: net("det2", &flavour.rnet)?,
            onet: net("det3", &flavour.onet)?,
            reference: false,
            min_size: 20.0,
            factor: 0.709,
            thresholds: [0.6, 0.7, 0.7],
        })
    }

    pub fn detect(&self, img: &RgbImage) -> Result<Vec<Face>> {
        self.detect_with(img, &mut || Ok(()))
    }

    /// [`Mtcnn::detect`], calling `between` after the pyramid and between
    /// RNet/ONet batches: a server passes its turn to other requests there
    /// (a photo of 200 faces takes seconds); an error from it stops the
    /// detection.
    pub fn detect_with(
        &self,
        img: &RgbImage,
        between: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Vec<Face>> {
        let (w, h) = (img.width() as f32, img.height() as f32);
        // Pyramid.
        let mut scales = vec![];
        let m = 12.0 / self.min_size;
        let mut minl = w.min(h) * m;
        let mut f = 1.0;
        while minl >= 12.0 {
            scales.push(m * f);
            minl *= self.factor;
            f *= self.factor;
        }
        // Pyramid levels are independent: run them on rayon's threads, in
        // order, so the result does not depend on scheduling.
        use rayon::prelude::*;
        let level = |&scale: &f32| -> Result<Vec<Cand>> {
            let (hs, ws) = ((h * scale).ceil() as u32, (w * scale).ceil() as u32);
            if hs < 12 || ws < 12 {
                return Ok(vec![]);
            }
            let resized = crate::preprocess::resize(img, None, ws, hs)?;
            let fl = self.flavour;
            let out = self.run(&self.pnet, &[resized])?;
            let (prob, reg) = (&out[0], &out[1]);
            let &[_, _, d2, d3] = prob.shape() else {
                return Err(Error::Usage("PNet output is not 4-D".into()));
            };
            let (pw, ph) = if fl.transposed { (d2, d3) } else { (d3, d2) };
            // Offset of (channel k, x, y) in the output blob.
            let at = |k: usize, x: usize, y: usize| {
                if fl.transposed {
                    (k * pw + x) * ph + y
                } else {
                    (k * ph + y) * pw + x
                }
            };
            let (p, r) = (prob.as_f32()?, reg.as_f32()?);
            let mut boxes = vec![];
            for x in 0..pw {
                for y in 0..ph {
                    let s = p[at(1, x, y)];
                    if s >= self.thresholds[0] {
                        let q = |v: usize| v as f32;
                        let b = [
                            ((2.0 * q(x) + 1.0) / scale).trunc(),
                            ((2.0 * q(y) + 1.0) / scale).trunc(),
                            ((2.0 * q(x) + 12.0) / scale).trunc(),
                            ((2.0 * q(y) + 12.0) / scale).trunc(),
                        ];
                        let reg = [0, 1, 2, 3].map(|k| r[at(k, x, y)]);
                        boxes.push(Cand { b, score: s, reg });
                    }
                }
            }
            Ok(nms(boxes, 0.5, false))
        };
        let levels = scales.par_iter().map(level).collect::<Result<Vec<_>>>()?;
        let total: Vec<Cand> = levels.into_iter().flatten().collect();
        let total = nms(total, 0.7, false);
        let mut boxes: Vec<Cand> = total
            .iter()
            .map(|c| {
                let (rw, rh) = (c.b[2] - c.b[0], c.b[3] - c.b[1]);
                let b = [
                    c.b[0] + c.reg[0] * rw,
                    c.b[1] + c.reg[1] * rh,
                    c.b[2] + c.reg[2] * rw,
                    c.b[3] + c.reg[3] * rh,
                ];
                Cand {
                    b: rerec(b).map(f32::trunc),
                    ..*c
                }
            })
            .collect();
        // RNet
        if boxes.is_empty() {
            return Ok(vec![]);
        }
        between()?;
        let crops = boxes
            .iter()
            .map(|c| crop(img, c.b, 24))
            .collect::<Result<Vec<_>>>()?;
        let out = self.run_chunked(&self.rnet, &crops, &self.flavour.rnet, between)?;
        let (p, r) = (&out[0], &out[1]);
        let mut kept = vec![];
        for (i, c) in boxes.iter().enumerate() {
            let s = p[i * 2 + 1];
            if s > self.thresholds[1] {
                kept.push(Cand {
                    b: c.b,
                    score: s,
                    reg: [0, 1, 2, 3].map(|k| r[i * 4 + k]),
                });
            }
        }
        boxes = nms(kept, 0.7, false)
            .into_iter()
            .map(|c| Cand {
                b: rerec(bbreg(c.b, c.reg)),
                ..c
            })
            .collect();
        if boxes.is_empty() {
            return Ok(vec![]);
        }
        // ONet
        let boxes_fixed: Vec<[f32; 4]> = boxes.iter().map(|c| c.b.map(f32::trunc)).collect();
        let crops = boxes_fixed
            .iter()
            .map(|b| crop(img, *b, 48))
            .collect::<Result<Vec<_>>>()?;
        let out = self.run_chunked(&self.onet, &crops, &self.flavour.onet, between)?;
        let (p, r, l) = (&out[0], &out[1], &out[2]);
        let mut faces: Vec<(Cand, [[f32; 2]; 5])> = vec![];
        for (i, b) in boxes_fixed.iter().enumerate() {
            let s = p[i * 2 + 1];
            if s <= self.thresholds[2] {
                continue;
            }
            let (bw, bh) = (b[2] - b[0] + 1.0, b[3] - b[1] + 1.0);
            let lm = [0, 1, 2, 3, 4].map(|k| {
                [
                    bw * l[i * 10 + k] + b[0] - 1.0,
                    bh * l[i * 10 + 5 + k] + b[1] - 1.0,
                ]
            });
            let c = Cand {
                b: *b,
                score: s,
                reg: [0, 1, 2, 3].map(|k| r[i * 4 + k]),
            };
            faces.push((
                Cand {
                    b: bbreg(c.b, c.reg),
                    ..c
                },
                lm,
            ));
        }
        let picked = nms_idx(
            &faces.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
            0.7,
            true,
        );
        Ok(picked
            .into_iter()
            .map(|i| {
                let (c, lm) = faces[i];
                Face {
                    bbox: c.b,
                    score: c.score,
                    landmarks: lm,
                }
            })
            .collect())
    }

    /// Run RNet or ONet on the crops `STAGE_BATCH` at a time (a busy photo
    /// has hundreds of PNet candidates; all at once held ~100 MB of
    /// activations), each output's values concatenated in crop order.
    /// Samples are independent, so the values equal one big batch's.
    fn run_chunked(
        &self,
        net: &FastCaffe,
        crops: &[RgbImage],
        outs: &[&str],
        between: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Vec<Vec<f32>>> {
        let mut got: Vec<Vec<f32>> = vec![vec![]; outs.len()];
        for (i, chunk) in crops.chunks(STAGE_BATCH).enumerate() {
            if i > 0 {
                between()?;
            }
            let out = self.run(net, chunk)?;
            for (g, t) in got.iter_mut().zip(&out) {
                g.extend_from_slice(&t.as_f32()?);
            }
        }
        Ok(got)
    }
}

/// Crops per RNet/ONet call.
const STAGE_BATCH: usize = 16;

impl Mtcnn {
    /// One net on same-sized images: its outputs (the flavour's names, as
    /// compiled) in Caffe's layout.
    fn run(&self, net: &FastCaffe, imgs: &[RgbImage]) -> Result<Vec<Tensor>> {
        let transposed = self.flavour.transposed;
        if !self.reference {
            let (x, dims) = blob_nhwc(imgs, transposed)?;
            return net.run_nhwc(x, dims);
        }
        let m = net.model();
        let name = m
            .inputs
            .first()
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| "data".into());
        let outs = net.outputs();
        let blobs = m.forward_outputs(&HashMap::from([(name, blob(imgs, transposed)?)]), &outs)?;
        outs.iter()
            .map(|o| {
                blobs
                    .get(*o)
                    .cloned()
                    .ok_or_else(|| Error::Usage(format!("MTCNN net has no output '{o}'")))
            })
            .collect()
    }
}

/// Images (same size) as an NHWC batch for the fast executor, pixels
/// scaled (x - 127.5) / 128: the pixels' own order, or each image
/// transposed (W, H) when `transposed`. Returns the data and N, H, W, C as
/// the net sees them.
fn blob_nhwc(imgs: &[RgbImage], transposed: bool) -> Result<(Vec<f32>, [usize; 4])> {
    let first = imgs
        .first()
        .ok_or_else(|| Error::Usage("no image to run".into()))?;
    let (w, h) = (first.width() as usize, first.height() as usize);
    if imgs.iter().any(|i| i.dimensions() != first.dimensions()) {
        return Err(Error::Usage("images of one batch differ in size".into()));
    }
    let scale = |p: u8| (p as f32 - 127.5) * 0.0078125;
    let mut v = Vec::with_capacity(imgs.len() * w * h * 3);
    for img in imgs {
        if transposed {
            let raw = img.as_raw();
            for x in 0..w {
                for y in 0..h {
                    v.extend(raw[(y * w + x) * 3..][..3].iter().map(|&p| scale(p)));
                }
            }
        } else {
            v.extend(img.as_raw().iter().map(|&p| scale(p)));
        }
    }
    let dims = if transposed {
        [imgs.len(), w, h, 3]
    } else {
        [imgs.len(), h, w, 3]
    };
    Ok((v, dims))
}

/// Images (same size) as an N x 3 x W x H blob when `transposed`, else
/// N x 3 x H x W; pixels scaled (x - 127.5) / 128.
fn blob(imgs: &[RgbImage], transposed: bool) -> Result<Tensor> {
    let (w, h) = (imgs[0].width() as usize, imgs[0].height() as usize);
    let mut v = vec![0.0f32; imgs.len() * 3 * w * h];
    for (n, img) in imgs.iter().enumerate() {
        for (x, y, p) in img.enumerate_pixels() {
            let (x, y) = (x as usize, y as usize);
            for c in 0..3 {
                let i = if transposed {
                    ((n * 3 + c) * w + x) * h + y
                } else {
                    ((n * 3 + c) * h + y) * w + x
                };
                v[i] = (p.0[c] as f32 - 127.5) * 0.0078125;
            }
        }
    }
    let shape = if transposed {
        vec![imgs.len(), 3, w, h]
    } else {
        vec![imgs.len(), 3, h, w]
    };
    Tensor::f32(shape, v)
}

/// The box (1-based inclusive pixel coordinates as FaceNet's `pad`), zero
/// outside the image, resized to size x size.
fn crop(img: &RgbImage, b: [f32; 4], size: u32) -> Result<RgbImage> {
    let (x1, y1, x2, y2) = (b[0] as i64, b[1] as i64, b[2] as i64, b[3] as i64);
    let (tw, th) = ((x2 - x1 + 1).max(1), (y2 - y1 + 1).max(1));
    let (sx, sy) = (x1 - 1, y1 - 1);
    let (iw, ih) = (img.width() as i64, img.height() as i64);
    if sx >= 0 && sy >= 0 && sx + tw <= iw && sy + th <= ih {
        let window = [sx as u32, sy as u32, tw as u32, th as u32];
        return crate::preprocess::resize(img, Some(window), size, size);
    }
    // Partly outside: copy the part inside into a zeroed image, row by row.
    let mut tmp = RgbImage::new(tw as u32, th as u32);
    let (x0, x1c) = (sx.max(0), (sx + tw).min(iw));
    if x0 < x1c {
        let (src, dst) = (img.as_raw(), &mut *tmp);
        for ty in 0..th {
            let y = sy + ty;
            if y < 0 || y >= ih {
                continue;
            }
            let len = ((x1c - x0) * 3) as usize;
            let from = ((y * iw + x0) * 3) as usize;
            let to = ((ty * tw + (x0 - sx)) * 3) as usize;
            dst[to..to + len].copy_from_slice(&src[from..from + len]);
        }
    }
    crate::preprocess::resize(&tmp, None, size, size)
}

fn bbreg(b: [f32; 4], r: [f32; 4]) -> [f32; 4] {
    let (w, h) = (b[2] - b[0] + 1.0, b[3] - b[1] + 1.0);
    [
        b[0] + r[0] * w,
        b[1] + r[1] * h,
        b[2] + r[2] * w,
        b[3] + r[3] * h,
    ]
}

/// Square the box around its centre.
fn rerec(b: [f32; 4]) -> [f32; 4] {
    let (w, h) = (b[2] - b[0], b[3] - b[1]);
    let l = w.max(h);
    let (x1, y1) = (b[0] + w * 0.5 - l * 0.5, b[1] + h * 0.5 - l * 0.5);
    [x1, y1, x1 + l, y1 + l]
}

fn nms(c: Vec<Cand>, t: f32, min: bool) -> Vec<Cand> {
    nms_idx(&c, t, min).into_iter().map(|i| c[i]).collect()
}

/// Greedy NMS by score; overlap by union or by the smaller box ("Min").
fn nms_idx(c: &[Cand], t: f32, min: bool) -> Vec<usize> {
    let area = |b: &[f32; 4]| (b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0);
    let mut order: Vec<usize> = (0..c.len()).collect();
    order.sort_by(|&a, &b| c[a].score.total_cmp(&c[b].score));
    let mut pick = vec![];
    while let Some(i) = order.pop() {
        pick.push(i);
        order.retain(|&j| {
            let (a, b) = (&c[i].b, &c[j].b);
            let w = (a[2].min(b[2]) - a[0].max(b[0]) + 1.0).max(0.0);
            let h = (a[3].min(b[3]) - a[1].max(b[1]) + 1.0).max(0.0);
            let inter = w * h;
            let o = if min {
                inter / area(a).min(area(b))
            } else {
                inter / (area(a) + area(b) - inter)
            };
            o <= t
        });
    }
    pick
}

/// FaceNet's alignment: the box grown by `margin` pixels (half each side),
/// clipped to the image, as a crop for `preprocess::face_input`.
pub fn face_crop(img: &RgbImage, f: &Face, margin: f32) -> [u32; 4] {
    let (w, h) = (img.width() as f32, img.height() as f32);
    let x1 = (f.bbox[0] - margin / 2.0).max(0.0);
    let y1 = (f.bbox[1] - margin / 2.0).max(0.0);
    let x2 = (f.bbox[2] + margin / 2.0).min(w);
    let y2 = (f.bbox[3] + margin / 2.0).min(h);
    [
        x1 as u32,
        y1 as u32,
        (x2 - x1).max(1.0) as u32,
        (y2 - y1).max(1.0) as u32,
    ]
}
