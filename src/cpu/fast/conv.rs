//! Convolution on the CPU training path, a run of images per task of the
//! pool; the backward sums each task's dW and db and adds the tasks'
//! partial sums in task order. Each image goes through one of two
//! [`PerImage`] ways: the direct convolution ([`super::direct_conv`]) where
//! it applies, else im2col into a reused buffer and an optimised GEMM
//! ([`Real::matmul`]).

use rayon::prelude::*;

use super::direct_conv::DirectConv;
use super::{lanes, workers};
use crate::backend::ParamGrads;
use crate::cpu::Real;
use crate::geometry::Conv2dGeometry;
use crate::tensor::{HostTensor, ZeroedPieces};

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

/// One way of computing a convolution an image at a time, for a batch's
/// geometry and weights; each task of the pool owns one [`Self::Scratch`].
pub(super) trait PerImage<F: Real>: Sync {
    /// Buffers reused across one task's images.
    type Scratch: Send;

    /// A task's buffers; `need_dx`: [`Self::grads`] will be asked for `dX`.
    fn scratch(&self, need_dx: bool) -> Self::Scratch;

    /// `y_n = W ∗ x_n + b`, `(O, OH, OW)`.
    fn forward(&self, scratch: &mut Self::Scratch, x_n: &[F], b: &[F], y_n: &mut [F]);

    /// Adds the image's weight gradient into the task's sum, and when
    /// `dx_n` is given (zeroed), writes the image's input gradient into it.
    fn grads(&self, scratch: &mut Self::Scratch, x_n: &[F], dy_n: &[F], dx_n: Option<&mut [F]>);

    /// The task's sum of weight gradients, `(O, C·kh·kw)`.
    fn weight_grad(&self, scratch: Self::Scratch) -> Vec<F>;
}

/// im2col of each image, then [`Real::matmul`].
struct Im2col<'a, F> {
    g: &'a Conv2dGeometry,
    w: &'a [F],
    taps: Vec<Tap>,
}

/// An [`Im2col`] task's buffers: the image's columns and their gradient,
/// and the sum of weight gradients.
struct Columns<F> {
    cols: Vec<F>,
    dcols: Vec<F>,
    dw: Vec<F>,
}

impl<'a, F: Real> Im2col<'a, F> {
    fn new(g: &'a Conv2dGeometry, w: &'a [F]) -> Self {
        Im2col {
            g,
            w,
            taps: taps(g).collect(),
        }
    }

    /// Elements between the column matrix's rows.
    fn ld(&self) -> usize {
        col_stride::<F>(self.g.out_positions())
    }
}

impl<F: Real> PerImage<F> for Im2col<'_, F> {
    type Scratch = Columns<F>;

    fn scratch(&self, need_dx: bool) -> Columns<F> {
        let cols = vec![F::zero(); self.g.col_rows() * self.ld()];
        let dcols = if need_dx { cols.clone() } else { Vec::new() };
        let dw = vec![F::zero(); self.g.out_channels * self.g.col_rows()];
        Columns { cols, dcols, dw }
    }

    fn forward(&self, s: &mut Columns<F>, x_n: &[F], b: &[F], y_n: &mut [F]) {
        let g = self.g;
        let (o, rows, positions) = (g.out_channels, g.col_rows(), g.out_positions());
        image_cols_into(x_n, g, &self.taps, &mut s.cols);
        for (row, bias) in y_n.chunks_mut(positions).zip(b) {
            row.fill(*bias);
        }
        F::matmul(
            o,
            rows,
            positions,
            (self.w, rows as isize, 1),
            (&s.cols, self.ld() as isize, 1),
            F::one(),
            (y_n, positions as isize, 1),
        );
    }

    fn grads(&self, s: &mut Columns<F>, x_n: &[F], dy_n: &[F], dx_n: Option<&mut [F]>) {
        let g = self.g;
        let (o, rows, positions) = (g.out_channels, g.col_rows(), g.out_positions());
        let ld = self.ld();
        image_cols_into(x_n, g, &self.taps, &mut s.cols);
        F::matmul(
            o,
            positions,
            rows,
            (dy_n, positions as isize, 1),
            (&s.cols, 1, ld as isize),
            F::one(),
            (&mut s.dw, rows as isize, 1),
        );
        let Some(dx_n) = dx_n else {
            return;
        };
        F::matmul(
            rows,
            o,
            positions,
            (self.w, 1, rows as isize),
            (dy_n, positions as isize, 1),
            F::zero(),
            (&mut s.dcols, ld as isize, 1),
        );
        col2im_into(&s.dcols, g, &self.taps, dx_n);
    }

    fn weight_grad(&self, s: Columns<F>) -> Vec<F> {
        s.dw
    }
}

/// `Y_n = W ∗ X_n + b`, `(N, O, OH, OW)`.
pub fn conv2d_forward<F: Real>(
    x: &HostTensor<F>,
    w: &HostTensor<F>,
    b: &HostTensor<F>,
    g: &Conv2dGeometry,
) -> HostTensor<F> {
    assert_eq!(x.shape, g.input_shape(), "conv2d input shape");
    assert_eq!(w.shape, g.weight_shape(), "conv2d weight shape");
    match DirectConv::new(g, &w.data) {
        Some(direct) => forward_with(&direct, x, b, g),
        None => forward_with(&Im2col::new(g, &w.data), x, b, g),
    }
}

/// [`conv2d_forward`] an image at a time by `way`.
fn forward_with<F: Real>(
    way: &impl PerImage<F>,
    x: &HostTensor<F>,
    b: &HostTensor<F>,
    g: &Conv2dGeometry,
) -> HostTensor<F> {
    let per_image = g.out_channels * g.out_positions();
    let chunk = g.batch.div_ceil(workers(g.batch));
    let image_len = g.channels * g.height * g.width;
    let (y, _) = HostTensor::written_in_parallel(
        &g.output_shape(),
        chunk * per_image,
        per_image,
        |c, images| {
            let mut scratch = way.scratch(false);
            for (i, y_n) in images.enumerate() {
                let n = c * chunk + i;
                way.forward(
                    &mut scratch,
                    &x.data[n * image_len..][..image_len],
                    &b.data,
                    y_n,
                );
            }
        },
    );
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

/// `dX` (when `need_dx`), `dW` and `db`.
fn conv2d_grads<F: Real>(
    x: &HostTensor<F>,
    w: &HostTensor<F>,
    dy: &HostTensor<F>,
    g: &Conv2dGeometry,
    need_dx: bool,
) -> ConvGrads<F> {
    assert_eq!(dy.shape, g.output_shape(), "conv2d output gradient shape");
    match DirectConv::new(g, &w.data) {
        Some(direct) => grads_with(&direct, x, dy, g, need_dx),
        None => grads_with(&Im2col::new(g, &w.data), x, dy, g, need_dx),
    }
}

/// [`conv2d_grads`] an image at a time by `way`, a run of images per task.
fn grads_with<F: Real>(
    way: &impl PerImage<F>,
    x: &HostTensor<F>,
    dy: &HostTensor<F>,
    g: &Conv2dGeometry,
    need_dx: bool,
) -> ConvGrads<F> {
    let (o, positions) = (g.out_channels, g.out_positions());
    let image_len = g.channels * g.height * g.width;
    let chunk = g.batch.div_ceil(workers(g.batch));
    // Each task sums its images' dW and db, writing their dX (`dx_pieces`,
    // an image each) when it is wanted; partial sums are added in task
    // order, so the result does not depend on timing.
    let task = |c: usize, mut dx_pieces: Option<&mut ZeroedPieces<'_, F>>| {
        let mut db = vec![F::zero(); o];
        let mut scratch = way.scratch(need_dx);
        for n in c * chunk..((c + 1) * chunk).min(g.batch) {
            let dy_n = &dy.data[n * o * positions..(n + 1) * o * positions];
            let dx_n = dx_pieces.as_mut().and_then(|pieces| pieces.next());
            let x_n = &x.data[n * image_len..][..image_len];
            way.grads(&mut scratch, x_n, dy_n, dx_n);
            for (sum, row) in db.iter_mut().zip(dy_n.chunks(positions)) {
                *sum += lanes::sum(row);
            }
        }
        (way.weight_grad(scratch), db)
    };
    let (dx, partials) = if need_dx {
        let (dx, partials) = HostTensor::written_in_parallel(
            &g.input_shape(),
            chunk * image_len,
            image_len,
            |c, images| task(c, Some(images)),
        );
        (Some(dx), partials)
    } else {
        let tasks = g.batch.div_ceil(chunk);
        let partials: Vec<_> = (0..tasks).into_par_iter().map(|c| task(c, None)).collect();
        (None, partials)
    };
    let mut dw = HostTensor::zeros(&g.weight_shape());
    let mut db = HostTensor::zeros(&[o]);
    for (pdw, pdb) in partials {
        dw.data.iter_mut().zip(pdw).for_each(|(a, b)| *a += b);
        db.data.iter_mut().zip(pdb).for_each(|(a, b)| *a += b);
    }
    (dx, dw, db)
}
