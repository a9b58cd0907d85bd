//! Photos without the gallery: 1:1 verification, detection and embedding.

use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::faces::{analyse_each, PhotoWork};
use super::search::ONE_IMAGE;
use crate::detect::mtcnn::Face;
use crate::serve::auth::{after_upload, CanRead, ReadIn};
use crate::serve::error::{bad, ApiError, ApiResult};
use crate::serve::fair::Client;
use crate::serve::form::{Fields, PhotoForm};
use crate::serve::pipeline::Found;
use crate::serve::storage::{euclidean, MAX_FACES_OF_LABEL};
use crate::serve::{check_label, count, App};

fn face_json(f: &Face) -> Value {
    json!({"box": f.bbox, "landmarks": f.landmarks, "score": f.score})
}

#[derive(Deserialize)]
pub struct VerifyQuery {
    threshold: Option<f32>,
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
pub async fn verify(
    State(app): State<Arc<App>>,
    model: Result<CanRead, ApiError>,
    gallery: Result<ReadIn, ApiError>,
    Client(who): Client,
    q: Result<Query<VerifyQuery>, axum::extract::rejection::QueryRejection>,
    req: Request,
) -> ApiResult {
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
    let (distance, mut v) = match (&label, found.as_slice()) {
        (Some(l), [a]) => {
            let (distance, nearest) = registered
                .iter()
                .map(|r| (euclidean(&a.embedding, &r.embedding), r))
                .min_by(|x, y| x.0.total_cmp(&y.0))
                .ok_or_else(|| ApiError::internal("verify: no registered face"))?;
            let v = json!({
                "image1": face_json(&a.face),
                "label": l,
                "nearest": {
                    "id": nearest.id,
                    "box": nearest.detection.map(|d| d.bbox),
                    "image_url": nearest.image_id.zip(coll.as_ref())
                        .map(|(i, c)| super::faces::image_url(i, &c.name)),
                },
                "collection": coll.as_ref().map(|c| c.name.clone()),
                "registered_faces": registered.len(),
            });
            (distance, v)
        }
        (None, [a, b]) => (
            euclidean(&a.embedding, &b.embedding),
            json!({
                "image1": face_json(&a.face),
                "image2": face_json(&b.face),
            }),
        ),
        _ => return Err(ApiError::internal("verify: faces and photos disagree")),
    };
    v["distance"] = json!(distance);
    v["same_person"] = json!(distance <= threshold);
    v["threshold"] = json!(threshold);
    Ok(Json(v))
}

/// `POST /api/v1/detect`: every face of one photo (box, five landmarks,
/// score), best-scored first; nothing is stored or searched.
pub async fn detect(
    State(app): State<Arc<App>>,
    auth: Result<CanRead, ApiError>,
    Client(who): Client,
    req: Request,
) -> ApiResult {
    let faces = one_photo(&app, auth, who, req, |a, img, turn| a.detect(img, turn)).await?;
    let faces: Vec<Value> = faces.iter().map(face_json).collect();
    Ok(Json(json!({ "faces": faces })))
}

/// `POST /api/v1/embed`: the faces of one photo with their embeddings
/// (L2-normalised, the vectors search uses), at most --max-faces of them.
pub async fn embed(
    State(app): State<Arc<App>>,
    auth: Result<CanRead, ApiError>,
    Client(who): Client,
    req: Request,
) -> ApiResult {
    let (found, dropped) =
        one_photo(&app, auth, who, req, |a, img, turn| a.faces(img, turn)).await?;
    let faces: Vec<Value> = found
        .iter()
        .map(|f| {
            let mut v = face_json(&f.face);
            v["embedding"] = json!(f.embedding);
            v
        })
        .collect();
    let mut v = json!({ "faces": faces });
    if dropped > 0 {
        v["faces_not_embedded"] = json!(dropped);
    }
    Ok(Json(v))
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
