//! `faceall serve`: the register/retrieve web app and JSON API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

#[derive(clap::Args)]
pub struct Args {
    /// Converted FaceNet bundle: NAME.graph.json or a directory holding one
    /// (`faceall convert-tf MODEL.pb --to safetensors`; scripts/facenet writes it here)
    #[arg(long, default_value = ".cache/converted/facenet")]
    model: PathBuf,
    /// MTCNN detector: a directory with det1, det2, det3 (.prototxt + .caffemodel)
    #[arg(long, default_value = "converted/mtcnn")]
    mtcnn: PathBuf,
    /// Embedded backend: the directory of the store (faces.db, SQLite) and its saved index
    #[arg(long, default_value = "faceall-data")]
    data: PathBuf,
    /// PostgreSQL + pgvector backend instead of the embedded one (libpq URI, e.g.
    /// postgresql://user:pass@host/db or postgresql://postgres:@/postgres?host=/socket/dir)
    #[arg(long, env = "FACEALL_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Embedded index: vectors held as f16 (half the memory; distances are re-ranked exactly) or f32
    #[arg(long, default_value = "f16")]
    index_precision: faceall::serve::storage::ann::Precision,
    /// Embedded index: candidates kept per search (HNSW ef; more is slower and finds more)
    #[arg(long, default_value_t = faceall::serve::storage::ann::AnnOptions::default().expansion_search)]
    ef_search: usize,
    /// Embedded index: save it after this many changes, or a tenth of the gallery when more (a
    /// restart searches the faces changed since exactly while inserting them)
    #[arg(long, default_value_t = 10_000)]
    index_save_every: i64,
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// Bearer token every face, photo and search endpoint needs (or FACEALL_TOKEN; prefer
    /// --token-file, which keeps it out of the process list)
    #[arg(long, env = "FACEALL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Read the bearer token from this file (its first line)
    #[arg(long, conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// With a token, let anyone list faces, fetch photos and search (only changes need the token)
    #[arg(long)]
    public_read: bool,
    /// Largest distance that counts as a match
    #[arg(long, default_value_t = faceall::serve::DEFAULT_THRESHOLD)]
    threshold: f32,
    /// Faces embedded per photo at most, the best-scored (the rest are reported, not processed)
    #[arg(long, default_value_t = 50)]
    max_faces: usize,
    /// Megabytes of decoded photos and detector buffers in flight at most; photos wait for
    /// room (503 after 10 s)
    #[arg(long, default_value_t = 512)]
    max_memory: usize,
    /// Open connections at most; more are closed at once
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Open connections from one client address at most (behind a reverse proxy, raise it to
    /// --max-connections)
    #[arg(long, default_value_t = 256)]
    max_connections_per_ip: usize,
    /// Seconds a client has to send a request's headers (also closes idle keep-alive connections)
    #[arg(long, default_value_t = 10)]
    header_timeout: u64,
    /// Seconds a request may take from its headers to the response, upload included
    #[arg(long, default_value_t = 120)]
    request_timeout: u64,
    /// Store photos with their EXIF/XMP metadata (GPS position, camera); stripped by default
    #[arg(long)]
    keep_exif: bool,
    /// Seconds all URLs of one POST /api/v1/faces/urls may take to fetch, together
    #[arg(long, default_value_t = 30)]
    url_fetch_timeout: u64,
    /// A host POST /api/v1/faces/urls may fetch from (repeatable; none by default)
    #[arg(long = "allow-url-host")]
    allow_url_hosts: Vec<String>,
    /// PEM file of CA certificates to trust for https URLs besides the public roots (an
    /// internal CA)
    #[arg(long)]
    url_ca_file: Option<std::path::PathBuf>,
    /// Log lines as text or JSON objects (one per event; each request's carry its id); the level
    /// is FACEALL_LOG (info by default)
    #[arg(long, default_value = "text")]
    log_format: faceall::serve::log::LogFormat,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let token = super::token_from(a.token.clone(), a.token_file.as_deref())?;
    let model = super::resolve_bundle(&a.model)?;
    let mtcnn = find_mtcnn(&a.mtcnn).with_context(|| {
        format!(
            "no MTCNN detector in {} (det1/det2/det3 .prototxt + .caffemodel); pass --mtcnn DIR \
             (the repository's converted/mtcnn, made by scripts/convert_mtcnn.py)",
            a.mtcnn.display()
        )
    })?;
    faceall::serve::serve(faceall::serve::Config {
        model,
        mtcnn: mtcnn.clone(),
        backend: match a.database_url {
            Some(url) if !url.is_empty() => faceall::serve::storage::Backend::Postgres { url },
            _ => {
                let mut o = faceall::serve::storage::embedded::Options::new(a.data);
                o.ann.precision = a.index_precision;
                o.ann.expansion_search = a.ef_search.max(1);
                o.save_every = a.index_save_every.max(1);
                faceall::serve::storage::Backend::Embedded(o)
            }
        },
        listen: a.listen,
        token,
        public_read: a.public_read,
        max_faces: a.max_faces,
        max_memory: a.max_memory.saturating_mul(1 << 20),
        keep_exif: a.keep_exif,
        url_fetch_time: std::time::Duration::from_secs(a.url_fetch_timeout.max(1)),
        limits: faceall::serve::listen::Limits {
            max_connections: a.max_connections,
            max_connections_per_ip: a.max_connections_per_ip,
            header_timeout: std::time::Duration::from_secs(a.header_timeout.max(1)),
            request_timeout: std::time::Duration::from_secs(a.request_timeout.max(1)),
        },
        threshold: a.threshold,
        allow_url_hosts: a.allow_url_hosts,
        url_ca_file: a.url_ca_file,
        log_format: a.log_format,
    })
    .context("serve")?;
    Ok(ExitCode::SUCCESS)
}

/// The directory as given, or (for a relative path) beside the binary's
/// checkout: target/release/faceall -> ../../converted/mtcnn.
fn find_mtcnn(dir: &std::path::Path) -> Option<PathBuf> {
    let ok = |d: &std::path::Path| d.join("det1.prototxt").exists();
    if ok(dir) {
        return Some(dir.to_path_buf());
    }
    if dir.is_relative() {
        let exe = std::env::current_exe().ok()?;
        for up in exe.ancestors().skip(1).take(3) {
            let d = up.join(dir);
            if ok(&d) {
                return Some(d);
            }
        }
    }
    None
}
