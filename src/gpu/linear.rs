//! The fully connected layer as GEMMs (`shaders/gemm.wgsl`) with weight
//! `(O, I)` as PyTorch stores it.

use super::context::GpuContext;
use super::gemm::{Bias, Epilogue, gemm_into_summing_a, single_gemm_into};
use super::reduce::channel_sum_into;
use super::tensor::GpuTensor;
use crate::backend::ParamGrads;
use crate::geometry::{Activation, GemmSpec};

fn dims(x: &GpuTensor, w: &GpuTensor) -> (usize, usize, usize) {
    assert_eq!(x.shape.len(), 2, "linear input must be (N, I)");
    assert_eq!(w.shape.len(), 2, "linear weight must be (O, I)");
    assert_eq!(x.shape[1], w.shape[1], "linear input features vs weight");
    (x.shape[0], x.shape[1], w.shape[0])
}

/// `Y (N, O) = act(X (N, I) · Wᵀ + b)`: GEMM with `B` transposed, bias per
/// column, the activation (if any; see [`super::gemm::fuses`]) in the
/// epilogue.
pub fn linear_forward(
    ctx: &GpuContext,
    x: &GpuTensor,
    w: &GpuTensor,
    b: &GpuTensor,
    activation: Option<Activation>,
) -> GpuTensor {
    let (n, i, o) = dims(x, w);
    assert_eq!(b.shape, [o], "linear bias shape");
    let y = ctx.tensor(&[n, o], "linear.y");
    let spec = GemmSpec {
        m: n,
        n: o,
        k: i,
        trans_a: false,
        trans_b: true,
    };
    single_gemm_into(
        ctx,
        &x.buffer,
        &w.buffer,
        Epilogue {
            bias: Bias::PerColumn(&b.buffer),
            activation,
        },
        &y.buffer,
        &spec,
    );
    y
}

/// `dX = dY · W` `(N, I)`, `dW = dYᵀ · X` `(O, I)`, `db = Σ_n dY` `(O)`.
pub fn linear_backward(
    ctx: &GpuContext,
    x: &GpuTensor,
    w: &GpuTensor,
    dy: &GpuTensor,
) -> ParamGrads<GpuTensor> {
    backward(ctx, x, w, dy, None)
}

/// [`linear_backward`] with `dX` taken through `act`, the activation (relu
/// or leaky relu) whose output is `X`, in the dX product's epilogue:
/// `dX = (dY · W) · act'(X)`.
pub fn linear_backward_through(
    ctx: &GpuContext,
    x: &GpuTensor,
    w: &GpuTensor,
    dy: &GpuTensor,
    act: Activation,
) -> ParamGrads<GpuTensor> {
    backward(ctx, x, w, dy, Some(act))
}

fn backward(
    ctx: &GpuContext,
    x: &GpuTensor,
    w: &GpuTensor,
    dy: &GpuTensor,
    through: Option<Activation>,
) -> ParamGrads<GpuTensor> {
    let (n, i, o) = dims(x, w);
    assert_eq!(dy.shape, [n, o], "linear output gradient shape");
    let dx = ctx.tensor(&[n, i], "linear.dx");
    let dx_spec = GemmSpec {
        m: n,
        n: i,
        k: o,
        trans_a: false,
        trans_b: false,
    };
    let epilogue = match through {
        None => Bias::None.into(),
        Some(act) => Epilogue {
            bias: Bias::Gate(&x.buffer),
            activation: Some(act),
        },
    };
    // db = Σ_n dY comes out of dY's pack for this product.
    let db = ctx.tensor(&[o], "linear.db");
    gemm_into_summing_a(
        ctx,
        [&dy.buffer, &db.buffer],
        &w.buffer,
        epilogue,
        &dx.buffer,
        &dx_spec,
    );
    let dw = weight_grad(ctx, x, dy, [n, i, o]);
    ParamGrads { dx, dw, db }
}

/// `dW = dYᵀ · X` `(O, I)` and `db = Σ_n dY` `(O)`, without `dX`.
pub fn linear_weight_grads(
    ctx: &GpuContext,
    x: &GpuTensor,
    w: &GpuTensor,
    dy: &GpuTensor,
) -> (GpuTensor, GpuTensor) {
    let (n, i, o) = dims(x, w);
    assert_eq!(dy.shape, [n, o], "linear output gradient shape");
    let dw = weight_grad(ctx, x, dy, [n, i, o]);
    let db = ctx.tensor(&[o], "linear.db");
    channel_sum_into(ctx, &dy.buffer, &db.buffer, n, o, 1);
    (dw, db)
}

/// `dW = dYᵀ · X` `(O, I)` for a batch of `n`.
fn weight_grad(
    ctx: &GpuContext,
    x: &GpuTensor,
    dy: &GpuTensor,
    [n, i, o]: [usize; 3],
) -> GpuTensor {
    let dw = ctx.tensor(&[o, i], "linear.dw");
    let dw_spec = GemmSpec {
        m: o,
        n: i,
        k: n,
        trans_a: true,
        trans_b: false,
    };
    single_gemm_into(ctx, &dy.buffer, &x.buffer, Bias::None, &dw.buffer, &dw_spec);
    dw
}
