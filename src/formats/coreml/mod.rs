//! Core ML NeuralNetwork (`NAME.mlmodel`, specification version 1): `write`
//! turns the IR into a `Model`, `exec` reads one back and runs it with Core
//! ML's semantics (Core ML itself runs only on Apple systems).

pub mod exec;
pub mod write;
