//! Property ("fuzz") tests of the four parsers that read what a user hands
//! wgcnn: the IDX reader, the CIFAR-10 reader, the model-file parser and the
//! checkpoint loader.
//!
//! Every target gets arbitrary bytes and structured mutations of valid inputs:
//! bytes flipped, set, inserted, deleted, repeated or cut off, header fields set
//! to extreme values (`0`, `u32::MAX`, …) and counts that do not match. Every
//! property calls the parser inside the test, so a panic fails the case; an
//! error must name the file (or, for model text, the setting or layer) with a
//! non-empty message; a success must satisfy the invariants the reader
//! promises; and the readers of bytes must not allocate much more than the
//! input holds, whatever its header claims (a tracking allocator measures the
//! largest single allocation).
//!
//! The case count is bounded for CI (`CASES` per property times a weight, from
//! a fixed seed: a few seconds in all in release on two cores) and overridable
//! for a longer local run, which draws from a random seed:
//!
//! ```sh
//! PROPTEST_CASES=50000 cargo test --release --test fuzz_parsers
//! ```
//!
//! Every crash found is kept below as a plain `#[test]` named `regression_*`
//! with its minimal input.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use proptest::prelude::*;
use proptest::sample::select;
use safetensors::{Dtype, SafeTensors, View};

use wgcnn::Error;
use wgcnn::checkpoint::{Checkpoint, RunSettings, TrainingState};
use wgcnn::cpu::CpuBackend;
use wgcnn::data::{
    self, Dataset, DatasetKind, IdxKind, Normalization, make_batch, parse_cifar_batch, parse_idx,
};
use wgcnn::geometry::Activation;
use wgcnn::nn::{LayerSpec, ModelSpec, builtin, init_parameters, parameter_shapes};
use wgcnn::optim::{OptimizerKind, OptimizerSettings, Schedule};
use wgcnn::rng::SplitMix64;
use wgcnn::tensor::HostTensor;
use wgcnn::train::Trainer;

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// Cases per property in CI (each property also has a weight below).
const CASES: u32 = 1024;

/// `CASES × weight` cases from a fixed seed, so CI is reproducible; with
/// `PROPTEST_CASES` set, that many cases from a fresh random seed (or from
/// `PROPTEST_RNG_SEED`). Failures are not persisted to files: each one found
/// becomes a `regression_*` test instead.
fn config(weight: f64) -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = ((CASES as f64 * weight) as u32).max(1);
        if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
            config.rng_seed = proptest::test_runner::RngSeed::Fixed(0x5eed_f022);
        }
    }
    config.failure_persistence = None;
    config
}

// ---------------------------------------------------------------------------
// The largest single allocation, per thread
// ---------------------------------------------------------------------------

/// The system allocator, noting the largest request made on each thread.
struct PeakTracking;

thread_local! {
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = PEAK.try_with(|peak| {
        if size > peak.get() {
            peak.set(size);
        }
    });
}

// SAFETY: every call is forwarded to `System` unchanged.
unsafe impl GlobalAlloc for PeakTracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: PeakTracking = PeakTracking;

/// Runs `f` and returns its result with the largest single allocation it made
/// on this thread.
fn with_peak<T>(f: impl FnOnce() -> T) -> (T, usize) {
    PEAK.with(|peak| peak.set(0));
    let out = f();
    (out, PEAK.with(Cell::get))
}

/// Allowance for fixed-size buffers (gzip window, formatting, …).
const ALLOCATION_SLACK: usize = 1 << 20;

/// A reader of `content` bytes may allocate a few times that, never what a
/// header claims.
fn allocation_bound(content: usize) -> usize {
    content.saturating_mul(16).saturating_add(ALLOCATION_SLACK)
}

// ---------------------------------------------------------------------------
// Mutations of bytes
// ---------------------------------------------------------------------------

/// Values that break size arithmetic.
fn extreme_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        select(vec![
            0u32,
            1,
            2,
            3,
            0xff,
            0x100,
            0xffff,
            0x1_0000,
            0x7fff_ffff,
            0x8000_0000,
            0xffff_fffe,
            u32::MAX,
        ]),
        any::<u32>(),
    ]
}

/// One edit of a byte string. Positions are taken modulo the length.
#[derive(Clone, Debug)]
enum Edit {
    /// Flip one bit.
    Flip { at: usize, bit: u8 },
    /// Overwrite one byte.
    Set { at: usize, byte: u8 },
    /// Insert bytes.
    Insert { at: usize, bytes: Vec<u8> },
    /// Delete up to `len` bytes.
    Delete { at: usize, len: usize },
    /// Cut the string off.
    Truncate { at: usize },
    /// Overwrite four bytes with a (often extreme) 32-bit value.
    Word {
        at: usize,
        value: u32,
        big_endian: bool,
    },
    /// Repeat a chunk in place.
    Repeat { at: usize, len: usize },
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Edit::Flip { at, bit }),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Edit::Set { at, byte }),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Edit::Insert { at, bytes }),
        1 => (any::<usize>(), 1usize..16).prop_map(|(at, len)| Edit::Delete { at, len }),
        1 => any::<usize>().prop_map(|at| Edit::Truncate { at }),
        2 => (any::<usize>(), extreme_u32(), any::<bool>())
            .prop_map(|(at, value, big_endian)| Edit::Word { at, value, big_endian }),
        1 => (any::<usize>(), 1usize..32).prop_map(|(at, len)| Edit::Repeat { at, len }),
    ]
}

fn edits(max: usize) -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec(edit(), 0..=max)
}

fn apply(bytes: &mut Vec<u8>, edits: &[Edit]) {
    for e in edits {
        let len = bytes.len();
        match *e {
            Edit::Flip { at, bit } if len > 0 => bytes[at % len] ^= 1 << bit,
            Edit::Set { at, byte } if len > 0 => bytes[at % len] = byte,
            Edit::Insert { at, bytes: ref ins } => {
                let at = at % (len + 1);
                bytes.splice(at..at, ins.iter().copied());
            }
            Edit::Delete { at, len: n } if len > 0 => {
                let at = at % len;
                bytes.drain(at..(at + n).min(len));
            }
            Edit::Truncate { at } => bytes.truncate(at % (len + 1)),
            Edit::Word {
                at,
                value,
                big_endian,
            } if len >= 4 => {
                let at = at % (len - 3);
                let word = if big_endian {
                    value.to_be_bytes()
                } else {
                    value.to_le_bytes()
                };
                bytes[at..at + 4].copy_from_slice(&word);
            }
            Edit::Repeat { at, len: n } if len > 0 => {
                let at = at % len;
                let chunk = bytes[at..(at + n).min(len)].to_vec();
                bytes.splice(at..at, chunk);
            }
            _ => {}
        }
    }
}

/// Deterministic filler bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(len);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// How many bytes a reader of `bytes` really gets: the decompressed length of
/// a gzip stream (up to where it breaks), else the length.
fn content_len(bytes: &[u8]) -> usize {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        let _ = GzDecoder::new(bytes).take(64 << 20).read_to_end(&mut out);
        out.len()
    } else {
        bytes.len()
    }
}

// ---------------------------------------------------------------------------
// Checks shared by the targets
// ---------------------------------------------------------------------------

/// An error from a reader of `path`: a file error naming it (or, for a set of
/// files, a path inside the directory), with a real message.
fn assert_file_error(err: &Error, path: &Path) -> Result<(), TestCaseError> {
    match err {
        Error::File { path: p, message } => {
            prop_assert!(
                p.starts_with(path),
                "error names {} instead of {}: {err}",
                p.display(),
                path.display()
            );
            prop_assert!(
                message.trim().len() >= 8,
                "message too short to act on: {err}"
            );
            prop_assert!(
                !message.contains("panicked"),
                "message reports a panic: {err}"
            );
        }
        other => prop_assert!(
            false,
            "expected a file error naming the file, got {other:?}"
        ),
    }
    Ok(())
}

/// Product of `dims` without overflow.
fn product(dims: &[usize]) -> u128 {
    dims.iter()
        .try_fold(1u128, |a, &d| a.checked_mul(d as u128))
        .unwrap_or(u128::MAX)
}

// ---------------------------------------------------------------------------
// IDX
// ---------------------------------------------------------------------------

const IMAGES_MAGIC: u32 = 0x0803;
const LABELS_MAGIC: u32 = 0x0801;

fn idx_file(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = magic.to_be_bytes().to_vec();
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

/// Checks one `parse_idx` outcome on `bytes` and the largest allocation.
fn check_idx(
    path: &Path,
    bytes: &[u8],
    kind: IdxKind,
    result: wgcnn::Result<data::IdxFile>,
    peak: usize,
) -> Result<(), TestCaseError> {
    let content = content_len(bytes);
    prop_assert!(
        peak <= allocation_bound(content.max(bytes.len())),
        "allocated {peak} bytes for {} input bytes ({content} of content)",
        bytes.len()
    );
    match result {
        Err(e) => assert_file_error(&e, path)?,
        Ok(f) => {
            let rank = match kind {
                IdxKind::Images => 3,
                IdxKind::Labels => 1,
            };
            prop_assert_eq!(f.dims.len(), rank);
            prop_assert_eq!(product(&f.dims), f.data.len() as u128);
            prop_assert_eq!(content, 4 + 4 * rank + f.data.len());
        }
    }
    Ok(())
}

/// How a generated IDX file is compressed.
#[derive(Clone, Debug)]
enum Packing {
    /// Raw bytes.
    Raw,
    /// Edited, then gzip-compressed (a valid stream of damaged content).
    Gzip,
    /// Gzip-compressed, then edited (a damaged stream).
    GzipThenEdit(Vec<Edit>),
}

fn packing() -> impl Strategy<Value = Packing> {
    prop_oneof![
        2 => Just(Packing::Raw),
        2 => Just(Packing::Gzip),
        1 => edits(3).prop_map(Packing::GzipThenEdit),
    ]
}

/// A valid IDX file of `kind` with small dimensions, then header words
/// replaced (index 0 is the magic, 1.. the dimensions), then edits.
#[derive(Clone, Debug)]
struct IdxCase {
    kind: IdxKind,
    dims: Vec<u32>,
    seed: u64,
    header: Vec<(usize, u32)>,
    edits: Vec<Edit>,
    packing: Packing,
}

impl IdxCase {
    fn bytes(&self) -> Vec<u8> {
        let magic = match self.kind {
            IdxKind::Images => IMAGES_MAGIC,
            IdxKind::Labels => LABELS_MAGIC,
        };
        let len = self.dims.iter().map(|&d| d as usize).product();
        self.damage(idx_file(magic, &self.dims, &noise(len, self.seed)))
    }

    /// `file` (a valid raw IDX file) with this case's header words, edits and
    /// packing.
    fn damage(&self, mut bytes: Vec<u8>) -> Vec<u8> {
        let words = (bytes.len() / 4).min(4);
        for &(i, value) in &self.header {
            if words > 0 {
                let at = 4 * (i % words);
                bytes[at..at + 4].copy_from_slice(&value.to_be_bytes());
            }
        }
        apply(&mut bytes, &self.edits);
        match &self.packing {
            Packing::Raw => bytes,
            Packing::Gzip => gzip(&bytes),
            Packing::GzipThenEdit(edits) => {
                let mut packed = gzip(&bytes);
                apply(&mut packed, edits);
                packed
            }
        }
    }
}

fn idx_case() -> impl Strategy<Value = IdxCase> {
    let kind = prop_oneof![Just(IdxKind::Images), Just(IdxKind::Labels)];
    (
        kind,
        prop::collection::vec(0u32..6, 3),
        any::<u64>(),
        prop::collection::vec((0usize..4, extreme_u32()), 0..3),
        edits(3),
        packing(),
    )
        .prop_map(|(kind, dims, seed, header, edits, packing)| {
            let rank = if kind == IdxKind::Images { 3 } else { 1 };
            IdxCase {
                kind,
                dims: dims[..rank].to_vec(),
                seed,
                header,
                edits,
                packing,
            }
        })
}

/// Arbitrary bytes, sometimes behind a gzip magic or an IDX magic.
fn idx_noise() -> impl Strategy<Value = Vec<u8>> {
    let body = prop::collection::vec(any::<u8>(), 0..300);
    (
        select(vec![
            vec![],
            vec![0x1f, 0x8b],
            vec![0x1f, 0x8b, 0x08, 0x00],
            vec![0, 0, 8, 3],
            vec![0, 0, 8, 1],
            vec![0, 0, 8, 3, 0xff, 0xff, 0xff, 0xff],
        ]),
        body,
    )
        .prop_map(|(prefix, body)| [prefix, body].concat())
}

/// The four files of a small IDX set, one of them damaged, each raw or gzip.
#[derive(Clone, Debug)]
struct IdxSetCase {
    train: u32,
    test: u32,
    rows: u32,
    cols: u32,
    max_label: u8,
    damaged: usize,
    damage: IdxCase,
    gz: [bool; 4],
}

fn idx_set_case() -> impl Strategy<Value = IdxSetCase> {
    (
        (1u32..6, 1u32..4, 1u32..4, 1u32..4),
        prop_oneof![4 => Just(9u8), 1 => 9u8..=255],
        0usize..4,
        idx_case(),
        any::<[bool; 4]>(),
    )
        .prop_map(
            |((train, test, rows, cols), max_label, damaged, damage, gz)| IdxSetCase {
                train,
                test,
                rows,
                cols,
                max_label,
                damaged,
                damage,
                gz,
            },
        )
}

const IDX_NAMES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

impl IdxSetCase {
    /// Writes the files into `dir`.
    fn write(&self, dir: &Path) {
        let labels = |n: u32, seed: u64| -> Vec<u8> {
            noise(n as usize, seed)
                .iter()
                .map(|&b| (b as u16 % (self.max_label as u16 + 1)) as u8)
                .collect()
        };
        let image_len = (self.rows * self.cols) as usize;
        let mut files = vec![
            idx_file(
                IMAGES_MAGIC,
                &[self.train, self.rows, self.cols],
                &noise(self.train as usize * image_len, 1),
            ),
            idx_file(LABELS_MAGIC, &[self.train], &labels(self.train, 2)),
            idx_file(
                IMAGES_MAGIC,
                &[self.test, self.rows, self.cols],
                &noise(self.test as usize * image_len, 3),
            ),
            idx_file(LABELS_MAGIC, &[self.test], &labels(self.test, 4)),
        ];
        // The damaged file gets its own packing; the others follow `gz`.
        for (i, file) in files.iter_mut().enumerate() {
            if i == self.damaged {
                *file = self.damage.damage(std::mem::take(file));
            } else if self.gz[i] {
                *file = gzip(file);
            }
        }
        for (name, bytes) in IDX_NAMES.iter().zip(&files) {
            let name = if bytes.starts_with(&[0x1f, 0x8b]) {
                format!("{name}.gz")
            } else {
                name.to_string()
            };
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

/// A fresh directory under the temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("wgcnn-fuzz-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Checks a `data::load` outcome on the files in `dir`.
fn check_loaded(dir: &Path, result: wgcnn::Result<data::Splits>) -> Result<(), TestCaseError> {
    match result {
        Err(e) => assert_file_error(&e, dir)?,
        Ok(splits) => {
            for set in [&splits.train, &splits.test] {
                prop_assert!(!set.is_empty());
                if let Err(e) = set.validate(dir) {
                    prop_assert!(false, "a loaded set breaks its invariants: {e}");
                }
            }
            prop_assert_eq!(splits.train.shape, splits.test.shape);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(8.0))]

    /// Structured mutations of valid IDX files, raw and gzip.
    #[test]
    fn idx_parser_survives_damaged_files(case in idx_case()) {
        let bytes = case.bytes();
        let path = Path::new("fuzz/idx-file");
        let (result, peak) = with_peak(|| parse_idx(path, &bytes, case.kind));
        check_idx(path, &bytes, case.kind, result, peak)?;
    }

    /// Arbitrary bytes, with and without a gzip or IDX magic in front.
    #[test]
    fn idx_parser_survives_arbitrary_bytes(bytes in idx_noise(), images in any::<bool>()) {
        let kind = if images { IdxKind::Images } else { IdxKind::Labels };
        let path = Path::new("fuzz/idx-noise");
        let (result, peak) = with_peak(|| parse_idx(path, &bytes, kind));
        check_idx(path, &bytes, kind, result, peak)?;
    }
}

proptest! {
    #![proptest_config(config(0.5))]

    /// The whole reader through the public API: four files in a directory,
    /// one damaged, counts that may disagree, labels that may be out of range.
    #[test]
    fn idx_sets_load_or_name_the_bad_file(case in idx_set_case()) {
        let dir = TempDir::new("idx");
        case.write(dir.path());
        let result = data::load(DatasetKind::Mnist, dir.path());
        check_loaded(dir.path(), result)?;
    }
}

// ---------------------------------------------------------------------------
// CIFAR-10
// ---------------------------------------------------------------------------

const CIFAR_RECORD: usize = 3073;

fn cifar_class_names() -> Vec<String> {
    data::CIFAR10_CLASSES
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// `records` valid CIFAR records with labels below `max_label + 1`.
fn cifar_records(records: usize, max_label: u8, seed: u64) -> Vec<u8> {
    let mut bytes = noise(records * CIFAR_RECORD, seed);
    for r in 0..records {
        let at = r * CIFAR_RECORD;
        bytes[at] %= max_label.saturating_add(1).max(1);
    }
    bytes
}

fn check_cifar(
    path: &Path,
    bytes: &[u8],
    result: wgcnn::Result<Dataset>,
    peak: usize,
) -> Result<(), TestCaseError> {
    prop_assert!(
        peak <= allocation_bound(bytes.len()),
        "allocated {peak} bytes for {} input bytes",
        bytes.len()
    );
    match result {
        Err(e) => assert_file_error(&e, path)?,
        Ok(set) => {
            prop_assert_eq!(set.len() * CIFAR_RECORD, bytes.len());
            prop_assert_eq!(set.shape, [3, 32, 32]);
            if let Err(e) = set.validate(path) {
                prop_assert!(false, "a parsed batch breaks its invariants: {e}");
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(4.0))]

    /// Structured mutations of a valid batch: records of any count, labels
    /// that may be out of range, bytes edited, inserted, deleted, cut off.
    #[test]
    fn cifar_parser_survives_damaged_batches(
        records in 0usize..4,
        max_label in prop_oneof![3 => Just(9u8), 1 => any::<u8>()],
        seed in any::<u64>(),
        edits in edits(4),
    ) {
        let mut bytes = cifar_records(records, max_label, seed);
        apply(&mut bytes, &edits);
        let path = Path::new("fuzz/data_batch_1.bin");
        let (result, peak) = with_peak(|| parse_cifar_batch(path, &bytes, &cifar_class_names()));
        check_cifar(path, &bytes, result, peak)?;
    }

    /// Arbitrary bytes, of lengths near whole records.
    #[test]
    fn cifar_parser_survives_arbitrary_bytes(
        records in 0usize..3,
        delta in -3i64..=3,
        seed in any::<u64>(),
    ) {
        let len = (records as i64 * CIFAR_RECORD as i64 + delta).max(0) as usize;
        let bytes = noise(len, seed);
        let path = Path::new("fuzz/test_batch.bin");
        let (result, peak) = with_peak(|| parse_cifar_batch(path, &bytes, &cifar_class_names()));
        check_cifar(path, &bytes, result, peak)?;
    }
}

proptest! {
    #![proptest_config(config(0.25))]

    /// The whole reader through the public API: six batch files (directly in
    /// the directory or in `cifar-10-batches-bin/`), one damaged or missing.
    #[test]
    fn cifar_sets_load_or_name_the_bad_file(
        damaged in 0usize..6,
        missing in any::<bool>(),
        subdir in any::<bool>(),
        max_label in prop_oneof![3 => Just(9u8), 1 => any::<u8>()],
        edits in edits(3),
    ) {
        let dir = TempDir::new("cifar");
        let base = if subdir {
            dir.path().join("cifar-10-batches-bin")
        } else {
            dir.path().to_path_buf()
        };
        std::fs::create_dir_all(&base).unwrap();
        let names = [
            "data_batch_1.bin",
            "data_batch_2.bin",
            "data_batch_3.bin",
            "data_batch_4.bin",
            "data_batch_5.bin",
            "test_batch.bin",
        ];
        for (i, name) in names.iter().enumerate() {
            let mut bytes = cifar_records(1 + i % 2, 9, i as u64);
            if i == damaged {
                if missing {
                    continue;
                }
                bytes = cifar_records(1 + i % 2, max_label, i as u64);
                apply(&mut bytes, &edits);
            }
            std::fs::write(base.join(name), bytes).unwrap();
        }
        let result = data::load(DatasetKind::Cifar10, dir.path());
        check_loaded(dir.path(), result)?;
    }
}

// ---------------------------------------------------------------------------
// Model files
// ---------------------------------------------------------------------------

/// Sizes: mostly small, sometimes at the edges of `u32`, `i64` and `usize`.
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        8 => 0usize..6,
        2 => 6usize..70,
        1 => select(vec![
            1usize << 16,
            (1 << 20) + 1,
            (1 << 31) - 1,
            1 << 31,
            u32::MAX as usize,
            1 << 32,
            (1 << 32) + 1,
            1 << 40,
            i64::MAX as usize,
            i64::MAX as usize + 1,
            usize::MAX / 2,
            usize::MAX - 1,
            usize::MAX,
        ]),
    ]
}

/// Floats for `p` and `negative_slope`: ordinary, boundary and non-finite.
fn float() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => 0.0f32..1.0,
        2 => select(vec![
            0.0f32,
            -0.0,
            0.5,
            1.0,
            -1.0,
            0.999_999_94,
            f32::MIN_POSITIVE,
            1e-45,
            f32::MAX,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ]),
        1 => any::<f32>(),
    ]
}

fn layer() -> impl Strategy<Value = LayerSpec> {
    prop_oneof![
        3 => (size(), size(), size(), size()).prop_map(|(out_channels, kernel, stride, padding)| {
            LayerSpec::Conv2d { out_channels, kernel, stride, padding }
        }),
        3 => size().prop_map(|out_features| LayerSpec::Linear { out_features }),
        1 => Just(LayerSpec::Activation(Activation::Relu)),
        1 => float().prop_map(|negative_slope| {
            LayerSpec::Activation(Activation::LeakyRelu { negative_slope })
        }),
        1 => Just(LayerSpec::Activation(Activation::Sigmoid)),
        1 => Just(LayerSpec::Activation(Activation::Tanh)),
        1 => float().prop_map(|p| LayerSpec::Dropout { p }),
        2 => Just(LayerSpec::BatchNorm),
        2 => (size(), size(), size()).prop_map(|(kernel, stride, padding)| {
            LayerSpec::MaxPool2d { kernel, stride, padding }
        }),
        1 => (size(), size(), size()).prop_map(|(kernel, stride, padding)| {
            LayerSpec::AvgPool2d { kernel, stride, padding }
        }),
        2 => Just(LayerSpec::Flatten),
    ]
}

/// Small layers that often fit together, ending in a linear layer.
fn plausible_spec() -> impl Strategy<Value = ModelSpec> {
    let small = || 1usize..5;
    let layer = prop_oneof![
        (small(), 1usize..4, 1usize..3, 0usize..2).prop_map(|(o, k, s, p)| LayerSpec::Conv2d {
            out_channels: o,
            kernel: k,
            stride: s,
            padding: p,
        }),
        small().prop_map(|o| LayerSpec::Linear { out_features: o }),
        Just(LayerSpec::Activation(Activation::Relu)),
        Just(LayerSpec::BatchNorm),
        (0.0f32..0.9).prop_map(|p| LayerSpec::Dropout { p }),
        (1usize..3, 1usize..3).prop_map(|(k, s)| LayerSpec::MaxPool2d {
            kernel: k,
            stride: s,
            padding: 0,
        }),
        (1usize..3, 1usize..3).prop_map(|(k, s)| LayerSpec::AvgPool2d {
            kernel: k,
            stride: s,
            padding: k / 2,
        }),
        Just(LayerSpec::Flatten),
    ];
    (
        prop_oneof![
            3 => (1usize..4, 1usize..9, 1usize..9).prop_map(|(c, h, w)| vec![c, h, w]),
            1 => (1usize..20).prop_map(|d| vec![d]),
        ],
        prop::collection::vec(layer, 0..7),
        1usize..5,
    )
        .prop_map(|(input, mut layers, classes)| {
            layers.push(LayerSpec::Linear {
                out_features: classes,
            });
            ModelSpec { input, layers }
        })
}

/// Any spec: plausible ones, and random layer lists over extreme sizes.
fn any_spec() -> impl Strategy<Value = ModelSpec> {
    let input = prop_oneof![
        3 => prop::collection::vec(size(), 3),
        2 => prop::collection::vec(size(), 1),
        1 => prop::collection::vec(size(), 0..6),
    ];
    prop_oneof![
        1 => plausible_spec(),
        1 => (input, prop::collection::vec(layer(), 0..8))
            .prop_map(|(input, layers)| ModelSpec { input, layers }),
    ]
}

/// Whether `from_toml` must accept the spec `to_toml` wrote.
fn readable(spec: &ModelSpec) -> bool {
    matches!(spec.input.len(), 1 | 3) && !spec.layers.is_empty() && spec.classes().is_ok()
}

/// A `from_toml` error names the model file or the layer at fault.
fn assert_model_error(err: &Error) -> Result<(), TestCaseError> {
    let message = err.to_string();
    match err {
        Error::Setting(m) => prop_assert!(
            m.starts_with("model file") && m.len() > "model file: ".len(),
            "setting error does not name the model file: {message}"
        ),
        Error::Shape(m) => prop_assert!(
            m.contains("layer") || m.contains("input") || m.contains("logits"),
            "shape error names no layer: {message}"
        ),
        other => prop_assert!(false, "unexpected error kind: {other:?}"),
    }
    Ok(())
}

/// The element count of `shape` must fit in `usize`.
fn assert_addressable(shape: &[usize]) -> Result<(), TestCaseError> {
    prop_assert!(
        product(shape) <= usize::MAX as u128,
        "shape {shape:?} has more elements than usize holds"
    );
    Ok(())
}

/// Everything that takes a spec that parsed must answer without panicking,
/// and its answers must agree with arithmetic that cannot overflow.
fn check_spec(spec: &ModelSpec) -> Result<(), TestCaseError> {
    for batch in [0usize, 1, 2, 3, 64, 1 << 20, u32::MAX as usize, usize::MAX] {
        let shapes = spec.shapes(batch);
        let trainable = spec.check_trainable(batch);
        let largest = spec.largest_tensor(batch);
        match &shapes {
            Err(e) => {
                prop_assert!(!e.to_string().trim().is_empty());
                prop_assert!(trainable.is_err() && largest.is_err());
            }
            Ok(shapes) => {
                prop_assert_eq!(shapes.len(), spec.layers.len() + 1);
                prop_assert_eq!(&shapes[0][1..], &spec.input[..]);
                prop_assert_eq!(shapes[0][0], batch);
                for s in shapes {
                    assert_addressable(s)?;
                }
                // The largest tensor, recomputed in u128.
                let mut expected = product(&shapes[0]);
                for (i, layer) in spec.layers.iter().enumerate() {
                    expected = expected.max(product(&shapes[i + 1]));
                    if let LayerSpec::Conv2d { kernel, .. } = *layer {
                        let (input, out) = (&shapes[i], &shapes[i + 1]);
                        // One image's im2col matrix: bigger batches run
                        // in pieces.
                        expected = expected.max(product(&[
                            input[0].min(1),
                            input[1],
                            kernel,
                            kernel,
                            out[2],
                            out[3],
                        ]));
                    }
                }
                // Every parameter must fit as well, whatever the batch.
                let parameters = wgcnn::nn::parameter_shapes(spec)
                    .map(|p| p.iter().map(|(_, shape)| product(shape)).max().unwrap_or(0));
                match &largest {
                    Ok((n, what)) => {
                        prop_assert_eq!(*n as u128, expected);
                        prop_assert!(!what.is_empty());
                        for max in [0u64, 1 << 20, 1 << 30, u64::MAX] {
                            let fits = spec.check_fits(batch, max);
                            let want = parameters
                                .as_ref()
                                .is_ok_and(|&p| 4 * expected.max(p) <= max as u128);
                            prop_assert_eq!(
                                fits.is_ok(),
                                want,
                                "check_fits({}, {}) = {:?}",
                                batch,
                                max,
                                fits
                            );
                        }
                    }
                    Err(e) => prop_assert!(false, "shapes work but largest_tensor fails: {e}"),
                }
            }
        }
        if let Err(e) = &trainable {
            prop_assert!(!e.to_string().trim().is_empty());
        }
    }
    let _ = spec.classes();
    if let Ok(params) = parameter_shapes(spec) {
        let mut total = 0u128;
        for (name, shape) in &params {
            prop_assert!(!name.is_empty());
            assert_addressable(shape)?;
            total += product(shape);
        }
        if total <= 10_000 {
            let state = init_parameters(spec, 7);
            prop_assert!(state.is_ok());
        }
    }
    Ok(())
}

/// Checks one `from_toml` outcome; a parsed spec must round-trip and pass
/// `check_spec`.
fn check_model_text(text: &str) -> Result<(), TestCaseError> {
    match ModelSpec::from_toml(text) {
        Err(e) => assert_model_error(&e)?,
        Ok(spec) => {
            prop_assert!(readable(&spec), "parsed an unreadable spec {spec:?}");
            let again = spec.to_toml();
            match ModelSpec::from_toml(&again) {
                Ok(back) => prop_assert_eq!(&back, &spec, "{}", again),
                Err(e) => prop_assert!(false, "its own output does not read back: {e}\n{again}"),
            }
            check_spec(&spec)?;
        }
    }
    Ok(())
}

/// Valid model files: every built-in for a few inputs, and the examples.
fn valid_model_texts() -> &'static [String] {
    static TEXTS: OnceLock<Vec<String>> = OnceLock::new();
    TEXTS.get_or_init(|| {
        let mut texts = vec![
            include_str!("../examples/models/fashion-cnn.toml").to_string(),
            include_str!("../examples/models/lenet5.toml").to_string(),
        ];
        for name in wgcnn::nn::BUILTIN_MODELS {
            for input in [[1, 28, 28], [3, 32, 32]] {
                texts.push(builtin(name, input, 10).unwrap().to_toml());
            }
        }
        texts
    })
}

/// Tokens of TOML model files, for strings that get past the lexer.
fn toml_token() -> impl Strategy<Value = String> {
    let fixed = select(vec![
        "\n",
        "\n",
        " ",
        "=",
        "[[layers]]\n",
        "[layers]",
        "[",
        "]",
        "{",
        "}",
        ",",
        ".",
        "\"",
        "'",
        "#",
        "input",
        "layers",
        "type",
        "conv2d",
        "linear",
        "relu",
        "leaky_relu",
        "sigmoid",
        "tanh",
        "dropout",
        "batchnorm",
        "maxpool2d",
        "avgpool2d",
        "flatten",
        "out_channels",
        "out_features",
        "kernel",
        "stride",
        "padding",
        "p",
        "negative_slope",
        "\"conv2d\"",
        "\"linear\"",
        "\"batchnorm\"",
        "\"flatten\"",
        "\"maxpool2d\"",
        "\"dropout\"",
        "input = [1, 4, 4]\n",
        "input = [3]\n",
        "type = \"linear\"\n",
        "out_features = 2\n",
        "0",
        "1",
        "2",
        "-1",
        "3.5",
        "1e308",
        "-0.0",
        "nan",
        "inf",
        "-inf",
        "true",
        "4294967295",
        "4294967296",
        "9223372036854775807",
        "-9223372036854775808",
        "18446744073709551615",
        "0x10",
        "1_000",
        "\u{0}",
        "é",
        "\u{FEFF}",
        "\r\n",
    ]);
    prop_oneof![
        8 => fixed.prop_map(str::to_string),
        1 => "[a-z_]{1,8}",
        1 => (0u64..100_000).prop_map(|n| n.to_string()),
    ]
}

/// A line-level edit of a TOML text.
#[derive(Clone, Debug)]
enum LineEdit {
    Delete(usize),
    Duplicate(usize),
    Swap(usize, usize),
    /// Replace the value of a `key = value` line.
    Value(usize, String),
    Insert(usize, String),
}

fn line_edit() -> impl Strategy<Value = LineEdit> {
    let value = prop_oneof![
        select(vec![
            "0",
            "-1",
            "1",
            "2",
            "4294967295",
            "4294967296",
            "9223372036854775807",
            "-9223372036854775808",
            "18446744073709551616",
            "1e308",
            "-1e308",
            "nan",
            "inf",
            "0.5",
            "1.0",
            "0.9999999999",
            "\"x\"",
            "[]",
            "[0]",
            "[1, 0, 1]",
            "[4294967295, 4294967295, 4294967295]",
            "[1, 2]",
            "{}",
            "true",
            "\"conv2d\"",
            "\"linear\"",
            "\"flatten\"",
            "\"bogus\"",
        ])
        .prop_map(str::to_string),
        any::<i64>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| format!("{v:?}")),
    ];
    prop_oneof![
        2 => any::<usize>().prop_map(LineEdit::Delete),
        1 => any::<usize>().prop_map(LineEdit::Duplicate),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| LineEdit::Swap(a, b)),
        4 => (any::<usize>(), value).prop_map(|(i, v)| LineEdit::Value(i, v)),
        1 => (any::<usize>(), prop::collection::vec(toml_token(), 1..6))
            .prop_map(|(i, t)| LineEdit::Insert(i, t.concat())),
    ]
}

fn apply_lines(text: &str, edits: &[LineEdit]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for e in edits {
        let n = lines.len();
        match e {
            LineEdit::Delete(i) if n > 0 => {
                lines.remove(i % n);
            }
            LineEdit::Duplicate(i) if n > 0 => {
                let line = lines[i % n].clone();
                lines.insert(i % n, line);
            }
            LineEdit::Swap(a, b) if n > 0 => lines.swap(a % n, b % n),
            LineEdit::Value(i, v) if n > 0 => {
                // The `i`-th line that has a value, if any.
                let with_value: Vec<usize> = (0..n).filter(|&k| lines[k].contains('=')).collect();
                if !with_value.is_empty() {
                    let k = with_value[i % with_value.len()];
                    let key = lines[k].split('=').next().unwrap_or("").to_string();
                    lines[k] = format!("{key}= {v}");
                }
            }
            LineEdit::Insert(i, t) => lines.insert(i % (n + 1), t.clone()),
            _ => {}
        }
    }
    lines.join("\n")
}

proptest! {
    #![proptest_config(config(4.0))]

    /// Arbitrary Unicode text.
    #[test]
    fn model_parser_survives_arbitrary_text(text in any::<String>()) {
        check_model_text(&text)?;
    }

    /// Text made of model-file tokens, which gets past the lexer more often.
    #[test]
    fn model_parser_survives_token_soup(tokens in prop::collection::vec(toml_token(), 0..60)) {
        check_model_text(&tokens.concat())?;
    }

    /// Valid model files with lines deleted, repeated, swapped or inserted and
    /// values replaced by extreme ones.
    #[test]
    fn model_parser_survives_edited_lines(
        which in any::<prop::sample::Index>(),
        edits in prop::collection::vec(line_edit(), 1..5),
    ) {
        let texts = valid_model_texts();
        let text = apply_lines(&texts[which.index(texts.len())], &edits);
        check_model_text(&text)?;
    }

    /// Valid model files with their bytes edited (invalid UTF-8 replaced).
    #[test]
    fn model_parser_survives_edited_bytes(
        which in any::<prop::sample::Index>(),
        edits in edits(4),
    ) {
        let texts = valid_model_texts();
        let mut bytes = texts[which.index(texts.len())].as_bytes().to_vec();
        apply(&mut bytes, &edits);
        check_model_text(&String::from_utf8_lossy(&bytes))?;
    }

    /// Random specs: `to_toml` never panics; `from_toml` gives back exactly
    /// the same spec when it is a readable model and a clear error otherwise;
    /// shape inference answers for any batch.
    #[test]
    fn model_specs_round_trip_or_are_refused(spec in any_spec()) {
        let text = spec.to_toml();
        match ModelSpec::from_toml(&text) {
            Ok(back) => {
                prop_assert!(readable(&spec), "accepted {spec:?}\n{text}");
                prop_assert_eq!(&back, &spec, "{}", text);
            }
            Err(e) => {
                prop_assert!(!readable(&spec), "refused a readable spec: {e}\n{text}");
                assert_model_error(&e)?;
            }
        }
        check_spec(&spec)?;
    }
}

proptest! {
    #![proptest_config(config(0.25))]

    /// Deeply nested arrays and tables, which recursive parsers overflow the
    /// stack on.
    #[test]
    fn model_parser_survives_deep_nesting(
        depth in 1usize..20_000,
        open in select(vec!["[", "{a=", "[[", "[{a="]),
        key in select(vec!["input = ", "x = ", ""]),
    ) {
        let text = format!("{key}{}", open.repeat(depth));
        check_model_text(&text)?;
    }
}

// ---------------------------------------------------------------------------
// Checkpoints
// ---------------------------------------------------------------------------

/// Small models of every layer kind, for checkpoints to damage.
fn checkpoint_specs() -> Vec<ModelSpec> {
    let texts = [
        "input = [1, 4, 4]\n\
         [[layers]]\ntype = \"conv2d\"\nout_channels = 2\nkernel = 3\npadding = 1\n\
         [[layers]]\ntype = \"batchnorm\"\n\
         [[layers]]\ntype = \"relu\"\n\
         [[layers]]\ntype = \"maxpool2d\"\nkernel = 2\n\
         [[layers]]\ntype = \"flatten\"\n\
         [[layers]]\ntype = \"linear\"\nout_features = 3\n",
        "input = [2, 3, 3]\n\
         [[layers]]\ntype = \"avgpool2d\"\nkernel = 3\nstride = 1\npadding = 1\n\
         [[layers]]\ntype = \"flatten\"\n\
         [[layers]]\ntype = \"linear\"\nout_features = 4\n\
         [[layers]]\ntype = \"batchnorm\"\n\
         [[layers]]\ntype = \"leaky_relu\"\n\
         [[layers]]\ntype = \"dropout\"\np = 0.25\n\
         [[layers]]\ntype = \"linear\"\nout_features = 2\n",
        "input = [3]\n\
         [[layers]]\ntype = \"linear\"\nout_features = 2\n\
         [[layers]]\ntype = \"sigmoid\"\n\
         [[layers]]\ntype = \"linear\"\nout_features = 2\n",
    ];
    texts
        .iter()
        .map(|t| ModelSpec::from_toml(t).unwrap())
        .collect()
}

/// A checkpoint of `spec` with `slots` optimizer tensors per trainable
/// parameter.
fn checkpoint_of(spec: &ModelSpec, slots: usize, seed: u64) -> Checkpoint {
    let model = init_parameters(spec, seed).unwrap();
    let optimizer = model
        .iter()
        .filter(|(name, _)| name.ends_with(".weight") || name.ends_with(".bias"))
        .map(|(name, t)| {
            let slot = HostTensor::new(&t.shape, t.data.iter().map(|v| v * 0.5).collect());
            (name.clone(), vec![slot; slots])
        })
        .filter(|(_, s)| !s.is_empty())
        .collect();
    let channels = spec.input[0];
    let state = TrainingState {
        epoch: 2,
        step: 17,
        seed,
        optimizer: ["sgd", "momentum", "adam"][slots.min(2)].to_string(),
        lr: 0.01,
        weight_decay: 5e-4,
        dataset: "fuzz".into(),
        norm_mean: vec![0.25; channels],
        norm_std: vec![0.5; channels],
        class_names: vec!["a".into(), "b".into(), "c".into()],
        best_accuracy: 0.5,
        ..TrainingState::default()
    };
    Checkpoint {
        spec: spec.clone(),
        model,
        optimizer,
        state,
    }
}

/// Saved bytes of the base checkpoints.
fn base_checkpoints() -> &'static [Vec<u8>] {
    static BASES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    BASES.get_or_init(|| {
        let dir = TempDir::new("checkpoint-bases");
        checkpoint_specs()
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let path = dir.path().join(format!("{i}.safetensors"));
                checkpoint_of(spec, i, i as u64).save(&path).unwrap();
                std::fs::read(&path).unwrap()
            })
            .collect()
    })
}

/// A tensor of a safetensors file, owned.
#[derive(Clone, Debug)]
struct RawTensor {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &RawTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// A checkpoint file taken apart: metadata and tensors.
#[derive(Clone, Debug)]
struct Parts {
    meta: BTreeMap<String, String>,
    tensors: Vec<RawTensor>,
}

impl Parts {
    fn of(bytes: &[u8]) -> Self {
        let file = SafeTensors::deserialize(bytes).unwrap();
        let (_, header) = SafeTensors::read_metadata(bytes).unwrap();
        let meta = header
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let mut tensors: Vec<RawTensor> = file
            .tensors()
            .into_iter()
            .map(|(name, v)| RawTensor {
                name,
                dtype: v.dtype(),
                shape: v.shape().to_vec(),
                data: v.data().to_vec(),
            })
            .collect();
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        Self { meta, tensors }
    }

    /// The checksum `Checkpoint::save` writes: FNV-1a over every tensor's name,
    /// dtype, shape and bytes, in name order, then (unless the file says it is
    /// version 1) every metadata entry but `checksum`, length-prefixed key and
    /// value, in key order.
    fn checksum(&self) -> String {
        let mut tensors: Vec<&RawTensor> = self.tensors.iter().collect();
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        let mut h = wgcnn::fnv::Fnv1a::default();
        for t in tensors {
            h.feed(t.name.as_bytes());
            h.feed(format!("{:?}{:?}", t.dtype, t.shape).as_bytes());
            h.feed(&t.data);
        }
        if self.meta.get("version").map(String::as_str) != Some("1") {
            for (key, value) in self.meta.iter().filter(|(k, _)| *k != "checksum") {
                h.feed(&(key.len() as u64).to_le_bytes());
                h.feed(key.as_bytes());
                h.feed(&(value.len() as u64).to_le_bytes());
                h.feed(value.as_bytes());
            }
        }
        format!("{:016x}", h.finish())
    }

    /// The file, with the checksum recomputed when `fix_checksum`; `None`
    /// when safetensors refuses to write it.
    fn bytes(&self, fix_checksum: bool) -> Option<Vec<u8>> {
        let mut meta: HashMap<String, String> = self.meta.clone().into_iter().collect();
        if fix_checksum && meta.contains_key("checksum") {
            meta.insert("checksum".into(), self.checksum());
        }
        let mut seen = std::collections::HashSet::new();
        let views: Vec<(String, &RawTensor)> = self
            .tensors
            .iter()
            .filter(|t| seen.insert(t.name.clone()))
            .map(|t| (t.name.clone(), t))
            .collect();
        safetensors::serialize(views, Some(meta)).ok()
    }
}

/// Values for a field of the training-state JSON.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    prop_oneof![
        select(vec![
            json!(null),
            json!(0),
            json!(-1),
            json!(1),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(i32::MAX),
            json!(i32::MAX - 1),
            json!(u32::MAX),
            json!(1e300),
            json!(-1e300),
            json!(1e-300),
            json!(1e39),
            json!(""),
            json!("adam"),
            json!("bogus"),
            json!([]),
            json!({}),
            json!([0.5]),
            json!([0.5, 0.5, 0.5]),
            json!([0.0]),
            json!([-1.0]),
            json!([1e39]),
            json!([1e-45]),
            json!(["a"]),
            json!(true),
        ]),
        prop::collection::vec(
            select(vec![0.0f64, 0.5, 1.0, -1.0, 1e-40, 1e39, -1e39]),
            0..5
        )
        .prop_map(|v| json!(v)),
        prop::collection::vec("[a-z]{0,3}", 0..4).prop_map(|v| json!(v)),
    ]
}

const STATE_FIELDS: [&str; 14] = [
    "settings",
    "epoch",
    "step",
    "seed",
    "optimizer",
    "lr",
    "weight_decay",
    "dataset",
    "norm_mean",
    "norm_std",
    "class_names",
    "best_accuracy",
    "epoch_examples_done",
    "unknown_field",
];

/// A semantic edit of a checkpoint.
#[derive(Clone, Debug)]
enum CheckpointEdit {
    /// Remove a metadata entry.
    DropMeta(prop::sample::Index),
    /// Set `format`, `version` or `checksum` to another string.
    Meta(&'static str, String),
    /// Replace the model definition by another model's.
    ModelSwap(prop::sample::Index),
    /// Edit the lines of the stored model definition.
    ModelLines(Vec<LineEdit>),
    /// Set (or, with `None`, remove) a field of the training state.
    StateField(&'static str, Option<serde_json::Value>),
    /// Edit the bytes of the training-state JSON.
    StateBytes(Vec<Edit>),
    /// Remove a tensor.
    DropTensor(prop::sample::Index),
    /// Give a tensor another name.
    Rename(prop::sample::Index, String),
    /// Reshape a tensor, keeping its bytes consistent with the new shape.
    Reshape(prop::sample::Index, Vec<usize>),
    /// Change a tensor's dtype, keeping the element count.
    Retype(prop::sample::Index, Dtype),
    /// Add an F32 tensor.
    Add(String, Vec<usize>),
}

fn tensor_name() -> impl Strategy<Value = String> {
    prop_oneof![
        select(vec![
            "0.weight",
            "0.bias",
            "1.weight",
            "1.running_mean",
            "1.running_var",
            "1.num_batches_tracked",
            "2.weight",
            "3.bias",
            "6.weight",
            "optimizer.0.weight.0",
            "optimizer.0.weight.1",
            "optimizer.0.weight.2",
            "optimizer.0.bias.0",
            "optimizer.1.running_mean.0",
            "optimizer.9.weight.0",
            "optimizer..0",
            "",
            "x",
        ])
        .prop_map(str::to_string),
        "[0-9a-z._]{0,12}",
    ]
}

fn small_shape() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0usize..5, 0..4)
}

fn checkpoint_edit() -> impl Strategy<Value = CheckpointEdit> {
    let index = any::<prop::sample::Index>;
    prop_oneof![
        1 => index().prop_map(CheckpointEdit::DropMeta),
        1 => (
            select(vec!["format", "version", "checksum"]),
            select(vec!["", "0", "1", "2", "wgcnn-checkpoint", "x", "0000000000000000"])
                .prop_map(str::to_string),
        )
            .prop_map(|(k, v)| CheckpointEdit::Meta(k, v)),
        1 => index().prop_map(CheckpointEdit::ModelSwap),
        2 => prop::collection::vec(line_edit(), 1..3).prop_map(CheckpointEdit::ModelLines),
        4 => (
            select(STATE_FIELDS.to_vec()),
            prop::option::weighted(0.9, json_value()),
        )
            .prop_map(|(k, v)| CheckpointEdit::StateField(k, v)),
        1 => edits(2).prop_map(CheckpointEdit::StateBytes),
        1 => index().prop_map(CheckpointEdit::DropTensor),
        2 => (index(), tensor_name()).prop_map(|(i, n)| CheckpointEdit::Rename(i, n)),
        2 => (index(), small_shape()).prop_map(|(i, s)| CheckpointEdit::Reshape(i, s)),
        1 => (
            index(),
            select(vec![Dtype::F64, Dtype::F16, Dtype::I64, Dtype::U8, Dtype::BOOL, Dtype::F32]),
        )
            .prop_map(|(i, d)| CheckpointEdit::Retype(i, d)),
        2 => (tensor_name(), small_shape()).prop_map(|(n, s)| CheckpointEdit::Add(n, s)),
    ]
}

fn edit_checkpoint(parts: &mut Parts, edit: &CheckpointEdit) {
    let specs = checkpoint_specs();
    let n = parts.tensors.len();
    match edit {
        CheckpointEdit::DropMeta(i) => {
            let keys: Vec<String> = parts.meta.keys().cloned().collect();
            if !keys.is_empty() {
                parts.meta.remove(&keys[i.index(keys.len())]);
            }
        }
        CheckpointEdit::Meta(key, value) => {
            parts.meta.insert(key.to_string(), value.clone());
        }
        CheckpointEdit::ModelSwap(i) => {
            parts
                .meta
                .insert("model".into(), specs[i.index(specs.len())].to_toml());
        }
        CheckpointEdit::ModelLines(edits) => {
            if let Some(text) = parts.meta.get_mut("model") {
                *text = apply_lines(text, edits);
            }
        }
        CheckpointEdit::StateField(key, value) => {
            if let Some(text) = parts.meta.get_mut("training")
                && let Ok(serde_json::Value::Object(mut map)) = serde_json::from_str(text)
            {
                match value {
                    Some(v) => map.insert(key.to_string(), v.clone()),
                    None => map.remove(*key),
                };
                *text = serde_json::Value::Object(map).to_string();
            }
        }
        CheckpointEdit::StateBytes(edits) => {
            if let Some(text) = parts.meta.get_mut("training") {
                let mut bytes = text.as_bytes().to_vec();
                apply(&mut bytes, edits);
                *text = String::from_utf8_lossy(&bytes).into_owned();
            }
        }
        CheckpointEdit::DropTensor(i) if n > 0 => {
            parts.tensors.remove(i.index(n));
        }
        CheckpointEdit::Rename(i, name) if n > 0 => {
            parts.tensors[i.index(n)].name = name.clone();
        }
        CheckpointEdit::Reshape(i, shape) if n > 0 => {
            let t = &mut parts.tensors[i.index(n)];
            let bytes = shape.iter().product::<usize>() * t.dtype.bitsize() / 8;
            t.data.resize(bytes, 0x3c);
            t.shape = shape.clone();
        }
        CheckpointEdit::Retype(i, dtype) if n > 0 => {
            let t = &mut parts.tensors[i.index(n)];
            let elements: usize = t.shape.iter().product();
            t.data.resize(elements * dtype.bitsize() / 8, 0);
            t.dtype = *dtype;
        }
        CheckpointEdit::Add(name, shape) => {
            let elements: usize = shape.iter().product();
            parts.tensors.push(RawTensor {
                name: name.clone(),
                dtype: Dtype::F32,
                shape: shape.clone(),
                data: vec![0; 4 * elements],
            });
        }
        _ => {}
    }
}

/// A loaded checkpoint must be usable: its model builds, a trainer over its
/// optimizer state builds or refuses, and (for small models) a batch
/// normalised with its statistics runs forward, backward and through an
/// update — nothing panics.
fn check_usable(c: &Checkpoint) -> Result<(), TestCaseError> {
    let expected = parameter_shapes(&c.spec);
    prop_assert!(expected.is_ok(), "loaded a spec without parameters");
    let expected = expected.unwrap();
    let names: Vec<(&String, &Vec<usize>)> = c.model.iter().map(|(n, t)| (n, &t.shape)).collect();
    let wanted: Vec<(&String, &Vec<usize>)> = expected.iter().map(|(n, s)| (n, s)).collect();
    prop_assert_eq!(names, wanted, "loaded tensors differ from the model's");
    for (_, t) in &c.model {
        prop_assert_eq!(product(&t.shape), t.data.len() as u128);
    }
    for (_, slots) in &c.optimizer {
        for t in slots {
            prop_assert_eq!(product(&t.shape), t.data.len() as u128);
        }
    }
    let classes = c.spec.classes();
    prop_assert!(classes.is_ok(), "loaded a spec without classes");
    let classes = classes.unwrap();
    let [ch, h, w] = match c.spec.input[..] {
        [ch, h, w] => [ch, h, w],
        _ => return Ok(()),
    };
    if !c.spec.largest_tensor(2).is_ok_and(|(n, _)| n <= 50_000) {
        return Ok(());
    }
    let set = Dataset {
        name: "fuzz".into(),
        images: noise(2 * ch * h * w, 5),
        labels: vec![0, (1 % classes.min(256)) as u8],
        shape: [ch, h, w],
        classes,
        class_names: (0..classes).map(|k| k.to_string()).collect(),
    };
    let norm = Normalization {
        mean: c.state.norm_mean.clone(),
        std: c.state.norm_std.clone(),
    };
    let batch = make_batch(&set, &[0, 1], &norm, None);
    let backend = CpuBackend::<f32>::new();
    let kind = OptimizerKind::from_name(&c.state.optimizer).unwrap_or(OptimizerKind::Adam);
    let settings = OptimizerSettings::new(kind, 0.0).unwrap();
    if let Ok(mut trainer) = Trainer::new(
        &backend,
        &c.spec,
        &c.model,
        settings,
        &c.optimizer,
        c.state.step,
        c.state.seed,
    ) {
        let _ = trainer.evaluate(&backend, &set, &norm, 2);
        if c.spec.check_trainable(2).is_ok() {
            let _ = trainer.train_step(&backend, &batch, 0.01);
        }
    }
    Ok(())
}

/// Checks one `Checkpoint::from_bytes` outcome and its largest allocation.
fn check_checkpoint(bytes: &[u8]) -> Result<(), TestCaseError> {
    let path = Path::new("fuzz/model.safetensors");
    let (result, peak) = with_peak(|| Checkpoint::from_bytes(path, bytes));
    prop_assert!(
        peak <= allocation_bound(bytes.len()),
        "allocated {peak} bytes for a {}-byte checkpoint",
        bytes.len()
    );
    match result {
        Err(e) => assert_file_error(&e, path)?,
        Ok(c) => check_usable(&c)?,
    }
    Ok(())
}

/// A safetensors header (JSON) in front of `data`.
fn safetensors_file(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

proptest! {
    #![proptest_config(config(4.0))]

    /// Valid checkpoints with their bytes edited.
    #[test]
    fn checkpoint_loader_survives_edited_bytes(
        which in any::<prop::sample::Index>(),
        edits in edits(4),
    ) {
        let bases = base_checkpoints();
        let mut bytes = bases[which.index(bases.len())].clone();
        apply(&mut bytes, &edits);
        check_checkpoint(&bytes)?;
    }

    /// Arbitrary bytes, and arbitrary bytes behind a header length.
    #[test]
    fn checkpoint_loader_survives_arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        header_len in prop::option::of(prop_oneof![
            0u64..300,
            select(vec![u64::MAX, 1 << 32, 100_000_000, 100_000_001]),
        ]),
    ) {
        let bytes = match header_len {
            Some(n) => [n.to_le_bytes().to_vec(), bytes].concat(),
            None => bytes,
        };
        check_checkpoint(&bytes)?;
    }

    /// Checkpoints taken apart and put back together wrong: metadata missing
    /// or changed, another model's definition, a training state with fields
    /// of the wrong type or length, tensors missing, renamed, reshaped,
    /// retyped or extra — mostly with a checksum that matches the damage.
    #[test]
    fn checkpoint_loader_survives_semantic_damage(
        which in any::<prop::sample::Index>(),
        edits in prop::collection::vec(checkpoint_edit(), 1..4),
        fix_checksum in prop::bool::weighted(0.85),
    ) {
        let bases = base_checkpoints();
        let mut parts = Parts::of(&bases[which.index(bases.len())]);
        for e in &edits {
            edit_checkpoint(&mut parts, e);
        }
        if let Some(bytes) = parts.bytes(fix_checksum) {
            check_checkpoint(&bytes)?;
        }
    }

    /// Safetensors headers that lie: shapes whose element count overflows,
    /// offsets past the end, dtypes of odd sizes.
    #[test]
    fn checkpoint_loader_survives_lying_headers(
        dims in prop::collection::vec(
            prop_oneof![0u64..4, select(vec![u32::MAX as u64, 1 << 32, u64::MAX, 1 << 62])],
            0..4,
        ),
        dtype in select(vec!["F32", "F64", "F4", "F6_E2M3", "I64", "BOOL", "U8", "X"]),
        start in prop_oneof![0u64..8, Just(u64::MAX)],
        end in prop_oneof![0u64..40, Just(u64::MAX), Just(1 << 40)],
        data_len in 0usize..40,
        name in tensor_name(),
    ) {
        let header = format!(
            "{{\"__metadata__\":{{\"format\":\"wgcnn-checkpoint\",\"version\":\"1\"}},\
             {name:?}:{{\"dtype\":\"{dtype}\",\"shape\":{dims:?},\"data_offsets\":[{start},{end}]}}}}"
        );
        check_checkpoint(&safetensors_file(&header, &vec![0u8; data_len]))?;
    }
}

/// Training states with awkward values: a checkpoint `save` writes must load
/// back to the same state, or `save` must refuse it.
fn training_state() -> impl Strategy<Value = TrainingState> {
    let text = prop_oneof![
        Just(String::new()),
        "[a-z]{1,8}",
        any::<String>(),
        Just("\u{0}\"\\\n".to_string()),
    ];
    let number = || {
        prop_oneof![
            4 => -10.0f32..10.0,
            1 => select(vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, 1e-45, -0.0]),
        ]
    };
    let count = || prop_oneof![4 => 0usize..100_000, 1 => any::<usize>()];
    (
        (count(), count(), any::<u64>()),
        (text.clone(), number(), number(), text.clone()),
        prop::collection::vec(number(), 1..2),
        prop::collection::vec(number(), 1..2),
        prop::collection::vec(text, 0..4),
        prop_oneof![4 => 0.0f64..1.0, 1 => select(vec![f64::NAN, f64::INFINITY])],
        prop::option::of((
            (count(), count(), any::<bool>()),
            (number(), number(), number()),
            select(vec![
                Schedule::Constant,
                Schedule::Cosine,
                Schedule::Step {
                    every_epochs: 0,
                    gamma: 0.0,
                },
            ]),
        )),
    )
        .prop_map(
            |(
                (epoch, step, seed),
                (optimizer, lr, weight_decay, dataset),
                m,
                s,
                names,
                best,
                settings,
            )| {
                let settings = settings.map(
                    |((epochs, batch_size, augment), (warmup, gamma, validation), schedule)| {
                        RunSettings {
                            epochs,
                            batch_size,
                            schedule: match schedule {
                                Schedule::Step { .. } => Schedule::Step {
                                    every_epochs: epochs % 7,
                                    gamma,
                                },
                                other => other,
                            },
                            warmup_epochs: warmup,
                            augment,
                            validation,
                        }
                    },
                );
                TrainingState {
                    epoch,
                    step,
                    seed,
                    optimizer,
                    lr,
                    weight_decay,
                    dataset,
                    norm_mean: m,
                    norm_std: s,
                    class_names: names,
                    best_accuracy: best,
                    settings,
                    ..TrainingState::default()
                }
            },
        )
}

/// Bitwise equality of two training states (NaN equals NaN), except that the
/// one `f64`, `best_accuracy`, may move by one unit in the last place:
/// serde_json's default float parser does not promise an exact round trip.
fn same_state(a: &TrainingState, b: &TrainingState) -> bool {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    serde_json::to_string(&TrainingState {
        lr: 0.0,
        weight_decay: 0.0,
        norm_mean: vec![],
        norm_std: vec![],
        best_accuracy: 0.0,
        ..a.clone()
    })
    .unwrap()
        == serde_json::to_string(&TrainingState {
            lr: 0.0,
            weight_decay: 0.0,
            norm_mean: vec![],
            norm_std: vec![],
            best_accuracy: 0.0,
            ..b.clone()
        })
        .unwrap()
        && a.lr.to_bits() == b.lr.to_bits()
        && a.weight_decay.to_bits() == b.weight_decay.to_bits()
        && bits(&a.norm_mean) == bits(&b.norm_mean)
        && bits(&a.norm_std) == bits(&b.norm_std)
        && (a
            .best_accuracy
            .to_bits()
            .abs_diff(b.best_accuracy.to_bits())
            <= 1)
}

proptest! {
    #![proptest_config(config(0.5))]

    /// Whatever `save` writes, `load` reads back identically.
    #[test]
    fn checkpoints_save_and_load_back(
        spec in plausible_spec(),
        state in training_state(),
        slots in 0usize..3,
        fit_norm in prop::bool::weighted(0.8),
    ) {
        let Ok(params) = parameter_shapes(&spec) else {
            return Ok(());
        };
        prop_assume!(params.iter().map(|(_, s)| product(s)).sum::<u128>() <= 20_000);
        let mut c = checkpoint_of(&spec, slots, 3);
        c.state = state;
        if fit_norm {
            // Mostly one statistic per channel, so that most states can be saved.
            let channels = spec.input[0];
            let (m, s) = (c.state.norm_mean[0], c.state.norm_std[0]);
            c.state.norm_mean.resize(channels, m);
            c.state.norm_std.resize(channels, s);
        }
        let dir = TempDir::new("round-trip");
        let path = dir.path().join("c.safetensors");
        match c.save(&path) {
            Err(e) => assert_file_error(&e, &path)?,
            Ok(()) => match Checkpoint::load(&path) {
                Err(e) => prop_assert!(false, "save wrote what load refuses: {e}\n{:?}", c.state),
                Ok(back) => {
                    prop_assert_eq!(&back.spec, &c.spec);
                    prop_assert_eq!(&back.model, &c.model);
                    prop_assert_eq!(&back.optimizer, &c.optimizer);
                    prop_assert!(same_state(&back.state, &c.state), "{:?} != {:?}", back.state, c.state);
                }
            },
        }
    }
}

// ---------------------------------------------------------------------------
// Regressions: every crash the properties found, with its minimal input
// ---------------------------------------------------------------------------

/// `check_fits` computed `4 · elements` in `u64`, which overflows for a batch
/// whose largest tensor holds more than 2^62 elements: the byte count wrapped
/// (or, saturated, compared equal to `u64::MAX`) and a tensor of 2^65 bytes
/// "fitted". Found by `model_specs_round_trip_or_are_refused`.
#[test]
fn regression_check_fits_counts_bytes_past_u64() {
    let spec = ModelSpec {
        input: vec![2_147_483_647],
        layers: vec![],
    };
    let err = spec
        .check_fits(4_294_967_295, u64::MAX)
        .expect_err("2^65 bytes cannot fit in a buffer of u64::MAX bytes");
    assert!(err.to_string().contains("--batch-size"), "{err}");
    assert!(spec.check_fits(1, u64::MAX).is_ok());
}

/// The training state is outside the tensor checksum, so a checkpoint whose
/// `norm_mean` has three values for a one-channel model loaded, and evaluating
/// or resuming it then panicked in `make_batch` ("normalisation has 3 means and
/// 1 stds for 1 channels"). Found by `checkpoint_loader_survives_semantic_damage`.
#[test]
fn regression_checkpoint_normalisation_must_fit_the_input() {
    let base = &base_checkpoints()[0];
    for (field, value) in [
        ("norm_mean", serde_json::json!([0.5, 0.5, 0.5])),
        ("norm_std", serde_json::json!([])),
        ("norm_std", serde_json::json!([0.0])),
        ("norm_std", serde_json::json!([1e39])),
        ("norm_mean", serde_json::json!([-1e39])),
    ] {
        let mut parts = Parts::of(base);
        edit_checkpoint(
            &mut parts,
            &CheckpointEdit::StateField(field, Some(value.clone())),
        );
        let dir = TempDir::new("regression-norm");
        let path = dir.path().join("c.safetensors");
        std::fs::write(&path, parts.bytes(true).unwrap()).unwrap();
        let err = Checkpoint::load(&path)
            .map(|_| ())
            .expect_err(&format!("{field} = {value} must be refused"));
        let message = err.to_string();
        assert!(
            message.contains(&path.display().to_string()) && message.contains(field),
            "{message}"
        );
    }
}

/// `save` wrote a NaN or infinite number of the training state as JSON `null`,
/// which `load` then refused ("invalid type: null, expected f64"): a checkpoint
/// that could be written but never read. `save` now refuses such a state,
/// naming the field. Found by `checkpoints_save_and_load_back`.
#[test]
fn regression_checkpoint_save_refuses_what_load_cannot_read() {
    let spec = &checkpoint_specs()[0];
    let dir = TempDir::new("regression-save");
    let path = dir.path().join("c.safetensors");
    let mut c = checkpoint_of(spec, 0, 1);
    c.state.best_accuracy = f64::NAN;
    let err = c.save(&path).expect_err("NaN cannot be stored");
    assert!(err.to_string().contains("best_accuracy"), "{err}");
    let mut c = checkpoint_of(spec, 0, 1);
    c.state.norm_mean = vec![f32::NAN];
    let err = c.save(&path).expect_err("NaN cannot be stored");
    assert!(err.to_string().contains("norm_mean"), "{err}");
    assert!(!path.exists(), "a refused save writes nothing");
    let c = checkpoint_of(spec, 2, 1);
    c.save(&path).unwrap();
    let back = Checkpoint::load(&path).unwrap();
    assert!(same_state(&back.state, &c.state));
}

/// Shape inference multiplied sizes unchecked: in release builds the element
/// counts wrapped around and `shapes` / `largest_tensor` answered for tensors
/// that cannot exist (in debug builds they panicked). Found by
/// `model_specs_round_trip_or_are_refused` and
/// `model_parser_survives_edited_lines` (a 1×28×28 model at batch `usize::MAX`);
/// each overflowing product now is an error naming the layer.
#[test]
fn regression_shape_arithmetic_overflow_is_an_error() {
    let image = |input: [usize; 3], layers: Vec<LayerSpec>| ModelSpec {
        input: input.to_vec(),
        layers,
    };
    let cases = [
        // The input alone: 1 x 1048577 x 1048577 at batch 2^32 - 1.
        (image([1, 1_048_577, 1_048_577], vec![]), u32::MAX as usize),
        (image([1, 28, 28], vec![]), usize::MAX),
        // Conv padding: input + 2 x padding.
        (
            image(
                [1, 4, 4],
                vec![LayerSpec::Conv2d {
                    out_channels: 1,
                    kernel: 1,
                    stride: 1,
                    padding: usize::MAX,
                }],
            ),
            1,
        ),
        // Pool padding: 2 x padding wrapped to 0 and passed the half-kernel check.
        (
            image(
                [1, 4, 4],
                vec![LayerSpec::MaxPool2d {
                    kernel: 2,
                    stride: 1,
                    padding: 1 << 63,
                }],
            ),
            1,
        ),
        // The im2col matrix (N, C·k·k, OH·OW) of a wide kernel.
        (
            image(
                [1 << 20, 1, 1],
                vec![LayerSpec::Conv2d {
                    out_channels: 1,
                    kernel: 1 << 22,
                    stride: 1,
                    padding: 1 << 21,
                }],
            ),
            1,
        ),
        // Flatten at batch 0 (an empty input) of a C·H·W that overflows.
        (
            image(
                [1 << 22, 1 << 21, 1 << 21],
                vec![LayerSpec::Flatten, LayerSpec::Linear { out_features: 2 }],
            ),
            0,
        ),
        // A linear weight (out, in) of 2^64 elements.
        (
            ModelSpec {
                input: vec![1 << 33],
                layers: vec![LayerSpec::Linear {
                    out_features: 1 << 31,
                }],
            },
            1,
        ),
    ];
    for (spec, batch) in cases {
        let err = spec
            .shapes(batch)
            .expect_err(&format!("{spec:?} at batch {batch}"));
        let message = err.to_string();
        assert!(
            message.contains("layer") || message.contains("input"),
            "{message}"
        );
        assert!(spec.largest_tensor(batch).is_err());
        assert!(spec.check_trainable(batch).is_err());
        assert!(spec.check_fits(batch, u64::MAX).is_err());
    }
    // The same through a model file: the message names the layer.
    let err = ModelSpec::from_toml(
        "input = [8589934592]\n[[layers]]\ntype = \"linear\"\nout_features = 2147483648\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("layer 0 (linear)"), "{err}");
    // And the geometry types on their own.
    assert!(
        wgcnn::geometry::Conv2dGeometry::new(1, 1 << 32, 1, 1, 1, 1 << 16, 1 << 16, 1, 1 << 15)
            .is_err()
    );
    assert!(wgcnn::geometry::BatchNormLayout::of_shape(&[1, 1, 1 << 33, 1 << 33]).is_err());
    assert!(wgcnn::geometry::BatchNormLayout::of_shape(&[1 << 33, 1, 1 << 31, 1]).is_err());
}

/// The IDX reader accepted train images of one size and test images of
/// another; training then fed the test images to a model built for the train
/// size and `wgcnn train` panicked in the first evaluation ("linear weight
/// shape"). The test images file is now refused, naming both sizes. Found by
/// `idx_sets_load_or_name_the_bad_file` (train 1x2x1, test 1x2x3).
#[test]
fn regression_idx_train_and_test_images_must_have_one_size() {
    let dir = TempDir::new("regression-idx-size");
    let files = [
        idx_file(IMAGES_MAGIC, &[1, 2, 1], &[7, 8]),
        idx_file(LABELS_MAGIC, &[1], &[0]),
        idx_file(IMAGES_MAGIC, &[1, 2, 3], &[1, 2, 3, 4, 5, 6]),
        idx_file(LABELS_MAGIC, &[1], &[0]),
    ];
    for (name, bytes) in IDX_NAMES.iter().zip(&files) {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let err = data::load(DatasetKind::Mnist, dir.path()).unwrap_err();
    match &err {
        Error::File { path, message } => {
            assert_eq!(path, &dir.path().join("t10k-images-idx3-ubyte"), "{err}");
            assert!(
                message.contains("2x3") && message.contains("2x1"),
                "{message}"
            );
        }
        other => panic!("expected a file error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Lying headers, at sizes past the properties' allocation slack
// ---------------------------------------------------------------------------

/// A 4 KB gzip file (stored, not compressed) whose header claims 4 MB of
/// pixels: within what deflate could expand to, so the claim is not refused
/// up front, but the reader must not reserve the 4 MB before the data is there.
#[test]
fn idx_gzip_header_claiming_more_than_the_file_holds_reserves_little() {
    let content = idx_file(IMAGES_MAGIC, &[1, 2000, 2000], &noise(4000, 9));
    let mut enc = GzEncoder::new(Vec::new(), Compression::none());
    enc.write_all(&content).unwrap();
    let bytes = enc.finish().unwrap();
    let path = Path::new("lying/train-images-idx3-ubyte.gz");
    let (result, peak) = with_peak(|| parse_idx(path, &bytes, IdxKind::Images));
    let err = result.unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    assert!(
        peak <= 64 * bytes.len(),
        "reserved {peak} bytes for a {}-byte file",
        bytes.len()
    );
}

/// A checkpoint whose `step` is beyond the optimizer's step counter loaded,
/// and the first training step then panicked: `self.step as u32 + 1`
/// overflowed (found by `checkpoint_loader_survives_semantic_damage` in a debug
/// build, `step = u64::MAX`), and from `step = 2^31 - 1` on, in release too,
/// `UpdateStep::values` panicked ("step count fits in an i32"; found by this
/// test's boundary case).
#[test]
fn regression_checkpoint_counters_must_fit_the_trainer() {
    let base = &base_checkpoints()[0];
    let path = Path::new("regression/counters.safetensors");
    for (field, value) in [
        ("step", serde_json::json!(u64::MAX)),
        ("step", serde_json::json!(u32::MAX)),
        ("step", serde_json::json!(i32::MAX)),
        ("epoch", serde_json::json!(u64::MAX)),
    ] {
        let mut parts = Parts::of(base);
        edit_checkpoint(
            &mut parts,
            &CheckpointEdit::StateField(field, Some(value.clone())),
        );
        let err = Checkpoint::from_bytes(path, &parts.bytes(true).unwrap())
            .map(|_| ())
            .expect_err(&format!("{field} = {value} must be refused"));
        assert!(err.to_string().contains(field), "{err}");
    }
    // The largest step that loads still trains.
    let mut parts = Parts::of(base);
    edit_checkpoint(
        &mut parts,
        &CheckpointEdit::StateField("step", Some(serde_json::json!(i32::MAX - 1))),
    );
    let c = Checkpoint::from_bytes(path, &parts.bytes(true).unwrap()).unwrap();
    check_usable(&c).unwrap();
}

/// The checksum covered the tensors alone, so a training state or model
/// definition damaged into other valid values (a learning rate's digit, a
/// layer's width) loaded silently. Version 2 files cover every metadata entry;
/// version 1 files, checked the old way, still load.
#[test]
fn regression_checkpoint_checksum_covers_the_metadata() {
    let base = &base_checkpoints()[0];
    let dir = TempDir::new("regression-meta-sum");
    let path = dir.path().join("c.safetensors");
    type EntryEdit = fn(&str) -> String;
    let edits: [(&str, EntryEdit); 2] = [
        ("training", |json| json.replacen("\"lr\":", "\"lr\":1", 1)),
        ("model", |toml| {
            format!("# a comment changes no value\n{toml}")
        }),
    ];
    for (key, edit) in edits {
        let mut parts = Parts::of(base);
        let entry = parts.meta.get_mut(key).unwrap();
        let edited = edit(entry);
        assert_ne!(&edited, entry, "{key}: {entry}");
        *entry = edited;
        std::fs::write(&path, parts.bytes(false).unwrap()).unwrap();
        let err = Checkpoint::load(&path)
            .map(|_| ())
            .expect_err(&format!("an edited {key} entry must be refused"));
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        // The same edit with a matching checksum is a valid file.
        std::fs::write(&path, parts.bytes(true).unwrap()).unwrap();
        Checkpoint::load(&path).unwrap_or_else(|e| panic!("{key} edit, checksum fixed: {e}"));
    }
    let mut v1 = Parts::of(base);
    v1.meta.insert("version".into(), "1".into());
    std::fs::write(&path, v1.bytes(true).unwrap()).unwrap();
    let old = Checkpoint::load(&path).expect("a version 1 checkpoint still loads");
    let current = Checkpoint::from_bytes(&path, base).unwrap();
    assert_eq!(old.state, current.state);
}
