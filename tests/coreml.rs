//! convert-tf to Core ML through the binary: every fixture and the real
//! FaceNet convert; the written .mlmodel, run by faceall's Core ML executor
//! and (independently) by onnxruntime after onnxmltools, matches TensorFlow;
//! coremltools loads it with the intended inputs, outputs and layers.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use faceall::formats::coreml::exec::CoremlModel;
use faceall::formats::coreml::write::{CoremlBlob, CoremlLayout};
use faceall::ir::Tensor;
use faceall::parity::{compare, reference::ReferenceCase, Tolerance};
use serde::Deserialize;

#[derive(Deserialize)]
struct Report {
    coreml_blobs: Vec<CoremlBlob>,
    coreml_layers: usize,
}

struct Converted {
    _dir: tempfile::TempDir,
    mlmodel: PathBuf,
    report_path: PathBuf,
    report: Report,
}

fn convert(model: &Path, extra: &[&str]) -> Converted {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec![
        "convert-tf",
        model.to_str().unwrap(),
        "--to",
        "coreml",
        "--out-dir",
        dir.path().to_str().unwrap(),
        "--name",
        "net",
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = faceall(&args);
    assert!(
        out.status.success(),
        "convert {}: {}",
        model.display(),
        stderr(&out)
    );
    let report_path = dir.path().join("report.json");
    std::fs::write(&report_path, &out.stdout).unwrap();
    let report: Report = serde_json::from_slice(&out.stdout).unwrap();
    Converted {
        mlmodel: dir.path().join("net.mlmodel"),
        report_path,
        report,
        _dir: dir,
    }
}

/// Sample `n` of a TF tensor in the blob's per-sample (C, H, W) layout.
fn sample_to_coreml(t: &Tensor, n: usize, b: &CoremlBlob) -> Tensor {
    let per = t.len() / t.shape()[0];
    let v = t.as_f32().unwrap()[n * per..(n + 1) * per].to_vec();
    let [c, h, w] = b.chw;
    let v = match b.layout {
        CoremlLayout::Chw => faceall::runtime::kernels::nhwc_to_nchw(&v, [1, h, w, c]),
        CoremlLayout::Same => v,
        CoremlLayout::FlatChw { h, w, c } => {
            faceall::runtime::kernels::nhwc_to_nchw(&v, [1, h, w, c])
        }
    };
    Tensor::f32(vec![c, h, w], v).unwrap()
}

/// Runs every sample through faceall's Core ML executor; returns the worst
/// output error.
fn check_ours(case: &ReferenceCase, c: &Converted, tol: Tolerance) -> f32 {
    let model = CoremlModel::load(&c.mlmodel).unwrap_or_else(|e| panic!("{e}"));
    let by_tensor: HashMap<&str, &CoremlBlob> = c
        .report
        .coreml_blobs
        .iter()
        .map(|b| (b.tensor.as_str(), b))
        .collect();
    let batch = case.inputs.values().next().unwrap().shape()[0];
    let mut worst = 0.0f32;
    for n in 0..batch {
        let mut feeds = HashMap::new();
        for (name, t) in &case.inputs {
            let b = by_tensor[name.as_str()];
            let s = sample_to_coreml(t, n, b);
            let declared = &model.inputs.iter().find(|(i, _)| i == &b.blob).unwrap().1;
            feeds.insert(b.blob.clone(), s.reshaped(declared.clone()).unwrap());
        }
        let blobs = model
            .predict(&feeds)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        for (name, want) in &case.tensors {
            let Some(b) = by_tensor.get(name.as_str()) else {
                continue;
            };
            let want = sample_to_coreml(want, n, b);
            let got = blobs[&b.blob].reshaped(want.shape().to_vec()).unwrap();
            let cmp = compare(&got, &want, tol).unwrap();
            assert!(cmp.passed(), "{} sample {n}: {name}: {cmp}", case.name);
            if case.outputs.contains(name) {
                worst = worst.max(cmp.max_abs);
            }
        }
    }
    for o in &case.outputs {
        assert!(
            by_tensor.contains_key(o.as_str()),
            "{}: output {o} has no blob",
            case.name
        );
    }
    worst
}

fn check_tools(case_dir: &Path, c: &Converted) -> serde_json::Value {
    let out = Command::new(python())
        .arg(root().join("scripts/check_coreml.py"))
        .args([&c.mlmodel, &c.report_path, &case_dir.to_path_buf()])
        .arg("--onnx")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "coremltools/onnx on {}:\n{text}\n{}",
        case_dir.display(),
        stderr(&out)
    );
    let summary: serde_json::Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v.get("coremltools").cloned())
        .expect("coremltools summary");
    assert!(text.contains("\"output\": true"), "{text}");
    assert_eq!(summary["mlmodel_loaded"], true, "{summary}");
    // The lowest version with every layer: 1; 3 with a resizeBilinear; 4
    // with a gelu or an upsample's linearUpsampleMode.
    let layers = &summary["layers"];
    let modes = summary["linear_upsample_modes"]
        .as_array()
        .map_or(0, |m| m.len());
    let want = if layers.get("gelu").is_some() || modes > 0 {
        4
    } else if layers.get("resizeBilinear").is_some() {
        3
    } else {
        1
    };
    assert_eq!(summary["specification_version"], want, "{summary}");
    assert_eq!(
        summary["layer_count"].as_u64().unwrap() as usize,
        c.report.coreml_layers
    );
    summary
}

#[test]
fn fixtures_match_tensorflow_in_ours_coremltools_and_onnxruntime() {
    for name in FIXTURES {
        if NO_COREML_FORM.iter().any(|(n, _)| n == name) {
            continue;
        }
        let dir = case_dir(name);
        let case = ReferenceCase::load(&dir).unwrap();
        let c = convert(&case.model, &[]);
        let worst = check_ours(&case, &c, Tolerance::CLOSE);
        assert!(worst <= 1e-5, "{name}: {worst}");
        let s = check_tools(&dir, &c);
        for i in s["inputs"].as_array().unwrap() {
            assert!(
                case.inputs.contains_key(i["name"].as_str().unwrap()),
                "{name}: {s}"
            );
        }
        let outs: Vec<&str> = s["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["name"].as_str().unwrap())
            .collect();
        assert_eq!(outs.len(), case.outputs.len(), "{name}: {s}");
    }
}

#[test]
fn real_facenet_core_ml() {
    let dir = case_dir("facenet");
    let case = ReferenceCase::load(&dir).unwrap();
    let c = convert(
        &case.model,
        &[
            "--author",
            "faceall tests",
            "--license",
            "MIT",
            "--model-version",
            "20180408",
        ],
    );
    let worst = check_ours(&case, &c, Tolerance::CLOSE);
    eprintln!("facenet core ml (ours) worst embedding error {worst:e}");
    assert!(worst <= 1e-5);
    let s = check_tools(&dir, &c);
    assert_eq!(s["inputs"][0]["name"], "input");
    assert_eq!(s["inputs"][0]["shape"], serde_json::json!([3, 160, 160]));
    assert_eq!(s["outputs"][0]["name"], "embeddings");
    assert_eq!(s["outputs"][0]["shape"], serde_json::json!([512]));
    assert_eq!(s["layers"]["convolution"], 132);
    assert_eq!(s["layers"]["l2normalize"], 1);
    assert_eq!(s["layers"]["innerProduct"], 1);
    assert_eq!(s["layers"]["pooling"], 4);
    assert_eq!(s["layers"]["concat"], 23);
    assert_eq!(s["layers"]["add"], 21);
    assert!(
        s["layers"].get("batchnorm").is_none(),
        "every batch norm folds"
    );
    let md = &s["metadata"];
    assert_eq!(md["author"], "faceall tests");
    assert_eq!(md["license"], "MIT");
    assert_eq!(md["version"], "20180408");
    assert_eq!(md["user_defined"]["faceall.source"], "graph_final.pb");
    assert_eq!(
        md["user_defined"]["faceall.source_sha256"],
        "704afe26766ce6215931b0bde68650835be9518613d40ce101e641708c7d5c78"
    );
}

#[test]
fn fp16_weights_reach_stated_parity() {
    let dir = case_dir("facenet");
    let case = ReferenceCase::load(&dir).unwrap();
    let c = convert(&case.model, &["--fp16"]);
    let size = std::fs::metadata(&c.mlmodel).unwrap().len();
    assert!(
        size < 50_000_000,
        "half-precision weights halve the file: {size}"
    );
    let worst = check_ours(&case, &c, Tolerance::APPROXIMATE);
    eprintln!("facenet core ml fp16 worst embedding error {worst:e}");
    assert!(worst <= 1e-3, "{worst}");
}

#[test]
fn caffe_and_coreml_in_one_run_are_deterministic() {
    let model = case_dir("inception_resnet_v1_switch").join("model.pb");
    let run = || {
        let c = convert(&model, &[]);
        std::fs::read(&c.mlmodel).unwrap()
    };
    assert_eq!(run(), run());
    let d = tempfile::tempdir().unwrap();
    let out = faceall(&[
        "convert-tf",
        model.to_str().unwrap(),
        "--to",
        "caffe,coreml",
        "--out-dir",
        d.path().to_str().unwrap(),
        "--name",
        "both",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        files_in(d.path()),
        vec!["both.caffemodel", "both.mlmodel", "both.prototxt"]
    );
}

#[test]
fn unsupported_for_core_ml_lists_all_and_the_other_target_is_written() {
    use faceall::frontend::tf::build::{self, NodeBuilder};
    let d = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    // A dilated transposed convolution (Core ML's deconvolution ignores
    // dilationFactor) and a Max of two values have no Core ML form here;
    // both are reported at once, no Core ML file is written, and Caffe
    // (which expresses both) still is.
    let g = build::graph(vec![
        build::placeholder("x", &[1, 4, 4, 2]),
        build::constant("sizes", build::i32_tensor(&[4], &[1, 6, 6, 2])),
        build::constant(
            "w",
            build::f32_tensor(
                &[2, 2, 2, 2],
                &(0..16).map(|i| i as f32 / 16.0).collect::<Vec<_>>(),
            ),
        ),
        NodeBuilder::new("up", "Conv2DBackpropInput", &["sizes", "w", "x"])
            .attr_ints("strides", &[1, 1, 1, 1])
            .attr_ints("dilations", &[1, 2, 2, 1])
            .attr_s("padding", "VALID")
            .build(),
        NodeBuilder::new("r", "Relu", &["x"]).build(),
        NodeBuilder::new("mx", "Maximum", &["x", "r"]).build(),
    ]);
    let p = d.path().join("g.pb");
    std::fs::write(&p, build::to_bytes(&g)).unwrap();
    let res = faceall(&[
        "convert-tf",
        p.to_str().unwrap(),
        "--to",
        "caffe,coreml",
        "--out-dir",
        out.path().to_str().unwrap(),
    ]);
    let err = stderr(&res);
    assert_eq!(res.status.code(), Some(1), "{err}");
    assert!(
        err.contains("2 unsupported")
            && err.contains("'up' (Conv2DBackpropInput)")
            && err.contains("'mx' (Maximum)"),
        "{err}"
    );
    assert!(err.contains("no Core ML form"), "{err}");
    assert_eq!(
        files_in(out.path()),
        vec!["g.caffemodel".to_string(), "g.prototxt".to_string()],
        "only the target that can express the graph"
    );
}

#[test]
fn reader_rejects_what_is_not_a_model() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("x.mlmodel");
    std::fs::write(&p, b"\xff\xff\xff garbage").unwrap();
    let e = match CoremlModel::load(&p) {
        Ok(_) => panic!("garbage loaded"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("x.mlmodel") && e.contains("not a Core ML model"),
        "{e}"
    );
    let _ = &d;
}

/// An op Core ML's NeuralNetwork cannot hold is refused for Core ML alone,
/// naming the node and the op; the other targets of the run are written.
#[test]
fn an_op_without_a_coreml_form_is_refused_for_coreml_only() {
    for (name, op) in NO_COREML_FORM {
        assert_refused_for_one_format(name, &format!("({op})"), "coreml", "model.mlmodel");
    }
}
