//! Faces: register from photos, URLs or embeddings; list, get, delete;
//! the stored photos.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::schema::{CollectionParam, ErrorBody, FaceOut, Page, PhotoFile, PhotosBase64};
use super::{client_embedding, json_body};
use crate::serve::auth::{after_upload, ReadIn, WriteIn};
use crate::serve::budget::Budget;
use crate::serve::error::{bad, ApiError};
use crate::serve::fair::Client;
use crate::serve::form::{Fields, PhotoForm};
use crate::serve::pipeline::{Found, EMBED_BATCH};
use crate::serve::storage::collections::Collection;
use crate::serve::storage::{FaceRecord, NewFace, PhotoFaces, MAX_EMBEDDINGS_PER_CALL};
use crate::serve::{
    blocking, check_label, count, decode_photo, photo_dimensions, urls, App, Photo,
};
use crate::serve::{MAX_BODY_BYTES, MAX_IMAGES};

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
/// each only once the memory budget has room for it and the client has a
/// turn. Faces are embedded EMBED_BATCH at a time across the photos: a
/// request of ten one-face photos makes two engine calls (8 + 2), not ten
/// (and those calls take in the faces of other requests in flight, see
/// `pipeline::Batcher`). At most EMBED_BATCH crops wait at any time; the
/// last photo's task embeds what is left.
pub(crate) async fn detect_each(
    app: &Arc<App>,
    who: IpAddr,
    photos: Vec<(String, Vec<u8>)>,
) -> Result<Vec<Detected>, ApiError> {
    let dims = check_headers(&photos)?;
    let total = photos.len();
    // Photos with their faces, in order; the faces' inputs not yet
    // embedded; the embeddings so far, in the order of the faces.
    let mut done: Vec<(Detected, Vec<crate::detect::mtcnn::Face>)> = vec![];
    let mut pending: Vec<Vec<f32>> = vec![];
    let mut embeddings: Vec<Vec<f32>> = vec![];
    for (i, ((name, bytes), (w, h))) in photos.into_iter().zip(dims).enumerate() {
        let room = app.budget.admit(Budget::estimate(w, h)).await?;
        let turn = app.turns.enter(who).await?;
        let a = app.clone();
        let last = i + 1 == total;
        let (d, faces, p, e) = blocking(move || {
            let _room = room;
            let mut turn = turn;
            let on = a.clone();
            on.lanes.run(turn.alone(), move || {
                let Photo {
                    name,
                    bytes,
                    ext,
                    img,
                } = decode_photo(name, bytes)?;
                let (faces, dropped) = a.detect_at_most(&img, &mut turn)?;
                for f in &faces {
                    pending.push(a.pipe.face_input(&img, f).map_err(ApiError::internal)?);
                    if pending.len() == EMBED_BATCH {
                        embeddings.extend(a.embed_inputs(std::mem::take(&mut pending), &mut turn)?);
                    }
                }
                if last && !pending.is_empty() {
                    embeddings.extend(a.embed_inputs(std::mem::take(&mut pending), &mut turn)?);
                }
                let d = Detected {
                    name,
                    bytes,
                    ext,
                    faces: vec![],
                    dropped,
                };
                Ok((d, faces, pending, embeddings))
            })
        })
        .await?;
        done.push((d, faces));
        pending = p;
        embeddings = e;
    }
    let mut embeddings = embeddings.into_iter();
    let mut out = Vec::with_capacity(done.len());
    for (mut d, faces) in done {
        for face in faces {
            let embedding = embeddings
                .next()
                .ok_or_else(|| ApiError::internal("fewer embeddings than faces"))?;
            d.faces.push(Found { face, embedding });
        }
        out.push(d);
    }
    Ok(out)
}

/// One uploaded photo and what `work` made of its pixels.
pub(crate) struct Analysed<T> {
    pub name: String,
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
                let on = a.clone();
                on.lanes.run(turn.alone(), move || {
                    let Photo { name, img, .. } = decode_photo(name, bytes)?;
                    let out = work(&a, &img, &mut turn)?;
                    Ok(Analysed { name, out })
                })
            })
            .await?,
        );
    }
    Ok(out)
}

/// What became of one photo (or URL) of a registration.
#[derive(Serialize, ToSchema, Default)]
pub struct PhotoOutcome {
    /// The photo's file name (or its URL) as sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// A URL that gave no photo (with `error`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The stored photo.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_id: Option<u64>,
    /// The faces stored from it (or stored before, when
    /// `already_registered`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub faces: Option<Vec<FaceOut>>,
    /// The same bytes were registered under this label before: nothing
    /// stored again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub already_registered: Option<bool>,
    /// Faces found beyond the server's --max-faces, not registered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub faces_not_registered: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Why a URL gave no photo.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The answer to a registration from photos or URLs.
#[derive(Serialize, ToSchema)]
pub struct Registered {
    pub collection: String,
    /// Faces stored by this request.
    pub registered: usize,
    /// One entry per photo, in request order (failed URLs last).
    pub images: Vec<PhotoOutcome>,
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
) -> Result<Registered, ApiError> {
    use sha2::{Digest, Sha256};
    // The limits hold for the request as sent, photos seen before included.
    check_headers(&photos)?;
    let faces_of = |s: &[FaceRecord]| Some(s.iter().map(|f| FaceOut::new(f, &coll.name)).collect());
    // Each photo's outcome at its place in the request.
    let mut results: Vec<Option<PhotoOutcome>> = vec![];
    let mut fresh = vec![];
    let mut hashes = vec![];
    let mut places = vec![];
    for (name, bytes) in photos {
        let h: [u8; 32] = Sha256::digest(&bytes).into();
        match coll.storage.photo_by_hash(h, label).await? {
            Some(s) => results.push(Some(PhotoOutcome {
                image: Some(name),
                image_id: Some(s.image_id),
                faces: faces_of(&s.faces),
                already_registered: Some(true),
                message: Some(
                    "this photo is registered under this label already; nothing stored".into(),
                ),
                ..Default::default()
            })),
            None if hashes.contains(&h) => results.push(Some(PhotoOutcome {
                image: Some(name),
                faces: Some(vec![]),
                already_registered: Some(true),
                message: Some("the same photo twice in one request; registered once".into()),
                ..Default::default()
            })),
            None => {
                hashes.push(h);
                places.push(results.len());
                results.push(None);
                fresh.push((name, bytes));
            }
        }
    }
    let in_order = |r: Vec<Option<PhotoOutcome>>| r.into_iter().flatten().collect();
    if fresh.is_empty() {
        return Ok(Registered {
            collection: coll.name.clone(),
            registered: 0,
            images: in_order(results),
        });
    }
    let found: Vec<(Detected, Vec<Found>, [u8; 32], usize)> = detect_each(app, who, fresh)
        .await?
        .into_iter()
        .zip(hashes)
        .zip(places)
        .map(|((mut d, h), at)| {
            let f = std::mem::take(&mut d.faces);
            (d, f, h, at)
        })
        .collect();
    if results.iter().all(Option::is_none) && found.iter().all(|(_, f, _, _)| f.is_empty()) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "no face found in {}: nothing registered",
                found
                    .iter()
                    .map(|(p, _, _, _)| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let mut to_store = vec![];
    let mut names = vec![];
    for (p, faces, sha256, at) in found {
        if faces.is_empty() {
            if let Some(r) = results.get_mut(at) {
                *r = Some(PhotoOutcome {
                    image: Some(p.name),
                    faces: Some(vec![]),
                    message: Some("no face found; nothing registered".into()),
                    ..Default::default()
                });
            }
            continue;
        }
        names.push((p.name, p.dropped, at));
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
    for ((name, dropped, at), s) in names.into_iter().zip(stored) {
        registered += s.faces.len();
        let mut v = PhotoOutcome {
            image: Some(name),
            image_id: Some(s.image_id),
            faces: faces_of(&s.faces),
            ..Default::default()
        };
        if dropped > 0 {
            v.faces_not_registered = Some(dropped);
            v.message = Some(format!(
                "{dropped} more face(s) found beyond this server's limit of {} per photo",
                app.max_faces
            ));
        }
        if let Some(r) = results.get_mut(at) {
            *r = Some(v);
        }
    }
    Ok(Registered {
        collection: coll.name.clone(),
        registered,
        images: in_order(results),
    })
}

/// `POST /api/v1/faces` as a form: one or more photos and their label.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct RegisterForm {
    /// One or more photos (up to 100, 20 MB together).
    image: Vec<PhotoFile>,
    #[schema(max_length = 100)]
    label: String,
}

/// `POST /api/v1/faces` as JSON: the photos as base64.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct RegisterJson {
    image_base64: PhotosBase64,
    #[schema(max_length = 100)]
    label: String,
}

/// Register every face in one or more photos under a label.
///
/// A photo sent again under the same label (the same bytes) is answered
/// with its stored faces (`already_registered`) and stored only once.
#[utoipa::path(post, operation_id = "faces_register", path = "/api/v1/faces", tag = "faces", params(CollectionParam),
    request_body(description = "photos (JPEG or PNG) of at most 20 MB together, as a form or as base64 in JSON",
        content((RegisterForm = "multipart/form-data"), (RegisterJson = "application/json"))),
    responses(
        (status = 200, description = "what became of each photo", body = Registered),
        (status = 400, description = "a missing field, an unreadable photo, a bad label", body = ErrorBody),
        (status = 401, description = "no or a wrong token", body = ErrorBody),
        (status = 403, description = "another collection's key", body = ErrorBody),
        (status = 413, description = "more than 20 MB of photos", body = ErrorBody),
        (status = 422, description = "no face in any photo: nothing stored", body = ErrorBody),
        (status = 503, description = "the database is unavailable", body = ErrorBody),
        (status = 507, description = "the server's disk is full: nothing stored", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn register(
    State(app): State<Arc<App>>,
    auth: Result<WriteIn, ApiError>,
    Client(who): Client,
    req: Request,
) -> Result<Json<Registered>, ApiError> {
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
    Ok(Json(
        register_photos(&app, &coll, who, images, &label).await?,
    ))
}

/// `POST /api/v1/faces`: one or more photos and their label.
const REGISTER_FIELDS: Fields = Fields {
    photos: &["image"],
    texts: &["label"],
};

/// Photos to fetch and register under one label.
#[derive(Deserialize, ToSchema)]
pub struct UrlsBody {
    /// http or https URLs on the server's allow-list (1 to 100).
    #[schema(min_items = 1, max_items = 100)]
    urls: Vec<String>,
    #[schema(max_length = 100)]
    label: String,
}

/// Register photos fetched from URLs.
///
/// http or https URLs on the server's allow-list, up to 3 redirects (each
/// to an allowed host), one deadline and one 20 MB budget for all of them.
#[utoipa::path(post, operation_id = "faces_register_urls", path = "/api/v1/faces/urls", tag = "faces", params(CollectionParam),
    request_body = UrlsBody,
    responses(
        (status = 200, description = "what became of each URL", body = Registered),
        (status = 400, description = "no URL gave a photo (each one's reason in the message), a bad label", body = ErrorBody),
        (status = 401, description = "no or a wrong token", body = ErrorBody),
        (status = 403, description = "another collection's key", body = ErrorBody),
        (status = 422, description = "no face in any photo: nothing stored", body = ErrorBody),
        (status = 503, description = "the database is unavailable", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn register_urls(
    State(app): State<Arc<App>>,
    WriteIn(coll): WriteIn,
    Client(who): Client,
    body: Result<Json<UrlsBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Registered>, ApiError> {
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
            Err(e) => per_url.push(PhotoOutcome {
                url: Some(u.clone()),
                error: Some(e),
                ..Default::default()
            }),
        }
    }
    if photos.is_empty() {
        let why: Vec<String> = per_url
            .iter()
            .map(|o| {
                format!(
                    "{}: {}",
                    o.url.as_deref().unwrap_or(""),
                    o.error.as_deref().unwrap_or("")
                )
            })
            .collect();
        return Err(bad(format!("no url gave an image: {}", why.join("; "))));
    }
    let mut v = register_photos(&app, &coll, who, photos, &label).await?;
    v.images.extend(per_url);
    Ok(Json(v))
}

/// A face known by its embedding only.
#[derive(Deserialize, ToSchema)]
pub struct EmbeddingFace {
    #[schema(max_length = 100)]
    label: String,
    #[schema(value_type = super::schema::Embedding)]
    embedding: Vec<f32>,
}

/// Faces to register by their embeddings.
#[derive(Deserialize, ToSchema)]
pub struct EmbeddingsBody {
    /// 1 to 10,000 faces.
    #[schema(min_items = 1, max_items = 10000)]
    faces: Vec<EmbeddingFace>,
}

/// The new faces' ids, in request order.
#[derive(Serialize, ToSchema)]
pub struct Added {
    pub collection: String,
    pub ids: Vec<u64>,
}

/// Register faces by their embeddings.
///
/// For migrations from other systems and index measurements; each face is
/// durable when the response arrives.
#[utoipa::path(post, operation_id = "faces_add_embeddings", path = "/api/v1/faces/embeddings", tag = "faces", params(CollectionParam),
    request_body = EmbeddingsBody,
    responses(
        (status = 200, description = "the new faces' ids, in request order", body = Added),
        (status = 400, description = "a wrong length, a number that is not finite, a zero vector, too many faces (the message names the face)", body = ErrorBody),
        (status = 401, description = "no or a wrong token", body = ErrorBody),
        (status = 403, description = "another collection's key", body = ErrorBody),
        (status = 413, description = "a body over 96 MB", body = ErrorBody),
        (status = 503, description = "the database is unavailable", body = ErrorBody),
        (status = 507, description = "the server's disk is full: nothing stored", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn add_embeddings(
    State(app): State<Arc<App>>,
    WriteIn(coll): WriteIn,
    Client(who): Client,
    body: Result<Json<EmbeddingsBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Added>, ApiError> {
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
    Ok(Json(Added {
        collection: coll.name.clone(),
        ids,
    }))
}

/// One page of registered faces.
#[derive(Serialize, ToSchema)]
pub struct FacePage {
    pub total: u64,
    pub offset: u64,
    pub limit: u64,
    pub faces: Vec<FaceOut>,
}

/// List registered faces, in id order.
#[utoipa::path(get, operation_id = "faces_list", path = "/api/v1/faces", tag = "faces", params(Page, CollectionParam),
    responses(
        (status = 200, description = "one page", body = FacePage),
        (status = 400, description = "a bad offset or limit", body = ErrorBody),
        (status = 401, description = "no or a wrong token (unless --public-read)", body = ErrorBody),
        (status = 403, description = "another collection's key", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(app): State<Arc<App>>,
    ReadIn(coll): ReadIn,
    p: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<FacePage>, ApiError> {
    count(&app);
    let Query(p) = p.map_err(|e| bad(e.body_text()))?;
    let (offset, limit) = p.resolve();
    let (total, faces) = coll.storage.list(offset, limit).await?;
    Ok(Json(FacePage {
        total,
        offset,
        limit,
        faces: faces.iter().map(|f| FaceOut::new(f, &coll.name)).collect(),
    }))
}

fn parse_id(s: &str) -> Result<u64, ApiError> {
    s.parse()
        .map_err(|_| bad(format!("'{s}' is not a numeric id")))
}

/// One face, with its embedding.
#[utoipa::path(get, operation_id = "faces_get", path = "/api/v1/faces/{id}", tag = "faces",
    params(("id" = u64, Path, description = "the face's id"), CollectionParam),
    responses(
        (status = 200, description = "the face", body = FaceOut),
        (status = 400, description = "not a numeric id", body = ErrorBody),
        (status = 401, description = "no or a wrong token (unless --public-read)", body = ErrorBody),
        (status = 404, description = "no such face", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(app): State<Arc<App>>,
    ReadIn(coll): ReadIn,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<FaceOut>, ApiError> {
    count(&app);
    let id = parse_id(&id)?;
    let r = coll
        .storage
        .face(id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no face {id}")))?;
    let mut v = FaceOut::new(&r, &coll.name);
    v.embedding = Some(r.embedding);
    Ok(Json(v))
}

/// A deleted face's id.
#[derive(Serialize, ToSchema)]
pub struct Deleted {
    pub deleted: u64,
}

/// Delete a face.
#[utoipa::path(delete, operation_id = "faces_delete", path = "/api/v1/faces/{id}", tag = "faces",
    params(("id" = u64, Path, description = "the face's id"), CollectionParam),
    responses(
        (status = 200, description = "deleted", body = Deleted),
        (status = 400, description = "not a numeric id", body = ErrorBody),
        (status = 401, description = "no or a wrong token", body = ErrorBody),
        (status = 403, description = "another collection's key", body = ErrorBody),
        (status = 404, description = "no such face", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(
    State(app): State<Arc<App>>,
    WriteIn(coll): WriteIn,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Deleted>, ApiError> {
    count(&app);
    let id = parse_id(&id)?;
    if coll.storage.delete(id).await? {
        Ok(Json(Deleted { deleted: id }))
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no face {id}"),
        ))
    }
}

/// A stored photo (as registered; metadata stripped unless --keep-exif).
#[utoipa::path(get, operation_id = "faces_image", path = "/api/v1/images/{id}", tag = "faces",
    params(("id" = u64, Path, description = "the photo's id (a face's image_id)"), CollectionParam),
    responses(
        (status = 200, description = "the photo", content(("image/jpeg"), ("image/png"))),
        (status = 400, description = "not a numeric id", body = ErrorBody),
        (status = 401, description = "no or a wrong token (unless --public-read)", body = ErrorBody),
        (status = 404, description = "no such photo", body = ErrorBody)),
    security(("bearer" = [])))]
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
