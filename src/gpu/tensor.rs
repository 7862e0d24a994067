//! Tensors that live in GPU buffers.

use std::sync::Arc;

use crate::backend::Shaped;

/// A float tensor in a GPU storage buffer. Cloning shares the buffer.
#[derive(Clone, Debug)]
pub struct GpuTensor {
    /// The storage buffer holding `shape.iter().product()` `f32` values.
    pub buffer: Arc<super::context::GpuBuffer>,
    /// Extent of each dimension, outermost first.
    pub shape: Vec<usize>,
}

impl GpuTensor {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when the tensor holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Shaped for GpuTensor {
    fn shape(&self) -> &[usize] {
        &self.shape
    }
}

/// A tensor of `u32` in a GPU storage buffer (labels, arg-max positions).
#[derive(Clone, Debug)]
pub struct GpuIndices {
    /// The storage buffer holding `len` `u32` values.
    pub buffer: Arc<super::context::GpuBuffer>,
    /// Number of values.
    pub len: usize,
}
