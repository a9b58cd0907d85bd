//! `faceall serve`'s storage backends through the real binary: the
//! embedding endpoints (identity recall on a synthetic gallery, bad input),
//! kill -9 during an import and a torn index file (embedded), two servers on
//! one PostgreSQL, the database going away and coming back, a refused login,
//! and a disk that fills up during registration.

#[macro_use]
mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{curl, identity_gallery, post_json, shared, start, Pg, Server, Store};
use serde_json::{json, Value};

const DIM: usize = 512;

fn add_gallery(s: &Server, gallery: &[Vec<f32>], first_person: usize) -> Vec<u64> {
    let faces: Vec<Value> = gallery
        .iter()
        .enumerate()
        .map(|(i, v)| json!({"label": format!("person-{}", first_person + i / 5), "embedding": v}))
        .collect();
    let (code, v) = post_json(
        s,
        "/api/v1/faces/embeddings",
        &json!({ "faces": faces }),
        None,
    );
    assert_eq!(code, 200, "{v}");
    v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap())
        .collect()
}

/// Share of queries whose own person is among the top-5 labels; query i
/// is person i's.
fn recall_at_5(s: &Server, queries: &[Vec<f32>]) -> f64 {
    let people: Vec<usize> = (0..queries.len()).collect();
    recall_of(s, &people, queries)
}

/// Every acknowledged (gallery row, face id) is the first match of a
/// search for its own vector; on a miss, says what the server holds.
fn assert_each_finds_itself(s: &Server, gallery: &[Vec<f32>], acked: &[(usize, u64)]) {
    for chunk in acked.chunks(1000) {
        let (code, v) = post_json(
            s,
            "/api/v1/search/embeddings",
            &json!({"embeddings": chunk.iter().map(|(g, _)| &gallery[*g]).collect::<Vec<_>>(), "k": 1}),
            None,
        );
        assert_eq!(code, 200, "{v}");
        let results = v["results"].as_array().unwrap();
        assert_eq!(results.len(), chunk.len(), "{v}");
        for ((g, id), r) in chunk.iter().zip(results) {
            if r["matches"][0]["id"] != *id {
                let (_, again) = post_json(
                    s,
                    "/api/v1/search/embeddings",
                    &json!({"embeddings": [&gallery[*g]], "k": 10, "threshold": 2.0}),
                    None,
                );
                let (code, f) = curl(s, &[&format!("/api/v1/faces/{id}")]);
                panic!("gallery vector {g} (face {id}) not found first: {r} / k=10: {again} / GET face: {code} label {}", f["label"]);
            }
        }
    }
}

/// The same for the given people (queries[p] is person p's).
fn recall_of(s: &Server, people: &[usize], all: &[Vec<f32>]) -> f64 {
    let queries: Vec<&Vec<f32>> = people.iter().map(|p| &all[*p]).collect();
    let (code, v) = post_json(
        s,
        "/api/v1/search/embeddings",
        &json!({"embeddings": queries, "k": 5, "threshold": 2.0}),
        None,
    );
    assert_eq!(code, 200, "{v}");
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), queries.len());
    let hits = results
        .iter()
        .enumerate()
        .filter(|(i, r)| {
            let want = format!("person-{}", people[*i]);
            r["matches"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["label"] == want.as_str())
        })
        .count();
    hits as f64 / queries.len() as f64
}

on_both_backends!(embedding_endpoints_find_identities_and_refuse_bad_input);
fn embedding_endpoints_find_identities_and_refuse_bad_input(store: Store) {
    let s = start(&store, &[]);
    let (gallery, queries) = identity_gallery(400, DIM, 11);
    let ids = add_gallery(&s, &gallery, 0);
    assert_eq!(ids.len(), 2000);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids in request order");
    let r = recall_at_5(&s, &queries);
    assert!(r >= 0.99, "identity recall@5 {r}");
    // Exact distances, nearest first; a stored vector finds itself at 0.
    let (_, v) = post_json(
        &s,
        "/api/v1/search/embeddings",
        &json!({"embeddings": [gallery[7]], "k": 3}),
        None,
    );
    let m = &v["results"][0]["matches"];
    assert_eq!(m[0]["id"], ids[7], "{v}");
    assert!(m[0]["distance"].as_f64().unwrap() < 1e-5, "{v}");
    assert!(m[0]["image_url"].is_null());
    // Unnormalised input is normalised by the server.
    let scaled: Vec<f32> = gallery[3].iter().map(|x| x * 7.0).collect();
    let (_, v) = post_json(
        &s,
        "/api/v1/search/embeddings",
        &json!({"embeddings": [scaled], "k": 1}),
        None,
    );
    assert_eq!(v["results"][0]["matches"][0]["id"], ids[3], "{v}");
    // A face added by embedding is listed and deleted like any other.
    let (code, f) = curl(&s, &[&format!("/api/v1/faces/{}", ids[0])]);
    assert_eq!(code, 200);
    assert_eq!(f["label"], "person-0");
    assert_eq!(f["embedding"].as_array().unwrap().len(), DIM);
    assert_eq!(
        curl(&s, &[&format!("/api/v1/faces/{}", ids[0]), "-X", "DELETE"]).0,
        200
    );
    let (_, st) = curl(&s, &["/api/v1/stats"]);
    assert_eq!(
        (st["faces"].as_u64(), st["indexed"].as_u64()),
        (Some(1999), Some(1999)),
        "{st}"
    );

    let short = vec![0.1f32; 100];
    let zero = vec![0f32; DIM];
    let too_many: Vec<Value> = (0..10_001)
        .map(|_| json!({"label": "x", "embedding": [1.0]}))
        .collect();
    let cases: Vec<(&str, (u16, Value))> = vec![
        (
            "wrong length",
            post_json(
                &s,
                "/api/v1/faces/embeddings",
                &json!({"faces": [{"label": "x", "embedding": short}]}),
                None,
            ),
        ),
        (
            "zero vector",
            post_json(
                &s,
                "/api/v1/faces/embeddings",
                &json!({"faces": [{"label": "x", "embedding": zero}]}),
                None,
            ),
        ),
        (
            "NaN",
            raw_post(
                &s,
                "/api/v1/faces/embeddings",
                &format!(
                    r#"{{"faces": [{{"label": "x", "embedding": [NaN{}]}}]}}"#,
                    ", 0.1".repeat(DIM - 1)
                ),
            ),
        ),
        (
            "infinite",
            raw_post(
                &s,
                "/api/v1/faces/embeddings",
                &format!(
                    r#"{{"faces": [{{"label": "x", "embedding": [1e300{}]}}]}}"#,
                    ", 0.1".repeat(DIM - 1)
                ),
            ),
        ),
        (
            "over 10,000 faces",
            post_json(
                &s,
                "/api/v1/faces/embeddings",
                &json!({"faces": too_many}),
                None,
            ),
        ),
        (
            "no faces",
            post_json(&s, "/api/v1/faces/embeddings", &json!({"faces": []}), None),
        ),
        (
            "bad label",
            post_json(
                &s,
                "/api/v1/faces/embeddings",
                &json!({"faces": [{"label": "../x", "embedding": gallery[0]}]}),
                None,
            ),
        ),
        (
            "not JSON",
            raw_post(&s, "/api/v1/faces/embeddings", "{\"faces\": ["),
        ),
        (
            "search: wrong length",
            post_json(
                &s,
                "/api/v1/search/embeddings",
                &json!({"embeddings": [[1.0, 2.0]]}),
                None,
            ),
        ),
        (
            "search: over 1,000 queries",
            post_json(
                &s,
                "/api/v1/search/embeddings",
                &json!({"embeddings": vec![gallery[0].clone(); 1001]}),
                None,
            ),
        ),
        (
            "search: k = 0",
            post_json(
                &s,
                "/api/v1/search/embeddings",
                &json!({"embeddings": [gallery[0]], "k": 0}),
                None,
            ),
        ),
    ];
    for (what, (code, v)) in &cases {
        assert!((400..500).contains(code), "{what}: status {code} {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: no JSON error: {v}"
        );
    }
    let (_, st2) = curl(&s, &["/api/v1/stats"]);
    assert_eq!(st2["faces"], st["faces"], "bad input stored something");
}

fn raw_post(s: &Server, path: &str, body: &str) -> (u16, Value) {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), body).unwrap();
    curl(
        s,
        &[
            path,
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &format!("@{}", f.path().display()),
        ],
    )
}

on_both_backends!(kill_during_import_loses_nothing_acknowledged);
/// Imports from two clients, kill -9 in the middle: every acknowledged
/// face is there and found after the restart (the index is replayed from
/// the store's journal, or rebuilt when its file is torn).
fn kill_during_import_loses_nothing_acknowledged(store: Store) {
    // Save the index often so the kill lands between saves and after some.
    let s = start(&store, &["--index-save-every", "700"]);
    let (gallery, queries) = identity_gallery(600, DIM, 5);
    let acked: Arc<Mutex<Vec<(usize, u64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let gallery = Arc::new(gallery);
    let mut workers = vec![];
    for w in 0..2 {
        let (acked, stop, gallery, url) =
            (acked.clone(), stop.clone(), gallery.clone(), s.url.clone());
        workers.push(std::thread::spawn(move || {
            let c = Server {
                child: Command::new("true").spawn().unwrap(),
                url,
                log: PathBuf::new(),
            };
            // Batches of 50 faces (10 people), interleaved between workers.
            let mut b = w;
            while !stop.load(Ordering::Relaxed) && b * 50 < gallery.len() {
                let chunk = &gallery[b * 50..(b + 1) * 50];
                let faces: Vec<Value> = chunk
                    .iter()
                    .enumerate()
                    .map(|(i, v)| json!({"label": format!("person-{}", (b * 50 + i) / 5), "embedding": v}))
                    .collect();
                let (code, v) = post_json(&c, "/api/v1/faces/embeddings", &json!({ "faces": faces }), None);
                if code == 200 {
                    let mut a = acked.lock().unwrap();
                    for (i, id) in v["ids"].as_array().unwrap().iter().enumerate() {
                        a.push((b * 50 + i, id.as_u64().unwrap()));
                    }
                }
                b += 2;
            }
        }));
    }
    let t = Instant::now();
    while acked.lock().unwrap().len() < 1500 && t.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut s = s;
    s.child.kill().unwrap(); // SIGKILL
    s.child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 1500, "only {} acknowledged", acked.len());
    drop(s);
    let t = Instant::now();
    let s = start(&store, &[]);
    eprintln!(
        "restart after kill -9 with {} faces: {:.2} s",
        acked.len(),
        t.elapsed().as_secs_f64()
    );
    let (_, st) = curl(&s, &["/api/v1/stats"]);
    assert!(st["faces"].as_u64().unwrap() >= acked.len() as u64, "{st}");
    assert_eq!(st["faces"], st["indexed"], "{st}");
    // Each acknowledged face finds itself first.
    assert_each_finds_itself(&s, &gallery, &acked);
    // People whose five photos were all acknowledged.
    let mut per: std::collections::BTreeMap<usize, usize> = Default::default();
    for (g, _) in &acked {
        *per.entry(g / 5).or_default() += 1;
    }
    let complete: Vec<usize> = per
        .into_iter()
        .filter(|(_, n)| *n == 5)
        .map(|(p, _)| p)
        .collect();
    assert!(complete.len() >= 250, "{}", complete.len());
    let r = recall_of(&s, &complete, &queries);
    assert!(r >= 0.99, "recall@5 after restart {r}");

    if let Store::Embedded(dir) = &store {
        // A torn index file is rebuilt from the store, with progress in the log.
        drop(s);
        let mut torn = false;
        for e in std::fs::read_dir(dir.path()).unwrap().flatten() {
            if e.file_name().to_string_lossy().ends_with(".usearch") {
                let len = e.metadata().unwrap().len();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(e.path())
                    .unwrap()
                    .set_len(len / 3)
                    .unwrap();
                torn = true;
            }
        }
        assert!(torn, "no saved index in {}", dir.path().display());
        let s = start(&store, &[]);
        let log = std::fs::read_to_string(&s.log).unwrap();
        assert!(log.contains("rebuilding from the store"), "{log}");
        assert!(log.contains("index: rebuilt"), "{log}");
        let (_, st) = curl(&s, &["/api/v1/stats"]);
        assert_eq!(st["faces"], st["indexed"], "{st}");
        assert!(recall_of(&s, &complete, &queries) >= 0.99);
    }
}

/// Two servers on one database: what one registers or deletes, the other
/// sees at once; a kill -9 of one loses nothing it acknowledged.
#[test]
fn two_servers_share_one_postgres() {
    let store = Store::postgres();
    let a = start(&store, &[]);
    let b = start(&store, &[]);
    let photo = shared().join("images/faces/train/biden/biden.jpg");
    let (code, v) = curl(
        &a,
        &[
            "/api/v1/faces",
            "-X",
            "POST",
            "-F",
            &format!("image=@{}", photo.display()),
            "-F",
            "label=biden",
        ],
    );
    assert_eq!(code, 200, "{v}");
    let id = v["images"][0]["faces"][0]["id"].as_u64().unwrap();
    let query = shared().join("images/faces/query/obama_and_biden.jpg");
    let (code, found) = curl(
        &b,
        &[
            "/api/v1/search",
            "-X",
            "POST",
            "-F",
            &format!("image=@{}", query.display()),
        ],
    );
    assert_eq!(code, 200, "{found}");
    assert!(
        found["results"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["matches"][0]["id"] == id),
        "registered through A, not found through B: {found}"
    );
    let (code, _) = curl(
        &b,
        &[&format!("/api/v1/images/{}", v["images"][0]["image_id"])],
    );
    assert_eq!(code, 200, "the photo is shared too");
    assert_eq!(
        curl(&a, &[&format!("/api/v1/faces/{id}"), "-X", "DELETE"]).0,
        200
    );
    assert_eq!(
        curl(&b, &[&format!("/api/v1/faces/{id}")]).0,
        404,
        "deleted through A, still in B"
    );

    // kill -9 of A during an import through A and B: everything acknowledged stays.
    let (gallery, _) = identity_gallery(200, DIM, 9);
    let gallery = Arc::new(gallery);
    let acked: Arc<Mutex<Vec<(usize, u64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = vec![];
    for (w, url) in [a.url.clone(), b.url.clone()].into_iter().enumerate() {
        let (acked, stop, gallery) = (acked.clone(), stop.clone(), gallery.clone());
        workers.push(std::thread::spawn(move || {
            let c = Server {
                child: Command::new("true").spawn().unwrap(),
                url,
                log: PathBuf::new(),
            };
            let mut i = w;
            while !stop.load(Ordering::Relaxed) && i < gallery.len() {
                let (code, v) = post_json(
                    &c,
                    "/api/v1/faces/embeddings",
                    &json!({"faces": [{"label": format!("p{i}"), "embedding": gallery[i]}]}),
                    None,
                );
                if code == 200 {
                    acked
                        .lock()
                        .unwrap()
                        .push((i, v["ids"][0].as_u64().unwrap()));
                }
                i += 2;
            }
        }));
    }
    let t = Instant::now();
    while acked.lock().unwrap().len() < 100 && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut a = a;
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 100, "{}", acked.len());
    assert_each_finds_itself(&b, &gallery, &acked);
}

/// Start-up errors are one line and exit 1; a database that goes away
/// while serving gives 503 JSON with Retry-After, and the server recovers.
#[test]
fn database_faults_are_clear_and_survived() {
    let serve = |url: &str| {
        Command::new(env!("CARGO_BIN_EXE_faceall"))
            .args([
                "serve",
                "--model",
                common::bundle().to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                url,
            ])
            .env_remove("FACEALL_DATABASE_URL")
            .stdout(Stdio::null())
            .output()
            .unwrap()
    };
    let o = serve("postgresql://postgres:@/postgres?host=/nonexistent-faceall-socket-dir");
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("database"), "{err}");

    let pg = Pg::start(Some("right-password"));
    let o = serve(&pg.uri.replace("right-password", "wrong-password"));
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("password"), "{err}");

    let store = Store::Postgres(Pg::start(None));
    let s = start(&store, &[]);
    let (gallery, _) = identity_gallery(20, DIM, 3);
    add_gallery(&s, &gallery, 0);
    drop(pg); // the password test's server
    let Store::Postgres(mut pg2) = store else {
        unreachable!()
    };
    pg2.stop_db();
    let head = Command::new("curl")
        .args([
            "-s",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
        ])
        .args([
            "--data-binary",
            &json!({"embeddings": [gallery[0]]}).to_string(),
        ])
        .arg(format!("{}/api/v1/search/embeddings", s.url))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&head.stdout).to_lowercase();
    assert!(head.starts_with("http/1.1 503"), "{head}");
    assert!(head.contains("retry-after"), "{head}");
    let (code, v) = post_json(
        &s,
        "/api/v1/search/embeddings",
        &json!({"embeddings": [gallery[0]]}),
        None,
    );
    assert_eq!(code, 503, "{v}");
    assert!(v["error"].as_str().unwrap().contains("unavailable"), "{v}");
    assert!(
        !v["error"].as_str().unwrap().contains("/"),
        "no paths or internals: {v}"
    );
    assert_eq!(curl(&s, &["/api/v1/health"]).0, 503);
    pg2.start_db();
    let t = Instant::now();
    loop {
        let (code, v) = post_json(
            &s,
            "/api/v1/search/embeddings",
            &json!({"embeddings": [gallery[0]], "k": 1}),
            None,
        );
        if code == 200 {
            assert!(v["results"][0]["matches"][0]["distance"].as_f64().unwrap() < 1e-5);
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no recovery: {code} {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(curl(&s, &["/api/v1/health"]).0, 200);
}

/// The embedded store on a 3 MB tmpfs: registrations succeed until the
/// disk is full, then answer 507 with nothing half-written; every
/// acknowledged face is there after a restart.
#[test]
fn a_full_disk_refuses_registrations_cleanly() {
    let mnt = tempfile::tempdir().unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(mnt.path())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "this test mounts a small tmpfs (needs root, as CI has)");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _um = Unmount(mnt.path().to_path_buf());
    let store = Store::Embedded(tempfile::tempdir_in(mnt.path()).unwrap());
    let s = start(&store, &[]);
    let photo = shared().join("images/faces/train/obama/obama2.jpg");
    let mut acked = vec![];
    let mut refused = None;
    for i in 0..200 {
        let (code, v) = curl(
            &s,
            &[
                "/api/v1/faces",
                "-X",
                "POST",
                "-F",
                &format!("image=@{}", photo.display()),
                "-F",
                &format!("label=p{i}"),
            ],
        );
        if code == 200 {
            acked.push(v["images"][0]["faces"][0]["id"].as_u64().unwrap());
        } else {
            refused = Some((code, v));
            break;
        }
    }
    let (code, v) = refused.expect("the disk never filled");
    assert_eq!(code, 507, "{v}");
    assert!(v["error"].as_str().unwrap().contains("full"), "{v}");
    assert!(!acked.is_empty());
    let (code, st) = curl(&s, &["/api/v1/stats"]);
    assert_eq!(code, 200, "server went down");
    assert_eq!(
        st["faces"].as_u64().unwrap(),
        acked.len() as u64,
        "half-written: {st}"
    );
    drop(s);
    // Some room again (as an operator would make), then a restart keeps
    // exactly what was acknowledged.
    let _ = Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(mnt.path())
        .status();
    let s = start(&store, &[]);
    let (_, st) = curl(&s, &["/api/v1/stats"]);
    assert_eq!(st["faces"].as_u64().unwrap(), acked.len() as u64, "{st}");
    for id in &acked {
        assert_eq!(
            curl(&s, &[&format!("/api/v1/faces/{id}")]).0,
            200,
            "face {id} lost"
        );
    }
}
