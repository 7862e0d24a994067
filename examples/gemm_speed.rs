//! Times the GPU GEMM on square sizes: `cargo run --release --example gemm_speed`.

use std::time::Instant;

use wgcnn::backend::Backend;
use wgcnn::geometry::GemmSpec;
use wgcnn::gpu::GpuBackend;
use wgcnn::rng::SplitMix64;
use wgcnn::tensor::HostTensor;

fn main() -> wgcnn::Result<()> {
    let gpu = GpuBackend::new(None)?;
    println!("device: {}", gpu.ctx.describe());
    let mut rng = SplitMix64::new(1);
    for (m, n, k) in [
        (256, 256, 256),
        (512, 512, 512),
        (1024, 1024, 1024),
        (32, 784 * 64, 288),
        (64, 196 * 64, 576),
    ] {
        let spec = GemmSpec {
            m,
            n,
            k,
            trans_a: false,
            trans_b: false,
        };
        let a = gpu.upload(&HostTensor::new(
            &spec.a_shape(),
            rng.uniform_vec(m * k, -1.0, 1.0),
        ));
        let b = gpu.upload(&HostTensor::new(
            &spec.b_shape(),
            rng.uniform_vec(k * n, -1.0, 1.0),
        ));
        gpu.download(&gpu.gemm(&a, &b, &spec));
        let runs = 5;
        let mut times = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            let c = gpu.gemm(&a, &b, &spec);
            gpu.download(&gpu.reshape(&c, &[1, m * n]));
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let median = times[runs / 2];
        println!(
            "{m}x{n}x{k}: {:.2} ms, {:.2} GFLOP/s",
            median * 1e3,
            2.0 * (m * n * k) as f64 / median / 1e9
        );
    }
    Ok(())
}
