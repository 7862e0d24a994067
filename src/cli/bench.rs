//! `wgcnn bench`: GEMM GFLOP/s, per-layer times and training images/s, as a
//! table or as JSON lines.

use clap::{Args, Subcommand};
use serde_json::json;
use wgcnn::Result;
use wgcnn::backend::Backend;
use wgcnn::bench;
use wgcnn::cpu::CpuBackend;
use wgcnn::gpu::GpuBackend;
use wgcnn::gpu::gemm::block_runs_on;
use wgcnn::gpu::gemm_source::{BLOCKS, Block};
use wgcnn::nn::{ModelSpec, builtin};

/// What to measure (all of it when omitted).
#[derive(Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchKind {
    /// The adapter's multiply-add throughput with everything in registers
    /// (GFLOP/s): the ceiling no kernel passes. `gemm` on a GPU measures it
    /// too and shows each product's share of it.
    Peak,
    /// GEMM GFLOP/s on square sizes and the built-in models' conv shapes.
    Gemm,
    /// Forward and backward time of every layer of --model (GPU timestamps
    /// where the adapter has them, else wall clock).
    Layers,
    /// Training images/s of the built-in models (or --model, a name or a
    /// model file).
    Train,
    /// GPU time per kernel in a training step of --model (each dispatch
    /// waited for on its own).
    Kernels,
}

/// Settings of `wgcnn bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// What to measure; everything when omitted.
    #[command(subcommand)]
    pub kind: Option<BenchKind>,
    /// Built-in model(s) or model files for `layers`, `train` and `kernels`
    /// (repeatable). Default:
    /// lenet5, fashion-cnn and cifar-cnn for `train`, fashion-cnn for `layers`.
    #[arg(long = "model", global = true)]
    pub models: Vec<String>,
    /// Batch size(s) (repeatable). Default: 64, 128, 256 for `train`, 64 for
    /// `layers`.
    #[arg(long = "batch-size", global = true)]
    pub batch_sizes: Vec<usize>,
    /// Square GEMM sizes (repeatable). Default: 256, 512, 1024, 2048, 4096,
    /// then the built-in models' conv shapes.
    #[arg(long = "size", global = true)]
    pub sizes: Vec<usize>,
    /// GEMM shapes `MxNxK` for `gemm` (repeatable), instead of the default
    /// sizes and conv shapes (with --size: after them).
    #[arg(long = "shape", global = true, value_parser = parse_shape)]
    pub shapes: Vec<[usize; 3]>,
    /// The GEMM kernel `gemm` times (`gemm_8x16`, `gemm_32x16`,
    /// `gemm_tiled`, `gemm_tiled_64`, `gemm_8x16_slots`, `gemm_32x8_k4`), instead of the
    /// tuner's choice.
    #[arg(long, global = true, value_parser = parse_kernel)]
    pub kernel: Option<Block>,
    /// Timed runs per figure (the median is reported).
    #[arg(long, default_value_t = 5, global = true)]
    pub runs: usize,
    /// GPU adapter index from `wgcnn devices`.
    #[arg(long, global = true)]
    pub device: Option<usize>,
    /// Benchmark the CPU path instead of a GPU adapter.
    #[arg(long, global = true)]
    pub cpu: bool,
    /// One JSON object per line instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `MxNxK` as `[m, n, k]`, each at least 1.
fn parse_shape(text: &str) -> std::result::Result<[usize; 3], String> {
    text.split('x')
        .map(|d| d.parse().ok().filter(|&d| d > 0))
        .collect::<Option<Vec<usize>>>()
        .and_then(|dims| <[usize; 3]>::try_from(dims).ok())
        .ok_or_else(|| format!("`{text}` is not a GEMM shape MxNxK of positive sizes"))
}

/// The GEMM kernel named `text`.
fn parse_kernel(text: &str) -> std::result::Result<Block, String> {
    BLOCKS
        .into_iter()
        .find(|b| b.name() == text)
        .ok_or_else(|| {
            let names: Vec<_> = BLOCKS.iter().map(|b| b.name()).collect();
            format!("no GEMM kernel `{text}` (there are {})", names.join(", "))
        })
}

/// Runs `wgcnn bench`.
pub fn run(args: &BenchArgs) -> Result<()> {
    if args.cpu && args.kind == Some(BenchKind::Kernels) {
        return Err(wgcnn::Error::Setting(
            "`bench kernels` times GPU kernels; it has no --cpu form (try `bench layers --cpu`)"
                .into(),
        ));
    }
    if args.cpu && args.kind == Some(BenchKind::Peak) {
        return Err(wgcnn::Error::Setting(
            "`bench peak` measures a GPU adapter's ceiling; it has no --cpu form (try `bench gemm --cpu`)"
                .into(),
        ));
    }
    if args.kernel.is_some() && (args.cpu || args.kind != Some(BenchKind::Gemm)) {
        return Err(wgcnn::Error::Setting(
            "--kernel picks the GPU kernel of `bench gemm` (the CPU path has one GEMM)".into(),
        ));
    }
    if args.cpu {
        let cpu = CpuBackend::<f32>::fast();
        if !args.json {
            println!("device: {}", cpu.name());
        }
        run_on(&cpu, &cpu.name(), args, None)
    } else {
        let gpu = GpuBackend::new(args.device)?;
        let name = gpu.ctx.describe();
        if let Some(block) = args.kernel.filter(|&b| !block_runs_on(&gpu.ctx, b)) {
            return Err(wgcnn::Error::Setting(format!(
                "GEMM kernel `{}` needs subgroups of {} lanes, which {name} does not have",
                block.name(),
                block.workgroup[0]
            )));
        }
        if args.kind == Some(BenchKind::Kernels) {
            return kernels(&gpu, &name, args);
        }
        if !args.json {
            println!("device: {name}");
        }
        let peak = matches!(args.kind, None | Some(BenchKind::Peak | BenchKind::Gemm))
            .then(|| peak(&gpu, &name, args));
        gpu.ctx.gemm_tuner.force(args.kernel);
        run_on(&gpu, &name, args, peak)
    }
}

/// Measures and prints the adapter's multiply-add ceiling; returns it in
/// GFLOP/s.
fn peak(gpu: &GpuBackend, device: &str, args: &BenchArgs) -> f64 {
    let r = bench::peak(gpu, args.runs);
    if args.json {
        println!(
            "{}",
            json!({"kind": "peak", "device": device, "gflops": r.gflops, "seconds": r.seconds,
                   "invocations": r.invocations, "iterations": r.iterations})
        );
    } else {
        println!(
            "\npeak: {:.1} GFLOP/s of multiply-adds in registers ({} invocations × {} iterations in {:.1} ms)",
            r.gflops,
            r.invocations,
            r.iterations,
            r.seconds * 1e3
        );
    }
    r.gflops
}

fn kernels(gpu: &GpuBackend, device: &str, args: &BenchArgs) -> Result<()> {
    let models = if args.models.is_empty() {
        vec!["fashion-cnn".to_string()]
    } else {
        args.models.clone()
    };
    let batches = if args.batch_sizes.is_empty() {
        vec![64]
    } else {
        args.batch_sizes.clone()
    };
    if !args.json {
        println!("device: {device}");
    }
    for model in &models {
        for &batch in &batches {
            let spec = bench_model(model)?;
            let shares = bench::kernels(gpu, &spec, batch, args.runs)?;
            let total: f64 = shares.iter().map(|s| s.ms_per_step).sum();
            if !args.json {
                let clock = shares.first().map_or("", |s| s.clock.as_str());
                println!("\n{model} batch {batch}: {total:.3} ms per step in kernels ({clock})");
                println!("{:>10} {:>8} {:>6}  kernel [grid]", "ms/step", "calls", "%");
            }
            for s in shares {
                if args.json {
                    println!(
                        "{}",
                        json!({"kind": "kernel", "model": model, "batch_size": batch, "device": device,
                               "kernel": s.kernel, "calls_per_step": s.calls_per_step, "ms_per_step": s.ms_per_step,
                               "clock": s.clock.as_str()})
                    );
                } else {
                    println!(
                        "{:>10.3} {:>8.1} {:>6.1}  {}",
                        s.ms_per_step,
                        s.calls_per_step,
                        100.0 * s.ms_per_step / total,
                        s.kernel
                    );
                }
            }
        }
    }
    Ok(())
}

/// A built-in model (for 10 classes of the images it is made for) or a
/// model file, by `--model`'s value.
fn bench_model(name: &str) -> Result<ModelSpec> {
    super::train::model_spec(Some(name), shape_of(name), 10)
}

fn shape_of(model: &str) -> [usize; 3] {
    if model.starts_with("cifar") {
        [3, 32, 32]
    } else {
        [1, 28, 28]
    }
}

/// The benchmarks `args` asks for on `backend` (`peak`: the adapter's
/// ceiling in GFLOP/s, where measured).
fn run_on<B: Backend>(
    backend: &B,
    device: &str,
    args: &BenchArgs,
    peak: Option<f64>,
) -> Result<()> {
    let all = args.kind.is_none();
    if all || args.kind == Some(BenchKind::Gemm) {
        gemm(backend, device, args, peak)?;
    }
    if all || args.kind == Some(BenchKind::Layers) {
        let models = if args.models.is_empty() {
            vec!["fashion-cnn".to_string()]
        } else {
            args.models.clone()
        };
        let batches = if args.batch_sizes.is_empty() {
            vec![64]
        } else {
            args.batch_sizes.clone()
        };
        for model in &models {
            for &batch in &batches {
                layers(backend, device, model, batch, args)?;
            }
        }
    }
    if all || args.kind == Some(BenchKind::Train) {
        let models = if args.models.is_empty() {
            ["lenet5", "fashion-cnn", "cifar-cnn"]
                .map(String::from)
                .to_vec()
        } else {
            args.models.clone()
        };
        let batches = if args.batch_sizes.is_empty() {
            vec![64, 128, 256]
        } else {
            args.batch_sizes.clone()
        };
        if !args.json {
            println!(
                "\n{:<14} {:>6} {:>12} {:>14} {:>12}",
                "train model", "batch", "images/s", "first step s", "memory MiB"
            );
        }
        for model in &models {
            for &batch in &batches {
                let spec = bench_model(model)?;
                // About two seconds per timed run, judged from one step.
                let probe = bench::train(backend, &spec, batch, 1, 1)?;
                let steps =
                    ((2.0 * probe.images_per_second / batch as f64).round() as usize).clamp(1, 50);
                let r = bench::train(backend, &spec, batch, steps, args.runs.min(3))?;
                let memory = r.allocated_bytes.map(|b| b as f64 / 1048576.0);
                if args.json {
                    println!(
                        "{}",
                        json!({"kind": "train", "model": model, "batch_size": batch, "device": device,
                               "images_per_second": r.images_per_second, "first_step_seconds": probe.first_step_seconds,
                               "allocated_mib": memory})
                    );
                } else {
                    println!(
                        "{model:<14} {batch:>6} {:>12.1} {:>14.3} {:>12}",
                        r.images_per_second,
                        probe.first_step_seconds,
                        memory.map_or("-".to_string(), |m| format!("{m:.1}"))
                    );
                }
            }
        }
    }
    Ok(())
}

fn gemm<B: Backend>(backend: &B, device: &str, args: &BenchArgs, peak: Option<f64>) -> Result<()> {
    let defaults = args.sizes.is_empty() && args.shapes.is_empty();
    let sizes = if defaults {
        vec![256, 512, 1024, 2048, 4096]
    } else {
        args.sizes.clone()
    };
    let mut shapes: Vec<(String, usize, usize, usize)> = sizes
        .iter()
        .map(|&s| (format!("{s}x{s}x{s}"), s, s, s))
        .collect();
    if args.shapes.is_empty() {
        for model in ["lenet5", "fashion-cnn", "cifar-cnn"] {
            shapes.extend(bench::conv_gemm_shapes(
                model,
                &builtin(model, shape_of(model), 10)?,
            )?);
        }
    }
    shapes.extend(
        args.shapes
            .iter()
            .map(|&[m, n, k]| (format!("{m}x{n}x{k}"), m, n, k)),
    );
    // Every shape is checked before any is timed.
    for &(_, m, n, k) in &shapes {
        bench::check_gemm_fits(backend, m, n, k)?;
    }
    let kernel = args.kernel.map(Block::name);
    if !args.json {
        if let Some(kernel) = kernel {
            println!("kernel: {kernel}");
        }
        // A share of the peak where there is one (not on the CPU path).
        let share = if peak.is_some() { "% peak" } else { "" };
        println!(
            "\n{:<40} {:>12} {:>10} {:>8}  clock",
            "gemm (MxNxK)", "ms", "GFLOP/s", share
        );
    }
    for (label, m, n, k) in shapes {
        // Large products: fewer runs keep the whole bench in minutes.
        let runs = if m as u128 * n as u128 * k as u128 > 1 << 31 {
            args.runs.min(3)
        } else {
            args.runs
        };
        let r = bench::gemm(backend, label, m, n, k, runs)?;
        let percent = peak.map(|p| 100.0 * r.gflops / p);
        if args.json {
            println!(
                "{}",
                json!({"kind": "gemm", "shape": r.shape, "device": device, "kernel": kernel,
                       "seconds": r.seconds, "gflops": r.gflops, "percent_of_peak": percent,
                       "clock": r.clock.as_str()})
            );
        } else {
            println!(
                "{:<40} {:>12.3} {:>10.2} {:>8}  {}",
                r.shape,
                r.seconds * 1e3,
                r.gflops,
                percent.map_or(String::new(), |p| format!("{p:.1}")),
                r.clock.as_str()
            );
        }
    }
    Ok(())
}

fn layers<B: Backend>(
    backend: &B,
    device: &str,
    model: &str,
    batch: usize,
    args: &BenchArgs,
) -> Result<()> {
    let spec = bench_model(model)?;
    let results = bench::layers(backend, &spec, batch, args.runs)?;
    if !args.json {
        println!(
            "\n{model} batch {batch}: {:<18} {:>20} {:>12} {:>12}  clock",
            "layer", "output", "forward ms", "backward ms"
        );
    }
    for r in results {
        if args.json {
            println!(
                "{}",
                json!({"kind": "layer", "model": model, "batch_size": batch, "layer": r.layer, "device": device,
                       "forward_ms": r.forward_ms, "backward_ms": r.backward_ms, "clock": r.clock.as_str()})
            );
        } else {
            println!(
                "{:>width$} {:<18} {:>20} {:>12.3} {:>12.3}  {}",
                "",
                r.layer,
                format!("{:?}", r.output),
                r.forward_ms,
                r.backward_ms,
                r.clock.as_str(),
                width = model.len() + format!(" batch {batch}:").len()
            );
        }
    }
    Ok(())
}
