//! Caffe: `NAME.prototxt` + `NAME.caffemodel`, in the dialect both BVLC
//! Caffe and OpenCV 4.x's importer accept. `write` turns the IR into a
//! `NetParameter`, `exec` runs one with Caffe's semantics (for
//! verify-parity, bench and FaceAll's MTCNN), `model` reads the files.

pub mod exec;
pub mod model;
pub mod write;
