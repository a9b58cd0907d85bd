//! Faces: register from photos, URLs or embeddings; list, get, delete;
//! the stored photos.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{client_embedding, json_body};
use crate::serve::auth::{after_upload, ReadIn, WriteIn};
use crate::serve::budget::Budget;
use crate::serve::error::{bad, ApiError, ApiResult};
use crate::serve::fair::Client;
use crate::serve::form::{Fields, PhotoForm};
use crate::serve::storage::collections::Collection;
use crate::serve::storage::{FaceRecord, NewFace, PhotoFaces, MAX_EMBEDDINGS_PER_CALL};
use crate::serve::{
    blocking, check_label, count, decode_photo, photo_dimensions, urls, App, Photo,
};
use crate::serve::{MAX_BODY_BYTES, MAX_IMAGES};

/// Where a stored photo is served, in its collection.
pub fn image_url(id: u64, collection: &str) -> String {
    if collection == crate::serve::storage::collections::DEFAULT {
        format!("/api/v1/images/{id}")
    } else {
        format!("/api/v1/images/{id}?collection={collection}")
    }
}

pub fn face_json(r: &FaceRecord, collection: &str) -> Value {
    json!({
        "id": r.id,
        "label": r.label,
        "box": r.detection.map(|d| d.bbox),
        "landmarks": r.detection.map(|d| d.landmarks),
        "score": r.detection.map(|d| d.score),
        "image_id": r.image_id,
        "image_url": r.image_id.map(|i| image_url(i, collection)),
        "created": r.created,
    })
}

/// One uploaded photo after detection (its pixels already freed).
pub(crate) struct Detected {
    pub name: String,
    pub bytes: Vec<u8>,
    pub ext: &'static str,
    pub faces: Vec<crate::serve::pipeline::Found>,
    /// Faces found beyond --max-faces, not embedded.
    pub dropped: usize,
}

/// Pixels all photos of one request may have together (30 phone photos of
/// 12 Mpixel fit; 30 decompression bombs of 36 Mpixel do not).
pub const MAX_REQUEST_PIXELS: u64 = 500_000_000;

/// Check every photo's header, then decode and detect them one at a time,
/// each only once the memory budget has room for it.
pub(crate) async fn detect_each(
    app: &Arc<App>,
    who: IpAddr,
    photos: Vec<(String, Vec<u8>)>,
) -> Result<Vec<Detected>, ApiError> {
    Ok(
        analyse_each(app, who, photos, |a, img, turn| a.faces(img, turn))
            .await?
            .into_iter()
            .map(|p| Detected {
                name: p.name,
                bytes: p.bytes,
                ext: p.ext,
                faces: p.out.0,
                dropped: p.out.1,
            })
            .collect(),
    )
}

/// One uploaded photo and what `work` made of its pixels.
pub(crate) struct Analysed<T> {
    pub name: String,
    pub bytes: Vec<u8>,
    pub ext: &'static str,
    pub out: T,
}

/// What is done with a decoded photo, passing the turn on between steps.
pub(crate) type PhotoWork<T> =
    fn(&App, &image::RgbImage, &mut crate::serve::fair::Turn) -> Result<T, ApiError>;

/// Every photo's dimensions from its header, and the pixels of all
/// together within MAX_REQUEST_PIXELS.
fn check_headers(photos: &[(String, Vec<u8>)]) -> Result<Vec<(u32, u32)>, ApiError> {
    let dims = photos
        .iter()
        .map(|(n, b)| photo_dimensions(n, b))
        .collect::<Result<Vec<_>, _>>()?;
    let pixels: u64 = dims.iter().map(|(w, h)| *w as u64 * *h as u64).sum();
    if pixels > MAX_REQUEST_PIXELS {
        return Err(bad(format!(
            "the photos of one request may have {} Mpixel together (these have {})",
            MAX_REQUEST_PIXELS / 1_000_000,
            pixels / 1_000_000
        )));
    }
    Ok(dims)
}

/// Check every photo's header (and the pixels of all together), then
/// decode each and run `work` on it one at a time, each only once the
/// memory budget has room for it and the client has a turn.
pub(crate) async fn analyse_each<T: Send + 'static>(
    app: &Arc<App>,
    who: IpAddr,
    photos: Vec<(String, Vec<u8>)>,
    work: PhotoWork<T>,
) -> Result<Vec<Analysed<T>>, ApiError> {
    let dims = check_headers(&photos)?;
    let mut out = vec![];
    for ((name, bytes), (w, h)) in photos.into_iter().zip(dims) {
        // Room in memory first (whoever fits goes), then a turn (round
        // robin between client addresses).
        let room = app.budget.admit(Budget::estimate(w, h)).await?;
        let turn = app.turns.enter(who).await?;
        let a = app.clone();
        out.push(
            blocking(move || {
                let _room = room;
                let mut turn = turn;
                let Photo {
                    name,
                    bytes,
                    ext,
                    img,
                } = decode_photo(name, bytes)?;
                let out = work(&a, &img, &mut turn)?;
                Ok(Analysed {
                    name,
                    bytes,
                    ext,
                    out,
                })
            })
            .await?,
        );
    }
    Ok(out)
}

/// Detect and embed every photo, then store the photos that have faces
/// and their faces in one transaction. A photo registered under this label
/// already (the same bytes) is answered with its stored faces and not
/// processed again, so sending a folder twice, or resuming a bulk import,
/// stores nothing twice.
async fn register_photos(
    app: &Arc<App>,
    coll: &Collection,
    who: IpAddr,
    photos: Vec<(String, Vec<u8>)>,
    label: &str,
) -> ApiResult {
    use sha2::{Digest, Sha256};
    // The limits hold for the request as sent, photos seen before included.
    check_headers(&photos)?;
    let mut results = vec![];
    let mut fresh = vec![];
    let mut hashes = vec![];
    for (name, bytes) in photos {
        let h: [u8; 32] = Sha256::digest(&bytes).into();
        match coll.storage.photo_by_hash(h, label).await? {
            Some(s) => results.push(json!({
                "image": name,
                "image_id": s.image_id,
                "faces": s.faces.iter().map(|f| face_json(f, &coll.name)).collect::<Vec<_>>(),
                "already_registered": true,
                "message": "this photo is registered under this label already; nothing stored",
            })),
            None if hashes.contains(&h) => results.push(json!({
                "image": name,
                "faces": [],
                "already_registered": true,
                "message": "the same photo twice in one request; registered once",
            })),
            None => {
                hashes.push(h);
                fresh.push((name, bytes));
            }
        }
    }
    if fresh.is_empty() {
        return Ok(Json(
            json!({ "collection": coll.name, "registered": 0, "images": results }),
        ));
    }
    let found: Vec<(Detected, Vec<crate::serve::pipeline::Found>, [u8; 32])> =
        detect_each(app, who, fresh)
            .await?
            .into_iter()
            .zip(hashes)
            .map(|(mut d, h)| {
                let f = std::mem::take(&mut d.faces);
                (d, f, h)
            })
            .collect();
    if results.is_empty() && found.iter().all(|(_, f, _)| f.is_empty()) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "no face found in {}: nothing registered",
                found
                    .iter()
                    .map(|(p, _, _)| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let mut to_store = vec![];
    let mut names = vec![];
    for (p, faces, sha256) in found {
        if faces.is_empty() {
            results.push(json!({"image": p.name, "faces": [], "message": "no face found; nothing registered"}));
            continue;
        }
        names.push((p.name, p.dropped));
        to_store.push(PhotoFaces {
            bytes: if app.keep_exif {
                p.bytes
            } else {
                crate::serve::metadata::strip(p.bytes)
            },
            ext: p.ext,
            sha256,
            faces: faces
                .into_iter()
                .map(|f| NewFace {
                    label: label.to_string(),
                    embedding: f.embedding,
                    detection: Some(f.face.into()),
                })
                .collect(),
        });
    }
    let stored = coll.storage.register(to_store).await?;
    let mut registered = 0;
    for ((name, dropped), s) in names.into_iter().zip(stored) {
        registered += s.faces.len();
        let mut v = json!({
            "image": name,
            "image_id": s.image_id,
            "faces": s.faces.iter().map(|f| face_json(f, &coll.name)).collect::<Vec<_>>(),
        });
        if dropped > 0 {
            v["faces_not_registered"] = json!(dropped);
            v["message"] = json!(format!(
                "{dropped} more face(s) found beyond this server's limit of {} per photo",
                app.max_faces
            ));
        }
        results.push(v);
    }
    Ok(Json(
        json!({ "collection": coll.name, "registered": registered, "images": results }),
    ))
}

pub async fn register(
    State(app): State<Arc<App>>,
    auth: Result<WriteIn, ApiError>,
    Client(who): Client,
    req: Request,
) -> ApiResult {
    count(&app);
    let (WriteIn(coll), req) = after_upload(auth, req).await?;
    let mut form = PhotoForm::read(req, &REGISTER_FIELDS).await?;
    let label = check_label(
        form.text("label")
            .ok_or_else(|| bad("missing form field 'label'"))?,
    )?;
    let images = form.take_photos("image");
    if images.is_empty() {
        return Err(bad("missing form field 'image'"));
    }
    register_photos(&app, &coll, who, images, &label).await
}

/// `POST /api/v1/faces`: one or more photos and their label.
const REGISTER_FIELDS: Fields = Fields {
    photos: &["image"],
    texts: &["label"],
};

#[derive(Deserialize)]
pub struct UrlsBody {
    urls: Vec<String>,
    label: String,
}

pub async fn register_urls(
    State(app): State<Arc<App>>,
    WriteIn(coll): WriteIn,
    Client(who): Client,
    body: Result<Json<UrlsBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    count(&app);
    let body = json_body(body)?;
    let label = check_label(&body.label)?;
    if body.urls.is_empty() || body.urls.len() > MAX_IMAGES {
        return Err(bad(format!("give 1 to {MAX_IMAGES} urls")));
    }
    // One deadline and one byte budget for all the request's URLs.
    let budget = urls::Budget::new(app.url_fetch_time, MAX_BODY_BYTES);
    let got = app.fetcher.fetch_all(&body.urls, &budget).await;
    let mut per_url = vec![];
    let mut photos = vec![];
    for (u, r) in body.urls.iter().zip(got) {
        match r.and_then(|b| photo_dimensions(u, &b).map(|_| b).map_err(|e| e.message)) {
            Ok(b) => photos.push((u.clone(), b)),
            Err(e) => per_url.push(json!({"url": u, "error": e})),
        }
    }
    if photos.is_empty() {
        return Err(bad(format!(
            "no url gave an image: {}",
            serde_json::to_string(&per_url).unwrap_or_default()
        )));
    }
    let Json(mut v) = register_photos(&app, &coll, who, photos, &label).await?;
    if let Some(imgs) = v["images"].as_array_mut() {
        imgs.extend(per_url);
    }
    Ok(Json(v))
}

#[derive(Deserialize)]
pub struct EmbeddingFace {
    label: String,
    embedding: Vec<f32>,
}

#[derive(Deserialize)]
pub struct EmbeddingsBody {
    faces: Vec<EmbeddingFace>,
}

/// `POST /api/v1/faces/embeddings`: faces known only by their embedding
/// (migrations from other systems, index measurements).
pub async fn add_embeddings(
    State(app): State<Arc<App>>,
    WriteIn(coll): WriteIn,
    Client(who): Client,
    body: Result<Json<EmbeddingsBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    count(&app);
    let body = json_body(body)?;
    if body.faces.is_empty() || body.faces.len() > MAX_EMBEDDINGS_PER_CALL {
        return Err(bad(format!(
            "give 1 to {MAX_EMBEDDINGS_PER_CALL} faces per request (got {})",
            body.faces.len()
        )));
    }
    let dim = coll.storage.dim();
    let faces = body
        .faces
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            Ok(NewFace {
                label: check_label(&f.label)
                    .map_err(|e| bad(format!("face {i}: {}", e.message)))?,
                embedding: client_embedding(f.embedding, dim, &format!("face {i}"))?,
                detection: None,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let _turn = app.index_turns.enter(who).await?;
    let ids = coll.storage.add_embeddings(faces).await?;
    Ok(Json(json!({ "collection": coll.name, "ids": ids })))
}

#[derive(Deserialize)]
pub struct Page {
    offset: Option<u64>,
    limit: Option<u64>,
}

impl Page {
    /// Offset (0) and limit (50, at most 1,000).
    pub fn resolve(&self) -> (u64, u64) {
        (
            self.offset.unwrap_or(0),
            self.limit.unwrap_or(50).clamp(1, 1000),
        )
    }

    /// One page of a listing: `{"total", "offset", "limit", KEY: items}`.
    pub fn page_json(&self, total: u64, key: &str, items: Value) -> Value {
        let (offset, limit) = self.resolve();
        let mut v = json!({ "total": total, "offset": offset, "limit": limit });
        v[key] = items;
        v
    }
}

pub async fn list(
    State(app): State<Arc<App>>,
    ReadIn(coll): ReadIn,
    p: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    count(&app);
    let Query(p) = p.map_err(|e| bad(e.body_text()))?;
    let (offset, limit) = p.resolve();
    let (total, faces) = coll.storage.list(offset, limit).await?;
    let faces: Vec<Value> = faces.iter().map(|f| face_json(f, &coll.name)).collect();
    Ok(Json(p.page_json(total, "faces", json!(faces))))
}

fn parse_id(s: &str) -> Result<u64, ApiError> {
    s.parse()
        .map_err(|_| bad(format!("'{s}' is not a numeric id")))
}

pub async fn get(
    State(app): State<Arc<App>>,
    ReadIn(coll): ReadIn,
    UrlPath(id): UrlPath<String>,
) -> ApiResult {
    count(&app);
    let id = parse_id(&id)?;
    let r = coll
        .storage
        .face(id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no face {id}")))?;
    let mut v = face_json(&r, &coll.name);
    v["embedding"] = json!(r.embedding);
    Ok(Json(v))
}

pub async fn delete(
    State(app): State<Arc<App>>,
    WriteIn(coll): WriteIn,
    UrlPath(id): UrlPath<String>,
) -> ApiResult {
    count(&app);
    let id = parse_id(&id)?;
    if coll.storage.delete(id).await? {
        Ok(Json(json!({ "deleted": id })))
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no face {id}"),
        ))
    }
}

pub async fn image(
    State(app): State<Arc<App>>,
    ReadIn(coll): ReadIn,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    count(&app);
    let id = parse_id(&id)?;
    let (bytes, ext) = coll
        .storage
        .image(id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no image {id}")))?;
    let mime = if ext == "png" {
        "image/png"
    } else {
        "image/jpeg"
    };
    Ok(([(header::CONTENT_TYPE, mime)], bytes).into_response())
}
