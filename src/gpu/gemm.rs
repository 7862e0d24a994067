//! Host side of `shaders/gemm.wgsl`: the matrix products behind convolution
//! and the fully connected layer.

use super::context::{GpuBuffer, GpuContext, Kernel, KernelSpec, Params, grid_extent};
pub use super::gemm_operand::Packed;
use super::gemm_operand::{Depth4Operand, Source};
use super::gemm_source::{self, ARead, BRead, Block, Reads, SMALL};
use super::reduce::slice_sum_into;
use crate::geometry::Conv2dGeometry;
use crate::geometry::{Activation, GemmSpec};

/// Which bias the epilogue adds.
#[derive(Clone, Copy, Debug)]
pub enum Bias<'a> {
    /// No bias.
    None,
    /// `C[row, col] += bias[row]`.
    PerRow(&'a GpuBuffer),
    /// `C[row, col] += bias[col]`.
    PerColumn(&'a GpuBuffer),
    /// No bias; instead `C` is taken through the derivative of the
    /// epilogue's activation (relu or leaky relu) at its output `G`, an
    /// `(M, N)` matrix like `C` (one product): `C · f'(G)`, with the
    /// derivative found from the sign of `G` as the activation kernels'
    /// backwards find it. A linear layer's `dX` through the activation
    /// that made its input.
    Gate(&'a GpuBuffer),
}

/// What the epilogue does to each output: add the bias, then apply the
/// activation (relu or leaky relu; others run as a pass of their own); or,
/// with [`Bias::Gate`], apply the activation's derivative.
#[derive(Clone, Copy, Debug)]
pub struct Epilogue<'a> {
    /// The bias to add.
    pub bias: Bias<'a>,
    /// The activation to apply after the bias.
    pub activation: Option<Activation>,
}

impl<'a> From<Bias<'a>> for Epilogue<'a> {
    fn from(bias: Bias<'a>) -> Self {
        Epilogue {
            bias,
            activation: None,
        }
    }
}

impl Epilogue<'_> {
    /// The kernel's `act_mode` and slope, or `None` for an activation the
    /// epilogue does not implement.
    pub(super) fn activation_mode(&self) -> Option<(u32, f32)> {
        match self.activation {
            None => Some((0, 0.0)),
            Some(Activation::Relu) => Some((1, 0.0)),
            Some(Activation::LeakyRelu { negative_slope }) => Some((2, negative_slope)),
            Some(_) => None,
        }
    }
}

/// How a GEMM is repeated over a batch; strides are in elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batching {
    /// Number of products.
    pub count: usize,
    /// Step between consecutive `A` operands (0: shared).
    pub stride_a: usize,
    /// Step between consecutive `B` operands (0: shared).
    pub stride_b: usize,
    /// Step between consecutive outputs; ignored when `sum` is set.
    pub stride_c: usize,
    /// Sum the products into one output instead of writing each.
    pub sum: bool,
}

impl Batching {
    /// A single product.
    pub const SINGLE: Batching = Batching {
        count: 1,
        stride_a: 0,
        stride_b: 0,
        stride_c: 0,
        sum: false,
    };
}

/// Records `out = op(A)·op(B) (+ bias)` for every batch element (or their sum).
/// The kernels read the operands packed depth-major with rows padded to
/// whole vec4s (`shaders/pack.wgsl`), packed first unless already in that
/// layout; the small kernel instead reads both where they lie when both are
/// stored by rows (K a multiple of 4).
pub fn gemm_into<'e>(
    ctx: &GpuContext,
    a: &GpuBuffer,
    b: &GpuBuffer,
    epilogue: impl Into<Epilogue<'e>>,
    out: &GpuBuffer,
    spec: &GemmSpec,
    batching: Batching,
) {
    gemm_with_block_into(ctx, a, b, epilogue, out, spec, batching, None);
}

/// [`gemm_into`] with the kernel chosen by the caller (`None`: the tuner's).
#[allow(clippy::too_many_arguments)]
pub fn gemm_with_block_into<'e>(
    ctx: &GpuContext,
    a: &GpuBuffer,
    b: &GpuBuffer,
    epilogue: impl Into<Epilogue<'e>>,
    out: &GpuBuffer,
    spec: &GemmSpec,
    batching: Batching,
    block: Option<Block>,
) {
    run_gemm(
        ctx,
        stored_a(a, spec, batching),
        Operand::Source(stored_b(b, spec, batching)),
        epilogue.into(),
        out,
        spec,
        batching,
        block,
    );
}

/// [`gemm_into`] of one product, split over K where a GPU would leave most
/// of itself idle (equal slices of K, enough to fill it, for products of
/// 2²⁴ multiply-adds or more): the fully connected layers' products
/// and [`crate::backend::Backend::gemm`]. Not the convolutions', whose
/// paths (explicit, implicit, direct) must add alike.
pub fn single_gemm_into<'e>(
    ctx: &GpuContext,
    a: &GpuBuffer,
    b: &GpuBuffer,
    epilogue: impl Into<Epilogue<'e>>,
    out: &GpuBuffer,
    spec: &GemmSpec,
) {
    run_single(ctx, [a, b], None, epilogue.into(), out, spec);
}

/// [`gemm_into`] of one product that also writes `a_sums[k] = Σ_m op(A)[m, k]`,
/// K values added in m order from 0, as A is packed: a linear layer's dX
/// product `dY · W` so yields its bias gradient `Σ_n dY[n, o]` without a
/// dispatch of its own, the same sums `reduce.wgsl`'s `slice_sum` adds.
pub fn gemm_into_summing_a<'e>(
    ctx: &GpuContext,
    [a, a_sums]: [&GpuBuffer; 2],
    b: &GpuBuffer,
    epilogue: impl Into<Epilogue<'e>>,
    out: &GpuBuffer,
    spec: &GemmSpec,
) {
    run_single(ctx, [a, b], Some(a_sums), epilogue.into(), out, spec);
}

/// Depths a K slice of a split product spans at least: each slice writes
/// a whole (M, N) partial product, which should cost little beside its
/// multiply-adds.
const MIN_SPLIT_DEPTH: usize = 128;

/// Multiply-adds from which a single product may be split: below, the
/// product takes microseconds on a GPU, and the split's passes (packs, the
/// sum) would cost more than they save.
const MIN_SPLIT_MULTIPLY_ADDS: usize = 1 << 24;

/// Fewest slices worth a split: fewer at most double the workgroups of a
/// product that already has a good many.
const MIN_SPLIT_SLICES: usize = 4;

/// How many K slices a single product runs as where summed batches aim for
/// `target_workgroups` small-block workgroups: enough to reach them, each
/// at least [`MIN_SPLIT_DEPTH`] deep, and a divisor of K so that the slices
/// are equal (1: not split). A function of the shape and the device class
/// only, so every block adds the same terms in the same order.
pub(super) fn k_slices(spec: &GemmSpec, target_workgroups: usize) -> usize {
    if spec.m * spec.n * spec.k < MIN_SPLIT_MULTIPLY_ADDS {
        return 1;
    }
    let wanted = target_workgroups.div_ceil(small_tiles(spec));
    let most = wanted.min(spec.k / MIN_SPLIT_DEPTH);
    (MIN_SPLIT_SLICES..=most)
        .rev()
        .find(|&s| spec.k.is_multiple_of(s))
        .unwrap_or(1)
}

/// Records one product of `a` and `b` (A's pack also writing its sums into
/// `a_sums`, where given): as partial products over [`k_slices`] K slices
/// of its packed operands, added by the epilogue's pass, where that splits
/// it; else whole.
fn run_single(
    ctx: &GpuContext,
    [a, b]: [&GpuBuffer; 2],
    a_sums: Option<&GpuBuffer>,
    epilogue: Epilogue<'_>,
    out: &GpuBuffer,
    spec: &GemmSpec,
) {
    let a = stored_a(a, spec, Batching::SINGLE);
    let a = match a_sums {
        Some(sums) => a.summed_into(sums),
        None => a,
    };
    let b = stored_b(b, spec, Batching::SINGLE);
    let slices = if ctx.gemm_tuner.splits_k() {
        k_slices(spec, SPLIT_TARGET_WORKGROUPS_GPU)
    } else {
        1
    };
    if slices == 1 {
        let single = Batching::SINGLE;
        run_gemm(
            ctx,
            a,
            Operand::Source(b),
            epilogue,
            out,
            spec,
            single,
            None,
        );
        return;
    }
    let depth = spec.k / slices;
    let a_slices = Source::depth_slices(a.record_packed(ctx), spec.m, depth, slices);
    let b_slices = Source::depth_slices(b.record_packed(ctx), spec.n, depth, slices);
    let batching = Batching {
        count: slices,
        stride_a: a_slices.stride(),
        stride_b: b_slices.stride(),
        stride_c: 0,
        sum: true,
    };
    run_gemm(
        ctx,
        a_slices,
        Operand::Source(b_slices),
        epilogue,
        out,
        &GemmSpec { k: depth, ..*spec },
        batching,
        None,
    );
}

/// B of `spec`: op(B) is (k, n), stored (n, k) when transposed.
fn stored_b<'a>(b: &'a GpuBuffer, spec: &GemmSpec, batching: Batching) -> Source<'a> {
    Source::stored(
        b,
        [spec.n, spec.k],
        spec.trans_b,
        batching.stride_b,
        batching.count,
    )
}

/// A of `spec`: op(A) is (m, k), stored so unless transposed.
fn stored_a<'a>(a: &'a GpuBuffer, spec: &GemmSpec, batching: Batching) -> Source<'a> {
    Source::stored(
        a,
        [spec.m, spec.k],
        !spec.trans_a,
        batching.stride_a,
        batching.count,
    )
}

/// The products of a convolution: the forward and weight gradient, which
/// implicit kernels can compute reading their B operand from the input
/// image, and the input gradient's (before col2im), which the direct
/// kernel can replace with col2im.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConvProduct {
    /// `Y_n = W_col (O, C·kh·kw) · X_col,n (C·kh·kw, OH·OW)`, one per image.
    Forward,
    /// `dW (O, C·kh·kw) = Σ_n dY_n (O, OH·OW) · X_col,nᵀ`, summed over the
    /// batch.
    WeightGrad,
    /// `dX_col,n (C·kh·kw, OH·OW) = W_colᵀ · dY_n`, one per image.
    InputGrad,
}

impl ConvProduct {
    /// The GEMM of this product of `g`, and its batching over `g`'s images
    /// with B as an im2col matrix (forward; im2row's matrix for dW is packed,
    /// and carries its own stride).
    pub fn of(self, g: &Conv2dGeometry) -> (GemmSpec, Batching) {
        let (rows, positions) = (g.col_rows(), g.out_positions());
        match self {
            ConvProduct::Forward => (
                GemmSpec {
                    m: g.out_channels,
                    n: positions,
                    k: rows,
                    trans_a: false,
                    trans_b: false,
                },
                Batching {
                    count: g.batch,
                    stride_a: 0,
                    stride_b: rows * positions,
                    stride_c: g.out_channels * positions,
                    sum: false,
                },
            ),
            ConvProduct::WeightGrad => (
                GemmSpec {
                    m: g.out_channels,
                    n: rows,
                    k: positions,
                    trans_a: false,
                    trans_b: true,
                },
                Batching {
                    count: g.batch,
                    stride_a: g.out_channels * positions,
                    stride_b: 0,
                    stride_c: 0,
                    sum: true,
                },
            ),
            ConvProduct::InputGrad => (
                GemmSpec {
                    m: rows,
                    n: positions,
                    k: g.out_channels,
                    trans_a: true,
                    trans_b: false,
                },
                Batching {
                    count: g.batch,
                    stride_a: 0,
                    stride_b: g.out_channels * positions,
                    stride_c: rows * positions,
                    sum: false,
                },
            ),
        }
    }
}

/// A convolution's zero-padded input `(N, C, H + 2p, pitch)`, read by the
/// implicit kernels as the B operand of `product`.
#[derive(Clone, Copy, Debug)]
pub struct Image<'a> {
    /// The padded input.
    pub buffer: &'a GpuBuffer,
    /// The convolution (its `padding` is already applied to `buffer`).
    pub geometry: &'a Conv2dGeometry,
    /// Values per row of `buffer` (at least the padded width).
    pub pitch: usize,
    /// The product whose B the image stands for.
    pub product: ConvProduct,
}

impl Image<'_> {
    /// The kernels' image parameters (shaders/gemm.wgsl's `Params`, from
    /// `image_stride` on): where B's column `n` and row `k` lie in an image.
    fn walk(&self) -> [usize; 11] {
        let g = self.geometry;
        let width = self.pitch;
        let plane = (g.height + 2 * g.padding) * width;
        let s = g.stride;
        match self.product {
            // n = (oh, ow) → oh·s·width + ow·s; k = (c, i, j) → c·plane +
            // i·width + j.
            ConvProduct::Forward => [
                g.channels * plane,
                g.out_w,
                g.out_h,
                s,
                s * width,
                0,
                1,
                g.kernel_w,
                width,
                g.kernel_h * width,
                plane,
            ],
            // n = (c, i, j) → c·plane + i·width + j; k = (oh, ow) →
            // oh·s·width + ow·s.
            ConvProduct::WeightGrad => [
                g.channels * plane,
                g.kernel_w,
                g.kernel_h,
                1,
                width,
                plane,
                s,
                g.out_w * s,
                s * width,
                g.out_h * s * width,
                0,
            ],
            ConvProduct::InputGrad => unreachable!("no implicit kernel computes dX_col"),
        }
    }
}

/// B as the GEMM reads it.
enum Operand<'a> {
    Source(Source<'a>),
    Image(Image<'a>),
}

/// `image.product` by the implicit kernel `block`, reading B from `image`
/// instead of an im2col (or im2row) matrix: `Y_n = act(W · X_col,n + bias)`
/// with `a` = W, or `dW = Σ_n dY_n · X_col,nᵀ` with `a` = dY.
pub fn conv_implicit_into(
    ctx: &GpuContext,
    a: &GpuBuffer,
    image: Image<'_>,
    epilogue: Epilogue<'_>,
    out: &GpuBuffer,
    block: Block,
) {
    assert!(block.implicit, "{} is not an implicit kernel", block.name());
    let (spec, batching) = image.product.of(image.geometry);
    // The implicit kernels read A where it lies: W (O, C·kh·kw) and dY_n
    // (O, OH·OW) are both row-major (M, K).
    run_gemm(
        ctx,
        stored_a(a, &spec, batching),
        Operand::Image(image),
        epilogue,
        out,
        &spec,
        batching,
        Some(block),
    );
}

/// [`gemm_with_block_into`] with `op(B)` already packed (`spec.trans_b` is
/// ignored), as `shaders/im2col.wgsl`'s im2row writes it.
#[allow(clippy::too_many_arguments)]
pub fn gemm_packed_b_into<'e>(
    ctx: &GpuContext,
    a: &GpuBuffer,
    b: Packed<'_>,
    epilogue: impl Into<Epilogue<'e>>,
    out: &GpuBuffer,
    spec: &GemmSpec,
    batching: Batching,
    block: Option<Block>,
) {
    let b = Source::packed(b, [spec.n, spec.k], batching.count);
    run_gemm(
        ctx,
        stored_a(a, spec, batching),
        Operand::Source(b),
        epilogue.into(),
        out,
        spec,
        batching,
        block,
    );
}

/// Workgroups a batch-summed GEMM aims for on a CPU-like adapter: a product
/// too small to fill them is split over the batch into partial sums, added
/// afterwards. Fixed per device class (not per product's block), so every
/// block on an adapter adds in the same order.
const SPLIT_TARGET_WORKGROUPS_CPU_LIKE: usize = 64;

/// The same on a GPU, which runs thousands of invocations at once: on an
/// NVIDIA H200, 64 workgroups of the small block left a convolution's weight
/// gradient on a few multiprocessors; 1024 trained fashion-cnn and cifar-cnn
/// 1.6–1.7× faster at batch 256 (256: 1.4×, 4096: no faster than 1024).
const SPLIT_TARGET_WORKGROUPS_GPU: usize = 1024;

/// How a summed batch of `count` products of `spec` runs: as `slices`
/// partial sums of `chunk` products each (the last maybe fewer), enough to
/// give about `target_workgroups` workgroups of the small block, which sets
/// the split for every block shape alike.
fn summed_split(spec: &GemmSpec, count: usize, target_workgroups: usize) -> (usize, usize) {
    let wanted = target_workgroups
        .div_ceil(small_tiles(spec))
        .clamp(1, count.max(1));
    let chunk = count.div_ceil(wanted).max(1);
    (count.div_ceil(chunk).max(1), chunk)
}

/// Workgroups of the small block that cover `spec`'s C.
fn small_tiles(spec: &GemmSpec) -> usize {
    let [sx, sy] = SMALL.workgroup;
    spec.n.div_ceil(SMALL.cols * sx) * spec.m.div_ceil(SMALL.rows * sy)
}

/// How a kernel reads its operands (see [`path`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// As `Reads` says (packed operands packed first unless they already
    /// are).
    Register(Reads),
    /// Both packed, then re-packed 4 depths per vec4 (a depth4 block).
    Depth4,
}

/// How `block` reads `a` and `b`: the small block reads them where they
/// lie, 4 depths per vec4, when both are stored by rows (a linear layer's
/// forward: its input and weight), instead of packing them; otherwise
/// they are read packed.
fn path(block: Block, a: &Source<'_>, b: &Operand<'_>) -> Path {
    match b {
        Operand::Image(_) => Path::Register(Reads::IMPLICIT),
        Operand::Source(_) if block.depth4 => Path::Depth4,
        Operand::Source(b) if block.reads_by_rows() && a.by_rows() && b.by_rows() => {
            Path::Register(Reads::BY_ROWS)
        }
        Operand::Source(_) => Path::Register(Reads::PACKED),
    }
}

/// The GEMM dispatch itself, with `block` or the tuner's choice, the
/// operands read as [`path`] says.
#[allow(clippy::too_many_arguments)]
fn run_gemm(
    ctx: &GpuContext,
    a: Source<'_>,
    b: Operand<'_>,
    epilogue: Epilogue<'_>,
    out: &GpuBuffer,
    spec: &GemmSpec,
    batching: Batching,
    block: Option<Block>,
) {
    let (act_mode, slope) = epilogue
        .activation_mode()
        .expect("only relu and leaky relu are fused into a GEMM");
    let (bias_buffer, bias_mode) = match epilogue.bias {
        // Never read with bias_mode 0; `a` stands in because binding the output
        // read-only as well as read-write in one dispatch is a usage conflict.
        Bias::None => (a.buffer(), 0),
        Bias::PerRow(buffer) => (buffer, 1),
        Bias::PerColumn(buffer) => (buffer, 2),
        Bias::Gate(buffer) => {
            assert!(
                batching.count == 1 || batching.sum,
                "a gated epilogue takes one output"
            );
            (buffer, 3)
        }
    };
    // A summed batch runs as `slices` partial sums of `chunk` products each,
    // sized from the smallest block so that every block shape adds the same
    // terms in the same order.
    let (slices, chunk) = if batching.sum {
        let target = if ctx.gemm_tuner.splits_like_a_gpu() {
            SPLIT_TARGET_WORKGROUPS_GPU
        } else {
            SPLIT_TARGET_WORKGROUPS_CPU_LIKE
        };
        summed_split(spec, batching.count, target)
    } else {
        (batching.count, 1)
    };
    let partial = (batching.sum && slices > 1)
        .then(|| ctx.storage_buffer(4 * (slices * spec.m * spec.n) as u64, "gemm.partial"));
    // Partial sums take no epilogue: the pass adding them applies it.
    let (kernel_bias_mode, kernel_act_mode) = match partial {
        Some(_) => (0, 0),
        None => (bias_mode, act_mode),
    };
    let stride_c = if batching.sum {
        spec.m * spec.n
    } else {
        batching.stride_c
    };
    let source_b = || match &b {
        Operand::Source(b) => b,
        Operand::Image(_) => unreachable!("an implicit product reads B from its image"),
    };
    // A depth4 kernel's operands, re-packed from the packed ones (made
    // once, when such a kernel runs or races).
    let depth4 = std::cell::OnceCell::new();
    let depth4_operands = || {
        depth4.get_or_init(|| {
            let operand =
                |rows, shared| Depth4Operand::new(ctx, [rows, spec.k], batching.count, shared);
            (
                operand(spec.m, a.stride() == 0),
                operand(spec.n, source_b().stride() == 0),
            )
        })
    };
    let params = |block: Block, path: Path| {
        // Strides between matrices: of the depth4 layout, packed, or where
        // an operand lies.
        let (stride_a, stride_b) = match path {
            Path::Depth4 => {
                let (a4, b4) = depth4_operands();
                (a4.stride, b4.stride)
            }
            Path::Register(reads) => (
                a.stride_read(reads.a == ARead::Packed),
                match reads.b {
                    BRead::Image => 0,
                    b => source_b().stride_read(b == BRead::Packed),
                },
            ),
        };
        let mut params = Params::new()
            .u32(spec.m)
            .u32(spec.n)
            .u32(spec.k)
            .u32(batching.count)
            .u32(stride_a)
            .u32(stride_b)
            .u32(stride_c)
            .u32(kernel_bias_mode)
            .u32(chunk)
            .u32(kernel_act_mode as usize)
            .f32(slope)
            .u32(block.slot_lanes as usize);
        if let Operand::Image(image) = &b {
            for value in image.walk() {
                params = params.u32(value);
            }
        }
        params
    };
    let target = partial.as_ref().unwrap_or(out);
    let kernel = |block: Block| {
        let [wg_x, wg_y] = block.workgroup;
        let path = path(block, &a, &b);
        let kernel = block_kernel(ctx, block, path);
        let grid = if block.slot_lanes {
            [
                grid_extent(slices.div_ceil(wg_x)),
                spec.n.div_ceil(block.cols) as u32,
                spec.m.div_ceil(block.rows) as u32,
            ]
        } else {
            [
                spec.n.div_ceil(block.cols * wg_x) as u32,
                spec.m.div_ceil(block.rows * wg_y) as u32,
                grid_extent(slices),
            ]
        };
        (kernel, path, grid, params(block, path))
    };
    let record =
        |(kernel, path, grid, params): &(std::sync::Arc<Kernel>, Path, [u32; 3], Params)| {
            let (a_buffer, b_buffer) = match *path {
                Path::Depth4 => {
                    let (a4, b4) = depth4_operands();
                    a4.record(ctx, a.record_packed(ctx));
                    b4.record(ctx, source_b().record_packed(ctx));
                    (&a4.buffer, &b4.buffer)
                }
                Path::Register(reads) => (
                    match reads.a {
                        ARead::Packed => a.record_packed(ctx).buffer,
                        ARead::Rows | ARead::Rows4 => a.buffer(),
                    },
                    match (reads.b, &b) {
                        (BRead::Image, Operand::Image(image)) => image.buffer,
                        (BRead::Packed, Operand::Source(b)) => b.record_packed(ctx).buffer,
                        (BRead::Rows4, Operand::Source(b)) => b.buffer(),
                        _ => unreachable!("{reads:?} reads another B"),
                    },
                ),
            };
            ctx.dispatch(
                kernel,
                params,
                &[a_buffer, b_buffer, bias_buffer],
                &[target],
                *grid,
            );
        };
    match block.map_or_else(|| ctx.gemm_tuner.choice(spec, batching.count), Ok) {
        Ok(block) => record(&kernel(block)),
        Err(candidates) => {
            // First product of its class on this device: time each block,
            // with the packs it needs, on these very operands (every run
            // writes the same result), with the pipelines compiled
            // beforehand.
            let prepared: Vec<_> = candidates.iter().map(|&b| kernel(b)).collect();
            let runs: Vec<_> = prepared.iter().map(|k| move || record(k)).collect();
            let first_runs: Vec<bool> = prepared.iter().map(|(k, ..)| !k.has_run()).collect();
            let best = candidates[fastest(ctx, &runs, &first_runs)];
            ctx.gemm_tuner.remember(spec, batching.count, best);
        }
    }
    if let Some(partial) = &partial {
        if bias_mode == 0 && act_mode == 0 {
            slice_sum_into(ctx, partial, out, slices, spec.m * spec.n);
        } else {
            let epilogue = EpilogueModes {
                bias: bias_buffer,
                bias_mode,
                act_mode,
                slope,
            };
            split_sum_into(ctx, partial, slices, &epilogue, out, spec);
        }
    }
}

/// The epilogue as the GEMM kernels' parameters give it.
struct EpilogueModes<'a> {
    bias: &'a GpuBuffer,
    bias_mode: usize,
    act_mode: u32,
    slope: f32,
}

/// Records `out = epilogue(Σ_s partial[s])` for `slices` partial products
/// of `spec`'s `(M, N)` C, added in slice order (`gemm.wgsl`'s `split_sum`).
fn split_sum_into(
    ctx: &GpuContext,
    partial: &GpuBuffer,
    slices: usize,
    epilogue: &EpilogueModes<'_>,
    out: &GpuBuffer,
    spec: &GemmSpec,
) {
    let module = gemm_source::module(ctx.has_subgroups());
    let kernel = ctx.kernel(&KernelSpec::new(module, "split_sum", 3, 1));
    let params = Params::new()
        .u32(spec.m)
        .u32(spec.n)
        .u32(spec.k)
        .u32(slices)
        .u32(0)
        .u32(0)
        .u32(spec.m * spec.n)
        .u32(epilogue.bias_mode)
        .u32(0)
        .u32(epilogue.act_mode as usize)
        .f32(epilogue.slope)
        .u32(0);
    // 4 columns per invocation; columns and rows past the grid loop.
    let grid = [grid_extent(spec.n.div_ceil(4 * 64)), grid_extent(spec.m), 1];
    // The partial products stand in for B too, which split_sum never reads.
    ctx.dispatch(
        &kernel,
        &params,
        &[partial, partial, epilogue.bias],
        &[out],
        grid,
    );
}

/// The pipeline of GEMM kernel `block` reading its operands as `path`
/// says: its twin that loads A once per subgroup where the device's
/// subgroups allow ([`Block::shares_a_read_in`]).
fn block_kernel(ctx: &GpuContext, block: Block, path: Path) -> std::sync::Arc<Kernel> {
    assert!(
        block_runs_on(ctx, block),
        "{} does not run on this device",
        block.name()
    );
    let reads = match path {
        Path::Depth4 => {
            let module = gemm_source::depth4_module();
            return ctx.kernel(&KernelSpec::new(module, block.entry(), 3, 1));
        }
        Path::Register(reads) => reads,
    };
    let subgroups = ctx.has_subgroups();
    let share_a = ctx
        .fixed_subgroup_size()
        .is_some_and(|lanes| block.shares_a_read_in(reads.a, lanes));
    let entry = block.entry_reading(reads, share_a);
    let spec = if reads == Reads::BY_ROWS {
        KernelSpec::new(gemm_source::by_rows_module(subgroups), entry, 3, 1)
    } else {
        KernelSpec::new(gemm_source::module(subgroups), entry, 3, 1)
    };
    ctx.kernel(&spec)
}

/// Whether the device runs GEMM kernel `block` (a [`Block::depth4`] one
/// needs subgroups of its lanes).
pub fn block_runs_on(ctx: &GpuContext, block: Block) -> bool {
    !block.depth4
        || ctx
            .fixed_subgroup_size()
            .is_some_and(|lanes| block.shares_a_in(lanes))
}

/// Whether implicit block `block`'s pipeline has been dispatched yet (see
/// [`fastest`]).
pub(super) fn implicit_block_has_run(ctx: &GpuContext, block: Block) -> bool {
    assert!(block.implicit, "{} is not an implicit kernel", block.name());
    block_kernel(ctx, block, Path::Register(Reads::IMPLICIT)).has_run()
}

/// Index of the fastest of `runs` (each records work that writes the same
/// result), waited for: candidates take turns for up to three rounds, so a
/// burst of load elsewhere on the machine hits them alike, and each keeps its
/// best time; fewer rounds when a run takes long. Runs whose `first_run` is
/// set go once untimed before: some drivers, lavapipe among them, compile a
/// pipeline at its first dispatch rather than at its creation.
pub(super) fn fastest(ctx: &GpuContext, runs: &[impl Fn()], first_run: &[bool]) -> usize {
    for (run, _) in runs.iter().zip(first_run).filter(|(_, first)| **first) {
        run();
    }
    ctx.synchronize();
    let mut best = vec![f64::INFINITY; runs.len()];
    for _ in 0..3 {
        let mut slow = false;
        for (run, best) in runs.iter().zip(&mut best) {
            let start = std::time::Instant::now();
            run();
            ctx.synchronize();
            let seconds = start.elapsed().as_secs_f64();
            *best = best.min(seconds);
            slow |= seconds > 0.05;
        }
        if slow {
            break;
        }
    }
    (0..runs.len())
        .min_by(|&i, &j| best[i].total_cmp(&best[j]))
        .expect("there is always a candidate")
}

/// Whether [`Epilogue`] can apply `act` (else it runs as a pass of its own).
pub fn fuses(act: Activation) -> bool {
    Epilogue {
        bias: Bias::None,
        activation: Some(act),
    }
    .activation_mode()
    .is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(m: usize, n: usize) -> GemmSpec {
        GemmSpec {
            m,
            n,
            k: 9,
            trans_a: false,
            trans_b: false,
        }
    }

    #[test]
    fn a_long_single_product_is_split_over_k_into_equal_slices_on_a_gpu() {
        let gpu = SPLIT_TARGET_WORKGROUPS_GPU;
        // fashion-cnn's first fully connected layer at batch 128: 8 blocks
        // of the small kernel, K = 3136 = 16 · 196.
        let fc1 = |m| GemmSpec {
            m,
            n: 256,
            k: 3136,
            trans_a: false,
            trans_b: true,
        };
        assert_eq!(k_slices(&fc1(128), gpu), 16);
        // Its input gradient (K = 256) in fewer than 4 slices: not split.
        let dx = GemmSpec {
            m: 128,
            n: 3136,
            k: 256,
            trans_a: false,
            trans_b: false,
        };
        assert_eq!(k_slices(&dx, gpu), 1);
        // Enough blocks already, too small a product (LeNet-5's fc1), too
        // short a K, or a prime one: not split.
        let large = GemmSpec {
            k: 4096,
            ..spec(4096, 4096)
        };
        assert_eq!(k_slices(&large, gpu), 1);
        let lenet = GemmSpec {
            m: 64,
            n: 120,
            k: 400,
            ..dx
        };
        assert_eq!(k_slices(&lenet, gpu), 1);
        assert_eq!(k_slices(&GemmSpec { k: 511, ..fc1(128) }, gpu), 1);
        assert_eq!(
            k_slices(
                &GemmSpec {
                    k: 3137,
                    ..fc1(128)
                },
                gpu
            ),
            1
        );
        for m in [1, 7, 64, 128, 300, 1000] {
            for k in [256, 400, 784, 1000, 3136, 4096, 4608] {
                let spec = GemmSpec { k, ..fc1(m) };
                let slices = k_slices(&spec, gpu);
                assert!(k.is_multiple_of(slices), "{m}x{k}: {slices} slices");
                if slices > 1 {
                    assert!(slices >= MIN_SPLIT_SLICES && k / slices >= MIN_SPLIT_DEPTH);
                    // Never much more than the target's worth of workgroups.
                    assert!(slices * small_tiles(&spec) <= 2 * gpu);
                }
            }
        }
    }

    #[test]
    fn a_summed_batch_is_split_into_slices_that_cover_it_once() {
        for (m, n) in [(8, 16), (32, 288), (64, 576), (6, 25), (4096, 4096)] {
            for count in [1, 2, 7, 64, 128, 1000] {
                for target in [
                    SPLIT_TARGET_WORKGROUPS_CPU_LIKE,
                    SPLIT_TARGET_WORKGROUPS_GPU,
                ] {
                    let (slices, chunk) = summed_split(&spec(m, n), count, target);
                    assert!(
                        slices * chunk >= count,
                        "{m}x{n} ×{count}: products left out"
                    );
                    assert!(
                        (slices - 1) * chunk < count,
                        "{m}x{n} ×{count}: an empty slice"
                    );
                }
            }
        }
    }

    #[test]
    fn a_gpu_splits_a_small_product_finer_than_a_cpu_like_adapter() {
        // One block of the small kernel, summed over 128 products.
        let one_block = spec(8, 16);
        assert_eq!(
            summed_split(&one_block, 128, SPLIT_TARGET_WORKGROUPS_CPU_LIKE),
            (64, 2)
        );
        assert_eq!(
            summed_split(&one_block, 128, SPLIT_TARGET_WORKGROUPS_GPU),
            (128, 1)
        );
        // A product that fills either device alone is not split.
        let large = spec(4096, 4096);
        assert_eq!(
            summed_split(&large, 128, SPLIT_TARGET_WORKGROUPS_GPU),
            (1, 128)
        );
    }
}
