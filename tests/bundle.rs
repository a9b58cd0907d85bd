//! convert-tf to safetensors: the bundle (graph.json + safetensors) of every
//! fixture and of FaceNet, loaded by faceall's executor, matches TensorFlow;
//! Python's `safetensors` opens it and its weights equal the caffemodel's;
//! mismatched, truncated or future files give clear errors.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use faceall::parity::{compare, reference::ReferenceCase, Tolerance};

fn convert(model: &Path, dir: &Path, to: &str) {
    let out = faceall(&[
        "convert-tf",
        model.to_str().unwrap(),
        "--to",
        to,
        "--out-dir",
        dir.to_str().unwrap(),
        "--name",
        "net",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn check(name: &str) {
    let case = ReferenceCase::load(&case_dir(name)).unwrap();
    let d = tempfile::tempdir().unwrap();
    // Weights are compared with the caffemodel's, where Caffe holds the model.
    let with_caffe = !NO_CAFFE_FORM.iter().any(|(n, _)| *n == name);
    let to = if with_caffe {
        "safetensors,caffe"
    } else {
        "safetensors"
    };
    convert(&case.model, d.path(), to);
    let g = faceall::formats::bundle::read::load(&d.path().join("net.graph.json"))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    // Every reference tensor still carried by a node after the passes.
    let names: Vec<String> = case
        .tensors
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| g.wire_by_name(n).is_ok())
        .collect();
    let got =
        faceall::runtime::run(&g, &case.inputs, &names).unwrap_or_else(|e| panic!("{name}: {e}"));
    for (n, t) in names.iter().zip(&got) {
        let want = &case.tensors.iter().find(|(x, _)| x == n).unwrap().1;
        let c = compare(
            &t.reshaped(want.shape().to_vec()).unwrap(),
            want,
            Tolerance::CLOSE,
        )
        .unwrap();
        assert!(c.passed(), "{name}: {n}: {c}");
        if case.outputs.contains(n) {
            assert!(c.max_abs <= 1e-5, "{name}: output {n}: {c}");
        }
    }
    for o in &case.outputs {
        assert!(names.contains(o), "{name}: output {o} not in the bundle");
    }
    if !with_caffe {
        return;
    }
    let out = Command::new(python())
        .arg(root().join("scripts/check_safetensors.py"))
        .args([
            d.path().join("net.graph.json"),
            d.path().join("net.prototxt"),
            d.path().join("net.caffemodel"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
}

#[test]
fn fixtures_bundle_matches_tensorflow_and_caffemodel() {
    for name in FIXTURES {
        check(name);
    }
}

#[test]
fn real_facenet_bundle() {
    check("facenet");
}

#[test]
fn inspect_reads_a_bundle() {
    let d = tempfile::tempdir().unwrap();
    convert(
        &case_dir("inception_resnet_v1_switch").join("model.pb"),
        d.path(),
        "safetensors",
    );
    let out = faceall(&[
        "inspect",
        d.path().join("net.graph.json").to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["outputs"][0]["name"], "embeddings");
    assert_eq!(
        v["ops"]["BatchNorm"],
        serde_json::Value::Null,
        "batch norms are folded"
    );
}

mod bad_input {
    use super::*;

    fn load_err(p: &Path) -> String {
        match faceall::formats::bundle::read::load(p) {
            Ok(_) => panic!("{} loaded", p.display()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn graph_json_from_another_model() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        convert(
            &case_dir("matmul_bn").join("model.pb"),
            a.path(),
            "safetensors",
        );
        convert(
            &case_dir("decomposed_bn").join("model.pb"),
            b.path(),
            "safetensors",
        );
        std::fs::copy(
            b.path().join("net.safetensors"),
            a.path().join("net.safetensors"),
        )
        .unwrap();
        let e = load_err(&a.path().join("net.graph.json"));
        assert!(
            e.contains("net.safetensors") && e.contains("another model"),
            "{e}"
        );
    }

    #[test]
    fn truncated_safetensors() {
        let d = tempfile::tempdir().unwrap();
        convert(
            &case_dir("inception_resnet_v1_fused").join("model.pb"),
            d.path(),
            "safetensors",
        );
        let p = d.path().join("net.safetensors");
        let bytes = std::fs::read(&p).unwrap();
        for cut in [4, 100, bytes.len() / 2, bytes.len() - 1] {
            std::fs::write(&p, &bytes[..cut]).unwrap();
            let e = load_err(&d.path().join("net.graph.json"));
            assert!(
                e.contains("net.safetensors")
                    && (e.contains("not a valid safetensors") || e.contains("truncated")),
                "cut {cut}: {e}"
            );
        }
    }

    #[test]
    fn version_from_the_future() {
        let d = tempfile::tempdir().unwrap();
        convert(
            &case_dir("same_conv_stride2").join("model.pb"),
            d.path(),
            "safetensors",
        );
        let p = d.path().join("net.graph.json");
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("\"format_version\": 1", "\"format_version\": 99");
        std::fs::write(&p, text).unwrap();
        let e = load_err(&p);
        assert!(
            e.contains("net.graph.json")
                && e.contains("version 99")
                && e.contains("upgrade faceall"),
            "{e}"
        );
    }

    #[test]
    fn graph_json_that_is_not_json() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.graph.json");
        std::fs::write(&p, b"{ nope").unwrap();
        let out = faceall(&["inspect", p.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr(&out).contains("x.graph.json")
                && stderr(&out).contains("not a faceall graph.json"),
            "{}",
            stderr(&out)
        );
    }
}
