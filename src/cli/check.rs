//! `wgcnn check` and `wgcnn devices`.

use std::process::ExitCode;

use wgcnn::check;
use wgcnn::gpu::{GpuBackend, list_adapters};

/// Lists the adapters wgpu sees.
pub fn devices() -> ExitCode {
    let adapters = list_adapters();
    if adapters.is_empty() {
        eprintln!(
            "no GPU adapter found: install your GPU's Vulkan/Metal/DX12 driver, or \
             `apt-get install mesa-vulkan-drivers libvulkan1` for the software driver lavapipe"
        );
        return ExitCode::FAILURE;
    }
    println!(
        "{:<6} {:<40} {:<8} {:<14} driver",
        "index", "name", "backend", "type"
    );
    for a in adapters {
        println!(
            "{:<6} {:<40} {:<8} {:<14} {}",
            a.index, a.name, a.backend, a.device_type, a.driver
        );
    }
    ExitCode::SUCCESS
}

/// Every op (or those in `ops`) on the GPU against the CPU reference.
pub fn run(device: Option<usize>, ops: &[String], verbose: bool) -> ExitCode {
    let gpu = match GpuBackend::new(device) {
        Ok(gpu) => gpu,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("device: {}", gpu.ctx.describe());
    println!(
        "tolerance: |gpu - cpu| <= {:e} + {:e} * (sum of |terms|)",
        check::ATOL,
        check::RTOL
    );
    println!(
        "{:<22} {:<34} {:>11} {:>11}  result",
        "op", "shape", "max abs", "max rel"
    );
    let selected: Vec<&str> = check::OPS
        .iter()
        .copied()
        .filter(|op| ops.is_empty() || ops.iter().any(|o| o == op))
        .collect();
    let (mut passed, mut failed) = (0, 0);
    for op in selected {
        for case in check::run_op(&gpu, op) {
            println!(
                "{:<22} {:<34} {:>11.3e} {:>11.3e}  {}",
                case.op,
                case.shape,
                case.max_abs,
                case.max_rel,
                if case.passed { "PASS" } else { "FAIL" }
            );
            if !case.passed || verbose {
                println!("    worst: {}", case.worst);
            }
            if case.passed {
                passed += 1;
            } else {
                failed += 1;
            }
        }
    }
    if let Err(e) = gpu.ctx.take_error() {
        eprintln!("error: the GPU reported: {e}");
        return ExitCode::FAILURE;
    }
    println!("check: {passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
