//! `GET /metrics` in the Prometheus/OpenMetrics text format, through the
//! Prometheus project's own Rust client: requests and their latency per
//! route (the matched route template, never the raw path, so ids and labels
//! do not explode the series), time in detection + embedding per photo, and
//! the gallery's size per collection, read from the stores at scrape time.

use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::auth::Admin;
use super::error::ApiError;
use super::App;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    /// The route template (`/api/v1/faces/{id}`), or `unmatched`.
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CollectionLabel {
    pub collection: String,
}

type PerCollection = Family<CollectionLabel, Gauge<i64, AtomicI64>>;

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RouteLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// Seconds of detection + embedding per photo.
    pub photo_seconds: Histogram,
    faces: PerCollection,
    labels: PerCollection,
    images: PerCollection,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("faceall");
        let requests = Family::<RouteLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by method, route and status",
            requests.clone(),
        );
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from request to response headers, by method, route and status",
            latency.clone(),
        );
        let photo_seconds = latency_histogram();
        registry.register(
            "photo_detect_embed_seconds",
            "Time in face detection and embedding per photo",
            photo_seconds.clone(),
        );
        let faces = PerCollection::default();
        let labels = PerCollection::default();
        let images = PerCollection::default();
        registry.register("gallery_faces", "Registered faces", faces.clone());
        registry.register("gallery_labels", "Registered labels", labels.clone());
        registry.register("gallery_images", "Stored photos", images.clone());
        Metrics {
            registry,
            requests,
            latency,
            photo_seconds,
            faces,
            labels,
            images,
        }
    }
}

/// Middleware: count and time every request by its route template.
pub async fn track(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let t = Instant::now();
    let method = req.method().as_str().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let r = next.run(req).await;
    let labels = RouteLabels {
        method,
        route,
        status: r.status().as_u16(),
    };
    app.metrics.requests.get_or_create(&labels).inc();
    app.metrics
        .latency
        .get_or_create(&labels)
        .observe(t.elapsed().as_secs_f64());
    r
}

/// Prometheus metrics (OpenMetrics text), for the admin token.
///
/// faceall_http_requests_total and faceall_http_request_duration_seconds
/// by method, route template and status; faceall_photo_detect_embed_seconds;
/// faceall_gallery_faces, _labels, _images per collection (the series name
/// every collection, so only the admin token reads them).
#[utoipa::path(get, operation_id = "metrics", path = "/metrics", tag = "system",
    responses(
        (status = 200, description = "the metrics", content_type = "application/openmetrics-text", body = String),
        (status = 401, description = "no or a wrong token", body = crate::serve::routes::schema::ErrorBody),
        (status = 403, description = "not the admin token", body = crate::serve::routes::schema::ErrorBody)),
    security(("bearer" = [])))]
pub async fn scrape(State(app): State<Arc<App>>, _: Admin) -> Result<Response, ApiError> {
    let m = &app.metrics;
    // Deleted collections leave no series behind.
    m.faces.clear();
    m.labels.clear();
    m.images.clear();
    for c in app.collections.list() {
        let s = c.storage.stats().await?;
        let l = CollectionLabel {
            collection: c.name.clone(),
        };
        m.faces.get_or_create(&l).set(s.faces as i64);
        m.labels.get_or_create(&l).set(s.labels as i64);
        m.images.get_or_create(&l).set(s.images as i64);
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &m.registry)
        .map_err(ApiError::internal)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
