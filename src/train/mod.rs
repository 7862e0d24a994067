//! The training loop: epochs of shuffled batches, a test evaluation after each,
//! metrics lines, progress, and an atomic checkpoint per epoch.

mod progress;
mod trainer;

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

pub use progress::Progress;
pub use trainer::{Evaluation, Trainer, evaluate};

use crate::backend::Backend;
use crate::checkpoint::{Checkpoint, TrainingState};
use crate::data::{Augmentation, Dataset, Normalization, batch_seed, epoch_order, make_batch};
use crate::error::{Error, Result};
use crate::nn::{ModelSpec, StateDict};
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
    /// Checkpoint written after every epoch.
    pub checkpoint: Option<PathBuf>,
    /// JSON-lines metrics, one object per epoch.
    pub metrics: Option<PathBuf>,
    /// Draw a progress bar (when the output is a terminal).
    pub progress_bar: bool,
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
    /// Mean test loss.
    pub test_loss: f64,
    /// Fraction of test examples classified correctly.
    pub test_accuracy: f64,
    /// Training throughput.
    pub images_per_second: f64,
    /// Wall time of the epoch's training (evaluation excluded).
    pub seconds: f64,
    /// Learning rate at the epoch's last step.
    pub lr: f32,
}

/// Where a run starts: fresh weights, or a checkpoint.
pub enum Start {
    /// New weights from the model's initialiser.
    Fresh(StateDict),
    /// Continue a checkpoint.
    Resume(Box<Checkpoint>),
}

/// Trains `spec` on `train`, evaluating on `test` after every epoch.
/// `describe` names the data for the checkpoint.
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
    if let Some(max) = backend.max_buffer_bytes() {
        spec.check_fits(options.batch_size, max)?;
    }

    let norm = Normalization::of(train);
    let (weights, optimizer_state, mut state) = match start {
        Start::Fresh(weights) => (
            weights,
            Vec::new(),
            TrainingState {
                seed: options.seed,
                optimizer: options.optimizer.kind.name().to_string(),
                lr: options.lr,
                weight_decay: options.optimizer.weight_decay,
                dataset: train.name.clone(),
                norm_mean: norm.mean.clone(),
                norm_std: norm.std.clone(),
                class_names: train.class_names.clone(),
                ..TrainingState::default()
            },
        ),
        Start::Resume(c) => (c.model, c.optimizer, c.state),
    };
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
    let schedule = LrSchedule {
        base_lr: options.lr,
        schedule: options.schedule,
        warmup_steps: (options.warmup_epochs * steps_per_epoch as f32).round() as usize,
        steps_per_epoch,
        total_steps: steps_per_epoch * options.epochs,
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

    let mut history = Vec::new();
    for epoch in state.epoch..options.epochs {
        let order = epoch_order(train.len(), state.seed, epoch, true);
        let mut progress = Progress::new(
            epoch + 1,
            options.epochs,
            steps_per_epoch,
            options.progress_bar,
        );
        let started = Instant::now();
        let (mut loss_sum, mut correct_sum, mut seen) = (0.0f64, 0.0f64, 0usize);
        let mut lr = options.lr;
        for (b, indices) in order
            .chunks(options.batch_size)
            .take(steps_per_epoch)
            .enumerate()
        {
            lr = schedule.lr(trainer.step);
            let augment = options
                .augmentation
                .as_ref()
                .map(|a| (a, batch_seed(state.seed, epoch, b)));
            let batch = make_batch(train, indices, &norm, augment);
            let (loss, correct) = trainer.train_step(backend, &batch, lr);
            let loss = backend.download(&loss).data[0] as f64;
            let correct = backend.download(&correct).data[0] as f64;
            backend.take_error()?;
            if !loss.is_finite() {
                return Err(Error::Training(format!(
                    "the loss became {loss} at epoch {} step {} (learning rate {lr}); {}try a lower --lr",
                    epoch + 1,
                    b + 1,
                    match &options.checkpoint {
                        Some(p) if p.exists() =>
                            format!("the last good checkpoint is kept at {}; ", p.display()),
                        _ => String::new(),
                    }
                )));
            }
            loss_sum += loss * indices.len() as f64;
            correct_sum += correct;
            seen += indices.len();
            progress.update(
                b + 1,
                loss_sum / seen as f64,
                correct_sum / seen as f64,
                seen as f64 / started.elapsed().as_secs_f64(),
            );
        }
        let seconds = started.elapsed().as_secs_f64();
        let eval = trainer.evaluate(backend, test, &norm, options.batch_size);
        backend.take_error()?;
        let m = EpochMetrics {
            epoch: epoch + 1,
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: correct_sum / seen.max(1) as f64,
            test_loss: eval.loss,
            test_accuracy: eval.accuracy,
            images_per_second: seen as f64 / seconds,
            seconds,
            lr,
        };
        progress.finish(&m);
        state.epoch = epoch + 1;
        state.step = trainer.step;
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
    }
    Ok(history)
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
