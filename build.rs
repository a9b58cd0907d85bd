//! Generates the protobuf messages in `proto/` with rust-protobuf's pure-Rust
//! parser: no system `protoc` is needed. `bytes` fields become `bytes::Bytes`
//! so weights decoded from a memory-mapped file are slices of it, not copies.

fn main() {
    let protos = [
        "proto/tensorflow/graph.proto",
        "proto/tensorflow/saved_model.proto",
        "proto/caffe/caffe.proto",
        "proto/coreml/mil.proto",
        "proto/coreml/coreml.proto",
        "proto/onnx/onnx.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    protobuf_codegen::Codegen::new()
        .pure()
        .includes(["proto"])
        .inputs(protos)
        .customize(protobuf_codegen::Customize::default().tokio_bytes(true))
        .cargo_out_dir("protos")
        .run_from_script();
}
