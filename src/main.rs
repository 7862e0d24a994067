//! The `wgcnn` command line.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wgcnn::check;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (milliseconds before freed memory goes
/// back to the OS; -1: never), which libmimalloc-sys does not name: in
/// mimalloc.h (v2 and v3) it is the option just before
/// `mi_option_use_numa_nodes`. The test below checks its documented default.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = libmimalloc_sys::mi_option_use_numa_nodes - 1;

/// Keeps freed memory for reuse instead of returning it to the OS after a
/// delay (1 s by default, longer for whole arenas). A training step frees
/// and allocates the same multi-megabyte tensors every 5–100 ms; with the
/// default, steps kept faulting them in again, zero-filled by the kernel
/// (`clear_page_erms` in `perf`): the CPU path trained fashion-cnn 10% slower
/// (760–790 vs 850–880 images/s at batch 64 on 2 cores) at the same peak
/// memory (370 MB).
fn keep_freed_memory() {
    // SAFETY: setting an option is allowed at any time; mimalloc reads this
    // one whenever it schedules a purge.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) }
}

/// Gives llvmpipe (the rasteriser under lavapipe, Mesa's software Vulkan)
/// four pool threads per core unless the user chose a count. llvmpipe
/// splits each dispatch's workgroups into one fixed share per pool thread,
/// one thread per core by default: when the host delays one core (a shared
/// 2-core VM), the other finishes its share and idles until the late one is
/// done. Smaller shares let a core that finishes early take more of them.
/// LeNet-5 training at batch 64 on lavapipe, 2 cores: medians of 12 runs
/// alternating, 1,597 images/s with 2 threads, 1,900 with 8; fashion-cnn and
/// cifar-cnn no slower. llvmpipe caps the count at its own maximum; a single
/// core keeps llvmpipe's default (no pool). Other drivers ignore the
/// variable.
fn share_llvmpipe_dispatches_finely() {
    const VARIABLE: &str = "LP_NUM_THREADS";
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores > 1 && std::env::var_os(VARIABLE).is_none() {
        // SAFETY: called first thing in `main`, before any other thread
        // exists to read the environment, and before the Vulkan driver,
        // which reads this when it creates its device, is loaded.
        unsafe { std::env::set_var(VARIABLE, (4 * cores).to_string()) }
    }
}

/// Train convolutional neural networks on any GPU through wgpu compute shaders.
#[derive(Parser)]
#[command(name = "wgcnn", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model (defaults: the fashion-cnn model on Fashion-MNIST when
    /// found, else on the built-in synthetic set; the best GPU, else the CPU).
    Train(cli::train::TrainArgs),
    /// Accuracy, loss and confusion matrix of a checkpoint on a data set.
    Eval(cli::eval::EvalArgs),
    /// Class probabilities for PNG/JPEG images or data-set entries.
    Predict(cli::eval::PredictArgs),
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
        /// Instead of the shape grid, run the test cases (safetensors files,
        /// e.g. tests/fixtures/pytorch) in DIR on the GPU and the CPU paths and
        /// compare with the outputs they carry.
        #[arg(long, value_name = "DIR")]
        against: Option<std::path::PathBuf>,
        /// With --against: check the CPU paths only (no GPU adapter needed).
        #[arg(long, requires = "against")]
        cpu: bool,
    },
    /// List the GPU adapters wgpu can see (index, name, backend, type).
    Devices,
    /// Download a data set (mnist, fashion-mnist, cifar10) from its official
    /// mirrors, verify its SHA-256 checksums and put it where `train` looks.
    Fetch(cli::fetch::FetchArgs),
    /// Draw the loss and accuracy curves of a `--metrics` file to PNG or SVG.
    Plot(cli::plot::PlotArgs),
    /// Measure the adapter's peak, GEMM GFLOP/s, per-layer times and training images/s.
    Bench(cli::bench::BenchArgs),
}

fn main() -> ExitCode {
    share_llvmpipe_dispatches_finely();
    // Output piped into a command that stops reading (`wgcnn bench | head`)
    // ends the process quietly, as for other command-line tools, instead of
    // a panic on the failed write: Rust ignores SIGPIPE unless told not to.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => cli::train::run(&args),
        Command::Eval(args) => cli::eval::eval(&args),
        Command::Predict(args) => cli::eval::predict(&args),
        Command::Check {
            device,
            ops,
            verbose,
            against: Some(dir),
            cpu,
        } => return cli::check::run_against(&dir, device, &ops, verbose, cpu),
        Command::Check {
            device,
            ops,
            verbose,
            against: None,
            ..
        } => return cli::check::run(device, &ops, verbose),
        Command::Devices => return cli::check::devices(),
        Command::Bench(args) => cli::bench::run(&args),
        Command::Plot(args) => cli::plot::run(&args),
        Command::Fetch(args) => cli::fetch::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PURGE_DELAY;

    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // `mi_option_purge_delay` defaults to 1000 ms in mimalloc v3 and 10 ms
        // in v2 (options.c); no option near it has either default.
        let value = unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
        assert!(
            value == 1000 || value == 10,
            "option {PURGE_DELAY} is {value}: not mimalloc's purge delay"
        );
    }
}
