//! Progress of an epoch: a bar with loss, accuracy, images/s and ETA on a
//! terminal, a plain line every tenth of the epoch otherwise.

use indicatif::{ProgressBar, ProgressStyle};

use super::EpochMetrics;

/// Reports one epoch's progress.
pub struct Progress {
    bar: Option<ProgressBar>,
    epoch: usize,
    epochs: usize,
    steps: usize,
    next_line: usize,
    last_update: std::time::Instant,
}

impl Progress {
    /// Progress of epoch `epoch` of `epochs`, `steps` batches long.
    pub fn new(epoch: usize, epochs: usize, steps: usize, bar: bool) -> Self {
        let bar = bar.then(|| {
            let b = ProgressBar::new(steps as u64);
            b.set_style(
                ProgressStyle::with_template(
                    "epoch {prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            b.set_prefix(format!("{epoch}/{epochs}"));
            b
        });
        Self {
            bar,
            epoch,
            epochs,
            steps,
            next_line: steps.div_ceil(10).max(1),
            last_update: std::time::Instant::now(),
        }
    }

    /// Whether batch `step` (1-based) should be reported: every tenth of the
    /// epoch for plain lines, a few times a second for the bar, and the last.
    /// The trainer reads the step statistics back from the device only then.
    pub fn due(&self, step: usize) -> bool {
        step == self.steps
            || match self.bar {
                Some(_) => self.last_update.elapsed().as_secs_f64() >= 0.25,
                None => step >= self.next_line,
            }
    }

    /// After batch `step` (1-based) with running means.
    pub fn update(&mut self, step: usize, loss: f64, accuracy: f64, images_per_second: f64) {
        let msg = format!(
            "loss {loss:.4} acc {:.2}% {images_per_second:.0} img/s",
            100.0 * accuracy
        );
        match &self.bar {
            Some(bar) => {
                bar.set_position(step as u64);
                bar.set_message(msg);
            }
            None if step >= self.next_line || step == self.steps => {
                println!(
                    "epoch {}/{} step {step}/{}: {msg}",
                    self.epoch, self.epochs, self.steps
                );
                self.next_line = step + self.steps.div_ceil(10).max(1);
            }
            None => {}
        }
    }

    /// Ends the epoch with its summary line.
    pub fn finish(&self, m: &EpochMetrics) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        println!(
            "epoch {}/{}: train loss {:.4} acc {:.2}% | {} loss {:.4} acc {:.2}% | {:.0} img/s, {:.1} s",
            m.epoch,
            self.epochs,
            m.train_loss,
            100.0 * m.train_accuracy,
            m.evaluated_on.name(),
            m.test_loss,
            100.0 * m.test_accuracy,
            m.images_per_second,
            m.seconds
        );
    }
}
