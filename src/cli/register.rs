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
    /// Requests in flight at once
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// Photos of one person per request, at most (the server embeds the
    /// faces of a request's photos 8 at a time, fewer calls than one photo
    /// a request); 1 sends every photo on its own
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=100))]
    per_request: u64,
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
    let groups = group(photos, a.per_request as usize, MAX_REQUEST_BYTES);
    let mut results = futures_util::stream::iter(groups.into_iter().map(|g| {
        let client = client.clone();
        let endpoint = endpoint.clone();
        let collection = collection.clone();
        async move { upload_group(&client, &endpoint, &collection, token, g).await }
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
    while let Some(r) = results.next().await {
        let done = match r {
            Ok(done) => done,
            Err(e) => {
                bar.finish_and_clear();
                return Err(e);
            }
        };
        for (p, o) in done {
            bar.inc(1);
            bar.set_message(p.label.clone());
            match o {
                Outcome::Registered(f) => {
                    s.faces += f;
                    s.registered_photos += 1;
                }
                Outcome::Already => s.already += 1,
                Outcome::NoFace => s.no_face += 1,
                Outcome::Error(e) => s.errors.push(format!("{}: {e}", p.path.display())),
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

/// Bytes of photos per request at most (the server takes 20 MB).
const MAX_REQUEST_BYTES: u64 = 16 << 20;

/// The photos in requests: consecutive photos of one person, at most
/// `per` and `max_bytes` together (a bigger photo goes alone).
fn group(photos: Vec<Photo>, per: usize, max_bytes: u64) -> Vec<Vec<Photo>> {
    let mut groups: Vec<Vec<Photo>> = vec![];
    let mut bytes = 0;
    for p in photos {
        let size = std::fs::metadata(&p.path).map(|m| m.len()).unwrap_or(0);
        match groups.last_mut() {
            Some(g)
                if g.len() < per.max(1)
                    && g.first().is_some_and(|f| f.label == p.label)
                    && bytes + size <= max_bytes =>
            {
                bytes += size;
                g.push(p);
            }
            _ => {
                bytes = size;
                groups.push(vec![p]);
            }
        }
    }
    groups
}

/// POST a group of one person's photos; when the server refuses the
/// request for one bad photo (400, 413), each photo is sent on its own so
/// the error names that photo and the others are registered. Err for what
/// stops the whole import.
async fn upload_group(
    client: &reqwest::Client,
    endpoint: &str,
    collection: &str,
    token: Option<&str>,
    photos: Vec<Photo>,
) -> Result<Vec<(Photo, Outcome)>> {
    let mut done = vec![];
    let mut files = vec![];
    for p in photos {
        match tokio::fs::read(&p.path).await {
            Ok(b) => files.push((p, b)),
            Err(e) => done.push((p, Outcome::Error(format!("cannot read: {e}")))),
        }
    }
    if files.is_empty() {
        return Ok(done);
    }
    let refs: Vec<(&Photo, &[u8])> = files.iter().map(|(p, b)| (p, b.as_slice())).collect();
    let no_list = || Outcome::Error("the server's answer lists no photo".into());
    let outcomes = match upload(client, endpoint, collection, token, &refs).await? {
        Reply::Each(o) if o.len() == files.len() => o,
        Reply::Refused(e) if files.len() == 1 => vec![Outcome::Error(e)],
        Reply::Each(_) if files.len() == 1 => vec![no_list()],
        // A group refused for one of its photos (or an answer that does
        // not list each): one photo a request.
        Reply::Each(_) | Reply::Refused(_) => {
            let mut each = vec![];
            for r in refs {
                each.push(
                    match upload(client, endpoint, collection, token, &[r]).await? {
                        Reply::Each(mut o) if o.len() == 1 => o.remove(0),
                        Reply::Each(_) => no_list(),
                        Reply::Refused(e) => Outcome::Error(e),
                    },
                );
            }
            each
        }
    };
    done.extend(files.into_iter().map(|(p, _)| p).zip(outcomes));
    Ok(done)
}

/// The server's answer to one request.
enum Reply {
    /// An outcome per photo, in request order.
    Each(Vec<Outcome>),
    /// The request was refused (the status and the server's message).
    Refused(String),
}

/// POST photos of one label, retrying what a busy server refuses for now
/// (429, 503, lost connections) a few times; Err for what stops the whole
/// import.
async fn upload(
    client: &reqwest::Client,
    endpoint: &str,
    collection: &str,
    token: Option<&str>,
    photos: &[(&Photo, &[u8])],
) -> Result<Reply> {
    let Some(label) = photos.first().map(|(p, _)| p.label.clone()) else {
        return Ok(Reply::Each(vec![]));
    };
    let mut wait = Duration::from_millis(500);
    for attempt in 0..6 {
        let mut form = reqwest::multipart::Form::new().text("label", label.clone());
        for (p, bytes) in photos {
            let file = p
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "photo".into());
            form = form.part(
                "image",
                reqwest::multipart::Part::bytes(bytes.to_vec()).file_name(file),
            );
        }
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
                return Ok(Reply::Each(images.iter().map(outcome).collect()));
            }
            422 => {
                return Ok(Reply::Each(
                    photos.iter().map(|_| Outcome::NoFace).collect(),
                ))
            }
            429 | 503 if attempt < 5 => {
                let w = retry_after.map(Duration::from_secs).unwrap_or(wait);
                tokio::time::sleep(w.min(Duration::from_secs(30))).await;
                wait *= 2;
            }
            c if fatal(c) => bail!("the server refused the import ({c}): {message}"),
            c => return Ok(Reply::Refused(format!("{c}: {message}"))),
        }
    }
    Ok(Reply::Refused("the server stayed busy; try again".into()))
}

/// What the server's answer says of one photo.
fn outcome(image: &Value) -> Outcome {
    let faces = image["faces"].as_array().map_or(0, Vec::len) as u64;
    if image["already_registered"].as_bool() == Some(true) {
        Outcome::Already
    } else if faces == 0 {
        Outcome::NoFace
    } else {
        Outcome::Registered(faces)
    }
}
