//! Collections (admin token): create one (its API key is in the answer,
//! once), list them with their sizes, delete one with all its faces.

use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::json_body;
use crate::serve::auth::Admin;
use crate::serve::error::{bad, ApiError, ApiResult};
use crate::serve::storage::collections::check_name;
use crate::serve::{count, App};

#[derive(Deserialize)]
pub struct NewCollection {
    name: String,
}

/// `POST /api/v1/collections` `{"name": ...}`: 201 with the key.
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
        Json(json!({
            "name": c.name,
            "api_key": key,
            "created": c.created,
            "message": "keep the api_key: it is shown only now (the server stores its hash)",
        })),
    )
        .into_response())
}

/// `GET /api/v1/collections`: every collection with its counts.
pub async fn list(State(app): State<Arc<App>>, _: Admin) -> ApiResult {
    count(&app);
    let mut out = vec![];
    for c in app.collections.list() {
        let s = c.storage.stats().await?;
        out.push(json!({
            "name": c.name,
            "faces": s.faces,
            "labels": s.labels,
            "images": s.images,
            "created": c.created,
        }));
    }
    Ok(Json(json!({ "collections": out })))
}

/// `DELETE /api/v1/collections/{name}`: the collection, its faces and
/// photos, and its key.
pub async fn delete(
    State(app): State<Arc<App>>,
    _: Admin,
    UrlPath(name): UrlPath<String>,
) -> ApiResult {
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
    Ok(Json(json!({ "deleted": name, "faces": faces })))
}
