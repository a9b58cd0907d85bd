//! Writing outputs atomically: every file goes to a temporary name in the
//! target directory and is renamed into place only when all are written, so
//! a failure (or an early return) leaves no partial files behind. Each
//! target may stage into its own `Staging` on its own thread; `absorb`
//! gathers them so all are committed (or removed) together.

use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::error::{Error, Result};

/// Files staged under temporary names in one directory; `commit` renames
/// them all into place, dropping without `commit` removes them.
pub struct Staging {
    dir: PathBuf,
    staged: Vec<(PathBuf, PathBuf)>,
}

impl Staging {
    pub fn new(dir: &Path) -> Result<Self> {
        let meta = std::fs::metadata(dir).map_err(|e| Error::from(e).in_file(dir))?;
        if !meta.is_dir() {
            return Err(Error::Usage("output path is not a directory".into()).in_file(dir));
        }
        Ok(Staging {
            dir: dir.to_path_buf(),
            staged: vec![],
        })
    }

    /// Write `name`'s bytes (through `produce`) to a temporary file.
    pub fn stage(
        &mut self,
        name: &str,
        produce: impl FnOnce(&mut dyn std::io::Write) -> Result<()>,
    ) -> Result<()> {
        let tmp = self.dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let written = std::fs::File::create(&tmp)
            .map_err(Error::from)
            .and_then(|f| {
                let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
                produce(&mut w)?;
                std::io::Write::flush(&mut w)?;
                Ok(())
            });
        match written {
            Ok(()) => {
                self.staged.push((tmp, self.dir.join(name)));
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e.in_file(self.dir.join(name)))
            }
        }
    }

    /// Fill a temporary directory through `produce`, put in place as
    /// directory `name` on commit (an ML Program package), replacing one
    /// already there.
    pub fn stage_dir(
        &mut self,
        name: &str,
        produce: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<()> {
        let tmp = self.dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let made = std::fs::create_dir(&tmp)
            .map_err(Error::from)
            .and_then(|()| produce(&tmp));
        match made {
            Ok(()) => {
                self.staged.push((tmp, self.dir.join(name)));
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(e.in_file(self.dir.join(name)))
            }
        }
    }

    /// Take over another staging's files (one written on another thread
    /// into the same directory): they are committed or removed with these.
    pub fn absorb(&mut self, mut other: Staging) {
        self.staged.append(&mut other.staged);
    }

    /// Rename every staged file into place.
    pub fn commit(mut self) -> Result<Vec<PathBuf>> {
        let staged = std::mem::take(&mut self.staged);
        let mut done = vec![];
        for (i, (tmp, dst)) in staged.iter().enumerate() {
            if tmp.is_dir() && dst.is_dir() {
                let _ = std::fs::remove_dir_all(dst);
            }
            if let Err(e) = std::fs::rename(tmp, dst) {
                for (t, _) in &staged[i..] {
                    remove(t);
                }
                return Err(Error::from(e).in_file(dst));
            }
            done.push(dst.clone());
        }
        Ok(done)
    }
}

/// Remove a staged file or directory.
fn remove(p: &Path) {
    if p.is_dir() {
        let _ = std::fs::remove_dir_all(p);
    } else {
        let _ = std::fs::remove_file(p);
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        for (tmp, _) in &self.staged {
            remove(tmp);
        }
    }
}

/// Memory-map a model file read-only (weights are then slices of it).
pub fn map_file(path: &Path) -> Result<Bytes> {
    let file = std::fs::File::open(path).map_err(|e| Error::from(e).in_file(path))?;
    // SAFETY: read-only map of a file faceall does not modify while it runs.
    let m = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::from(e).in_file(path))?;
    Ok(Bytes::from_owner(m))
}
