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

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, RwLock};

use super::l2sq;
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
    /// M 16 as hnswlib's usual setting; ef_construction 96: on 200k
    /// synthetic faces (`examples/bench_ann.rs`) it builds at 2,100
    /// faces/s against 1,559 at 128 (3,179 at 64), identity recall@5 at
    /// ef 64 0.9995 against 1.0000 (0.9990 at 64); ef 64 as the default
    /// search expansion (see the README for a million faces).
    fn default() -> Self {
        AnnOptions {
            precision: Precision::F16,
            connectivity: 16,
            expansion_add: 96,
            expansion_search: 64,
        }
    }
}

/// Batches up to this size are checked vector by vector after insertion
/// (see `Ann::add_many`).
pub const VERIFY_MAX_BATCH: usize = 256;

/// The insertion group of a face: its label's hash (two labels sharing a
/// hash are only inserted one after the other).
pub fn group_of(label: &str) -> u64 {
    crc32fast::hash(label.as_bytes()) as u64
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
    /// Vectors accepted but not in the graph yet; see [`Side`].
    side: RwLock<Side>,
    /// Held (shared) by whatever changes the graph; [`Ann::freeze`] takes
    /// it alone to know no change is half done.
    mutating: RwLock<()>,
    opts: AnnOptions,
    dim: usize,
    /// Free search contexts.
    free: (Mutex<usize>, Condvar),
}

/// Vectors the graph does not hold yet, searched exactly next to it:
/// - while a save writes the graph (usearch's save must not see the graph
///   change), so writers never wait for a save;
/// - after a restart, the journal's faces that the saved index lacks, so
///   the server is ready as soon as the file is loaded; [`Ann::drain`]
///   inserts them in the background.
#[derive(Default)]
struct Side {
    vecs: Vecs,
    /// Keys in the graph deleted while it was frozen.
    removed: HashSet<u64>,
    frozen: bool,
}

/// Vectors kept contiguously (one scan per query runs over them; after a
/// restart at a million faces they can be 100,000), with their keys and
/// insertion groups; removal swaps the last one in.
#[derive(Default)]
struct Vecs {
    dim: usize,
    keys: Vec<u64>,
    groups: Vec<u64>,
    data: Vec<f32>,
    pos: HashMap<u64, usize>,
}

impl Vecs {
    fn new(dim: usize) -> Self {
        Vecs {
            dim,
            ..Vecs::default()
        }
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn contains_key(&self, k: &u64) -> bool {
        self.pos.contains_key(k)
    }

    fn keys(&self) -> impl Iterator<Item = &u64> {
        self.keys.iter()
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    fn insert(&mut self, k: u64, v: &[f32], g: u64) {
        if let Some(&i) = self.pos.get(&k) {
            self.data[i * self.dim..(i + 1) * self.dim].copy_from_slice(v);
            self.groups[i] = g;
            return;
        }
        self.pos.insert(k, self.keys.len());
        self.keys.push(k);
        self.groups.push(g);
        self.data.extend_from_slice(v);
    }

    fn remove(&mut self, k: &u64) -> bool {
        let Some(i) = self.pos.remove(k) else {
            return false;
        };
        let last = self.keys.len() - 1;
        if i != last {
            self.keys.swap(i, last);
            self.groups.swap(i, last);
            let d = self.dim;
            let (head, tail) = self.data.split_at_mut(last * d);
            head[i * d..(i + 1) * d].copy_from_slice(&tail[..d]);
            self.pos.insert(self.keys[i], i);
        }
        self.keys.pop();
        self.groups.pop();
        self.data.truncate(last * self.dim);
        true
    }

    /// Up to n entries (the last ones), copied.
    fn tail(&self, n: usize) -> Vec<(u64, Vec<f32>, u64)> {
        let from = self.len().saturating_sub(n);
        (from..self.len())
            .map(|i| (self.keys[i], self.row(i).to_vec(), self.groups[i]))
            .collect()
    }

    /// The k nearest by exact Euclidean distance (all cores when many).
    fn nearest(&self, q: &[f32], k: usize) -> Vec<(u64, f32)> {
        let score = |i: usize| (self.keys[i], l2sq(q, self.row(i)));
        let mut all: Vec<(u64, f32)> = if self.len() >= 16_384 {
            (0..self.len()).into_par_iter().map(score).collect()
        } else {
            (0..self.len()).map(score).collect()
        };
        if all.len() > k && k > 0 {
            all.select_nth_unstable_by(k - 1, |a, b| a.1.total_cmp(&b.1));
            all.truncate(k);
        }
        all.into_iter().map(|(key, d)| (key, d.sqrt())).collect()
    }
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
            side: RwLock::new(Side {
                vecs: Vecs::new(dim),
                ..Side::default()
            }),
            mutating: RwLock::new(()),
            opts,
            dim,
            free: (Mutex::new(CONTEXTS), Condvar::new()),
        })
    }

    /// Vectors searchable: the graph's, less those deleted while it was
    /// frozen, plus the side's.
    pub fn len(&self) -> usize {
        let side = self.side();
        let idx = self.read();
        let pending = side.vecs.keys().filter(|k| !idx.contains(**k)).count();
        let hidden = side
            .removed
            .iter()
            .filter(|k| !side.vecs.contains_key(k))
            .count();
        (idx.size() + pending).saturating_sub(hidden)
    }

    /// Vectors waiting outside the graph (see [`Side`]).
    pub fn pending(&self) -> usize {
        let side = self.side();
        side.vecs.len() + side.removed.len()
    }

    fn side(&self) -> std::sync::RwLockReadGuard<'_, Side> {
        self.side.read().unwrap_or_else(|e| e.into_inner())
    }

    fn side_mut(&self) -> std::sync::RwLockWriteGuard<'_, Side> {
        self.side.write().unwrap_or_else(|e| e.into_inner())
    }

    fn gate(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.mutating.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The SIMD kernels usearch picked on this machine (for benchmarks).
    pub fn hardware_acceleration(&self) -> String {
        self.read().hardware_acceleration()
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
    /// `groups[i]` names the person of `items[i]` (a hash of the label).
    ///
    /// usearch 2.26's concurrent insertion leaves some nodes with no links
    /// pointing to them, so no search reaches them (upstream issue #735:
    /// 2-13 of 1,500 in our runs, never with one thread); the vendored
    /// usearch (vendor/usearch) carries a fix. On top of it, the faces of
    /// one group go in order through one thread (groups in parallel), and
    /// batches of at most [`VERIFY_MAX_BATCH`] (photo registrations) are
    /// looked up afterwards, the unreachable ones re-inserted one by one.
    /// Imports skip that check: it cost 40% of the insert time at 200k
    /// faces.
    ///
    /// While the graph is frozen for a save the vectors go to the side
    /// instead (searched exactly; inserted after the save).
    pub fn add_many(&self, items: &[(u64, &[f32])], groups: &[u64]) -> Result<(), String> {
        self.check_batch(items, groups)?;
        let _gate = self.gate();
        {
            let mut side = self.side_mut();
            if side.frozen {
                let idx = self.read();
                for ((k, v), g) in items.iter().zip(groups) {
                    if idx.contains(*k) {
                        // Replaced: the graph's old vector is hidden until the save ends.
                        side.removed.insert(*k);
                    }
                    side.vecs.insert(*k, v, *g);
                }
                return Ok(());
            }
            for (k, _) in items {
                side.vecs.remove(k);
            }
        }
        self.insert_graph(items, groups)
    }

    /// Keep vectors out of the graph for now: searched exactly, inserted
    /// by [`Ann::drain`] (the journal's faces at a restart).
    pub fn add_pending(&self, items: &[(u64, &[f32])], groups: &[u64]) -> Result<(), String> {
        self.check_batch(items, groups)?;
        let mut side = self.side_mut();
        for ((k, v), g) in items.iter().zip(groups) {
            side.vecs.insert(*k, v, *g);
        }
        Ok(())
    }

    /// Insert what waits beside the graph, in batches, until nothing does
    /// or a save freezes the graph; returns how many were inserted.
    pub fn drain(&self) -> Result<usize, String> {
        let mut done = 0;
        loop {
            let _gate = self.gate();
            let chunk: Vec<(u64, Vec<f32>, u64)> = {
                let side = self.side();
                if side.frozen {
                    break;
                }
                side.vecs.tail(5000)
            };
            if chunk.is_empty() {
                break;
            }
            let items: Vec<(u64, &[f32])> = chunk.iter().map(|(k, v, _)| (*k, &v[..])).collect();
            let groups: Vec<u64> = chunk.iter().map(|c| c.2).collect();
            self.insert_graph(&items, &groups)?;
            let mut side = self.side_mut();
            for (k, _, _) in &chunk {
                if !side.vecs.remove(k) {
                    // Deleted while it was being inserted.
                    self.remove_from_graph(*k)?;
                }
            }
            done += chunk.len();
        }
        Ok(done)
    }

    /// Stop changes to the graph (they go to the side) so it can be saved
    /// while writers go on. Refused (false) while vectors wait beside the
    /// graph: a saved file must hold every change up to its journal
    /// position, so those are drained first.
    pub fn freeze(&self) -> bool {
        let _all = self.mutating.write().unwrap_or_else(|e| e.into_inner());
        let mut side = self.side_mut();
        if !side.vecs.is_empty() || !side.removed.is_empty() {
            return false;
        }
        side.frozen = true;
        true
    }

    /// After a save: apply the deletes that came meanwhile, then let
    /// changes reach the graph again (what came meanwhile waits for
    /// [`Ann::drain`]).
    pub fn thaw(&self) -> Result<(), String> {
        let _gate = self.gate();
        let removed: Vec<u64> = self.side().removed.iter().copied().collect();
        for k in &removed {
            self.remove_from_graph(*k)?;
        }
        let mut side = self.side_mut();
        for k in &removed {
            side.removed.remove(k);
        }
        side.frozen = false;
        Ok(())
    }

    fn check_batch(&self, items: &[(u64, &[f32])], groups: &[u64]) -> Result<(), String> {
        if groups.len() != items.len() {
            return Err(format!(
                "{} vectors with {} groups",
                items.len(),
                groups.len()
            ));
        }
        if let Some((k, v)) = items.iter().find(|(_, v)| v.len() != self.dim) {
            return Err(format!(
                "face {k}: {} floats, the index holds {}",
                v.len(),
                self.dim
            ));
        }
        Ok(())
    }

    /// Insert into the graph (the caller holds the gate).
    fn insert_graph(&self, items: &[(u64, &[f32])], groups: &[u64]) -> Result<(), String> {
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
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_by_key(|&i| (groups.get(i).copied().unwrap_or(0), i));
        let runs: Vec<&[usize]> = order
            .chunk_by(|a, b| groups.get(*a) == groups.get(*b))
            .collect();
        runs.par_iter().try_for_each(|run| {
            run.iter().try_for_each(|&i| match items.get(i) {
                Some((k, v)) => insert(*k, v),
                None => Ok(()),
            })
        })?;
        if items.len() > VERIFY_MAX_BATCH {
            return Ok(());
        }
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
            tracing::warn!(
                "index: {} vector(s) not found by a search for themselves after re-insertion (kept; a larger --ef-search finds more)",
                lost.len()
            );
        }
        Ok(())
    }

    /// Remove a key (no-op when absent).
    pub fn remove(&self, key: u64) -> Result<(), String> {
        let _gate = self.gate();
        {
            let mut side = self.side_mut();
            side.vecs.remove(&key);
            if side.frozen {
                if self.read().contains(key) {
                    side.removed.insert(key);
                }
                return Ok(());
            }
        }
        self.remove_from_graph(key)
    }

    fn remove_from_graph(&self, key: u64) -> Result<(), String> {
        let idx = self.read();
        let _c = Context::take(&self.free);
        if idx.contains(key) {
            idx.remove(key)
                .map_err(|e| format!("index remove of {key}: {e}"))?;
        }
        Ok(())
    }

    pub fn contains(&self, key: u64) -> bool {
        let side = self.side();
        if side.vecs.contains_key(&key) {
            return true;
        }
        !side.removed.contains(&key) && self.read().contains(key)
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
        if k == 0 {
            return Ok(vec![]);
        }
        // The side is read first and held, so a vector moving from it into
        // the graph is seen in one or the other (or both: kept once).
        let side = self.side();
        let mut out = side.vecs.nearest(q, k);
        let idx = self.read();
        if idx.size() > 0 {
            let _c = Context::take(&self.free);
            // usearch's expansion is a shared setting; a larger k than the
            // configured ef widens the search for this call only through
            // asking for more results (HNSW keeps max(ef, k) candidates).
            let m = idx
                .search(q, k + side.removed.len())
                .map_err(|e| format!("index search: {e}"))?;
            out.extend(
                m.keys
                    .into_iter()
                    .zip(m.distances)
                    .filter(|(key, _)| !side.removed.contains(key) && !side.vecs.contains_key(key))
                    .map(|(key, d)| (key, d.max(0.0).sqrt())),
            );
        }
        out.sort_by(|a, b| a.1.total_cmp(&b.1));
        out.truncate(k);
        Ok(out)
    }

    /// Change the search expansion (ef).
    pub fn set_expansion_search(&self, ef: usize) {
        self.read().change_expansion_search(ef.max(1));
    }

    /// Save into `dir` as containing the journal up to `journal_seq`.
    /// While writers run, call it between [`Ann::freeze`] and
    /// [`Ann::thaw`] (searches go on throughout).
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
        let groups: Vec<u64> = (0..items.len() as u64).collect();
        ann.add_many(&items, &groups).unwrap();
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
        back.add_many(&[(42, &vs[41][..])], &[0]).unwrap();
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

    /// The vendored usearch keeps vectors in one flat region sized to the
    /// capacity and moves them when the index grows, when a deleted slot is
    /// reused and when a saved index is loaded and grown: after each, every
    /// face is found by its own vector at distance ~0 (the stored copy is
    /// its vector, not a neighbour's or stale memory).
    #[test]
    fn vectors_survive_growth_slot_reuse_and_reload() {
        let dim = 48;
        let vs = vecs(7000, dim);
        let all_found = |ann: &Ann, keys: &mut dyn Iterator<Item = usize>| {
            for i in keys {
                let hit = ann.search(&vs[i], 1).unwrap();
                assert_eq!(hit[0].0, i as u64, "face {i}: {hit:?}");
                assert!(hit[0].1 < 1e-3, "face {i} stored inexactly: {hit:?}");
            }
        };
        let ann = Ann::new(dim, AnnOptions::default()).unwrap();
        // Batches of 250 from a capacity of 1,024: three moves of the region.
        for b in 0..16 {
            let items: Vec<(u64, &[f32])> = (b * 250..(b + 1) * 250)
                .map(|i| (i as u64, &vs[i][..]))
                .collect();
            ann.add_many(&items, &vec![b as u64; 250]).unwrap();
        }
        all_found(&ann, &mut (0..4000));
        // Deleted slots are reused by new faces.
        for i in 0..300 {
            ann.remove(i as u64 * 13).unwrap();
        }
        let fresh: Vec<(u64, &[f32])> = (4000..4300).map(|i| (i as u64, &vs[i][..])).collect();
        ann.add_many(&fresh, &vec![99; 300]).unwrap();
        assert_eq!(ann.len(), 4000);
        all_found(
            &ann,
            &mut (4000..4300).chain((0..4000).filter(|i| i % 13 != 0 || i / 13 >= 300)),
        );
        let dir = tempfile::tempdir().unwrap();
        ann.save(dir.path(), 3).unwrap();
        let (back, _) = Ann::load(dir.path(), dim, AnnOptions::default())
            .unwrap()
            .unwrap();
        all_found(&back, &mut (4000..4300));
        // Loaded at its size, then grown past it.
        let more: Vec<(u64, &[f32])> = (4300..7000).map(|i| (i as u64, &vs[i][..])).collect();
        back.add_many(&more, &vec![7; 2700]).unwrap();
        assert_eq!(back.len(), 6700);
        all_found(
            &back,
            &mut (4000..7000).chain((1..300).filter(|i| i % 13 != 0)),
        );
    }

    /// Five near-duplicates per person in one large batch inserted on all
    /// cores, no check after insertion: every face is found by a search
    /// for itself. Upstream usearch 2.26 lost 7 of 3,500 here (issue #735;
    /// fixed by the patch in vendor/usearch).
    #[test]
    fn near_duplicates_of_one_person_stay_reachable() {
        let (people, dim) = (700, 128);
        let centres = vecs(people, dim);
        let noise = vecs(people * 5, dim);
        let faces: Vec<Vec<f32>> = (0..people * 5)
            .map(|i| {
                let v: Vec<f32> = centres[i / 5]
                    .iter()
                    .zip(&noise[i])
                    .map(|(c, e)| c + 0.15 * e)
                    .collect();
                let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.into_iter().map(|x| x / n).collect()
            })
            .collect();
        assert!(faces.len() > VERIFY_MAX_BATCH);
        for round in 0..5 {
            let ann = Ann::new(dim, AnnOptions::default()).unwrap();
            let items: Vec<(u64, &[f32])> = faces
                .iter()
                .enumerate()
                .map(|(i, v)| (i as u64, &v[..]))
                .collect();
            let groups: Vec<u64> = (0..faces.len())
                .map(|i| group_of(&format!("p{}", i / 5)))
                .collect();
            ann.add_many(&items, &groups).unwrap();
            let lost = (0..faces.len())
                .filter(|&i| {
                    let hit = ann.search(&faces[i], 5).unwrap();
                    !hit.iter().any(|h| h.0 == i as u64)
                })
                .count();
            assert_eq!(lost, 0, "round {round}: {lost} faces unreachable");
        }
    }

    /// While a save has the graph frozen, adds and deletes go on: new
    /// vectors are found (exactly, beside the graph), deleted ones are not,
    /// and after the thaw and drain the graph holds the same.
    #[test]
    fn writers_go_on_while_the_graph_is_frozen() {
        let dir = tempfile::tempdir().unwrap();
        let vs = vecs(600, 32);
        let ann = Ann::new(32, AnnOptions::default()).unwrap();
        let items: Vec<(u64, &[f32])> = (0..400).map(|i| (i as u64, &vs[i][..])).collect();
        ann.add_many(&items, &vec![0; 400]).unwrap();
        assert!(ann.freeze());
        let more: Vec<(u64, &[f32])> = (400..600).map(|i| (i as u64, &vs[i][..])).collect();
        ann.add_many(&more, &vec![1; 200]).unwrap();
        ann.remove(7).unwrap();
        ann.remove(450).unwrap();
        assert_eq!(ann.len(), 598);
        assert_eq!(ann.search(&vs[500], 1).unwrap()[0].0, 500);
        assert!(ann.search(&vs[7], 3).unwrap().iter().all(|h| h.0 != 7));
        assert!(!ann.contains(7) && !ann.contains(450) && ann.contains(599));
        // Saving while frozen writes the graph as it was at the freeze.
        let meta = ann.save(dir.path(), 1).unwrap();
        assert_eq!(meta.faces, 400);
        // A second freeze waits for the side to drain.
        ann.thaw().unwrap();
        assert!(!ann.freeze());
        assert_eq!(ann.drain().unwrap(), 199);
        assert_eq!(ann.pending(), 0);
        assert_eq!(ann.len(), 598);
        assert_eq!(ann.read().size(), 598);
        for i in [0usize, 399, 401, 599] {
            assert_eq!(ann.search(&vs[i], 1).unwrap()[0].0, i as u64);
        }
        assert!(ann.freeze());
        ann.thaw().unwrap();
        // Faces put beside the graph (a restart's journal) are found at once.
        let (back, _) = Ann::load(dir.path(), 32, AnnOptions::default())
            .unwrap()
            .unwrap();
        back.add_pending(&more, &vec![1; 200]).unwrap();
        assert_eq!(back.len(), 600);
        assert_eq!(back.search(&vs[555], 1).unwrap()[0].0, 555);
        assert_eq!(back.drain().unwrap(), 200);
        assert_eq!(back.search(&vs[555], 1).unwrap()[0].0, 555);
    }
}
