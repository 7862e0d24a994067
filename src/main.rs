//! The `wgcnn` command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wgcnn::check;
use wgcnn::gpu::{GpuBackend, list_adapters};

/// Train convolutional neural networks on any GPU through wgpu compute shaders.
#[derive(Parser)]
#[command(name = "wgcnn", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every op forward and backward on the GPU and on the CPU reference over
    /// a grid of shapes, and print one row per case. Exits 0 only when all pass.
    Check {
        /// Adapter index from `wgcnn devices` (default: the best one found).
        #[arg(long)]
        device: Option<usize>,
        /// Only these ops (repeatable), e.g. `--op conv2d --op gemm`.
        #[arg(long = "op", value_parser = clap::builder::PossibleValuesParser::new(check::OPS))]
        ops: Vec<String>,
        /// Print the worst element of every case, not only of failures.
        #[arg(long)]
        verbose: bool,
    },
    /// List the GPU adapters wgpu can see (index, name, backend, type).
    Devices,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check {
            device,
            ops,
            verbose,
        } => run_check(device, &ops, verbose),
        Command::Devices => run_devices(),
    }
}

fn run_devices() -> ExitCode {
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

fn run_check(device: Option<usize>, ops: &[String], verbose: bool) -> ExitCode {
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
    let selected: Vec<&str> = if ops.is_empty() {
        check::OPS.to_vec()
    } else {
        check::OPS
            .iter()
            .copied()
            .filter(|op| ops.iter().any(|o| o == op))
            .collect()
    };
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
