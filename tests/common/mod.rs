//! Shared set-up for the tests: one GPU device for the whole test binary, and
//! helpers for running the binary. Each test file uses some of it.
#![allow(dead_code)]

pub mod cli;

use std::sync::OnceLock;

use wgcnn::backend::Backend;
use wgcnn::geometry::Conv2dGeometry;
use wgcnn::gpu::{GpuBackend, GpuTensor};
use wgcnn::rng::SplitMix64;
use wgcnn::tensor::HostTensor;

/// A GPU context of the test's own, so that what the test forces, profiles
/// or limits reaches no other test; `None` where [`gpu`] is (no adapter).
pub fn own_gpu() -> Option<GpuBackend> {
    gpu()?;
    Some(GpuBackend::new(None).expect("a GPU adapter"))
}

/// Asserts that a convolution's gradients `grads`, computed on `gpu` from
/// `x`, `w` and `dy`, match the CPU reference backward of `g`.
pub fn assert_conv_grads_match(
    gpu: &GpuBackend,
    [x, w, dy]: [&GpuTensor; 3],
    grads: &wgcnn::backend::ParamGrads<GpuTensor>,
    g: &Conv2dGeometry,
) {
    let reference =
        wgcnn::cpu::conv2d_backward(&gpu.download(x), &gpu.download(w), &gpu.download(dy), g);
    for (got, want, name) in [
        (&grads.dw, &reference.dw, "dw"),
        (&grads.db, &reference.db, "db"),
        (&grads.dx, &reference.dx, "dx"),
    ] {
        assert_close(&gpu.download(got).data, &want.data, name);
    }
}

/// Uniform random `[x, w, b, dy]` of convolution `g` on the GPU, in [−1, 1).
pub fn random_conv_tensors(
    gpu: &GpuBackend,
    g: &Conv2dGeometry,
    rng: &mut SplitMix64,
) -> [GpuTensor; 4] {
    [
        g.input_shape().to_vec(),
        g.weight_shape().to_vec(),
        vec![g.out_channels],
        g.output_shape().to_vec(),
    ]
    .map(|shape| {
        let len = shape.iter().product();
        gpu.upload(&HostTensor::new(&shape, rng.uniform_vec(len, -1.0, 1.0)))
    })
}

/// What [`train_built_in`] leaves: the trainer, the data's normalisation,
/// and each step's loss (still on the device).
pub struct Trained {
    pub trainer: wgcnn::train::Trainer<GpuBackend>,
    pub norm: wgcnn::data::Normalization,
    pub losses: Vec<GpuTensor>,
}

/// Built-in `model` for `data`'s images and 10 classes (AdamW, lr 1e-3,
/// seed 1) after a step on each of the first `steps` batches of `batch`
/// images (shuffled with seed 1), each ended as training ends a step.
pub fn train_built_in(
    gpu: &GpuBackend,
    model: &str,
    data: &wgcnn::data::Dataset,
    batch: usize,
    steps: usize,
) -> Trained {
    use wgcnn::optim::{OptimizerKind, OptimizerSettings};
    let spec = wgcnn::nn::builtin(model, data.shape, 10).unwrap();
    let norm = wgcnn::data::Normalization::of(data);
    let settings = OptimizerSettings::new(OptimizerKind::AdamW, 1e-3).unwrap();
    let weights = wgcnn::nn::init_parameters(&spec, 1).unwrap();
    let mut trainer =
        wgcnn::train::Trainer::new(gpu, &spec, &weights, settings, &[], 0, 1).unwrap();
    let order = wgcnn::data::epoch_order(data.len(), 1, 0, true);
    let mut losses = Vec::new();
    for indices in order.chunks(batch).take(steps) {
        let batch = wgcnn::data::make_batch(data, indices, &norm, None);
        losses.push(trainer.train_step(gpu, &batch, 1e-3).0);
        gpu.end_step();
    }
    Trained {
        trainer,
        norm,
        losses,
    }
}

/// The shared GPU backend, or `None` (with a loud message) when no adapter is
/// found. With `WGCNN_REQUIRE_GPU=1` a missing adapter fails the test instead,
/// so CI cannot pass by skipping.
pub fn gpu() -> Option<&'static GpuBackend> {
    static GPU: OnceLock<Option<GpuBackend>> = OnceLock::new();
    let gpu = GPU.get_or_init(|| match GpuBackend::new(None) {
        Ok(gpu) => {
            // A static is never dropped, so its precompiling helper could
            // still be inside the driver when the process exits: this one
            // goes without (tests/gpu_precompile.rs tests the helper).
            if let Some(helper) = gpu.ctx.precompiler() {
                helper.finish();
            }
            Some(gpu)
        }
        Err(e) => {
            if std::env::var("WGCNN_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("WGCNN_REQUIRE_GPU=1 but no GPU backend could be opened: {e}");
            }
            None
        }
    });
    if gpu.is_none() {
        eprintln!(
            "\n!!! SKIPPED: no GPU adapter (install mesa-vulkan-drivers for lavapipe); \
             set WGCNN_REQUIRE_GPU=1 to make this a failure !!!\n"
        );
    }
    gpu.as_ref()
}

/// Extent `axis` (0, 1 or 2) of the grid of each kernel in `gpu`'s
/// profile whose label starts with `prefix` (labels end in `[x, y, z]`).
pub fn profiled_grid_extents(gpu: &GpuBackend, prefix: &str, axis: usize) -> Vec<u32> {
    gpu.ctx
        .profile()
        .into_iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .filter_map(|(k, _)| {
            let grid = k.rsplit_once('[')?.1.trim_end_matches(']').to_string();
            grid.split(", ").nth(axis)?.parse::<u32>().ok()
        })
        .collect()
}

/// Runs `run` with `gpu`'s per-kernel profiling on, and returns its result
/// with the dispatches of the kernels whose label starts with `prefix`
/// (`gpu` should be a backend of the test's own, so the profile holds only
/// what `run` recorded).
pub fn dispatches_of<T>(gpu: &GpuBackend, prefix: &str, run: impl FnOnce() -> T) -> (u64, T) {
    gpu.ctx.set_profiling(true);
    let result = run();
    let calls = gpu
        .ctx
        .profile()
        .into_iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, t)| t.calls)
        .sum();
    gpu.ctx.set_profiling(false);
    (calls, result)
}

/// Asserts `got` is `want` within 1e-4 relative (plus 1e-4 absolute), with
/// `what` in the message.
pub fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (d, r) in got.iter().zip(want) {
        assert!((d - r).abs() <= 1e-4 * (1.0 + r.abs()), "{what} {d} vs {r}");
    }
}
