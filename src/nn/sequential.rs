//! A sequential model: layers built from a [`ModelSpec`], run forward and
//! backward on any [`Backend`].

use std::collections::HashMap;

use crate::backend::{Backend, Shaped, SoftmaxXent};
use crate::error::{Error, Result};
use crate::nn::layer::{Layer, LayerTensors, Mode, Param};
use crate::nn::spec::{LayerSpec, ModelSpec};
use crate::rng::SplitMix64;
use crate::tensor::HostTensor;

/// Named host tensors, in PyTorch `state_dict` order and naming.
pub type StateDict = Vec<(String, HostTensor<f32>)>;

/// How a named tensor starts.
#[derive(Clone, Copy, Debug)]
enum Init {
    /// He (Kaiming) normal: `N(0, 2/fan_in)`.
    He {
        fan_in: usize,
    },
    Zeros,
    Ones,
}

/// Name, shape and initialiser of every named tensor of `spec`, in
/// `state_dict` order.
fn parameter_layout(spec: &ModelSpec) -> Result<Vec<(String, Vec<usize>, Init)>> {
    let shapes = spec.shapes(1)?;
    let mut layout = Vec::new();
    for (i, layer) in spec.layers.iter().enumerate() {
        let input = &shapes[i];
        let mut add = |what: &str, shape: Vec<usize>, init: Init| {
            layout.push((format!("{i}.{what}"), shape, init))
        };
        match *layer {
            LayerSpec::Conv2d {
                out_channels,
                kernel,
                ..
            } => {
                let c = input[1];
                add(
                    "weight",
                    vec![out_channels, c, kernel, kernel],
                    Init::He {
                        fan_in: c * kernel * kernel,
                    },
                );
                add("bias", vec![out_channels], Init::Zeros);
            }
            LayerSpec::Linear { out_features } => {
                let fan_in: usize = input[1..].iter().product();
                add("weight", vec![out_features, fan_in], Init::He { fan_in });
                add("bias", vec![out_features], Init::Zeros);
            }
            LayerSpec::BatchNorm => {
                let c = input[1];
                add("weight", vec![c], Init::Ones);
                add("bias", vec![c], Init::Zeros);
                add("running_mean", vec![c], Init::Zeros);
                add("running_var", vec![c], Init::Ones);
            }
            _ => {}
        }
    }
    Ok(layout)
}

/// Fresh parameters for `spec`: He (Kaiming) normal weights `N(0, 2/fan_in)`
/// for convolutions and linear layers, zero biases, batchnorm `γ = 1, β = 0`,
/// running mean 0 and variance 1. Fixed by `seed`. Refuses, before
/// allocating, parameters larger than the host memory free.
pub fn init_parameters(spec: &ModelSpec, seed: u64) -> Result<StateDict> {
    super::memory::check_room_for_parameters(spec)?;
    let mut rng = SplitMix64::new(seed);
    Ok(parameter_layout(spec)?
        .into_iter()
        .map(|(name, shape, init)| {
            let len = shape.iter().product();
            let data = match init {
                Init::He { fan_in } => {
                    let std = (2.0 / fan_in as f32).sqrt();
                    (0..len).map(|_| rng.normal() * std).collect()
                }
                Init::Zeros => vec![0.0; len],
                Init::Ones => vec![1.0; len],
            };
            (name, HostTensor::new(&shape, data))
        })
        .collect())
}

/// A sequential CNN on backend `B`.
pub struct Sequential<B: Backend> {
    spec: ModelSpec,
    layers: Vec<Layer<B>>,
}

impl<B: Backend> Sequential<B> {
    /// Builds the model from `state` (names and shapes as [`init_parameters`]
    /// makes them). `dropout_seed` fixes every dropout mask stream.
    pub fn new(
        backend: &B,
        spec: &ModelSpec,
        state: &StateDict,
        dropout_seed: u32,
    ) -> Result<Self> {
        let expected: HashMap<String, Vec<usize>> = parameter_shapes(spec)?.into_iter().collect();
        let mut by_name: HashMap<&str, &HostTensor<f32>> = HashMap::new();
        for (name, tensor) in state {
            let Some(shape) = expected.get(name.as_str()) else {
                return Err(Error::Shape(format!(
                    "parameter {name} does not belong to this model"
                )));
            };
            if &tensor.shape != shape {
                return Err(Error::Shape(format!(
                    "parameter {name} has shape {:?}, the model needs {shape:?}",
                    tensor.shape
                )));
            }
            by_name.insert(name, tensor);
        }
        // Every tensor the layers take, by name, in layer order; the trainable
        // ones (weights and biases) are uploaded together, so that on the GPU
        // one optimizer dispatch updates them all.
        // (role, trainable): the optimizer updates weights and biases only.
        const ROLES: [(&str, bool); 4] = [
            ("weight", true),
            ("bias", true),
            ("running_mean", false),
            ("running_var", false),
        ];
        let (mut trainable, mut running) = (Vec::new(), Vec::new());
        for i in 0..spec.layers.len() {
            for (role, updated) in ROLES {
                let name = format!("{i}.{role}");
                if expected.contains_key(&name) {
                    let tensor = *by_name
                        .get(name.as_str())
                        .ok_or_else(|| Error::Shape(format!("parameter {name} is missing")))?;
                    if updated {
                        trainable.push((name, tensor));
                    } else {
                        running.push((name, tensor));
                    }
                }
            }
        }
        let host: Vec<&HostTensor<f32>> = trainable.iter().map(|(_, t)| *t).collect();
        let mut uploaded: HashMap<String, B::Tensor> = trainable
            .into_iter()
            .map(|(name, _)| name)
            .zip(backend.upload_parameters(&host))
            .chain(
                running
                    .into_iter()
                    .map(|(name, t)| (name, backend.upload(t))),
            )
            .collect();
        let mut layers = Vec::with_capacity(spec.layers.len());
        for (i, layer) in spec.layers.iter().enumerate() {
            let mut take = |role: &str| uploaded.remove(&format!("{i}.{role}"));
            let tensors = LayerTensors {
                weight: take("weight"),
                bias: take("bias"),
                running_mean: take("running_mean"),
                running_var: take("running_var"),
            };
            layers.push(Layer::new(i, layer, tensors, dropout_seed));
        }
        Ok(Self {
            spec: spec.clone(),
            layers,
        })
    }

    /// A model with fresh parameters from [`init_parameters`].
    pub fn init(backend: &B, spec: &ModelSpec, seed: u64) -> Result<Self> {
        Self::new(backend, spec, &init_parameters(spec, seed)?, seed as u32)
    }

    /// The description it was built from.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Logits `(N, K)` for a batch `x` of shape `(N, …input)`. `step` selects
    /// the dropout mask.
    pub fn forward(&mut self, backend: &B, x: &B::Tensor, mode: Mode, step: u32) -> B::Tensor {
        // Evaluation runs no backward; a training forward keeps every
        // layer's output for [`Sequential::backward`], which runs each
        // layer's own backward.
        self.forward_fusing(backend, x, mode, step, mode == Mode::Eval)
    }

    /// [`Sequential::forward`], with each convolution, activation and max
    /// pool in a row run as one op where `fuse_pools` (see
    /// [`Sequential::forward_pooled`]).
    fn forward_fusing(
        &mut self,
        backend: &B,
        x: &B::Tensor,
        mode: Mode,
        step: u32,
        fuse_pools: bool,
    ) -> B::Tensor {
        let mut h = x.clone();
        let mut i = 0;
        while i < self.layers.len() {
            if fuse_pools && let Some(y) = self.forward_pooled(i, backend, &h, mode) {
                h = y;
                i += 3;
                continue;
            }
            // A relu after a convolution or linear layer runs in its product's
            // epilogue: one pass over the output fewer.
            let fused = self
                .layers
                .get(i + 1)
                .and_then(|next| self.layers[i].fusable(next));
            h = self.layers[i].forward_then(backend, &h, mode, step, fused);
            if fused.is_some() {
                self.layers[i + 1].save_fused_output(&h, mode);
                i += 1;
            }
            // A relu before a max pool: its backward will run on the pooled
            // gradient, from the pooled output.
            if i > 0 && self.layers[i - 1].masks_through(&self.layers[i]).is_some() {
                self.layers[i].keep_pooled(&h);
            }
            i += 1;
        }
        h
    }

    /// Layers `i .. i + 3` on `x` when they are a convolution, an
    /// activation fused into it and a max pool that takes the activation's
    /// backward in ([`Layer::fusable`], [`Layer::masks_through`]): one op
    /// that never forms the convolution's or the activation's output
    /// ([`Layer::forward_pooled`]). The activation keeps nothing, so its
    /// own backward cannot run: only a forward whose backward lets the
    /// pool take it in (`forward_backward`'s) or none follows fuses so.
    fn forward_pooled(
        &mut self,
        i: usize,
        backend: &B,
        x: &B::Tensor,
        mode: Mode,
    ) -> Option<B::Tensor> {
        let [conv, act, pool] = self.layers.get_mut(i..i + 3)? else {
            return None;
        };
        let fused = conv.fusable(act)?;
        if act.masks_through(pool) != Some(fused) {
            return None;
        }
        let y = conv.forward_pooled(backend, x, mode, fused, pool)?;
        act.release_saved();
        Some(y)
    }

    /// Back-propagates `dlogits` through every layer, leaving each parameter's
    /// gradient in [`Param::grad`]; returns the gradient for the input.
    pub fn backward(&mut self, backend: &B, dlogits: &B::Tensor) -> B::Tensor {
        let mut d = dlogits.clone();
        for layer in self.layers.iter_mut().rev() {
            d = layer.backward(backend, &d);
        }
        d
    }

    /// One forward and backward pass in training mode with the softmax
    /// cross-entropy loss; returns the loss output (still on the device).
    pub fn forward_backward(
        &mut self,
        backend: &B,
        x: &B::Tensor,
        labels: &B::Indices,
        step: u32,
    ) -> SoftmaxXent<B::Tensor> {
        let logits = self.forward_fusing(backend, x, Mode::Train, step, true);
        let out = backend.softmax_cross_entropy(&logits, labels);
        // Parameter gradients only: no input gradient is computed below the
        // first layer with parameters, since nothing reads it.
        let first = self
            .layers
            .iter()
            .position(|l| !l.params().is_empty())
            .unwrap_or(self.layers.len());
        let mut d = out.grad.clone();
        // The activation below a max pool or linear layer whose backward
        // that layer's takes in (see `Layer::masks_through`): its own
        // backward is skipped.
        let mut masked_below = false;
        for i in (0..self.layers.len()).rev() {
            if std::mem::take(&mut masked_below) {
                self.layers[i].release_saved();
                continue;
            }
            if let Some(act) = i
                .checked_sub(1)
                .and_then(|below| self.layers[below].masks_through(&self.layers[i]))
                && i > first
                && self.layers[i].take_in_activation(act)
            {
                masked_below = true;
            }
            match self.layers[i].backward_needing(backend, &d, i > first) {
                Some(next) => d = next,
                None => {
                    // Layers below release what their forward saved.
                    for below in &mut self.layers[..i] {
                        below.release_saved();
                    }
                    break;
                }
            }
        }
        out
    }

    /// Number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// True for a model without layers.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Forward pass of layer `i` alone (for per-layer timing).
    pub fn forward_layer(
        &mut self,
        i: usize,
        backend: &B,
        x: &B::Tensor,
        mode: Mode,
        step: u32,
    ) -> B::Tensor {
        self.layers[i].forward(backend, x, mode, step)
    }

    /// Backward pass of layer `i` alone, after its training-mode forward.
    pub fn backward_layer(&mut self, i: usize, backend: &B, dy: &B::Tensor) -> B::Tensor {
        self.layers[i].backward(backend, dy)
    }

    /// Every named tensor, in `state_dict` order.
    pub fn params(&self) -> impl Iterator<Item = &Param<B::Tensor>> {
        self.layers.iter().flat_map(|l| l.params())
    }

    /// Mutable access to every named tensor.
    pub fn params_mut(&mut self) -> impl Iterator<Item = &mut Param<B::Tensor>> {
        self.layers.iter_mut().flat_map(|l| l.params_mut())
    }

    /// Copies every named tensor to the host.
    pub fn state_dict(&self, backend: &B) -> StateDict {
        self.params()
            .map(|p| (p.name.clone(), backend.download(&p.value)))
            .collect()
    }

    /// Shape of the logits for a batch of `batch`.
    pub fn output_shape(&self, batch: usize) -> Result<Vec<usize>> {
        Ok(self
            .spec
            .shapes(batch)?
            .pop()
            .expect("at least the input shape"))
    }
}

/// Name and shape of every named tensor of `spec`, in `state_dict` order.
pub fn parameter_shapes(spec: &ModelSpec) -> Result<Vec<(String, Vec<usize>)>> {
    Ok(parameter_layout(spec)?
        .into_iter()
        .map(|(name, shape, _)| (name, shape))
        .collect())
}

impl<T: Shaped> Param<T> {
    /// Shape of the value.
    pub fn shape(&self) -> &[usize] {
        self.value.shape()
    }
}
