//! A whole forward and backward pass of a small CNN
//! (conv → batchnorm2d → relu → maxpool → dropout → linear → softmax CE) on the
//! GPU and on the CPU reference from the same weights and batch: every
//! gradient, the logits, the loss and the running statistics must agree.

mod common;

use wgcnn::backend::Backend;
use wgcnn::cpu::CpuBackend;
use wgcnn::geometry::Activation;
use wgcnn::nn::{LayerSpec, Mode, ModelSpec, Sequential, StateDict, init_parameters};
use wgcnn::rng::SplitMix64;
use wgcnn::tensor::HostTensor;

fn small_cnn() -> ModelSpec {
    ModelSpec {
        input: vec![3, 9, 7],
        layers: vec![
            LayerSpec::Conv2d {
                out_channels: 5,
                kernel: 3,
                stride: 1,
                padding: 1,
            },
            LayerSpec::BatchNorm,
            LayerSpec::Activation(Activation::Relu),
            LayerSpec::MaxPool2d {
                kernel: 2,
                stride: 2,
                padding: 0,
            },
            LayerSpec::Dropout { p: 0.3 },
            LayerSpec::Linear { out_features: 4 },
        ],
    }
}

/// Everything one training pass produces, on the host.
struct PassResult {
    logits: HostTensor<f32>,
    /// Logits of an evaluation-mode forward after the pass (running statistics).
    eval_logits: HostTensor<f32>,
    loss: f32,
    correct: f32,
    grads: StateDict,
    state: StateDict,
}

fn run_pass<B: Backend>(
    b: &B,
    spec: &ModelSpec,
    weights: &StateDict,
    x: &HostTensor<f32>,
    labels: &[u32],
) -> PassResult {
    let mut model = Sequential::new(b, spec, weights, 99).expect("valid model");
    let xb = b.upload(x);
    let logits = model.forward(b, &xb, Mode::Train, 3);
    let out = b.softmax_cross_entropy(&logits, &b.upload_indices(labels));
    model.backward(b, &out.grad);
    let eval_logits = model.forward(b, &xb, Mode::Eval, 0);
    PassResult {
        eval_logits: b.download(&eval_logits),
        logits: b.download(&logits),
        loss: b.download(&out.loss).data[0],
        correct: b.download(&out.correct).data[0],
        grads: model
            .params()
            .filter_map(|p| p.grad.as_ref().map(|g| (p.name.clone(), b.download(g))))
            .collect(),
        state: model.state_dict(b),
    }
}

fn assert_close(what: &str, gpu: &HostTensor<f32>, cpu: &HostTensor<f32>) {
    assert_eq!(gpu.shape, cpu.shape, "{what}: shapes");
    let scale = cpu.data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    for (i, (g, c)) in gpu.data.iter().zip(&cpu.data).enumerate() {
        let tol = 1e-6 + 2e-4 * scale;
        assert!(
            (g - c).abs() <= tol,
            "{what}[{i}]: gpu {g} vs cpu {c} (|diff| {}, tolerance {tol})",
            (g - c).abs()
        );
    }
}

#[test]
fn conv_net_pass_matches_the_reference() {
    let Some(gpu) = common::gpu() else { return };
    let spec = small_cnn();
    let weights = init_parameters(&spec, 7).unwrap();
    let batch = 6;
    let mut rng = SplitMix64::new(11);
    let x = HostTensor::new(
        &[batch, 3, 9, 7],
        rng.uniform_vec(batch * 3 * 9 * 7, -1.0, 1.0),
    );
    let labels: Vec<u32> = (0..batch).map(|_| rng.below(4)).collect();

    let on_gpu = run_pass(gpu, &spec, &weights, &x, &labels);
    let on_cpu = run_pass(&CpuBackend::<f32>::new(), &spec, &weights, &x, &labels);

    assert_close("logits", &on_gpu.logits, &on_cpu.logits);
    assert_close("eval logits", &on_gpu.eval_logits, &on_cpu.eval_logits);
    assert!(
        (on_gpu.loss - on_cpu.loss).abs() <= 1e-5 * on_cpu.loss.abs().max(1.0),
        "loss {} vs {}",
        on_gpu.loss,
        on_cpu.loss
    );
    assert_eq!(on_gpu.correct, on_cpu.correct, "correct count");
    let names: Vec<&str> = on_cpu.grads.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "0.weight", "0.bias", "1.weight", "1.bias", "5.weight", "5.bias"
        ]
    );
    for ((name, g), (_, c)) in on_gpu.grads.iter().zip(&on_cpu.grads) {
        assert_close(&format!("grad {name}"), g, c);
    }
    for ((name, g), (_, c)) in on_gpu.state.iter().zip(&on_cpu.state) {
        assert_close(&format!("state {name}"), g, c);
    }
    gpu.ctx.take_error().expect("no wgpu error");
}

/// The same pass in f64 on the CPU agrees with f32: the reference itself is
/// not losing precision somewhere.
#[test]
fn reference_pass_is_stable_across_precisions() {
    let spec = small_cnn();
    let weights = init_parameters(&spec, 7).unwrap();
    let mut rng = SplitMix64::new(5);
    let x = HostTensor::new(&[4, 3, 9, 7], rng.uniform_vec(4 * 3 * 9 * 7, -1.0, 1.0));
    let labels = [0, 1, 2, 3];
    let f32_pass = run_pass(&CpuBackend::<f32>::new(), &spec, &weights, &x, &labels);
    let f64_pass = run_pass(&CpuBackend::<f64>::new(), &spec, &weights, &x, &labels);
    for ((name, a), (_, b)) in f32_pass.grads.iter().zip(&f64_pass.grads) {
        assert_close(&format!("grad {name}"), a, b);
    }
}

#[test]
fn impossible_models_name_the_layer() {
    let mut spec = small_cnn();
    spec.layers.insert(
        3,
        LayerSpec::Conv2d {
            out_channels: 2,
            kernel: 11,
            stride: 1,
            padding: 0,
        },
    );
    let err = spec.shapes(1).unwrap_err().to_string();
    assert!(
        err.contains("layer 3 (conv2d)") && err.contains("kernel 11"),
        "{err}"
    );

    let mut spec = small_cnn();
    spec.layers.push(LayerSpec::MaxPool2d {
        kernel: 2,
        stride: 2,
        padding: 0,
    });
    let err = spec.shapes(1).unwrap_err().to_string();
    assert!(err.contains("layer 6 (maxpool2d)"), "{err}");

    let spec = ModelSpec {
        input: vec![4],
        layers: vec![LayerSpec::Dropout { p: 1.0 }],
    };
    assert!(spec.shapes(2).unwrap_err().to_string().contains("[0, 1)"));
}

#[test]
fn wrong_weights_are_refused() {
    let spec = small_cnn();
    let mut weights = init_parameters(&spec, 1).unwrap();
    weights[0].1 = HostTensor::zeros(&[5, 3, 5, 5]);
    let err = Sequential::new(&CpuBackend::<f32>::new(), &spec, &weights, 0)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("0.weight") && err.contains("[5, 3, 3, 3]"),
        "{err}"
    );
    weights.remove(0);
    let err = Sequential::new(&CpuBackend::<f32>::new(), &spec, &weights, 0)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("0.weight is missing"), "{err}");
}

/// Evaluation takes any batch, even one example through batchnorm1d; training
/// needs two values per channel and says so.
#[test]
fn batchnorm1d_evaluates_a_single_example() {
    let spec = ModelSpec {
        input: vec![6],
        layers: vec![
            LayerSpec::Linear { out_features: 5 },
            LayerSpec::BatchNorm,
            LayerSpec::Activation(Activation::Relu),
            LayerSpec::Linear { out_features: 3 },
        ],
    };
    let cpu = CpuBackend::<f32>::new();
    let mut model = Sequential::init(&cpu, &spec, 3).unwrap();
    let x = HostTensor::new(&[1, 6], vec![0.5; 6]);
    let logits = model.forward(&cpu, &cpu.upload(&x), Mode::Eval, 0);
    assert_eq!(logits.shape, [1, 3]);
    assert!(spec.check_trainable(2).is_ok());
    let err = spec.check_trainable(1).unwrap_err().to_string();
    assert!(
        err.contains("layer 1 (batchnorm)") && err.contains("at least 2 values"),
        "{err}"
    );
}

/// The training pass (`forward_backward`: relu fused into the product before
/// it, and its backward taken in by a max pool or linear layer after it)
/// gives the very gradients of the layer-by-layer backward, on the CPU and
/// the GPU. The second pool overlaps (stride < window), where the relu must
/// not move.
#[test]
fn training_pass_equals_the_layer_by_layer_backward() {
    let spec = ModelSpec {
        input: vec![2, 12, 12],
        layers: vec![
            LayerSpec::Conv2d {
                out_channels: 4,
                kernel: 3,
                stride: 1,
                padding: 1,
            },
            LayerSpec::Activation(Activation::Relu),
            LayerSpec::MaxPool2d {
                kernel: 2,
                stride: 2,
                padding: 0,
            },
            LayerSpec::Conv2d {
                out_channels: 5,
                kernel: 3,
                stride: 1,
                padding: 1,
            },
            LayerSpec::Activation(Activation::LeakyRelu {
                negative_slope: 0.1,
            }),
            LayerSpec::MaxPool2d {
                kernel: 3,
                stride: 2,
                padding: 1,
            },
            LayerSpec::Activation(Activation::LeakyRelu {
                negative_slope: 0.2,
            }),
            LayerSpec::MaxPool2d {
                kernel: 2,
                stride: 2,
                padding: 0,
            },
            LayerSpec::Linear { out_features: 7 },
            LayerSpec::Activation(Activation::LeakyRelu {
                negative_slope: 0.1,
            }),
            LayerSpec::Linear { out_features: 6 },
            LayerSpec::Activation(Activation::Relu),
            LayerSpec::Linear { out_features: 3 },
        ],
    };
    let mut weights = init_parameters(&spec, 5).unwrap();
    // Mostly negative inputs to the leaky relus, so their slopes matter.
    for (name, tensor) in &mut weights {
        if name == "3.bias" {
            tensor.data.fill(-0.5);
        }
    }
    let batch = 4;
    let mut rng = SplitMix64::new(13);
    let x = HostTensor::new(
        &[batch, 2, 12, 12],
        rng.uniform_vec(batch * 2 * 12 * 12, -1.0, 1.0),
    );
    let labels: Vec<u32> = (0..batch).map(|_| rng.below(3)).collect();
    fn both_ways<B: Backend>(
        b: &B,
        spec: &ModelSpec,
        weights: &StateDict,
        x: &HostTensor<f32>,
        labels: &[u32],
    ) {
        let grads = |model: &Sequential<B>| -> StateDict {
            model
                .params()
                .filter_map(|p| p.grad.as_ref().map(|g| (p.name.clone(), b.download(g))))
                .collect()
        };
        let (xb, lb) = (b.upload(x), b.upload_indices(labels));
        let mut model = Sequential::new(b, spec, weights, 1).unwrap();
        let logits = model.forward(b, &xb, Mode::Train, 0);
        let out = b.softmax_cross_entropy(&logits, &lb);
        model.backward(b, &out.grad);
        let layer_by_layer = grads(&model);
        let mut model = Sequential::new(b, spec, weights, 1).unwrap();
        model.forward_backward(b, &xb, &lb, 0);
        let training = grads(&model);
        assert_eq!(training.len(), 10);
        for ((name, t), (_, l)) in training.iter().zip(&layer_by_layer) {
            assert_eq!(t.data, l.data, "grad {name}");
        }
    }
    both_ways(&CpuBackend::<f32>::new(), &spec, &weights, &x, &labels);
    both_ways(&CpuBackend::<f32>::fast(), &spec, &weights, &x, &labels);
    if let Some(gpu) = common::gpu() {
        both_ways(gpu, &spec, &weights, &x, &labels);
    }
}
