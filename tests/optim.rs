//! The optimizer update rules on the CPU reference: hand-computed values for a
//! few steps, a scalar transcription of PyTorch's `torch.optim` algorithms,
//! weight decay (L2 and decoupled), convergence on a quadratic; and the
//! learning-rate schedules and name parsing.

use wgcnn::backend::Backend;
use wgcnn::cpu::{self, CpuBackend};
use wgcnn::optim::{LrSchedule, OptimizerKind, OptimizerSettings, Schedule, UpdateStep};
use wgcnn::tensor::HostTensor;

fn tensor(values: &[f64]) -> HostTensor<f64> {
    HostTensor::new(&[values.len()], values.to_vec())
}

/// Runs `settings` from `p0` (zero state) over `grads`, one step each with
/// learning rate `lr`; returns the parameter and the state.
fn run(
    settings: &OptimizerSettings,
    lr: f32,
    p0: &[f64],
    grads: &[&[f64]],
) -> (Vec<f64>, Vec<Vec<f64>>) {
    let mut p = tensor(p0);
    let mut state = vec![HostTensor::zeros(&[p0.len()]); settings.kind.state_slots()];
    for (i, g) in grads.iter().enumerate() {
        let step = UpdateStep {
            lr,
            t: i as u32 + 1,
        };
        cpu::optimizer_update(settings, &step, &mut p, &tensor(g), &mut state);
    }
    (
        p.data.into_vec(),
        state.into_iter().map(|s| s.data.into_vec()).collect(),
    )
}

/// Settings with every hyper-parameter a power of two (exact in binary) and
/// no ε, so the hand arithmetic below is exact or nearly so.
fn exact(kind: OptimizerKind, weight_decay: f32) -> OptimizerSettings {
    OptimizerSettings {
        momentum: 0.5,
        alpha: 0.5,
        beta1: 0.5,
        beta2: 0.75,
        eps: 0.0,
        ..OptimizerSettings::new(kind, weight_decay).unwrap()
    }
}

fn assert_close(actual: &[f64], expected: &[f64], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= 1e-12 * (1.0 + e.abs()),
            "{what}[{i}]: got {a:.15}, expected {e:.15}"
        );
    }
}

#[test]
fn sgd_by_hand() {
    // lr = 0.5: p = 1 − 0.5·0.5 = 0.75, then 0.75 − 0.5·(−1) = 1.25.
    //           p = −2 − 0.5·0.25 = −2.125, then −2.125 − 0.5·0 = −2.125.
    let (p, state) = run(
        &exact(OptimizerKind::Sgd, 0.0),
        0.5,
        &[1.0, -2.0],
        &[&[0.5, 0.25], &[-1.0, 0.0]],
    );
    assert_close(&p, &[1.25, -2.125], "p");
    assert!(state.is_empty());
}

#[test]
fn sgd_weight_decay_is_added_to_the_gradient() {
    // wd = 0.25, lr = 0.5, p = 2, g = 0.5 twice:
    // g' = 0.5 + 0.25·2 = 1,         p = 2 − 0.5·1 = 1.5;
    // g' = 0.5 + 0.25·1.5 = 0.875,   p = 1.5 − 0.5·0.875 = 1.0625.
    let (p, _) = run(
        &exact(OptimizerKind::Sgd, 0.25),
        0.5,
        &[2.0],
        &[&[0.5], &[0.5]],
    );
    assert_close(&p, &[1.0625], "p");
}

#[test]
fn momentum_by_hand() {
    // μ = 0.5, lr = 0.5, p = 1, grads 1, 1, −1:
    // v = 1,                      p = 1 − 0.5·1 = 0.5
    // v = 0.5·1 + 1 = 1.5,        p = 0.5 − 0.5·1.5 = −0.25
    // v = 0.5·1.5 − 1 = −0.25,    p = −0.25 + 0.5·0.25 = −0.125
    let (p, v) = run(
        &exact(OptimizerKind::Momentum, 0.0),
        0.5,
        &[1.0],
        &[&[1.0], &[1.0], &[-1.0]],
    );
    assert_close(&p, &[-0.125], "p");
    assert_close(&v[0], &[-0.25], "v");
}

#[test]
fn nesterov_by_hand() {
    // μ = 0.5, lr = 0.5, p = 1, grads 1, 1, −1; p ← p − lr·(g + μ·v):
    // v = 1,       p = 1 − 0.5·(1 + 0.5) = 0.25
    // v = 1.5,     p = 0.25 − 0.5·(1 + 0.75) = −0.625
    // v = −0.25,   p = −0.625 − 0.5·(−1 − 0.125) = −0.0625
    let (p, v) = run(
        &exact(OptimizerKind::Nesterov, 0.0),
        0.5,
        &[1.0],
        &[&[1.0], &[1.0], &[-1.0]],
    );
    assert_close(&p, &[-0.0625], "p");
    assert_close(&v[0], &[-0.25], "v");
}

#[test]
fn adagrad_by_hand() {
    // lr = 0.5, ε = 0, p = 1, grads 3, 4:
    // s = 9,        p = 1 − 0.5·3/3 = 0.5
    // s = 9 + 16,   p = 0.5 − 0.5·4/5 = 0.1
    let (p, s) = run(
        &exact(OptimizerKind::Adagrad, 0.0),
        0.5,
        &[1.0],
        &[&[3.0], &[4.0]],
    );
    assert_close(&p, &[0.1], "p");
    assert_close(&s[0], &[25.0], "s");
}

#[test]
fn rmsprop_by_hand() {
    // α = 0.5, lr = 0.5, ε = 0, p = 1, grads 2, 2:
    // s = 0.5·0 + 0.5·4 = 2,   p = 1 − 0.5·2/√2 = 1 − 1/√2
    // s = 0.5·2 + 0.5·4 = 3,   p = 1 − 1/√2 − 0.5·2/√3
    let (p, s) = run(
        &exact(OptimizerKind::RmsProp, 0.0),
        0.5,
        &[1.0],
        &[&[2.0], &[2.0]],
    );
    let expected = 1.0 - 1.0 / 2f64.sqrt() - 1.0 / 3f64.sqrt();
    assert_close(&p, &[expected], "p");
    assert_close(&s[0], &[3.0], "s");
}

#[test]
fn adam_by_hand() {
    // β₁ = 0.5, β₂ = 0.75, lr = 0.5, ε = 0, p = 1, grads 1, 3:
    // t = 1: m = 0.5, v = 0.25; m̂ = 0.5/0.5 = 1, v̂ = 0.25/0.25 = 1;
    //        p = 1 − 0.5·1/1 = 0.5
    // t = 2: m = 0.25 + 1.5 = 1.75, v = 0.1875 + 2.25 = 2.4375;
    //        m̂ = 1.75/(1 − 0.25) = 7/3, v̂ = 2.4375/(1 − 0.5625) = 39/7;
    //        p = 0.5 − 0.5·(7/3)/√(39/7)
    let (p, state) = run(
        &exact(OptimizerKind::Adam, 0.0),
        0.5,
        &[1.0],
        &[&[1.0], &[3.0]],
    );
    let expected = 0.5 - 0.5 * (7.0 / 3.0) / (39.0f64 / 7.0).sqrt();
    assert_close(&p, &[expected], "p");
    assert_close(&state[0], &[1.75], "m");
    assert_close(&state[1], &[2.4375], "v");
}

#[test]
fn adam_first_step_moves_each_parameter_by_lr() {
    // m̂ = g and v̂ = g² on the first step, so p moves by lr·g/(|g| + ε) ≈ lr
    // (within lr·ε/|g| = 1e-7 for the smallest gradient here).
    let settings = OptimizerSettings::new(OptimizerKind::Adam, 0.0).unwrap();
    let (p, _) = run(&settings, 0.01, &[0.0, 0.0, 0.0], &[&[1e-3, -5.0, 2.0]]);
    for (v, sign) in p.iter().zip([-1.0, 1.0, -1.0]) {
        assert!((v - sign * 0.01).abs() < 1e-6, "{p:?}");
    }
}

#[test]
fn adamw_decays_the_weights_instead_of_the_gradient() {
    // wd = 0.5, lr = 0.5, ε = 0, p = 2, g = 1.
    // adamw: p = 2·(1 − 0.5·0.5) = 1.5, then the adam step with g = 1:
    //        m = 0.5·1, m̂ = 1, v̂ = 1, p = 1.5 − 0.5 = 1.0.
    // adam (L2): g' = 1 + 0.5·2 = 2, m̂ = 2, v̂ = 4, p = 2 − 0.5·2/2 = 1.5.
    let (p, state) = run(&exact(OptimizerKind::AdamW, 0.5), 0.5, &[2.0], &[&[1.0]]);
    assert_close(&p, &[1.0], "adamw p");
    assert_close(&state[0], &[0.5], "adamw m (from grad alone)");
    assert_close(&state[1], &[0.25], "adamw v (from grad alone)");
    let (p, state) = run(&exact(OptimizerKind::Adam, 0.5), 0.5, &[2.0], &[&[1.0]]);
    assert_close(&p, &[1.5], "adam p");
    assert_close(&state[0], &[1.0], "adam m (from grad + wd·p)");
}

/// PyTorch's `torch.optim` algorithms for one scalar parameter, transcribed
/// from their published update code (`_single_tensor_sgd`, `_adagrad`,
/// `_rmsprop`, `_adam`, `_adamw`), in f64 with the settings' f32 values.
fn pytorch_reference(settings: &OptimizerSettings, lrs: &[f32], p0: f64, grads: &[f64]) -> f64 {
    let wd = settings.weight_decay as f64;
    let (mu, alpha, beta1, beta2, eps) = (
        settings.momentum as f64,
        settings.alpha as f64,
        settings.beta1 as f64,
        settings.beta2 as f64,
        settings.eps as f64,
    );
    let mut param = p0;
    let mut buf: Option<f64> = None; // momentum_buffer
    let mut sum = 0.0; // adagrad state_sum
    let mut square_avg = 0.0;
    let (mut exp_avg, mut exp_avg_sq) = (0.0, 0.0);
    for (i, (&grad, &lr)) in grads.iter().zip(lrs).enumerate() {
        let lr = lr as f64;
        let step = (i + 1) as i32;
        let mut grad = grad;
        if settings.kind == OptimizerKind::AdamW {
            param *= 1.0 - lr * wd;
        } else if wd != 0.0 {
            grad += wd * param;
        }
        match settings.kind {
            OptimizerKind::Sgd => param -= lr * grad,
            OptimizerKind::Momentum | OptimizerKind::Nesterov => {
                let b = match buf {
                    None => grad, // torch.clone(grad).detach()
                    Some(b) => mu * b + grad,
                };
                buf = Some(b);
                let d_p = if settings.kind == OptimizerKind::Nesterov {
                    grad + mu * b
                } else {
                    b
                };
                param -= lr * d_p;
            }
            OptimizerKind::Adagrad => {
                sum += grad * grad;
                let std = sum.sqrt() + eps;
                param -= lr * grad / std;
            }
            OptimizerKind::RmsProp => {
                square_avg = square_avg * alpha + (1.0 - alpha) * grad * grad;
                let avg = square_avg.sqrt() + eps;
                param -= lr * grad / avg;
            }
            OptimizerKind::Adam | OptimizerKind::AdamW => {
                exp_avg += (grad - exp_avg) * (1.0 - beta1); // lerp_
                exp_avg_sq = exp_avg_sq * beta2 + (1.0 - beta2) * grad * grad;
                let bias_correction1 = 1.0 - beta1.powi(step);
                let bias_correction2 = 1.0 - beta2.powi(step);
                let step_size = lr / bias_correction1;
                let denom = exp_avg_sq.sqrt() / bias_correction2.sqrt() + eps;
                param -= step_size * exp_avg / denom;
            }
        }
    }
    param
}

#[test]
fn every_rule_matches_pytorch_over_several_steps() {
    let p0 = [0.7, -1.3, 0.05, 2.0];
    let grads = [
        [0.3, -0.8, 1e-3, 1.5],
        [-0.2, -0.5, 2e-3, 1.0],
        [0.4, 0.1, -5e-4, -0.7],
        [0.1, -0.9, 1e-3, 0.2],
    ];
    let lrs = [0.1, 0.05, 0.08, 0.02];
    for kind in OptimizerKind::ALL {
        for weight_decay in [0.0, 0.01, 0.3] {
            let settings = OptimizerSettings::new(kind, weight_decay).unwrap();
            let mut p = tensor(&p0);
            let mut state = vec![HostTensor::zeros(&[4]); kind.state_slots()];
            for (t, (g, &lr)) in grads.iter().zip(&lrs).enumerate() {
                let step = UpdateStep {
                    lr,
                    t: t as u32 + 1,
                };
                cpu::optimizer_update(&settings, &step, &mut p, &tensor(g), &mut state);
            }
            for (j, &actual) in p.data.iter().enumerate() {
                let column: Vec<f64> = grads.iter().map(|g| g[j]).collect();
                let expected = pytorch_reference(&settings, &lrs, p0[j], &column);
                assert!(
                    (actual - expected).abs() <= 1e-12 * (1.0 + expected.abs()),
                    "{} wd={weight_decay} p[{j}]: got {actual:.15}, PyTorch {expected:.15}",
                    kind.name()
                );
            }
        }
    }
}

/// Large parameters are updated in chunks over the cores: every element,
/// the ones at chunk edges included, gets what a one-element update gives it,
/// its state slots included.
#[test]
fn large_parameters_update_element_by_element() {
    let len = 3 * 32_768 + 5;
    let p0: Vec<f64> = (0..len).map(|i| (i as f64 * 0.37).sin()).collect();
    let grads: Vec<Vec<f64>> = (1..=3)
        .map(|t| {
            (0..len)
                .map(|i| (i as f64 * 0.11 * t as f64).cos())
                .collect()
        })
        .collect();
    let grads: Vec<&[f64]> = grads.iter().map(|g| &g[..]).collect();
    for kind in OptimizerKind::ALL {
        let settings = OptimizerSettings::new(kind, 0.01).unwrap();
        let (p, state) = run(&settings, 0.1, &p0, &grads);
        for i in [
            0,
            1,
            32_767,
            32_768,
            65_535,
            65_536,
            98_303,
            98_304,
            len - 1,
        ] {
            let column: Vec<Vec<f64>> = grads.iter().map(|g| vec![g[i]]).collect();
            let column: Vec<&[f64]> = column.iter().map(|g| &g[..]).collect();
            let (p_i, state_i) = run(&settings, 0.1, &[p0[i]], &column);
            assert_eq!(p[i], p_i[0], "{} p[{i}]", kind.name());
            for (slot, slot_i) in state.iter().zip(&state_i) {
                assert_eq!(slot[i], slot_i[0], "{} state[{i}]", kind.name());
            }
        }
    }
}

#[test]
fn every_rule_reduces_a_quadratic() {
    // f(p) = ½‖p − c‖², ∇f = p − c, from p = 0, through the Backend trait in f32.
    let c = [1.0f32, -2.0, 0.5, 3.0, -0.25];
    let loss = |p: &[f32]| -> f32 { p.iter().zip(&c).map(|(p, c)| 0.5 * (p - c).powi(2)).sum() };
    let backend = CpuBackend::<f32>::new();
    for kind in OptimizerKind::ALL {
        let lr = match kind {
            OptimizerKind::Sgd => 0.1,
            OptimizerKind::Momentum | OptimizerKind::Nesterov => 0.05,
            OptimizerKind::Adagrad => 1.0,
            OptimizerKind::RmsProp => 0.05,
            OptimizerKind::Adam | OptimizerKind::AdamW => 0.05,
        };
        let settings = OptimizerSettings::new(kind, 0.0).unwrap();
        let mut p = HostTensor::zeros(&[c.len()]);
        let mut state = vec![HostTensor::zeros(&[c.len()]); kind.state_slots()];
        let initial = loss(&p.data);
        for t in 1..=200 {
            let grad = HostTensor::new(
                &[c.len()],
                p.data.iter().zip(&c).map(|(p, c)| p - c).collect(),
            );
            let values = backend.step_values(&settings, &UpdateStep { lr, t });
            backend.optimizer_update(&settings, &values, &mut p, &grad, &mut state);
        }
        let last = loss(&p.data);
        assert!(
            last < 1e-4 * initial,
            "{}: loss {initial} -> {last} after 200 steps (p = {:?})",
            kind.name(),
            p.data
        );
    }
}

#[test]
#[should_panic(expected = "adam: expected 2 state tensors, got 1")]
fn wrong_state_count_panics() {
    let settings = OptimizerSettings::new(OptimizerKind::Adam, 0.0).unwrap();
    let mut p = tensor(&[1.0]);
    let mut state = vec![HostTensor::zeros(&[1])];
    cpu::optimizer_update(
        &settings,
        &UpdateStep { lr: 0.1, t: 1 },
        &mut p,
        &tensor(&[1.0]),
        &mut state,
    );
}

#[test]
#[should_panic(expected = "gradient shape [3] differs from parameter shape [2]")]
fn wrong_gradient_shape_panics() {
    let settings = OptimizerSettings::new(OptimizerKind::Sgd, 0.0).unwrap();
    let mut p = tensor(&[1.0, 2.0]);
    cpu::optimizer_update(
        &settings,
        &UpdateStep { lr: 0.1, t: 1 },
        &mut p,
        &tensor(&[1.0, 2.0, 3.0]),
        &mut [],
    );
}

#[test]
#[should_panic(expected = "momentum: state 0 shape [1] differs from parameter shape [2]")]
fn wrong_state_shape_panics() {
    let settings = OptimizerSettings::new(OptimizerKind::Momentum, 0.0).unwrap();
    let mut p = tensor(&[1.0, 2.0]);
    cpu::optimizer_update(
        &settings,
        &UpdateStep { lr: 0.1, t: 1 },
        &mut p,
        &tensor(&[1.0, 2.0]),
        &mut [HostTensor::zeros(&[1])],
    );
}

fn schedule(schedule: Schedule, warmup_steps: usize) -> LrSchedule {
    LrSchedule {
        base_lr: 0.4,
        schedule,
        warmup_steps,
        steps_per_epoch: 10,
        total_steps: 100,
    }
}

#[test]
fn constant_schedule() {
    let s = schedule(Schedule::Constant, 0);
    for step in [0, 1, 50, 99, 100, 1000] {
        assert_eq!(s.lr(step), 0.4, "step {step}");
    }
}

#[test]
fn step_decay_schedule() {
    // 10 steps per epoch, ×0.5 every 2 epochs (20 steps).
    let s = schedule(
        Schedule::Step {
            every_epochs: 2,
            gamma: 0.5,
        },
        0,
    );
    for (step, lr) in [
        (0, 0.4),
        (19, 0.4),
        (20, 0.2),
        (39, 0.2),
        (40, 0.1),
        (65, 0.05),
    ] {
        assert!(
            (s.lr(step) - lr).abs() < 1e-7,
            "step {step}: {}",
            s.lr(step)
        );
    }
}

#[test]
fn cosine_schedule_end_points() {
    let s = schedule(Schedule::Cosine, 0);
    assert_eq!(s.lr(0), 0.4);
    assert!((s.lr(50) - 0.2).abs() < 1e-7, "{}", s.lr(50));
    assert!(s.lr(100).abs() < 1e-7, "{}", s.lr(100));
    assert!(
        s.lr(150).abs() < 1e-7,
        "past the end stays at 0: {}",
        s.lr(150)
    );
    // Decreasing throughout.
    assert!((1..=100).all(|t| s.lr(t) <= s.lr(t - 1)));
}

#[test]
fn warmup_ramps_linearly_to_the_base_rate() {
    let s = schedule(Schedule::Constant, 4);
    let lrs: Vec<f32> = (0..6).map(|t| s.lr(t)).collect();
    let expected = [0.1, 0.2, 0.3, 0.4, 0.4, 0.4];
    for (t, (a, e)) in lrs.iter().zip(expected).enumerate() {
        assert!((a - e).abs() < 1e-7, "step {t}: {lrs:?}");
    }
    // Warm-up scales the decayed rate: cosine at step 0 is the base rate.
    let s = schedule(Schedule::Cosine, 4);
    assert!((s.lr(0) - 0.1).abs() < 1e-7, "{}", s.lr(0));
}

#[test]
fn optimizer_names_round_trip_and_unknown_names_are_errors() {
    for kind in OptimizerKind::ALL {
        assert_eq!(OptimizerKind::from_name(kind.name()).unwrap(), kind);
    }
    for bad in ["adamx", "Adam", "", "sgd "] {
        let err = OptimizerKind::from_name(bad).unwrap_err().to_string();
        assert!(err.contains("unknown optimizer"), "{err}");
        assert!(err.contains(&format!("{bad:?}")), "{err}");
        for kind in OptimizerKind::ALL {
            assert!(
                err.contains(kind.name()),
                "{err} should list {}",
                kind.name()
            );
        }
    }
}

#[test]
fn settings_defaults_and_invalid_weight_decay() {
    let s = OptimizerSettings::new(OptimizerKind::Adagrad, 0.0).unwrap();
    assert_eq!(s.eps, 1e-10);
    let s = OptimizerSettings::new(OptimizerKind::Adam, 0.01).unwrap();
    assert_eq!((s.beta1, s.beta2, s.eps), (0.9, 0.999, 1e-8));
    for bad in [-0.1, f32::NAN, f32::INFINITY] {
        assert!(
            OptimizerSettings::new(OptimizerKind::Sgd, bad).is_err(),
            "{bad}"
        );
    }
}
