//! Model descriptions: the layers of a sequential CNN and the input they take,
//! with shapes inferred layer by layer and checked before anything runs.

use crate::error::{Error, Result};
use crate::geometry::{
    Activation, BatchNormLayout, Conv2dGeometry, DropoutSettings, Pool2dGeometry, element_count,
};
use crate::host_memory::describe_bytes;

/// One layer of a sequential model, with its settings.
#[derive(Clone, Debug, PartialEq)]
pub enum LayerSpec {
    /// 2-D convolution; weight `(out_channels, in, kernel, kernel)`.
    Conv2d {
        /// Output channels.
        out_channels: usize,
        /// Square kernel side.
        kernel: usize,
        /// Step between windows.
        stride: usize,
        /// Zero padding on each side.
        padding: usize,
    },
    /// Fully connected; weight `(out_features, in)`. Flattens its input.
    Linear {
        /// Output features.
        out_features: usize,
    },
    /// Elementwise activation.
    Activation(Activation),
    /// Inverted dropout with drop probability `p`.
    Dropout {
        /// Drop probability in `[0, 1)`.
        p: f32,
    },
    /// Batch normalisation: per feature for `(N, D)` input, per channel for
    /// `(N, C, H, W)`.
    BatchNorm,
    /// Max pooling.
    MaxPool2d {
        /// Window side.
        kernel: usize,
        /// Step between windows.
        stride: usize,
        /// Padding on each side.
        padding: usize,
    },
    /// Average pooling (padding counted).
    AvgPool2d {
        /// Window side.
        kernel: usize,
        /// Step between windows.
        stride: usize,
        /// Padding on each side.
        padding: usize,
    },
    /// Flattens `(N, C, H, W)` to `(N, C·H·W)`.
    Flatten,
}

impl LayerSpec {
    /// A short name for messages: `conv2d`, `linear`, `relu`, …
    pub fn kind(&self) -> &'static str {
        match self {
            LayerSpec::Conv2d { .. } => "conv2d",
            LayerSpec::Linear { .. } => "linear",
            LayerSpec::Activation(a) => a.name(),
            LayerSpec::Dropout { .. } => "dropout",
            LayerSpec::BatchNorm => "batchnorm",
            LayerSpec::MaxPool2d { .. } => "maxpool2d",
            LayerSpec::AvgPool2d { .. } => "avgpool2d",
            LayerSpec::Flatten => "flatten",
        }
    }

    /// The shape this layer produces from `input` (batch dimension included),
    /// or an error naming the problem.
    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let image = |what: &str| -> Result<[usize; 4]> {
            match *input {
                [n, c, h, w] => Ok([n, c, h, w]),
                _ => Err(Error::Shape(format!(
                    "{what} needs (N, C, H, W) input, got {input:?}"
                ))),
            }
        };
        match *self {
            LayerSpec::Conv2d {
                out_channels,
                kernel,
                stride,
                padding,
            } => {
                let [n, c, h, w] = image("conv2d")?;
                let g =
                    Conv2dGeometry::new(n, c, h, w, out_channels, kernel, kernel, stride, padding)?;
                Ok(g.output_shape().to_vec())
            }
            LayerSpec::Linear { out_features } => {
                if out_features == 0 {
                    return Err(Error::Shape(
                        "linear: out_features must be at least 1".into(),
                    ));
                }
                let in_features = element_count("linear input", &input[1..])?;
                element_count("linear weight", &[out_features, in_features])?;
                Ok(vec![input[0], out_features])
            }
            LayerSpec::Activation(Activation::LeakyRelu { negative_slope })
                if !negative_slope.is_finite() =>
            {
                Err(Error::Setting(format!(
                    "leaky_relu: negative_slope {negative_slope} is not finite"
                )))
            }
            LayerSpec::Activation(_) => Ok(input.to_vec()),
            LayerSpec::Dropout { p } => {
                DropoutSettings::new(p, 0, 0)?;
                Ok(input.to_vec())
            }
            LayerSpec::BatchNorm => {
                BatchNormLayout::of_shape(input)?;
                Ok(input.to_vec())
            }
            LayerSpec::MaxPool2d {
                kernel,
                stride,
                padding,
            }
            | LayerSpec::AvgPool2d {
                kernel,
                stride,
                padding,
            } => {
                let [n, c, h, w] = image(self.kind())?;
                Ok(Pool2dGeometry::new(n, c, h, w, kernel, stride, padding)?
                    .output_shape()
                    .to_vec())
            }
            LayerSpec::Flatten => Ok(vec![input[0], element_count("flatten input", &input[1..])?]),
        }
    }
}

/// A sequential model: the per-example input shape and the layers in order.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    /// Input shape without the batch dimension: `(C, H, W)` or `(D)`.
    pub input: Vec<usize>,
    /// The layers, applied in order.
    pub layers: Vec<LayerSpec>,
}

impl ModelSpec {
    /// The shape after every layer for a batch of `batch`, first the input's.
    /// Errors name the layer (index and kind) that cannot take its input.
    pub fn shapes(&self, batch: usize) -> Result<Vec<Vec<usize>>> {
        if self.input.is_empty() || self.input.contains(&0) {
            return Err(Error::Shape(format!(
                "model input shape {:?} must be non-empty with no zero dimension",
                self.input
            )));
        }
        let mut shapes = vec![[&[batch][..], &self.input].concat()];
        element_count("the model input", &shapes[0])?;
        for (i, layer) in self.layers.iter().enumerate() {
            let input = shapes.last().expect("starts with the input");
            let out = layer
                .output_shape(input)
                .and_then(|out| element_count("the output", &out).map(|_| out))
                .map_err(|e| {
                    Error::Shape(format!(
                        "layer {i} ({}) with input {input:?}: {e}",
                        layer.kind()
                    ))
                })?;
            shapes.push(out);
        }
        Ok(shapes)
    }

    /// Checks that a training batch of `batch` works: every batchnorm layer
    /// needs at least two values per channel to estimate a variance.
    pub fn check_trainable(&self, batch: usize) -> Result<()> {
        let shapes = self.shapes(batch)?;
        for (i, layer) in self.layers.iter().enumerate() {
            if *layer == LayerSpec::BatchNorm {
                BatchNormLayout::of_shape(&shapes[i])?
                    .check_trainable()
                    .map_err(|e| Error::Shape(format!("layer {i} (batchnorm): {e}")))?;
            }
        }
        Ok(())
    }

    /// The largest tensor a training step at batch `batch` holds, in elements,
    /// and the layer that needs it: activations, and for convolutions one
    /// image's im2col matrix `(C·k·k, OH·OW)` (a batch whose matrices are
    /// over a device's buffer limit runs a few images at a time).
    pub fn largest_tensor(&self, batch: usize) -> Result<(usize, String)> {
        let shapes = self.shapes(batch)?;
        let mut largest = (
            element_count("the model input", &shapes[0])?,
            "the input".to_string(),
        );
        for (i, layer) in self.layers.iter().enumerate() {
            let out = element_count("the output", &shapes[i + 1])?;
            let mut need = (out, format!("layer {i} ({}) output", layer.kind()));
            if let LayerSpec::Conv2d { kernel, .. } = *layer {
                let cols = element_count(
                    "the im2col matrix",
                    &[
                        shapes[i][0].min(1),
                        shapes[i][1],
                        kernel,
                        kernel,
                        shapes[i + 1][2],
                        shapes[i + 1][3],
                    ],
                )?;
                if cols > need.0 {
                    need = (
                        cols,
                        format!("layer {i} (conv2d) im2col matrix of one image"),
                    );
                }
            }
            if need.0 > largest.0 {
                largest = need;
            }
        }
        Ok(largest)
    }

    /// Checks that every tensor of a step at batch `batch` fits in a buffer of
    /// `max_bytes`: the parameters (else names the one that does not), and the
    /// activations (else says the largest batch size that would fit).
    pub fn check_fits(&self, batch: usize, max_bytes: u64) -> Result<()> {
        super::memory::check_parameters_fit(self, max_bytes)?;
        let (elements, what) = self.largest_tensor(batch)?;
        // In u128: four bytes per element of a usize count cannot overflow it.
        let bytes = 4 * elements as u128;
        if bytes <= max_bytes as u128 {
            return Ok(());
        }
        let per_example = bytes / batch.max(1) as u128;
        let fits = max_bytes as u128 / per_example.max(1);
        Err(Error::Setting(format!(
            "batch size {batch} needs a {} buffer for {what}, but this device allows {} per \
             buffer; use --batch-size {fits} or less",
            describe_bytes(bytes),
            describe_bytes(max_bytes as u128)
        )))
    }

    /// Number of classes: the features of the last layer's `(N, K)` output.
    pub fn classes(&self) -> Result<usize> {
        let shapes = self.shapes(1)?;
        let last = shapes.last().expect("the shapes start with the input's");
        match last.as_slice() {
            [_, k] if *k >= 1 => Ok(*k),
            [_, per_example @ ..] => Err(Error::Shape(format!(
                "the model must end in (N, classes) logits, but its output per example is \
                 {per_example:?} (end it with a flatten and a linear layer with one output per \
                 class)"
            ))),
            [] => unreachable!("a shape has the batch axis"),
        }
    }
}
