//! `faceall serve`'s log: `tracing` events on stderr, as text or as JSON
//! lines (`--log-format json`, one object per event, for log shippers),
//! filtered by `FACEALL_LOG` (`info` by default; e.g. `warn`, `debug`).
//!
//! Every request gets an id: the client's `X-Request-Id` when it is a
//! plain token of at most 64 characters (so a proxy's id carries through),
//! else a new one. It is sent back in `X-Request-Id`, and every event
//! logged while the request is handled (its access line, an internal error
//! whose number the client was told) carries it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// How events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Install the subscriber (once per process; later calls do nothing).
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FACEALL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

/// A client's id worth keeping: 1 to 64 of `A-Za-z0-9._-`.
fn acceptable(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    ok.then(|| s.to_string())
}

/// A new id: this process's random prefix and a counter (unique within
/// the process, unpredictable across restarts).
fn new_id() -> String {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let p = PREFIX.get_or_init(|| {
        let mut b = [0u8; 4];
        if getrandom::getrandom(&mut b).is_err() {
            b = (std::process::id()).to_le_bytes();
        }
        u32::from_le_bytes(b)
    });
    format!("{p:08x}-{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The middleware: id, span, access line.
pub async fn requests(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(acceptable)
        .unwrap_or_else(new_id);
    let method = req.method().clone();
    // The route template is filled in once routing has matched one
    // (`record_route`); raw paths hold labels, which are people's names.
    let span = tracing::info_span!(
        "request",
        id = %id,
        method = %method,
        route = tracing::field::Empty
    );
    let t = Instant::now();
    let mut r = next.run(req).instrument(span.clone()).await;
    let status = r.status().as_u16();
    span.in_scope(|| {
        tracing::info!(
            status,
            ms = (t.elapsed().as_secs_f64() * 1e3 * 10.0).round() / 10.0,
            "request"
        )
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        r.headers_mut().insert(X_REQUEST_ID.clone(), v);
    }
    r
}

/// Inside routing: the matched route template into the request's span.
pub async fn record_route(req: Request, next: Next) -> Response {
    if let Some(m) = req.extensions().get::<MatchedPath>() {
        tracing::Span::current().record("route", m.as_str());
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_short_ids_are_kept() {
        let ok = HeaderValue::from_static("abc-123_x.y");
        assert_eq!(acceptable(&ok).as_deref(), Some("abc-123_x.y"));
        for bad in ["", "a b", "a\"b", "<script>", &"x".repeat(65)] {
            let v = HeaderValue::from_str(bad).unwrap();
            assert_eq!(acceptable(&v), None, "{bad:?}");
        }
        assert_ne!(new_id(), new_id());
    }
}
