//! `wgcnn train`.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use wgcnn::Result;
use wgcnn::checkpoint::Checkpoint;
use wgcnn::cpu::CpuBackend;
use wgcnn::data::{Augmentation, DatasetKind};
use wgcnn::nn::{ModelSpec, builtin, default_model_name, init_parameters};
use wgcnn::optim::{OptimizerKind, OptimizerSettings, Schedule};
use wgcnn::train::{Start, TrainOptions, train};

use super::data::resolve;
use super::device::{Device, choose};

/// Learning-rate schedules on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ScheduleArg {
    /// The same rate throughout.
    Constant,
    /// Multiply by --gamma every --step-epochs epochs.
    Step,
    /// Cosine decay to zero over the run.
    Cosine,
}

/// Settings of `wgcnn train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Built-in model (mlp, lenet5, convnet, fashion-cnn, cifar-cnn) or a TOML
    /// model file. Default: fashion-cnn for grey images, cifar-cnn for colour.
    #[arg(long)]
    pub model: Option<String>,
    /// Data set: fashion-mnist, mnist, cifar10 or synthetic. Default:
    /// Fashion-MNIST when found, else the built-in synthetic set.
    #[arg(long, value_parser = parse_dataset)]
    pub dataset: Option<DatasetKind>,
    /// Directory holding the data set's files.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Epochs to train (a resumed run continues up to this many).
    #[arg(long, default_value_t = 12)]
    pub epochs: usize,
    /// Examples per step.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Optimizer: sgd, momentum, nesterov, adagrad, rmsprop, adam, adamw.
    #[arg(long, default_value = "adamw")]
    pub optimizer: String,
    /// Base learning rate.
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f32,
    /// Weight decay (decoupled for adamw, L2 otherwise).
    #[arg(long, default_value_t = 5e-4)]
    pub weight_decay: f32,
    /// Learning-rate schedule.
    #[arg(long, value_enum, default_value_t = ScheduleArg::Cosine)]
    pub schedule: ScheduleArg,
    /// Epochs between decays for --schedule step.
    #[arg(long, default_value_t = 5)]
    pub step_epochs: usize,
    /// Decay factor for --schedule step.
    #[arg(long, default_value_t = 0.1)]
    pub gamma: f32,
    /// Epochs of linear learning-rate warm-up.
    #[arg(long, default_value_t = 0.0)]
    pub warmup: f32,
    /// Augment training images: random crop after 2-pixel padding, plus
    /// horizontal flips for CIFAR-10.
    #[arg(long)]
    pub augment: bool,
    /// Hold out this fraction of the training set for validation (evaluated
    /// instead of the test set).
    #[arg(long, default_value_t = 0.0)]
    pub validation: f32,
    /// Seed of initialisation, shuffling, dropout and augmentation.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// GPU adapter index from `wgcnn devices` (default: the best one).
    #[arg(long)]
    pub device: Option<usize>,
    /// Train on the CPU path even when a GPU adapter exists.
    #[arg(long)]
    pub cpu: bool,
    /// Write a checkpoint here after every epoch (atomically).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Continue from this checkpoint.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Append one JSON object per epoch to this file.
    #[arg(long)]
    pub metrics: Option<PathBuf>,
}

fn parse_dataset(name: &str) -> std::result::Result<DatasetKind, String> {
    DatasetKind::from_name(name).map_err(|e| e.to_string())
}

/// Runs `wgcnn train`.
pub fn run(args: &TrainArgs) -> Result<()> {
    let resume = args.resume.as_deref().map(Checkpoint::load).transpose()?;
    let seed = resume.as_ref().map_or(args.seed, |c| c.state.seed);
    let splits = resolve(args.dataset, args.data_dir.as_deref(), seed)?;
    let (train_set, eval_set) = if args.validation > 0.0 {
        let (train_set, validation) = splits.train.split_validation(args.validation, seed)?;
        (train_set, validation)
    } else {
        (splits.train, splits.test)
    };
    let spec = match &resume {
        Some(c) => c.spec.clone(),
        None => model_spec(args.model.as_deref(), train_set.shape, train_set.classes)?,
    };
    let options = TrainOptions {
        epochs: args.epochs,
        batch_size: args.batch_size,
        optimizer: OptimizerSettings::new(
            OptimizerKind::from_name(&args.optimizer)?,
            args.weight_decay,
        )?,
        lr: args.lr,
        schedule: match args.schedule {
            ScheduleArg::Constant => Schedule::Constant,
            ScheduleArg::Step => Schedule::Step {
                every_epochs: args.step_epochs,
                gamma: args.gamma,
            },
            ScheduleArg::Cosine => Schedule::Cosine,
        },
        warmup_epochs: args.warmup,
        seed,
        augmentation: args.augment.then_some(Augmentation {
            crop_padding: 2,
            horizontal_flip: train_set.shape[0] == 3,
        }),
        checkpoint: args.checkpoint.clone(),
        metrics: args.metrics.clone(),
        progress_bar: std::io::stdout().is_terminal(),
    };
    let start = match resume {
        Some(c) => {
            println!(
                "resuming from epoch {} (step {}) of {}",
                c.state.epoch,
                c.state.step,
                args.resume.as_ref().expect("resume is set").display()
            );
            Start::Resume(Box::new(c))
        }
        None => Start::Fresh(init_parameters(&spec, seed)?),
    };
    println!(
        "model: {} ({} parameters), {} training / {} evaluation images, batch {}, {} lr {}",
        args.model
            .as_deref()
            .unwrap_or(default_model_name(train_set.shape)),
        parameter_count(&spec)?,
        train_set.len(),
        eval_set.len(),
        args.batch_size,
        args.optimizer,
        args.lr
    );
    let history = match choose(args.device, args.cpu)? {
        Device::Gpu(gpu) => train(&gpu, &spec, &train_set, &eval_set, &options, start),
        Device::Cpu => train(
            &CpuBackend::<f32>::fast(),
            &spec,
            &train_set,
            &eval_set,
            &options,
            start,
        ),
    }?;
    if let Some(last) = history.last() {
        println!("final test accuracy: {:.2}%", 100.0 * last.test_accuracy);
    }
    Ok(())
}

/// A built-in model by name, or a model file when `name` is a path.
pub fn model_spec(name: Option<&str>, input: [usize; 3], classes: usize) -> Result<ModelSpec> {
    let name = name.unwrap_or(default_model_name(input));
    let path = std::path::Path::new(name);
    if name.ends_with(".toml") || path.exists() {
        ModelSpec::load(path)
    } else {
        builtin(name, input, classes)
    }
}

fn parameter_count(spec: &ModelSpec) -> Result<usize> {
    Ok(wgcnn::nn::parameter_shapes(spec)?
        .iter()
        .filter(|(name, _)| !name.contains("running"))
        .map(|(_, shape)| shape.iter().product::<usize>())
        .sum())
}
