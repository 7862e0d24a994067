//! Convolution as im2col + GEMM (`shaders/im2col.wgsl`, `shaders/gemm.wgsl`):
//!
//! - forward: `Y_n = W_col (O, C·kh·kw) · X_col,n (C·kh·kw, OH·OW) + b`, one
//!   batched GEMM whose output is already NCHW;
//! - backward: `dW = Σ_n dY_n · X_col,nᵀ` (GEMM summing over the batch),
//!   `db = Σ_{n, oh, ow} dY`, `dX = col2im(W_colᵀ · dY_n)`.

use super::context::{GpuContext, KernelSpec, Params, grid};
use super::gemm::{Batching, Bias, gemm_into};
use super::reduce::channel_sum_into;
use super::tensor::GpuTensor;
use crate::backend::ParamGrads;
use crate::geometry::{Conv2dGeometry, GemmSpec};

const SOURCE: &str = include_str!("../../shaders/im2col.wgsl");

fn params(g: &Conv2dGeometry) -> Params {
    Params::new()
        .u32(g.batch)
        .u32(g.channels)
        .u32(g.height)
        .u32(g.width)
        .u32(g.kernel_h)
        .u32(g.kernel_w)
        .u32(g.stride)
        .u32(g.padding)
        .u32(g.out_h)
        .u32(g.out_w)
}

/// `X (N, C, H, W) → X_col (N, C·kh·kw, OH·OW)`.
pub fn im2col(ctx: &GpuContext, x: &GpuTensor, g: &Conv2dGeometry) -> GpuTensor {
    assert_eq!(x.shape, g.input_shape(), "im2col input shape");
    let cols = ctx.tensor(&g.cols_shape(), "im2col");
    let kernel = ctx.kernel(&KernelSpec::new("im2col", SOURCE, "im2col", 1, 1));
    ctx.dispatch(
        &kernel,
        &params(g),
        &[&x.buffer],
        &[&cols.buffer],
        grid(cols.len(), 256),
    );
    cols
}

/// `dX_col (N, C·kh·kw, OH·OW) → dX (N, C, H, W)`, summing overlapping windows.
pub fn col2im(ctx: &GpuContext, cols: &GpuTensor, g: &Conv2dGeometry) -> GpuTensor {
    assert_eq!(cols.shape, g.cols_shape(), "col2im input shape");
    let x = ctx.tensor(&g.input_shape(), "col2im");
    let kernel = ctx.kernel(&KernelSpec::new("im2col", SOURCE, "col2im", 1, 1));
    ctx.dispatch(
        &kernel,
        &params(g),
        &[&cols.buffer],
        &[&x.buffer],
        grid(x.len(), 256),
    );
    x
}

/// `Y (N, O, OH, OW) = W_col · X_col,n + b[o]`.
pub fn conv2d_forward(
    ctx: &GpuContext,
    x: &GpuTensor,
    w: &GpuTensor,
    b: &GpuTensor,
    g: &Conv2dGeometry,
) -> GpuTensor {
    assert_eq!(w.shape, g.weight_shape(), "conv2d weight shape");
    assert_eq!(b.shape, [g.out_channels], "conv2d bias shape");
    let cols = im2col(ctx, x, g);
    let y = ctx.tensor(&g.output_shape(), "conv2d.y");
    let spec = GemmSpec {
        m: g.out_channels,
        n: g.out_positions(),
        k: g.col_rows(),
        trans_a: false,
        trans_b: false,
    };
    gemm_into(
        ctx,
        &w.buffer,
        &cols.buffer,
        Bias::PerRow(&b.buffer),
        &y.buffer,
        &spec,
        Batching {
            count: g.batch,
            stride_a: 0,
            stride_b: g.col_rows() * g.out_positions(),
            stride_c: g.out_channels * g.out_positions(),
            sum: false,
        },
    );
    y
}

/// `dX`, `dW`, `db` of the convolution.
pub fn conv2d_backward(
    ctx: &GpuContext,
    x: &GpuTensor,
    w: &GpuTensor,
    dy: &GpuTensor,
    g: &Conv2dGeometry,
) -> ParamGrads<GpuTensor> {
    assert_eq!(dy.shape, g.output_shape(), "conv2d output gradient shape");
    let rows = g.col_rows();
    let positions = g.out_positions();
    let cols = im2col(ctx, x, g);

    // dW (O, C·kh·kw) = Σ_n dY_n (O, OH·OW) · X_col,nᵀ
    let dw = ctx.tensor(&g.weight_shape(), "conv2d.dw");
    gemm_into(
        ctx,
        &dy.buffer,
        &cols.buffer,
        Bias::None,
        &dw.buffer,
        &GemmSpec {
            m: g.out_channels,
            n: rows,
            k: positions,
            trans_a: false,
            trans_b: true,
        },
        Batching {
            count: g.batch,
            stride_a: g.out_channels * positions,
            stride_b: rows * positions,
            stride_c: 0,
            sum: true,
        },
    );

    // db (O) = Σ_{n, oh, ow} dY
    let db = ctx.tensor(&[g.out_channels], "conv2d.db");
    channel_sum_into(
        ctx,
        &dy.buffer,
        &db.buffer,
        g.batch,
        g.out_channels,
        positions,
    );

    // dX_col,n (C·kh·kw, OH·OW) = W_colᵀ · dY_n, then dX = col2im(dX_col)
    let dcols = ctx.tensor(&g.cols_shape(), "conv2d.dcols");
    gemm_into(
        ctx,
        &w.buffer,
        &dy.buffer,
        Bias::None,
        &dcols.buffer,
        &GemmSpec {
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
    );
    let dx = col2im(ctx, &dcols, g);
    ParamGrads { dx, dw, db }
}
