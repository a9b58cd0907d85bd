//! The embedded backend's nearest-neighbour index: usearch's HNSW (M 16),
//! saved beside the store so a restart loads it instead of rebuilding.
//!
//! Chosen by measurement (README, `scripts/bench_index`): on 100k faces
//! hnsw_rs 0.3 built in 198-363 s, usearch in 40 s (float16) to 64 s
//! (float32) on two threads, hnswlib 0.8 in 56 s. usearch also deletes for
//! real and saves or loads 100k faces in a fraction of a second.
//!
//! Vectors are held in float16 by default (half the memory of float32; the
//! identity recall is the same within 0.001 on the synthetic galleries);
//! the backend re-ranks the candidates with the exact float32 embeddings of
//! the store of record, so the distances it reports are exact.
//!
//! A saved index is two files: `index-SEQ.usearch` and `index.json`, which
//! names it with its size, CRC-32 and the store's journal position it
//! contains. `index.json` is replaced last (write, fsync, rename), so a
//! crash at any point leaves the old pair or the new pair; a file that does
//! not match its CRC is rebuilt from the store.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, RwLock};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

/// How the index stores vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F16,
    F32,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f16" | "float16" => Ok(Precision::F16),
            "f32" | "float32" => Ok(Precision::F32),
            _ => Err(format!("index precision '{s}': use f16 or f32")),
        }
    }
}

/// Index parameters.
#[derive(Debug, Clone, Copy)]
pub struct AnnOptions {
    pub precision: Precision,
    /// HNSW's M: links per node.
    pub connectivity: usize,
    /// Candidates kept while inserting (hnswlib's ef_construction).
    pub expansion_add: usize,
    /// Candidates kept while searching (hnswlib's ef); raised to k when
    /// more are asked for.
    pub expansion_search: usize,
}

impl Default for AnnOptions {
    /// M 16 as hnswlib's usual setting; ef_construction 128 builds 1.5x
    /// faster than 200 at the same recall here; ef 64 gives identity
    /// recall@5 of 1.000 on 100k synthetic faces (0.9995 at 48).
    fn default() -> Self {
        AnnOptions {
            precision: Precision::F16,
            connectivity: 16,
            expansion_add: 128,
            expansion_search: 64,
        }
    }
}

/// Concurrent index calls at most (usearch keeps one search context per
/// concurrent caller; more callers wait here).
const CONTEXTS: usize = 32;

/// What `index.json` records about a saved index.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedMeta {
    pub format: u32,
    pub file: String,
    pub bytes: u64,
    pub crc32: u32,
    pub faces: u64,
    pub dim: usize,
    pub precision: Precision,
    /// The store's journal position this index contains (every add and
    /// delete with a sequence number up to this one).
    pub journal_seq: i64,
}

const META: &str = "index.json";
const FORMAT: u32 = 1;

pub struct Ann {
    index: RwLock<Index>,
    opts: AnnOptions,
    dim: usize,
    /// Free search contexts.
    free: (Mutex<usize>, Condvar),
}

struct Context<'a>(&'a (Mutex<usize>, Condvar));

impl<'a> Context<'a> {
    fn take(free: &'a (Mutex<usize>, Condvar)) -> Self {
        let mut n = free.0.lock().unwrap_or_else(|e| e.into_inner());
        while *n == 0 {
            n = free.1.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n -= 1;
        Context(free)
    }
}

impl Drop for Context<'_> {
    fn drop(&mut self) {
        *self.0 .0.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.0 .1.notify_one();
    }
}

fn native(opts: &AnnOptions, dim: usize) -> Result<Index, String> {
    Index::new(&IndexOptions {
        dimensions: dim,
        metric: MetricKind::L2sq,
        quantization: match opts.precision {
            Precision::F16 => ScalarKind::F16,
            Precision::F32 => ScalarKind::F32,
        },
        connectivity: opts.connectivity,
        expansion_add: opts.expansion_add,
        expansion_search: opts.expansion_search,
        multi: false,
    })
    .map_err(|e| format!("cannot create the index: {e}"))
}

impl Ann {
    pub fn new(dim: usize, opts: AnnOptions) -> Result<Self, String> {
        let index = native(&opts, dim)?;
        index
            .reserve_capacity_and_threads(1024, CONTEXTS)
            .map_err(|e| format!("cannot reserve index memory: {e}"))?;
        Ok(Ann {
            index: RwLock::new(index),
            opts,
            dim,
            free: (Mutex::new(CONTEXTS), Condvar::new()),
        })
    }

    pub fn len(&self) -> usize {
        self.read().size()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the index holds in memory.
    pub fn memory(&self) -> usize {
        self.read().memory_usage()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Make room for `more` vectors (doubling, so growth is amortised).
    fn grow(&self, more: usize) -> Result<(), String> {
        {
            let idx = self.read();
            if idx.size() + more <= idx.capacity() {
                return Ok(());
            }
        }
        let idx = self.index.write().unwrap_or_else(|e| e.into_inner());
        let want = idx.size() + more;
        if want > idx.capacity() {
            let cap = want.max(idx.capacity() * 2).max(1024);
            idx.reserve_capacity_and_threads(cap, CONTEXTS)
                .map_err(|e| format!("cannot grow the index to {cap} vectors: {e}"))?;
        }
        Ok(())
    }

    /// Insert vectors (on all cores); a key already present is replaced.
    ///
    /// Inserted concurrently, HNSW nodes of tight clusters (five photos of
    /// one person, added in one batch) sometimes end up with no links
    /// pointing to them, so no search reaches them: 2-13 of 1,500 in our
    /// runs, never when inserted one at a time. So every new vector is
    /// looked up afterwards (about a third of the insert's cost) and the
    /// few unreachable ones are re-inserted one by one.
    pub fn add_many(&self, items: &[(u64, &[f32])]) -> Result<(), String> {
        if let Some((k, v)) = items.iter().find(|(_, v)| v.len() != self.dim) {
            return Err(format!(
                "face {k}: {} floats, the index holds {}",
                v.len(),
                self.dim
            ));
        }
        self.grow(items.len())?;
        let idx = self.read();
        let insert = |k: u64, v: &[f32]| -> Result<(), String> {
            let _c = Context::take(&self.free);
            if idx.contains(k) {
                idx.remove(k).map_err(|e| e.to_string())?;
            }
            idx.add(k, v)
                .map_err(|e| format!("index insert of {k}: {e}"))
        };
        items.par_iter().try_for_each(|(k, v)| insert(*k, v))?;
        let reachable = |k: u64, v: &[f32]| -> Result<bool, String> {
            let _c = Context::take(&self.free);
            let m = idx.search(v, 3).map_err(|e| format!("index search: {e}"))?;
            // An identical vector stored under another key counts: the
            // search reaches this point of the space.
            Ok(m.keys.contains(&k) || m.distances.first().is_some_and(|d| *d <= 0.0))
        };
        let mut lost: Vec<(u64, &[f32])> = items
            .par_iter()
            .map(|(k, v)| Ok((!reachable(*k, v)?).then_some((*k, *v))))
            .collect::<Result<Vec<_>, String>>()?
            .into_iter()
            .flatten()
            .collect();
        for _ in 0..3 {
            if lost.is_empty() {
                break;
            }
            let mut still = vec![];
            for (k, v) in lost {
                insert(k, v)?;
                if !reachable(k, v)? {
                    still.push((k, v));
                }
            }
            lost = still;
        }
        if !lost.is_empty() {
            // Stored and in the index, only not found by a search at this
            // ef (seen at a million faces): not a reason to refuse the
            // batch or, at start, the whole store.
            eprintln!(
                "faceall serve: index: {} vector(s) not found by a search for themselves after re-insertion (kept; a larger --ef-search finds more)",
                lost.len()
            );
        }
        Ok(())
    }

    /// Remove a key (no-op when absent).
    pub fn remove(&self, key: u64) -> Result<(), String> {
        let idx = self.read();
        let _c = Context::take(&self.free);
        if idx.contains(key) {
            idx.remove(key)
                .map_err(|e| format!("index remove of {key}: {e}"))?;
        }
        Ok(())
    }

    pub fn contains(&self, key: u64) -> bool {
        self.read().contains(key)
    }

    /// Up to `k` (key, approximate Euclidean distance), nearest first.
    pub fn search(&self, q: &[f32], k: usize) -> Result<Vec<(u64, f32)>, String> {
        if q.len() != self.dim {
            return Err(format!(
                "query of {} floats, the index holds {}",
                q.len(),
                self.dim
            ));
        }
        let idx = self.read();
        if idx.size() == 0 || k == 0 {
            return Ok(vec![]);
        }
        let _c = Context::take(&self.free);
        // usearch's expansion is a shared setting; a larger k than the
        // configured ef widens the search for this call only through
        // asking for more results (HNSW keeps max(ef, k) candidates).
        let m = idx.search(q, k).map_err(|e| format!("index search: {e}"))?;
        Ok(m.keys
            .into_iter()
            .zip(m.distances)
            .map(|(key, d)| (key, d.max(0.0).sqrt()))
            .collect())
    }

    /// Change the search expansion (ef).
    pub fn set_expansion_search(&self, ef: usize) {
        self.read().change_expansion_search(ef.max(1));
    }

    /// Save into `dir` as containing the journal up to `journal_seq`. The
    /// caller keeps writers out while this runs (searches go on).
    pub fn save(&self, dir: &Path, journal_seq: i64) -> Result<SavedMeta, String> {
        let idx = self.read();
        let file = format!("index-{journal_seq}.usearch");
        let path = dir.join(&file);
        let tmp = dir.join(format!("{file}.tmp"));
        let tmp_s = tmp
            .to_str()
            .ok_or_else(|| format!("{}: not a UTF-8 path", tmp.display()))?;
        idx.save(tmp_s)
            .map_err(|e| format!("saving the index to {}: {e}", tmp.display()))?;
        let faces = idx.size() as u64;
        drop(idx);
        let (bytes, crc32) = crc_of(&tmp)?;
        std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
        let meta = SavedMeta {
            format: FORMAT,
            file,
            bytes,
            crc32,
            faces,
            dim: self.dim,
            precision: self.opts.precision,
            journal_seq,
        };
        write_meta(dir, &meta)?;
        // Older index files are now unreferenced.
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with("index-") && n != meta.file {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(meta)
    }

    /// The saved index in `dir`, checked against its CRC; Err says why it
    /// cannot be used (the caller rebuilds), Ok(None) when there is none.
    pub fn load(
        dir: &Path,
        dim: usize,
        opts: AnnOptions,
    ) -> Result<Option<(Ann, SavedMeta)>, String> {
        let mp = dir.join(META);
        let text = match std::fs::read_to_string(&mp) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", mp.display())),
        };
        let meta: SavedMeta =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", mp.display()))?;
        if meta.format != FORMAT || meta.dim != dim || meta.precision != opts.precision {
            return Err(format!(
                "{}: saved for format {} / {} floats / {:?}, this server uses {FORMAT} / {dim} / {:?}",
                mp.display(),
                meta.format,
                meta.dim,
                meta.precision,
                opts.precision
            ));
        }
        if meta.file.contains(['/', '\\']) {
            return Err(format!("{}: bad file name", mp.display()));
        }
        let path = dir.join(&meta.file);
        let (bytes, crc) = crc_of(&path)?;
        if bytes != meta.bytes || crc != meta.crc32 {
            return Err(format!(
                "{}: {bytes} bytes with CRC {crc:08x}, {} recorded {} bytes with CRC {:08x} (torn or damaged)",
                path.display(),
                META,
                meta.bytes,
                meta.crc32
            ));
        }
        let ann = Ann::new(dim, opts)?;
        {
            let idx = ann.index.write().unwrap_or_else(|e| e.into_inner());
            let s = path
                .to_str()
                .ok_or_else(|| format!("{}: not a UTF-8 path", path.display()))?;
            idx.load(s)
                .map_err(|e| format!("loading {}: {e}", path.display()))?;
            // load() replaces the thread contexts and search settings.
            let cap = idx.size().max(1024);
            idx.reserve_capacity_and_threads(cap, CONTEXTS)
                .map_err(|e| format!("cannot reserve index memory: {e}"))?;
            idx.change_expansion_search(opts.expansion_search);
            idx.change_expansion_add(opts.expansion_add);
            if idx.size() as u64 != meta.faces {
                return Err(format!(
                    "{}: holds {} faces, {} recorded {}",
                    path.display(),
                    idx.size(),
                    META,
                    meta.faces
                ));
            }
        }
        Ok(Some((ann, meta)))
    }

    /// Forget the saved index (it no longer matches the store).
    pub fn discard_saved(dir: &Path) {
        let _ = std::fs::remove_file(dir.join(META));
    }
}

fn crc_of(path: &Path) -> Result<(u64, u32), String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let r = f
            .read(&mut buf)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if r == 0 {
            break;
        }
        h.update(&buf[..r]);
        n += r as u64;
    }
    Ok((n, h.finalize()))
}

fn write_meta(dir: &Path, meta: &SavedMeta) -> Result<(), String> {
    let path: PathBuf = dir.join(META);
    let tmp = dir.join(format!("{META}.tmp"));
    let text = serde_json::to_string_pretty(meta).map_err(|e| e.to_string())?;
    let io = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vecs(n: usize, dim: usize) -> Vec<Vec<f32>> {
        (0..n)
            .map(|i| {
                // splitmix64: distinct pseudo-random vectors.
                let v: Vec<f32> = (0..dim)
                    .map(|j| {
                        let mut z = ((i * dim + j) as u64).wrapping_add(0x9E3779B97F4A7C15);
                        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
                        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
                        ((z ^ (z >> 31)) % 2001) as f32 / 1000.0 - 1.0
                    })
                    .collect();
                let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.into_iter().map(|x| x / n).collect()
            })
            .collect()
    }

    #[test]
    fn adds_finds_removes_saves_and_detects_a_torn_file() {
        let dir = tempfile::tempdir().unwrap();
        let vs = vecs(3000, 32);
        let ann = Ann::new(32, AnnOptions::default()).unwrap();
        let items: Vec<(u64, &[f32])> = vs
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u64 + 1, &v[..]))
            .collect();
        ann.add_many(&items).unwrap();
        assert_eq!(ann.len(), 3000);
        let hit = ann.search(&vs[41], 3).unwrap();
        assert_eq!(hit[0].0, 42);
        assert!(hit[0].1 < 1e-2, "{hit:?}");
        ann.remove(42).unwrap();
        assert_eq!(ann.len(), 2999);
        assert!(ann.search(&vs[41], 3).unwrap().iter().all(|h| h.0 != 42));
        let meta = ann.save(dir.path(), 7).unwrap();
        assert_eq!(meta.faces, 2999);
        let (back, m2) = Ann::load(dir.path(), 32, AnnOptions::default())
            .unwrap()
            .unwrap();
        assert_eq!(m2.journal_seq, 7);
        assert_eq!(back.len(), 2999);
        assert!(!back.contains(42) && back.contains(43));
        assert_eq!(back.search(&vs[99], 1).unwrap()[0].0, 100);
        back.add_many(&[(42, &vs[41][..])]).unwrap();
        assert_eq!(back.search(&vs[41], 1).unwrap()[0].0, 42);
        // A torn file is refused, not loaded.
        let f = dir.path().join(&meta.file);
        let len = std::fs::metadata(&f).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&f)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
        let err = Ann::load(dir.path(), 32, AnnOptions::default())
            .err()
            .unwrap();
        assert!(err.contains("torn"), "{err}");
        // Another dimension or precision is refused too.
        assert!(Ann::load(dir.path(), 16, AnnOptions::default()).is_err());
        assert!(Ann::load(
            tempfile::tempdir().unwrap().path(),
            32,
            AnnOptions::default()
        )
        .unwrap()
        .is_none());
    }
}
