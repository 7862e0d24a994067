//! Failures during training are errors that say what to do, never panics: a
//! diverging loss stops with its epoch, batch and step, keeps the last good
//! checkpoint and suggests a lower learning rate; a lost GPU device is reported
//! by `take_error`.

mod common;

use common::cli::{temp_dir, text, wgcnn};

use std::path::Path;

use wgcnn::checkpoint::Checkpoint;
use wgcnn::gpu::GpuBackend;

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn divergence_stops_with_its_position_keeps_the_last_good_checkpoint_and_suggests_a_lower_lr() {
    let dir = temp_dir("robust", "diverge");
    let checkpoint = dir.join("run.safetensors");
    let ck = checkpoint.to_str().unwrap();
    let base = [
        "train",
        "--dataset",
        "synthetic",
        "--model",
        "mlp",
        "--cpu",
        "--optimizer",
        "sgd",
        "--checkpoint",
        ck,
    ];
    let out = wgcnn(&[&base[..], &["--lr", "0.01", "--epochs", "1"]].concat());
    assert!(out.status.success(), "{}", text(&out));
    let good = std::fs::read(&checkpoint).unwrap();

    // Resume with a learning rate a million times too large: epoch 2 diverges.
    let out = wgcnn(&[&base[..], &["--lr", "1e6", "--epochs", "2", "--resume", ck]].concat());
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(!all.contains("panicked"), "{all}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for part in [
        "training stopped: the loss became",
        "at epoch 2, batch ",
        "(step ",
        &format!("the last good checkpoint is kept at {ck}"),
        "try a lower --lr",
    ] {
        assert!(stderr.contains(part), "{part:?} in {stderr}");
    }
    assert_eq!(
        std::fs::read(&checkpoint).unwrap(),
        good,
        "the checkpoint is untouched"
    );
    assert_eq!(Checkpoint::load(&checkpoint).unwrap().state.epoch, 1);
    assert_eq!(files_in(&dir), ["run.safetensors"], "no stray files");

    // Without a checkpoint the message says nothing of one.
    let out = wgcnn(&[
        "train",
        "--dataset",
        "synthetic",
        "--model",
        "lenet5",
        "--cpu",
        "--optimizer",
        "sgd",
        "--lr",
        "1e6",
        "--epochs",
        "1",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr.contains("the loss became") && stderr.contains("at epoch 1, batch "),
        "{stderr}"
    );
    assert!(
        stderr.contains("try a lower --lr") && !stderr.contains("checkpoint"),
        "{stderr}"
    );
}

#[test]
fn a_lost_gpu_device_is_reported_by_take_error() {
    // A device of its own, since this one is destroyed.
    let gpu = match GpuBackend::new(None) {
        Ok(gpu) => gpu,
        Err(e) => {
            assert!(
                !std::env::var("WGCNN_REQUIRE_GPU").is_ok_and(|v| v == "1"),
                "WGCNN_REQUIRE_GPU=1 but no GPU: {e}"
            );
            eprintln!("\n!!! SKIPPED: no GPU adapter ({e}) !!!\n");
            return;
        }
    };
    gpu.ctx.take_error().expect("a fresh device has no error");
    gpu.ctx.device.destroy();
    let _ = gpu.ctx.device.poll(wgpu::PollType::wait_indefinitely());
    let err = gpu
        .ctx
        .take_error()
        .expect_err("the loss is reported")
        .to_string();
    assert!(err.contains("the GPU device was lost"), "{err}");
}

#[test]
fn an_invalid_submission_is_reported_by_take_error_not_a_panic() {
    use wgcnn::backend::Backend;
    use wgcnn::geometry::Activation;
    use wgcnn::tensor::HostTensor;
    if common::gpu().is_none() {
        return;
    }
    // A device of its own: its submissions are made invalid.
    let gpu = GpuBackend::new(None).expect("a GPU adapter");
    // One binding over the device's limit fails validation, and with it the
    // submission that carries it, so waiting on that submission fails too
    // (the buffer is the limit's size: 128 MiB on lavapipe, a few GiB on a
    // GPU).
    let limit = gpu.ctx.limits.max_storage_buffer_binding_size;
    let len = (limit / 4 + 4) as usize;
    let x = gpu.upload(&HostTensor::new(&[len], vec![1.0; len]));
    let y = gpu.activation_forward(Activation::Relu, &x);
    gpu.end_step();
    let _ = gpu.activation_forward(Activation::Relu, &y);
    gpu.end_step();
    let values = gpu.download(&y);
    assert_eq!(values.len(), len);
    let err = gpu
        .take_error()
        .expect_err("the validation error is reported")
        .to_string();
    assert!(err.contains("Validation"), "{err}");
    // The first error is the one reported; the failed waits it caused are
    // not piled on it.
    assert!(!err.contains("waiting for the GPU failed"), "{err}");
}

#[test]
fn a_device_lost_mid_run_is_reported_by_take_error_not_a_panic() {
    use wgcnn::backend::Backend;
    use wgcnn::geometry::Activation;
    use wgcnn::tensor::HostTensor;
    if common::gpu().is_none() {
        return;
    }
    // A device of its own, since this one is destroyed.
    let gpu = GpuBackend::new(None).expect("a GPU adapter");
    let x = gpu.upload(&HostTensor::new(&[1024], vec![1.0; 1024]));
    let y = gpu.activation_forward(Activation::Relu, &x);
    gpu.end_step();
    gpu.ctx.device.destroy();
    let _ = gpu.activation_forward(Activation::Relu, &y);
    gpu.end_step();
    // The read-back cannot map: zeros, and the loss reported.
    assert_eq!(gpu.download(&y).data, vec![0.0; 1024]);
    let err = gpu
        .take_error()
        .expect_err("the loss is reported")
        .to_string();
    assert!(err.contains("the GPU device was lost"), "{err}");
}
