//! ONNX through the binary, checked by the ONNX project's own tools: every
//! fixture and the real FaceNet pass `onnx.checker` (full check) and match
//! TensorFlow in onnxruntime, layer by layer, with TF's names, shapes and
//! NHWC layout at the boundary; `verify-parity --onnx` passes them and names
//! the layer of a model damaged after conversion; weights can live in
//! external data; nodes faceall cannot read are all reported at once.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

fn convert(model: &Path, dir: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "convert-tf",
        model.to_str().unwrap(),
        "--to",
        "onnx",
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

/// scripts/check_onnx.py: the summary line and one line per tensor.
fn check_tools(onnx: &Path, case: &Path) -> (Value, Vec<Value>) {
    let args = [
        onnx.as_os_str(),
        case.as_os_str(),
        std::ffi::OsStr::new("--layers"),
    ];
    run_checker("check_onnx.py", &args, "onnx")
}

fn manifest(case: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(case.join("manifest.json")).unwrap()).unwrap()
}

/// The model's boundary is TF's: input and output names and NHWC shapes.
fn assert_tf_boundary(name: &str, summary: &Value, man: &Value) {
    let ins: Vec<(String, Value)> = man["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["name"].as_str().unwrap().to_string(), i["shape"].clone()))
        .collect();
    for (n, shape) in &ins {
        let got = summary["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == n.as_str())
            .unwrap_or_else(|| panic!("{name}: input {n} missing: {summary}"));
        assert_eq!(&got["shape"], shape, "{name}: input {n}");
    }
    let mut outs: Vec<&str> = summary["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    let mut want: Vec<&str> = man["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap())
        .collect();
    // The graph's outputs in graph order (the manifest lists them as the
    // fixture's script named them).
    outs.sort_unstable();
    want.sort_unstable();
    assert_eq!(outs, want, "{name}: outputs");
    assert_eq!(summary["opsets"]["ai.onnx"], 13, "{name}");
}

fn check_case(name: &str, case: &Path, model: &Path) -> (Value, Vec<Value>) {
    let d = tempfile::tempdir().unwrap();
    convert(model, d.path(), &[]);
    let (summary, tensors) = check_tools(&d.path().join("net.onnx"), case);
    let man = manifest(case);
    assert_tf_boundary(name, &summary, &man);
    for t in &tensors {
        assert_eq!(t["ok"], true, "{name}: {t}");
        if t["output"] == true {
            assert!(t["max_abs"].as_f64().unwrap() <= 1e-5, "{name}: {t}");
        }
    }
    let outputs = tensors.iter().filter(|t| t["output"] == true).count();
    assert_eq!(outputs, man["outputs"].as_array().unwrap().len(), "{name}");
    // Intermediate layers are compared too, not only the outputs.
    assert!(tensors.len() > outputs, "{name}: only outputs compared");
    (summary, tensors)
}

#[test]
fn fixtures_pass_the_checker_and_match_tensorflow_in_onnxruntime() {
    for name in FIXTURES {
        let case = case_dir(name);
        check_case(name, &case, &case.join("model.pb"));
    }
}

#[test]
fn real_facenet_onnx() {
    let case = case_dir("facenet");
    let model = root().join(".cache/models/graph_final.pb");
    let (summary, tensors) = check_case("facenet", &case, &model);
    assert_eq!(summary["inputs"][0]["name"], "input");
    assert_eq!(
        summary["inputs"][0]["shape"],
        serde_json::json!([1, 160, 160, 3])
    );
    assert_eq!(summary["outputs"][0]["name"], "embeddings");
    assert_eq!(summary["ops"]["Conv"], 132);
    assert!(
        summary["ops"].get("BatchNormalization").is_none(),
        "every batch norm folds: {summary}"
    );
    // Channel-first inside: only the input and the flatten are transposed.
    assert!(
        summary["ops"]["Transpose"].as_u64().unwrap() <= 2,
        "{summary}"
    );
    let worst = tensors
        .iter()
        .find(|t| t["tensor"] == "embeddings")
        .unwrap()["max_abs"]
        .as_f64()
        .unwrap();
    eprintln!("facenet onnx (onnxruntime) worst embedding error {worst:e}");
}

fn verify(model: &Path, onnx: &Path, extra: &[&str]) -> (Option<i32>, Value, String) {
    let d = tempfile::tempdir().unwrap();
    let json = d.path().join("report.json");
    let mut args = vec![
        "verify-parity",
        "--tf",
        model.to_str().unwrap(),
        "--onnx",
        onnx.to_str().unwrap(),
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

/// Damage conv number `k` of `src` after conversion (its first filter
/// scaled by 1.05, with the onnx package); returns the TF tensor it writes.
fn damage(src: &Path, dst: &Path, k: usize) -> String {
    let script = r#"
import sys, onnx
from onnx import numpy_helper
src, dst, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
m = onnx.load(src)
n = [n for n in m.graph.node if n.op_type == "Conv"][k]
w = next(t for t in m.graph.initializer if t.name == n.input[1])
a = numpy_helper.to_array(w).copy()
a[0] *= 1.05
w.CopyFrom(numpy_helper.from_array(a, w.name))
onnx.save(m, dst)
print(n.output[0].removesuffix("__nchw"))
"#;
    let out = Command::new(python())
        .args(["-c", script])
        .arg(src)
        .arg(dst)
        .arg(k.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// verify-parity reads the ONNX file back with faceall's reader: a nearest
/// resize is written as Gathers of TF's source indices (exact for every
/// rule, also TF1's legacy factors 41 and 47) and read back as resizes.
#[test]
fn verify_parity_reads_back_nearest_resizes() {
    for name in ["resize_any", "upsample"] {
        let model = case_dir(name).join("model.pb");
        let d = tempfile::tempdir().unwrap();
        convert(&model, d.path(), &[]);
        let (code, report, text) = verify(&model, &d.path().join("net.onnx"), &[]);
        assert_eq!(code, Some(0), "{name}: {text}");
        let outputs = report["targets"][0]["outputs"].as_array().cloned();
        let outputs = outputs.unwrap_or_default();
        assert_eq!(
            outputs.len(),
            manifest(&case_dir(name))["outputs"]
                .as_array()
                .unwrap()
                .len(),
            "{name}: {report}"
        );
        for o in &outputs {
            assert_eq!(o["passed"], true, "{name}: {o}");
            // The nearest-only outputs pick TF's very pixels.
            if o["tensor"]
                .as_str()
                .unwrap_or_default()
                .starts_with("legacy")
            {
                assert_eq!(
                    o["comparison"]["max_abs"].as_f64(),
                    Some(0.0),
                    "{name}: {o}"
                );
            }
        }
    }
}

#[test]
fn verify_parity_passes_facenet_and_names_a_damaged_layer() {
    let model = root().join(".cache/models/graph_final.pb");
    let d = tempfile::tempdir().unwrap();
    convert(&model, d.path(), &[]);
    let onnx = d.path().join("net.onnx");
    let (code, report, text) = verify(&model, &onnx, &["--random", "2"]);
    assert_eq!(code, Some(0), "{text}");
    let t = &report["targets"][0];
    assert_eq!(t["target"], "onnx");
    let layers = t["layers"].as_array().unwrap();
    assert!(layers.len() > 300, "layer by layer: {}", layers.len());
    let out = layers.iter().find(|l| l["output"] == true).unwrap();
    assert_eq!(out["tensor"], "embeddings");
    assert!(out["comparison"]["max_abs"].as_f64().unwrap() <= 1e-5);

    for k in [0, 10, 100] {
        let bad = d.path().join(format!("bad{k}.onnx"));
        let broken = damage(&onnx, &bad, k);
        let (code, report, text) = verify(&model, &bad, &[]);
        assert_eq!(code, Some(1), "conv {k}: {text}");
        assert_eq!(
            report["targets"][0]["first_failure"], broken,
            "conv {k}: {text}"
        );
    }
}

#[test]
fn verify_parity_onnx_against_real_tensorflow() {
    let case = case_dir("inception_resnet_v1_fused");
    let model = case.join("model.pb");
    let d = tempfile::tempdir().unwrap();
    convert(&model, d.path(), &[]);
    let py = python();
    let (code, report, text) = verify(
        &model,
        &d.path().join("net.onnx"),
        &[
            "--reference",
            "tensorflow",
            "--python",
            py.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(report["reference"], "tensorflow");
}

#[test]
fn external_data_is_written_checked_and_read() {
    let case = case_dir("inception_resnet_v1_switch");
    let model = case.join("model.pb");
    let d = tempfile::tempdir().unwrap();
    let r = convert(&model, d.path(), &["--onnx-external-data"]);
    assert_eq!(r["onnx_external_data"], true, "{r}");
    assert_eq!(files_in(d.path()), vec!["net.onnx", "net.onnx.data"]);
    let (summary, _) = check_tools(&d.path().join("net.onnx"), &case);
    assert_eq!(summary["external_data"], true);
    let (code, _, text) = verify(&model, &d.path().join("net.onnx"), &[]);
    assert_eq!(code, Some(0), "{text}");
    // A data file cut short is an error naming the tensor, not a crash.
    let data = d.path().join("net.onnx.data");
    let len = std::fs::metadata(&data).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&data)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let (code, _, text) = verify(&model, &d.path().join("net.onnx"), &[]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("past the end"), "{text}");
}

#[test]
fn every_node_the_reader_cannot_map_is_reported_at_once() {
    let d = tempfile::tempdir().unwrap();
    let path: PathBuf = d.path().join("odd.onnx");
    let script = r#"
import sys, onnx
from onnx import helper, TensorProto
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
nodes = [
    helper.make_node("Softsign", ["x"], ["a"], name="softsign"),
    helper.make_node("Relu", ["a"], ["b"], name="after_softsign"),
    helper.make_node("HardSigmoid", ["x"], ["c"], name="hard"),
    helper.make_node("Add", ["b", "c"], ["y"], name="sum"),
]
g = helper.make_graph(nodes, "odd", [x], [y])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
m.ir_version = 7
onnx.checker.check_model(m)
onnx.save(m, sys.argv[1])
"#;
    let out = Command::new(python())
        .args(["-c", script])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = faceall(&["inspect", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("2 unsupported node(s)"), "{err}");
    assert!(err.contains("'softsign' (Softsign)"), "{err}");
    assert!(err.contains("'hard' (HardSigmoid)"), "{err}");
    assert!(err.contains("odd.onnx"), "the file is named: {err}");
}

#[test]
fn inspect_and_bench_read_a_converted_onnx_model() {
    let case = case_dir("misc_ops");
    let d = tempfile::tempdir().unwrap();
    convert(&case.join("model.pb"), d.path(), &[]);
    let onnx = d.path().join("net.onnx");
    let out = faceall(&["inspect", onnx.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["inputs"][0]["name"], "input");
    assert_eq!(v["inputs"][0]["shape"], serde_json::json!([1, 6, 6, 3]));
    assert_eq!(v["outputs"][0]["name"], "output");
    assert!(v["parameters"].as_u64().unwrap() > 0, "{v}");
    // verify-parity --model picks the format by the file name.
    let model = case.join("model.pb");
    let out = faceall(&[
        "verify-parity",
        "--tf",
        model.to_str().unwrap(),
        "--model",
        onnx.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("onnx "));
    let out = faceall(&[
        "verify-parity",
        "--tf",
        model.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("not a converted model"),
        "{}",
        stderr(&out)
    );
    let out = faceall(&["bench", onnx.to_str().unwrap(), "--iters", "2", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["ms_per_image"].as_f64().unwrap() > 0.0, "{v}");
}
