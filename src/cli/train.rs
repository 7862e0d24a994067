//! `wgcnn train`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Args, ValueEnum};
use wgcnn::checkpoint::{Checkpoint, RunSettings, check_writable};
use wgcnn::cpu::CpuBackend;
use wgcnn::data::{Augmentation, DatasetKind};
use wgcnn::nn::{ModelSpec, builtin, default_model_name};
use wgcnn::optim::{OptimizerKind, OptimizerSettings, Schedule};
use wgcnn::train::{EvaluatedOn, Start, TrainOptions, train};
use wgcnn::{Error, Result, interrupt};

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
    /// Epochs to train; a resumed run continues up to this many (the
    /// learning-rate schedule spans them) [default: 12, or the checkpoint's
    /// when resuming].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Stop after this many epochs of the run are complete, with the schedule
    /// still planned for --epochs; `--resume` continues it.
    #[arg(long, value_name = "EPOCHS")]
    pub stop_after: Option<usize>,
    /// Examples per step [default: 128, or the checkpoint's when resuming].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Optimizer: sgd, momentum, nesterov, adagrad, rmsprop, adam, adamw
    /// [default: adamw, or the checkpoint's when resuming].
    #[arg(long)]
    pub optimizer: Option<String>,
    /// Base learning rate [default: 0.002, or the checkpoint's when resuming].
    #[arg(long)]
    pub lr: Option<f32>,
    /// Weight decay, decoupled for adamw, L2 otherwise [default: 0.0005, or the
    /// checkpoint's when resuming].
    #[arg(long)]
    pub weight_decay: Option<f32>,
    /// Learning-rate schedule [default: cosine, or the checkpoint's when
    /// resuming].
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleArg>,
    /// Epochs between decays for --schedule step [default: 5, or the
    /// checkpoint's].
    #[arg(long)]
    pub step_epochs: Option<usize>,
    /// Decay factor for --schedule step [default: 0.1, or the checkpoint's].
    #[arg(long)]
    pub gamma: Option<f32>,
    /// Epochs of linear learning-rate warm-up [default: 0, or the
    /// checkpoint's when resuming].
    #[arg(long)]
    pub warmup: Option<f32>,
    /// Augment training images: random crop after 2-pixel padding, plus
    /// horizontal flips for CIFAR-10 (`--augment false` turns a resumed
    /// run's off) [default: off, or the checkpoint's when resuming].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub augment: Option<bool>,
    /// Hold out this fraction of the training set for validation (evaluated
    /// instead of the test set) [default: 0, or the checkpoint's when
    /// resuming].
    #[arg(long)]
    pub validation: Option<f32>,
    /// Seed of initialisation, shuffling, dropout and augmentation [default: 1;
    /// a resumed run keeps the checkpoint's].
    #[arg(long)]
    pub seed: Option<u64>,
    /// GPU adapter index from `wgcnn devices` (default: the best one).
    #[arg(long)]
    pub device: Option<usize>,
    /// Train on the CPU path even when a GPU adapter exists.
    #[arg(long)]
    pub cpu: bool,
    /// Write a checkpoint here after every epoch (atomically).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Continue from this checkpoint: its model, weights, optimizer state, seed,
    /// position (mid-epoch too) and, unless given, data set, optimizer, --lr,
    /// --weight-decay, --epochs, --batch-size, the schedule, --warmup,
    /// --augment and --validation.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Append one JSON object per epoch to this file.
    #[arg(long)]
    pub metrics: Option<PathBuf>,
    /// Draw the loss and accuracy curves to this PNG or SVG file when training
    /// ends or is interrupted; with --metrics also after every epoch, from every
    /// epoch in that file (earlier installments of a resumed run too).
    #[arg(long, value_name = "PATH")]
    pub plot: Option<PathBuf>,
}

fn parse_dataset(name: &str) -> std::result::Result<DatasetKind, String> {
    DatasetKind::from_name(name).map_err(|e| e.to_string())
}

/// Default optimizer, learning rate and weight decay of a fresh run.
const DEFAULT_OPTIMIZER: &str = "adamw";
const DEFAULT_LR: f32 = 2e-3;
const DEFAULT_WEIGHT_DECAY: f32 = 5e-4;
/// Default course of a fresh run.
const DEFAULT_SETTINGS: RunSettings = RunSettings {
    epochs: 12,
    batch_size: 128,
    schedule: Schedule::Cosine,
    warmup_epochs: 0.0,
    augment: false,
    validation: 0.0,
};
/// A step schedule's defaults, when --schedule step is given alone.
const DEFAULT_STEP_EPOCHS: usize = 5;
const DEFAULT_GAMMA: f32 = 0.1;

/// The run's settings: each flag given, else the resumed checkpoint's
/// (`stored`), else the default.
fn run_settings(args: &TrainArgs, stored: Option<&RunSettings>) -> RunSettings {
    let base = stored.unwrap_or(&DEFAULT_SETTINGS);
    let (stored_every, stored_gamma) = match base.schedule {
        Schedule::Step {
            every_epochs,
            gamma,
        } => (every_epochs, gamma),
        _ => (DEFAULT_STEP_EPOCHS, DEFAULT_GAMMA),
    };
    let step = Schedule::Step {
        every_epochs: args.step_epochs.unwrap_or(stored_every),
        gamma: args.gamma.unwrap_or(stored_gamma),
    };
    let schedule = match args.schedule {
        None => match base.schedule {
            Schedule::Step { .. } => step,
            other => other,
        },
        Some(ScheduleArg::Constant) => Schedule::Constant,
        Some(ScheduleArg::Cosine) => Schedule::Cosine,
        Some(ScheduleArg::Step) => step,
    };
    RunSettings {
        epochs: args.epochs.unwrap_or(base.epochs),
        batch_size: args.batch_size.unwrap_or(base.batch_size),
        schedule,
        warmup_epochs: args.warmup.unwrap_or(base.warmup_epochs),
        augment: args.augment.unwrap_or(base.augment),
        validation: args.validation.unwrap_or(base.validation),
    }
}

/// The settings a resumed run takes from its checkpoint (flags not given
/// whose stored value differs from the default), as flags, for the log.
fn restored_flags(args: &TrainArgs, settings: &RunSettings) -> Vec<String> {
    let d = &DEFAULT_SETTINGS;
    let mut flags = Vec::new();
    if args.epochs.is_none() && settings.epochs != d.epochs {
        flags.push(format!("--epochs {}", settings.epochs));
    }
    if args.batch_size.is_none() && settings.batch_size != d.batch_size {
        flags.push(format!("--batch-size {}", settings.batch_size));
    }
    if args.schedule.is_none() && settings.schedule != d.schedule {
        flags.push(match settings.schedule {
            Schedule::Constant => "--schedule constant".to_string(),
            Schedule::Cosine => "--schedule cosine".to_string(),
            Schedule::Step {
                every_epochs,
                gamma,
            } => format!("--schedule step --step-epochs {every_epochs} --gamma {gamma}"),
        });
    }
    if args.warmup.is_none() && settings.warmup_epochs != d.warmup_epochs {
        flags.push(format!("--warmup {}", settings.warmup_epochs));
    }
    if args.augment.is_none() && settings.augment != d.augment {
        flags.push("--augment".to_string());
    }
    if args.validation.is_none() && settings.validation != d.validation {
        flags.push(format!("--validation {}", settings.validation));
    }
    flags
}

/// Rejects flags out of their range before any work, naming the flag.
fn check_flags(args: &TrainArgs) -> Result<()> {
    if let Some(path) = &args.plot {
        wgcnn::plot::check_picture_path(path)?;
    }
    // Output files are checked before training, not after its first epoch.
    for (path, what) in [(&args.checkpoint, "checkpoint"), (&args.plot, "picture")] {
        if let Some(path) = path {
            check_writable(path)
                .map_err(|e| Error::file(path, format!("cannot write the {what} here: {e}")))?;
        }
    }
    let fail = |message: String| Err(Error::Setting(message));
    if args.epochs == Some(0) {
        return fail("--epochs 0: train at least 1 epoch".into());
    }
    if args.stop_after == Some(0) {
        return fail("--stop-after 0: stop after at least 1 epoch".into());
    }
    if args.batch_size == Some(0) {
        return fail("--batch-size must be at least 1".into());
    }
    if let Some(lr) = args.lr
        && !(lr > 0.0 && lr.is_finite())
    {
        return fail(format!("--lr {lr} must be a positive number"));
    }
    if let Some(wd) = args.weight_decay
        && !(wd >= 0.0 && wd.is_finite())
    {
        return fail(format!("--weight-decay {wd} must be a finite number >= 0"));
    }
    if let Some(warmup) = args.warmup
        && !(warmup >= 0.0 && warmup.is_finite())
    {
        return fail(format!(
            "--warmup {warmup} must be a finite number of epochs >= 0"
        ));
    }
    if args.step_epochs == Some(0) {
        return fail("--step-epochs must be at least 1".into());
    }
    if let Some(gamma) = args.gamma
        && !(gamma > 0.0 && gamma.is_finite())
    {
        return fail(format!("--gamma {gamma} must be a positive number"));
    }
    if let Some(validation) = args.validation
        && !(0.0..1.0).contains(&validation)
    {
        return fail(format!(
            "--validation {validation} must be a fraction in [0, 1) of the training set"
        ));
    }
    Ok(())
}

/// The data set a checkpoint was trained on, from its recorded name.
fn trained_on(c: &Checkpoint) -> Option<DatasetKind> {
    let name = c.state.dataset.split_whitespace().next()?;
    DatasetKind::from_name(name).ok()
}

/// Runs `wgcnn train`. An interruption (Ctrl-C, SIGTERM) ends the process with
/// [`interrupt::EXIT_CODE`] after saying where the checkpoint is.
pub fn run(args: &TrainArgs) -> Result<()> {
    check_flags(args)?;
    let resume = args.resume.as_deref().map(Checkpoint::load).transpose()?;
    let resume_path = || args.resume.as_ref().expect("resume is set").display();
    let seed = match (&resume, args.seed) {
        (Some(c), Some(seed)) if seed != c.state.seed => {
            return Err(Error::Setting(format!(
                "--seed {seed} differs from the seed {} of {}: a resumed run keeps its seed \
                 (omit --seed)",
                c.state.seed,
                resume_path()
            )));
        }
        (Some(c), _) => c.state.seed,
        (None, seed) => seed.unwrap_or(1),
    };
    let settings = run_settings(
        args,
        resume.as_ref().and_then(|c| c.state.settings.as_ref()),
    );
    let dataset = args
        .dataset
        .or_else(|| resume.as_ref().and_then(trained_on));
    let splits = resolve(dataset, args.data_dir.as_deref(), seed)?;
    let (train_set, eval_set) = if settings.validation > 0.0 {
        let (train_set, validation) = splits.train.split_validation(settings.validation, seed)?;
        (train_set, validation)
    } else {
        (splits.train, splits.test)
    };
    let spec = match &resume {
        Some(c) => {
            if let Some(name) = &args.model {
                let asked = model_spec(Some(name), train_set.shape, train_set.classes)?;
                if asked != c.spec {
                    return Err(Error::Setting(format!(
                        "--model {name} is not the model stored in {}: a resumed run continues \
                         the checkpoint's model (omit --model, or start afresh without --resume)",
                        resume_path()
                    )));
                }
            }
            c.spec.clone()
        }
        None => model_spec(args.model.as_deref(), train_set.shape, train_set.classes)?,
    };
    let saved = resume.as_ref().map(|c| &c.state);
    let optimizer = match (&args.optimizer, saved) {
        (Some(name), _) => name.clone(),
        (None, Some(s)) if !s.optimizer.is_empty() => s.optimizer.clone(),
        _ => DEFAULT_OPTIMIZER.to_string(),
    };
    let lr = args
        .lr
        .or(saved.map(|s| s.lr).filter(|&lr| lr > 0.0))
        .unwrap_or(DEFAULT_LR);
    let weight_decay = args
        .weight_decay
        .or(saved.map(|s| s.weight_decay))
        .unwrap_or(DEFAULT_WEIGHT_DECAY);
    let epochs = settings.epochs;
    let options = TrainOptions {
        epochs,
        batch_size: settings.batch_size,
        optimizer: OptimizerSettings::new(OptimizerKind::from_name(&optimizer)?, weight_decay)?,
        lr,
        schedule: settings.schedule,
        warmup_epochs: settings.warmup_epochs,
        seed,
        augmentation: settings.augment.then_some(Augmentation {
            crop_padding: 2,
            horizontal_flip: train_set.shape[0] == 3,
        }),
        validation: settings.validation,
        checkpoint: args.checkpoint.clone(),
        metrics: args.metrics.clone(),
        progress_bar: std::io::stdout().is_terminal(),
        stop_after_epochs: args.stop_after,
        stop_after_steps: None,
    };
    let start = match resume {
        Some(c) if c.state.epoch >= epochs => {
            println!(
                "{} has completed {} epochs already: nothing to train with --epochs {epochs} \
                 (raise --epochs to continue)",
                resume_path(),
                c.state.epoch,
            );
            return Ok(());
        }
        Some(c) => {
            let within = match c.state.epoch_examples_done {
                0 => String::new(),
                n => format!(" and {n} examples into epoch {}", c.state.epoch + 1),
            };
            println!(
                "resuming from epoch {}{within} (step {}) of {}",
                c.state.epoch,
                c.state.step,
                resume_path()
            );
            let restored = restored_flags(args, &settings);
            if !restored.is_empty() {
                println!("with its settings: {}", restored.join(" "));
            }
            Start::Resume(Box::new(c))
        }
        None => Start::New,
    };
    let model_name = match (&args.model, &args.resume) {
        (Some(name), _) => name.as_str(),
        (None, Some(_)) => "the checkpoint's model",
        (None, None) => default_model_name(train_set.shape),
    };
    println!(
        "model: {model_name} ({} parameters), {} training / {} {} images, batch {}, \
         {optimizer} lr {lr}",
        parameter_count(&spec)?,
        train_set.len(),
        eval_set.len(),
        EvaluatedOn::for_validation(settings.validation).name(),
        settings.batch_size,
    );
    if settings.warmup_epochs >= epochs as f32 {
        eprintln!(
            "warning: --warmup {} takes the whole {epochs}-epoch run: the learning rate \
             climbs to lr {lr} only by the last step, if at all (warm up for fewer epochs \
             than --epochs)",
            settings.warmup_epochs
        );
    }
    if let Err(e) = interrupt::install() {
        eprintln!("warning: {e}; Ctrl-C will stop training without a checkpoint");
    }
    let device = choose(args.device, args.cpu)?;
    let watcher = match (&args.plot, &args.metrics) {
        (Some(plot), Some(metrics)) => Some(PlotWatcher::start(plot.clone(), metrics.clone())),
        _ => None,
    };
    let outcome = match device {
        Device::Gpu(gpu) => train(&gpu, &spec, &train_set, &eval_set, &options, start),
        Device::Cpu => train(
            &CpuBackend::<f32>::fast(),
            &spec,
            &train_set,
            &eval_set,
            &options,
            start,
        ),
    };
    if let Some(watcher) = watcher {
        watcher.stop();
    }
    let history = match outcome {
        Err(e @ Error::Training(_)) if interrupt::requested() => {
            eprintln!("{e}");
            if let Err(e) = draw_plot(args, &[]) {
                eprintln!("warning: {e}");
            }
            std::process::exit(interrupt::EXIT_CODE);
        }
        other => other?,
    };
    if let Some(last) = history.last() {
        println!(
            "final {} accuracy: {:.2}%",
            last.evaluated_on.name(),
            100.0 * last.test_accuracy
        );
    }
    if let Some(stop) = args.stop_after.filter(|&n| n < epochs) {
        let hint = match &args.checkpoint {
            Some(path) => format!("; continue with --resume {}", path.display()),
            None => String::new(),
        };
        println!("stopped after epoch {stop} of {epochs} as --stop-after asks{hint}");
    }
    draw_plot(args, &history)
}

/// Redraws `--plot` from the `--metrics` file each time training appends an
/// epoch to it, on a thread of its own, until stopped.
struct PlotWatcher {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl PlotWatcher {
    fn start(plot: PathBuf, metrics: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let size = || std::fs::metadata(&metrics).map(|m| m.len()).ok();
            let mut drawn = size();
            while !stopped.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                let now = size();
                if now.is_none() || now == drawn {
                    continue;
                }
                // A line caught half-written fails to parse: try again later.
                if let Ok(rows) = wgcnn::plot::read_metrics(&metrics)
                    && !rows.is_empty()
                    && wgcnn::plot::plot_metrics(&rows, &plot).is_ok()
                {
                    drawn = now;
                }
            }
        });
        PlotWatcher { stop, thread }
    }

    /// Stops the thread and waits for it (so the final drawing is the last).
    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// Draws `--plot` from the `--metrics` file when there is one (the whole
/// history, earlier installments too), else from this run's `history`.
fn draw_plot(args: &TrainArgs, history: &[wgcnn::train::EpochMetrics]) -> Result<()> {
    let Some(path) = &args.plot else {
        return Ok(());
    };
    let rows = match &args.metrics {
        Some(metrics) if metrics.exists() => wgcnn::plot::read_metrics(metrics)?,
        _ => history.iter().map(wgcnn::plot::MetricsRow::from).collect(),
    };
    if rows.is_empty() {
        println!("no complete epoch to plot; {} not written", path.display());
        return Ok(());
    }
    wgcnn::plot::plot_metrics(&rows, path)?;
    println!("plot: {}", path.display());
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
