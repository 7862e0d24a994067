//! Matrix product from the definition: a triple loop.

use super::Real;
use crate::geometry::GemmSpec;
use crate::tensor::HostTensor;

/// `C[i, j] = Σ_l op(A)[i, l]·op(B)[l, j]`, `(m, k)·(k, n) → (m, n)`.
///
/// `A` is stored as `spec.a_shape()` (`(k, m)` when `trans_a`), `B` as
/// `spec.b_shape()` (`(n, k)` when `trans_b`).
pub fn gemm<F: Real>(a: &HostTensor<F>, b: &HostTensor<F>, spec: &GemmSpec) -> HostTensor<F> {
    assert_eq!(
        a.shape,
        spec.a_shape(),
        "gemm ({}): A has shape {:?}, spec {:?} needs {:?}",
        spec.case_name(),
        a.shape,
        spec,
        spec.a_shape()
    );
    assert_eq!(
        b.shape,
        spec.b_shape(),
        "gemm ({}): B has shape {:?}, spec {:?} needs {:?}",
        spec.case_name(),
        b.shape,
        spec,
        spec.b_shape()
    );
    let (m, n, k) = (spec.m, spec.n, spec.k);
    // op(A)[i, l]
    let a_at = |i: usize, l: usize| {
        if spec.trans_a {
            a.data[l * m + i]
        } else {
            a.data[i * k + l]
        }
    };
    // op(B)[l, j]
    let b_at = |l: usize, j: usize| {
        if spec.trans_b {
            b.data[j * k + l]
        } else {
            b.data[l * n + j]
        }
    };
    let mut c = HostTensor::zeros(&[m, n]);
    for i in 0..m {
        for j in 0..n {
            let mut acc = F::zero();
            for l in 0..k {
                acc += a_at(i, l) * b_at(l, j);
            }
            c.data[i * n + j] = acc;
        }
    }
    c
}
