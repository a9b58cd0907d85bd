//! Bearer-token authentication as extractors: a handler that takes
//! [`CanWrite`] changes faces, one that takes [`CanRead`] returns faces,
//! embeddings, photos or search results. With a token configured both need
//! it (`--public-read` opens the reads again, explicitly); without one the
//! server is open, as a local tool.
//!
//! A missing token is 401 with `WWW-Authenticate: Bearer realm="faceall"`,
//! a wrong one 401 with `error="invalid_token"` (RFC 6750). Failed attempts
//! are counted per client address: after [`MAX_FAILURES`] in
//! [`FAILURE_WINDOW`] that address gets 429 with Retry-After until the
//! window has passed, so a token cannot be guessed at network speed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};

use super::error::ApiError;
use super::App;

/// Failed attempts an address may make per window.
pub const MAX_FAILURES: u32 = 10;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most (older windows are dropped first).
const MAX_TRACKED: usize = 100_000;

/// Who may do what.
pub struct Auth {
    token: Option<String>,
    public_read: bool,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Auth {
    pub fn new(token: Option<String>, public_read: bool) -> Self {
        Auth {
            token: token.filter(|t| !t.is_empty()),
            public_read,
            failures: Mutex::new(HashMap::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.token.is_some()
    }

    fn check(&self, parts: &Parts, write: bool) -> Result<(), ApiError> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        if !write && self.public_read {
            return Ok(());
        }
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        if let Some(ip) = ip {
            self.refuse_if_blocked(ip)?;
        }
        let given = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let (ok, challenge, msg) = match given {
            Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => (true, "", ""),
            Some(_) => (
                false,
                r#"Bearer realm="faceall", error="invalid_token""#,
                "wrong token",
            ),
            None => (
                false,
                r#"Bearer realm="faceall""#,
                "this server needs 'Authorization: Bearer TOKEN'",
            ),
        };
        if ok {
            return Ok(());
        }
        if let (Some(ip), Some(_)) = (ip, given) {
            self.count_failure(ip);
        }
        Err(ApiError::new(StatusCode::UNAUTHORIZED, msg).with_header(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        ))
    }

    fn refuse_if_blocked(&self, ip: IpAddr) -> Result<(), ApiError> {
        let f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((n, since)) = f.get(&ip) {
            let age = since.elapsed();
            if *n >= MAX_FAILURES && age < FAILURE_WINDOW {
                let wait = (FAILURE_WINDOW - age).as_secs().max(1);
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("too many wrong tokens from this address; try again in {wait} s"),
                )
                .with_retry_after(wait as u32));
            }
        }
        Ok(())
    }

    fn count_failure(&self, ip: IpAddr) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if f.len() >= MAX_TRACKED {
            f.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
        }
        let e = f.entry(ip).or_insert((0, Instant::now()));
        if e.1.elapsed() >= FAILURE_WINDOW {
            *e = (0, Instant::now());
        }
        e.0 += 1;
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The request may read faces, embeddings, photos and search results.
pub struct CanRead;
/// The request may change faces.
pub struct CanWrite;

impl FromRequestParts<Arc<App>> for CanRead {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        app.auth.check(parts, false).map(|_| CanRead)
    }
}

impl FromRequestParts<Arc<App>> for CanWrite {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        app.auth.check(parts, true).map(|_| CanWrite)
    }
}
