//! A host tensor: a shape and its elements in row-major order.

/// A dense row-major tensor in host memory, generic over the element type so the
/// CPU reference can run in `f32` (to compare with the GPU) or `f64` (for
/// finite-difference gradient checks).
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor<F> {
    /// Extent of each dimension, outermost first (NCHW for images).
    pub shape: Vec<usize>,
    /// `shape.iter().product()` elements, row-major.
    pub data: Vec<F>,
}

impl<F: Copy + Default> HostTensor<F> {
    /// A tensor of `shape` filled with `F::default()` (zero for floats).
    pub fn zeros(shape: &[usize]) -> Self {
        Self {
            shape: shape.to_vec(),
            data: vec![F::default(); shape.iter().product()],
        }
    }
}

impl<F> HostTensor<F> {
    /// Wraps `data` as a tensor of `shape`.
    ///
    /// # Panics
    /// When `data.len()` is not the product of `shape`: that is a bug in the caller.
    pub fn new(shape: &[usize], data: Vec<F>) -> Self {
        let len: usize = shape.iter().product();
        assert_eq!(
            data.len(),
            len,
            "tensor data has {} elements, shape {:?} needs {}",
            data.len(),
            shape,
            len
        );
        Self {
            shape: shape.to_vec(),
            data,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when the tensor holds no element.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Converts every element with `f` (e.g. `f32` → `f64` for gradient checks).
    pub fn map<G>(&self, f: impl Fn(&F) -> G) -> HostTensor<G> {
        HostTensor {
            shape: self.shape.clone(),
            data: self.data.iter().map(f).collect(),
        }
    }
}

/// Formats a shape as `2x3x5x7`.
pub fn shape_string(shape: &[usize]) -> String {
    shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x")
}
