//! TF models in the forms people keep them, read without TensorFlow:
//! SavedModels (TF1 and TF2, through `model.export` and
//! `tf.saved_model.save`) and TF1 checkpoints + meta graphs, made by real
//! TensorFlow (scripts/gen_saved.py: small cases committed in
//! fixtures/saved/, FaceNet and Keras applications made once per run into
//! .cache/saved/).
//!
//! Each converted model is proved against TensorFlow loading the same files
//! its own way (verify-parity --reference tensorflow, whose oracle uses
//! import_meta_graph + restore or the SavedModel loader), and damaged or
//! wrong inputs are one-line errors naming the file and the tensor.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{faceall, python, root, stderr};
use faceall::parity::{compare, reference::ReferenceCase, Tolerance};

const COMMITTED: &[&str] = &[
    "irv1_ckpt",
    "irv1_saved_tf1",
    "keras_export",
    "keras_tfsave",
    // A frozen graph whose grouped convolutions TF keeps as functions.
    "keras_grouped_frozen",
];

fn committed(case: &str) -> PathBuf {
    root().join("fixtures/saved").join(case)
}

/// The large cases, made (or kept, when cached) once per test process.
fn large(case: &str) -> PathBuf {
    static MADE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let made = MADE.get_or_init(|| {
        let out = Command::new(python())
            .arg(root().join("scripts/gen_saved.py"))
            .arg("--large")
            .output()
            .map_err(|e| format!("run scripts/gen_saved.py: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "gen_saved.py --large: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = made {
        panic!("{e}");
    }
    root().join(".cache/saved").join(case)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// convert-tf MODEL to every format into `out` as NAME.*; the JSON report.
fn convert(model: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "convert-tf",
        s(model),
        "--to",
        "caffe,coreml,onnx,safetensors,mlprogram",
        "--out-dir",
        s(out),
        "--name",
        "m",
        "--json",
    ];
    args.extend_from_slice(extra);
    let o = faceall(&args);
    assert!(
        o.status.success(),
        "convert-tf {}: {}",
        model.display(),
        stderr(&o)
    );
    serde_json::from_slice(&o.stdout).expect("convert-tf --json")
}

/// verify-parity of every written format against `reference` (the TF
/// model in some form); the JSON report.
fn verify(tf: &Path, out: &Path, extra: &[&str]) -> (bool, serde_json::Value, String) {
    let json = out.join("parity.json");
    let mut args = vec!["verify-parity", "--tf", s(tf)];
    let models: Vec<PathBuf> = [
        "m.prototxt",
        "m.mlmodel",
        "m.onnx",
        "m.graph.json",
        "m.mlpackage",
    ]
    .iter()
    .map(|f| out.join(f))
    .collect();
    for m in &models {
        args.extend(["--model", s(m)]);
    }
    args.extend(["--json", s(&json)]);
    args.extend_from_slice(extra);
    let py = python();
    args.extend(["--python", s(&py)]);
    let o = faceall(&args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let report = std::fs::read(&json)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    (o.status.success(), report, text)
}

/// Every target passed, every declared output was compared raw, and the
/// worst output difference.
fn outputs_checked(report: &serde_json::Value, text: &str) -> f64 {
    let targets = report["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 5, "{text}");
    let mut worst = 0.0f64;
    for t in targets {
        let outs = t["outputs"].as_array().expect("outputs");
        assert!(
            !outs.is_empty(),
            "{}: no output compared\n{text}",
            t["format"]
        );
        for o in outs {
            assert_eq!(o["passed"], true, "{}: {o}\n{text}", t["format"]);
            worst = worst.max(o["comparison"]["max_abs"].as_f64().unwrap_or(f64::NAN));
        }
    }
    worst
}

/// The bundle's outputs, run on faceall's reference executor, against the
/// case's TF values (from TF's own loading of the saved files).
fn bundle_matches_case(bundle: &Path, case: &ReferenceCase, tol: Tolerance) {
    let g = faceall::formats::bundle::read::load_owned(bundle).expect("bundle");
    let names: Vec<String> = case.outputs.clone();
    let got = faceall::runtime::run(&g, &case.inputs, &names).expect("run");
    for (name, got) in names.iter().zip(&got) {
        let want = case
            .tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .unwrap_or_else(|| panic!("{}: no TF value for {name}", case.name));
        let c = compare(got, want, tol).unwrap();
        assert!(c.passed(), "{}: {name}: {c}", case.name);
    }
}

#[test]
fn committed_forms_convert_and_match_tensorflow() {
    for case_name in COMMITTED {
        let dir = committed(case_name);
        let case = ReferenceCase::load(&dir).unwrap();
        let d = tempfile::tempdir().unwrap();
        let report = convert(&case.model, d.path(), &[]);
        // The report names what was read.
        let outputs: Vec<&str> = report["outputs"]
            .as_array()
            .expect("outputs")
            .iter()
            .filter_map(|o| o["name"].as_str())
            .collect();
        assert_eq!(outputs.len(), case.outputs.len(), "{case_name}: {report}");
        bundle_matches_case(&d.path().join("m.graph.json"), &case, Tolerance::CLOSE);
        let (ok, rep, text) = verify(&case.model, d.path(), &["--reference", "tensorflow"]);
        assert!(ok, "{case_name}: verify-parity failed:\n{text}");
        let worst = outputs_checked(&rep, &text);
        eprintln!("{case_name}: outputs within {worst:.2e} of TensorFlow in every format");
    }
}

#[test]
fn tf1_forms_compare_every_layer_with_tensorflow() {
    // In a TF1 graph every node is a top-level tensor TF can fetch: the
    // per-layer comparison runs on TF's own values, not only the outputs.
    let dir = committed("irv1_ckpt");
    let case = ReferenceCase::load(&dir).unwrap();
    let d = tempfile::tempdir().unwrap();
    convert(&case.model, d.path(), &[]);
    let (ok, rep, text) = verify(&case.model, d.path(), &["--reference", "tensorflow"]);
    assert!(ok, "{text}");
    for t in rep["targets"].as_array().unwrap() {
        let layers = t["layers"].as_array().map(|l| l.len()).unwrap_or(0);
        assert!(
            layers > 100,
            "{}: only {layers} layers compared",
            t["format"]
        );
    }
}

/// The declared outputs of two bundles on the same input, on faceall's
/// reference executor: the largest difference.
fn bundles_differ(
    a: &Path,
    b: &Path,
    inputs: &std::collections::HashMap<String, faceall::ir::Tensor>,
) -> f32 {
    let ga = faceall::formats::bundle::read::load_owned(a).expect("bundle a");
    let gb = faceall::formats::bundle::read::load_owned(b).expect("bundle b");
    let names: Vec<String> = ga.outputs.iter().map(|w| ga.wire_name(*w)).collect();
    let va = faceall::runtime::run(&ga, inputs, &names).expect("run a");
    let vb = faceall::runtime::run(&gb, inputs, &names).expect("run b");
    va.iter()
        .zip(&vb)
        .map(|(x, y)| compare(x, y, Tolerance::EXACT).unwrap().max_abs)
        .fold(0.0, f32::max)
}

#[test]
fn facenet_checkpoint_and_saved_model_equal_the_frozen_graph() {
    let frozen = root().join(".cache/models/graph_final.pb");
    let from_frozen = tempfile::tempdir().unwrap();
    convert(&frozen, from_frozen.path(), &[]);
    for case_name in ["facenet_ckpt", "facenet_saved_tf1"] {
        let dir = large(case_name);
        let case = ReferenceCase::load(&dir).unwrap();
        let d = tempfile::tempdir().unwrap();
        let t0 = std::time::Instant::now();
        convert(&case.model, d.path(), &[]);
        eprintln!(
            "{case_name}: converted to five formats in {:.2} s",
            t0.elapsed().as_secs_f64()
        );
        // The frozen graph's conversion and this one compute the same
        // embedding (within 1e-6).
        let diff = bundles_differ(
            &from_frozen.path().join("m.graph.json"),
            &d.path().join("m.graph.json"),
            &case.inputs,
        );
        assert!(
            diff <= 1e-6,
            "{case_name}: {diff} from the frozen graph's conversion"
        );
        // Every format against the frozen graph, layer by layer: outputs
        // within 1e-6.
        let (ok, rep, text) = verify(&frozen, d.path(), &[]);
        assert!(ok, "{case_name} vs the frozen graph:\n{text}");
        let worst = outputs_checked(&rep, &text);
        assert!(worst <= 1e-6, "{case_name}: {worst}");
        // Against TensorFlow loading the checkpoint / SavedModel itself.
        let (ok, rep, text) = verify(&case.model, d.path(), &["--reference", "tensorflow"]);
        assert!(ok, "{case_name} vs TensorFlow:\n{text}");
        let worst = outputs_checked(&rep, &text);
        assert!(worst <= 1e-5, "{case_name}: {worst}");
        bundle_matches_case(&d.path().join("m.graph.json"), &case, Tolerance::CLOSE);
        eprintln!("{case_name}: embedding within {worst:.2e} of TensorFlow in every format, {diff:.2e} of the frozen graph's conversion");
    }
}

/// Relative to max(1, max |TF output|), as the Keras corpus.
const KERAS_REL_TOL: &str = "1e-4";

#[test]
fn keras_applications_as_saved_models_match_in_opencv_and_coreml() {
    for case_name in ["MobileNetV2_saved", "InceptionResNetV2_saved"] {
        let dir = large(case_name);
        let case = ReferenceCase::load(&dir).unwrap();
        let d = tempfile::tempdir().unwrap();
        let o = faceall(&[
            "convert-tf",
            s(&case.model),
            "--to",
            "caffe,coreml,onnx",
            "--out-dir",
            s(d.path()),
            "--name",
            "m",
            "--json",
        ]);
        assert!(o.status.success(), "{case_name}: {}", stderr(&o));
        let report = d.path().join("report.json");
        std::fs::write(&report, &o.stdout).unwrap();
        let p = |f: &str| d.path().join(f).to_string_lossy().into_owned();
        for (script, args) in [
            (
                "check_caffe_opencv.py",
                vec![p("m.prototxt"), p("m.caffemodel"), p("report.json")],
            ),
            (
                "check_coreml.py",
                vec![p("m.mlmodel"), p("report.json"), "--onnx".to_string()],
            ),
        ] {
            let out = Command::new(python())
                .arg(root().join("scripts").join(script))
                .args(&args)
                .arg(&dir)
                .args(["--tolerance", KERAS_REL_TOL, "--relative"])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && text.contains("\"raw_output\""),
                "{case_name}: {script}:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            eprintln!("{case_name}: {script} ok");
        }
    }
}

/// A copy of a committed case to damage.
fn copy_case(case: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    copy_dir(&committed(case), d.path());
    d
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let t = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), &t).unwrap();
        }
    }
}

/// `inspect` and `convert-tf` both fail with exit 1 and one line holding
/// every `needle`.
fn refused(model: &Path, extra: &[&str], needles: &[&str]) -> String {
    let d = tempfile::tempdir().unwrap();
    let mut errs = vec![];
    for cmd in ["inspect", "convert-tf"] {
        let mut args = vec![cmd, s(model)];
        if cmd == "convert-tf" {
            args.extend(["--to", "caffe", "--out-dir", s(d.path())]);
        }
        args.extend_from_slice(extra);
        let o = faceall(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{cmd} {args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{cmd}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        for n in needles {
            assert!(err.contains(n), "{cmd}: '{n}' not in: {err}");
        }
        errs.push(err);
    }
    errs.remove(1)
}

#[test]
fn damaged_checkpoints_are_one_line_errors_naming_file_and_tensor() {
    let shard = "model.ckpt.data-00000-of-00001";
    // A missing shard.
    let d = copy_case("irv1_ckpt");
    std::fs::remove_file(d.path().join(shard)).unwrap();
    refused(&d.path().join("model.meta"), &[], &[shard, "missing"]);
    // A truncated shard: the tensors past its end are named.
    let d = copy_case("irv1_ckpt");
    let p = d.path().join(shard);
    let len = std::fs::metadata(&p).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    refused(
        &d.path().join("model.meta"),
        &[],
        &[shard, "truncated", "tensor '"],
    );
    // One flipped byte in the data: the crc32c of its tensor.
    let d = copy_case("irv1_ckpt");
    let p = d.path().join(shard);
    let mut b = std::fs::read(&p).unwrap();
    b[1000] ^= 0x40;
    std::fs::write(&p, &b).unwrap();
    refused(
        &d.path().join("model.meta"),
        &[],
        &[shard, "crc32c mismatch", "tensor '"],
    );
    // One flipped byte in the index.
    let d = copy_case("irv1_ckpt");
    let p = d.path().join("model.ckpt.index");
    let mut b = std::fs::read(&p).unwrap();
    b[100] ^= 0x40;
    std::fs::write(&p, &b).unwrap();
    refused(
        &d.path().join("model.meta"),
        &[],
        &["model.ckpt.index", "crc32c"],
    );
    // A checkpoint of another model: the variables it lacks are named.
    let other = committed("keras_export").join("saved/variables/variables");
    refused(
        &committed("irv1_ckpt").join("model.meta"),
        &["--checkpoint", s(&other)],
        &[
            "variables.index",
            "490 variable(s) have no value in the checkpoint",
            "InceptionResnetV1/Bottleneck/weights",
        ],
    );
    // A SavedModel whose variables were lost.
    let d = copy_case("keras_export");
    std::fs::remove_dir_all(d.path().join("saved/variables")).unwrap();
    refused(
        &d.path().join("saved"),
        &[],
        &["saved_model.pb", "variable"],
    );
}

#[test]
fn wrong_inputs_are_one_line_errors() {
    // An unknown signature: those that exist are listed.
    let saved = committed("keras_tfsave").join("saved");
    refused(
        &saved,
        &["--signature", "predict"],
        &["no signature 'predict'", "serving_default"],
    );
    // Unknown tags.
    refused(
        &saved,
        &["--tag-set", "train"],
        &["no meta graph with tags {train}", "{serve}"],
    );
    // A directory that is not a SavedModel.
    let d = tempfile::tempdir().unwrap();
    refused(d.path(), &[], &["is not a SavedModel", "saved_model.pb"]);
    // A checkpoint file given instead of its meta graph.
    refused(
        &committed("irv1_ckpt").join("model.ckpt.index"),
        &[],
        &["part of a checkpoint", ".meta"],
    );
    // Ops faceall has no form for: all at once, each with its node.
    let unsupported = committed("unsupported_ops").join("saved");
    let err = refused(&unsupported, &[], &["Cumsum", "Atan", "Cosh"]);
    assert!(err.contains("node '"), "{err}");
}

#[test]
fn inspect_reads_every_form() {
    for (case, form) in [
        ("irv1_ckpt", "TF1 meta graph + checkpoint"),
        ("irv1_saved_tf1", "TF1 SavedModel"),
        ("keras_export", "TF2 SavedModel"),
        ("keras_tfsave", "TF2 SavedModel"),
    ] {
        let case = ReferenceCase::load(&committed(case)).unwrap();
        let o = faceall(&["inspect", s(&case.model), "--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(r["form"].as_str().unwrap_or("").contains(form), "{r}");
        assert!(r["variables"].as_u64().unwrap_or(0) > 0, "{r}");
        assert!(r["parameters"].as_u64().unwrap_or(0) > 0, "{r}");
        let outs: Vec<&str> = r["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o["name"].as_str())
            .collect();
        let mut want: Vec<&str> = case.outputs.iter().map(String::as_str).collect();
        want.sort();
        let mut outs = outs;
        outs.sort();
        assert_eq!(outs, want, "{r}");
    }
}

mod fuzz {
    use super::*;
    use common::mutate::{apply, mutation};
    use faceall::frontend::tf;
    use proptest::prelude::*;

    /// Read (and, when it reads, import) a case whose `file` was replaced
    /// by a mutated copy: an error or a graph, never a panic.
    fn read_mutated(case: &str, model: &str, file: &str, ms: &[common::mutate::Mutation]) {
        let d = copy_case(case);
        let p = d.path().join(file);
        let b = std::fs::read(&p).unwrap();
        std::fs::write(&p, apply(b, ms)).unwrap();
        let m = d.path().join(model);
        if let Ok(model) = tf::read_model(&m, &Default::default()) {
            let _ = tf::import_model(&model, &Default::default());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 150, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn mutated_tf2_bundle_never_panics(ms in prop::collection::vec(mutation(), 1..4), data in any::<bool>()) {
            let file = if data { "saved/variables/variables.data-00000-of-00001" } else { "saved/variables/variables.index" };
            read_mutated("keras_export", "saved", file, &ms);
        }

        #[test]
        fn mutated_checkpoint_never_panics(ms in prop::collection::vec(mutation(), 1..4), data in any::<bool>()) {
            let file = if data { "model.ckpt.data-00000-of-00001" } else { "model.ckpt.index" };
            read_mutated("irv1_ckpt", "model.meta", file, &ms);
        }

        #[test]
        fn mutated_saved_model_pb_never_panics(ms in prop::collection::vec(mutation(), 1..3)) {
            read_mutated("keras_tfsave", "saved", "saved/saved_model.pb", &ms);
        }
    }
}
