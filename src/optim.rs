//! Optimizers and learning-rate schedules (settings and host-side logic). The
//! per-parameter update rules run as `Backend::optimizer_update`: a WGSL kernel
//! on the GPU (`shaders/optim.wgsl`) and a reference loop on the CPU
//! (`cpu/optim.rs`).

use crate::error::{Error, Result};

/// The update rule. Semantics follow PyTorch's `torch.optim` classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OptimizerKind {
    /// `p ← p − lr·g`.
    Sgd,
    /// Heavy ball: `v ← μ·v + g`, `p ← p − lr·v`.
    Momentum,
    /// Nesterov: `v ← μ·v + g`, `p ← p − lr·(g + μ·v)`.
    Nesterov,
    /// `s ← s + g²`, `p ← p − lr·g/(√s + ε)`.
    Adagrad,
    /// `s ← α·s + (1 − α)·g²`, `p ← p − lr·g/(√s + ε)`.
    RmsProp,
    /// Adam with bias correction; weight decay added to the gradient (L2).
    Adam,
    /// Adam with decoupled weight decay: `p ← p·(1 − lr·wd)` before the step.
    AdamW,
}

impl OptimizerKind {
    /// Every kind, in the order `wgcnn check` lists them.
    pub const ALL: [OptimizerKind; 7] = [
        OptimizerKind::Sgd,
        OptimizerKind::Momentum,
        OptimizerKind::Nesterov,
        OptimizerKind::Adagrad,
        OptimizerKind::RmsProp,
        OptimizerKind::Adam,
        OptimizerKind::AdamW,
    ];

    /// The name used on the command line and in `wgcnn check`.
    pub fn name(self) -> &'static str {
        match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Momentum => "momentum",
            OptimizerKind::Nesterov => "nesterov",
            OptimizerKind::Adagrad => "adagrad",
            OptimizerKind::RmsProp => "rmsprop",
            OptimizerKind::Adam => "adam",
            OptimizerKind::AdamW => "adamw",
        }
    }

    /// Parses a name from [`OptimizerKind::name`].
    pub fn from_name(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|k| k.name()).collect();
                Error::Setting(format!(
                    "unknown optimizer {name:?}; expected one of {names:?}"
                ))
            })
    }

    /// Checks an update's operands: `state_slots()` state tensors, and the
    /// gradient and every state shaped like the parameter.
    ///
    /// # Panics
    /// On a mismatch: the caller built the operands wrong.
    pub fn check_operands<'a>(
        self,
        param: &[usize],
        grad: &[usize],
        state: impl ExactSizeIterator<Item = &'a [usize]>,
    ) {
        assert_eq!(
            state.len(),
            self.state_slots(),
            "{}: expected {} state tensors, got {}",
            self.name(),
            self.state_slots(),
            state.len()
        );
        assert_eq!(
            grad,
            param,
            "{}: gradient shape {grad:?} differs from parameter shape {param:?}",
            self.name()
        );
        for (slot, s) in state.enumerate() {
            assert_eq!(
                s,
                param,
                "{}: state {slot} shape {s:?} differs from parameter shape {param:?}",
                self.name()
            );
        }
    }

    /// State tensors per parameter, each shaped like the parameter and
    /// starting at zero: 0 for sgd, 1 (velocity or squared-gradient average)
    /// for momentum, nesterov, adagrad and rmsprop, 2 (first and second
    /// moments) for adam and adamw.
    pub fn state_slots(self) -> usize {
        match self {
            OptimizerKind::Sgd => 0,
            OptimizerKind::Momentum
            | OptimizerKind::Nesterov
            | OptimizerKind::Adagrad
            | OptimizerKind::RmsProp => 1,
            OptimizerKind::Adam | OptimizerKind::AdamW => 2,
        }
    }
}

/// Hyper-parameters of an optimizer (PyTorch's defaults where it has them).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptimizerSettings {
    /// The rule.
    pub kind: OptimizerKind,
    /// μ for momentum and nesterov (0.9).
    pub momentum: f32,
    /// α, the squared-gradient decay of rmsprop (0.99).
    pub alpha: f32,
    /// β₁ of adam/adamw (0.9).
    pub beta1: f32,
    /// β₂ of adam/adamw (0.999).
    pub beta2: f32,
    /// ε added to the denominator (1e-8; adagrad uses 1e-10 in PyTorch).
    pub eps: f32,
    /// Weight decay: L2 added to the gradient, or decoupled for adamw.
    pub weight_decay: f32,
}

impl OptimizerSettings {
    /// The kind's defaults with weight decay `weight_decay`.
    pub fn new(kind: OptimizerKind, weight_decay: f32) -> Result<Self> {
        if !(weight_decay >= 0.0 && weight_decay.is_finite()) {
            return Err(Error::Setting(format!(
                "weight decay {weight_decay} must be a finite number >= 0"
            )));
        }
        Ok(Self {
            kind,
            momentum: 0.9,
            alpha: 0.99,
            beta1: 0.9,
            beta2: 0.999,
            eps: if kind == OptimizerKind::Adagrad {
                1e-10
            } else {
                1e-8
            },
            weight_decay,
        })
    }
}

/// One update's step-dependent values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UpdateStep {
    /// Learning rate for this step (after the schedule).
    pub lr: f32,
    /// 1-based count of updates so far including this one (Adam's bias
    /// correction uses `1 − β^t`).
    pub t: u32,
}

impl UpdateStep {
    /// `[lr, 1 − β₁ᵗ, 1 − β₂ᵗ]` in `f32`: the values of an update that change
    /// every step, handed to the backends as one small tensor.
    pub fn values(&self, settings: &OptimizerSettings) -> [f32; 3] {
        let t = i32::try_from(self.t).expect("step count fits in an i32");
        [
            self.lr,
            1.0 - settings.beta1.powi(t),
            1.0 - settings.beta2.powi(t),
        ]
    }
}

/// How the learning rate changes over training (in a checkpoint's training
/// state as `{"kind": "step", "every_epochs": 5, "gamma": 0.1}` and the like).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Schedule {
    /// The base rate throughout.
    Constant,
    /// Multiply by `gamma` every `every_epochs` epochs.
    Step {
        /// Epochs between decays.
        every_epochs: usize,
        /// Decay factor.
        gamma: f32,
    },
    /// Cosine decay from the base rate to 0 over the whole run.
    Cosine,
}

/// A schedule with optional linear warm-up, evaluated per step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    /// Base learning rate.
    pub base_lr: f32,
    /// The decay shape.
    pub schedule: Schedule,
    /// Steps of linear warm-up from `base_lr / warmup_steps` to `base_lr`.
    pub warmup_steps: usize,
    /// Steps per epoch (for step decay).
    pub steps_per_epoch: usize,
    /// Total steps of the run (for cosine).
    pub total_steps: usize,
}

impl LrSchedule {
    /// Learning rate for 0-based step `step`.
    pub fn lr(&self, step: usize) -> f32 {
        let decayed = match self.schedule {
            Schedule::Constant => self.base_lr,
            Schedule::Step {
                every_epochs,
                gamma,
            } => {
                let epoch = step / self.steps_per_epoch.max(1);
                self.base_lr * gamma.powi((epoch / every_epochs.max(1)) as i32)
            }
            Schedule::Cosine => {
                let progress = step as f64 / self.total_steps.max(1) as f64;
                (self.base_lr as f64
                    * 0.5
                    * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos()))
                    as f32
            }
        };
        if step < self.warmup_steps {
            decayed * (step + 1) as f32 / self.warmup_steps as f32
        } else {
            decayed
        }
    }
}
