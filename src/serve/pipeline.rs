//! Detect + embed: MTCNN finds the faces, each is cropped with a margin,
//! resized to the model's input and prewhitened; faces are embedded in
//! batches of up to EMBED_BATCH, which gather the faces of every photo in
//! flight (see [`Batcher`]); embeddings come out L2-normalised.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

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
    batcher: Batcher,
    /// Photos in `faces` now, at most DETECT_CONCURRENCY.
    busy: (Mutex<usize>, Condvar),
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
            batcher: Batcher::default(),
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

    /// The normalised embedding of each face of `img`, in chunks of
    /// EMBED_BATCH, calling `between` before each chunk.
    pub fn embed_stepwise(
        &self,
        img: &RgbImage,
        faces: Vec<Face>,
        between: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Vec<Found>> {
        let mut emb = Vec::with_capacity(faces.len());
        for chunk in faces.chunks(EMBED_BATCH) {
            between()?;
            let inputs = chunk
                .iter()
                .map(|f| self.face_input(img, f))
                .collect::<Result<Vec<_>>>()?;
            emb.extend(self.embed_inputs(inputs)?);
        }
        Ok(faces
            .into_iter()
            .zip(emb)
            .map(|(face, embedding)| Found { face, embedding })
            .collect())
    }

    /// The model's input for one face of `img`: cropped with MARGIN,
    /// resized, prewhitened (size x size x 3 floats).
    pub fn face_input(&self, img: &RgbImage, face: &Face) -> Result<Vec<f32>> {
        let crop = face_crop(img, face, MARGIN);
        crate::preprocess::face_pixels(img, crop, self.size)
    }

    /// The normalised embeddings of faces given as model inputs (from
    /// [`Pipeline::face_input`]), in their order. The faces join the queue
    /// of every photo in flight and are embedded with them, EMBED_BATCH
    /// per engine call; give at most EMBED_BATCH at a time to bound the
    /// memory they hold while they wait.
    pub fn embed_inputs(&self, inputs: Vec<Vec<f32>>) -> Result<Vec<Vec<f32>>> {
        let per = (self.size * self.size * 3) as usize;
        if let Some(bad) = inputs.iter().find(|x| x.len() != per) {
            return Err(Error::Usage(format!(
                "a face input of {} floats (the model takes {per})",
                bad.len()
            )));
        }
        self.batcher.embed(inputs, &|batch, n| {
            let out = self.engine.run(&[batch], n)?;
            let v = out
                .first()
                .ok_or_else(|| Error::Usage("the model gave no output".into()))?
                .as_f32()?;
            if v.len() != n * self.dim {
                return Err(Error::Usage(format!(
                    "the model gave {} floats for {n} faces of {}",
                    v.len(),
                    self.dim
                )));
            }
            Ok(v.chunks(self.dim).map(l2_normalize).collect())
        })
    }

    /// Engine calls for embeddings since the start, and the faces they
    /// embedded (faces per call shows how well concurrent photos batch).
    pub fn embed_counts(&self) -> (u64, u64) {
        (
            self.batcher.calls.load(Ordering::Relaxed),
            self.batcher.faces.load(Ordering::Relaxed),
        )
    }
}

/// Faces waiting for the engine, from every photo in flight. Whoever finds
/// the engine idle runs the next EMBED_BATCH faces of the queue, its own or
/// others', and hands each result to its owner; so the faces of photos
/// that reach embedding at about the same time share engine calls (FaceNet
/// costs less per face in batches), and one call runs at a time (each uses
/// every core, and concurrent calls would each keep their own activation
/// buffers). Faces are taken first come, first served.
#[derive(Default)]
struct Batcher {
    queue: Mutex<Queue>,
    finished: Condvar,
    calls: AtomicU64,
    faces: AtomicU64,
}

#[derive(Default)]
struct Queue {
    /// (ticket, model input), oldest first.
    waiting: VecDeque<(u64, Vec<f32>)>,
    /// An engine call is under way.
    running: bool,
    /// Embeddings (or the call's error) not yet collected by their owners.
    done: HashMap<u64, std::result::Result<Vec<f32>, String>>,
    next: u64,
}

/// The engine call of a batch: `(inputs back to back, faces)` -> one
/// embedding per face.
type RunBatch<'a> = dyn Fn(&[f32], usize) -> Result<Vec<Vec<f32>>> + 'a;

impl Batcher {
    fn embed(&self, inputs: Vec<Vec<f32>>, run: &RunBatch) -> Result<Vec<Vec<f32>>> {
        let poisoned = |_| Error::Usage("embedding queue poisoned".into());
        let mut q = self.queue.lock().map_err(poisoned)?;
        let first = q.next;
        let count = inputs.len() as u64;
        q.next += count;
        q.waiting.extend((first..first + count).zip(inputs));
        loop {
            if (first..first + count).all(|t| q.done.contains_key(&t)) {
                return (first..first + count)
                    .map(|t| match q.done.remove(&t) {
                        Some(Ok(e)) => Ok(e),
                        Some(Err(m)) => Err(Error::Usage(m)),
                        None => Err(Error::Usage("an embedding went missing".into())),
                    })
                    .collect();
            }
            if q.running {
                q = self.finished.wait(q).map_err(poisoned)?;
                continue;
            }
            let take = q.waiting.len().min(EMBED_BATCH);
            let batch: Vec<(u64, Vec<f32>)> = q.waiting.drain(..take).collect();
            q.running = true;
            drop(q);
            let mut call = Call {
                batcher: self,
                tickets: batch.iter().map(|(t, _)| *t).collect(),
                out: None,
            };
            let mut x = Vec::with_capacity(batch.iter().map(|(_, v)| v.len()).sum());
            for (_, v) in batch {
                x.extend_from_slice(&v);
            }
            call.out = Some(run(&x, call.tickets.len()));
            self.calls.fetch_add(1, Ordering::Relaxed);
            self.faces
                .fetch_add(call.tickets.len() as u64, Ordering::Relaxed);
            drop(call);
            q = self.queue.lock().map_err(poisoned)?;
        }
    }
}

/// One engine call's tickets; on drop (also when the call panicked) its
/// results, or its error, go to their owners and the engine is free again.
struct Call<'a> {
    batcher: &'a Batcher,
    tickets: Vec<u64>,
    out: Option<Result<Vec<Vec<f32>>>>,
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        let mut q = self.batcher.queue.lock().unwrap_or_else(|e| e.into_inner());
        match self.out.take() {
            Some(Ok(embs)) if embs.len() == self.tickets.len() => {
                for (t, e) in self.tickets.iter().zip(embs) {
                    q.done.insert(*t, Ok(e));
                }
            }
            other => {
                let msg = match other {
                    Some(Err(e)) => format!("embedding failed: {e}"),
                    Some(Ok(_)) => "embedding gave the wrong number of faces".to_string(),
                    None => "embedding failed".to_string(),
                };
                for t in &self.tickets {
                    q.done.insert(*t, Err(msg.clone()));
                }
            }
        }
        q.running = false;
        drop(q);
        self.batcher.finished.notify_all();
    }
}

/// One of DETECT_CONCURRENCY places in detection, given back on drop (also
/// when the work panics, so a failed photo cannot shrink the pool).
struct Slot<'a>(&'a (Mutex<usize>, Condvar));

impl<'a> Slot<'a> {
    fn take(busy: &'a (Mutex<usize>, Condvar)) -> Result<Self> {
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
