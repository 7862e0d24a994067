//! Resume is exact: training that stops (after whole epochs, or mid-epoch as on
//! Ctrl-C) and resumes from its checkpoint ends with the weights and optimizer
//! state of the uninterrupted run — bit for bit on the CPU paths, within a
//! stated tolerance on the GPU.

mod common;

use std::path::PathBuf;

use wgcnn::backend::Backend;
use wgcnn::checkpoint::Checkpoint;
use wgcnn::cpu::CpuBackend;
use wgcnn::data::{Augmentation, Splits, synthetic};
use wgcnn::nn::{ModelSpec, init_parameters};
use wgcnn::optim::{OptimizerKind, OptimizerSettings, Schedule};
use wgcnn::train::{Start, TrainOptions, train};

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgcnn-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Conv, batchnorm (running statistics), pooling, dropout (step-seeded masks)
/// and a linear layer: every kind of state a resume must carry.
fn small_model() -> ModelSpec {
    ModelSpec::from_toml(
        r#"
        input = [1, 28, 28]
        [[layers]]
        type = "conv2d"
        out_channels = 4
        kernel = 3
        stride = 2
        padding = 1
        [[layers]]
        type = "batchnorm"
        [[layers]]
        type = "relu"
        [[layers]]
        type = "maxpool2d"
        kernel = 2
        [[layers]]
        type = "flatten"
        [[layers]]
        type = "dropout"
        p = 0.3
        [[layers]]
        type = "linear"
        out_features = 10
        "#,
    )
    .unwrap()
}

/// Adam (moments and bias correction by step), a cosine schedule with warm-up
/// over `epochs` (so the rate depends on the step and on the total), and
/// augmentation (seeded by epoch and batch): everything position-dependent.
fn options(epochs: usize, checkpoint: PathBuf) -> TrainOptions {
    TrainOptions {
        epochs,
        batch_size: 16,
        optimizer: OptimizerSettings::new(OptimizerKind::AdamW, 1e-3).unwrap(),
        lr: 5e-3,
        schedule: Schedule::Cosine,
        warmup_epochs: 0.5,
        seed: 7,
        augmentation: Some(Augmentation {
            crop_padding: 2,
            horizontal_flip: true,
        }),
        validation: 0.0,
        checkpoint: Some(checkpoint),
        metrics: None,
        progress_bar: false,
        stop_after_epochs: None,
        stop_after_steps: None,
    }
}

fn data() -> Splits {
    // 150 examples in batches of 16: 10 steps an epoch, the last one short.
    synthetic(3, 150, 20)
}

/// Trains `spec` through `stages`: the first from fresh weights, each next one
/// resumed from the previous one's checkpoint (read back from its file).
/// Returns the last checkpoint.
fn run<B: Backend>(
    backend: &B,
    spec: &ModelSpec,
    data: &Splits,
    stages: &[TrainOptions],
) -> Checkpoint {
    let mut start = Start::Fresh(init_parameters(spec, 7).unwrap());
    for opts in stages {
        train(backend, spec, &data.train, &data.test, opts, start).unwrap();
        let path = opts.checkpoint.as_ref().unwrap();
        start = Start::Resume(Box::new(Checkpoint::load(path).unwrap()));
    }
    match start {
        Start::Resume(c) => *c,
        Start::Fresh(_) | Start::New => unreachable!("at least one stage"),
    }
}

/// Every weight, buffer and optimizer slot of `c`, by name.
fn tensors(c: &Checkpoint) -> Vec<(String, Vec<f32>)> {
    let mut all: Vec<(String, Vec<f32>)> = c
        .model
        .iter()
        .map(|(n, t)| (n.clone(), t.data.to_vec()))
        .collect();
    for (name, slots) in &c.optimizer {
        for (i, t) in slots.iter().enumerate() {
            all.push((format!("optimizer.{name}.{i}"), t.data.to_vec()));
        }
    }
    all
}

/// The largest `|a − b| / (1 + |b|)` over every tensor (0 when bit-identical),
/// after checking both hold the same tensors at the same position.
fn max_difference(a: &Checkpoint, b: &Checkpoint) -> f64 {
    assert_eq!(a.state.epoch, b.state.epoch);
    assert_eq!(a.state.step, b.state.step);
    assert_eq!(a.state.epoch_examples_done, b.state.epoch_examples_done);
    let (ta, tb) = (tensors(a), tensors(b));
    assert_eq!(ta.len(), tb.len());
    let mut worst = 0f64;
    for ((na, da), (nb, db)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb);
        assert_eq!(da.len(), db.len(), "{na}");
        for (&x, &y) in da.iter().zip(db) {
            assert!(x.is_finite() && y.is_finite(), "{na}: {x} vs {y}");
            worst = worst.max((x as f64 - y as f64).abs() / (1.0 + (y as f64).abs()));
        }
    }
    worst
}

fn assert_bit_identical(a: &Checkpoint, b: &Checkpoint) {
    for ((na, da), (_, db)) in tensors(a).iter().zip(&tensors(b)) {
        let bits = |d: &[f32]| d.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert!(bits(da) == bits(db), "{na} differs after resuming");
    }
    assert_eq!(max_difference(a, b), 0.0);
}

/// 2 epochs, stop, resume for 2 more == 4 uninterrupted epochs.
fn two_plus_two<B: Backend>(backend: &B, tag: &str) -> (Checkpoint, Checkpoint) {
    let (spec, data) = (small_model(), data());
    let whole = run(
        backend,
        &spec,
        &data,
        &[options(4, temp_path(&format!("{tag}-whole.safetensors")))],
    );
    let path = temp_path(&format!("{tag}-split.safetensors"));
    let mut first = options(4, path.clone());
    first.stop_after_epochs = Some(2);
    let split = run(backend, &spec, &data, &[first, options(4, path)]);
    assert_eq!(whole.state.epoch, 4);
    assert_eq!(whole.state.step, 40);
    (whole, split)
}

#[test]
fn stopping_after_two_epochs_and_resuming_is_bit_identical_on_the_fast_cpu_path() {
    let (whole, split) = two_plus_two(&CpuBackend::<f32>::fast(), "fast");
    assert_bit_identical(&whole, &split);
}

#[test]
fn stopping_after_two_epochs_and_resuming_is_bit_identical_on_the_reference_cpu_path() {
    let (whole, split) = two_plus_two(&CpuBackend::<f32>::new(), "reference");
    assert_bit_identical(&whole, &split);
}

#[test]
fn an_interruption_mid_epoch_resumes_bit_identically() {
    let cpu = CpuBackend::<f32>::fast();
    let (spec, data) = (small_model(), data());
    let whole = run(
        &cpu,
        &spec,
        &data,
        &[options(3, temp_path("mid-whole.safetensors"))],
    );
    // Stop at step 13 (batch 3 of epoch 2), then again at step 27 (batch 7 of
    // epoch 3), as two Ctrl-Cs in one run's life would; resume after each.
    let path = temp_path("mid-split.safetensors");
    let mut first = options(3, path.clone());
    first.stop_after_steps = Some(13);
    train(
        &cpu,
        &spec,
        &data.train,
        &data.test,
        &first,
        Start::Fresh(init_parameters(&spec, 7).unwrap()),
    )
    .unwrap();
    let stopped = Checkpoint::load(&path).unwrap();
    assert_eq!(
        (
            stopped.state.epoch,
            stopped.state.step,
            stopped.state.epoch_examples_done
        ),
        (1, 13, 3 * 16),
        "the checkpoint records the position inside epoch 2"
    );
    let mut second = options(3, path.clone());
    second.stop_after_steps = Some(27);
    let mut history = train(
        &cpu,
        &spec,
        &data.train,
        &data.test,
        &second,
        Start::Resume(Box::new(stopped)),
    )
    .unwrap();
    assert_eq!(history.len(), 1, "epoch 2 completes");
    let stopped = Checkpoint::load(&path).unwrap();
    assert_eq!(
        (stopped.state.epoch, stopped.state.epoch_examples_done),
        (2, 7 * 16)
    );
    history = train(
        &cpu,
        &spec,
        &data.train,
        &data.test,
        &options(3, path.clone()),
        Start::Resume(Box::new(stopped)),
    )
    .unwrap();
    assert_eq!(history.len(), 1, "epoch 3 completes");
    let split = Checkpoint::load(&path).unwrap();
    assert_eq!(split.state.epoch_examples_done, 0);
    assert_bit_identical(&whole, &split);
}

#[test]
fn a_stop_at_an_epochs_last_step_is_an_epoch_boundary() {
    let cpu = CpuBackend::<f32>::fast();
    let (spec, data) = (small_model(), data());
    let path = temp_path("boundary.safetensors");
    let mut opts = options(2, path.clone());
    opts.stop_after_steps = Some(10);
    train(
        &cpu,
        &spec,
        &data.train,
        &data.test,
        &opts,
        Start::Fresh(init_parameters(&spec, 7).unwrap()),
    )
    .unwrap();
    let c = Checkpoint::load(&path).unwrap();
    assert_eq!(
        (c.state.epoch, c.state.step, c.state.epoch_examples_done),
        (1, 10, 0)
    );
}

#[test]
fn a_mid_epoch_checkpoint_refuses_a_batch_size_that_does_not_divide_its_position() {
    let cpu = CpuBackend::<f32>::fast();
    let (spec, data) = (small_model(), data());
    let path = temp_path("batch-size.safetensors");
    let mut opts = options(2, path.clone());
    opts.stop_after_steps = Some(3);
    train(
        &cpu,
        &spec,
        &data.train,
        &data.test,
        &opts,
        Start::Fresh(init_parameters(&spec, 7).unwrap()),
    )
    .unwrap();
    let mut other = options(2, temp_path("batch-size-2.safetensors"));
    other.batch_size = 20;
    let err = train(
        &cpu,
        &spec,
        &data.train,
        &data.test,
        &other,
        Start::Resume(Box::new(Checkpoint::load(&path).unwrap())),
    )
    .expect_err("48 examples are not whole batches of 20")
    .to_string();
    assert!(
        err.contains("48 examples") && err.contains("--batch-size"),
        "{err}"
    );
}

/// The GPU path resumes to within this relative difference of the uninterrupted
/// run. (Its reductions run in a fixed order, so in practice it is 0: the same
/// kernels see the same bits; the tolerance leaves room for drivers whose
/// arithmetic is not reproducible.)
const GPU_TOLERANCE: f64 = 1e-5;

#[test]
fn stopping_after_two_epochs_and_resuming_matches_on_the_gpu() {
    let Some(gpu) = common::gpu() else {
        return;
    };
    let (whole, split) = two_plus_two(gpu, "gpu");
    let diff = max_difference(&whole, &split);
    eprintln!("GPU: largest relative difference after resuming: {diff:e}");
    assert!(
        diff <= GPU_TOLERANCE,
        "resumed GPU weights differ by {diff:e} (tolerance {GPU_TOLERANCE:e})"
    );
}
