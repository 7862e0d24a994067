//! `wgcnn check`: every op, forward and backward, on the GPU and on the CPU
//! reference over a grid of shapes, compared element by element.
//!
//! An element passes when `|gpu − cpu| ≤ ATOL + RTOL · mag`, where `mag` is the
//! sum of the magnitudes of the terms that produced it (for a product or a sum,
//! the same op evaluated on absolute values), so the tolerance grows with what
//! floating point can lose, not with a fixed guess. Backward kernels receive the
//! reference's forward outputs, so each kernel is judged on identical inputs.

pub mod against;

use crate::backend::{Backend, BatchNormSaved};
use crate::cpu;
use crate::geometry::{
    Activation, BatchNormLayout, BatchNormSettings, Conv2dGeometry, DropoutSettings, GemmSpec,
    Pool2dGeometry,
};
use crate::gpu::gemm::block_runs_on;
use crate::gpu::gemm_source::{BLOCKS, CONV_BLOCKS};
use crate::gpu::{GpuBackend, GpuTensor};
use crate::optim::{OptimizerKind, OptimizerSettings, UpdateStep};
use crate::rng::SplitMix64;
use crate::tensor::{HostTensor, shape_string};

/// Absolute slack for results near zero.
pub const ATOL: f64 = 1e-6;
/// Allowed error relative to the summed magnitudes (f32 carries ~6e-8 per
/// rounding; this leaves room for about a thousand roundings).
pub const RTOL: f64 = 1e-4;

/// Every op `wgcnn check` covers, in the order it runs them.
pub const OPS: [&str; 22] = [
    "gemm",
    "im2col",
    "col2im",
    "conv2d",
    "linear",
    "relu",
    "leaky_relu",
    "sigmoid",
    "tanh",
    "dropout",
    "batchnorm1d",
    "batchnorm2d",
    "maxpool2d",
    "avgpool2d",
    "softmax_cross_entropy",
    "sgd",
    "momentum",
    "nesterov",
    "adagrad",
    "rmsprop",
    "adam",
    "adamw",
];

/// The outcome of one case (one op at one shape, all its outputs).
#[derive(Clone, Debug)]
pub struct CaseResult {
    /// Op name, one of [`OPS`].
    pub op: &'static str,
    /// Shapes and settings of the case.
    pub shape: String,
    /// Largest `|gpu − cpu|` over every output.
    pub max_abs: f64,
    /// Largest `|gpu − cpu| / mag` over every output.
    pub max_rel: f64,
    /// Whether every element of every output is within tolerance.
    pub passed: bool,
    /// The element furthest out of tolerance: output, index, both values.
    pub worst: String,
}

/// Comparison of one output tensor.
#[derive(Clone, Debug)]
pub(crate) struct Compared {
    pub(crate) max_abs: f64,
    pub(crate) max_rel: f64,
    /// Largest `|got − reference| / (ATOL + RTOL·mag)`: above 1 fails.
    pub(crate) max_ratio: f64,
    pub(crate) worst: String,
}

/// Element-by-element comparison of `got` against `reference` (same shapes)
/// with per-element magnitudes `mag`; `labels` name the two sides in the
/// worst-element message (`("gpu", "cpu")`, `("got", "expected")`).
pub(crate) fn compare_elements(
    name: &str,
    got: &HostTensor<f32>,
    reference: &HostTensor<f32>,
    mag: impl Fn(usize) -> f64,
    labels: (&str, &str),
) -> Compared {
    let mut out = Compared {
        max_abs: 0.0,
        max_rel: 0.0,
        max_ratio: 0.0,
        worst: String::new(),
    };
    let mut worst_ratio = -1.0;
    for (i, (&g, &r)) in got.data.iter().zip(&reference.data).enumerate() {
        let (g, r, m) = (g as f64, r as f64, mag(i).abs());
        let diff = if g == r { 0.0 } else { (g - r).abs() };
        let diff = if diff.is_nan() { f64::INFINITY } else { diff };
        let ratio = diff / (ATOL + RTOL * m);
        out.max_abs = out.max_abs.max(diff);
        if diff > 0.0 {
            out.max_rel = out.max_rel.max(diff / m.max(f64::MIN_POSITIVE));
        }
        out.max_ratio = out.max_ratio.max(ratio);
        if ratio > worst_ratio {
            worst_ratio = ratio;
            out.worst = format!(
                "{name}[{}] {} {g:.7e} {} {r:.7e} (|diff| {diff:.2e}, magnitude {m:.2e})",
                index_string(&reference.shape, i),
                labels.0,
                labels.1
            );
        }
    }
    out
}

fn compare(
    name: &str,
    gpu: &HostTensor<f32>,
    cpu: &HostTensor<f32>,
    mag: &HostTensor<f32>,
) -> Compared {
    assert_eq!(gpu.shape, cpu.shape, "{name}: GPU and CPU shapes differ");
    assert_eq!(mag.shape, cpu.shape, "{name}: magnitude shape");
    compare_elements(name, gpu, cpu, |i| mag.data[i] as f64, ("gpu", "cpu"))
}

/// A multi-index `i,j,k` from a flat row-major index into `shape`.
pub(crate) fn index_string(shape: &[usize], mut flat: usize) -> String {
    let mut index = vec![0; shape.len()];
    for (slot, &extent) in index.iter_mut().zip(shape).rev() {
        *slot = flat % extent.max(1);
        flat /= extent.max(1);
    }
    index
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Collects the comparisons of one case into its row.
struct CaseBuilder {
    op: &'static str,
    shape: String,
    parts: Vec<Compared>,
}

impl CaseBuilder {
    fn new(op: &'static str, shape: String) -> Self {
        Self {
            op,
            shape,
            parts: Vec::new(),
        }
    }

    fn check(
        &mut self,
        name: &str,
        gpu: &HostTensor<f32>,
        cpu: &HostTensor<f32>,
        mag: &HostTensor<f32>,
    ) {
        self.parts.push(compare(name, gpu, cpu, mag));
    }

    /// An exact comparison of integer outputs (arg-max positions).
    fn check_exact(&mut self, name: &str, gpu: &[u32], cpu: &[u32]) {
        let mismatch = gpu.iter().zip(cpu).position(|(g, c)| g != c);
        self.parts.push(Compared {
            max_abs: 0.0,
            max_rel: 0.0,
            max_ratio: if mismatch.is_some() {
                f64::INFINITY
            } else {
                0.0
            },
            worst: match mismatch {
                Some(i) => format!("{name}[{i}] gpu {} cpu {}", gpu[i], cpu[i]),
                None => String::new(),
            },
        });
    }

    fn finish(self) -> CaseResult {
        let worst = self
            .parts
            .iter()
            .max_by(|a, b| a.max_ratio.total_cmp(&b.max_ratio))
            .map(|c| c.worst.clone())
            .unwrap_or_default();
        CaseResult {
            op: self.op,
            shape: self.shape,
            max_abs: self.parts.iter().map(|c| c.max_abs).fold(0.0, f64::max),
            max_rel: self.parts.iter().map(|c| c.max_rel).fold(0.0, f64::max),
            passed: self.parts.iter().all(|c| c.max_ratio <= 1.0),
            worst,
        }
    }
}

fn abs(t: &HostTensor<f32>) -> HostTensor<f32> {
    t.map(|v| v.abs())
}

fn random(rng: &mut SplitMix64, shape: &[usize]) -> HostTensor<f32> {
    HostTensor::new(shape, rng.uniform_vec(shape.iter().product(), -1.0, 1.0))
}

/// Runs every case of `op` (one of [`OPS`]) on `gpu` against the reference.
///
/// # Panics
/// On an op name not in [`OPS`].
pub fn run_op(gpu: &GpuBackend, op: &str) -> Vec<CaseResult> {
    let mut rng = SplitMix64::new(0x5eed ^ op.len() as u64);
    match op {
        "gemm" => gemm_cases(gpu, &mut rng),
        "im2col" => conv_geometries()
            .iter()
            .map(|g| im2col_case(gpu, &mut rng, g))
            .collect(),
        "col2im" => conv_geometries()
            .iter()
            .map(|g| col2im_case(gpu, &mut rng, g))
            .collect(),
        "conv2d" => conv_geometries()
            .iter()
            .map(|g| conv2d_case(gpu, &mut rng, g))
            .collect(),
        "linear" => linear_cases(gpu, &mut rng),
        "relu" => activation_cases(gpu, &mut rng, Activation::Relu),
        "leaky_relu" => activation_cases(
            gpu,
            &mut rng,
            Activation::LeakyRelu {
                negative_slope: 0.01,
            },
        ),
        "sigmoid" => activation_cases(gpu, &mut rng, Activation::Sigmoid),
        "tanh" => activation_cases(gpu, &mut rng, Activation::Tanh),
        "dropout" => dropout_cases(gpu, &mut rng),
        "batchnorm1d" => batchnorm_cases(
            gpu,
            &mut rng,
            "batchnorm1d",
            &[&[2, 3], &[8, 17], &[33, 5], &[64, 256], &[3, 1]],
        ),
        "batchnorm2d" => batchnorm_cases(
            gpu,
            &mut rng,
            "batchnorm2d",
            &[
                &[1, 3, 3, 5],
                &[2, 3, 4, 4],
                &[4, 8, 7, 5],
                &[3, 2, 1, 1],
                &[16, 6, 28, 28],
            ],
        ),
        "maxpool2d" => pool_geometries()
            .iter()
            .map(|g| maxpool_case(gpu, &mut rng, g))
            .collect(),
        "avgpool2d" => pool_geometries()
            .iter()
            .map(|g| avgpool_case(gpu, &mut rng, g))
            .collect(),
        "softmax_cross_entropy" => softmax_cases(gpu, &mut rng),
        "sgd" | "momentum" | "nesterov" | "adagrad" | "rmsprop" | "adam" | "adamw" => {
            let kind = OptimizerKind::from_name(op).expect("optimizer ops are optimizer names");
            optimizer_cases(gpu, &mut rng, kind)
        }
        other => panic!("unknown op {other:?}; ops are {OPS:?}"),
    }
}

/// Runs every case of every op.
pub fn run_all(gpu: &GpuBackend) -> Vec<CaseResult> {
    OPS.iter().flat_map(|op| run_op(gpu, op)).collect()
}

/// Every GEMM kernel (block shape) on every size and transpose combination:
/// whichever the device's tuning picks, it has been checked.
fn gemm_cases(gpu: &GpuBackend, rng: &mut SplitMix64) -> Vec<CaseResult> {
    let sizes = [
        (1, 1, 1),
        (7, 5, 3),
        (33, 17, 65),
        (64, 64, 64),
        (100, 37, 129),
        (1, 300, 2),
        (129, 3, 250),
        (70, 45, 9),
        // Depths of whole vec4s with ragged rows and columns.
        (7, 5, 12),
        (33, 17, 68),
    ];
    let mut rows = Vec::new();
    for block in BLOCKS.into_iter().filter(|&b| block_runs_on(&gpu.ctx, b)) {
        gpu.ctx.gemm_tuner.force(Some(block));
        for &(m, n, k) in &sizes {
            for (trans_a, trans_b) in [(false, false), (false, true), (true, false), (true, true)] {
                let spec = GemmSpec {
                    m,
                    n,
                    k,
                    trans_a,
                    trans_b,
                };
                let a = random(rng, &spec.a_shape());
                let b = random(rng, &spec.b_shape());
                let cpu_c = cpu::gemm(&a, &b, &spec);
                let gpu_c = gpu.download(&gpu.gemm(&gpu.upload(&a), &gpu.upload(&b), &spec));
                let mag = cpu::gemm(&abs(&a), &abs(&b), &spec);
                let label = format!("{m}x{n}x{k} {} {}", spec.case_name(), block.name());
                let mut case = CaseBuilder::new("gemm", label);
                case.check("c", &gpu_c, &cpu_c, &mag);
                rows.push(case.finish());
            }
        }
    }
    gpu.ctx.gemm_tuner.force(None);
    rows
}

/// `(N, C, H, W, O, kh, kw, stride, padding)` covering batch 1, one and several
/// channels, odd and non-square sizes, stride 2, padding 0/1/2, kh ≠ kw.
fn conv_geometries() -> Vec<Conv2dGeometry> {
    [
        (1, 1, 5, 5, 1, 3, 3, 1, 0),
        (2, 3, 7, 9, 4, 3, 3, 1, 1),
        (3, 2, 8, 6, 5, 3, 3, 2, 1),
        (2, 3, 11, 7, 6, 5, 5, 2, 2),
        (1, 4, 6, 6, 3, 1, 1, 1, 0),
        (2, 1, 28, 28, 6, 5, 5, 1, 2),
        (2, 3, 9, 5, 2, 2, 3, 2, 0),
        (1, 16, 10, 10, 33, 3, 3, 1, 1),
        (4, 6, 14, 14, 16, 5, 5, 1, 0),
        // Stride 1 with kh ≠ kw (dX's padding differs by axis), and the
        // widest window the direct kernel takes.
        (2, 3, 7, 6, 5, 3, 5, 1, 2),
        (1, 2, 9, 12, 3, 7, 7, 1, 3),
        // Weights over the 64 KiB the direct kernel reads from a uniform
        // buffer: it reads them from storage instead.
        (2, 32, 5, 6, 64, 3, 3, 1, 1),
        // A batch big enough that the weight gradient is split into partial
        // sums of unequal size.
        (67, 2, 5, 5, 3, 3, 3, 1, 1),
        // More images (and planes) than a grid dimension holds.
        (65_537, 1, 1, 1, 2, 1, 1, 1, 0),
    ]
    .iter()
    .map(|&(n, c, h, w, o, kh, kw, s, p)| {
        Conv2dGeometry::new(n, c, h, w, o, kh, kw, s, p).expect("check geometries are valid")
    })
    .collect()
}

fn conv_label(g: &Conv2dGeometry) -> String {
    format!(
        "x={} w={} s={} p={}",
        shape_string(&g.input_shape()),
        shape_string(&g.weight_shape()),
        g.stride,
        g.padding
    )
}

fn im2col_case(gpu: &GpuBackend, rng: &mut SplitMix64, g: &Conv2dGeometry) -> CaseResult {
    let x = random(rng, &g.input_shape());
    let cpu_cols = cpu::im2col(&x, g);
    let gpu_cols = gpu.download(&gpu.im2col(&gpu.upload(&x), g));
    let mut case = CaseBuilder::new("im2col", conv_label(g));
    case.check("cols", &gpu_cols, &cpu_cols, &abs(&cpu_cols));
    case.finish()
}

fn col2im_case(gpu: &GpuBackend, rng: &mut SplitMix64, g: &Conv2dGeometry) -> CaseResult {
    let cols = random(rng, &g.cols_shape());
    let cpu_x = cpu::col2im(&cols, g);
    let gpu_x = gpu.download(&gpu.col2im(&gpu.upload(&cols), g));
    let mut case = CaseBuilder::new("col2im", conv_label(g));
    case.check("dx", &gpu_x, &cpu_x, &cpu::col2im(&abs(&cols), g));
    case.finish()
}

/// Activations the GEMM epilogue applies; the layer output is checked with
/// each.
const FUSED_ACTIVATIONS: [Activation; 2] = [
    Activation::Relu,
    Activation::LeakyRelu {
        negative_slope: 0.1,
    },
];

/// Checks a layer's GPU output with each fused activation (`fused(act)`)
/// against the reference activation of its unactivated output `y`.
fn check_fused_activations(
    case: &mut CaseBuilder,
    y: &HostTensor<f32>,
    y_mag: &HostTensor<f32>,
    fused: impl Fn(Activation) -> HostTensor<f32>,
) {
    for act in FUSED_ACTIVATIONS {
        case.check(
            &format!("{} (fused)", act.name()),
            &fused(act),
            &cpu::activation_forward(act, y),
            y_mag,
        );
    }
}

fn conv2d_case(gpu: &GpuBackend, rng: &mut SplitMix64, g: &Conv2dGeometry) -> CaseResult {
    let x = random(rng, &g.input_shape());
    let w = random(rng, &g.weight_shape());
    let b = random(rng, &[g.out_channels]);
    let dy = random(rng, &g.output_shape());
    let (gx, gw, gb, gdy) = (
        gpu.upload(&x),
        gpu.upload(&w),
        gpu.upload(&b),
        gpu.upload(&dy),
    );
    let mut case = CaseBuilder::new("conv2d", conv_label(g));
    case.check(
        "y",
        &gpu.download(&gpu.conv2d_forward(&gx, &gw, &gb, g)),
        &cpu::conv2d_forward(&x, &w, &b, g),
        &cpu::conv2d_forward(&abs(&x), &abs(&w), &abs(&b), g),
    );
    let y = cpu::conv2d_forward(&x, &w, &b, g);
    let y_mag = cpu::conv2d_forward(&abs(&x), &abs(&w), &abs(&b), g);
    let cpu_grads = cpu::conv2d_backward(&x, &w, &dy, g);
    let mags = cpu::conv2d_backward(&abs(&x), &abs(&w), &abs(&dy), g);
    // Each implicit-GEMM kernel, whichever the tuner picked above: the
    // forward and the weight gradient.
    for block in CONV_BLOCKS {
        gpu.ctx.gemm_tuner.force(Some(block));
        let y_implicit = gpu.download(&gpu.conv2d_forward(&gx, &gw, &gb, g));
        let (dw_implicit, _) = gpu.conv2d_weight_grads(&gx, &gw, &gdy, g);
        gpu.ctx.gemm_tuner.force(None);
        case.check(&format!("y {}", block.name()), &y_implicit, &y, &y_mag);
        case.check(
            &format!("dw {}", block.name()),
            &gpu.download(&dw_implicit),
            &cpu_grads.dw,
            &mags.dw,
        );
    }
    // The direct kernel, for the geometries it computes (the others run
    // their GEMM path again).
    gpu.ctx.gemm_tuner.force_direct(Some(true));
    let y_direct = gpu.download(&gpu.conv2d_forward(&gx, &gw, &gb, g));
    let grads_direct = gpu.conv2d_backward(&gx, &gw, &gdy, g);
    let (dx_direct, dw_direct, db_direct) = (
        gpu.download(&grads_direct.dx),
        gpu.download(&grads_direct.dw),
        gpu.download(&grads_direct.db),
    );
    let y_direct_act = FUSED_ACTIVATIONS
        .map(|act| gpu.download(&gpu.conv2d_forward_activated(&gx, &gw, &gb, g, act)));
    gpu.ctx.gemm_tuner.force_direct(None);
    case.check("y direct", &y_direct, &y, &y_mag);
    case.check("dx direct", &dx_direct, &cpu_grads.dx, &mags.dx);
    case.check("dw direct", &dw_direct, &cpu_grads.dw, &mags.dw);
    case.check("db direct", &db_direct, &cpu_grads.db, &mags.db);
    for (act, fused) in FUSED_ACTIVATIONS.iter().zip(&y_direct_act) {
        case.check(
            &format!("{} direct (fused)", act.name()),
            fused,
            &cpu::activation_forward(*act, &y),
            &y_mag,
        );
    }
    check_fused_activations(&mut case, &y, &y_mag, |act| {
        gpu.download(&gpu.conv2d_forward_activated(&gx, &gw, &gb, g, act))
    });
    check_pooled(gpu, &mut case, [&gx, &gw, &gb], g, [&y, &y_mag]);
    let gpu_grads = gpu.conv2d_backward(&gx, &gw, &gdy, g);
    case.check("dx", &gpu.download(&gpu_grads.dx), &cpu_grads.dx, &mags.dx);
    case.check("dw", &gpu.download(&gpu_grads.dw), &cpu_grads.dw, &mags.dw);
    case.check("db", &gpu.download(&gpu_grads.db), &cpu_grads.db, &mags.db);
    // The first layer's backward: weight gradients alone.
    let (dw, db) = gpu.conv2d_weight_grads(&gx, &gw, &gdy, g);
    case.check("dw (no dx)", &gpu.download(&dw), &cpu_grads.dw, &mags.dw);
    case.check("db (no dx)", &gpu.download(&db), &cpu_grads.db, &mags.db);
    case.finish()
}

/// The convolution, each fused activation and a 2×2 max pool as one op
/// ([`Backend::conv2d_activated_maxpool`]; one pass on CPU-like adapters
/// where the direct kernel computes the forward), against the reference
/// pool of the activated `y`: the pooled values, and the reference's
/// activated output at each window's GPU arg-max (an arg-max may differ
/// from the reference's where a window's two largest values are within
/// rounding, but never by more than that).
fn check_pooled(
    gpu: &GpuBackend,
    case: &mut CaseBuilder,
    [x, w, b]: [&GpuTensor; 3],
    g: &Conv2dGeometry,
    [y, y_mag]: [&HostTensor<f32>; 2],
) {
    if g.out_h < 2 || g.out_w < 2 {
        return;
    }
    let pool = Pool2dGeometry::new(g.batch, g.out_channels, g.out_h, g.out_w, 2, 2, 0)
        .expect("a 2×2 pool fits an output of at least 2×2");
    let (mag, _) = cpu::maxpool_forward(y_mag, &pool);
    let plane = g.out_h * g.out_w;
    let pooled_plane = pool.out_h * pool.out_w;
    for act in FUSED_ACTIVATIONS {
        let activated = cpu::activation_forward(act, y);
        let (want, _) = cpu::maxpool_forward(&activated, &pool);
        let (got, argmax) = gpu.conv2d_activated_maxpool(x, w, b, g, act, &pool);
        case.check(
            &format!("{} max pooled", act.name()),
            &gpu.download(&got),
            &want,
            &mag,
        );
        let at: Vec<u32> =
            bytemuck::pod_collect_to_vec(&gpu.ctx.read_back(&argmax.buffer, 4 * argmax.len as u64));
        let at_argmax = at
            .iter()
            .enumerate()
            .map(|(i, &a)| activated.data[i / pooled_plane * plane + (a as usize).min(plane - 1)])
            .collect();
        case.check(
            &format!("{} at the arg-max", act.name()),
            &HostTensor::new(&pool.output_shape(), at_argmax),
            &want,
            &mag,
        );
    }
}

fn linear_cases(gpu: &GpuBackend, rng: &mut SplitMix64) -> Vec<CaseResult> {
    [
        (1, 1, 1),
        (3, 7, 5),
        (8, 33, 17),
        (1, 120, 84),
        (16, 784, 10),
        (64, 256, 10),
        (5, 4, 130),
        // Products a GPU splits over K: the forward in 16 slices, dX
        // (through the activation too) in 4.
        (16, 2048, 512),
    ]
    .iter()
    .map(|&(n, i, o)| {
        let x = random(rng, &[n, i]);
        let w = random(rng, &[o, i]);
        let b = random(rng, &[o]);
        let dy = random(rng, &[n, o]);
        let (gx, gw, gb, gdy) = (
            gpu.upload(&x),
            gpu.upload(&w),
            gpu.upload(&b),
            gpu.upload(&dy),
        );
        let mut case = CaseBuilder::new("linear", format!("x={n}x{i} w={o}x{i}"));
        case.check(
            "y",
            &gpu.download(&gpu.linear_forward(&gx, &gw, &gb)),
            &cpu::linear_forward(&x, &w, &b),
            &cpu::linear_forward(&abs(&x), &abs(&w), &abs(&b)),
        );
        let y = cpu::linear_forward(&x, &w, &b);
        let y_mag = cpu::linear_forward(&abs(&x), &abs(&w), &abs(&b));
        check_fused_activations(&mut case, &y, &y_mag, |act| {
            gpu.download(&gpu.linear_forward_activated(&gx, &gw, &gb, act))
        });
        let cpu_grads = cpu::linear_backward(&x, &w, &dy);
        let mags = cpu::linear_backward(&abs(&x), &abs(&w), &abs(&dy));
        let gpu_grads = gpu.linear_backward(&gx, &gw, &gdy);
        case.check("dx", &gpu.download(&gpu_grads.dx), &cpu_grads.dx, &mags.dx);
        case.check("dw", &gpu.download(&gpu_grads.dw), &cpu_grads.dw, &mags.dw);
        case.check("db", &gpu.download(&gpu_grads.db), &cpu_grads.db, &mags.db);
        let (dw, db) = gpu.linear_weight_grads(&gx, &gw, &gdy);
        case.check("dw (no dx)", &gpu.download(&dw), &cpu_grads.dw, &mags.dw);
        case.check("db (no dx)", &gpu.download(&db), &cpu_grads.db, &mags.db);
        // dX through the activation that made x, in the product's epilogue
        // (x has both signs).
        for act in FUSED_ACTIVATIONS {
            let grads = gpu.linear_backward_through(&gx, &gw, &gdy, act);
            let name = act.name();
            case.check(
                &format!("dx through {name}"),
                &gpu.download(&grads.dx),
                &cpu::activation_backward(act, &x, &x, &cpu_grads.dx),
                &mags.dx,
            );
            case.check(
                &format!("dw (dx through {name})"),
                &gpu.download(&grads.dw),
                &cpu_grads.dw,
                &mags.dw,
            );
        }
        case.finish()
    })
    .collect()
}

/// Elementwise cases: odd lengths, and whole vec4s (1000; 4x70001 over many
/// workgroups) for the kernels that take a vec4 per invocation.
const ELEMENTWISE_SHAPES: [&[usize]; 6] =
    [&[1], &[7], &[1000], &[2, 3, 5, 7], &[3, 70001], &[4, 70001]];

fn activation_cases(gpu: &GpuBackend, rng: &mut SplitMix64, act: Activation) -> Vec<CaseResult> {
    ELEMENTWISE_SHAPES
        .iter()
        .map(|shape| {
            // Wide inputs reach the saturated tails of sigmoid and tanh.
            let x = HostTensor::new(shape, rng.uniform_vec(shape.iter().product(), -12.0, 12.0));
            let dy = random(rng, shape);
            let y = cpu::activation_forward(act, &x);
            let mut case = CaseBuilder::new(act.name(), shape_string(shape));
            let gx = gpu.upload(&x);
            // Transcendental results are judged relative to the input's size.
            let forward_mag = HostTensor::new(
                shape,
                x.data
                    .iter()
                    .zip(&y.data)
                    .map(|(a, b)| a.abs() + b.abs())
                    .collect(),
            );
            case.check(
                "y",
                &gpu.download(&gpu.activation_forward(act, &gx)),
                &y,
                &forward_mag,
            );
            let dx = cpu::activation_backward(act, &x, &y, &dy);
            let gpu_dx = gpu.activation_backward(act, &gx, &gpu.upload(&y), &gpu.upload(&dy));
            case.check("dx", &gpu.download(&gpu_dx), &dx, &abs(&dy));
            case.finish()
        })
        .collect()
}

fn dropout_cases(gpu: &GpuBackend, rng: &mut SplitMix64) -> Vec<CaseResult> {
    let mut rows = Vec::new();
    for (shape, p) in ELEMENTWISE_SHAPES
        .iter()
        .zip([0.5, 0.0, 0.3, 0.9, 0.5, 0.25])
    {
        let d = DropoutSettings::new(p, 1234, rows.len() as u32 + 7).expect("valid p");
        let x = random(rng, shape);
        let dy = random(rng, shape);
        let scale = 1.0 / (1.0 - p);
        let mut case = CaseBuilder::new("dropout", format!("{} p={p}", shape_string(shape)));
        case.check(
            "y",
            &gpu.download(&gpu.dropout_forward(&gpu.upload(&x), &d)),
            &cpu::dropout_forward(&x, &d),
            &x.map(|v| v.abs() * scale),
        );
        case.check(
            "dx",
            &gpu.download(&gpu.dropout_backward(&gpu.upload(&dy), &d)),
            &cpu::dropout_backward(&dy, &d),
            &dy.map(|v| v.abs() * scale),
        );
        rows.push(case.finish());
    }
    rows
}

fn batchnorm_cases(
    gpu: &GpuBackend,
    rng: &mut SplitMix64,
    op: &'static str,
    shapes: &[&[usize]],
) -> Vec<CaseResult> {
    let mut rows = Vec::new();
    let s = BatchNormSettings::default();
    for shape in shapes {
        let layout = BatchNormLayout::of_shape(shape).expect("check shapes are valid");
        let c = [layout.channels];
        // An offset mean checks the two-pass variance.
        let x = HostTensor::new(shape, rng.uniform_vec(shape.iter().product(), 1.0, 3.0));
        let gamma = HostTensor::new(&c, rng.uniform_vec(layout.channels, 0.5, 1.5));
        let beta = random(rng, &c);
        let running_mean = random(rng, &c);
        let running_var = HostTensor::new(&c, rng.uniform_vec(layout.channels, 0.5, 2.0));
        let dy = random(rng, shape);
        let g = [&x, &gamma, &beta, &running_mean, &running_var, &dy].map(|t| gpu.upload(t));
        let [gx, ggamma, gbeta, grm, grv, gdy] = &g;

        // Training mode.
        let mut case = CaseBuilder::new(op, format!("{} train", shape_string(shape)));
        let cpu_train =
            cpu::batchnorm_forward_train(&x, &gamma, &beta, &running_mean, &running_var, &s);
        let gpu_train = gpu.batchnorm_forward_train(gx, ggamma, gbeta, grm, grv, &s);
        let y_mag = normalize_magnitude(&x, &gamma, &beta, &cpu_train.saved, &layout);
        case.check("y", &gpu.download(&gpu_train.y), &cpu_train.y, &y_mag);
        case.check(
            "mean",
            &gpu.download(&gpu_train.saved.mean),
            &cpu_train.saved.mean,
            &abs(&cpu_train.saved.mean),
        );
        case.check(
            "invstd",
            &gpu.download(&gpu_train.saved.invstd),
            &cpu_train.saved.invstd,
            &abs(&cpu_train.saved.invstd),
        );
        case.check(
            "running_mean",
            &gpu.download(&gpu_train.running_mean),
            &cpu_train.running_mean,
            &running_statistic_magnitude(&running_mean, &cpu_train.running_mean),
        );
        case.check(
            "running_var",
            &gpu.download(&gpu_train.running_var),
            &cpu_train.running_var,
            &running_statistic_magnitude(&running_var, &cpu_train.running_var),
        );
        let saved = upload_saved(gpu, &cpu_train.saved);
        let grads = cpu::batchnorm_backward(&x, &gamma, &cpu_train.saved, &dy, true);
        let gpu_grads = gpu.batchnorm_backward(gx, ggamma, &saved, gdy, true);
        check_batchnorm_grads(
            &mut case,
            gpu,
            &gpu_grads,
            &grads,
            &x,
            &gamma,
            &dy,
            &cpu_train.saved,
            &layout,
            true,
        );
        rows.push(case.finish());

        // Evaluation mode.
        let mut case = CaseBuilder::new(op, format!("{} eval", shape_string(shape)));
        let (cpu_y, cpu_saved) =
            cpu::batchnorm_forward_eval(&x, &gamma, &beta, &running_mean, &running_var, &s);
        let (gpu_y, _) = gpu.batchnorm_forward_eval(gx, ggamma, gbeta, grm, grv, &s);
        let y_mag = normalize_magnitude(&x, &gamma, &beta, &cpu_saved, &layout);
        case.check("y", &gpu.download(&gpu_y), &cpu_y, &y_mag);
        let saved = upload_saved(gpu, &cpu_saved);
        let grads = cpu::batchnorm_backward(&x, &gamma, &cpu_saved, &dy, false);
        let gpu_grads = gpu.batchnorm_backward(gx, ggamma, &saved, gdy, false);
        check_batchnorm_grads(
            &mut case, gpu, &gpu_grads, &grads, &x, &gamma, &dy, &cpu_saved, &layout, false,
        );
        rows.push(case.finish());
    }
    rows
}

fn upload_saved(
    gpu: &GpuBackend,
    saved: &BatchNormSaved<HostTensor<f32>>,
) -> BatchNormSaved<crate::gpu::GpuTensor> {
    BatchNormSaved {
        mean: gpu.upload(&saved.mean),
        invstd: gpu.upload(&saved.invstd),
    }
}

fn channel(layout: &BatchNormLayout, i: usize) -> usize {
    (i / layout.spatial) % layout.channels
}

/// `|γ|·(|x| + |μ|)·invstd + |β|` per element.
fn normalize_magnitude(
    x: &HostTensor<f32>,
    gamma: &HostTensor<f32>,
    beta: &HostTensor<f32>,
    saved: &BatchNormSaved<HostTensor<f32>>,
    layout: &BatchNormLayout,
) -> HostTensor<f32> {
    let data = x
        .data
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let c = channel(layout, i);
            gamma.data[c].abs() * (v.abs() + saved.mean.data[c].abs()) * saved.invstd.data[c]
                + beta.data[c].abs()
        })
        .collect();
    HostTensor::new(&x.shape, data)
}

fn running_statistic_magnitude(old: &HostTensor<f32>, new: &HostTensor<f32>) -> HostTensor<f32> {
    HostTensor::new(
        &old.shape,
        old.data
            .iter()
            .zip(&new.data)
            .map(|(a, b)| a.abs() + b.abs())
            .collect(),
    )
}

#[allow(clippy::too_many_arguments)]
fn check_batchnorm_grads(
    case: &mut CaseBuilder,
    gpu: &GpuBackend,
    gpu_grads: &crate::backend::BatchNormGrads<crate::gpu::GpuTensor>,
    grads: &crate::backend::BatchNormGrads<HostTensor<f32>>,
    x: &HostTensor<f32>,
    gamma: &HostTensor<f32>,
    dy: &HostTensor<f32>,
    saved: &BatchNormSaved<HostTensor<f32>>,
    layout: &BatchNormLayout,
    training: bool,
) {
    // Σ|dy| and Σ|dy·x̂| per channel bound the sums' rounding.
    let xhat_abs = |i: usize| {
        let c = channel(layout, i);
        ((x.data[i] - saved.mean.data[c]) * saved.invstd.data[c]).abs()
    };
    let mut sum_dy = vec![0.0f32; layout.channels];
    let mut sum_dy_xhat = vec![0.0f32; layout.channels];
    for (i, d) in dy.data.iter().enumerate() {
        let c = channel(layout, i);
        sum_dy[c] += d.abs();
        sum_dy_xhat[c] += d.abs() * xhat_abs(i);
    }
    let m = layout.count() as f32;
    let dx_mag = HostTensor::new(
        &x.shape,
        dy.data
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let c = channel(layout, i);
                let scale = gamma.data[c].abs() * saved.invstd.data[c];
                if training {
                    scale / m * (m * d.abs() + sum_dy[c] + xhat_abs(i) * sum_dy_xhat[c])
                } else {
                    scale * d.abs()
                }
            })
            .collect(),
    );
    let c = [layout.channels];
    case.check("dx", &gpu.download(&gpu_grads.dx), &grads.dx, &dx_mag);
    case.check(
        "dgamma",
        &gpu.download(&gpu_grads.dgamma),
        &grads.dgamma,
        &HostTensor::new(&c, sum_dy_xhat),
    );
    case.check(
        "dbeta",
        &gpu.download(&gpu_grads.dbeta),
        &grads.dbeta,
        &HostTensor::new(&c, sum_dy),
    );
}

/// `(N, C, H, W, kernel, stride, padding)`: non-square, odd sizes, overlapping
/// windows, padding 1, batch 1.
fn pool_geometries() -> Vec<Pool2dGeometry> {
    [
        (1, 1, 4, 4, 2, 2, 0),
        (2, 3, 7, 5, 2, 2, 0),
        (2, 3, 7, 9, 3, 2, 1),
        (1, 2, 6, 6, 3, 3, 0),
        (3, 1, 8, 5, 3, 1, 1),
        (2, 4, 28, 28, 2, 2, 0),
        (1, 3, 5, 11, 4, 3, 2),
        // More planes than a grid dimension holds.
        (1, 65_537, 2, 2, 2, 2, 0),
    ]
    .iter()
    .map(|&(n, c, h, w, k, s, p)| {
        Pool2dGeometry::new(n, c, h, w, k, s, p).expect("check geometries are valid")
    })
    .collect()
}

fn pool_label(g: &Pool2dGeometry) -> String {
    format!(
        "x={} k={} s={} p={}",
        shape_string(&g.input_shape()),
        g.kernel,
        g.stride,
        g.padding
    )
}

fn maxpool_case(gpu: &GpuBackend, rng: &mut SplitMix64, g: &Pool2dGeometry) -> CaseResult {
    let mut case = CaseBuilder::new("maxpool2d", pool_label(g));
    // Continuous values, then values from {0, 0.5, 1} so windows have ties.
    for ties in [false, true] {
        let len: usize = g.input_shape().iter().product();
        let data = if ties {
            (0..len).map(|_| rng.below(3) as f32 * 0.5).collect()
        } else {
            rng.uniform_vec(len, -1.0, 1.0)
        };
        let x = HostTensor::new(&g.input_shape(), data);
        let dy = random(rng, &g.output_shape());
        let (cpu_y, cpu_argmax) = cpu::maxpool_forward(&x, g);
        let (gpu_y, gpu_argmax) = gpu.maxpool_forward(&gpu.upload(&x), g);
        case.check("y", &gpu.download(&gpu_y), &cpu_y, &abs(&cpu_y));
        let gpu_argmax_host = gpu
            .ctx
            .read_back(&gpu_argmax.buffer, 4 * gpu_argmax.len as u64);
        case.check_exact(
            "argmax",
            &bytemuck::pod_collect_to_vec::<u8, u32>(&gpu_argmax_host),
            &cpu_argmax,
        );
        let cpu_dx = cpu::maxpool_backward(&dy, &cpu_argmax, g);
        let argmax = gpu.upload_indices(&cpu_argmax);
        let gpu_dx = gpu.maxpool_backward(&gpu.upload(&dy), &argmax, g);
        case.check(
            "dx",
            &gpu.download(&gpu_dx),
            &cpu_dx,
            &cpu::maxpool_backward(&abs(&dy), &cpu_argmax, g),
        );
        // The backward through the activation before the pool, in one pass:
        // the same values as that activation's backward on the pooled output,
        // then the pool's.
        let pooled = gpu.upload(&cpu_y);
        for act in FUSED_ACTIVATIONS {
            let masked = cpu::activation_backward(act, &cpu_y, &cpu_y, &dy);
            let gpu_dx = gpu.maxpool_backward_masked(&gpu.upload(&dy), &argmax, g, act, &pooled);
            case.check(
                &format!("dx through {}", act.name()),
                &gpu.download(&gpu_dx),
                &cpu::maxpool_backward(&masked, &cpu_argmax, g),
                &cpu::maxpool_backward(&abs(&masked), &cpu_argmax, g),
            );
        }
    }
    case.finish()
}

fn avgpool_case(gpu: &GpuBackend, rng: &mut SplitMix64, g: &Pool2dGeometry) -> CaseResult {
    let x = random(rng, &g.input_shape());
    let dy = random(rng, &g.output_shape());
    let mut case = CaseBuilder::new("avgpool2d", pool_label(g));
    case.check(
        "y",
        &gpu.download(&gpu.avgpool_forward(&gpu.upload(&x), g)),
        &cpu::avgpool_forward(&x, g),
        &cpu::avgpool_forward(&abs(&x), g),
    );
    case.check(
        "dx",
        &gpu.download(&gpu.avgpool_backward(&gpu.upload(&dy), g)),
        &cpu::avgpool_backward(&dy, g),
        &cpu::avgpool_backward(&abs(&dy), g),
    );
    case.finish()
}

fn softmax_cases(gpu: &GpuBackend, rng: &mut SplitMix64) -> Vec<CaseResult> {
    [(1, 1), (1, 10), (7, 3), (64, 10), (5, 1000), (300, 10)]
        .iter()
        .map(|&(n, k)| {
            // Large logits check the max-subtraction.
            let logits = HostTensor::new(&[n, k], rng.uniform_vec(n * k, -30.0, 30.0));
            let labels: Vec<u32> = (0..n).map(|_| rng.below(k as u32)).collect();
            let cpu_out = cpu::softmax_cross_entropy(&logits, &labels);
            let gpu_out =
                gpu.softmax_cross_entropy(&gpu.upload(&logits), &gpu.upload_indices(&labels));
            let mut case = CaseBuilder::new("softmax_cross_entropy", format!("logits={n}x{k}"));
            // loss_n = lse − x[label]: both terms are at most max|x| + ln K.
            let loss_mag =
                logits.data.iter().fold(0.0f32, |m, v| m.max(v.abs())) * 2.0 + (k as f32).ln();
            case.check(
                "loss",
                &gpu.download(&gpu_out.loss),
                &cpu_out.loss,
                &HostTensor::new(&[1], vec![loss_mag]),
            );
            case.check(
                "correct",
                &gpu.download(&gpu_out.correct),
                &cpu_out.correct,
                &HostTensor::zeros(&[1]),
            );
            // grad = (p − onehot)/N: magnitude (p + onehot)/N.
            let grad_mag = HostTensor::new(
                &[n, k],
                cpu_out
                    .grad
                    .data
                    .iter()
                    .enumerate()
                    .map(|(i, g)| {
                        let onehot = if labels[i / k] as usize == i % k {
                            1.0
                        } else {
                            0.0
                        };
                        let p = g * n as f32 + onehot;
                        (p.abs() + onehot) / n as f32
                    })
                    .collect(),
            );
            case.check(
                "grad",
                &gpu.download(&gpu_out.grad),
                &cpu_out.grad,
                &grad_mag,
            );
            case.finish()
        })
        .collect()
}

/// Learning rates of the consecutive steps of each optimizer case (a schedule
/// changes the rate between steps). Large enough that a wrong weight-decay
/// term shows well above the tolerance.
const OPTIMIZER_LRS: [f32; 3] = [0.1, 0.05, 0.02];

fn optimizer_cases(gpu: &GpuBackend, rng: &mut SplitMix64, kind: OptimizerKind) -> Vec<CaseResult> {
    let shapes: [&[usize]; 4] = [&[1], &[7], &[1000], &[3, 70001]];
    let mut rows = Vec::new();
    for shape in shapes {
        for weight_decay in [0.0, 0.1] {
            let settings = OptimizerSettings::new(kind, weight_decay).expect("valid settings");
            let mut cpu_param = random(rng, shape);
            let mut cpu_state = vec![HostTensor::zeros(shape); kind.state_slots()];
            let mut gpu_param = gpu.upload(&cpu_param);
            let mut gpu_state: Vec<_> = cpu_state.iter().map(|s| gpu.upload(s)).collect();
            let mut mags = OptimizerMagnitudes::new(&cpu_param, kind.state_slots());
            for (i, &lr) in OPTIMIZER_LRS.iter().enumerate() {
                let step = UpdateStep {
                    lr,
                    t: i as u32 + 1,
                };
                let grad = random(rng, shape);
                let param_before = cpu_param.clone();
                cpu::optimizer_update(&settings, &step, &mut cpu_param, &grad, &mut cpu_state);
                gpu.optimizer_update(
                    &settings,
                    &gpu.step_values(&settings, &step),
                    &mut gpu_param,
                    &gpu.upload(&grad),
                    &mut gpu_state,
                );
                mags.accumulate(&settings, &step, &param_before, &grad, &cpu_state);
            }
            let mut case = CaseBuilder::new(
                kind.name(),
                format!(
                    "{} wd={weight_decay} steps={}",
                    shape_string(shape),
                    OPTIMIZER_LRS.len()
                ),
            );
            case.check("param", &gpu.download(&gpu_param), &cpu_param, &mags.param);
            let names: &[&str] = match kind {
                OptimizerKind::Sgd => &[],
                OptimizerKind::Momentum | OptimizerKind::Nesterov => &["velocity"],
                OptimizerKind::Adagrad | OptimizerKind::RmsProp => &["square_avg"],
                OptimizerKind::Adam | OptimizerKind::AdamW => &["exp_avg", "exp_avg_sq"],
            };
            for ((name, g), (c, m)) in names
                .iter()
                .zip(&gpu_state)
                .zip(cpu_state.iter().zip(&mags.state))
            {
                case.check(name, &gpu.download(g), c, m);
            }
            rows.push(case.finish());
        }
    }
    rows
}

/// `Σ|terms|` behind a parameter and its optimizer state over consecutive
/// steps: each rule evaluated on absolute values, with the gradient's
/// magnitude `|grad| + wd·|p|` and the reference's own denominators
/// `√s + ε` (so an update that divides by a small, cancelled value is judged
/// by how large its numerator's terms were).
struct OptimizerMagnitudes {
    param: HostTensor<f32>,
    state: Vec<HostTensor<f32>>,
}

impl OptimizerMagnitudes {
    fn new(param: &HostTensor<f32>, slots: usize) -> Self {
        Self {
            param: abs(param),
            state: vec![HostTensor::zeros(&param.shape); slots],
        }
    }

    /// Adds one step, given the parameter before it and the reference's state
    /// after it.
    fn accumulate(
        &mut self,
        settings: &OptimizerSettings,
        step: &UpdateStep,
        param_before: &HostTensor<f32>,
        grad: &HostTensor<f32>,
        state_after: &[HostTensor<f32>],
    ) {
        let kind = settings.kind;
        let lr = step.lr as f64;
        let wd = settings.weight_decay as f64;
        let (mu, alpha, beta1, beta2, eps) = (
            settings.momentum as f64,
            settings.alpha as f64,
            settings.beta1 as f64,
            settings.beta2 as f64,
            settings.eps as f64,
        );
        let correction1 = 1.0 - beta1.powi(step.t as i32);
        let correction2 = 1.0 - beta2.powi(step.t as i32);
        for i in 0..grad.len() {
            let p = param_before.data[i].abs() as f64;
            let g = grad.data[i].abs() as f64
                + if kind == OptimizerKind::AdamW {
                    0.0
                } else {
                    wd * p
                };
            let mut mp = self.param.data[i] as f64;
            match kind {
                OptimizerKind::Sgd => mp += lr * g,
                OptimizerKind::Momentum | OptimizerKind::Nesterov => {
                    let mv = mu * self.state[0].data[i] as f64 + g;
                    self.state[0].data[i] = mv as f32;
                    mp += if kind == OptimizerKind::Momentum {
                        lr * mv
                    } else {
                        lr * (g + mu * mv)
                    };
                }
                OptimizerKind::Adagrad | OptimizerKind::RmsProp => {
                    let old = self.state[0].data[i] as f64;
                    let ms = if kind == OptimizerKind::Adagrad {
                        old + g * g
                    } else {
                        alpha * old + (1.0 - alpha) * g * g
                    };
                    self.state[0].data[i] = ms as f32;
                    let s = state_after[0].data[i] as f64;
                    mp += lr * g / (s.sqrt() + eps);
                }
                OptimizerKind::Adam | OptimizerKind::AdamW => {
                    if kind == OptimizerKind::AdamW {
                        mp *= 1.0 + lr * wd;
                    }
                    let mm = beta1 * self.state[0].data[i] as f64 + (1.0 - beta1) * g;
                    let mv = beta2 * self.state[1].data[i] as f64 + (1.0 - beta2) * g * g;
                    self.state[0].data[i] = mm as f32;
                    self.state[1].data[i] = mv as f32;
                    let v_hat = state_after[1].data[i] as f64 / correction2;
                    mp += lr * (mm / correction1) / (v_hat.sqrt() + eps);
                }
            }
            self.param.data[i] = mp as f32;
        }
    }
}
