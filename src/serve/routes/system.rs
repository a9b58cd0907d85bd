//! Health, stats and the OpenAPI document.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::schema::{CollectionParam, ErrorBody};
use crate::serve::auth::ReadIn;
use crate::serve::error::ApiError;
use crate::serve::{count, App};

/// A healthy server.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: &'static str,
    /// `embedded` or `postgres`.
    pub backend: &'static str,
}

/// Liveness and readiness: the store must answer too.
///
/// A server whose database is gone is not healthy (503). No token needed.
#[utoipa::path(get, operation_id = "system_health", path = "/api/v1/health", tag = "system",
    responses(
        (status = 200, description = "healthy", body = Health),
        (status = 503, description = "the store does not answer", body = ErrorBody)))]
pub async fn health(State(app): State<Arc<App>>) -> Result<Json<Health>, ApiError> {
    count(&app);
    let c = app.collections.default_collection()?;
    c.storage.stats().await?;
    Ok(Json(Health {
        status: "ok",
        backend: c.storage.backend(),
    }))
}

/// The counts of a collection and the server's own.
#[derive(Serialize, ToSchema)]
pub struct Stats {
    pub faces: u64,
    pub labels: u64,
    pub images: u64,
    /// Faces in the nearest-neighbour index (equal to `faces` when
    /// healthy).
    pub indexed: u64,
    /// Faces searched exactly beside the graph until the background
    /// inserts them (after a restart, or during a save).
    pub index_waiting: u64,
    pub collection: String,
    /// Collections on this server.
    pub collections: usize,
    /// `embedded` or `postgres`.
    pub backend: &'static str,
    /// The server's default threshold (Euclidean distance).
    pub threshold: f32,
    /// The model's name.
    pub model: String,
    pub uptime_seconds: u64,
    /// Requests since the start.
    pub requests: u64,
    /// Whether a token is required.
    pub auth: bool,
    /// Photos run through detection and embedding since the start.
    pub detect_embed_calls: u64,
    /// Their mean time.
    pub detect_embed_ms_mean: f64,
    /// FaceNet calls since the start; each embeds up to 8 faces, gathered
    /// across the photos of a request and across concurrent requests.
    pub embed_calls: u64,
    /// Faces those calls embedded.
    pub faces_embedded: u64,
}

/// Counts (faces, labels, images, indexed, index_waiting), threshold,
/// model, uptime.
#[utoipa::path(get, operation_id = "system_stats", path = "/api/v1/stats", tag = "system", params(CollectionParam),
    responses(
        (status = 200, description = "the counts", body = Stats),
        (status = 401, description = "no or a wrong token (unless --public-read)", body = ErrorBody),
        (status = 403, description = "another collection's key", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn stats(
    State(app): State<Arc<App>>,
    ReadIn(coll): ReadIn,
) -> Result<Json<Stats>, ApiError> {
    count(&app);
    let s = coll.storage.stats().await?;
    let calls = app.pipeline_calls.load(Ordering::Relaxed);
    let (embed_calls, faces_embedded) = app.pipe.embed_counts();
    let mean_ms = app.pipeline_ns.load(Ordering::Relaxed) as f64 / calls.max(1) as f64 / 1e6;
    Ok(Json(Stats {
        faces: s.faces,
        labels: s.labels,
        images: s.images,
        indexed: s.indexed,
        index_waiting: s.waiting,
        collection: coll.name.clone(),
        collections: app.collections.list().len(),
        backend: coll.storage.backend(),
        threshold: app.threshold,
        model: app.model.clone(),
        uptime_seconds: app.started.elapsed().as_secs(),
        requests: app.requests.load(Ordering::Relaxed),
        auth: app.auth.enabled(),
        detect_embed_calls: calls,
        detect_embed_ms_mean: mean_ms,
        embed_calls,
        faces_embedded,
    }))
}

/// This document (OpenAPI 3.1, generated from the handlers' types).
#[utoipa::path(get, operation_id = "system_openapi", path = "/api/v1/openapi.json", tag = "system",
    responses((status = 200, description = "the OpenAPI document", content_type = "application/json", body = serde_json::Value)))]
pub async fn openapi() -> Json<&'static serde_json::Value> {
    Json(crate::serve::openapi::document())
}
