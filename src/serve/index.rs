//! Nearest-neighbour search over the registered embeddings with `hnsw_rs`
//! (M = 16, ef_construction = 200). The index is rebuilt from the store at
//! start; hnsw_rs cannot remove points, so deleted ids are filtered out of
//! results and the index is rebuilt once they are a quarter of it.

use std::collections::HashSet;

use hnsw_rs::prelude::{DistL2, Hnsw};

const M: usize = 16;
const EF_CONSTRUCTION: usize = 200;
const LAYERS: usize = 16;

pub struct Index {
    hnsw: Hnsw<'static, f32, DistL2>,
    capacity: usize,
    len: usize,
    deleted: HashSet<u64>,
    dim: usize,
}

impl Index {
    pub fn build<'a>(dim: usize, items: impl IntoIterator<Item = (u64, &'a [f32])>) -> Self {
        let items: Vec<(u64, &[f32])> = items.into_iter().collect();
        let capacity = (items.len() * 2).max(1024);
        let hnsw = Hnsw::new(M, capacity, LAYERS, EF_CONSTRUCTION, DistL2 {});
        for (id, v) in &items {
            hnsw.insert_slice((v, *id as usize));
        }
        Index {
            hnsw,
            capacity,
            len: items.len(),
            deleted: HashSet::new(),
            dim,
        }
    }

    pub fn len(&self) -> usize {
        self.len - self.deleted.len()
    }

    /// False when the index wants a rebuild (full, or many deletions).
    pub fn insert(&mut self, id: u64, v: &[f32]) -> bool {
        if v.len() != self.dim || self.len >= self.capacity {
            return false;
        }
        self.hnsw.insert_slice((v, id as usize));
        self.len += 1;
        true
    }

    pub fn remove(&mut self, id: u64) -> bool {
        self.deleted.insert(id);
        self.deleted.len() * 4 < self.len.max(4)
    }

    /// Up to k (id, Euclidean distance), nearest first.
    pub fn search(&self, q: &[f32], k: usize) -> Vec<(u64, f32)> {
        if self.len == 0 || k == 0 {
            return vec![];
        }
        let want = k + self.deleted.len();
        let ef = (2 * want).max(64);
        let mut out: Vec<(u64, f32)> = self
            .hnsw
            .search(q, want, ef)
            .into_iter()
            .map(|n| (n.d_id as u64, n.distance))
            .filter(|(id, _)| !self.deleted.contains(id))
            .collect();
        out.sort_by(|a, b| a.1.total_cmp(&b.1));
        out.truncate(k);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_exact_neighbours_and_skips_deleted() {
        let vs: Vec<Vec<f32>> = (0..300)
            .map(|i| {
                (0..8)
                    .map(|j| ((i * 31 + j * 7) % 17) as f32 + i as f32 * 0.01)
                    .collect()
            })
            .collect();
        let mut idx = Index::build(8, vs.iter().enumerate().map(|(i, v)| (i as u64, &v[..])));
        let r = idx.search(&vs[42], 3);
        assert_eq!(r[0], (42, 0.0));
        idx.remove(42);
        assert!(idx.search(&vs[42], 3).iter().all(|(id, _)| *id != 42));
        assert!(idx.insert(1000, &vs[42]));
        assert_eq!(idx.search(&vs[42], 1)[0].0, 1000);
        assert_eq!(idx.len(), 300);
    }
}
