//! wgcnn: convolutional neural networks trained through wgpu compute shaders,
//! with a CPU reference that checks every GPU result.
//!
//! The spine is [`backend::Backend`]: every op of the classic CNN backprop
//! derivation, implemented by [`cpu::CpuBackend`] (direct loops from the
//! definitions) and [`gpu::GpuBackend`] (WGSL kernels in `shaders/`).
#![warn(missing_docs)]

pub mod backend;
pub mod bench;
pub mod check;
pub mod checkpoint;
pub mod cpu;
pub mod data;
pub mod dirs;
pub mod error;
pub mod fetch;
pub mod fnv;
pub mod geometry;
pub mod gpu;
pub mod host_memory;
pub mod interrupt;
pub mod nn;
pub mod optim;
pub mod plot;
pub mod rng;
pub mod tensor;
pub mod train;

pub use error::{Error, Result};
