//! Host side of `shaders/softmax_xent.wgsl`: softmax cross-entropy loss, its
//! gradient and the count of correct predictions, all left on the GPU.

use super::context::{GpuContext, KernelSpec, Params, grid};
use super::tensor::{GpuIndices, GpuTensor};
use super::workgroup_sum::SummingModule;
use crate::backend::SoftmaxXent;

pub(super) static SOURCE: SummingModule = SummingModule::new(
    "softmax_xent",
    include_str!("../../shaders/softmax_xent.wgsl"),
);

/// Loss (mean over rows), correct count and `(softmax − onehot)/N`.
pub fn softmax_cross_entropy(
    ctx: &GpuContext,
    logits: &GpuTensor,
    labels: &GpuIndices,
) -> SoftmaxXent<GpuTensor> {
    assert_eq!(
        logits.shape.len(),
        2,
        "softmax cross-entropy logits must be (N, K)"
    );
    let (rows, classes) = (logits.shape[0], logits.shape[1]);
    assert_eq!(labels.len, rows, "one label per row");
    let params = Params::new().u32(rows).u32(classes);
    let grad = ctx.tensor(&logits.shape, "xent.grad");
    let row_loss = ctx.tensor(&[rows], "xent.row_loss");
    let row_correct = ctx.tensor(&[rows], "xent.row_correct");
    let per_row = ctx.kernel(&KernelSpec::new(SOURCE.module(ctx), "rows", 2, 3));
    ctx.dispatch(
        &per_row,
        &params,
        &[&logits.buffer, &labels.buffer],
        &[&grad.buffer, &row_loss.buffer, &row_correct.buffer],
        grid(rows, 64),
    );
    let loss = ctx.tensor(&[1], "xent.loss");
    let correct = ctx.tensor(&[1], "xent.correct");
    let totals = ctx.kernel(&KernelSpec::new(SOURCE.module(ctx), "totals", 2, 2));
    ctx.dispatch(
        &totals,
        &params,
        &[&row_loss.buffer, &row_correct.buffer],
        &[&loss.buffer, &correct.buffer],
        [1, 1, 1],
    );
    SoftmaxXent {
        loss,
        correct,
        grad,
    }
}
