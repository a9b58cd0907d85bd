//! CPU kernels with TensorFlow's semantics, on contiguous f32 buffers.
//! Activations are NHWC here; callers transpose other layouts. Kept apart
//! from the executor so a faster engine can replace them one by one.

mod conv;
mod elementwise;
pub mod gemm;
mod pool;
mod shape;
pub mod winograd;

pub use conv::{conv2d_nhwc, conv_nchw, depthwise_nhwc, matmul, ConvGeometry};
pub use elementwise::{
    activation, batch_norm, bias_add, binary, softmax_last, unary, weighted_sum_into,
};
pub use pool::{pool_nhwc, pool_nhwc_into};
pub use shape::{concat, nchw_to_nhwc, nhwc_to_nchw, pad, reduce, transpose};
