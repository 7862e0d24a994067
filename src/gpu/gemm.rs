//! Host side of `shaders/gemm.wgsl`: the matrix products behind convolution
//! and the fully connected layer.

use super::context::{GpuBuffer, GpuContext, Kernel, KernelSpec, Params, grid, grid_extent};
use super::gemm_source::{self, Block, SMALL};
use super::reduce::slice_sum_into;
use crate::geometry::Conv2dGeometry;
use crate::geometry::{Activation, GemmSpec};

const PACK_SOURCE: &str = include_str!("../../shaders/pack.wgsl");

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
/// Both operands are first packed depth-major with rows padded to whole vec4s
/// (`shaders/pack.wgsl`), unless one is already in that layout.
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
    // op(B) is (k, n): B stored (n, k) is packed transposed.
    let b = pack(
        ctx,
        b,
        spec.n,
        spec.k,
        spec.trans_b,
        batching.stride_b,
        batching.count,
    );
    let a = pack_a(ctx, a, spec, batching);
    gemm_packed_into(
        ctx,
        a.view(),
        Operand::Packed(b.view()),
        epilogue.into(),
        out,
        spec,
        batching,
        block,
    );
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
#[derive(Clone, Copy, Debug)]
enum Operand<'a> {
    Packed(Packed<'a>),
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
    // The implicit kernels read A unpacked: W (O, C·kh·kw) and dY_n
    // (O, OH·OW) are both row-major (M, K) already.
    gemm_packed_into(
        ctx,
        Packed {
            buffer: a,
            stride: batching.stride_a,
        },
        Operand::Image(image),
        epilogue,
        out,
        &spec,
        batching,
        Some(block),
    );
}

/// op(A) is (m, k): A stored (m, k) is packed transposed.
fn pack_a<'a>(
    ctx: &GpuContext,
    a: &'a GpuBuffer,
    spec: &GemmSpec,
    batching: Batching,
) -> PackedOperand<'a> {
    pack(
        ctx,
        a,
        spec.m,
        spec.k,
        !spec.trans_a,
        batching.stride_a,
        batching.count,
    )
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
    let a = pack_a(ctx, a, spec, batching);
    gemm_packed_into(
        ctx,
        a.view(),
        Operand::Packed(b),
        epilogue.into(),
        out,
        spec,
        batching,
        block,
    );
}

/// Workgroups a batch-summed GEMM aims for: a product too small to fill
/// them is split over the batch into partial sums, added afterwards. Fixed
/// (not per device), so every adapter adds in the same order.
const SPLIT_TARGET_WORKGROUPS: usize = 64;

/// The GEMM dispatch itself, with `block` or the tuner's choice, on a
/// packed A (an implicit block reads A unpacked, row-major (M, K)
/// instead).
#[allow(clippy::too_many_arguments)]
fn gemm_packed_into(
    ctx: &GpuContext,
    a: Packed<'_>,
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
        Bias::None => (a.buffer, 0),
        Bias::PerRow(buffer) => (buffer, 1),
        Bias::PerColumn(buffer) => (buffer, 2),
        Bias::Gate(buffer) => {
            assert!(
                batching.count == 1 && !batching.sum,
                "a gated epilogue takes one product"
            );
            (buffer, 3)
        }
    };
    // A summed batch runs as `slices` partial sums of `chunk` products each,
    // sized from the smallest block so that every block shape adds the same
    // terms in the same order.
    let (slices, chunk) = if batching.sum {
        let [sx, sy] = SMALL.workgroup;
        let small_tiles = spec.n.div_ceil(SMALL.cols * sx) * spec.m.div_ceil(SMALL.rows * sy);
        let wanted = SPLIT_TARGET_WORKGROUPS
            .div_ceil(small_tiles)
            .clamp(1, batching.count.max(1));
        let chunk = batching.count.div_ceil(wanted).max(1);
        (batching.count.div_ceil(chunk).max(1), chunk)
    } else {
        (batching.count, 1)
    };
    let partial = (batching.sum && slices > 1)
        .then(|| ctx.storage_buffer(4 * (slices * spec.m * spec.n) as u64, "gemm.partial"));
    let stride_c = if batching.sum {
        spec.m * spec.n
    } else {
        batching.stride_c
    };
    let (b_buffer, b_stride) = match b {
        Operand::Packed(b) => (b.buffer, b.stride),
        Operand::Image(image) => (image.buffer, 0),
    };
    // A depth4 kernel's operands, re-packed from the packed ones (made
    // once, when such a kernel runs or races).
    let depth4 = std::cell::OnceCell::new();
    let depth4_operands = || {
        depth4.get_or_init(|| {
            let Operand::Packed(packed_b) = b else {
                unreachable!("an implicit product has no depth4 kernel")
            };
            (
                Depth4Operand::new(ctx, a, spec.m, spec.k, batching.count),
                Depth4Operand::new(ctx, packed_b, spec.n, spec.k, batching.count),
            )
        })
    };
    let params = |block: Block| {
        let (stride_a, stride_b) = if block.depth4 {
            let (a4, b4) = depth4_operands();
            (a4.stride, b4.stride)
        } else {
            (a.stride, b_stride)
        };
        let mut params = Params::new()
            .u32(spec.m)
            .u32(spec.n)
            .u32(spec.k)
            .u32(batching.count)
            .u32(stride_a)
            .u32(stride_b)
            .u32(stride_c)
            .u32(bias_mode)
            .u32(chunk)
            .u32(act_mode as usize)
            .f32(slope)
            .u32(block.slot_lanes as usize);
        if let Operand::Image(image) = b {
            for value in image.walk() {
                params = params.u32(value);
            }
        }
        params
    };
    let target = partial.as_ref().unwrap_or(out);
    let kernel = |block: Block| {
        let [wg_x, wg_y] = block.workgroup;
        let kernel = block_kernel(ctx, block);
        let kernel = (kernel, block.depth4);
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
        (kernel, grid, params(block))
    };
    let record =
        |((kernel, depth4), grid, params): &((std::sync::Arc<Kernel>, bool), [u32; 3], Params)| {
            let (a_buffer, b_buffer) = if *depth4 {
                let (a4, b4) = depth4_operands();
                a4.record(ctx);
                b4.record(ctx);
                (&a4.buffer, &b4.buffer)
            } else {
                (a.buffer, b_buffer)
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
            // First product of its class on this device: time each block on
            // these very operands (every run writes the same result), with
            // the pipelines compiled beforehand.
            let prepared: Vec<_> = candidates.iter().map(|&b| kernel(b)).collect();
            let runs: Vec<_> = prepared.iter().map(|k| move || record(k)).collect();
            let first_runs: Vec<bool> = prepared.iter().map(|((k, _), ..)| !k.has_run()).collect();
            let best = candidates[fastest(ctx, &runs, &first_runs)];
            ctx.gemm_tuner.remember(spec, batching.count, best);
        }
    }
    if let Some(partial) = &partial {
        slice_sum_into(ctx, partial, out, slices, spec.m * spec.n);
    }
}

/// The pipeline of GEMM kernel `block`: its twin that loads A once per
/// subgroup where the device's subgroups allow ([`Block::shares_a_in`]).
fn block_kernel(ctx: &GpuContext, block: Block) -> std::sync::Arc<Kernel> {
    assert!(
        block_runs_on(ctx, block),
        "{} does not run on this device",
        block.name()
    );
    if block.depth4 {
        let source = gemm_source::depth4_source();
        return ctx.kernel(&KernelSpec::new("gemm_depth4", source, block.entry(), 3, 1));
    }
    let subgroups = ctx.has_subgroups();
    let entry = match ctx.fixed_subgroup_size() {
        Some(lanes) if block.shares_a_in(lanes) => block.entry_sharing_a(),
        _ => block.entry(),
    };
    ctx.kernel(&KernelSpec::new(
        "gemm",
        gemm_source::source(subgroups),
        entry,
        3,
        1,
    ))
}

/// Whether the device runs GEMM kernel `block` (a [`Block::depth4`] one
/// needs subgroups of its lanes).
pub fn block_runs_on(ctx: &GpuContext, block: Block) -> bool {
    !block.depth4
        || ctx
            .fixed_subgroup_size()
            .is_some_and(|lanes| block.shares_a_in(lanes))
}

/// Whether `block`'s pipeline has been dispatched yet (see [`fastest`]).
pub(super) fn block_has_run(ctx: &GpuContext, block: Block) -> bool {
    block_kernel(ctx, block).has_run()
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

/// A packed operand re-packed 4 depths per vec4 for a [`Block::depth4`]
/// kernel: `(⌈K/4⌉, rows)` vec4s per batch element.
struct Depth4Operand<'a> {
    /// The packed operand it is re-packed from.
    source: Packed<'a>,
    rows: usize,
    depth: usize,
    /// Matrices: 1 when the source is shared by the batch.
    count: usize,
    buffer: GpuBuffer,
    /// Elements between consecutive batch elements' matrices (0: shared).
    stride: usize,
}

impl<'a> Depth4Operand<'a> {
    /// Space for `source` (`rows` rows of depth `depth`, one matrix per
    /// batch element unless shared) in the depth4 layout.
    fn new(ctx: &GpuContext, source: Packed<'a>, rows: usize, depth: usize, batch: usize) -> Self {
        let len = depth.div_ceil(4) * rows * 4;
        let shared = source.stride == 0;
        let count = if shared { 1 } else { batch };
        Depth4Operand {
            source,
            rows,
            depth,
            count,
            buffer: ctx.storage_buffer(4 * (count * len) as u64, "gemm.packed_depth4"),
            stride: if shared { 0 } else { len },
        }
    }

    /// Records the re-packing of its source into it.
    fn record(&self, ctx: &GpuContext) {
        let kernel = ctx.kernel(&KernelSpec::new("pack", PACK_SOURCE, "pack_depth4", 1, 1));
        let params = Params::new()
            .u32(self.rows)
            .u32(self.depth)
            .u32(self.rows.next_multiple_of(4))
            .u32(self.count)
            .u32(self.source.stride)
            .u32(self.stride);
        let grid = [
            grid_extent(self.rows.div_ceil(64)),
            grid_extent(self.depth.div_ceil(4)),
            grid_extent(self.count),
        ];
        ctx.dispatch(
            &kernel,
            &params,
            &[self.source.buffer],
            &[&self.buffer],
            grid,
        );
    }
}

/// A GEMM operand in the packed layout: `(K, ⌈rows/4⌉·4)` per batch
/// element, `stride` elements apart (0: one shared by every element).
#[derive(Clone, Copy, Debug)]
pub struct Packed<'a> {
    /// The packed values.
    pub buffer: &'a GpuBuffer,
    /// Elements between consecutive batch elements' matrices.
    pub stride: usize,
}

/// A packed operand: borrowed when the source already was packed, else owned.
struct PackedOperand<'a> {
    owned: Option<GpuBuffer>,
    borrowed: &'a GpuBuffer,
    stride: usize,
}

impl PackedOperand<'_> {
    fn view(&self) -> Packed<'_> {
        Packed {
            buffer: self.owned.as_ref().unwrap_or(self.borrowed),
            stride: self.stride,
        }
    }
}

/// Packs `(rows, depth)` matrices (stored `(rows, depth)` when `transposed`,
/// else `(depth, rows)`) into `(depth, ⌈rows/4⌉·4)`; one per batch element
/// when `stride` is non-zero, else one shared.
fn pack<'a>(
    ctx: &GpuContext,
    src: &'a GpuBuffer,
    rows: usize,
    depth: usize,
    transposed: bool,
    stride: usize,
    count: usize,
) -> PackedOperand<'a> {
    let packing = Packing {
        rows,
        depth,
        transposed,
        stride,
        count: if stride == 0 { 1 } else { count },
    };
    if !transposed && rows.is_multiple_of(4) && (stride == 0 || stride == depth * rows) {
        return PackedOperand {
            owned: None,
            borrowed: src,
            stride,
        };
    }
    let dst = ctx.storage_buffer(packing.bytes(), "gemm.packed");
    packing.record(ctx, src, &dst);
    PackedOperand {
        owned: Some(dst),
        borrowed: src,
        stride: if stride == 0 { 0 } else { packing.matrix_len() },
    }
}

/// `count` `(rows, depth)` matrices, `stride` elements apart, stored
/// `(rows, depth)` when `transposed`, else `(depth, rows)`, to be packed
/// into `(depth, ⌈rows/4⌉·4)` each (`shaders/pack.wgsl`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Packing {
    pub rows: usize,
    pub depth: usize,
    pub transposed: bool,
    pub stride: usize,
    pub count: usize,
}

impl Packing {
    /// Elements of one packed matrix.
    fn matrix_len(&self) -> usize {
        self.depth * self.rows.next_multiple_of(4)
    }

    /// Bytes of the packed matrices.
    pub fn bytes(&self) -> u64 {
        4 * (self.count * self.matrix_len()) as u64
    }

    /// Records the packing of `src` into the start of `dst`.
    pub fn record(&self, ctx: &GpuContext, src: &GpuBuffer, dst: &GpuBuffer) {
        assert!(dst.size() >= self.bytes(), "packing into {dst:?}");
        let kernel = ctx.kernel(
            &KernelSpec::new("pack", PACK_SOURCE, "pack", 1, 1)
                .with("TRANSPOSED", self.transposed as u8 as f64),
        );
        let params = Params::new()
            .u32(self.rows)
            .u32(self.depth)
            .u32(self.rows.next_multiple_of(4))
            .u32(self.count)
            .u32(self.stride)
            .u32(self.matrix_len());
        ctx.dispatch(
            &kernel,
            &params,
            &[src],
            &[dst],
            grid(self.count * self.depth, 256),
        );
    }
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
