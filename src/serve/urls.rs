//! Fetching photos by URL for `POST /api/v1/faces/urls`, only from hosts on
//! the allow-list (`--allow-url-host`, none by default), so the server cannot
//! be made to reach internal addresses. http and https, through reqwest
//! (rustls, the Mozilla root certificates, plus `--url-ca-file` for an
//! operator's own CA); no proxy from the environment.
//!
//! Against the ways a URL list can be abused:
//! - a URL is parsed and refused when it holds spaces or control characters
//!   (`\r\n` would inject headers or whole requests into the allowed host),
//!   credentials, or a scheme other than http/https;
//! - the host must be on the list, and so must every redirect's (at most 3);
//! - names are resolved by our resolver, which drops loopback, private and
//!   link-local addresses unless that address itself is on the list, and
//!   the connection goes to an address it returned (DNS rebinding cannot
//!   lead inside);
//! - one deadline and one byte budget cover all URLs of a request, fetched
//!   [`CONCURRENCY`] at a time: a host dripping a byte every few seconds,
//!   or forty 20 MB answers, cannot hold or fill the server.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use tokio::time::Instant;

/// URLs fetched at once.
pub const CONCURRENCY: usize = 4;
/// Redirects followed at most (each to an allowed host).
const MAX_REDIRECTS: usize = 3;

/// What all URLs of one request may use together.
pub struct Budget {
    pub deadline: Instant,
    bytes_left: AtomicUsize,
}

const TIME_RAN_OUT: &str = "the request's time for fetching URLs ran out";

impl Budget {
    pub fn new(total: Duration, bytes: usize) -> Self {
        Budget {
            deadline: Instant::now() + total,
            bytes_left: AtomicUsize::new(bytes),
        }
    }

    /// Take n bytes from the budget.
    fn take(&self, n: usize) -> Result<(), String> {
        self.bytes_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(n)
            })
            .map(|_| ())
            .map_err(|_| "the request's URLs together are larger than the server accepts".into())
    }

    fn left(&self) -> usize {
        self.bytes_left.load(Ordering::SeqCst)
    }
}

/// The allow-list, lower-cased.
#[derive(Clone)]
struct Allow(Arc<Vec<String>>);

impl Allow {
    fn has(&self, host: &str) -> bool {
        let h = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        self.0.contains(&h)
    }

    fn list(&self) -> String {
        if self.0.is_empty() {
            "none".into()
        } else {
            self.0.join(", ")
        }
    }
}

/// Resolves allowed names and keeps only addresses outside the machine's
/// networks, unless the address itself is allowed.
struct Guard(Allow);

impl Resolve for Guard {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| format!("cannot resolve {host}: {e}"))?
                .collect();
            let ok: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| !internal(a.ip()) || allow.has(&a.ip().to_string()))
                .collect();
            if ok.is_empty() {
                return Err(format!(
                    "host '{host}' resolves to an internal address; allow that address itself to fetch from it"
                )
                .into());
            }
            let addrs: Addrs = Box::new(ok.into_iter());
            Ok(addrs)
        })
    }
}

/// The URL client, built once.
pub struct Fetcher {
    client: reqwest::Client,
    allow: Allow,
}

impl Fetcher {
    /// `ca_file`: PEM certificates trusted besides the public roots.
    pub fn new(allow: &[String], ca_file: Option<&std::path::Path>) -> Result<Self, String> {
        let allow = Allow(Arc::new(
            allow
                .iter()
                .map(|a| {
                    a.trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_ascii_lowercase()
                })
                .collect(),
        ));
        let policy_allow = allow.clone();
        let policy = reqwest::redirect::Policy::custom(move |a| {
            if a.previous().len() >= MAX_REDIRECTS {
                return a.error(format!("more than {MAX_REDIRECTS} redirects"));
            }
            match check(a.url(), &policy_allow) {
                Ok(()) => a.follow(),
                Err(e) => {
                    let msg = format!("redirect to {}: {e}", a.url());
                    a.error(msg)
                }
            }
        });
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .redirect(policy)
            .dns_resolver(Arc::new(Guard(allow.clone())))
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("faceall/", env!("CARGO_PKG_VERSION")))
            .http1_only();
        if let Some(p) = ca_file {
            let pem = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("{}: {e}", p.display()))?;
            if certs.is_empty() {
                return Err(format!("{}: no PEM certificate in it", p.display()));
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let client = b
            .build()
            .map_err(|e| format!("cannot build the URL client: {e}"))?;
        Ok(Fetcher { client, allow })
    }

    /// Fetch every URL (at most CONCURRENCY at a time), in order.
    pub async fn fetch_all(
        &self,
        urls: &[String],
        budget: &Budget,
    ) -> Vec<Result<Vec<u8>, String>> {
        futures_util::stream::iter(urls.iter().cloned())
            .map(|u: String| async move {
                match tokio::time::timeout_at(budget.deadline, self.fetch(&u, budget)).await {
                    Ok(r) => r,
                    Err(_) => Err(TIME_RAN_OUT.into()),
                }
            })
            .buffered(CONCURRENCY)
            .collect()
            .await
    }

    /// The body of `url`, or why not.
    pub async fn fetch(&self, url: &str, budget: &Budget) -> Result<Vec<u8>, String> {
        if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err("the URL holds spaces or control characters".into());
        }
        let u = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        check(&u, &self.allow)?;
        let mut resp = self
            .client
            .get(u)
            .header(reqwest::header::ACCEPT, "image/jpeg, image/png")
            .send()
            .await
            .map_err(describe)?;
        let status = resp.status();
        if status != reqwest::StatusCode::OK {
            return Err(format!("HTTP {}", status.as_u16()));
        }
        if resp
            .content_length()
            .is_some_and(|n| n > budget.left() as u64)
        {
            return Err("the request's URLs together are larger than the server accepts".into());
        }
        let mut buf = vec![];
        while let Some(chunk) = resp.chunk().await.map_err(describe)? {
            budget.take(chunk.len())?;
            buf.extend_from_slice(&chunk);
        }
        Ok(buf)
    }
}

/// Scheme, credentials, host and port of a URL (or a redirect's target).
fn check(u: &reqwest::Url, allow: &Allow) -> Result<(), String> {
    match u.scheme() {
        "http" | "https" => {}
        s => return Err(format!("'{s}:' URLs are not fetched; use http or https")),
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err("credentials in URLs are not accepted".into());
    }
    let host = u
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or("no host in the URL")?;
    if !allow.has(host) {
        return Err(format!(
            "host '{host}' is not allowed (the server allows: {})",
            allow.list()
        ));
    }
    if u.port() == Some(0) {
        return Err("bad port".into());
    }
    Ok(())
}

/// reqwest's error with its causes (the TLS or DNS reason is in there),
/// without the URL (the client sent it).
fn describe(e: reqwest::Error) -> String {
    if e.is_timeout() {
        return TIME_RAN_OUT.into();
    }
    let connect = e.is_connect();
    let mut msg = String::new();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
    while let Some(s) = src {
        let t = s.to_string();
        if !msg.contains(&t) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(&t);
        }
        src = s.source();
    }
    if msg.is_empty() {
        msg = e.without_url().to_string();
    }
    if connect {
        format!("cannot connect: {msg}")
    } else {
        msg
    }
}

fn internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => {
            v.is_loopback()
                || v.is_private()
                || v.is_link_local()
                || v.is_unspecified()
                || v.is_broadcast()
                || v.is_multicast()
                || v.octets()[0] == 100 && (v.octets()[1] & 0xC0) == 64 // CGNAT
        }
        IpAddr::V6(v) => {
            v.is_loopback()
                || v.is_unspecified()
                || v.is_multicast()
                || (v.segments()[0] & 0xFE00) == 0xFC00 // unique local
                || (v.segments()[0] & 0xFFC0) == 0xFE80 // link local
                || v.to_ipv4_mapped().is_some_and(|m| internal(IpAddr::V4(m)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget() -> Budget {
        Budget::new(Duration::from_secs(5), 1000)
    }

    #[tokio::test]
    async fn refuses_hosts_off_the_list_other_schemes_and_injections() {
        let f = Fetcher::new(&["images.example".into(), "127.0.0.1".into()], None).unwrap();
        let b = budget();
        let err = |u: &'static str| {
            let (f, b) = (&f, &b);
            async move { f.fetch(u, b).await.unwrap_err() }
        };
        assert!(err("http://169.254.169.254/latest")
            .await
            .contains("not allowed"));
        assert!(err("file:///etc/passwd")
            .await
            .contains("use http or https"));
        assert!(err("http://user@images.example/x")
            .await
            .contains("credentials"));
        assert!(err("http://IMAGES.example:0/x").await.contains("port"));
        for bad in [
            "http://127.0.0.1/a\r\nHost: evil\r\n\r\nGET /admin",
            "http://127.0.0.1/a b",
            "http://127.0.0.1/\u{7f}",
        ] {
            assert!(
                f.fetch(bad, &b).await.unwrap_err().contains("control"),
                "{bad:?}"
            );
        }
        let none = Fetcher::new(&[], None).unwrap();
        assert!(none
            .fetch("http://localhost/x", &b)
            .await
            .unwrap_err()
            .contains("allows: none"));
        // A name that resolves inside is refused; the literal address is the operator's call.
        let local = Fetcher::new(&["localhost".into()], None).unwrap();
        let e = local.fetch("http://localhost:9/x", &b).await.unwrap_err();
        assert!(e.contains("internal"), "{e}");
    }

    #[test]
    fn the_byte_budget_is_shared() {
        let b = Budget::new(Duration::from_secs(5), 10);
        assert!(b.take(6).is_ok());
        assert!(b.take(6).is_err());
        assert!(b.take(4).is_ok());
    }
}
