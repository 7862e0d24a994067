//! Built-in architectures, built for any `(C, H, W)` input and number of
//! classes; the sizes after convolutions come from shape inference.
//!
//! | name | layers |
//! |---|---|
//! | `mlp` | flatten → linear 256 → batchnorm → relu → dropout 0.2 → linear |
//! | `lenet5` | conv5x5 6 pad 2 → relu → maxpool 2 → conv5x5 16 → relu → maxpool 2 → flatten → linear 120 → relu → linear 84 → relu → linear |
//! | `convnet` | conv3x3 32 pad 1 → relu → maxpool 2 → flatten → linear 128 → relu → linear |
//! | `fashion-cnn` | (conv3x3 32 → bn → relu) ×2 → maxpool 2 → (conv3x3 64 → bn → relu) ×2 → maxpool 2 → flatten → linear 256 → bn → relu → dropout 0.5 → linear |
//! | `cifar-cnn` | (conv3x3 32 → bn → relu) ×2 → maxpool 2 → (conv3x3 64 → bn → relu) ×2 → maxpool 2 → flatten → linear 256 → relu → dropout 0.5 → linear |

use crate::error::{Error, Result};
use crate::geometry::Activation;
use crate::nn::spec::{LayerSpec, ModelSpec};

/// The names [`builtin`] accepts.
pub const BUILTIN_MODELS: [&str; 5] = ["mlp", "lenet5", "convnet", "fashion-cnn", "cifar-cnn"];

/// The built-in model `name` for per-example input `(C, H, W)` and `classes`
/// outputs. Errors list the known names for an unknown one, and name the layer
/// when the input is too small for the architecture.
pub fn builtin(name: &str, input: [usize; 3], classes: usize) -> Result<ModelSpec> {
    let layers = match name {
        "mlp" => mlp(classes),
        "lenet5" => lenet5(classes),
        "convnet" => convnet(classes),
        "fashion-cnn" => fashion_cnn(classes),
        "cifar-cnn" => cifar_cnn(classes),
        _ => {
            return Err(Error::Setting(format!(
                "unknown built-in model {name:?}; the built-in models are {}",
                BUILTIN_MODELS.join(", ")
            )));
        }
    };
    let spec = ModelSpec {
        input: input.to_vec(),
        layers,
    };
    spec.classes().map_err(|e| {
        Error::Shape(format!(
            "built-in model {name} on {}x{}x{} input with {classes} classes: {e}",
            input[0], input[1], input[2]
        ))
    })?;
    Ok(spec)
}

/// The default built-in for input `(C, H, W)`: `fashion-cnn` for one channel
/// (28x28 grey images: MNIST, Fashion-MNIST), `cifar-cnn` otherwise (3x32x32
/// colour images: CIFAR-10).
pub fn default_model_name(input: [usize; 3]) -> &'static str {
    if input[0] == 1 {
        "fashion-cnn"
    } else {
        "cifar-cnn"
    }
}

fn conv(out_channels: usize, kernel: usize, padding: usize) -> LayerSpec {
    LayerSpec::Conv2d {
        out_channels,
        kernel,
        stride: 1,
        padding,
    }
}

fn linear(out_features: usize) -> LayerSpec {
    LayerSpec::Linear { out_features }
}

fn maxpool(kernel: usize) -> LayerSpec {
    LayerSpec::MaxPool2d {
        kernel,
        stride: kernel,
        padding: 0,
    }
}

const RELU: LayerSpec = LayerSpec::Activation(Activation::Relu);

/// A one-hidden-layer perceptron: the baseline without convolutions.
fn mlp(classes: usize) -> Vec<LayerSpec> {
    vec![
        LayerSpec::Flatten,
        linear(256),
        LayerSpec::BatchNorm,
        RELU,
        LayerSpec::Dropout { p: 0.2 },
        linear(classes),
    ]
}

/// LeCun's LeNet-5 with ReLU and max pooling (the first conv padded so 28x28
/// input gives the classic 16x5x5 features).
fn lenet5(classes: usize) -> Vec<LayerSpec> {
    vec![
        conv(6, 5, 2),
        RELU,
        maxpool(2),
        conv(16, 5, 0),
        RELU,
        maxpool(2),
        LayerSpec::Flatten,
        linear(120),
        RELU,
        linear(84),
        RELU,
        linear(classes),
    ]
}

/// The smallest useful CNN: one conv block and a hidden linear layer.
fn convnet(classes: usize) -> Vec<LayerSpec> {
    vec![
        conv(32, 3, 1),
        RELU,
        maxpool(2),
        LayerSpec::Flatten,
        linear(128),
        RELU,
        linear(classes),
    ]
}

/// Two double-conv blocks with batchnorm and a batchnormed hidden layer: the
/// default for 28x28 grey images (≥ 92% on Fashion-MNIST).
fn fashion_cnn(classes: usize) -> Vec<LayerSpec> {
    let block = |c| [conv(c, 3, 1), LayerSpec::BatchNorm, RELU];
    [
        &block(32)[..],
        &block(32),
        &[maxpool(2)],
        &block(64),
        &block(64),
        &[
            maxpool(2),
            LayerSpec::Flatten,
            linear(256),
            LayerSpec::BatchNorm,
            RELU,
        ],
        &[LayerSpec::Dropout { p: 0.5 }, linear(classes)],
    ]
    .concat()
}

/// Two double-conv blocks with batchnorm, then a hidden layer without: the
/// default for colour images, matched layer for layer by the PyTorch comparison.
fn cifar_cnn(classes: usize) -> Vec<LayerSpec> {
    let block = |c| [conv(c, 3, 1), LayerSpec::BatchNorm, RELU];
    [
        &block(32)[..],
        &block(32),
        &[maxpool(2)],
        &block(64),
        &block(64),
        &[maxpool(2), LayerSpec::Flatten, linear(256), RELU],
        &[LayerSpec::Dropout { p: 0.5 }, linear(classes)],
    ]
    .concat()
}
