//! Search: the faces of a photo, or embeddings given by the client.

use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{client_embedding, json_body};
use crate::serve::auth::{after_upload, ReadIn};
use crate::serve::error::{bad, ApiError, ApiResult};
use crate::serve::fair::Client;
use crate::serve::form::{Fields, PhotoForm};
use crate::serve::storage::{Match, MAX_QUERIES_PER_CALL};
use crate::serve::{count, App};

/// Routes that take one photo.
pub(crate) const ONE_IMAGE: Fields = Fields {
    photos: &["image"],
    texts: &[],
};

/// Most matches per face.
pub const MAX_K: usize = 100;

#[derive(Deserialize)]
pub struct SearchQuery {
    k: Option<usize>,
    threshold: Option<f32>,
}

fn check_k_threshold(
    app: &App,
    k: Option<usize>,
    t: Option<f32>,
) -> Result<(usize, f32), ApiError> {
    let k = k.unwrap_or(5);
    if k == 0 || k > MAX_K {
        return Err(bad(format!("k must be 1 to {MAX_K}")));
    }
    let threshold = t.unwrap_or(app.threshold);
    if !(threshold.is_finite() && threshold >= 0.0) {
        return Err(bad("threshold must be a non-negative number"));
    }
    Ok((k, threshold))
}

fn matches_json(ms: &[Match], threshold: f32, collection: &str) -> Vec<Value> {
    ms.iter()
        .filter(|m| m.distance <= threshold)
        .map(|m| {
            json!({
                "id": m.id,
                "label": m.label,
                "distance": m.distance,
                "box": m.bbox,
                "image_url": m.image_id.map(|i| super::faces::image_url(i, collection)),
            })
        })
        .collect()
}

pub async fn photo(
    State(app): State<Arc<App>>,
    auth: Result<ReadIn, ApiError>,
    Client(who): Client,
    q: Result<Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
    req: Request,
) -> ApiResult {
    count(&app);
    let (ReadIn(coll), req) = after_upload(auth, req).await?;
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let (k, threshold) = check_k_threshold(&app, q.k, q.threshold)?;
    let image = PhotoForm::read(req, &ONE_IMAGE).await?.one_photo("image")?;
    let mut found = super::faces::detect_each(&app, who, vec![image]).await?;
    let d = found.remove(0);
    if d.faces.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("no face found in {}", d.name),
        ));
    }
    let (faces, dropped) = (d.faces, d.dropped);
    let queries = faces.iter().map(|f| f.embedding.clone()).collect();
    let found = coll.storage.search(queries, k).await?;
    let results: Vec<Value> = faces
        .iter()
        .zip(found)
        .map(|(f, ms)| {
            json!({
                "box": f.face.bbox,
                "landmarks": f.face.landmarks,
                "score": f.face.score,
                "matches": matches_json(&ms, threshold, &coll.name),
            })
        })
        .collect();
    let mut v = json!({ "collection": coll.name, "threshold": threshold, "results": results });
    if dropped > 0 {
        v["faces_not_searched"] = json!(dropped);
    }
    Ok(Json(v))
}

#[derive(Deserialize)]
pub struct EmbeddingsQuery {
    embeddings: Vec<Vec<f32>>,
    k: Option<usize>,
    threshold: Option<f32>,
}

/// `POST /api/v1/search/embeddings`: the nearest registered faces of each
/// embedding, in query order.
pub async fn embeddings(
    State(app): State<Arc<App>>,
    ReadIn(coll): ReadIn,
    Client(who): Client,
    body: Result<Json<EmbeddingsQuery>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    count(&app);
    let body = json_body(body)?;
    let (k, threshold) = check_k_threshold(&app, body.k, body.threshold)?;
    if body.embeddings.is_empty() || body.embeddings.len() > MAX_QUERIES_PER_CALL {
        return Err(bad(format!(
            "give 1 to {MAX_QUERIES_PER_CALL} embeddings per request (got {})",
            body.embeddings.len()
        )));
    }
    let dim = coll.storage.dim();
    let queries = body
        .embeddings
        .into_iter()
        .enumerate()
        .map(|(i, v)| client_embedding(v, dim, &format!("embedding {i}")))
        .collect::<Result<Vec<_>, _>>()?;
    let _turn = app.index_turns.enter(who).await?;
    let found = coll.storage.search(queries, k).await?;
    let results: Vec<Value> = found
        .iter()
        .map(|ms| json!({ "matches": matches_json(ms, threshold, &coll.name) }))
        .collect();
    Ok(Json(
        json!({ "collection": coll.name, "threshold": threshold, "results": results }),
    ))
}
