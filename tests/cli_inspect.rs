//! `faceall inspect` driven through the real binary, on the real model, the
//! fixtures, and on bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use faceall::frontend::tf::build::{self, NodeBuilder};
use faceall::proto::graph::DataType;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn faceall(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_faceall"))
        .args(args)
        .output()
        .expect("run faceall")
}

/// A failure: exit code 1 (not a panic's 101), one line on stderr naming the file.
fn assert_clean_failure(out: &Output, file: &Path, must_contain: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(
        err.contains(&file.display().to_string()),
        "does not name the file: {err}"
    );
    for m in must_contain {
        assert!(err.contains(m), "'{m}' missing from: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn inspect_real_facenet_json() {
    let model = root().join(".cache/models/graph_final.pb");
    assert!(
        model.exists(),
        "{} missing: run scripts/setup",
        model.display()
    );
    let out = faceall(&["inspect", model.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["nodes"], 793);
    assert_eq!(v["ops"]["Conv2D"], 132);
    assert_eq!(v["ops"]["Const"], 318);
    assert_eq!(v["ops"]["FusedBatchNorm"], 1);
    assert_eq!(v["inputs"][0]["name"], "input");
    assert_eq!(v["inputs"][0]["shape"], serde_json::json!([1, 160, 160, 3]));
    assert_eq!(v["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(v["outputs"][0]["name"], "embeddings");
    assert_eq!(v["outputs"][0]["shape"], serde_json::json!([1, 512]));
    let params = v["parameters"].as_u64().unwrap() as f64;
    assert!((params / 1e6 - 23.5).abs() < 0.1, "parameters {params}");
    let flops = v["flops"].as_u64().unwrap() as f64;
    assert!((flops / 1e9 - 2.84).abs() < 0.01, "flops {flops}");
    assert!(v["unsupported"].as_array().unwrap().is_empty());
}

#[test]
fn inspect_fixture_text() {
    let model = root().join("fixtures/inception_resnet_v1_switch/model.pb");
    let out = faceall(&["inspect", model.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("input:      input float32 [1, 160, 160, 3]"),
        "{text}"
    );
    assert!(
        text.contains("output:     embeddings float32 [1, 32]"),
        "{text}"
    );
    assert!(text.contains("Switch"), "{text}");
    assert!(text.contains("FusedBatchNorm "), "{text}");
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn empty_file() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "empty.pb", b"");
    assert_clean_failure(
        &faceall(&["inspect", p.to_str().unwrap()]),
        &p,
        &["empty file"],
    );
}

#[test]
fn missing_file() {
    let p = root().join("no/such/model.pb");
    assert_clean_failure(
        &faceall(&["inspect", p.to_str().unwrap()]),
        &p,
        &["No such file"],
    );
}

#[test]
fn random_bytes() {
    let d = tempfile::tempdir().unwrap();
    // xorshift: deterministic "random" bytes
    let mut s = 0x2545F4914F6CDD1Du64;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect();
    let p = write(d.path(), "random.pb", &bytes);
    assert_clean_failure(
        &faceall(&["inspect", p.to_str().unwrap()]),
        &p,
        &["not a TensorFlow GraphDef"],
    );
}

#[test]
fn truncated_pb() {
    let d = tempfile::tempdir().unwrap();
    let full = std::fs::read(root().join("fixtures/inception_resnet_v1_fused/model.pb")).unwrap();
    let p = write(d.path(), "truncated.pb", &full[..full.len() / 2]);
    assert_clean_failure(
        &faceall(&["inspect", p.to_str().unwrap()]),
        &p,
        &["not a TensorFlow GraphDef"],
    );
}

#[test]
fn saved_model_directory() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("saved_model.pb"), b"x").unwrap();
    std::fs::create_dir(d.path().join("variables")).unwrap();
    let p = d.path().to_path_buf();
    assert_clean_failure(
        &faceall(&["inspect", p.to_str().unwrap()]),
        &p,
        &["SavedModel"],
    );
}

#[test]
fn graph_with_cycle() {
    let d = tempfile::tempdir().unwrap();
    let g = build::graph(vec![
        build::placeholder("x", &[1, 4]),
        NodeBuilder::new("a", "Add", &["x", "b"]).build(),
        NodeBuilder::new("b", "Relu", &["a"]).build(),
    ]);
    let p = write(d.path(), "cycle.pb", &build::to_bytes(&g));
    assert_clean_failure(
        &faceall(&["inspect", p.to_str().unwrap()]),
        &p,
        &["cycle", "a", "b"],
    );
}

#[test]
fn unsupported_ops_all_listed() {
    let d = tempfile::tempdir().unwrap();
    let g = build::graph(vec![
        build::placeholder("x", &[1, 8]),
        NodeBuilder::new("fft", "FFT", &["x"]).build(),
        NodeBuilder::new("r", "Relu", &["x"]).build(),
        NodeBuilder::new("lrn", "LRN", &["r"]).build(),
        NodeBuilder::new("after", "Relu", &["lrn"]).build(),
    ]);
    let p = write(d.path(), "unsupported.pb", &build::to_bytes(&g));
    let out = faceall(&["inspect", p.to_str().unwrap()]);
    let err = assert_clean_failure(&out, &p, &["2 unsupported", "'fft' (FFT)", "'lrn' (LRN)"]);
    assert!(
        !err.contains("'after'"),
        "a node after an unsupported one is not reported again: {err}"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("unsupported (2)"), "{text}");
}

#[test]
fn const_shape_disagrees_with_data() {
    let d = tempfile::tempdir().unwrap();
    // Declares [2, 3] (6 floats) but carries 5.
    let g = build::graph(vec![
        build::placeholder("x", &[2, 3]),
        build::constant("w", build::f32_tensor(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0])),
        NodeBuilder::new("y", "Add", &["x", "w"]).build(),
    ]);
    let p = write(d.path(), "badconst.pb", &build::to_bytes(&g));
    assert_clean_failure(
        &faceall(&["inspect", p.to_str().unwrap()]),
        &p,
        &["'w' (Const)", "[2, 3]", "24 bytes, has 20"],
    );
}

#[test]
fn unknown_input_shape_needs_flag() {
    let d = tempfile::tempdir().unwrap();
    let g = build::graph(vec![
        NodeBuilder::new("x", "Placeholder", &[])
            .attr_type("dtype", DataType::DT_FLOAT)
            .attr_shape("shape", &[-1, 4])
            .build(),
        NodeBuilder::new("y", "Relu", &["x"]).build(),
    ]);
    let p = write(d.path(), "dynamic.pb", &build::to_bytes(&g));
    assert_clean_failure(
        &faceall(&["inspect", p.to_str().unwrap()]),
        &p,
        &["--input-shape x="],
    );
    let out = faceall(&[
        "inspect",
        p.to_str().unwrap(),
        "--input-shape",
        "x=3,4",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["outputs"][0]["shape"], serde_json::json!([3, 4]));
}
