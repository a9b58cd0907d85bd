//! Writing outputs atomically: every file goes to a temporary name in the
//! target directory and is renamed into place only when all are written, so
//! a failure leaves no partial files behind.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Write all `(file name, bytes)` into `dir` or none of them.
pub fn write_all(dir: &Path, files: &[(String, Vec<u8>)]) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(dir).map_err(|e| Error::from(e).in_file(dir))?;
    if !meta.is_dir() {
        return Err(Error::Usage("output path is not a directory".into()).in_file(dir));
    }
    let mut temps: Vec<PathBuf> = vec![];
    let cleanup = |temps: &[PathBuf]| {
        for t in temps {
            let _ = std::fs::remove_file(t);
        }
    };
    for (name, bytes) in files {
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        if let Err(e) = std::fs::write(&tmp, bytes) {
            cleanup(&temps);
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::from(e).in_file(dir.join(name)));
        }
        temps.push(tmp);
    }
    let mut done = vec![];
    for ((name, _), tmp) in files.iter().zip(&temps) {
        let dst = dir.join(name);
        if let Err(e) = std::fs::rename(tmp, &dst) {
            cleanup(&temps);
            return Err(Error::from(e).in_file(dst));
        }
        done.push(dst);
    }
    Ok(done)
}
