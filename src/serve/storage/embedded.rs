//! The embedded backend: SQLite (bundled, WAL, `synchronous = FULL`) as the
//! store of record in `DATA/faces.db`, and the usearch index ([`super::ann`])
//! persisted beside it.
//!
//! Every registration or delete is one SQLite transaction that also appends
//! to a `journal` table (face id, added or deleted); the transaction is
//! committed (fsynced) before the index is touched and before the client is
//! answered. The index is saved in the background every `save_every`
//! journal entries (or a tenth of the gallery) or `save_interval`,
//! recording the journal position it contains, and the journal is trimmed
//! to what came after; writers go on during the save (their faces wait
//! beside the frozen graph, searched exactly). At start the saved index is
//! loaded and the journal after its position is replayed (its faces
//! searched exactly beside the graph until the background inserts them),
//! so the store of record always wins: after a kill -9 at any moment,
//! every acknowledged face is searchable again, and a missing, torn or
//! mismatched index file is rebuilt from the store (progress in the log).
//!
//! Ids come from `AUTOINCREMENT`, so a face or photo id is never reused,
//! even after deleting the newest and restarting.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::ann::{group_of, Ann, AnnOptions};
use super::{
    check_dim, euclidean, f32_bytes, f32_from_bytes, now, Detection, FaceRecord, Match, NewFace,
    PhotoFaces, Stats, Storage, StoreError, StoreResult, StoredPhoto, Subject,
};

/// Settings of the embedded backend.
#[derive(Debug, Clone)]
pub struct Options {
    pub dir: PathBuf,
    pub ann: AnnOptions,
    /// Save the index after this many journal entries since the last save
    /// (or a tenth of the gallery, when more). A restart reads the
    /// journal's faces into an exact list beside the graph (100,000 in
    /// under a second) and inserts them in the background.
    pub save_every: i64,
    /// ... or this long after the first unsaved change.
    pub save_interval: Duration,
}

impl Options {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Options {
            dir: dir.into(),
            ann: AnnOptions::default(),
            save_every: 10_000,
            save_interval: Duration::from_secs(300),
        }
    }
}

const SCHEMA_VERSION: i64 = 2;

/// Version 2: the SHA-256 of each photo as uploaded, so a photo sent again
/// under the same label is recognised (and a bulk import resumes).
const TO_VERSION_2: &str = "
ALTER TABLE images ADD COLUMN sha256 BLOB;
CREATE INDEX IF NOT EXISTS images_sha256 ON images(sha256);
";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS images(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ext TEXT NOT NULL,
    bytes BLOB NOT NULL,
    created INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS faces(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    label TEXT NOT NULL,
    embedding BLOB NOT NULL,
    detection BLOB,
    image_id INTEGER REFERENCES images(id),
    created INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS faces_image ON faces(image_id);
CREATE INDEX IF NOT EXISTS faces_label ON faces(label);
CREATE TABLE IF NOT EXISTS journal(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    face_id INTEGER NOT NULL,
    added INTEGER NOT NULL);
";

pub(super) fn sql_err(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => {
            StoreError::Full("the disk holding the face store is full".into())
        }
        Some(rusqlite::ErrorCode::SystemIoFailure) => {
            StoreError::Internal(format!("disk I/O error in the face store: {e}"))
        }
        _ => StoreError::Internal(format!("face store: {e}")),
    }
}

fn open_conn(path: &Path) -> StoreResult<Connection> {
    let c = Connection::open(path)
        .map_err(|e| StoreError::Internal(format!("{}: {e}", path.display())))?;
    c.busy_timeout(Duration::from_secs(30)).map_err(sql_err)?;
    c.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
    )
    .map_err(|e| StoreError::Internal(format!("{}: {e}", path.display())))?;
    Ok(c)
}

struct Inner {
    dir: PathBuf,
    db: PathBuf,
    dim: usize,
    opts: Options,
    /// The one writing connection; held across commit + index update, and
    /// by the saver, so a saved index matches a journal position exactly.
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    ann: Ann,
    /// Journal position the in-memory index contains.
    applied: AtomicI64,
    /// Journal position of the saved index.
    saved: AtomicI64,
    first_unsaved: Mutex<Option<Instant>>,
    stop: AtomicBool,
}

pub struct Embedded {
    inner: Arc<Inner>,
    saver: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// An exclusive lock on `DIR/lock` from open to close (or drop): two
    /// processes on one store would each keep an index of their own.
    lock: Mutex<Option<std::fs::File>>,
}

fn log(msg: impl AsRef<str>) {
    tracing::info!("{}", msg.as_ref());
}

impl Embedded {
    pub async fn open(opts: Options, dim: usize) -> StoreResult<Self> {
        let o = opts.clone();
        let (inner, lock) = tokio::task::spawn_blocking(move || Inner::open(o, dim))
            .await
            .map_err(|e| StoreError::Internal(e.to_string()))??;
        let inner = Arc::new(inner);
        let bg = inner.clone();
        let saver = std::thread::Builder::new()
            .name("faceall-index-saver".into())
            .spawn(move || bg.saver_loop())
            .map_err(|e| StoreError::Internal(format!("cannot start the index saver: {e}")))?;
        Ok(Embedded {
            inner,
            saver: Mutex::new(Some(saver)),
            lock: Mutex::new(Some(lock)),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Internal(format!("storage task failed: {e}")))?
    }
}

impl Inner {
    /// The store and its lock.
    fn open(opts: Options, dim: usize) -> StoreResult<(Self, std::fs::File)> {
        let dir = opts.dir.clone();
        std::fs::create_dir_all(&dir)
            .map_err(|e| StoreError::Internal(format!("{}: {e}", dir.display())))?;
        let lock_path = dir.join("lock");
        let lock = std::fs::File::create(&lock_path)
            .map_err(|e| StoreError::Internal(format!("{}: {e}", lock_path.display())))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Busy(format!(
                    "{} is in use by another faceall process (a running `faceall serve`?)",
                    dir.display()
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(StoreError::Internal(format!(
                    "cannot lock {}: {e}",
                    lock_path.display()
                )))
            }
        }
        let db = dir.join("faces.db");
        let mut w = open_conn(&db)?;
        let version: i64 = w
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sql_err)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Internal(format!(
                "{}: schema version {version} is newer than this faceall's {SCHEMA_VERSION}",
                db.display()
            )));
        }
        w.execute_batch(SCHEMA).map_err(sql_err)?;
        if version < 2 {
            let tx = w.transaction().map_err(sql_err)?;
            tx.execute_batch(TO_VERSION_2).map_err(sql_err)?;
            tx.commit().map_err(sql_err)?;
        }
        w.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
            .map_err(sql_err)?;
        // The dimension is fixed by the first face stored.
        let stored_dim: Option<usize> = w
            .query_row("SELECT length(embedding) / 4 FROM faces LIMIT 1", [], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
            .map_err(sql_err)?
            .map(|d| d as usize);
        if let Some(d) = stored_dim {
            if d != dim {
                return Err(StoreError::Internal(format!(
                    "{}: holds {d}-float embeddings, the model gives {dim}",
                    db.display()
                )));
            }
        }
        let empty: bool = w
            .query_row("SELECT NOT EXISTS (SELECT 1 FROM faces)", [], |r| r.get(0))
            .map_err(sql_err)?;
        if empty {
            if let Some(n) = super::legacy::import(&dir, &mut w, dim)? {
                log(format!(
                    "imported {n} faces from the older store (faces.log, images/ renamed *.imported)"
                ));
            }
        }
        let t = Instant::now();
        let faces: i64 = w
            .query_row("SELECT count(*) FROM faces", [], |r| r.get(0))
            .map_err(sql_err)?;
        let last_seq: i64 = w
            .query_row("SELECT coalesce(max(seq), 0) FROM journal", [], |r| {
                r.get(0)
            })
            .map_err(sql_err)?;
        let (ann, saved) = match Ann::load(&dir, dim, opts.ann) {
            Ok(Some((ann, meta))) => {
                log(format!(
                    "index: loaded {} faces from {} in {:.2} s",
                    meta.faces,
                    meta.file,
                    t.elapsed().as_secs_f64()
                ));
                let replayed = replay(&w, &ann, meta.journal_seq)?;
                if replayed > 0 {
                    log(format!(
                        "index: re-applied {replayed} change(s) the saved index did not have"
                    ));
                }
                (ann, meta.journal_seq)
            }
            Ok(None) => {
                let ann = Ann::new(dim, opts.ann).map_err(StoreError::Internal)?;
                if faces > 0 {
                    log(format!("index: no saved index in {}", dir.display()));
                    rebuild(&w, &ann, faces)?;
                }
                (ann, 0)
            }
            Err(why) => {
                log(format!("index: {why}; rebuilding from the store"));
                Ann::discard_saved(&dir);
                let ann = Ann::new(dim, opts.ann).map_err(StoreError::Internal)?;
                rebuild(&w, &ann, faces)?;
                (ann, 0)
            }
        };
        // The store of record wins: an index that still disagrees with it
        // (a file from another store, say) is rebuilt.
        let ann = if ann.len() as i64 != faces {
            log(format!(
                "index: holds {} faces, the store {faces}; rebuilding from the store",
                ann.len()
            ));
            let fresh = Ann::new(dim, opts.ann).map_err(StoreError::Internal)?;
            rebuild(&w, &fresh, faces)?;
            fresh
        } else {
            ann
        };
        let inner = Inner {
            dir,
            db,
            dim,
            opts,
            writer: Mutex::new(w),
            readers: Mutex::new(vec![]),
            ann,
            applied: AtomicI64::new(last_seq),
            saved: AtomicI64::new(saved),
            first_unsaved: Mutex::new((last_seq > saved).then(Instant::now)),
            stop: AtomicBool::new(false),
        };
        // What was replayed or rebuilt is saved by the background saver
        // (first_unsaved is set), so the server listens without waiting
        // for a save of the whole index.
        Ok((inner, lock))
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> StoreResult<T>) -> StoreResult<T> {
        let c = {
            let mut pool = self.readers.lock().unwrap_or_else(|e| e.into_inner());
            pool.pop()
        };
        let c = match c {
            Some(c) => c,
            None => open_conn(&self.db)?,
        };
        let r = f(&c);
        self.readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(c);
        r
    }

    fn note_change(&self, seq: i64) {
        self.applied.store(seq, Ordering::SeqCst);
        let mut f = self.first_unsaved.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(Instant::now());
        }
    }

    /// Save the index and trim the journal. Writers are held only while
    /// the graph is frozen (an instant): what they add during the save
    /// waits beside the graph, searched exactly, and is inserted after.
    fn save(&self) -> StoreResult<()> {
        let seq = {
            let _w = self.writer();
            // No write is half done: every change up to `applied` is in
            // the graph, none after it.
            let seq = self.applied.load(Ordering::SeqCst);
            if seq <= self.saved.load(Ordering::SeqCst) || !self.ann.freeze() {
                return Ok(());
            }
            seq
        };
        let t = Instant::now();
        let saved = self.ann.save(&self.dir, seq);
        self.ann.thaw().map_err(StoreError::Internal)?;
        let meta = saved.map_err(StoreError::Internal)?;
        self.saved.store(seq, Ordering::SeqCst);
        {
            let mut f = self.first_unsaved.lock().unwrap_or_else(|e| e.into_inner());
            *f = (self.applied.load(Ordering::SeqCst) > seq).then(Instant::now);
        }
        self.writer()
            .execute("DELETE FROM journal WHERE seq <= ?1", params![seq])
            .map_err(sql_err)?;
        let ms = t.elapsed().as_millis();
        if ms > 500 {
            log(format!(
                "index: saved {} faces ({} MB) in {ms} ms",
                meta.faces,
                meta.bytes / 1_000_000
            ));
        }
        Ok(())
    }

    fn saver_loop(&self) {
        while !self.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(250));
            if self.ann.pending() > 0 {
                let t = Instant::now();
                match self.ann.drain() {
                    Ok(n) if n > 0 && t.elapsed() > Duration::from_secs(1) => log(format!(
                        "index: inserted {n} waiting face(s) in {:.1} s",
                        t.elapsed().as_secs_f64()
                    )),
                    Ok(_) => {}
                    Err(e) => log(format!("index: {e} (the faces stay searchable beside it)")),
                }
                continue;
            }
            let pending = self.applied.load(Ordering::SeqCst) - self.saved.load(Ordering::SeqCst);
            let since = *self.first_unsaved.lock().unwrap_or_else(|e| e.into_inner());
            // A save writes the whole graph (1.1 GB at a million faces), so
            // it happens after a tenth of the gallery has changed (at least
            // `save_every` changes) or `save_interval` after the first
            // unsaved change. A restart puts the journal's faces beside the
            // graph without inserting them, so a long journal costs little.
            let every = self.opts.save_every.max(self.ann.len() as i64 / 10);
            let due = pending >= every
                || (pending > 0 && since.is_some_and(|s| s.elapsed() >= self.opts.save_interval));
            if due {
                if let Err(e) = self.save() {
                    // The journal keeps everything; the next attempt or the
                    // next start catches up.
                    log(format!("index: save failed ({e}); will retry"));
                    *self.first_unsaved.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(Instant::now());
                }
            }
        }
    }

    fn insert_faces(
        tx: &rusqlite::Transaction<'_>,
        faces: &[NewFace],
        image_id: Option<u64>,
        created: u64,
    ) -> StoreResult<Vec<u64>> {
        let mut ins = tx
            .prepare_cached(
                "INSERT INTO faces(label, embedding, detection, image_id, created) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(sql_err)?;
        let mut jr = tx
            .prepare_cached("INSERT INTO journal(face_id, added) VALUES (?1, 1)")
            .map_err(sql_err)?;
        let mut ids = Vec::with_capacity(faces.len());
        for f in faces {
            let det = f.detection.map(|d| f32_bytes(&d.to_floats()));
            ins.execute(params![
                f.label,
                f32_bytes(&f.embedding),
                det,
                image_id.map(|i| i as i64),
                created as i64
            ])
            .map_err(sql_err)?;
            let id = tx.last_insert_rowid();
            jr.execute(params![id]).map_err(sql_err)?;
            ids.push(id as u64);
        }
        Ok(ids)
    }

    /// Commit, then index; the journal covers a crash in between.
    fn commit_and_index(
        &self,
        w: &mut Connection,
        build: impl FnOnce(&rusqlite::Transaction<'_>) -> StoreResult<Vec<(u64, Vec<f32>, u64)>>,
    ) -> StoreResult<()> {
        let tx = w.transaction().map_err(sql_err)?;
        let added = build(&tx)?;
        let seq: i64 = tx
            .query_row("SELECT coalesce(max(seq), 0) FROM journal", [], |r| {
                r.get(0)
            })
            .map_err(sql_err)?;
        tx.commit().map_err(sql_err)?;
        let items: Vec<(u64, &[f32])> = added.iter().map(|(id, v, _)| (*id, &v[..])).collect();
        let groups: Vec<u64> = added.iter().map(|a| a.2).collect();
        if let Err(e) = self.ann.add_many(&items, &groups) {
            // Stored and journalled: the next start indexes them.
            log(format!(
                "index: {e} (the faces are stored; a restart indexes them)"
            ));
        }
        self.note_change(seq);
        Ok(())
    }

    fn register(&self, photos: Vec<PhotoFaces>) -> StoreResult<Vec<StoredPhoto>> {
        for p in &photos {
            for f in &p.faces {
                check_dim(&f.embedding, self.dim)?;
            }
        }
        let created = now();
        let mut out = vec![];
        let mut w = self.writer();
        self.commit_and_index(&mut w, |tx| {
            let mut added = vec![];
            for p in photos {
                tx.execute(
                    "INSERT INTO images(ext, bytes, created, sha256) VALUES (?1, ?2, ?3, ?4)",
                    params![p.ext, p.bytes, created as i64, p.sha256.as_slice()],
                )
                .map_err(sql_err)?;
                let image_id = tx.last_insert_rowid() as u64;
                let ids = Inner::insert_faces(tx, &p.faces, Some(image_id), created)?;
                let mut recs = vec![];
                for (id, f) in ids.into_iter().zip(p.faces) {
                    added.push((id, f.embedding.clone(), group_of(&f.label)));
                    recs.push(FaceRecord {
                        id,
                        label: f.label,
                        embedding: f.embedding,
                        detection: f.detection,
                        image_id: Some(image_id),
                        created,
                    });
                }
                out.push(StoredPhoto {
                    image_id,
                    faces: recs,
                });
            }
            Ok(added)
        })?;
        Ok(out)
    }

    fn add_embeddings(&self, faces: Vec<NewFace>) -> StoreResult<Vec<u64>> {
        for f in &faces {
            check_dim(&f.embedding, self.dim)?;
        }
        let created = now();
        let mut ids = vec![];
        let mut w = self.writer();
        self.commit_and_index(&mut w, |tx| {
            ids = Inner::insert_faces(tx, &faces, None, created)?;
            Ok(ids
                .iter()
                .copied()
                .zip(faces.into_iter().map(|f| (f.embedding, group_of(&f.label))))
                .map(|(id, (v, g))| (id, v, g))
                .collect())
        })?;
        Ok(ids)
    }

    fn delete(&self, id: u64) -> StoreResult<bool> {
        let mut w = self.writer();
        let tx = w.transaction().map_err(sql_err)?;
        let image: Option<Option<i64>> = tx
            .query_row(
                "SELECT image_id FROM faces WHERE id = ?1",
                params![id as i64],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql_err)?;
        let Some(image) = image else {
            return Ok(false);
        };
        tx.execute("DELETE FROM faces WHERE id = ?1", params![id as i64])
            .map_err(sql_err)?;
        tx.execute(
            "INSERT INTO journal(face_id, added) VALUES (?1, 0)",
            params![id as i64],
        )
        .map_err(sql_err)?;
        if let Some(img) = image {
            tx.execute(
                "DELETE FROM images WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM faces WHERE image_id = ?1)",
                params![img],
            )
            .map_err(sql_err)?;
        }
        let seq = tx.last_insert_rowid();
        tx.commit().map_err(sql_err)?;
        if let Err(e) = self.ann.remove(id) {
            log(format!("index: {e} (the face is deleted from the store)"));
        }
        self.note_change(seq);
        Ok(true)
    }

    fn delete_subject(&self, label: &str) -> StoreResult<u64> {
        let mut w = self.writer();
        let tx = w.transaction().map_err(sql_err)?;
        let rows: Vec<(i64, Option<i64>)> = {
            let mut st = tx
                .prepare_cached("SELECT id, image_id FROM faces WHERE label = ?1")
                .map_err(sql_err)?;
            let rows = st
                .query_map(params![label], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(sql_err)?;
            rows.collect::<rusqlite::Result<_>>().map_err(sql_err)?
        };
        if rows.is_empty() {
            return Ok(0);
        }
        tx.execute("DELETE FROM faces WHERE label = ?1", params![label])
            .map_err(sql_err)?;
        {
            let mut jr = tx
                .prepare_cached("INSERT INTO journal(face_id, added) VALUES (?1, 0)")
                .map_err(sql_err)?;
            for (id, _) in &rows {
                jr.execute(params![id]).map_err(sql_err)?;
            }
            let mut img = tx
                .prepare_cached(
                    "DELETE FROM images WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM faces WHERE image_id = ?1)",
                )
                .map_err(sql_err)?;
            let images: std::collections::BTreeSet<i64> =
                rows.iter().filter_map(|(_, i)| *i).collect();
            for i in images {
                img.execute(params![i]).map_err(sql_err)?;
            }
        }
        let seq = tx.last_insert_rowid();
        tx.commit().map_err(sql_err)?;
        for (id, _) in &rows {
            if let Err(e) = self.ann.remove(*id as u64) {
                log(format!("index: {e} (the face is deleted from the store)"));
            }
        }
        self.note_change(seq);
        Ok(rows.len() as u64)
    }

    fn search(&self, queries: Vec<Vec<f32>>, k: usize) -> StoreResult<Vec<Vec<Match>>> {
        use rayon::prelude::*;
        for q in &queries {
            check_dim(q, self.dim)?;
        }
        // Two more candidates than asked, in case one was deleted since;
        // the k kept are re-ranked by their exact float32 distance (the
        // index may hold float16).
        let want = k + 2;
        queries
            .par_iter()
            .map(|q| {
                let cands = self.ann.search(q, want).map_err(StoreError::Internal)?;
                self.with_reader(|c| {
                    let mut st = c
                        .prepare_cached(
                            "SELECT label, embedding, detection, image_id FROM faces WHERE id = ?1",
                        )
                        .map_err(sql_err)?;
                    let mut out = Vec::with_capacity(k);
                    for (id, _) in cands {
                        if out.len() == k {
                            break;
                        }
                        let row = st
                            .query_row(params![id as i64], |r| {
                                Ok((
                                    r.get::<_, String>(0)?,
                                    r.get::<_, Vec<u8>>(1)?,
                                    r.get::<_, Option<Vec<u8>>>(2)?,
                                    r.get::<_, Option<i64>>(3)?,
                                ))
                            })
                            .optional()
                            .map_err(sql_err)?;
                        let Some((label, emb, det, image)) = row else {
                            continue;
                        };
                        let emb = f32_from_bytes(&emb).ok_or_else(|| {
                            StoreError::Internal(format!("face {id}: damaged embedding"))
                        })?;
                        let det = det
                            .and_then(|d| f32_from_bytes(&d))
                            .and_then(|d| Detection::from_floats(&d));
                        out.push(Match {
                            id,
                            label,
                            distance: euclidean(q, &emb),
                            bbox: det.map(|d| d.bbox),
                            image_id: image.map(|i| i as u64),
                        });
                    }
                    out.sort_by(|a, b| a.distance.total_cmp(&b.distance));
                    Ok(out)
                })
            })
            .collect()
    }

    fn record(row: &rusqlite::Row<'_>) -> rusqlite::Result<FaceRow> {
        Ok((
            row.get(0)?,
            row.get(1)?,
            row.get(2)?,
            row.get(3)?,
            row.get(4)?,
            row.get(5)?,
        ))
    }

    fn to_record((id, label, emb, det, image, created): FaceRow) -> StoreResult<FaceRecord> {
        Ok(FaceRecord {
            id: id as u64,
            label,
            embedding: f32_from_bytes(&emb)
                .ok_or_else(|| StoreError::Internal(format!("face {id}: damaged embedding")))?,
            detection: det
                .and_then(|d| f32_from_bytes(&d))
                .and_then(|d| Detection::from_floats(&d)),
            image_id: image.map(|i| i as u64),
            created: created as u64,
        })
    }
}

const FACE_COLUMNS: &str = "id, label, embedding, detection, image_id, created";

/// A `faces` row as read: id, label, embedding, detection, image id, created.
type FaceRow = (i64, String, Vec<u8>, Option<Vec<u8>>, Option<i64>, i64);

/// Re-apply the journal after `seq` to a loaded index: the store's state
/// of each face wins.
fn replay(w: &Connection, ann: &Ann, seq: i64) -> StoreResult<usize> {
    let mut st = w
        .prepare(
            "SELECT DISTINCT j.face_id, f.embedding, f.label FROM journal j LEFT JOIN faces f ON f.id = j.face_id WHERE j.seq > ?1",
        )
        .map_err(sql_err)?;
    let rows = st
        .query_map(params![seq], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Option<Vec<u8>>>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        })
        .map_err(sql_err)?;
    let mut adds = vec![];
    let mut n = 0;
    for row in rows {
        let (id, emb, label) = row.map_err(sql_err)?;
        n += 1;
        match emb {
            Some(e) => {
                let v = f32_from_bytes(&e)
                    .ok_or_else(|| StoreError::Internal(format!("face {id}: damaged embedding")))?;
                if !ann.contains(id as u64) {
                    adds.push((id as u64, v, group_of(label.as_deref().unwrap_or(""))));
                }
            }
            None => ann.remove(id as u64).map_err(StoreError::Internal)?,
        }
    }
    // Searched exactly beside the graph at once; the saver inserts them
    // into the graph in the background, so a restart does not wait for it.
    let items: Vec<(u64, &[f32])> = adds.iter().map(|(id, v, _)| (*id, &v[..])).collect();
    let groups: Vec<u64> = adds.iter().map(|a| a.2).collect();
    ann.add_pending(&items, &groups)
        .map_err(StoreError::Internal)?;
    Ok(n)
}

/// Index every stored face, in chunks, with progress in the log.
fn rebuild(w: &Connection, ann: &Ann, total: i64) -> StoreResult<()> {
    let t = Instant::now();
    let mut last_log = Instant::now();
    let mut after = 0i64;
    let mut done = 0i64;
    log(format!("index: rebuilding from {total} stored faces"));
    let mut st = w
        .prepare("SELECT id, embedding, label FROM faces WHERE id > ?1 ORDER BY id LIMIT 20000")
        .map_err(sql_err)?;
    loop {
        let mut chunk = vec![];
        let rows = st
            .query_map(params![after], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(sql_err)?;
        for row in rows {
            let (id, e, label) = row.map_err(sql_err)?;
            let v = f32_from_bytes(&e)
                .ok_or_else(|| StoreError::Internal(format!("face {id}: damaged embedding")))?;
            chunk.push((id as u64, v, group_of(&label)));
            after = id;
        }
        if chunk.is_empty() {
            break;
        }
        let items: Vec<(u64, &[f32])> = chunk.iter().map(|(id, v, _)| (*id, &v[..])).collect();
        let groups: Vec<u64> = chunk.iter().map(|c| c.2).collect();
        ann.add_many(&items, &groups)
            .map_err(StoreError::Internal)?;
        done += chunk.len() as i64;
        if last_log.elapsed() >= Duration::from_secs(5) {
            last_log = Instant::now();
            log(format!(
                "index: rebuilt {done} / {total} faces ({:.0}%), {:.0} faces/s",
                100.0 * done as f64 / total.max(1) as f64,
                done as f64 / t.elapsed().as_secs_f64()
            ));
        }
    }
    log(format!(
        "index: rebuilt {done} faces in {:.1} s",
        t.elapsed().as_secs_f64()
    ));
    Ok(())
}

#[async_trait]
impl Storage for Embedded {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    fn dim(&self) -> usize {
        self.inner.dim
    }

    async fn register(&self, photos: Vec<PhotoFaces>) -> StoreResult<Vec<StoredPhoto>> {
        self.blocking(move |i| i.register(photos)).await
    }

    async fn add_embeddings(&self, faces: Vec<NewFace>) -> StoreResult<Vec<u64>> {
        self.blocking(move |i| i.add_embeddings(faces)).await
    }

    async fn search(&self, queries: Vec<Vec<f32>>, k: usize) -> StoreResult<Vec<Vec<Match>>> {
        self.blocking(move |i| i.search(queries, k)).await
    }

    async fn face(&self, id: u64) -> StoreResult<Option<FaceRecord>> {
        self.blocking(move |i| {
            i.with_reader(|c| {
                let row = c
                    .query_row(
                        &format!("SELECT {FACE_COLUMNS} FROM faces WHERE id = ?1"),
                        params![id as i64],
                        Inner::record,
                    )
                    .optional()
                    .map_err(sql_err)?;
                row.map(Inner::to_record).transpose()
            })
        })
        .await
    }

    async fn list(&self, offset: u64, limit: u64) -> StoreResult<(u64, Vec<FaceRecord>)> {
        self.blocking(move |i| {
            i.with_reader(|c| {
                let total: i64 = c
                    .query_row("SELECT count(*) FROM faces", [], |r| r.get(0))
                    .map_err(sql_err)?;
                let mut st = c
                    .prepare_cached(&format!(
                        "SELECT {FACE_COLUMNS} FROM faces ORDER BY id LIMIT ?1 OFFSET ?2"
                    ))
                    .map_err(sql_err)?;
                let rows = st
                    .query_map(params![limit as i64, offset as i64], Inner::record)
                    .map_err(sql_err)?;
                let mut out = vec![];
                for r in rows {
                    out.push(Inner::to_record(r.map_err(sql_err)?)?);
                }
                Ok((total as u64, out))
            })
        })
        .await
    }

    async fn delete(&self, id: u64) -> StoreResult<bool> {
        self.blocking(move |i| i.delete(id)).await
    }

    async fn faces_of(&self, label: &str, limit: u64) -> StoreResult<Vec<FaceRecord>> {
        let label = label.to_string();
        self.blocking(move |i| {
            i.with_reader(|c| {
                let mut st = c
                    .prepare_cached(&format!(
                        "SELECT {FACE_COLUMNS} FROM faces WHERE label = ?1 ORDER BY id LIMIT ?2"
                    ))
                    .map_err(sql_err)?;
                let rows = st
                    .query_map(params![label, limit as i64], Inner::record)
                    .map_err(sql_err)?;
                let mut out = vec![];
                for r in rows {
                    out.push(Inner::to_record(r.map_err(sql_err)?)?);
                }
                Ok(out)
            })
        })
        .await
    }

    async fn photo_by_hash(
        &self,
        sha256: [u8; 32],
        label: &str,
    ) -> StoreResult<Option<StoredPhoto>> {
        let label = label.to_string();
        self.blocking(move |i| {
            i.with_reader(|c| {
                let mut st = c
                    .prepare_cached(&format!(
                        "SELECT {FACE_COLUMNS} FROM faces WHERE label = ?1 AND image_id =
                         (SELECT i.id FROM images i WHERE i.sha256 = ?2 AND EXISTS
                            (SELECT 1 FROM faces f WHERE f.image_id = i.id AND f.label = ?1)
                          ORDER BY i.id LIMIT 1)
                         ORDER BY id"
                    ))
                    .map_err(sql_err)?;
                let rows = st
                    .query_map(params![label, sha256.as_slice()], Inner::record)
                    .map_err(sql_err)?;
                let mut faces = vec![];
                for r in rows {
                    faces.push(Inner::to_record(r.map_err(sql_err)?)?);
                }
                Ok(faces
                    .first()
                    .and_then(|f| f.image_id)
                    .map(|image_id| StoredPhoto { image_id, faces }))
            })
        })
        .await
    }

    async fn subjects(&self, offset: u64, limit: u64) -> StoreResult<(u64, Vec<Subject>)> {
        self.blocking(move |i| {
            i.with_reader(|c| {
                let total: i64 = c
                    .query_row("SELECT count(DISTINCT label) FROM faces", [], |r| r.get(0))
                    .map_err(sql_err)?;
                let mut st = c
                    .prepare_cached(
                        "SELECT label, count(*) FROM faces GROUP BY label ORDER BY label LIMIT ?1 OFFSET ?2",
                    )
                    .map_err(sql_err)?;
                let rows = st
                    .query_map(params![limit as i64, offset as i64], |r| {
                        Ok(Subject {
                            label: r.get(0)?,
                            faces: r.get::<_, i64>(1)? as u64,
                        })
                    })
                    .map_err(sql_err)?;
                let out = rows.collect::<rusqlite::Result<Vec<_>>>().map_err(sql_err)?;
                Ok((total as u64, out))
            })
        })
        .await
    }

    async fn rename_subject(&self, from: &str, to: &str) -> StoreResult<u64> {
        let (from, to) = (from.to_string(), to.to_string());
        self.blocking(move |i| {
            // Labels live in the store only (the index holds ids), so this
            // is one statement.
            let n = i
                .writer()
                .execute(
                    "UPDATE faces SET label = ?2 WHERE label = ?1",
                    params![from, to],
                )
                .map_err(sql_err)?;
            Ok(n as u64)
        })
        .await
    }

    async fn delete_subject(&self, label: &str) -> StoreResult<u64> {
        let label = label.to_string();
        self.blocking(move |i| i.delete_subject(&label)).await
    }

    async fn image(&self, id: u64) -> StoreResult<Option<(Vec<u8>, String)>> {
        self.blocking(move |i| {
            i.with_reader(|c| {
                c.query_row(
                    "SELECT bytes, ext FROM images WHERE id = ?1",
                    params![id as i64],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(sql_err)
            })
        })
        .await
    }

    async fn stats(&self) -> StoreResult<Stats> {
        self.blocking(move |i| {
            let indexed = i.ann.len() as u64;
            let waiting = i.ann.pending() as u64;
            i.with_reader(|c| {
                let q = |sql: &str| -> StoreResult<u64> {
                    c.query_row(sql, [], |r| r.get::<_, i64>(0))
                        .map(|n| n as u64)
                        .map_err(sql_err)
                };
                Ok(Stats {
                    faces: q("SELECT count(*) FROM faces")?,
                    labels: q("SELECT count(DISTINCT label) FROM faces")?,
                    images: q("SELECT count(*) FROM images")?,
                    indexed,
                    waiting,
                })
            })
        })
        .await
    }

    async fn close(&self) -> StoreResult<()> {
        self.inner.stop.store(true, Ordering::SeqCst);
        let h = self.saver.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = h {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        let saved = self
            .blocking(|i| {
                i.ann.drain().map_err(StoreError::Internal)?;
                i.save()
            })
            .await;
        // Another process may open the store from here on.
        drop(self.lock.lock().unwrap_or_else(|e| e.into_inner()).take());
        saved
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(seed: u64, dim: usize) -> Vec<f32> {
        let v: Vec<f32> = (0..dim)
            .map(|j| {
                ((seed.wrapping_mul(2654435761).wrapping_add(j as u64 * 40503) % 997) as f32)
                    - 498.0
            })
            .collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect()
    }

    fn face(label: &str, seed: u64) -> NewFace {
        NewFace {
            label: label.into(),
            embedding: unit(seed, 16),
            detection: None,
        }
    }

    #[test]
    fn journal_replay_rebuild_and_ids_never_reused() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let d = tempfile::tempdir().unwrap();
            let mut o = Options::new(d.path());
            o.save_every = i64::MAX;
            o.save_interval = Duration::from_secs(3600);
            let s = Embedded::open(o.clone(), 16).await.unwrap();
            let ids = s
                .add_embeddings((0..50).map(|i| face(&format!("p{i}"), i)).collect())
                .await
                .unwrap();
            assert_eq!(ids.len(), 50);
            s.close().await.unwrap(); // saves the index
            let s = Embedded::open(o.clone(), 16).await.unwrap();
            // Changes after the save live only in the journal ...
            let more = s.add_embeddings(vec![face("late", 1000)]).await.unwrap();
            assert!(s.delete(ids[49]).await.unwrap());
            assert!(!s.delete(ids[49]).await.unwrap());
            drop(s); // ... like a kill -9: no save.
            let s = Embedded::open(o.clone(), 16).await.unwrap();
            let st = s.stats().await.unwrap();
            assert_eq!((st.faces, st.indexed), (50, 50));
            let hit = &s.search(vec![unit(1000, 16)], 1).await.unwrap()[0][0];
            assert_eq!((hit.id, hit.label.as_str()), (more[0], "late"));
            assert!(hit.distance < 1e-6);
            // The newest id is never handed out again.
            assert!(s.delete(more[0]).await.unwrap());
            drop(s);
            let s = Embedded::open(o.clone(), 16).await.unwrap();
            let again = s.add_embeddings(vec![face("new", 5)]).await.unwrap();
            assert!(again[0] > more[0]);
            s.close().await.unwrap();
            // A damaged index file is rebuilt from the store.
            for e in std::fs::read_dir(d.path()).unwrap().flatten() {
                if e.file_name().to_string_lossy().ends_with(".usearch") {
                    std::fs::write(e.path(), b"garbage").unwrap();
                }
            }
            let s = Embedded::open(o, 16).await.unwrap();
            let st = s.stats().await.unwrap();
            assert_eq!((st.faces, st.indexed), (50, 50));
            let r = s.search(vec![unit(7, 16)], 3).await.unwrap();
            assert_eq!(r[0][0].label, "p7");
            assert!(matches!(
                s.add_embeddings(vec![NewFace {
                    label: "x".into(),
                    embedding: vec![1.0; 3],
                    detection: None
                }])
                .await,
                Err(StoreError::Invalid(_))
            ));
        });
    }
}
