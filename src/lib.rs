//! faceall: convert TensorFlow face-recognition graphs, prove the conversion
//! numerically, and serve the result.
//!
//! Data flows `frontend` -> `ir` -> (passes) -> emitters; `runtime` executes
//! the IR with TensorFlow's semantics so any intermediate value can be
//! compared with a converted model.

pub mod detect;
pub mod error;
pub mod formats;
pub mod frontend;
pub mod ir;
pub mod npy;
pub mod parity;
pub mod passes;
pub mod preprocess;
pub mod proto;
pub mod runtime;
pub mod serve;

pub use error::{Error, Result};
