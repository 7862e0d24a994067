//! The data layer: labelled image sets held as raw bytes, where their files are
//! found and how they are read, and the batches a backend trains on.
//!
//! - [`load`] reads Fashion-MNIST and MNIST (IDX files, gzip or raw; `idx.rs`)
//!   and CIFAR-10 (binary batches; `cifar.rs`); [`synthetic`] draws a built-in
//!   set of shapes (`synthetic.rs`); [`load_image_file`] turns a PNG/JPEG into
//!   one example (`image_file.rs`).
//! - [`search_paths`] and [`locate`] find a data set's directory.
//! - [`epoch_order`] and [`make_batch`] turn a [`Dataset`] into normalised,
//!   optionally augmented [`Batch`]es, deterministically from seeds so a resumed
//!   run sees the same batches (`batch.rs`).
//!
//! Readers check every length against the file before allocating for it, and
//! every failure is an [`Error::File`] naming the file and what was expected
//! versus found.

mod batch;
mod cifar;
mod idx;
mod image_file;
mod synthetic;

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::rng::SplitMix64;

pub use batch::{Augmentation, Batch, Normalization, batch_seed, epoch_order, make_batch};
pub use cifar::parse_cifar_batch;
pub use idx::{IdxFile, IdxKind, parse_idx};
pub use image_file::load_image_file;
pub use synthetic::synthetic;

/// Fashion-MNIST's class names, by label.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// MNIST's class names (the digits), by label.
pub const MNIST_CLASSES: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// CIFAR-10's class names, by label.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// A labelled image set held as raw bytes.
#[derive(Clone, PartialEq)]
pub struct Dataset {
    /// Which set and split, e.g. `"fashion-mnist (train)"`.
    pub name: String,
    /// `len() · C·H·W` bytes, each image NCHW (channel planes), values `0..=255`.
    pub images: Vec<u8>,
    /// One label per image, each below `classes`.
    pub labels: Vec<u8>,
    /// `[C, H, W]` of every image.
    pub shape: [usize; 3],
    /// Number of classes; labels lie in `0..classes`.
    pub classes: usize,
    /// Human-readable name of each class, by label.
    pub class_names: Vec<String>,
}

impl fmt::Debug for Dataset {
    /// A summary: name, length, shape and classes (not the bytes).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dataset")
            .field("name", &self.name)
            .field("len", &self.len())
            .field("shape", &self.shape)
            .field("classes", &self.classes)
            .field("class_names", &self.class_names)
            .finish_non_exhaustive()
    }
}

impl Dataset {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the set holds no example.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes per image: `C·H·W`.
    pub fn image_len(&self) -> usize {
        self.shape.iter().product()
    }

    /// One example's pixels (`C·H·W` bytes, channel planes); its label is
    /// `labels[i]`.
    ///
    /// # Panics
    /// When `i >= len()`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// The examples at `indices`, in that order, as a new set called `name`.
    ///
    /// # Panics
    /// When an index is not below `len()`.
    pub fn select(&self, indices: &[usize], name: impl Into<String>) -> Dataset {
        let mut images = Vec::with_capacity(indices.len() * self.image_len());
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            images.extend_from_slice(self.image(i));
            labels.push(self.labels[i]);
        }
        Dataset {
            name: name.into(),
            images,
            labels,
            shape: self.shape,
            classes: self.classes,
            class_names: self.class_names.clone(),
        }
    }

    /// Splits off the last `fraction` of a seeded permutation as a validation set:
    /// returns `(training part, validation part)`, each keeping the original
    /// order of its examples. The validation part has `round(len · fraction)`
    /// examples; `fraction` must lie strictly between 0 and 1 and leave at least
    /// one example on each side.
    pub fn split_validation(self, fraction: f32, seed: u64) -> Result<(Dataset, Dataset)> {
        if !(fraction > 0.0 && fraction < 1.0) {
            return Err(Error::Setting(format!(
                "validation fraction {fraction} must lie strictly between 0 and 1"
            )));
        }
        let n = self.len();
        let n_val = (n as f64 * fraction as f64).round() as usize;
        if n_val == 0 || n_val >= n {
            return Err(Error::Setting(format!(
                "a validation fraction of {fraction} of {n} examples of {} leaves {} for \
                 validation and {} for training; each needs at least one",
                self.name,
                n_val,
                n.saturating_sub(n_val)
            )));
        }
        let mut order = permutation(n, &mut SplitMix64::new(derive_seed(&[SPLIT_TAG, seed])));
        let mut val = order.split_off(n - n_val);
        order.sort_unstable();
        val.sort_unstable();
        let train_part = self.select(&order, format!("{} / training", self.name));
        let val_part = self.select(&val, format!("{} / validation", self.name));
        Ok((train_part, val_part))
    }

    /// Checks the invariants a reader guarantees: `images` holds `len()` images of
    /// `shape`, every label is below `classes`, and there is a name per class.
    /// `path` names the source in the error.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let n = self.image_len();
        if n == 0 {
            return Err(Error::file(
                path,
                format!("image shape {:?} has no pixels", self.shape),
            ));
        }
        if self.images.len() != self.len() * n {
            return Err(Error::file(
                path,
                format!(
                    "{} bytes of pixels for {} labels; expected {} ({} per image)",
                    self.images.len(),
                    self.len(),
                    self.len() * n,
                    n
                ),
            ));
        }
        if self.class_names.len() != self.classes {
            return Err(Error::file(
                path,
                format!(
                    "{} class names for {} classes",
                    self.class_names.len(),
                    self.classes
                ),
            ));
        }
        check_labels(path, &self.labels, self.classes)
    }
}

/// Train and test splits of one data set.
#[derive(Clone, Debug)]
pub struct Splits {
    /// The training split.
    pub train: Dataset,
    /// The test split.
    pub test: Dataset,
}

/// The data sets wgcnn knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DatasetKind {
    /// Zalando's Fashion-MNIST: 1×28×28, 10 classes of clothing (IDX files).
    FashionMnist,
    /// LeCun's MNIST digits: 1×28×28, 10 classes (IDX files).
    Mnist,
    /// CIFAR-10: 3×32×32, 10 classes (binary batches).
    Cifar10,
    /// The built-in shapes of [`synthetic`]: 1×28×28, 10 classes, no files.
    Synthetic,
}

impl DatasetKind {
    /// Every kind, in the order the CLI lists them.
    pub const ALL: [DatasetKind; 4] = [
        DatasetKind::FashionMnist,
        DatasetKind::Mnist,
        DatasetKind::Cifar10,
        DatasetKind::Synthetic,
    ];

    /// The name used on the command line and in directory names:
    /// `fashion-mnist`, `mnist`, `cifar10`, `synthetic`.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Mnist => "mnist",
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Synthetic => "synthetic",
        }
    }

    /// Parses a name from [`DatasetKind::name`]; case, `_` for `-`, and
    /// `cifar-10` are accepted too.
    pub fn from_name(name: &str) -> Result<Self> {
        let normal = name.trim().to_ascii_lowercase().replace('_', "-");
        let normal = match normal.as_str() {
            "cifar-10" => "cifar10",
            "fashionmnist" => "fashion-mnist",
            other => other,
        };
        Self::ALL
            .into_iter()
            .find(|k| k.name() == normal)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|k| k.name()).collect();
                Error::Setting(format!(
                    "unknown data set {name:?}; expected one of {}",
                    names.join(", ")
                ))
            })
    }

    /// `[C, H, W]` of its images.
    pub fn shape(self) -> [usize; 3] {
        match self {
            DatasetKind::Cifar10 => [3, 32, 32],
            _ => [1, 28, 28],
        }
    }

    /// Its class names, by label.
    pub fn class_names(self) -> &'static [&'static str] {
        match self {
            DatasetKind::FashionMnist => &FASHION_MNIST_CLASSES,
            DatasetKind::Mnist => &MNIST_CLASSES,
            DatasetKind::Cifar10 => &CIFAR10_CLASSES,
            DatasetKind::Synthetic => &synthetic::CLASS_NAMES,
        }
    }

    /// The files [`load`] reads, as a human-readable list for messages.
    pub fn expected_files(self) -> String {
        match self {
            DatasetKind::FashionMnist | DatasetKind::Mnist => idx::expected_files(),
            DatasetKind::Cifar10 => cifar::expected_files(),
            DatasetKind::Synthetic => "none (the synthetic set is generated)".to_string(),
        }
    }
}

impl fmt::Display for DatasetKind {
    /// Writes [`DatasetKind::name`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for DatasetKind {
    type Err = Error;

    /// [`DatasetKind::from_name`].
    fn from_str(s: &str) -> Result<Self> {
        Self::from_name(s)
    }
}

/// Where a data set's files are looked for when no `--data-dir` is given, in
/// order: `$WGCNN_DATA/<name>`, the user's cache dir (`$XDG_CACHE_HOME/wgcnn/<name>`
/// or `~/.cache/wgcnn/<name>`), Debian's `/usr/share/datasets/<name>`. Empty for
/// [`DatasetKind::Synthetic`], which has no files.
pub fn search_paths(kind: DatasetKind) -> Vec<PathBuf> {
    if kind == DatasetKind::Synthetic {
        return Vec::new();
    }
    let name = kind.name();
    let mut paths = Vec::new();
    if let Some(root) = crate::dirs::env_path("WGCNN_DATA") {
        paths.push(root.join(name));
    }
    if let Some(cache) = crate::dirs::user_cache_dir() {
        paths.push(cache.join(name));
    }
    paths.push(Path::new("/usr/share/datasets").join(name));
    paths
}

/// The first of [`search_paths`] that holds the kind's files, or, when
/// `data_dir` is given, `data_dir` itself or its `<name>` subdirectory (the first
/// that holds them); `None` if none does (always for
/// [`DatasetKind::Synthetic`]).
pub fn locate(kind: DatasetKind, data_dir: Option<&Path>) -> Option<PathBuf> {
    let candidates = match data_dir {
        Some(dir) => vec![dir.to_path_buf(), dir.join(kind.name())],
        None => search_paths(kind),
    };
    candidates.into_iter().find(|dir| holds_files(kind, dir))
}

/// Whether `dir` holds every file [`load`] needs for `kind`.
fn holds_files(kind: DatasetKind, dir: &Path) -> bool {
    match kind {
        DatasetKind::FashionMnist | DatasetKind::Mnist => idx::holds_files(dir),
        DatasetKind::Cifar10 => cifar::holds_files(dir),
        DatasetKind::Synthetic => false,
    }
}

/// Loads train and test splits from `dir` (IDX files for mnist/fashion-mnist,
/// binary batches for cifar10, directly in `dir` or in its
/// `cifar-10-batches-bin/`). Errors name the file and what was wrong; the
/// synthetic set is not loaded but generated by [`synthetic`].
pub fn load(kind: DatasetKind, dir: &Path) -> Result<Splits> {
    if kind == DatasetKind::Synthetic {
        return Err(Error::Setting(
            "the synthetic data set has no files to load; it is generated by data::synthetic"
                .to_string(),
        ));
    }
    if !dir.is_dir() {
        let what = if dir.exists() {
            "is not a directory"
        } else {
            "does not exist"
        };
        return Err(Error::file(
            dir,
            format!(
                "{what}; expected a directory holding the {} files: {}",
                kind.name(),
                kind.expected_files()
            ),
        ));
    }
    let names: Vec<String> = kind.class_names().iter().map(|s| s.to_string()).collect();
    let splits = match kind {
        DatasetKind::FashionMnist | DatasetKind::Mnist => idx::load(dir, kind.name(), names)?,
        DatasetKind::Cifar10 => cifar::load(dir, kind.name(), names)?,
        DatasetKind::Synthetic => unreachable!("handled above"),
    };
    Ok(splits)
}

/// Errors (naming `path`) on an empty label list or the first label not below
/// `classes`.
pub(crate) fn check_labels(path: &Path, labels: &[u8], classes: usize) -> Result<()> {
    if labels.is_empty() {
        return Err(Error::file(
            path,
            "holds no examples; expected at least one",
        ));
    }
    if let Some((i, &l)) = labels
        .iter()
        .enumerate()
        .find(|&(_, &l)| l as usize >= classes)
    {
        return Err(Error::file(
            path,
            format!(
                "label {l} of example {i} is out of range; expected labels below the class count {classes}"
            ),
        ));
    }
    Ok(())
}

/// Domain tags so the seeds derived for different purposes never coincide.
const SPLIT_TAG: u64 = 0x5350_4c49_545f_5641; // "SPLIT_VA"
pub(crate) const EPOCH_TAG: u64 = 0x4550_4f43_485f_4f52; // "EPOCH_OR"
pub(crate) const AUGMENT_TAG: u64 = 0x4155_474d_454e_5421; // "AUGMENT!"
pub(crate) const SYNTHETIC_TAG: u64 = 0x5359_4e54_4845_5449; // "SYNTHETI"

/// A seed that depends on every part (and their order), by folding each through
/// SplitMix64.
pub(crate) fn derive_seed(parts: &[u64]) -> u64 {
    parts.iter().fold(0x243f_6a88_85a3_08d3, |state, &part| {
        SplitMix64::new(state ^ part).next_u64()
    })
}

/// A uniformly random permutation of `0..n` (Fisher–Yates).
pub(crate) fn permutation(n: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}
