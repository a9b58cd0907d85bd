//! Subjects: the registered labels with their face counts; rename (merging
//! into an existing label) and delete with all their faces.

use std::sync::Arc;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::json_body;
use super::schema::{CollectionParam, ErrorBody, FaceOut, Page};
use crate::serve::auth::{ReadIn, WriteIn};
use crate::serve::error::{bad, ApiError};
use crate::serve::storage::{Subject, MAX_FACES_OF_LABEL};
use crate::serve::{check_label, count, App};

/// One page of labels.
#[derive(Serialize, ToSchema)]
pub struct SubjectPage {
    pub total: u64,
    pub offset: u64,
    pub limit: u64,
    pub subjects: Vec<Subject>,
}

/// Registered labels in order, each with its number of faces.
#[utoipa::path(get, operation_id = "subjects_list", path = "/api/v1/subjects", tag = "subjects", params(Page, CollectionParam),
    responses(
        (status = 200, description = "one page", body = SubjectPage),
        (status = 400, description = "a bad offset or limit", body = ErrorBody),
        (status = 401, description = "no or a wrong token (unless --public-read)", body = ErrorBody),
        (status = 403, description = "another collection's key", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(app): State<Arc<App>>,
    ReadIn(coll): ReadIn,
    p: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SubjectPage>, ApiError> {
    count(&app);
    let Query(p) = p.map_err(|e| bad(e.body_text()))?;
    let (offset, limit) = p.resolve();
    let (total, subjects) = coll.storage.subjects(offset, limit).await?;
    Ok(Json(SubjectPage {
        total,
        offset,
        limit,
        subjects,
    }))
}

/// One page of a label's faces.
#[derive(Serialize, ToSchema)]
pub struct SubjectFaces {
    pub label: String,
    pub offset: u64,
    pub limit: u64,
    /// A next page has faces.
    pub more: bool,
    pub faces: Vec<FaceOut>,
}

/// A label's faces in id order, paged.
///
/// `more` says whether a next page has any; the first 10,000 faces of a
/// label can be paged through.
#[utoipa::path(get, operation_id = "subjects_faces", path = "/api/v1/subjects/{label}", tag = "subjects",
    params(("label" = String, Path, description = "the label"), Page, CollectionParam),
    responses(
        (status = 200, description = "one page", body = SubjectFaces),
        (status = 400, description = "a bad label, offset or limit", body = ErrorBody),
        (status = 401, description = "no or a wrong token (unless --public-read)", body = ErrorBody),
        (status = 404, description = "no faces registered under the label", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn faces(
    State(app): State<Arc<App>>,
    ReadIn(coll): ReadIn,
    UrlPath(label): UrlPath<String>,
    p: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SubjectFaces>, ApiError> {
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
    let page = faces
        .iter()
        .skip(offset as usize)
        .take(limit as usize)
        .map(|f| FaceOut::new(f, &coll.name))
        .collect();
    Ok(Json(SubjectFaces {
        label,
        offset,
        limit,
        more,
        faces: page,
    }))
}

/// The new label.
#[derive(Deserialize, ToSchema)]
pub struct Rename {
    #[schema(max_length = 100)]
    label: String,
}

/// A renamed label.
#[derive(Serialize, ToSchema)]
pub struct Renamed {
    pub label: String,
    pub renamed_from: String,
    /// Faces moved.
    pub faces: u64,
}

/// A deleted label.
#[derive(Serialize, ToSchema)]
pub struct SubjectDeleted {
    pub label: String,
    pub deleted_faces: u64,
}

/// 404 for a label without faces.
pub(crate) fn no_subject(label: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no faces registered as '{label}'"),
    )
}

/// Rename a label (its faces join the new label if it exists).
#[utoipa::path(patch, operation_id = "subjects_rename", path = "/api/v1/subjects/{label}", tag = "subjects",
    params(("label" = String, Path, description = "the label"), CollectionParam),
    request_body = Rename,
    responses(
        (status = 200, description = "renamed", body = Renamed),
        (status = 400, description = "a bad label", body = ErrorBody),
        (status = 401, description = "no or a wrong token", body = ErrorBody),
        (status = 403, description = "another collection's key", body = ErrorBody),
        (status = 404, description = "no faces registered under the label", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn rename(
    State(app): State<Arc<App>>,
    WriteIn(coll): WriteIn,
    UrlPath(from): UrlPath<String>,
    body: Result<Json<Rename>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Renamed>, ApiError> {
    count(&app);
    let body = json_body(body)?;
    let from = check_label(&from)?;
    let to = check_label(&body.label)?;
    let moved = coll.storage.rename_subject(&from, &to).await?;
    if moved == 0 {
        return Err(no_subject(&from));
    }
    Ok(Json(Renamed {
        label: to,
        renamed_from: from,
        faces: moved,
    }))
}

/// Delete a label's faces (and the photos no other face refers to).
#[utoipa::path(delete, operation_id = "subjects_delete", path = "/api/v1/subjects/{label}", tag = "subjects",
    params(("label" = String, Path, description = "the label"), CollectionParam),
    responses(
        (status = 200, description = "deleted", body = SubjectDeleted),
        (status = 400, description = "a bad label", body = ErrorBody),
        (status = 401, description = "no or a wrong token", body = ErrorBody),
        (status = 403, description = "another collection's key", body = ErrorBody),
        (status = 404, description = "no faces registered under the label", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(
    State(app): State<Arc<App>>,
    WriteIn(coll): WriteIn,
    UrlPath(label): UrlPath<String>,
) -> Result<Json<SubjectDeleted>, ApiError> {
    count(&app);
    let label = check_label(&label)?;
    let n = coll.storage.delete_subject(&label).await?;
    if n == 0 {
        return Err(no_subject(&label));
    }
    Ok(Json(SubjectDeleted {
        label,
        deleted_faces: n,
    }))
}
