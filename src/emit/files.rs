//! Writing outputs atomically: every file goes to a temporary name in the
//! target directory and is renamed into place only when all are written, so
//! a failure leaves no partial files behind.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Produces one file's bytes into a writer.
pub type Producer<'a> = Box<dyn FnOnce(&mut dyn std::io::Write) -> Result<()> + 'a>;

/// Write all `(file name, producer)` into `dir` or none of them.
pub fn write_all(dir: &Path, files: Vec<(String, Producer<'_>)>) -> Result<Vec<PathBuf>> {
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
    let names: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
    for (name, produce) in files {
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let written = std::fs::File::create(&tmp)
            .map_err(Error::from)
            .and_then(|f| {
                let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
                produce(&mut w)?;
                std::io::Write::flush(&mut w)?;
                Ok(())
            });
        if let Err(e) = written {
            cleanup(&temps);
            let _ = std::fs::remove_file(&tmp);
            return Err(e.in_file(dir.join(&name)));
        }
        temps.push(tmp);
    }
    let mut done = vec![];
    for (name, tmp) in names.iter().zip(&temps) {
        let dst = dir.join(name);
        if let Err(e) = std::fs::rename(tmp, &dst) {
            cleanup(&temps);
            return Err(Error::from(e).in_file(dst));
        }
        done.push(dst);
    }
    Ok(done)
}
