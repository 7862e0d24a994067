//! Host side of `shaders/batchnorm.wgsl`: batch normalisation over `(N, D)` or
//! `(N, C, H, W)` input, per channel.

use super::context::{GpuContext, KernelSpec, Params, grid};
use super::tensor::GpuTensor;
use super::workgroup_sum::SummingModule;
use crate::backend::{BatchNormGrads, BatchNormSaved, BatchNormTrain};
use crate::geometry::{BatchNormLayout, BatchNormSettings};

pub(super) static SOURCE: SummingModule =
    SummingModule::new("batchnorm", include_str!("../../shaders/batchnorm.wgsl"));

fn layout(x: &GpuTensor) -> BatchNormLayout {
    BatchNormLayout::of_shape(&x.shape).expect("batchnorm shape validated by the layer")
}

fn params(l: &BatchNormLayout, s: &BatchNormSettings, training: bool) -> Params {
    Params::new()
        .u32(l.batch)
        .u32(l.channels)
        .u32(l.spatial)
        .f32(s.eps)
        .f32(s.momentum)
        .u32(training as usize)
}

fn kernel(
    ctx: &GpuContext,
    entry: &'static str,
    inputs: usize,
    outputs: usize,
) -> std::sync::Arc<super::context::Kernel> {
    ctx.kernel(&KernelSpec::new(SOURCE.module(ctx), entry, inputs, outputs))
}

/// Consecutive elements each invocation of the elementwise kernels takes
/// (`RUN` in shaders/batchnorm.wgsl).
const ELEMENTS_PER_INVOCATION: usize = 8;

/// `vec4`, the kernel reading whole vec4s, when every channel's plane is
/// whole vec4s; else `scalar`, its twin reading one value at a time.
fn by_vec4(l: &BatchNormLayout, scalar: &'static str, vec4: &'static str) -> &'static str {
    if l.spatial.is_multiple_of(4) {
        vec4
    } else {
        scalar
    }
}

/// `y = γ·(x − μ)·invstd + β` with the given per-channel statistics.
fn normalize(
    ctx: &GpuContext,
    l: &BatchNormLayout,
    x: &GpuTensor,
    gamma: &GpuTensor,
    beta: &GpuTensor,
    saved: &BatchNormSaved<GpuTensor>,
    p: &Params,
) -> GpuTensor {
    let y = ctx.tensor(&x.shape, "batchnorm.y");
    ctx.dispatch(
        &kernel(ctx, by_vec4(l, "normalize", "normalize4"), 5, 1),
        p,
        &[
            &x.buffer,
            &saved.mean.buffer,
            &saved.invstd.buffer,
            &gamma.buffer,
            &beta.buffer,
        ],
        &[&y.buffer],
        grid(x.len().div_ceil(ELEMENTS_PER_INVOCATION), 256),
    );
    y
}

/// Training mode: batch statistics, normalisation, running-statistic update.
pub fn forward_train(
    ctx: &GpuContext,
    x: &GpuTensor,
    gamma: &GpuTensor,
    beta: &GpuTensor,
    running_mean: &GpuTensor,
    running_var: &GpuTensor,
    s: &BatchNormSettings,
) -> BatchNormTrain<GpuTensor> {
    let l = layout(x);
    let p = params(&l, s, true);
    let c = [l.channels];
    let saved = BatchNormSaved {
        mean: ctx.tensor(&c, "batchnorm.mean"),
        invstd: ctx.tensor(&c, "batchnorm.invstd"),
    };
    let new_mean = ctx.tensor(&c, "batchnorm.running_mean");
    let new_var = ctx.tensor(&c, "batchnorm.running_var");
    ctx.dispatch(
        &kernel(
            ctx,
            by_vec4(&l, "batch_statistics", "batch_statistics4"),
            3,
            4,
        ),
        &p,
        &[&x.buffer, &running_mean.buffer, &running_var.buffer],
        &[
            &saved.mean.buffer,
            &saved.invstd.buffer,
            &new_mean.buffer,
            &new_var.buffer,
        ],
        grid(l.channels, 1),
    );
    let y = normalize(ctx, &l, x, gamma, beta, &saved, &p);
    BatchNormTrain {
        y,
        saved,
        running_mean: new_mean,
        running_var: new_var,
    }
}

/// Evaluation mode: normalise with the running statistics.
pub fn forward_eval(
    ctx: &GpuContext,
    x: &GpuTensor,
    gamma: &GpuTensor,
    beta: &GpuTensor,
    running_mean: &GpuTensor,
    running_var: &GpuTensor,
    s: &BatchNormSettings,
) -> (GpuTensor, BatchNormSaved<GpuTensor>) {
    let l = layout(x);
    let p = params(&l, s, false);
    let c = [l.channels];
    let saved = BatchNormSaved {
        mean: ctx.tensor(&c, "batchnorm.mean"),
        invstd: ctx.tensor(&c, "batchnorm.invstd"),
    };
    ctx.dispatch(
        &kernel(ctx, "running_statistics", 2, 2),
        &p,
        &[&running_mean.buffer, &running_var.buffer],
        &[&saved.mean.buffer, &saved.invstd.buffer],
        grid(l.channels, 256),
    );
    let y = normalize(ctx, &l, x, gamma, beta, &saved, &p);
    (y, saved)
}

/// `dβ = Σ dy`, `dγ = Σ dy·x̂`, then `dx` (training or evaluation formula).
pub fn backward(
    ctx: &GpuContext,
    x: &GpuTensor,
    gamma: &GpuTensor,
    saved: &BatchNormSaved<GpuTensor>,
    dy: &GpuTensor,
    training: bool,
) -> BatchNormGrads<GpuTensor> {
    assert_eq!(x.shape, dy.shape, "batchnorm gradient shape");
    let l = layout(x);
    let p = params(&l, &BatchNormSettings::default(), training);
    let c = [l.channels];
    let dgamma = ctx.tensor(&c, "batchnorm.dgamma");
    let dbeta = ctx.tensor(&c, "batchnorm.dbeta");
    ctx.dispatch(
        &kernel(ctx, by_vec4(&l, "backward_sums", "backward_sums4"), 4, 2),
        &p,
        &[
            &x.buffer,
            &dy.buffer,
            &saved.mean.buffer,
            &saved.invstd.buffer,
        ],
        &[&dgamma.buffer, &dbeta.buffer],
        grid(l.channels, 1),
    );
    let dx = ctx.tensor(&x.shape, "batchnorm.dx");
    ctx.dispatch(
        &kernel(ctx, by_vec4(&l, "backward_dx", "backward_dx4"), 7, 1),
        &p,
        &[
            &x.buffer,
            &dy.buffer,
            &saved.mean.buffer,
            &saved.invstd.buffer,
            &gamma.buffer,
            &dgamma.buffer,
            &dbeta.buffer,
        ],
        &[&dx.buffer],
        grid(x.len().div_ceil(ELEMENTS_PER_INVOCATION), 256),
    );
    BatchNormGrads { dx, dgamma, dbeta }
}
