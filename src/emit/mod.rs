//! Emitters: the IR after the passes, written for another framework.

pub mod caffe;
pub mod coreml;
pub mod files;
pub mod layout;
pub mod safetensors;
