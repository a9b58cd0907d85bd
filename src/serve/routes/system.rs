//! Health, stats and the OpenAPI document.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::serve::auth::ReadIn;
use crate::serve::error::ApiResult;
use crate::serve::{count, openapi as doc, App};

/// Liveness and readiness: the store must answer too (a server whose
/// database is gone is not healthy: 503).
pub async fn health(State(app): State<Arc<App>>) -> ApiResult {
    count(&app);
    let c = app.collections.default_collection()?;
    c.storage.stats().await?;
    Ok(Json(
        json!({ "status": "ok", "backend": c.storage.backend() }),
    ))
}

/// The counts of the request's collection and the server's own.
pub async fn stats(State(app): State<Arc<App>>, ReadIn(coll): ReadIn) -> ApiResult {
    count(&app);
    let s = coll.storage.stats().await?;
    let calls = app.pipeline_calls.load(Ordering::Relaxed).max(1);
    let mean_ms = app.pipeline_ns.load(Ordering::Relaxed) as f64 / calls as f64 / 1e6;
    Ok(Json(json!({
        "faces": s.faces,
        "labels": s.labels,
        "images": s.images,
        "indexed": s.indexed,
        "index_waiting": s.waiting,
        "collection": coll.name,
        "collections": app.collections.list().len(),
        "backend": coll.storage.backend(),
        "threshold": app.threshold,
        "model": app.model,
        "uptime_seconds": app.started.elapsed().as_secs(),
        "requests": app.requests.load(Ordering::Relaxed),
        "auth": app.auth.enabled(),
        "detect_embed_calls": app.pipeline_calls.load(Ordering::Relaxed),
        "detect_embed_ms_mean": mean_ms,
    })))
}

pub async fn openapi() -> Json<Value> {
    Json(doc::document())
}
