//! Stride-1 convolutions on the CPU path without an im2col matrix.
//!
//! Pad the input into planes `Hp × Wp` (`Wp = W + 2p`) and lay the outputs
//! on a grid as wide as a padded row: output `(oh, ow)` sits at
//! `q = oh·Wp + ow`, and its tap `(i, j)` of channel `c` reads the padded
//! input at `c·Hp·Wp + i·Wp + j + q`. So every im2col row is a window of the padded
//! input at a constant shift, and the forward is `W · B` with B's rows
//! listed as offsets into that one buffer ([`Real::matmul_unpacked`]):
//! nothing is copied but the padding. Each grid row's last `kw − 1`
//! columns are outputs past the edge, computed and dropped.
//!
//! The weight gradient pairs `dY`, laid on the same grid with zeros in the
//! dropped columns, with the same windows ([`WeightGradForm`]). `dX` is a forward of its own: `dY` padded
//! by `k − 1 − p` on each side, the kernel flipped and its two channel axes
//! swapped.
//!
//! The grid's length is rounded up to the kernels' column block; the
//! dropped columns make the work `Wp·OH / (OW·OH)` of im2col's, so
//! [`DirectConv::new`] declines geometries where that waste is large (a
//! 5×5 kernel without padding on a 6-wide input).

use super::conv::PerImage;
use super::unpacked::{BLOCK_COLUMNS, MIN_BLOCK_COLUMNS};
use crate::cpu::{Real, Rows};
use crate::geometry::Conv2dGeometry;

/// The most work the grid may add over the outputs themselves (its
/// positions over `OH·OW`) for the direct way to be taken. LeNet-5's
/// second convolution (5×5, no padding, 14×14 in) computes 160 positions
/// for 100 outputs and still trains 1.2× faster than through im2col.
const MAX_GRID_WASTE: f64 = 2.0;

/// Zero-padded copies of `channels` planes, and the grid and windows a
/// convolution of them with a `kh × kw` kernel reads.
struct Padded {
    /// Input plane height and width before padding.
    height: usize,
    width: usize,
    /// Zeros above and to the left (and below and to the right).
    pad_h: usize,
    pad_w: usize,
    /// A padded row's length, the grid's row length.
    row: usize,
    /// A padded plane's length.
    plane: usize,
    /// Grid positions per output channel: `out_rows` rows of `row`,
    /// rounded up to [`BLOCK_COLUMNS`].
    grid: usize,
    /// Output rows and columns on the grid that are real outputs.
    out_rows: usize,
    out_cols: usize,
    /// Where each window `(c, i, j)` starts, in im2col row order.
    starts: Vec<usize>,
    /// The buffer's length: every window's `grid` values fit.
    len: usize,
}

impl Padded {
    fn new(
        channels: usize,
        (height, width): (usize, usize),
        (pad_h, pad_w): (usize, usize),
        (kernel_h, kernel_w): (usize, usize),
    ) -> Self {
        let (row, rows) = (width + 2 * pad_w, height + 2 * pad_h);
        let plane = row * rows;
        let (out_rows, out_cols) = (rows + 1 - kernel_h, row + 1 - kernel_w);
        let grid = (out_rows * row).next_multiple_of(BLOCK_COLUMNS);
        let starts: Vec<usize> = (0..channels)
            .flat_map(|c| {
                (0..kernel_h).flat_map(move |i| (0..kernel_w).map(move |j| c * plane + i * row + j))
            })
            .collect();
        let last = starts.last().copied().unwrap_or(0);
        Padded {
            height,
            width,
            pad_h,
            pad_w,
            row,
            plane,
            grid,
            out_rows,
            out_cols,
            starts,
            len: (last + grid).max(channels * plane),
        }
    }

    /// Copies `planes` (`channels × height × width`) inside the padding of
    /// `padded` (`len` values, zeroed once: the padding stays zero).
    fn fill<F: Real>(&self, planes: &[F], padded: &mut [F]) {
        let inside = padded
            .chunks_mut(self.plane)
            .zip(planes.chunks(self.height * self.width));
        for (to, from) in inside {
            let first = self.pad_h * self.row + self.pad_w;
            for (h, line) in from.chunks(self.width).enumerate() {
                to[first + h * self.row..][..self.width].copy_from_slice(line);
            }
        }
    }

    /// The real outputs of `grids` (`channels × grid`) into `out`
    /// (`channels × out_rows × out_cols`), plus `bias[c]` when given.
    fn gather<F: Real>(&self, grids: &[F], bias: Option<&[F]>, out: &mut [F]) {
        let per_channel = out.chunks_mut(self.out_rows * self.out_cols);
        for (c, (to, grid)) in per_channel.zip(grids.chunks(self.grid)).enumerate() {
            let bias = bias.map_or(F::zero(), |b| b[c]);
            for (line, from) in to.chunks_mut(self.out_cols).zip(grid.chunks(self.row)) {
                for (v, &g) in line.iter_mut().zip(from) {
                    *v = g + bias;
                }
            }
        }
    }

    /// `planes` (`channels × out_rows × out_cols`) onto grids
    /// (`channels × grid`) whose dropped positions are zero and stay so.
    fn scatter<F: Real>(&self, planes: &[F], grids: &mut [F]) {
        let per_channel = planes.chunks(self.out_rows * self.out_cols);
        for (from, grid) in per_channel.zip(grids.chunks_mut(self.grid)) {
            for (line, to) in from.chunks(self.out_cols).zip(grid.chunks_mut(self.row)) {
                to[..self.out_cols].copy_from_slice(line);
            }
        }
    }

    /// [`Self::scatter`] transposed: onto `grid × channels`, a grid row at
    /// a time (so the writes stay within a few cache lines).
    fn scatter_transposed<F: Real>(&self, planes: &[F], grids: &mut [F]) {
        let plane = self.out_rows * self.out_cols;
        let channels = planes.len() / plane;
        for oh in 0..self.out_rows {
            let to = &mut grids[oh * self.row * channels..][..self.out_cols * channels];
            for (c, from) in planes.chunks_exact(plane).enumerate() {
                let line = &from[oh * self.out_cols..][..self.out_cols];
                for (position, &v) in to.chunks_exact_mut(channels).zip(line) {
                    position[c] = v;
                }
            }
        }
    }
}

/// The direct convolution of one batch's geometry and weights.
pub(super) struct DirectConv<'a, F> {
    g: &'a Conv2dGeometry,
    w: &'a [F],
    /// The input's padding and windows.
    input: Padded,
    /// `dY`'s padding by `k − 1 − p` and its windows, for `dX`.
    output_grad: Padded,
    /// `W` flipped in both kernel axes, its channel axes swapped: `(C,
    /// O·kh·kw)`, built on the first image whose `dX` is asked for.
    flipped: std::sync::OnceLock<Vec<F>>,
}

impl<'a, F: Real> DirectConv<'a, F> {
    /// The direct way for `g`, if the kernels exist for `F` on this CPU, the
    /// stride is 1, and the grid wastes little.
    pub(super) fn new(g: &'a Conv2dGeometry, w: &'a [F]) -> Option<Self> {
        let (kh, kw, p) = (g.kernel_h, g.kernel_w, g.padding);
        // `dX`'s padding `k − 1 − p` must not be negative.
        if !F::has_unpacked() || g.stride != 1 || p >= kh || p >= kw {
            return None;
        }
        let input = Padded::new(g.channels, (g.height, g.width), (p, p), (kh, kw));
        debug_assert_eq!((input.out_rows, input.out_cols), (g.out_h, g.out_w));
        if input.grid as f64 > MAX_GRID_WASTE * g.out_positions() as f64 {
            return None;
        }
        let output_grad = Padded::new(
            g.out_channels,
            (g.out_h, g.out_w),
            (kh - 1 - p, kw - 1 - p),
            (kh, kw),
        );
        debug_assert_eq!(
            (output_grad.out_rows, output_grad.out_cols),
            (g.height, g.width)
        );
        Some(DirectConv {
            g,
            w,
            input,
            output_grad,
            flipped: std::sync::OnceLock::new(),
        })
    }

    /// `W (O, C, kh, kw)` as `(C, O·kh·kw)`, flipped in `kh` and `kw`.
    fn flipped(&self) -> &[F] {
        self.flipped.get_or_init(|| {
            let g = self.g;
            let (o, c, kh, kw) = (g.out_channels, g.channels, g.kernel_h, g.kernel_w);
            let mut flipped = vec![F::zero(); c * o * kh * kw];
            for (index, v) in flipped.iter_mut().enumerate() {
                let (ci, rest) = (index / (o * kh * kw), index % (o * kh * kw));
                let (oi, i, j) = (rest / (kh * kw), rest / kw % kh, rest % kw);
                *v = self.w[((oi * c + ci) * kh + kh - 1 - i) * kw + kw - 1 - j];
            }
            flipped
        })
    }
}

/// A [`DirectConv`] task's buffers, each allocated (zeroed) on first use.
pub(super) struct Grids<F> {
    /// The padded image.
    input: Vec<F>,
    /// The outputs on their grid (`O × grid`), for the forward.
    output: Vec<F>,
    /// `dY` on the outputs' grid, zero in the dropped positions: `O ×
    /// grid`, or `grid × O` ([`WeightGradForm::Transposed`]).
    output_grad_grid: Vec<F>,
    /// `dY` padded, for `dX`.
    output_grad: Vec<F>,
    /// `dX` on its grid (`C × grid`).
    input_grad: Vec<F>,
    /// The sum of the task's weight gradients, `(O, C·kh·kw)` or
    /// transposed ([`WeightGradForm::Transposed`]).
    weight_grad: Vec<F>,
}

/// `buffer`, zeroed to `len` values if it is still empty.
fn allocated<F: Real>(buffer: &mut Vec<F>, len: usize) -> &mut Vec<F> {
    if buffer.is_empty() {
        *buffer = vec![F::zero(); len];
    }
    buffer
}

/// How the weight gradient `dW = dY_grid · Windowsᵀ` is summed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum WeightGradForm {
    /// Dot products of `dY`'s rows with the windows: for few output
    /// channels, which would leave a product's columns mostly empty.
    Dots,
    /// `dWᵀ = Windows · dY_gridᵀ`: the windows as A's listed rows and `dY`
    /// stored transposed, `O` columns wide. Each step of the depth is
    /// multiply-adds into registers, where a dot product ends with adding
    /// a vector's lanes: on a 14×14 grid those sums were as slow as the
    /// products.
    Transposed,
}

impl<F: Real> DirectConv<'_, F> {
    fn weight_grad_form(&self) -> WeightGradForm {
        if self.g.out_channels >= MIN_BLOCK_COLUMNS {
            WeightGradForm::Transposed
        } else {
            WeightGradForm::Dots
        }
    }
}

impl<F: Real> PerImage<F> for DirectConv<'_, F> {
    type Scratch = Grids<F>;

    fn scratch(&self, _need_dx: bool) -> Grids<F> {
        // Allocated on first use, as each op needs.
        Grids {
            input: Vec::new(),
            output: Vec::new(),
            output_grad_grid: Vec::new(),
            output_grad: Vec::new(),
            input_grad: Vec::new(),
            weight_grad: Vec::new(),
        }
    }

    fn forward(&self, s: &mut Grids<F>, x_n: &[F], b: &[F], y_n: &mut [F]) {
        let (o, rows, grid) = (self.g.out_channels, self.g.col_rows(), self.input.grid);
        let input = allocated(&mut s.input, self.input.len);
        self.input.fill(x_n, input);
        let output = allocated(&mut s.output, o * grid);
        let done = F::matmul_unpacked(
            (o, rows, grid),
            (self.w, Rows::Strided(rows)),
            (input, Rows::Listed(&self.input.starts)),
            F::zero(),
            (output, grid),
        );
        assert!(done, "the unpacked kernel declined after offering");
        self.input.gather(output, Some(b), y_n);
    }

    fn grads(&self, s: &mut Grids<F>, x_n: &[F], dy_n: &[F], dx_n: Option<&mut [F]>) {
        let g = self.g;
        let (o, c, rows, grid) = (g.out_channels, g.channels, g.col_rows(), self.input.grid);
        let input = allocated(&mut s.input, self.input.len);
        self.input.fill(x_n, input);
        let dy_grid = allocated(&mut s.output_grad_grid, o * grid);
        let weight_grad = allocated(&mut s.weight_grad, o * rows);
        let windows = &self.input.starts;
        let done = match self.weight_grad_form() {
            WeightGradForm::Dots => {
                self.input.scatter(dy_n, dy_grid);
                F::dots_listed_rows(
                    (o, grid, rows),
                    (dy_grid, grid),
                    (input, windows),
                    F::one(),
                    (weight_grad, rows),
                )
            }
            WeightGradForm::Transposed => {
                self.input.scatter_transposed(dy_n, dy_grid);
                F::matmul_unpacked(
                    (rows, grid, o),
                    (input, Rows::Listed(windows)),
                    (dy_grid, Rows::Strided(o)),
                    F::one(),
                    (weight_grad, o),
                )
            }
        };
        assert!(done, "the unpacked kernel declined after offering");
        let Some(dx_n) = dx_n else {
            return;
        };
        let (depth, dx_grid_len) = (o * g.kernel_h * g.kernel_w, self.output_grad.grid);
        let dy_padded = allocated(&mut s.output_grad, self.output_grad.len);
        self.output_grad.fill(dy_n, dy_padded);
        let dx_grid = allocated(&mut s.input_grad, c * dx_grid_len);
        let done = F::matmul_unpacked(
            (c, depth, dx_grid_len),
            (self.flipped(), Rows::Strided(depth)),
            (dy_padded, Rows::Listed(&self.output_grad.starts)),
            F::zero(),
            (dx_grid, dx_grid_len),
        );
        assert!(done, "the unpacked kernel declined after offering");
        self.output_grad.gather(dx_grid, None, dx_n);
    }

    fn weight_grad(&self, s: Grids<F>) -> Vec<F> {
        let (o, rows) = (self.g.out_channels, self.g.col_rows());
        let mut sum = s.weight_grad;
        if sum.is_empty() {
            return vec![F::zero(); o * rows];
        }
        if self.weight_grad_form() == WeightGradForm::Transposed {
            sum = (0..o * rows)
                .map(|e| sum[(e % rows) * o + e / rows])
                .collect();
        }
        sum
    }
}
