//! LeNet-5 training throughput in [Burn](https://burn.dev) 0.22.1 on its wgpu backend (with
//! autodiff, and the backend's default kernel fusion and autotuning), for a side-by-side
//! comparison with `wgcnn bench train --device 0 --model lenet5 --batch-size 64` on the same
//! machine.
//!
//! The model, loss, optimiser and timing follow `examples/pytorch/pytorch_reference.py`:
//! Conv2d(1→6, 5×5, pad 2) → ReLU → MaxPool 2 → Conv2d(6→16, 5×5) → ReLU → MaxPool 2 → flatten
//! (400) → Linear 120 → ReLU → Linear 84 → ReLU → Linear 10; He (Kaiming normal) weights, zero
//! biases; softmax cross-entropy; SGD with learning rate 0.01 and momentum 0.9 (no dampening,
//! no Nesterov, no weight decay); fixed random fp32 inputs and labels created once on the device.
//! After 3 warm-up steps one timed step picks `steps = clamp(round(2 s / step time), 1, 50)`;
//! each of `--runs` runs times `steps` steps and ends with the loss read back and a device sync,
//! and the median run gives images/s. The very first step (kernel compilation, autotuning) is
//! reported separately as `first_step_seconds`.
//!
//! ```text
//! cargo run --release --manifest-path examples/burn_reference/Cargo.toml -- --batch-size 64
//! cargo run --release --manifest-path examples/burn_reference/Cargo.toml -- \
//!     --batch-size 64 --batch-size 128 --runs 5 --json
//! cargo run --release --manifest-path examples/burn_reference/Cargo.toml -- --check 50
//! ```
//!
//! `--check N` trains N steps on the fixed batch and prints the loss every 10 steps (it should
//! fall), instead of measuring throughput.
//!
//! Burn picks wgpu's default adapter; `CUBECL_WGPU_DEFAULT_DEVICE=Cpu` (or `IntegratedGpu(0)`,
//! ...) overrides it. With only the `wgpu` feature Burn compiles its kernels to WGSL.
//!
//! Caches that make later first steps faster: CubeCL stores autotune results in
//! `<outermost Cargo project above the working directory>/target/environment/default.db`, or
//! `~/.cache/cubecl/default.db` when no `Cargo.toml` lies above the working directory
//! (compiled kernels are not cached unless `compilation.cache = true` is configured). Mesa
//! (lavapipe) caches compiled shaders in `~/.cache/mesa_shader_cache`. For a cold first step, use
//! a fresh environment name and an empty Mesa cache, e.g.
//! `CUBECL_ENVIRONMENT=cold-$$ MESA_SHADER_CACHE_DIR=$(mktemp -d)`.

use std::time::Instant;

use burn::module::{Initializer, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, ModuleOptimizer, SgdConfig};
use burn::prelude::*;
use burn::tensor::Distribution;

const LEARNING_RATE: f64 = 0.01;
const WARMUP_STEPS: usize = 3;
const TARGET_RUN_SECONDS: f64 = 2.0;
const MAX_STEPS: usize = 50;

#[derive(Module, Debug)]
struct LeNet5 {
    conv1: Conv2d,
    conv2: Conv2d,
    pool: MaxPool2d,
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
    relu: Relu,
}

/// Kaiming normal with gain √2, like `nn.init.kaiming_normal_(w, nonlinearity="relu")`
/// (std = √2 / √fan_in).
fn he() -> Initializer {
    Initializer::KaimingNormal {
        gain: 2f64.sqrt(),
        fan_out_only: false,
    }
}

fn zero_bias(len: usize, device: &Device) -> Option<Param<Tensor<1>>> {
    Some(Param::from_tensor(Tensor::zeros([len], device)))
}

fn conv(cin: usize, cout: usize, pad: usize, device: &Device) -> Conv2d {
    let mut layer = Conv2dConfig::new([cin, cout], [5, 5])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_initializer(he())
        .init(device);
    layer.bias = zero_bias(cout, device);
    layer
}

fn linear(din: usize, dout: usize, device: &Device) -> Linear {
    let mut layer = LinearConfig::new(din, dout)
        .with_initializer(he())
        .init(device);
    layer.bias = zero_bias(dout, device);
    layer
}

impl LeNet5 {
    fn new(device: &Device) -> Self {
        Self {
            conv1: conv(1, 6, 2, device),
            conv2: conv(6, 16, 0, device),
            pool: MaxPool2dConfig::new([2, 2]).init(),
            fc1: linear(16 * 5 * 5, 120, device),
            fc2: linear(120, 84, device),
            fc3: linear(84, 10, device),
            relu: Relu::new(),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = self.pool.forward(self.relu.forward(self.conv1.forward(x)));
        let x = self.pool.forward(self.relu.forward(self.conv2.forward(x)));
        let x: Tensor<2> = x.flatten(1, 3);
        let x = self.relu.forward(self.fc1.forward(x));
        let x = self.relu.forward(self.fc2.forward(x));
        self.fc3.forward(x)
    }
}

struct Trainer {
    model: Option<LeNet5>,
    optim: ModuleOptimizer,
    loss_fn: CrossEntropyLoss,
    x: Tensor<4>,
    y: Tensor<1, Int>,
    device: Device,
}

impl Trainer {
    fn new(batch: usize, device: &Device) -> Self {
        device.seed(1);
        let model = LeNet5::new(device);
        let optim = SgdConfig::new()
            .with_momentum(Some(MomentumConfig {
                momentum: 0.9,
                dampening: 0.0,
                nesterov: false,
            }))
            .init();
        let loss_fn = CrossEntropyLossConfig::new().init(device);
        let x = Tensor::<4>::random([batch, 1, 28, 28], Distribution::Normal(0.0, 1.0), device);
        // Labels from a fixed host-side LCG, uploaded once.
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let labels: Vec<i32> = (0..batch)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) % 10) as i32
            })
            .collect();
        let y = Tensor::<1, Int>::from_ints(labels.as_slice(), device);
        Self {
            model: Some(model),
            optim,
            loss_fn,
            x,
            y,
            device: device.clone(),
        }
    }

    /// Forward, loss, backward and SGD update; returns the (lazy) loss tensor.
    fn step(&mut self) -> Tensor<1> {
        let model = self.model.take().expect("model");
        let logits = model.forward(self.x.clone());
        let loss = self.loss_fn.forward(logits, self.y.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        self.model = Some(self.optim.step(LEARNING_RATE, model, grads));
        loss
    }

    /// Reads `loss` back and waits for everything queued on the device.
    fn finish(&self, loss: Tensor<1>) -> f32 {
        let value = loss.into_scalar::<f32>();
        self.device.sync().expect("device sync");
        value
    }
}

struct Result {
    batch: usize,
    steps: usize,
    run_seconds: Vec<f64>,
    images_per_second: f64,
    first_step_seconds: f64,
}

fn measure(batch: usize, runs: usize, device: &Device) -> Result {
    let mut t = Trainer::new(batch, device);
    device.sync().expect("device sync");

    let start = Instant::now();
    let loss = t.step();
    t.finish(loss);
    let first_step_seconds = start.elapsed().as_secs_f64();

    for _ in 1..WARMUP_STEPS {
        t.step();
    }
    let loss = t.step();
    t.finish(loss);

    let start = Instant::now();
    let loss = t.step();
    t.finish(loss);
    let one = start.elapsed().as_secs_f64();
    let steps = ((TARGET_RUN_SECONDS / one).round() as usize).clamp(1, MAX_STEPS);

    let mut run_seconds = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let mut loss = None;
        for _ in 0..steps {
            loss = Some(t.step());
        }
        t.finish(loss.expect("at least one step"));
        run_seconds.push(start.elapsed().as_secs_f64());
    }
    let mut sorted = run_seconds.clone();
    sorted.sort_by(f64::total_cmp);
    let median = if sorted.len() % 2 == 1 {
        sorted[sorted.len() / 2]
    } else {
        (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
    };
    Result {
        batch,
        steps,
        run_seconds,
        images_per_second: (steps * batch) as f64 / median,
        first_step_seconds,
    }
}

fn check(batch: usize, steps: usize, device: &Device) {
    let mut t = Trainer::new(batch, device);
    for i in 1..=steps {
        let loss = t.step();
        if i == 1 || i % 10 == 0 || i == steps {
            println!("step {i:>4}  loss {:.4}", t.finish(loss));
        }
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn usage() -> ! {
    eprintln!(
        "usage: wgcnn-burn-reference [--batch-size N]... [--runs N] [--json] [--verbose] [--check STEPS]\n\
         LeNet-5 training images/s in Burn 0.22.1 (wgpu backend); batch sizes default to 64."
    );
    std::process::exit(2)
}

fn main() {
    let mut batches = Vec::new();
    let mut runs = 3usize;
    let mut json = false;
    let mut verbose = false;
    let mut check_steps = None;
    let mut args = std::env::args().skip(1);
    let number = |value: Option<String>| -> usize {
        match value.as_deref().map(str::parse::<usize>) {
            Some(Ok(n)) if n > 0 => n,
            _ => usage(),
        }
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--batch-size" => batches.push(number(args.next())),
            "--runs" => runs = number(args.next()),
            "--json" => json = true,
            "--verbose" => verbose = true,
            "--check" => check_steps = Some(number(args.next())),
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    if batches.is_empty() {
        batches.push(64);
    }

    let device = Device::wgpu(DeviceKind::DefaultDevice).autodiff();
    let adapter = device
        .identity()
        .map(|id| id.name)
        .unwrap_or_else(|| "default".into());
    let label = format!("burn-wgpu {adapter}");

    if let Some(steps) = check_steps {
        println!("device: {label}");
        check(batches[0], steps, &device);
        return;
    }
    if !json {
        println!("device: {label} (Burn 0.22.1, autodiff, fusion + autotune)\n");
        println!(
            "{:<8} {:>6} {:>12} {:>14}",
            "model", "batch", "images/s", "first-step-s"
        );
    }
    for &batch in &batches {
        let r = measure(batch, runs, &device);
        if json {
            println!(
                "{{\"kind\": \"train\", \"model\": \"lenet5\", \"batch_size\": {}, \"device\": {}, \
                 \"images_per_second\": {:.1}, \"first_step_seconds\": {:.3}}}",
                r.batch,
                json_string(&label),
                r.images_per_second,
                r.first_step_seconds
            );
        } else {
            println!(
                "{:<8} {:>6} {:>12.1} {:>14.3}",
                "lenet5", r.batch, r.images_per_second, r.first_step_seconds
            );
        }
        if verbose {
            let per_run: Vec<String> = r
                .run_seconds
                .iter()
                .map(|s| format!("{:.1}", (r.steps * r.batch) as f64 / s))
                .collect();
            eprintln!(
                "batch {}: {} steps/run, images/s per run: {}",
                r.batch,
                r.steps,
                per_run.join(", ")
            );
        }
    }
}
