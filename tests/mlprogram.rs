//! Core ML ML Programs through the binary, checked by coremltools: every
//! fixture and the real FaceNet load (`load_spec`, `MLModel`), coremltools'
//! milproto loader reads the program back into MIL (type-checking every
//! operation), its NeuralNetwork translation runs in onnxruntime via
//! onnxmltools, and the declared outputs match TensorFlow's as the user
//! reads them; `verify-parity --coreml X.mlpackage` passes them layer by
//! layer on faceall's MIL executor; float16 programs stay within 1e-2 on
//! the normalised embedding; a graph with ops MIL cannot express is
//! reported, all at once, while the other targets are still written.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

fn convert(model: &Path, dir: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "convert-tf",
        model.to_str().unwrap(),
        "--to",
        "mlprogram",
        "--out-dir",
        dir.to_str().unwrap(),
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
    serde_json::from_slice(&out.stdout).unwrap()
}

/// scripts/check_mlprogram.py: the summary line and one line per tensor.
fn check_tools(pkg: &Path, case: &Path, extra: &[&str]) -> (Value, Vec<Value>) {
    let mut args = vec![pkg.as_os_str(), case.as_os_str()];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    run_checker("check_mlprogram.py", &args, "coremltools")
}

fn manifest(case: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(case.join("manifest.json")).unwrap()).unwrap()
}

fn verify(model: &Path, pkg: &Path, extra: &[&str]) -> (Option<i32>, Value, String) {
    let d = tempfile::tempdir().unwrap();
    let json = d.path().join("report.json");
    let mut args = vec![
        "verify-parity",
        "--tf",
        model.to_str().unwrap(),
        "--coreml",
        pkg.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = faceall(&args);
    let report = std::fs::read(&json)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    (
        out.status.code(),
        report,
        String::from_utf8_lossy(&out.stdout).into_owned() + &stderr(&out),
    )
}

fn check_case(name: &str, case: &Path, model: &Path) -> (Value, Vec<Value>) {
    let d = tempfile::tempdir().unwrap();
    let report = convert(model, d.path(), &[]);
    assert_eq!(report["mlprogram_target"], "iOS15", "{name}");
    let pkg = d.path().join("net.mlpackage");
    for f in [
        "Manifest.json",
        "Data/com.apple.CoreML/model.mlmodel",
        "Data/com.apple.CoreML/weights/weight.bin",
    ] {
        assert!(pkg.join(f).is_file(), "{name}: {f} missing");
    }
    let (summary, tensors) = check_tools(&pkg, case, &[]);
    assert_eq!(summary["type"], "mlProgram", "{name}");
    assert_eq!(summary["specification_version"], 6, "{name}");
    assert_eq!(summary["opset"], "CoreML5", "{name}");
    let man = manifest(case);
    // Inputs under TF's names, 4-D ones channel-first.
    for i in man["inputs"].as_array().unwrap() {
        let got = summary["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == i["name"])
            .unwrap_or_else(|| panic!("{name}: input {} missing: {summary}", i["name"]));
        let s: Vec<u64> = i["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        // A 4-D input is fed channel-first, unless it is channel-first in
        // TF already (read only through a transpose to NHWC): the
        // metadata says which, and the values below check it.
        let key = format!(
            "faceall.input_layout.{}",
            i["name"].as_str().unwrap_or_default()
        );
        let nchw = summary["metadata"]["user_defined"][key.as_str()] == "NCHW";
        let want = if s.len() == 4 && nchw {
            vec![s[0], s[3], s[1], s[2]]
        } else {
            s
        };
        assert_eq!(got["shape"], serde_json::json!(want), "{name}");
    }
    for t in &tensors {
        assert_eq!(t["ok"], true, "{name}: {t}");
        if t["output"] == true {
            assert!(t["max_abs"].as_f64().unwrap() <= 1e-5, "{name}: {t}");
        }
    }
    let outputs = tensors.iter().filter(|t| t["output"] == true).count();
    assert_eq!(outputs, man["outputs"].as_array().unwrap().len(), "{name}");
    // faceall's own MIL executor, layer by layer.
    let (code, rep, text) = verify(model, &pkg, &[]);
    assert_eq!(code, Some(0), "{name}: verify-parity:\n{text}");
    assert_eq!(rep["passed"], true, "{name}: {rep}");
    (summary, tensors)
}

#[test]
fn fixtures_load_in_coremltools_and_match_tensorflow() {
    for name in FIXTURES {
        if NO_MLPROGRAM_FORM.iter().any(|(n, _)| n == name) {
            continue;
        }
        let case = case_dir(name);
        check_case(name, &case, &case.join("model.pb"));
    }
}

/// An op with no ML Program form is refused for mlprogram alone, naming
/// the node and the op; the other targets of the run are written.
#[test]
fn an_op_without_an_mlprogram_form_is_refused_for_mlprogram_only() {
    for (name, op) in NO_MLPROGRAM_FORM {
        assert_refused_for_one_format(name, &format!("({op})"), "mlprogram", "model.mlpackage");
    }
}

#[test]
fn real_facenet_mlprogram_float32_and_float16() {
    let case = case_dir("facenet");
    let model = root().join(".cache/models/graph_final.pb");
    let (summary, tensors) = check_case("facenet", &case, &model);
    assert_eq!(summary["inputs"][0]["name"], "input");
    assert_eq!(
        summary["inputs"][0]["shape"],
        serde_json::json!([1, 3, 160, 160])
    );
    assert_eq!(summary["outputs"][0]["name"], "embeddings");
    assert_eq!(summary["outputs"][0]["shape"], serde_json::json!([1, 512]));
    // No transpose anywhere: channel-first from the input on.
    assert!(
        summary["operations"].get("transpose").is_none(),
        "{summary}"
    );
    assert!(
        summary["operations"].get("batch_norm").is_none(),
        "{summary}"
    );
    assert!(
        tensors.len() > 5,
        "intermediate layers are compared: {tensors:?}"
    );
    let md = &summary["metadata"]["user_defined"];
    assert_eq!(md["faceall.source"], "graph_final.pb");
    assert_eq!(md["faceall.precision"], "float32");

    let d = tempfile::tempdir().unwrap();
    let report = convert(&model, d.path(), &["--fp16", "--author", "faceall tests"]);
    assert_eq!(report["mlprogram_precision"], "float16");
    let pkg = d.path().join("net.mlpackage");
    let w = std::fs::metadata(pkg.join("Data/com.apple.CoreML/weights/weight.bin"))
        .unwrap()
        .len();
    assert!(w < 48_000_000, "float16 weights: {w} bytes");
    let (s16, t16) = check_tools(&pkg, &case, &["--normalised", "--tolerance", "1e-2"]);
    assert_eq!(s16["metadata"]["author"], "faceall tests");
    assert_eq!(s16["operations"]["cast"], 2, "{s16}");
    let emb = t16.iter().find(|t| t["tensor"] == "embeddings").unwrap();
    assert_eq!(emb["ok"], true, "{emb}");
    eprintln!("facenet fp16 normalised embedding vs TF (onnxruntime): {emb}");
    // faceall's executor on the float16 weights: every layer is compared;
    // float16 rounding of the weights leaves the embedding within 1e-3.
    let (_, rep, text) = verify(&model, &pkg, &["--tolerance", "approximate"]);
    let layers = rep["targets"][0]["layers"].as_array().expect(&text);
    assert!(layers.len() > 300, "layer by layer: {}", layers.len());
    let out = layers.iter().find(|l| l["output"] == true).expect(&text);
    let worst = out["comparison"]["max_abs"].as_f64().unwrap();
    assert!(worst <= 1e-3, "fp16 embedding {worst}");
    eprintln!("facenet fp16 embedding vs the float32 graph (faceall executor): {worst:e}");
}

#[test]
fn deployment_targets_set_the_specification_and_opset() {
    let case = case_dir("matmul_bn");
    for (target, spec, opset) in [("iOS16", 7, "CoreML6"), ("iOS17", 8, "CoreML7")] {
        let d = tempfile::tempdir().unwrap();
        let r = convert(
            &case.join("model.pb"),
            d.path(),
            &["--minimum-deployment-target", target],
        );
        assert_eq!(r["mlprogram_target"], target);
        let (s, t) = check_tools(&d.path().join("net.mlpackage"), &case, &[]);
        assert_eq!(s["specification_version"], spec, "{s}");
        assert_eq!(s["opset"], opset, "{s}");
        assert!(t.iter().all(|x| x["ok"] == true), "{target}: {t:?}");
    }
}

#[test]
fn ops_without_a_mil_form_are_reported_at_once_and_other_targets_written() {
    let case = case_dir("inception_resnet_v1_switch");
    let d = tempfile::tempdir().unwrap();
    let out = faceall(&[
        "convert-tf",
        case.join("model.pb").to_str().unwrap(),
        "--to",
        "safetensors,mlprogram",
        "--no-pass",
        "resolve_switch",
        "--out-dir",
        d.path().to_str().unwrap(),
        "--name",
        "net",
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--to mlprogram"), "{err}");
    // Every Switch/Merge that has no MIL form, in one message.
    let count = err.matches("no MIL form").count();
    assert!(count > 1, "all at once: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        d.path().join("net.safetensors").is_file(),
        "the other target is written"
    );
    assert!(!d.path().join("net.mlpackage").exists());
}

#[test]
fn damaged_packages_are_clear_errors() {
    let case = case_dir("same_conv_stride2");
    let model = case.join("model.pb");
    let d = tempfile::tempdir().unwrap();
    convert(&model, d.path(), &[]);
    let pkg = d.path().join("net.mlpackage");
    let wfile = pkg.join("Data/com.apple.CoreML/weights/weight.bin");
    let bytes = std::fs::read(&wfile).unwrap();
    // A truncated weight file, then a missing manifest.
    std::fs::write(&wfile, &bytes[..bytes.len() / 2]).unwrap();
    let (code, _, text) = verify(&model, &pkg, &[]);
    assert_eq!(code, Some(2), "an error, not a mismatch: {text}");
    assert!(
        text.contains("weight.bin") && text.contains("past the end"),
        "{text}"
    );
    assert!(!text.contains("panicked"), "{text}");
    std::fs::write(&wfile, &bytes).unwrap();
    std::fs::remove_file(pkg.join("Manifest.json")).unwrap();
    let (code, _, text) = verify(&model, &pkg, &[]);
    assert_eq!(code, Some(2), "an error, not a mismatch: {text}");
    assert!(text.contains("Manifest.json"), "{text}");
}
