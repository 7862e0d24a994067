//! Host side of `shaders/pool.wgsl`: max and average pooling.

use std::sync::Arc;

use super::context::{GpuContext, KernelSpec, Params, grid, grid_extent};
use super::modules::ModuleSource;
use super::tensor::{GpuIndices, GpuTensor};
use crate::geometry::{Activation, Pool2dGeometry};

pub(super) const MODULE: ModuleSource = ModuleSource {
    family: "pool",
    source: concat!(
        include_str!("../../shaders/pool.wgsl"),
        include_str!("../../shaders/window_max.wgsl")
    ),
};

/// The uniform parameters; window size and stride are pipeline constants
/// instead ([`kernel`]).
fn params(g: &Pool2dGeometry) -> Params {
    Params::new()
        .u32(g.batch)
        .u32(g.channels)
        .u32(g.height)
        .u32(g.width)
        .u32(g.padding)
        .u32(g.out_h)
        .u32(g.out_w)
}

fn kernel(
    ctx: &GpuContext,
    entry: &'static str,
    inputs: usize,
    outputs: usize,
    g: &Pool2dGeometry,
) -> Arc<super::context::Kernel> {
    ctx.kernel(&spec(entry, inputs, outputs, g))
}

fn spec(entry: &'static str, inputs: usize, outputs: usize, g: &Pool2dGeometry) -> KernelSpec {
    KernelSpec::new(MODULE, entry, inputs, outputs)
        .with("KERNEL", g.kernel as f64)
        .with("STRIDE", g.stride as f64)
}

/// Workgroups over `positions` per plane and the batch's planes.
fn plane_grid(positions: usize, g: &Pool2dGeometry) -> [u32; 3] {
    [
        positions.div_ceil(64) as u32,
        grid_extent(g.batch * g.channels),
        1,
    ]
}

/// Window maxima and their arg-max positions `h·W + w`.
pub fn maxpool_forward(
    ctx: &GpuContext,
    x: &GpuTensor,
    g: &Pool2dGeometry,
) -> (GpuTensor, GpuIndices) {
    assert_eq!(x.shape, g.input_shape(), "maxpool input shape");
    let y = ctx.tensor(&g.output_shape(), "maxpool.y");
    let argmax = argmax_for(ctx, &y);
    let (kernel, workgroups) = if pairs(g) {
        let entry = if quads(g) {
            "maxpool_forward_quads"
        } else {
            "maxpool_forward_pairs"
        };
        (ctx.kernel(&pairs_spec(entry, 1, 2, g)), pairs_grid(g))
    } else {
        (
            kernel(ctx, "maxpool_forward", 1, 2, g),
            plane_grid(g.out_h * g.out_w, g),
        )
    };
    ctx.dispatch(
        &kernel,
        &params(g),
        &[&x.buffer],
        &[&y.buffer, &argmax.buffer],
        workgroups,
    );
    (y, argmax)
}

/// A buffer for the arg-max of each of a max pool's outputs `y`.
pub(super) fn argmax_for(ctx: &GpuContext, y: &GpuTensor) -> GpuIndices {
    GpuIndices {
        buffer: Arc::new(ctx.storage_buffer(4 * y.len() as u64, "maxpool.argmax")),
        len: y.len(),
    }
}

/// Whether the 2×2-tile kernels (`*_pairs`) pool `g`.
fn pairs(g: &Pool2dGeometry) -> bool {
    windows_tile(g) && g.kernel == 2
}

/// Whether the 2×2-tile kernels take two outputs per invocation
/// (`*_quads`): an even output width, so each pair of outputs is in one row
/// and its inputs are whole vec4s.
fn quads(g: &Pool2dGeometry) -> bool {
    pairs(g) && g.out_w.is_multiple_of(2)
}

/// A pairs or quads kernel's spec: the output size is a pipeline constant.
fn pairs_spec(
    entry: &'static str,
    inputs: usize,
    outputs: usize,
    g: &Pool2dGeometry,
) -> KernelSpec {
    spec(entry, inputs, outputs, g)
        .with("OUT_H", g.out_h as f64)
        .with("OUT_W", g.out_w as f64)
}

/// One pairs invocation per output of the batch, or one quads invocation
/// per two.
fn pairs_grid(g: &Pool2dGeometry) -> [u32; 3] {
    let outputs = g.batch * g.channels * g.out_h * g.out_w;
    let per_invocation = if quads(g) { 2 } else { 1 };
    grid(outputs / per_invocation, 64)
}

/// `dx` gathering each window's `dy` at its arg-max.
pub fn maxpool_backward(
    ctx: &GpuContext,
    dy: &GpuTensor,
    argmax: &GpuIndices,
    g: &Pool2dGeometry,
) -> GpuTensor {
    maxpool_backward_through(ctx, dy, argmax, g, None)
}

/// [`maxpool_backward`] of `dy` taken through `act` first, from the pooled
/// output `pooled` (the activation's output at each arg-max): one pass for
/// the activation's backward and the pool's. `act` must keep the sign
/// (relu or leaky relu), as the layers that fuse it check.
pub fn maxpool_backward_masked(
    ctx: &GpuContext,
    dy: &GpuTensor,
    argmax: &GpuIndices,
    g: &Pool2dGeometry,
    act: Activation,
    pooled: &GpuTensor,
) -> GpuTensor {
    assert_eq!(
        pooled.shape,
        g.output_shape(),
        "maxpool pooled output shape"
    );
    maxpool_backward_through(ctx, dy, argmax, g, Some((act, pooled)))
}

fn maxpool_backward_through(
    ctx: &GpuContext,
    dy: &GpuTensor,
    argmax: &GpuIndices,
    g: &Pool2dGeometry,
    mask: Option<(Activation, &GpuTensor)>,
) -> GpuTensor {
    assert_eq!(dy.shape, g.output_shape(), "maxpool output gradient shape");
    let dx = ctx.tensor(&g.input_shape(), "maxpool.dx");
    let (entry, workgroups) = if quads(g) {
        ("maxpool_backward_quads", pairs_grid(g))
    } else if pairs(g) {
        ("maxpool_backward_pairs", pairs_grid(g))
    } else if windows_tile(g) {
        ("maxpool_backward_tiles", plane_grid(g.out_h * g.out_w, g))
    } else {
        ("maxpool_backward", plane_grid(g.height * g.width, g))
    };
    let (mode, slope, pooled) = match mask {
        None => (0, 0.0, dy),
        Some((Activation::Relu, pooled)) => (1, 0.0, pooled),
        Some((Activation::LeakyRelu { negative_slope }, pooled)) => (2, negative_slope, pooled),
        Some((act, _)) => panic!("max pooling cannot take the gradient through {act:?}"),
    };
    let mut spec = if pairs(g) {
        pairs_spec(entry, 3, 1, g)
    } else {
        spec(entry, 3, 1, g)
    };
    if mode != 0 {
        spec = spec
            .with("MASK", mode as f64)
            .with("SLOPE", f64::from(slope));
    }
    let kernel = ctx.kernel(&spec);
    ctx.dispatch(
        &kernel,
        &params(g),
        // With no mask, dy stands in for the pooled output (never read).
        &[&dy.buffer, &argmax.buffer, &pooled.buffer],
        &[&dx.buffer],
        workgroups,
    );
    dx
}

/// Whether the windows tile the input exactly (each input in one window),
/// so the backward can write each window whole instead of gathering.
fn windows_tile(g: &Pool2dGeometry) -> bool {
    g.stride == g.kernel
        && g.padding == 0
        && g.out_h * g.kernel == g.height
        && g.out_w * g.kernel == g.width
}

/// Window means (padding counted).
pub fn avgpool_forward(ctx: &GpuContext, x: &GpuTensor, g: &Pool2dGeometry) -> GpuTensor {
    assert_eq!(x.shape, g.input_shape(), "avgpool input shape");
    let y = ctx.tensor(&g.output_shape(), "avgpool.y");
    ctx.dispatch(
        &kernel(ctx, "avgpool_forward", 1, 1, g),
        &params(g),
        &[&x.buffer],
        &[&y.buffer],
        plane_grid(g.out_h * g.out_w, g),
    );
    y
}

/// `dx` spreading each `dy` evenly over its window.
pub fn avgpool_backward(ctx: &GpuContext, dy: &GpuTensor, g: &Pool2dGeometry) -> GpuTensor {
    assert_eq!(dy.shape, g.output_shape(), "avgpool output gradient shape");
    let dx = ctx.tensor(&g.input_shape(), "avgpool.dx");
    ctx.dispatch(
        &kernel(ctx, "avgpool_backward", 1, 1, g),
        &params(g),
        &[&dy.buffer],
        &[&dx.buffer],
        plane_grid(g.height * g.width, g),
    );
    dx
}
