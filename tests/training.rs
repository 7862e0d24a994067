//! Training end to end: GPU and CPU paths agree step by step, the loss falls,
//! checkpoints round-trip exactly and refuse damage.

mod common;

use std::path::PathBuf;

use wgcnn::backend::Backend;
use wgcnn::checkpoint::Checkpoint;
use wgcnn::cpu::CpuBackend;
use wgcnn::data::{Dataset, Normalization, epoch_order, make_batch, synthetic};
use wgcnn::nn::{LayerSpec, Mode, ModelSpec, Sequential, builtin, init_parameters};
use wgcnn::optim::{OptimizerKind, OptimizerSettings, Schedule};
use wgcnn::train::{Start, TrainOptions, Trainer, train};

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgcnn-training-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn small_model() -> ModelSpec {
    ModelSpec::from_toml(
        r#"
        input = [1, 28, 28]
        [[layers]]
        type = "conv2d"
        out_channels = 6
        kernel = 3
        padding = 1
        [[layers]]
        type = "batchnorm"
        [[layers]]
        type = "relu"
        [[layers]]
        type = "maxpool2d"
        kernel = 2
        [[layers]]
        type = "conv2d"
        out_channels = 8
        kernel = 3
        stride = 2
        [[layers]]
        type = "relu"
        [[layers]]
        type = "flatten"
        [[layers]]
        type = "dropout"
        p = 0.25
        [[layers]]
        type = "linear"
        out_features = 10
        "#,
    )
    .unwrap()
}

/// Losses of `steps` training steps with `optimizer` from the same weights.
fn losses<B: Backend>(
    backend: &B,
    spec: &ModelSpec,
    data: &Dataset,
    optimizer: OptimizerKind,
    steps: usize,
) -> Vec<f32> {
    let weights = init_parameters(spec, 5).unwrap();
    let settings = OptimizerSettings::new(optimizer, 1e-3).unwrap();
    let mut trainer = Trainer::new(backend, spec, &weights, settings, &[], 0, 5).unwrap();
    let norm = Normalization::of(data);
    let order = epoch_order(data.len(), 5, 0, true);
    order
        .chunks(16)
        .take(steps)
        .map(|indices| {
            let batch = make_batch(data, indices, &norm, None);
            let (loss, _) = trainer.train_step(backend, &batch, 0.01);
            backend.download(&loss).data[0]
        })
        .collect()
}

#[test]
fn gpu_and_cpu_training_steps_give_the_same_losses() {
    let Some(gpu) = common::gpu() else { return };
    let spec = small_model();
    let data = synthetic(1, 160, 10).train;
    for optimizer in [OptimizerKind::Momentum, OptimizerKind::AdamW] {
        let on_gpu = losses(gpu, &spec, &data, optimizer, 6);
        let on_cpu = losses(&CpuBackend::<f32>::new(), &spec, &data, optimizer, 6);
        let on_fast_cpu = losses(&CpuBackend::<f32>::fast(), &spec, &data, optimizer, 6);
        for (step, ((g, c), f)) in on_gpu.iter().zip(&on_cpu).zip(&on_fast_cpu).enumerate() {
            assert!(
                (g - c).abs() <= 1e-4 * c.abs().max(1.0),
                "{optimizer:?} step {step}: gpu loss {g} vs cpu {c}"
            );
            assert!(
                (f - c).abs() <= 1e-4 * c.abs().max(1.0),
                "{optimizer:?} step {step}: fast cpu loss {f} vs cpu {c}"
            );
        }
    }
    gpu.take_error().unwrap();
}

fn options(epochs: usize) -> TrainOptions {
    TrainOptions {
        epochs,
        batch_size: 32,
        optimizer: OptimizerSettings::new(OptimizerKind::Adam, 0.0).unwrap(),
        lr: 2e-3,
        schedule: Schedule::Constant,
        warmup_epochs: 0.0,
        seed: 3,
        augmentation: None,
        validation: 0.0,
        checkpoint: None,
        metrics: None,
        progress_bar: false,
        stop_after_epochs: None,
        stop_after_steps: None,
    }
}

#[test]
fn loss_falls_on_the_synthetic_set() {
    let cpu = CpuBackend::<f32>::fast();
    let spec = small_model();
    let data = synthetic(2, 1200, 300);
    let mut opts = options(4);
    opts.lr = 5e-3;
    let history = train(
        &cpu,
        &spec,
        &data.train,
        &data.test,
        &opts,
        Start::Fresh(init_parameters(&spec, 3).unwrap()),
    )
    .unwrap();
    let losses: Vec<f64> = history.iter().map(|m| m.train_loss).collect();
    assert!(
        losses.windows(2).all(|w| w[1] < w[0]),
        "train loss falls every epoch: {losses:?}"
    );
    assert!(losses[3] < 0.5 * losses[0], "train loss halves: {losses:?}");
    let accuracy = history.last().unwrap().test_accuracy;
    assert!(accuracy > 0.7, "test accuracy {accuracy} (chance is 0.1)");
}

#[test]
fn checkpoint_round_trip_gives_identical_predictions() {
    let cpu = CpuBackend::<f32>::fast();
    let spec = builtin("lenet5", [1, 28, 28], 10).unwrap();
    let data = synthetic(4, 200, 40);
    let path = temp_path("lenet5.safetensors");
    let mut opts = options(1);
    opts.checkpoint = Some(path.clone());
    train(
        &cpu,
        &spec,
        &data.train,
        &data.test,
        &opts,
        Start::Fresh(init_parameters(&spec, 1).unwrap()),
    )
    .unwrap();

    let loaded = Checkpoint::load(&path).unwrap();
    assert_eq!(loaded.spec, spec);
    assert_eq!(loaded.state.epoch, 1);
    assert!(!loaded.optimizer.is_empty(), "adam state is saved");
    let norm = Normalization {
        mean: loaded.state.norm_mean.clone(),
        std: loaded.state.norm_std.clone(),
    };
    let indices: Vec<usize> = (0..data.test.len()).collect();
    let batch = make_batch(&data.test, &indices, &norm, None);
    let predict = |c: &Checkpoint| {
        let mut model = Sequential::new(&cpu, &c.spec, &c.model, 0).unwrap();
        model.forward(&cpu, &batch.images, Mode::Eval, 0)
    };
    let first = predict(&loaded);
    // Save the loaded checkpoint again and reload: bit-identical weights.
    let again_path = temp_path("lenet5-again.safetensors");
    loaded.save(&again_path).unwrap();
    let again = Checkpoint::load(&again_path).unwrap();
    assert_eq!(first.data, predict(&again).data);
    for ((n1, t1), (n2, t2)) in loaded.model.iter().zip(&again.model) {
        assert_eq!((n1, &t1.data), (n2, &t2.data));
    }
}

#[test]
fn damaged_checkpoints_are_refused_with_a_reason() {
    let spec = builtin("mlp", [1, 28, 28], 10).unwrap();
    let cpu = CpuBackend::<f32>::fast();
    let data = synthetic(5, 64, 16);
    let path = temp_path("mlp.safetensors");
    let mut opts = options(1);
    opts.checkpoint = Some(path.clone());
    train(
        &cpu,
        &spec,
        &data.train,
        &data.test,
        &opts,
        Start::Fresh(init_parameters(&spec, 1).unwrap()),
    )
    .unwrap();
    let bytes = std::fs::read(&path).unwrap();

    let check = |name: &str, content: &[u8], expected: &str| {
        let p = temp_path(name);
        std::fs::write(&p, content).unwrap();
        let err = Checkpoint::load(&p).unwrap_err().to_string();
        assert!(
            err.contains(expected) && err.contains(name),
            "{name}: {err}"
        );
    };
    check(
        "truncated.safetensors",
        &bytes[..bytes.len() / 2],
        "truncated",
    );
    check(
        "text.safetensors",
        b"hello, this is not a checkpoint",
        "not a safetensors",
    );
    let mut flipped = bytes.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 0x40;
    check("flipped.safetensors", &flipped, "checksum mismatch");
    let missing = temp_path("does-not-exist.safetensors");
    assert!(
        Checkpoint::load(&missing)
            .unwrap_err()
            .to_string()
            .contains("does-not-exist")
    );
}

#[test]
fn a_batch_too_large_for_the_device_is_refused_up_front() {
    let spec = builtin("fashion-cnn", [1, 28, 28], 10).unwrap();
    let err = spec.check_fits(4096, 128 << 20).unwrap_err().to_string();
    assert!(
        err.contains("layer 0 (conv2d) output") && err.contains("--batch-size 1337"),
        "{err}"
    );
    assert!(spec.check_fits(64, 128 << 20).is_ok());
    // cifar-cnn's second conv needs a 144 MiB im2col matrix at batch 128:
    // over lavapipe's 128 MiB, so it runs in pieces, and the batch is fine.
    let cifar = builtin("cifar-cnn", [3, 32, 32], 10).unwrap();
    assert!(cifar.check_fits(128, 128 << 20).is_ok());
    // One image's matrix must fit, though: a 5×5 convolution of 3 channels
    // into 8 has 75 rows of im2col to each output's 8 (307,200 bytes).
    let narrow = ModelSpec {
        input: vec![3, 32, 32],
        layers: vec![
            LayerSpec::Conv2d {
                out_channels: 8,
                kernel: 5,
                stride: 1,
                padding: 2,
            },
            LayerSpec::Flatten,
            LayerSpec::Linear { out_features: 2 },
        ],
    };
    assert!(narrow.check_fits(1, 307_200).is_ok());
    let err = narrow.check_fits(1, 307_196).unwrap_err().to_string();
    assert!(err.contains("im2col matrix of one image"), "{err}");
    // And so must every parameter, whatever the batch size.
    let err = cifar.check_fits(1, 1 << 20).unwrap_err().to_string();
    assert!(
        err.contains("has a weight of shape [256, 4096]") && err.contains("whatever the batch"),
        "{err}"
    );
}
