//! The passes preserve what TensorFlow computes: after all passes, and with
//! each pass switched off in turn, the executor still matches TensorFlow's
//! outputs on every fixture and on the real FaceNet.

use std::path::PathBuf;

use faceall::frontend::tf;
use faceall::ir::{Graph, Op};
use faceall::parity::{compare, reference::ReferenceCase, Tolerance};
use faceall::passes::{self, PassOptions, PASSES};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const CASES: &[&str] = &[
    "inception_resnet_v1_switch",
    "inception_resnet_v1_fused",
    "decomposed_bn",
    "same_conv_stride2",
    "depthwise_relu6",
    "matmul_bn",
    "pool_floor",
    "misc_ops",
    "layer_norm",
    "gelu_erf",
    "nchw_inside",
    "nchw_graph",
];

fn case_dir(name: &str) -> PathBuf {
    if name == "facenet" {
        let d = root().join(".cache/facenet_ref");
        assert!(
            d.join("manifest.json").exists(),
            "{} missing: run scripts/setup",
            d.display()
        );
        d
    } else {
        root().join("fixtures").join(name)
    }
}

fn converted(case: &ReferenceCase, opts: &PassOptions) -> (Graph, passes::Report) {
    let mut g = tf::load(&case.model, &tf::LoadOptions::default()).unwrap();
    let report = passes::run(&mut g, opts).unwrap_or_else(|e| panic!("{}: {e}", case.name));
    (g, report)
}

fn check_outputs(case: &ReferenceCase, g: &Graph, what: &str) {
    let got = faceall::runtime::run(g, &case.inputs, &case.outputs)
        .unwrap_or_else(|e| panic!("{}: {what}: {e}", case.name));
    for (out, got) in case.outputs.iter().zip(&got) {
        let (_, want) = case.tensors.iter().find(|(n, _)| n == out).unwrap();
        let c = compare(got, want, Tolerance::CLOSE).unwrap();
        assert!(
            c.passed() && c.max_abs <= 1e-5,
            "{}: {what}: {out}: {c}",
            case.name
        );
    }
}

fn count(g: &Graph, f: impl Fn(&Op) -> bool) -> usize {
    g.nodes.iter().filter(|n| f(&n.op)).count()
}

#[test]
fn all_passes_preserve_outputs() {
    for name in CASES {
        let case = ReferenceCase::load(&case_dir(name)).unwrap();
        let (g, report) = converted(&case, &PassOptions::default());
        check_outputs(&case, &g, "all passes");
        assert_eq!(
            count(&g, |o| matches!(o, Op::Switch | Op::Merge | Op::Identity)),
            0,
            "{name}"
        );
        eprintln!(
            "{name}: {} -> {} nodes in {} iterations",
            report.nodes_before, report.nodes_after, report.iterations
        );
    }
}

#[test]
fn each_pass_can_be_switched_off() {
    for name in CASES {
        let case = ReferenceCase::load(&case_dir(name)).unwrap();
        for pass in PASSES.iter().map(|p| p.name) {
            let (g, _) = converted(&case, &PassOptions::default().without(pass));
            check_outputs(&case, &g, &format!("without {pass}"));
        }
        let (g, _) = converted(&case, &PassOptions::none());
        check_outputs(&case, &g, "no passes");
    }
}

#[test]
fn switch_fixture_folds_every_batch_norm() {
    let case = ReferenceCase::load(&case_dir("inception_resnet_v1_switch")).unwrap();
    let (g, report) = converted(&case, &PassOptions::default());
    assert_eq!(count(&g, |o| matches!(o, Op::BatchNorm(_))), 0);
    assert_eq!(count(&g, |o| matches!(o, Op::L2Normalize { .. })), 1);
    assert_eq!(count(&g, |o| matches!(o, Op::WeightedSum { .. })), 21);
    assert!(
        report.count("fold_batch_norm") > 100,
        "{}",
        report.count("fold_batch_norm")
    );
    // Every conv now carries a bias and the value of its batch norm's Merge.
    for n in g.nodes.iter().filter(|n| matches!(n.op, Op::Conv2d(_))) {
        assert_eq!(n.inputs.len(), 3, "{}", n.name);
    }
    let conv = g
        .nodes
        .iter()
        .find(|n| n.name == "InceptionResnetV1/Conv2d_1a_3x3/Conv2D")
        .unwrap();
    assert_eq!(
        conv.carries(),
        Some("InceptionResnetV1/Conv2d_1a_3x3/BatchNorm/cond/Merge"),
        "{:?}",
        conv.absorbed
    );
}

#[test]
fn gelu_forms_and_tensordot_are_recognised() {
    use faceall::ir::Activation;
    let gelus = |g: &Graph, approximate: bool| {
        count(
            g,
            |o| matches!(o, Op::Activation(Activation::Gelu { approximate: a }) if *a == approximate),
        )
    };
    // TF's erfc form and the erf form of PyTorch exports: both exact.
    let case = ReferenceCase::load(&case_dir("gelu_erf")).unwrap();
    let (g, report) = converted(&case, &PassOptions::default());
    assert_eq!(gelus(&g, false), 2, "{:?}", report.rewrites);
    assert_eq!(count(&g, |o| matches!(o, Op::Unary(_))), 0);
    // The tanh form (its x + c * x^3 already a WeightedSum), and the
    // Reshape/MatMul/Reshape of tf.tensordot as a 1x1 convolution.
    let case = ReferenceCase::load(&case_dir("layer_norm")).unwrap();
    let (g, report) = converted(&case, &PassOptions::default());
    assert_eq!(gelus(&g, true), 1, "{:?}", report.rewrites);
    assert_eq!(report.count("fold_tensordot"), 1);
    assert_eq!(count(&g, |o| matches!(o, Op::MatMul { .. })), 0);
    let dense = g.nodes.iter().find(|n| n.name == "dense").unwrap();
    assert!(matches!(dense.op, Op::Conv2d(_)), "{:?}", dense.op);
    // Off, the written-out ops stay and still compute the same.
    let (g, _) = converted(&case, &PassOptions::default().without("fuse_gelu"));
    assert_eq!(gelus(&g, true), 0);
    assert_eq!(
        count(&g, |o| matches!(o, Op::Activation(Activation::Tanh))),
        1
    );
}

#[test]
fn channel_first_regions_lose_their_transposes() {
    use faceall::ir::Layout;
    let transposes = |g: &Graph| count(g, |o| matches!(o, Op::Transpose { .. }));
    // onnx-tf style: 8 Transposes in TF. One stays: the NCHW value that is
    // a declared output and is flattened (Caffe and Core ML hold it as
    // is, a change of label).
    let case = ReferenceCase::load(&case_dir("nchw_inside")).unwrap();
    let (g, report) = converted(&case, &PassOptions::default());
    assert_eq!(transposes(&g), 1, "{:?}", report.rewrites);
    let t = g
        .nodes
        .iter()
        .find(|n| matches!(n.op, Op::Transpose { .. }))
        .unwrap();
    assert_eq!(t.carries(), Some("nchw_out"));
    // The NCHW bias folded into the conv before it, like an NHWC one.
    assert_eq!(count(&g, |o| matches!(o, Op::BiasAdd { .. })), 0);
    // An NCHW input, NCHW batch norm: the input's transpose and the
    // output's stay, the batch norm folds, every conv is NHWC.
    let case = ReferenceCase::load(&case_dir("nchw_graph")).unwrap();
    let (g, report) = converted(&case, &PassOptions::default());
    assert_eq!(transposes(&g), 2, "{:?}", report.rewrites);
    assert_eq!(count(&g, |o| matches!(o, Op::BatchNorm(_))), 0);
    assert_eq!(
        count(
            &g,
            |o| matches!(o, Op::Conv2d(c) if c.layout == Layout::Nhwc)
        ),
        2
    );
    // Off, every transpose stays and the outputs are still TF's.
    let (g, _) = converted(&case, &PassOptions::default().without("sink_transpose"));
    assert_eq!(transposes(&g), 4);
    check_outputs(&case, &g, "without sink_transpose");
}

#[test]
fn unfoldable_batch_norm_stays() {
    // A batch norm right after the input has no conv to fold into.
    use faceall::frontend::tf::build::{self, NodeBuilder};
    let g = build::graph(vec![
        build::placeholder("x", &[1, 2, 2, 3]),
        build::constant("g", build::f32_tensor(&[3], &[1.0, 2.0, 3.0])),
        build::constant("b", build::f32_tensor(&[3], &[0.1, 0.2, 0.3])),
        build::constant("m", build::f32_tensor(&[3], &[0.5, 0.5, 0.5])),
        build::constant("v", build::f32_tensor(&[3], &[1.0, 4.0, 9.0])),
        NodeBuilder::new("bn", "FusedBatchNormV3", &["x", "g", "b", "m", "v"])
            .attr_s("data_format", "NHWC")
            .build(),
    ]);
    let mut ir = tf::import(&g, &tf::LoadOptions::default()).unwrap();
    passes::run(&mut ir, &PassOptions::default()).unwrap();
    assert_eq!(count(&ir, |o| matches!(o, Op::BatchNorm(_))), 1);
}

#[test]
fn real_facenet_after_passes() {
    let case = ReferenceCase::load(&case_dir("facenet")).unwrap();
    let (g, report) = converted(&case, &PassOptions::default());
    check_outputs(&case, &g, "all passes");
    assert_eq!(
        count(&g, |o| matches!(o, Op::BatchNorm(_) | Op::BiasAdd { .. })),
        0
    );
    assert_eq!(count(&g, |o| matches!(o, Op::Conv2d(_))), 132);
    assert_eq!(count(&g, |o| matches!(o, Op::WeightedSum { .. })), 21);
    assert_eq!(count(&g, |o| matches!(o, Op::L2Normalize { .. })), 1);
    eprintln!(
        "facenet: {} -> {} nodes; {:?}",
        report.nodes_before,
        report.nodes_after,
        report.rewrites.len()
    );
}
