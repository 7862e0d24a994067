//! The `wgcnn` command line.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wgcnn::check;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Measure GEMM GFLOP/s, per-layer times and training images/s.
    Bench(cli::bench::BenchArgs),
}

fn main() -> ExitCode {
    // Output piped into a command that stops reading (`wgcnn bench | head`)
    // ends the process quietly, as for other command-line tools, instead of
    // a panic on the failed write: Rust ignores SIGPIPE unless told not to.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
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
