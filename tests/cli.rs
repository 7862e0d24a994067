//! The `wgcnn` binary end to end: MNIST-format data from any directory,
//! metrics, checkpoints, eval, predict, and clear errors for bad flags.

mod common;

use common::cli::{temp_dir, text, wgcnn, write_mnist};

#[test]
fn mnist_from_a_directory_trains_evaluates_and_predicts() {
    let dir = temp_dir("cli", "mnist");
    write_mnist(&dir, "train", 200);
    write_mnist(&dir, "t10k", 50);
    let d = dir.to_str().unwrap();
    let ckpt = dir.join("model.safetensors");
    let metrics = dir.join("metrics.jsonl");
    let out = wgcnn(&[
        "train",
        "--dataset",
        "mnist",
        "--data-dir",
        d,
        "--model",
        "lenet5",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--cpu",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--metrics",
        metrics.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for key in [
        "epoch",
        "train_loss",
        "train_accuracy",
        "test_loss",
        "test_accuracy",
        "images_per_second",
        "seconds",
    ] {
        assert!(
            lines[1].get(key).is_some(),
            "metrics lack {key}: {}",
            lines[1]
        );
    }
    let accuracy = lines[1]["test_accuracy"].as_f64().unwrap();
    assert!(
        (0.0..=1.0).contains(&accuracy) && accuracy > 0.5,
        "accuracy {accuracy}"
    );

    let out = wgcnn(&[
        "eval",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--data-dir",
        d,
        "--cpu",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("accuracy:") && text(&out).contains("confusion matrix"),
        "{}",
        text(&out)
    );
    // A batch size far over the set (and over memory, were it drawn) is a
    // batch of the whole set.
    let out = wgcnn(&[
        "eval",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--data-dir",
        d,
        "--batch-size",
        "100000000",
        "--cpu",
    ]);
    assert!(out.status.success(), "{}", text(&out));

    let out = wgcnn(&[
        "predict",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--data-dir",
        d,
        "--index",
        "3",
        "--cpu",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("#3 (label 3)"), "{}", text(&out));

    // Resume continues from epoch 2 up to 3.
    let out = wgcnn(&[
        "train",
        "--dataset",
        "mnist",
        "--data-dir",
        d,
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--cpu",
        "--resume",
        ckpt.to_str().unwrap(),
        "--checkpoint",
        ckpt.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("resuming from epoch 2") && text(&out).contains("epoch 3/3"),
        "{}",
        text(&out)
    );
}

/// A resumed run takes the course settings it was started with from the
/// checkpoint (epochs, batch size, schedule, warm-up, augmentation,
/// validation split) and ends bit for bit where the uninterrupted run does.
#[test]
fn resume_continues_with_the_checkpoints_settings() {
    let dir = temp_dir("cli", "resume-settings");
    write_mnist(&dir, "train", 120);
    write_mnist(&dir, "t10k", 30);
    let d = dir.to_str().unwrap();
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let run = |extra: &[&str], checkpoint: &str| {
        let mut args = vec![
            "train",
            "--dataset",
            "mnist",
            "--data-dir",
            d,
            "--model",
            "convnet",
            "--cpu",
            "--checkpoint",
            checkpoint,
        ];
        args.extend(extra);
        let out = wgcnn(&args);
        assert!(out.status.success(), "{}", text(&out));
        text(&out)
    };
    let settings = [
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--schedule",
        "step",
        "--step-epochs",
        "1",
        "--gamma",
        "0.5",
        "--warmup",
        "0.5",
        "--augment",
        "--validation",
        "0.25",
        "--seed",
        "5",
    ];
    let whole = path("whole.safetensors");
    let first = run(&settings, &whole);
    // The held-out quarter is what each epoch evaluates, and is named so.
    for said in [
        "90 training / 30 validation images",
        "| validation loss",
        "final validation accuracy",
    ] {
        assert!(first.contains(said), "no {said:?} in {first}");
    }
    assert!(!first.contains("test"), "{first}");
    let parts = path("parts.safetensors");
    run(&[&settings[..], &["--stop-after", "1"]].concat(), &parts);
    let resumed = run(&["--resume", &parts], &parts);
    assert!(
        resumed.contains(
            "with its settings: --epochs 3 --batch-size 16 --schedule step --step-epochs 1 \
             --gamma 0.5 --warmup 0.5 --augment --validation 0.25"
        ) && resumed.contains("epoch 3/3"),
        "{resumed}"
    );
    let load = |p: &str| wgcnn::checkpoint::Checkpoint::load(std::path::Path::new(p)).unwrap();
    let (a, b) = (load(&whole), load(&parts));
    assert_eq!(a.state.step, b.state.step);
    assert_eq!(a.state.settings, b.state.settings);
    for ((name, x), (_, y)) in a.model.iter().zip(&b.model) {
        assert_eq!(
            x.data, y.data,
            "{name} differs from the uninterrupted run's"
        );
    }
    // A flag given on resume wins over the stored setting (and is recorded).
    let out = run(
        &["--resume", &parts, "--epochs", "4", "--augment", "false"],
        &parts,
    );
    assert!(out.contains("epoch 4/4"), "{out}");
    let settings = load(&parts).state.settings.unwrap();
    assert_eq!((settings.epochs, settings.augment), (4, false));
}

#[test]
fn bad_flags_and_files_are_clear_errors() {
    let dir = temp_dir("cli", "bad");
    let missing = dir.join("none.safetensors");
    let cases: [(&[&str], &str); 11] = [
        (&["bench", "kernels", "--cpu"], "no --cpu form"),
        (&["bench", "peak", "--cpu"], "no --cpu form"),
        (&["bench", "gemm", "--cpu", "--shape", "3x0x5"], "`3x0x5`"),
        (
            &["bench", "gemm", "--cpu", "--kernel", "gemm_9x9"],
            "gemm_tiled",
        ),
        (
            &["bench", "train", "--cpu", "--kernel", "gemm_8x16"],
            "--kernel picks the GPU kernel of `bench gemm`",
        ),
        (
            &[
                "train",
                "--dataset",
                "synthetic",
                "--epochs",
                "18446744073709551615",
                "--cpu",
            ],
            "--epochs 18446744073709551615",
        ),
        (
            &[
                "train",
                "--dataset",
                "synthetic",
                "--batch-size",
                "0",
                "--cpu",
            ],
            "--batch-size",
        ),
        (
            &["train", "--dataset", "synthetic", "--lr=-1", "--cpu"],
            "--lr",
        ),
        (
            &[
                "train",
                "--dataset",
                "synthetic",
                "--optimizer",
                "adamax",
                "--cpu",
            ],
            "adamax",
        ),
        (
            &[
                "train",
                "--dataset",
                "mnist",
                "--data-dir",
                dir.to_str().unwrap(),
                "--cpu",
            ],
            "mnist not found",
        ),
        (
            &["eval", "--checkpoint", missing.to_str().unwrap(), "--cpu"],
            "none.safetensors",
        ),
    ];
    for (args, expected) in cases {
        let out = wgcnn(args);
        let all = text(&out);
        assert!(!out.status.success(), "{args:?} should fail: {all}");
        assert!(
            all.contains(expected),
            "{args:?}: expected {expected:?} in {all}"
        );
        assert!(!all.contains("panicked"), "{args:?} panicked: {all}");
    }
}

#[test]
fn a_model_file_is_accepted_and_checked_against_the_data() {
    let dir = temp_dir("cli", "model");
    let model = dir.join("tiny.toml");
    std::fs::write(&model, "input = [3, 32, 32]\n[[layers]]\ntype = \"flatten\"\n[[layers]]\ntype = \"linear\"\nout_features = 10\n").unwrap();
    let out = wgcnn(&[
        "train",
        "--dataset",
        "synthetic",
        "--model",
        model.to_str().unwrap(),
        "--epochs",
        "1",
        "--cpu",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("[3, 32, 32]") && text(&out).contains("[1, 28, 28]"),
        "{}",
        text(&out)
    );
}

/// A warm-up as long as the run trains, with a warning that the learning
/// rate climbs for the whole of it; a shorter one trains without.
#[test]
fn a_warm_up_as_long_as_the_run_is_warned_of() {
    let run = |warmup: &str| {
        let out = wgcnn(&[
            "train",
            "--dataset",
            "synthetic",
            "--model",
            "mlp",
            "--epochs",
            "1",
            "--warmup",
            warmup,
            "--cpu",
        ]);
        assert!(out.status.success(), "{}", text(&out));
        text(&out)
    };
    let long = run("1");
    assert!(
        long.contains("warning: --warmup 1 takes the whole 1-epoch run"),
        "{long}"
    );
    assert!(!run("0.5").contains("warning: --warmup"));
}

/// `bench gemm --shape` times exactly the shapes asked for, one JSON line each.
#[test]
fn bench_gemm_times_the_shapes_asked_for() {
    let out = wgcnn(&[
        "bench", "gemm", "--cpu", "--shape", "3x5x7", "--shape", "64x1x9", "--json", "--runs", "1",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let shapes: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            assert_eq!(record["kind"], "gemm");
            assert!(record["gflops"].as_f64().is_some_and(|g| g > 0.0), "{line}");
            record["shape"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(shapes, ["3x5x7", "64x1x9"]);
}

/// `bench gemm --kernel` times every product with the kernel asked for: no
/// tuning race runs (none is saved), and its JSON lines name the kernel.
/// Without it, the same product is raced and the winner saved. On a GPU the
/// adapter's multiply-add peak comes first, and each product's share of it.
#[test]
fn bench_gemm_runs_the_kernel_asked_for_instead_of_tuning() {
    if common::gpu().is_none() {
        return;
    }
    // Big enough for two candidate kernels on any adapter.
    let shape = "1024x1024x256";
    let bench = |cache: &std::path::Path, kernel: Option<&str>| {
        let mut args = vec!["bench", "gemm", "--shape", shape, "--json", "--runs", "1"];
        args.extend(kernel.map(|k| ["--kernel", k]).into_iter().flatten());
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wgcnn"))
            .args(&args)
            .env("XDG_CACHE_HOME", cache)
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .env_remove("WGCNN_GEMM_TUNE")
            .output()
            .expect("run wgcnn");
        assert!(out.status.success(), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let records: Vec<serde_json::Value> = stdout
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON line"))
            .collect();
        let [peak, record] = &records[..] else {
            panic!("a peak line and a gemm line wanted:\n{stdout}");
        };
        assert_eq!(peak["kind"], "peak", "{stdout}");
        let peak = peak["gflops"].as_f64().expect("the peak in GFLOP/s");
        assert_eq!(record["shape"], shape, "{stdout}");
        let share = record["percent_of_peak"]
            .as_f64()
            .expect("a share of the peak");
        let gflops = record["gflops"].as_f64().unwrap();
        assert!(
            (share - 100.0 * gflops / peak).abs() < 1e-9 * share,
            "{stdout}"
        );
        record["kernel"].clone()
    };
    let tuned = |cache: &std::path::Path| {
        cache
            .join("wgcnn")
            .read_dir()
            .is_ok_and(|mut d| d.next().is_some())
    };
    for kernel in ["gemm_32x16", "gemm_tiled"] {
        let cache = temp_dir("cli", &format!("forced-{kernel}"));
        assert_eq!(bench(&cache, Some(kernel)), kernel);
        assert!(!tuned(&cache), "--kernel {kernel} ran a tuning race");
    }
    let cache = temp_dir("cli", "tuned");
    assert!(bench(&cache, None).is_null());
    assert!(tuned(&cache), "no tuning race without --kernel");
}

/// A reader that stops early (`wgcnn bench | head`) ends wgcnn quietly by
/// SIGPIPE, like other command-line tools, not with a panic.
#[cfg(unix)]
#[test]
fn a_closed_output_pipe_ends_the_run_without_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_wgcnn"))
        .args([
            "bench", "gemm", "--cpu", "--size", "64", "--size", "128", "--runs", "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run wgcnn");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait for wgcnn");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}", out.status);
}

/// `WGCNN_LIMITS` takes `webgpu` or `adapter`; anything else is an error
/// naming it, before any GPU work.
#[test]
fn an_unknown_limits_choice_is_a_clear_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wgcnn"))
        .args(["check", "--op", "relu"])
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .env("WGCNN_LIMITS", "webgpu2")
        .output()
        .expect("run wgcnn");
    assert!(!out.status.success());
    let said = text(&out);
    let required = std::env::var("WGCNN_REQUIRE_GPU").is_ok_and(|v| v == "1");
    if !required && said.contains("no GPU adapter found") {
        return; // No adapter to open: the limits are never looked at.
    }
    assert!(
        said.contains("WGCNN_LIMITS=webgpu2: expected `webgpu`"),
        "{said}"
    );
}

/// `wgcnn devices` lists the adapters and names the one used without
/// `--device`, saying where training passes over it for the CPU path (a
/// software renderer, as lavapipe is).
#[test]
fn devices_names_the_adapter_used_without_a_device_flag() {
    let out = wgcnn(&["devices"]);
    let said = text(&out);
    let required = std::env::var("WGCNN_REQUIRE_GPU").is_ok_and(|v| v == "1");
    if !out.status.success() && !required && said.contains("no GPU adapter found") {
        return;
    }
    assert!(out.status.success(), "{said}");
    let rows: Vec<&str> = said
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|w| w.parse::<usize>().is_ok())
        })
        .collect();
    assert!(!rows.is_empty(), "{said}");
    let last = said.lines().last().unwrap_or_default();
    let index = last
        .strip_prefix("without --device: ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no default named: {said}"));
    let row = rows
        .iter()
        .find(|r| r.split_whitespace().next() == Some(index))
        .unwrap_or_else(|| panic!("adapter {index} is not listed: {said}"));
    let software = row.split_whitespace().any(|w| w == "Cpu");
    assert_eq!(
        last.contains("use the CPU path instead"),
        software,
        "{said}"
    );
}
