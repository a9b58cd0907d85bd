//! `faceall serve`: register faces and retrieve the closest registered faces
//! over HTTP (axum), with the converted FaceNet on the fast engine, MTCNN
//! on the Caffe executor, and a storage backend (embedded SQLite + usearch,
//! or PostgreSQL + pgvector) behind one trait.
//!
//! Every request's heavy work (decode, detect, embed) runs on tokio's
//! blocking pool; storage calls go through [`storage::Storage`], never
//! into its maps or index.

mod auth;
mod budget;
mod error;
pub(crate) mod fair;
mod form;
mod lanes;
pub mod listen;
pub mod log;
mod metadata;
mod metrics;
pub mod openapi;
mod pages;
pub mod pipeline;
mod routes;
pub mod storage;
mod urls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::error::{Error, Result};
use error::bad;
pub use error::ApiError;
use pipeline::{Found, Pipeline};
use storage::{Backend, Detection};

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
    pub backend: Backend,
    pub listen: SocketAddr,
    pub token: Option<String>,
    /// With a token: reads (faces, photos, search) stay open.
    pub public_read: bool,
    pub threshold: f32,
    pub allow_url_hosts: Vec<String>,
    /// PEM certificates the URL fetcher trusts besides the public roots.
    pub url_ca_file: Option<std::path::PathBuf>,
    /// Faces embedded per photo at most (the best-scored; the rest reported).
    pub max_faces: usize,
    /// Bytes of decoded photos and detector buffers in flight at most.
    pub max_memory: usize,
    pub limits: listen::Limits,
    /// Store photos with their EXIF/XMP (GPS, camera) as uploaded.
    pub keep_exif: bool,
    /// Time all URLs of one registration may take to fetch, together.
    pub url_fetch_time: std::time::Duration,
    pub log_format: log::LogFormat,
}

/// Embedding-endpoint calls at once (each uses every core).
const INDEX_CONCURRENCY: usize = 2;

pub struct App {
    pub(crate) pipe: Pipeline,
    collections: storage::collections::Collections,
    auth: auth::Auth,
    budget: budget::Budget,
    /// Turns for photo work, round-robin between client addresses.
    turns: Arc<fair::FairGate>,
    /// One-core lanes for photos that run beside another (see `lanes`).
    lanes: lanes::Lanes,
    /// Turns for the embedding endpoints (up to 10,000 faces or 1,000
    /// queries a call, all cores each), the same way.
    index_turns: Arc<fair::FairGate>,
    max_faces: usize,
    keep_exif: bool,
    url_fetch_time: std::time::Duration,
    threshold: f32,
    fetcher: urls::Fetcher,
    started: Instant,
    requests: AtomicU64,
    /// Time in detect + embed, and calls (for the load benchmark's ratio).
    pipeline_ns: AtomicU64,
    pipeline_calls: AtomicU64,
    metrics: metrics::Metrics,
    /// The model's file name (never its absolute path).
    model: String,
}

impl App {
    /// At most `max_faces` faces of the photo, and how many more it had.
    /// Detect and embed, passing `turn` on between steps.
    fn faces(
        &self,
        img: &image::RgbImage,
        turn: &mut fair::Turn,
    ) -> std::result::Result<(Vec<Found>, usize), ApiError> {
        self.stepwise(turn, |between| {
            self.pipe.faces_stepwise(img, self.max_faces, between)
        })
    }

    /// Every face of the photo, detected only (not embedded).
    fn detect(
        &self,
        img: &image::RgbImage,
        turn: &mut fair::Turn,
    ) -> std::result::Result<Vec<crate::detect::mtcnn::Face>, ApiError> {
        self.stepwise(turn, |between| self.pipe.detect_stepwise(img, between))
    }

    /// The photo's face with the largest box, embedded (None when it has
    /// none): the face a verification compares.
    fn largest_face(
        &self,
        img: &image::RgbImage,
        turn: &mut fair::Turn,
    ) -> std::result::Result<Option<Found>, ApiError> {
        self.stepwise(turn, |between| {
            let area = |f: &crate::detect::mtcnn::Face| {
                (f.bbox[2] - f.bbox[0]).max(0.0) * (f.bbox[3] - f.bbox[1]).max(0.0)
            };
            let largest = self
                .pipe
                .detect_stepwise(img, between)?
                .into_iter()
                .max_by(|a, b| area(a).total_cmp(&area(b)));
            match largest {
                Some(f) => Ok(self.pipe.embed_stepwise(img, vec![f], between)?.pop()),
                None => Ok(None),
            }
        })
    }

    /// At most `max_faces` faces of the photo, best first, detected only,
    /// and how many more it had; passing `turn` on between steps. Counted
    /// as one photo in the pipeline's statistics.
    pub(crate) fn detect_at_most(
        &self,
        img: &image::RgbImage,
        turn: &mut fair::Turn,
    ) -> std::result::Result<(Vec<crate::detect::mtcnn::Face>, usize), ApiError> {
        self.stepwise_counted(turn, 1, |between| {
            let mut faces = self.pipe.detect_stepwise(img, between)?;
            let dropped = faces.len().saturating_sub(self.max_faces);
            faces.truncate(self.max_faces);
            Ok((faces, dropped))
        })
    }

    /// Embeddings of face inputs (`Pipeline::face_input`, at most
    /// EMBED_BATCH), after passing `turn` on; their time counts towards
    /// the photos' in the statistics.
    pub(crate) fn embed_inputs(
        &self,
        inputs: Vec<Vec<f32>>,
        turn: &mut fair::Turn,
    ) -> std::result::Result<Vec<Vec<f32>>, ApiError> {
        self.stepwise_counted(turn, 0, |between| {
            between()?;
            self.pipe.embed_inputs(inputs)
        })
    }

    /// Run photo work that passes `turn` on between its steps; a turn that
    /// does not come back in time is the request's error (503), not an
    /// internal one.
    fn stepwise<T>(
        &self,
        turn: &mut fair::Turn,
        work: impl FnOnce(&mut dyn FnMut() -> Result<()>) -> Result<T>,
    ) -> std::result::Result<T, ApiError> {
        self.stepwise_counted(turn, 1, work)
    }

    /// [`App::stepwise`], counting `photos` photos (0: more work on photos
    /// counted before) in the statistics.
    fn stepwise_counted<T>(
        &self,
        turn: &mut fair::Turn,
        photos: u64,
        work: impl FnOnce(&mut dyn FnMut() -> Result<()>) -> Result<T>,
    ) -> std::result::Result<T, ApiError> {
        let t = Instant::now();
        let mut refused = None;
        let r = work(&mut || {
            turn.pass().map_err(|e| {
                refused = Some(e);
                Error::Usage("no turn".into())
            })
        });
        let r = match (r, refused) {
            (_, Some(e)) => Err(e),
            (r, None) => r.map_err(ApiError::internal),
        };
        self.pipeline_ns
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        if photos > 0 {
            self.metrics
                .photo_seconds
                .observe(t.elapsed().as_secs_f64());
        }
        self.pipeline_calls.fetch_add(photos, Ordering::Relaxed);
        r
    }
}

impl From<crate::detect::mtcnn::Face> for Detection {
    fn from(f: crate::detect::mtcnn::Face) -> Self {
        Detection {
            bbox: f.bbox,
            landmarks: f.landmarks,
            score: f.score,
        }
    }
}

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

/// Load the models and the store, then serve until Ctrl-C or SIGTERM;
/// the store is closed (the embedded index saved) on the way out.
pub fn serve(cfg: Config) -> Result<()> {
    log::init(cfg.log_format);
    tune_allocator();
    let t = Instant::now();
    let pipe = Pipeline::load(&cfg.model, &cfg.mtcnn)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let backend_name = match &cfg.backend {
        Backend::Embedded(o) => format!("embedded store in {}", o.dir.display()),
        Backend::Postgres { .. } => "PostgreSQL".to_string(),
    };
    let dim = pipe.dim;
    let limits = cfg.limits;
    let collections = rt
        .block_on(storage::collections::Collections::open(cfg.backend, dim))
        .map_err(|e| Error::Usage(format!("cannot open the {backend_name}: {e}")))?;
    let model = cfg
        .model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let fetcher = urls::Fetcher::new(&cfg.allow_url_hosts, cfg.url_ca_file.as_deref())
        .map_err(Error::Usage)?;
    let app = Arc::new(App {
        pipe,
        collections,
        auth: auth::Auth::new(cfg.token, cfg.public_read),
        budget: budget::Budget::new(cfg.max_memory),
        turns: fair::FairGate::new(
            pipeline::DETECT_CONCURRENCY,
            budget::ADMISSION_WAIT,
            pipeline::release_memory,
        ),
        lanes: lanes::Lanes::default(),
        index_turns: fair::FairGate::new(INDEX_CONCURRENCY, budget::ADMISSION_WAIT, || {}),
        max_faces: cfg.max_faces.max(1),
        keep_exif: cfg.keep_exif,
        url_fetch_time: cfg.url_fetch_time,
        threshold: cfg.threshold,
        fetcher,
        started: Instant::now(),
        requests: AtomicU64::new(0),
        pipeline_ns: AtomicU64::new(0),
        metrics: metrics::Metrics::default(),
        pipeline_calls: AtomicU64::new(0),
        model,
    });
    rt.block_on(async move {
        let mut faces = 0;
        let all = app.collections.list();
        for c in &all {
            faces += c.storage.stats().await.map(|s| s.faces).unwrap_or(0);
        }
        tracing::info!(
            "{faces} faces in {} collection(s) of the {backend_name}; ready in {:.2} s",
            all.len(),
            t.elapsed().as_secs_f64()
        );
        drop(all);
        let closing = app.clone();
        let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
        tracing::info!("listening on http://{}", listener.local_addr()?);
        listen::run(
            listener,
            routes::router(app, limits),
            limits,
            shutdown_signal(),
        )
        .await?;
        if let Err(e) = closing.collections.close().await {
            tracing::error!("closing the store: {e}");
        }
        Ok::<_, std::io::Error>(())
    })?;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn count(app: &App) {
    app.requests.fetch_add(1, Ordering::Relaxed);
}

/// Longest label, in characters (after normalisation).
pub const MAX_LABEL_CHARS: usize = 100;

/// Characters that only steer text direction: a label with them can show
/// as another name (U+202E turns "evil" into "live").
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Invisible characters with no role in any script's spelling; removed so
/// `ob\u{200B}ama` is `obama`.
fn is_removable_invisible(c: char) -> bool {
    matches!(c, '\u{200B}' | '\u{2060}' | '\u{FEFF}' | '\u{00AD}')
}

/// A label: Unicode NFC, invisible separators removed, 1 to
/// MAX_LABEL_CHARS characters with something visible, no bidi controls,
/// control characters, path separators or `..` (labels end up in file
/// names of exports).
pub(crate) fn check_label(label: &str) -> std::result::Result<String, ApiError> {
    use unicode_normalization::UnicodeNormalization;
    let l: String = label
        .nfc()
        .filter(|c| !is_removable_invisible(*c))
        .collect();
    let l = l.trim();
    if l.chars().any(is_bidi_control) {
        return Err(bad(
            "the label may not contain bidirectional control characters",
        ));
    }
    // Joiners alone (U+200C, U+200D) and other format characters show nothing.
    if !l.chars().any(|c| {
        !c.is_whitespace() && !matches!(c, '\u{200C}' | '\u{200D}' | '\u{034F}' | '\u{180E}')
    }) {
        return Err(bad("the label is empty or invisible"));
    }
    if l.chars().count() > MAX_LABEL_CHARS {
        return Err(bad(format!(
            "the label is longer than {MAX_LABEL_CHARS} characters"
        )));
    }
    if l.contains(['/', '\\', '\0']) || l.chars().any(char::is_control) || l.contains("..") {
        return Err(bad(
            "the label may not contain '/', '\\', '..' or control characters",
        ));
    }
    Ok(l.to_string())
}

/// An uploaded photo, decoded (limits on bytes and pixels) before anything
/// is stored.
pub(crate) struct Photo {
    pub(crate) name: String,
    pub(crate) bytes: Vec<u8>,
    pub(crate) ext: &'static str,
    pub(crate) img: image::RgbImage,
}

/// Width and height from the photo's header, without decoding it; the
/// admission gate sizes the decode from them.
pub(crate) fn photo_dimensions(
    name: &str,
    bytes: &[u8],
) -> std::result::Result<(u32, u32), ApiError> {
    match image::guess_format(bytes) {
        Ok(image::ImageFormat::Jpeg | image::ImageFormat::Png) => {}
        _ => return Err(bad(format!("{name}: not a JPEG or PNG image"))),
    }
    let (w, h, _) =
        crate::preprocess::dimensions(bytes).map_err(|e| bad(format!("{name}: {e}")))?;
    Ok((w, h))
}

pub(crate) fn decode_photo(name: String, bytes: Vec<u8>) -> std::result::Result<Photo, ApiError> {
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

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, ApiError> + Send + 'static,
) -> std::result::Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_checked() {
        assert_eq!(check_label(" Obama ").ok().as_deref(), Some("Obama"));
        for l in [
            "",
            "  ",
            "a/b",
            "..",
            "a\\b",
            "x\ny",
            "abc\u{202E}def",
            "\u{200B}\u{200D}",
            "\u{2066}x",
        ] {
            assert!(check_label(l).is_err(), "{l:?}");
        }
        // One spelling per name: NFC, invisible separators dropped.
        assert_eq!(check_label("ob\u{200B}ama").ok().as_deref(), Some("obama"));
        assert_eq!(
            check_label("Jose\u{0301}").ok(),
            check_label("Jos\u{00E9}").ok()
        );
        assert!(check_label(&"a".repeat(101)).is_err());
        assert!(
            check_label("\u{0645}\u{06CC}\u{200C}\u{062E}\u{0648}\u{0627}\u{0647}\u{0645}").is_ok()
        );
    }
}
