//! Pictures: training curves and confusion matrices to PNG and SVG
//! (`src/plot.rs`, `wgcnn plot`).

mod common;

use common::cli::write_mnist;

use std::path::{Path, PathBuf};
use std::process::Command;

use wgcnn::plot::{plot_confusion, plot_metrics, read_metrics};
use wgcnn::train::EvaluatedOn;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgcnn-plot-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A metrics file as `wgcnn train --metrics` writes it, for `epochs` epochs.
fn write_metrics(path: &Path, epochs: usize) {
    let mut text = String::new();
    for e in 1..=epochs {
        let t = e as f64;
        text += &format!(
            "{{\"epoch\":{e},\"train_loss\":{},\"train_accuracy\":{},\"test_loss\":{},\
             \"test_accuracy\":{},\"images_per_second\":380.5,\"seconds\":12.0,\"lr\":0.002}}\n",
            0.9 / t + 0.1,
            0.95 - 0.4 / t,
            0.8 / t + 0.2,
            0.92 - 0.35 / t,
        );
    }
    std::fs::write(path, text).unwrap();
}

fn assert_png(path: &Path, size: (u32, u32)) {
    let bytes = std::fs::read(path).unwrap();
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        path.display()
    );
    assert!(
        bytes.len() > 10_000,
        "{} is only {} bytes",
        path.display(),
        bytes.len()
    );
    let image = image::load_from_memory(&bytes).unwrap();
    assert_eq!((image.width(), image.height()), size);
    // Not blank: many distinct colours (curves, text, grid).
    let rgb = image.to_rgb8();
    let mut colours: Vec<[u8; 3]> = rgb.pixels().map(|p| p.0).collect();
    colours.sort_unstable();
    colours.dedup();
    assert!(colours.len() > 20, "only {} colours", colours.len());
}

#[test]
fn metrics_plot_png_and_svg() {
    let dir = temp_dir("metrics");
    let metrics = dir.join("run.jsonl");
    write_metrics(&metrics, 12);
    let rows = read_metrics(&metrics).unwrap();
    assert_eq!(rows.len(), 12);
    assert_eq!(rows[3].epoch, 4);

    let png = dir.join("run.png");
    plot_metrics(&rows, &png).unwrap();
    assert_png(&png, (1400, 560));

    let svg = dir.join("run.svg");
    plot_metrics(&rows, &svg).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.contains("<svg"),
        "not an SVG: {}",
        &text[..text.len().min(200)]
    );
    for label in ["epoch", "accuracy (%)", "train", "test"] {
        assert!(text.contains(label), "the SVG lacks the label {label:?}");
    }
    // Atomic writes leave no temporary files behind.
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".tmp-")), "{names:?}");
}

#[test]
fn one_epoch_plots() {
    let dir = temp_dir("one");
    let metrics = dir.join("one.jsonl");
    write_metrics(&metrics, 1);
    let png = dir.join("one.png");
    plot_metrics(&read_metrics(&metrics).unwrap(), &png).unwrap();
    assert_png(&png, (1400, 560));
}

#[test]
fn malformed_metrics_name_file_and_line() {
    let dir = temp_dir("bad");
    let metrics = dir.join("bad.jsonl");
    write_metrics(&metrics, 3);
    let mut text = std::fs::read_to_string(&metrics).unwrap();
    text += "\n{\"epoch\":4,\"train_loss\":\"oops\"}\n";
    std::fs::write(&metrics, text).unwrap();
    let message = read_metrics(&metrics).unwrap_err().to_string();
    assert!(message.contains("bad.jsonl"), "{message}");
    assert!(message.contains("line 5"), "{message}");

    std::fs::write(&metrics, "not json\n").unwrap();
    let message = read_metrics(&metrics).unwrap_err().to_string();
    assert!(message.contains("line 1"), "{message}");

    let missing = read_metrics(&dir.join("missing.jsonl"))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("missing.jsonl"), "{missing}");
}

#[test]
fn appended_runs_read_as_one_history() {
    let dir = temp_dir("appended");
    let metrics = dir.join("m.jsonl");
    write_metrics(&metrics, 4);
    let first = std::fs::read_to_string(&metrics).unwrap();
    // A second run repeats epochs 3 and 4 and goes on to 5.
    let lines: Vec<&str> = first.lines().collect();
    let again = format!(
        "{}\n{}\n{}\n",
        lines[2],
        lines[3],
        lines[3].replace("\"epoch\":4", "\"epoch\":5")
    );
    std::fs::write(&metrics, first.clone() + &again).unwrap();
    let epochs: Vec<usize> = read_metrics(&metrics)
        .unwrap()
        .iter()
        .map(|r| r.epoch)
        .collect();
    assert_eq!(epochs, [1, 2, 3, 4, 5]);
}

/// Records of a run with `--validation` say so (`evaluated_on`), and the
/// plot names that curve and the best accuracy after the validation split;
/// records without the field (older files) are test figures.
#[test]
fn validation_figures_are_labelled_validation() {
    let dir = temp_dir("validation");
    let metrics = dir.join("m.jsonl");
    write_metrics(&metrics, 3);
    let svg_of = |rows: &[wgcnn::plot::MetricsRow]| {
        let svg = dir.join("m.svg");
        plot_metrics(rows, &svg).unwrap();
        std::fs::read_to_string(&svg).unwrap()
    };
    let rows = read_metrics(&metrics).unwrap();
    assert!(rows.iter().all(|r| r.evaluated_on == EvaluatedOn::Test));
    let text = svg_of(&rows);
    assert!(text.contains("best test accuracy"), "{text}");
    assert!(!text.contains("validation"), "{text}");

    let tagged = std::fs::read_to_string(&metrics)
        .unwrap()
        .replace("\"lr\"", "\"evaluated_on\":\"validation\",\"lr\"");
    std::fs::write(&metrics, tagged).unwrap();
    let rows = read_metrics(&metrics).unwrap();
    assert!(
        rows.iter()
            .all(|r| r.evaluated_on == EvaluatedOn::Validation)
    );
    let text = svg_of(&rows);
    assert!(text.contains("best validation accuracy"), "{text}");
    // The legend of each panel.
    assert_eq!(text.matches(">\nvalidation\n</text>").count(), 2, "{text}");

    // Runs that differ (a file appended by both) are named neither.
    let mut mixed = rows.clone();
    mixed[0].evaluated_on = EvaluatedOn::Test;
    assert!(svg_of(&mixed).contains("best evaluation accuracy"));
}

#[test]
fn unsupported_extension_is_refused() {
    let dir = temp_dir("ext");
    let metrics = dir.join("m.jsonl");
    write_metrics(&metrics, 2);
    let rows = read_metrics(&metrics).unwrap();
    let message = plot_metrics(&rows, &dir.join("m.gif"))
        .unwrap_err()
        .to_string();
    assert!(message.contains(".png or .svg"), "{message}");
    assert!(plot_metrics(&[], &dir.join("m.png")).is_err());
}

#[test]
fn confusion_matrix_png_and_svg() {
    let dir = temp_dir("confusion");
    let names: Vec<String> = [
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
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let matrix: Vec<Vec<u64>> = (0..10)
        .map(|i| {
            (0..10)
                .map(|j| {
                    if i == j {
                        900 - 10 * i as u64
                    } else {
                        ((i * 7 + j * 3) % 23) as u64
                    }
                })
                .collect()
        })
        .collect();
    let png = dir.join("confusion.png");
    plot_confusion(&matrix, &names, &png).unwrap();
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
    let image = image::load_from_memory(&bytes).unwrap();
    assert!(image.width() >= 720 && image.height() >= 720);

    let svg = dir.join("confusion.svg");
    plot_confusion(&matrix, &names, &svg).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("<svg") && text.contains("Ankle boot") && text.contains("900"));

    // Missing names fall back to class indices; ragged matrices are refused.
    plot_confusion(&[vec![1, 2], vec![3, 4]], &[], &dir.join("two.png")).unwrap();
    assert!(plot_confusion(&[vec![1, 2], vec![3]], &[], &dir.join("bad.png")).is_err());
}

#[test]
fn plot_command_writes_next_to_the_metrics() {
    let dir = temp_dir("cli");
    let metrics = dir.join("fm.jsonl");
    write_metrics(&metrics, 5);
    let out = Command::new(env!("CARGO_BIN_EXE_wgcnn"))
        .arg("plot")
        .arg(&metrics)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_png(&dir.join("fm.png"), (1400, 560));

    let svg = dir.join("curves.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_wgcnn"))
        .args(["plot", "--output"])
        .arg(&svg)
        .arg(&metrics)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));

    std::fs::write(&metrics, "{\"epoch\":1}\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wgcnn"))
        .arg("plot")
        .arg(&metrics)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("fm.jsonl") && stderr.contains("line 1"),
        "{stderr}"
    );
}

#[test]
fn train_plot_and_eval_confusion_end_to_end() {
    let dir = temp_dir("train");
    write_mnist(&dir, "train", 200);
    write_mnist(&dir, "t10k", 50);
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_wgcnn"))
            .args(args)
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .output()
            .unwrap()
    };
    let d = dir.to_str().unwrap();
    let ckpt = dir.join("m.safetensors");
    let plot = dir.join("curves.svg");
    let common = [
        "train",
        "--dataset",
        "mnist",
        "--data-dir",
        d,
        "--model",
        "lenet5",
        "--batch-size",
        "16",
        "--cpu",
    ];

    // A bad picture name is refused before training.
    let out = run(&[&common[..], &["--epochs", "1", "--plot", "x.gif"]].concat());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(".png or .svg"));

    let out = run(&[
        &common[..],
        &[
            "--epochs",
            "2",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--plot",
            plot.to_str().unwrap(),
        ],
    ]
    .concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.contains("<svg") && svg.contains("Training: 2 epochs"),
        "{}",
        &svg[..svg.len().min(300)]
    );

    // In installments with --metrics: the picture covers both.
    let metrics = dir.join("m.jsonl");
    let png = dir.join("installments.png");
    let ckpt2 = dir.join("m2.safetensors");
    let installment = |extra: &[&str]| {
        let out = run(&[
            &common[..],
            &[
                "--epochs",
                "2",
                "--checkpoint",
                ckpt2.to_str().unwrap(),
                "--metrics",
                metrics.to_str().unwrap(),
                "--plot",
                png.to_str().unwrap(),
            ],
            extra,
        ]
        .concat());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    installment(&["--stop-after", "1"]);
    assert_eq!(read_metrics(&metrics).unwrap().len(), 1);
    installment(&["--resume", ckpt2.to_str().unwrap()]);
    assert_eq!(read_metrics(&metrics).unwrap().len(), 2);
    assert_png(&png, (1400, 560));

    let confusion = dir.join("confusion.png");
    let out = run(&[
        "eval",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--data-dir",
        d,
        "--cpu",
        "--confusion",
        confusion.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let image = image::open(&confusion).unwrap();
    assert!(image.width() > 500 && image.height() > 500);
}
