//! convert-tf to Caffe, end to end through the binary: every fixture and the
//! real FaceNet convert, and the written files, run by faceall's Caffe
//! executor and by OpenCV 4.x's Caffe importer, match TensorFlow.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use faceall::formats::caffe::exec::CaffeModel;
use faceall::formats::caffe::write::BlobMap;
use faceall::ir::Tensor;
use faceall::parity::{compare, reference::ReferenceCase, Tolerance};
use serde::Deserialize;

#[derive(Deserialize)]
struct Report {
    blobs: Vec<BlobMap>,
}

struct Converted {
    _dir: tempfile::TempDir,
    prototxt: PathBuf,
    caffemodel: PathBuf,
    report_path: PathBuf,
    report: Report,
}

fn convert(model: &Path, extra: &[&str]) -> Converted {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec![
        "convert-tf",
        model.to_str().unwrap(),
        "--to",
        "caffe",
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
        prototxt: dir.path().join("net.prototxt"),
        caffemodel: dir.path().join("net.caffemodel"),
        report_path,
        report,
        _dir: dir,
    }
}

/// Run the converted files with faceall's Caffe executor; compare every
/// reference tensor that has a blob, outputs within 1e-5 absolute.
fn check_ours(case: &ReferenceCase, c: &Converted) -> usize {
    let model =
        CaffeModel::load(&c.prototxt, Some(&c.caffemodel)).unwrap_or_else(|e| panic!("{e}"));
    let by_tensor: HashMap<&str, &BlobMap> = c
        .report
        .blobs
        .iter()
        .map(|b| (b.tensor.as_str(), b))
        .collect();
    let mut feeds = HashMap::new();
    for (name, t) in &case.inputs {
        let b = by_tensor[name.as_str()];
        feeds.insert(b.blob.clone(), b.layout.from_tf(t).unwrap());
    }
    let (blobs, _) = model
        .forward(&feeds)
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let mut compared = 0;
    for (name, want) in &case.tensors {
        let Some(b) = by_tensor.get(name.as_str()) else {
            continue;
        };
        let got: &Tensor = &blobs[&b.blob];
        let got = b
            .layout
            .to_tf(got)
            .unwrap()
            .reshaped(want.shape().to_vec())
            .unwrap();
        let cmp = compare(&got, want, Tolerance::CLOSE).unwrap();
        let is_output = case.outputs.contains(name);
        assert!(cmp.passed(), "{}: {name}: {cmp}", case.name);
        if is_output {
            assert!(cmp.max_abs <= 1e-5, "{}: output {name}: {cmp}", case.name);
        }
        compared += 1;
    }
    for o in &case.outputs {
        assert!(
            by_tensor.contains_key(o.as_str()),
            "{}: output {o} has no blob",
            case.name
        );
    }
    compared
}

fn check_opencv(case_dir: &Path, c: &Converted) {
    let out = Command::new(python())
        .arg(root().join("scripts/check_caffe_opencv.py"))
        .args([
            &c.prototxt,
            &c.caffemodel,
            &c.report_path,
            &case_dir.to_path_buf(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "OpenCV on {}:\n{text}\n{}",
        case_dir.display(),
        stderr(&out)
    );
    assert!(text.contains("\"output\": true"), "{text}");
}

fn check(name: &str) {
    let dir = case_dir(name);
    let case = ReferenceCase::load(&dir).unwrap();
    let c = convert(&case.model, &[]);
    let n = check_ours(&case, &c);
    eprintln!("{name}: {n} tensors compared");
    check_opencv(&dir, &c);
}

#[test]
fn fixtures_match_tensorflow_in_ours_and_opencv() {
    for name in FIXTURES {
        if NO_CAFFE_FORM.iter().any(|(n, _)| n == name) {
            continue;
        }
        check(name);
    }
}

/// An op Caffe cannot hold is refused for Caffe alone, naming the node and
/// the op; the other targets of the same run are still written.
#[test]
fn an_op_without_a_caffe_form_is_refused_for_caffe_only() {
    for (name, op) in NO_CAFFE_FORM {
        assert_refused_for_one_format(name, op, "caffe", "model.caffemodel");
    }
}

#[test]
fn real_facenet_matches_tensorflow_in_ours_and_opencv() {
    check("facenet");
}

#[test]
fn conversion_is_deterministic() {
    let model = case_dir("inception_resnet_v1_switch").join("model.pb");
    let (a, b) = (convert(&model, &[]), convert(&model, &[]));
    assert_eq!(
        std::fs::read(&a.prototxt).unwrap(),
        std::fs::read(&b.prototxt).unwrap()
    );
    assert_eq!(
        std::fs::read(&a.caffemodel).unwrap(),
        std::fs::read(&b.caffemodel).unwrap()
    );
}

#[test]
fn prototxt_golden() {
    // The emitted prototxt for the SAME-stride-2 case, including the zero
    // row and column built from the data, is pinned.
    let c = convert(&case_dir("same_conv_stride2").join("model.pb"), &[]);
    let got = std::fs::read_to_string(&c.prototxt).unwrap();
    let golden = root().join("tests/golden/same_conv_stride2.prototxt");
    if std::env::var_os("FACEALL_BLESS").is_some() {
        std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
        std::fs::write(&golden, &got).unwrap();
    }
    let want =
        std::fs::read_to_string(&golden).expect("golden file (regenerate with FACEALL_BLESS=1)");
    assert_eq!(
        got, want,
        "prototxt changed; if intended, rerun with FACEALL_BLESS=1"
    );
}

/// Each pass off: the conversion still matches TensorFlow, or (for passes
/// Caffe cannot do without) fails naming the nodes that need it.
#[test]
fn each_pass_off_still_converts_correctly() {
    let passes = [
        "remove_identity",
        "resolve_switch",
        "fold_constants",
        "fold_bias",
        "fold_batch_norm",
        "fuse_residual",
        "fuse_l2_normalize",
        "remove_dead",
    ];
    for name in [
        "inception_resnet_v1_switch",
        "decomposed_bn",
        "matmul_bn",
        "depthwise_relu6",
    ] {
        let case = ReferenceCase::load(&case_dir(name)).unwrap();
        for pass in passes {
            let dir = tempfile::tempdir().unwrap();
            let out = faceall(&[
                "convert-tf",
                case.model.to_str().unwrap(),
                "--to",
                "caffe",
                "--out-dir",
                dir.path().to_str().unwrap(),
                "--name",
                "net",
                "--json",
                "--no-pass",
                pass,
            ]);
            if !out.status.success() {
                let err = stderr(&out);
                let needed = ["resolve_switch", "fold_constants"].contains(&pass);
                assert!(needed, "{name} without {pass} failed: {err}");
                assert!(
                    err.contains(&format!("(run the {pass} pass)")),
                    "{name} without {pass}: {err}"
                );
                assert!(
                    files_in(dir.path()).is_empty(),
                    "partial files left: {:?}",
                    files_in(dir.path())
                );
                continue;
            }
            std::fs::write(dir.path().join("report.json"), &out.stdout).unwrap();
            let c = Converted {
                prototxt: dir.path().join("net.prototxt"),
                caffemodel: dir.path().join("net.caffemodel"),
                report_path: dir.path().join("report.json"),
                report: serde_json::from_slice(&out.stdout).unwrap(),
                _dir: dir,
            };
            check_ours(&case, &c);
        }
    }
}

#[test]
fn unfolded_batch_norm_uses_tf_epsilon() {
    let case = ReferenceCase::load(&case_dir("inception_resnet_v1_fused")).unwrap();
    let c = convert(&case.model, &["--no-fold-bn"]);
    let text = std::fs::read_to_string(&c.prototxt).unwrap();
    assert!(text.contains("type: \"BatchNorm\""));
    assert!(text.contains("eps: 0.001"), "TF's epsilon must be written");
    check_ours(&case, &c);
    check_opencv(&case_dir("inception_resnet_v1_fused"), &c);
}

mod bad_input {
    use super::*;
    use faceall::frontend::tf::build::{self, NodeBuilder};

    fn write_graph(dir: &Path, nodes: Vec<faceall::proto::graph::NodeDef>) -> PathBuf {
        let p = dir.join("g.pb");
        std::fs::write(&p, build::to_bytes(&build::graph(nodes))).unwrap();
        p
    }

    fn fails(args: &[&str], must: &[&str]) -> String {
        let out = faceall(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        for m in must {
            assert!(err.contains(m), "'{m}' not in: {err}");
        }
        err
    }

    #[test]
    fn a_strided_slice_with_a_step_is_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        // x[:, ::2, :, :]: every other row has no IR form (step 1 only).
        let model = write_graph(
            d.path(),
            vec![
                build::placeholder("x", &[1, 4, 4, 2]),
                build::constant("b", build::i32_tensor(&[4], &[0, 0, 0, 0])),
                build::constant("e", build::i32_tensor(&[4], &[0, 0, 0, 0])),
                build::constant("s", build::i32_tensor(&[4], &[1, 2, 1, 1])),
                NodeBuilder::new("every_other", "StridedSlice", &["x", "b", "e", "s"])
                    .attr_int("begin_mask", 15)
                    .attr_int("end_mask", 15)
                    .build(),
            ],
        );
        fails(
            &[
                "convert-tf",
                model.to_str().unwrap(),
                "--to",
                "caffe",
                "--out-dir",
                out.path().to_str().unwrap(),
            ],
            &["'every_other' (StridedSlice)", "a stride of 2"],
        );
    }

    #[test]
    fn splits_that_do_not_fit_their_axis_are_all_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        // 3 equal parts of 4 channels; sizes 2 + 3 of 4 channels.
        let model = write_graph(
            d.path(),
            vec![
                build::placeholder("x", &[1, 4, 4, 4]),
                build::constant("axis", build::i32_tensor(&[], &[3])),
                build::constant("sizes", build::i32_tensor(&[2], &[2, 3])),
                NodeBuilder::new("thirds", "Split", &["axis", "x"])
                    .attr_int("num_split", 3)
                    .build(),
                NodeBuilder::new("uneven", "SplitV", &["x", "sizes", "axis"])
                    .attr_int("num_split", 2)
                    .build(),
            ],
        );
        fails(
            &[
                "convert-tf",
                model.to_str().unwrap(),
                "--to",
                "caffe",
                "--out-dir",
                out.path().to_str().unwrap(),
            ],
            &[
                "'thirds' (Split)",
                "num_split must divide it",
                "'uneven' (SplitV)",
                "do not add up to the axis of 4",
            ],
        );
    }

    #[test]
    fn ops_without_caffe_form_are_all_listed() {
        let d = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        // Two 4-D values added with broadcasting, and a reduction over H only.
        let model = write_graph(
            d.path(),
            vec![
                build::placeholder("x", &[1, 4, 4, 2]),
                build::placeholder("y", &[1, 1, 4, 2]),
                NodeBuilder::new("add", "AddV2", &["x", "y"]).build(),
                build::constant("axis", build::i32_tensor(&[1], &[1])),
                NodeBuilder::new("sum_h", "Sum", &["add", "axis"]).build(),
                NodeBuilder::new("relu", "Relu", &["x"]).build(),
                NodeBuilder::new("sum_h2", "Sum", &["relu", "axis"]).build(),
            ],
        );
        let err = fails(
            &[
                "convert-tf",
                model.to_str().unwrap(),
                "--to",
                "caffe",
                "--out-dir",
                out.path().to_str().unwrap(),
            ],
            &[
                "2 unsupported",
                "'add' (AddV2)",
                "'sum_h2' (Sum)",
                model.to_str().unwrap(),
            ],
        );
        assert!(
            !err.contains("'sum_h' "),
            "a node after a failed one is not reported: {err}"
        );
        assert!(files_in(out.path()).is_empty());
    }

    #[test]
    fn unknown_output_name() {
        let out = tempfile::tempdir().unwrap();
        let model = case_dir("same_conv_stride2").join("model.pb");
        fails(
            &[
                "convert-tf",
                model.to_str().unwrap(),
                "--to",
                "caffe",
                "--out-dir",
                out.path().to_str().unwrap(),
                "--output",
                "nope",
            ],
            &["no node named 'nope'"],
        );
        assert!(files_in(out.path()).is_empty());
    }

    #[test]
    fn missing_output_directory_is_created() {
        // As `mkdir -p` would: every missing level.
        let model = case_dir("same_conv_stride2").join("model.pb");
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("a/b/c");
        let o = faceall(&[
            "convert-tf",
            model.to_str().unwrap(),
            "--to",
            "caffe",
            "--out-dir",
            out.to_str().unwrap(),
            "--quiet",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(o.stdout.is_empty(), "--quiet printed {:?}", o.stdout);
        assert!(out.join("model.prototxt").exists());
        assert!(out.join("model.caffemodel").exists());
    }

    #[test]
    fn output_directory_under_a_file() {
        let model = case_dir("same_conv_stride2").join("model.pb");
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        let out = file.join("dir");
        fails(
            &[
                "convert-tf",
                model.to_str().unwrap(),
                "--to",
                "caffe",
                "--out-dir",
                out.to_str().unwrap(),
            ],
            &[out.to_str().unwrap(), "creating it"],
        );
    }

    #[test]
    fn read_only_output_directory() {
        use std::os::unix::fs::PermissionsExt;
        let out = tempfile::tempdir().unwrap();
        std::fs::set_permissions(out.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
        // root can write anywhere; the check is meaningful only for other users.
        let probe = out.path().join("probe");
        let writable_anyway = std::fs::write(&probe, b"x").is_ok();
        let _ = std::fs::remove_file(&probe);
        let model = case_dir("same_conv_stride2").join("model.pb");
        let res = faceall(&[
            "convert-tf",
            model.to_str().unwrap(),
            "--to",
            "caffe",
            "--out-dir",
            out.path().to_str().unwrap(),
        ]);
        if writable_anyway {
            assert!(res.status.success());
        } else {
            assert_eq!(res.status.code(), Some(1));
            assert!(
                stderr(&res).contains("Permission denied"),
                "{}",
                stderr(&res)
            );
            assert!(files_in(out.path()).is_empty());
        }
        std::fs::set_permissions(out.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        // A directory nobody (root included) may create files in: sysfs.
        let sys = Path::new("/sys/kernel");
        if sys.is_dir() {
            let res = faceall(&[
                "convert-tf",
                model.to_str().unwrap(),
                "--to",
                "caffe",
                "--out-dir",
                "/sys/kernel",
            ]);
            assert_eq!(res.status.code(), Some(1));
            let err = stderr(&res);
            assert!(
                err.contains("/sys/kernel/model.prototxt") && err.contains("denied"),
                "{err}"
            );
        }
    }

    #[test]
    fn unknown_input_shape() {
        let d = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let model = write_graph(
            d.path(),
            vec![
                NodeBuilder::new("x", "Placeholder", &[])
                    .attr_type("dtype", faceall::proto::graph::DataType::DT_FLOAT)
                    .attr_shape("shape", &[-1, 8, 8, 3])
                    .build(),
                NodeBuilder::new("y", "Relu", &["x"]).build(),
            ],
        );
        let m = model.to_str().unwrap();
        let o = out.path().to_str().unwrap();
        fails(
            &["convert-tf", m, "--to", "caffe", "--out-dir", o],
            &["--input-shape x="],
        );
        assert!(files_in(out.path()).is_empty());
        let ok = faceall(&[
            "convert-tf",
            m,
            "--to",
            "caffe",
            "--out-dir",
            o,
            "--input-shape",
            "x=2,8,8,3",
        ]);
        assert!(ok.status.success(), "{}", stderr(&ok));
        assert_eq!(files_in(out.path()), vec!["g.caffemodel", "g.prototxt"]);
    }
}

/// faceall's Caffe executor against OpenCV on FaceAll's original MTCNN
/// (third-party files: V2 layers, input_dim, training caffemodels filled by
/// layer name, PReLU, ceil pooling, in-place tops).
#[test]
fn mtcnn_matches_opencv() {
    let m = shared().join("models/mtcnn");
    let nets: [(&str, [usize; 4], &[&str]); 4] = [
        ("det1", [1, 3, 12, 12], &["prob1", "conv4-2"]),
        ("det1", [1, 3, 37, 53], &["prob1", "conv4-2"]),
        ("det2", [3, 3, 24, 24], &["prob1", "conv5-2"]),
        ("det3", [2, 3, 48, 48], &["prob1", "conv6-2", "conv6-3"]),
    ];
    for (i, (net, shape, outs)) in nets.iter().enumerate() {
        let proto = m.join(format!("{net}.prototxt"));
        let weights = m.join(format!("{net}.caffemodel"));
        let n: usize = shape.iter().product();
        // deterministic pixels in MTCNN's input range
        let mut s = 0x9E3779B97F4A7C15u64 ^ i as u64;
        let data: Vec<f32> = (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        let x = Tensor::f32(shape.to_vec(), data).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let xin = tmp.path().join("x.npy");
        faceall::npy::write_f32(&xin, &x).unwrap();
        let mut cmd = Command::new(python());
        cmd.arg(root().join("scripts/opencv_caffe_run.py"))
            .args([&proto, &weights, &tmp.path().join("out")])
            .arg(format!("data={}", xin.display()))
            .arg("--fetch")
            .args(outs.iter());
        let res = cmd.output().unwrap();
        assert!(res.status.success(), "opencv: {}", stderr(&res));
        let model = CaffeModel::load(&proto, Some(&weights)).unwrap_or_else(|e| panic!("{e}"));
        let (blobs, _) = model
            .forward(&HashMap::from([("data".to_string(), x)]))
            .unwrap();
        for (j, o) in outs.iter().enumerate() {
            let want = faceall::npy::read_f32(&tmp.path().join(format!("out/{j}.npy"))).unwrap();
            let got = blobs[*o].reshaped(want.shape().to_vec()).unwrap();
            let c = compare(&got, &want, Tolerance::CLOSE).unwrap();
            eprintln!("{net} {shape:?} {o}: {c}");
            assert!(c.max_abs <= 1e-5, "{net} {o}: {c}");
        }
    }
}
