//! Face detection.

pub mod mtcnn;
