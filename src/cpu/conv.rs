//! 2-D convolution from the definition (direct loops over every output, channel
//! and kernel tap), plus im2col/col2im as their own reference ops.
//!
//! The convolution here never builds an im2col matrix: it checks the GPU's
//! im2col + GEMM algorithm against the definition.

use super::Real;
use crate::backend::ParamGrads;
use crate::geometry::Conv2dGeometry;
use crate::tensor::HostTensor;

/// The input coordinate `o·stride − padding + tap` read by output position `o`
/// at kernel tap `tap`, or `None` when it falls in the zero padding.
fn input_coord(o: usize, tap: usize, stride: usize, padding: usize, len: usize) -> Option<usize> {
    let pos = (o * stride + tap).checked_sub(padding)?;
    (pos < len).then_some(pos)
}

fn assert_shape<F>(what: &str, t: &HostTensor<F>, expected: &[usize]) {
    assert_eq!(
        t.shape, expected,
        "{what} has shape {:?}, the convolution geometry needs {:?}",
        t.shape, expected
    );
}

/// `X (N, C, H, W) → X_col (N, C·kh·kw, OH·OW)` with
/// `X_col[n, (c·kh + i)·kw + j, oh·OW + ow] = X[n, c, oh·s − p + i, ow·s − p + j]`,
/// 0 where that position is padding.
pub fn im2col<F: Real>(x: &HostTensor<F>, g: &Conv2dGeometry) -> HostTensor<F> {
    assert_shape("im2col input x", x, &g.input_shape());
    let (c_n, h_n, w_n) = (g.channels, g.height, g.width);
    let (kh, kw) = (g.kernel_h, g.kernel_w);
    let (oh_n, ow_n) = (g.out_h, g.out_w);
    let (rows, cols) = (g.col_rows(), g.out_positions());
    let mut out = HostTensor::zeros(&g.cols_shape());
    for n in 0..g.batch {
        for c in 0..c_n {
            for i in 0..kh {
                for j in 0..kw {
                    let row = (c * kh + i) * kw + j;
                    for oh in 0..oh_n {
                        let Some(h) = input_coord(oh, i, g.stride, g.padding, h_n) else {
                            continue;
                        };
                        for ow in 0..ow_n {
                            let Some(w) = input_coord(ow, j, g.stride, g.padding, w_n) else {
                                continue;
                            };
                            out.data[(n * rows + row) * cols + oh * ow_n + ow] =
                                x.data[((n * c_n + c) * h_n + h) * w_n + w];
                        }
                    }
                }
            }
        }
    }
    out
}

/// The adjoint of [`im2col`]: `dX[n, c, h, w] = Σ dX_col[n, (c·kh + i)·kw + j, oh·OW + ow]`
/// over every `(i, j, oh, ow)` with `oh·s − p + i = h` and `ow·s − p + j = w`;
/// `(N, C·kh·kw, OH·OW) → (N, C, H, W)`.
pub fn col2im<F: Real>(cols: &HostTensor<F>, g: &Conv2dGeometry) -> HostTensor<F> {
    assert_shape("col2im input cols", cols, &g.cols_shape());
    let (c_n, h_n, w_n) = (g.channels, g.height, g.width);
    let (kh, kw) = (g.kernel_h, g.kernel_w);
    let (oh_n, ow_n) = (g.out_h, g.out_w);
    let (rows, ncols) = (g.col_rows(), g.out_positions());
    let mut dx = HostTensor::zeros(&g.input_shape());
    for n in 0..g.batch {
        for c in 0..c_n {
            for i in 0..kh {
                for j in 0..kw {
                    let row = (c * kh + i) * kw + j;
                    for oh in 0..oh_n {
                        let Some(h) = input_coord(oh, i, g.stride, g.padding, h_n) else {
                            continue;
                        };
                        for ow in 0..ow_n {
                            let Some(w) = input_coord(ow, j, g.stride, g.padding, w_n) else {
                                continue;
                            };
                            dx.data[((n * c_n + c) * h_n + h) * w_n + w] +=
                                cols.data[(n * rows + row) * ncols + oh * ow_n + ow];
                        }
                    }
                }
            }
        }
    }
    dx
}

/// `Y[n, o, oh, ow] = b[o] + Σ_{c, i, j} W[o, c, i, j]·X[n, c, oh·s − p + i, ow·s − p + j]`
/// (padding reads 0); `x (N, C, H, W)`, `w (O, C, kh, kw)`, `b (O)` → `(N, O, OH, OW)`.
pub fn conv2d_forward<F: Real>(
    x: &HostTensor<F>,
    w: &HostTensor<F>,
    b: &HostTensor<F>,
    g: &Conv2dGeometry,
) -> HostTensor<F> {
    assert_shape("conv2d input x", x, &g.input_shape());
    assert_shape("conv2d weight w", w, &g.weight_shape());
    assert_shape("conv2d bias b", b, &[g.out_channels]);
    let (c_n, h_n, w_n) = (g.channels, g.height, g.width);
    let (kh, kw) = (g.kernel_h, g.kernel_w);
    let (o_n, oh_n, ow_n) = (g.out_channels, g.out_h, g.out_w);
    let mut y = HostTensor::zeros(&g.output_shape());
    for n in 0..g.batch {
        for o in 0..o_n {
            for oh in 0..oh_n {
                for ow in 0..ow_n {
                    let mut acc = b.data[o];
                    for c in 0..c_n {
                        for i in 0..kh {
                            let Some(h) = input_coord(oh, i, g.stride, g.padding, h_n) else {
                                continue;
                            };
                            for j in 0..kw {
                                let Some(wx) = input_coord(ow, j, g.stride, g.padding, w_n) else {
                                    continue;
                                };
                                acc += w.data[((o * c_n + c) * kh + i) * kw + j]
                                    * x.data[((n * c_n + c) * h_n + h) * w_n + wx];
                            }
                        }
                    }
                    y.data[((n * o_n + o) * oh_n + oh) * ow_n + ow] = acc;
                }
            }
        }
    }
    y
}

/// Gradients of [`conv2d_forward`] given `dy (N, O, OH, OW)`, by direct loops:
/// `dX[n, c, h, w] = Σ_{o, oh, ow, i, j : oh·s − p + i = h, ow·s − p + j = w} W[o, c, i, j]·dY[n, o, oh, ow]`
/// `(N, C, H, W)`;
/// `dW[o, c, i, j] = Σ_{n, oh, ow} dY[n, o, oh, ow]·X[n, c, oh·s − p + i, ow·s − p + j]`
/// `(O, C, kh, kw)`; `db[o] = Σ_{n, oh, ow} dY[n, o, oh, ow]` `(O)`.
pub fn conv2d_backward<F: Real>(
    x: &HostTensor<F>,
    w: &HostTensor<F>,
    dy: &HostTensor<F>,
    g: &Conv2dGeometry,
) -> ParamGrads<HostTensor<F>> {
    assert_shape("conv2d_backward input x", x, &g.input_shape());
    assert_shape("conv2d_backward weight w", w, &g.weight_shape());
    assert_shape("conv2d_backward output gradient dy", dy, &g.output_shape());
    let (c_n, h_n, w_n) = (g.channels, g.height, g.width);
    let (kh, kw) = (g.kernel_h, g.kernel_w);
    let (o_n, oh_n, ow_n) = (g.out_channels, g.out_h, g.out_w);
    let mut dx = HostTensor::zeros(&g.input_shape());
    let mut dw = HostTensor::zeros(&g.weight_shape());
    let mut db = HostTensor::zeros(&[o_n]);
    for n in 0..g.batch {
        for o in 0..o_n {
            for oh in 0..oh_n {
                for ow in 0..ow_n {
                    let d = dy.data[((n * o_n + o) * oh_n + oh) * ow_n + ow];
                    db.data[o] += d;
                    for c in 0..c_n {
                        for i in 0..kh {
                            let Some(h) = input_coord(oh, i, g.stride, g.padding, h_n) else {
                                continue;
                            };
                            for j in 0..kw {
                                let Some(wx) = input_coord(ow, j, g.stride, g.padding, w_n) else {
                                    continue;
                                };
                                let xi = ((n * c_n + c) * h_n + h) * w_n + wx;
                                let wi = ((o * c_n + c) * kh + i) * kw + j;
                                dx.data[xi] += w.data[wi] * d;
                                dw.data[wi] += x.data[xi] * d;
                            }
                        }
                    }
                }
            }
        }
    }
    ParamGrads { dx, dw, db }
}
