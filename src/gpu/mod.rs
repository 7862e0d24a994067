//! The GPU path: WGSL kernels (`shaders/`) dispatched through wgpu.
//!
//! [`GpuContext`] owns the device and the plumbing every kernel family uses;
//! one module per family records its dispatches; [`GpuBackend`] implements
//! [`crate::backend::Backend`] on top of them.

mod adapter;
mod backend;
pub mod batchnorm;
pub mod context;
pub mod conv;
mod derived;
pub mod direct_conv;
pub mod elementwise;
pub mod gemm;
mod gemm_operand;
pub mod gemm_source;
pub mod linear;
pub mod modules;
pub mod optim;
pub mod peak;
pub mod pool;
pub mod precompile;
pub mod reduce;
pub mod softmax;
mod tensor;
pub mod timer;
pub mod tune;
mod workgroup_sum;

pub use adapter::{AdapterSummary, list_adapters};
pub use backend::GpuBackend;
pub use context::{GpuContext, GpuCounters};
pub use tensor::{GpuIndices, GpuTensor};
pub use timer::GpuTimer;
