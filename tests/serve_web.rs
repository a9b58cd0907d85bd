//! serve's web pages in a real browser: Debian's headless Chromium driven
//! through ChromeDriver (W3C WebDriver over HTTP, spoken with curl). The
//! test registers every training identity through /register's form, then
//! uploads obama_and_biden.jpg on /retrieve and reads the matches the page
//! shows; screenshots of both pages go to target/screenshots/.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{convert_facenet_bundle, free_port, root, shared};
use serde_json::{json, Value};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http(method: &str, url: &str, body: Option<&Value>) -> Value {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-m", "120", "-X", method, url]);
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "-d", &b.to_string()]);
    }
    let o = cmd.output().expect("curl");
    serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(120) {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for {what}");
}

struct Browser {
    base: String,
    _driver: Proc,
}

impl Browser {
    fn start() -> Browser {
        for p in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
            assert!(
                Path::new(p).exists(),
                "{p} missing: run scripts/setup (Debian chromium, chromium-driver)"
            );
        }
        let port = free_port();
        let driver = Proc(
            Command::new("/usr/bin/chromedriver")
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let url = format!("http://127.0.0.1:{port}");
        wait_until("chromedriver", || {
            http("GET", &format!("{url}/status"), None)["value"]["ready"] == true
        });
        let caps = json!({"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1600"]
        }}}});
        let s = http("POST", &format!("{url}/session"), Some(&caps));
        let id = s["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {s}"))
            .to_string();
        Browser {
            base: format!("{url}/session/{id}"),
            _driver: driver,
        }
    }

    fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        let v = http(method, &format!("{}{path}", self.base), Some(&body));
        assert!(
            v["value"]["error"].is_null(),
            "webdriver {path}: {}",
            v["value"]
        );
        v["value"].clone()
    }

    fn go(&self, url: &str) {
        self.cmd("POST", "/url", json!({ "url": url }));
    }

    fn find(&self, css: &str) -> String {
        let v = self.cmd(
            "POST",
            "/element",
            json!({"using": "css selector", "value": css}),
        );
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}"))
            .to_string()
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.cmd(
            "POST",
            &format!("/element/{e}/value"),
            json!({ "text": text }),
        );
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        self.cmd("POST", &format!("/element/{e}/click"), json!({}));
    }

    fn js(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
    }

    fn screenshot(&self, path: &Path) {
        let b64 = self.cmd("GET", "/screenshot", json!({}));
        let png = base64_decode(b64.as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, &png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        http("DELETE", &self.base, None);
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| !b"=\n\r".contains(c)).collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= (val(c) as u32) << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

on_both_backends!(register_and_retrieve_through_the_pages);
fn register_and_retrieve_through_the_pages(store: common::Store) {
    let tmp = tempfile::tempdir().unwrap();
    convert_facenet_bundle(tmp.path());
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let _server = Proc(
        Command::new(env!("CARGO_BIN_EXE_faceall"))
            .args(["serve", "--model"])
            .arg(tmp.path())
            .args(store.args())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env_remove("FACEALL_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("server", || {
        http("GET", &format!("{url}/api/v1/health"), None)["status"] == "ok"
    });
    let shots = root().join("target/screenshots");
    let b = Browser::start();

    // The index links to both pages.
    b.go(&url);
    let links = b.js("return [...document.querySelectorAll('a')].map(a => a.getAttribute('href'))");
    for l in ["/register", "/retrieve", "/gallery"] {
        assert!(links.as_array().unwrap().iter().any(|x| x == l), "{links}");
    }

    let train = shared().join("images/faces/train").canonicalize().unwrap();
    let mut people: Vec<PathBuf> = std::fs::read_dir(&train)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    people.sort();
    for dir in &people {
        let who = dir.file_name().unwrap().to_string_lossy().into_owned();
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path().display().to_string())
            .collect();
        files.sort();
        b.go(&format!("{url}/register"));
        b.type_into("#label", &who);
        b.type_into("#images", &files.join("\n"));
        b.click("#send");
        wait_until("registration", || {
            b.js("return document.getElementById('result').textContent")
                .as_str()
                .is_some_and(|t| t.contains("registered"))
        });
        let text = b.js("return document.getElementById('result').className + ' ' + document.getElementById('result').textContent");
        assert!(text.as_str().unwrap().starts_with("ok"), "{who}: {text}");
    }
    b.screenshot(&shots.join("register.png"));

    b.go(&format!("{url}/retrieve"));
    let photo = shared()
        .join("images/faces/query/obama_and_biden.jpg")
        .canonicalize()
        .unwrap();
    b.type_into("#image", &photo.display().to_string());
    b.click("#search");
    wait_until("search results", || {
        b.js("return document.querySelectorAll('.match canvas').length > 0 && document.getElementById('status').className === 'ok'")
            == true
    });
    // Give the match thumbnails time to load and draw.
    wait_until("thumbnails", || {
        b.js("return [...document.querySelectorAll('.match canvas')].every(c => c.width === 120)")
            == true
    });
    let status = b.js("return document.getElementById('status').textContent");
    assert!(
        status.as_str().unwrap().starts_with("3 face(s) found"),
        "{status}"
    );
    let sections = b.js(
        "return [...document.querySelectorAll('section.result')].map(s => [...s.querySelectorAll('.label')].map(l => l.textContent))",
    );
    let firsts: Vec<Option<&str>> = sections
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s[0].as_str())
        .collect();
    assert!(firsts.contains(&Some("obama")), "{sections}");
    assert!(firsts.contains(&Some("biden")), "{sections}");
    assert!(
        firsts.contains(&None),
        "the girl should match nobody: {sections}"
    );
    // The photo was drawn with its boxes: some pixel in the canvas is the
    // first box colour.
    let drawn = b.js(
        "const c=document.getElementById('photo');return c.width>0 && c.getContext('2d').getImageData(0,0,c.width,c.height).data.some((v,i,a)=>i%4===0&&v===230&&a[i+1]===25&&a[i+2]===75)",
    );
    assert_eq!(drawn, true, "no box drawn on the photo");
    b.screenshot(&shots.join("retrieve.png"));

    // The gallery: every registered person with a thumbnail per face.
    let labels: Vec<String> = people
        .iter()
        .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    b.go(&format!("{url}/gallery"));
    let people_shown =
        "return [...document.querySelectorAll('section.person')].map(s => s.dataset.label)";
    wait_until("the gallery", || {
        b.js(people_shown)
            .as_array()
            .is_some_and(|a| a.len() == labels.len())
    });
    assert_eq!(b.js(people_shown), json!(labels));
    wait_until("gallery thumbnails", || {
        b.js("const c=[...document.querySelectorAll('.person canvas')];return c.length>0 && c.every(x => x.width === 96)")
            == true
    });
    let api_faces = http("GET", &format!("{url}/api/v1/stats"), None)["faces"]
        .as_u64()
        .unwrap();
    let shown = b.js("return document.querySelectorAll('.person .face').length");
    assert_eq!(
        shown.as_u64(),
        Some(api_faces),
        "every face has a thumbnail"
    );
    b.screenshot(&shots.join("gallery.png"));
    // Delete one of Biden's faces from the page (after the confirmation).
    let before = http("GET", &format!("{url}/api/v1/subjects/biden"), None)["faces"]
        .as_array()
        .unwrap()
        .len();
    b.click("section.person[data-label='biden'] .face button.delete");
    wait_until("the confirmation", || {
        http("GET", &format!("{}/alert/text", b.base), None)["value"].is_string()
    });
    b.cmd("POST", "/alert/accept", json!({}));
    wait_until("the deletion", || {
        b.js("return document.getElementById('status').textContent")
            .as_str()
            .is_some_and(|t| t.contains("deleted"))
    });
    let after = http("GET", &format!("{url}/api/v1/subjects/biden"), None)["faces"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(0);
    assert_eq!(after, before - 1, "the face is deleted on the server");
    let shown = b.js(
        "return document.querySelectorAll(\"section.person[data-label='biden'] .face\").length",
    );
    assert_eq!(shown.as_u64(), Some(after as u64));

    // Per collection: a new collection shows only what was registered in it.
    let created = http(
        "POST",
        &format!("{url}/api/v1/collections"),
        Some(&json!({"name": "vip"})),
    );
    assert_eq!(created["name"], "vip", "{created}");
    let photo = shared().join("images/faces/train/obama/obama2.jpg");
    let o = Command::new("curl")
        .args(["-s", "-F", "label=obama", "-F"])
        .arg(format!("image=@{}", photo.display()))
        .arg(format!("{url}/api/v1/faces?collection=vip"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"registered\""));
    b.go(&format!("{url}/gallery?collection=vip"));
    wait_until("the vip gallery", || {
        b.js("return document.getElementById('status').textContent")
            .as_str()
            .is_some_and(|t| t.contains("collection vip"))
    });
    assert_eq!(b.js(people_shown), json!(["obama"]));
    wait_until("vip thumbnails", || {
        b.js("const c=[...document.querySelectorAll('.person canvas')];return c.length>0 && c.every(x => x.width === 96)")
            == true
    });
    b.screenshot(&shots.join("gallery-vip.png"));
}
