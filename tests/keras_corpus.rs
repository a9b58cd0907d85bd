//! The corpus: Keras applications of TensorFlow (graphs nobody here wrote,
//! random weights with live batch-norm statistics, frozen by TF; made once
//! per run by scripts/keras_corpus.py into .cache/keras), each converted to
//! every format and run in the runtime a user would run it in: OpenCV's
//! Caffe importer, onnxmltools + onnxruntime for Core ML, onnxruntime for
//! ONNX, and faceall's own engine on the bundle. Every declared output, as
//! the runtime returns it, within 1e-4 of TF's relative to its largest
//! magnitude.
//!
//! Every application converts. Where one format has no exact form of an op
//! (ConvNeXt's erf in Caffe), that format alone is refused, one line naming
//! the node and the op, exit 1, and the others are checked.

mod common;

use std::path::Path;
use std::process::Command;

use common::{faceall, python, root, stderr};
use faceall::parity::{compare, reference::ReferenceCase, Tolerance};
use faceall::runtime::engine::Engine;

/// Converted and checked in every runtime.
const CONVERTED: &[&str] = &[
    "ConvNeXtTiny",
    "DenseNet121",
    "EfficientNetB0",
    "EfficientNetV2B0",
    "InceptionResNetV2",
    "InceptionV3",
    "MobileNet",
    "MobileNetV2",
    "MobileNetV3Small",
    "MobileNetV3Large",
    "NASNetMobile",
    "ResNet50",
    "ResNet50V2",
    "VGG16",
    "Xception",
    "UNetDecoder",
];

/// Converted to every other format; this one has no exact form of an op
/// the model needs, so convert-tf refuses it alone, naming the op (README:
/// "Keras applications"): (application, format, op).
const NO_FORM_IN: &[(&str, &str, &str)] = &[("ConvNeXtTiny", "caffe", "erf")];

/// Relative to max(1, max |TF output|): random-weight logits reach 1e3.
const REL_TOL: f64 = 1e-4;

/// A case is a fair test only if TensorFlow agrees with itself on it far
/// inside REL_TOL: its eager model against its own frozen graph (recorded
/// by keras_corpus.py) within half of it. A random instance that amplifies
/// float32 rounding beyond that is a generator problem (keras_corpus.py
/// scales its batch-norm shifts to each channel's spread for this reason),
/// not something to loosen the bound for.
fn tf_agrees_with_itself(case_dir: &Path, case: &ReferenceCase) -> Result<f64, String> {
    let man: serde_json::Value = std::fs::read(case_dir.join("manifest.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let tf_self = man["frozen_vs_eager_max_abs"]
        .as_f64()
        .ok_or("manifest.json has no frozen_vs_eager_max_abs")?;
    let peak = case
        .tensors
        .iter()
        .filter_map(|(_, t)| t.as_f32().ok())
        .flat_map(|v| v.iter().map(|x| x.abs() as f64).collect::<Vec<_>>())
        .fold(1.0f64, f64::max);
    let rel = tf_self / peak;
    if rel > REL_TOL / 2.0 {
        return Err(format!(
            "TF's eager model and frozen graph differ by {rel:.2e} of the peak: \
             the random instance is ill-conditioned (fix scripts/keras_corpus.py)"
        ));
    }
    Ok(rel)
}

fn corpus_dir() -> std::path::PathBuf {
    root().join(".cache/keras")
}

/// Make (or keep, when cached) every case once per test process: the
/// tests of this file run in parallel threads and must not write the same
/// case at the same time.
fn generate() {
    static MADE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let made = MADE.get_or_init(|| {
        let all: Vec<&str> = CONVERTED.to_vec();
        let out = Command::new(python())
            .arg(root().join("scripts/keras_corpus.py"))
            .args(&all)
            .output()
            .map_err(|e| format!("run scripts/keras_corpus.py: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "keras_corpus.py: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = made {
        panic!("{e}");
    }
}

fn run_script(script: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(python())
        .arg(root().join("scripts").join(script))
        .args(args)
        .output()
        .map_err(|e| format!("{script}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // Every output is compared raw, as the runtime returns it.
    if !text.contains("\"raw_output\"") && script != "check_onnx.py" {
        return Err(format!("{script}: no raw output compared:\n{text}"));
    }
    if out.status.success() {
        Ok(())
    } else {
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("\"ok\": false") || l.contains("error"))
            .collect();
        Err(format!(
            "{script} {args:?}: {}\n{}",
            lines.join("\n"),
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .rev()
                .take(3)
                .collect::<Vec<_>>()
                .join("\n")
        ))
    }
}

fn check_engine(case: &ReferenceCase, bundle: &Path, tol: f64) -> Result<f32, String> {
    let g = faceall::formats::bundle::read::load_owned(bundle).map_err(|e| e.to_string())?;
    let e = Engine::compile_with(g, &Default::default()).map_err(|e| e.to_string())?;
    let xs: Vec<Vec<f32>> = e
        .inputs()
        .iter()
        .map(|p| {
            case.inputs
                .get(&p.name)
                .ok_or(format!("no input {}", p.name))
                .and_then(|t| {
                    t.as_f32()
                        .map(|v| v.into_owned())
                        .map_err(|e| e.to_string())
                })
        })
        .collect::<Result<_, _>>()?;
    let refs: Vec<&[f32]> = xs.iter().map(|v| &v[..]).collect();
    let got = e.run(&refs, 1).map_err(|e| e.to_string())?;
    let mut worst = 0.0f32;
    for (port, got) in e.outputs().iter().zip(&got) {
        let want = case
            .tensors
            .iter()
            .find(|(n, _)| *n == port.name)
            .map(|(_, t)| t)
            .ok_or(format!("TF reference has no {}", port.name))?;
        let c = compare(got, want, Tolerance::CLOSE).map_err(|e| e.to_string())?;
        let scale = want
            .as_f32()
            .map_err(|e| e.to_string())?
            .iter()
            .fold(1.0f32, |m, v| m.max(v.abs()));
        let rel = c.max_abs / scale;
        if rel as f64 > tol {
            return Err(format!("engine: {}: {c} (relative {rel:.2e})", port.name));
        }
        worst = worst.max(rel);
    }
    Ok(worst)
}

fn check_model(name: &str) -> Result<(), String> {
    let case_dir = corpus_dir().join(name);
    let case = ReferenceCase::load(&case_dir).map_err(|e| e.to_string())?;
    let d = tempfile::tempdir().map_err(|e| e.to_string())?;
    let out = d.path();
    let o = faceall(&[
        "convert-tf",
        case.model.to_str().unwrap_or_default(),
        "--to",
        "caffe,coreml,onnx,safetensors",
        "--out-dir",
        out.to_str().unwrap_or_default(),
        "--name",
        "m",
        "--json",
    ]);
    let refused: Vec<(&str, &str)> = NO_FORM_IN
        .iter()
        .filter(|(n, _, _)| *n == name)
        .map(|(_, f, op)| (*f, *op))
        .collect();
    if refused.is_empty() && !o.status.success() {
        return Err(format!("convert-tf: {}", stderr(&o)));
    }
    if !refused.is_empty() {
        // Exit 1, one line per refused format naming the op, the rest written.
        let err = stderr(&o);
        let lines: Vec<&str> = err.lines().collect();
        let named = refused.iter().all(|(f, op)| {
            lines
                .iter()
                .any(|l| l.starts_with(&format!("error: --to {f}:")) && l.contains(op))
        });
        if o.status.code() != Some(1) || lines.len() != refused.len() || !named {
            return Err(format!("convert-tf should refuse {refused:?} alone: {err}"));
        }
    }
    let report = out.join("report.json");
    std::fs::write(&report, &o.stdout).map_err(|e| e.to_string())?;
    let p = |f: &str| out.join(f).to_string_lossy().into_owned();
    let c = case_dir.to_string_lossy().into_owned();
    let rep = report.to_string_lossy().into_owned();
    let tf_self = tf_agrees_with_itself(&case_dir, &case)?;
    eprintln!("{name}: TF eager vs frozen {tf_self:.2e} of the peak");
    let tol = REL_TOL;
    let tol_s = format!("{tol:.3e}");
    let mut errors = vec![];
    for (script, args) in [
        (
            "check_caffe_opencv.py",
            vec![p("m.prototxt"), p("m.caffemodel"), rep.clone(), c.clone()],
        ),
        (
            "check_coreml.py",
            vec![p("m.mlmodel"), rep.clone(), c.clone(), "--onnx".into()],
        ),
        ("check_onnx.py", vec![p("m.onnx"), c.clone()]),
    ] {
        let format = match script {
            "check_caffe_opencv.py" => "caffe",
            "check_coreml.py" => "coreml",
            _ => "onnx",
        };
        if refused.iter().any(|(f, _)| *f == format) {
            continue;
        }
        let mut args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        args.extend(["--tolerance", tol_s.as_str()]);
        if script != "check_onnx.py" {
            args.push("--relative");
        }
        if let Err(e) = run_script(script, &args) {
            errors.push(e);
        }
    }
    match check_engine(&case, &out.join("m.graph.json"), tol) {
        Ok(rel) => eprintln!("{name}: engine within {rel:.2e} of TF (relative)"),
        Err(e) => errors.push(e),
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

#[test]
fn keras_applications_match_tensorflow_in_every_runtime() {
    generate();
    // FACEALL_CORPUS=Name1,Name2 checks only those (to look into one).
    let only = std::env::var("FACEALL_CORPUS").unwrap_or_default();
    let mut failed = vec![];
    for name in CONVERTED {
        if !only.is_empty() && !only.split(',').any(|o| o == *name) {
            continue;
        }
        let t0 = std::time::Instant::now();
        match check_model(name) {
            Ok(()) => eprintln!("{name}: ok in {:.1} s", t0.elapsed().as_secs_f64()),
            Err(e) => failed.push(format!("{name}:\n{e}")),
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}
