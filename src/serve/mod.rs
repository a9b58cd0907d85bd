//! `faceall serve`: register faces and retrieve the closest registered faces
//! over HTTP (axum), with the converted FaceNet on the fast engine, MTCNN
//! on the Caffe executor, an HNSW index and a durable store of record.
//!
//! Every request's heavy work (decode, detect, embed, fsync) runs on
//! tokio's blocking pool; the store and index sit behind one mutex, held
//! only for the short index/log updates, never while a model runs.

mod index;
mod openapi;
mod pages;
pub mod pipeline;
pub mod store;
mod urls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{DefaultBodyLimit, Multipart, Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use index::Index;
use pipeline::{Found, Pipeline};
use store::{FaceRecord, Store};

/// Euclidean distance between L2-normalised FaceNet embeddings under which
/// two faces are the same person, calibrated on ../shared/images/faces with
/// FaceAll's MTCNN: every registered photo of a query's own identity lies at
/// 0.33 to 0.943 (the hardest, the PNG video frame of alex_lacamoire), the
/// nearest other person at 1.062 or more; 1.0 sits between (README).
pub const DEFAULT_THRESHOLD: f32 = 1.0;
/// Largest request body (all uploaded photos together).
pub const MAX_BODY_BYTES: usize = 20 * 1024 * 1024;
/// Photos per registration or URL list, as the original FaceAll.
pub const MAX_IMAGES: usize = 100;

pub struct Config {
    pub model: PathBuf,
    pub mtcnn: PathBuf,
    pub data: PathBuf,
    pub listen: SocketAddr,
    pub token: Option<String>,
    pub threshold: f32,
    pub allow_url_hosts: Vec<String>,
}

struct Db {
    store: Store,
    index: Index,
}

struct App {
    pipe: Pipeline,
    db: Mutex<Db>,
    token: Option<String>,
    threshold: f32,
    allow_url_hosts: Vec<String>,
    started: Instant,
    requests: AtomicU64,
    /// Time in detect + embed, and calls (for the load benchmark's ratio).
    pipeline_ns: AtomicU64,
    pipeline_calls: AtomicU64,
    model: String,
}

impl App {
    fn faces(&self, img: &image::RgbImage) -> std::result::Result<Vec<Found>, ApiError> {
        let t = Instant::now();
        let r = self.pipe.faces(img).map_err(internal);
        self.pipeline_ns
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.pipeline_calls.fetch_add(1, Ordering::Relaxed);
        r
    }
}

/// A JSON error with its status.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

type ApiResult = std::result::Result<Json<Value>, ApiError>;

/// glibc's malloc gives each thread its own arena and keeps freed blocks
/// for reuse, so the detector's buffers (several MB per photo, allocated on
/// changing threads) stayed resident in every arena: the server peaked at
/// 3.1x the weights under four clients. One arena, trimmed after each photo
/// (`pipeline::release_memory`), keeps it within 2x at the same speed;
/// handing big blocks back on every free (a low mmap threshold) halved the
/// throughput (scripts/bench_serve).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before the
    // server's threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Load the models and the store, then serve until Ctrl-C.
pub fn serve(cfg: Config) -> Result<()> {
    tune_allocator();
    let t = Instant::now();
    let pipe = Pipeline::load(&cfg.model, &cfg.mtcnn)?;
    let store = Store::open(&cfg.data)?;
    let index = Index::build(
        pipe.dim,
        store
            .faces()
            .values()
            .map(|f| (f.id, f.embedding.as_slice())),
    );
    eprintln!(
        "faceall serve: {} faces from {}, models loaded in {:.2} s",
        index.len(),
        cfg.data.display(),
        t.elapsed().as_secs_f64()
    );
    let app = Arc::new(App {
        pipe,
        db: Mutex::new(Db { store, index }),
        token: cfg.token.filter(|t| !t.is_empty()),
        threshold: cfg.threshold,
        allow_url_hosts: cfg.allow_url_hosts,
        started: Instant::now(),
        requests: AtomicU64::new(0),
        pipeline_ns: AtomicU64::new(0),
        pipeline_calls: AtomicU64::new(0),
        model: cfg.model.display().to_string(),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
        eprintln!("listening on http://{}", listener.local_addr()?);
        axum::serve(listener, router(app))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok::<_, std::io::Error>(())
    })?;
    Ok(())
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(pages::index))
        .route("/register", get(pages::register))
        .route("/retrieve", get(pages::retrieve))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/health", get(health))
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/faces", get(list).post(register))
        .route("/api/v1/faces/urls", post(register_urls))
        .route("/api/v1/faces/{id}", get(get_face).delete(delete_face))
        .route("/api/v1/images/{id}", get(get_image))
        .route("/api/v1/search", post(search))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such route".into()) })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(app)
}

fn count(app: &App) {
    app.requests.fetch_add(1, Ordering::Relaxed);
}

fn authorize(app: &App, headers: &HeaderMap) -> std::result::Result<(), ApiError> {
    let Some(token) = &app.token else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError(StatusCode::FORBIDDEN, "wrong token".into())),
        None => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "this server needs 'Authorization: Bearer TOKEN' to change faces".into(),
        )),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A label: 1 to 100 characters, no path separators, dots-only names or
/// control characters (labels end up in file names of exports).
fn check_label(label: &str) -> std::result::Result<String, ApiError> {
    let l = label.trim();
    if l.is_empty() {
        return Err(bad("the label is empty"));
    }
    if l.chars().count() > 100 {
        return Err(bad("the label is longer than 100 characters"));
    }
    if l.contains(['/', '\\', '\0']) || l.chars().any(char::is_control) || l.contains("..") {
        return Err(bad(
            "the label may not contain '/', '\\', '..' or control characters",
        ));
    }
    Ok(l.to_string())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An uploaded photo, decoded (limits on bytes and pixels) before anything
/// is stored.
struct Photo {
    name: String,
    bytes: Vec<u8>,
    ext: &'static str,
    img: image::RgbImage,
}

fn decode_photo(name: String, bytes: Vec<u8>) -> std::result::Result<Photo, ApiError> {
    let ext = match image::guess_format(&bytes) {
        Ok(image::ImageFormat::Jpeg) => "jpg",
        Ok(image::ImageFormat::Png) => "png",
        _ => return Err(bad(format!("{name}: not a JPEG or PNG image"))),
    };
    let img = crate::preprocess::decode_bytes(&bytes).map_err(|e| bad(format!("{name}: {e}")))?;
    Ok(Photo {
        name,
        bytes,
        ext,
        img,
    })
}

async fn read_multipart(
    mut mp: Multipart,
) -> std::result::Result<(Vec<(String, Vec<u8>)>, Option<String>), ApiError> {
    let mut images = vec![];
    let mut label = None;
    loop {
        let field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(ApiError(e.status(), e.body_text())),
        };
        let name = field.name().unwrap_or("").to_string();
        let file = field.file_name().unwrap_or("upload").to_string();
        let data = field
            .bytes()
            .await
            .map_err(|e| ApiError(e.status(), e.body_text()))?;
        match name.as_str() {
            "image" => {
                if images.len() == MAX_IMAGES {
                    return Err(bad(format!("at most {MAX_IMAGES} images per request")));
                }
                images.push((file, data.to_vec()));
            }
            "label" => label = Some(String::from_utf8_lossy(&data).into_owned()),
            other => return Err(bad(format!("unexpected form field '{other}'"))),
        }
    }
    Ok((images, label))
}

fn face_json(r: &FaceRecord) -> Value {
    json!({
        "id": r.id,
        "label": r.label,
        "box": r.bbox,
        "landmarks": r.landmarks,
        "score": r.score,
        "image_id": r.image_id,
        "image_url": format!("/api/v1/images/{}", r.image_id),
        "created": r.created,
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, ApiError> + Send + 'static,
) -> std::result::Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(internal)?
}

/// Store each photo that has faces and its faces; all photos are decoded
/// and run before anything is written.
fn register_photos(
    app: &App,
    photos: Vec<Photo>,
    label: &str,
) -> std::result::Result<Json<Value>, ApiError> {
    let mut found: Vec<(Photo, Vec<Found>)> = vec![];
    for p in photos {
        let faces = app.faces(&p.img)?;
        found.push((p, faces));
    }
    if found.iter().all(|(_, f)| f.is_empty()) {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "no face found in {}: nothing registered",
                found
                    .iter()
                    .map(|(p, _)| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let mut results = vec![];
    let mut registered = 0;
    let mut db = app.db.lock().map_err(internal)?;
    for (p, faces) in found {
        if faces.is_empty() {
            results.push(json!({"image": p.name, "faces": [], "message": "no face found; nothing registered"}));
            continue;
        }
        let image_id = db.store.put_image(&p.bytes, p.ext).map_err(internal)?;
        let recs: Vec<FaceRecord> = faces
            .into_iter()
            .map(|f| FaceRecord {
                id: 0,
                label: label.to_string(),
                embedding: f.embedding,
                bbox: f.face.bbox,
                landmarks: f.face.landmarks,
                score: f.face.score,
                image_id,
                created: now(),
            })
            .collect();
        let recs = match db.store.add(recs) {
            Ok(r) => r,
            Err(e) => {
                db.store.drop_image(image_id);
                return Err(internal(e));
            }
        };
        for r in &recs {
            if !db.index.insert(r.id, &r.embedding) {
                rebuild(&mut db);
            }
        }
        registered += recs.len();
        results.push(json!({
            "image": p.name,
            "image_id": image_id,
            "faces": recs.iter().map(face_json).collect::<Vec<_>>(),
        }));
    }
    Ok(Json(json!({ "registered": registered, "images": results })))
}

fn rebuild(db: &mut Db) {
    let dim = db
        .store
        .faces()
        .values()
        .next()
        .map(|f| f.embedding.len())
        .unwrap_or(512);
    db.index = Index::build(
        dim,
        db.store
            .faces()
            .values()
            .map(|f| (f.id, f.embedding.as_slice())),
    );
}

async fn register(State(app): State<Arc<App>>, headers: HeaderMap, mp: Multipart) -> ApiResult {
    count(&app);
    authorize(&app, &headers)?;
    let (images, label) = read_multipart(mp).await?;
    let label = check_label(&label.ok_or_else(|| bad("missing form field 'label'"))?)?;
    if images.is_empty() {
        return Err(bad("missing form field 'image'"));
    }
    blocking(move || {
        let photos = images
            .into_iter()
            .map(|(n, b)| decode_photo(n, b))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        register_photos(&app, photos, &label)
    })
    .await
}

#[derive(Deserialize)]
struct UrlsBody {
    urls: Vec<String>,
    label: String,
}

async fn register_urls(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: std::result::Result<Json<UrlsBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    count(&app);
    authorize(&app, &headers)?;
    let Json(body) = body.map_err(|e| ApiError(e.status(), e.body_text()))?;
    let label = check_label(&body.label)?;
    if body.urls.is_empty() || body.urls.len() > MAX_IMAGES {
        return Err(bad(format!("give 1 to {MAX_IMAGES} urls")));
    }
    blocking(move || {
        let mut per_url = vec![];
        let mut photos = vec![];
        for u in &body.urls {
            match urls::fetch(u, &app.allow_url_hosts, MAX_BODY_BYTES)
                .and_then(|b| decode_photo(u.clone(), b).map_err(|e| e.1))
            {
                Ok(p) => photos.push(p),
                Err(e) => per_url.push(json!({"url": u, "error": e})),
            }
        }
        if photos.is_empty() {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!(
                    "no url gave an image: {}",
                    serde_json::to_string(&per_url).unwrap_or_default()
                ),
            ));
        }
        let Json(mut v) = register_photos(&app, photos, &label)?;
        if let Some(imgs) = v["images"].as_array_mut() {
            imgs.extend(per_url);
        }
        Ok(Json(v))
    })
    .await
}

#[derive(Deserialize)]
struct SearchQuery {
    k: Option<usize>,
    threshold: Option<f32>,
}

async fn search(
    State(app): State<Arc<App>>,
    Query(q): Query<SearchQuery>,
    mp: Multipart,
) -> ApiResult {
    count(&app);
    let k = q.k.unwrap_or(5);
    if k == 0 || k > 100 {
        return Err(bad("k must be 1 to 100"));
    }
    let threshold = q.threshold.unwrap_or(app.threshold);
    if !(threshold.is_finite() && threshold >= 0.0) {
        return Err(bad("threshold must be a non-negative number"));
    }
    let (mut images, _) = read_multipart(mp).await?;
    if images.len() != 1 {
        return Err(bad("send exactly one form field 'image'"));
    }
    let (name, bytes) = images.remove(0);
    blocking(move || {
        let p = decode_photo(name, bytes)?;
        let faces = app.faces(&p.img)?;
        if faces.is_empty() {
            return Err(ApiError(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("no face found in {}", p.name),
            ));
        }
        let db = app.db.lock().map_err(internal)?;
        let results: Vec<Value> = faces
            .iter()
            .map(|f| {
                let matches: Vec<Value> = db
                    .index
                    .search(&f.embedding, k)
                    .into_iter()
                    .filter(|(_, d)| *d <= threshold)
                    .filter_map(|(id, d)| {
                        db.store.faces().get(&id).map(|r| {
                            json!({
                                "id": id,
                                "label": r.label,
                                "distance": d,
                                "box": r.bbox,
                                "image_url": format!("/api/v1/images/{}", r.image_id),
                            })
                        })
                    })
                    .collect();
                json!({
                    "box": f.face.bbox,
                    "landmarks": f.face.landmarks,
                    "score": f.face.score,
                    "matches": matches,
                })
            })
            .collect();
        Ok(Json(json!({ "threshold": threshold, "results": results })))
    })
    .await
}

#[derive(Deserialize)]
struct Page {
    offset: Option<usize>,
    limit: Option<usize>,
}

async fn list(State(app): State<Arc<App>>, Query(p): Query<Page>) -> ApiResult {
    count(&app);
    let offset = p.offset.unwrap_or(0);
    let limit = p.limit.unwrap_or(50).clamp(1, 1000);
    let db = app.db.lock().map_err(internal)?;
    let faces: Vec<Value> = db
        .store
        .faces()
        .values()
        .skip(offset)
        .take(limit)
        .map(face_json)
        .collect();
    Ok(Json(json!({
        "total": db.store.faces().len(),
        "offset": offset,
        "limit": limit,
        "faces": faces,
    })))
}

fn parse_id(s: &str) -> std::result::Result<u64, ApiError> {
    s.parse()
        .map_err(|_| bad(format!("'{s}' is not a numeric id")))
}

async fn get_face(State(app): State<Arc<App>>, UrlPath(id): UrlPath<String>) -> ApiResult {
    count(&app);
    let id = parse_id(&id)?;
    let db = app.db.lock().map_err(internal)?;
    let r = db
        .store
        .faces()
        .get(&id)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no face {id}")))?;
    let mut v = face_json(r);
    v["embedding"] = json!(r.embedding);
    Ok(Json(v))
}

async fn delete_face(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> ApiResult {
    count(&app);
    authorize(&app, &headers)?;
    let id = parse_id(&id)?;
    blocking(move || {
        let mut db = app.db.lock().map_err(internal)?;
        match db.store.delete(id).map_err(internal)? {
            Some(_) => {
                if !db.index.remove(id) {
                    rebuild(&mut db);
                }
                Ok(Json(json!({ "deleted": id })))
            }
            None => Err(ApiError(StatusCode::NOT_FOUND, format!("no face {id}"))),
        }
    })
    .await
}

async fn get_image(
    State(app): State<Arc<App>>,
    UrlPath(id): UrlPath<String>,
) -> std::result::Result<Response, ApiError> {
    count(&app);
    let id = parse_id(&id)?;
    let (path, ext) = {
        let db = app.db.lock().map_err(internal)?;
        let (p, e) = db
            .store
            .image(id)
            .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no image {id}")))?;
        (p, e.to_string())
    };
    let bytes = tokio::fs::read(&path).await.map_err(internal)?;
    let mime = if ext == "png" {
        "image/png"
    } else {
        "image/jpeg"
    };
    Ok(([(header::CONTENT_TYPE, mime)], bytes).into_response())
}

async fn health(State(app): State<Arc<App>>) -> ApiResult {
    count(&app);
    Ok(Json(json!({ "status": "ok" })))
}

async fn stats(State(app): State<Arc<App>>) -> ApiResult {
    count(&app);
    let db = app.db.lock().map_err(internal)?;
    let calls = app.pipeline_calls.load(Ordering::Relaxed).max(1);
    let mean_ms = app.pipeline_ns.load(Ordering::Relaxed) as f64 / calls as f64 / 1e6;
    let labels: std::collections::BTreeSet<&str> = db
        .store
        .faces()
        .values()
        .map(|f| f.label.as_str())
        .collect();
    Ok(Json(json!({
        "faces": db.store.faces().len(),
        "labels": labels.len(),
        "images": db.store.image_count(),
        "indexed": db.index.len(),
        "threshold": app.threshold,
        "model": app.model,
        "uptime_seconds": app.started.elapsed().as_secs(),
        "requests": app.requests.load(Ordering::Relaxed),
        "auth": app.token.is_some(),
        "detect_embed_calls": app.pipeline_calls.load(Ordering::Relaxed),
        "detect_embed_ms_mean": mean_ms,
    })))
}

async fn openapi() -> Json<Value> {
    Json(openapi::document())
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        internal(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_checked() {
        assert_eq!(check_label(" Obama ").ok().as_deref(), Some("Obama"));
        for l in ["", "  ", "a/b", "..", "a\\b", "x\ny"] {
            assert!(check_label(l).is_err(), "{l:?}");
        }
    }
}
