//! Search: the faces of a photo, or embeddings given by the client.

use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::schema::{
    matches, CollectionParam, Detection, ErrorBody, MatchOut, PhotoBase64, PhotoFile,
};
use super::{client_embedding, json_body};
use crate::serve::auth::{after_upload, ReadIn};
use crate::serve::error::{bad, ApiError};
use crate::serve::fair::Client;
use crate::serve::form::{Fields, PhotoForm};
use crate::serve::storage::MAX_QUERIES_PER_CALL;
use crate::serve::{count, App};

/// Routes that take one photo.
pub(crate) const ONE_IMAGE: Fields = Fields {
    photos: &["image"],
    texts: &[],
};

/// Most matches per face.
pub const MAX_K: usize = 100;

/// `?k=&threshold=` of a photo search.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// Matches per face (default 5, at most 100).
    #[param(minimum = 1, maximum = 100)]
    k: Option<usize>,
    /// Largest distance reported (default: the server's --threshold).
    #[param(minimum = 0.0)]
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

/// A photo to search with, as a form.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct OnePhotoForm {
    image: PhotoFile,
}

/// A photo to search with, as base64 in JSON.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct OnePhotoJson {
    image_base64: PhotoBase64,
}

/// One face of the photo and the registered faces nearest to it.
#[derive(Serialize, ToSchema)]
pub struct FaceMatches {
    #[serde(flatten)]
    pub face: Detection,
    /// Within the threshold, nearest first.
    pub matches: Vec<MatchOut>,
}

/// The answer to a photo search.
#[derive(Serialize, ToSchema)]
pub struct PhotoSearch {
    pub collection: String,
    pub threshold: f32,
    /// One per face found, best-scored first.
    pub results: Vec<FaceMatches>,
    /// Faces found beyond the server's --max-faces, not searched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub faces_not_searched: Option<usize>,
}

/// For every face in a photo, the closest registered faces.
///
/// Within the threshold, nearest first.
#[utoipa::path(post, operation_id = "search_photo", path = "/api/v1/search", tag = "search", params(SearchQuery, CollectionParam),
    request_body(description = "one photo (JPEG or PNG, at most 20 MB), as a form or as base64 in JSON",
        content((OnePhotoForm = "multipart/form-data"), (OnePhotoJson = "application/json"))),
    responses(
        (status = 200, description = "the matches of each face", body = PhotoSearch),
        (status = 400, description = "a missing or unreadable photo, a bad k or threshold", body = ErrorBody),
        (status = 401, description = "no or a wrong token (unless --public-read)", body = ErrorBody),
        (status = 403, description = "another collection's key", body = ErrorBody),
        (status = 413, description = "more than 20 MB", body = ErrorBody),
        (status = 422, description = "no face in the photo", body = ErrorBody),
        (status = 503, description = "the database is unavailable", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn photo(
    State(app): State<Arc<App>>,
    auth: Result<ReadIn, ApiError>,
    Client(who): Client,
    q: Result<Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
    req: Request,
) -> Result<Json<PhotoSearch>, ApiError> {
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
    let results = faces
        .iter()
        .zip(found)
        .map(|(f, ms)| FaceMatches {
            face: Detection::from(&f.face),
            matches: matches(&ms, threshold, &coll.name),
        })
        .collect();
    Ok(Json(PhotoSearch {
        collection: coll.name.clone(),
        threshold,
        results,
        faces_not_searched: (dropped > 0).then_some(dropped),
    }))
}

/// Embeddings to search with.
#[derive(Deserialize, ToSchema)]
pub struct EmbeddingsQuery {
    /// 1 to 1,000 embeddings.
    #[schema(value_type = Vec<super::schema::Embedding>, min_items = 1, max_items = 1000)]
    embeddings: Vec<Vec<f32>>,
    /// Matches per embedding (default 5, at most 100).
    #[schema(minimum = 1, maximum = 100)]
    k: Option<usize>,
    /// Largest distance reported (default: the server's --threshold).
    #[schema(minimum = 0.0)]
    threshold: Option<f32>,
}

/// The matches of one query embedding.
#[derive(Serialize, ToSchema)]
pub struct Matches {
    /// Within the threshold, nearest first.
    pub matches: Vec<MatchOut>,
}

/// The answer to an embedding search.
#[derive(Serialize, ToSchema)]
pub struct EmbeddingSearch {
    pub collection: String,
    pub threshold: f32,
    /// One per query, in query order.
    pub results: Vec<Matches>,
}

/// The closest registered faces of each given embedding.
///
/// Within the threshold, nearest first; the server L2-normalises the
/// embeddings first.
#[utoipa::path(post, operation_id = "search_embeddings", path = "/api/v1/search/embeddings", tag = "search", params(CollectionParam),
    request_body = EmbeddingsQuery,
    responses(
        (status = 200, description = "the matches of each query, in query order", body = EmbeddingSearch),
        (status = 400, description = "a wrong length, a number that is not finite, a zero vector, too many queries, a bad k or threshold", body = ErrorBody),
        (status = 401, description = "no or a wrong token (unless --public-read)", body = ErrorBody),
        (status = 403, description = "another collection's key", body = ErrorBody),
        (status = 413, description = "a body over 96 MB", body = ErrorBody),
        (status = 503, description = "the database is unavailable", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn embeddings(
    State(app): State<Arc<App>>,
    ReadIn(coll): ReadIn,
    Client(who): Client,
    body: Result<Json<EmbeddingsQuery>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<EmbeddingSearch>, ApiError> {
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
    Ok(Json(EmbeddingSearch {
        collection: coll.name.clone(),
        threshold,
        results: found
            .iter()
            .map(|ms| Matches {
                matches: matches(ms, threshold, &coll.name),
            })
            .collect(),
    }))
}
