//! The HTTP listener, with the limits every public server needs: at most
//! `max_connections` open connections, and at most `max_connections_per_ip`
//! from one client address so one client's idle sockets cannot take all of
//! them (more are closed at accept, before they cost anything), a deadline for a request's headers (which also
//! closes idle keep-alive connections), and a deadline for the whole
//! request, body included (JSON 408). Accept errors such as running out of
//! file descriptors back off instead of spinning or failing the server.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use super::error::ApiError;

/// Connection and time limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    /// Open connections from one client address at most.
    pub max_connections_per_ip: usize,
    /// From the connection (or the previous response) to a complete header.
    pub header_timeout: Duration,
    /// From the header to the response, body upload included.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_connections_per_ip: 256,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(120),
        }
    }
}

/// The whole-request deadline, as a middleware.
pub async fn deadline(limit: Duration, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request took longer than {} s (upload and processing)",
                limit.as_secs()
            ),
        )
        .into_response(),
    }
}

/// Open connections per client address.
#[derive(Default)]
struct PerIp(Mutex<HashMap<IpAddr, usize>>);

/// One open connection of an address; counted down on drop.
struct Open(Arc<PerIp>, IpAddr);

impl PerIp {
    fn open(me: &Arc<PerIp>, ip: IpAddr, max: usize) -> Option<Open> {
        let mut m = me.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max.max(1) {
            return None;
        }
        *n += 1;
        Some(Open(me.clone(), ip))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let mut m = self.0 .0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

/// Serve `app` on `listener` until `shutdown`, then let open requests finish.
pub async fn run(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let per_ip = Arc::new(PerIp::default());
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true)
        .max_buf_size(64 * 1024);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE / ENFILE / ECONNABORTED: wait for descriptors to free up.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream); // over the cap: closed at once
            continue;
        };
        let Some(mine) = PerIp::open(&per_ip, addr.ip(), limits.max_connections_per_ip) else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = app.clone();
        let svc =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(addr));
                router.clone().oneshot(req)
            });
        let conn = builder.serve_connection(TokioIo::new(stream), svc);
        let watched = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = watched.await;
            drop(mine);
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {},
        _ = tokio::time::sleep(Duration::from_secs(30)) => {},
    }
    Ok(())
}
