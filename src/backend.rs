//! The `Backend` trait: every op of the CNN derivation, implemented once on the
//! CPU (the reference, [`crate::cpu`]) and once on the GPU ([`crate::gpu`]).
//! Layers ([`crate::nn`]) are written once, generic over it.
//!
//! Shapes follow PyTorch: images are NCHW, conv weights `(O, C, kh, kw)`, linear
//! weights `(O, I)`. Each method documents the formula it computes.

use crate::geometry::{
    Activation, BatchNormSettings, Conv2dGeometry, DropoutSettings, GemmSpec, Pool2dGeometry,
};
use crate::optim::{OptimizerSettings, UpdateStep};
use crate::tensor::HostTensor;

/// Anything that knows its shape.
pub trait Shaped {
    /// Extent of each dimension, outermost first.
    fn shape(&self) -> &[usize];
}

impl<F> Shaped for HostTensor<F> {
    fn shape(&self) -> &[usize] {
        &self.shape
    }
}

/// Gradients of a layer with a weight and a bias.
#[derive(Clone, Debug)]
pub struct ParamGrads<T> {
    /// Gradient with respect to the layer's input.
    pub dx: T,
    /// Gradient with respect to the weight.
    pub dw: T,
    /// Gradient with respect to the bias.
    pub db: T,
}

/// What batchnorm's forward keeps for its backward: per-channel `mean` and
/// `invstd = 1/√(var + eps)`, both `(C)`. In training these are the batch
/// statistics; in evaluation the running ones.
#[derive(Clone, Debug)]
pub struct BatchNormSaved<T> {
    /// Per-channel mean used to normalise.
    pub mean: T,
    /// Per-channel `1/√(var + eps)` used to normalise.
    pub invstd: T,
}

/// Output of batchnorm's training-mode forward.
#[derive(Clone, Debug)]
pub struct BatchNormTrain<T> {
    /// `y = γ·(x − μ)·invstd + β`, same shape as `x`.
    pub y: T,
    /// Batch statistics for the backward.
    pub saved: BatchNormSaved<T>,
    /// `(1 − m)·running_mean + m·μ`.
    pub running_mean: T,
    /// `(1 − m)·running_var + m·σ²·n/(n − 1)` (unbiased batch variance).
    pub running_var: T,
}

/// Gradients of batchnorm.
#[derive(Clone, Debug)]
pub struct BatchNormGrads<T> {
    /// Gradient with respect to the input.
    pub dx: T,
    /// `dγ = Σ dy·x̂` per channel.
    pub dgamma: T,
    /// `dβ = Σ dy` per channel.
    pub dbeta: T,
}

/// Output of softmax cross-entropy: kept on the device until someone asks.
#[derive(Clone, Debug)]
pub struct SoftmaxXent<T> {
    /// Mean negative log-likelihood over the batch, shape `(1)`.
    pub loss: T,
    /// Number of rows whose arg-max (first on ties) equals the label, shape `(1)`.
    pub correct: T,
    /// `(softmax(x) − onehot(label)) / N`, shape `(N, K)`.
    pub grad: T,
}

/// Marks on a device's own clock around recorded work; see
/// [`Backend::span_timer`].
pub trait SpanTimer {
    /// Starts a span: work recorded after this call is in it.
    fn begin(&mut self);
    /// Ends the span.
    fn end(&mut self);
    /// The span's seconds on the device clock; submits pending work and
    /// waits for it.
    fn seconds(&mut self) -> f64;
}

/// Every op both paths implement. Tensors stay where the backend keeps them
/// (host memory or GPU buffers); only [`Backend::download`] brings data back.
pub trait Backend {
    /// A float tensor living on this backend.
    type Tensor: Shaped + Clone;
    /// A tensor of `u32` (labels, max-pool arg-max positions).
    type Indices: Clone;

    /// A short description of the device, for logs.
    fn name(&self) -> String;

    /// Copies a host tensor to the backend.
    fn upload(&self, t: &HostTensor<f32>) -> Self::Tensor;
    /// Copies `u32` values to the backend.
    fn upload_indices(&self, values: &[u32]) -> Self::Indices;
    /// Copies a tensor back to the host (waits for pending work on a GPU).
    fn download(&self, t: &Self::Tensor) -> HostTensor<f32>;

    /// The largest single buffer the device accepts, in bytes (`None`: no
    /// limit beyond memory). Callers size batches against it up front.
    fn max_buffer_bytes(&self) -> Option<u64> {
        None
    }

    /// Whether the backend's tensors live in host memory (the CPU path), so
    /// that a run's activations and optimizer state count against the
    /// machine's memory ([`crate::nn::memory::check_memory`]).
    fn keeps_tensors_in_host_memory(&self) -> bool {
        false
    }

    /// Any error the device reported since the last call (validation, out of
    /// memory); GPU work is asynchronous, so errors surface here rather than
    /// at the op that caused them.
    fn take_error(&self) -> crate::error::Result<()> {
        Ok(())
    }

    /// Copies `src`'s elements into `dst` starting at element `offset`.
    fn copy_into(&self, dst: &mut Self::Tensor, offset: usize, src: &Self::Tensor);

    /// Waits until all recorded work has finished (for timing).
    fn synchronize(&self) {}

    /// A timer of recorded work on the device's own clock (GPU timestamp
    /// queries), or `None` where the backend has none: the CPU, adapters
    /// without timestamp queries. Wall clocks around
    /// [`Backend::synchronize`] are the fallback.
    fn span_timer(&self) -> Option<Box<dyn SpanTimer + '_>> {
        None
    }

    /// Bytes of device buffers allocated so far (a high-water mark: freed
    /// buffers are pooled, not released); `None` where not tracked.
    fn allocated_bytes(&self) -> Option<u64> {
        None
    }

    /// Ends a training step: a GPU submits the step's recorded work as one
    /// submission and lets at most one step run ahead of the host.
    fn end_step(&self) {}

    /// The same elements under another shape of equal size (no copy where the
    /// backend can avoid one).
    fn reshape(&self, t: &Self::Tensor, shape: &[usize]) -> Self::Tensor;

    /// `C = op(A)·op(B)`, `(m, k)·(k, n) → (m, n)`; see [`GemmSpec`].
    fn gemm(&self, a: &Self::Tensor, b: &Self::Tensor, spec: &GemmSpec) -> Self::Tensor;

    /// `X (N, C, H, W) → X_col (N, C·kh·kw, OH·OW)` with
    /// `X_col[n, (c, i, j), (oh, ow)] = X[n, c, oh·s − p + i, ow·s − p + j]` (0 outside).
    fn im2col(&self, x: &Self::Tensor, g: &Conv2dGeometry) -> Self::Tensor;
    /// The adjoint of im2col: `dX[n, c, h, w] = Σ dX_col[n, (c, i, j), (oh, ow)]`
    /// over every window position that reads `(h, w)`; `(N, C·kh·kw, OH·OW) → (N, C, H, W)`.
    fn col2im(&self, cols: &Self::Tensor, g: &Conv2dGeometry) -> Self::Tensor;

    /// `Y[n, o] = W_col (O, C·kh·kw) · X_col[n] + b[o]`, output `(N, O, OH, OW)`.
    fn conv2d_forward(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        b: &Self::Tensor,
        g: &Conv2dGeometry,
    ) -> Self::Tensor;
    /// `dW = Σ_n dY_n · X_col,nᵀ`, `db[o] = Σ_{n,oh,ow} dY`,
    /// `dX = col2im(W_colᵀ · dY_n)`.
    fn conv2d_backward(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        dy: &Self::Tensor,
        g: &Conv2dGeometry,
    ) -> ParamGrads<Self::Tensor>;
    /// `act(conv2d_forward(x, w, b))`; backends may apply `act` in the
    /// product's epilogue instead of a pass of its own.
    fn conv2d_forward_activated(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        b: &Self::Tensor,
        g: &Conv2dGeometry,
        act: Activation,
    ) -> Self::Tensor {
        self.activation_forward(act, &self.conv2d_forward(x, w, b, g))
    }
    /// `(dW, db)` of [`Backend::conv2d_backward`] alone, for a layer whose
    /// input needs no gradient (a model's first layer): backends skip `dX`.
    fn conv2d_weight_grads(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        dy: &Self::Tensor,
        g: &Conv2dGeometry,
    ) -> (Self::Tensor, Self::Tensor) {
        let grads = self.conv2d_backward(x, w, dy, g);
        (grads.dw, grads.db)
    }

    /// `Y = X · Wᵀ + b`: `(N, I)·(I, O) → (N, O)` with `W` stored `(O, I)`.
    fn linear_forward(&self, x: &Self::Tensor, w: &Self::Tensor, b: &Self::Tensor) -> Self::Tensor;
    /// `dX = dY · W` `(N, I)`, `dW = dYᵀ · X` `(O, I)`, `db = Σ_n dY` `(O)`.
    fn linear_backward(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        dy: &Self::Tensor,
    ) -> ParamGrads<Self::Tensor>;
    /// [`Backend::linear_backward`] with `dX` taken through `act`, the
    /// activation (relu or leaky relu with a slope ≥ 0) whose output is `x`:
    /// the gradient for that activation's input, `dX · act'`, with the
    /// derivative found from the sign of `x` alone. Backends may apply it in
    /// the `dX` product's epilogue; the same values either way.
    fn linear_backward_through(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        dy: &Self::Tensor,
        act: Activation,
    ) -> ParamGrads<Self::Tensor> {
        let mut grads = self.linear_backward(x, w, dy);
        grads.dx = self.activation_backward(act, x, x, &grads.dx);
        grads
    }
    /// `act(linear_forward(x, w, b))`; backends may apply `act` in the
    /// product's epilogue instead of a pass of its own.
    fn linear_forward_activated(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        b: &Self::Tensor,
        act: Activation,
    ) -> Self::Tensor {
        self.activation_forward(act, &self.linear_forward(x, w, b))
    }
    /// `(dW, db)` of [`Backend::linear_backward`] alone, for a layer whose
    /// input needs no gradient: backends skip `dX`.
    fn linear_weight_grads(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        dy: &Self::Tensor,
    ) -> (Self::Tensor, Self::Tensor) {
        let grads = self.linear_backward(x, w, dy);
        (grads.dw, grads.db)
    }

    /// `y = f(x)` elementwise.
    fn activation_forward(&self, act: Activation, x: &Self::Tensor) -> Self::Tensor;
    /// `dx = dy · f'(x)`, with `f'` taken from `x` (relu, leaky relu) or from the
    /// forward output `y` (sigmoid: `y(1 − y)`, tanh: `1 − y²`).
    fn activation_backward(
        &self,
        act: Activation,
        x: &Self::Tensor,
        y: &Self::Tensor,
        dy: &Self::Tensor,
    ) -> Self::Tensor;

    /// Inverted dropout: `y = x · keep / (1 − p)` with `keep` from
    /// [`crate::rng::dropout_keep`].
    fn dropout_forward(&self, x: &Self::Tensor, d: &DropoutSettings) -> Self::Tensor;
    /// `dx = dy · keep / (1 − p)`, the same mask recomputed from `(seed, step, index)`.
    fn dropout_backward(&self, dy: &Self::Tensor, d: &DropoutSettings) -> Self::Tensor;

    /// Training-mode batchnorm over `(N, D)` or `(N, C, H, W)`: batch mean `μ` and
    /// biased variance `σ²` per channel, `y = γ·(x − μ)/√(σ² + eps) + β`, running
    /// statistics updated with the unbiased variance.
    fn batchnorm_forward_train(
        &self,
        x: &Self::Tensor,
        gamma: &Self::Tensor,
        beta: &Self::Tensor,
        running_mean: &Self::Tensor,
        running_var: &Self::Tensor,
        s: &BatchNormSettings,
    ) -> BatchNormTrain<Self::Tensor>;
    /// Evaluation-mode batchnorm with the running statistics; also returns them
    /// as `(mean, invstd)` for a backward through the frozen statistics.
    fn batchnorm_forward_eval(
        &self,
        x: &Self::Tensor,
        gamma: &Self::Tensor,
        beta: &Self::Tensor,
        running_mean: &Self::Tensor,
        running_var: &Self::Tensor,
        s: &BatchNormSettings,
    ) -> (Self::Tensor, BatchNormSaved<Self::Tensor>);
    /// [`Backend::batchnorm_forward_train`] (`[γ, β, running mean, running
    /// variance]`) with `y` taken through `then` where given; backends may
    /// apply it as they write `y` instead of in a pass of its own.
    fn batchnorm_forward_train_then(
        &self,
        x: &Self::Tensor,
        [gamma, beta, running_mean, running_var]: [&Self::Tensor; 4],
        s: &BatchNormSettings,
        then: Option<Activation>,
    ) -> BatchNormTrain<Self::Tensor> {
        let mut out = self.batchnorm_forward_train(x, gamma, beta, running_mean, running_var, s);
        if let Some(act) = then {
            out.y = self.activation_forward(act, &out.y);
        }
        out
    }
    /// [`Backend::batchnorm_forward_eval`] with `y` taken through `then`
    /// where given.
    fn batchnorm_forward_eval_then(
        &self,
        x: &Self::Tensor,
        [gamma, beta, running_mean, running_var]: [&Self::Tensor; 4],
        s: &BatchNormSettings,
        then: Option<Activation>,
    ) -> (Self::Tensor, BatchNormSaved<Self::Tensor>) {
        let (y, saved) = self.batchnorm_forward_eval(x, gamma, beta, running_mean, running_var, s);
        match then {
            Some(act) => (self.activation_forward(act, &y), saved),
            None => (y, saved),
        }
    }
    /// Batchnorm backward, with `M = N·S` values per channel and `x̂ = (x − μ)·invstd`:
    /// `dβ = Σ dy`, `dγ = Σ dy·x̂`; in training
    /// `dx = γ·invstd/M · (M·dy − dβ − x̂·dγ)`, in evaluation `dx = γ·invstd·dy`.
    fn batchnorm_backward(
        &self,
        x: &Self::Tensor,
        gamma: &Self::Tensor,
        saved: &BatchNormSaved<Self::Tensor>,
        dy: &Self::Tensor,
        training: bool,
    ) -> BatchNormGrads<Self::Tensor>;

    /// Max over each window (padding is −∞), and the arg-max as a flat index
    /// `h·W + w` into the input plane; ties go to the first element in row-major
    /// window order.
    fn maxpool_forward(
        &self,
        x: &Self::Tensor,
        g: &Pool2dGeometry,
    ) -> (Self::Tensor, Self::Indices);
    /// [`Backend::maxpool_forward`] over
    /// [`Backend::conv2d_forward_activated`]'s output: a convolution, its
    /// activation and a max pool. Backends may compute it in one pass that
    /// never stores the convolution's output; the same values either way.
    fn conv2d_activated_maxpool(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        b: &Self::Tensor,
        g: &Conv2dGeometry,
        act: Activation,
        pool: &Pool2dGeometry,
    ) -> (Self::Tensor, Self::Indices) {
        self.maxpool_forward(&self.conv2d_forward_activated(x, w, b, g, act), pool)
    }
    /// Routes each `dy` to its window's arg-max: `dx[h, w] = Σ dy[oh, ow]` over
    /// windows whose arg-max is `(h, w)`.
    fn maxpool_backward(
        &self,
        dy: &Self::Tensor,
        argmax: &Self::Indices,
        g: &Pool2dGeometry,
    ) -> Self::Tensor;
    /// [`Backend::maxpool_backward`] of `dy` taken through `act` first:
    /// the gradient of `maxpool(act(x))` when `act` (relu or leaky relu)
    /// keeps the sign, so its derivative at each window's arg-max follows
    /// from the pooled output `pooled` alone. Backends may run both in one
    /// pass; the same values either way.
    fn maxpool_backward_masked(
        &self,
        dy: &Self::Tensor,
        argmax: &Self::Indices,
        g: &Pool2dGeometry,
        act: Activation,
        pooled: &Self::Tensor,
    ) -> Self::Tensor {
        let masked = self.activation_backward(act, pooled, pooled, dy);
        self.maxpool_backward(&masked, argmax, g)
    }
    /// Mean over each window, padding counted (`/ k²`, PyTorch's default).
    fn avgpool_forward(&self, x: &Self::Tensor, g: &Pool2dGeometry) -> Self::Tensor;
    /// `dx[h, w] = Σ dy[oh, ow] / k²` over the windows that contain `(h, w)`.
    fn avgpool_backward(&self, dy: &Self::Tensor, g: &Pool2dGeometry) -> Self::Tensor;

    /// Softmax cross-entropy of `logits (N, K)` against integer `labels (N)`:
    /// `loss = mean_n(logsumexp(x_n) − x_n[label_n])`, computed stably.
    fn softmax_cross_entropy(
        &self,
        logits: &Self::Tensor,
        labels: &Self::Indices,
    ) -> SoftmaxXent<Self::Tensor>;

    /// The per-step values of an optimizer update as a tensor
    /// `[lr, 1 − β₁ᵗ, 1 − β₂ᵗ]` (see [`UpdateStep::values`]): made once per step,
    /// before the step's other work, and passed to every
    /// [`Backend::optimizer_update`] of that step.
    fn step_values(&self, settings: &OptimizerSettings, step: &UpdateStep) -> Self::Tensor {
        self.upload(&HostTensor::new(&[3], step.values(settings).to_vec()))
    }

    /// One optimizer update of `param` in place from `grad`, reading and
    /// writing the rule's `state` tensors (`settings.kind.state_slots()` of
    /// them, shaped like `param`, zero before the first step); see
    /// [`crate::optim::OptimizerKind`] for each rule. `step_values` comes from
    /// [`Backend::step_values`].
    fn optimizer_update(
        &self,
        settings: &OptimizerSettings,
        step_values: &Self::Tensor,
        param: &mut Self::Tensor,
        grad: &Self::Tensor,
        state: &mut [Self::Tensor],
    );

    /// Uploads a model's trainable parameters (or one optimizer slot of
    /// them, same shapes in the same order) together: the GPU places them in
    /// one buffer, at offsets that depend only on the shapes, so
    /// [`Backend::optimizer_update_all`] can update them all in one pass.
    fn upload_parameters(&self, tensors: &[&HostTensor<f32>]) -> Vec<Self::Tensor> {
        tensors.iter().map(|t| self.upload(t)).collect()
    }

    /// [`Backend::optimizer_update`] of every parameter of a step: `params[i]`
    /// from `grads[i]` with `state[i]`. The same values as one update each;
    /// the GPU runs them as one dispatch when the parameters and each state
    /// slot come from [`Backend::upload_parameters`].
    fn optimizer_update_all(
        &self,
        settings: &OptimizerSettings,
        step_values: &Self::Tensor,
        params: &mut [&mut Self::Tensor],
        grads: &[Self::Tensor],
        state: &mut [Vec<Self::Tensor>],
    ) {
        for ((param, grad), slots) in params.iter_mut().zip(grads).zip(state) {
            self.optimizer_update(settings, step_values, param, grad, slots);
        }
    }
}
