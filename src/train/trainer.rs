//! The model plus its optimizer state: one training step, and evaluation.

use crate::backend::Backend;
use crate::checkpoint::{Checkpoint, TrainingState};
use crate::data::{Batch, Dataset, Normalization, epoch_order, make_batch};
use crate::error::{Error, Result};
use crate::nn::{Mode, ModelSpec, Sequential, StateDict};
use crate::optim::{OptimizerSettings, UpdateStep};
use crate::tensor::HostTensor;

/// Loss, accuracy and confusion matrix over a data set.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// Mean cross-entropy.
    pub loss: f64,
    /// Fraction of examples whose arg-max logit is the label, in `[0, 1]`.
    pub accuracy: f64,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<u64>>,
    /// Examples evaluated.
    pub count: usize,
}

/// A model being trained on backend `B`: weights, optimizer state, step count.
pub struct Trainer<B: Backend> {
    /// The network.
    pub model: Sequential<B>,
    /// Optimizer hyper-parameters.
    pub optimizer: OptimizerSettings,
    /// Per trainable parameter (in `params()` order), its optimizer slots.
    state: Vec<Vec<B::Tensor>>,
    /// Optimizer steps taken so far.
    pub step: usize,
}

impl<B: Backend> Trainer<B> {
    /// A trainer over `weights` with fresh (zero) optimizer state, or the
    /// `optimizer_state` saved in a checkpoint.
    pub fn new(
        backend: &B,
        spec: &ModelSpec,
        weights: &StateDict,
        optimizer: OptimizerSettings,
        optimizer_state: &[(String, Vec<HostTensor<f32>>)],
        step: usize,
        seed: u64,
    ) -> Result<Self> {
        let model = Sequential::new(backend, spec, weights, seed as u32)?;
        let slots = optimizer.kind.state_slots();
        let mut host_state: Vec<Vec<HostTensor<f32>>> = Vec::new();
        for p in model.params().filter(|p| p.trainable) {
            let saved = optimizer_state.iter().find(|(name, _)| *name == p.name);
            let tensors = match saved {
                Some((_, tensors)) if tensors.len() == slots => {
                    for t in tensors {
                        if t.shape != p.shape() {
                            return Err(Error::Shape(format!(
                                "optimizer state of {} has shape {:?}, expected {:?}",
                                p.name,
                                t.shape,
                                p.shape()
                            )));
                        }
                    }
                    tensors.clone()
                }
                Some((_, tensors)) if step > 0 => {
                    return Err(Error::Setting(format!(
                        "the checkpoint's optimizer has {} state tensors per parameter, {} needs {slots}; \
                         resume with the optimizer it was trained with",
                        tensors.len(),
                        optimizer.kind.name()
                    )));
                }
                _ => (0..slots).map(|_| HostTensor::zeros(p.shape())).collect(),
            };
            host_state.push(tensors);
        }
        // Each slot of every parameter uploaded together, laid out as the
        // parameters are (see `Backend::upload_parameters`).
        let mut state: Vec<Vec<B::Tensor>> = (0..host_state.len()).map(|_| Vec::new()).collect();
        for slot in 0..slots {
            let host: Vec<&HostTensor<f32>> = host_state.iter().map(|t| &t[slot]).collect();
            for (tensors, t) in state.iter_mut().zip(backend.upload_parameters(&host)) {
                tensors.push(t);
            }
        }
        Ok(Self {
            model,
            optimizer,
            state,
            step,
        })
    }

    /// Forward, backward and optimizer update on one batch at learning rate
    /// `lr`. Returns the batch's mean loss and correct count, still on the
    /// backend (download them when they are needed).
    pub fn train_step(&mut self, backend: &B, batch: &Batch, lr: f32) -> (B::Tensor, B::Tensor) {
        let x = backend.upload(&batch.images);
        let labels = backend.upload_indices(&batch.labels);
        // Uploaded with the batch, before any other work of the step is recorded.
        let update = UpdateStep {
            lr,
            t: self.step as u32 + 1,
        };
        let step_values = backend.step_values(&self.optimizer, &update);
        let out = self
            .model
            .forward_backward(backend, &x, &labels, self.step as u32);
        self.step += 1;
        let (mut params, grads): (Vec<&mut B::Tensor>, Vec<B::Tensor>) = self
            .model
            .params_mut()
            .filter(|p| p.trainable)
            .map(|p| {
                let grad = p
                    .grad
                    .take()
                    .expect("backward fills every trainable gradient");
                (&mut p.value, grad)
            })
            .unzip();
        backend.optimizer_update_all(
            &self.optimizer,
            &step_values,
            &mut params,
            &grads,
            &mut self.state,
        );
        (out.loss, out.correct)
    }

    /// Loss, accuracy and confusion matrix of the model in evaluation mode.
    pub fn evaluate(
        &mut self,
        backend: &B,
        data: &Dataset,
        norm: &Normalization,
        batch_size: usize,
    ) -> Evaluation {
        evaluate(&mut self.model, backend, data, norm, batch_size)
    }

    /// The checkpoint of the current weights and optimizer state.
    pub fn checkpoint(&self, backend: &B, state: TrainingState) -> Checkpoint {
        let names = self
            .model
            .params()
            .filter(|p| p.trainable)
            .map(|p| p.name.clone());
        let optimizer = names
            .zip(&self.state)
            .map(|(name, slots)| (name, slots.iter().map(|t| backend.download(t)).collect()))
            .collect();
        Checkpoint {
            spec: self.model.spec().clone(),
            model: self.model.state_dict(backend),
            optimizer,
            state,
        }
    }
}

/// Evaluates `model` on `data`: logits are read back per batch and the loss
/// (stable log-sum-exp), accuracy and confusion matrix computed on the host.
pub fn evaluate<B: Backend>(
    model: &mut Sequential<B>,
    backend: &B,
    data: &Dataset,
    norm: &Normalization,
    batch_size: usize,
) -> Evaluation {
    let mut confusion = vec![vec![0u64; data.classes]; data.classes];
    let mut loss_sum = 0.0f64;
    let order = epoch_order(data.len(), 0, 0, false);
    for indices in order.chunks(batch_size.max(1)) {
        let batch = make_batch(data, indices, norm, None);
        let logits = backend.download(&model.forward(
            backend,
            &backend.upload(&batch.images),
            Mode::Eval,
            0,
        ));
        let k = logits.shape[1];
        for (row, &label) in logits.data.chunks(k).zip(&batch.labels) {
            let (predicted, max) =
                row.iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                        if v > best.1 { (i, v) } else { best }
                    });
            let lse = max as f64
                + row
                    .iter()
                    .map(|&v| ((v - max) as f64).exp())
                    .sum::<f64>()
                    .ln();
            loss_sum += lse - row[label as usize] as f64;
            confusion[label as usize][predicted.min(data.classes - 1)] += 1;
        }
    }
    let count = data.len();
    let correct: u64 = (0..data.classes).map(|c| confusion[c][c]).sum();
    Evaluation {
        loss: loss_sum / count.max(1) as f64,
        accuracy: correct as f64 / count.max(1) as f64,
        confusion,
        count,
    }
}
