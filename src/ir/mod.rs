//! faceall's framework-neutral IR: tensors, ops, graph.

pub mod graph;
pub mod op;
pub mod tensor;

pub use graph::{split_tensor_name, Graph, Node, Stats, Wire};
pub use op::*;
pub use tensor::{numel, DType, Data, Tensor};
