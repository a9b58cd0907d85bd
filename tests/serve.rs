//! `faceall serve` end to end, through the real binary over HTTP (curl):
//! register the training photos, retrieve every query photo's identity,
//! leave a person out, restart, SIGKILL during a burst of registrations,
//! and bad input of every kind. The FaceNet bundle is converted from the
//! real model; MTCNN is the default, converted/mtcnn (PyPI mtcnn's weights).

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{curl, shared, start, Server, Store};
use serde_json::Value;

fn faces_dir() -> PathBuf {
    shared().join("images/faces")
}

fn register(s: &Server, label: &str, files: &[PathBuf], token: Option<&str>) -> (u16, Value) {
    let mut args: Vec<String> = vec!["/api/v1/faces".into(), "-X".into(), "POST".into()];
    for f in files {
        args.push("-F".into());
        args.push(format!("image=@{}", f.display()));
    }
    args.push("-F".into());
    args.push(format!("label={label}"));
    if let Some(t) = token {
        args.push("-H".into());
        args.push(format!("Authorization: Bearer {t}"));
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    curl(s, &refs)
}

/// A search with the server's token.
fn search_as(s: &Server, file: &Path, token: Option<&str>) -> (u16, Value) {
    let image = format!("image=@{}", file.display());
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let mut args = vec!["/api/v1/search", "-X", "POST", "-F", &image];
    if let Some(a) = &auth {
        args.extend(["-H", a.as_str()]);
    }
    curl(s, &args)
}

fn search(s: &Server, file: &Path) -> (u16, Value) {
    curl(
        s,
        &[
            "/api/v1/search",
            "-X",
            "POST",
            "-F",
            &format!("image=@{}", file.display()),
        ],
    )
}

const PEOPLE: &[&str] = &[
    "alex_lacamoire",
    "biden",
    "kit_harington",
    "obama",
    "rose_leslie",
];

fn register_train(s: &Server, skip: Option<&str>) {
    for p in PEOPLE.iter().filter(|p| Some(**p) != skip) {
        let mut files: Vec<PathBuf> = std::fs::read_dir(faces_dir().join("train").join(p))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let (code, v) = register(s, p, &files, None);
        assert_eq!(code, 200, "{p}: {v}");
        assert!(
            v["registered"].as_u64().unwrap() >= files.len() as u64,
            "{p}: {v}"
        );
    }
}

/// The top match label of each face found, left to right.
fn top_labels(v: &Value) -> Vec<Option<String>> {
    let mut faces: Vec<(f64, Option<String>)> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["box"][0].as_f64().unwrap(),
                r["matches"][0]["label"].as_str().map(String::from),
            )
        })
        .collect();
    faces.sort_by(|a, b| a.0.total_cmp(&b.0));
    faces.into_iter().map(|f| f.1).collect()
}

on_both_backends!(register_then_retrieve_every_query_and_restart);
fn register_then_retrieve_every_query_and_restart(store: Store) {
    let s = start(&store, &[]);
    register_train(&s, None);
    let q = faces_dir().join("query");
    let expect = [
        ("alex_lacamoire1.jpg", "alex_lacamoire"),
        ("alex-lacamoire.png", "alex_lacamoire"),
        ("johnsnow_test1.jpg", "kit_harington"),
        ("obama1.jpg", "obama"),
        ("obama_small.jpg", "obama"),
    ];
    for (file, who) in expect {
        let (code, v) = search(&s, &q.join(file));
        assert_eq!(code, 200, "{file}: {v}");
        let r = &v["results"][0];
        assert_eq!(r["matches"][0]["label"], who, "{file}: {v}");
        let d: Vec<f64> = r["matches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["distance"].as_f64().unwrap())
            .collect();
        assert!(d.windows(2).all(|w| w[0] <= w[1]), "{file}: not best first");
        assert_eq!(r["landmarks"].as_array().unwrap().len(), 5);
    }
    // Both faces of obama_and_biden, each with its own identity (Biden is
    // on the left), and the girl at the bottom right matches nobody.
    let (code, v) = search(&s, &q.join("obama_and_biden.jpg"));
    assert_eq!(code, 200, "{v}");
    let tops = top_labels(&v);
    assert_eq!(tops.len(), 3, "{v}");
    assert_eq!(tops[0].as_deref(), Some("biden"), "{v}");
    assert_eq!(tops[1].as_deref(), Some("obama"), "{v}");
    assert_eq!(tops[2], None, "{v}");

    // A stored photo comes back; the face list pages.
    let (_, list) = curl(&s, &["/api/v1/faces?limit=3"]);
    assert_eq!(list["faces"].as_array().unwrap().len(), 3);
    let total = list["total"].as_u64().unwrap();
    let first = list["faces"][0].clone();
    let img = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{content_type}",
        ])
        .arg(format!("{}{}", s.url, first["image_url"].as_str().unwrap()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&img.stdout), "200 image/jpeg");

    // Delete one, restart: everything else is still there and found.
    let id = first["id"].as_u64().unwrap();
    let (code, _) = curl(&s, &[&format!("/api/v1/faces/{id}"), "-X", "DELETE"]);
    assert_eq!(code, 200);
    assert_eq!(curl(&s, &[&format!("/api/v1/faces/{id}")]).0, 404);
    drop(s);
    let s = start(&store, &[]);
    let (_, stats) = curl(&s, &["/api/v1/stats"]);
    assert_eq!(stats["faces"].as_u64().unwrap(), total - 1, "{stats}");
    let (_, v) = search(&s, &q.join("obama1.jpg"));
    assert_eq!(v["results"][0]["matches"][0]["label"], "obama", "{v}");
    let (code, doc) = curl(&s, &["/api/v1/openapi.json"]);
    assert_eq!(code, 200);
    for p in [
        "/api/v1/faces",
        "/api/v1/faces/urls",
        "/api/v1/faces/embeddings",
        "/api/v1/search",
        "/api/v1/search/embeddings",
        "/api/v1/faces/{id}",
        "/api/v1/images/{id}",
        "/api/v1/health",
        "/api/v1/stats",
    ] {
        assert!(doc["paths"][p].is_object(), "openapi lacks {p}");
    }
}

on_both_backends!(people_left_out_match_nobody);
/// A person never registered matches nobody within the default threshold.
fn people_left_out_match_nobody(first: Store) {
    let pg = matches!(first, Store::Postgres(_));
    let mut first = Some(first);
    for (left_out, queries) in [
        ("kit_harington", vec!["johnsnow_test1.jpg"]),
        (
            "alex_lacamoire",
            vec!["alex_lacamoire1.jpg", "alex-lacamoire.png"],
        ),
    ] {
        // A fresh store of the same kind for each person left out.
        let store = first.take().unwrap_or_else(|| {
            if pg {
                Store::postgres()
            } else {
                Store::embedded()
            }
        });
        let s = start(&store, &[]);
        register_train(&s, Some(left_out));
        for q in queries {
            let (code, v) = search(&s, &faces_dir().join("query").join(q));
            assert_eq!(code, 200, "{v}");
            assert_eq!(
                v["results"][0]["matches"].as_array().unwrap().len(),
                0,
                "{left_out} left out, {q} still matched: {v}"
            );
        }
    }
}

on_both_backends!(acknowledged_registrations_survive_sigkill);
/// SIGKILL in the middle of a burst of registrations: after a restart every
/// acknowledged registration is present and retrievable.
fn acknowledged_registrations_survive_sigkill(store: Store) {
    let s = start(&store, &[]);
    let photo = faces_dir().join("train/obama/obama2.jpg");
    let acked: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let url = s.url.clone();
    let mut workers = vec![];
    for w in 0..3 {
        let (acked, stop, photo, url) = (acked.clone(), stop.clone(), photo.clone(), url.clone());
        workers.push(std::thread::spawn(move || {
            let s = Server {
                child: Command::new("true").spawn().unwrap(),
                url,
                log: PathBuf::new(),
            };
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let label = format!("burst-{w}-{i}");
                let (code, v) = register(&s, &label, std::slice::from_ref(&photo), None);
                if code == 200 {
                    for f in v["images"][0]["faces"].as_array().unwrap() {
                        acked
                            .lock()
                            .unwrap()
                            .push((f["id"].as_u64().unwrap(), label.clone()));
                    }
                }
                i += 1;
            }
        }));
    }
    let t = Instant::now();
    while acked.lock().unwrap().len() < 6 && t.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Kill while requests are in flight.
    let mut s = s;
    s.child.kill().unwrap(); // SIGKILL
    s.child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 6, "only {} acknowledged", acked.len());
    drop(s);
    let s = start(&store, &[]);
    for (id, label) in &acked {
        let (code, v) = curl(&s, &[&format!("/api/v1/faces/{id}")]);
        assert_eq!(code, 200, "acknowledged face {id} lost");
        assert_eq!(v["label"], label.as_str());
    }
    let (code, v) = curl(
        &s,
        &[
            "/api/v1/search?k=100",
            "-X",
            "POST",
            "-F",
            &format!("image=@{}", photo.display()),
        ],
    );
    assert_eq!(code, 200);
    let found: Vec<u64> = v["results"][0]["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    for (id, _) in &acked {
        assert!(
            found.contains(id),
            "face {id} not retrievable after restart"
        );
    }
}

fn write_png(path: &Path, w: u32, h: u32) {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb([200, 200, 200]));
    img.save(path).unwrap();
}

on_both_backends!(bad_input_is_refused_cleanly);
/// Every kind of bad input is a 4xx with a JSON message; the server stays
/// up and stores nothing.
fn bad_input_is_refused_cleanly(store: Store) {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(&store, &["--token", "s3cret"]);
    let good = faces_dir().join("train/biden/biden.jpg");
    let junk = tmp.path().join("junk.jpg");
    std::fs::write(&junk, b"this is not an image at all").unwrap();
    let truncated = tmp.path().join("truncated.jpg");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let huge = tmp.path().join("huge.png");
    // 20000 x 20000 of one colour: a few hundred KB that would decode to 1.2 GB.
    {
        // Rows streamed through the encoder into the file: the test never
        // holds the 1.2 GB image the few-hundred-KB file describes.
        let row = vec![0u8; 20000 * 3];
        let mut enc = png::Encoder::new(std::fs::File::create(&huge).unwrap(), 20000, 20000);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Fast);
        let mut w = enc.write_header().unwrap().into_stream_writer().unwrap();
        for _ in 0..20000 {
            w.write_all(&row).unwrap();
        }
        w.finish().unwrap();
    }
    let blank = tmp.path().join("blank.png");
    write_png(&blank, 320, 240);
    let tok = Some("s3cret");
    let cases: Vec<(&str, (u16, Value))> = vec![
        (
            "non-image bytes",
            register(&s, "x", std::slice::from_ref(&junk), tok),
        ),
        (
            "truncated JPEG",
            register(&s, "x", std::slice::from_ref(&truncated), tok),
        ),
        (
            "20000x20000 PNG",
            register(&s, "x", std::slice::from_ref(&huge), tok),
        ),
        (
            "no face",
            register(&s, "x", std::slice::from_ref(&blank), tok),
        ),
        (
            "empty label",
            register(&s, "", std::slice::from_ref(&good), tok),
        ),
        (
            "label with a path",
            register(&s, "../etc/passwd", std::slice::from_ref(&good), tok),
        ),
        (
            "missing token",
            register(&s, "x", std::slice::from_ref(&good), None),
        ),
        (
            "wrong token",
            register(&s, "x", std::slice::from_ref(&good), Some("guess")),
        ),
        (
            "one bad photo among good ones",
            register(&s, "x", &[good.clone(), junk.clone()], tok),
        ),
        (
            "URL to a host not allowed",
            curl(
                &s,
                &[
                    "/api/v1/faces/urls",
                    "-X",
                    "POST",
                    "-H",
                    "Authorization: Bearer s3cret",
                    "-H",
                    "Content-Type: application/json",
                    "-d",
                    r#"{"urls": ["http://169.254.169.254/latest/meta-data"], "label": "x"}"#,
                ],
            ),
        ),
        ("search: non-image", search_as(&s, &junk, tok)),
        ("search: no face", search_as(&s, &blank, tok)),
        (
            "delete without token",
            curl(&s, &["/api/v1/faces/1", "-X", "DELETE"]),
        ),
        ("bad id", curl(&s, &["/api/v1/faces/abc"])),
    ];
    for (what, (code, v)) in &cases {
        assert!((400..500).contains(code), "{what}: status {code} {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: no JSON error: {v}"
        );
        eprintln!("{what}: {code} {}", v["error"]);
    }
    let (code, stats) = curl(&s, &["/api/v1/stats", "-H", "Authorization: Bearer s3cret"]);
    assert_eq!(code, 200, "server went down");
    assert_eq!(stats["faces"], 0, "something was stored: {stats}");
    assert_eq!(stats["images"], 0, "a photo was stored: {stats}");
    // With the token, the same photo registers.
    let (code, v) = register(&s, "biden", std::slice::from_ref(&good), tok);
    assert_eq!(code, 200, "{v}");
}

use std::io::Write;

on_both_backends!(register_by_url_from_an_allowed_host);
/// Registering by URL fetches from an allowed host (a one-shot HTTP server
/// in this test on 127.0.0.1) and reports, per URL, what went wrong with the
/// others (a host off the list, a 404).
fn register_by_url_from_an_allowed_host(store: Store) {
    let photo = std::fs::read(faces_dir().join("train/biden/biden.jpg")).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in listener.incoming().take(2) {
            let mut s = stream.unwrap();
            let mut req = String::new();
            let mut buf = [0u8; 4096];
            while !req.contains("\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
            if req.starts_with("GET /biden.jpg ") {
                let head = format!(
                    "HTTP/1.0 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
                    photo.len()
                );
                let _ = s.write_all(head.as_bytes());
                let _ = s.write_all(&photo);
            } else {
                let _ = s.write_all(b"HTTP/1.0 404 Not Found\r\n\r\n");
            }
        }
    });
    let s = start(&store, &["--allow-url-host", "127.0.0.1"]);
    let body = format!(
        r#"{{"label": "biden", "urls": ["http://127.0.0.1:{port}/biden.jpg", "http://127.0.0.1:{port}/missing.jpg", "http://10.0.0.1/x.jpg"]}}"#
    );
    let (code, v) = curl(
        &s,
        &[
            "/api/v1/faces/urls",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            &body,
        ],
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["registered"], 1, "{v}");
    let errors: Vec<String> = v["images"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["error"].as_str().map(String::from))
        .collect();
    assert_eq!(errors.len(), 2, "{v}");
    assert!(errors.iter().any(|e| e.contains("404")), "{errors:?}");
    assert!(
        errors.iter().any(|e| e.contains("not allowed")),
        "{errors:?}"
    );
    let (_, found) = search(&s, &faces_dir().join("query/obama_and_biden.jpg"));
    assert!(
        found["results"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["matches"][0]["label"] == "biden"),
        "{found}"
    );
}

/// Every face of a registration's response with its stored embedding,
/// photo by photo (in request order), faces left to right.
fn faces_with_embeddings(s: &Server, v: &Value) -> Vec<Vec<(f64, Vec<f64>)>> {
    v["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|img| {
            let mut faces: Vec<(f64, Vec<f64>)> = img["faces"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| {
                    let (code, got) = curl(s, &[&format!("/api/v1/faces/{}", f["id"])]);
                    assert_eq!(code, 200, "{got}");
                    let e = got["embedding"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_f64().unwrap())
                        .collect();
                    (f["box"][0].as_f64().unwrap(), e)
                })
                .collect();
            faces.sort_by(|a, b| a.0.total_cmp(&b.0));
            faces
        })
        .collect()
}

#[test]
/// The faces of a many-photo registration share engine calls (8 faces a
/// call across photo boundaries, as /api/v1/stats counts them) and get the
/// embeddings each photo gets when registered on its own.
fn a_registration_embeds_its_photos_faces_together() {
    let store = Store::embedded();
    let s = start(&store, &[]);
    let mut photos: Vec<PathBuf> = PEOPLE
        .iter()
        .flat_map(|p| std::fs::read_dir(faces_dir().join("train").join(p)).unwrap())
        .chain(std::fs::read_dir(faces_dir().join("query")).unwrap())
        .map(|e| e.unwrap().path())
        .collect();
    photos.sort();
    let mut alone = vec![];
    for p in &photos {
        let (code, v) = register(&s, "alone", std::slice::from_ref(p), None);
        assert_eq!(code, 200, "{}: {v}", p.display());
        alone.extend(faces_with_embeddings(&s, &v));
    }
    let faces: usize = alone.iter().map(Vec::len).sum();
    assert!(
        faces > 8,
        "want more faces than one engine call takes: {faces}"
    );
    let (_, before) = curl(&s, &["/api/v1/stats"]);
    let (code, v) = register(&s, "together", &photos, None);
    assert_eq!(code, 200, "{v}");
    let (_, after) = curl(&s, &["/api/v1/stats"]);
    let delta = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
    assert_eq!(delta("faces_embedded"), faces as u64, "{before} {after}");
    assert_eq!(
        delta("embed_calls"),
        faces.div_ceil(8) as u64,
        "{before} {after}"
    );
    let together = faces_with_embeddings(&s, &v);
    assert_eq!(together.len(), alone.len());
    for ((p, a), t) in photos.iter().zip(&alone).zip(&together) {
        assert_eq!(a.len(), t.len(), "{}", p.display());
        for ((_, ea), (_, et)) in a.iter().zip(t) {
            let worst = ea
                .iter()
                .zip(et)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max);
            assert!(
                worst <= 1e-5,
                "{}: embeddings differ by {worst}",
                p.display()
            );
        }
    }
}
