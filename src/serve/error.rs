//! One error type for the whole API: every failure is a JSON
//! `{"error": ...}` with its status, mapped in one place. Internal details
//! (paths, OS and database messages) go to the log under a request number
//! and never to the client.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::storage::StoreError;

static ERRORS: AtomicU64 = AtomicU64::new(1);

/// A JSON error with its status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    retry_after: Option<u32>,
    extra_header: Option<(header::HeaderName, header::HeaderValue)>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
            extra_header: None,
        }
    }

    pub fn with_retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn with_header(mut self, name: header::HeaderName, value: header::HeaderValue) -> Self {
        self.extra_header = Some((name, value));
        self
    }

    /// 500: the client learns only that it happened and a number to quote;
    /// the log gets the details.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        let n = ERRORS.fetch_add(1, Ordering::Relaxed);
        tracing::error!(error = n, "{detail}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error (error {n} in the server's log)"),
        )
    }
}

pub fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, msg)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(json!({ "error": self.message }))).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(s));
        }
        if let Some((n, v)) = self.extra_header {
            r.headers_mut().insert(n, v);
        }
        r
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(d) => {
                let n = ERRORS.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = n, "{d}");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the face database is unavailable; try again shortly",
                )
                .with_retry_after(5)
            }
            StoreError::Full(d) => {
                let n = ERRORS.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = n, "{d}");
                ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "the server's storage is full; nothing was stored",
                )
            }
            StoreError::Busy(d) => ApiError::internal(d),
            StoreError::Exists(m) => ApiError::new(StatusCode::CONFLICT, m),
            StoreError::Invalid(m) => bad(m),
            StoreError::Internal(d) => ApiError::internal(d),
        }
    }
}

impl From<crate::error::Error> for ApiError {
    fn from(e: crate::error::Error) -> Self {
        ApiError::internal(e)
    }
}
