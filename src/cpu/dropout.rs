//! Inverted dropout with the mask drawn from [`crate::rng::dropout_keep`], the
//! same counter-based hash the GPU kernel uses.

use super::Real;
use crate::geometry::DropoutSettings;
use crate::rng::dropout_keep;
use crate::tensor::HostTensor;

/// `t[i] · keep(i) / (1 − p)` for every flat index `i`; the identity when `p = 0`.
fn apply_mask<F: Real>(t: &HostTensor<F>, d: &DropoutSettings) -> HostTensor<F> {
    if d.p == 0.0 {
        return t.clone();
    }
    assert!(
        t.len() <= u32::MAX as usize + 1,
        "dropout: {} elements exceed the u32 index space of the mask",
        t.len()
    );
    let scale = F::one() / (F::one() - F::from_f32(d.p));
    let data = t
        .data
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            if dropout_keep(d.seed, d.step, i as u32, d.p) {
                v * scale
            } else {
                F::zero()
            }
        })
        .collect();
    HostTensor::new(&t.shape, data)
}

/// `y[i] = x[i]·keep(seed, step, i, p)/(1 − p)`, same shape as `x`; the identity
/// when `p = 0`.
pub fn dropout_forward<F: Real>(x: &HostTensor<F>, d: &DropoutSettings) -> HostTensor<F> {
    apply_mask(x, d)
}

/// `dx[i] = dy[i]·keep(seed, step, i, p)/(1 − p)`, the forward's mask recomputed
/// from `(seed, step, i)`; same shape as `dy`.
pub fn dropout_backward<F: Real>(dy: &HostTensor<F>, d: &DropoutSettings) -> HostTensor<F> {
    apply_mask(dy, d)
}
