//! Host side of `shaders/optim.wgsl`: the optimizer update rules, applied in
//! place to a parameter and its state buffers.

use std::sync::Arc;

use super::context::{GpuContext, KernelSpec, Params, grid};
use super::tensor::GpuTensor;
use crate::optim::{OptimizerKind, OptimizerSettings, UpdateStep};

const SOURCE: &str = include_str!("../../shaders/optim.wgsl");

/// The shader entry point of each rule.
fn entry(kind: OptimizerKind) -> &'static str {
    match kind {
        OptimizerKind::Sgd => "sgd",
        OptimizerKind::Momentum => "momentum",
        OptimizerKind::Nesterov => "nesterov",
        OptimizerKind::Adagrad => "adagrad",
        OptimizerKind::RmsProp => "rmsprop",
        OptimizerKind::Adam => "adam",
        OptimizerKind::AdamW => "adamw",
    }
}

/// Records one update of `param` from `grad`, writing `param` and the rule's
/// `state` buffers in place (see [`crate::cpu::optimizer_update`] for the
/// formulas). Adam's bias corrections `1 − βᵗ` are computed here in `f32`,
/// exactly as the CPU reference computes them.
///
/// # Panics
/// When `state` does not hold `settings.kind.state_slots()` tensors, when
/// `grad` or a state tensor is not shaped like `param`, or when two of the
/// tensors share a buffer.
pub fn optimizer_update(
    ctx: &GpuContext,
    settings: &OptimizerSettings,
    step: &UpdateStep,
    param: &GpuTensor,
    grad: &GpuTensor,
    state: &[GpuTensor],
) {
    let kind = settings.kind;
    assert_eq!(
        state.len(),
        kind.state_slots(),
        "{}: expected {} state tensors, got {}",
        kind.name(),
        kind.state_slots(),
        state.len()
    );
    assert_eq!(
        grad.shape,
        param.shape,
        "{}: gradient shape {:?} differs from parameter shape {:?}",
        kind.name(),
        grad.shape,
        param.shape
    );
    for (slot, s) in state.iter().enumerate() {
        assert_eq!(
            s.shape,
            param.shape,
            "{}: state {slot} shape {:?} differs from parameter shape {:?}",
            kind.name(),
            s.shape,
            param.shape
        );
    }
    let buffers: Vec<&Arc<wgpu::Buffer>> = [grad, param]
        .into_iter()
        .chain(state)
        .map(|t| &t.buffer)
        .collect();
    for (i, a) in buffers.iter().enumerate() {
        assert!(
            buffers[..i].iter().all(|b| !Arc::ptr_eq(a, b)),
            "{}: the parameter, its gradient and its state must be distinct buffers",
            kind.name()
        );
    }
    if param.is_empty() {
        return;
    }

    let t = i32::try_from(step.t).expect("step count fits in an i32");
    let correction1 = 1.0 - settings.beta1.powi(t);
    let correction2 = 1.0 - settings.beta2.powi(t);
    let params = Params::new()
        .u32(param.len())
        .f32(step.lr)
        .f32(settings.weight_decay)
        .f32(settings.momentum)
        .f32(settings.alpha)
        .f32(settings.beta1)
        .f32(settings.beta2)
        .f32(settings.eps)
        .f32(correction1)
        .f32(correction2);
    let kernel = ctx.kernel(&KernelSpec::new(
        "optim",
        SOURCE,
        entry(kind),
        1,
        1 + state.len(),
    ));
    let mut outputs: Vec<&wgpu::Buffer> = vec![&param.buffer];
    outputs.extend(state.iter().map(|s| &*s.buffer));
    ctx.dispatch(
        &kernel,
        &params,
        &[&grad.buffer],
        &outputs,
        grid(param.len(), 256),
    );
}
