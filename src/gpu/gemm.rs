//! Host side of `shaders/gemm.wgsl`: the matrix products behind convolution
//! and the fully connected layer.

use super::context::{GpuContext, KernelSpec, Params};
use crate::geometry::GemmSpec;

const SOURCE: &str = include_str!("../../shaders/gemm.wgsl");

/// Outputs per invocation along each axis (TM = TN in the shader).
const BLOCK: usize = 4;
/// Invocations per workgroup along each axis.
const WORKGROUP: usize = 8;

/// Which bias the epilogue adds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bias<'a> {
    /// No bias.
    None,
    /// `C[row, col] += bias[row]`.
    PerRow(&'a wgpu::Buffer),
    /// `C[row, col] += bias[col]`.
    PerColumn(&'a wgpu::Buffer),
}

/// How a GEMM is repeated over a batch; strides are in elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batching {
    /// Number of products.
    pub count: usize,
    /// Step between consecutive `A` operands (0: shared).
    pub stride_a: usize,
    /// Step between consecutive `B` operands (0: shared).
    pub stride_b: usize,
    /// Step between consecutive outputs; ignored when `sum` is set.
    pub stride_c: usize,
    /// Sum the products into one output instead of writing each.
    pub sum: bool,
}

impl Batching {
    /// A single product.
    pub const SINGLE: Batching = Batching {
        count: 1,
        stride_a: 0,
        stride_b: 0,
        stride_c: 0,
        sum: false,
    };
}

/// Records `out = op(A)·op(B) (+ bias)` for every batch element (or their sum).
pub fn gemm_into(
    ctx: &GpuContext,
    a: &wgpu::Buffer,
    b: &wgpu::Buffer,
    bias: Bias<'_>,
    out: &wgpu::Buffer,
    spec: &GemmSpec,
    batching: Batching,
) {
    let kernel = ctx.kernel(
        &KernelSpec::new("gemm", SOURCE, "gemm", 3, 1)
            .with("TRANS_A", spec.trans_a as u8 as f64)
            .with("TRANS_B", spec.trans_b as u8 as f64)
            .with("SUM_BATCH", batching.sum as u8 as f64),
    );
    let (bias_buffer, bias_mode) = match bias {
        Bias::None => (out, 0),
        Bias::PerRow(buffer) => (buffer, 1),
        Bias::PerColumn(buffer) => (buffer, 2),
    };
    // With no bias the output buffer stands in at the bias binding; it is never
    // read then, but a read-only and a read-write binding of one buffer in one
    // dispatch is a usage conflict, so bind the A operand instead.
    let bias_buffer = if bias_mode == 0 { a } else { bias_buffer };
    let params = Params::new()
        .u32(spec.m)
        .u32(spec.n)
        .u32(spec.k)
        .u32(batching.count)
        .u32(batching.stride_a)
        .u32(batching.stride_b)
        .u32(batching.stride_c)
        .u32(bias_mode);
    let tile = BLOCK * WORKGROUP;
    let z = if batching.sum { 1 } else { batching.count };
    ctx.dispatch(
        &kernel,
        &params,
        &[a, b, bias_buffer],
        &[out],
        [
            spec.n.div_ceil(tile) as u32,
            spec.m.div_ceil(tile) as u32,
            z as u32,
        ],
    );
}
