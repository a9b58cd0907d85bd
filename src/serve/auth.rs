//! Bearer-token authentication as extractors: a handler that takes
//! [`WriteIn`] changes the faces of a collection, one that takes
//! [`ReadIn`] returns its faces, photos or search results, [`CanRead`]
//! uses the models only and [`Admin`] manages collections. With a token
//! configured (`--token`, the admin token) every one needs a credential:
//! the admin token works everywhere, a collection's key (see
//! `storage::collections`) in its own collection only, 403 elsewhere.
//! `--public-read` opens the reads again, explicitly; without a token the
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

use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};

use super::error::{bad, ApiError};
use super::form::MAX_PHOTO_BODY_BYTES;
use super::storage::collections::{check_name, Collection, Collections, DEFAULT};
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

    /// Who the request is: no token configured (open), the admin token, or
    /// a collection's key; 401 for anything else, 429 for an address that
    /// guessed too often.
    fn grant(&self, parts: &Parts, collections: &Collections) -> Result<Grant, ApiError> {
        let Some(token) = &self.token else {
            return Ok(Grant::Open);
        };
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
        let (challenge, msg) = match given {
            Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => return Ok(Grant::Admin),
            Some(g) => match collections.by_key(g) {
                Some(name) => return Ok(Grant::Collection(name)),
                None => (
                    r#"Bearer realm="faceall", error="invalid_token""#,
                    "wrong token",
                ),
            },
            None => (
                r#"Bearer realm="faceall""#,
                "this server needs 'Authorization: Bearer TOKEN'",
            ),
        };
        if let (Some(ip), Some(_)) = (ip, given) {
            self.count_failure(ip);
        }
        Err(ApiError::new(StatusCode::UNAUTHORIZED, msg).with_header(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        ))
    }

    /// The collection a face request names (`?collection=`, default
    /// `default`), if the request may use it: a collection's key only its
    /// own (403 elsewhere), the admin token and an open server any; 404
    /// for a collection that does not exist.
    fn collection(
        &self,
        parts: &Parts,
        app: &App,
        write: bool,
    ) -> Result<Arc<Collection>, ApiError> {
        let name = collection_param(parts)?;
        let grant = if !write && self.public_read {
            Grant::Open
        } else {
            self.grant(parts, &app.collections)?
        };
        if let Grant::Collection(own) = &grant {
            if *own != name {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("this key is for collection '{own}', not '{name}'"),
                ));
            }
        }
        app.collections.get(&name).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no collection named '{name}'"),
            )
        })
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

/// Who sent a request.
enum Grant {
    /// The server has no token.
    Open,
    Admin,
    /// A collection's key.
    Collection(String),
}

/// `?collection=NAME` of a request, checked; `default` when absent.
fn collection_param(parts: &Parts) -> Result<String, ApiError> {
    let q = parts.uri.query().unwrap_or("");
    let mut name = None;
    for (k, v) in form_urlencoded::parse(q.as_bytes()) {
        if k == "collection" {
            if name.is_some() {
                return Err(bad("give ?collection= once"));
            }
            name = Some(v.into_owned());
        }
    }
    let name = name.unwrap_or_else(|| DEFAULT.to_string());
    check_name(&name).map_err(bad)?;
    Ok(name)
}

/// The request may read the faces, photos and search results of this
/// collection.
pub struct ReadIn(pub Arc<Collection>);
/// The request may change the faces of this collection.
pub struct WriteIn(pub Arc<Collection>);
/// The request may use the models (detect, embed): any valid credential.
pub struct CanRead;
/// The admin token (or an open server): collections, metrics.
pub struct Admin;

impl FromRequestParts<Arc<App>> for ReadIn {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        app.auth.collection(parts, app, false).map(ReadIn)
    }
}

impl FromRequestParts<Arc<App>> for WriteIn {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        app.auth.collection(parts, app, true).map(WriteIn)
    }
}

impl FromRequestParts<Arc<App>> for CanRead {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        if app.auth.public_read {
            return Ok(CanRead);
        }
        app.auth.grant(parts, &app.collections).map(|_| CanRead)
    }
}

impl FromRequestParts<Arc<App>> for Admin {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        match app.auth.grant(parts, &app.collections)? {
            Grant::Open | Grant::Admin => Ok(Admin),
            Grant::Collection(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "this needs the server's admin token; a collection's key works in its collection only",
            )),
        }
    }
}

/// A photo route's authentication, answered only once the upload has
/// been read: a server that answers 401 and closes while the client is
/// still sending makes the client see a reset instead of the answer (the
/// kernel drops the unread bytes with a RST). The body is read to the
/// photo routes' limit and dropped.
pub async fn after_upload<T>(
    auth: Result<T, ApiError>,
    req: Request,
) -> Result<(T, Request), ApiError> {
    match auth {
        Ok(a) => Ok((a, req)),
        Err(e) => {
            let _ = axum::body::to_bytes(req.into_body(), MAX_PHOTO_BODY_BYTES).await;
            Err(e)
        }
    }
}
