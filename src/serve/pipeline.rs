//! Detect + embed: MTCNN finds the faces, each is cropped with a margin,
//! resized to the model's input, prewhitened, and all faces of a photo run
//! through the fast engine as one batch; embeddings come out L2-normalised.

use std::path::Path;

use image::RgbImage;

use crate::detect::mtcnn::{face_crop, Face, Mtcnn};
use crate::error::{Error, Result};
use crate::runtime::engine::Engine;

/// Pixels added around the detected box before resizing to 160, as FaceNet's
/// compare.py (44; 32 separated the identities of our test photos less).
pub const MARGIN: f32 = 44.0;

/// Photos are detected at most this many pixels on their longer side (the
/// crops for the embedding come from the full photo): MTCNN's pyramid on a
/// 2000 x 1428 photo took 480 MB and a second. At 640 the smallest face
/// found is 20 / 640 of the longer side (62 px in a 2000 px photo).
pub const DETECT_MAX_SIDE: u32 = 640;

/// Faces per engine call: bounds the activation buffers (2.8 MB a face for
/// FaceNet) however many faces a photo has.
pub const EMBED_BATCH: usize = 8;

/// Photos in detection at once: each holds its own detector buffers (tens
/// of MB for a big photo) and two keep both cores busy.
pub const DETECT_CONCURRENCY: usize = 2;

pub struct Pipeline {
    engine: Engine,
    engine_turn: std::sync::Mutex<()>,
    /// Photos in `faces` now, at most DETECT_CONCURRENCY.
    busy: (std::sync::Mutex<usize>, std::sync::Condvar),
    mtcnn: Mtcnn,
    size: u32,
    /// Floats per embedding.
    pub dim: usize,
}

/// One face found in a photo, with its embedding.
#[derive(Debug, Clone)]
pub struct Found {
    pub face: Face,
    pub embedding: Vec<f32>,
}

impl Pipeline {
    /// `model`: a bundle (NAME.graph.json or a directory with one);
    /// `mtcnn`: a directory with det1/det2/det3 Caffe files.
    pub fn load(model: &Path, mtcnn: &Path) -> Result<Self> {
        let graph = crate::formats::bundle::read::load_owned(model)?;
        let engine = Engine::compile(graph)?;
        let (size, dim) = match (engine.inputs(), engine.outputs()) {
            ([i], [o]) if i.shape.len() == 4 && i.shape[1] == i.shape[2] && i.shape[3] == 3 => {
                (i.shape[1] as u32, o.shape.iter().skip(1).product::<usize>())
            }
            _ => {
                return Err(Error::Usage(format!(
                    "{}: want one NHWC RGB square input and one embedding output",
                    model.display()
                )))
            }
        };
        let mtcnn = Mtcnn::load(mtcnn)?;
        Ok(Pipeline {
            engine,
            engine_turn: std::sync::Mutex::new(()),
            busy: Default::default(),
            mtcnn,
            size,
            dim,
        })
    }

    /// Every face in the photo, best-scored first. At most
    /// DETECT_CONCURRENCY photos run at once; other callers wait.
    pub fn faces(&self, img: &RgbImage) -> Result<Vec<Found>> {
        self.faces_at_most(img, usize::MAX).map(|(f, _)| f)
    }

    /// The `max` best-scored faces, embedded, and how many more were
    /// detected (not embedded): bounds the work one photo can ask for.
    pub fn faces_at_most(&self, img: &RgbImage, max: usize) -> Result<(Vec<Found>, usize)> {
        let _slot = Slot::take(&self.busy)?;
        self.faces_stepwise(img, max, &mut || Ok(()))
    }

    /// [`Pipeline::faces_at_most`] without the DETECT_CONCURRENCY places
    /// (the caller bounds concurrency), calling `between` between steps of
    /// detection and before each embedding batch (see `serve::fair`).
    pub fn faces_stepwise(
        &self,
        img: &RgbImage,
        max: usize,
        between: &mut dyn FnMut() -> Result<()>,
    ) -> Result<(Vec<Found>, usize)> {
        let mut faces = self.detect_stepwise(img, between)?;
        let dropped = faces.len().saturating_sub(max);
        faces.truncate(max);
        Ok((self.embed_stepwise(img, faces, between)?, dropped))
    }

    /// Every face MTCNN finds, best-scored first, in the photo's pixels
    /// (photos longer than DETECT_MAX_SIDE are detected scaled down);
    /// `between` as in [`Pipeline::faces_stepwise`].
    pub fn detect_stepwise(
        &self,
        img: &RgbImage,
        between: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Vec<Face>> {
        let long = img.width().max(img.height());
        let mut faces = if long > DETECT_MAX_SIDE {
            let s = DETECT_MAX_SIDE as f32 / long as f32;
            let (w, h) = (
                ((img.width() as f32 * s).round() as u32).max(1),
                ((img.height() as f32 * s).round() as u32).max(1),
            );
            let small = crate::preprocess::resize(img, None, w, h)?;
            let (sx, sy) = (
                img.width() as f32 / w as f32,
                img.height() as f32 / h as f32,
            );
            let mut faces = self.mtcnn.detect_with(&small, between)?;
            for f in &mut faces {
                f.bbox = [
                    f.bbox[0] * sx,
                    f.bbox[1] * sy,
                    f.bbox[2] * sx,
                    f.bbox[3] * sy,
                ];
                for l in &mut f.landmarks {
                    *l = [l[0] * sx, l[1] * sy];
                }
            }
            faces
        } else {
            self.mtcnn.detect_with(img, between)?
        };
        faces.sort_by(|a, b| b.score.total_cmp(&a.score));
        Ok(faces)
    }

    /// The normalised embedding of each face of `img`, in batches of
    /// EMBED_BATCH, calling `between` before each batch.
    pub fn embed_stepwise(
        &self,
        img: &RgbImage,
        faces: Vec<Face>,
        between: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Vec<Found>> {
        if faces.is_empty() {
            return Ok(vec![]);
        }
        let per = (self.size * self.size * 3) as usize;
        let mut emb = Vec::with_capacity(self.dim * faces.len());
        for chunk in faces.chunks(EMBED_BATCH) {
            between()?;
            let mut batch = Vec::with_capacity(per * chunk.len());
            for f in chunk {
                let crop = face_crop(img, f, MARGIN);
                let t = crate::preprocess::face_input(img, crop, self.size)?;
                batch.extend_from_slice(&t.as_f32()?);
            }
            // One batch at a time: each uses both cores already, and each
            // concurrent run would keep its own activation buffers.
            let _turn = self
                .engine_turn
                .lock()
                .map_err(|_| Error::Usage("engine lock poisoned".into()))?;
            let out = self.engine.run(&[&batch], chunk.len())?;
            emb.extend_from_slice(&out[0].as_f32()?);
        }
        Ok(faces
            .into_iter()
            .zip(emb.chunks(self.dim))
            .map(|(face, e)| Found {
                face,
                embedding: l2_normalize(e),
            })
            .collect())
    }
}

/// One of DETECT_CONCURRENCY places in detection, given back on drop (also
/// when the work panics, so a failed photo cannot shrink the pool).
struct Slot<'a>(&'a (std::sync::Mutex<usize>, std::sync::Condvar));

impl<'a> Slot<'a> {
    fn take(busy: &'a (std::sync::Mutex<usize>, std::sync::Condvar)) -> Result<Self> {
        let poisoned = |_| Error::Usage("pipeline lock poisoned".into());
        let (lock, cv) = busy;
        let mut n = lock.lock().map_err(poisoned)?;
        while *n >= DETECT_CONCURRENCY {
            n = cv.wait(n).map_err(poisoned)?;
        }
        *n += 1;
        Ok(Slot(busy))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let (lock, cv) = self.0;
        let mut n = lock.lock().unwrap_or_else(|e| e.into_inner());
        *n -= 1;
        if *n == 0 {
            release_memory();
        }
        cv.notify_one();
    }
}

/// Hand the detector's freed buffers back to the system once no photo is
/// in flight (see `serve::tune_allocator`).
pub(crate) fn release_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn l2_normalize(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-10);
    v.iter().map(|x| x / n).collect()
}
