//! `faceall serve` against hostile clients, through the real binary: reads
//! need the token (and guessing it is slowed down), every error is JSON,
//! pages carry security headers and keep the token out of localStorage,
//! connections are capped and timed out, labels are normalised, the memory
//! budget holds under concurrent decompression bombs, faces per photo are
//! bounded, the URL fetcher speaks https and checks certificates.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{curl, post_json, shared, start, Server, Store};
use serde_json::json;

/// (status, headers lower-cased, body) of a curl call.
fn curl_full(s: &Server, args: &[&str]) -> (u16, String, String) {
    let o = Command::new("curl")
        .args(["-s", "-i", "-m", "60"])
        .arg(format!("{}{}", s.url, args[0]))
        .args(&args[1..])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head.to_lowercase(), body.to_string())
}

#[test]
fn reads_need_the_token_and_guessing_it_is_slowed_down() {
    let store = Store::embedded();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "file-token-42\n").unwrap();
    let s = start(&store, &["--token-file", token_file.to_str().unwrap()]);
    let cmdline = std::fs::read_to_string(format!("/proc/{}/cmdline", s.child.id())).unwrap();
    assert!(
        !cmdline.contains("file-token-42"),
        "token in the process list"
    );
    let auth = "Authorization: Bearer file-token-42";
    let (gallery, _) = common::identity_gallery(2, 512, 1);
    let (code, v) = post_json(
        &s,
        "/api/v1/faces/embeddings",
        &json!({"faces": [{"label": "a", "embedding": gallery[0]}]}),
        Some("file-token-42"),
    );
    assert_eq!(code, 200, "{v}");
    let id = v["ids"][0].as_u64().unwrap();
    let photo = shared().join("images/faces/train/biden/biden.jpg");
    let image_arg = format!("image=@{}", photo.display());
    let face_path = format!("/api/v1/faces/{id}");
    let reads: Vec<Vec<&str>> = vec![
        vec!["/api/v1/faces"],
        vec![&face_path],
        vec!["/api/v1/images/1"],
        vec!["/api/v1/stats"],
        vec!["/api/v1/search", "-X", "POST", "-F", &image_arg],
    ];
    for r in &reads {
        let (code, head, body) = curl_full(&s, r);
        assert_eq!(code, 401, "{r:?} without a token: {code} {body}");
        assert!(head.contains("www-authenticate: bearer"), "{r:?}: {head}");
        assert!(body.contains("\"error\""), "{body}");
        let mut with = r.clone();
        with.extend(["-H", auth]);
        let (code, _, body) = curl_full(&s, &with);
        assert!(
            code == 200 || code == 404,
            "{r:?} with the token: {code} {body}"
        );
    }
    let (code, v) = post_json(
        &s,
        "/api/v1/search/embeddings",
        &json!({"embeddings": [gallery[0]]}),
        None,
    );
    assert_eq!(code, 401, "{v}");
    // A wrong token is 401 invalid_token; many in a row are refused for a while.
    let (code, head, _) = curl_full(&s, &["/api/v1/stats", "-H", "Authorization: Bearer guess"]);
    assert_eq!(code, 401);
    assert!(head.contains("error=\"invalid_token\""), "{head}");
    let mut last = 0;
    for _ in 0..12 {
        last = curl_full(&s, &["/api/v1/stats", "-H", "Authorization: Bearer guess"]).0;
    }
    assert_eq!(last, 429, "guessing is not slowed down");
    let (code, head, _) = curl_full(&s, &["/api/v1/stats", "-H", auth]);
    assert_eq!(code, 429);
    assert!(head.contains("retry-after:"), "{head}");
    assert_eq!(curl(&s, &["/api/v1/health"]).0, 200, "health stays open");
    drop(s);

    // --public-read opens the reads, explicitly; changes still need the token.
    let s = start(&store, &["--token", "t0k", "--public-read"]);
    assert_eq!(curl(&s, &["/api/v1/stats"]).0, 200);
    assert_eq!(curl(&s, &[&face_path]).0, 200);
    assert_eq!(curl(&s, &[&face_path, "-X", "DELETE"]).0, 401);
}

#[test]
fn every_error_is_json_and_pages_are_locked_down() {
    let store = Store::embedded();
    let s = start(&store, &[]);
    let cases: Vec<(&str, Vec<&str>, u16)> = vec![
        ("405", vec!["/api/v1/faces", "-X", "PUT"], 405),
        ("404", vec!["/nope"], 404),
        ("bad query", vec!["/api/v1/faces?limit=abc"], 400),
        (
            "bad multipart",
            vec![
                "/api/v1/search",
                "-X",
                "POST",
                "-H",
                "Content-Type: multipart/form-data; boundary=x",
                "--data-binary",
                "garbage",
            ],
            400,
        ),
        (
            "bad search query",
            vec![
                "/api/v1/search?k=lots",
                "-X",
                "POST",
                "-F",
                "image=@/dev/null",
            ],
            400,
        ),
        (
            "not JSON",
            vec![
                "/api/v1/search/embeddings",
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "-d",
                "{",
            ],
            400,
        ),
    ];
    for (what, args, want) in cases {
        let (code, head, body) = curl_full(&s, &args);
        assert_eq!(code, want, "{what}: {code} {body}");
        assert!(
            head.contains("content-type: application/json"),
            "{what}: {head}"
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {body}"
        );
        assert!(
            !body.contains("/tmp") && !body.contains("/work"),
            "{what}: a path in {body}"
        );
    }
    for page in ["/", "/register", "/retrieve"] {
        let (code, head, body) = curl_full(&s, &[page]);
        assert_eq!(code, 200);
        assert!(head.contains("x-content-type-options: nosniff"), "{head}");
        assert!(head.contains("frame-ancestors 'none'"), "{head}");
        assert!(
            !body.contains("localStorage"),
            "{page} keeps the token in localStorage"
        );
    }
    let (_, stats) = curl(&s, &["/api/v1/stats"]);
    assert!(!stats["model"].as_str().unwrap().contains('/'), "{stats}");
}

#[test]
fn labels_are_normalised_and_hostile_ones_refused() {
    let store = Store::embedded();
    let s = start(&store, &[]);
    let (g, _) = common::identity_gallery(1, 512, 2);
    let add = |label: &str| {
        post_json(
            &s,
            "/api/v1/faces/embeddings",
            &json!({"faces": [{"label": label, "embedding": g[0]}]}),
            None,
        )
    };
    let (code, v) = add("ob\u{200B}ama");
    assert_eq!(code, 200, "{v}");
    let (_, f) = curl(&s, &[&format!("/api/v1/faces/{}", v["ids"][0])]);
    assert_eq!(f["label"], "obama");
    let (code, v) = add("Jose\u{0301}");
    assert_eq!(code, 200);
    let (_, f) = curl(&s, &[&format!("/api/v1/faces/{}", v["ids"][0])]);
    assert_eq!(f["label"], "Jos\u{00E9}", "not NFC");
    for bad in [
        "evil\u{202E}txt.exe",
        "\u{200B}\u{200D}",
        "\u{2067}x",
        &"n".repeat(101),
    ] {
        let (code, v) = add(bad);
        assert_eq!(code, 400, "{bad:?}: {v}");
    }
}

fn read_until_closed(mut c: TcpStream, limit: Duration) -> Option<Duration> {
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 4096];
    while t.elapsed() < limit {
        match c.read(&mut buf) {
            Ok(0) => return Some(t.elapsed()),
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Some(t.elapsed()),
        }
    }
    None
}

#[test]
fn connections_are_capped_and_timed_out() {
    let store = Store::embedded();
    let s = start(&store, &["--header-timeout", "2", "--max-connections", "6"]);
    let addr = s.url.trim_start_matches("http://").to_string();
    // Partial headers, and an idle keep-alive connection, are closed.
    let mut partial = TcpStream::connect(&addr).unwrap();
    partial.write_all(b"GET /api/v1/hea").unwrap();
    let closed = read_until_closed(partial, Duration::from_secs(8));
    assert!(closed.is_some(), "partial headers kept open");
    let mut idle = TcpStream::connect(&addr).unwrap();
    idle.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(
        read_until_closed(idle, Duration::from_secs(8)).is_some(),
        "idle keep-alive kept open"
    );
    // Over the cap, a connection is closed at once; the held ones free it.
    let held: Vec<TcpStream> = (0..6).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = TcpStream::connect(&addr).unwrap();
    let _ = extra.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n");
    let t = read_until_closed(extra, Duration::from_secs(1));
    assert!(t.is_some(), "a 7th connection was served");
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(curl(&s, &["/api/v1/health"]).0, 200);
}

fn write_one_colour_png(path: &Path, side: u32) {
    let row = vec![200u8; side as usize * 3];
    let mut enc = png::Encoder::new(std::fs::File::create(path).unwrap(), side, side);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(png::Compression::Fast);
    let mut w = enc.write_header().unwrap().into_stream_writer().unwrap();
    for _ in 0..side {
        w.write_all(&row).unwrap();
    }
    w.finish().unwrap();
}

fn peak_rss_mb(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// 16 concurrent searches of a 117 KB PNG that decodes to 6000 x 6000:
/// the budget admits them a few at a time (or turns them away with 503),
/// the server stays up and its peak memory stays under 2x the weights plus
/// the budget; an ordinary search still answers meanwhile.
#[test]
fn the_memory_budget_holds_under_decompression_bombs() {
    let store = Store::embedded();
    let s = start(&store, &["--max-memory", "512"]);
    let dir = tempfile::tempdir().unwrap();
    let bomb = dir.path().join("bomb.png");
    write_one_colour_png(&bomb, 6000);
    assert!(std::fs::metadata(&bomb).unwrap().len() < 1_000_000);
    let mut workers = vec![];
    for _ in 0..16 {
        let url = s.url.clone();
        let bomb = bomb.clone();
        workers.push(std::thread::spawn(move || {
            let o = Command::new("curl")
                .args([
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "-m",
                    "120",
                    "-X",
                    "POST",
                    "-F",
                ])
                .arg(format!("image=@{}", bomb.display()))
                .arg(format!("{url}/api/v1/search"))
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout)
                .parse::<u16>()
                .unwrap_or(0)
        }));
    }
    let t = Instant::now();
    let (code, v) = curl(
        &s,
        &[
            "/api/v1/search",
            "-X",
            "POST",
            "-F",
            &format!(
                "image=@{}",
                shared().join("images/faces/query/obama1.jpg").display()
            ),
        ],
    );
    let ordinary = t.elapsed();
    assert!(code == 422 || code == 200 || code == 503, "{code} {v}");
    let codes: Vec<u16> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    assert!(codes.iter().all(|c| *c == 422 || *c == 503), "{codes:?}");
    assert_eq!(curl(&s, &["/api/v1/health"]).0, 200, "server went down");
    let weights_mb = 94.0;
    let peak = peak_rss_mb(s.child.id());
    eprintln!("bombs: {codes:?}; peak {peak:.0} MB; ordinary search {ordinary:?} ({code})");
    assert!(peak < 2.0 * weights_mb + 512.0, "peak {peak:.0} MB");
}

#[test]
fn faces_per_photo_are_bounded() {
    let store = Store::embedded();
    let s = start(&store, &["--max-faces", "1"]);
    let q = shared().join("images/faces/query/obama_and_biden.jpg");
    let (code, v) = curl(
        &s,
        &[
            "/api/v1/search",
            "-X",
            "POST",
            "-F",
            &format!("image=@{}", q.display()),
        ],
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["results"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["faces_not_searched"], 2, "{v}");
    let (code, v) = curl(
        &s,
        &[
            "/api/v1/faces",
            "-X",
            "POST",
            "-F",
            &format!("image=@{}", q.display()),
            "-F",
            "label=pair",
        ],
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["registered"], 1, "{v}");
    assert_eq!(v["images"][0]["faces_not_registered"], 2, "{v}");
}

/// JPEG validity is the decoder's call: data after a complete image is
/// fine, a truncated one is refused (tests/serve.rs), also when an
/// end-of-image marker was appended to the cut. Stored photos lose
/// their EXIF (GPS) unless --keep-exif.
#[test]
fn jpegs_are_judged_by_the_decoder_and_stored_without_exif() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(shared().join("images/faces/train/biden/biden.jpg")).unwrap();
    let mut trailing = good.clone();
    trailing.extend(std::iter::repeat_n(0x5Au8, 100_000));
    // The photo with an EXIF segment carrying a (fake) GPS block.
    let mut exif = good[..2].to_vec();
    let payload = b"Exif\0\0MM\0*GPSLatitude=48.8584N";
    exif.extend([0xFF, 0xE1]);
    exif.extend(((payload.len() + 2) as u16).to_be_bytes());
    exif.extend(payload);
    exif.extend(&good[2..]);
    let write = |name: &str, b: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, b).unwrap();
        p
    };
    // Half the photo with an end-of-image marker appended: still truncated.
    let mut half_eoi = good[..good.len() / 2].to_vec();
    half_eoi.extend([0xFF, 0xD9]);
    let half_eoi = write("half_eoi.jpg", &half_eoi);
    let (trailing, exif) = (write("trailing.jpg", &trailing), write("exif.jpg", &exif));
    let register = |s: &Server, p: &Path| {
        curl(
            s,
            &[
                "/api/v1/faces",
                "-X",
                "POST",
                "-F",
                &format!("image=@{}", p.display()),
                "-F",
                "label=biden",
            ],
        )
    };
    let fetch = |s: &Server, v: &serde_json::Value| {
        let url = format!("{}/api/v1/images/{}", s.url, v["images"][0]["image_id"]);
        Command::new("curl")
            .args(["-s", &url])
            .output()
            .unwrap()
            .stdout
    };
    let store = Store::embedded();
    let s = start(&store, &[]);
    let (code, v) = register(&s, &trailing);
    assert_eq!(code, 200, "trailing data refused: {v}");
    let (code, v) = register(&s, &half_eoi);
    assert_eq!(code, 400, "half a JPEG + EOI accepted: {v}");
    assert!(v["error"].as_str().unwrap().contains("truncated"), "{v}");
    let (code, v) = register(&s, &exif);
    assert_eq!(code, 200, "{v}");
    let stored = fetch(&s, &v);
    assert!(
        !stored.windows(11).any(|w| w == b"GPSLatitude"),
        "EXIF kept"
    );
    assert!(stored.len() <= good.len());
    let (a, b) = (
        image::load_from_memory(&stored).unwrap(),
        image::load_from_memory(&good).unwrap(),
    );
    assert_eq!(a.to_rgb8(), b.to_rgb8(), "the pixels changed");
    drop(s);
    let s = start(&store, &["--keep-exif"]);
    // The same photo under the same label is not stored twice: remove the
    // first registration, then register it again with its metadata.
    let (code, _) = curl(&s, &["/api/v1/subjects/biden", "-X", "DELETE"]);
    assert_eq!(code, 200);
    let (_, v) = register(&s, &exif);
    assert_eq!(fetch(&s, &v), std::fs::read(&exif).unwrap());
}

/// The URL fetcher: a host that drips a byte a second is cut off at the
/// request's one deadline, a URL with CR LF injects nothing (the host sees
/// no request at all), and URLs of one request share one byte budget.
#[test]
fn the_url_fetcher_keeps_to_one_deadline_and_refuses_injection() {
    use std::sync::{Arc, Mutex};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { break };
            let seen = seen2.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).unwrap_or(0);
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\n");
                for _ in 0..60 {
                    if s.write_all(b"x").is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            });
        }
    });
    let store = Store::embedded();
    let s = start(
        &store,
        &["--allow-url-host", "127.0.0.1", "--url-fetch-timeout", "3"],
    );
    let urls: Vec<String> = (0..8)
        .map(|i| format!("http://127.0.0.1:{port}/drip{i}.jpg"))
        .collect();
    let t = Instant::now();
    let (code, v) = post_json(
        &s,
        "/api/v1/faces/urls",
        &json!({"label": "x", "urls": urls}),
        None,
    );
    let took = t.elapsed();
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("ran out"), "{v}");
    assert!(
        took < Duration::from_secs(8),
        "8 dripping URLs held the request {took:?}"
    );
    let (code, v) = post_json(
        &s,
        "/api/v1/faces/urls",
        &json!({"label": "x", "urls": [format!("http://127.0.0.1:{port}/a.jpg HTTP/1.0\r\nHost: evil\r\n\r\nGET /admin")]}),
        None,
    );
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("control"), "{v}");
    std::thread::sleep(Duration::from_millis(200));
    // By what the host saw, not how many connections: a drip connection of
    // the request before may still be landing.
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter()
            .all(|r| !r.contains("a.jpg") && !r.contains("evil") && !r.contains("admin")),
        "the injected URL reached the host: {seen:?}"
    );
}

/// https URLs are fetched (rustls): from a local server whose certificate
/// an operator's CA signed, given with --url-ca-file, the photo registers;
/// without that CA the URL fails with a certificate error, per URL.
#[test]
fn https_urls_are_fetched_and_their_certificates_checked() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let openssl = |args: &[&str]| {
        let o = Command::new("openssl")
            .current_dir(d)
            .args(args)
            .output()
            .expect("openssl (Debian package openssl)");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=faceall test CA",
        "-days",
        "2",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    let www = d.join("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::copy(
        shared().join("images/faces/train/biden/biden.jpg"),
        www.join("biden.jpg"),
    )
    .unwrap();
    let port = common::free_port();
    let server = format!(
        "import http.server, ssl, functools\n\
         h = functools.partial(http.server.SimpleHTTPRequestHandler, directory={www:?})\n\
         s = http.server.ThreadingHTTPServer(('127.0.0.1', {port}), h)\n\
         c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
         c.load_cert_chain({cert:?}, {key:?})\n\
         s.socket = c.wrap_socket(s.socket, server_side=True)\n\
         s.serve_forever()\n",
        www = www.display().to_string(),
        cert = d.join("srv.pem").display().to_string(),
        key = d.join("srv.key").display().to_string(),
    );
    let mut https = Command::new(common::python())
        .args(["-c", &server])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() && t.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = format!("https://127.0.0.1:{port}/biden.jpg");
    let ca = d.join("ca.pem").display().to_string();
    let store = Store::embedded();
    let s = start(
        &store,
        &["--allow-url-host", "127.0.0.1", "--url-ca-file", &ca],
    );
    let (code, v) = post_json(
        &s,
        "/api/v1/faces/urls",
        &json!({"label": "biden", "urls": [url]}),
        None,
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["registered"], 1, "{v}");
    drop(s);
    let store = Store::embedded();
    let s = start(&store, &["--allow-url-host", "127.0.0.1"]);
    let (code, v) = post_json(
        &s,
        "/api/v1/faces/urls",
        &json!({"label": "biden", "urls": [url]}),
        None,
    );
    let _ = https.kill();
    let _ = https.wait();
    assert_eq!(code, 400, "{v}");
    let e = v["error"].as_str().unwrap_or_default().to_lowercase();
    assert!(e.contains("certificate"), "{v}");
}

/// Pixels per request are bounded: 15 photos of 6000 x 6000 (540 Mpixel
/// together, from 2 MB of PNG) are refused before any is decoded.
#[test]
fn pixels_per_request_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let bomb = dir.path().join("bomb.png");
    write_one_colour_png(&bomb, 6000);
    let store = Store::embedded();
    let s = start(&store, &[]);
    let mut args = vec![
        "/api/v1/faces".to_string(),
        "-X".into(),
        "POST".into(),
        "-F".into(),
        "label=bombs".into(),
    ];
    for _ in 0..15 {
        args.push("-F".into());
        args.push(format!("image=@{}", bomb.display()));
    }
    let args: Vec<&str> = args.iter().map(|a| a.as_str()).collect();
    // Decoded, they would be a 422 (no face); refused unread, a 400.
    let (code, v) = curl(&s, &args);
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("Mpixel together"),
        "{v}"
    );
}
