//! Max and average pooling over NCHW input from the definition: one loop per
//! output element over its `kernel × kernel` window.

use super::Real;
use crate::geometry::Pool2dGeometry;
use crate::tensor::HostTensor;

/// The input coordinate `o·stride − padding + tap`, or `None` in the padding.
fn input_coord(o: usize, tap: usize, stride: usize, padding: usize, len: usize) -> Option<usize> {
    let pos = (o * stride + tap).checked_sub(padding)?;
    (pos < len).then_some(pos)
}

fn assert_shape<F>(what: &str, t: &HostTensor<F>, expected: &[usize]) {
    assert_eq!(
        t.shape, expected,
        "{what} has shape {:?}, the pooling geometry needs {:?}",
        t.shape, expected
    );
}

/// `Y[n, c, oh, ow] = max_{i, j < k} X[n, c, oh·s − p + i, ow·s − p + j]`
/// (padding is −∞), `(N, C, H, W) → (N, C, OH, OW)`, and the arg-max of each
/// window as the flat index `h·W + w` into its `(n, c)` input plane, one per
/// output element. Ties go to the first element in row-major window order
/// (an element replaces the current maximum only when strictly greater).
pub fn maxpool_forward<F: Real>(
    x: &HostTensor<F>,
    g: &Pool2dGeometry,
) -> (HostTensor<F>, Vec<u32>) {
    assert_shape("maxpool_forward input x", x, &g.input_shape());
    let (h_n, w_n, oh_n, ow_n) = (g.height, g.width, g.out_h, g.out_w);
    let mut y = HostTensor::zeros(&g.output_shape());
    let mut argmax = vec![0u32; y.len()];
    for plane in 0..g.batch * g.channels {
        let x_plane = &x.data[plane * h_n * w_n..(plane + 1) * h_n * w_n];
        for oh in 0..oh_n {
            for ow in 0..ow_n {
                let mut best: Option<(F, usize)> = None;
                for i in 0..g.kernel {
                    let Some(h) = input_coord(oh, i, g.stride, g.padding, h_n) else {
                        continue;
                    };
                    for j in 0..g.kernel {
                        let Some(w) = input_coord(ow, j, g.stride, g.padding, w_n) else {
                            continue;
                        };
                        let v = x_plane[h * w_n + w];
                        let replace = match best {
                            None => true,
                            Some((b, _)) => v > b,
                        };
                        if replace {
                            best = Some((v, h * w_n + w));
                        }
                    }
                }
                // Padding is at most half the kernel, so every window holds a real element.
                let (v, idx) = best.expect("pooling window with no element inside the input");
                let out = (plane * oh_n + oh) * ow_n + ow;
                y.data[out] = v;
                argmax[out] = idx as u32;
            }
        }
    }
    (y, argmax)
}

/// Routes each `dy[n, c, oh, ow]` to its window's arg-max:
/// `dX[n, c, h, w] = Σ dY[n, c, oh, ow]` over the windows whose arg-max is
/// `h·W + w`; `dy (N, C, OH, OW)`, `argmax` one per `dy` element → `(N, C, H, W)`.
pub fn maxpool_backward<F: Real>(
    dy: &HostTensor<F>,
    argmax: &[u32],
    g: &Pool2dGeometry,
) -> HostTensor<F> {
    assert_shape("maxpool_backward output gradient dy", dy, &g.output_shape());
    assert_eq!(
        argmax.len(),
        dy.len(),
        "maxpool_backward: {} arg-max indices for {} output gradients",
        argmax.len(),
        dy.len()
    );
    let plane_len = g.height * g.width;
    let out_plane = g.out_h * g.out_w;
    let mut dx = HostTensor::zeros(&g.input_shape());
    for (out, (&d, &idx)) in dy.data.iter().zip(argmax).enumerate() {
        let idx = idx as usize;
        assert!(
            idx < plane_len,
            "maxpool_backward: arg-max {idx} outside the {}x{} input plane",
            g.height,
            g.width
        );
        let plane = out / out_plane;
        dx.data[plane * plane_len + idx] += d;
    }
    dx
}

/// `Y[n, c, oh, ow] = Σ_{i, j < k} X[n, c, oh·s − p + i, ow·s − p + j] / k²`
/// (padding counts as 0 and is included in the divisor, PyTorch's
/// `count_include_pad = True`), `(N, C, H, W) → (N, C, OH, OW)`.
pub fn avgpool_forward<F: Real>(x: &HostTensor<F>, g: &Pool2dGeometry) -> HostTensor<F> {
    assert_shape("avgpool_forward input x", x, &g.input_shape());
    let (h_n, w_n, oh_n, ow_n) = (g.height, g.width, g.out_h, g.out_w);
    let area = F::from_usize(g.kernel * g.kernel);
    let mut y = HostTensor::zeros(&g.output_shape());
    for plane in 0..g.batch * g.channels {
        let x_plane = &x.data[plane * h_n * w_n..(plane + 1) * h_n * w_n];
        for oh in 0..oh_n {
            for ow in 0..ow_n {
                let mut sum = F::zero();
                for i in 0..g.kernel {
                    let Some(h) = input_coord(oh, i, g.stride, g.padding, h_n) else {
                        continue;
                    };
                    for j in 0..g.kernel {
                        let Some(w) = input_coord(ow, j, g.stride, g.padding, w_n) else {
                            continue;
                        };
                        sum += x_plane[h * w_n + w];
                    }
                }
                y.data[(plane * oh_n + oh) * ow_n + ow] = sum / area;
            }
        }
    }
    y
}

/// `dX[n, c, h, w] = Σ dY[n, c, oh, ow] / k²` over the windows that contain
/// `(h, w)`; `dy (N, C, OH, OW) → (N, C, H, W)`.
pub fn avgpool_backward<F: Real>(dy: &HostTensor<F>, g: &Pool2dGeometry) -> HostTensor<F> {
    assert_shape("avgpool_backward output gradient dy", dy, &g.output_shape());
    let (h_n, w_n, oh_n, ow_n) = (g.height, g.width, g.out_h, g.out_w);
    let area = F::from_usize(g.kernel * g.kernel);
    let mut dx = HostTensor::zeros(&g.input_shape());
    for plane in 0..g.batch * g.channels {
        for oh in 0..oh_n {
            for ow in 0..ow_n {
                let share = dy.data[(plane * oh_n + oh) * ow_n + ow] / area;
                for i in 0..g.kernel {
                    let Some(h) = input_coord(oh, i, g.stride, g.padding, h_n) else {
                        continue;
                    };
                    for j in 0..g.kernel {
                        let Some(w) = input_coord(ow, j, g.stride, g.padding, w_n) else {
                            continue;
                        };
                        dx.data[(plane * h_n + h) * w_n + w] += share;
                    }
                }
            }
        }
    }
    dx
}
