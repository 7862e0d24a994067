//! The training loop: epochs of shuffled batches, a test evaluation after each,
//! metrics lines, progress, and an atomic checkpoint per epoch.
//!
//! A run can stop anywhere and continue exactly: after each step the loop checks
//! [`crate::interrupt::requested`] (Ctrl-C, SIGTERM) and the `stop_after_*`
//! options, and then writes a checkpoint of that very point — weights, optimizer
//! state, step, and how far into the epoch it got. Everything random is a pure
//! function of the seed and the position (epoch order of `(seed, epoch)`,
//! dropout masks of `(seed, layer, step)`, augmentation of `(seed, epoch,
//! batch)`), and the learning rate a function of the step and the total
//! `epochs`, so a resumed run retraces the uninterrupted one.

mod progress;
mod stats;
mod trainer;

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};

pub use progress::Progress;
use stats::StepStats;
pub use trainer::{Evaluation, Trainer, evaluate};

use crate::backend::Backend;
use crate::checkpoint::{Checkpoint, MAX_COUNT, RunSettings, TrainingState};
use crate::data::{Augmentation, Dataset, Normalization, batch_seed, epoch_order, make_batch};
use crate::error::{Error, Result};
use crate::nn::memory::{Workload, check_memory};
use crate::nn::{ModelSpec, StateDict, init_parameters};
use crate::optim::{LrSchedule, OptimizerSettings, Schedule};

/// How to train.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Total epochs (a resumed run continues up to this many).
    pub epochs: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// Update rule and its hyper-parameters.
    pub optimizer: OptimizerSettings,
    /// Base learning rate.
    pub lr: f32,
    /// Learning-rate decay.
    pub schedule: Schedule,
    /// Epochs of linear warm-up (may be fractional).
    pub warmup_epochs: f32,
    /// Seed for initialisation, shuffling, dropout and augmentation.
    pub seed: u64,
    /// Augmentation of training batches, if any.
    pub augmentation: Option<Augmentation>,
    /// The fraction of the training set the caller held out for validation
    /// (0: none), recorded in checkpoints so that a resumed run holds out
    /// the same.
    pub validation: f32,
    /// Checkpoint written after every epoch.
    pub checkpoint: Option<PathBuf>,
    /// JSON-lines metrics, one object per epoch.
    pub metrics: Option<PathBuf>,
    /// Draw a progress bar (when the output is a terminal).
    pub progress_bar: bool,
    /// Stop once this many epochs of the run are complete (counting those of a
    /// resumed checkpoint), leaving the rest to `--resume`. The learning-rate
    /// schedule still spans `epochs`, so the continued run is the one that
    /// would have run uninterrupted. `None` trains all `epochs`.
    pub stop_after_epochs: Option<usize>,
    /// Stop once the optimizer has taken this many steps in all (mid-epoch too),
    /// writing the checkpoint an interruption would: a deterministic stand-in
    /// for Ctrl-C. `None` sets no limit.
    pub stop_after_steps: Option<usize>,
}

/// One epoch's numbers, as written to the metrics file.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EpochMetrics {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches.
    pub train_loss: f64,
    /// Fraction of training examples classified correctly (during training).
    pub train_accuracy: f64,
    /// Mean loss on the evaluated set (`evaluated_on`).
    pub test_loss: f64,
    /// Fraction of the evaluated set's examples classified correctly.
    pub test_accuracy: f64,
    /// The set `test_loss` and `test_accuracy` come from: the test set, or
    /// the validation split held out of the training set (the fields keep
    /// their names so that metrics files read the same either way).
    pub evaluated_on: EvaluatedOn,
    /// Training throughput.
    pub images_per_second: f64,
    /// Wall time of the epoch's training (evaluation excluded).
    pub seconds: f64,
    /// Learning rate at the epoch's last step.
    pub lr: f32,
}

/// The set an epoch's evaluation figures come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvaluatedOn {
    /// The data set's test split.
    #[default]
    Test,
    /// The fraction of the training set held out by `--validation`.
    Validation,
}

impl EvaluatedOn {
    /// The set of a run that holds out `validation` of its training set.
    pub fn for_validation(validation: f32) -> Self {
        if validation > 0.0 {
            EvaluatedOn::Validation
        } else {
            EvaluatedOn::Test
        }
    }

    /// Its name in output: `test` or `validation`.
    pub fn name(self) -> &'static str {
        match self {
            EvaluatedOn::Test => "test",
            EvaluatedOn::Validation => "validation",
        }
    }
}

/// Where a run starts: fresh weights, or a checkpoint.
pub enum Start {
    /// New weights from the model's initialiser, seeded by
    /// [`TrainOptions::seed`] and made once the run's checks have passed
    /// (a model too large for memory is refused before any of it exists).
    New,
    /// These weights (from [`crate::nn::init_parameters`] or elsewhere).
    Fresh(StateDict),
    /// Continue a checkpoint.
    Resume(Box<Checkpoint>),
}

/// Trains `spec` on `train`, evaluating on `test` after every epoch, and returns
/// the metrics of the epochs it completed.
///
/// Returns early, with `Ok`, when `options.stop_after_epochs` or
/// `options.stop_after_steps` is reached, and with an [`Error::Training`] that
/// starts with `interrupted` when [`crate::interrupt::requested`] becomes true;
/// either way after writing the checkpoint (when `options.checkpoint` is set)
/// of the point reached, from which [`Start::Resume`] continues exactly.
pub fn train<B: Backend>(
    backend: &B,
    spec: &ModelSpec,
    train: &Dataset,
    test: &Dataset,
    options: &TrainOptions,
    start: Start,
) -> Result<Vec<EpochMetrics>> {
    if options.batch_size == 0 {
        return Err(Error::Setting("--batch-size must be at least 1".into()));
    }
    if !(options.lr > 0.0 && options.lr.is_finite()) {
        return Err(Error::Setting(format!(
            "--lr {} must be a positive number",
            options.lr
        )));
    }
    if train.is_empty() {
        return Err(Error::Setting(format!(
            "the training set {} is empty",
            train.name
        )));
    }
    check_data_fits(spec, train)?;
    spec.check_trainable(options.batch_size.min(train.len()))?;
    // Batches are never larger than the set they are drawn from.
    let largest_batch = options.batch_size.min(train.len().max(test.len()));
    let slots = options.optimizer.kind.state_slots();
    let workload = Workload::Train {
        optimizer_slots: slots,
    };
    check_memory(backend, spec, largest_batch, workload)?;

    let norm = Normalization::of(train);
    let fresh_state = || TrainingState {
        seed: options.seed,
        optimizer: options.optimizer.kind.name().to_string(),
        lr: options.lr,
        weight_decay: options.optimizer.weight_decay,
        dataset: train.name.clone(),
        norm_mean: norm.mean.clone(),
        norm_std: norm.std.clone(),
        class_names: train.class_names.clone(),
        ..TrainingState::default()
    };
    let (weights, optimizer_state, mut state) = match start {
        Start::New => (
            init_parameters(spec, options.seed)?,
            Vec::new(),
            fresh_state(),
        ),
        Start::Fresh(weights) => (weights, Vec::new(), fresh_state()),
        Start::Resume(c) => (c.model, c.optimizer, c.state),
    };
    if let Some((_, saved)) = optimizer_state.first()
        && saved.len() != slots
    {
        return Err(Error::Setting(format!(
            "the checkpoint was trained with the {} optimizer, whose state ({} tensors per \
             parameter) {} cannot continue (it keeps {slots}); resume with --optimizer {} or \
             without --optimizer",
            state.optimizer,
            saved.len(),
            options.optimizer.kind.name(),
            state.optimizer
        )));
    }
    // The checkpoint records the settings the run continues with.
    state.optimizer = options.optimizer.kind.name().to_string();
    state.lr = options.lr;
    state.weight_decay = options.optimizer.weight_decay;
    state.settings = Some(RunSettings {
        epochs: options.epochs,
        batch_size: options.batch_size,
        schedule: options.schedule,
        warmup_epochs: options.warmup_epochs,
        augment: options.augmentation.is_some(),
        validation: options.validation,
    });
    // A resumed run keeps the normalisation it was trained with.
    let norm = Normalization {
        mean: state.norm_mean.clone(),
        std: state.norm_std.clone(),
    };
    let mut trainer = Trainer::new(
        backend,
        spec,
        &weights,
        options.optimizer,
        &optimizer_state,
        state.step,
        state.seed,
    )?;

    // A last batch of one cannot estimate batchnorm's variance: drop it.
    let steps_per_epoch = if train.len() % options.batch_size == 1 && train.len() > 1 {
        train.len() / options.batch_size
    } else {
        train.len().div_ceil(options.batch_size)
    };
    let total_steps = steps_per_epoch
        .checked_mul(options.epochs)
        .filter(|&steps| steps <= MAX_COUNT)
        .ok_or_else(|| {
            Error::Setting(format!(
                "--epochs {} of {steps_per_epoch} steps each is past the {MAX_COUNT} steps \
                 training counts to",
                options.epochs
            ))
        })?;
    let schedule = LrSchedule {
        base_lr: options.lr,
        schedule: options.schedule,
        warmup_steps: (options.warmup_epochs * steps_per_epoch as f32).round() as usize,
        steps_per_epoch,
        total_steps,
    };
    let mut metrics_file = match &options.metrics {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| Error::file(path, format!("cannot open metrics file: {e}")))?,
        ),
        None => None,
    };

    let resume_batches = resume_position(&state, options.batch_size, steps_per_epoch)?;
    if let Some(path) = &options.checkpoint {
        crate::interrupt::watch_checkpoint(path);
    }
    let last_epoch = options
        .stop_after_epochs
        .map_or(options.epochs, |n| n.min(options.epochs));
    let mut history = Vec::new();
    if options.stop_after_steps.is_some_and(|n| state.step >= n) {
        return Ok(history);
    }
    let first_epoch = state.epoch;
    for epoch in first_epoch..last_epoch {
        let skip = if epoch == first_epoch {
            resume_batches
        } else {
            0
        };
        let order = epoch_order(train.len(), state.seed, epoch, true);
        let mut progress = Progress::new(
            epoch + 1,
            options.epochs,
            steps_per_epoch,
            options.progress_bar,
        );
        let started = Instant::now();
        let mut stats = StepStats::new(backend, steps_per_epoch);
        let mut lr = options.lr;
        for (b, indices) in order
            .chunks(options.batch_size)
            .take(steps_per_epoch)
            .enumerate()
            .skip(skip)
        {
            lr = schedule.lr(trainer.step);
            let augment = options
                .augmentation
                .as_ref()
                .map(|a| (a, batch_seed(state.seed, epoch, b)));
            let batch = make_batch(train, indices, &norm, augment);
            let (loss, correct) = trainer.train_step(backend, &batch, lr);
            // Loss and correct count stay on the device until a report is due.
            stats.record(backend, b, &loss, &correct, indices.len(), lr, trainer.step);
            backend.end_step();
            let interrupted = crate::interrupt::requested();
            let stopping =
                interrupted || options.stop_after_steps.is_some_and(|n| trainer.step >= n);
            if stopping || progress.due(b + 1) {
                if let Err(bad) = stats.read(backend) {
                    return Err(Error::Training(format!(
                        "the loss became {} at epoch {}, batch {}/{steps_per_epoch} (step {}, \
                         learning rate {}); {}try a lower --lr",
                        bad.loss,
                        epoch + 1,
                        bad.batch + 1,
                        bad.step,
                        bad.lr,
                        match &options.checkpoint {
                            Some(p) if p.exists() =>
                                format!("the last good checkpoint is kept at {}; ", p.display()),
                            _ => String::new(),
                        }
                    )));
                }
                backend.take_error()?;
                progress.update(
                    b + 1,
                    stats.loss_sum / stats.seen.max(1) as f64,
                    stats.correct_sum / stats.seen.max(1) as f64,
                    stats.seen as f64 / started.elapsed().as_secs_f64(),
                );
            }
            if stopping {
                // Stop at this very point: after the epoch's last step that is
                // the epoch's end (its evaluation is skipped), else mid-epoch.
                state.step = trainer.step;
                if b + 1 < steps_per_epoch {
                    state.epoch = epoch;
                    state.epoch_examples_done = (b + 1) * options.batch_size;
                } else {
                    state.epoch = epoch + 1;
                    state.epoch_examples_done = 0;
                }
                if let Some(path) = &options.checkpoint {
                    trainer.checkpoint(backend, state.clone()).save(path)?;
                }
                if interrupted {
                    let place = format!(
                        "epoch {}/{}, batch {}/{steps_per_epoch} (step {})",
                        epoch + 1,
                        options.epochs,
                        b + 1,
                        trainer.step
                    );
                    return Err(interrupted_error(&place, options));
                }
                return Ok(history);
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let eval = trainer.evaluate(backend, test, &norm, options.batch_size);
        backend.take_error()?;
        let m = EpochMetrics {
            epoch: epoch + 1,
            train_loss: stats.loss_sum / stats.seen.max(1) as f64,
            train_accuracy: stats.correct_sum / stats.seen.max(1) as f64,
            test_loss: eval.loss,
            test_accuracy: eval.accuracy,
            evaluated_on: EvaluatedOn::for_validation(options.validation),
            images_per_second: stats.seen as f64 / seconds,
            seconds,
            lr,
        };
        progress.finish(&m);
        state.epoch = epoch + 1;
        state.step = trainer.step;
        state.epoch_examples_done = 0;
        state.best_accuracy = state.best_accuracy.max(eval.accuracy);
        if let Some(path) = &options.checkpoint {
            trainer.checkpoint(backend, state.clone()).save(path)?;
        }
        if let (Some(file), Some(path)) = (&mut metrics_file, &options.metrics) {
            writeln!(
                file,
                "{}",
                serde_json::to_string(&m).expect("metrics serialise")
            )
            .and_then(|_| file.flush())
            .map_err(|e| Error::file(path, format!("cannot write metrics: {e}")))?;
        }
        history.push(m);
        if crate::interrupt::requested() {
            let place = format!("the end of epoch {}/{}", epoch + 1, options.epochs);
            return Err(interrupted_error(&place, options));
        }
    }
    Ok(history)
}

/// How many batches of the checkpoint's current epoch to skip: its
/// `epoch_examples_done` in batches of `batch_size`, which must be a whole
/// number of batches inside the epoch.
fn resume_position(
    state: &TrainingState,
    batch_size: usize,
    steps_per_epoch: usize,
) -> Result<usize> {
    let done = state.epoch_examples_done;
    if done == 0 {
        return Ok(0);
    }
    if !done.is_multiple_of(batch_size) || done / batch_size >= steps_per_epoch {
        return Err(Error::Setting(format!(
            "the checkpoint stopped {done} examples into epoch {}, which is not a whole number \
             of the {steps_per_epoch} batches of --batch-size {batch_size} in an epoch; resume \
             with the --batch-size it was trained with",
            state.epoch + 1
        )));
    }
    Ok(done / batch_size)
}

/// The error that reports an interruption at `place` and how to continue.
fn interrupted_error(place: &str, options: &TrainOptions) -> Error {
    Error::Training(match &options.checkpoint {
        Some(path) => format!(
            "interrupted at {place}; the checkpoint {} holds this point: continue with \
             `wgcnn train --resume {} --checkpoint {}` (it keeps the run's settings)",
            path.display(),
            path.display(),
            path.display(),
        ),
        None => format!(
            "interrupted at {place}; no checkpoint was written (--checkpoint PATH keeps one)"
        ),
    })
}

/// The data's image shape must be the model's input shape, and its labels must
/// fit the model's classes.
pub fn check_data_fits(spec: &ModelSpec, data: &Dataset) -> Result<()> {
    if spec.input != data.shape {
        return Err(Error::Shape(format!(
            "the model takes input {:?} but {} has images of shape {:?}",
            spec.input, data.name, data.shape
        )));
    }
    let classes = spec.classes()?;
    if data.classes > classes {
        return Err(Error::Shape(format!(
            "{} has {} classes but the model outputs {classes}",
            data.name, data.classes
        )));
    }
    Ok(())
}
