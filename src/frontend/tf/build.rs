//! Small GraphDef builders so hand-made graphs in tests are one-liners.

use bytes::Bytes;

use crate::proto::graph::{
    attr_value, AttrValue, DataType, GraphDef, NodeDef, TensorProto, TensorShapeProto,
};

fn attr(v: attr_value::Value) -> AttrValue {
    let mut a = AttrValue::new();
    a.value = Some(v);
    a
}

pub fn shape_proto(dims: &[i64]) -> TensorShapeProto {
    let mut s = TensorShapeProto::new();
    for &d in dims {
        let mut dim = crate::proto::graph::tensor_shape_proto::Dim::new();
        dim.size = d;
        s.dim.push(dim);
    }
    s
}

/// A float32 TensorProto with raw content.
pub fn f32_tensor(dims: &[i64], values: &[f32]) -> TensorProto {
    let mut t = TensorProto::new();
    t.dtype = DataType::DT_FLOAT.into();
    t.tensor_shape = Some(shape_proto(dims)).into();
    t.tensor_content = Bytes::from(
        values
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    );
    t
}

/// An int32 TensorProto from `int_val`.
pub fn i32_tensor(dims: &[i64], values: &[i32]) -> TensorProto {
    let mut t = TensorProto::new();
    t.dtype = DataType::DT_INT32.into();
    t.tensor_shape = Some(shape_proto(dims)).into();
    t.int_val = values.to_vec();
    t
}

/// A NodeDef under construction.
pub struct NodeBuilder(NodeDef);

impl NodeBuilder {
    pub fn new(name: &str, op: &str, inputs: &[&str]) -> Self {
        let mut n = NodeDef::new();
        n.name = name.into();
        n.op = op.into();
        n.input = inputs.iter().map(|s| s.to_string()).collect();
        NodeBuilder(n)
    }
    pub fn attr_s(mut self, k: &str, v: &str) -> Self {
        self.0.attr.insert(
            k.into(),
            attr(attr_value::Value::S(Bytes::from(v.as_bytes().to_vec()))),
        );
        self
    }
    pub fn attr_int(mut self, k: &str, v: i64) -> Self {
        self.0.attr.insert(k.into(), attr(attr_value::Value::I(v)));
        self
    }
    pub fn attr_ints(mut self, k: &str, v: &[i64]) -> Self {
        let mut l = crate::proto::graph::attr_value::ListValue::new();
        l.i = v.to_vec();
        self.0
            .attr
            .insert(k.into(), attr(attr_value::Value::List(l)));
        self
    }
    pub fn attr_type(mut self, k: &str, v: DataType) -> Self {
        self.0
            .attr
            .insert(k.into(), attr(attr_value::Value::Type(v.into())));
        self
    }
    pub fn attr_shape(mut self, k: &str, dims: &[i64]) -> Self {
        self.0
            .attr
            .insert(k.into(), attr(attr_value::Value::Shape(shape_proto(dims))));
        self
    }
    pub fn attr_tensor(mut self, k: &str, t: TensorProto) -> Self {
        self.0
            .attr
            .insert(k.into(), attr(attr_value::Value::Tensor(t)));
        self
    }
    pub fn build(self) -> NodeDef {
        self.0
    }
}

pub fn placeholder(name: &str, dims: &[i64]) -> NodeDef {
    NodeBuilder::new(name, "Placeholder", &[])
        .attr_type("dtype", DataType::DT_FLOAT)
        .attr_shape("shape", dims)
        .build()
}

pub fn constant(name: &str, t: TensorProto) -> NodeDef {
    let dt = t.dtype;
    let mut n = NodeBuilder::new(name, "Const", &[])
        .attr_tensor("value", t)
        .build();
    n.attr
        .insert("dtype".into(), attr(attr_value::Value::Type(dt)));
    n
}

pub fn graph(nodes: Vec<NodeDef>) -> GraphDef {
    let mut g = GraphDef::new();
    g.node = nodes;
    g
}

pub fn to_bytes(g: &GraphDef) -> Vec<u8> {
    use protobuf::Message;
    g.write_to_bytes().unwrap_or_default()
}
