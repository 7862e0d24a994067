//! Batch normalisation from the definition, over `(N, D)` (per feature) or
//! `(N, C, H, W)` (per channel over `N·H·W`), seen as `(N, C, S)` through
//! [`BatchNormLayout`]. The shape checks, per-channel arithmetic and running
//! statistics are shared with the CPU training path, which supplies its own
//! loops over the elements ([`ElementLoops`]).

use super::Real;
use super::activation::{leaky_relu, relu, sigmoid};
use crate::backend::{BatchNormGrads, BatchNormSaved, BatchNormTrain};
use crate::geometry::{Activation, BatchNormLayout, BatchNormSettings};
use crate::tensor::HostTensor;

/// The loops over a batch's elements: the reference's ([`Reference`]) come
/// straight from the definition; the CPU training path's
/// (`fast/batchnorm.rs`) compute the same formulas in loops that vectorise.
pub(super) trait ElementLoops {
    /// Per channel, `(μ, σ²)`: `μ = Σ x / M`, `σ² = Σ (x − μ)² / M` (two
    /// passes, biased).
    fn statistics<F: Real>(l: &BatchNormLayout, x: &HostTensor<F>) -> Vec<(F, F)>;
    /// `y = then(γ[c]·(x − mean[c])·invstd[c] + β[c])`, same shape as `x`:
    /// `then` is the identity, or an activation applied as each value is
    /// written.
    fn normalise<F: Real>(
        l: &BatchNormLayout,
        x: &HostTensor<F>,
        affine: (&[F], &[F]),
        statistics: (&[F], &[F]),
        then: impl Fn(F) -> F + Sync + Send + Copy,
    ) -> HostTensor<F>;
    /// Per channel, `(dβ, dγ) = (Σ dy, Σ dy·x̂)` with `x̂ = (x − mean)·invstd`.
    fn parameter_grads<F: Real>(
        l: &BatchNormLayout,
        x: &HostTensor<F>,
        dy: &HostTensor<F>,
        mean: &[F],
        invstd: &[F],
    ) -> Vec<(F, F)>;
    /// In training (`sums = Some((dβ, dγ))`)
    /// `dx = γ·invstd/M·(M·dy − dβ − x̂·dγ)`, in evaluation `dx = γ·invstd·dy`.
    fn input_grad<F: Real>(
        l: &BatchNormLayout,
        x: &HostTensor<F>,
        dy: &HostTensor<F>,
        gamma: &[F],
        saved: (&[F], &[F]),
        sums: Option<(&[F], &[F])>,
    ) -> HostTensor<F>;
}

/// The reference's loops: one running sum per channel, one element at a time.
pub(super) struct Reference;

/// Flat index of `(n, c, s)` in the `(N, C, S)` view.
fn at(l: &BatchNormLayout, n: usize, c: usize, s: usize) -> usize {
    (n * l.channels + c) * l.spatial + s
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

impl ElementLoops for Reference {
    fn statistics<F: Real>(l: &BatchNormLayout, x: &HostTensor<F>) -> Vec<(F, F)> {
        let m_count = F::from_usize(l.count());
        let values = |c: usize| {
            (0..l.batch).flat_map(move |n| (0..l.spatial).map(move |s| x.data[at(l, n, c, s)]))
        };
        (0..l.channels)
            .map(|c| {
                let mut sum = F::zero();
                for v in values(c) {
                    sum += v;
                }
                let mean = sum / m_count;
                let mut sq = F::zero();
                for v in values(c) {
                    sq += (v - mean) * (v - mean);
                }
                (mean, sq / m_count)
            })
            .collect()
    }

    fn normalise<F: Real>(
        l: &BatchNormLayout,
        x: &HostTensor<F>,
        (gamma, beta): (&[F], &[F]),
        (mean, invstd): (&[F], &[F]),
        then: impl Fn(F) -> F + Sync + Send + Copy,
    ) -> HostTensor<F> {
        per_element(l, x, |i, c| {
            then(gamma[c] * (x.data[i] - mean[c]) * invstd[c] + beta[c])
        })
    }

    fn parameter_grads<F: Real>(
        l: &BatchNormLayout,
        x: &HostTensor<F>,
        dy: &HostTensor<F>,
        mean: &[F],
        invstd: &[F],
    ) -> Vec<(F, F)> {
        (0..l.channels)
            .map(|c| {
                let (mut dbeta, mut dgamma) = (F::zero(), F::zero());
                for n in 0..l.batch {
                    for s in 0..l.spatial {
                        let i = at(l, n, c, s);
                        dbeta += dy.data[i];
                        dgamma += dy.data[i] * ((x.data[i] - mean[c]) * invstd[c]);
                    }
                }
                (dbeta, dgamma)
            })
            .collect()
    }

    fn input_grad<F: Real>(
        l: &BatchNormLayout,
        x: &HostTensor<F>,
        dy: &HostTensor<F>,
        gamma: &[F],
        (mean, invstd): (&[F], &[F]),
        sums: Option<(&[F], &[F])>,
    ) -> HostTensor<F> {
        let m_count = F::from_usize(l.count());
        per_element(l, x, |i, c| {
            let g = gamma[c] * invstd[c];
            match sums {
                Some((dbeta, dgamma)) => {
                    let xhat = (x.data[i] - mean[c]) * invstd[c];
                    g / m_count * (m_count * dy.data[i] - dbeta[c] - xhat * dgamma[c])
                }
                None => g * dy.data[i],
            }
        })
    }
}

/// The `(N, C, S)` view of `x`, after checking every per-channel tensor is `(C)`.
fn layout<F>(
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

/// [`layout`] for a forward's per-channel tensors (γ, β, running mean and
/// variance).
fn forward_layout<F>(
    what: &str,
    x: &HostTensor<F>,
    per_channel: [&HostTensor<F>; 4],
) -> BatchNormLayout {
    let [gamma, beta, running_mean, running_var] = per_channel;
    let named = [
        ("gamma", gamma),
        ("beta", beta),
        ("running_mean", running_mean),
        ("running_var", running_var),
    ];
    layout(what, x, &named)
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
    forward_train_with::<Reference, F>(x, [gamma, beta, running_mean, running_var], s, None)
}

/// [`batchnorm_forward_train`] with the loops `L`, `y` through `act` where
/// given (applied as each value is written).
pub(super) fn forward_train_with<L: ElementLoops, F: Real>(
    x: &HostTensor<F>,
    [gamma, beta, running_mean, running_var]: [&HostTensor<F>; 4],
    s: &BatchNormSettings,
    act: Option<Activation>,
) -> BatchNormTrain<HostTensor<F>> {
    let l = forward_layout(
        "batchnorm_forward_train",
        x,
        [gamma, beta, running_mean, running_var],
    );
    let m_count = F::from_usize(l.count());
    let eps = F::from_f32(s.eps);
    let momentum = F::from_f32(s.momentum);
    let (mean, var): (Vec<F>, Vec<F>) = L::statistics(&l, x).into_iter().unzip();
    let invstd: Vec<F> = var.iter().map(|&v| F::one() / (v + eps).sqrt()).collect();
    let y = normalise_then::<L, F>(&l, x, (&gamma.data, &beta.data), (&mean, &invstd), act);
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

/// `L::normalise` with `act` (or nothing) applied to each value as it is
/// written: the element functions `activation_forward` applies, so the
/// values are those of the two passes.
fn normalise_then<L: ElementLoops, F: Real>(
    l: &BatchNormLayout,
    x: &HostTensor<F>,
    affine: (&[F], &[F]),
    statistics: (&[F], &[F]),
    act: Option<Activation>,
) -> HostTensor<F> {
    match act {
        None => L::normalise(l, x, affine, statistics, |v| v),
        Some(Activation::Relu) => L::normalise(l, x, affine, statistics, relu),
        Some(Activation::LeakyRelu { negative_slope }) => {
            let slope = F::from_f32(negative_slope);
            L::normalise(l, x, affine, statistics, move |v| leaky_relu(slope, v))
        }
        Some(Activation::Sigmoid) => L::normalise(l, x, affine, statistics, sigmoid),
        Some(Activation::Tanh) => L::normalise(l, x, affine, statistics, |v: F| v.tanh()),
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
    forward_eval_with::<Reference, F>(x, [gamma, beta, running_mean, running_var], s, None)
}

/// [`batchnorm_forward_eval`] with the loops `L`, `y` through `act` where
/// given.
pub(super) fn forward_eval_with<L: ElementLoops, F: Real>(
    x: &HostTensor<F>,
    [gamma, beta, running_mean, running_var]: [&HostTensor<F>; 4],
    s: &BatchNormSettings,
    act: Option<Activation>,
) -> (HostTensor<F>, BatchNormSaved<HostTensor<F>>) {
    let l = forward_layout(
        "batchnorm_forward_eval",
        x,
        [gamma, beta, running_mean, running_var],
    );
    let eps = F::from_f32(s.eps);
    let invstd = running_var.map(|&v| F::one() / (v + eps).sqrt());
    let y = normalise_then::<L, F>(
        &l,
        x,
        (&gamma.data, &beta.data),
        (&running_mean.data, &invstd.data),
        act,
    );
    let saved = BatchNormSaved {
        mean: running_mean.clone(),
        invstd,
    };
    (y, saved)
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
    backward_with::<Reference, F>(x, gamma, saved, dy, training)
}

/// [`batchnorm_backward`] with the loops `L`.
pub(super) fn backward_with<L: ElementLoops, F: Real>(
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
    let stats = (&saved.mean.data[..], &saved.invstd.data[..]);
    let (dbeta, dgamma): (Vec<F>, Vec<F>) = L::parameter_grads(&l, x, dy, stats.0, stats.1)
        .into_iter()
        .unzip();
    let sums = training.then_some((&dbeta[..], &dgamma[..]));
    let dx = L::input_grad(&l, x, dy, &gamma.data, stats, sums);
    BatchNormGrads {
        dx,
        dgamma: HostTensor::new(&[l.channels], dgamma),
        dbeta: HostTensor::new(&[l.channels], dbeta),
    }
}
