//! Op settings and the shapes they imply, validated once so kernels and
//! reference loops can trust them.

use crate::error::{Error, Result};

/// The number of elements of a tensor of `shape`, or an error naming `what`
/// when that count does not fit in `usize` (absurd sizes from a model file must
/// be refused, not wrap around).
pub fn element_count(what: &str, shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |count, &d| count.checked_mul(d))
        .ok_or_else(|| {
            Error::Shape(format!(
                "{what} of shape {shape:?} would have more elements than can be addressed"
            ))
        })
}

/// Output extent of a sliding window along one axis, as PyTorch computes it:
/// `floor((input + 2·padding − kernel) / stride) + 1`, an error when below 1.
pub fn window_output_len(
    what: &str,
    input: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<usize> {
    if kernel == 0 || stride == 0 {
        return Err(Error::Shape(format!(
            "{what}: kernel ({kernel}) and stride ({stride}) must be at least 1"
        )));
    }
    let Some(padded) = padding.checked_mul(2).and_then(|p| p.checked_add(input)) else {
        return Err(Error::Shape(format!(
            "{what}: padding {padding} is too large (input {input} + 2 x padding overflows)"
        )));
    };
    if padded < kernel {
        return Err(Error::Shape(format!(
            "{what}: kernel {kernel} is larger than the padded input {padded} \
             (input {input} + 2 x padding {padding}); the output would be empty"
        )));
    }
    Ok((padded - kernel) / stride + 1)
}

/// A matrix product `C = op(A) · op(B)` with `op(A)` of shape `(m, k)` and
/// `op(B)` of shape `(k, n)`; `trans_a` means `A` is stored as `(k, m)`,
/// `trans_b` that `B` is stored as `(n, k)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmSpec {
    /// Rows of `C`.
    pub m: usize,
    /// Columns of `C`.
    pub n: usize,
    /// The summed dimension.
    pub k: usize,
    /// `A` is stored transposed, as `(k, m)`.
    pub trans_a: bool,
    /// `B` is stored transposed, as `(n, k)`.
    pub trans_b: bool,
}

impl GemmSpec {
    /// Shape `A` is stored in.
    pub fn a_shape(&self) -> [usize; 2] {
        if self.trans_a {
            [self.k, self.m]
        } else {
            [self.m, self.k]
        }
    }

    /// Shape `B` is stored in.
    pub fn b_shape(&self) -> [usize; 2] {
        if self.trans_b {
            [self.n, self.k]
        } else {
            [self.k, self.n]
        }
    }

    /// Short name of the transpose case: `nn`, `nt`, `tn` or `tt`.
    pub fn case_name(&self) -> &'static str {
        match (self.trans_a, self.trans_b) {
            (false, false) => "nn",
            (false, true) => "nt",
            (true, false) => "tn",
            (true, true) => "tt",
        }
    }
}

/// A 2-D convolution over NCHW input with weight `(out_channels, channels, kh, kw)`,
/// the same stride and zero padding on both axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dGeometry {
    /// Batch size N.
    pub batch: usize,
    /// Input channels C.
    pub channels: usize,
    /// Input height H.
    pub height: usize,
    /// Input width W.
    pub width: usize,
    /// Output channels O.
    pub out_channels: usize,
    /// Kernel height.
    pub kernel_h: usize,
    /// Kernel width.
    pub kernel_w: usize,
    /// Step between windows on both axes.
    pub stride: usize,
    /// Zeros added on every side.
    pub padding: usize,
    /// Output height OH.
    pub out_h: usize,
    /// Output width OW.
    pub out_w: usize,
}

impl Conv2dGeometry {
    /// Validates the settings against input `(batch, channels, height, width)`
    /// and computes the output size.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        batch: usize,
        channels: usize,
        height: usize,
        width: usize,
        out_channels: usize,
        kernel_h: usize,
        kernel_w: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        if batch == 0 || channels == 0 || height == 0 || width == 0 || out_channels == 0 {
            return Err(Error::Shape(format!(
                "conv2d: input {batch}x{channels}x{height}x{width} with {out_channels} \
                 output channels has an empty dimension"
            )));
        }
        let out_h = window_output_len("conv2d height", height, kernel_h, stride, padding)?;
        let out_w = window_output_len("conv2d width", width, kernel_w, stride, padding)?;
        element_count("conv2d input", &[batch, channels, height, width])?;
        element_count(
            "conv2d weight",
            &[out_channels, channels, kernel_h, kernel_w],
        )?;
        element_count("conv2d output", &[batch, out_channels, out_h, out_w])?;
        element_count(
            "conv2d im2col matrix",
            &[batch, channels, kernel_h, kernel_w, out_h, out_w],
        )?;
        Ok(Self {
            batch,
            channels,
            height,
            width,
            out_channels,
            kernel_h,
            kernel_w,
            stride,
            padding,
            out_h,
            out_w,
        })
    }

    /// Rows of the im2col matrix: `C·kh·kw`.
    pub fn col_rows(&self) -> usize {
        self.channels * self.kernel_h * self.kernel_w
    }

    /// Output positions per image: `OH·OW`.
    pub fn out_positions(&self) -> usize {
        self.out_h * self.out_w
    }

    /// `(N, C, H, W)`.
    pub fn input_shape(&self) -> [usize; 4] {
        [self.batch, self.channels, self.height, self.width]
    }

    /// `(O, C, kh, kw)`.
    pub fn weight_shape(&self) -> [usize; 4] {
        [
            self.out_channels,
            self.channels,
            self.kernel_h,
            self.kernel_w,
        ]
    }

    /// `(N, O, OH, OW)`.
    pub fn output_shape(&self) -> [usize; 4] {
        [self.batch, self.out_channels, self.out_h, self.out_w]
    }

    /// `(N, C·kh·kw, OH·OW)`: one im2col matrix per image.
    pub fn cols_shape(&self) -> [usize; 3] {
        [self.batch, self.col_rows(), self.out_positions()]
    }
}

/// A 2-D pooling window (square kernel, same stride and padding on both axes)
/// over NCHW input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dGeometry {
    /// Batch size N.
    pub batch: usize,
    /// Channels C.
    pub channels: usize,
    /// Input height H.
    pub height: usize,
    /// Input width W.
    pub width: usize,
    /// Window side.
    pub kernel: usize,
    /// Step between windows.
    pub stride: usize,
    /// Implicit padding on every side (−∞ for max, 0 for average).
    pub padding: usize,
    /// Output height.
    pub out_h: usize,
    /// Output width.
    pub out_w: usize,
}

impl Pool2dGeometry {
    /// Validates the settings against input `(batch, channels, height, width)`.
    /// Padding may be at most half the kernel (as in PyTorch), so every window
    /// holds at least one real element.
    pub fn new(
        batch: usize,
        channels: usize,
        height: usize,
        width: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        if batch == 0 || channels == 0 || height == 0 || width == 0 {
            return Err(Error::Shape(format!(
                "pool2d: input {batch}x{channels}x{height}x{width} has an empty dimension"
            )));
        }
        if padding > kernel / 2 {
            return Err(Error::Shape(format!(
                "pool2d: padding {padding} must be at most half the kernel {kernel}"
            )));
        }
        let out_h = window_output_len("pool2d height", height, kernel, stride, padding)?;
        let out_w = window_output_len("pool2d width", width, kernel, stride, padding)?;
        element_count("pool2d input", &[batch, channels, height, width])?;
        element_count("pool2d output", &[batch, channels, out_h, out_w])?;
        Ok(Self {
            batch,
            channels,
            height,
            width,
            kernel,
            stride,
            padding,
            out_h,
            out_w,
        })
    }

    /// `(N, C, H, W)`.
    pub fn input_shape(&self) -> [usize; 4] {
        [self.batch, self.channels, self.height, self.width]
    }

    /// `(N, C, OH, OW)`.
    pub fn output_shape(&self) -> [usize; 4] {
        [self.batch, self.channels, self.out_h, self.out_w]
    }
}

/// An elementwise activation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    /// `max(x, 0)`.
    Relu,
    /// `x` for `x > 0`, else `slope·x`.
    LeakyRelu {
        /// Slope for negative inputs (PyTorch's default is 0.01).
        negative_slope: f32,
    },
    /// `1 / (1 + e^(−x))`.
    Sigmoid,
    /// `tanh(x)`.
    Tanh,
}

impl Activation {
    /// The op's name as `wgcnn check` prints it.
    pub fn name(&self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::LeakyRelu { .. } => "leaky_relu",
            Activation::Sigmoid => "sigmoid",
            Activation::Tanh => "tanh",
        }
    }
}

/// How batchnorm sees its input: `(N, C, S)` with statistics per channel `C`
/// over `N·S` values. `(N, D)` input is `C = D, S = 1` (batchnorm1d);
/// `(N, C, H, W)` is `S = H·W` (batchnorm2d).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchNormLayout {
    /// N.
    pub batch: usize,
    /// Features or channels C.
    pub channels: usize,
    /// Spatial positions per channel S.
    pub spatial: usize,
}

impl BatchNormLayout {
    /// The layout of a 2-D `(N, D)` or 4-D `(N, C, H, W)` input.
    pub fn of_shape(shape: &[usize]) -> Result<Self> {
        let layout = match *shape {
            [n, d] => Self {
                batch: n,
                channels: d,
                spatial: 1,
            },
            [n, c, h, w] => Self {
                batch: n,
                channels: c,
                spatial: element_count("batchnorm spatial plane", &[h, w])?,
            },
            _ => {
                return Err(Error::Shape(format!(
                    "batchnorm: input must be (N, D) or (N, C, H, W), got {shape:?}"
                )));
            }
        };
        element_count("batchnorm input", &[layout.batch, layout.spatial])?;
        if layout.count() == 0 || layout.channels == 0 {
            return Err(Error::Shape(format!(
                "batchnorm: input {shape:?} has an empty dimension"
            )));
        }
        Ok(layout)
    }

    /// Training mode estimates a variance per channel, which needs at least
    /// two values per channel (`N·S ≥ 2`); evaluation mode takes any batch.
    pub fn check_trainable(&self) -> Result<()> {
        if self.count() < 2 {
            return Err(Error::Shape(format!(
                "batchnorm in training mode needs at least 2 values per channel, \
                 but a batch of {} with {} positions per channel has {}",
                self.batch,
                self.spatial,
                self.count()
            )));
        }
        Ok(())
    }

    /// Values averaged per channel: `N·S`.
    pub fn count(&self) -> usize {
        self.batch * self.spatial
    }
}

/// Batchnorm hyper-parameters (PyTorch's defaults: `eps = 1e-5`, `momentum = 0.1`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormSettings {
    /// Added to the variance before the square root.
    pub eps: f32,
    /// Weight of the new batch statistic in the running average.
    pub momentum: f32,
}

impl Default for BatchNormSettings {
    fn default() -> Self {
        Self {
            eps: 1e-5,
            momentum: 0.1,
        }
    }
}

/// Dropout draw: drop probability `p`, and the `(seed, step)` that fix the mask.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutSettings {
    /// Probability of zeroing an element, in `[0, 1)`.
    pub p: f32,
    /// Seed of the mask stream.
    pub seed: u32,
    /// Step counter: a new mask each training step.
    pub step: u32,
}

impl DropoutSettings {
    /// Checks `0 <= p < 1`.
    pub fn new(p: f32, seed: u32, step: u32) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::Setting(format!(
                "dropout probability p = {p} must be in [0, 1)"
            )));
        }
        Ok(Self { p, seed, step })
    }
}
