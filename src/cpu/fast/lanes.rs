//! Sums in a fixed number of partial sums, so they vectorise (a single
//! running sum is a chain of dependent adds) and still come out the same on
//! every run and machine.

use crate::cpu::Real;

/// Partial sums per sum: one vector register of f32 on AVX2.
pub(super) const LANES: usize = 8;

/// Adds `term(a[i], b[i])` into `lanes[i % LANES]` (`a` and `b` of one length).
pub(super) fn add_lanes<F: Real>(
    lanes: &mut [F; LANES],
    a: &[F],
    b: &[F],
    term: impl Fn(F, F) -> F,
) {
    debug_assert_eq!(a.len(), b.len());
    let (mut a_chunks, mut b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    for (a, b) in (&mut a_chunks).zip(&mut b_chunks) {
        for ((lane, &a), &b) in lanes.iter_mut().zip(a).zip(b) {
            *lane += term(a, b);
        }
    }
    let tails = a_chunks.remainder().iter().zip(b_chunks.remainder());
    for (lane, (&a, &b)) in lanes.iter_mut().zip(tails) {
        *lane += term(a, b);
    }
}

/// The sum of `lanes`, in lane order.
pub(super) fn total<F: Real>(lanes: [F; LANES]) -> F {
    lanes.into_iter().fold(F::zero(), |sum, v| sum + v)
}

/// `Σ values`, in [`LANES`] partial sums.
pub(super) fn sum<F: Real>(values: &[F]) -> F {
    let mut lanes = [F::zero(); LANES];
    add_lanes(&mut lanes, values, values, |v, _| v);
    total(lanes)
}
