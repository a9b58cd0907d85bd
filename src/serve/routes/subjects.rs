//! Subjects: the registered labels with their face counts; rename (merging
//! into an existing label) and delete with all their faces.

use std::sync::Arc;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::faces::{face_json, Page};
use super::json_body;
use crate::serve::auth::{ReadIn, WriteIn};
use crate::serve::error::{bad, ApiError, ApiResult};
use crate::serve::storage::MAX_FACES_OF_LABEL;
use crate::serve::{check_label, count, App};

/// `GET /api/v1/subjects?offset=&limit=`: labels in order, paged.
pub async fn list(
    State(app): State<Arc<App>>,
    ReadIn(coll): ReadIn,
    p: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    count(&app);
    let Query(p) = p.map_err(|e| bad(e.body_text()))?;
    let (offset, limit) = p.resolve();
    let (total, subjects) = coll.storage.subjects(offset, limit).await?;
    Ok(Json(p.page_json(total, "subjects", json!(subjects))))
}

/// `GET /api/v1/subjects/{label}?offset=&limit=`: the label's faces in id
/// order, paged (`more` says whether a next page has any; the first
/// 10,000 faces of a label can be paged through).
pub async fn faces(
    State(app): State<Arc<App>>,
    ReadIn(coll): ReadIn,
    UrlPath(label): UrlPath<String>,
    p: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    count(&app);
    let Query(p) = p.map_err(|e| bad(e.body_text()))?;
    let label = check_label(&label)?;
    let (offset, limit) = p.resolve();
    let want = offset.saturating_add(limit);
    let faces = coll
        .storage
        .faces_of(&label, want.saturating_add(1).min(MAX_FACES_OF_LABEL))
        .await?;
    if faces.is_empty() {
        return Err(no_subject(&label));
    }
    let more = faces.len() as u64 > want;
    let page: Vec<Value> = faces
        .iter()
        .skip(offset as usize)
        .take(limit as usize)
        .map(|f| face_json(f, &coll.name))
        .collect();
    Ok(Json(json!({
        "label": label,
        "offset": offset,
        "limit": limit,
        "more": more,
        "faces": page,
    })))
}

#[derive(Deserialize)]
pub struct Rename {
    label: String,
}

/// 404 for a label without faces.
pub(crate) fn no_subject(label: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no faces registered as '{label}'"),
    )
}

/// `PATCH /api/v1/subjects/{label}` with `{"label": NEW}`.
pub async fn rename(
    State(app): State<Arc<App>>,
    WriteIn(coll): WriteIn,
    UrlPath(from): UrlPath<String>,
    body: Result<Json<Rename>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    count(&app);
    let body = json_body(body)?;
    let from = check_label(&from)?;
    let to = check_label(&body.label)?;
    let moved = coll.storage.rename_subject(&from, &to).await?;
    if moved == 0 {
        return Err(no_subject(&from));
    }
    Ok(Json(
        json!({ "label": to, "renamed_from": from, "faces": moved }),
    ))
}

/// `DELETE /api/v1/subjects/{label}`: the label's faces, and the photos
/// that no other face refers to.
pub async fn delete(
    State(app): State<Arc<App>>,
    WriteIn(coll): WriteIn,
    UrlPath(label): UrlPath<String>,
) -> ApiResult {
    count(&app);
    let label = check_label(&label)?;
    let n = coll.storage.delete_subject(&label).await?;
    if n == 0 {
        return Err(no_subject(&label));
    }
    Ok(Json(json!({ "label": label, "deleted_faces": n })))
}
