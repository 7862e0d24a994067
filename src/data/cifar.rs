//! CIFAR-10's binary version: `data_batch_1.bin` … `data_batch_5.bin` (train)
//! and `test_batch.bin` (test), each a run of 3073-byte records: one label byte,
//! then 1024 red, 1024 green and 1024 blue bytes (32×32, row-major) — already
//! NCHW. The files may sit in the given directory or in its
//! `cifar-10-batches-bin/` (as the archive unpacks).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{Dataset, Splits, check_labels};
use crate::error::{Error, Result};

/// The archive's directory name.
const SUBDIR: &str = "cifar-10-batches-bin";
/// Training batches, in order.
const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
/// The test batch.
const TEST_FILE: &str = "test_batch.bin";
/// Image shape.
const SHAPE: [usize; 3] = [3, 32, 32];
/// Pixel bytes per record.
const PIXELS: usize = 3 * 32 * 32;
/// Bytes per record: the label, then the pixels.
const RECORD: usize = 1 + PIXELS;

/// The file names `load` reads, for messages.
pub(super) fn expected_files() -> String {
    format!(
        "{}, {TEST_FILE} (directly or in {SUBDIR}/)",
        TRAIN_FILES.join(", ")
    )
}

fn all_present(dir: &Path) -> bool {
    TRAIN_FILES
        .iter()
        .chain([&TEST_FILE])
        .all(|f| dir.join(f).is_file())
}

/// `dir` or `dir/cifar-10-batches-bin`, whichever holds every file.
fn batches_dir(dir: &Path) -> Option<PathBuf> {
    [dir.to_path_buf(), dir.join(SUBDIR)]
        .into_iter()
        .find(|d| all_present(d))
}

/// Whether `dir` (or its `cifar-10-batches-bin/`) holds all six files.
pub(super) fn holds_files(dir: &Path) -> bool {
    batches_dir(dir).is_some()
}

/// Reads the five training batches and the test batch.
pub(super) fn load(dir: &Path, set: &str, class_names: Vec<String>) -> Result<Splits> {
    let base = batches_dir(dir).ok_or_else(|| {
        // Name what is missing from whichever directory has more of the files.
        let candidates = [dir.to_path_buf(), dir.join(SUBDIR)];
        let (base, missing) = candidates
            .iter()
            .map(|d| {
                let missing: Vec<&str> = TRAIN_FILES
                    .iter()
                    .chain([&TEST_FILE])
                    .copied()
                    .filter(|f| !d.join(f).is_file())
                    .collect();
                (d, missing)
            })
            .min_by_key(|(_, m)| m.len())
            .expect("two candidates");
        Error::file(
            base,
            format!(
                "missing {}; expected the CIFAR-10 binary batches {}",
                missing.join(", "),
                expected_files()
            ),
        )
    })?;
    let train_paths: Vec<PathBuf> = TRAIN_FILES.iter().map(|f| base.join(f)).collect();
    let train = read_batches(&train_paths, format!("{set} (train)"), &class_names)?;
    let test = read_batches(
        &[base.join(TEST_FILE)],
        format!("{set} (test)"),
        &class_names,
    )?;
    Ok(Splits { train, test })
}

/// Concatenates the records of `paths` into one set.
fn read_batches(paths: &[PathBuf], name: String, class_names: &[String]) -> Result<Dataset> {
    // Check every length before reading anything.
    let mut lens = Vec::with_capacity(paths.len());
    for path in paths {
        let len = std::fs::metadata(path)
            .map_err(|e| Error::file(path, format!("cannot read its size: {e}")))?
            .len();
        check_len(path, len)?;
        lens.push(len as usize);
    }
    let records: usize = lens.iter().map(|l| l / RECORD).sum();
    let mut images = Vec::with_capacity(records * PIXELS);
    let mut labels = Vec::with_capacity(records);
    for (path, &len) in paths.iter().zip(&lens) {
        let mut bytes = Vec::with_capacity(len);
        File::open(path)
            .and_then(|f| f.take(len as u64 + 1).read_to_end(&mut bytes))
            .map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
        if bytes.len() != len {
            return Err(Error::file(
                path,
                format!(
                    "changed while reading: {} bytes read, {len} expected",
                    bytes.len()
                ),
            ));
        }
        append_records(path, &bytes, class_names.len(), &mut images, &mut labels)?;
    }
    Ok(Dataset {
        name,
        images,
        labels,
        shape: SHAPE,
        classes: class_names.len(),
        class_names: class_names.to_vec(),
    })
}

/// Decodes the contents of one CIFAR-10 binary batch held in memory into a set
/// named after `path`, with exactly the checks [`super::load`] applies to each
/// file on disk: a positive whole number of 3073-byte records, and every label
/// below `class_names.len()`. `path` only names the source in errors, which are
/// [`Error::File`].
pub fn parse_cifar_batch(path: &Path, bytes: &[u8], class_names: &[String]) -> Result<Dataset> {
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    append_records(path, bytes, class_names.len(), &mut images, &mut labels)?;
    Ok(Dataset {
        name: path.display().to_string(),
        images,
        labels,
        shape: SHAPE,
        classes: class_names.len(),
        class_names: class_names.to_vec(),
    })
}

/// Checks the length of `bytes` (the contents of `path`), appends its records'
/// labels and pixels, and checks those labels against `classes`.
fn append_records(
    path: &Path,
    bytes: &[u8],
    classes: usize,
    images: &mut Vec<u8>,
    labels: &mut Vec<u8>,
) -> Result<()> {
    check_len(path, bytes.len() as u64)?;
    let first = labels.len();
    let records = bytes.len() / RECORD;
    images.reserve(records * PIXELS);
    labels.reserve(records);
    for record in bytes.chunks_exact(RECORD) {
        labels.push(record[0]);
        images.extend_from_slice(&record[1..]);
    }
    check_labels(path, &labels[first..], classes)
}

/// A batch file must hold a positive whole number of records.
fn check_len(path: &Path, len: u64) -> Result<()> {
    if len == 0 {
        return Err(Error::file(
            path,
            format!("empty file; expected records of {RECORD} bytes (1 label + {PIXELS} pixels)"),
        ));
    }
    if !len.is_multiple_of(RECORD as u64) {
        return Err(Error::file(
            path,
            format!(
                "length {len} is not a multiple of {RECORD} (1 label byte + {PIXELS} pixel \
                 bytes per record): {} whole records and {} bytes left over",
                len / RECORD as u64,
                len % RECORD as u64
            ),
        ));
    }
    Ok(())
}
