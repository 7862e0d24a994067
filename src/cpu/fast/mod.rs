//! The CPU training path's matrix-product ops: the same math as the reference
//! functions, but convolutions as im2col + an optimised GEMM
//! ([`Real::matmul`]), a run of images per task, and fully connected layers
//! as bands of rows, over a pool of one thread per core (rayon's). The
//! reference stays the judge; `tests/cpu_fast.rs` compares the two.

use rayon::prelude::*;

pub(super) mod batchnorm;
mod lanes;

use super::Real;
use crate::backend::ParamGrads;
use crate::geometry::{Conv2dGeometry, GemmSpec, Pool2dGeometry};
use crate::tensor::HostTensor;

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

/// The outputs `o` along one axis whose tap `tap` lands inside an input of
/// `len` (`o·stride + tap − padding ∈ [0, len)`), as a range of `o` below
/// `out_len`.
fn inside(
    tap: usize,
    stride: usize,
    padding: usize,
    len: usize,
    out_len: usize,
) -> std::ops::Range<usize> {
    let first = padding.saturating_sub(tap).div_ceil(stride);
    let end = (len + padding)
        .checked_sub(tap)
        .map_or(0, |room| room.div_ceil(stride))
        .min(out_len);
    first..end.max(first)
}

/// One tap `(i, j)` of the window (one im2col row of a channel): the output
/// rows and columns for which it lands inside the input, and where.
struct Tap {
    i: usize,
    j: usize,
    /// Output rows `oh` whose tap row lies inside the input.
    rows: std::ops::Range<usize>,
    /// Output columns `ow` whose tap column lies inside the input.
    cols: std::ops::Range<usize>,
}

impl Tap {
    /// The input row read by output row `oh` (in `rows`).
    fn input_row(&self, g: &Conv2dGeometry, oh: usize) -> usize {
        oh * g.stride + self.i - g.padding
    }

    /// The input column read by output column `cols.start`.
    fn first_input_col(&self, g: &Conv2dGeometry) -> usize {
        self.cols.start * g.stride + self.j - g.padding
    }
}

/// The window's taps in im2col row order (`i`, then `j`).
fn taps(g: &Conv2dGeometry) -> impl Iterator<Item = Tap> + '_ {
    (0..g.kernel_h).flat_map(move |i| {
        (0..g.kernel_w).map(move |j| Tap {
            i,
            j,
            rows: inside(i, g.stride, g.padding, g.height, g.out_h),
            cols: inside(j, g.stride, g.padding, g.width, g.out_w),
        })
    })
}

/// Elements between rows of a column matrix `(C·kh·kw, positions)`: the
/// positions, plus a cache line when a row's bytes are a multiple of 2 KiB.
/// Rows a power-of-two apart share the same L1 sets, so reading down a
/// column (as the GEMM's packing does for dW's `X_colᵀ`) thrashes: at 32×32
/// outputs the padded stride makes dW's product 1.4× and the forward's
/// 1.4× faster here.
fn col_stride<F>(positions: usize) -> usize {
    let size = std::mem::size_of::<F>();
    if (positions * size).is_multiple_of(2048) {
        positions + 64 / size
    } else {
        positions
    }
}

/// im2col of one image `x_n (C, H, W)` into `cols (C·kh·kw, OH·OW)` (rows
/// [`col_stride`] apart), a row of the window at a time: runs of input are
/// copied, and only the padding is zeroed (the reference [`super::im2col`]
/// tests every element). `taps` is [`taps`]`(g)`, computed once per
/// convolution.
fn image_cols_into<F: Real>(x_n: &[F], g: &Conv2dGeometry, taps: &[Tap], cols: &mut [F]) {
    let positions = g.out_positions();
    let mut rows = cols.chunks_mut(col_stride::<F>(positions));
    for plane in x_n.chunks(g.height * g.width) {
        for tap in taps {
            let row = &mut rows.next().expect("C·kh·kw rows")[..positions];
            if g.stride == 1 && g.out_w == g.width {
                same_size_tap_row(plane, g, tap, row);
            } else {
                tap_row(plane, g, tap, row);
            }
        }
    }
}

/// One im2col row, `row[oh·OW + ow] = x[oh·s + i − p][ow·s + j − p]` (zero
/// outside the input), copied a run of an input row at a time.
fn tap_row<F: Real>(plane: &[F], g: &Conv2dGeometry, tap: &Tap, row: &mut [F]) {
    for (oh, out) in row.chunks_mut(g.out_w).enumerate() {
        if !tap.rows.contains(&oh) || tap.cols.is_empty() {
            out.fill(F::zero());
            continue;
        }
        let line = &plane[tap.input_row(g, oh) * g.width..][..g.width];
        let inside = tap.cols.clone();
        out[..inside.start].fill(F::zero());
        out[inside.end..].fill(F::zero());
        let w0 = tap.first_input_col(g);
        if g.stride == 1 {
            out[inside.clone()].copy_from_slice(&line[w0..w0 + inside.len()]);
        } else {
            let from = line[w0..].iter().step_by(g.stride);
            for (v, &x) in out[inside].iter_mut().zip(from) {
                *v = x;
            }
        }
    }
}

/// [`tap_row`] for stride 1 and an output as wide as the input ("same"
/// padding): output position `q = oh·W + ow` reads input `q + (i − p)·W +
/// (j − p)`, so the rows the tap lands in are one shifted copy of the plane;
/// the columns whose tap falls outside the input are zeroed after.
fn same_size_tap_row<F: Real>(plane: &[F], g: &Conv2dGeometry, tap: &Tap, row: &mut [F]) {
    if tap.rows.is_empty() || tap.cols.is_empty() {
        row.fill(F::zero());
        return;
    }
    let w = g.width as isize;
    let shift = (tap.i as isize - g.padding as isize) * w + tap.j as isize - g.padding as isize;
    let (start, end) = (tap.rows.start * g.width, tap.rows.end * g.width);
    // Clamp the copy to the plane; what is cut off lies outside the columns.
    let first = start.max((-shift).max(0) as usize).min(end);
    let last = end
        .min((plane.len() as isize - shift).max(0) as usize)
        .max(first);
    row[..first].fill(F::zero());
    row[last..].fill(F::zero());
    if first < last {
        let from = (first as isize + shift) as usize;
        row[first..last].copy_from_slice(&plane[from..from + (last - first)]);
    }
    for out in row[start..end].chunks_mut(g.width) {
        out[..tap.cols.start].fill(F::zero());
        out[tap.cols.end..].fill(F::zero());
    }
}

/// col2im of one image, `dcols (C·kh·kw, OH·OW)` (rows [`col_stride`]
/// apart) `→ dx_n (C, H, W)`, added into `dx_n`, which the caller has
/// zeroed. Every element sums its terms in the reference's order
/// ([`super::col2im`]: by window row, then column), so results are equal.
/// `taps` is [`taps`]`(g)`.
fn col2im_into<F: Real>(dcols: &[F], g: &Conv2dGeometry, taps: &[Tap], dx_n: &mut [F]) {
    let w_n = g.width;
    let positions = g.out_positions();
    let mut rows = dcols.chunks(col_stride::<F>(positions));
    for plane in dx_n.chunks_mut(g.height * w_n) {
        for tap in taps {
            let row = &rows.next().expect("C·kh·kw rows")[..positions];
            if tap.cols.is_empty() {
                continue;
            }
            let first = tap.first_input_col(g);
            for oh in tap.rows.clone() {
                let line = &mut plane[tap.input_row(g, oh) * w_n..][..w_n];
                let terms = &row[oh * g.out_w..][tap.cols.clone()];
                if g.stride == 1 {
                    // Slices, so the adds vectorise.
                    let to = &mut line[first..first + terms.len()];
                    for (v, &t) in to.iter_mut().zip(terms) {
                        *v += t;
                    }
                } else {
                    let to = line[first..].iter_mut().step_by(g.stride);
                    for (v, &t) in to.zip(terms) {
                        *v += t;
                    }
                }
            }
        }
    }
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
    let image_len = g.channels * g.height * g.width;
    let taps: Vec<Tap> = taps(g).collect();
    let tasks = y.data.par_chunks_mut(chunk * per_image).enumerate();
    tasks.for_each(|(c, out)| {
        let ld = col_stride::<F>(positions);
        let mut cols = vec![F::zero(); rows * ld];
        for (i, y_n) in out.chunks_mut(per_image).enumerate() {
            let n = c * chunk + i;
            image_cols_into(&x.data[n * image_len..][..image_len], g, &taps, &mut cols);
            for (row, bias) in y_n.chunks_mut(positions).zip(&b.data) {
                row.fill(*bias);
            }
            F::matmul(
                o,
                rows,
                positions,
                (&w.data, rows as isize, 1),
                (&cols, ld as isize, 1),
                F::one(),
                (y_n, positions as isize, 1),
            );
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
    let taps: Vec<Tap> = taps(g).collect();
    let chunk = g.batch.div_ceil(workers(g.batch));
    // Each task's slice of dX (empty when dX is not wanted).
    let dx_slices: Vec<&mut [F]> = match dx.as_mut() {
        Some(dx) => dx.data.chunks_mut(chunk * image_len).collect(),
        None => (0..g.batch.div_ceil(chunk)).map(|_| &mut [][..]).collect(),
    };
    // Each worker sums its images' dW and db; partial sums are added in worker
    // order, so the result does not depend on timing.
    let partials: Vec<(Vec<F>, Vec<F>)> = dx_slices
        .into_par_iter()
        .enumerate()
        .map(|(c, dx_chunk)| {
            let mut dw = vec![F::zero(); o * rows];
            let mut db = vec![F::zero(); o];
            let ld = col_stride::<F>(positions);
            let mut cols = vec![F::zero(); rows * ld];
            let mut dcols = if need_dx { cols.clone() } else { Vec::new() };
            let images = c * chunk..((c + 1) * chunk).min(g.batch);
            for (i, n) in images.enumerate() {
                let dy_n = &dy.data[n * o * positions..(n + 1) * o * positions];
                image_cols_into(&x.data[n * image_len..][..image_len], g, &taps, &mut cols);
                F::matmul(
                    o,
                    positions,
                    rows,
                    (dy_n, positions as isize, 1),
                    (&cols, 1, ld as isize),
                    F::one(),
                    (&mut dw, rows as isize, 1),
                );
                for (sum, row) in db.iter_mut().zip(dy_n.chunks(positions)) {
                    *sum += lanes::sum(row);
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
                    (&mut dcols, ld as isize, 1),
                );
                col2im_into(
                    &dcols,
                    g,
                    &taps,
                    &mut dx_chunk[i * image_len..][..image_len],
                );
            }
            (dw, db)
        })
        .collect();
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
    let mut dx = HostTensor::zeros(&g.input_shape());
    let (plane_in, plane_out) = (g.height * g.width, g.out_h * g.out_w);
    let planes = g.batch * g.channels;
    let chunk = planes.div_ceil(workers(planes));
    let tasks = dx
        .data
        .par_chunks_mut(chunk * plane_in)
        .zip(dy.data.par_chunks(chunk * plane_out))
        .zip(argmax.par_chunks(chunk * plane_out));
    tasks.for_each(|((dx_c, dy_c), arg_c)| {
        let planes = dx_c.chunks_mut(plane_in).zip(dy_c.chunks(plane_out));
        for ((dx_p, dy_p), arg_p) in planes.zip(arg_c.chunks(plane_out)) {
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
