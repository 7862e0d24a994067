//! A training step on the GPU is recorded into one command encoder and
//! submitted once; after the first step it creates nothing (buffers come back
//! from the pool in the same order, so pipelines and bind groups are reused).

mod common;

use wgcnn::backend::Backend;
use wgcnn::data::{Normalization, epoch_order, make_batch, synthetic};
use wgcnn::nn::{LayerSpec, builtin, init_parameters};
use wgcnn::optim::{OptimizerKind, OptimizerSettings};
use wgcnn::tensor::HostTensor;
use wgcnn::train::Trainer;

#[test]
fn one_submit_per_step_and_nothing_created_after_the_first() {
    let Some(gpu) = common::gpu() else { return };
    for model in ["lenet5", "fashion-cnn"] {
        assert_resident(gpu, model, 16, false);
    }
    // With the first fully connected layer's forward split over K as on a
    // GPU (batch 32: 16 slices), in a context of its own.
    let gpu = common::own_gpu().expect("an adapter, as above");
    gpu.ctx.gemm_tuner.split_like_a_gpu(true);
    assert_resident(&gpu, "fashion-cnn", 32, true);
}

/// Trains `model` for a few steps of `batch` on `gpu`, asserting one
/// submission per step and no creation after the first, and whether a
/// product was split over K (a further step, profiled).
fn assert_resident(gpu: &wgcnn::gpu::GpuBackend, model: &str, batch: usize, split: bool) {
    let spec = builtin(model, [1, 28, 28], 10).unwrap();
    let data = synthetic(3, 5 * batch, 1).train;
    let norm = Normalization::of(&data);
    let settings = OptimizerSettings::new(OptimizerKind::AdamW, 1e-4).unwrap();
    let mut trainer = Trainer::new(
        gpu,
        &spec,
        &init_parameters(&spec, 1).unwrap(),
        settings,
        &[],
        0,
        1,
    )
    .unwrap();
    let order = epoch_order(data.len(), 1, 0, true);
    let steps = order.len() / batch;
    // Per-step loss and correct count stay on the GPU until the end.
    let mut stats = gpu.upload(&HostTensor::zeros(&[2 * steps]));
    let mut after_first = None;
    for (step, indices) in order.chunks(batch).enumerate() {
        let batch = make_batch(&data, indices, &norm, None);
        let before = gpu.ctx.counters();
        let (loss, correct) = trainer.train_step(gpu, &batch, 1e-3);
        gpu.copy_into(&mut stats, step, &loss);
        gpu.copy_into(&mut stats, steps + step, &correct);
        gpu.end_step();
        let after = gpu.ctx.counters();
        // The first step may also time GEMM kernels (tuning at first use).
        if step > 0 {
            assert_eq!(
                after.submits - before.submits,
                1,
                "{model} step {step}: one submission"
            );
        }
        match after_first {
            None => after_first = Some(after),
            Some(first) => assert_eq!(
                after.creations(),
                first.creations(),
                "{model} step {step} created something: {first:?} -> {after:?}"
            ),
        }
    }
    let batch = make_batch(&data, &order[..batch], &norm, None);
    let (split_sums, _) = common::dispatches_of(gpu, "gemm::split_sum", || {
        trainer.train_step(gpu, &batch, 1e-3);
        gpu.end_step();
    });
    assert_eq!(split_sums > 0, split, "{model}: {split_sums} split sums");
    let losses = gpu.download(&stats);
    assert!(
        losses.data[..steps]
            .iter()
            .all(|l| l.is_finite() && *l > 0.0),
        "{:?}",
        losses.data
    );
    gpu.take_error().unwrap();
}

/// Every parameter update of a step is one dispatch over the flat parameter,
/// gradient and state buffers, for each optimizer rule.
#[test]
fn one_optimizer_dispatch_updates_every_parameter() {
    if common::gpu().is_none() {
        return;
    }
    // A context of its own: the other test counts its context's submissions.
    let gpu = &wgcnn::gpu::GpuBackend::new(None).expect("a GPU adapter");
    let spec = builtin("fashion-cnn", [1, 28, 28], 10).unwrap();
    let data = synthetic(3, 32, 1).train;
    let norm = Normalization::of(&data);
    let indices: Vec<usize> = (0..16).collect();
    let batch = make_batch(&data, &indices, &norm, None);
    for kind in [
        OptimizerKind::Sgd,
        OptimizerKind::Momentum,
        OptimizerKind::Adam,
    ] {
        let settings = OptimizerSettings::new(kind, 1e-4).unwrap();
        let weights = init_parameters(&spec, 1).unwrap();
        let mut trainer = Trainer::new(gpu, &spec, &weights, settings, &[], 0, 1).unwrap();
        // The first step may also time GEMM kernels.
        trainer.train_step(gpu, &batch, 1e-3);
        gpu.synchronize();
        let dispatches = || gpu.ctx.counters().dispatches;
        let before = dispatches();
        trainer.train_step(gpu, &batch, 1e-3);
        let step = dispatches() - before;
        let (x, labels) = (gpu.upload(&batch.images), gpu.upload_indices(&batch.labels));
        let before = dispatches();
        trainer.model.forward_backward(gpu, &x, &labels, 1);
        let forward_backward = dispatches() - before;
        let trainable = trainer.model.params().filter(|p| p.trainable).count();
        assert!(trainable > 1);
        assert_eq!(
            step - forward_backward,
            1,
            "{}: {trainable} parameters updated by one dispatch",
            kind.name()
        );
        gpu.synchronize();
    }
    gpu.take_error().unwrap();
}

/// Parameters whose flat buffer would be over the device's per-buffer limit
/// get a buffer each and are updated one at a time, to the same values.
#[test]
fn parameters_over_the_buffer_limit_update_one_at_a_time_alike() {
    if common::gpu().is_none() {
        return;
    }
    // 784 → 64 → 10: the first weight alone is 200,704 bytes, all of them
    // together 203,560 and more once aligned.
    let spec = wgcnn::nn::ModelSpec {
        input: vec![1, 28, 28],
        layers: vec![
            LayerSpec::Flatten,
            LayerSpec::Linear { out_features: 64 },
            LayerSpec::Activation(wgcnn::geometry::Activation::Relu),
            LayerSpec::Linear { out_features: 10 },
        ],
    };
    let data = synthetic(3, 32, 1).train;
    let norm = Normalization::of(&data);
    let indices: Vec<usize> = (0..16).collect();
    let batch = make_batch(&data, &indices, &norm, None);
    let weights = init_parameters(&spec, 1).unwrap();
    let settings = OptimizerSettings::new(OptimizerKind::Adam, 1e-4).unwrap();
    let train = |limit: Option<u64>| {
        let gpu = common::own_gpu().unwrap();
        gpu.ctx.limit_buffer_bytes(limit);
        let mut trainer = Trainer::new(&gpu, &spec, &weights, settings, &[], 0, 1).unwrap();
        trainer.train_step(&gpu, &batch, 1e-3);
        gpu.synchronize();
        let before = gpu.ctx.counters().dispatches;
        trainer.train_step(&gpu, &batch, 1e-3);
        let step = gpu.ctx.counters().dispatches - before;
        let values = trainer.model.state_dict(&gpu);
        gpu.take_error().unwrap();
        (step, values)
    };
    let (flat_step, flat) = train(None);
    let (apart_step, apart) = train(Some(201_000));
    // Four parameters: four updates instead of one.
    assert_eq!(apart_step, flat_step + 3);
    assert_eq!(flat.len(), apart.len());
    for ((name, a), (_, b)) in flat.iter().zip(&apart) {
        assert_eq!(a.data, b.data, "{name}");
    }
}
