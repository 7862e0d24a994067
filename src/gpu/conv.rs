//! Convolution as im2col + GEMM (`shaders/im2col.wgsl`, `shaders/gemm.wgsl`):
//!
//! - forward: `Y_n = W_col (O, C·kh·kw) · X_col,n (C·kh·kw, OH·OW) + b`, one
//!   batched GEMM whose output is already NCHW; either explicit (im2col, then
//!   the GEMM) or implicit (the GEMM reads `X_col` from the zero-padded
//!   input), whichever the tuner timed faster for the shape on this device;
//! - backward: `dW = Σ_n dY_n · X_col,nᵀ` (GEMM summing over the batch, its
//!   second operand written by im2row straight into the packed layout, or
//!   read from the padded input by an implicit kernel, as the tuner timed),
//!   `db = Σ_{n, oh, ow} dY`, `dX = col2im(W_colᵀ · dY_n)`.

use std::borrow::Cow;
use std::sync::Arc;

use super::context::{GpuBuffer, GpuContext, Kernel, KernelSpec, Params, grid_extent};
use super::derived::DerivedKey;
use super::direct_conv;
use super::gemm::{
    Bias, ConvProduct, Epilogue, Image, Packed, conv_implicit_into, fastest, gemm_into,
    gemm_packed_b_into, gemm_with_block_into, implicit_block_has_run,
};
use super::gemm_source::{Block, CONV_BLOCKS};
use super::modules::ModuleSource;
use super::reduce::{channel_sum_into, slice_sum_into};
use super::tensor::{GpuIndices, GpuTensor};
use crate::backend::ParamGrads;
use crate::geometry::{Activation, Conv2dGeometry, Pool2dGeometry};

pub(super) const MODULE: ModuleSource = ModuleSource {
    family: "im2col",
    source: include_str!("../../shaders/im2col.wgsl"),
};

/// The uniform parameters; the stride is a pipeline constant instead.
fn params(g: &Conv2dGeometry) -> Params {
    Params::new()
        .u32(g.batch)
        .u32(g.channels)
        .u32(g.height)
        .u32(g.width)
        .u32(g.kernel_h)
        .u32(g.kernel_w)
        .u32(g.padding)
        .u32(g.out_h)
        .u32(g.out_w)
        .u32(g.col_rows().next_multiple_of(4))
}

/// The im2col family's kernel `entry`, specialised to the stride.
fn kernel(ctx: &GpuContext, entry: &'static str, g: &Conv2dGeometry) -> Arc<Kernel> {
    ctx.kernel(&KernelSpec::new(MODULE, entry, 1, 1).with("STRIDE", g.stride as f64))
}

/// `X (N, C, H, W) → X_col (N, C·kh·kw, OH·OW)`.
pub fn im2col(ctx: &GpuContext, x: &GpuTensor, g: &Conv2dGeometry) -> GpuTensor {
    assert_eq!(x.shape, g.input_shape(), "im2col input shape");
    let cols = ctx.tensor(&g.cols_shape(), "im2col");
    ctx.dispatch(
        &kernel(ctx, "im2col", g),
        &params(g),
        &[&x.buffer],
        &[&cols.buffer],
        [
            g.out_positions().div_ceil(64) as u32,
            grid_extent(g.batch),
            1,
        ],
    );
    cols
}

/// `X (N, C, H, W) → X_row (N, OH·OW, R)`, `R = ⌈C·kh·kw/4⌉·4`: `X_col,nᵀ`
/// per image in the GEMM's packed layout, zero padded.
fn im2row(ctx: &GpuContext, x: &GpuTensor, g: &Conv2dGeometry) -> GpuBuffer {
    let padded = g.col_rows().next_multiple_of(4);
    let rows = ctx.storage_buffer(4 * (g.batch * g.out_positions() * padded) as u64, "im2row");
    ctx.dispatch(
        &kernel(ctx, "im2row", g),
        &params(g),
        &[&x.buffer],
        &[&rows],
        [
            padded.div_ceil(16) as u32,
            g.out_h.div_ceil(4) as u32,
            grid_extent(g.batch),
        ],
    );
    rows
}

/// `X (N, C, H, W) → (N, C, H + 2p, pitch)` with zero margins, `pitch` the
/// padded width rounded up to a multiple of 4; `None` when the convolution
/// has no padding (X itself serves, its pitch W). Returns the pitch too.
fn pad(ctx: &GpuContext, x: &GpuTensor, g: &Conv2dGeometry) -> (Option<Arc<GpuBuffer>>, usize) {
    if g.padding == 0 {
        return (None, g.width);
    }
    let (planes, padding, pitch) = input_padding(g);
    let padded = pad_planes(ctx, &x.buffer, planes, padding, pitch);
    (Some(padded), pitch)
}

/// How `g`'s input is zero-padded, for the implicit GEMMs and the direct
/// kernels alike: its planes, the padding, and the pitch (the padded width
/// rounded up to whole vec4s).
pub(super) fn input_padding(g: &Conv2dGeometry) -> (Planes, [usize; 2], usize) {
    let planes = Planes {
        count: g.batch * g.channels,
        height: g.height,
        width: g.width,
    };
    let pitch = (g.width + 2 * g.padding).next_multiple_of(4);
    (planes, [g.padding, g.padding], pitch)
}

/// `count` planes of `height × width` values, one after another.
#[derive(Clone, Copy, Debug)]
pub(super) struct Planes {
    pub count: usize,
    pub height: usize,
    pub width: usize,
}

/// `planes` zero-padded by `[pad_h, pad_w]`: `height + 2·pad_h` rows of
/// `pitch` values each (`pitch ≥ width + 2·pad_w`, a multiple of 4; zeros
/// past the padded row). The buffer [`pad_planes_kept`] kept for the same
/// padding of `src`, if `src` has not been written since.
pub(super) fn pad_planes(
    ctx: &GpuContext,
    src: &GpuBuffer,
    planes: Planes,
    pad: [usize; 2],
    pitch: usize,
) -> Arc<GpuBuffer> {
    if let Some(kept) = ctx.take_derived(src, pad_key(planes, pad, pitch)) {
        return kept;
    }
    Arc::new(pad_planes_anew(ctx, src, planes, pad, pitch))
}

/// [`pad_planes`], also kept for the next [`pad_planes`] of `src` the same
/// way in this step: a convolution's forward pads its input as its weight
/// gradient will again.
pub(super) fn pad_planes_kept(
    ctx: &GpuContext,
    src: &GpuBuffer,
    planes: Planes,
    pad: [usize; 2],
    pitch: usize,
) -> Arc<GpuBuffer> {
    let padded = pad_planes(ctx, src, planes, pad, pitch);
    ctx.keep_derived(src, pad_key(planes, pad, pitch), padded.clone());
    padded
}

fn pad_key(planes: Planes, [pad_h, pad_w]: [usize; 2], pitch: usize) -> DerivedKey {
    (
        "pad",
        [
            planes.count,
            planes.height,
            planes.width,
            pad_h,
            pad_w,
            pitch,
        ],
    )
}

fn pad_planes_anew(
    ctx: &GpuContext,
    src: &GpuBuffer,
    planes: Planes,
    [pad_h, pad_w]: [usize; 2],
    pitch: usize,
) -> GpuBuffer {
    assert!(
        pitch.is_multiple_of(4) && pitch >= planes.width + 2 * pad_w,
        "padding rows of {} values to a pitch of {pitch}",
        planes.width + 2 * pad_w
    );
    let rows = planes.count * (planes.height + 2 * pad_h);
    let padded = ctx.storage_buffer(4 * (rows * pitch) as u64, "conv2d.padded");
    let params = Params::new()
        .u32(planes.count)
        .u32(planes.height)
        .u32(planes.width)
        .u32(pad_h)
        .u32(pad_w)
        .u32(pitch);
    // Rows of whole vec4s load 4 values at a time (`pad4`).
    let kernel = if planes.width.is_multiple_of(4) {
        ctx.kernel(&KernelSpec::new(MODULE, "pad4", 1, 1).with("SHIFT", (pad_w % 4) as f64))
    } else {
        ctx.kernel(&KernelSpec::new(MODULE, "pad", 1, 1))
    };
    ctx.dispatch(
        &kernel,
        &params,
        &[src],
        &[&padded],
        super::context::grid(rows, 64),
    );
    padded
}

/// `dX_col (N, C·kh·kw, OH·OW) → dX (N, C, H, W)`, summing overlapping windows.
pub fn col2im(ctx: &GpuContext, cols: &GpuTensor, g: &Conv2dGeometry) -> GpuTensor {
    assert_eq!(cols.shape, g.cols_shape(), "col2im input shape");
    let x = ctx.tensor(&g.input_shape(), "col2im");
    ctx.dispatch(
        &kernel(ctx, "col2im", g),
        &params(g),
        &[&cols.buffer],
        &[&x.buffer],
        [
            (g.height * g.width).div_ceil(64) as u32,
            grid_extent(g.batch * g.channels),
            1,
        ],
    );
    x
}

/// Images a convolution's first-time race times its candidates on: enough
/// to keep a device busy, few enough that the race costs a fraction of a
/// step at large batches.
const RACE_IMAGES: usize = 16;

/// Runs `g`'s `product` the way the tuner chose for its shape class:
/// `explicit` (im2col or im2row, then a GEMM by the given block or the
/// tuner's) or `implicit` (a kernel reading the image), each on the batch's
/// first `images` images. The first product of a class on a device runs the
/// explicit path on the whole batch, which tunes its GEMM, then races that
/// against the implicit twin of the GEMM's block, each with its preparation,
/// on the first [`RACE_IMAGES`] images; every path writes the same result
/// (a product summed over the batch, dW, is then computed again whole).
fn run_conv_product(
    ctx: &GpuContext,
    product: ConvProduct,
    g: &Conv2dGeometry,
    explicit: &dyn Fn(Option<Block>, usize),
    implicit: &dyn Fn(Block, usize),
) {
    let (spec, batching) = product.of(g);
    let count = batching.count;
    let run = |block: Block, images: usize| {
        if block.implicit {
            implicit(block, images);
        } else {
            explicit(Some(block), images);
        }
    };
    match ctx.gemm_tuner.conv_choice(product, &spec, count) {
        Some(block) => run(block, g.batch),
        None => {
            explicit(None, g.batch);
            let block = ctx
                .gemm_tuner
                .choice(&spec, count)
                .unwrap_or_else(|candidates| candidates[0]);
            let twin = block.implicit_twin().unwrap_or(CONV_BLOCKS[0]);
            let images = g.batch.min(RACE_IMAGES);
            let runs: [&dyn Fn(); 2] = [&|| run(block, images), &|| run(twin, images)];
            // The explicit path has just run; the implicit kernel may be new
            // (another product may have run it already).
            let first_runs = [false, !implicit_block_has_run(ctx, twin)];
            let best = [block, twin][fastest(ctx, &runs, &first_runs)];
            ctx.gemm_tuner.remember_conv(product, &spec, count, best);
            // A sum over the batch holds the race's images' sum: compute it
            // again whole.
            if batching.sum && images < g.batch {
                run(best, g.batch);
            }
        }
    }
}

/// The first `images` images of two tensors of `g`'s batch (shapes
/// `(N, …)`), and the geometry of those images: the tensors themselves for
/// all of them, else views of the start of their buffers.
fn first_images<'a>(
    ctx: &GpuContext,
    [a, b]: [&'a GpuTensor; 2],
    g: &Conv2dGeometry,
    images: usize,
) -> (Cow<'a, GpuTensor>, Cow<'a, GpuTensor>, Conv2dGeometry) {
    let first = |t: &'a GpuTensor| {
        if images == t.shape[0] {
            return Cow::Borrowed(t);
        }
        let per_image = t.len() / t.shape[0];
        let mut shape = t.shape.clone();
        shape[0] = images;
        Cow::Owned(GpuTensor {
            buffer: Arc::new(ctx.view(&t.buffer, 0, 4 * (per_image * images) as u64)),
            shape,
        })
    };
    (first(a), first(b), run_geometry(g, images))
}

/// `Y (N, O, OH, OW) = act(W_col · X_col,n + b[o])`, the activation (if
/// any; relu or leaky relu, see [`super::gemm::fuses`]) in the GEMM's
/// epilogue.
fn forward_whole(
    ctx: &GpuContext,
    x: &GpuTensor,
    w: &GpuTensor,
    b: &GpuTensor,
    g: &Conv2dGeometry,
    activation: Option<Activation>,
) -> GpuTensor {
    assert_eq!(w.shape, g.weight_shape(), "conv2d weight shape");
    assert_eq!(b.shape, [g.out_channels], "conv2d bias shape");
    assert_eq!(x.shape, g.input_shape(), "conv2d input shape");
    let y = ctx.tensor(&g.output_shape(), "conv2d.y");
    let epilogue = Epilogue {
        bias: Bias::PerRow(&b.buffer),
        activation,
    };
    let product = ConvProduct::Forward;
    let explicit = |block: Option<Block>, images: usize| {
        let (x, y, g) = first_images(ctx, [x, &y], g, images);
        let cols = im2col(ctx, &x, &g);
        let (spec, batching) = product.of(&g);
        gemm_with_block_into(
            ctx,
            &w.buffer,
            &cols.buffer,
            epilogue,
            &y.buffer,
            &spec,
            batching,
            block,
        );
    };
    let implicit = |block: Block, images: usize| {
        let (x, y, g) = first_images(ctx, [x, &y], g, images);
        let (padded, pitch) = pad(ctx, &x, &g);
        let image = Image {
            buffer: padded.as_ref().unwrap_or(&x.buffer),
            geometry: &g,
            pitch,
            product,
        };
        conv_implicit_into(ctx, &w.buffer, image, epilogue, &y.buffer, block);
    };
    let gemm = || run_conv_product(ctx, product, g, &explicit, &implicit);
    let direct = || direct_conv::forward_into(ctx, x, w, epilogue, g, &y.buffer);
    let eligible = direct_conv::runs_forward(ctx, g);
    direct_or_gemm(ctx, product, g, eligible, &gemm, &direct);
    y
}

/// Runs `g`'s `product` by the direct kernel or the GEMM path, as the tuner
/// decided for its shape class (the GEMM path where the direct kernel is
/// not `eligible`). The first product of a class on a device runs the GEMM
/// path (which tunes its own kernels), then times it against the direct
/// kernel, remembers the faster and ends with a run of it: both write the
/// same result, up to the order of its sums.
fn direct_or_gemm(
    ctx: &GpuContext,
    product: ConvProduct,
    g: &Conv2dGeometry,
    eligible: bool,
    gemm: &dyn Fn(),
    direct: &dyn Fn(),
) {
    if !eligible {
        return gemm();
    }
    let (spec, batching) = product.of(g);
    match ctx.gemm_tuner.direct_choice(product, &spec, batching.count) {
        Some(true) => direct(),
        Some(false) => gemm(),
        None => {
            gemm();
            let runs = [gemm, direct];
            let best = fastest(ctx, &runs, &[false, true]);
            ctx.gemm_tuner
                .remember_direct(product, &spec, batching.count, best == 1);
            // The race's last run was the direct kernel's.
            if best == 0 {
                gemm();
            }
        }
    }
}

/// `dW (O, C·kh·kw) = Σ_n dY_n (O, OH·OW) · X_col,nᵀ` over the images of
/// `g`, in one piece: im2row then a GEMM, or a kernel reading `X_col,nᵀ`
/// from the image, whichever the tuner timed faster.
fn weight_grad_whole(
    ctx: &GpuContext,
    x: &GpuTensor,
    dy: &GpuTensor,
    g: &Conv2dGeometry,
) -> GpuTensor {
    assert_eq!(x.shape, g.input_shape(), "conv2d input shape");
    assert_eq!(dy.shape, g.output_shape(), "conv2d output gradient shape");
    let dw = ctx.tensor(&g.weight_shape(), "conv2d.dw");
    let product = ConvProduct::WeightGrad;
    let explicit = |block: Option<Block>, images: usize| {
        let (x, dy, g) = first_images(ctx, [x, dy], g, images);
        let x_rows = im2row(ctx, &x, &g);
        let (spec, batching) = product.of(&g);
        gemm_packed_b_into(
            ctx,
            &dy.buffer,
            Packed {
                buffer: &x_rows,
                stride: g.out_positions() * g.col_rows().next_multiple_of(4),
            },
            Bias::None,
            &dw.buffer,
            &spec,
            batching,
            block,
        );
    };
    let implicit = |block: Block, images: usize| {
        let (x, dy, g) = first_images(ctx, [x, dy], g, images);
        let (padded, pitch) = pad(ctx, &x, &g);
        let image = Image {
            buffer: padded.as_ref().unwrap_or(&x.buffer),
            geometry: &g,
            pitch,
            product,
        };
        conv_implicit_into(ctx, &dy.buffer, image, Bias::None.into(), &dw.buffer, block);
    };
    run_conv_product(ctx, product, g, &explicit, &implicit);
    dw
}

/// `dX = col2im(dX_col)` with `dX_col,n (C·kh·kw, OH·OW) = W_colᵀ · dY_n`,
/// in one piece.
fn input_grad_whole(
    ctx: &GpuContext,
    w: &GpuTensor,
    dy: &GpuTensor,
    g: &Conv2dGeometry,
) -> GpuTensor {
    let dcols = ctx.tensor(&g.cols_shape(), "conv2d.dcols");
    let (spec, batching) = ConvProduct::InputGrad.of(g);
    gemm_into(
        ctx,
        &w.buffer,
        &dy.buffer,
        Bias::None,
        &dcols.buffer,
        &spec,
        batching,
    );
    col2im(ctx, &dcols, g)
}

// ---- Splitting the batch to fit the device's per-buffer limit ----
//
// im2col, im2row and dX_col hold C·kh·kw·OH·OW values per image, k² times an
// activation; a batch whose matrices exceed the largest buffer the device
// allows (lavapipe: 128 MiB) runs a run of images at a time. Each run's
// images are copied into a buffer of their own (copies have no alignment
// rule, unlike bindings at an offset) and its outputs copied back. The
// forward and dX are per image, so splitting changes no value; dW adds the
// runs' partial sums in run order.

/// Bytes of the largest per-image temporary of `g`: im2col and dX_col
/// `(C·kh·kw, OH·OW)`, im2row `(OH·OW, ⌈C·kh·kw/4⌉·4)`.
fn temporary_bytes_per_image(g: &Conv2dGeometry) -> u64 {
    4 * (g.col_rows().next_multiple_of(4) * g.out_positions()) as u64
}

/// The runs of images `g`'s batch is split into, or `None` when the whole
/// batch fits (nothing is allocated either way).
///
/// # Panics
/// When a single image's matrix is over the limit (the model's
/// `check_fits` refuses such a model before training).
fn image_runs(
    ctx: &GpuContext,
    g: &Conv2dGeometry,
) -> Option<impl ExactSizeIterator<Item = std::ops::Range<usize>>> {
    let per_image = temporary_bytes_per_image(g);
    let max = ctx.max_buffer_bytes();
    assert!(
        per_image <= max,
        "one image's im2col matrix ({per_image} bytes) is over the {max}-byte buffer limit"
    );
    let run = ((max / per_image) as usize).max(1);
    let batch = g.batch;
    (batch > run)
        .then(|| (0..batch.div_ceil(run)).map(move |i| i * run..((i + 1) * run).min(batch)))
}

/// The geometry of a run of `images` images.
fn run_geometry(g: &Conv2dGeometry, images: usize) -> Conv2dGeometry {
    Conv2dGeometry {
        batch: images,
        ..*g
    }
}

/// Images `run` of `t` (shape `(N, …)`) copied into a tensor of their own.
fn take_images(ctx: &GpuContext, t: &GpuTensor, run: &std::ops::Range<usize>) -> GpuTensor {
    let per_image = t.len() / t.shape[0].max(1);
    let mut shape = t.shape.clone();
    shape[0] = run.len();
    let part = ctx.tensor(&shape, "conv2d.run");
    let bytes = 4 * (per_image * run.len()) as u64;
    ctx.copy_range(
        &t.buffer,
        4 * (per_image * run.start) as u64,
        &part.buffer,
        0,
        bytes,
    );
    part
}

/// Copies `part` (images `run`) into `whole` at its place.
fn put_images(ctx: &GpuContext, part: &GpuTensor, whole: &GpuTensor, run: &std::ops::Range<usize>) {
    let per_image = whole.len() / whole.shape[0].max(1);
    let bytes = 4 * (per_image * run.len()) as u64;
    ctx.copy_range(
        &part.buffer,
        0,
        &whole.buffer,
        4 * (per_image * run.start) as u64,
        bytes,
    );
}

/// `Y (N, O, OH, OW) = act(W_col · X_col,n + b[o])`, the activation (if
/// any; relu or leaky relu, see [`super::gemm::fuses`]) in the GEMM's
/// epilogue; a run of images at a time when the batch's im2col matrix is
/// over the device's buffer limit.
pub fn conv2d_forward(
    ctx: &GpuContext,
    x: &GpuTensor,
    w: &GpuTensor,
    b: &GpuTensor,
    g: &Conv2dGeometry,
    activation: Option<Activation>,
) -> GpuTensor {
    let Some(runs) = image_runs(ctx, g) else {
        return forward_whole(ctx, x, w, b, g, activation);
    };
    assert_eq!(x.shape, g.input_shape(), "conv2d input shape");
    let y = ctx.tensor(&g.output_shape(), "conv2d.y");
    for run in runs {
        let part = take_images(ctx, x, &run);
        let y_part = forward_whole(ctx, &part, w, b, &run_geometry(g, run.len()), activation);
        put_images(ctx, &y_part, &y, &run);
    }
    y
}

/// `maxpool(act(W ∗ X + b))` and its arg-max in one pass of the pooled
/// direct kernel ([`direct_conv::forward_pooled_into`]), for a 2×2 pool
/// with stride 2 and no padding over the convolution's output, `act` relu
/// or leaky relu, where the tuner runs the direct forward and pools in it
/// ([`super::tune::GemmTuner::pools_in_direct_forward`]) and the batch is
/// not split. `None` (nothing recorded) otherwise: the caller runs the
/// convolution and the pool.
pub fn conv2d_forward_pooled(
    ctx: &GpuContext,
    x: &GpuTensor,
    w: &GpuTensor,
    b: &GpuTensor,
    g: &Conv2dGeometry,
    act: Activation,
    pool: &Pool2dGeometry,
) -> Option<(GpuTensor, GpuIndices)> {
    let epilogue = Epilogue {
        bias: Bias::PerRow(&b.buffer),
        activation: Some(act),
    };
    let halves = pool.kernel == 2 && pool.stride == 2 && pool.padding == 0;
    let (spec, batching) = ConvProduct::Forward.of(g);
    let fused = halves
        && pool.input_shape() == g.output_shape()
        && epilogue.activation_mode().is_some()
        && direct_conv::runs_forward(ctx, g)
        && image_runs(ctx, g).is_none()
        && ctx
            .gemm_tuner
            .pools_in_direct_forward(&spec, batching.count);
    if !fused {
        return None;
    }
    assert_eq!(w.shape, g.weight_shape(), "conv2d weight shape");
    assert_eq!(b.shape, [g.out_channels], "conv2d bias shape");
    assert_eq!(x.shape, g.input_shape(), "conv2d input shape");
    let y = ctx.tensor(&pool.output_shape(), "conv2d.pooled");
    let argmax = super::pool::argmax_for(ctx, &y);
    direct_conv::forward_pooled_into(ctx, x, w, epilogue, g, [&y.buffer, &argmax.buffer]);
    Some((y, argmax))
}

/// `dX`, `dW`, `db` of the convolution.
pub fn conv2d_backward(
    ctx: &GpuContext,
    x: &GpuTensor,
    w: &GpuTensor,
    dy: &GpuTensor,
    g: &Conv2dGeometry,
) -> ParamGrads<GpuTensor> {
    // dX first: its direct kernel pads dY in a layout the direct weight
    // gradient can read too, and keeps it for that.
    let dx = conv2d_input_grad(ctx, w, dy, g);
    let (dw, db) = conv2d_weight_grads(ctx, x, dy, g);
    // Not kept past the step if no path took it.
    if let Some((planes, padding, pitch)) = direct_conv::shared_dy_padding(g) {
        drop(ctx.take_derived(&dy.buffer, pad_key(planes, padding, pitch)));
    }
    ParamGrads { dx, dw, db }
}

/// `dW (O, C·kh·kw) = Σ_n dY_n (O, OH·OW) · X_col,nᵀ` and
/// `db (O) = Σ_{n, oh, ow} dY`: dW by the direct kernel or the GEMM path,
/// whichever the tuner timed faster for the shape class.
pub fn conv2d_weight_grads(
    ctx: &GpuContext,
    x: &GpuTensor,
    dy: &GpuTensor,
    g: &Conv2dGeometry,
) -> (GpuTensor, GpuTensor) {
    assert_eq!(x.shape, g.input_shape(), "conv2d input shape");
    assert_eq!(dy.shape, g.output_shape(), "conv2d output gradient shape");
    let gemm = || {
        let dw = weight_grad_gemm(ctx, x, dy, g);
        let db = ctx.tensor(&[g.out_channels], "conv2d.db");
        channel_sum_into(
            ctx,
            &dy.buffer,
            &db.buffer,
            g.batch,
            g.out_channels,
            g.out_positions(),
        );
        (dw, db)
    };
    let grads = direct_or_gemm_result(
        ctx,
        ConvProduct::WeightGrad,
        g,
        direct_conv::runs_weight_grad(ctx, g),
        &gemm,
        &|| direct_conv::weight_grads(ctx, x, dy, g),
    );
    // The forward's padded X, if no path took it (im2row pads nothing),
    // goes now rather than at the step's end: every step holds it as long,
    // whichever path ran, so later steps need no buffer the first did not.
    let (planes, padding, pitch) = input_padding(g);
    drop(ctx.take_derived(&x.buffer, pad_key(planes, padding, pitch)));
    grads
}

/// `dW` by the GEMM path, over runs of images (partial sums added in run
/// order) when the batch's im2row matrix is over the buffer limit.
fn weight_grad_gemm(
    ctx: &GpuContext,
    x: &GpuTensor,
    dy: &GpuTensor,
    g: &Conv2dGeometry,
) -> GpuTensor {
    if let Some(runs) = image_runs(ctx, g) {
        let count = runs.len();
        let len = g.out_channels * g.col_rows();
        let partial = ctx.storage_buffer(4 * (count * len) as u64, "conv2d.dw.runs");
        for (i, run) in runs.enumerate() {
            let (x_part, dy_part) = (take_images(ctx, x, &run), take_images(ctx, dy, &run));
            let dw_part = weight_grad_whole(ctx, &x_part, &dy_part, &run_geometry(g, run.len()));
            ctx.copy(
                &dw_part.buffer,
                &partial,
                4 * (i * len) as u64,
                4 * len as u64,
            );
        }
        let dw = ctx.tensor(&g.weight_shape(), "conv2d.dw");
        slice_sum_into(ctx, &partial, &dw.buffer, count, len);
        dw
    } else {
        weight_grad_whole(ctx, x, dy, g)
    }
}

/// `dX`: by the direct kernel (no temporary matrix, so the batch is never
/// split) or as `col2im(W_colᵀ · dY_n)`, whichever the tuner timed faster
/// for the shape class.
fn conv2d_input_grad(
    ctx: &GpuContext,
    w: &GpuTensor,
    dy: &GpuTensor,
    g: &Conv2dGeometry,
) -> GpuTensor {
    direct_or_gemm_result(
        ctx,
        ConvProduct::InputGrad,
        g,
        direct_conv::runs_input_grad(ctx, g),
        &|| input_grad_gemm(ctx, w, dy, g),
        &|| direct_conv::input_grad(ctx, w, dy, g),
    )
}

/// [`direct_or_gemm`] for a product whose paths each return new tensors:
/// those of the path that ran last (the winner). Each run first drops the
/// ones before, so a race's buffers come from the pool as a single run's
/// do (and later steps create no bind group).
fn direct_or_gemm_result<T>(
    ctx: &GpuContext,
    product: ConvProduct,
    g: &Conv2dGeometry,
    eligible: bool,
    gemm: &dyn Fn() -> T,
    direct: &dyn Fn() -> T,
) -> T {
    let result = std::cell::RefCell::new(None);
    let run = |path: &dyn Fn() -> T| {
        result.take();
        result.replace(Some(path()));
    };
    direct_or_gemm(ctx, product, g, eligible, &|| run(gemm), &|| run(direct));
    result.into_inner().expect("a path ran")
}

/// `dX = col2im(W_colᵀ · dY_n)`, a run of images at a time when the batch's
/// dX_col matrix is over the buffer limit.
fn input_grad_gemm(
    ctx: &GpuContext,
    w: &GpuTensor,
    dy: &GpuTensor,
    g: &Conv2dGeometry,
) -> GpuTensor {
    let Some(runs) = image_runs(ctx, g) else {
        return input_grad_whole(ctx, w, dy, g);
    };
    let dx = ctx.tensor(&g.input_shape(), "conv2d.dx");
    for run in runs {
        let dy_part = take_images(ctx, dy, &run);
        let dx_part = input_grad_whole(ctx, w, &dy_part, &run_geometry(g, run.len()));
        put_images(ctx, &dx_part, &dx, &run);
    }
    dx
}
