//! Batch normalisation for the CPU training path: the reference's formulas
//! ([`crate::cpu::batchnorm_forward_train`], [`crate::cpu::batchnorm_backward`])
//! written so the loops vectorise. Each channel's sums run over whole planes
//! in [`LANES`](super::lanes::LANES) partial sums (the reference keeps one running sum), the
//! per-channel factors are folded once per plane, and channels (for sums) or
//! images (for element passes) are split over the cores. Every value is
//! computed in a fixed order, whatever the number of cores.

use rayon::prelude::*;

use super::lanes::{LANES, add_lanes, total};
use crate::backend::{BatchNormGrads, BatchNormSaved, BatchNormTrain};
use crate::cpu::Real;
use crate::cpu::batchnorm::layout;
use crate::geometry::{BatchNormLayout, BatchNormSettings};
use crate::tensor::HostTensor;

/// Channel `c`'s plane of image `n` (`S` contiguous values).
fn plane<'a, F>(l: &BatchNormLayout, values: &'a [F], n: usize, c: usize) -> &'a [F] {
    &values[(n * l.channels + c) * l.spatial..][..l.spatial]
}

/// `f(c)` for every channel, in channel order, channels split over the cores.
fn per_channel<T: Send>(l: &BatchNormLayout, f: impl Fn(usize) -> T + Sync + Send) -> Vec<T> {
    (0..l.channels).into_par_iter().map(f).collect()
}

/// A tensor shaped like `x` whose plane `(n, c)` is written by
/// `f(c, n, plane)`, images split over the cores.
fn per_plane<F: Real>(
    l: &BatchNormLayout,
    x: &HostTensor<F>,
    f: impl Fn(usize, usize, &mut [F]) + Sync + Send,
) -> HostTensor<F> {
    let mut out = HostTensor::zeros(&x.shape);
    let images = out.data.par_chunks_mut(l.channels * l.spatial).enumerate();
    images.for_each(|(n, out_n)| {
        for (c, plane) in out_n.chunks_mut(l.spatial).enumerate() {
            f(c, n, plane);
        }
    });
    out
}

/// `y = (x − mean[c])·(γ[c]·invstd[c]) + β[c]`, same shape as `x`.
fn normalise<F: Real>(
    l: &BatchNormLayout,
    x: &HostTensor<F>,
    gamma: &HostTensor<F>,
    beta: &HostTensor<F>,
    mean: &[F],
    invstd: &[F],
) -> HostTensor<F> {
    per_plane(l, x, |c, n, y| {
        let (shift, scale, offset) = (mean[c], gamma.data[c] * invstd[c], beta.data[c]);
        for (y, &v) in y.iter_mut().zip(plane(l, &x.data, n, c)) {
            *y = (v - shift) * scale + offset;
        }
    })
}

/// Training-mode forward: the statistics over `N·S` values per channel (two
/// passes, as the reference), `y = (x − μ)·(γ·invstd) + β`, and the running
/// statistics.
pub fn forward_train<F: Real>(
    x: &HostTensor<F>,
    gamma: &HostTensor<F>,
    beta: &HostTensor<F>,
    running_mean: &HostTensor<F>,
    running_var: &HostTensor<F>,
    s: &BatchNormSettings,
) -> BatchNormTrain<HostTensor<F>> {
    let l = layout(
        "batchnorm_forward_train",
        x,
        &[
            ("gamma", gamma),
            ("beta", beta),
            ("running_mean", running_mean),
            ("running_var", running_var),
        ],
    );
    let m_count = F::from_usize(l.count());
    let eps = F::from_f32(s.eps);
    let momentum = F::from_f32(s.momentum);
    let (mean, var): (Vec<F>, Vec<F>) = per_channel(&l, |c| {
        let mut sums = [F::zero(); LANES];
        for n in 0..l.batch {
            let x_p = plane(&l, &x.data, n, c);
            add_lanes(&mut sums, x_p, x_p, |v, _| v);
        }
        let mean = total(sums) / m_count;
        let mut squares = [F::zero(); LANES];
        for n in 0..l.batch {
            let x_p = plane(&l, &x.data, n, c);
            add_lanes(&mut squares, x_p, x_p, |v, _| (v - mean) * (v - mean));
        }
        (mean, total(squares) / m_count)
    })
    .into_iter()
    .unzip();
    let invstd: Vec<F> = var.iter().map(|&v| F::one() / (v + eps).sqrt()).collect();
    let y = normalise(&l, x, gamma, beta, &mean, &invstd);
    let unbias = m_count / (m_count - F::one());
    let running = |old: &HostTensor<F>, new: &dyn Fn(usize) -> F| {
        let values = (0..l.channels)
            .map(|c| (F::one() - momentum) * old.data[c] + momentum * new(c))
            .collect();
        HostTensor::new(&[l.channels], values)
    };
    BatchNormTrain {
        y,
        running_mean: running(running_mean, &|c| mean[c]),
        running_var: running(running_var, &|c| var[c] * unbias),
        saved: BatchNormSaved {
            mean: HostTensor::new(&[l.channels], mean),
            invstd: HostTensor::new(&[l.channels], invstd),
        },
    }
}

/// Evaluation-mode forward with the running statistics:
/// `y = (x − running_mean)·(γ·invstd) + β`, `invstd = 1/√(running_var + eps)`.
pub fn forward_eval<F: Real>(
    x: &HostTensor<F>,
    gamma: &HostTensor<F>,
    beta: &HostTensor<F>,
    running_mean: &HostTensor<F>,
    running_var: &HostTensor<F>,
    s: &BatchNormSettings,
) -> (HostTensor<F>, BatchNormSaved<HostTensor<F>>) {
    let l = layout(
        "batchnorm_forward_eval",
        x,
        &[
            ("gamma", gamma),
            ("beta", beta),
            ("running_mean", running_mean),
            ("running_var", running_var),
        ],
    );
    let eps = F::from_f32(s.eps);
    let invstd = running_var.map(|&v| F::one() / (v + eps).sqrt());
    let y = normalise(&l, x, gamma, beta, &running_mean.data, &invstd.data);
    let saved = BatchNormSaved {
        mean: running_mean.clone(),
        invstd,
    };
    (y, saved)
}

/// Backward: `dβ = Σ dy`, `dγ = invstd·Σ dy·(x − μ)`; in training
/// `dx = γ·invstd·dy − (γ·invstd·dβ/M) − (γ·invstd²·dγ/M)·(x − μ)` (the
/// reference's `γ·invstd/M·(M·dy − dβ − x̂·dγ)` expanded), in evaluation
/// `dx = γ·invstd·dy`.
pub fn backward<F: Real>(
    x: &HostTensor<F>,
    gamma: &HostTensor<F>,
    saved: &BatchNormSaved<HostTensor<F>>,
    dy: &HostTensor<F>,
    training: bool,
) -> BatchNormGrads<HostTensor<F>> {
    let l = layout(
        "batchnorm_backward",
        x,
        &[
            ("gamma", gamma),
            ("saved.mean", &saved.mean),
            ("saved.invstd", &saved.invstd),
        ],
    );
    assert_eq!(
        dy.shape, x.shape,
        "batchnorm_backward: dy has shape {:?} but x has {:?}",
        dy.shape, x.shape
    );
    let (mean, invstd) = (&saved.mean.data, &saved.invstd.data);
    let (dbeta, dgamma): (Vec<F>, Vec<F>) = per_channel(&l, |c| {
        let mu = mean[c];
        let (mut dbeta, mut dgamma) = ([F::zero(); LANES], [F::zero(); LANES]);
        for n in 0..l.batch {
            let (dy_p, x_p) = (plane(&l, &dy.data, n, c), plane(&l, &x.data, n, c));
            add_lanes(&mut dbeta, dy_p, dy_p, |d, _| d);
            add_lanes(&mut dgamma, dy_p, x_p, |d, v| d * (v - mu));
        }
        (total(dbeta), total(dgamma) * invstd[c])
    })
    .into_iter()
    .unzip();
    let m_count = F::from_usize(l.count());
    let dx = per_plane(&l, x, |c, n, dx| {
        let g = gamma.data[c] * invstd[c];
        let (dy_p, x_p) = (plane(&l, &dy.data, n, c), plane(&l, &x.data, n, c));
        if training {
            let offset = g * dbeta[c] / m_count;
            let slope = g * invstd[c] * dgamma[c] / m_count;
            let mu = mean[c];
            for ((dx, &d), &v) in dx.iter_mut().zip(dy_p).zip(x_p) {
                *dx = g * d - offset - slope * (v - mu);
            }
        } else {
            for (dx, &d) in dx.iter_mut().zip(dy_p) {
                *dx = g * d;
            }
        }
    });
    BatchNormGrads {
        dx,
        dgamma: HostTensor::new(&[l.channels], dgamma),
        dbeta: HostTensor::new(&[l.channels], dbeta),
    }
}
