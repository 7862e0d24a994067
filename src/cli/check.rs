//! `wgcnn check` (against the CPU reference, or `--against` a directory of
//! fixtures) and `wgcnn devices`.

use std::path::Path;
use std::process::ExitCode;

use wgcnn::check;
use wgcnn::check::against;
use wgcnn::cpu::CpuBackend;
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
    for a in &adapters {
        println!(
            "{:<6} {:<40} {:<8} {:<14} {}",
            a.index, a.name, a.backend, a.device_type, a.driver
        );
    }
    if let Some(a) = adapters.iter().find(|a| a.preferred) {
        let cpu_path = if a.software {
            "; `train`, `eval` and `predict` use the CPU path instead, which is faster \
             than a software renderer"
        } else {
            ""
        };
        println!(
            "without --device: {} ({}, {}){cpu_path}",
            a.index, a.name, a.backend
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

/// `wgcnn check --against DIR`: the fixtures in `dir` (those of `ops`, or all)
/// on the GPU (unless `cpu_only`), the CPU reference and the CPU fast path,
/// each compared with the fixture's expected tensors.
pub fn run_against(
    dir: &Path,
    device: Option<usize>,
    ops: &[String],
    verbose: bool,
    cpu_only: bool,
) -> ExitCode {
    let fixtures = match against::load_dir(dir) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let gpu = if cpu_only {
        None
    } else {
        match GpuBackend::new(device) {
            Ok(gpu) => Some(gpu),
            Err(e) => {
                eprintln!("error: {e}");
                eprintln!("(`--cpu` checks the CPU paths alone, without an adapter)");
                return ExitCode::FAILURE;
            }
        }
    };
    let reference = CpuBackend::<f32>::new();
    let fast = CpuBackend::<f32>::fast();
    println!("fixtures: {} ({} files)", dir.display(), fixtures.len());
    match &gpu {
        Some(gpu) => println!("device: {}", gpu.ctx.describe()),
        None => println!("device: none (--cpu: the CPU paths only)"),
    }
    println!(
        "tolerance: |got - expected| <= {:e} + {:e} * (sum of |terms|)",
        check::ATOL,
        check::RTOL
    );
    println!(
        "columns: max |got - expected| on the GPU, the CPU reference (cpu) and the CPU \
         training path (fast)"
    );
    println!(
        "{:<36} {:<22} {:<38} {:>10} {:>10} {:>10}  result",
        "file", "op", "shape", "gpu", "cpu", "fast"
    );
    let (mut passed, mut failed) = (0, 0);
    for (path, fixture) in fixtures {
        let fixture = match fixture {
            Ok(f) => f,
            Err(e) => {
                let name = path.file_name().map_or_else(
                    || path.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                );
                println!(
                    "{name:<36} {:<22} {:<38} {:>10} {:>10} {:>10}  ERROR",
                    "?", "", "-", "-", "-"
                );
                println!("    error: {e}");
                failed += 1;
                continue;
            }
        };
        if !ops.is_empty() && !ops.iter().any(|o| o == fixture.op) {
            continue;
        }
        let outcomes: Vec<(&str, Option<against::PathOutcome>)> = vec![
            ("gpu", gpu.as_ref().map(|g| fixture.check(g))),
            ("cpu", Some(fixture.check(&reference))),
            ("fast", Some(fixture.check(&fast))),
        ];
        let ok = outcomes
            .iter()
            .all(|(_, o)| o.as_ref().is_none_or(|o| o.passed));
        let cell = |o: &Option<against::PathOutcome>| match o {
            Some(o) => format!("{:.3e}", o.max_abs),
            None => "-".to_string(),
        };
        println!(
            "{:<36} {:<22} {:<38} {:>10} {:>10} {:>10}  {}",
            fixture.name,
            fixture.op,
            fixture.shape,
            cell(&outcomes[0].1),
            cell(&outcomes[1].1),
            cell(&outcomes[2].1),
            if ok { "PASS" } else { "FAIL" }
        );
        for (path_name, outcome) in &outcomes {
            if let Some(o) = outcome
                && (!o.passed || verbose)
            {
                let verdict = if o.passed { "" } else { " (out of tolerance)" };
                println!("    {path_name} worst{verdict}: {}", o.worst);
            }
        }
        if ok {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    if let Some(gpu) = &gpu
        && let Err(e) = gpu.ctx.take_error()
    {
        eprintln!("error: the GPU reported: {e}");
        return ExitCode::FAILURE;
    }
    if passed + failed == 0 {
        eprintln!("no fixture in {} is of the selected op(s)", dir.display());
    }
    println!("check: {passed} passed, {failed} failed");
    if failed == 0 && passed > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
