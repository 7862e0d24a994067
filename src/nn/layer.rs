//! One layer's parameters and what its forward keeps for its backward, generic
//! over the backend.

use crate::backend::{Backend, BatchNormSaved, Shaped};
use crate::geometry::{
    Activation, BatchNormSettings, Conv2dGeometry, DropoutSettings, Pool2dGeometry,
};
use crate::nn::spec::LayerSpec;

/// A named tensor of a layer: a trainable parameter (with its gradient after a
/// backward) or a buffer such as a running statistic. Names follow PyTorch's
/// `nn.Sequential`: `"<layer index>.weight"`.
#[derive(Clone, Debug)]
pub struct Param<T> {
    /// PyTorch-style name, e.g. `3.running_var`.
    pub name: String,
    /// Current value.
    pub value: T,
    /// Gradient from the last backward; `None` for buffers and before a backward.
    pub grad: Option<T>,
    /// Whether an optimizer updates it (false for running statistics).
    pub trainable: bool,
}

impl<T> Param<T> {
    fn new(index: usize, what: &str, value: T, trainable: bool) -> Self {
        Self {
            name: format!("{index}.{what}"),
            value,
            grad: None,
            trainable,
        }
    }
}

/// Train or evaluation behaviour of dropout and batchnorm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Dropout active, batchnorm on batch statistics.
    Train,
    /// Dropout off, batchnorm on running statistics.
    Eval,
}

/// A layer and its state: parameters, plus the tensors its forward saved.
pub(crate) enum Layer<B: Backend> {
    Conv2d {
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        weight: Param<B::Tensor>,
        bias: Param<B::Tensor>,
        saved: Option<(B::Tensor, Conv2dGeometry)>,
    },
    Linear {
        weight: Param<B::Tensor>,
        bias: Param<B::Tensor>,
        /// The flattened input and the shape it came in.
        saved: Option<(B::Tensor, Vec<usize>)>,
        /// The activation before this layer, once the backward is to take
        /// its input gradient through it (see [`Layer::masks_through`]).
        through: Option<Activation>,
    },
    Activation {
        act: Activation,
        saved: Option<(B::Tensor, B::Tensor)>,
    },
    Dropout {
        p: f32,
        seed: u32,
        saved: Option<DropoutSettings>,
    },
    BatchNorm {
        gamma: Param<B::Tensor>,
        beta: Param<B::Tensor>,
        running_mean: Param<B::Tensor>,
        running_var: Param<B::Tensor>,
        saved: Option<(B::Tensor, BatchNormSaved<B::Tensor>)>,
    },
    MaxPool2d {
        kernel: usize,
        stride: usize,
        padding: usize,
        saved: Option<(B::Indices, Pool2dGeometry)>,
        /// The output, kept when the activation before this layer is applied
        /// to the gradient here instead (see [`Layer::masks_through`]).
        pooled: Option<B::Tensor>,
        /// That activation, once the backward is to apply it here.
        masked_by: Option<Activation>,
    },
    AvgPool2d {
        kernel: usize,
        stride: usize,
        padding: usize,
        saved: Option<Pool2dGeometry>,
    },
    Flatten {
        saved: Option<Vec<usize>>,
    },
}

/// Tensors a layer needs at construction, by role; see [`Layer::new`].
pub(crate) struct LayerTensors<T> {
    pub weight: Option<T>,
    pub bias: Option<T>,
    pub running_mean: Option<T>,
    pub running_var: Option<T>,
}

/// The geometry of a convolution layer's forward on an input of `shape`.
fn conv_geometry(
    shape: &[usize],
    out_channels: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Conv2dGeometry {
    let [n, c, h, w] = image_dims(shape);
    Conv2dGeometry::new(n, c, h, w, out_channels, kernel, kernel, stride, padding)
        .expect("validated by the model spec")
}

fn image_dims(shape: &[usize]) -> [usize; 4] {
    match *shape {
        [n, c, h, w] => [n, c, h, w],
        _ => panic!("expected (N, C, H, W), got {shape:?}; the model spec validates shapes"),
    }
}

/// Relu, or leaky relu with a slope ≥ 0: the activations whose output has
/// the sign of their input, so their derivative can be read from the output
/// (`y > 0 ⇔ x > 0`).
fn keeps_sign(act: Activation) -> bool {
    match act {
        Activation::Relu => true,
        Activation::LeakyRelu { negative_slope } => negative_slope >= 0.0,
        _ => false,
    }
}

impl<B: Backend> Layer<B> {
    /// Builds layer `index` of `spec` from its tensors (weight/bias, or for
    /// batchnorm γ/β and the running statistics). `seed` fixes dropout masks.
    pub(crate) fn new(
        index: usize,
        spec: &LayerSpec,
        t: LayerTensors<B::Tensor>,
        seed: u32,
    ) -> Self {
        let take = |v: Option<B::Tensor>, what: &str| {
            v.unwrap_or_else(|| panic!("layer {index} needs its {what}"))
        };
        match *spec {
            LayerSpec::Conv2d {
                out_channels,
                kernel,
                stride,
                padding,
            } => Layer::Conv2d {
                out_channels,
                kernel,
                stride,
                padding,
                weight: Param::new(index, "weight", take(t.weight, "weight"), true),
                bias: Param::new(index, "bias", take(t.bias, "bias"), true),
                saved: None,
            },
            LayerSpec::Linear { .. } => Layer::Linear {
                weight: Param::new(index, "weight", take(t.weight, "weight"), true),
                bias: Param::new(index, "bias", take(t.bias, "bias"), true),
                saved: None,
                through: None,
            },
            LayerSpec::Activation(act) => Layer::Activation { act, saved: None },
            LayerSpec::Dropout { p } => Layer::Dropout {
                p,
                seed: crate::rng::hash_u32(seed ^ crate::rng::hash_u32(index as u32)),
                saved: None,
            },
            LayerSpec::BatchNorm => Layer::BatchNorm {
                gamma: Param::new(index, "weight", take(t.weight, "weight"), true),
                beta: Param::new(index, "bias", take(t.bias, "bias"), true),
                running_mean: Param::new(
                    index,
                    "running_mean",
                    take(t.running_mean, "running_mean"),
                    false,
                ),
                running_var: Param::new(
                    index,
                    "running_var",
                    take(t.running_var, "running_var"),
                    false,
                ),
                saved: None,
            },
            LayerSpec::MaxPool2d {
                kernel,
                stride,
                padding,
            } => Layer::MaxPool2d {
                kernel,
                stride,
                padding,
                saved: None,
                pooled: None,
                masked_by: None,
            },
            LayerSpec::AvgPool2d {
                kernel,
                stride,
                padding,
            } => Layer::AvgPool2d {
                kernel,
                stride,
                padding,
                saved: None,
            },
            LayerSpec::Flatten => Layer::Flatten { saved: None },
        }
    }

    /// The layer's named tensors (parameters and buffers).
    pub(crate) fn params(&self) -> Vec<&Param<B::Tensor>> {
        match self {
            Layer::Conv2d { weight, bias, .. } | Layer::Linear { weight, bias, .. } => {
                vec![weight, bias]
            }
            Layer::BatchNorm {
                gamma,
                beta,
                running_mean,
                running_var,
                ..
            } => vec![gamma, beta, running_mean, running_var],
            _ => Vec::new(),
        }
    }

    /// Mutable access to the named tensors, for optimizers and loading.
    pub(crate) fn params_mut(&mut self) -> Vec<&mut Param<B::Tensor>> {
        match self {
            Layer::Conv2d { weight, bias, .. } | Layer::Linear { weight, bias, .. } => {
                vec![weight, bias]
            }
            Layer::BatchNorm {
                gamma,
                beta,
                running_mean,
                running_var,
                ..
            } => vec![gamma, beta, running_mean, running_var],
            _ => Vec::new(),
        }
    }

    /// Forward pass; keeps what the backward needs when `mode` is `Train`.
    pub(crate) fn forward(&mut self, b: &B, x: &B::Tensor, mode: Mode, step: u32) -> B::Tensor {
        self.forward_then(b, x, mode, step, None)
    }

    /// The activation that can run fused into this layer's output (the
    /// epilogue of its matrix product, or batchnorm's normalising pass) when
    /// `next` follows it: relu, or leaky relu with a slope ≥ 0 — those
    /// whose derivative can be read from the output instead of the input
    /// (`y > 0 ⇔ x > 0`), since the input is never stored.
    pub(crate) fn fusable(&self, next: &Layer<B>) -> Option<Activation> {
        let writes_output = matches!(
            self,
            Layer::Conv2d { .. } | Layer::Linear { .. } | Layer::BatchNorm { .. }
        );
        match next {
            Layer::Activation { act, .. } if writes_output && keeps_sign(*act) => Some(*act),
            _ => None,
        }
    }

    /// The activation whose backward the next layer's backward can take in,
    /// when `self` is that activation and `next` follows it; relu and leaky
    /// relu with a slope ≥ 0, whose derivative follows from the sign of
    /// their output alone.
    /// - A max pool applies it to its (smaller) output gradient, before
    ///   routing it: the derivative at a window's arg-max follows from the
    ///   pooled value, and every other input gets no gradient; with windows
    ///   that do not overlap (stride ≥ window) each input gets at most one
    ///   term, so masking before routing gives exactly the values masking
    ///   after would.
    /// - A linear layer applies it to its input gradient as the product
    ///   writes it, from its input (the activation's output).
    pub(crate) fn masks_through(&self, next: &Layer<B>) -> Option<Activation> {
        let Layer::Activation { act, .. } = self else {
            return None;
        };
        match next {
            Layer::MaxPool2d { kernel, stride, .. } if keeps_sign(*act) && stride >= kernel => {
                Some(*act)
            }
            Layer::Linear { .. } if keeps_sign(*act) => Some(*act),
            _ => None,
        }
    }

    /// Keeps a max pool's training-mode output for [`Layer::masks_through`].
    pub(crate) fn keep_pooled(&mut self, y: &B::Tensor) {
        if let Layer::MaxPool2d { pooled, saved, .. } = self {
            *pooled = saved.is_some().then(|| y.clone());
        }
    }

    /// Makes this layer's backward take in `act`'s, the activation before
    /// it (see [`Layer::masks_through`]): a max pool's from the pooled
    /// output kept by [`Layer::keep_pooled`]
    /// ([`Backend::maxpool_backward_masked`]), a linear layer's from its
    /// input ([`Backend::linear_backward_through`]). False (and nothing
    /// changed) when it cannot: a layer of another kind, or a pool that kept
    /// no output.
    pub(crate) fn take_in_activation(&mut self, act: Activation) -> bool {
        match self {
            Layer::MaxPool2d {
                pooled, masked_by, ..
            } => {
                *masked_by = pooled.is_some().then_some(act);
                masked_by.is_some()
            }
            Layer::Linear { saved, through, .. } => {
                *through = saved.is_some().then_some(act);
                through.is_some()
            }
            _ => false,
        }
    }

    /// The output `y` of an activation layer whose input was never formed
    /// (fused into the layer before): saved as both input and output, which
    /// is exact for the activations [`Layer::fusable`] admits.
    pub(crate) fn save_fused_output(&mut self, y: &B::Tensor, mode: Mode) {
        if let Layer::Activation { saved, .. } = self {
            *saved = (mode == Mode::Train).then(|| (y.clone(), y.clone()));
        }
    }

    /// The max pool `pool` over this convolution's output through `act`
    /// (the layer in between, which [`Layer::fusable`] fuses into the
    /// convolution and [`Layer::masks_through`] into the pool's backward),
    /// by one backend op ([`Backend::conv2d_activated_maxpool`]) that need
    /// not store the convolution's output: the pool's output. Saves what
    /// the convolution's and the pool's backwards read; the activation's
    /// backward is the pool's to take in. `None`, with nothing run, when
    /// `self` is not a convolution or `pool` not a max pool.
    pub(crate) fn forward_pooled(
        &mut self,
        b: &B,
        x: &B::Tensor,
        mode: Mode,
        act: Activation,
        pool: &mut Layer<B>,
    ) -> Option<B::Tensor> {
        let Layer::Conv2d {
            out_channels,
            kernel,
            stride,
            padding,
            weight,
            bias,
            saved,
        } = self
        else {
            return None;
        };
        let Layer::MaxPool2d {
            kernel: pool_kernel,
            stride: pool_stride,
            padding: pool_padding,
            saved: pool_saved,
            pooled,
            ..
        } = pool
        else {
            return None;
        };
        let g = conv_geometry(x.shape(), *out_channels, *kernel, *stride, *padding);
        let [n, c, h, w] = g.output_shape();
        let pool_g = Pool2dGeometry::new(n, c, h, w, *pool_kernel, *pool_stride, *pool_padding)
            .expect("validated by the model spec");
        let (y, argmax) =
            b.conv2d_activated_maxpool(x, &weight.value, &bias.value, &g, act, &pool_g);
        let train = mode == Mode::Train;
        *saved = train.then(|| (x.clone(), g));
        *pool_saved = train.then_some((argmax, pool_g));
        *pooled = train.then(|| y.clone());
        Some(y)
    }

    /// Forward pass, with `then` applied to the output as the layer writes
    /// it (see [`Layer::fusable`]).
    pub(crate) fn forward_then(
        &mut self,
        b: &B,
        x: &B::Tensor,
        mode: Mode,
        step: u32,
        then: Option<Activation>,
    ) -> B::Tensor {
        let train = mode == Mode::Train;
        match self {
            Layer::Conv2d {
                out_channels,
                kernel,
                stride,
                padding,
                weight,
                bias,
                saved,
            } => {
                let g = conv_geometry(x.shape(), *out_channels, *kernel, *stride, *padding);
                let y = match then {
                    Some(act) => b.conv2d_forward_activated(x, &weight.value, &bias.value, &g, act),
                    None => b.conv2d_forward(x, &weight.value, &bias.value, &g),
                };
                *saved = train.then(|| (x.clone(), g));
                y
            }
            Layer::Linear {
                weight,
                bias,
                saved,
                ..
            } => {
                let shape = x.shape().to_vec();
                let flat = b.reshape(x, &[shape[0], shape[1..].iter().product()]);
                let y = match then {
                    Some(act) => b.linear_forward_activated(&flat, &weight.value, &bias.value, act),
                    None => b.linear_forward(&flat, &weight.value, &bias.value),
                };
                *saved = train.then_some((flat, shape));
                y
            }
            Layer::Activation { act, saved } => {
                let y = b.activation_forward(*act, x);
                *saved = train.then(|| (x.clone(), y.clone()));
                y
            }
            Layer::Dropout { p, seed, saved } => {
                if !train || *p == 0.0 {
                    *saved = None;
                    return x.clone();
                }
                let d = DropoutSettings {
                    p: *p,
                    seed: *seed,
                    step,
                };
                *saved = Some(d);
                b.dropout_forward(x, &d)
            }
            Layer::BatchNorm {
                gamma,
                beta,
                running_mean,
                running_var,
                saved,
            } => {
                let s = BatchNormSettings::default();
                let tensors = [
                    &gamma.value,
                    &beta.value,
                    &running_mean.value,
                    &running_var.value,
                ];
                if train {
                    let out = b.batchnorm_forward_train_then(x, tensors, &s, then);
                    // Copied into the existing tensors rather than replacing
                    // them, so the statistics keep their buffers from step to
                    // step (and a GPU step reuses its cached bind groups).
                    b.copy_into(&mut running_mean.value, 0, &out.running_mean);
                    b.copy_into(&mut running_var.value, 0, &out.running_var);
                    *saved = Some((x.clone(), out.saved));
                    out.y
                } else {
                    let (y, _) = b.batchnorm_forward_eval_then(x, tensors, &s, then);
                    *saved = None;
                    y
                }
            }
            Layer::MaxPool2d {
                kernel,
                stride,
                padding,
                saved,
                ..
            } => {
                let [n, c, h, w] = image_dims(x.shape());
                let g = Pool2dGeometry::new(n, c, h, w, *kernel, *stride, *padding)
                    .expect("validated by the model spec");
                let (y, argmax) = b.maxpool_forward(x, &g);
                *saved = train.then_some((argmax, g));
                y
            }
            Layer::AvgPool2d {
                kernel,
                stride,
                padding,
                saved,
            } => {
                let [n, c, h, w] = image_dims(x.shape());
                let g = Pool2dGeometry::new(n, c, h, w, *kernel, *stride, *padding)
                    .expect("validated by the model spec");
                *saved = train.then_some(g);
                b.avgpool_forward(x, &g)
            }
            Layer::Flatten { saved } => {
                let shape = x.shape().to_vec();
                let y = b.reshape(x, &[shape[0], shape[1..].iter().product()]);
                *saved = Some(shape);
                y
            }
        }
    }

    /// Backward pass from `dy`: stores parameter gradients, returns `dx`, and
    /// releases what the forward saved (so a step's buffers are free again
    /// before the next step allocates).
    ///
    /// # Panics
    /// When no training-mode forward preceded it.
    pub(crate) fn backward(&mut self, b: &B, dy: &B::Tensor) -> B::Tensor {
        self.backward_needing(b, dy, true)
            .expect("the input gradient was asked for")
    }

    /// Drops what the forward saved for the backward.
    pub(crate) fn release_saved(&mut self) {
        match self {
            Layer::Conv2d { saved, .. } => *saved = None,
            Layer::Linear { saved, through, .. } => {
                *saved = None;
                *through = None;
            }
            Layer::Activation { saved, .. } => *saved = None,
            Layer::Dropout { saved, .. } => *saved = None,
            Layer::BatchNorm { saved, .. } => *saved = None,
            Layer::MaxPool2d {
                saved,
                pooled,
                masked_by,
                ..
            } => {
                *saved = None;
                *pooled = None;
                *masked_by = None;
            }
            Layer::AvgPool2d { saved, .. } => *saved = None,
            Layer::Flatten { saved } => *saved = None,
        }
    }

    /// Backward pass that leaves the parameter gradients in place and returns
    /// the input gradient only when `need_dx` (a model's first layer needs
    /// none, and skipping it saves a convolution's biggest product).
    pub(crate) fn backward_needing(
        &mut self,
        b: &B,
        dy: &B::Tensor,
        need_dx: bool,
    ) -> Option<B::Tensor> {
        const NO_FORWARD: &str = "backward needs a training-mode forward first";
        Some(match self {
            Layer::Conv2d {
                weight,
                bias,
                saved,
                ..
            } => {
                let (x, g) = saved.take().expect(NO_FORWARD);
                if !need_dx {
                    let (dw, db) = b.conv2d_weight_grads(&x, &weight.value, dy, &g);
                    weight.grad = Some(dw);
                    bias.grad = Some(db);
                    return None;
                }
                let grads = b.conv2d_backward(&x, &weight.value, dy, &g);
                weight.grad = Some(grads.dw);
                bias.grad = Some(grads.db);
                grads.dx
            }
            Layer::Linear {
                weight,
                bias,
                saved,
                through,
            } => {
                let (x, shape) = saved.take().expect(NO_FORWARD);
                let through = through.take();
                if !need_dx {
                    let (dw, db) = b.linear_weight_grads(&x, &weight.value, dy);
                    weight.grad = Some(dw);
                    bias.grad = Some(db);
                    return None;
                }
                let grads = match through {
                    Some(act) => b.linear_backward_through(&x, &weight.value, dy, act),
                    None => b.linear_backward(&x, &weight.value, dy),
                };
                weight.grad = Some(grads.dw);
                bias.grad = Some(grads.db);
                b.reshape(&grads.dx, &shape)
            }
            Layer::BatchNorm {
                gamma, beta, saved, ..
            } => {
                let (x, stats) = saved.take().expect(NO_FORWARD);
                let grads = b.batchnorm_backward(&x, &gamma.value, &stats, dy, true);
                gamma.grad = Some(grads.dgamma);
                beta.grad = Some(grads.dbeta);
                grads.dx
            }
            // Layers without parameters: nothing to do when no one needs dX
            // (their saved state is released all the same).
            _ if !need_dx => {
                self.release_saved();
                return None;
            }
            Layer::Activation { act, saved } => {
                let (x, y) = saved.take().expect(NO_FORWARD);
                b.activation_backward(*act, &x, &y, dy)
            }
            Layer::Dropout { saved, .. } => match saved.take() {
                Some(d) => b.dropout_backward(dy, &d),
                None => dy.clone(),
            },
            Layer::MaxPool2d {
                saved,
                pooled,
                masked_by,
                ..
            } => {
                let (argmax, g) = saved.take().expect(NO_FORWARD);
                match (pooled.take(), masked_by.take()) {
                    (Some(y), Some(act)) => b.maxpool_backward_masked(dy, &argmax, &g, act, &y),
                    _ => b.maxpool_backward(dy, &argmax, &g),
                }
            }
            Layer::AvgPool2d { saved, .. } => {
                b.avgpool_backward(dy, &saved.take().expect(NO_FORWARD))
            }
            Layer::Flatten { saved } => b.reshape(dy, &saved.take().expect(NO_FORWARD)),
        })
    }
}
