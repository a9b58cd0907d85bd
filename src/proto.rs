//! Protobuf messages generated at build time from `proto/` (pure Rust, no protoc).
#![allow(clippy::all, missing_docs, unused_qualifications)]

include!(concat!(env!("OUT_DIR"), "/protos/mod.rs"));
