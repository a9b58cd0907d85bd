//! `faceall register DIR`: bulk import of a folder tree, one subfolder per
//! person (its name is the label), through the HTTP API of a running
//! server (`--server URL`) or of one started for the job on a store
//! (`--data DIR`, so both ways go through the same checks and limits).
//!
//! Resumable: the server answers a photo it holds already under the same
//! label (the same bytes) with `already_registered`, so running the import
//! again after an interruption only processes what is missing.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use serde_json::{json, Value};

#[derive(clap::Args)]
pub struct Args {
    /// Folder with one subfolder per person (label = subfolder name) holding .jpg/.jpeg/.png photos
    dir: PathBuf,
    /// A running `faceall serve` to register into (e.g. http://127.0.0.1:8000)
    #[arg(long, conflicts_with = "data", required_unless_present = "data")]
    server: Option<String>,
    /// An embedded store to register into (a server is started on it for the job; the store must
    /// not be in use by another server)
    #[arg(long)]
    data: Option<PathBuf>,
    /// The collection to register into
    #[arg(long, default_value = "default")]
    collection: String,
    /// The server's admin token or the collection's key (or FACEALL_TOKEN)
    #[arg(long, env = "FACEALL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Read the token from this file (its first line)
    #[arg(long, conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// With --data: the converted FaceNet bundle
    #[arg(long, default_value = ".cache/converted/facenet")]
    model: PathBuf,
    /// With --data: the MTCNN detector directory
    #[arg(long, default_value = "converted/mtcnn")]
    mtcnn: PathBuf,
    /// Photos in flight at once
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// Print the summary as JSON on stdout
    #[arg(long)]
    json: bool,
}

/// A photo to register.
struct Photo {
    path: PathBuf,
    label: String,
}

/// What became of one photo.
enum Outcome {
    Registered(u64),
    Already,
    NoFace,
    Error(String),
}

/// The photos of the tree, in a stable order, and files left out.
fn collect(dir: &Path) -> Result<(Vec<Photo>, Vec<PathBuf>)> {
    let mut photos = vec![];
    let mut ignored = vec![];
    let mut people: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("{}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    people.sort();
    for p in people {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') {
            continue;
        }
        if !p.is_dir() {
            ignored.push(p);
            continue;
        }
        let mut stack = vec![p.clone()];
        let mut files = vec![];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                ignored.push(d);
                continue;
            };
            for e in entries.flatten() {
                let f = e.path();
                let hidden = e.file_name().to_string_lossy().starts_with('.');
                if hidden {
                    continue;
                }
                if f.is_dir() {
                    stack.push(f);
                } else if is_photo(&f) {
                    files.push(f);
                } else {
                    ignored.push(f);
                }
            }
        }
        files.sort();
        photos.extend(files.into_iter().map(|path| Photo {
            path,
            label: name.clone(),
        }));
    }
    Ok((photos, ignored))
}

fn is_photo(p: &Path) -> bool {
    matches!(
        p.extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .as_deref(),
        Some("jpg" | "jpeg" | "png")
    )
}

/// A `faceall serve` started on a store for the job, stopped (and its
/// index saved) on drop.
struct LocalServer {
    child: Child,
    url: String,
}

impl LocalServer {
    fn start(a: &Args, data: &Path, token: &str) -> Result<Self> {
        let exe = std::env::current_exe().context("the faceall binary")?;
        let mut child = Command::new(exe)
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .arg("--model")
            .arg(&a.model)
            .arg("--mtcnn")
            .arg(&a.mtcnn)
            .env("FACEALL_TOKEN", token)
            .env_remove("FACEALL_DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting faceall serve")?;
        let stderr = child.stderr.take().context("the server's log")?;
        let mut lines = BufReader::new(stderr).lines();
        let mut log = vec![];
        let url = loop {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some((_, rest)) = l.split_once("listening on ") {
                        let u: String = rest
                            .chars()
                            .take_while(|c| !c.is_whitespace() && *c != '"')
                            .collect();
                        break u;
                    }
                    log.push(l);
                }
                _ => {
                    let _ = child.wait();
                    bail!(
                        "the server on {} did not start: {}",
                        data.display(),
                        log.join(" / ")
                    );
                }
            }
        };
        // Keep reading its log so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(LocalServer { child, url })
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        // SIGTERM: a clean shutdown saves the index.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let _ = self.child.wait();
    }
}

fn random_token() -> Result<String> {
    let mut b = [0u8; 24];
    getrandom::getrandom(&mut b)
        .map_err(|e| anyhow::anyhow!("no randomness for the job's token: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

pub fn run(a: Args) -> Result<ExitCode> {
    let token = super::token_from(a.token.clone(), a.token_file.as_deref())?;
    let (photos, ignored) = collect(&a.dir)?;
    if photos.is_empty() {
        bail!(
            "{}: no photos in person folders (DIR/LABEL/*.jpg|jpeg|png)",
            a.dir.display()
        );
    }
    let (_local, url, token) = match (&a.server, &a.data) {
        (Some(u), _) => (None, u.trim_end_matches('/').to_string(), token),
        (None, Some(d)) => {
            let t = random_token()?;
            let s = LocalServer::start(&a, d, &t)?;
            let u = s.url.clone();
            (Some(s), u, Some(t))
        }
        (None, None) => bail!("give --server URL or --data DIR"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let summary = rt.block_on(import(&a, &url, token.as_deref(), photos))?;
    let s = &summary;
    if a.json {
        let mut v = s.json.clone();
        v["ignored_files"] = json!(ignored.len());
        super::print_stdout(&format!("{v}\n"));
    } else {
        eprintln!(
            "{} photos: {} faces registered from {} photos, {} already registered, {} without a face, {} errors{}",
            s.photos,
            s.faces,
            s.registered_photos,
            s.already,
            s.no_face,
            s.errors.len(),
            if ignored.is_empty() {
                String::new()
            } else {
                format!("; {} files that are not photos ignored", ignored.len())
            }
        );
        for e in &s.errors {
            eprintln!("  {e}");
        }
    }
    Ok(if s.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

struct Summary {
    photos: usize,
    faces: u64,
    registered_photos: usize,
    already: usize,
    no_face: usize,
    errors: Vec<String>,
    json: Value,
}

/// Statuses after which no other photo can succeed either.
fn fatal(code: u16) -> bool {
    matches!(code, 401 | 403 | 404)
}

async fn import(a: &Args, url: &str, token: Option<&str>, photos: Vec<Photo>) -> Result<Summary> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .no_proxy()
        .build()
        .context("HTTP client")?;
    let endpoint = format!("{url}/api/v1/faces");
    let bar = indicatif::ProgressBar::new(photos.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} photos, {elapsed} ({eta} left) {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let n = photos.len();
    let collection = a.collection.clone();
    let mut results = futures_util::stream::iter(photos.into_iter().map(|p| {
        let client = client.clone();
        let endpoint = endpoint.clone();
        let collection = collection.clone();
        async move {
            let r = upload(&client, &endpoint, &collection, token, &p).await;
            (p, r)
        }
    }))
    .buffer_unordered(a.jobs.max(1));
    let mut s = Summary {
        photos: n,
        faces: 0,
        registered_photos: 0,
        already: 0,
        no_face: 0,
        errors: vec![],
        json: Value::Null,
    };
    while let Some((p, r)) = results.next().await {
        bar.inc(1);
        bar.set_message(p.label.clone());
        match r {
            Ok(Outcome::Registered(f)) => {
                s.faces += f;
                s.registered_photos += 1;
            }
            Ok(Outcome::Already) => s.already += 1,
            Ok(Outcome::NoFace) => s.no_face += 1,
            Ok(Outcome::Error(e)) => s.errors.push(format!("{}: {e}", p.path.display())),
            Err(e) => {
                bar.finish_and_clear();
                return Err(e.context(format!("{}", p.path.display())));
            }
        }
    }
    bar.finish_and_clear();
    s.json = json!({
        "photos": s.photos,
        "faces_registered": s.faces,
        "photos_registered": s.registered_photos,
        "already_registered": s.already,
        "without_a_face": s.no_face,
        "errors": s.errors,
        "collection": a.collection,
    });
    Ok(s)
}

/// POST one photo, retrying what a busy server refuses for now (429, 503,
/// lost connections) a few times; Err for what stops the whole import.
async fn upload(
    client: &reqwest::Client,
    endpoint: &str,
    collection: &str,
    token: Option<&str>,
    p: &Photo,
) -> Result<Outcome> {
    let bytes = match tokio::fs::read(&p.path).await {
        Ok(b) => b,
        Err(e) => return Ok(Outcome::Error(format!("cannot read: {e}"))),
    };
    let file = p
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "photo".into());
    let mut wait = Duration::from_millis(500);
    for attempt in 0..6 {
        let form = reqwest::multipart::Form::new()
            .text("label", p.label.clone())
            .part(
                "image",
                reqwest::multipart::Part::bytes(bytes.clone()).file_name(file.clone()),
            );
        let mut req = client
            .post(endpoint)
            .query(&[("collection", collection)])
            .multipart(form);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) if attempt < 5 && (e.is_connect() || e.is_timeout() || e.is_request()) => {
                tokio::time::sleep(wait).await;
                wait *= 2;
                continue;
            }
            Err(e) => bail!("cannot reach the server: {e}"),
        };
        let code = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let body = resp.bytes().await.unwrap_or_default();
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let message = v["error"].as_str().unwrap_or("").to_string();
        match code {
            200 => {
                let images = v["images"].as_array().cloned().unwrap_or_default();
                let already = images
                    .iter()
                    .any(|i| i["already_registered"].as_bool() == Some(true));
                let faces = v["registered"].as_u64().unwrap_or(0);
                return Ok(if already {
                    Outcome::Already
                } else if faces == 0 {
                    Outcome::NoFace
                } else {
                    Outcome::Registered(faces)
                });
            }
            422 => return Ok(Outcome::NoFace),
            429 | 503 if attempt < 5 => {
                let w = retry_after.map(Duration::from_secs).unwrap_or(wait);
                tokio::time::sleep(w.min(Duration::from_secs(30))).await;
                wait *= 2;
            }
            c if fatal(c) => bail!("the server refused the import ({c}): {message}"),
            c => return Ok(Outcome::Error(format!("{c}: {message}"))),
        }
    }
    Ok(Outcome::Error("the server stayed busy; try again".into()))
}
