//! The CPU training path's matrix-product ops: the same math as the reference
//! functions, but convolutions read in place from a padded image by SIMD
//! kernels (`direct_conv.rs`, `unpacked.rs`) or as im2col + an optimised
//! GEMM ([`Real::matmul`]) in `conv.rs`, fully connected layers as bands of
//! rows, over a pool of one thread per core (rayon's). The reference stays
//! the judge; `tests/cpu_fast.rs` compares the two.

use rayon::prelude::*;

pub(super) mod batchnorm;
mod conv;
mod direct_conv;
mod lanes;
pub(super) mod unpacked;

pub use conv::{conv2d_backward, conv2d_forward, conv2d_weight_grads};

use super::Real;
use super::activation::Elementwise;
use crate::backend::ParamGrads;
use crate::geometry::{GemmSpec, Pool2dGeometry};
use crate::tensor::HostTensor;

/// Elements per run of an elementwise op on the pool: big enough that
/// handing a run to a thread costs little beside it.
const ELEMENTWISE_RUN: usize = 1 << 15;

/// Elementwise ops over the pool, a run of elements per task, written
/// straight into the output (no zero-filled buffer first).
pub(super) struct OverThePool;

impl Elementwise for OverThePool {
    fn map<F: Real>(input: &[F], f: impl Fn(F) -> F + Sync) -> Vec<F> {
        input
            .par_iter()
            .with_min_len(ELEMENTWISE_RUN)
            .map(|&v| f(v))
            .collect()
    }

    fn zip_map<F: Real>(a: &[F], b: &[F], f: impl Fn(F, F) -> F + Sync) -> Vec<F> {
        assert_eq!(a.len(), b.len(), "zip_map: lengths differ");
        a.par_iter()
            .zip(b)
            .with_min_len(ELEMENTWISE_RUN)
            .map(|(&a, &b)| f(a, b))
            .collect()
    }
}

/// Tasks to split `items` over: one per thread of the pool (rayon's, kept
/// alive between ops; spawning threads per op cost ~75 µs each time).
fn workers(items: usize) -> usize {
    rayon::current_num_threads().min(items).max(1)
}

/// Row and column strides of a row-major `(rows, cols)` matrix, or of its
/// transpose when `transposed` (the matrix is stored `(cols, rows)`).
fn strides(cols_stored: usize, transposed: bool) -> (isize, isize) {
    if transposed {
        (1, cols_stored as isize)
    } else {
        (cols_stored as isize, 1)
    }
}

/// A strided matrix: its values and its row and column strides.
type Strided<'a, F> = (&'a [F], isize, isize);

/// Products smaller than this many multiply-adds run on one thread.
const PARALLEL_MIN_WORK: usize = 1 << 20;

/// `C ← A·B + β·C` for row-major `C (m, n)`, bands of C's rows split over the
/// pool (each band one [`Real::matmul`] over the whole depth).
fn matmul_rows<F: Real>(
    k: usize,
    n: usize,
    a: Strided<'_, F>,
    b: Strided<'_, F>,
    beta: F,
    c: &mut [F],
) {
    if c.is_empty() {
        return;
    }
    let m = c.len() / n;
    let tasks = if m * n * k < PARALLEL_MIN_WORK {
        1
    } else {
        workers(m)
    };
    let band = m.div_ceil(tasks).max(1);
    let (a_values, rsa, csa) = a;
    c.par_chunks_mut(band * n)
        .enumerate()
        .for_each(|(t, c_band)| {
            let first = t * band;
            let rows = c_band.len() / n;
            let a_band = &a_values[first * rsa as usize..];
            F::matmul(
                rows,
                k,
                n,
                (a_band, rsa, csa),
                b,
                beta,
                (c_band, n as isize, 1),
            );
        });
}

/// `C = op(A)·op(B)`, `(m, n)`; transposes are strides, not copies.
pub fn gemm<F: Real>(a: &HostTensor<F>, b: &HostTensor<F>, spec: &GemmSpec) -> HostTensor<F> {
    assert_eq!(a.shape, spec.a_shape(), "gemm A shape");
    assert_eq!(b.shape, spec.b_shape(), "gemm B shape");
    let mut c = HostTensor::zeros(&[spec.m, spec.n]);
    let (rsa, csa) = strides(a.shape[1], spec.trans_a);
    let (rsb, csb) = strides(b.shape[1], spec.trans_b);
    matmul_rows(
        spec.k,
        spec.n,
        (&a.data, rsa, csa),
        (&b.data, rsb, csb),
        F::zero(),
        &mut c.data,
    );
    c
}

/// `Y = X · Wᵀ + b`, `(N, O)`.
pub fn linear_forward<F: Real>(
    x: &HostTensor<F>,
    w: &HostTensor<F>,
    b: &HostTensor<F>,
) -> HostTensor<F> {
    let (n, i, o) = (x.shape[0], x.shape[1], w.shape[0]);
    assert_eq!(w.shape, [o, i], "linear weight shape");
    let mut y = HostTensor::zeros(&[n, o]);
    for row in y.data.chunks_mut(o) {
        row.copy_from_slice(&b.data);
    }
    matmul_rows(
        i,
        o,
        (&x.data, i as isize, 1),
        (&w.data, 1, i as isize),
        F::one(),
        &mut y.data,
    );
    y
}

/// `dX = dY · W`, `dW = dYᵀ · X`, `db = Σ_n dY`.
pub fn linear_backward<F: Real>(
    x: &HostTensor<F>,
    w: &HostTensor<F>,
    dy: &HostTensor<F>,
) -> ParamGrads<HostTensor<F>> {
    let (n, i, o) = (x.shape[0], x.shape[1], w.shape[0]);
    assert_eq!(dy.shape, [n, o], "linear output gradient shape");
    let mut dx = HostTensor::zeros(&[n, i]);
    matmul_rows(
        o,
        i,
        (&dy.data, o as isize, 1),
        (&w.data, i as isize, 1),
        F::zero(),
        &mut dx.data,
    );
    let (dw, db) = linear_weight_grads(x, w, dy);
    ParamGrads { dx, dw, db }
}

/// `dW = dYᵀ · X` and `db = Σ_n dY`, without `dX`.
pub fn linear_weight_grads<F: Real>(
    x: &HostTensor<F>,
    w: &HostTensor<F>,
    dy: &HostTensor<F>,
) -> (HostTensor<F>, HostTensor<F>) {
    let (n, i, o) = (x.shape[0], x.shape[1], w.shape[0]);
    assert_eq!(dy.shape, [n, o], "linear output gradient shape");
    let mut dw = HostTensor::zeros(&[o, i]);
    matmul_rows(
        n,
        i,
        (&dy.data, 1, o as isize),
        (&x.data, i as isize, 1),
        F::zero(),
        &mut dw.data,
    );
    let mut db = HostTensor::zeros(&[o]);
    for row in dy.data.chunks(o) {
        db.data.iter_mut().zip(row).for_each(|(s, v)| *s += *v);
    }
    (dw, db)
}

/// Max pooling, `(N, C, H, W) → (N, C, OH, OW)` with each output's arg-max
/// (`h·W + w` in its plane), planes split over the cores. Windows are walked
/// over their inside only, in the reference's order with its tie rule (the
/// first maximum wins, a NaN is never replaced), so results are equal to
/// [`super::maxpool_forward`]'s.
pub fn maxpool_forward<F: Real>(
    x: &HostTensor<F>,
    g: &Pool2dGeometry,
) -> (HostTensor<F>, Vec<u32>) {
    assert_eq!(x.shape, g.input_shape(), "maxpool input shape");
    let mut y = HostTensor::zeros(&g.output_shape());
    let mut argmax = vec![0u32; y.len()];
    let (plane_in, plane_out) = (g.height * g.width, g.out_h * g.out_w);
    let planes = g.batch * g.channels;
    let chunk = planes.div_ceil(workers(planes));
    let outputs = y.data.par_chunks_mut(chunk * plane_out);
    let indices = argmax.par_chunks_mut(chunk * plane_out);
    let tasks = outputs
        .zip(indices)
        .zip(x.data.par_chunks(chunk * plane_in));
    tasks.for_each(|((y_c, arg_c), x_c)| {
        let planes = x_c.chunks(plane_in).zip(y_c.chunks_mut(plane_out));
        for ((x_p, y_p), arg_p) in planes.zip(arg_c.chunks_mut(plane_out)) {
            pool_plane(x_p, g, y_p, arg_p);
        }
    });
    (y, argmax)
}

/// The max pool's input gradient: each output's gradient added into its
/// arg-max, planes split over the cores. Within a plane outputs add in the
/// reference's order ([`super::maxpool_backward`]), so overlapping windows
/// sum the same way; the reference's division per output (which plane it
/// lies in) is gone, which made it a tenth of a fashion-cnn step.
pub fn maxpool_backward<F: Real>(
    dy: &HostTensor<F>,
    argmax: &[u32],
    g: &Pool2dGeometry,
) -> HostTensor<F> {
    assert_eq!(dy.shape, g.output_shape(), "maxpool output gradient shape");
    assert_eq!(argmax.len(), dy.len(), "maxpool arg-max count");
    let (plane_in, plane_out) = (g.height * g.width, g.out_h * g.out_w);
    let planes = g.batch * g.channels;
    let chunk = planes.div_ceil(workers(planes));
    let (dx, _) =
        HostTensor::written_in_parallel(&g.input_shape(), chunk * plane_in, plane_in, |c, dx_c| {
            let dy_c = dy.data[c * chunk * plane_out..].chunks(plane_out);
            let arg_c = argmax[c * chunk * plane_out..].chunks(plane_out);
            for ((dx_p, dy_p), arg_p) in dx_c.zip(dy_c).zip(arg_c) {
                for (&d, &at) in dy_p.iter().zip(arg_p) {
                    dx_p[at as usize] += d;
                }
            }
        });
    dx
}

/// One plane of [`maxpool_forward`].
fn pool_plane<F: Real>(x: &[F], g: &Pool2dGeometry, y: &mut [F], argmax: &mut [u32]) {
    if g.kernel == 2 && g.stride == 2 && g.padding == 0 {
        return pool_plane_2x2(x, g, y, argmax);
    }
    // The taps of a window starting at `o·stride − padding` that land inside.
    let taps = |o: usize, len: usize| {
        let start = o * g.stride;
        g.padding.saturating_sub(start)..g.kernel.min((len + g.padding).saturating_sub(start))
    };
    for oh in 0..g.out_h {
        let rows = taps(oh, g.height);
        for ow in 0..g.out_w {
            let cols = taps(ow, g.width);
            let mut best: Option<(F, usize)> = None;
            for i in rows.clone() {
                let line = (oh * g.stride + i - g.padding) * g.width;
                for j in cols.clone() {
                    let at = line + ow * g.stride + j - g.padding;
                    let v = x[at];
                    if best.is_none_or(|(b, _)| v > b) {
                        best = Some((v, at));
                    }
                }
            }
            let (v, at) = best.expect("padding is at most half the window");
            y[oh * g.out_w + ow] = v;
            argmax[oh * g.out_w + ow] = at as u32;
        }
    }
}

/// [`pool_plane`] for 2×2 windows at stride 2 without padding (the common
/// case), with the window's four taps read straight from two input rows.
fn pool_plane_2x2<F: Real>(x: &[F], g: &Pool2dGeometry, y: &mut [F], argmax: &mut [u32]) {
    let w = g.width;
    let outputs = y.chunks_mut(g.out_w).zip(argmax.chunks_mut(g.out_w));
    for (oh, (y_row, arg_row)) in outputs.enumerate() {
        let top = 2 * oh * w;
        let (upper, lower) = (&x[top..top + w], &x[top + w..top + 2 * w]);
        for (ow, (y, arg)) in y_row.iter_mut().zip(arg_row).enumerate() {
            let left = 2 * ow;
            // The reference's order and tie rule: the first maximum wins,
            // and a NaN is never replaced.
            let mut best = (upper[left], top + left);
            for (v, at) in [
                (upper[left + 1], top + left + 1),
                (lower[left], top + w + left),
                (lower[left + 1], top + w + left + 1),
            ] {
                if v > best.0 {
                    best = (v, at);
                }
            }
            *y = best.0;
            *arg = best.1 as u32;
        }
    }
}
