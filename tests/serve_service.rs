//! `faceall serve` as a face service beyond register and search, through
//! the real binary over HTTP on both backends: 1:1 verification, detection
//! and embedding of the real photos, photos sent as base64 JSON, subjects
//! (list, rename, merge, delete), and their bad input.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};

use base64::Engine as _;
use common::{curl, post_json, shared, start, Server, Store};
use serde_json::{json, Value};

fn photo(rel: &str) -> PathBuf {
    shared().join("images/faces").join(rel)
}

fn b64(path: &Path) -> String {
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).unwrap())
}

/// POST a multipart form: (field, file) photos and (field, value) texts.
fn form(s: &Server, route: &str, photos: &[(&str, &Path)], texts: &[(&str, &str)]) -> (u16, Value) {
    let mut args: Vec<String> = vec![route.into(), "-X".into(), "POST".into()];
    for (f, p) in photos {
        args.push("-F".into());
        args.push(format!("{f}=@{}", p.display()));
    }
    for (f, v) in texts {
        args.push("-F".into());
        args.push(format!("{f}={v}"));
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    curl(s, &refs)
}

/// (box, embedding) of each face /api/v1/embed finds on a photo.
fn embedded_faces(s: &Server, rel: &str) -> Vec<(Value, Vec<f32>)> {
    let (code, v) = post_photo(s, "/api/v1/embed", &photo(rel));
    assert_eq!(code, 200, "{v}");
    v["faces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let e = f["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            (f["box"].clone(), e)
        })
        .collect()
}

fn area(b: &Value) -> f64 {
    let c: Vec<f64> = b
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    (c[2] - c[0]) * (c[3] - c[1])
}

/// POST one photo as the form field `image`.
fn post_photo(s: &Server, route: &str, file: &Path) -> (u16, Value) {
    form(s, route, &[("image", file)], &[])
}

fn faces_count(s: &Server) -> u64 {
    let (code, st) = curl(s, &["/api/v1/stats"]);
    assert_eq!(code, 200, "{st}");
    st["faces"].as_u64().unwrap()
}

/// A 96x96 grey PNG: a valid photo without a face.
fn faceless_png(dir: &Path) -> PathBuf {
    let p = dir.join("grey.png");
    image::RgbImage::from_pixel(96, 96, image::Rgb([128, 128, 128]))
        .save(&p)
        .unwrap();
    p
}

fn assert_face(f: &Value) {
    let b = f["box"].as_array().unwrap();
    assert_eq!(b.len(), 4, "{f}");
    assert!(
        b[2].as_f64() > b[0].as_f64() && b[3].as_f64() > b[1].as_f64(),
        "{f}"
    );
    assert_eq!(f["landmarks"].as_array().unwrap().len(), 5, "{f}");
    let score = f["score"].as_f64().unwrap();
    assert!(score > 0.5 && score <= 1.0, "{f}");
}

on_both_backends!(verify_detect_and_embed_on_real_photos);
fn verify_detect_and_embed_on_real_photos(store: Store) {
    let s = start(&store, &[]);
    let tmp = tempfile::tempdir().unwrap();

    // Detection: both faces of the pair photo, nothing stored.
    let (code, v) = post_photo(&s, "/api/v1/detect", &photo("query/obama_and_biden.jpg"));
    assert_eq!(code, 200, "{v}");
    // Obama, Biden and the girl behind them.
    let faces = v["faces"].as_array().unwrap();
    assert_eq!(faces.len(), 3, "{v}");
    faces.iter().for_each(assert_face);
    let scores: Vec<f64> = faces.iter().map(|f| f["score"].as_f64().unwrap()).collect();
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "best first: {scores:?}"
    );
    let (code, v) = post_photo(&s, "/api/v1/detect", &faceless_png(tmp.path()));
    assert_eq!(
        (code, v["faces"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{v}"
    );

    // Embedding: unit-norm vectors of the model's size, the ones search uses.
    let (code, v) = post_photo(&s, "/api/v1/embed", &photo("query/obama1.jpg"));
    assert_eq!(code, 200, "{v}");
    let faces = v["faces"].as_array().unwrap();
    assert_eq!(faces.len(), 1, "{v}");
    assert_face(&faces[0]);
    let e: Vec<f32> = faces[0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(e.len(), 512);
    let norm = e.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    assert_eq!(faces_count(&s), 0, "detect and embed store nothing");

    let (code, v) = form(
        &s,
        "/api/v1/faces",
        &[
            ("image", &photo("train/obama/obama.jpg")),
            ("image", &photo("train/obama/obama2.jpg")),
        ],
        &[("label", "obama")],
    );
    assert_eq!(code, 200, "{v}");
    let (code, v) = form(
        &s,
        "/api/v1/faces",
        &[("image", &photo("train/biden/biden.jpg"))],
        &[("label", "biden")],
    );
    assert_eq!(code, 200, "{v}");
    let (_, by_photo) = post_photo(&s, "/api/v1/search", &photo("query/obama1.jpg"));
    let (_, by_vector) = post_json(
        &s,
        "/api/v1/search/embeddings",
        &json!({"embeddings": [e]}),
        None,
    );
    let (a, b) = (
        &by_photo["results"][0]["matches"],
        &by_vector["results"][0]["matches"],
    );
    assert_eq!(a[0]["label"], "obama", "{by_photo}");
    assert_eq!(a[0]["id"], b[0]["id"], "{by_photo} / {by_vector}");
    let gap = (a[0]["distance"].as_f64().unwrap() - b[0]["distance"].as_f64().unwrap()).abs();
    assert!(gap < 1e-5, "embed's vector and search's differ by {gap}");

    // Verification, two photos or a photo and a label, as form or base64.
    let verify = |p1: &str, p2: &str| {
        form(
            &s,
            "/api/v1/verify",
            &[("image1", &photo(p1)), ("image2", &photo(p2))],
            &[],
        )
    };
    let (code, same) = verify("train/obama/obama.jpg", "train/obama/obama2.jpg");
    assert_eq!(code, 200, "{same}");
    assert_eq!(same["same_person"], true, "{same}");
    assert_face(&same["image1"]);
    assert_face(&same["image2"]);
    let (code, other) = verify("train/obama/obama.jpg", "train/biden/biden.jpg");
    assert_eq!(code, 200, "{other}");
    assert_eq!(other["same_person"], false, "{other}");
    assert!(other["distance"].as_f64() > same["distance"].as_f64());
    // The pair photo's largest face is the one compared.
    let (code, v) = verify("query/obama_and_biden.jpg", "train/biden/biden2.jpg");
    assert_eq!(code, 200, "{v}");
    let largest = embedded_faces(&s, "query/obama_and_biden.jpg")
        .into_iter()
        .max_by(|a, b| area(&a.0).total_cmp(&area(&b.0)))
        .unwrap();
    let other = embedded_faces(&s, "train/biden/biden2.jpg").remove(0);
    assert_eq!(v["image1"]["box"], largest.0, "{v}");
    let d: f32 = largest
        .1
        .iter()
        .zip(&other.1)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f32>()
        .sqrt();
    assert!(
        (v["distance"].as_f64().unwrap() as f32 - d).abs() < 1e-5,
        "{v} / {d}"
    );
    let (code, v64) = post_json(
        &s,
        "/api/v1/verify",
        &json!({"image1_base64": b64(&photo("train/obama/obama.jpg")),
                "image2_base64": format!("data:image/jpeg;base64,{}", b64(&photo("train/obama/obama2.jpg")))}),
        None,
    );
    assert_eq!(code, 200, "{v64}");
    assert_eq!(
        v64["distance"], same["distance"],
        "base64 and form photos are the same bytes"
    );
    for (label, want) in [("obama", true), ("biden", false)] {
        let (code, v) = form(
            &s,
            "/api/v1/verify",
            &[("image1", &photo("query/obama1.jpg"))],
            &[("label", label)],
        );
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["same_person"], want, "{label}: {v}");
        assert_eq!(v["label"], label);
        assert!(v["nearest"]["id"].as_u64().is_some(), "{v}");
    }
    // ?threshold= decides.
    let d = same["distance"].as_f64().unwrap();
    let (_, strict) = curl(
        &s,
        &[
            &format!("/api/v1/verify?threshold={}", d / 2.0),
            "-X",
            "POST",
            "-F",
            &format!("image1=@{}", photo("train/obama/obama.jpg").display()),
            "-F",
            &format!("image2=@{}", photo("train/obama/obama2.jpg").display()),
        ],
    );
    assert_eq!(strict["same_person"], false, "{strict}");

    // Register and search with base64 too.
    let (code, v) = post_json(
        &s,
        "/api/v1/faces",
        &json!({"image_base64": [b64(&photo("train/rose_leslie/img1.jpg")), b64(&photo("train/rose_leslie/img2.jpg"))],
                "label": "rose_leslie"}),
        None,
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["registered"], 2, "{v}");
    let (code, v) = post_json(
        &s,
        "/api/v1/search",
        &json!({"image_base64": b64(&photo("query/obama1.jpg"))}),
        None,
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["results"][0]["matches"][0]["label"], "obama", "{v}");

    // Bad input: each a 4xx JSON error naming the problem; nothing stored.
    let before = faces_count(&s);
    let grey = faceless_png(tmp.path());
    let big = tmp.path().join("big.json");
    std::fs::write(
        &big,
        json!({"image_base64": "A".repeat(28 << 20), "label": "x"}).to_string(),
    )
    .unwrap();
    let cases: Vec<(&str, (u16, Value), &str)> = vec![
        (
            "malformed base64",
            post_json(
                &s,
                "/api/v1/faces",
                &json!({"image_base64": "not*base64!", "label": "x"}),
                None,
            ),
            "not valid base64",
        ),
        (
            "base64 that is not a photo",
            post_json(
                &s,
                "/api/v1/faces",
                &json!({"image_base64": "QUJDRA==", "label": "x"}),
                None,
            ),
            "not a JPEG or PNG",
        ),
        (
            "base64 over the byte limit",
            curl(
                &s,
                &[
                    "/api/v1/faces",
                    "-X",
                    "POST",
                    "-H",
                    "Content-Type: application/json",
                    "--data-binary",
                    &format!("@{}", big.display()),
                ],
            ),
            "",
        ),
        (
            "an unknown JSON field",
            post_json(
                &s,
                "/api/v1/search",
                &json!({"photo_base64": b64(&grey)}),
                None,
            ),
            "unexpected field 'photo_base64'",
        ),
        (
            "verify: second photo without a face",
            form(
                &s,
                "/api/v1/verify",
                &[
                    ("image1", &photo("train/obama/obama.jpg")),
                    ("image2", &grey),
                ],
                &[],
            ),
            "image2",
        ),
        (
            "verify: first photo without a face, as base64",
            post_json(
                &s,
                "/api/v1/verify",
                &json!({"image1_base64": b64(&grey), "image2_base64": b64(&photo("train/obama/obama.jpg"))}),
                None,
            ),
            "image1",
        ),
        (
            "verify: an unknown label",
            form(
                &s,
                "/api/v1/verify",
                &[("image1", &photo("query/obama1.jpg"))],
                &[("label", "nobody")],
            ),
            "nobody",
        ),
        (
            "verify: both a second photo and a label",
            form(
                &s,
                "/api/v1/verify",
                &[
                    ("image1", &photo("query/obama1.jpg")),
                    ("image2", &photo("query/obama1.jpg")),
                ],
                &[("label", "obama")],
            ),
            "either",
        ),
        (
            "verify: one photo only",
            form(
                &s,
                "/api/v1/verify",
                &[("image1", &photo("query/obama1.jpg"))],
                &[],
            ),
            "either",
        ),
        (
            "detect: two photos",
            form(
                &s,
                "/api/v1/detect",
                &[("image", &grey), ("image", &grey)],
                &[],
            ),
            "exactly one",
        ),
    ];
    let want_status = [400, 400, 413, 400, 422, 422, 404, 400, 400, 400];
    for ((what, (code, v), says), want) in cases.iter().zip(want_status) {
        assert_eq!(*code, want, "{what}: {v}");
        let e = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no JSON error: {v}"));
        assert!(e.contains(says), "{what}: {e}");
    }
    assert_eq!(faces_count(&s), before, "bad input stored nothing");
}

/// The matches of a k=1 search for one embedding.
fn nearest(s: &Server, e: &[f32]) -> Value {
    let (code, v) = post_json(
        s,
        "/api/v1/search/embeddings",
        &json!({"embeddings": [e], "k": 1}),
        None,
    );
    assert_eq!(code, 200, "{v}");
    v["results"][0]["matches"].clone()
}

fn subjects(s: &Server, query: &str) -> Value {
    let (code, v) = curl(s, &[&format!("/api/v1/subjects{query}")]);
    assert_eq!(code, 200, "{v}");
    v
}

fn patch(s: &Server, label: &str, body: &Value, token: Option<&str>) -> (u16, Value) {
    let body = body.to_string();
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let route = format!("/api/v1/subjects/{label}");
    let mut args = vec![
        route.as_str(),
        "-X",
        "PATCH",
        "-H",
        "Content-Type: application/json",
        "-d",
        &body,
    ];
    if let Some(a) = &auth {
        args.extend(["-H", a.as_str()]);
    }
    curl(s, &args)
}

fn delete(s: &Server, label: &str, token: Option<&str>) -> (u16, Value) {
    let route = format!("/api/v1/subjects/{label}");
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let mut args = vec![route.as_str(), "-X", "DELETE"];
    if let Some(a) = &auth {
        args.extend(["-H", a.as_str()]);
    }
    curl(s, &args)
}

on_both_backends!(subjects_are_listed_renamed_merged_and_deleted);
fn subjects_are_listed_renamed_merged_and_deleted(store: Store) {
    const T: &str = "subject-token";
    // Reads open, writes with the token.
    let s = start(&store, &["--token", T, "--public-read"]);
    let (gallery, _) = common::identity_gallery(3, 512, 5);
    let faces: Vec<Value> = gallery
        .iter()
        .enumerate()
        .filter(|(i, _)| *i < 8)
        .map(|(i, e)| json!({"label": if i < 5 { "anna" } else { "bert" }, "embedding": e}))
        .collect();
    let (code, v) = post_json(
        &s,
        "/api/v1/faces/embeddings",
        &json!({"faces": faces}),
        Some(T),
    );
    assert_eq!(code, 200, "{v}");
    let ids: Vec<u64> = v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    let (code, v) = post_json(
        &s,
        "/api/v1/faces",
        &json!({"image_base64": [b64(&photo("train/obama/obama.jpg")), b64(&photo("train/obama/obama2.jpg"))],
                "label": "obama"}),
        Some(T),
    );
    assert_eq!(code, 200, "{v}");
    // Every face of the photos is registered (one of them has two).
    let obama = v["registered"].as_u64().unwrap();
    assert!(obama >= 2, "{v}");
    let image_url = v["images"][0]["faces"][0]["image_url"]
        .as_str()
        .unwrap()
        .to_string();

    let all = subjects(&s, "");
    assert_eq!(all["total"], 3, "{all}");
    assert_eq!(
        all["subjects"],
        json!([{"label": "anna", "faces": 5}, {"label": "bert", "faces": 3}, {"label": "obama", "faces": obama}])
    );
    let page = subjects(&s, "?offset=1&limit=1");
    assert_eq!(
        page["subjects"],
        json!([{"label": "bert", "faces": 3}]),
        "{page}"
    );

    // Writes need the token.
    assert_eq!(patch(&s, "anna", &json!({"label": "carla"}), None).0, 401);
    assert_eq!(delete(&s, "anna", None).0, 401);

    let (code, v) = patch(&s, "anna", &json!({"label": "carla"}), Some(T));
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        (v["label"].as_str(), v["faces"].as_u64()),
        (Some("carla"), Some(5)),
        "{v}"
    );
    let found = nearest(&s, &gallery[0]);
    assert_eq!(found[0]["label"], "carla", "{found}");
    let (_, f) = curl(&s, &[&format!("/api/v1/faces/{}", ids[0])]);
    assert_eq!(f["label"], "carla");
    // Renaming into an existing label merges.
    let (code, v) = patch(&s, "bert", &json!({"label": "carla"}), Some(T));
    assert_eq!((code, v["faces"].as_u64()), (200, Some(3)), "{v}");
    assert_eq!(
        subjects(&s, "")["subjects"],
        json!([{"label": "carla", "faces": 8}, {"label": "obama", "faces": obama}])
    );

    for (what, (code, v), want) in [
        (
            "rename of an unknown label",
            patch(&s, "nobody", &json!({"label": "x"}), Some(T)),
            404,
        ),
        (
            "rename to a path",
            patch(&s, "carla", &json!({"label": "../x"}), Some(T)),
            400,
        ),
        (
            "rename without a label",
            patch(&s, "carla", &json!({"name": "x"}), Some(T)),
            422,
        ),
        (
            "delete of an unknown label",
            delete(&s, "nobody", Some(T)),
            404,
        ),
    ] {
        assert_eq!(code, want, "{what}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {v}"
        );
    }

    // Deleting a subject deletes its faces and the photos only they used.
    let (code, v) = delete(&s, "obama", Some(T));
    assert_eq!(
        (code, v["deleted_faces"].as_u64()),
        (200, Some(obama)),
        "{v}"
    );
    let (code, _) = curl(&s, &[&image_url]);
    assert_eq!(code, 404, "the photo went with its faces");
    let (code, v) = delete(&s, "carla", Some(T));
    assert_eq!((code, v["deleted_faces"].as_u64()), (200, Some(8)), "{v}");
    assert_eq!(subjects(&s, "")["total"], 0);
    assert_eq!(faces_count(&s), 0);
    let found = nearest(&s, &gallery[0]);
    assert_eq!(found, json!([]), "deleted faces are not found: {found}");

    // Deletes are durable: nothing comes back after a restart.
    drop(s);
    let s = start(&store, &["--token", T, "--public-read"]);
    assert_eq!(subjects(&s, "")["total"], 0);
    assert_eq!(faces_count(&s), 0);
}

/// `GET /metrics`: requests per route template with latency, detection
/// time per photo and the gallery's size, in the OpenMetrics text format.
#[test]
fn metrics_count_routes_photos_and_the_gallery() {
    let s = start(&Store::embedded(), &[]);
    let (code, v) = post_photo(&s, "/api/v1/detect", &photo("query/obama1.jpg"));
    assert_eq!(code, 200, "{v}");
    let (gallery, _) = common::identity_gallery(1, 512, 9);
    let faces: Vec<Value> = gallery
        .iter()
        .take(3)
        .map(|e| json!({"label": "m", "embedding": e}))
        .collect();
    let (code, v) = post_json(
        &s,
        "/api/v1/faces/embeddings",
        &json!({"faces": faces}),
        None,
    );
    assert_eq!(code, 200, "{v}");
    let id = v["ids"][0].as_u64().unwrap();
    assert_eq!(curl(&s, &[&format!("/api/v1/faces/{id}")]).0, 200);
    assert_eq!(curl(&s, &["/api/v1/faces/999999"]).0, 404);
    let o = std::process::Command::new("curl")
        .args(["-s", "-i", &format!("{}/metrics", s.url)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    for line in [
        r#"faceall_http_requests_total{method="POST",route="/api/v1/detect",status="200"} 1"#,
        r#"faceall_http_requests_total{method="POST",route="/api/v1/faces/embeddings",status="200"} 1"#,
        // Ids are not series: both face reads are one route, by status.
        r#"faceall_http_requests_total{method="GET",route="/api/v1/faces/{id}",status="200"} 1"#,
        r#"faceall_http_requests_total{method="GET",route="/api/v1/faces/{id}",status="404"} 1"#,
        r#"faceall_http_request_duration_seconds_count{method="POST",route="/api/v1/detect",status="200"} 1"#,
        "faceall_photo_detect_embed_seconds_count 1",
        r#"faceall_gallery_faces{collection="default"} 3"#,
        r#"faceall_gallery_labels{collection="default"} 1"#,
        "# EOF",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "no line {line:?} in\n{body}"
        );
    }
    // The detection took real time, and no more than the request did.
    let value = |name: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {body}"))
    };
    let photo = value("faceall_photo_detect_embed_seconds_sum");
    let request = value(
        r#"faceall_http_request_duration_seconds_sum{method="POST",route="/api/v1/detect",status="200"}"#,
    );
    assert!(
        photo > 0.001 && photo <= request,
        "photo {photo} s, request {request} s"
    );
}

/// Every response carries a request id (the client's, when it sent a
/// plain one), and the JSON log's access line for it names the id, the
/// route template (never the raw path with its label) and the status.
#[test]
fn requests_carry_ids_into_json_logs() {
    let store = Store::embedded();
    let s = start(&store, &["--log-format", "json"]);
    let head = |args: &[&str]| -> String {
        let o = std::process::Command::new("curl")
            .args(["-s", "-D", "-", "-o", "/dev/null"])
            .arg(format!("{}{}", s.url, args[0]))
            .args(&args[1..])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).to_ascii_lowercase()
    };
    let h = head(&[
        "/api/v1/subjects/ann-smith",
        "-X",
        "DELETE",
        "-H",
        "X-Request-Id: trace-42.a",
    ]);
    assert!(h.contains("x-request-id: trace-42.a"), "{h}");
    // A client's id that is not a plain token is replaced.
    let h = head(&["/api/v1/stats", "-H", "X-Request-Id: <b>x</b>"]);
    let id = h
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    assert!(!id.is_empty() && !id.contains('<'), "{h}");
    let h = head(&["/no/such/route"]);
    assert!(h.contains("x-request-id: "), "{h}");
    // The log is JSON lines; the access lines carry id, route and status.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let lines: Vec<Value> = loop {
        let log = std::fs::read_to_string(&s.log).unwrap();
        let lines: Vec<Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
            .collect();
        let done = lines.iter().filter(|l| l["message"] == "request").count() >= 3;
        if done || std::time::Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let access = |id: &str| {
        lines
            .iter()
            .find(|l| l["message"] == "request" && l["span"]["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no access line for {id}: {lines:?}"))
    };
    let a = access("trace-42.a");
    assert_eq!(a["span"]["route"], "/api/v1/subjects/{label}", "{a}");
    assert_eq!(a["span"]["method"], "DELETE", "{a}");
    assert_eq!(a["status"], 404, "{a}");
    assert!(
        !a.to_string().contains("ann-smith"),
        "the label is not logged: {a}"
    );
    let b = access(&id);
    assert_eq!(
        (b["span"]["route"].as_str(), b["status"].as_u64()),
        (Some("/api/v1/stats"), Some(200)),
        "{b}"
    );
    assert!(lines.iter().any(|l| l["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("listening on http://"))));
}

/// The OpenAPI document (generated by utoipa from the handlers) passes
/// openapi-spec-validator (PyPI); every operation it lists is routed (no
/// 404 "no such route", no 405); the router has no API route outside it;
/// and real responses of every operation, successes and errors, match the
/// schemas it gives, with objects closed (`scripts/check_openapi_responses.py`
/// on jsonschema): a field sent but not described fails.
#[test]
fn the_openapi_document_is_valid_routed_and_matches_the_responses() {
    let store = Store::embedded();
    let tok = "openapi-test-token";
    let s = start(&store, &["--token", tok]);
    let auth = format!("Authorization: Bearer {tok}");
    let (code, doc) = curl(&s, &["/api/v1/openapi.json"]);
    assert_eq!(code, 200);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let tmp = tempfile::tempdir().unwrap();
    let doc_file = tmp.path().join("openapi.json");
    std::fs::write(&doc_file, doc.to_string()).unwrap();
    let o = std::process::Command::new(common::python())
        .args(["-m", "openapi_spec_validator"])
        .arg(&doc_file)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );

    // Every documented operation is routed: without a token, each answers
    // something other than the router's own 404 or 405.
    let paths = doc["paths"].as_object().unwrap();
    let mut ops = 0;
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            let url = path
                .replace("{id}", "1")
                .replace("{label}", "nobody")
                .replace("{name}", "nothing");
            let (code, v) = curl(&s, &[&url, "-X", &method.to_uppercase()]);
            assert_ne!(code, 405, "{method} {path}: {v}");
            assert!(
                !(code == 404 && v["error"] == "no such route"),
                "{method} {path} is documented but not routed"
            );
            ops += 1;
        }
    }
    assert!(ops >= 23, "{ops} operations: {:?}", paths.keys());
    // The router's API routes all go through utoipa's routes! (the pages
    // are the only plain .route calls).
    let src = std::fs::read_to_string(common::root().join("src/serve/routes/mod.rs")).unwrap();
    for chunk in src.split(".route(").skip(1) {
        let p = chunk.trim_start().trim_start_matches('"');
        assert!(
            !p.starts_with("/api") && !p.starts_with("/metrics"),
            "an API route outside the document: {}",
            &p[..40.min(p.len())]
        );
    }
    // Gallery routes say which collection they work on.
    let params = doc["paths"]["/api/v1/search"]["post"]["parameters"].to_string();
    assert!(params.contains("\"collection\""), "{params}");

    // Real responses of every operation, checked against the document.
    let mut samples: Vec<Value> = vec![];
    let mut keep = |method: &str, path: &str, (code, body): (u16, Value)| -> Value {
        samples.push(json!({"method": method, "path": path, "status": code, "body": body}));
        body
    };
    let with = |args: &[&str]| -> (u16, Value) {
        let mut a: Vec<&str> = args.to_vec();
        a.extend(["-H", &auth]);
        curl(&s, &a)
    };
    let obama = photo("train/obama/obama.jpg");
    let obama2 = photo("train/obama/obama2.jpg");
    let query = photo("query/obama1.jpg");
    let f = |field: &str, p: &Path| format!("{field}=@{}", p.display());
    keep("get", "/api/v1/health", curl(&s, &["/api/v1/health"]));
    keep(
        "get",
        "/api/v1/openapi.json",
        curl(&s, &["/api/v1/openapi.json"]),
    );
    let reg = keep(
        "post",
        "/api/v1/faces",
        with(&[
            "/api/v1/faces",
            "-F",
            &f("image", &obama),
            "-F",
            &f("image", &obama2),
            "-F",
            "label=obama",
        ]),
    );
    // (obama.jpg also yields a detector false positive: 2 or 3 faces.)
    assert!(reg["registered"].as_u64().unwrap() >= 2, "{reg}");
    let id = reg["images"][0]["faces"][0]["id"].as_u64().unwrap();
    let again = keep(
        "post",
        "/api/v1/faces",
        with(&[
            "/api/v1/faces",
            "-F",
            &f("image", &obama),
            "-F",
            "label=obama",
        ]),
    );
    assert_eq!(again["images"][0]["already_registered"], true, "{again}");
    let grey = faceless_png(tmp.path());
    keep(
        "post",
        "/api/v1/faces",
        with(&[
            "/api/v1/faces",
            "-F",
            &f("image", &grey),
            "-F",
            "label=grey",
        ]),
    );
    keep(
        "post",
        "/api/v1/faces",
        curl(
            &s,
            &["/api/v1/faces", "-F", &f("image", &obama), "-F", "label=x"],
        ),
    );
    keep(
        "post",
        "/api/v1/faces/urls",
        with(&[
            "/api/v1/faces/urls",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"urls": ["http://example.invalid/a.jpg"], "label": "u"}"#,
        ]),
    );
    let e: Vec<f32> = (0..512).map(|i| ((i * 7919) % 13) as f32 - 6.0).collect();
    let body = json!({"faces": [{"label": "vector", "embedding": e}]}).to_string();
    let added = keep(
        "post",
        "/api/v1/faces/embeddings",
        with(&[
            "/api/v1/faces/embeddings",
            "-H",
            "Content-Type: application/json",
            "-d",
            &body,
        ]),
    );
    let vid = added["ids"][0].as_u64().unwrap();
    keep(
        "post",
        "/api/v1/faces/embeddings",
        with(&[
            "/api/v1/faces/embeddings",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"faces": [{"label": "v", "embedding": [1, 2]}]}"#,
        ]),
    );
    keep("get", "/api/v1/faces", with(&["/api/v1/faces?limit=2"]));
    keep(
        "get",
        "/api/v1/faces/{id}",
        with(&[&format!("/api/v1/faces/{id}")]),
    );
    keep(
        "get",
        "/api/v1/faces/{id}",
        with(&[&format!("/api/v1/faces/{vid}")]),
    );
    keep("get", "/api/v1/faces/{id}", with(&["/api/v1/faces/99999"]));
    keep("get", "/api/v1/faces/{id}", with(&["/api/v1/faces/x"]));
    let img = reg["images"][0]["image_id"].as_u64().unwrap();
    let (code, _) = with(&[&format!("/api/v1/images/{img}")]);
    assert_eq!(code, 200);
    keep(
        "get",
        "/api/v1/images/{id}",
        with(&["/api/v1/images/99999"]),
    );
    let found = keep(
        "post",
        "/api/v1/search",
        with(&["/api/v1/search", "-F", &f("image", &query)]),
    );
    assert_eq!(
        found["results"][0]["matches"][0]["label"], "obama",
        "{found}"
    );
    keep(
        "post",
        "/api/v1/search",
        with(&["/api/v1/search?k=0", "-F", &f("image", &query)]),
    );
    keep(
        "post",
        "/api/v1/search",
        with(&["/api/v1/search", "-F", &f("image", &grey)]),
    );
    let q = json!({"embeddings": [e], "k": 3, "threshold": 2.0}).to_string();
    keep(
        "post",
        "/api/v1/search/embeddings",
        with(&[
            "/api/v1/search/embeddings",
            "-H",
            "Content-Type: application/json",
            "-d",
            &q,
        ]),
    );
    keep(
        "post",
        "/api/v1/verify",
        with(&[
            "/api/v1/verify",
            "-F",
            &f("image1", &query),
            "-F",
            &f("image2", &obama2),
        ]),
    );
    keep(
        "post",
        "/api/v1/verify",
        with(&[
            "/api/v1/verify",
            "-F",
            &f("image1", &query),
            "-F",
            "label=obama",
        ]),
    );
    keep(
        "post",
        "/api/v1/verify",
        with(&[
            "/api/v1/verify",
            "-F",
            &f("image1", &query),
            "-F",
            "label=nobody",
        ]),
    );
    keep(
        "post",
        "/api/v1/detect",
        with(&[
            "/api/v1/detect",
            "-F",
            &f("image", &photo("query/obama_and_biden.jpg")),
        ]),
    );
    keep(
        "post",
        "/api/v1/detect",
        with(&["/api/v1/detect", "-F", &f("image", &grey)]),
    );
    keep(
        "post",
        "/api/v1/embed",
        with(&["/api/v1/embed", "-F", &f("image", &query)]),
    );
    keep("get", "/api/v1/subjects", with(&["/api/v1/subjects"]));
    keep(
        "get",
        "/api/v1/subjects/{label}",
        with(&["/api/v1/subjects/obama?limit=1"]),
    );
    keep(
        "get",
        "/api/v1/subjects/{label}",
        with(&["/api/v1/subjects/nobody"]),
    );
    keep(
        "patch",
        "/api/v1/subjects/{label}",
        with(&[
            "/api/v1/subjects/vector",
            "-X",
            "PATCH",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"label": "vec"}"#,
        ]),
    );
    keep(
        "delete",
        "/api/v1/subjects/{label}",
        with(&["/api/v1/subjects/vec", "-X", "DELETE"]),
    );
    let c = keep(
        "post",
        "/api/v1/collections",
        with(&[
            "/api/v1/collections",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"name": "spec"}"#,
        ]),
    );
    let key = c["api_key"].as_str().unwrap().to_string();
    keep(
        "post",
        "/api/v1/collections",
        with(&[
            "/api/v1/collections",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"name": "spec"}"#,
        ]),
    );
    keep("get", "/api/v1/collections", with(&["/api/v1/collections"]));
    keep(
        "get",
        "/api/v1/collections",
        curl(
            &s,
            &[
                "/api/v1/collections",
                "-H",
                &format!("Authorization: Bearer {key}"),
            ],
        ),
    );
    keep("get", "/api/v1/stats", with(&["/api/v1/stats"]));
    keep(
        "get",
        "/api/v1/stats",
        with(&["/api/v1/stats?collection=spec"]),
    );
    keep(
        "get",
        "/api/v1/stats",
        with(&["/api/v1/stats?collection=none"]),
    );
    keep(
        "delete",
        "/api/v1/collections/{name}",
        with(&["/api/v1/collections/spec", "-X", "DELETE"]),
    );
    keep(
        "delete",
        "/api/v1/collections/{name}",
        with(&["/api/v1/collections/default", "-X", "DELETE"]),
    );
    keep(
        "delete",
        "/api/v1/faces/{id}",
        with(&[&format!("/api/v1/faces/{id}"), "-X", "DELETE"]),
    );
    keep(
        "delete",
        "/api/v1/faces/{id}",
        with(&[&format!("/api/v1/faces/{id}"), "-X", "DELETE"]),
    );
    let statuses: std::collections::BTreeSet<u64> = samples
        .iter()
        .map(|x| x["status"].as_u64().unwrap())
        .collect();
    for want in [200, 201, 400, 401, 403, 404, 422] {
        assert!(
            statuses.contains(&want),
            "no {want} among the samples: {statuses:?}"
        );
    }
    let sf = tmp.path().join("samples.json");
    std::fs::write(&sf, serde_json::to_vec(&samples).unwrap()).unwrap();
    let o = std::process::Command::new(common::python())
        .arg(common::root().join("scripts/check_openapi_responses.py"))
        .arg(&doc_file)
        .arg(&sf)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains(&format!("{} responses checked, 0 failures", samples.len())),
        "{out}"
    );
}
