//! Photos without the gallery: 1:1 verification, detection and embedding.

use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::faces::{analyse_each, PhotoWork};
use super::schema::{image_url, CollectionParam, Detection, ErrorBody, PhotoBase64, PhotoFile};
use super::search::{OnePhotoForm, OnePhotoJson, ONE_IMAGE};
use crate::serve::auth::{after_upload, CanRead, ReadIn};
use crate::serve::error::{bad, ApiError};
use crate::serve::fair::Client;
use crate::serve::form::{Fields, PhotoForm};
use crate::serve::pipeline::Found;
use crate::serve::storage::{euclidean, MAX_FACES_OF_LABEL};
use crate::serve::{check_label, count, App};

/// `?threshold=` of a verification.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VerifyQuery {
    /// Largest distance of the same person (default: the server's
    /// --threshold).
    #[param(minimum = 0.0)]
    threshold: Option<f32>,
}

/// Two photos, or a photo and a registered label, as a form.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct VerifyForm {
    image1: PhotoFile,
    /// Either image2 ...
    image2: Option<PhotoFile>,
    /// ... or the label of a registered person.
    #[schema(max_length = 100)]
    label: Option<String>,
}

/// Two photos, or a photo and a registered label, as base64 in JSON.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct VerifyJson {
    image1_base64: PhotoBase64,
    /// Either image2_base64 ...
    image2_base64: Option<PhotoBase64>,
    /// ... or the label of a registered person.
    #[schema(max_length = 100)]
    label: Option<String>,
}

/// The registered face closest to image1's.
#[derive(Serialize, ToSchema)]
pub struct Nearest {
    pub id: u64,
    /// Null for a face registered by its embedding.
    #[serde(rename = "box")]
    #[schema(min_items = 4, max_items = 4)]
    pub bbox: Option<[f32; 4]>,
    pub image_url: Option<String>,
}

/// The answer to a verification: `same_person` is `distance <= threshold`.
#[derive(Serialize, ToSchema)]
pub struct Verified {
    /// The largest face of image1.
    pub image1: Detection,
    /// The largest face of image2 (two photos).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image2: Option<Detection>,
    /// The label compared with (photo and label).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nearest: Option<Nearest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collection: Option<String>,
    /// The label's faces compared with (up to 10,000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registered_faces: Option<usize>,
    /// Euclidean distance between the L2-normalised embeddings (0 to 2).
    pub distance: f32,
    pub same_person: bool,
    pub threshold: f32,
}

const VERIFY_FIELDS: Fields = Fields {
    photos: &["image1", "image2"],
    texts: &["label"],
};

/// `POST /api/v1/verify`: are the largest faces of `image1` and `image2`
/// (or of `image1` and the closest face registered as `label`) the same
/// person, by the server's threshold or `?threshold=`.
///
/// Two photos need any credential; a label is looked up in the request's
/// collection and needs the right to read it.
#[utoipa::path(post, operation_id = "analyse_verify", path = "/api/v1/verify", tag = "analyse", params(VerifyQuery, CollectionParam),
    request_body(description = "image1 and either image2 or label; photos (JPEG or PNG) of at most 20 MB together, as a form or as base64 in JSON",
        content((VerifyForm = "multipart/form-data"), (VerifyJson = "application/json"))),
    responses(
        (status = 200, description = "same_person is distance <= threshold", body = Verified),
        (status = 400, description = "not image1 and one of image2 or label, an unreadable photo, a bad threshold", body = ErrorBody),
        (status = 401, description = "no or a wrong token (unless --public-read)", body = ErrorBody),
        (status = 403, description = "a label in another collection than the key's", body = ErrorBody),
        (status = 404, description = "no faces registered under the label", body = ErrorBody),
        (status = 413, description = "more than 20 MB of photos", body = ErrorBody),
        (status = 422, description = "no face in one of the photos (the message names which)", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn verify(
    State(app): State<Arc<App>>,
    model: Result<CanRead, ApiError>,
    gallery: Result<ReadIn, ApiError>,
    Client(who): Client,
    q: Result<Query<VerifyQuery>, axum::extract::rejection::QueryRejection>,
    req: Request,
) -> Result<Json<Verified>, ApiError> {
    count(&app);
    let (_, req) = after_upload(model, req).await?;
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let threshold = q.threshold.unwrap_or(app.threshold);
    if !(threshold.is_finite() && threshold >= 0.0) {
        return Err(bad("threshold must be a non-negative number"));
    }
    let mut form = PhotoForm::read(req, &VERIFY_FIELDS).await?;
    let first = form.one_photo("image1")?;
    let mut second = form.take_photos("image2");
    let label = match (second.len(), form.text("label")) {
        (1, None) => None,
        (0, Some(l)) => Some(check_label(l)?),
        _ => {
            return Err(bad(
                "send 'image1' and either one 'image2' or the 'label' of a registered person",
            ))
        }
    };
    // A label is looked up before any photo work is spent.
    let (registered, coll) = match &label {
        Some(l) => {
            let ReadIn(coll) = gallery?;
            let faces = coll.storage.faces_of(l, MAX_FACES_OF_LABEL).await?;
            if faces.is_empty() {
                return Err(super::subjects::no_subject(l));
            }
            (faces, Some(coll))
        }
        None => (vec![], None),
    };
    let mut photos = vec![first];
    photos.append(&mut second);
    let fields = ["image1", "image2"];
    let analysed =
        analyse_each(&app, who, photos, |a, img, turn| a.largest_face(img, turn)).await?;
    let mut found: Vec<Found> = vec![];
    for (field, p) in fields.iter().zip(analysed) {
        match p.out {
            Some(f) => found.push(f),
            None => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("no face found in {field} ({})", p.name),
                ))
            }
        }
    }
    let [a, rest @ ..] = found.as_slice() else {
        return Err(ApiError::internal("verify: no face found and no error"));
    };
    let image1 = Detection::from(&a.face);
    let v = match (&label, rest) {
        (Some(l), []) => {
            let (distance, nearest) = registered
                .iter()
                .map(|r| (euclidean(&a.embedding, &r.embedding), r))
                .min_by(|x, y| x.0.total_cmp(&y.0))
                .ok_or_else(|| ApiError::internal("verify: no registered face"))?;
            Verified {
                image1,
                image2: None,
                label: Some(l.clone()),
                nearest: Some(Nearest {
                    id: nearest.id,
                    bbox: nearest.detection.map(|d| d.bbox),
                    image_url: nearest
                        .image_id
                        .zip(coll.as_ref())
                        .map(|(i, c)| image_url(i, &c.name)),
                }),
                collection: coll.as_ref().map(|c| c.name.clone()),
                registered_faces: Some(registered.len()),
                distance,
                same_person: distance <= threshold,
                threshold,
            }
        }
        (None, [b]) => {
            let distance = euclidean(&a.embedding, &b.embedding);
            Verified {
                image1,
                image2: Some(Detection::from(&b.face)),
                label: None,
                nearest: None,
                collection: None,
                registered_faces: None,
                distance,
                same_person: distance <= threshold,
                threshold,
            }
        }
        _ => return Err(ApiError::internal("verify: faces and photos disagree")),
    };
    Ok(Json(v))
}

/// Every face of a photo.
#[derive(Serialize, ToSchema)]
pub struct Detected {
    /// Best-scored first.
    pub faces: Vec<Detection>,
}

/// A face of a photo with its embedding.
#[derive(Serialize, ToSchema)]
pub struct EmbeddedFace {
    #[serde(flatten)]
    pub face: Detection,
    /// L2-normalised: the vector search compares.
    pub embedding: Vec<f32>,
}

/// The faces of a photo with their embeddings.
#[derive(Serialize, ToSchema)]
pub struct Embedded {
    pub faces: Vec<EmbeddedFace>,
    /// Faces beyond the server's --max-faces, not embedded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub faces_not_embedded: Option<usize>,
}

/// Every face of a photo (box, five landmarks, score), best-scored first.
///
/// Detection only: nothing is embedded, stored or searched.
#[utoipa::path(post, operation_id = "analyse_detect", path = "/api/v1/detect", tag = "analyse",
    request_body(description = "one photo (JPEG or PNG, at most 20 MB), as a form or as base64 in JSON",
        content((OnePhotoForm = "multipart/form-data"), (OnePhotoJson = "application/json"))),
    responses(
        (status = 200, description = "the faces (none is not an error)", body = Detected),
        (status = 400, description = "a missing or unreadable photo", body = ErrorBody),
        (status = 401, description = "no or a wrong token (unless --public-read)", body = ErrorBody),
        (status = 413, description = "more than 20 MB", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn detect(
    State(app): State<Arc<App>>,
    auth: Result<CanRead, ApiError>,
    Client(who): Client,
    req: Request,
) -> Result<Json<Detected>, ApiError> {
    let faces = one_photo(&app, auth, who, req, |a, img, turn| a.detect(img, turn)).await?;
    Ok(Json(Detected {
        faces: faces.iter().map(Detection::from).collect(),
    }))
}

/// The faces of a photo with their embeddings.
///
/// L2-normalised, the vectors search compares; at most --max-faces of
/// them; nothing is stored.
#[utoipa::path(post, operation_id = "analyse_embed", path = "/api/v1/embed", tag = "analyse",
    request_body(description = "one photo (JPEG or PNG, at most 20 MB), as a form or as base64 in JSON",
        content((OnePhotoForm = "multipart/form-data"), (OnePhotoJson = "application/json"))),
    responses(
        (status = 200, description = "the faces (none is not an error)", body = Embedded),
        (status = 400, description = "a missing or unreadable photo", body = ErrorBody),
        (status = 401, description = "no or a wrong token (unless --public-read)", body = ErrorBody),
        (status = 413, description = "more than 20 MB", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn embed(
    State(app): State<Arc<App>>,
    auth: Result<CanRead, ApiError>,
    Client(who): Client,
    req: Request,
) -> Result<Json<Embedded>, ApiError> {
    let (found, dropped) =
        one_photo(&app, auth, who, req, |a, img, turn| a.faces(img, turn)).await?;
    Ok(Json(Embedded {
        faces: found
            .into_iter()
            .map(|f| EmbeddedFace {
                face: Detection::from(&f.face),
                embedding: f.embedding,
            })
            .collect(),
        faces_not_embedded: (dropped > 0).then_some(dropped),
    }))
}

/// The one photo `image` of a request, through `work`.
async fn one_photo<T: Send + 'static>(
    app: &Arc<App>,
    auth: Result<CanRead, ApiError>,
    who: std::net::IpAddr,
    req: Request,
    work: PhotoWork<T>,
) -> Result<T, ApiError> {
    count(app);
    let (_, req) = after_upload(auth, req).await?;
    let image = PhotoForm::read(req, &ONE_IMAGE).await?.one_photo("image")?;
    let mut out = analyse_each(app, who, vec![image], work).await?;
    out.pop()
        .map(|p| p.out)
        .ok_or_else(|| ApiError::internal("one photo in, none out"))
}
