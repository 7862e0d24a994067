//! Batch normalisation from the definition, over `(N, D)` (per feature) or
//! `(N, C, H, W)` (per channel over `N·H·W`), seen as `(N, C, S)` through
//! [`BatchNormLayout`].

use super::Real;
use crate::backend::{BatchNormGrads, BatchNormSaved, BatchNormTrain};
use crate::geometry::{BatchNormLayout, BatchNormSettings};
use crate::tensor::HostTensor;

/// The `(N, C, S)` view of `x`, after checking every per-channel tensor is `(C)`.
pub(super) fn layout<F>(
    what: &str,
    x: &HostTensor<F>,
    per_channel: &[(&str, &HostTensor<F>)],
) -> BatchNormLayout {
    let l = BatchNormLayout::of_shape(&x.shape).expect("batchnorm input shape");
    for (name, t) in per_channel {
        assert_eq!(
            t.shape,
            [l.channels],
            "{what}: {name} has shape {:?}, input {:?} has {} channels",
            t.shape,
            x.shape,
            l.channels
        );
    }
    l
}

/// Flat index of `(n, c, s)` in the `(N, C, S)` view.
fn at(l: &BatchNormLayout, n: usize, c: usize, s: usize) -> usize {
    (n * l.channels + c) * l.spatial + s
}

/// `f(c)` for every channel, in channel order.
fn per_channel<T>(l: &BatchNormLayout, f: impl Fn(usize) -> T) -> Vec<T> {
    (0..l.channels).map(f).collect()
}

/// A tensor shaped like `x` whose element `(n, c, s)` is `f(i, c)` (`i` the
/// flat index).
fn per_element<F: Real>(
    l: &BatchNormLayout,
    x: &HostTensor<F>,
    f: impl Fn(usize, usize) -> F,
) -> HostTensor<F> {
    let data = (0..x.len())
        .map(|i| f(i, (i / l.spatial) % l.channels))
        .collect();
    HostTensor::new(&x.shape, data)
}

/// `y = γ[c]·(x − mean[c])·invstd[c] + β[c]`, same shape as `x`.
fn normalise<F: Real>(
    l: &BatchNormLayout,
    x: &HostTensor<F>,
    gamma: &HostTensor<F>,
    beta: &HostTensor<F>,
    mean: &[F],
    invstd: &[F],
) -> HostTensor<F> {
    per_element(l, x, |i, c| {
        gamma.data[c] * (x.data[i] - mean[c]) * invstd[c] + beta.data[c]
    })
}

/// Training-mode forward over `x (N, D)` or `(N, C, H, W)` with `M = N·S` values
/// per channel; `gamma`, `beta`, `running_mean`, `running_var` are `(C)`:
/// `μ = Σ x / M`, `σ² = Σ (x − μ)² / M` (two passes, biased),
/// `invstd = 1/√(σ² + eps)`, `y = γ·(x − μ)·invstd + β` (shape of `x`);
/// `running_mean' = (1 − m)·running_mean + m·μ`,
/// `running_var' = (1 − m)·running_var + m·σ²·M/(M − 1)` (unbiased);
/// `saved = (μ, invstd)`.
pub fn batchnorm_forward_train<F: Real>(
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
        let mut sum = F::zero();
        for n in 0..l.batch {
            for sp in 0..l.spatial {
                sum += x.data[at(&l, n, c, sp)];
            }
        }
        let mean = sum / m_count;
        let mut sq = F::zero();
        for n in 0..l.batch {
            for sp in 0..l.spatial {
                let d = x.data[at(&l, n, c, sp)] - mean;
                sq += d * d;
            }
        }
        (mean, sq / m_count)
    })
    .into_iter()
    .unzip();
    let invstd: Vec<F> = var.iter().map(|&v| F::one() / (v + eps).sqrt()).collect();
    let y = normalise(&l, x, gamma, beta, &mean, &invstd);
    let unbias = m_count / (m_count - F::one());
    let new_mean = (0..l.channels)
        .map(|c| (F::one() - momentum) * running_mean.data[c] + momentum * mean[c])
        .collect();
    let new_var = (0..l.channels)
        .map(|c| (F::one() - momentum) * running_var.data[c] + momentum * var[c] * unbias)
        .collect();
    BatchNormTrain {
        y,
        saved: BatchNormSaved {
            mean: HostTensor::new(&[l.channels], mean),
            invstd: HostTensor::new(&[l.channels], invstd),
        },
        running_mean: HostTensor::new(&[l.channels], new_mean),
        running_var: HostTensor::new(&[l.channels], new_var),
    }
}

/// Evaluation-mode forward with the running statistics (all per-channel tensors `(C)`):
/// `invstd = 1/√(running_var + eps)`, `y = γ·(x − running_mean)·invstd + β`
/// (shape of `x`); returns `(y, saved = (running_mean, invstd))`.
pub fn batchnorm_forward_eval<F: Real>(
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
    (
        y,
        BatchNormSaved {
            mean: running_mean.clone(),
            invstd,
        },
    )
}

/// Backward given `dy` (shape of `x`), `M = N·S` and `x̂ = (x − μ)·invstd` with
/// `(μ, invstd) = saved`: `dβ = Σ dy` `(C)`, `dγ = Σ dy·x̂` `(C)`; in training
/// `dx = γ·invstd/M·(M·dy − dβ − x̂·dγ)`, in evaluation `dx = γ·invstd·dy`
/// (shape of `x`).
pub fn batchnorm_backward<F: Real>(
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
    let mean = &saved.mean.data;
    let invstd = &saved.invstd.data;
    let xhat = |i: usize, c: usize| (x.data[i] - mean[c]) * invstd[c];
    let (dbeta, dgamma): (Vec<F>, Vec<F>) = per_channel(&l, |c| {
        let (mut dbeta, mut dgamma) = (F::zero(), F::zero());
        for n in 0..l.batch {
            for s in 0..l.spatial {
                let i = at(&l, n, c, s);
                dbeta += dy.data[i];
                dgamma += dy.data[i] * xhat(i, c);
            }
        }
        (dbeta, dgamma)
    })
    .into_iter()
    .unzip();
    let m_count = F::from_usize(l.count());
    let dx = per_element(&l, x, |i, c| {
        let g = gamma.data[c] * invstd[c];
        if training {
            g / m_count * (m_count * dy.data[i] - dbeta[c] - xhat(i, c) * dgamma[c])
        } else {
            g * dy.data[i]
        }
    });
    BatchNormGrads {
        dx,
        dgamma: HostTensor::new(&[l.channels], dgamma),
        dbeta: HostTensor::new(&[l.channels], dbeta),
    }
}
