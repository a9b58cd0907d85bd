//! The JSON types the routes answer with (and the parameter and form
//! types only the OpenAPI document needs). The handlers serialise these
//! very structs, and `utoipa` derives the document's schemas from them, so
//! the document cannot drift from what is sent.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::detect::mtcnn::Face;
use crate::serve::storage::{FaceRecord, Match};

/// Every error: one message (503 comes with Retry-After when the database
/// is unavailable; 507 when the server's disk is full, nothing stored).
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

/// `?collection=`: the collection a gallery route works on. The auth
/// extractors read it themselves (they refuse a repeated one); this type
/// describes it in the document.
#[derive(Deserialize, IntoParams)]
#[allow(dead_code)]
#[into_params(parameter_in = Query)]
pub struct CollectionParam {
    /// The collection (default `default`); a collection's key works in its
    /// own only (403 elsewhere), the admin token in all; 404 for one that
    /// does not exist.
    #[param(pattern = "^[a-z0-9][a-z0-9_-]{0,47}$", default = "default")]
    pub collection: Option<String>,
}

/// `?offset=&limit=` of a listing.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// Items skipped (default 0).
    pub offset: Option<u64>,
    /// Items per page (default 50, at most 1,000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
}

impl Page {
    /// Offset (0) and limit (50, at most 1,000).
    pub fn resolve(&self) -> (u64, u64) {
        (
            self.offset.unwrap_or(0),
            self.limit.unwrap_or(50).clamp(1, 1000),
        )
    }
}

/// A face found in a photo.
#[derive(Serialize, ToSchema)]
pub struct Detection {
    /// x1, y1, x2, y2 in pixels.
    #[serde(rename = "box")]
    #[schema(min_items = 4, max_items = 4)]
    pub bbox: [f32; 4],
    /// Left eye, right eye, nose, mouth left, mouth right (x, y).
    #[schema(min_items = 5, max_items = 5)]
    pub landmarks: [[f32; 2]; 5],
    /// The detector's confidence (0 to 1).
    pub score: f32,
}

impl From<&Face> for Detection {
    fn from(f: &Face) -> Self {
        Detection {
            bbox: f.bbox,
            landmarks: f.landmarks,
            score: f.score,
        }
    }
}

/// A registered face. `box`, `landmarks`, `score`, `image_id` and
/// `image_url` are null for a face registered by its embedding.
#[derive(Serialize, ToSchema)]
pub struct FaceOut {
    pub id: u64,
    pub label: String,
    #[serde(rename = "box")]
    #[schema(min_items = 4, max_items = 4)]
    pub bbox: Option<[f32; 4]>,
    #[schema(min_items = 5, max_items = 5)]
    pub landmarks: Option<[[f32; 2]; 5]>,
    pub score: Option<f32>,
    /// The stored photo the face was found in.
    pub image_id: Option<u64>,
    pub image_url: Option<String>,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// Only in `GET /api/v1/faces/{id}`: the stored (L2-normalised)
    /// embedding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Vec<f32>>,
}

impl FaceOut {
    pub fn new(r: &FaceRecord, collection: &str) -> Self {
        FaceOut {
            id: r.id,
            label: r.label.clone(),
            bbox: r.detection.map(|d| d.bbox),
            landmarks: r.detection.map(|d| d.landmarks),
            score: r.detection.map(|d| d.score),
            image_id: r.image_id,
            image_url: r.image_id.map(|i| image_url(i, collection)),
            created: r.created,
            embedding: None,
        }
    }
}

/// Where a stored photo is served, in its collection.
pub fn image_url(id: u64, collection: &str) -> String {
    if collection == crate::serve::storage::collections::DEFAULT {
        format!("/api/v1/images/{id}")
    } else {
        format!("/api/v1/images/{id}?collection={collection}")
    }
}

/// One registered face near a query.
#[derive(Serialize, ToSchema)]
pub struct MatchOut {
    pub id: u64,
    pub label: String,
    /// Euclidean distance between the L2-normalised embeddings (0 to 2).
    pub distance: f32,
    /// Null for a face registered by its embedding.
    #[serde(rename = "box")]
    #[schema(min_items = 4, max_items = 4)]
    pub bbox: Option<[f32; 4]>,
    pub image_url: Option<String>,
}

/// The matches within `threshold`, nearest first.
pub fn matches(ms: &[Match], threshold: f32, collection: &str) -> Vec<MatchOut> {
    ms.iter()
        .filter(|m| m.distance <= threshold)
        .map(|m| MatchOut {
            id: m.id,
            label: m.label.clone(),
            distance: m.distance,
            bbox: m.bbox,
            image_url: m.image_id.map(|i| image_url(i, collection)),
        })
        .collect()
}

/// An embedding (the model's size: 512 for FaceNet): finite numbers, not
/// all zero. The server L2-normalises every embedding it is given before
/// storing or searching it, so any positive multiple of a vector is the
/// same vector.
#[derive(ToSchema)]
#[schema(value_type = Vec<f32>, min_items = 1)]
pub struct Embedding(#[allow(dead_code)] Vec<f32>);

/// A photo field of a multipart form: the file (JPEG or PNG).
#[derive(ToSchema)]
#[schema(value_type = String, content_media_type = "application/octet-stream")]
pub struct PhotoFile(#[allow(dead_code)] Vec<u8>);

/// A photo field of a JSON body (`F_base64`): standard base64, padding
/// optional, whitespace ignored, a `data:` URL accepted.
#[derive(ToSchema)]
#[schema(value_type = String, content_encoding = "base64")]
pub struct PhotoBase64(#[allow(dead_code)] String);

/// One photo or several, as base64.
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
pub enum PhotosBase64 {
    One(PhotoBase64),
    Many(Vec<PhotoBase64>),
}
