//! Host side of `shaders/optim.wgsl`: the optimizer update rules, applied in
//! place to a parameter and its state buffers.

use std::sync::Arc;

use super::context::{GpuBuffer, GpuContext, KernelSpec, Params, grid};
use super::tensor::GpuTensor;
use crate::optim::{OptimizerKind, OptimizerSettings};

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
/// formulas). `step_values` holds `[lr, 1 − β₁ᵗ, 1 − β₂ᵗ]` (see
/// [`crate::optim::UpdateStep::values`]).
///
/// # Panics
/// When `state` does not hold `settings.kind.state_slots()` tensors, when
/// `grad` or a state tensor is not shaped like `param`, or when two of the
/// tensors share a buffer.
pub fn optimizer_update(
    ctx: &GpuContext,
    settings: &OptimizerSettings,
    step_values: &GpuTensor,
    param: &GpuTensor,
    grad: &GpuTensor,
    state: &[GpuTensor],
) {
    let kind = settings.kind;
    kind.check_operands(
        &param.shape,
        &grad.shape,
        state.iter().map(|s| &s.shape[..]),
    );
    let buffers: Vec<&Arc<GpuBuffer>> = [grad, param]
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

    assert_eq!(
        step_values.shape,
        [3],
        "step values are [lr, 1 - beta1^t, 1 - beta2^t]"
    );
    let params = Params::new()
        .u32(param.len())
        .f32(settings.weight_decay)
        .f32(settings.momentum)
        .f32(settings.alpha)
        .f32(settings.beta1)
        .f32(settings.beta2)
        .f32(settings.eps);
    let kernel = ctx.kernel(&KernelSpec::new(
        "optim",
        SOURCE,
        entry(kind),
        2,
        1 + state.len(),
    ));
    let mut outputs: Vec<&GpuBuffer> = vec![&param.buffer];
    outputs.extend(state.iter().map(|s| &*s.buffer));
    ctx.dispatch(
        &kernel,
        &params,
        &[&grad.buffer, &step_values.buffer],
        &outputs,
        grid(param.len(), 256),
    );
}
