//! Property test over damaged converted models, for every reader in the
//! formats table: opening a mutated file (prototxt, caffemodel, mlmodel,
//! graph.json, safetensors, onnx, and each file of an ML Program package)
//! and, when it opens, running it must return errors, never panic.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use faceall::formats::{self, files::Staging, Format, WriteOptions};
use faceall::ir::Tensor;
use proptest::prelude::*;

mod common;
use common::mutate::{apply, mutation};

/// misc_ops (most op kinds in one small graph) written in `format`.
fn written(format: &dyn Format, dir: &Path) -> Vec<PathBuf> {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/misc_ops/model.pb");
    let mut g = faceall::frontend::tf::load(&model, &Default::default()).unwrap();
    faceall::passes::run(&mut g, &Default::default()).unwrap();
    let mut staging = Staging::new(dir).unwrap();
    let opts = WriteOptions {
        name: "net".into(),
        ..Default::default()
    };
    format.write(&g, &opts, &mut staging).unwrap();
    staging.commit().unwrap();
    let main = dir.join(format!("net{}", format.extensions()[0]));
    formats::companions(format, &main)
}

/// The files under `dir/sub`, recursively, relative to `dir`.
fn files_under(dir: &Path, sub: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut entries: Vec<_> = std::fs::read_dir(dir.join(sub))
        .unwrap()
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let rel = sub.join(e.file_name());
        if e.path().is_dir() {
            out.extend(files_under(dir, &rel));
        } else {
            out.push(rel);
        }
    }
    out
}

#[derive(Default, Debug)]
struct Reached {
    opened: usize,
    ran: usize,
}

fn exercise(format: &dyn Format, files: &[PathBuf], r: &mut Reached) {
    let Ok(exec) = format.open(files) else {
        return;
    };
    r.opened += 1;
    let mut feeds = HashMap::new();
    for (name, shape) in exec.inputs() {
        let n = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .unwrap_or(usize::MAX);
        if n > 100_000 {
            return;
        }
        feeds.insert(name, Tensor::f32(shape, vec![0.5; n]).unwrap());
    }
    // Values too large to be worth computing (a mutated shape can ask for
    // GBs) are refused by the readers that see shapes up front.
    if let Some(Ok(g)) = format.read_graph(files) {
        let big = g.nodes.iter().any(|n| {
            n.outputs.iter().any(|f| {
                f.shape
                    .iter()
                    .try_fold(1usize, |a, &d| a.checked_mul(d))
                    .is_none_or(|v| v > 1_000_000)
            })
        });
        if big {
            return;
        }
    }
    let want: HashMap<String, Vec<usize>> = HashMap::new();
    let _ = exec.run(&feeds, &want);
    r.ran += 1;
}

#[test]
fn mutated_converted_models_never_panic() {
    use proptest::test_runner::{Config, TestRunner};
    for format in formats::FORMATS {
        let seed_dir = tempfile::tempdir().unwrap();
        let seed = written(*format, seed_dir.path());
        // Every file written (a package is a directory of them), by its path
        // relative to the output directory.
        let rel = files_under(seed_dir.path(), Path::new(""));
        let originals: Vec<Vec<u8>> = rel
            .iter()
            .map(|p| std::fs::read(seed_dir.path().join(p)).unwrap())
            .collect();
        let work = tempfile::tempdir().unwrap();
        let files: Vec<PathBuf> = rel.iter().map(|p| work.path().join(p)).collect();
        for f in &files {
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        }
        let open: Vec<PathBuf> = seed
            .iter()
            .map(|p| work.path().join(p.strip_prefix(seed_dir.path()).unwrap()))
            .collect();
        let mut runner = TestRunner::new(Config {
            cases: 4000,
            failure_persistence: None,
            ..Config::default()
        });
        let reached = std::cell::RefCell::new(Reached::default());
        runner
            .run(
                &(0usize..files.len(), prop::collection::vec(mutation(), 1..4)),
                |(which, ms)| {
                    for (i, (f, o)) in files.iter().zip(&originals).enumerate() {
                        let bytes = if i == which {
                            apply(o.clone(), &ms)
                        } else {
                            o.clone()
                        };
                        std::fs::write(f, bytes).unwrap();
                    }
                    exercise(*format, &open, &mut reached.borrow_mut());
                    Ok(())
                },
            )
            .unwrap();
        let r = reached.into_inner();
        eprintln!("{}: {r:?}", format.name());
        // Some mutations must get past the decoder, to test what follows it.
        assert!(r.opened > 100 && r.ran > 50, "{}: {r:?}", format.name());
    }
}
