//! The GEMM kernel choice is timed once per shape class and device, then
//! remembered in the user's cache directory for later runs.

mod common;

use wgcnn::backend::Backend;
use wgcnn::geometry::{Conv2dGeometry, GemmSpec};
use wgcnn::gpu::GpuBackend;
use wgcnn::gpu::gemm_source::SMALL;
use wgcnn::rng::SplitMix64;
use wgcnn::tensor::HostTensor;

#[test]
fn the_first_product_of_a_class_is_timed_and_remembered_across_runs() {
    let cache = std::env::temp_dir().join(format!("wgcnn-gemm-tune-{}", std::process::id()));
    // The only test in this process, so nothing else reads the environment.
    unsafe { std::env::set_var("XDG_CACHE_HOME", &cache) };
    unsafe { std::env::remove_var("WGCNN_GEMM_TUNE") };
    if common::gpu().is_none() {
        return;
    }
    let gpu = GpuBackend::new(None).expect("a GPU adapter");
    assert!(gpu.ctx.gemm_tuner.choices().is_empty(), "a fresh cache");
    // Large enough for two candidate kernels on any adapter.
    let spec = GemmSpec {
        m: 1024,
        n: 1024,
        k: 256,
        trans_a: false,
        trans_b: false,
    };
    let a = HostTensor::new(&spec.a_shape(), vec![0.5; spec.m * spec.k]);
    let b = HostTensor::new(&spec.b_shape(), vec![0.25; spec.k * spec.n]);
    let c = gpu.download(&gpu.gemm(&gpu.upload(&a), &gpu.upload(&b), &spec));
    assert!(
        c.data.iter().all(|&v| v == 32.0),
        "the timed product's result"
    );
    assert_eq!(gpu.ctx.gemm_tuner.choices().len(), 1);

    // A convolution's forward and weight gradient race im2col (im2row) +
    // GEMM against the implicit GEMM, on the batch's first images; each
    // product's GEMM path then races the direct kernel (which CPU-like
    // adapters otherwise run by a rule). They remember those choices too.
    // Whichever won, the forward is the explicit path's over the whole
    // batch, bit for bit (the direct kernel adds the same products in the
    // same order), and dW and dX are one path's.
    gpu.ctx.gemm_tuner.race_direct(true);
    let g = Conv2dGeometry::new(20, 16, 20, 20, 32, 3, 3, 1, 1).unwrap();
    let [x, w, bias, dy] = common::random_conv_tensors(&gpu, &g, &mut SplitMix64::new(2));
    let y = gpu.download(&gpu.conv2d_forward(&x, &w, &bias, &g));
    let grads = gpu.conv2d_backward(&x, &w, &dy, &g);
    let (dw, dx) = (gpu.download(&grads.dw), gpu.download(&grads.dx));
    gpu.ctx.gemm_tuner.race_direct(false);
    let chosen = gpu.ctx.gemm_tuner.choices();
    for prefix in [
        "conv-",
        "convdw-",
        "direct:conv-",
        "direct:convdw-",
        "direct:convdx-",
    ] {
        assert!(
            chosen.iter().any(|(class, _)| class.starts_with(prefix)),
            "{prefix}: {chosen:?}"
        );
    }
    gpu.ctx.gemm_tuner.force(Some(SMALL));
    let explicit = gpu.download(&gpu.conv2d_forward(&x, &w, &bias, &g));
    gpu.ctx.gemm_tuner.force(None);
    assert!(
        y.data == explicit.data,
        "y differs from the explicit path's"
    );
    let by_path = [false, true].map(|direct| {
        gpu.ctx.gemm_tuner.force_direct(Some(direct));
        let grads = gpu.conv2d_backward(&x, &w, &dy, &g);
        gpu.ctx.gemm_tuner.force_direct(None);
        (gpu.download(&grads.dw), gpu.download(&grads.dx))
    });
    assert!(
        by_path.iter().any(|(d, _)| d.data == dw.data),
        "dW is neither path's"
    );
    assert!(
        by_path.iter().any(|(_, d)| d.data == dx.data),
        "dX is neither path's"
    );

    let files: Vec<_> = std::fs::read_dir(cache.join("wgcnn"))
        .expect("the cache directory was created")
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        files.len(),
        1,
        "one cache file, no temporary left: {files:?}"
    );

    // A new run on the same device starts with the choice.
    let again = GpuBackend::new(None).expect("a GPU adapter");
    assert_eq!(again.ctx.gemm_tuner.choices(), chosen);

    // A damaged cache file is ignored, not an error.
    std::fs::write(&files[0], "{not json").unwrap();
    let damaged = GpuBackend::new(None).expect("a GPU adapter");
    assert!(damaged.ctx.gemm_tuner.choices().is_empty());
    std::fs::remove_dir_all(&cache).unwrap();
}
