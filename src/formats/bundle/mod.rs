//! faceall's bundle: `NAME.graph.json` (the IR after the passes) and
//! `NAME.safetensors` (its constants). `write` produces both, `read` loads
//! them back into the IR (weights memory-mapped) for the engine.

pub mod read;
pub mod write;
