//! The fast engine (packed, fused, batched) against TensorFlow's own values:
//! every fixture and the real FaceNet, through the bundle `convert-tf`
//! writes, within 1e-5 per element. Batches must equal the samples run one
//! by one, and the graph with passes switched off (batch norms not folded,
//! so they run on the fallback path) must agree as well, and so must the
//! engine with Winograd convolutions off, F(2x2) and F(4x4) on every 3x3
//! stride-1 convolution.

mod common;

use std::path::Path;

use common::{case_dir, faceall, stderr, FIXTURES};
use faceall::ir::{numel, Tensor};
use faceall::parity::{compare, reference::ReferenceCase, Tolerance};
use faceall::runtime::engine::{Engine, EngineOptions, EngineStats};
use faceall::runtime::kernels::winograd::Tile;

/// Per-element bound of the issue: 1e-5 absolute on every output.
const MAX_ABS: f32 = 1e-5;

fn convert(case: &ReferenceCase, out: &Path) -> std::path::PathBuf {
    let o = faceall(&[
        "convert-tf",
        case.model.to_str().unwrap(),
        "--to",
        "safetensors",
        "--out-dir",
        out.to_str().unwrap(),
        "--name",
        "m",
    ]);
    assert!(o.status.success(), "{}: {}", case.name, stderr(&o));
    out.join("m.graph.json")
}

fn inputs_for(e: &Engine, case: &ReferenceCase) -> Vec<Vec<f32>> {
    e.inputs()
        .iter()
        .map(|p| {
            case.inputs
                .get(&p.name)
                .unwrap_or_else(|| panic!("{}: no input {}", case.name, p.name))
                .as_f32()
                .unwrap()
                .into_owned()
        })
        .collect()
}

fn check_outputs(case: &ReferenceCase, e: &Engine, got: &[Tensor], what: &str) {
    for (port, got) in e.outputs().iter().zip(got) {
        let want = case
            .tensors
            .iter()
            .find(|(n, _)| *n == port.name || n.trim_end_matches(":0") == port.name)
            .map(|(_, t)| t)
            .unwrap_or_else(|| panic!("{}: TF reference has no {}", case.name, port.name));
        let c = compare(got, want, Tolerance::CLOSE).unwrap();
        eprintln!("{} ({what}): {}: {c}", case.name, port.name);
        assert!(
            c.max_abs <= MAX_ABS,
            "{} ({what}): {}: {c}",
            case.name,
            port.name
        );
    }
}

/// The engine's modes every case is checked in: the default, Winograd off,
/// and each Winograd tile forced onto every 3x3 stride-1 convolution.
fn modes() -> Vec<(&'static str, EngineOptions)> {
    let forced = |t| EngineOptions {
        winograd: Some(t),
        winograd_everywhere: true,
    };
    vec![
        ("default", EngineOptions::default()),
        (
            "winograd off",
            EngineOptions {
                winograd: None,
                winograd_everywhere: false,
            },
        ),
        ("winograd F2 everywhere", forced(Tile::F2)),
        ("winograd F4 everywhere", forced(Tile::F4)),
    ]
}

/// Check `name` in every mode; the stats of each mode, in `modes()` order.
fn check(name: &str) -> Vec<EngineStats> {
    let case = ReferenceCase::load(&case_dir(name)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bundle = convert(&case, dir.path());
    modes()
        .into_iter()
        .map(|(what, opts)| {
            let g = faceall::formats::bundle::read::load_owned(&bundle).unwrap();
            let e = Engine::compile_with(g, &opts).unwrap_or_else(|err| panic!("{name}: {err}"));
            check_engine(&case, &e, what);
            e.stats()
        })
        .collect()
}

fn check_engine(case: &ReferenceCase, e: &Engine, what: &str) {
    let name = &case.name;
    let xs = inputs_for(e, case);
    let refs: Vec<&[f32]> = xs.iter().map(|v| &v[..]).collect();
    let got = e.run(&refs, 1).unwrap();
    check_outputs(case, e, &got, &format!("{what}, batch 1"));
    // On one thread, as the server runs a photo beside another
    // (serve::lanes): every kernel unsplit, the same values.
    let lane = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let one = lane.install(|| e.run(&refs, 1)).unwrap();
    check_outputs(case, e, &one, &format!("{what}, batch 1, one thread"));
    for (a, b) in one.iter().zip(&got) {
        assert!(
            a.as_f32().unwrap() == b.as_f32().unwrap(),
            "{name} ({what}): one thread and every core differ"
        );
    }

    // A batch of 3: the reference sample, its negation and a scaled copy;
    // each row of the result must equal that sample run alone.
    let variants = [1.0f32, -1.0, 0.5];
    let batched: Vec<Vec<f32>> = xs
        .iter()
        .map(|x| {
            variants
                .iter()
                .flat_map(|s| x.iter().map(move |v| v * s))
                .collect()
        })
        .collect();
    let refs: Vec<&[f32]> = batched.iter().map(|v| &v[..]).collect();
    let got3 = e.run(&refs, 3).unwrap();
    for (i, s) in variants.iter().enumerate() {
        let single: Vec<Vec<f32>> = xs
            .iter()
            .map(|x| x.iter().map(|v| v * s).collect())
            .collect();
        let refs: Vec<&[f32]> = single.iter().map(|v| &v[..]).collect();
        let one = e.run(&refs, 1).unwrap();
        for (o, t3) in one.iter().zip(&got3) {
            let per = numel(o.shape());
            let a = &t3.as_f32().unwrap()[i * per..(i + 1) * per];
            let b = o.as_f32().unwrap();
            let worst = a
                .iter()
                .zip(b.iter())
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            assert!(
                worst <= 1e-6,
                "{name} ({what}): sample {i} of a batch differs from it alone by {worst}"
            );
        }
    }
}

#[test]
fn fixtures_match_tensorflow() {
    let stats: Vec<Vec<EngineStats>> = FIXTURES.iter().map(|n| check(n)).collect();
    // The forced modes did run Winograd somewhere (the fixtures' 3x3 convs).
    for mode in [2, 3] {
        assert!(
            stats.iter().any(|s| s[mode].winograd_steps > 0),
            "{stats:?}"
        );
    }
    assert!(stats.iter().all(|s| s[1].winograd_steps == 0), "{stats:?}");
}

#[test]
fn real_facenet_matches_tensorflow() {
    let stats = check("facenet");
    // By default FaceNet's 3x3 stride-1 convolutions with >= 32 x 32
    // channels on maps of >= 16 tiles go through F(4x4): Conv2d_2a/2b/4a,
    // block35's three per block (x5) and Mixed_6a's; not Mixed_7a's (8x8).
    assert_eq!(stats[0].winograd_steps, 19, "{:?}", stats[0]);
    // Every Inception branch that ends in a convolution writes straight
    // into its block's concatenation: block35 x5 (3 branches), block17 x10
    // (2), block8 x5 + Block8 (2), Mixed_6a (2 of 3, the third is a max
    // pool) and Mixed_7a (3 of 4). In every mode.
    // The first 1x1 convolution of each branch runs in one gemm with its
    // siblings': block35 x5 (3 -> 1), block17 x10 and block8 x6 (2 -> 1),
    // Mixed_7a (3 -> 1).
    // The 1x7 and 7x1 of block17 x10 (8x8 maps) and the 1x3 and 3x1 of
    // block8 x6 (3x3 maps) skip the taps in their padding, or go through
    // 1-D Winograd transforms: by default block17's by F(4, 7) (2.2x fewer
    // products), not block8's (a 3-long line: 6 products against 7);
    // without Winograd none; forced, all of them.
    for s in &stats {
        assert_eq!(s.concat_parts_in_place, 52, "{s:?}");
        assert_eq!(s.merged_siblings, 28, "{s:?}");
        assert_eq!(s.line_steps + s.line_winograd_steps, 32, "{s:?}");
    }
    let line_winograd: Vec<usize> = stats.iter().map(|s| s.line_winograd_steps).collect();
    assert_eq!(line_winograd, [20, 0, 32, 32]);
    assert!(stats[3].winograd_steps >= stats[0].winograd_steps);
}

/// Without folding, batch norms and bias adds run on the fallback path
/// (the reference kernels, sample by sample) between fast convolutions.
#[test]
fn unfolded_graph_runs_with_fallbacks() {
    for name in ["inception_resnet_v1_fused", "decomposed_bn", "misc_ops"] {
        let case = ReferenceCase::load(&case_dir(name)).unwrap();
        let mut g = faceall::frontend::tf::load(&case.model, &Default::default()).unwrap();
        let opts = faceall::passes::PassOptions::default()
            .without("fold_batch_norm")
            .without("fold_bias");
        faceall::passes::run(&mut g, &opts).unwrap();
        let e = Engine::compile(g).unwrap();
        assert!(e.stats().fallback_steps > 0, "{name}: {:?}", e.stats());
        let xs = inputs_for(&e, &case);
        let refs: Vec<&[f32]> = xs.iter().map(|v| &v[..]).collect();
        check_outputs(&case, &e, &e.run(&refs, 1).unwrap(), "unfolded");
        let twice: Vec<Vec<f32>> = xs.iter().map(|x| [&x[..], &x[..]].concat()).collect();
        let refs: Vec<&[f32]> = twice.iter().map(|v| &v[..]).collect();
        let got = e.run(&refs, 2).unwrap();
        for t in &got {
            let v = t.as_f32().unwrap();
            let half = v.len() / 2;
            assert_eq!(v[..half], v[half..], "{name}: two equal samples differ");
        }
    }
}

#[test]
fn wrong_input_sizes_are_errors() {
    let case = ReferenceCase::load(&case_dir("same_conv_stride2")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::compile(
        faceall::formats::bundle::read::load_owned(&convert(&case, dir.path())).unwrap(),
    )
    .unwrap();
    let per = numel(&e.inputs()[0].shape);
    let x = vec![0.0f32; per * 2 - 1];
    let err = e.run(&[&x], 2).unwrap_err().to_string();
    assert!(err.contains("needs"), "{err}");
    let err = e.run(&[], 1).unwrap_err().to_string();
    assert!(err.contains("takes 1 inputs"), "{err}");
}

/// `faceall bench` runs the fast engine on a bundle directory and reports
/// the JSON keys the benchmark script reads (no timing is asserted).
#[test]
fn bench_reports_engine_and_keys() {
    let case = ReferenceCase::load(&case_dir("inception_resnet_v1_fused")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    convert(&case, dir.path());
    let o = faceall(&[
        "bench",
        dir.path().to_str().unwrap(),
        "--batch",
        "4",
        "--iters",
        "2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["engine"], "fast engine (bundle)");
    assert_eq!(v["batch"], 4);
    assert!(v["ms_per_image"].as_f64().unwrap() > 0.0);
    assert!(v["images_per_second"].as_f64().unwrap() > 0.0);
    assert!(v["stats"]["gemm_steps"].as_u64().unwrap() > 0);
    assert_eq!(v["stats"]["fallback_steps"], 0);
}
