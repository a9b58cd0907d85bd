//! `faceall bench` reports ms per image and images per second for each kind
//! of model it accepts (no timing asserted, only that it measures).

mod common;

use common::*;

#[test]
fn bench_reports_for_bundle_caffe_and_tf() {
    let model = case_dir("inception_resnet_v1_switch").join("model.pb");
    let d = tempfile::tempdir().unwrap();
    let out = faceall(&[
        "convert-tf",
        model.to_str().unwrap(),
        "--to",
        "caffe,safetensors",
        "--out-dir",
        d.path().to_str().unwrap(),
        "--name",
        "net",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    for m in [
        d.path().join("net.graph.json"),
        d.path().join("net.prototxt"),
        model.clone(),
    ] {
        let out = faceall(&[
            "bench",
            m.to_str().unwrap(),
            "--batch",
            "2",
            "--iters",
            "2",
            "--json",
        ]);
        assert!(out.status.success(), "{}: {}", m.display(), stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let ms = v["ms_per_image"].as_f64().unwrap();
        let ips = v["images_per_second"].as_f64().unwrap();
        assert!(ms > 0.0 && (ips * ms / 1000.0 - 1.0).abs() < 1e-6, "{v}");
        assert_eq!(v["batch"], 2);
    }
    let bad = faceall(&["bench", model.to_str().unwrap(), "--iters", "0"]);
    assert_eq!(bad.status.code(), Some(1));
}
