//! The `wgcnn` command line.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wgcnn::check;

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
    },
    /// List the GPU adapters wgpu can see (index, name, backend, type).
    Devices,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => cli::train::run(&args),
        Command::Eval(args) => cli::eval::eval(&args),
        Command::Predict(args) => cli::eval::predict(&args),
        Command::Check {
            device,
            ops,
            verbose,
        } => return cli::check::run(device, &ops, verbose),
        Command::Devices => return cli::check::devices(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
