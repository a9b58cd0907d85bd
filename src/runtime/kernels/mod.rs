//! CPU kernels with TensorFlow's semantics, on contiguous f32 buffers.
//! Activations are NHWC here; callers transpose other layouts. Kept apart
//! from the executor so a faster engine can replace them one by one.

mod conv;
mod elementwise;
pub mod gemm;
mod pool;
pub mod resize;
mod shape;
pub mod team;
pub mod winograd;
pub mod winograd_line;

pub use conv::{
    conv2d_nhwc, conv_nchw, deconv2d_nhwc, deconv_nchw, depthwise_nhwc, matmul, ConvGeometry,
    DeconvGeometry,
};
pub use elementwise::{
    activation, batch_norm, bias_add, binary, softmax_last, unary, weighted_sum_into,
};
pub use pool::{pool_nhwc, pool_nhwc_into};
pub use resize::{resize_nhwc, space_depth_nhwc};
pub use shape::{concat, nchw_to_nhwc, nhwc_to_nchw, pad, reduce, slice, tile, transpose};

/// Outputs (floats) from which row-wise kernels split rows across threads.
const PARALLEL_FROM: usize = 1 << 15;

/// `f((index, row))` for each `row_len`-float row of `out`, in parallel when
/// `out` is big enough to pay for it. Rows are independent, so the result
/// does not depend on the split.
pub fn for_each_row(
    out: &mut [f32],
    row_len: usize,
    f: impl Fn((usize, &mut [f32])) + Sync + Send,
) {
    if row_len == 0 {
        return;
    }
    if out.len() >= PARALLEL_FROM {
        use rayon::prelude::*;
        out.par_chunks_mut(row_len).enumerate().for_each(f);
    } else {
        out.chunks_mut(row_len).enumerate().for_each(f);
    }
}
