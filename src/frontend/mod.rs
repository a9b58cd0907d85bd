//! Readers of source models into the IR.

pub mod tf;
