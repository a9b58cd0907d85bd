//! Fetching photos by URL for `POST /api/v1/faces/urls`, only from hosts on
//! the allow-list (`--allow-url-host`, none by default), so the server cannot
//! be made to reach internal addresses. Plain `http://` with a bounded body,
//! a 10 s timeout and no redirects (a redirect could leave the list).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The body of `url`, or why not.
pub fn fetch(url: &str, allow: &[String], max_bytes: usize) -> Result<Vec<u8>, String> {
    let rest = match url.strip_prefix("http://") {
        Some(r) => r,
        None if url.starts_with("https://") => {
            return Err("https is not supported by this server's fetcher; use http".into())
        }
        None => return Err("not an http:// URL".into()),
    };
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if hostport.contains('@') {
        return Err("credentials in URLs are not accepted".into());
    }
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| "bad port".to_string())?),
        None => (hostport, 80),
    };
    let host_lc = host.to_ascii_lowercase();
    if !allow.iter().any(|a| a.eq_ignore_ascii_case(&host_lc)) {
        return Err(format!(
            "host '{host}' is not allowed (the server allows: {})",
            if allow.is_empty() {
                "none".to_string()
            } else {
                allow.join(", ")
            }
        ));
    }
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("cannot resolve {host}"))?;
    let timeout = Duration::from_secs(10);
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    // One write: a server may answer and close after the first packet.
    let req = format!(
        "GET {path} HTTP/1.0\r\nHost: {hostport}\r\nUser-Agent: faceall\r\nAccept: image/*\r\n\r\n"
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut buf = vec![];
    s.take(max_bytes as u64 + 64 * 1024)
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
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
    let body = buf[head_end + 4..].to_vec();
    if body.len() > max_bytes {
        return Err(format!("larger than {max_bytes} bytes"));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_hosts_off_the_list_and_other_schemes() {
        let allow = vec!["images.example".to_string()];
        assert!(fetch("http://169.254.169.254/latest", &allow, 10)
            .unwrap_err()
            .contains("not allowed"));
        assert!(fetch("http://localhost/x", &[], 10)
            .unwrap_err()
            .contains("allows: none"));
        assert!(fetch("file:///etc/passwd", &allow, 10).is_err());
        assert!(fetch("http://user@images.example/x", &allow, 10).is_err());
    }
}
