//! `wgcnn bench peak` counts 512 floating-point operations per loop
//! iteration of every invocation: the kernel must really do them, and a
//! compiler must not have folded any away. Each invocation's stored sum is
//! checked against the same chains evaluated on the CPU.

mod common;

use wgcnn::gpu::peak::{CHAINS, COEFFICIENTS, PeakBuffers, chain_offset};

/// What invocation `index` stores after `iterations` loop iterations: its
/// chains a ← a·x + y, four steps per iteration, added in pairs, then
/// pairs of pairs, as the kernel adds them.
fn expected(index: usize, iterations: u32) -> f32 {
    let [x, y] = COEFFICIENTS;
    let start = (index % 64) as f32 * 0.015625;
    let mut terms: Vec<f32> = (0..CHAINS)
        .map(|c| {
            let mut a = start + chain_offset(c);
            for _ in 0..4 * iterations {
                a = a * x + y;
            }
            a
        })
        .collect();
    while terms.len() > 1 {
        terms = terms.chunks(2).map(|pair| pair.iter().sum()).collect();
    }
    terms[0]
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
