//! The CPU reference: every op written from its mathematical definition with
//! direct loops, generic over [`Real`] so gradient checks can run in `f64`.
//!
//! These functions check the GPU kernels, so they deliberately do not share the
//! GPU's algorithms (the convolution here never builds an im2col matrix).

mod activation;
mod backend;
mod batchnorm;
mod conv;
mod dropout;
mod fast;
mod gemm;
mod linear;
mod optim;
mod pool;
mod softmax;

pub use activation::{activation_backward, activation_forward};
pub use backend::CpuBackend;
pub use batchnorm::{batchnorm_backward, batchnorm_forward_eval, batchnorm_forward_train};
pub use conv::{col2im, conv2d_backward, conv2d_forward, im2col};
pub use dropout::{dropout_backward, dropout_forward};
pub use fast::unpacked::Rows;
pub use gemm::gemm;
pub use linear::{linear_backward, linear_forward};
pub use optim::{optimizer_update, optimizer_update_with};
pub use pool::{avgpool_backward, avgpool_forward, maxpool_backward, maxpool_forward};
pub use softmax::softmax_cross_entropy;

/// A float type the reference runs in: `f32` (to compare with the GPU) or
/// `f64` (for finite-difference gradient checks).
pub trait Real:
    num_traits::Float
    + Default
    + std::fmt::Debug
    + std::fmt::Display
    + std::iter::Sum
    + std::ops::AddAssign
    + Send
    + Sync
    + 'static
{
    /// Converts from `f64` (rounding for `f32`).
    fn from_f64(v: f64) -> Self;
    /// Widens to `f64`.
    fn to_f64(self) -> f64;
    /// Converts from `f32`.
    fn from_f32(v: f32) -> Self {
        Self::from_f64(v as f64)
    }
    /// Converts a count.
    fn from_usize(v: usize) -> Self {
        Self::from_f64(v as f64)
    }

    /// `C ← A·B + β·C` on strided slices (`A` is `m × k` with row/column
    /// strides `rsa`/`csa`, and so on), through an optimised GEMM.
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        m: usize,
        k: usize,
        n: usize,
        a: (&[Self], isize, isize),
        b: (&[Self], isize, isize),
        beta: Self,
        c: (&mut [Self], isize, isize),
    );

    /// Whether [`Real::matmul_unpacked`] and [`Real::dots_listed_rows`]
    /// run here (this type has the kernels, and the CPU their
    /// instructions).
    fn has_unpacked() -> bool {
        false
    }

    /// `C ← A·B + β·C` for `A (m, k)`, `B (k, n)` and row-major `C (m, n)`
    /// (row stride `ldc`), A's and B's rows where [`Rows`] puts them,
    /// through the unpacked SIMD kernels (`cpu/fast/unpacked.rs`); returns
    /// whether it ran (see [`Real::has_unpacked`]).
    fn matmul_unpacked(
        _shape: (usize, usize, usize),
        _a: (&[Self], Rows),
        _b: (&[Self], Rows),
        _beta: Self,
        _c: (&mut [Self], usize),
    ) -> bool {
        false
    }

    /// `C ← A·Bᵀ + β·C` as dot products, for row-major `A (m, k)` and
    /// `C (m, n)`, where B's row `r` is `b[starts[r]..][..k]`; returns
    /// whether it ran (see [`Real::has_unpacked`]).
    fn dots_listed_rows(
        _shape: (usize, usize, usize),
        _a: (&[Self], usize),
        _b: (&[Self], &[usize]),
        _beta: Self,
        _c: (&mut [Self], usize),
    ) -> bool {
        false
    }
}

/// Checks that the strided `rows × cols` matrix fits in `len` elements.
fn check_strided(len: usize, rows: usize, cols: usize, rs: isize, cs: isize) {
    if rows == 0 || cols == 0 {
        return;
    }
    let last = (rows as isize - 1) * rs + (cols as isize - 1) * cs;
    assert!(
        rs >= 0 && cs >= 0 && (last as usize) < len,
        "strided matrix exceeds its slice"
    );
}

/// [`fast::unpacked`] for a product it takes (few rows of C, A and C
/// row-major, B stored either way round), else `false`.
fn few_rows_f32(
    (m, k, n): (usize, usize, usize),
    a: (&[f32], isize, isize),
    b: (&[f32], isize, isize),
    beta: f32,
    c: (&mut [f32], isize, isize),
) -> bool {
    use fast::unpacked::{MAX_ROWS, few_rows_matmul, few_rows_matmul_transposed_b};
    // Narrower (shallower) products leave its vectors mostly empty.
    const MIN_LENGTH: usize = 16;
    let rows_fit = m <= MAX_ROWS && a.2 == 1 && c.2 == 1 && a.1 >= 0 && b.1 >= 0 && b.2 >= 0;
    if !rows_fit || c.1 < 0 {
        return false;
    }
    let (a, c) = ((a.0, a.1 as usize), (c.0, c.1 as usize));
    if b.2 == 1 && n >= MIN_LENGTH {
        few_rows_matmul((m, k, n), a, (b.0, b.1 as usize), beta, c)
    } else if b.1 == 1 && k >= MIN_LENGTH {
        few_rows_matmul_transposed_b((m, k, n), a, (b.0, b.2 as usize), beta, c)
    } else {
        false
    }
}

macro_rules! impl_matmul {
    ($t:ty, $gemm:path, $few_rows:expr) => {
        fn matmul(
            m: usize,
            k: usize,
            n: usize,
            a: (&[$t], isize, isize),
            b: (&[$t], isize, isize),
            beta: $t,
            c: (&mut [$t], isize, isize),
        ) {
            check_strided(a.0.len(), m, k, a.1, a.2);
            check_strided(b.0.len(), k, n, b.1, b.2);
            check_strided(c.0.len(), m, n, c.1, c.2);
            if $few_rows((m, k, n), a, b, beta, (&mut *c.0, c.1, c.2)) {
                return;
            }
            // SAFETY: every element addressed by the strides lies inside its
            // slice (checked above), and C's strides do not alias (rows and
            // columns of a row-major matrix).
            unsafe {
                $gemm(
                    m,
                    k,
                    n,
                    1.0,
                    a.0.as_ptr(),
                    a.1,
                    a.2,
                    b.0.as_ptr(),
                    b.1,
                    b.2,
                    beta,
                    c.0.as_mut_ptr(),
                    c.1,
                    c.2,
                )
            }
        }
    };
}

impl Real for f32 {
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    impl_matmul!(f32, matrixmultiply::sgemm, few_rows_f32);

    fn has_unpacked() -> bool {
        fast::unpacked::available()
    }

    fn matmul_unpacked(
        shape: (usize, usize, usize),
        a: (&[f32], Rows),
        b: (&[f32], Rows),
        beta: f32,
        c: (&mut [f32], usize),
    ) -> bool {
        fast::unpacked::matmul_unpacked(shape, a, b, beta, c)
    }

    fn dots_listed_rows(
        shape: (usize, usize, usize),
        a: (&[f32], usize),
        b: (&[f32], &[usize]),
        beta: f32,
        c: (&mut [f32], usize),
    ) -> bool {
        fast::unpacked::dots_listed_rows(shape, a, b, beta, c)
    }
}

impl Real for f64 {
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
    // The f64 path is for tests of precision; it keeps the one GEMM.
    impl_matmul!(f64, matrixmultiply::dgemm, |_, _, _, _, _| false);
}
