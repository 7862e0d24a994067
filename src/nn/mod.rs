//! Layers written once over [`crate::backend::Backend`], the sequential model,
//! model descriptions, model files and built-in architectures.

mod builtin;
pub mod file;
mod layer;
pub mod memory;
mod sequential;
pub mod spec;

pub use builtin::{BUILTIN_MODELS, builtin, default_model_name};
pub use layer::{Mode, Param};
pub use sequential::{Sequential, StateDict, init_parameters, parameter_shapes};
pub use spec::{LayerSpec, ModelSpec};
