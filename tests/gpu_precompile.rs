//! The precompiling helper (`src/gpu/precompile.rs`): on a software Vulkan
//! adapter with two or more cores, every (kernel, parameters) pair the main
//! device records is replayed on a second device, one workgroup with
//! scratch buffers. Every kernel of `wgcnn check` must come back from that
//! (a kernel whose loops never end on such a dispatch would hang the helper
//! and fail this test), results must not change, and the helper must stop
//! when asked.

use std::time::{Duration, Instant};

use wgcnn::check;
use wgcnn::gpu::GpuBackend;
use wgcnn::gpu::precompile::Precompiler;

#[test]
fn the_helper_replays_every_kernel_of_check_and_stops_when_asked() {
    let gpu = match GpuBackend::new(None) {
        Ok(gpu) => gpu,
        Err(e) if std::env::var("WGCNN_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
            panic!("WGCNN_REQUIRE_GPU=1 but no GPU backend could be opened: {e}")
        }
        Err(e) => {
            eprintln!("\n!!! SKIPPED: no GPU adapter ({e}) !!!\n");
            return;
        }
    };
    let wanted = Precompiler::wanted(&gpu.ctx.info);
    let Some(helper) = gpu.ctx.precompiler() else {
        assert!(
            !wanted,
            "{} should get a precompiling helper",
            gpu.ctx.describe()
        );
        eprintln!(
            "{}: no precompiling helper (a GPU driver)",
            gpu.ctx.describe()
        );
        return;
    };
    assert!(wanted, "{} should not get a helper", gpu.ctx.describe());

    // Every op's cases, as `wgcnn check` runs them, with the helper busy.
    for op in check::OPS {
        let cases = check::run_op(&gpu, op);
        let failed: Vec<_> = cases.iter().filter(|c| !c.passed).collect();
        assert!(failed.is_empty(), "{op}: {} cases failed", failed.len());
    }
    let offered = helper.offered();
    assert!(offered > 100, "only {offered} pairs offered");

    // The helper comes back from every one of them.
    let deadline = Instant::now() + Duration::from_secs(600);
    while helper.compiled() < offered {
        assert!(
            Instant::now() < deadline,
            "the helper is stuck after {} of {offered} pairs",
            helper.compiled()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    eprintln!("{offered} pairs replayed on the helper's device");

    // Once finished, it takes nothing more.
    helper.finish();
    let cases = check::run_op(&gpu, "gemm");
    assert!(cases.iter().all(|c| c.passed));
    assert_eq!(helper.offered(), offered);
    gpu.ctx
        .take_error()
        .expect("no wgpu error on the main device");
}
