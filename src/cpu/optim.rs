//! The optimizer update rules, one element at a time, as PyTorch's
//! `torch.optim` defines them (dampening 0, amsgrad off, maximize off, centered
//! rmsprop off, adagrad's lr decay 0).

use rayon::prelude::*;

use super::Real;
use crate::optim::{OptimizerKind, OptimizerSettings, UpdateStep};
use crate::tensor::HostTensor;

/// One update of `param` in place from `grad`, reading and writing `state`
/// (`settings.kind.state_slots()` tensors shaped like `param`, zero before the
/// first step).
///
/// With `g = grad + wd·p` (L2 weight decay; every kind but adamw):
///
/// | kind | state | update |
/// |---|---|---|
/// | sgd | — | `p ← p − lr·g` |
/// | momentum | `v` | `v ← μ·v + g`, `p ← p − lr·v` |
/// | nesterov | `v` | `v ← μ·v + g`, `p ← p − lr·(g + μ·v)` |
/// | adagrad | `s` | `s ← s + g²`, `p ← p − lr·g/(√s + ε)` |
/// | rmsprop | `s` | `s ← α·s + (1 − α)·g²`, `p ← p − lr·g/(√s + ε)` |
/// | adam | `m, v` | `m ← β₁·m + (1 − β₁)·g`, `v ← β₂·v + (1 − β₂)·g²`, `p ← p − lr·m̂/(√v̂ + ε)` |
///
/// where `m̂ = m/(1 − β₁ᵗ)` and `v̂ = v/(1 − β₂ᵗ)`. Adamw first decays
/// `p ← p·(1 − lr·wd)`, then takes the adam step with `g = grad`.
///
/// # Panics
/// When `state` does not hold `settings.kind.state_slots()` tensors, or when
/// `grad` or a state tensor is not shaped like `param`.
pub fn optimizer_update<F: Real>(
    settings: &OptimizerSettings,
    step: &UpdateStep,
    param: &mut HostTensor<F>,
    grad: &HostTensor<F>,
    state: &mut [HostTensor<F>],
) {
    let t = i32::try_from(step.t).expect("step count fits in an i32");
    let (beta1, beta2) = (F::from_f32(settings.beta1), F::from_f32(settings.beta2));
    let values = [
        F::from_f32(step.lr),
        F::one() - beta1.powi(t),
        F::one() - beta2.powi(t),
    ];
    optimizer_update_with(settings, values, param, grad, state)
}

/// [`optimizer_update`] with the step's values given as
/// `[lr, 1 − β₁ᵗ, 1 − β₂ᵗ]` (what [`crate::backend::Backend::step_values`]
/// holds).
///
/// # Panics
/// As [`optimizer_update`].
pub fn optimizer_update_with<F: Real>(
    settings: &OptimizerSettings,
    [lr, correction1, correction2]: [F; 3],
    param: &mut HostTensor<F>,
    grad: &HostTensor<F>,
    state: &mut [HostTensor<F>],
) {
    let kind = settings.kind;
    kind.check_operands(
        &param.shape,
        &grad.shape,
        state.iter().map(|s| &s.shape[..]),
    );

    let f = F::from_f32;
    let rule = Rule {
        kind,
        lr,
        correction1,
        correction2,
        wd: f(settings.weight_decay),
        mu: f(settings.momentum),
        alpha: f(settings.alpha),
        beta1: f(settings.beta1),
        beta2: f(settings.beta2),
        eps: f(settings.eps),
    };
    let (s0, s1): (&mut [F], &mut [F]) = match state {
        [] => (&mut [], &mut []),
        [a] => (&mut a.data, &mut []),
        [a, b] => (&mut a.data, &mut b.data),
        _ => unreachable!("no rule has more than two state tensors"),
    };
    let (param, grad) = (&mut param.data[..], &grad.data[..]);
    if param.len() < PARALLEL_CHUNK {
        rule.apply(param, grad, s0, s1);
        return;
    }
    // Every element's update is independent, so chunks over the cores give
    // the same values as one loop.
    let chunks = param
        .par_chunks_mut(PARALLEL_CHUNK)
        .zip(grad.par_chunks(PARALLEL_CHUNK));
    match (s0.is_empty(), s1.is_empty()) {
        (true, _) => chunks.for_each(|(p, g)| rule.apply(p, g, &mut [], &mut [])),
        (false, true) => chunks
            .zip(s0.par_chunks_mut(PARALLEL_CHUNK))
            .for_each(|((p, g), a)| rule.apply(p, g, a, &mut [])),
        (false, false) => chunks
            .zip(s0.par_chunks_mut(PARALLEL_CHUNK))
            .zip(s1.par_chunks_mut(PARALLEL_CHUNK))
            .for_each(|(((p, g), a), b)| rule.apply(p, g, a, b)),
    }
}

/// Parameters from which an update is split over the cores, in chunks of
/// this many (fashion-cnn's first linear layer has 803k).
const PARALLEL_CHUNK: usize = 1 << 15;

/// One update rule with its constants, in the parameter's element type.
#[derive(Clone, Copy)]
struct Rule<F> {
    kind: OptimizerKind,
    lr: F,
    correction1: F,
    correction2: F,
    wd: F,
    mu: F,
    alpha: F,
    beta1: F,
    beta2: F,
    eps: F,
}

impl<F: Real> Rule<F> {
    /// Updates `param` from `grad` element by element, with the rule's state
    /// slots `s0` and `s1` (empty where the rule has fewer).
    fn apply(&self, param: &mut [F], grad: &[F], s0: &mut [F], s1: &mut [F]) {
        let Rule {
            kind,
            lr,
            correction1,
            correction2,
            wd,
            mu,
            alpha,
            beta1,
            beta2,
            eps,
        } = *self;
        let one = F::one();
        let decoupled = kind == OptimizerKind::AdamW;
        let decay = !decoupled && wd != F::zero();
        for (i, (p, &grad)) in param.iter_mut().zip(grad).enumerate() {
            let g = if decay { grad + wd * *p } else { grad };
            match kind {
                OptimizerKind::Sgd => *p = *p - lr * g,
                OptimizerKind::Momentum => {
                    let v = mu * s0[i] + g;
                    s0[i] = v;
                    *p = *p - lr * v;
                }
                OptimizerKind::Nesterov => {
                    let v = mu * s0[i] + g;
                    s0[i] = v;
                    *p = *p - lr * (g + mu * v);
                }
                OptimizerKind::Adagrad => {
                    let s = s0[i] + g * g;
                    s0[i] = s;
                    *p = *p - lr * g / (s.sqrt() + eps);
                }
                OptimizerKind::RmsProp => {
                    let s = alpha * s0[i] + (one - alpha) * g * g;
                    s0[i] = s;
                    *p = *p - lr * g / (s.sqrt() + eps);
                }
                OptimizerKind::Adam | OptimizerKind::AdamW => {
                    if decoupled {
                        *p = *p * (one - lr * wd);
                    }
                    let m = beta1 * s0[i] + (one - beta1) * g;
                    let v = beta2 * s1[i] + (one - beta2) * g * g;
                    s0[i] = m;
                    s1[i] = v;
                    let m_hat = m / correction1;
                    let v_hat = v / correction2;
                    *p = *p - lr * m_hat / (v_hat.sqrt() + eps);
                }
            }
        }
    }
}
