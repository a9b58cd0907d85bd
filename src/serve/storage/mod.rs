//! The storage boundary of `faceall serve`: the store of record (faces,
//! labels, photos) and nearest-neighbour search behind one trait, so the
//! HTTP handlers never touch maps, files or index internals.
//!
//! Two backends implement it:
//! - [`embedded`] (the default, `--data DIR`): SQLite in WAL mode as the
//!   store of record plus a persisted usearch HNSW index beside it, for one
//!   machine; a restart loads the saved index and replays what the store has
//!   that the index file does not.
//! - [`postgres`] (`--database-url`): PostgreSQL with pgvector's HNSW
//!   index; the servers hold no state, so several share one database.
//!
//! Embeddings are L2-normalised before they reach a backend (the handlers
//! do it), and distances are Euclidean between normalised vectors (0 to 2).

pub mod ann;
pub mod collections;
pub mod embedded;
mod legacy;
pub mod postgres;

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

/// Why a storage call failed, by what the caller does about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached now (503; retry later).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The disk is full: nothing of the request was written (507).
    #[error("storage full: {0}")]
    Full(String),
    /// Another process holds the store (a second server on one `--data`).
    #[error("{0}")]
    Busy(String),
    /// What the request would create exists already (409).
    #[error("{0}")]
    Exists(String),
    /// The request does not fit the store (wrong dimension...): 400.
    #[error("{0}")]
    Invalid(String),
    /// Anything else (500; the details go to the log only).
    #[error("{0}")]
    Internal(String),
}

pub type StoreResult<T> = std::result::Result<T, StoreError>;

/// Where a detected face is on its photo.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Detection {
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    pub landmarks: [[f32; 2]; 5],
    pub score: f32,
}

impl Detection {
    /// 15 floats: box, landmarks, score (the stored form).
    pub fn to_floats(&self) -> [f32; 15] {
        let mut v = [0f32; 15];
        v[..4].copy_from_slice(&self.bbox);
        for (i, l) in self.landmarks.iter().enumerate() {
            v[4 + 2 * i] = l[0];
            v[5 + 2 * i] = l[1];
        }
        v[14] = self.score;
        v
    }

    pub fn from_floats(v: &[f32]) -> Option<Self> {
        if v.len() != 15 {
            return None;
        }
        let mut d = Detection {
            bbox: [v[0], v[1], v[2], v[3]],
            landmarks: [[0.0; 2]; 5],
            score: v[14],
        };
        for (i, l) in d.landmarks.iter_mut().enumerate() {
            *l = [v[4 + 2 * i], v[5 + 2 * i]];
        }
        Some(d)
    }
}

/// A face to store: its label, normalised embedding and, when it came from
/// a photo, where on it.
#[derive(Debug, Clone)]
pub struct NewFace {
    pub label: String,
    pub embedding: Vec<f32>,
    pub detection: Option<Detection>,
}

/// A photo to store with the faces found on it.
pub struct PhotoFaces {
    pub bytes: Vec<u8>,
    /// "jpg" or "png".
    pub ext: &'static str,
    /// SHA-256 of the photo as uploaded (before metadata is stripped).
    pub sha256: [u8; 32],
    pub faces: Vec<NewFace>,
}

/// A stored face.
#[derive(Debug, Clone)]
pub struct FaceRecord {
    pub id: u64,
    pub label: String,
    pub embedding: Vec<f32>,
    pub detection: Option<Detection>,
    pub image_id: Option<u64>,
    /// Seconds since the Unix epoch.
    pub created: u64,
}

/// A registered photo and the faces stored from it.
pub struct StoredPhoto {
    pub image_id: u64,
    pub faces: Vec<FaceRecord>,
}

/// One search hit, nearest first.
#[derive(Debug, Clone)]
pub struct Match {
    pub id: u64,
    pub label: String,
    /// Euclidean distance between the normalised embeddings.
    pub distance: f32,
    pub bbox: Option<[f32; 4]>,
    pub image_id: Option<u64>,
}

/// Counts for `/api/v1/stats`.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub faces: u64,
    pub labels: u64,
    pub images: u64,
    /// Faces in the nearest-neighbour index (equal to `faces` when healthy).
    pub indexed: u64,
    /// Of those, faces searched exactly beside the graph until the
    /// background inserts them (after a restart, or during a save).
    pub waiting: u64,
}

/// A label with its number of faces (`GET /api/v1/subjects`).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Subject {
    pub label: String,
    pub faces: u64,
}

/// Most faces one `faces_of` call returns (a verification against a label
/// compares with each of them).
pub const MAX_FACES_OF_LABEL: u64 = 10_000;

/// Most faces in one `add_embeddings` call (`POST /api/v1/faces/embeddings`).
pub const MAX_EMBEDDINGS_PER_CALL: usize = 10_000;
/// Most queries in one `search` call (`POST /api/v1/search/embeddings`).
pub const MAX_QUERIES_PER_CALL: usize = 1_000;

/// The store of record and its nearest-neighbour search. Every method is a
/// whole operation: a registration is durable and searchable when it
/// returns Ok, and nothing of it is kept when it returns Err.
#[async_trait]
pub trait Storage: Send + Sync {
    /// "embedded" or "postgres".
    fn backend(&self) -> &'static str;
    /// Floats per embedding.
    fn dim(&self) -> usize;
    /// Store photos and their faces in one transaction.
    async fn register(&self, photos: Vec<PhotoFaces>) -> StoreResult<Vec<StoredPhoto>>;
    /// Store faces known only by their embedding; their ids in order.
    async fn add_embeddings(&self, faces: Vec<NewFace>) -> StoreResult<Vec<u64>>;
    /// The k nearest stored faces of each query, nearest first.
    async fn search(&self, queries: Vec<Vec<f32>>, k: usize) -> StoreResult<Vec<Vec<Match>>>;
    async fn face(&self, id: u64) -> StoreResult<Option<FaceRecord>>;
    /// The total and one page of faces in id order.
    async fn list(&self, offset: u64, limit: u64) -> StoreResult<(u64, Vec<FaceRecord>)>;
    /// Delete a face (and its photo once no face refers to it); false when
    /// there was no such face.
    async fn delete(&self, id: u64) -> StoreResult<bool>;
    /// The faces registered under `label`, in id order, at most `limit`.
    async fn faces_of(&self, label: &str, limit: u64) -> StoreResult<Vec<FaceRecord>>;
    /// The photo with this SHA-256 (as uploaded) registered under
    /// `label`, with its faces of that label; None when there is none.
    async fn photo_by_hash(
        &self,
        sha256: [u8; 32],
        label: &str,
    ) -> StoreResult<Option<StoredPhoto>>;
    /// The number of labels and one page of them in label order, each with
    /// its face count.
    async fn subjects(&self, offset: u64, limit: u64) -> StoreResult<(u64, Vec<Subject>)>;
    /// Give every face of `from` the label `to` (merging into `to` when it
    /// exists already); how many faces changed.
    async fn rename_subject(&self, from: &str, to: &str) -> StoreResult<u64>;
    /// Delete every face of `label` (and the photos no face refers to any
    /// more) in one transaction; how many faces.
    async fn delete_subject(&self, label: &str) -> StoreResult<u64>;
    /// A stored photo's bytes and extension.
    async fn image(&self, id: u64) -> StoreResult<Option<(Vec<u8>, String)>>;
    async fn stats(&self) -> StoreResult<Stats>;
    /// Persist what a clean shutdown should (the embedded index).
    async fn close(&self) -> StoreResult<()>;
}

/// Which backend `faceall serve` uses.
pub enum Backend {
    Embedded(embedded::Options),
    Postgres { url: String },
}

/// Open the configured backend (creating or migrating its schema).
pub async fn open(backend: Backend, dim: usize) -> StoreResult<Arc<dyn Storage>> {
    Ok(match backend {
        Backend::Embedded(o) => Arc::new(embedded::Embedded::open(o, dim).await?),
        Backend::Postgres { url } => Arc::new(postgres::Postgres::open(&url, dim, None).await?),
    })
}

/// Seconds since the Unix epoch.
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Little-endian f32 bytes of an embedding (the stored form).
pub(crate) fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The floats of little-endian f32 bytes; None when the length is not a
/// multiple of 4.
pub(crate) fn f32_from_bytes(b: &[u8]) -> Option<Vec<f32>> {
    if !b.len().is_multiple_of(4) {
        return None;
    }
    Some(
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

/// Euclidean distance.
/// An embedding of the server's model's length, or a client error.
pub(crate) fn check_dim(v: &[f32], dim: usize) -> StoreResult<()> {
    if v.len() != dim {
        return Err(StoreError::Invalid(format!(
            "an embedding has {} numbers; this server's model gives {dim}",
            v.len()
        )));
    }
    Ok(())
}

/// Euclidean distance (what search results report).
pub(crate) fn euclidean(a: &[f32], b: &[f32]) -> f32 {
    l2sq(a, b).sqrt()
}

/// Squared Euclidean distance in 16 lanes (vectorised by the compiler;
/// a plain sum is a serial dependency chain it may not reorder).
pub(crate) fn l2sq(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| (x - y) * (x - y))
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            let d = x[i] - y[i];
            acc[i] += d * d;
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detections_and_embeddings_round_trip() {
        let d = Detection {
            bbox: [1.0, 2.0, 3.0, 4.0],
            landmarks: [
                [5.0, 6.0],
                [7.0, 8.0],
                [9.0, 10.0],
                [11.0, 12.0],
                [13.0, 14.0],
            ],
            score: 0.5,
        };
        assert_eq!(Detection::from_floats(&d.to_floats()), Some(d));
        assert_eq!(Detection::from_floats(&[0.0; 3]), None);
        let v = vec![0.25, -1.5, 3.0];
        assert_eq!(f32_from_bytes(&f32_bytes(&v)), Some(v));
        assert_eq!(f32_from_bytes(&[1, 2, 3]), None);
    }
}
