//! [`Backend`] on the GPU: every op records its kernels into the context's
//! pending command encoder; nothing is read back until [`Backend::download`].

use std::sync::Arc;

use super::context::GpuContext;
use super::tensor::{GpuIndices, GpuTensor};
use super::{batchnorm, conv, elementwise, linear, pool, softmax};
use crate::backend::{
    Backend, BatchNormGrads, BatchNormSaved, BatchNormTrain, ParamGrads, SoftmaxXent,
};
use crate::error::Result;
use crate::geometry::{
    Activation, BatchNormSettings, Conv2dGeometry, DropoutSettings, GemmSpec, Pool2dGeometry,
};
use crate::tensor::HostTensor;

/// The GPU implementation of [`Backend`]. Cheap to clone (shares the context).
#[derive(Clone)]
pub struct GpuBackend {
    /// The device and its caches.
    pub ctx: Arc<GpuContext>,
    /// Flat gradient buffers for one-dispatch optimizer updates.
    flat_updates: Arc<super::optim::FlatUpdates>,
}

impl GpuBackend {
    /// Opens adapter `index` (see `wgcnn devices`), or the preferred one.
    pub fn new(index: Option<usize>) -> Result<Self> {
        Ok(Self {
            ctx: Arc::new(GpuContext::new(index)?),
            flat_updates: Default::default(),
        })
    }
}

impl Backend for GpuBackend {
    type Tensor = GpuTensor;
    type Indices = GpuIndices;

    fn name(&self) -> String {
        self.ctx.describe()
    }

    fn upload(&self, t: &HostTensor<f32>) -> GpuTensor {
        GpuTensor {
            buffer: Arc::new(
                self.ctx
                    .storage_buffer_with(bytemuck::cast_slice(&t.data), "upload"),
            ),
            shape: t.shape.clone(),
        }
    }

    fn upload_indices(&self, values: &[u32]) -> GpuIndices {
        GpuIndices {
            buffer: Arc::new(
                self.ctx
                    .storage_buffer_with(bytemuck::cast_slice(values), "indices"),
            ),
            len: values.len(),
        }
    }

    fn download(&self, t: &GpuTensor) -> HostTensor<f32> {
        let bytes = self.ctx.read_back(&t.buffer, 4 * t.len() as u64);
        HostTensor::new(&t.shape, bytemuck::pod_collect_to_vec(&bytes))
    }

    fn max_buffer_bytes(&self) -> Option<u64> {
        Some(self.ctx.max_buffer_bytes())
    }

    fn take_error(&self) -> Result<()> {
        self.ctx.take_error()
    }

    fn copy_into(&self, dst: &mut GpuTensor, offset: usize, src: &GpuTensor) {
        assert!(
            offset + src.len() <= dst.len(),
            "copy_into: {} elements at {offset} overflow {}",
            src.len(),
            dst.len()
        );
        self.ctx.copy(
            &src.buffer,
            &dst.buffer,
            4 * offset as u64,
            4 * src.len() as u64,
        );
    }

    fn synchronize(&self) {
        self.ctx.synchronize();
    }

    fn allocated_bytes(&self) -> Option<u64> {
        Some(self.ctx.counters().buffer_bytes)
    }

    fn span_timer(&self) -> Option<Box<dyn crate::backend::SpanTimer + '_>> {
        self.ctx
            .gpu_timer()
            .map(|t| Box::new(t) as Box<dyn crate::backend::SpanTimer>)
    }

    fn end_step(&self) {
        self.ctx.end_step();
    }

    fn reshape(&self, t: &GpuTensor, shape: &[usize]) -> GpuTensor {
        assert_eq!(
            shape.iter().product::<usize>(),
            t.len(),
            "reshape {:?} to {shape:?}",
            t.shape
        );
        GpuTensor {
            buffer: t.buffer.clone(),
            shape: shape.to_vec(),
        }
    }

    fn gemm(&self, a: &GpuTensor, b: &GpuTensor, spec: &GemmSpec) -> GpuTensor {
        assert_eq!(a.shape, spec.a_shape(), "gemm A shape");
        assert_eq!(b.shape, spec.b_shape(), "gemm B shape");
        let c = self.ctx.tensor(&[spec.m, spec.n], "gemm.c");
        super::gemm::single_gemm_into(
            &self.ctx,
            &a.buffer,
            &b.buffer,
            super::gemm::Bias::None,
            &c.buffer,
            spec,
        );
        c
    }

    fn im2col(&self, x: &GpuTensor, g: &Conv2dGeometry) -> GpuTensor {
        conv::im2col(&self.ctx, x, g)
    }

    fn col2im(&self, cols: &GpuTensor, g: &Conv2dGeometry) -> GpuTensor {
        conv::col2im(&self.ctx, cols, g)
    }

    fn conv2d_forward(
        &self,
        x: &GpuTensor,
        w: &GpuTensor,
        b: &GpuTensor,
        g: &Conv2dGeometry,
    ) -> GpuTensor {
        conv::conv2d_forward(&self.ctx, x, w, b, g, None)
    }

    fn conv2d_forward_activated(
        &self,
        x: &GpuTensor,
        w: &GpuTensor,
        b: &GpuTensor,
        g: &Conv2dGeometry,
        act: Activation,
    ) -> GpuTensor {
        if super::gemm::fuses(act) {
            conv::conv2d_forward(&self.ctx, x, w, b, g, Some(act))
        } else {
            self.activation_forward(act, &conv::conv2d_forward(&self.ctx, x, w, b, g, None))
        }
    }

    fn conv2d_backward(
        &self,
        x: &GpuTensor,
        w: &GpuTensor,
        dy: &GpuTensor,
        g: &Conv2dGeometry,
    ) -> ParamGrads<GpuTensor> {
        conv::conv2d_backward(&self.ctx, x, w, dy, g)
    }

    fn conv2d_weight_grads(
        &self,
        x: &GpuTensor,
        _w: &GpuTensor,
        dy: &GpuTensor,
        g: &Conv2dGeometry,
    ) -> (GpuTensor, GpuTensor) {
        conv::conv2d_weight_grads(&self.ctx, x, dy, g)
    }

    fn linear_forward(&self, x: &GpuTensor, w: &GpuTensor, b: &GpuTensor) -> GpuTensor {
        linear::linear_forward(&self.ctx, x, w, b, None)
    }

    fn linear_forward_activated(
        &self,
        x: &GpuTensor,
        w: &GpuTensor,
        b: &GpuTensor,
        act: Activation,
    ) -> GpuTensor {
        if super::gemm::fuses(act) {
            linear::linear_forward(&self.ctx, x, w, b, Some(act))
        } else {
            self.activation_forward(act, &linear::linear_forward(&self.ctx, x, w, b, None))
        }
    }

    fn linear_backward(
        &self,
        x: &GpuTensor,
        w: &GpuTensor,
        dy: &GpuTensor,
    ) -> ParamGrads<GpuTensor> {
        linear::linear_backward(&self.ctx, x, w, dy)
    }

    fn linear_backward_through(
        &self,
        x: &GpuTensor,
        w: &GpuTensor,
        dy: &GpuTensor,
        act: Activation,
    ) -> ParamGrads<GpuTensor> {
        linear::linear_backward_through(&self.ctx, x, w, dy, act)
    }

    fn linear_weight_grads(
        &self,
        x: &GpuTensor,
        w: &GpuTensor,
        dy: &GpuTensor,
    ) -> (GpuTensor, GpuTensor) {
        linear::linear_weight_grads(&self.ctx, x, w, dy)
    }

    fn activation_forward(&self, act: Activation, x: &GpuTensor) -> GpuTensor {
        elementwise::activation_forward(&self.ctx, act, x)
    }

    fn activation_backward(
        &self,
        act: Activation,
        x: &GpuTensor,
        y: &GpuTensor,
        dy: &GpuTensor,
    ) -> GpuTensor {
        elementwise::activation_backward(&self.ctx, act, x, y, dy)
    }

    fn dropout_forward(&self, x: &GpuTensor, d: &DropoutSettings) -> GpuTensor {
        elementwise::dropout(&self.ctx, x, d)
    }

    fn dropout_backward(&self, dy: &GpuTensor, d: &DropoutSettings) -> GpuTensor {
        elementwise::dropout(&self.ctx, dy, d)
    }

    fn batchnorm_forward_train(
        &self,
        x: &GpuTensor,
        gamma: &GpuTensor,
        beta: &GpuTensor,
        running_mean: &GpuTensor,
        running_var: &GpuTensor,
        s: &BatchNormSettings,
    ) -> BatchNormTrain<GpuTensor> {
        batchnorm::forward_train(&self.ctx, x, gamma, beta, running_mean, running_var, s)
    }

    fn batchnorm_forward_eval(
        &self,
        x: &GpuTensor,
        gamma: &GpuTensor,
        beta: &GpuTensor,
        running_mean: &GpuTensor,
        running_var: &GpuTensor,
        s: &BatchNormSettings,
    ) -> (GpuTensor, BatchNormSaved<GpuTensor>) {
        batchnorm::forward_eval(&self.ctx, x, gamma, beta, running_mean, running_var, s)
    }

    fn batchnorm_backward(
        &self,
        x: &GpuTensor,
        gamma: &GpuTensor,
        saved: &BatchNormSaved<GpuTensor>,
        dy: &GpuTensor,
        training: bool,
    ) -> BatchNormGrads<GpuTensor> {
        batchnorm::backward(&self.ctx, x, gamma, saved, dy, training)
    }

    fn maxpool_forward(&self, x: &GpuTensor, g: &Pool2dGeometry) -> (GpuTensor, GpuIndices) {
        pool::maxpool_forward(&self.ctx, x, g)
    }

    fn conv2d_activated_maxpool(
        &self,
        x: &GpuTensor,
        w: &GpuTensor,
        b: &GpuTensor,
        g: &Conv2dGeometry,
        act: Activation,
        pool: &Pool2dGeometry,
    ) -> (GpuTensor, GpuIndices) {
        conv::conv2d_forward_pooled(&self.ctx, x, w, b, g, act, pool).unwrap_or_else(|| {
            self.maxpool_forward(&self.conv2d_forward_activated(x, w, b, g, act), pool)
        })
    }

    fn maxpool_backward(
        &self,
        dy: &GpuTensor,
        argmax: &GpuIndices,
        g: &Pool2dGeometry,
    ) -> GpuTensor {
        pool::maxpool_backward(&self.ctx, dy, argmax, g)
    }

    fn maxpool_backward_masked(
        &self,
        dy: &GpuTensor,
        argmax: &GpuIndices,
        g: &Pool2dGeometry,
        act: Activation,
        pooled: &GpuTensor,
    ) -> GpuTensor {
        pool::maxpool_backward_masked(&self.ctx, dy, argmax, g, act, pooled)
    }

    fn avgpool_forward(&self, x: &GpuTensor, g: &Pool2dGeometry) -> GpuTensor {
        pool::avgpool_forward(&self.ctx, x, g)
    }

    fn avgpool_backward(&self, dy: &GpuTensor, g: &Pool2dGeometry) -> GpuTensor {
        pool::avgpool_backward(&self.ctx, dy, g)
    }

    fn softmax_cross_entropy(
        &self,
        logits: &GpuTensor,
        labels: &GpuIndices,
    ) -> SoftmaxXent<GpuTensor> {
        softmax::softmax_cross_entropy(&self.ctx, logits, labels)
    }

    fn optimizer_update(
        &self,
        settings: &crate::optim::OptimizerSettings,
        step_values: &GpuTensor,
        param: &mut GpuTensor,
        grad: &GpuTensor,
        state: &mut [GpuTensor],
    ) {
        super::optim::optimizer_update(&self.ctx, settings, step_values, param, grad, state)
    }

    fn upload_parameters(&self, tensors: &[&HostTensor<f32>]) -> Vec<GpuTensor> {
        super::optim::upload_flat(&self.ctx, tensors)
    }

    fn optimizer_update_all(
        &self,
        settings: &crate::optim::OptimizerSettings,
        step_values: &GpuTensor,
        params: &mut [&mut GpuTensor],
        grads: &[GpuTensor],
        state: &mut [Vec<GpuTensor>],
    ) {
        let views: Vec<&GpuTensor> = params.iter().map(|p| &**p).collect();
        let flat =
            self.flat_updates
                .update_all(&self.ctx, settings, step_values, &views, grads, state);
        if !flat {
            for ((param, grad), slots) in params.iter_mut().zip(grads).zip(state) {
                self.optimizer_update(settings, step_values, param, grad, slots);
            }
        }
    }
}
