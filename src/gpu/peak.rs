//! The adapter's multiply-add throughput in registers
//! (`shaders/peak.wgsl`): the ceiling no kernel passes, measured so that
//! `wgcnn bench` can say how close each GEMM comes to what the device can
//! do at all.

use super::context::{GpuBuffer, GpuContext, KernelSpec, Params, grid};

const SOURCE: &str = include_str!("../../shaders/peak.wgsl");

/// Floating-point operations one invocation does per loop iteration: 16
/// vec4 chains × 4 steps × 2 (a multiply and an add).
pub const FLOPS_PER_ITERATION: u64 = 16 * 4 * 4 * 2;

/// Every chain's `x` and `y`: each chain settles at `y / (1 − x)` = 0.5.
pub const COEFFICIENTS: [f32; 2] = [0.5, 0.25];

/// Invocations a measurement runs: enough to fill every core of a large
/// GPU several times over, or every thread of a CPU-like adapter.
pub fn invocations(ctx: &GpuContext) -> usize {
    if ctx.is_software() { 1 << 12 } else { 1 << 20 }
}

/// The buffers one measurement uses: the coefficients, and one vec4 out
/// per invocation.
pub struct PeakBuffers {
    coefficients: GpuBuffer,
    /// Each invocation's sum of its 16 chains.
    pub out: GpuBuffer,
    invocations: usize,
}

impl PeakBuffers {
    /// Buffers for `invocations` invocations.
    pub fn new(ctx: &GpuContext, invocations: usize) -> Self {
        let [x, y] = COEFFICIENTS;
        let coefficients: Vec<f32> = [[x; 4], [y; 4]].concat();
        Self {
            coefficients: ctx
                .storage_buffer_with(bytemuck::cast_slice(&coefficients), "peak.coefficients"),
            out: ctx.storage_buffer(16 * invocations as u64, "peak.out"),
            invocations,
        }
    }

    /// Records one run of `iterations` loop iterations per invocation:
    /// `invocations · iterations ·` [`FLOPS_PER_ITERATION`] operations.
    pub fn record(&self, ctx: &GpuContext, iterations: u32) {
        let kernel = ctx.kernel(&KernelSpec::new("peak", SOURCE, "multiply_adds", 1, 1));
        ctx.dispatch(
            &kernel,
            &Params::new().u32(iterations as usize),
            &[&self.coefficients],
            &[&self.out],
            grid(self.invocations, 64),
        );
    }
}
