//! Collections (admin token): create one (its API key is in the answer,
//! once), list them with their sizes, delete one with all its faces.

use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::json_body;
use super::schema::ErrorBody;
use crate::serve::auth::Admin;
use crate::serve::error::{bad, ApiError};
use crate::serve::storage::collections::check_name;
use crate::serve::{count, App};

/// A collection to create.
#[derive(Deserialize, ToSchema)]
pub struct NewCollection {
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,47}$")]
    name: String,
}

/// A new collection and its key.
#[derive(Serialize, ToSchema)]
pub struct Created {
    pub name: String,
    /// The collection's key (`fa_` and 64 hex digits): shown only in this
    /// answer, the server keeps its SHA-256.
    pub api_key: String,
    /// Seconds since the Unix epoch.
    pub created: u64,
    pub message: String,
}

/// Create a collection: a gallery of its own with its own API key.
///
/// The key is shown only in this answer (the server keeps its SHA-256).
#[utoipa::path(post, operation_id = "collections_create", path = "/api/v1/collections", tag = "collections",
    request_body = NewCollection,
    responses(
        (status = 201, description = "created", body = Created),
        (status = 400, description = "a bad name", body = ErrorBody),
        (status = 401, description = "no or a wrong token", body = ErrorBody),
        (status = 403, description = "not the admin token", body = ErrorBody),
        (status = 409, description = "the name exists", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(app): State<Arc<App>>,
    _: Admin,
    body: Result<Json<NewCollection>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    count(&app);
    let body = json_body(body)?;
    check_name(&body.name).map_err(bad)?;
    let (c, key) = app.collections.create(&body.name).await?;
    Ok((
        StatusCode::CREATED,
        Json(Created {
            name: c.name.clone(),
            api_key: key,
            created: c.created,
            message: "keep the api_key: it is shown only now (the server stores its hash)".into(),
        }),
    )
        .into_response())
}

/// A collection with its counts.
#[derive(Serialize, ToSchema)]
pub struct CollectionInfo {
    pub name: String,
    pub faces: u64,
    pub labels: u64,
    pub images: u64,
    /// Seconds since the Unix epoch (0 for `default`).
    pub created: u64,
}

/// Every collection.
#[derive(Serialize, ToSchema)]
pub struct CollectionList {
    pub collections: Vec<CollectionInfo>,
}

/// Every collection with its counts (never its key).
#[utoipa::path(get, operation_id = "collections_list", path = "/api/v1/collections", tag = "collections",
    responses(
        (status = 200, description = "the collections", body = CollectionList),
        (status = 401, description = "no or a wrong token", body = ErrorBody),
        (status = 403, description = "not the admin token", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(State(app): State<Arc<App>>, _: Admin) -> Result<Json<CollectionList>, ApiError> {
    count(&app);
    let mut collections = vec![];
    for c in app.collections.list() {
        let s = c.storage.stats().await?;
        collections.push(CollectionInfo {
            name: c.name.clone(),
            faces: s.faces,
            labels: s.labels,
            images: s.images,
            created: c.created,
        });
    }
    Ok(Json(CollectionList { collections }))
}

/// A deleted collection.
#[derive(Serialize, ToSchema)]
pub struct CollectionDeleted {
    pub deleted: String,
    /// The faces it had.
    pub faces: u64,
}

/// Delete a collection with its faces, photos and key.
///
/// `default` cannot be deleted.
#[utoipa::path(delete, operation_id = "collections_delete", path = "/api/v1/collections/{name}", tag = "collections",
    params(("name" = String, Path, description = "the collection", pattern = "^[a-z0-9][a-z0-9_-]{0,47}$")),
    responses(
        (status = 200, description = "deleted", body = CollectionDeleted),
        (status = 400, description = "a bad name, or `default`", body = ErrorBody),
        (status = 401, description = "no or a wrong token", body = ErrorBody),
        (status = 403, description = "not the admin token", body = ErrorBody),
        (status = 404, description = "no such collection", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(
    State(app): State<Arc<App>>,
    _: Admin,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<CollectionDeleted>, ApiError> {
    count(&app);
    check_name(&name).map_err(bad)?;
    let faces = match app.collections.get(&name) {
        Some(c) => c.storage.stats().await?.faces,
        None => 0,
    };
    if !app.collections.delete(&name).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no collection named '{name}'"),
        ));
    }
    Ok(Json(CollectionDeleted {
        deleted: name,
        faces,
    }))
}
