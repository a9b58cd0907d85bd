//! Collections through the real binary on both backends: separate
//! galleries with their own keys (a face registered in one is never found
//! in another; a key works in its own collection only), their management
//! by the admin token, their survival of a restart, their deletion, and
//! the bad input around them.

#[macro_use]
mod common;

use common::{curl, post_json, shared, start, Server, Store};
use serde_json::{json, Value};

const ADMIN: &str = "admin-t0ken";

fn bearer(t: &str) -> String {
    format!("Authorization: Bearer {t}")
}

/// (status, JSON) of curl with a token.
fn call(s: &Server, token: &str, args: &[&str]) -> (u16, Value) {
    let h = bearer(token);
    let mut a: Vec<&str> = args.to_vec();
    a.extend(["-H", h.as_str()]);
    curl(s, &a)
}

fn register(s: &Server, token: &str, query: &str, label: &str, rel: &str) -> (u16, Value) {
    let img = format!(
        "image=@{}",
        shared().join("images/faces").join(rel).display()
    );
    let lab = format!("label={label}");
    let route = format!("/api/v1/faces{query}");
    call(s, token, &[&route, "-X", "POST", "-F", &img, "-F", &lab])
}

/// The labels search finds for the faces of a photo.
fn found_labels(s: &Server, token: &str, query: &str, rel: &str) -> (u16, Vec<String>) {
    let img = format!(
        "image=@{}",
        shared().join("images/faces").join(rel).display()
    );
    let route = format!("/api/v1/search{query}");
    let (code, v) = call(s, token, &[&route, "-X", "POST", "-F", &img]);
    let labels = v["results"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .flat_map(|r| r["matches"].as_array().cloned().unwrap_or_default())
                .map(|m| m["label"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    (code, labels)
}

fn faces_in(s: &Server, query: &str) -> u64 {
    let (code, v) = call(s, ADMIN, &[&format!("/api/v1/stats{query}")]);
    assert_eq!(code, 200, "{v}");
    v["faces"].as_u64().unwrap()
}

fn create(s: &Server, token: Option<&str>, name: &str) -> (u16, Value) {
    post_json(s, "/api/v1/collections", &json!({ "name": name }), token)
}

on_both_backends!(collections_are_separate_galleries_with_their_own_keys);
fn collections_are_separate_galleries_with_their_own_keys(store: Store) {
    let s = start(&store, &["--token", ADMIN]);

    // Creation needs the admin token; names are checked; a name is unique.
    assert_eq!(create(&s, None, "shop").0, 401);
    let (code, v) = create(&s, Some(ADMIN), "shop");
    assert_eq!(code, 201, "{v}");
    let shop_key = v["api_key"].as_str().unwrap().to_string();
    assert!(shop_key.len() >= 32, "{v}");
    let (code, v) = create(&s, Some(ADMIN), "shop");
    assert_eq!(code, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("exists"), "{v}");
    for bad in [
        "../etc",
        "a/b",
        "Shop",
        "a b",
        "",
        ".hidden",
        "x%2F..",
        &"n".repeat(49),
    ] {
        let (code, v) = create(&s, Some(ADMIN), bad);
        assert_eq!(code, 400, "{bad:?}: {v}");
        assert!(v["error"].is_string(), "{v}");
    }
    // A collection's key cannot manage collections.
    let (code, v) = create(&s, Some(&shop_key), "other");
    assert_eq!(code, 403, "{v}");
    let (code, v) = create(&s, Some(ADMIN), "other");
    assert_eq!(code, 201, "{v}");
    let other_key = v["api_key"].as_str().unwrap().to_string();
    assert_ne!(shop_key, other_key);

    // Obama in shop (with its key), Biden in default (admin).
    let (code, v) = register(
        &s,
        &shop_key,
        "?collection=shop",
        "obama",
        "train/obama/obama.jpg",
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["collection"], "shop", "{v}");
    // obama.jpg has a second, small face in the background.
    let shop_faces = v["registered"].as_u64().unwrap();
    assert!(shop_faces >= 1, "{v}");
    let image_url = v["images"][0]["faces"][0]["image_url"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(image_url.ends_with("?collection=shop"), "{image_url}");
    let (code, v) = register(&s, ADMIN, "", "biden", "train/biden/biden.jpg");
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["collection"], "default", "{v}");

    // Each gallery finds its own face and never the other's.
    let (code, labels) = found_labels(&s, &shop_key, "?collection=shop", "train/obama/obama2.jpg");
    assert_eq!(
        (code, labels.first().map(String::as_str)),
        (200, Some("obama"))
    );
    let (code, labels) = found_labels(&s, ADMIN, "?collection=shop", "train/biden/biden2.jpg");
    assert_eq!(code, 200);
    assert!(!labels.contains(&"biden".to_string()), "{labels:?}");
    let (code, labels) = found_labels(&s, ADMIN, "", "train/obama/obama2.jpg");
    assert_eq!(code, 200);
    assert!(!labels.contains(&"obama".to_string()), "{labels:?}");
    let (code, labels) = found_labels(&s, ADMIN, "", "train/biden/biden2.jpg");
    assert_eq!(
        (code, labels.first().map(String::as_str)),
        (200, Some("biden"))
    );
    let (code, labels) = found_labels(
        &s,
        &other_key,
        "?collection=other",
        "train/obama/obama2.jpg",
    );
    assert_eq!((code, labels.len()), (200, 0));
    // By embedding too: Obama's embedding from shop finds nothing in default.
    let (_, v) = call(&s, &shop_key, &["/api/v1/faces?collection=shop"]);
    let id = v["faces"][0]["id"].as_u64().unwrap();
    let (code, f) = call(
        &s,
        &shop_key,
        &[&format!("/api/v1/faces/{id}?collection=shop")],
    );
    assert_eq!(code, 200, "{f}");
    let body = json!({ "embeddings": [f["embedding"].clone()], "k": 5, "threshold": 2.0 });
    let (code, v) = post_json(&s, "/api/v1/search/embeddings", &body, Some(ADMIN));
    assert_eq!(code, 200, "{v}");
    let labels: Vec<&str> = v["results"][0]["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, vec!["biden"], "{v}");
    let (code, v) = post_json(
        &s,
        "/api/v1/search/embeddings?collection=shop",
        &body,
        Some(&shop_key),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        v["results"][0]["matches"][0]["id"].as_u64(),
        Some(id),
        "{v}"
    );
    assert!(
        v["results"][0]["matches"][0]["distance"].as_f64().unwrap() < 1e-5,
        "{v}"
    );

    // A key works in its own collection only: 403 elsewhere, for reads
    // and writes; the photo is served in its collection.
    for (token, route) in [
        (&shop_key, "/api/v1/faces"),
        (&shop_key, "/api/v1/faces?collection=other"),
        (&other_key, "/api/v1/faces?collection=shop"),
        (&shop_key, "/api/v1/subjects"),
        (&shop_key, "/api/v1/stats?collection=default"),
    ] {
        let (code, v) = call(&s, token, &[route]);
        assert_eq!(code, 403, "{route}: {v}");
        assert!(v["error"].as_str().unwrap().contains("collection"), "{v}");
    }
    let (code, v) = register(
        &s,
        &other_key,
        "?collection=shop",
        "mallory",
        "train/biden/biden2.jpg",
    );
    assert_eq!(code, 403, "{v}");
    let (code, v) = call(
        &s,
        &other_key,
        &[
            &format!("/api/v1/faces/{id}?collection=shop"),
            "-X",
            "DELETE",
        ],
    );
    assert_eq!(code, 403, "{v}");
    let o = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &bearer(&shop_key),
        ])
        .arg(format!("{}{image_url}", s.url))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "200");
    // The models need any valid credential, a collection's key included.
    let img = format!(
        "image=@{}",
        shared()
            .join("images/faces/train/obama/obama.jpg")
            .display()
    );
    let (code, v) = call(
        &s,
        &other_key,
        &["/api/v1/detect", "-X", "POST", "-F", &img],
    );
    assert_eq!(code, 200, "{v}");
    // Unknown collections are 404 (admin), path characters 400.
    let (code, v) = call(&s, ADMIN, &["/api/v1/faces?collection=nope"]);
    assert_eq!(code, 404, "{v}");
    assert!(v["error"].as_str().unwrap().contains("nope"), "{v}");
    let (code, v) = register(&s, ADMIN, "?collection=nope", "x", "train/obama/obama.jpg");
    assert_eq!(code, 404, "{v}");
    let (code, v) = call(&s, ADMIN, &["/api/v1/faces?collection=..%2Fdefault"]);
    assert_eq!(code, 400, "{v}");
    let (code, v) = call(&s, ADMIN, &["/api/v1/faces?collection=a&collection=b"]);
    assert_eq!(code, 400, "{v}");
    // Nothing of the refused requests was stored.
    assert_eq!(
        (faces_in(&s, "?collection=shop"), faces_in(&s, "")),
        (shop_faces, 1)
    );
    assert_eq!(faces_in(&s, "?collection=other"), 0);

    // The listing and the metrics see every collection.
    let (code, v) = call(&s, ADMIN, &["/api/v1/collections"]);
    assert_eq!(code, 200, "{v}");
    let names: Vec<(&str, u64)> = v["collections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["faces"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        names,
        vec![("default", 1), ("other", 0), ("shop", shop_faces)],
        "{v}"
    );
    assert!(
        v.to_string().find("api_key").is_none(),
        "keys are never listed: {v}"
    );
    assert_eq!(call(&s, &shop_key, &["/api/v1/collections"]).0, 403);
    let o = std::process::Command::new("curl")
        .args(["-s", "-H", &bearer(ADMIN)])
        .arg(format!("{}/metrics", s.url))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    let series = format!("faceall_gallery_faces{{collection=\"shop\"}} {shop_faces}");
    assert!(text.contains(&series), "{text}");
    assert_eq!(call(&s, &shop_key, &["/metrics"]).0, 403);

    // A restart keeps collections, keys and faces.
    drop(s);
    let s = start(&store, &["--token", ADMIN]);
    let (code, labels) = found_labels(&s, &shop_key, "?collection=shop", "train/obama/obama2.jpg");
    assert_eq!(
        (code, labels.first().map(String::as_str)),
        (200, Some("obama"))
    );
    assert_eq!(faces_in(&s, ""), 1);

    // Deleting a collection removes its faces and its key.
    let (code, v) = call(&s, &shop_key, &["/api/v1/collections/shop", "-X", "DELETE"]);
    assert_eq!(code, 403, "{v}");
    let (code, v) = call(&s, ADMIN, &["/api/v1/collections/default", "-X", "DELETE"]);
    assert_eq!(code, 400, "{v}");
    let (code, v) = call(&s, ADMIN, &["/api/v1/collections/shop", "-X", "DELETE"]);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["faces"], shop_faces, "{v}");
    let (code, v) = call(&s, ADMIN, &["/api/v1/collections/shop", "-X", "DELETE"]);
    assert_eq!(code, 404, "{v}");
    assert_eq!(
        call(&s, &shop_key, &["/api/v1/faces?collection=shop"]).0,
        401
    );
    assert_eq!(call(&s, ADMIN, &["/api/v1/faces?collection=shop"]).0, 404);
    // A new collection of the same name starts empty, with a new key.
    let (code, v) = create(&s, Some(ADMIN), "shop");
    assert_eq!(code, 201, "{v}");
    assert_ne!(v["api_key"].as_str().unwrap(), shop_key);
    assert_eq!(faces_in(&s, "?collection=shop"), 0);
    assert_eq!(faces_in(&s, ""), 1);
}

/// (exit status, JSON summary) of `faceall register ... --json`.
fn bulk_register(args: &[&str]) -> (bool, Value) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_faceall"))
        .arg("register")
        .args(args)
        .arg("--json")
        .env_remove("FACEALL_TOKEN")
        .output()
        .unwrap();
    let v = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    assert!(v.is_object(), "{}", String::from_utf8_lossy(&o.stderr));
    (o.status.success(), v)
}

/// Every query photo of the shared set that shows one registered person,
/// with that person's label.
const QUERIES: &[(&str, &str)] = &[
    ("alex_lacamoire1.jpg", "alex_lacamoire"),
    ("alex-lacamoire.png", "alex_lacamoire"),
    ("johnsnow_test1.jpg", "kit_harington"),
    ("obama1.jpg", "obama"),
    ("obama_small.jpg", "obama"),
];

/// `faceall register` imports the training folder (label = subfolder) into
/// a running server's collection; every query photo then retrieves its own
/// identity there; a second run registers nothing again; a folder with a
/// photo without a face and a file that is no photo says so.
#[test]
fn bulk_import_of_a_folder_tree_is_searchable_and_resumable() {
    let store = Store::embedded();
    let s = start(&store, &["--token", ADMIN]);
    let (code, v) = create(&s, Some(ADMIN), "people");
    assert_eq!(code, 201, "{v}");
    let key = v["api_key"].as_str().unwrap().to_string();
    let train = shared().join("images/faces/train");
    let photos = std::fs::read_dir(&train)
        .unwrap()
        .flatten()
        .map(|d| std::fs::read_dir(d.path()).unwrap().count())
        .sum::<usize>();
    let train_arg = train.to_str().unwrap();
    let url = s.url.clone();
    let args = [
        train_arg,
        "--server",
        &url,
        "--collection",
        "people",
        "--token",
        &key,
    ];
    let (ok, v) = bulk_register(&args);
    assert!(ok, "{v}");
    assert_eq!(v["photos"].as_u64(), Some(photos as u64), "{v}");
    assert_eq!(v["photos_registered"].as_u64(), Some(photos as u64), "{v}");
    assert!(
        v["faces_registered"].as_u64().unwrap() >= photos as u64,
        "{v}"
    );
    assert_eq!(v["errors"], json!([]), "{v}");
    for (q, who) in QUERIES {
        let (code, labels) = found_labels(&s, &key, "?collection=people", &format!("query/{q}"));
        assert_eq!(code, 200);
        assert_eq!(
            labels.first().map(String::as_str),
            Some(*who),
            "{q}: {labels:?}"
        );
    }
    let (code, labels) = found_labels(&s, &key, "?collection=people", "query/obama_and_biden.jpg");
    assert_eq!(code, 200);
    for who in ["obama", "biden"] {
        assert!(
            labels.iter().any(|l| l == who),
            "{who} not found: {labels:?}"
        );
    }
    let faces = faces_in(&s, "?collection=people");
    assert_eq!(
        faces_in(&s, ""),
        0,
        "nothing went to the default collection"
    );

    // Resumed: everything is there already, nothing is stored twice.
    let (ok, v) = bulk_register(&args);
    assert!(ok, "{v}");
    assert_eq!(v["already_registered"].as_u64(), Some(photos as u64), "{v}");
    assert_eq!(v["faces_registered"].as_u64(), Some(0), "{v}");
    assert_eq!(faces_in(&s, "?collection=people"), faces);

    // A wrong key stops the import with the server's reason.
    let (ok, _) = {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_faceall"))
            .args(["register", train_arg, "--server", &url, "--token", "wrong"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(err.contains("401"), "{err}");
        (o.status.success(), err)
    };
    assert!(!ok);

    // A photo without a face and a file that is not a photo are counted,
    // not registered; a label the server refuses is an error of that photo.
    drop(s);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("grey")).unwrap();
    image::RgbImage::from_pixel(96, 96, image::Rgb([128, 128, 128]))
        .save(dir.path().join("grey/plain.png"))
        .unwrap();
    std::fs::write(dir.path().join("grey/notes.txt"), "not a photo").unwrap();
    std::fs::create_dir_all(dir.path().join("biden")).unwrap();
    std::fs::copy(
        train.join("biden/biden.jpg"),
        dir.path().join("biden/biden.jpg"),
    )
    .unwrap();
    // --data: a server is started on the store for the job.
    let data = tempfile::tempdir().unwrap();
    let model = common::bundle();
    let import_into_data = || {
        bulk_register(&[
            dir.path().to_str().unwrap(),
            "--data",
            data.path().to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
        ])
    };
    let (ok, v) = import_into_data();
    assert!(ok, "{v}");
    assert_eq!(
        (
            v["photos"].as_u64(),
            v["photos_registered"].as_u64(),
            v["without_a_face"].as_u64(),
            v["ignored_files"].as_u64()
        ),
        (Some(2), Some(1), Some(1), Some(1)),
        "{v}"
    );
    // A photo the server cannot read, sent with the same person's others:
    // its error names it, and the rest of its request is still answered.
    std::fs::write(dir.path().join("biden/broken.jpg"), b"\xff\xd8 not a jpeg").unwrap();
    std::fs::copy(
        train.join("biden/biden2.jpg"),
        dir.path().join("biden/biden2.jpg"),
    )
    .unwrap();
    let (ok, v) = import_into_data();
    assert!(!ok, "an unreadable photo is an error: {v}");
    assert_eq!(
        (
            v["photos"].as_u64(),
            v["photos_registered"].as_u64(),
            v["already_registered"].as_u64(),
            v["without_a_face"].as_u64()
        ),
        (Some(4), Some(1), Some(1), Some(1)),
        "{v}"
    );
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{v}");
    assert!(errors[0].as_str().unwrap().contains("broken.jpg"), "{v}");
    // The store holds what was imported, for a server started on it later.
    let s = start(&Store::Embedded(data), &[]);
    let (code, labels) = found_labels(&s, "", "", "train/biden/biden2.jpg");
    assert_eq!(
        (code, labels.first().map(String::as_str)),
        (200, Some("biden"))
    );
    // And a store in use by a server cannot be imported into behind its back.
    let Store::Embedded(d) = &store else {
        unreachable!()
    };
    let s2 = start(&store, &[]);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_faceall"))
        .args(["register", dir.path().to_str().unwrap(), "--data"])
        .arg(d.path())
        .arg("--model")
        .arg(&model)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("in use by another faceall process"), "{err}");
    drop(s2);
}
