//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn faceall(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_faceall"))
        .args(args)
        .output()
        .expect("run faceall")
}

/// The project's Python with the reference runtimes (scripts/setup).
pub fn python() -> PathBuf {
    let p = root().join(".cache/venv/bin/python");
    assert!(p.exists(), "{} missing: run scripts/setup", p.display());
    p
}

pub fn shared() -> PathBuf {
    let p = root().join("../shared");
    assert!(
        p.join("models/mtcnn").exists(),
        "{} missing: the tests read ../shared (models, images)",
        p.display()
    );
    p
}

pub const FIXTURES: &[&str] = &[
    "inception_resnet_v1_switch",
    "inception_resnet_v1_fused",
    "decomposed_bn",
    "same_conv_stride2",
    "depthwise_relu6",
    "matmul_bn",
    "pool_floor",
    "misc_ops",
];

/// A fixture directory, or the real FaceNet reference for "facenet".
pub fn case_dir(name: &str) -> PathBuf {
    if name == "facenet" {
        let d = root().join(".cache/facenet_ref");
        assert!(
            d.join("manifest.json").exists(),
            "{} missing: run scripts/setup",
            d.display()
        );
        d
    } else {
        root().join("fixtures").join(name)
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The real FaceNet converted to a safetensors bundle `facenet` in `dir`.
pub fn convert_facenet_bundle(dir: &Path) {
    let model = root().join(".cache/models/graph_final.pb");
    assert!(
        model.exists(),
        "{} missing: run scripts/setup",
        model.display()
    );
    std::fs::create_dir_all(dir).unwrap();
    let o = faceall(&[
        "convert-tf",
        model.to_str().unwrap(),
        "--to",
        "safetensors",
        "--out-dir",
        dir.to_str().unwrap(),
        "--name",
        "facenet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
