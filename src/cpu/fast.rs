//! The CPU training path's matrix-product ops: the same math as the reference
//! functions, but convolutions as im2col + an optimised GEMM
//! ([`Real::matmul`]), one image per task over the machine's cores. The
//! reference stays the judge; `tests/cpu_fast.rs` compares the two.

use std::thread;

use super::{Real, col2im, im2col};
use crate::backend::ParamGrads;
use crate::geometry::{Conv2dGeometry, GemmSpec};
use crate::tensor::HostTensor;

/// Threads to split a batch over.
fn workers(batch: usize) -> usize {
    thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(batch)
        .max(1)
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

/// `C = op(A)·op(B)`, `(m, n)`; transposes are strides, not copies.
pub fn gemm<F: Real>(a: &HostTensor<F>, b: &HostTensor<F>, spec: &GemmSpec) -> HostTensor<F> {
    assert_eq!(a.shape, spec.a_shape(), "gemm A shape");
    assert_eq!(b.shape, spec.b_shape(), "gemm B shape");
    let mut c = HostTensor::zeros(&[spec.m, spec.n]);
    let (rsa, csa) = strides(a.shape[1], spec.trans_a);
    let (rsb, csb) = strides(b.shape[1], spec.trans_b);
    F::matmul(
        spec.m,
        spec.k,
        spec.n,
        (&a.data, rsa, csa),
        (&b.data, rsb, csb),
        F::zero(),
        (&mut c.data, spec.n as isize, 1),
    );
    c
}

/// The geometry of one image of the batch.
fn single(g: &Conv2dGeometry) -> Conv2dGeometry {
    Conv2dGeometry { batch: 1, ..*g }
}

/// im2col of image `n`: `(C·kh·kw, OH·OW)`.
fn image_cols<F: Real>(x: &HostTensor<F>, n: usize, g: &Conv2dGeometry) -> HostTensor<F> {
    let len = g.channels * g.height * g.width;
    let image = HostTensor::new(
        &[1, g.channels, g.height, g.width],
        x.data[n * len..(n + 1) * len].to_vec(),
    );
    im2col(&image, &single(g))
}

/// `Y_n = W_col · X_col,n + b`, `(N, O, OH, OW)`.
pub fn conv2d_forward<F: Real>(
    x: &HostTensor<F>,
    w: &HostTensor<F>,
    b: &HostTensor<F>,
    g: &Conv2dGeometry,
) -> HostTensor<F> {
    assert_eq!(x.shape, g.input_shape(), "conv2d input shape");
    assert_eq!(w.shape, g.weight_shape(), "conv2d weight shape");
    let (o, rows, positions) = (g.out_channels, g.col_rows(), g.out_positions());
    let mut y = HostTensor::zeros(&g.output_shape());
    let per_image = o * positions;
    let chunk = g.batch.div_ceil(workers(g.batch));
    thread::scope(|s| {
        for (c, out) in y.data.chunks_mut(chunk * per_image).enumerate() {
            s.spawn(move || {
                for (i, y_n) in out.chunks_mut(per_image).enumerate() {
                    let cols = image_cols(x, c * chunk + i, g);
                    for (row, bias) in y_n.chunks_mut(positions).zip(&b.data) {
                        row.fill(*bias);
                    }
                    F::matmul(
                        o,
                        rows,
                        positions,
                        (&w.data, rows as isize, 1),
                        (&cols.data, positions as isize, 1),
                        F::one(),
                        (y_n, positions as isize, 1),
                    );
                }
            });
        }
    });
    y
}

/// `dW = Σ_n dY_n · X_col,nᵀ`, `db = Σ dY`, `dX_n = col2im(W_colᵀ · dY_n)`.
pub fn conv2d_backward<F: Real>(
    x: &HostTensor<F>,
    w: &HostTensor<F>,
    dy: &HostTensor<F>,
    g: &Conv2dGeometry,
) -> ParamGrads<HostTensor<F>> {
    let (dx, dw, db) = conv2d_grads(x, w, dy, g, true);
    ParamGrads {
        dx: dx.expect("dX was asked for"),
        dw,
        db,
    }
}

/// `(dW, db)` of the convolution, without `dX`.
pub fn conv2d_weight_grads<F: Real>(
    x: &HostTensor<F>,
    w: &HostTensor<F>,
    dy: &HostTensor<F>,
    g: &Conv2dGeometry,
) -> (HostTensor<F>, HostTensor<F>) {
    let (_, dw, db) = conv2d_grads(x, w, dy, g, false);
    (dw, db)
}

type ConvGrads<F> = (Option<HostTensor<F>>, HostTensor<F>, HostTensor<F>);

/// `dX` (when `need_dx`), `dW` and `db`, one image per task.
fn conv2d_grads<F: Real>(
    x: &HostTensor<F>,
    w: &HostTensor<F>,
    dy: &HostTensor<F>,
    g: &Conv2dGeometry,
    need_dx: bool,
) -> ConvGrads<F> {
    assert_eq!(dy.shape, g.output_shape(), "conv2d output gradient shape");
    let (o, rows, positions) = (g.out_channels, g.col_rows(), g.out_positions());
    let image_len = g.channels * g.height * g.width;
    let mut dx = need_dx.then(|| HostTensor::zeros(&g.input_shape()));
    let chunk = g.batch.div_ceil(workers(g.batch));
    // Each task's slice of dX (empty when dX is not wanted).
    let dx_slices: Vec<&mut [F]> = match dx.as_mut() {
        Some(dx) => dx.data.chunks_mut(chunk * image_len).collect(),
        None => (0..g.batch.div_ceil(chunk)).map(|_| &mut [][..]).collect(),
    };
    // Each worker sums its images' dW and db; partial sums are added in worker
    // order, so the result does not depend on timing.
    let partials: Vec<(Vec<F>, Vec<F>)> = thread::scope(|s| {
        let handles: Vec<_> = dx_slices
            .into_iter()
            .enumerate()
            .map(|(c, dx_chunk)| {
                s.spawn(move || {
                    let mut dw = vec![F::zero(); o * rows];
                    let mut db = vec![F::zero(); o];
                    let mut dcols = HostTensor::zeros(&[1, rows, positions]);
                    let images = c * chunk..((c + 1) * chunk).min(g.batch);
                    for (i, n) in images.enumerate() {
                        let dy_n = &dy.data[n * o * positions..(n + 1) * o * positions];
                        let cols = image_cols(x, n, g);
                        F::matmul(
                            o,
                            positions,
                            rows,
                            (dy_n, positions as isize, 1),
                            (&cols.data, 1, positions as isize),
                            F::one(),
                            (&mut dw, rows as isize, 1),
                        );
                        for (sum, row) in db.iter_mut().zip(dy_n.chunks(positions)) {
                            *sum += row.iter().copied().sum::<F>();
                        }
                        if !need_dx {
                            continue;
                        }
                        F::matmul(
                            rows,
                            o,
                            positions,
                            (&w.data, 1, rows as isize),
                            (dy_n, positions as isize, 1),
                            F::zero(),
                            (&mut dcols.data, positions as isize, 1),
                        );
                        dx_chunk[i * image_len..(i + 1) * image_len]
                            .copy_from_slice(&col2im(&dcols, &single(g)).data);
                    }
                    (dw, db)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("conv2d backward worker"))
            .collect()
    });
    let mut dw = HostTensor::zeros(&g.weight_shape());
    let mut db = HostTensor::zeros(&[o]);
    for (pdw, pdb) in partials {
        dw.data.iter_mut().zip(pdw).for_each(|(a, b)| *a += b);
        db.data.iter_mut().zip(pdb).for_each(|(a, b)| *a += b);
    }
    (dx, dw, db)
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
    F::matmul(
        n,
        i,
        o,
        (&x.data, i as isize, 1),
        (&w.data, 1, i as isize),
        F::one(),
        (&mut y.data, o as isize, 1),
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
    F::matmul(
        n,
        o,
        i,
        (&dy.data, o as isize, 1),
        (&w.data, i as isize, 1),
        F::zero(),
        (&mut dx.data, i as isize, 1),
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
    F::matmul(
        o,
        n,
        i,
        (&dy.data, 1, o as isize),
        (&x.data, i as isize, 1),
        F::zero(),
        (&mut dw.data, i as isize, 1),
    );
    let mut db = HostTensor::zeros(&[o]);
    for row in dy.data.chunks(o) {
        db.data.iter_mut().zip(row).for_each(|(s, v)| *s += *v);
    }
    (dw, db)
}
