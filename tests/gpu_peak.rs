//! `wgcnn bench peak` counts 512 floating-point operations per loop
//! iteration of every invocation: the kernel must really do them, and a
//! compiler must not have folded any away. Each invocation's stored sum is
//! checked against the same chains evaluated on the CPU.

mod common;

use wgcnn::gpu::peak::{COEFFICIENTS, PeakBuffers};

/// What invocation `index` stores after `iterations` loop iterations: its
/// 16 chains a ← a·x + y, four steps per iteration, summed as the kernel
/// sums them.
fn expected(index: usize, iterations: u32) -> f32 {
    let [x, y] = COEFFICIENTS;
    let start = (index % 64) as f32 * 0.015625;
    let offsets = [
        0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.10, 0.11, 0.12, 0.13, 0.14,
        0.15,
    ];
    let chains = offsets.map(|offset: f32| {
        let mut a = start + offset;
        for _ in 0..4 * iterations {
            a = a * x + y;
        }
        a
    });
    // ((a0 + a1) + (a2 + a3)) for each four, the fours added left to right.
    let fours: Vec<f32> = chains
        .chunks(4)
        .map(|c| (c[0] + c[1]) + (c[2] + c[3]))
        .collect();
    ((fours[0] + fours[1]) + fours[2]) + fours[3]
}

#[test]
fn the_peak_kernel_runs_every_multiply_add_it_counts() {
    let Some(gpu) = common::gpu() else {
        return;
    };
    let ctx = &gpu.ctx;
    let invocations = 200;
    let buffers = PeakBuffers::new(ctx, invocations);
    for iterations in [0, 1, 3] {
        buffers.record(ctx, iterations);
        let bytes = ctx.read_back(&buffers.out, 16 * invocations as u64);
        let out: &[f32] = bytemuck::cast_slice(&bytes);
        for index in 0..invocations {
            let want = expected(index, iterations);
            for lane in 0..4 {
                let got = out[4 * index + lane];
                assert!(
                    (got - want).abs() <= 1e-5 * want.abs(),
                    "invocation {index}, {iterations} iterations: {got} instead of {want}"
                );
            }
        }
    }
    ctx.take_error().expect("no wgpu error");
}
