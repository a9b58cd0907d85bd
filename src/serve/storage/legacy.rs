//! Import of the store earlier faceall versions kept in `--data DIR`:
//! `faces.log` (append-only JSON lines of added and deleted faces) and the
//! photos as `images/ID.jpg|png`. On the first start of the embedded
//! backend over such a directory, the live faces and their photos move into
//! `faces.db` in one transaction, keeping their ids, and the old files are
//! renamed `*.imported` (kept, never deleted). A torn last line (a crash in
//! the middle of an append) is dropped, as the old store did.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

use rusqlite::{params, Connection};
use serde::Deserialize;

use super::{f32_bytes, Detection, StoreError, StoreResult};

#[derive(Deserialize)]
struct OldFace {
    id: u64,
    label: String,
    embedding: Vec<f32>,
    #[serde(rename = "box")]
    bbox: [f32; 4],
    landmarks: [[f32; 2]; 5],
    score: f32,
    image_id: u64,
    created: u64,
}

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Entry {
    Add(OldFace),
    Delete { id: u64 },
}

fn io(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("{}: {e}", path.display()))
}

/// Make AUTOINCREMENT hand out ids above `min` in `table`.
fn bump_sequence(tx: &rusqlite::Transaction<'_>, table: &str, min: i64) -> StoreResult<()> {
    let n = tx
        .execute(
            "UPDATE sqlite_sequence SET seq = max(seq, ?2) WHERE name = ?1",
            params![table, min],
        )
        .map_err(super::embedded::sql_err)?;
    if n == 0 {
        tx.execute(
            "INSERT INTO sqlite_sequence(name, seq) VALUES (?1, ?2)",
            params![table, min],
        )
        .map_err(super::embedded::sql_err)?;
    }
    Ok(())
}

/// Import `dir/faces.log` into the (empty) database; the faces imported,
/// or None when there is no old store.
pub fn import(dir: &Path, conn: &mut Connection, dim: usize) -> StoreResult<Option<usize>> {
    let log = dir.join("faces.log");
    if !log.exists() {
        return Ok(None);
    }
    let f = std::fs::File::open(&log).map_err(|e| io(&log, e))?;
    let mut faces: BTreeMap<u64, OldFace> = BTreeMap::new();
    let mut r = std::io::BufReader::new(f);
    let mut line = String::new();
    let mut at = 0u64;
    let mut max_face = 0u64;
    loop {
        line.clear();
        let n = r.read_line(&mut line).map_err(|e| io(&log, e))?;
        if n == 0 || !line.ends_with('\n') {
            break;
        }
        match serde_json::from_str::<Entry>(line.trim_end()) {
            Ok(Entry::Add(f)) => {
                max_face = max_face.max(f.id);
                faces.insert(f.id, f);
            }
            Ok(Entry::Delete { id }) => {
                faces.remove(&id);
            }
            Err(e) => return Err(io(&log, format!("corrupt record at byte {at}: {e}"))),
        }
        at += n as u64;
    }
    if let Some(f) = faces.values().find(|f| f.embedding.len() != dim) {
        return Err(io(
            &log,
            format!(
                "face {} has {} floats, the model gives {dim}",
                f.id,
                f.embedding.len()
            ),
        ));
    }
    let images_dir = dir.join("images");
    let tx = conn.transaction().map_err(super::embedded::sql_err)?;
    let mut done_images = std::collections::BTreeSet::new();
    for f in faces.values() {
        if done_images.insert(f.image_id) {
            let mut found = None;
            for ext in ["jpg", "png"] {
                let p = images_dir.join(format!("{}.{ext}", f.image_id));
                if p.exists() {
                    found = Some((std::fs::read(&p).map_err(|e| io(&p, e))?, ext));
                    break;
                }
            }
            let Some((bytes, ext)) = found else {
                return Err(io(&images_dir, format!("photo {} is missing", f.image_id)));
            };
            tx.execute(
                "INSERT INTO images(id, ext, bytes, created) VALUES (?1, ?2, ?3, ?4)",
                params![f.image_id as i64, ext, bytes, f.created as i64],
            )
            .map_err(super::embedded::sql_err)?;
        }
        let det = Detection {
            bbox: f.bbox,
            landmarks: f.landmarks,
            score: f.score,
        };
        tx.execute(
            "INSERT INTO faces(id, label, embedding, detection, image_id, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                f.id as i64,
                f.label,
                f32_bytes(&f.embedding),
                f32_bytes(&det.to_floats()),
                f.image_id as i64,
                f.created as i64
            ],
        )
        .map_err(super::embedded::sql_err)?;
    }
    // Ids the old store handed out (deleted ones included) are not reused.
    let max_image = std::fs::read_dir(&images_dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.split_once('.').and_then(|(s, _)| s.parse::<i64>().ok())
                })
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    bump_sequence(&tx, "images", max_image)?;
    bump_sequence(&tx, "faces", max_face as i64)?;
    tx.commit().map_err(super::embedded::sql_err)?;
    std::fs::rename(&log, dir.join("faces.log.imported")).map_err(|e| io(&log, e))?;
    if images_dir.exists() {
        std::fs::rename(&images_dir, dir.join("images.imported"))
            .map_err(|e| io(&images_dir, e))?;
    }
    Ok(Some(faces.len()))
}

#[cfg(test)]
mod tests {
    use crate::serve::storage::embedded::{Embedded, Options};
    use crate::serve::storage::{NewFace, Storage};

    #[test]
    fn an_old_store_moves_into_the_database_with_its_ids() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("images")).unwrap();
        std::fs::write(d.path().join("images/1.jpg"), b"photo-one").unwrap();
        std::fs::write(d.path().join("images/2.png"), b"photo-two").unwrap();
        std::fs::write(d.path().join("images/5.jpg"), b"deleted-later").unwrap();
        let face = |id: u64, label: &str, img: u64, x: f32| {
            serde_json::json!({"op": "add", "id": id, "label": label,
                "embedding": [x, 1.0, 0.0, 0.0], "box": [1, 2, 3, 4],
                "landmarks": [[0, 0], [1, 1], [2, 2], [3, 3], [4, 4]], "score": 0.9,
                "image_id": img, "created": 7})
            .to_string()
        };
        let log = [
            face(1, "ann", 1, 0.5),
            face(2, "bob", 2, -0.5),
            face(3, "cy", 1, 2.0),
            r#"{"op":"delete","id":3}"#.to_string(),
        ]
        .join("\n")
            + "\n{\"op\":\"add\",\"id\":9,\"lab";
        std::fs::write(d.path().join("faces.log"), log).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let s = Embedded::open(Options::new(d.path()), 4).await.unwrap();
            let st = s.stats().await.unwrap();
            assert_eq!((st.faces, st.images, st.indexed), (2, 2, 2));
            let bob = s.face(2).await.unwrap().unwrap();
            assert_eq!(bob.label, "bob");
            assert_eq!(bob.detection.unwrap().bbox, [1.0, 2.0, 3.0, 4.0]);
            assert_eq!(
                s.image(2).await.unwrap(),
                Some((b"photo-two".to_vec(), "png".to_string()))
            );
            let hit = &s.search(vec![vec![0.5, 1.0, 0.0, 0.0]], 1).await.unwrap()[0][0];
            assert_eq!(hit.id, 1);
            // New ids continue above the old ones, deleted ones included.
            let ids = s
                .add_embeddings(vec![NewFace {
                    label: "new".into(),
                    embedding: vec![0.0, 0.0, 1.0, 0.0],
                    detection: None,
                }])
                .await
                .unwrap();
            assert!(ids[0] > 3, "{ids:?}");
        });
        assert!(d.path().join("faces.log.imported").exists());
        assert!(!d.path().join("faces.log").exists());
    }
}
