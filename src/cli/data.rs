//! Finding the data set a command runs on.

use std::path::{Path, PathBuf};

use wgcnn::data::{self, DatasetKind, Splits};
use wgcnn::{Error, Result};

/// Examples in the built-in synthetic set: enough to learn its ten shapes,
/// small enough for an epoch on the CPU path in seconds.
pub const SYNTHETIC_TRAIN: usize = 4000;
/// Test examples of the synthetic set.
pub const SYNTHETIC_TEST: usize = 1000;

/// Loads `kind` (or, when `None`, Fashion-MNIST if it is found and the
/// synthetic set otherwise, saying so).
pub fn resolve(kind: Option<DatasetKind>, data_dir: Option<&Path>, seed: u64) -> Result<Splits> {
    match kind {
        Some(DatasetKind::Synthetic) => Ok(synthetic(seed)),
        Some(kind) => {
            let dir = data::locate(kind, data_dir).ok_or_else(|| not_found(kind, data_dir))?;
            println!("data: {} from {}", kind.name(), dir.display());
            data::load(kind, &dir)
        }
        None => match data::locate(DatasetKind::FashionMnist, data_dir) {
            Some(dir) => {
                println!("data: fashion-mnist from {}", dir.display());
                data::load(DatasetKind::FashionMnist, &dir)
            }
            None => {
                println!(
                    "data: Fashion-MNIST not found, training on the built-in synthetic set \
                     (for the real data: `apt-get install dataset-fashion-mnist`, or --data-dir DIR)"
                );
                Ok(synthetic(seed))
            }
        },
    }
}

fn synthetic(seed: u64) -> Splits {
    data::synthetic(seed, SYNTHETIC_TRAIN, SYNTHETIC_TEST)
}

fn not_found(kind: DatasetKind, data_dir: Option<&Path>) -> Error {
    let looked: Vec<PathBuf> = match data_dir {
        Some(dir) => vec![dir.to_path_buf(), dir.join(kind.name())],
        None => data::search_paths(kind),
    };
    let looked: Vec<String> = looked.iter().map(|p| p.display().to_string()).collect();
    let hint = match kind {
        DatasetKind::FashionMnist => " (`apt-get install dataset-fashion-mnist` installs it)",
        _ => "",
    };
    Error::Setting(format!(
        "{} not found: looked in {}{hint}; pass --data-dir DIR holding {}",
        kind.name(),
        looked.join(", "),
        kind.expected_files()
    ))
}
