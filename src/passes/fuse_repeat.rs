//! `tf.repeat` of an NHWC map's rows or columns (Keras 3's nearest
//! `UpSampling2D`): ExpandDims after the axis, Tile of the new unit axis by
//! `r`, Reshape merging the two, becomes one nearest Resize by `r` on that
//! axis. Each pixel repeated `r` times is exactly what a nearest resize by
//! a whole factor computes, and every target has that (Caffe a Deconvolution
//! of ones, Core ML upsample, ONNX Resize), where a 5-D Tile has none.

use super::Rewrite;
use crate::error::Result;
use crate::ir::{Graph, Op, Resize, ResizeMode, Wire};

/// (the Tile's input, its 4-D shape without the unit axis, [height, width]
/// after) if Reshape node `r` ends the pattern. The Tile's input is x with
/// a unit axis after the repeated one, however it was made (ExpandDims, or
/// a Reshape that `remove_identity` merged with the previous repeat's).
fn matches(g: &Graph, r: usize) -> Option<(Wire, Vec<usize>, [usize; 2])> {
    let n = &g.nodes[r];
    let Op::Reshape { shape } = &n.op else {
        return None;
    };
    let t = n.inputs[0];
    let tile = &g.nodes[t.node];
    let Op::Tile { multiples } = &tile.op else {
        return None;
    };
    if !g.single_use(t) {
        return None;
    }
    let e = tile.inputs[0];
    let s5 = &g.fact(e).ok()?.shape;
    // The unit axis p that is tiled; it follows height (p = 2) or width (3).
    let p = multiples.iter().position(|&m| m != 1)?;
    if s5.len() != 5 || s5[p] != 1 || !(2..=3).contains(&p) {
        return None;
    }
    if multiples.iter().enumerate().any(|(i, &m)| i != p && m != 1) {
        return None;
    }
    let mut s4 = s5.clone();
    s4.remove(p);
    let mut want = s4.clone();
    want[p - 1] *= multiples[p];
    if shape != &want {
        return None;
    }
    Some((e, s4, [want[1], want[2]]))
}

pub fn run(g: &mut Graph, log: &mut Vec<Rewrite>) -> Result<usize> {
    let mut changed = 0;
    for i in 0..g.nodes.len() {
        let Some((e, s4, size)) = matches(g, i) else {
            continue;
        };
        // Half-pixel nearest by a whole factor is a repeat in TF's float32
        // arithmetic for every factor (the legacy rule reads early for some,
        // 41, 47, ...); checked, not assumed.
        let r = Resize {
            mode: ResizeMode::Nearest,
            size,
            align_corners: false,
            half_pixel_centers: true,
        };
        if r.whole_factors([s4[1], s4[2]]).is_none() {
            continue;
        }
        // The map itself: the Tile's input without its unit axis (a
        // reshape that remove_identity folds into the one before it).
        let name = g.fresh_name(&format!("{}/map", g.nodes[i].name));
        let m = g.push(name, "Reshape", Op::Reshape { shape: s4 }, vec![e])?;
        let n = &mut g.nodes[i];
        n.op = Op::Resize(r);
        n.inputs = vec![Wire { node: m, slot: 0 }];
        log.push(Rewrite {
            pass: "fuse_repeat",
            node: n.name.clone(),
            detail: format!("Tile of an inserted axis + Reshape -> nearest resize to {size:?}"),
        });
        changed += 1;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Fact, Node, Tensor};

    /// tf.repeat by 41 (a factor TF's legacy nearest rule reads early for)
    /// becomes a resize that still repeats every pixel 41 times.
    #[test]
    fn a_repeat_becomes_a_resize_with_the_same_values() {
        let mut g = Graph::default();
        g.nodes.push(Node::new(
            "x".into(),
            "Placeholder".into(),
            Op::Input,
            vec![],
            vec![Fact::f32(vec![1, 2, 3, 2])],
        ));
        let x = Wire { node: 0, slot: 0 };
        let e = g.push("e", "ExpandDims", Op::ExpandDims { axis: 2 }, vec![x]);
        let e = Wire {
            node: e.unwrap(),
            slot: 0,
        };
        let multiples = vec![1, 1, 41, 1, 1];
        let t = g.push("t", "Tile", Op::Tile { multiples }, vec![e]);
        let t = Wire {
            node: t.unwrap(),
            slot: 0,
        };
        let shape = vec![1, 82, 3, 2];
        let r = g
            .push("r", "Reshape", Op::Reshape { shape }, vec![t])
            .unwrap();
        g.outputs = vec![Wire { node: r, slot: 0 }];
        let feed: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let feeds = [(
            "x".to_string(),
            Tensor::f32(vec![1, 2, 3, 2], feed).unwrap(),
        )]
        .into();
        let fetch = ["r".to_string()];
        let before = crate::runtime::run(&g, &feeds, &fetch).unwrap();
        let report = crate::passes::run(&mut g, &Default::default()).unwrap();
        assert_eq!(report.count("fuse_repeat"), 1);
        let resized = g.node_by_name("r").unwrap();
        assert!(matches!(g.nodes[resized].op, Op::Resize(_)));
        let after = crate::runtime::run(&g, &feeds, &fetch).unwrap();
        assert_eq!(
            before[0].as_f32().unwrap().as_ref(),
            after[0].as_f32().unwrap().as_ref()
        );
    }
}
