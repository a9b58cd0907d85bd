//! The store of record: registered faces in an append-only JSON-lines log
//! (`faces.log`) and the photos as files under `images/`. A registration is
//! acknowledged only after its photo is renamed into place and its log
//! lines are fsynced, so a crash (kill -9) at any moment loses nothing that
//! was acknowledged; a torn last line (a crash mid-append) is dropped at
//! start and truncated away.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaceRecord {
    pub id: u64,
    pub label: String,
    pub embedding: Vec<f32>,
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    pub landmarks: [[f32; 2]; 5],
    pub score: f32,
    pub image_id: u64,
    /// Seconds since the Unix epoch.
    pub created: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Entry {
    Add(FaceRecord),
    Delete { id: u64 },
}

pub struct Store {
    dir: PathBuf,
    log: File,
    faces: BTreeMap<u64, FaceRecord>,
    /// image id -> file extension
    images: BTreeMap<u64, String>,
    next_face: u64,
    next_image: u64,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Self> {
        let err = |e: std::io::Error, p: &Path| Error::from(e).in_file(p);
        std::fs::create_dir_all(dir.join("images")).map_err(|e| err(e, dir))?;
        let path = dir.join("faces.log");
        let mut faces = BTreeMap::new();
        let mut next_face = 1;
        let mut good_len = 0u64;
        if path.exists() {
            let f = File::open(&path).map_err(|e| err(e, &path))?;
            let mut r = BufReader::new(f);
            let mut line = String::new();
            loop {
                line.clear();
                let n = r.read_line(&mut line).map_err(|e| err(e, &path))?;
                if n == 0 || !line.ends_with('\n') {
                    break; // end, or a torn last line
                }
                match serde_json::from_str::<Entry>(line.trim_end()) {
                    Ok(Entry::Add(rec)) => {
                        next_face = next_face.max(rec.id + 1);
                        faces.insert(rec.id, rec);
                    }
                    Ok(Entry::Delete { id }) => {
                        faces.remove(&id);
                    }
                    Err(e) => {
                        return Err(Error::Format(format!(
                            "corrupt record at byte {good_len}: {e}"
                        ))
                        .in_file(&path))
                    }
                }
                good_len += n as u64;
            }
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| err(e, &path))?;
        // Drop a torn tail so the next append starts on a line of its own.
        if log.metadata().map_err(|e| err(e, &path))?.len() > good_len {
            log.set_len(good_len).map_err(|e| err(e, &path))?;
        }
        let mut images = BTreeMap::new();
        let mut next_image = 1;
        let idir = dir.join("images");
        for e in std::fs::read_dir(&idir)
            .map_err(|e| err(e, &idir))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some((stem, ext)) = name.split_once('.') {
                if let Ok(id) = stem.parse::<u64>() {
                    next_image = next_image.max(id + 1);
                    images.insert(id, ext.to_string());
                } else if stem.starts_with("tmp-") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            log,
            faces,
            images,
            next_face,
            next_image,
        })
    }

    pub fn faces(&self) -> &BTreeMap<u64, FaceRecord> {
        &self.faces
    }

    pub fn image_count(&self) -> usize {
        self.images.len()
    }

    /// Write a photo durably; its id.
    pub fn put_image(&mut self, bytes: &[u8], ext: &str) -> Result<u64> {
        let id = self.next_image;
        self.next_image += 1;
        let tmp = self.dir.join("images").join(format!("tmp-{id}.{ext}"));
        let dst = self.image_path_for(id, ext);
        let io = |e: std::io::Error| Error::from(e).in_file(&dst);
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &dst).map_err(io)?;
        sync_dir(&self.dir.join("images")).map_err(io)?;
        self.images.insert(id, ext.to_string());
        Ok(id)
    }

    fn image_path_for(&self, id: u64, ext: &str) -> PathBuf {
        self.dir.join("images").join(format!("{id}.{ext}"))
    }

    /// Path and extension of a stored photo.
    pub fn image(&self, id: u64) -> Option<(PathBuf, &str)> {
        self.images
            .get(&id)
            .map(|ext| (self.image_path_for(id, ext), ext.as_str()))
    }

    /// Append faces (ids assigned here) and fsync; returns them.
    pub fn add(&mut self, mut recs: Vec<FaceRecord>) -> Result<Vec<FaceRecord>> {
        let mut buf = String::new();
        for r in &mut recs {
            r.id = self.next_face;
            self.next_face += 1;
            buf.push_str(&serde_json::to_string(&Entry::Add(r.clone())).map_err(json)?);
            buf.push('\n');
        }
        self.append(&buf)?;
        for r in &recs {
            self.faces.insert(r.id, r.clone());
        }
        Ok(recs)
    }

    /// Delete a face; its photo too once no face refers to it.
    pub fn delete(&mut self, id: u64) -> Result<Option<FaceRecord>> {
        if !self.faces.contains_key(&id) {
            return Ok(None);
        }
        let line = serde_json::to_string(&Entry::Delete { id }).map_err(json)? + "\n";
        self.append(&line)?;
        let rec = self.faces.remove(&id);
        if let Some(r) = &rec {
            if !self.faces.values().any(|f| f.image_id == r.image_id) {
                if let Some(ext) = self.images.remove(&r.image_id) {
                    let _ = std::fs::remove_file(self.image_path_for(r.image_id, &ext));
                }
            }
        }
        Ok(rec)
    }

    /// Forget a photo no face was registered from (nothing to log).
    pub fn drop_image(&mut self, id: u64) {
        if let Some(ext) = self.images.remove(&id) {
            let _ = std::fs::remove_file(self.image_path_for(id, &ext));
        }
    }

    fn append(&mut self, text: &str) -> Result<()> {
        let path = self.dir.join("faces.log");
        let io = |e: std::io::Error| Error::from(e).in_file(&path);
        self.log.write_all(text.as_bytes()).map_err(io)?;
        self.log.sync_data().map_err(io)
    }
}

fn json(e: serde_json::Error) -> Error {
    Error::Format(e.to_string())
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(label: &str, image_id: u64) -> FaceRecord {
        FaceRecord {
            id: 0,
            label: label.into(),
            embedding: vec![0.5; 4],
            bbox: [1.0, 2.0, 3.0, 4.0],
            landmarks: [[0.0; 2]; 5],
            score: 0.9,
            image_id,
            created: 1,
        }
    }

    #[test]
    fn survives_reopen_and_a_torn_tail() {
        let d = tempfile::tempdir().unwrap();
        {
            let mut s = Store::open(d.path()).unwrap();
            let img = s.put_image(b"jpegbytes", "jpg").unwrap();
            let added = s.add(vec![rec("a", img), rec("b", img)]).unwrap();
            assert_eq!(added[1].id, 2);
            s.delete(1).unwrap();
        }
        // A crash in the middle of an append.
        let mut f = OpenOptions::new()
            .append(true)
            .open(d.path().join("faces.log"))
            .unwrap();
        f.write_all(b"{\"op\":\"add\",\"id\":9,\"lab").unwrap();
        drop(f);
        let mut s = Store::open(d.path()).unwrap();
        assert_eq!(s.faces().len(), 1);
        assert_eq!(s.faces()[&2].label, "b");
        let again = s.add(vec![rec("c", 1)]).unwrap();
        assert_eq!(again[0].id, 3);
        drop(s);
        let s = Store::open(d.path()).unwrap();
        assert_eq!(s.faces().len(), 2);
        assert!(s.image(1).is_some());
    }
}
