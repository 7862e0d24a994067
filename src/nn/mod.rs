//! Layers written once over [`crate::backend::Backend`], the sequential model,
//! and model descriptions.

mod layer;
mod sequential;
pub mod spec;

pub use layer::{Mode, Param};
pub use sequential::{Sequential, StateDict, init_parameters};
pub use spec::{LayerSpec, ModelSpec};
