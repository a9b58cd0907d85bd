//! Fetching photos by URL for `POST /api/v1/faces/urls`, only from hosts on
//! the allow-list (`--allow-url-host`, none by default), so the server cannot
//! be made to reach internal addresses. Plain `http://` (no TLS client is
//! linked: https URLs get a clear per-URL error) with no redirects (a
//! redirect could leave the list).
//!
//! Against the ways a URL list can be abused:
//! - a URL is parsed and refused when it holds spaces or control characters
//!   (`\r\n` would inject headers or whole requests into the allowed host);
//! - the host name is resolved once and the connection goes to that address;
//!   a name that resolves to a loopback, private or link-local address is
//!   refused unless that address itself is on the list (DNS rebinding);
//! - one deadline ([`Budget::deadline`]) and one byte budget cover all URLs
//!   of a request, fetched a few at a time: a host dripping a byte every few
//!   seconds, or forty 20 MB answers, cannot hold or fill the server.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// URLs fetched at once.
pub const CONCURRENCY: usize = 4;

/// What all URLs of one request may use together.
pub struct Budget {
    pub deadline: Instant,
    bytes_left: AtomicUsize,
}

impl Budget {
    pub fn new(total: Duration, bytes: usize) -> Self {
        Budget {
            deadline: Instant::now() + total,
            bytes_left: AtomicUsize::new(bytes),
        }
    }

    fn remaining(&self) -> Result<Duration, String> {
        self.deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| "the request's time for fetching URLs ran out".to_string())
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
}

/// Fetch every URL (at most CONCURRENCY at a time), in order.
pub fn fetch_all(
    urls: &[String],
    allow: &[String],
    budget: &Budget,
) -> Vec<Result<Vec<u8>, String>> {
    let mut out: Vec<Result<Vec<u8>, String>> = Vec::with_capacity(urls.len());
    for chunk in urls.chunks(CONCURRENCY) {
        let got: Vec<Result<Vec<u8>, String>> = std::thread::scope(|s| {
            let hs: Vec<_> = chunk
                .iter()
                .map(|u| s.spawn(move || fetch(u, allow, budget)))
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err("fetch failed".into())))
                .collect()
        });
        out.extend(got);
    }
    out
}

struct Parsed<'a> {
    host: &'a str,
    port: u16,
    hostport: &'a str,
    path: &'a str,
}

fn parse(url: &str) -> Result<Parsed<'_>, String> {
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("the URL holds spaces or control characters".into());
    }
    let rest = match url.strip_prefix("http://") {
        Some(r) => r,
        None if url.starts_with("https://") => {
            return Err("https is not supported by this server's fetcher; use http".into())
        }
        None => return Err("not an http:// URL".into()),
    };
    let (hostport, path) = match rest.find(['/', '?', '#']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], &rest[i..]),
        Some(i) => (&rest[..i], "/"),
        None => (rest, "/"),
    };
    let path = path.split('#').next().unwrap_or("/");
    if hostport.contains('@') {
        return Err("credentials in URLs are not accepted".into());
    }
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.contains(']') || h.ends_with(']') => {
            (h, p.parse::<u16>().map_err(|_| "bad port".to_string())?)
        }
        _ => (hostport, 80),
    };
    if host.is_empty() || port == 0 {
        return Err("no host in the URL".into());
    }
    Ok(Parsed {
        host,
        port,
        hostport,
        path,
    })
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

/// The body of `url`, or why not.
pub fn fetch(url: &str, allow: &[String], budget: &Budget) -> Result<Vec<u8>, String> {
    let u = parse(url)?;
    let host_lc = u.host.to_ascii_lowercase();
    if !allow.iter().any(|a| a.eq_ignore_ascii_case(&host_lc)) {
        return Err(format!(
            "host '{}' is not allowed (the server allows: {})",
            u.host,
            if allow.is_empty() {
                "none".to_string()
            } else {
                allow.join(", ")
            }
        ));
    }
    let bare = u.host.trim_start_matches('[').trim_end_matches(']');
    let literal = bare.parse::<IpAddr>().ok();
    let addr: SocketAddr = (bare, u.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", u.host))?
        .next()
        .ok_or_else(|| format!("cannot resolve {}", u.host))?;
    // An allowed name must not lead inside: only an allowed literal address may.
    if literal.is_none() && internal(addr.ip()) {
        return Err(format!(
            "host '{}' resolves to an internal address; allow that address itself to fetch from it",
            u.host
        ));
    }
    let mut s = TcpStream::connect_timeout(&addr, budget.remaining()?.min(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(budget.remaining()?))
        .map_err(|e| e.to_string())?;
    // One write: a server may answer and close after the first packet.
    let req = format!(
        "GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: faceall\r\nAccept: image/*\r\n\r\n",
        u.path, u.hostport
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut buf = vec![];
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        // The deadline counts whole: each read gets only what is left.
        s.set_read_timeout(Some(budget.remaining()?))
            .map_err(|e| e.to_string())?;
        let n = match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err("the request's time for fetching URLs ran out".into())
            }
            Err(e) => return Err(e.to_string()),
        };
        budget.take(n)?;
        buf.extend_from_slice(&chunk[..n]);
    }
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP response")?;
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("bad HTTP status line")?;
    if status != 200 {
        return Err(format!("HTTP {status}"));
    }
    Ok(buf.split_off(head_end + 4))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget() -> Budget {
        Budget::new(Duration::from_secs(5), 1000)
    }

    #[test]
    fn refuses_hosts_off_the_list_other_schemes_and_injections() {
        let allow = vec!["images.example".to_string(), "127.0.0.1".to_string()];
        let b = budget();
        assert!(fetch("http://169.254.169.254/latest", &allow, &b)
            .unwrap_err()
            .contains("not allowed"));
        assert!(fetch("http://localhost/x", &[], &b)
            .unwrap_err()
            .contains("allows: none"));
        assert!(fetch("file:///etc/passwd", &allow, &b).is_err());
        assert!(fetch("http://user@images.example/x", &allow, &b).is_err());
        for bad in [
            "http://127.0.0.1/a\r\nHost: evil\r\n\r\nGET /admin",
            "http://127.0.0.1/a b",
            "http://127.0.0.1/\u{7f}",
        ] {
            assert!(
                fetch(bad, &allow, &b).unwrap_err().contains("control"),
                "{bad:?}"
            );
        }
        // A name that resolves inside is refused; the literal address is the operator's call.
        let allow = vec!["localhost".to_string()];
        assert!(fetch("http://localhost:9/x", &allow, &b)
            .unwrap_err()
            .contains("internal"));
    }

    #[test]
    fn parses_ports_queries_and_ipv6() {
        let p = parse("http://h.example:8080/a/b?c=d#frag").unwrap();
        assert_eq!((p.host, p.port, p.path), ("h.example", 8080, "/a/b?c=d"));
        let p = parse("http://[::1]:81/x").unwrap();
        assert_eq!((p.host, p.port), ("[::1]", 81));
        let p = parse("http://h.example?x").unwrap();
        assert_eq!((p.host, p.port, p.path), ("h.example", 80, "/"));
        assert!(parse("http://:80/").is_err());
    }

    #[test]
    fn the_byte_budget_is_shared() {
        let b = Budget::new(Duration::from_secs(5), 10);
        assert!(b.take(6).is_ok());
        assert!(b.take(6).is_err());
        assert!(b.take(4).is_ok());
    }
}
