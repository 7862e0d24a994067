//! Checkpoints: safetensors files holding the model's weights under PyTorch's
//! `nn.Sequential` names and layouts, the optimizer state, and in the header
//! metadata the model definition (TOML), the training state (JSON), a format
//! version and a checksum of every tensor and every other metadata entry.
//! Written atomically: a temporary file in the same directory, flushed to
//! disk, then renamed over the old one.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, View};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::nn::{ModelSpec, StateDict};
use crate::optim::Schedule;
use crate::tensor::HostTensor;

/// Written into every checkpoint's metadata as `format`.
pub const FORMAT: &str = "wgcnn-checkpoint";
/// The most epochs or optimizer steps training counts to: the next step's
/// 1-based count must fit the `i32` of Adam's bias correction.
pub const MAX_COUNT: usize = i32::MAX as usize - 1;

/// Bumped whenever the layout of a checkpoint changes incompatibly.
/// Version 2 adds the metadata to the checksum; version 1 files (whose
/// checksum covers the tensors alone) are still read.
pub const VERSION: u32 = 2;

/// Everything a run needs to continue where it stopped.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingState {
    /// Epochs completed.
    pub epoch: usize,
    /// Optimizer steps taken.
    pub step: usize,
    /// The run's seed (shuffling, dropout, augmentation).
    pub seed: u64,
    /// Optimizer name (`adam`, `sgd`, …).
    pub optimizer: String,
    /// Base learning rate.
    pub lr: f32,
    /// Weight decay.
    pub weight_decay: f32,
    /// Data set the model was trained on.
    pub dataset: String,
    /// Per-channel normalisation applied to inputs (mean, std of pixels in [0, 1]).
    pub norm_mean: Vec<f32>,
    /// See `norm_mean`.
    pub norm_std: Vec<f32>,
    /// Class names, index = label.
    pub class_names: Vec<String>,
    /// Best test accuracy so far.
    pub best_accuracy: f64,
    /// Examples of epoch `epoch` (0-based: the first incomplete one) already
    /// trained on when the run stopped mid-epoch (Ctrl-C); 0 at an epoch
    /// boundary. A resumed run skips them: an epoch's order depends only on
    /// (seed, epoch).
    #[serde(default)]
    pub epoch_examples_done: usize,
    /// The settings the run trains with, which `--resume` continues with
    /// unless told otherwise; `None` in checkpoints written before they were
    /// recorded.
    #[serde(default)]
    pub settings: Option<RunSettings>,
}

/// The settings that shape a run's course beyond the optimizer: a resumed
/// run that keeps them continues the run that would have gone on
/// uninterrupted.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    /// Epochs the run is planned for (the schedule spans them).
    pub epochs: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// Learning-rate decay.
    pub schedule: Schedule,
    /// Epochs of linear warm-up.
    pub warmup_epochs: f32,
    /// Whether training batches are augmented.
    pub augment: bool,
    /// Fraction of the training set held out for validation.
    pub validation: f32,
}

impl RunSettings {
    /// Why these settings cannot train, naming the field; `None` when they
    /// can.
    fn problem(&self) -> Option<String> {
        if !(1..=MAX_COUNT).contains(&self.epochs) || self.batch_size == 0 {
            return Some(format!(
                "epochs = {} must be 1 to {MAX_COUNT} and batch_size = {} at least 1",
                self.epochs, self.batch_size
            ));
        }
        if !(self.warmup_epochs >= 0.0 && self.warmup_epochs.is_finite()) {
            return Some(format!(
                "warmup_epochs = {} must be a finite number >= 0",
                self.warmup_epochs
            ));
        }
        if !(0.0..1.0).contains(&self.validation) {
            return Some(format!(
                "validation = {} must be a fraction in [0, 1)",
                self.validation
            ));
        }
        match self.schedule {
            Schedule::Step {
                every_epochs,
                gamma,
            } if every_epochs == 0 || !(gamma > 0.0 && gamma.is_finite()) => Some(format!(
                "a step schedule's every_epochs = {every_epochs} must be at least 1 and its \
                 gamma = {gamma} a positive number"
            )),
            _ => None,
        }
    }
}

/// A checkpoint in memory.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// The model definition.
    pub spec: ModelSpec,
    /// Weights and buffers under PyTorch names (`0.weight`, `1.running_var`, …).
    pub model: StateDict,
    /// Optimizer state: `(parameter name, slot tensors)` per trainable parameter.
    pub optimizer: Vec<(String, Vec<HostTensor<f32>>)>,
    /// Where training stands.
    pub state: TrainingState,
}

struct F32View<'a>(&'a HostTensor<f32>);

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(bytemuck::cast_slice(&self.0.data))
    }
    fn data_len(&self) -> usize {
        4 * self.0.data.len()
    }
}

/// PyTorch's batchnorm keeps `num_batches_tracked` as a 0-d int64 tensor; it is
/// written so `load_state_dict(strict=True)` accepts the file.
struct I64Scalar([u8; 8]);

impl View for I64Scalar {
    fn dtype(&self) -> Dtype {
        Dtype::I64
    }
    fn shape(&self) -> &[usize] {
        &[]
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.0)
    }
    fn data_len(&self) -> usize {
        8
    }
}

enum AnyView<'a> {
    F32(F32View<'a>),
    I64(I64Scalar),
}

impl View for AnyView<'_> {
    fn dtype(&self) -> Dtype {
        match self {
            AnyView::F32(v) => v.dtype(),
            AnyView::I64(v) => v.dtype(),
        }
    }
    fn shape(&self) -> &[usize] {
        match self {
            AnyView::F32(v) => v.shape(),
            AnyView::I64(v) => v.shape(),
        }
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        match self {
            AnyView::F32(v) => v.data(),
            AnyView::I64(v) => v.data(),
        }
    }
    fn data_len(&self) -> usize {
        match self {
            AnyView::F32(v) => v.data_len(),
            AnyView::I64(v) => v.data_len(),
        }
    }
}

/// FNV-1a over every tensor's name, dtype, shape and bytes, in name order,
/// then over every metadata entry but `checksum`, key and value, in key
/// order (pass no metadata for a version 1 file's tensors-only checksum).
fn checksum<'a>(
    tensors: impl Iterator<Item = (&'a str, Dtype, &'a [usize], &'a [u8])>,
    metadata: &HashMap<String, String>,
) -> String {
    let mut items: Vec<_> = tensors.collect();
    items.sort_by(|a, b| a.0.cmp(b.0));
    let mut h = crate::fnv::Fnv1a::default();
    for (name, dtype, shape, data) in items {
        h.feed(name.as_bytes());
        h.feed(format!("{dtype:?}{shape:?}").as_bytes());
        h.feed(data);
    }
    let mut entries: Vec<_> = metadata.iter().filter(|(k, _)| *k != "checksum").collect();
    entries.sort();
    for (key, value) in entries {
        // Lengths first, so no two different entry lists feed the same bytes.
        h.feed(&(key.len() as u64).to_le_bytes());
        h.feed(key.as_bytes());
        h.feed(&(value.len() as u64).to_le_bytes());
        h.feed(value.as_bytes());
    }
    format!("{:016x}", h.finish())
}

fn optimizer_name(param: &str, slot: usize) -> String {
    format!("optimizer.{param}.{slot}")
}

impl Checkpoint {
    /// Writes the checkpoint to `path` atomically: readers see the old file or
    /// the new one, never a torn one.
    ///
    /// A training state that [`Checkpoint::load`] would refuse (a number that
    /// is not finite, which JSON cannot hold, or a normalisation that does not
    /// fit the model's input) is an error here instead.
    pub fn save(&self, path: &Path) -> Result<()> {
        let io = |e: std::io::Error| Error::file(path, format!("cannot write checkpoint: {e}"));
        check_state(&self.spec, &self.state)
            .map_err(|e| Error::file(path, format!("cannot write checkpoint: {e}")))?;
        let batches = (self.state.step as i64).to_le_bytes();
        let mut views: Vec<(String, AnyView)> = self
            .model
            .iter()
            .map(|(name, t)| (name.clone(), AnyView::F32(F32View(t))))
            .collect();
        for (i, layer) in self.spec.layers.iter().enumerate() {
            if *layer == crate::nn::LayerSpec::BatchNorm {
                views.push((
                    format!("{i}.num_batches_tracked"),
                    AnyView::I64(I64Scalar(batches)),
                ));
            }
        }
        for (param, slots) in &self.optimizer {
            for (slot, t) in slots.iter().enumerate() {
                views.push((optimizer_name(param, slot), AnyView::F32(F32View(t))));
            }
        }
        let data: Vec<(String, std::borrow::Cow<[u8]>)> =
            views.iter().map(|(n, v)| (n.clone(), v.data())).collect();
        let mut metadata = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("version".to_string(), VERSION.to_string()),
            ("model".to_string(), self.spec.to_toml()),
            (
                "training".to_string(),
                serde_json::to_string(&self.state).expect("training state serialises"),
            ),
        ]);
        let sum = checksum(
            views
                .iter()
                .zip(&data)
                .map(|((n, v), (_, d))| (n.as_str(), v.dtype(), v.shape(), d.as_ref())),
            &metadata,
        );
        metadata.insert("checksum".to_string(), sum);
        let bytes = safetensors::serialize(views, Some(metadata))
            .map_err(|e| Error::file(path, format!("cannot encode checkpoint: {e}")))?;
        write_atomically(path, &bytes).map_err(io)
    }

    /// Reads and verifies a checkpoint: format, version, checksum, and that the
    /// weights fit the model definition stored with them.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::file(path, format!("cannot read checkpoint: {e}")))?;
        Self::from_bytes(path, &bytes)
    }

    /// Reads and verifies a checkpoint held in memory, with exactly the checks
    /// of [`Checkpoint::load`]; `path` only names the source in errors, which
    /// are [`Error::File`].
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self> {
        Self::decode(bytes).map_err(|message| Error::file(path, message))
    }

    fn decode(bytes: &[u8]) -> std::result::Result<Self, String> {
        let file = SafeTensors::deserialize(bytes)
            .map_err(|e| format!("not a safetensors checkpoint (or truncated): {e}"))?;
        let (_, header) =
            SafeTensors::read_metadata(bytes).map_err(|e| format!("unreadable header: {e}"))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let field = |key: &str| {
            meta.get(key)
                .ok_or_else(|| format!("not a wgcnn checkpoint: the metadata has no `{key}`"))
        };
        if field("format")? != FORMAT {
            return Err(format!(
                "not a wgcnn checkpoint (format {:?})",
                meta["format"]
            ));
        }
        let version = field("version")?;
        let covered = match version.parse::<u32>() {
            Ok(1) => HashMap::new(),
            Ok(VERSION) => meta.clone(),
            _ => {
                return Err(format!(
                    "checkpoint format version {version} is not supported (this wgcnn reads \
                     versions 1 to {VERSION})"
                ));
            }
        };
        let tensors = file.tensors();
        let sum = checksum(
            tensors
                .iter()
                .map(|(n, v)| (n.as_str(), v.dtype(), v.shape(), v.data())),
            &covered,
        );
        if &sum != field("checksum")? {
            return Err("checksum mismatch: the file is corrupt".to_string());
        }
        let spec = ModelSpec::from_toml(field("model")?)
            .map_err(|e| format!("stored model definition: {e}"))?;
        let state: TrainingState = serde_json::from_str(field("training")?)
            .map_err(|e| format!("stored training state: {e}"))?;
        check_state(&spec, &state).map_err(|e| format!("stored training state: {e}"))?;
        let mut by_name: HashMap<String, HostTensor<f32>> = HashMap::new();
        for (name, view) in &tensors {
            if name.ends_with(".num_batches_tracked") {
                continue;
            }
            if view.dtype() != Dtype::F32 {
                return Err(format!("tensor {name} is {:?}, expected F32", view.dtype()));
            }
            by_name.insert(
                name.clone(),
                HostTensor::new(view.shape(), bytemuck::pod_collect_to_vec(view.data())),
            );
        }
        let layout = crate::nn::parameter_shapes(&spec).map_err(|e| e.to_string())?;
        let mut model = StateDict::new();
        for (name, expected) in &layout {
            let t = by_name
                .remove(name)
                .ok_or_else(|| format!("tensor {name} of the model is missing"))?;
            if &t.shape != expected {
                return Err(format!(
                    "tensor {name} has shape {:?}, the model needs {expected:?}",
                    t.shape
                ));
            }
            model.push((name.clone(), t));
        }
        let mut optimizer = Vec::new();
        for (name, _) in &layout {
            let slots: Vec<HostTensor<f32>> = (0..)
                .map_while(|slot| by_name.remove(&optimizer_name(name, slot)))
                .collect();
            if !slots.is_empty() {
                optimizer.push((name.clone(), slots));
            }
        }
        if let Some(extra) = by_name.keys().next() {
            return Err(format!(
                "tensor {extra} does not belong to the stored model"
            ));
        }
        Ok(Self {
            spec,
            model,
            optimizer,
            state,
        })
    }
}

/// What a checkpoint's training state must satisfy to be written and read back
/// and to be used: counters that training can continue from (the next step's
/// 1-based count must fit the `i32` of Adam's bias correction), finite numbers
/// (JSON has no NaN or infinity), and one finite mean and one positive, finite
/// standard deviation per input channel of an image model (evaluation and
/// resuming normalise inputs with them).
fn check_state(spec: &ModelSpec, state: &TrainingState) -> std::result::Result<(), String> {
    for (name, value) in [("epoch", state.epoch), ("step", state.step)] {
        if value > MAX_COUNT {
            return Err(format!(
                "{name} = {value} is past the {MAX_COUNT} that training counts to"
            ));
        }
    }
    for (name, value) in [
        ("lr", f64::from(state.lr)),
        ("weight_decay", f64::from(state.weight_decay)),
        ("best_accuracy", state.best_accuracy),
    ] {
        if !value.is_finite() {
            return Err(format!("{name} = {value} is not a finite number"));
        }
    }
    if let Some(problem) = state.settings.as_ref().and_then(RunSettings::problem) {
        return Err(format!("settings: {problem}"));
    }
    let (mean, std) = (&state.norm_mean, &state.norm_std);
    let channels = match spec.input[..] {
        [c, _, _] => Some(c),
        _ => None,
    };
    if mean.len() != std.len() || channels.is_some_and(|c| c != mean.len()) {
        return Err(format!(
            "norm_mean has {} values and norm_std {}; expected one of each per input channel{}",
            mean.len(),
            std.len(),
            channels.map_or(String::new(), |c| format!(" ({c})"))
        ));
    }
    if let Some((i, m)) = mean.iter().enumerate().find(|(_, m)| !m.is_finite()) {
        return Err(format!("norm_mean[{i}] = {m} is not a finite number"));
    }
    if let Some((i, s)) = std
        .iter()
        .enumerate()
        .find(|(_, s)| !(s.is_finite() && **s > 0.0))
    {
        return Err(format!(
            "norm_std[{i}] = {s} must be a positive, finite number"
        ));
    }
    Ok(())
}

/// The directory of `path` and the temporary file [`write_atomically`]
/// writes there before renaming it over `path`.
fn temporary_beside(path: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the path has no file name",
        )
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    Ok((dir, tmp))
}

/// Checks, before a long run, that [`write_atomically`] will be able to
/// write `path`: that it is not a directory, and that its directory exists
/// and takes a new file (one is created there and removed). A mistyped
/// `--checkpoint` then fails at once instead of after the first epoch.
pub fn check_writable(path: &Path) -> std::io::Result<()> {
    if path.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::IsADirectory,
            "it is a directory",
        ));
    }
    let (_, tmp) = temporary_beside(path)?;
    File::create(&tmp)?;
    std::fs::remove_file(&tmp)
}

/// Writes `bytes` to a temporary file next to `path`, syncs it, renames it over
/// `path` and syncs the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let (dir, tmp) = temporary_beside(path)?;
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
