//! An epoch's per-step loss and correct counts, kept on the device and read
//! back only when a report is due (one readback per logging interval, not per
//! step).

use crate::backend::Backend;
use crate::tensor::HostTensor;

/// A step whose loss was not finite.
#[derive(Clone, Copy, Debug)]
pub struct Diverged {
    /// The loss value (NaN or ±∞).
    pub loss: f64,
    /// 0-based batch of the epoch.
    pub batch: usize,
    /// Optimizer steps after that batch.
    pub step: usize,
    /// Its learning rate.
    pub lr: f32,
}

/// What the host remembers of a recorded step.
#[derive(Clone, Copy, Debug)]
struct Recorded {
    examples: usize,
    lr: f32,
    step: usize,
}

/// Per-step statistics of one epoch: `values` holds the batch losses in
/// `[0, steps)` and correct counts in `[steps, 2·steps)` on the device.
pub struct StepStats<B: Backend> {
    values: B::Tensor,
    steps: usize,
    recorded: Vec<Option<Recorded>>,
    /// Batches `< read_up_to` are folded into the sums.
    read_up_to: usize,
    /// Σ loss·examples over the batches read.
    pub loss_sum: f64,
    /// Σ correct over the batches read.
    pub correct_sum: f64,
    /// Examples over the batches read.
    pub seen: usize,
}

impl<B: Backend> StepStats<B> {
    /// Room for an epoch of `steps` batches.
    pub fn new(backend: &B, steps: usize) -> Self {
        Self {
            values: backend.upload(&HostTensor::zeros(&[2 * steps.max(1)])),
            steps,
            recorded: vec![None; steps],
            read_up_to: 0,
            loss_sum: 0.0,
            correct_sum: 0.0,
            seen: 0,
        }
    }

    /// Records batch `batch`'s loss and correct count (device tensors of one
    /// element) with its size, learning rate and step number.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &mut self,
        backend: &B,
        batch: usize,
        loss: &B::Tensor,
        correct: &B::Tensor,
        examples: usize,
        lr: f32,
        step: usize,
    ) {
        backend.copy_into(&mut self.values, batch, loss);
        backend.copy_into(&mut self.values, self.steps + batch, correct);
        self.recorded[batch] = Some(Recorded { examples, lr, step });
    }

    /// Reads the values back and folds every newly recorded batch into the
    /// sums; the first non-finite loss is an error.
    pub fn read(&mut self, backend: &B) -> Result<(), Diverged> {
        let values = backend.download(&self.values);
        let last = self
            .recorded
            .iter()
            .rposition(Option::is_some)
            .map_or(0, |i| i + 1);
        for batch in self.read_up_to..last {
            let Some(r) = self.recorded[batch] else {
                continue;
            };
            let loss = values.data[batch] as f64;
            if !loss.is_finite() {
                return Err(Diverged {
                    loss,
                    batch,
                    step: r.step,
                    lr: r.lr,
                });
            }
            self.loss_sum += loss * r.examples as f64;
            self.correct_sum += values.data[self.steps + batch] as f64;
            self.seen += r.examples;
        }
        self.read_up_to = self.read_up_to.max(last);
        Ok(())
    }
}
