//! Property test over mutated GraphDef bytes: reading, importing and (when
//! it imports) running a damaged graph must return errors, never panic.

use std::collections::HashMap;

use bytes::Bytes;
use faceall::frontend::tf;
use faceall::ir::Tensor;
use proptest::prelude::*;

mod common;
use common::mutate::{apply, mutation};

fn seeds() -> Vec<Vec<u8>> {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    [
        "misc_ops",
        "matmul_bn",
        "same_conv_stride2",
        "depthwise_relu6",
        "pool_floor",
        "decomposed_bn",
    ]
    .iter()
    .map(|c| std::fs::read(root.join(c).join("model.pb")).unwrap())
    .collect()
}

#[derive(Default, Debug)]
struct Reached {
    parsed: usize,
    imported: usize,
    ran: usize,
}

fn exercise(bytes: Vec<u8>, r: &mut Reached) {
    let Ok(gd) = tf::parse_graph_def(&Bytes::from(bytes)) else {
        return;
    };
    r.parsed += 1;
    let Ok(graph) = tf::import(&gd, &tf::LoadOptions::default()) else {
        return;
    };
    r.imported += 1;
    let mut feeds = HashMap::new();
    for &i in &graph.inputs {
        let f = &graph.nodes[i].outputs[0];
        let n: usize = f.shape.iter().product();
        if n > 100_000 || f.dtype != faceall::ir::DType::F32 {
            return;
        }
        feeds.insert(
            graph.nodes[i].name.clone(),
            Tensor::f32(f.shape.clone(), vec![0.5; n]).unwrap(),
        );
    }
    // Skip graphs whose values would be huge (a mutated shape can ask for GBs).
    let big = graph.nodes.iter().any(|n| {
        n.outputs.iter().any(|f| {
            f.shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .is_none_or(|v| v > 1_000_000)
        })
    });
    if big {
        return;
    }
    let names: Vec<String> = graph.outputs.iter().map(|w| graph.wire_name(*w)).collect();
    let _ = faceall::runtime::run(&graph, &feeds, &names);
    r.ran += 1;
}

#[test]
fn mutated_graphdefs_never_panic() {
    use proptest::test_runner::{Config, TestRunner};
    let s = seeds();
    let mut runner = TestRunner::new(Config {
        cases: 20000,
        failure_persistence: None,
        ..Config::default()
    });
    let reached = std::cell::RefCell::new(Reached::default());
    runner
        .run(
            &(0usize..s.len(), prop::collection::vec(mutation(), 1..4)),
            |(seed, ms)| {
                exercise(apply(s[seed].clone(), &ms), &mut reached.borrow_mut());
                Ok(())
            },
        )
        .unwrap();
    let r = reached.into_inner();
    eprintln!("{r:?}");
    // The mutations must reach past the protobuf decoder often enough to test the importer and executor.
    assert!(r.imported > 500 && r.ran > 300, "{r:?}");
}
