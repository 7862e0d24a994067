//! [`CpuBackend`]: the [`Backend`] trait over host tensors, every op delegating
//! to the reference functions of this module, or (the training path) some to
//! their optimised versions in `fast/`.

use std::marker::PhantomData;

use super::Real;
use super::activation::{InOrder, activation_backward_with, activation_forward_with};
use super::batchnorm;
use super::fast::OverThePool;
use super::fast::batchnorm::Vectorised;
use crate::backend::{
    Backend, BatchNormGrads, BatchNormSaved, BatchNormTrain, ParamGrads, SoftmaxXent,
};
use crate::geometry::{
    Activation, BatchNormSettings, Conv2dGeometry, DropoutSettings, GemmSpec, Pool2dGeometry,
};
use crate::tensor::HostTensor;

/// The CPU reference backend, computing in `F` (`f32` to compare with the GPU,
/// `f64` for gradient checks). Tensors are [`HostTensor<F>`]; uploads convert
/// from `f32` and downloads round back to `f32`.
#[derive(Clone, Copy, Debug)]
pub struct CpuBackend<F = f32> {
    /// Convolutions, linear layers, GEMM, max pooling and batchnorm through
    /// the optimised path (`cpu/fast/`) instead of the direct-loop reference.
    fast: bool,
    _float: PhantomData<F>,
}

impl<F> CpuBackend<F> {
    /// The reference backend: every op from its definition, direct loops.
    pub fn new() -> Self {
        Self {
            fast: false,
            _float: PhantomData,
        }
    }

    /// The training backend: matrix-product ops through an optimised GEMM,
    /// max pooling and batchnorm in vectorising loops, over all cores;
    /// everything else as the reference.
    pub fn fast() -> Self {
        Self {
            fast: true,
            _float: PhantomData,
        }
    }
}

impl<F> Default for CpuBackend<F> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F: Real> Backend for CpuBackend<F> {
    type Tensor = HostTensor<F>;
    type Indices = Vec<u32>;

    fn name(&self) -> String {
        let kind = if self.fast {
            "optimised GEMM"
        } else {
            "reference"
        };
        format!("cpu ({} {kind})", std::any::type_name::<F>())
    }

    fn upload(&self, t: &HostTensor<f32>) -> HostTensor<F> {
        t.map(|&v| F::from_f32(v))
    }

    fn keeps_tensors_in_host_memory(&self) -> bool {
        true
    }

    fn upload_indices(&self, values: &[u32]) -> Vec<u32> {
        values.to_vec()
    }

    fn download(&self, t: &HostTensor<F>) -> HostTensor<f32> {
        t.map(|&v| v.to_f64() as f32)
    }

    fn copy_into(&self, dst: &mut HostTensor<F>, offset: usize, src: &HostTensor<F>) {
        dst.data[offset..offset + src.len()].copy_from_slice(&src.data);
    }

    fn reshape(&self, t: &HostTensor<F>, shape: &[usize]) -> HostTensor<F> {
        t.reshaped(shape)
    }

    fn gemm(&self, a: &HostTensor<F>, b: &HostTensor<F>, spec: &GemmSpec) -> HostTensor<F> {
        if self.fast {
            super::fast::gemm(a, b, spec)
        } else {
            super::gemm(a, b, spec)
        }
    }

    fn im2col(&self, x: &HostTensor<F>, g: &Conv2dGeometry) -> HostTensor<F> {
        super::im2col(x, g)
    }

    fn col2im(&self, cols: &HostTensor<F>, g: &Conv2dGeometry) -> HostTensor<F> {
        super::col2im(cols, g)
    }

    fn conv2d_forward(
        &self,
        x: &HostTensor<F>,
        w: &HostTensor<F>,
        b: &HostTensor<F>,
        g: &Conv2dGeometry,
    ) -> HostTensor<F> {
        if self.fast {
            super::fast::conv2d_forward(x, w, b, g)
        } else {
            super::conv2d_forward(x, w, b, g)
        }
    }

    fn conv2d_backward(
        &self,
        x: &HostTensor<F>,
        w: &HostTensor<F>,
        dy: &HostTensor<F>,
        g: &Conv2dGeometry,
    ) -> ParamGrads<HostTensor<F>> {
        if self.fast {
            super::fast::conv2d_backward(x, w, dy, g)
        } else {
            super::conv2d_backward(x, w, dy, g)
        }
    }

    fn conv2d_weight_grads(
        &self,
        x: &HostTensor<F>,
        w: &HostTensor<F>,
        dy: &HostTensor<F>,
        g: &Conv2dGeometry,
    ) -> (HostTensor<F>, HostTensor<F>) {
        if self.fast {
            super::fast::conv2d_weight_grads(x, w, dy, g)
        } else {
            let grads = super::conv2d_backward(x, w, dy, g);
            (grads.dw, grads.db)
        }
    }

    fn linear_forward(
        &self,
        x: &HostTensor<F>,
        w: &HostTensor<F>,
        b: &HostTensor<F>,
    ) -> HostTensor<F> {
        if self.fast {
            super::fast::linear_forward(x, w, b)
        } else {
            super::linear_forward(x, w, b)
        }
    }

    fn linear_backward(
        &self,
        x: &HostTensor<F>,
        w: &HostTensor<F>,
        dy: &HostTensor<F>,
    ) -> ParamGrads<HostTensor<F>> {
        if self.fast {
            super::fast::linear_backward(x, w, dy)
        } else {
            super::linear_backward(x, w, dy)
        }
    }

    fn linear_weight_grads(
        &self,
        x: &HostTensor<F>,
        w: &HostTensor<F>,
        dy: &HostTensor<F>,
    ) -> (HostTensor<F>, HostTensor<F>) {
        if self.fast {
            super::fast::linear_weight_grads(x, w, dy)
        } else {
            let grads = super::linear_backward(x, w, dy);
            (grads.dw, grads.db)
        }
    }

    fn activation_forward(&self, act: Activation, x: &HostTensor<F>) -> HostTensor<F> {
        if self.fast {
            activation_forward_with::<OverThePool, F>(act, x)
        } else {
            activation_forward_with::<InOrder, F>(act, x)
        }
    }

    fn activation_backward(
        &self,
        act: Activation,
        x: &HostTensor<F>,
        y: &HostTensor<F>,
        dy: &HostTensor<F>,
    ) -> HostTensor<F> {
        if self.fast {
            activation_backward_with::<OverThePool, F>(act, x, y, dy)
        } else {
            activation_backward_with::<InOrder, F>(act, x, y, dy)
        }
    }

    fn dropout_forward(&self, x: &HostTensor<F>, d: &DropoutSettings) -> HostTensor<F> {
        super::dropout_forward(x, d)
    }

    fn dropout_backward(&self, dy: &HostTensor<F>, d: &DropoutSettings) -> HostTensor<F> {
        super::dropout_backward(dy, d)
    }

    fn batchnorm_forward_train(
        &self,
        x: &HostTensor<F>,
        gamma: &HostTensor<F>,
        beta: &HostTensor<F>,
        running_mean: &HostTensor<F>,
        running_var: &HostTensor<F>,
        s: &BatchNormSettings,
    ) -> BatchNormTrain<HostTensor<F>> {
        self.batchnorm_forward_train_then(x, [gamma, beta, running_mean, running_var], s, None)
    }

    fn batchnorm_forward_train_then(
        &self,
        x: &HostTensor<F>,
        tensors: [&HostTensor<F>; 4],
        s: &BatchNormSettings,
        then: Option<Activation>,
    ) -> BatchNormTrain<HostTensor<F>> {
        if self.fast {
            batchnorm::forward_train_with::<Vectorised, F>(x, tensors, s, then)
        } else {
            batchnorm::forward_train_with::<batchnorm::Reference, F>(x, tensors, s, then)
        }
    }

    fn batchnorm_forward_eval(
        &self,
        x: &HostTensor<F>,
        gamma: &HostTensor<F>,
        beta: &HostTensor<F>,
        running_mean: &HostTensor<F>,
        running_var: &HostTensor<F>,
        s: &BatchNormSettings,
    ) -> (HostTensor<F>, BatchNormSaved<HostTensor<F>>) {
        self.batchnorm_forward_eval_then(x, [gamma, beta, running_mean, running_var], s, None)
    }

    fn batchnorm_forward_eval_then(
        &self,
        x: &HostTensor<F>,
        tensors: [&HostTensor<F>; 4],
        s: &BatchNormSettings,
        then: Option<Activation>,
    ) -> (HostTensor<F>, BatchNormSaved<HostTensor<F>>) {
        if self.fast {
            batchnorm::forward_eval_with::<Vectorised, F>(x, tensors, s, then)
        } else {
            batchnorm::forward_eval_with::<batchnorm::Reference, F>(x, tensors, s, then)
        }
    }

    fn batchnorm_backward(
        &self,
        x: &HostTensor<F>,
        gamma: &HostTensor<F>,
        saved: &BatchNormSaved<HostTensor<F>>,
        dy: &HostTensor<F>,
        training: bool,
    ) -> BatchNormGrads<HostTensor<F>> {
        if self.fast {
            super::batchnorm::backward_with::<Vectorised, F>(x, gamma, saved, dy, training)
        } else {
            super::batchnorm_backward(x, gamma, saved, dy, training)
        }
    }

    fn maxpool_forward(&self, x: &HostTensor<F>, g: &Pool2dGeometry) -> (HostTensor<F>, Vec<u32>) {
        if self.fast {
            super::fast::maxpool_forward(x, g)
        } else {
            super::maxpool_forward(x, g)
        }
    }

    fn maxpool_backward(
        &self,
        dy: &HostTensor<F>,
        argmax: &Vec<u32>,
        g: &Pool2dGeometry,
    ) -> HostTensor<F> {
        if self.fast {
            super::fast::maxpool_backward(dy, argmax, g)
        } else {
            super::maxpool_backward(dy, argmax, g)
        }
    }

    fn avgpool_forward(&self, x: &HostTensor<F>, g: &Pool2dGeometry) -> HostTensor<F> {
        super::avgpool_forward(x, g)
    }

    fn avgpool_backward(&self, dy: &HostTensor<F>, g: &Pool2dGeometry) -> HostTensor<F> {
        super::avgpool_backward(dy, g)
    }

    fn softmax_cross_entropy(
        &self,
        logits: &HostTensor<F>,
        labels: &Vec<u32>,
    ) -> SoftmaxXent<HostTensor<F>> {
        super::softmax_cross_entropy(logits, labels)
    }

    fn optimizer_update(
        &self,
        settings: &crate::optim::OptimizerSettings,
        step_values: &HostTensor<F>,
        param: &mut HostTensor<F>,
        grad: &HostTensor<F>,
        state: &mut [HostTensor<F>],
    ) {
        let values: [F; 3] = step_values.data[..]
            .try_into()
            .expect("step values are [lr, 1 - beta1^t, 1 - beta2^t]");
        super::optimizer_update_with(settings, values, param, grad, state)
    }
}
