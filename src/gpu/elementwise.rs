//! Host side of `shaders/elementwise.wgsl`: activations and dropout.

use super::context::{GpuContext, KernelSpec, Params, grid};
use super::tensor::GpuTensor;
use crate::geometry::{Activation, DropoutSettings};

const SOURCE: &str = include_str!("../../shaders/elementwise.wgsl");

/// Runs entry point `entry` over `a` (and `b`) into a new tensor shaped like `a`.
fn run(
    ctx: &GpuContext,
    entry: &'static str,
    params: Params,
    a: &GpuTensor,
    b: &GpuTensor,
) -> GpuTensor {
    assert_eq!(a.shape, b.shape, "{entry}: operand shapes differ");
    let out = ctx.tensor(&a.shape, entry);
    let kernel = ctx.kernel(&KernelSpec::new("elementwise", SOURCE, entry, 2, 1));
    ctx.dispatch(
        &kernel,
        &params,
        &[&a.buffer, &b.buffer],
        &[&out.buffer],
        grid(a.len(), 256),
    );
    out
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
