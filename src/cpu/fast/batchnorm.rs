//! Batch normalisation's loops for the CPU training path
//! ([`ElementLoops`]; the checks and per-channel arithmetic around them are
//! the reference's, in `cpu/batchnorm.rs`). Each channel's sums run over
//! whole planes in [`LANES`] partial sums (the reference keeps one running
//! sum), per-channel factors are folded once per plane, and channels (for
//! sums) or images (for element passes) are split over the cores. Every
//! value is computed in a fixed order, whatever the number of cores.

use rayon::prelude::*;

use super::lanes::{LANES, add_lanes, total};
use crate::cpu::Real;
use crate::cpu::batchnorm::ElementLoops;
use crate::geometry::BatchNormLayout;
use crate::tensor::HostTensor;

/// The training path's loops.
pub(in crate::cpu) struct Vectorised;

/// Channel `c`'s plane of image `n` (`S` contiguous values).
fn plane<'a, F>(l: &BatchNormLayout, values: &'a [F], n: usize, c: usize) -> &'a [F] {
    &values[(n * l.channels + c) * l.spatial..][..l.spatial]
}

/// `f(c)` for every channel, in channel order, channels split over the cores.
fn per_channel<T: Send>(l: &BatchNormLayout, f: impl Fn(usize) -> T + Sync + Send) -> Vec<T> {
    (0..l.channels).into_par_iter().map(f).collect()
}

/// A tensor shaped like `x` whose plane `(n, c)` holds `values(c, n)`,
/// written once (no zero fill first), images split over the cores.
fn per_plane<F: Real, I: Iterator<Item = F>>(
    l: &BatchNormLayout,
    x: &HostTensor<F>,
    values: impl Fn(usize, usize) -> I + Sync + Send,
) -> HostTensor<F> {
    HostTensor::from_runs(&x.shape, l.spatial, l.channels, |p| {
        values(p % l.channels, p / l.channels)
    })
}

impl ElementLoops for Vectorised {
    fn statistics<F: Real>(l: &BatchNormLayout, x: &HostTensor<F>) -> Vec<(F, F)> {
        let m_count = F::from_usize(l.count());
        per_channel(l, |c| {
            let mut sums = [F::zero(); LANES];
            for n in 0..l.batch {
                let x_p = plane(l, &x.data, n, c);
                add_lanes(&mut sums, x_p, x_p, |v, _| v);
            }
            let mean = total(sums) / m_count;
            let mut squares = [F::zero(); LANES];
            for n in 0..l.batch {
                let x_p = plane(l, &x.data, n, c);
                add_lanes(&mut squares, x_p, x_p, |v, _| (v - mean) * (v - mean));
            }
            (mean, total(squares) / m_count)
        })
    }

    /// As `then((x − mean)·(γ·invstd) + β)`.
    fn normalise<F: Real>(
        l: &BatchNormLayout,
        x: &HostTensor<F>,
        (gamma, beta): (&[F], &[F]),
        (mean, invstd): (&[F], &[F]),
        then: impl Fn(F) -> F + Sync + Send + Copy,
    ) -> HostTensor<F> {
        per_plane(l, x, |c, n| {
            let (shift, scale, offset) = (mean[c], gamma[c] * invstd[c], beta[c]);
            let x_p = plane(l, &x.data, n, c);
            x_p.iter().map(move |&v| then((v - shift) * scale + offset))
        })
    }

    /// `dγ` as `invstd·Σ dy·(x − mean)`.
    fn parameter_grads<F: Real>(
        l: &BatchNormLayout,
        x: &HostTensor<F>,
        dy: &HostTensor<F>,
        mean: &[F],
        invstd: &[F],
    ) -> Vec<(F, F)> {
        per_channel(l, |c| {
            let mu = mean[c];
            let (mut dbeta, mut dgamma) = ([F::zero(); LANES], [F::zero(); LANES]);
            for n in 0..l.batch {
                let (dy_p, x_p) = (plane(l, &dy.data, n, c), plane(l, &x.data, n, c));
                add_lanes(&mut dbeta, dy_p, dy_p, |d, _| d);
                add_lanes(&mut dgamma, dy_p, x_p, |d, v| d * (v - mu));
            }
            (total(dbeta), total(dgamma) * invstd[c])
        })
    }

    /// In training as `g·dy − g·dβ/M − (g·invstd·dγ/M)·(x − mean)` with
    /// `g = γ·invstd`.
    fn input_grad<F: Real>(
        l: &BatchNormLayout,
        x: &HostTensor<F>,
        dy: &HostTensor<F>,
        gamma: &[F],
        (mean, invstd): (&[F], &[F]),
        sums: Option<(&[F], &[F])>,
    ) -> HostTensor<F> {
        let m_count = F::from_usize(l.count());
        match sums {
            Some((dbeta, dgamma)) => per_plane(l, x, |c, n| {
                let g = gamma[c] * invstd[c];
                let offset = g * dbeta[c] / m_count;
                let slope = g * invstd[c] * dgamma[c] / m_count;
                let mu = mean[c];
                let (dy_p, x_p) = (plane(l, &dy.data, n, c), plane(l, &x.data, n, c));
                dy_p.iter()
                    .zip(x_p)
                    .map(move |(&d, &v)| g * d - offset - slope * (v - mu))
            }),
            None => per_plane(l, x, |c, n| {
                let g = gamma[c] * invstd[c];
                plane(l, &dy.data, n, c).iter().map(move |&d| g * d)
            }),
        }
    }
}
