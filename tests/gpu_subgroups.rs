//! Where the device has subgroup operations, the reductions (batchnorm's
//! statistics and sums, `channel_sum`, the loss totals) end with a sum over
//! each workgroup by them instead of a tree in workgroup memory, and the
//! register-blocked GEMMs load A once per subgroup (where the subgroup size
//! is fixed and fits). Both versions match the CPU reference on the ops
//! that use them.

mod common;

use wgcnn::check;
use wgcnn::gpu::GpuBackend;

/// The ops whose kernels sum over workgroups or run GEMMs (conv2d's GEMM
/// paths, which `check` forces, take their bias gradients by
/// `channel_sum`; `gemm` runs every block on every transpose).
const SUBGROUP_OPS: [&str; 6] = [
    "batchnorm1d",
    "batchnorm2d",
    "softmax_cross_entropy",
    "conv2d",
    "gemm",
    "linear",
];

fn assert_ops_pass(gpu: &GpuBackend, version: &str) {
    for op in SUBGROUP_OPS {
        let cases = check::run_op(gpu, op);
        assert!(!cases.is_empty(), "{op} has no cases");
        let failed: Vec<String> = cases
            .iter()
            .filter(|c| !c.passed)
            .map(|c| format!("{} (max rel {:.3e}; {})", c.shape, c.max_rel, c.worst))
            .collect();
        assert!(failed.is_empty(), "{op} with {version}: {failed:?}");
    }
    gpu.ctx.take_error().expect("no wgpu error");
}

#[test]
fn reductions_and_gemms_match_the_reference_with_and_without_subgroups() {
    // The only test in this process, so nothing else reads the environment.
    unsafe { std::env::remove_var("WGCNN_SUBGROUPS") };
    if common::gpu().is_none() {
        return;
    }
    let with = GpuBackend::new(None).expect("a GPU adapter");
    // Lavapipe (CI's adapter) has subgroups: this keeps CI running them.
    let lavapipe = with.ctx.is_software() && with.ctx.info.backend == wgpu::Backend::Vulkan;
    assert!(
        with.ctx.has_subgroups() || !lavapipe,
        "lavapipe offers subgroups, but the device was opened without them"
    );
    // Its subgroups are always 8 lanes, which the GEMMs' sharing needs.
    assert!(with.ctx.fixed_subgroup_size() == Some(8) || !lavapipe);
    assert_eq!(
        with.ctx.describe().ends_with(", subgroups)"),
        with.ctx.has_subgroups()
    );
    assert_ops_pass(&with, "the device's default");

    unsafe { std::env::set_var("WGCNN_SUBGROUPS", "0") };
    let without = GpuBackend::new(None).expect("a GPU adapter");
    unsafe { std::env::remove_var("WGCNN_SUBGROUPS") };
    assert!(!without.ctx.has_subgroups(), "WGCNN_SUBGROUPS=0 is obeyed");
    assert_eq!(without.ctx.fixed_subgroup_size(), None);
    assert_ops_pass(&without, "no subgroups");
}
