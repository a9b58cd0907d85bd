//! The HTTP API, one module per resource; `router` assembles them.

pub mod analyse;
pub mod collections;
pub mod faces;
pub mod schema;
pub mod search;
pub mod subjects;
pub mod system;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use super::error::ApiError;
use super::{pages, App, MAX_BODY_BYTES};

/// JSON bodies of `POST /api/v1/faces/embeddings`: 10,000 x 512 numbers
/// written with 9 significant digits are about 60 MB.
pub const MAX_EMBEDDINGS_BODY_BYTES: usize = 96 * 1024 * 1024;

/// Every API route with its OpenAPI description: a handler is routed only
/// through `routes!`, which takes its path and method from its
/// `#[utoipa::path]`, so the document and the router cannot disagree.
pub fn api() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::with_openapi(crate::serve::openapi::base())
        .routes(routes!(system::openapi))
        .routes(routes!(system::health))
        .routes(routes!(system::stats))
        .routes(routes!(faces::list, faces::register).layer(photo_body()))
        .routes(routes!(faces::register_urls))
        .routes(
            routes!(faces::add_embeddings).layer(DefaultBodyLimit::max(MAX_EMBEDDINGS_BODY_BYTES)),
        )
        .routes(routes!(faces::get, faces::delete))
        .routes(routes!(faces::image))
        .routes(routes!(search::photo).layer(photo_body()))
        .routes(routes!(search::embeddings))
        .routes(routes!(analyse::verify).layer(photo_body()))
        .routes(routes!(analyse::detect).layer(photo_body()))
        .routes(routes!(analyse::embed).layer(photo_body()))
        .routes(routes!(collections::list, collections::create))
        .routes(routes!(collections::delete))
        .routes(routes!(subjects::list))
        .routes(routes!(subjects::faces, subjects::rename, subjects::delete))
        .routes(routes!(crate::serve::metrics::scrape))
}

pub fn router(app: Arc<App>, limits: crate::serve::listen::Limits) -> Router {
    let (api, _) = api().split_for_parts();
    api
        // The pages (HTML, not part of the API document).
        .route("/", get(pages::index))
        .route("/register", get(pages::register))
        .route("/retrieve", get(pages::retrieve))
        .route("/gallery", get(pages::gallery))
        // Inside routing, so the matched route template is known.
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            crate::serve::metrics::track,
        ))
        .route_layer(axum::middleware::from_fn(crate::serve::log::record_route))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "this route does not take that method",
            )
        })
        .layer(axum::middleware::from_fn(move |req, next| {
            crate::serve::listen::deadline(limits.request_timeout, req, next)
        }))
        .layer(axum::middleware::map_response(security_headers))
        .layer(axum::middleware::from_fn(crate::serve::log::requests))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(app)
}

/// The body limit of routes that take photos (as a form or as base64).
fn photo_body() -> DefaultBodyLimit {
    DefaultBodyLimit::max(crate::serve::form::MAX_PHOTO_BODY_BYTES)
}

/// A JSON body, with extractor rejections answered as JSON errors.
pub fn json_body<T>(
    body: Result<axum::Json<T>, axum::extract::rejection::JsonRejection>,
) -> Result<T, ApiError> {
    body.map(|axum::Json(b)| b)
        .map_err(|e| ApiError::new(e.status(), e.body_text()))
}

/// An embedding from a client, checked and L2-normalised (the server
/// stores and searches normalised vectors, as the model's own).
pub fn client_embedding(v: Vec<f32>, dim: usize, what: &str) -> Result<Vec<f32>, ApiError> {
    if v.len() != dim {
        return Err(super::error::bad(format!(
            "{what}: {} numbers, this server's model gives {dim}",
            v.len()
        )));
    }
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(super::error::bad(format!(
            "{what}: number {i} is not finite"
        )));
    }
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if !(n.is_finite() && n > 1e-12) {
        return Err(super::error::bad(format!(
            "{what}: a zero vector has no direction"
        )));
    }
    Ok(v.into_iter().map(|x| x / n).collect())
}

/// Headers on every response: no MIME sniffing, no framing, no referrer;
/// the pages may load only their own scripts, styles and the photos the
/// user picked (blob:) or the server stores.
async fn security_headers(mut r: axum::response::Response) -> axum::response::Response {
    use axum::http::{header, HeaderValue};
    let h = r.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; \
             img-src 'self' blob: data:; connect-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    r
}
