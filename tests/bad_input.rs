//! Every wrong input reachable from the command line gets a clear error: a
//! non-zero exit status, a message that names the file or setting at fault, and
//! never a panic. Run with `--nocapture` to see each case's message.

mod common;

use common::cli::{temp_dir, text, wgcnn};

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use flate2::Compression;
use flate2::write::GzEncoder;

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// One bad input: the arguments, and what the message must contain.
struct Case {
    what: &'static str,
    args: Vec<String>,
    expected: Vec<String>,
}

fn case(what: &'static str, args: &[&str], expected: &[&str]) -> Case {
    Case {
        what,
        args: args.iter().map(|a| a.to_string()).collect(),
        expected: expected.iter().map(|e| e.to_string()).collect(),
    }
}

/// Runs every case; fails listing all that exited 0, missed an expected part of
/// the message or panicked.
fn check(cases: Vec<Case>) {
    let mut failures = Vec::new();
    for c in &cases {
        let out = wgcnn(&c.args);
        let all = text(&out);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let message = stderr
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("")
            .to_string();
        eprintln!("{}: {message}", c.what);
        if out.status.success() {
            failures.push(format!("{}: exited 0\n{all}", c.what));
        }
        if all.contains("panicked") || all.contains("RUST_BACKTRACE") {
            failures.push(format!("{}: panicked\n{all}", c.what));
        }
        for e in &c.expected {
            if !stderr.contains(e.as_str()) {
                failures.push(format!("{}: {e:?} not in the message\n{all}", c.what));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

// ---- IDX files ----------------------------------------------------------

fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut bytes = magic.to_be_bytes().to_vec();
    for d in dims {
        bytes.extend(d.to_be_bytes());
    }
    bytes.extend(data);
    bytes
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// `n` learnable 28×28 images (a bright bar in the row of the label) and their
/// labels, as the contents of an IDX images and an IDX labels file.
fn mnist_bytes(n: usize) -> (Vec<u8>, Vec<u8>) {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n {
        let label = (i % 10) as u8;
        let mut image = [0u8; 784];
        let row = 2 + 2 * label as usize;
        image[row * 28 + 4..row * 28 + 24].fill(255);
        pixels.extend(image);
        labels.push(label);
    }
    (
        idx(0x0803, &[n as u32, 28, 28], &pixels),
        idx(0x0801, &[n as u32], &labels),
    )
}

/// A valid gzip MNIST directory of 20 training and 10 test images, with the
/// training images file replaced by `train_images` (written under `name`,
/// e.g. `train-images-idx3-ubyte.gz`) and the training labels by `train_labels`
/// when given.
fn mnist_dir(
    tag: &str,
    train_images: Option<(&str, Vec<u8>)>,
    train_labels: Option<Vec<u8>>,
) -> PathBuf {
    let dir = temp_dir("bad", tag);
    let (images, labels) = mnist_bytes(20);
    let (test_images, test_labels) = mnist_bytes(10);
    match train_images {
        Some((name, bytes)) => std::fs::write(dir.join(name), bytes).unwrap(),
        None => std::fs::write(dir.join("train-images-idx3-ubyte.gz"), gzip(&images)).unwrap(),
    }
    let labels = train_labels.unwrap_or(labels);
    std::fs::write(dir.join("train-labels-idx1-ubyte.gz"), gzip(&labels)).unwrap();
    std::fs::write(dir.join("t10k-images-idx3-ubyte.gz"), gzip(&test_images)).unwrap();
    std::fs::write(dir.join("t10k-labels-idx1-ubyte.gz"), gzip(&test_labels)).unwrap();
    dir
}

/// `train --dataset mnist --data-dir DIR --cpu` plus `extra`.
fn on_mnist(dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["train", "--dataset", "mnist", "--cpu"]
        .iter()
        .map(|a| a.to_string())
        .collect();
    args.extend(["--data-dir".into(), s(dir)]);
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

fn data_case(what: &'static str, dir: &Path, expected: &[&str]) -> Case {
    Case {
        what,
        args: on_mnist(dir, &[]),
        expected: expected.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn bad_idx_data_is_a_clear_error() {
    let (images, _) = mnist_bytes(20);
    let gz = gzip(&images);
    let file = "train-images-idx3-ubyte.gz";

    let truncated = mnist_dir(
        "truncated-gzip",
        Some((file, gz[..gz.len() / 2].to_vec())),
        None,
    );
    let mut flipped = gz.clone();
    for b in &mut flipped[20..40] {
        *b ^= 0x5a;
    }
    let corrupt = mnist_dir("corrupt-gzip", Some((file, flipped)), None);
    let raw = "train-images-idx3-ubyte";
    let magic = mnist_dir(
        "magic",
        Some((raw, idx(0x0903, &[20, 28, 28], &images[16..]))),
        None,
    );
    let dims = mnist_dir(
        "dims",
        Some((raw, idx(0x0802, &[20, 784], &images[16..]))),
        None,
    );
    let (_, labels19) = mnist_bytes(19);
    let count = mnist_dir("count", None, Some(labels19));
    let claims = mnist_dir(
        "claims",
        Some((raw, idx(0x0803, &[1000, 28, 28], &images[16..]))),
        None,
    );
    let absurd_gz = mnist_dir(
        "absurd-gzip",
        Some((
            file,
            gzip(&idx(0x0803, &[0x7fff_ffff, 28, 28], &images[16..])),
        )),
        None,
    );
    let absurd_raw = mnist_dir(
        "absurd-raw",
        Some((raw, idx(0x0803, &[u32::MAX, u32::MAX, u32::MAX], &[]))),
        None,
    );
    let mut labels = mnist_bytes(20).1;
    labels[8 + 5] = 10;
    let label_range = mnist_dir("labels", None, Some(labels));
    let empty = mnist_dir("empty", Some((raw, idx(0x0803, &[0, 28, 28], &[]))), None);
    let flat = mnist_dir("flat", Some((raw, idx(0x0803, &[20, 0, 28], &[]))), None);
    let partial = temp_dir("bad", "partial");
    std::fs::write(partial.join("train-images-idx3-ubyte.gz"), &gz).unwrap();
    let not_a_dir = partial.join("train-images-idx3-ubyte.gz");

    check(vec![
        case(
            "missing data directory",
            &[
                "train",
                "--dataset",
                "mnist",
                "--data-dir",
                "/nonexistent/wgcnn-data",
                "--cpu",
            ],
            &[
                "mnist not found",
                "/nonexistent/wgcnn-data",
                "train-images-idx3-ubyte",
            ],
        ),
        Case {
            what: "data directory missing files",
            args: on_mnist(&partial, &[]),
            expected: vec![
                "mnist not found".into(),
                s(&partial),
                "t10k-labels-idx1-ubyte".into(),
            ],
        },
        Case {
            what: "--data-dir is a file",
            args: on_mnist(&not_a_dir, &[]),
            expected: vec!["mnist not found".into(), s(&not_a_dir)],
        },
        data_case("truncated gzip", &truncated, &[file, "truncated"]),
        data_case("corrupt gzip", &corrupt, &[file, "gzip"]),
        data_case(
            "wrong IDX magic",
            &magic,
            &[raw, "bad IDX magic 0x00000903", "0x00000803"],
        ),
        data_case(
            "wrong IDX dimension count",
            &dims,
            &[raw, "wrong dimension count 2", "expected 3"],
        ),
        data_case(
            "image and label counts differ",
            &count,
            &["train-labels-idx1-ubyte.gz", "19 labels", "20 images"],
        ),
        data_case(
            "header claims more data than the file holds",
            &claims,
            &[raw, "truncated", "1000x28x28"],
        ),
        data_case(
            "absurd size in a gzip header",
            &absurd_gz,
            &[file, "2147483647x28x28", "more than"],
        ),
        data_case(
            "absurd size in a raw header",
            &absurd_raw,
            &[raw, "overflows"],
        ),
        data_case(
            "label outside the class count",
            &label_range,
            &[
                "train-labels-idx1-ubyte.gz",
                "label 10 of example 5",
                "below the class count 10",
            ],
        ),
        data_case("no images", &empty, &[raw, "no images"]),
        data_case("images of no pixels", &flat, &[raw, "0x28"]),
    ]);
}

// ---- CIFAR-10 -------------------------------------------------------------

const RECORD: usize = 3073;

/// A CIFAR-10 directory of 2 records per batch file, with `broken` (a file
/// name) replaced by `bytes`, or removed when `bytes` is `None`.
fn cifar_dir(tag: &str, broken: Option<(&str, Option<Vec<u8>>)>) -> PathBuf {
    let dir = temp_dir("bad", tag);
    let names = [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ];
    for (i, name) in names.iter().enumerate() {
        let mut bytes = vec![0u8; 2 * RECORD];
        bytes[0] = i as u8;
        bytes[RECORD] = (i + 1) as u8;
        bytes[1 + i * 100] = 255;
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    if let Some((name, bytes)) = broken {
        match bytes {
            Some(b) => std::fs::write(dir.join(name), b).unwrap(),
            None => std::fs::remove_file(dir.join(name)).unwrap(),
        }
    }
    dir
}

/// `train --dataset cifar10 --data-dir DIR --cpu` plus `extra`.
fn on_cifar(dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["train", "--dataset", "cifar10", "--cpu"]
        .iter()
        .map(|a| a.to_string())
        .collect();
    args.extend(["--data-dir".into(), s(dir)]);
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

fn models_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| temp_dir("bad", "models")).clone()
}

/// Writes a model file called `name` into the shared models directory.
fn model_file(name: &str, toml: &str) -> PathBuf {
    let path = models_dir().join(name);
    std::fs::write(&path, toml).unwrap();
    path
}

const FLAT_TAIL: &str =
    "[[layers]]\ntype = \"flatten\"\n[[layers]]\ntype = \"linear\"\nout_features = 10\n";

#[test]
fn bad_cifar_data_and_data_that_does_not_fit_the_model_are_clear_errors() {
    let mut long = vec![0u8; 2 * RECORD + 5];
    long[0] = 1;
    let wrong_length = cifar_dir("cifar-length", Some(("data_batch_3.bin", Some(long))));
    let empty = cifar_dir("cifar-empty", Some(("test_batch.bin", Some(Vec::new()))));
    let missing = cifar_dir("cifar-missing", Some(("test_batch.bin", None)));
    let mut bad_label = vec![0u8; 2 * RECORD];
    bad_label[RECORD] = 12;
    let label = cifar_dir("cifar-label", Some(("data_batch_2.bin", Some(bad_label))));
    let good = cifar_dir("cifar-good", None);
    let mnist = mnist_dir("fits", None, None);
    let grey32 = model_file("grey32.toml", &format!("input = [1, 32, 32]\n{FLAT_TAIL}"));
    let five = model_file(
        "five.toml",
        "input = [1, 28, 28]\n[[layers]]\ntype = \"flatten\"\n[[layers]]\ntype = \"linear\"\nout_features = 5\n",
    );

    check(vec![
        Case {
            what: "CIFAR file of the wrong length",
            args: on_cifar(&wrong_length, &[]),
            expected: vec![
                "data_batch_3.bin".into(),
                "not a multiple of 3073".into(),
                "5 bytes left over".into(),
            ],
        },
        Case {
            what: "empty CIFAR file",
            args: on_cifar(&empty, &[]),
            expected: vec!["test_batch.bin".into(), "empty file".into()],
        },
        Case {
            what: "CIFAR file missing",
            args: on_cifar(&missing, &[]),
            expected: vec!["cifar10 not found".into(), "test_batch.bin".into()],
        },
        Case {
            what: "CIFAR label outside the class count",
            args: on_cifar(&label, &[]),
            expected: vec!["data_batch_2.bin".into(), "label 12 of example 1".into()],
        },
        Case {
            what: "channels that do not fit the model",
            args: on_cifar(&good, &["--model", &s(&grey32)]),
            expected: vec!["[1, 32, 32]".into(), "[3, 32, 32]".into()],
        },
        Case {
            what: "image size that does not fit the model",
            args: on_mnist(&mnist, &["--model", &s(&grey32)]),
            expected: vec!["[1, 32, 32]".into(), "[1, 28, 28]".into()],
        },
        Case {
            what: "more classes than the model outputs",
            args: on_mnist(&mnist, &["--model", &s(&five)]),
            expected: vec!["10 classes".into(), "outputs 5".into()],
        },
    ]);
}

// ---- Model files ----------------------------------------------------------

#[test]
fn bad_model_files_are_clear_errors() {
    let layer = |body: &str| format!("input = [1, 28, 28]\n[[layers]]\n{body}\n{FLAT_TAIL}");
    let files: Vec<(&'static str, PathBuf, Vec<&str>)> = vec![
        (
            "unknown layer type",
            model_file(
                "unknown.toml",
                &layer("type = \"conv3d\"\nout_channels = 4\nkernel = 3"),
            ),
            vec!["conv3d"],
        ),
        (
            "unknown setting (typo)",
            model_file(
                "typo.toml",
                &layer("type = \"conv2d\"\nout_channels = 4\nkernal = 3"),
            ),
            vec!["kernal"],
        ),
        (
            "missing setting",
            model_file(
                "missing.toml",
                &layer("type = \"conv2d\"\nout_channels = 4"),
            ),
            vec!["kernel"],
        ),
        (
            "negative setting",
            model_file(
                "negative.toml",
                &layer("type = \"conv2d\"\nout_channels = 4\nkernel = -3"),
            ),
            vec!["-3", "non-negative"],
        ),
        (
            "setting of the wrong type",
            model_file(
                "type.toml",
                &layer("type = \"conv2d\"\nout_channels = \"four\"\nkernel = 3"),
            ),
            vec!["four"],
        ),
        (
            "zero channels",
            model_file(
                "zero.toml",
                &layer("type = \"conv2d\"\nout_channels = 0\nkernel = 3"),
            ),
            vec!["conv2d"],
        ),
        (
            "kernel larger than the image",
            model_file(
                "shape.toml",
                &layer("type = \"conv2d\"\nout_channels = 4\nkernel = 40"),
            ),
            vec!["layer 0", "conv2d", "[1, 1, 28, 28]"],
        ),
        (
            "dropout p = 1",
            model_file("p1.toml", &layer("type = \"dropout\"\np = 1.0")),
            vec!["dropout", "1"],
        ),
        (
            "dropout p < 0",
            model_file("pneg.toml", &layer("type = \"dropout\"\np = -0.2")),
            vec!["dropout", "-0.2"],
        ),
        (
            "no input",
            model_file("noinput.toml", "[[layers]]\ntype = \"relu\"\n"),
            vec!["input"],
        ),
        (
            "does not end in class scores",
            model_file(
                "noclasses.toml",
                "input = [1, 28, 28]\n[[layers]]\ntype = \"conv2d\"\nout_channels = 4\nkernel = 3\n",
            ),
            vec!["classes"],
        ),
        (
            "not TOML",
            model_file("garbage.toml", "this is { not toml"),
            vec![],
        ),
    ];
    let mut cases: Vec<Case> = files
        .into_iter()
        .map(|(what, path, expected)| {
            let mut expected: Vec<String> = expected.into_iter().map(String::from).collect();
            expected.push(path.file_name().unwrap().to_string_lossy().into_owned());
            Case {
                what,
                args: [
                    "train",
                    "--dataset",
                    "synthetic",
                    "--cpu",
                    "--epochs",
                    "1",
                    "--model",
                    &s(&path),
                ]
                .iter()
                .map(|a| a.to_string())
                .collect(),
                expected,
            }
        })
        .collect();
    cases.push(case(
        "model file that does not exist",
        &[
            "train",
            "--dataset",
            "synthetic",
            "--cpu",
            "--model",
            "/nonexistent/net.toml",
        ],
        &["/nonexistent/net.toml"],
    ));
    cases.push(case(
        "unknown built-in model",
        &[
            "train",
            "--dataset",
            "synthetic",
            "--cpu",
            "--model",
            "resnet50",
        ],
        &["resnet50", "fashion-cnn"],
    ));
    check(cases);
}

/// A model or batch larger than the machine's memory is refused before any
/// of it is allocated (where the system says how much is free: Linux).
#[test]
fn models_and_batches_too_large_for_memory_are_clear_errors() {
    if !cfg!(target_os = "linux") {
        return;
    }
    // 784 · 10⁹ weights: about 3 TB.
    let huge = model_file(
        "huge.toml",
        "input = [1, 28, 28]\n[[layers]]\ntype = \"flatten\"\n\
         [[layers]]\ntype = \"linear\"\nout_features = 1000000000\n\
         [[layers]]\ntype = \"linear\"\nout_features = 10\n",
    );
    // Few parameters, but 10⁵ channels of 28×28 per image (314 MB), the
    // pool's input.
    let wide = model_file(
        "wide.toml",
        "input = [1, 28, 28]\n[[layers]]\ntype = \"conv2d\"\nout_channels = 100000\nkernel = 1\n\
         [[layers]]\ntype = \"avgpool2d\"\nkernel = 28\n\
         [[layers]]\ntype = \"flatten\"\n[[layers]]\ntype = \"linear\"\nout_features = 10\n",
    );
    let train = |model: &Path, device: &[&str], batch: &str| -> Vec<String> {
        let mut args = vec!["train", "--dataset", "synthetic", "--epochs", "1"];
        args.extend(device);
        let model = s(model);
        args.extend(["--batch-size", batch, "--model", &model]);
        args.into_iter().map(String::from).collect()
    };
    let params = &[
        "795000000010 parameters need at least",
        "make its layers smaller",
    ];
    let mut cases = vec![
        Case {
            what: "parameters larger than memory, CPU path",
            args: train(&huge, &["--cpu"], "64"),
            expected: params.iter().map(|e| e.to_string()).collect(),
        },
        Case {
            what: "a batch larger than memory, CPU path",
            args: train(&wide, &["--cpu"], "4000"),
            expected: [
                "batch size 4000 needs at least",
                "layer 1 (avgpool2d)'s input and output",
                "or less",
            ]
            .iter()
            .map(|e| e.to_string())
            .collect(),
        },
    ];
    if common::gpu().is_some() {
        cases.push(Case {
            what: "a weight larger than any device's buffers",
            args: train(&huge, &["--device", "0"], "64"),
            expected: [
                "layer 1 (linear) has a weight of shape [1000000000, 784]",
                "per buffer, whatever the batch size",
            ]
            .iter()
            .map(|e| e.to_string())
            .collect(),
        });
    }
    check(cases);
}

// ---- Checkpoints ----------------------------------------------------------

/// A lenet5 checkpoint trained for one epoch on a tiny MNIST directory.
fn lenet5_checkpoint() -> (PathBuf, PathBuf) {
    let mnist = mnist_dir("ckpt-data", None, None);
    let path = mnist.join("lenet5.safetensors");
    let out = wgcnn(&on_mnist(
        &mnist,
        &[
            "--epochs",
            "1",
            "--model",
            "lenet5",
            "--batch-size",
            "10",
            "--checkpoint",
            &s(&path),
        ],
    ));
    assert!(out.status.success(), "{}", text(&out));
    (path, mnist)
}

#[test]
fn bad_checkpoints_are_clear_errors() {
    let (good, mnist) = lenet5_checkpoint();
    let bytes = std::fs::read(&good).unwrap();
    let dir = temp_dir("bad", "checkpoints");
    let write = |name: &str, b: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, b).unwrap();
        s(&p)
    };
    let text_file = write("text.safetensors", b"not a checkpoint at all");
    let truncated = write("truncated.safetensors", &bytes[..bytes.len() * 2 / 3]);
    let mut flipped = bytes.clone();
    let n = flipped.len();
    flipped[n - 100] ^= 0xff;
    let flipped = write("flipped.safetensors", &flipped);
    let empty = write("empty.safetensors", b"");
    let cifar = cifar_dir("ckpt-cifar", None);
    let good = s(&good);
    let image = write("picture.png", b"\x89PNG but not really");
    let eval = |c: &str| -> Vec<String> {
        ["eval", "--cpu", "--checkpoint", c, "--data-dir", &s(&mnist)]
            .iter()
            .map(|a| a.to_string())
            .collect()
    };
    let resume = |extra: &[&str]| -> Vec<String> {
        let mut a = on_mnist(
            &mnist,
            &["--epochs", "2", "--batch-size", "10", "--resume", &good],
        );
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    check(vec![
        Case {
            what: "checkpoint that does not exist",
            args: eval("/nonexistent/run.safetensors"),
            expected: vec!["/nonexistent/run.safetensors".into(), "cannot read".into()],
        },
        Case {
            what: "checkpoint that is not safetensors",
            args: eval(&text_file),
            expected: vec![text_file.clone(), "not a safetensors".into()],
        },
        Case {
            what: "empty checkpoint",
            args: eval(&empty),
            expected: vec![empty.clone(), "not a safetensors".into()],
        },
        Case {
            what: "truncated checkpoint",
            args: eval(&truncated),
            expected: vec![truncated.clone(), "truncated".into()],
        },
        Case {
            what: "corrupted checkpoint",
            args: eval(&flipped),
            expected: vec![flipped.clone(), "checksum".into()],
        },
        Case {
            what: "checkpoint of a model for other data (eval)",
            args: [
                "eval",
                "--cpu",
                "--checkpoint",
                &good,
                "--dataset",
                "cifar10",
                "--data-dir",
                &s(&cifar),
            ]
            .iter()
            .map(|a| a.to_string())
            .collect(),
            expected: vec!["[1, 28, 28]".into(), "[3, 32, 32]".into()],
        },
        Case {
            what: "resume with another --model",
            args: resume(&["--model", "convnet"]),
            expected: vec!["--model convnet".into(), good.clone()],
        },
        Case {
            what: "resume with another --seed",
            args: resume(&["--seed", "99"]),
            expected: vec!["--seed 99".into(), good.clone()],
        },
        Case {
            what: "resume with an optimizer of other state",
            args: resume(&["--optimizer", "sgd"]),
            expected: vec!["optimizer".into(), "adamw".into()],
        },
        Case {
            what: "resume on data of another shape",
            args: on_cifar(&cifar, &["--epochs", "2", "--resume", &good]),
            expected: vec!["[1, 28, 28]".into(), "[3, 32, 32]".into()],
        },
        Case {
            what: "resume from a missing checkpoint",
            args: on_mnist(&mnist, &["--resume", "/nonexistent/run.safetensors"]),
            expected: vec!["/nonexistent/run.safetensors".into()],
        },
        case(
            "predict on a file that is not an image",
            &["predict", "--cpu", "--checkpoint", &good, &image],
            &["picture.png"],
        ),
        Case {
            what: "predict an index past the end",
            args: [
                "predict",
                "--cpu",
                "--checkpoint",
                &good,
                "--data-dir",
                &s(&mnist),
                "--index",
                "100000",
            ]
            .iter()
            .map(|a| a.to_string())
            .collect(),
            expected: vec!["--index 100000".into()],
        },
        case(
            "predict with nothing to predict",
            &["predict", "--cpu", "--checkpoint", &good],
            &["--index"],
        ),
    ]);
}

// ---- Flags ------------------------------------------------------------------

#[test]
fn flags_out_of_range_are_clear_errors() {
    let train = |extra: &[&str]| -> Vec<String> {
        ["train", "--cpu", "--model", "mlp"]
            .iter()
            .chain(extra)
            .map(|a| a.to_string())
            .collect()
    };
    let flag = |what: &'static str, extra: &[&str], expected: &[&str]| Case {
        what,
        args: train(&[&["--dataset", "synthetic"], extra].concat()),
        expected: expected.iter().map(|e| e.to_string()).collect(),
    };
    check(vec![
        flag("batch size 0", &["--batch-size", "0"], &["--batch-size"]),
        flag(
            "negative batch size",
            &["--batch-size=-3"],
            &["--batch-size", "-3"],
        ),
        flag("negative learning rate", &["--lr=-0.1"], &["--lr -0.1"]),
        flag("zero learning rate", &["--lr", "0"], &["--lr 0"]),
        flag("NaN learning rate", &["--lr", "NaN"], &["--lr NaN"]),
        flag(
            "validation 1.5",
            &["--validation", "1.5"],
            &["--validation 1.5"],
        ),
        flag(
            "negative validation",
            &["--validation=-0.1"],
            &["--validation -0.1"],
        ),
        flag("epochs 0", &["--epochs", "0"], &["--epochs 0"]),
        flag(
            "stop after 0 epochs",
            &["--stop-after", "0"],
            &["--stop-after 0"],
        ),
        flag(
            "negative weight decay",
            &["--weight-decay=-1"],
            &["--weight-decay -1"],
        ),
        flag("negative warm-up", &["--warmup=-1"], &["--warmup -1"]),
        flag(
            "step schedule every 0 epochs",
            &["--step-epochs", "0"],
            &["--step-epochs"],
        ),
        flag("decay factor 0", &["--gamma", "0"], &["--gamma 0"]),
        flag(
            "unknown optimizer",
            &["--optimizer", "adamax"],
            &["adamax", "adamw"],
        ),
        flag(
            "unknown schedule",
            &["--schedule", "linear"],
            &["--schedule", "linear"],
        ),
        // Refused before training, not after its first epoch.
        flag(
            "checkpoint in a directory that does not exist",
            &["--checkpoint", "/nonexistent-dir/c.safetensors"],
            &[
                "/nonexistent-dir/c.safetensors",
                "cannot write the checkpoint here",
            ],
        ),
        flag(
            "checkpoint that is a directory",
            &["--checkpoint", "/tmp"],
            &["/tmp", "it is a directory"],
        ),
        flag(
            "picture in a directory that does not exist",
            &["--plot", "/nonexistent-dir/p.png"],
            &["/nonexistent-dir/p.png", "cannot write the picture here"],
        ),
        Case {
            what: "unknown data set",
            args: train(&["--dataset", "imagenet"]),
            expected: vec!["imagenet".into(), "fashion-mnist".into()],
        },
        case(
            "eval batch size 0",
            &[
                "eval",
                "--cpu",
                "--checkpoint",
                "x.safetensors",
                "--batch-size",
                "0",
            ],
            &["--batch-size"],
        ),
        case(
            "adapter that does not exist",
            &["train", "--dataset", "synthetic", "--device", "99"],
            &["GPU"],
        ),
    ]);
}
