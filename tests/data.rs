//! The data layer: IDX and CIFAR-10 readers on small files written here (good,
//! truncated and corrupt), epoch order, batches, augmentation, the synthetic set,
//! validation splits, image files, and — where it is installed — Fashion-MNIST.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use flate2::Compression;
use flate2::write::GzEncoder;
use wgcnn::data::{
    self, Augmentation, Dataset, DatasetKind, Normalization, batch_seed, epoch_order, make_batch,
};

/// A fresh, empty directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("wgcnn-data-test-{}-{tag}-{n}", std::process::id()));
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

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// An IDX file: magic, big-endian dims, data.
fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = magic.to_be_bytes().to_vec();
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

const ROWS: usize = 3;
const COLS: usize = 4;

/// Pixels of example `i`: distinct per example and position.
fn pixels(count: usize, salt: u8) -> Vec<u8> {
    (0..count * ROWS * COLS)
        .map(|k| (k as u8).wrapping_mul(7).wrapping_add(salt))
        .collect()
}

fn labels(count: usize) -> Vec<u8> {
    (0..count).map(|i| (i % 10) as u8).collect()
}

/// The four IDX files of a small set (12 train and 5 test images of 3×4);
/// `gz` chooses which of them (train images, train labels, test images, test
/// labels) are gzip-compressed.
fn write_idx_set(dir: &Path, gz: [bool; 4]) {
    let files = [
        (
            "train-images-idx3-ubyte",
            idx(0x803, &[12, ROWS as u32, COLS as u32], &pixels(12, 1)),
        ),
        ("train-labels-idx1-ubyte", idx(0x801, &[12], &labels(12))),
        (
            "t10k-images-idx3-ubyte",
            idx(0x803, &[5, ROWS as u32, COLS as u32], &pixels(5, 100)),
        ),
        ("t10k-labels-idx1-ubyte", idx(0x801, &[5], &labels(5))),
    ];
    for ((name, bytes), gz) in files.into_iter().zip(gz) {
        if gz {
            std::fs::write(dir.join(format!("{name}.gz")), gzip(&bytes)).unwrap();
        } else {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

/// Replaces one file of a set (whichever of raw/.gz exists) with `bytes`, raw or
/// compressed as `gz` says.
fn replace(dir: &Path, name: &str, bytes: &[u8], gz: bool) {
    let _ = std::fs::remove_file(dir.join(name));
    let _ = std::fs::remove_file(dir.join(format!("{name}.gz")));
    if gz {
        std::fs::write(dir.join(format!("{name}.gz")), gzip(bytes)).unwrap();
    } else {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// The error message of loading `dir` as Fashion-MNIST, which must fail.
fn load_error(dir: &Path) -> String {
    match data::load(DatasetKind::FashionMnist, dir) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn assert_contains(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(
            message.contains(part),
            "error message {message:?} should contain {part:?}"
        );
    }
}

#[test]
fn idx_raw_and_gzip_round_trip() {
    for gz in [[false; 4], [true; 4], [true, false, false, true]] {
        let dir = TempDir::new("idx-ok");
        write_idx_set(dir.path(), gz);
        let splits = data::load(DatasetKind::FashionMnist, dir.path()).unwrap();
        let (train, test) = (&splits.train, &splits.test);
        assert_eq!(train.name, "fashion-mnist (train)");
        assert_eq!(test.name, "fashion-mnist (test)");
        assert_eq!((train.len(), test.len()), (12, 5));
        assert_eq!(train.shape, [1, ROWS, COLS]);
        assert_eq!(train.images, pixels(12, 1));
        assert_eq!(test.images, pixels(5, 100));
        assert_eq!(train.labels, labels(12));
        assert_eq!(train.image(2), &pixels(12, 1)[24..36]);
        assert_eq!(train.classes, 10);
        assert_eq!(train.class_names[0], "T-shirt/top");
        assert_eq!(train.class_names[9], "Ankle boot");
        assert!(data::locate(DatasetKind::FashionMnist, Some(dir.path())).is_some());
    }
    let dir = TempDir::new("idx-mnist");
    write_idx_set(dir.path(), [false; 4]);
    let mnist = data::load(DatasetKind::Mnist, dir.path()).unwrap();
    assert_eq!(mnist.train.name, "mnist (train)");
    assert_eq!(mnist.train.class_names[3], "3");
}

#[test]
fn missing_directory_and_files_are_named() {
    let dir = TempDir::new("idx-missing");
    let absent = dir.path().join("nowhere");
    let msg = load_error(&absent);
    assert_contains(
        &msg,
        &[
            "nowhere",
            "does not exist",
            "train-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        ],
    );

    write_idx_set(dir.path(), [true; 4]);
    std::fs::remove_file(dir.path().join("t10k-labels-idx1-ubyte.gz")).unwrap();
    let msg = load_error(dir.path());
    assert_contains(
        &msg,
        &[
            &dir.path().display().to_string(),
            "no t10k-labels-idx1-ubyte",
        ],
    );
    assert!(data::locate(DatasetKind::FashionMnist, Some(dir.path())).is_none());
}

#[test]
fn truncated_and_corrupt_gzip_are_errors() {
    let dir = TempDir::new("idx-gzip");
    write_idx_set(dir.path(), [true; 4]);
    let path = dir.path().join("train-images-idx3-ubyte.gz");
    let good = std::fs::read(&path).unwrap();

    // Cut at several points: inside the gzip header, inside the deflate data,
    // inside the trailer.
    for cut in [5, good.len() / 2, good.len() - 4, good.len() - 1] {
        std::fs::write(&path, &good[..cut]).unwrap();
        let msg = load_error(dir.path());
        assert_contains(&msg, &["train-images-idx3-ubyte.gz"]);
        assert!(
            msg.contains("truncated") || msg.contains("corrupt"),
            "cut at {cut}: {msg}"
        );
    }

    // A flipped byte in the deflate data or the CRC.
    for at in [12, good.len() - 6] {
        let mut bad = good.clone();
        bad[at] ^= 0x55;
        std::fs::write(&path, &bad).unwrap();
        let msg = load_error(dir.path());
        assert_contains(&msg, &["train-images-idx3-ubyte.gz"]);
        assert!(
            msg.contains("corrupt") || msg.contains("truncated") || msg.contains("too long"),
            "flip at {at}: {msg}"
        );
    }
}

#[test]
fn wrong_magic_and_dimension_count_are_errors() {
    for gz in [false, true] {
        let dir = TempDir::new("idx-magic");
        write_idx_set(dir.path(), [gz; 4]);
        let data = pixels(12, 1);
        replace(
            dir.path(),
            "train-images-idx3-ubyte",
            &idx(0x0000_0903, &[12, 3, 4], &data),
            gz,
        );
        let msg = load_error(dir.path());
        assert_contains(
            &msg,
            &[
                "train-images-idx3-ubyte",
                "bad IDX magic 0x00000903",
                "expected 0x00000803",
            ],
        );

        replace(
            dir.path(),
            "train-images-idx3-ubyte",
            &idx(0x802, &[12, 12], &data),
            gz,
        );
        let msg = load_error(dir.path());
        assert_contains(&msg, &["wrong dimension count 2", "expected 3"]);

        // An image file where the labels belong.
        write_idx_set(dir.path(), [gz; 4]);
        replace(
            dir.path(),
            "t10k-labels-idx1-ubyte",
            &idx(0x803, &[5, 1, 1], &labels(5)),
            gz,
        );
        let msg = load_error(dir.path());
        assert_contains(
            &msg,
            &[
                "t10k-labels-idx1-ubyte",
                "wrong dimension count 3",
                "expected 1",
            ],
        );

        // Too short for even the header.
        replace(dir.path(), "t10k-labels-idx1-ubyte", &[0, 0, 8], gz);
        let msg = load_error(dir.path());
        assert_contains(&msg, &["t10k-labels-idx1-ubyte", "truncated", "header"]);
    }
}

#[test]
fn header_claiming_more_data_than_the_file_holds() {
    for gz in [false, true] {
        let dir = TempDir::new("idx-short");
        write_idx_set(dir.path(), [gz; 4]);
        // 13 images announced, 12 present.
        replace(
            dir.path(),
            "train-images-idx3-ubyte",
            &idx(0x803, &[13, 3, 4], &pixels(12, 1)),
            gz,
        );
        let msg = load_error(dir.path());
        assert_contains(
            &msg,
            &["train-images-idx3-ubyte", "truncated", "13x3x4 = 156 bytes"],
        );

        // More data than announced.
        replace(
            dir.path(),
            "train-images-idx3-ubyte",
            &idx(0x803, &[11, 3, 4], &pixels(12, 1)),
            gz,
        );
        let msg = load_error(dir.path());
        assert_contains(&msg, &["train-images-idx3-ubyte", "too long"]);

        // A header claiming ~3 TB must fail without trying to allocate it.
        replace(
            dir.path(),
            "train-images-idx3-ubyte",
            &idx(0x803, &[u32::MAX, 28, 28], &pixels(12, 1)),
            gz,
        );
        let msg = load_error(dir.path());
        assert_contains(&msg, &["train-images-idx3-ubyte", "4294967295x28x28"]);
    }
}

#[test]
fn count_mismatch_bad_labels_and_empty_sets() {
    let dir = TempDir::new("idx-labels");
    write_idx_set(dir.path(), [false; 4]);
    replace(
        dir.path(),
        "train-labels-idx1-ubyte",
        &idx(0x801, &[11], &labels(11)),
        false,
    );
    let msg = load_error(dir.path());
    assert_contains(
        &msg,
        &[
            "train-labels-idx1-ubyte",
            "holds 11 labels",
            "holds 12 images",
        ],
    );

    let mut bad = labels(12);
    bad[7] = 10;
    replace(
        dir.path(),
        "train-labels-idx1-ubyte",
        &idx(0x801, &[12], &bad),
        true,
    );
    let msg = load_error(dir.path());
    assert_contains(
        &msg,
        &[
            "train-labels-idx1-ubyte.gz",
            "label 10 of example 7",
            "below the class count 10",
        ],
    );

    write_idx_set(dir.path(), [false; 4]);
    replace(
        dir.path(),
        "t10k-images-idx3-ubyte",
        &idx(0x803, &[0, 3, 4], &[]),
        false,
    );
    replace(
        dir.path(),
        "t10k-labels-idx1-ubyte",
        &idx(0x801, &[0], &[]),
        false,
    );
    let msg = load_error(dir.path());
    assert_contains(&msg, &["t10k-images-idx3-ubyte", "no images"]);
}

const RECORD: usize = 3073;

/// `n` CIFAR records with labels `first_label + i (mod 10)` and pixels that
/// encode the record index.
fn cifar_records(n: usize, first_label: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * RECORD);
    for i in 0..n {
        out.push((first_label + i as u8) % 10);
        out.extend((0..3072).map(|k| (k as u8).wrapping_add(i as u8 * 31)));
    }
    out
}

const CIFAR_FILES: [&str; 6] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
    "test_batch.bin",
];

fn write_cifar_set(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (i, name) in CIFAR_FILES.iter().enumerate() {
        std::fs::write(dir.join(name), cifar_records(2, i as u8)).unwrap();
    }
}

fn cifar_error(dir: &Path) -> String {
    match data::load(DatasetKind::Cifar10, dir) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn cifar_round_trip_directly_and_in_subdirectory() {
    let dir = TempDir::new("cifar-ok");
    for base in [
        dir.path().to_path_buf(),
        dir.path().join("cifar-10-batches-bin"),
    ] {
        let _ = std::fs::remove_dir_all(dir.path());
        write_cifar_set(&base);
        assert_eq!(
            data::locate(DatasetKind::Cifar10, Some(dir.path())).as_deref(),
            Some(dir.path())
        );
        let splits = data::load(DatasetKind::Cifar10, dir.path()).unwrap();
        assert_eq!(splits.train.len(), 10);
        assert_eq!(splits.test.len(), 2);
        assert_eq!(splits.train.shape, [3, 32, 32]);
        assert_eq!(splits.train.labels, [0, 1, 1, 2, 2, 3, 3, 4, 4, 5]);
        assert_eq!(splits.test.labels, [5, 6]);
        let one = cifar_records(2, 0);
        assert_eq!(splits.train.image(1), &one[RECORD + 1..2 * RECORD]);
        assert_eq!(splits.train.class_names[0], "airplane");
        assert_eq!(splits.test.name, "cifar10 (test)");
    }
}

#[test]
fn cifar_bad_files_are_errors() {
    let dir = TempDir::new("cifar-bad");
    write_cifar_set(dir.path());

    let path = dir.path().join("data_batch_3.bin");
    let mut bytes = cifar_records(2, 0);
    bytes.pop();
    std::fs::write(&path, &bytes).unwrap();
    assert_contains(
        &cifar_error(dir.path()),
        &["data_batch_3.bin", "length 6145 is not a multiple of 3073"],
    );

    std::fs::write(&path, []).unwrap();
    assert_contains(
        &cifar_error(dir.path()),
        &["data_batch_3.bin", "empty file"],
    );

    let mut bytes = cifar_records(2, 0);
    bytes[RECORD] = 10;
    std::fs::write(&path, &bytes).unwrap();
    assert_contains(
        &cifar_error(dir.path()),
        &["data_batch_3.bin", "label 10 of example 1"],
    );

    std::fs::remove_file(&path).unwrap();
    assert_contains(
        &cifar_error(dir.path()),
        &["missing data_batch_3.bin", "test_batch.bin"],
    );
    assert!(data::locate(DatasetKind::Cifar10, Some(dir.path())).is_none());
    assert_contains(
        &cifar_error(&dir.path().join("absent")),
        &["absent", "does not exist", "data_batch_1.bin"],
    );
}

#[test]
fn kinds_names_and_search_paths() {
    for kind in DatasetKind::ALL {
        assert_eq!(DatasetKind::from_name(kind.name()).unwrap(), kind);
        assert_eq!(kind.class_names().len(), 10);
    }
    assert_eq!(
        DatasetKind::from_name("CIFAR-10").unwrap(),
        DatasetKind::Cifar10
    );
    let msg = DatasetKind::from_name("imagenet").unwrap_err().to_string();
    assert_contains(
        &msg,
        &["imagenet", "fashion-mnist, mnist, cifar10, synthetic"],
    );

    let paths = data::search_paths(DatasetKind::FashionMnist);
    assert_eq!(
        paths.last().unwrap(),
        Path::new("/usr/share/datasets/fashion-mnist")
    );
    assert!(paths.iter().all(|p| p.ends_with("fashion-mnist")));
    assert!(data::search_paths(DatasetKind::Synthetic).is_empty());
    assert!(data::locate(DatasetKind::Synthetic, None).is_none());
    assert!(data::load(DatasetKind::Synthetic, Path::new("/")).is_err());

    // --data-dir may name the set's directory or its parent.
    let dir = TempDir::new("locate");
    std::fs::create_dir_all(dir.path().join("mnist")).unwrap();
    write_idx_set(&dir.path().join("mnist"), [false; 4]);
    assert_eq!(
        data::locate(DatasetKind::Mnist, Some(dir.path())),
        Some(dir.path().join("mnist"))
    );
    assert_eq!(
        data::locate(DatasetKind::FashionMnist, Some(dir.path())),
        None
    );
}

#[test]
fn epoch_order_is_a_seeded_permutation() {
    let a = epoch_order(1000, 7, 3, true);
    let mut sorted = a.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
    assert_eq!(a, epoch_order(1000, 7, 3, true), "stable");
    assert_ne!(a, epoch_order(1000, 7, 4, true), "depends on the epoch");
    assert_ne!(a, epoch_order(1000, 8, 3, true), "depends on the seed");
    assert_ne!(a, (0..1000).collect::<Vec<_>>());
    assert_eq!(epoch_order(5, 7, 3, false), [0, 1, 2, 3, 4]);
    assert!(epoch_order(0, 7, 3, true).is_empty());
    assert_eq!(epoch_order(1, 7, 3, true), [0]);
}

/// A 2-channel 2×3 set of four images.
fn tiny_set() -> Dataset {
    Dataset {
        name: "tiny".into(),
        images: (0..4 * 12).map(|k| (k * 5) as u8).collect(),
        labels: vec![3, 1, 4, 1],
        shape: [2, 2, 3],
        classes: 5,
        class_names: (0..5).map(|c| c.to_string()).collect(),
    }
}

#[test]
fn normalization_and_batches() {
    let ds = Dataset {
        name: "two-level".into(),
        images: vec![0, 255, 51, 51, 255, 0, 51, 51],
        labels: vec![0, 1],
        shape: [2, 1, 2],
        classes: 2,
        class_names: vec!["a".into(), "b".into()],
    };
    let norm = Normalization::of(&ds);
    assert!((norm.mean[0] - 0.5).abs() < 1e-6 && (norm.std[0] - 0.5).abs() < 1e-6);
    // A constant channel: std falls back to 1.
    assert!((norm.mean[1] - 0.2).abs() < 1e-6 && norm.std[1] == 1.0);

    let ds = tiny_set();
    let norm = Normalization {
        mean: vec![0.25, 0.5],
        std: vec![0.5, 2.0],
    };
    let batch = make_batch(&ds, &[2, 0], &norm, None);
    assert_eq!(batch.images.shape, [2, 2, 2, 3]);
    assert_eq!(batch.labels, [4, 3]);
    for (b, &i) in [2usize, 0].iter().enumerate() {
        for k in 0..12 {
            let c = k / 6;
            let x = ds.image(i)[k] as f32 / 255.0;
            let want = (x - norm.mean[c]) / norm.std[c];
            let got = batch.images.data[b * 12 + k];
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
    }
    // Augmentation that changes nothing gives the same batch.
    let none = Augmentation::default();
    assert_eq!(make_batch(&ds, &[2, 0], &norm, Some((&none, 9))), batch);
}

/// Pixel `(y, x)` of channel `c` of image `img` (C×H×W bytes), 0 outside.
fn pixel(img: &[u8], [_, h, w]: [usize; 3], c: usize, y: isize, x: isize) -> u8 {
    if y < 0 || x < 0 || y >= h as isize || x >= w as isize {
        0
    } else {
        img[c * h * w + y as usize * w + x as usize]
    }
}

#[test]
fn augmentation_crops_and_flips() {
    let ds = synthetic_small();
    let shape = ds.shape;
    let [c, h, w] = shape;
    let ident = Normalization::identity(1);
    let to_byte = |v: f32| (v * 255.0).round() as u8;
    let indices: Vec<usize> = (0..64).collect();

    // Flip only: each image is itself or its mirror, and both happen.
    let flip = Augmentation {
        crop_padding: 0,
        horizontal_flip: true,
    };
    let batch = make_batch(&ds, &indices, &ident, Some((&flip, batch_seed(1, 0, 0))));
    assert_eq!(batch.images.shape, [64, c, h, w]);
    assert_eq!(
        batch.labels,
        ds.labels[..64]
            .iter()
            .map(|&l| l as u32)
            .collect::<Vec<_>>()
    );
    let (mut flipped, mut kept) = (0, 0);
    for (b, &i) in indices.iter().enumerate() {
        let out: Vec<u8> = batch.images.data[b * h * w..(b + 1) * h * w]
            .iter()
            .map(|&v| to_byte(v))
            .collect();
        let img = ds.image(i);
        let mirror: Vec<u8> = (0..h * w)
            .map(|k| img[(k / w) * w + (w - 1 - k % w)])
            .collect();
        if out == img {
            kept += 1;
        } else {
            assert_eq!(out, mirror, "image {i} is neither itself nor its mirror");
            flipped += 1;
        }
    }
    assert!(flipped > 10 && kept > 10, "{flipped} flipped, {kept} kept");

    // Crop only: each image is a shift by at most the padding, zero-filled.
    let p = 3;
    let crop = Augmentation {
        crop_padding: p,
        horizontal_flip: false,
    };
    let batch = make_batch(&ds, &indices, &ident, Some((&crop, batch_seed(1, 0, 1))));
    let mut shifts = std::collections::HashSet::new();
    for (b, &i) in indices.iter().enumerate() {
        let out: Vec<u8> = batch.images.data[b * h * w..(b + 1) * h * w]
            .iter()
            .map(|&v| to_byte(v))
            .collect();
        let img = ds.image(i);
        let shift = (-(p as isize)..=p as isize)
            .flat_map(|dy| (-(p as isize)..=p as isize).map(move |dx| (dy, dx)))
            .find(|&(dy, dx)| {
                (0..h * w).all(|k| {
                    let (y, x) = ((k / w) as isize, (k % w) as isize);
                    out[k] == pixel(img, shape, 0, y + dy, x + dx)
                })
            });
        shifts.insert(shift.expect("every crop is a shift within the padding"));
    }
    assert!(shifts.len() > 10, "only {} distinct shifts", shifts.len());

    // Deterministic in the seed.
    let both = Augmentation {
        crop_padding: 2,
        horizontal_flip: true,
    };
    let a = make_batch(&ds, &indices, &ident, Some((&both, batch_seed(5, 2, 7))));
    let b = make_batch(&ds, &indices, &ident, Some((&both, batch_seed(5, 2, 7))));
    let other = make_batch(&ds, &indices, &ident, Some((&both, batch_seed(5, 2, 8))));
    assert_eq!(a, b);
    assert_ne!(a, other);
    assert_ne!(batch_seed(5, 2, 7), batch_seed(5, 3, 7));

    // Multi-channel shapes survive.
    let tiny = tiny_set();
    let norm = Normalization::of(&tiny);
    let batch = make_batch(&tiny, &[0, 1, 2, 3], &norm, Some((&both, 1)));
    assert_eq!(batch.images.shape, [4, 2, 2, 3]);
    assert_eq!(batch.labels, [3, 1, 4, 1]);
}

fn synthetic_small() -> Dataset {
    data::synthetic(11, 200, 0).train
}

#[test]
fn synthetic_is_deterministic_and_balanced() {
    let a = data::synthetic(3, 1000, 100);
    let b = data::synthetic(3, 1000, 100);
    let c = data::synthetic(4, 1000, 100);
    assert_eq!(a.train, b.train);
    assert_eq!(a.test, b.test);
    assert_ne!(a.train.images, c.train.images);
    assert_ne!(a.train.images[..100 * 784], a.test.images[..]);
    assert_eq!(a.train.len(), 1000);
    assert_eq!(a.test.len(), 100);
    assert_eq!(a.train.shape, [1, 28, 28]);
    assert_eq!(a.train.classes, 10);
    assert_eq!(a.train.class_names.len(), 10);
    assert_eq!(a.train.images.len(), 1000 * 784);
    let mut counts = [0; 10];
    for &l in &a.train.labels {
        counts[l as usize] += 1;
    }
    assert_eq!(counts, [100; 10]);
    a.train.validate(Path::new("synthetic")).unwrap();
    // Not all one class in a row, and every image has some ink.
    assert!(a.train.labels.windows(2).any(|w| w[0] != w[1]));
    for i in 0..a.train.len() {
        let ink = a.train.image(i).iter().filter(|&&p| p > 128).count();
        assert!(
            ink >= 10,
            "image {i} (class {}) has {ink} bright pixels",
            a.train.labels[i]
        );
    }
    let empty = data::synthetic(3, 0, 0);
    assert!(empty.train.is_empty() && empty.test.is_empty());
}

#[test]
fn validation_split_sizes_and_membership() {
    let ds = data::synthetic(5, 100, 0).train;
    let all: Vec<Vec<u8>> = (0..ds.len()).map(|i| ds.image(i).to_vec()).collect();
    let (train, val) = ds.clone().split_validation(0.2, 9).unwrap();
    assert_eq!((train.len(), val.len()), (80, 20));
    assert_eq!(train.images.len(), 80 * 784);
    let mut seen: Vec<Vec<u8>> = (0..train.len())
        .map(|i| train.image(i).to_vec())
        .chain((0..val.len()).map(|i| val.image(i).to_vec()))
        .collect();
    seen.sort();
    let mut want = all.clone();
    want.sort();
    assert_eq!(seen, want, "the parts partition the set");
    let (train2, val2) = ds.clone().split_validation(0.2, 9).unwrap();
    assert_eq!((train2.images, val2.labels), (train.images, val.labels));
    let (_, val3) = ds.clone().split_validation(0.2, 10).unwrap();
    assert_ne!(val3.images, val.images);
    for bad in [0.0, 1.0, -0.5, f32::NAN, 0.001] {
        assert!(
            ds.clone().split_validation(bad, 9).is_err(),
            "fraction {bad}"
        );
    }
}

#[test]
fn image_files_are_converted() {
    let dir = TempDir::new("image");
    let path = dir.path().join("colour.png");
    image::RgbImage::from_pixel(10, 6, image::Rgb([200, 100, 50]))
        .save(&path)
        .unwrap();
    let grey = data::load_image_file(&path, [1, 4, 5]).unwrap();
    assert_eq!(grey.len(), 20);
    let want = image::Rgb([200u8, 100, 50]);
    let luma = image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(1, 1, want))
        .to_luma8()
        .into_raw()[0];
    assert!(grey.iter().all(|&v| v == luma), "{grey:?} vs {luma}");
    let rgb = data::load_image_file(&path, [3, 4, 5]).unwrap();
    assert_eq!(&rgb[..20], &[200; 20]);
    assert_eq!(&rgb[20..40], &[100; 20]);
    assert_eq!(&rgb[40..], &[50; 20]);

    // A left-dark, right-bright grey JPEG keeps its orientation.
    let path = dir.path().join("half.jpg");
    let img = image::GrayImage::from_fn(16, 16, |x, _| image::Luma([if x < 8 { 0 } else { 255 }]));
    img.save(&path).unwrap();
    let out = data::load_image_file(&path, [1, 8, 8]).unwrap();
    assert!(out[0] < 30 && out[7] > 225, "{out:?}");

    let junk = dir.path().join("junk.png");
    std::fs::write(&junk, b"not an image at all").unwrap();
    let msg = data::load_image_file(&junk, [1, 28, 28])
        .unwrap_err()
        .to_string();
    assert_contains(&msg, &["junk.png", "cannot decode"]);
    let msg = data::load_image_file(&dir.path().join("absent.png"), [1, 28, 28])
        .unwrap_err()
        .to_string();
    assert_contains(&msg, &["absent.png", "cannot open"]);
    assert!(data::load_image_file(&path, [2, 28, 28]).is_err());
}

#[test]
fn fashion_mnist_when_installed() {
    let dir = Path::new("/usr/share/datasets/fashion-mnist");
    if !dir.is_dir() {
        eprintln!(
            "note: {} is not installed; skipping the Fashion-MNIST check",
            dir.display()
        );
        return;
    }
    let splits = data::load(DatasetKind::FashionMnist, dir).unwrap();
    assert_eq!(splits.train.len(), 60_000);
    assert_eq!(splits.test.len(), 10_000);
    for ds in [&splits.train, &splits.test] {
        assert_eq!(ds.shape, [1, 28, 28]);
        assert_eq!(ds.classes, 10);
        assert_eq!(ds.images.len(), ds.len() * 784);
        let mut counts = [0usize; 10];
        for &l in &ds.labels {
            counts[l as usize] += 1;
        }
        assert_eq!(counts, [ds.len() / 10; 10], "{}", ds.name);
    }
    let norm = Normalization::of(&splits.train);
    // The well-known statistics of Fashion-MNIST's training images.
    assert!((norm.mean[0] - 0.2860).abs() < 1e-3, "{norm:?}");
    assert!((norm.std[0] - 0.3530).abs() < 1e-3, "{norm:?}");
}
