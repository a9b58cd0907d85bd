//! verify-parity through the binary: the real FaceNet passes for Caffe and
//! Core ML against the built-in reference and against real TensorFlow; each
//! classic conversion mistake, injected one at a time, fails and is named
//! as the first layer outside tolerance; the HTML report renders in
//! Chromium; mismatched or bad input exits 2.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn convert(model: &Path, dir: &Path, extra: &[&str]) {
    let mut args = vec![
        "convert-tf",
        model.to_str().unwrap(),
        "--to",
        "caffe,coreml",
        "--out-dir",
        dir.to_str().unwrap(),
        "--name",
        "net",
    ];
    args.extend_from_slice(extra);
    let out = faceall(&args);
    assert!(out.status.success(), "{}", stderr(&out));
}

struct Run {
    code: Option<i32>,
    report: serde_json::Value,
    stdout: String,
    stderr: String,
}

fn verify(model: &Path, dir: &Path, extra: &[&str]) -> Run {
    let json = dir.join("report.json");
    let mut args: Vec<String> = vec![
        "verify-parity".into(),
        "--tf".into(),
        model.display().to_string(),
    ];
    for (flag, file) in [
        ("--caffe", "net.prototxt"),
        ("--caffemodel", "net.caffemodel"),
        ("--coreml", "net.mlmodel"),
        ("--onnx", "net.onnx"),
        ("--bundle", "net.graph.json"),
    ] {
        if dir.join(file).exists() {
            args.push(flag.into());
            args.push(dir.join(file).display().to_string());
        }
    }
    args.push("--json".into());
    args.push(json.display().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let out = faceall(&refs);
    let report = std::fs::read(&json)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null);
    Run {
        code: out.status.code(),
        report,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: stderr(&out),
    }
}

#[test]
fn real_facenet_passes_against_builtin_and_tensorflow() {
    let case = case_dir("facenet");
    let model = case.join("../models/graph_final.pb");
    let d = tempfile::tempdir().unwrap();
    convert(&model, d.path(), &[]);
    // The other two formats beside them: one run checks all four.
    let out = faceall(&[
        "convert-tf",
        model.to_str().unwrap(),
        "--to",
        "onnx,safetensors",
        "--out-dir",
        d.path().to_str().unwrap(),
        "--name",
        "net",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    for reference in [
        vec!["--reference", "builtin", "--random", "2"],
        vec![
            "--reference",
            "tensorflow",
            "--python",
            python().to_str().unwrap(),
        ],
    ] {
        let r = verify(&model, d.path(), &reference);
        assert_eq!(r.code, Some(0), "{reference:?}: {}\n{}", r.stdout, r.stderr);
        let targets: Vec<&str> = r.report["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["target"].as_str().unwrap())
            .collect();
        assert_eq!(targets, ["caffe", "coreml", "onnx", "safetensors"]);
        for t in r.report["targets"].as_array().unwrap() {
            assert_eq!(t["passed"], true, "{t}");
            let layers = t["layers"].as_array().unwrap();
            assert!(
                layers.len() > 250,
                "{}: {} layers compared",
                t["target"],
                layers.len()
            );
            let emb = layers
                .iter()
                .find(|l| l["tensor"] == "embeddings")
                .expect("embeddings compared");
            assert!(
                emb["comparison"]["max_abs"].as_f64().unwrap() <= 1e-5,
                "{emb}"
            );
        }
    }
}

/// (fault, fixture, extra convert flags, the TF tensor that must be named first)
const FAULTS: &[(&str, &str, &[&str], &str)] = &[
    (
        "bn-epsilon",
        "inception_resnet_v1_fused",
        &["--no-fold-bn"],
        "InceptionResnetV1/Conv2d_1a_3x3/BatchNorm/FusedBatchNormV3",
    ),
    ("same-pad-top-left", "same_conv_stride2", &[], "BiasAdd"),
    ("pool-ceil", "pool_floor", &[], "MaxPool"),
    ("flatten-nchw", "misc_ops", &[], "MatMul_tb"),
    (
        "weights-ihwo",
        "inception_resnet_v1_fused",
        &[],
        "InceptionResnetV1/Conv2d_1a_3x3/BatchNorm/FusedBatchNormV3",
    ),
    (
        "drop-residual-scale",
        "inception_resnet_v1_switch",
        &[],
        "InceptionResnetV1/Repeat/block35_1/add",
    ),
    (
        "drop-l2-norm",
        "inception_resnet_v1_switch",
        &[],
        "embeddings",
    ),
    // Every layer maps back to TF's layout and agrees; only the output as
    // the user reads it is in the wrong element order.
    (
        "flatten-output-chw",
        "flatten_output",
        &[],
        "flat (raw output)",
    ),
];

fn check_fault(fault: &str) {
    let (_, fixture, extra, first) = FAULTS.iter().find(|f| f.0 == fault).unwrap();
    let model = case_dir(fixture).join("model.pb");
    let d = tempfile::tempdir().unwrap();
    let mut args = vec![
        "convert-tf",
        model.to_str().unwrap(),
        "--to",
        "caffe",
        "--out-dir",
        d.path().to_str().unwrap(),
        "--name",
        "net",
        "--inject-fault",
        fault,
    ];
    args.extend_from_slice(extra);
    let out = faceall(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let r = verify(&model, d.path(), &[]);
    assert_eq!(
        r.code,
        Some(1),
        "{fault}: verify-parity must fail\n{}\n{}",
        r.stdout,
        r.stderr
    );
    let t = &r.report["targets"][0];
    assert_eq!(
        t["first_failure"], *first,
        "{fault}: wrong first layer\n{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains(&format!("FIRST LAYER OUTSIDE TOLERANCE: {first}")),
        "{}",
        r.stdout
    );
    // And without the fault the same conversion passes.
    let clean = tempfile::tempdir().unwrap();
    let mut args = vec![
        "convert-tf",
        model.to_str().unwrap(),
        "--to",
        "caffe",
        "--out-dir",
        clean.path().to_str().unwrap(),
        "--name",
        "net",
    ];
    args.extend_from_slice(extra);
    assert!(faceall(&args).status.success());
    let ok = verify(&model, clean.path(), &[]);
    assert_eq!(ok.code, Some(0), "{fault} control: {}", ok.stdout);
}

#[test]
fn fault_bn_epsilon() {
    check_fault("bn-epsilon");
}
#[test]
fn fault_same_padding_top_left() {
    check_fault("same-pad-top-left");
}
#[test]
fn fault_pooling_rounded_up() {
    check_fault("pool-ceil");
}
#[test]
fn fault_flatten_nchw() {
    check_fault("flatten-nchw");
}
#[test]
fn fault_weights_ihwo() {
    check_fault("weights-ihwo");
}
#[test]
fn fault_residual_scale_dropped() {
    check_fault("drop-residual-scale");
}
#[test]
fn fault_l2_normalisation_missing() {
    check_fault("drop-l2-norm");
}
#[test]
fn fault_flattened_output_left_channel_first() {
    check_fault("flatten-output-chw");
}

fn chromium() -> PathBuf {
    let p = PathBuf::from("/usr/bin/chromium");
    assert!(p.exists(), "Debian chromium is needed for the HTML test: scripts/setup installs it (apt-get install chromium)");
    p
}

#[test]
fn html_report_renders_in_chromium() {
    let model = case_dir("inception_resnet_v1_switch").join("model.pb");
    let d = tempfile::tempdir().unwrap();
    convert(&model, d.path(), &["--inject-fault", "drop-residual-scale"]);
    let html = d.path().join("report.html");
    let r = verify(&model, d.path(), &["--html", html.to_str().unwrap()]);
    assert_eq!(r.code, Some(1));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.contains("<svg") && page.contains("First layer outside tolerance"),
        "plot and verdict in the page"
    );
    let shot = root().join("target/verify-parity-report.png");
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1000,900")
        .arg(format!("file://{}", html.display()))
        .output()
        .unwrap();
    assert!(shot.exists(), "no screenshot: {}", stderr(&out));
    // Not compared pixel by pixel; checked to be non-blank: many distinct colours, red failure dots among them.
    let img = image::open(&shot).unwrap().to_rgb8();
    let mut colours = std::collections::HashSet::new();
    let mut red = 0;
    for p in img.pixels() {
        colours.insert(p.0);
        if p.0[0] > 180 && p.0[1] < 90 && p.0[2] < 90 {
            red += 1;
        }
    }
    assert!(
        colours.len() > 20,
        "screenshot looks blank ({} colours)",
        colours.len()
    );
    assert!(red > 20, "no red failure markers in the plot");
}

mod bad_input {
    use super::*;

    #[test]
    fn caffemodel_from_another_net() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        convert(
            &case_dir("inception_resnet_v1_fused").join("model.pb"),
            a.path(),
            &[],
        );
        convert(
            &case_dir("same_conv_stride2").join("model.pb"),
            b.path(),
            &[],
        );
        std::fs::copy(
            b.path().join("net.caffemodel"),
            a.path().join("net.caffemodel"),
        )
        .unwrap();
        std::fs::remove_file(a.path().join("net.mlmodel")).unwrap();
        let r = verify(
            &case_dir("inception_resnet_v1_fused").join("model.pb"),
            a.path(),
            &[],
        );
        assert_eq!(r.code, Some(2), "{}\n{}", r.stdout, r.stderr);
        assert!(
            r.stderr.contains("weights blob") || r.stderr.contains("do not belong"),
            "{}",
            r.stderr
        );
    }

    #[test]
    fn mlmodel_with_other_input_shape() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        convert(
            &case_dir("same_conv_stride2").join("model.pb"),
            a.path(),
            &[],
        );
        convert(&case_dir("decomposed_bn").join("model.pb"), b.path(), &[]);
        std::fs::copy(b.path().join("net.mlmodel"), a.path().join("net.mlmodel")).unwrap();
        std::fs::remove_file(a.path().join("net.prototxt")).unwrap();
        std::fs::remove_file(a.path().join("net.caffemodel")).unwrap();
        let r = verify(
            &case_dir("same_conv_stride2").join("model.pb"),
            a.path(),
            &[],
        );
        assert_eq!(r.code, Some(2), "{}\n{}", r.stdout, r.stderr);
        assert!(
            r.stderr.contains("do not belong together") && r.stderr.contains("net.mlmodel"),
            "{}",
            r.stderr
        );
    }

    #[test]
    fn unreadable_image() {
        let d = tempfile::tempdir().unwrap();
        convert(
            &case_dir("inception_resnet_v1_switch").join("model.pb"),
            d.path(),
            &[],
        );
        let imgs = tempfile::tempdir().unwrap();
        std::fs::write(
            imgs.path().join("broken.jpg"),
            b"\xff\xd8\xff not really a jpeg",
        )
        .unwrap();
        let r = verify(
            &case_dir("inception_resnet_v1_switch").join("model.pb"),
            d.path(),
            &["--images", imgs.path().to_str().unwrap()],
        );
        assert_eq!(r.code, Some(2));
        assert!(
            r.stderr.contains("broken.jpg") && r.stderr.contains("unreadable image"),
            "{}",
            r.stderr
        );
    }

    #[test]
    fn tensorflow_reference_without_tensorflow() {
        let d = tempfile::tempdir().unwrap();
        convert(
            &case_dir("same_conv_stride2").join("model.pb"),
            d.path(),
            &[],
        );
        // The system Python has no TensorFlow (the project's venv has).
        let r = verify(
            &case_dir("same_conv_stride2").join("model.pb"),
            d.path(),
            &["--reference", "tensorflow", "--python", "/usr/bin/python3"],
        );
        assert_eq!(r.code, Some(2), "{}", r.stderr);
        assert!(
            r.stderr.contains("pip install tensorflow-cpu"),
            "{}",
            r.stderr
        );
    }

    #[test]
    fn nothing_to_verify() {
        let out = faceall(&[
            "verify-parity",
            "--tf",
            case_dir("same_conv_stride2")
                .join("model.pb")
                .to_str()
                .unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr(&out).contains("nothing to verify"));
    }
}

#[test]
fn real_face_crops_found_by_mtcnn() {
    let model = case_dir("inception_resnet_v1_switch").join("model.pb");
    let d = tempfile::tempdir().unwrap();
    convert(&model, d.path(), &[]);
    let mtcnn = shared().join("models/mtcnn");
    let r = verify(
        &model,
        d.path(),
        &[
            "--images",
            shared().join("images/faces/query").to_str().unwrap(),
            "--mtcnn",
            mtcnn.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.report["samples"], 6);
    // A photo without a face is an input error.
    let imgs = tempfile::tempdir().unwrap();
    image::RgbImage::from_pixel(120, 100, image::Rgb([90, 90, 90]))
        .save(imgs.path().join("wall.png"))
        .unwrap();
    let r = verify(
        &model,
        d.path(),
        &[
            "--images",
            imgs.path().to_str().unwrap(),
            "--mtcnn",
            mtcnn.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(
        r.stderr.contains("wall.png") && r.stderr.contains("no face found"),
        "{}",
        r.stderr
    );
}

#[test]
fn real_face_crops() {
    let model = case_dir("inception_resnet_v1_switch").join("model.pb");
    let d = tempfile::tempdir().unwrap();
    convert(&model, d.path(), &[]);
    let r = verify(
        &model,
        d.path(),
        &[
            "--images",
            shared().join("images/faces/query").to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.report["samples"], 6);
}
