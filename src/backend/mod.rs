//! Compute backends. `cpu` is the reference and the CPU fast paths.

pub mod cpu;
