//! Benchmarks behind `wgcnn bench`: GEMM throughput, per-layer forward and
//! backward time, and end-to-end training throughput. Every figure is the
//! median of several runs after a warm-up, with the device waited for before
//! the clock stops (or, for layers, read from the device's own timestamps
//! where it has them). Timing never decides a test.

use std::time::Instant;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::geometry::GemmSpec;
use crate::host_memory::{available_bytes, describe_bytes};
use crate::nn::memory::{Workload, check_memory};
use crate::nn::{LayerSpec, Mode, ModelSpec, Sequential, init_parameters};
use crate::optim::{OptimizerKind, OptimizerSettings};
use crate::rng::SplitMix64;
use crate::tensor::HostTensor;
use crate::train::Trainer;

/// Median of `runs` timings of `f` (seconds), after one untimed warm-up.
pub fn median_seconds(runs: usize, mut f: impl FnMut()) -> f64 {
    median_of(runs, || {
        let start = Instant::now();
        f();
        start.elapsed().as_secs_f64()
    })
}

/// Median of `runs` values of `measure` (each a time it took itself), after
/// one untimed warm-up.
fn median_of(runs: usize, mut measure: impl FnMut() -> f64) -> f64 {
    measure();
    let mut times: Vec<f64> = (0..runs.max(1)).map(|_| measure()).collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Throughput of one GEMM shape.
#[derive(Clone, Debug)]
pub struct GemmResult {
    /// Shape label, `MxNxK` (and where it comes from).
    pub shape: String,
    /// Median seconds per product, packing its operands included.
    pub seconds: f64,
    /// `2·m·n·k / seconds / 1e9`.
    pub gflops: f64,
    /// The clock `seconds` was read from.
    pub clock: Clock,
}

/// Checks that `backend` can hold the operands of an `(m, k)·(k, n)`
/// product: each within the device's per-buffer limit, and the host copies
/// (all three on the CPU path, one at a time on a device, which makes them
/// on the host and uploads them) within the memory the machine has free.
pub fn check_gemm_fits<B: Backend>(backend: &B, m: usize, n: usize, k: usize) -> Result<()> {
    let shape = format!("{m}x{n}x{k}");
    let operands = [("A", m, k), ("B", k, n), ("C", m, n)].map(|(name, rows, cols)| {
        let bytes = 4 * rows as u128 * cols as u128;
        (name, rows, cols, bytes)
    });
    if let Some(max) = backend.max_buffer_bytes() {
        for (name, rows, cols, bytes) in operands {
            if bytes > max as u128 {
                return Err(Error::Setting(format!(
                    "gemm {shape}: {name} ({rows}×{cols}) needs a {} buffer, but this device \
                     allows {} per buffer",
                    describe_bytes(bytes),
                    describe_bytes(max as u128)
                )));
            }
        }
    }
    let host = if backend.keeps_tensors_in_host_memory() {
        operands.iter().map(|o| o.3).sum()
    } else {
        operands[..2].iter().map(|o| o.3).max().unwrap_or(0)
    };
    match available_bytes() {
        Some(free) if host > free as u128 => Err(Error::Setting(format!(
            "gemm {shape} needs at least {} of memory for its operands, but this machine has \
             {} free",
            describe_bytes(host),
            describe_bytes(free as u128)
        ))),
        _ => Ok(()),
    }
}

/// Times `C = A·B` for `(m, k)·(k, n)` on random data: on the device's
/// clock where the backend has one ([`Backend::span_timer`]), which leaves
/// out the submit and the wait (on a fast GPU they were most of a small
/// product's wall time), else on the wall clock with the device waited for.
/// Refuses operands that do not fit ([`check_gemm_fits`]).
pub fn gemm<B: Backend>(
    backend: &B,
    label: String,
    m: usize,
    n: usize,
    k: usize,
    runs: usize,
) -> Result<GemmResult> {
    check_gemm_fits(backend, m, n, k)?;
    let mut rng = SplitMix64::new(7);
    let spec = GemmSpec {
        m,
        n,
        k,
        trans_a: false,
        trans_b: false,
    };
    let a = backend.upload(&HostTensor::new(
        &spec.a_shape(),
        rng.uniform_vec(m * k, -1.0, 1.0),
    ));
    let b = backend.upload(&HostTensor::new(
        &spec.b_shape(),
        rng.uniform_vec(k * n, -1.0, 1.0),
    ));
    let (seconds, clock) = match backend.span_timer() {
        Some(mut timer) => {
            let seconds = median_of(runs, || {
                timer.begin();
                let c = backend.gemm(&a, &b, &spec);
                timer.end();
                let seconds = timer.seconds();
                drop(c);
                seconds
            });
            (seconds, Clock::GpuTimestamps)
        }
        None => {
            let seconds = median_seconds(runs, || {
                let c = backend.gemm(&a, &b, &spec);
                backend.synchronize();
                drop(c);
            });
            (seconds, Clock::Wall)
        }
    };
    backend.take_error()?;
    Ok(GemmResult {
        shape: label,
        seconds,
        gflops: 2.0 * m as f64 * n as f64 * k as f64 / seconds / 1e9,
        clock,
    })
}

/// The adapter's multiply-add throughput in registers.
#[derive(Clone, Debug)]
pub struct PeakResult {
    /// Invocations per run.
    pub invocations: usize,
    /// Loop iterations per invocation.
    pub iterations: u32,
    /// Median seconds per run (device waited for).
    pub seconds: f64,
    /// Floating-point operations per second, in billions.
    pub gflops: f64,
}

/// Measures the multiply-add ceiling of `gpu`'s adapter
/// ([`crate::gpu::peak`]): the loop count grows, one run per count, until
/// a run takes at least 50 ms; then the median of `runs` runs at that
/// count.
pub fn peak(gpu: &crate::gpu::GpuBackend, runs: usize) -> PeakResult {
    use crate::gpu::peak::{FLOPS_PER_ITERATION, PeakBuffers, invocations};
    let ctx = &gpu.ctx;
    let invocations = invocations(ctx);
    let buffers = PeakBuffers::new(ctx, invocations);
    let run = |iterations: u32, runs: usize| {
        median_seconds(runs, || {
            buffers.record(ctx, iterations);
            ctx.synchronize();
        })
    };
    let mut iterations = 16u32;
    let mut seconds = run(iterations, 1).max(1e-9);
    while seconds < 0.05 && iterations < 1 << 24 {
        // Straight to about 50 ms (at most 16× at a time: early runs are
        // mostly fixed costs).
        let factor = (0.05 / seconds).ceil().clamp(2.0, 16.0) as u32;
        iterations = iterations.saturating_mul(factor).min(1 << 24);
        seconds = run(iterations, 1).max(1e-9);
    }
    let seconds = run(iterations, runs).max(1e-9);
    let flops = (invocations as u64 * iterations as u64 * FLOPS_PER_ITERATION) as f64;
    PeakResult {
        invocations,
        iterations,
        seconds,
        gflops: flops / seconds / 1e9,
    }
}

/// The forward GEMM of every convolution of `spec` at batch 1, as
/// `(label, m, n, k)` = `(O, OH·OW, C·k·k)`.
pub fn conv_gemm_shapes(
    name: &str,
    spec: &ModelSpec,
) -> Result<Vec<(String, usize, usize, usize)>> {
    let shapes = spec.shapes(1)?;
    Ok(spec
        .layers
        .iter()
        .enumerate()
        .filter_map(|(i, layer)| match layer {
            LayerSpec::Conv2d {
                out_channels,
                kernel,
                ..
            } => {
                let (input, output) = (&shapes[i], &shapes[i + 1]);
                let (m, n, k) = (
                    *out_channels,
                    output[2] * output[3],
                    input[1] * kernel * kernel,
                );
                Some((format!("{m}x{n}x{k} ({name} layer {i})"), m, n, k))
            }
            _ => None,
        })
        .collect())
}

/// Which clock a time was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// The device's own timestamps around the work's dispatches.
    GpuTimestamps,
    /// Wall time from recording to completion (submit and wait included).
    Wall,
}

impl Clock {
    /// `gpu-timestamps` or `wall`, as tables and JSON show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Clock::GpuTimestamps => "gpu-timestamps",
            Clock::Wall => "wall",
        }
    }
}

/// Forward and backward time of one layer.
#[derive(Clone, Debug)]
pub struct LayerResult {
    /// Layer index and kind, e.g. `3 conv2d`.
    pub layer: String,
    /// Output shape.
    pub output: Vec<usize>,
    /// Median forward milliseconds.
    pub forward_ms: f64,
    /// Median backward milliseconds.
    pub backward_ms: f64,
    /// The clock both times come from.
    pub clock: Clock,
}

/// Times each layer of `spec` forward and backward at batch `batch`: with
/// the device's timestamps around each pass's dispatches where the backend
/// has them ([`Backend::span_timer`]), else with wall clocks (the backward
/// then as forward-and-backward minus forward).
pub fn layers<B: Backend>(
    backend: &B,
    spec: &ModelSpec,
    batch: usize,
    runs: usize,
) -> Result<Vec<LayerResult>> {
    let shapes = spec.shapes(batch)?;
    // Forward and backward, no optimizer.
    let workload = Workload::Train { optimizer_slots: 0 };
    check_memory(backend, spec, batch, workload)?;
    let mut model = Sequential::new(backend, spec, &init_parameters(spec, 1)?, 1)?;
    let mut timer = backend.span_timer();
    let clock = if timer.is_some() {
        Clock::GpuTimestamps
    } else {
        Clock::Wall
    };
    let mut rng = SplitMix64::new(3);
    let mut results = Vec::new();
    for i in 0..model.len() {
        let input = &shapes[i];
        let x = backend.upload(&HostTensor::new(
            input,
            rng.uniform_vec(input.iter().product(), -1.0, 1.0),
        ));
        let output = shapes[i + 1].clone();
        let dy = backend.upload(&HostTensor::new(
            &output,
            rng.uniform_vec(output.iter().product(), -1.0, 1.0),
        ));
        let (forward, backward) = match timer.as_mut() {
            Some(timer) => {
                let forward = median_of(runs, || {
                    timer.begin();
                    model.forward_layer(i, backend, &x, Mode::Train, 0);
                    timer.end();
                    timer.seconds()
                });
                // The backward alone: its forward (which fills the cache it
                // reads) runs before the span begins.
                let backward = median_of(runs, || {
                    model.forward_layer(i, backend, &x, Mode::Train, 0);
                    timer.begin();
                    model.backward_layer(i, backend, &dy);
                    timer.end();
                    timer.seconds()
                });
                (forward, backward)
            }
            None => {
                let forward = median_seconds(runs, || {
                    model.forward_layer(i, backend, &x, Mode::Train, 0);
                    backend.synchronize();
                });
                // A backward needs its forward's cache: time both, subtract
                // the forward.
                let both = median_seconds(runs, || {
                    model.forward_layer(i, backend, &x, Mode::Train, 0);
                    let dx = model.backward_layer(i, backend, &dy);
                    backend.synchronize();
                    drop(dx);
                });
                (forward, (both - forward).max(0.0))
            }
        };
        results.push(LayerResult {
            layer: format!("{i} {}", spec.layers[i].kind()),
            output,
            forward_ms: forward * 1e3,
            backward_ms: backward * 1e3,
            clock,
        });
    }
    backend.take_error()?;
    Ok(results)
}

/// Training throughput of one model at one batch size.
#[derive(Clone, Debug)]
pub struct TrainResult {
    /// Images per second over the timed steps (forward, backward, update).
    pub images_per_second: f64,
    /// Seconds of the very first step (pipelines compiled, buffers created).
    pub first_step_seconds: f64,
    /// Device bytes allocated after the run (`None` on the CPU).
    pub allocated_bytes: Option<u64>,
}

/// A momentum-SGD trainer of `spec` (as the PyTorch reference uses) and one
/// random batch for it.
fn bench_trainer<B: Backend>(
    backend: &B,
    spec: &ModelSpec,
    batch: usize,
) -> Result<(Trainer<B>, crate::data::Batch)> {
    spec.check_trainable(batch)?;
    let settings = OptimizerSettings::new(OptimizerKind::Momentum, 0.0)?;
    let optimizer_slots = settings.kind.state_slots();
    check_memory(backend, spec, batch, Workload::Train { optimizer_slots })?;
    let classes = spec.classes()?;
    let trainer = Trainer::new(
        backend,
        spec,
        &init_parameters(spec, 1)?,
        settings,
        &[],
        0,
        1,
    )?;
    let mut rng = SplitMix64::new(5);
    let shape: Vec<usize> = [&[batch][..], &spec.input].concat();
    let batch_data = crate::data::Batch {
        images: HostTensor::new(&shape, rng.uniform_vec(shape.iter().product(), -1.0, 1.0)),
        labels: (0..batch).map(|_| rng.below(classes as u32)).collect(),
    };
    Ok((trainer, batch_data))
}

/// Trains `spec` on random data at batch `batch` with momentum SGD (as the
/// PyTorch reference does): one timed first step, then the median of `runs`
/// timings of `steps` steps each (after one untimed round).
pub fn train<B: Backend>(
    backend: &B,
    spec: &ModelSpec,
    batch: usize,
    steps: usize,
    runs: usize,
) -> Result<TrainResult> {
    let (mut trainer, batch_data) = bench_trainer(backend, spec, batch)?;
    let step = |trainer: &mut Trainer<B>| {
        trainer.train_step(backend, &batch_data, 0.01);
        backend.end_step();
    };
    let start = Instant::now();
    step(&mut trainer);
    backend.synchronize();
    let first_step_seconds = start.elapsed().as_secs_f64();
    let seconds = median_seconds(runs, || {
        for _ in 0..steps {
            step(&mut trainer);
        }
        backend.synchronize();
    });
    backend.take_error()?;
    Ok(TrainResult {
        images_per_second: (steps * batch) as f64 / seconds,
        first_step_seconds,
        allocated_bytes: backend.allocated_bytes(),
    })
}

/// One kernel's share of a training step.
#[derive(Clone, Debug)]
pub struct KernelShare {
    /// Kernel label (shader family, entry point, constants) and its grid.
    pub kernel: String,
    /// Dispatches per step.
    pub calls_per_step: f64,
    /// Milliseconds per step, each dispatch waited for on its own.
    pub ms_per_step: f64,
    /// The clock they were read from: the device's timestamps around each
    /// dispatch, or the wall time of its submit and wait.
    pub clock: Clock,
}

/// Where a training step's GPU time goes: after one untimed step, `steps`
/// steps run with every dispatch submitted and waited for on its own and
/// timed on the device's clock where it has timestamp queries
/// ([`crate::gpu::GpuContext::set_profiling`]). Slowest first.
pub fn kernels(
    gpu: &crate::gpu::GpuBackend,
    spec: &ModelSpec,
    batch: usize,
    steps: usize,
) -> Result<Vec<KernelShare>> {
    let (mut trainer, batch_data) = bench_trainer(gpu, spec, batch)?;
    trainer.train_step(gpu, &batch_data, 0.01);
    gpu.synchronize();
    gpu.ctx.set_profiling(true);
    for _ in 0..steps {
        trainer.train_step(gpu, &batch_data, 0.01);
        gpu.end_step();
    }
    let profile = gpu.ctx.profile();
    gpu.ctx.set_profiling(false);
    gpu.ctx.take_error()?;
    let steps = steps.max(1) as f64;
    let clock = if gpu.ctx.profiles_on_gpu_clock() {
        Clock::GpuTimestamps
    } else {
        Clock::Wall
    };
    Ok(profile
        .into_iter()
        .map(|(kernel, t)| KernelShare {
            kernel,
            calls_per_step: t.calls as f64 / steps,
            ms_per_step: t.seconds * 1e3 / steps,
            clock,
        })
        .collect())
}
