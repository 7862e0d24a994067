//! Host side of `shaders/elementwise.wgsl`: activations and dropout.

use super::context::{GpuContext, KernelSpec, Params, grid};
use super::modules::ModuleSource;
use super::tensor::GpuTensor;
use crate::geometry::{Activation, DropoutSettings};

pub(super) const MODULE: ModuleSource = ModuleSource {
    family: "elementwise",
    source: include_str!("../../shaders/elementwise.wgsl"),
};

/// Runs entry point `entry` over `a` (and `b`) into a new tensor shaped like
/// `a`: its vec4 twin (`entry` + `4`, one vec4 per invocation) where there
/// is one and the length is whole vec4s.
fn run(
    ctx: &GpuContext,
    entry: &'static str,
    params: Params,
    a: &GpuTensor,
    b: &GpuTensor,
) -> GpuTensor {
    assert_eq!(a.shape, b.shape, "{entry}: operand shapes differ");
    let out = ctx.tensor(&a.shape, entry);
    let (entry, invocations) = match vec4_twin(entry) {
        Some(twin) if a.len().is_multiple_of(4) => (twin, a.len() / 4),
        _ => (entry, a.len()),
    };
    let kernel = ctx.kernel(&KernelSpec::new(MODULE, entry, 2, 1));
    ctx.dispatch(
        &kernel,
        &params,
        &[&a.buffer, &b.buffer],
        &[&out.buffer],
        grid(invocations, 256),
    );
    out
}

/// The entry point computing `entry` a vec4 at a time, if there is one.
fn vec4_twin(entry: &str) -> Option<&'static str> {
    Some(match entry {
        "relu_forward" => "relu_forward4",
        "relu_backward" => "relu_backward4",
        "leaky_relu_forward" => "leaky_relu_forward4",
        "leaky_relu_backward" => "leaky_relu_backward4",
        _ => return None,
    })
}

fn activation_params(act: Activation, len: usize) -> Params {
    let alpha = match act {
        Activation::LeakyRelu { negative_slope } => negative_slope,
        _ => 0.0,
    };
    Params::new().u32(len).f32(alpha).u32(0).u32(0)
}

/// `y = f(x)`.
pub fn activation_forward(ctx: &GpuContext, act: Activation, x: &GpuTensor) -> GpuTensor {
    let entry = match act {
        Activation::Relu => "relu_forward",
        Activation::LeakyRelu { .. } => "leaky_relu_forward",
        Activation::Sigmoid => "sigmoid_forward",
        Activation::Tanh => "tanh_forward",
    };
    run(ctx, entry, activation_params(act, x.len()), x, x)
}

/// `dx = dy · f'`, with `f'` from `x` (relu, leaky relu) or `y` (sigmoid, tanh).
pub fn activation_backward(
    ctx: &GpuContext,
    act: Activation,
    x: &GpuTensor,
    y: &GpuTensor,
    dy: &GpuTensor,
) -> GpuTensor {
    let (entry, source) = match act {
        Activation::Relu => ("relu_backward", x),
        Activation::LeakyRelu { .. } => ("leaky_relu_backward", x),
        Activation::Sigmoid => ("sigmoid_backward", y),
        Activation::Tanh => ("tanh_backward", y),
    };
    run(ctx, entry, activation_params(act, dy.len()), source, dy)
}

/// `x · keep / (1 − p)`: dropout's forward on `x`, or its backward on `dy`.
pub fn dropout(ctx: &GpuContext, x: &GpuTensor, d: &DropoutSettings) -> GpuTensor {
    let params = Params::new()
        .u32(x.len())
        .f32(d.p)
        .u32(d.seed as usize)
        .u32(d.step as usize);
    run(ctx, "dropout", params, x, x)
}
