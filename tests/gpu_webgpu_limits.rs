//! Within WebGPU's default limits (`WGCNN_LIMITS=webgpu`), which every
//! WebGPU adapter meets, whatever its backend: the check grid and training
//! steps of every built-in model run there as on the adapter's own limits.
//! Lavapipe's own are wider (32 KiB of workgroup memory, 4 GiB buffers,
//! unbounded storage buffers per kernel), so without this a kernel could
//! come to need more than a GPU elsewhere offers and CI would not notice.

mod common;

use wgcnn::backend::Backend;
use wgcnn::data::{Dataset, synthetic};
use wgcnn::gpu::GpuBackend;
use wgcnn::nn::BUILTIN_MODELS;

/// `n` images of `shape` from the synthetic set's, tiled over the
/// channels and the larger plane (their values matter only in being
/// images).
fn images(shape: [usize; 3], n: usize) -> Dataset {
    let grey = synthetic(1, n, 1).train;
    let [c, h, w] = shape;
    let mut images = Vec::with_capacity(n * c * h * w);
    for image in grey.images.chunks(28 * 28) {
        for _ in 0..c {
            images.extend((0..h * w).map(|i| image[(i / w % 28) * 28 + i % w % 28]));
        }
    }
    Dataset {
        images,
        shape,
        ..grey
    }
}

#[test]
fn every_op_and_built_in_model_runs_within_webgpus_default_limits() {
    if common::gpu().is_none() {
        return;
    }
    // The only test in this process, so nothing else reads the environment.
    unsafe { std::env::set_var("WGCNN_LIMITS", "webgpu") };
    let gpu = GpuBackend::new(None).expect("the adapter meets WebGPU's default limits");
    unsafe { std::env::remove_var("WGCNN_LIMITS") };
    let webgpu = wgpu::Limits::defaults();
    assert_eq!(gpu.ctx.limits, webgpu);
    assert_eq!(gpu.ctx.device.limits(), webgpu, "the device enforces them");
    assert_eq!(gpu.max_buffer_bytes(), Some(128 << 20));

    let failed: Vec<String> = wgcnn::check::run_all(&gpu)
        .into_iter()
        .filter(|c| !c.passed)
        .map(|c| format!("{} {}: {}", c.op, c.shape, c.worst))
        .collect();
    assert!(failed.is_empty(), "check cases failed: {failed:?}");
    gpu.take_error().expect("no wgpu error in the check grid");

    // Batch 128: cifar-cnn's second convolution then needs a 144 MiB
    // im2row matrix, over the 128 MiB binding, and runs in pieces.
    for model in BUILTIN_MODELS {
        let input = if model == "cifar-cnn" {
            [3, 32, 32]
        } else {
            [1, 28, 28]
        };
        let trained = common::train_built_in(&gpu, model, &images(input, 256), 128, 2);
        for loss in &trained.losses {
            let loss = gpu.download(loss).data[0];
            assert!(loss.is_finite() && loss > 0.0, "{model}: loss {loss}");
        }
        gpu.take_error()
            .unwrap_or_else(|e| panic!("{model} within WebGPU's limits: {e}"));
    }
}
