//! Typed NodeDef attribute getters in pairs (required / optional); every
//! error names the node and op.

use crate::error::{Error, Result};
use crate::ir::{Layout, Padding};
use crate::proto::graph::{
    attr_value, AttrValue, DataType, NodeDef, TensorProto, TensorShapeProto,
};

pub fn err(node: &NodeDef, msg: impl Into<String>) -> Error {
    Error::node(&node.name, &node.op, msg)
}

fn get<'a>(node: &'a NodeDef, name: &str) -> Option<&'a AttrValue> {
    node.attr.get(name)
}

fn want<'a>(node: &'a NodeDef, name: &str) -> Result<&'a AttrValue> {
    get(node, name).ok_or_else(|| err(node, format!("missing attribute '{name}'")))
}

fn mismatch(node: &NodeDef, name: &str, kind: &str) -> Error {
    err(node, format!("attribute '{name}' is not {kind}"))
}

pub fn opt_i(node: &NodeDef, name: &str) -> Result<Option<i64>> {
    match get(node, name).and_then(|a| a.value.as_ref()) {
        None => Ok(None),
        Some(attr_value::Value::I(i)) => Ok(Some(*i)),
        Some(_) => Err(mismatch(node, name, "an int")),
    }
}

pub fn opt_f(node: &NodeDef, name: &str) -> Result<Option<f32>> {
    match get(node, name).and_then(|a| a.value.as_ref()) {
        None => Ok(None),
        Some(attr_value::Value::F(f)) => Ok(Some(*f)),
        Some(_) => Err(mismatch(node, name, "a float")),
    }
}

pub fn opt_b(node: &NodeDef, name: &str) -> Result<Option<bool>> {
    match get(node, name).and_then(|a| a.value.as_ref()) {
        None => Ok(None),
        Some(attr_value::Value::B(b)) => Ok(Some(*b)),
        Some(_) => Err(mismatch(node, name, "a bool")),
    }
}

pub fn opt_s(node: &NodeDef, name: &str) -> Result<Option<String>> {
    match get(node, name).and_then(|a| a.value.as_ref()) {
        None => Ok(None),
        Some(attr_value::Value::S(s)) => Ok(Some(String::from_utf8_lossy(s).into_owned())),
        Some(_) => Err(mismatch(node, name, "a string")),
    }
}

pub fn s(node: &NodeDef, name: &str) -> Result<String> {
    opt_s(node, name)?.ok_or_else(|| err(node, format!("missing attribute '{name}'")))
}

pub fn opt_ints(node: &NodeDef, name: &str) -> Result<Option<Vec<i64>>> {
    match get(node, name).and_then(|a| a.value.as_ref()) {
        None => Ok(None),
        Some(attr_value::Value::List(l)) => Ok(Some(l.i.clone())),
        Some(_) => Err(mismatch(node, name, "a list of ints")),
    }
}

pub fn ints(node: &NodeDef, name: &str) -> Result<Vec<i64>> {
    want(node, name)?;
    opt_ints(node, name)?.ok_or_else(|| mismatch(node, name, "a list of ints"))
}

pub fn opt_type(node: &NodeDef, name: &str) -> Result<Option<DataType>> {
    match get(node, name).and_then(|a| a.value.as_ref()) {
        None => Ok(None),
        Some(attr_value::Value::Type(t)) => t
            .enum_value()
            .map(Some)
            .map_err(|v| err(node, format!("attribute '{name}' has unknown dtype {v}"))),
        Some(_) => Err(mismatch(node, name, "a dtype")),
    }
}

pub fn opt_shape<'a>(node: &'a NodeDef, name: &str) -> Result<Option<&'a TensorShapeProto>> {
    match get(node, name).and_then(|a| a.value.as_ref()) {
        None => Ok(None),
        Some(attr_value::Value::Shape(s)) => Ok(Some(s)),
        Some(_) => Err(mismatch(node, name, "a shape")),
    }
}

pub fn tensor<'a>(node: &'a NodeDef, name: &str) -> Result<&'a TensorProto> {
    match want(node, name)?.value.as_ref() {
        Some(attr_value::Value::Tensor(t)) => Ok(t),
        _ => Err(mismatch(node, name, "a tensor")),
    }
}

/// `data_format`, NHWC by default as in TensorFlow.
pub fn layout(node: &NodeDef) -> Result<Layout> {
    match opt_s(node, "data_format")?.as_deref() {
        None | Some("NHWC") => Ok(Layout::Nhwc),
        Some("NCHW") => Ok(Layout::Nchw),
        Some(other) => Err(err(node, format!("data_format '{other}' is not supported"))),
    }
}

/// A 4-entry attribute (strides, ksize, dilations) as its two spatial values,
/// checking the batch and channel entries are 1.
pub fn spatial(
    node: &NodeDef,
    name: &str,
    layout: Layout,
    default: Option<[usize; 2]>,
) -> Result<[usize; 2]> {
    let v = match (opt_ints(node, name)?, default) {
        (Some(v), _) => v,
        (None, Some(d)) => return Ok(d),
        (None, None) => return Err(err(node, format!("missing attribute '{name}'"))),
    };
    if v.len() != 4 || v.iter().any(|&x| x < 1) {
        return Err(err(
            node,
            format!("attribute '{name}' must hold 4 positive ints, has {v:?}"),
        ));
    }
    let [h, w, c] = layout.hwc();
    if v[0] != 1 || v[c] != 1 {
        return Err(err(
            node,
            format!("{name} {v:?} on the batch or channel axis is not supported"),
        ));
    }
    Ok([v[h] as usize, v[w] as usize])
}

/// `padding` (+ `explicit_paddings`).
pub fn padding(node: &NodeDef, layout: Layout) -> Result<Padding> {
    match s(node, "padding")?.as_str() {
        "SAME" => Ok(Padding::Same),
        "VALID" => Ok(Padding::Valid),
        "EXPLICIT" => {
            let p = ints(node, "explicit_paddings")?;
            if p.len() != 8 || p.iter().any(|&x| x < 0) {
                return Err(err(
                    node,
                    format!("explicit_paddings must hold 8 non-negative ints, has {p:?}"),
                ));
            }
            let [h, w, c] = layout.hwc();
            if p[0] != 0 || p[1] != 0 || p[2 * c] != 0 || p[2 * c + 1] != 0 {
                return Err(err(
                    node,
                    "padding on the batch or channel axis is not supported",
                ));
            }
            Ok(Padding::Explicit([
                [p[2 * h] as usize, p[2 * h + 1] as usize],
                [p[2 * w] as usize, p[2 * w + 1] as usize],
            ]))
        }
        other => Err(err(node, format!("padding '{other}' is not supported"))),
    }
}
