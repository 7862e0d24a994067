//! GPU timestamp spans (`GpuContext::gpu_timer`) and the clocks of `bench
//! layers` and `bench kernels`:
//! a timer exactly where the adapter has timestamp queries, spans that read
//! back positive and finite, and the wall clock otherwise. No test here
//! judges how long anything took.

mod common;

use std::process::Command;

use wgcnn::backend::Backend;
use wgcnn::bench::{self, Clock};
use wgcnn::cpu::CpuBackend;
use wgcnn::geometry::GemmSpec;
use wgcnn::gpu::GpuBackend;
use wgcnn::nn::builtin;
use wgcnn::rng::SplitMix64;
use wgcnn::tensor::HostTensor;

/// Whether the adapter behind `gpu` offers timestamp queries, asked of wgpu
/// directly rather than of the context under test.
fn adapter_has_timestamps(gpu: &GpuBackend) -> bool {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    let adapter = adapters
        .iter()
        .find(|a| a.get_info() == gpu.ctx.info)
        .expect("the context's adapter is listed");
    adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY)
}

/// Timestamps are off when the environment asks (`WGCNN_TIMESTAMPS=0`).
fn timestamps_switched_off() -> bool {
    std::env::var("WGCNN_TIMESTAMPS").is_ok_and(|v| v == "0")
}

/// A product big enough to be real work, with its operands.
fn product(gpu: &GpuBackend) -> (GemmSpec, wgcnn::gpu::GpuTensor, wgcnn::gpu::GpuTensor) {
    let spec = GemmSpec {
        m: 128,
        n: 128,
        k: 128,
        trans_a: false,
        trans_b: false,
    };
    let mut rng = SplitMix64::new(1);
    let a = gpu.upload(&HostTensor::new(
        &spec.a_shape(),
        rng.uniform_vec(spec.m * spec.k, -1.0, 1.0),
    ));
    let b = gpu.upload(&HostTensor::new(
        &spec.b_shape(),
        rng.uniform_vec(spec.k * spec.n, -1.0, 1.0),
    ));
    (spec, a, b)
}

#[test]
fn a_timer_exactly_where_the_adapter_has_timestamps() {
    let Some(gpu) = common::gpu() else { return };
    let expected = adapter_has_timestamps(gpu) && !timestamps_switched_off();
    eprintln!(
        "{}: timestamp queries {}",
        gpu.ctx.describe(),
        if expected { "on" } else { "off" }
    );
    assert_eq!(
        gpu.ctx.features.contains(wgpu::Features::TIMESTAMP_QUERY),
        expected
    );
    assert_eq!(gpu.ctx.gpu_timer().is_some(), expected);
    assert_eq!(gpu.span_timer().is_some(), expected);
    assert!(CpuBackend::<f32>::fast().span_timer().is_none());
    gpu.take_error().unwrap();
}

#[test]
fn spans_read_back_positive_and_finite_and_leave_results_alone() {
    let Some(gpu) = common::gpu() else { return };
    let Some(mut timer) = gpu.ctx.gpu_timer() else {
        eprintln!("no timestamp queries on this adapter: nothing to time");
        return;
    };
    let (spec, a, b) = product(gpu);
    let untimed = gpu.download(&gpu.gemm(&a, &b, &spec));

    // An empty span first, then work, then empty again: one timer, reused.
    timer.begin();
    timer.end();
    let empty = timer.seconds();
    assert!(empty.is_finite() && empty >= 0.0, "empty span {empty}");

    timer.begin();
    let c = gpu.gemm(&a, &b, &spec);
    timer.end();
    let work = timer.seconds();
    // Only a sanity bound (a garbage or unconverted tick count would be
    // huge), not a judgement of speed.
    assert!(
        work.is_finite() && work > 0.0 && work < 60.0,
        "span of a 128³ product: {work} s"
    );
    let timed = gpu.download(&c);
    assert!(
        timed
            .data
            .iter()
            .zip(&untimed.data)
            .all(|(x, y)| x.to_bits() == y.to_bits()),
        "the marks changed the product"
    );

    timer.begin();
    timer.end();
    let again = timer.seconds();
    assert!(again.is_finite() && again >= 0.0, "empty span {again}");

    // A span read before it ends is a bug in the caller, not a zero.
    let unfinished = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        timer.begin();
        timer.seconds()
    }));
    assert!(unfinished.is_err(), "seconds() before end() returned");
    gpu.take_error().unwrap();
}

#[test]
fn bench_layers_uses_timestamps_exactly_where_the_adapter_has_them() {
    let Some(gpu) = common::gpu() else { return };
    let expected = if adapter_has_timestamps(gpu) && !timestamps_switched_off() {
        Clock::GpuTimestamps
    } else {
        Clock::Wall
    };
    let spec = builtin("lenet5", [1, 28, 28], 10).unwrap();
    let results = bench::layers(gpu, &spec, 2, 1).unwrap();
    assert_eq!(results.len(), spec.layers.len());
    for r in &results {
        assert_eq!(r.clock, expected, "{}", r.layer);
        assert!(
            r.forward_ms.is_finite() && r.forward_ms >= 0.0,
            "{}: forward {}",
            r.layer,
            r.forward_ms
        );
        assert!(
            r.backward_ms.is_finite() && r.backward_ms >= 0.0,
            "{}: backward {}",
            r.layer,
            r.backward_ms
        );
    }
    // A conv layer's forward and backward are dispatches, so a span > 0.
    if expected == Clock::GpuTimestamps {
        assert!(results[0].forward_ms > 0.0 && results[0].backward_ms > 0.0);
    }
    gpu.take_error().unwrap();

    let cpu = CpuBackend::<f32>::fast();
    let results = bench::layers(&cpu, &spec, 2, 1).unwrap();
    assert!(results.iter().all(|r| r.clock == Clock::Wall));
}

/// The `clock` of each line of kind `kind` that `bench <what> --json`
/// prints (`layers`, `kernels` or `gemm`, on `args`' model or shapes), with
/// `WGCNN_TIMESTAMPS` set to `timestamps` or removed; each line's time must
/// be finite and not negative.
fn bench_clocks(what: &str, args: &[&str], kind: &str, timestamps: Option<&str>) -> Vec<String> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wgcnn"));
    command
        .args(["bench", what, "--runs", "1", "--json"])
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir());
    match timestamps {
        Some(v) => command.env("WGCNN_TIMESTAMPS", v),
        None => command.env_remove("WGCNN_TIMESTAMPS"),
    };
    let out = command.output().expect("run wgcnn");
    assert!(out.status.success(), "{}", common::cli::text(&out));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        // `bench gemm` on a GPU measures the peak first.
        .filter(|v| v["kind"] != "peak")
        .map(|v| {
            assert_eq!(v["kind"], kind, "{v}");
            let times = ["forward_ms", "backward_ms", "ms_per_step", "seconds"]
                .iter()
                .filter_map(|key| v[key].as_f64());
            for time in times {
                assert!(time.is_finite() && time >= 0.0, "{v}");
            }
            v["clock"].as_str().expect("a clock").to_string()
        })
        .collect()
}

#[test]
fn bench_layers_kernels_and_gemm_json_name_their_clock_and_fall_back_to_the_wall() {
    let Some(gpu) = common::gpu() else { return };
    let expected = if adapter_has_timestamps(gpu) {
        "gpu-timestamps"
    } else {
        "wall"
    };
    let model: &[&str] = &["--model", "lenet5", "--batch-size", "2"];
    let shapes: &[&str] = &["--shape", "33x17x65", "--shape", "64x64x64"];
    for (what, args, kind) in [
        ("layers", model, "layer"),
        ("kernels", model, "kernel"),
        ("gemm", shapes, "gemm"),
    ] {
        let clocks = bench_clocks(what, args, kind, None);
        assert!(!clocks.is_empty(), "bench {what}");
        assert!(
            clocks.iter().all(|c| c == expected),
            "bench {what}: {clocks:?}"
        );
        let clocks = bench_clocks(what, args, kind, Some("0"));
        assert!(!clocks.is_empty(), "bench {what}");
        assert!(
            clocks.iter().all(|c| c == "wall"),
            "bench {what}: {clocks:?}"
        );
    }
}
