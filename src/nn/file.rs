//! Model files: a [`ModelSpec`] written as TOML.
//!
//! A model file gives the per-example input shape and the layers in order, one
//! `[[layers]]` table each, named by `type`:
//!
//! ```toml
//! input = [1, 28, 28]      # C, H, W (or [D] for flat input)
//!
//! [[layers]]
//! type = "conv2d"
//! out_channels = 32
//! kernel = 3               # square kernel side
//! stride = 1               # default 1
//! padding = 1              # default 0
//!
//! [[layers]]
//! type = "batchnorm"       # batchnorm2d after a conv, batchnorm1d after a linear
//!
//! [[layers]]
//! type = "relu"            # also sigmoid, tanh
//!
//! [[layers]]
//! type = "leaky_relu"
//! negative_slope = 0.01    # default 0.01
//!
//! [[layers]]
//! type = "maxpool2d"       # also avgpool2d
//! kernel = 2
//! stride = 2               # default = kernel
//! padding = 0              # default 0
//!
//! [[layers]]
//! type = "flatten"
//!
//! [[layers]]
//! type = "dropout"
//! p = 0.5                  # drop probability, in [0, 1)
//!
//! [[layers]]
//! type = "linear"
//! out_features = 10        # the last layer's width is the number of classes
//! ```
//!
//! Reading is strict: an unknown layer type, an unknown key (a typo such as
//! `kernal`), a missing required setting, a value of the wrong type or a
//! negative size is an error that quotes the offending line. The shapes are then
//! inferred for a batch of one, so a layer that cannot take its input (a kernel
//! larger than the image, batchnorm on a 3-D tensor, …) is an error naming the
//! layer (`layer 3 (conv2d) with input [...]: ...`), and the model must end in
//! `(N, classes)` logits. [`ModelSpec::to_toml`] writes every setting
//! explicitly, and reading its output gives back exactly the same spec.

use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Error, Result};
use crate::geometry::Activation;
use crate::nn::spec::{LayerSpec, ModelSpec};

/// PyTorch's default slope for leaky ReLU.
const DEFAULT_NEGATIVE_SLOPE: f64 = 0.01;

/// The file as serde sees it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    #[serde(deserialize_with = "sizes")]
    input: Vec<usize>,
    layers: Vec<RawLayer>,
}

/// One `[[layers]]` table. Settingless layers are empty struct variants (not
/// unit variants) so that `deny_unknown_fields` rejects stray keys on them too.
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum RawLayer {
    Conv2d {
        #[serde(deserialize_with = "size")]
        out_channels: usize,
        #[serde(deserialize_with = "size")]
        kernel: usize,
        #[serde(default = "one", deserialize_with = "size")]
        stride: usize,
        #[serde(default, deserialize_with = "size")]
        padding: usize,
    },
    Linear {
        #[serde(deserialize_with = "size")]
        out_features: usize,
    },
    #[serde(rename = "batchnorm")]
    BatchNorm {},
    Relu {},
    LeakyRelu {
        #[serde(default = "default_slope", deserialize_with = "number")]
        negative_slope: f64,
    },
    Sigmoid {},
    Tanh {},
    Dropout {
        #[serde(deserialize_with = "number")]
        p: f64,
    },
    #[serde(rename = "maxpool2d")]
    MaxPool2d {
        #[serde(deserialize_with = "size")]
        kernel: usize,
        #[serde(
            default,
            deserialize_with = "optional_size",
            skip_serializing_if = "Option::is_none"
        )]
        stride: Option<usize>,
        #[serde(default, deserialize_with = "size")]
        padding: usize,
    },
    #[serde(rename = "avgpool2d")]
    AvgPool2d {
        #[serde(deserialize_with = "size")]
        kernel: usize,
        #[serde(
            default,
            deserialize_with = "optional_size",
            skip_serializing_if = "Option::is_none"
        )]
        stride: Option<usize>,
        #[serde(default, deserialize_with = "size")]
        padding: usize,
    },
    Flatten {},
}

fn one() -> usize {
    1
}

fn default_slope() -> f64 {
    DEFAULT_NEGATIVE_SLOPE
}

/// Visits a non-negative integer, with a message that says so.
struct SizeVisitor;

impl serde::de::Visitor<'_> for SizeVisitor {
    type Value = usize;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a non-negative integer")
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<usize, E> {
        usize::try_from(v).map_err(|_| E::custom(format!("{v} is too large")))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<usize, E> {
        usize::try_from(v).map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
    }
}

fn size<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<usize, D::Error> {
    d.deserialize_any(SizeVisitor)
}

fn optional_size<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<usize>, D::Error> {
    size(d).map(Some)
}

fn sizes<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<usize>, D::Error> {
    struct Sizes;
    impl<'de> serde::de::Visitor<'de> for Sizes {
        type Value = Vec<usize>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an array of non-negative integers")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> std::result::Result<Vec<usize>, A::Error> {
            struct Size(usize);
            impl<'de> Deserialize<'de> for Size {
                fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                    size(d).map(Size)
                }
            }
            let mut out = Vec::new();
            while let Some(Size(v)) = seq.next_element()? {
                out.push(v);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Sizes)
}

/// A float, also accepting an integer (`p = 0`).
fn number<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    struct Number;
    impl serde::de::Visitor<'_> for Number {
        type Value = f64;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a number")
        }

        fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<f64, E> {
            Ok(v)
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<f64, E> {
            Ok(v as f64)
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<f64, E> {
            Ok(v as f64)
        }
    }
    d.deserialize_any(Number)
}

/// The `f64` whose shortest decimal form is that of `v` (`0.01f32` → `0.01`),
/// so files read naturally; falls back to the exact widening in the rare case
/// where that decimal would not narrow back to `v`.
fn widen(v: f32) -> f64 {
    match v.to_string().parse::<f64>() {
        Ok(d) if d as f32 == v || (v.is_nan() && d.is_nan()) => d,
        _ => f64::from(v),
    }
}

impl From<&LayerSpec> for RawLayer {
    fn from(layer: &LayerSpec) -> Self {
        match *layer {
            LayerSpec::Conv2d {
                out_channels,
                kernel,
                stride,
                padding,
            } => RawLayer::Conv2d {
                out_channels,
                kernel,
                stride,
                padding,
            },
            LayerSpec::Linear { out_features } => RawLayer::Linear { out_features },
            LayerSpec::Activation(Activation::Relu) => RawLayer::Relu {},
            LayerSpec::Activation(Activation::LeakyRelu { negative_slope }) => {
                RawLayer::LeakyRelu {
                    negative_slope: widen(negative_slope),
                }
            }
            LayerSpec::Activation(Activation::Sigmoid) => RawLayer::Sigmoid {},
            LayerSpec::Activation(Activation::Tanh) => RawLayer::Tanh {},
            LayerSpec::Dropout { p } => RawLayer::Dropout { p: widen(p) },
            LayerSpec::BatchNorm => RawLayer::BatchNorm {},
            LayerSpec::MaxPool2d {
                kernel,
                stride,
                padding,
            } => RawLayer::MaxPool2d {
                kernel,
                stride: Some(stride),
                padding,
            },
            LayerSpec::AvgPool2d {
                kernel,
                stride,
                padding,
            } => RawLayer::AvgPool2d {
                kernel,
                stride: Some(stride),
                padding,
            },
            LayerSpec::Flatten => RawLayer::Flatten {},
        }
    }
}

impl From<RawLayer> for LayerSpec {
    fn from(layer: RawLayer) -> Self {
        match layer {
            RawLayer::Conv2d {
                out_channels,
                kernel,
                stride,
                padding,
            } => LayerSpec::Conv2d {
                out_channels,
                kernel,
                stride,
                padding,
            },
            RawLayer::Linear { out_features } => LayerSpec::Linear { out_features },
            RawLayer::BatchNorm {} => LayerSpec::BatchNorm,
            RawLayer::Relu {} => LayerSpec::Activation(Activation::Relu),
            RawLayer::LeakyRelu { negative_slope } => {
                LayerSpec::Activation(Activation::LeakyRelu {
                    negative_slope: negative_slope as f32,
                })
            }
            RawLayer::Sigmoid {} => LayerSpec::Activation(Activation::Sigmoid),
            RawLayer::Tanh {} => LayerSpec::Activation(Activation::Tanh),
            RawLayer::Dropout { p } => LayerSpec::Dropout { p: p as f32 },
            RawLayer::MaxPool2d {
                kernel,
                stride,
                padding,
            } => LayerSpec::MaxPool2d {
                kernel,
                stride: stride.unwrap_or(kernel),
                padding,
            },
            RawLayer::AvgPool2d {
                kernel,
                stride,
                padding,
            } => LayerSpec::AvgPool2d {
                kernel,
                stride: stride.unwrap_or(kernel),
                padding,
            },
            RawLayer::Flatten {} => LayerSpec::Flatten,
        }
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Explains a schema error inside a `[[layers]]` table, naming the layer (index,
/// type, line) and, for a negative size, the key. Serde's own error for a layer
/// cannot say which layer it was: an internally tagged enum is buffered, so TOML
/// only knows the span of the whole array. `None` when no single layer is at
/// fault (then TOML's error, with its exact position, is the better message).
fn layer_error(text: &str) -> Option<String> {
    type Value = toml::Spanned<toml::Value>;
    #[derive(Deserialize)]
    struct Layers {
        layers: Vec<toml::Spanned<std::collections::BTreeMap<String, Value>>>,
    }
    let layers = toml::from_str::<Layers>(text).ok()?.layers;
    for (i, layer) in layers.into_iter().enumerate() {
        let line = line_of(text, layer.span().start);
        let table = layer.into_inner();
        let name = match table.get("type").and_then(|t| t.get_ref().as_str()) {
            Some(kind) => format!("layer {i} ({kind})"),
            None => format!("layer {i}"),
        };
        for (key, value) in &table {
            let v = value.get_ref();
            let expected = match key.as_str() {
                "negative_slope" | "p" if !(v.is_integer() || v.is_float()) => "a number",
                "out_channels" | "out_features" | "kernel" | "stride" | "padding"
                    if v.as_integer().is_none_or(|v| v < 0) =>
                {
                    "a non-negative integer"
                }
                _ => continue,
            };
            return Some(format!(
                "{name}, line {}: {key} = {v} must be {expected}",
                line_of(text, value.span().start)
            ));
        }
        let plain: toml::Table = table
            .into_iter()
            .map(|(key, value)| (key, value.into_inner()))
            .collect();
        if let Err(e) = toml::Value::Table(plain).try_into::<RawLayer>() {
            return Some(format!("{name}, line {line}: {}", e.message()));
        }
    }
    None
}

impl ModelSpec {
    /// Reads a model from TOML text in the format described in
    /// [`crate::nn::file`](self). Syntax and schema problems (unknown layer type
    /// or key, missing or mistyped setting, negative size) are
    /// [`Error::Setting`] with TOML's line and column; a model whose shapes do
    /// not work out, or that does not end in `(N, classes)` logits, is
    /// [`Error::Shape`] naming the layer.
    pub fn from_toml(text: &str) -> Result<ModelSpec> {
        let raw: RawModel = toml::from_str(text).map_err(|e| {
            Error::Setting(match layer_error(text) {
                Some(message) => format!("model file, {message}"),
                None => format!("model file: {}", e.to_string().trim_end()),
            })
        })?;
        if !matches!(raw.input.len(), 1 | 3) {
            return Err(Error::Setting(format!(
                "model file: input = {:?} must be [C, H, W] for images or [D] for \
                 flat features",
                raw.input
            )));
        }
        if raw.layers.is_empty() {
            return Err(Error::Setting(
                "model file: no layers; add at least one [[layers]] table ending in a \
                 linear layer with one output per class"
                    .into(),
            ));
        }
        let spec = ModelSpec {
            input: raw.input,
            layers: raw.layers.into_iter().map(LayerSpec::from).collect(),
        };
        spec.classes()?;
        Ok(spec)
    }

    /// Writes the model as TOML, every setting explicit. [`ModelSpec::from_toml`]
    /// reads it back to an identical spec.
    pub fn to_toml(&self) -> String {
        let raw = RawModel {
            input: self.input.clone(),
            layers: self.layers.iter().map(RawLayer::from).collect(),
        };
        toml::to_string(&raw).expect("a model spec always serialises to TOML")
    }

    /// Reads a model file (see [`ModelSpec::from_toml`]); errors are
    /// [`Error::File`] naming `path`.
    pub fn load(path: &Path) -> Result<ModelSpec> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::file(path, format!("cannot read the model file: {e}")))?;
        ModelSpec::from_toml(&text).map_err(|e| Error::file(path, e.to_string()))
    }
}
