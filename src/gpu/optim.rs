//! Host side of `shaders/optim.wgsl`: the optimizer update rules, applied in
//! place to a parameter and its state buffers — one tensor at a time, or all
//! of a model's at once from flat buffers ([`upload_flat`],
//! [`FlatUpdates::update_all`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use super::context::{GpuBuffer, GpuContext, KernelSpec, Params, grid};
use super::modules::ModuleSource;
use super::tensor::GpuTensor;
use crate::optim::{OptimizerKind, OptimizerSettings};
use crate::tensor::HostTensor;

const SOURCE: &str = include_str!("../../shaders/optim.wgsl");

/// The update rules on one `f32` per invocation, or on one `vec4<f32>`
/// (four elements) where the length is a multiple of 4.
pub(super) fn module(vectors: bool) -> ModuleSource {
    static SOURCES: [OnceLock<String>; 2] = [OnceLock::new(), OnceLock::new()];
    let (family, value) = if vectors {
        ("optim_vec4", "vec4<f32>")
    } else {
        ("optim", "f32")
    };
    let source =
        SOURCES[vectors as usize].get_or_init(|| format!("alias Value = {value};\n{SOURCE}"));
    ModuleSource { family, source }
}

/// The shader entry point of each rule.
fn entry(kind: OptimizerKind) -> &'static str {
    match kind {
        OptimizerKind::Sgd => "sgd",
        OptimizerKind::Momentum => "momentum",
        OptimizerKind::Nesterov => "nesterov",
        OptimizerKind::Adagrad => "adagrad",
        OptimizerKind::RmsProp => "rmsprop",
        OptimizerKind::Adam => "adam",
        OptimizerKind::AdamW => "adamw",
    }
}

/// Records one update of `param` from `grad`, writing `param` and the rule's
/// `state` buffers in place (see [`crate::cpu::optimizer_update`] for the
/// formulas). `step_values` holds `[lr, 1 − β₁ᵗ, 1 − β₂ᵗ]` (see
/// [`crate::optim::UpdateStep::values`]).
///
/// # Panics
/// When `state` does not hold `settings.kind.state_slots()` tensors, when
/// `grad` or a state tensor is not shaped like `param`, or when two of the
/// tensors share a buffer.
pub fn optimizer_update(
    ctx: &GpuContext,
    settings: &OptimizerSettings,
    step_values: &GpuTensor,
    param: &GpuTensor,
    grad: &GpuTensor,
    state: &[GpuTensor],
) {
    let kind = settings.kind;
    kind.check_operands(
        &param.shape,
        &grad.shape,
        state.iter().map(|s| &s.shape[..]),
    );
    let buffers: Vec<&Arc<GpuBuffer>> = [grad, param]
        .into_iter()
        .chain(state)
        .map(|t| &t.buffer)
        .collect();
    for (i, a) in buffers.iter().enumerate() {
        assert!(
            buffers[..i].iter().all(|b| !Arc::ptr_eq(a, b)),
            "{}: the parameter, its gradient and its state must be distinct buffers",
            kind.name()
        );
    }
    if param.is_empty() {
        return;
    }

    assert_eq!(
        step_values.shape,
        [3],
        "step values are [lr, 1 - beta1^t, 1 - beta2^t]"
    );
    // A model's flat buffers are whole vec4s (`flat_layout`).
    let vectors = param.len().is_multiple_of(4);
    let values = if vectors {
        param.len() / 4
    } else {
        param.len()
    };
    let params = Params::new()
        .u32(values)
        .f32(settings.weight_decay)
        .f32(settings.momentum)
        .f32(settings.alpha)
        .f32(settings.beta1)
        .f32(settings.beta2)
        .f32(settings.eps);
    let kernel = ctx.kernel(&KernelSpec::new(
        module(vectors),
        entry(kind),
        2,
        1 + state.len(),
    ));
    let mut outputs: Vec<&GpuBuffer> = vec![&param.buffer];
    outputs.extend(state.iter().map(|s| &*s.buffer));
    ctx.dispatch(
        &kernel,
        &params,
        &[&grad.buffer, &step_values.buffer],
        &outputs,
        grid(values, 256),
    );
}

/// Byte offsets at which tensors of `lens` elements lie in one flat buffer,
/// each aligned for binding as a buffer of its own, and the buffer's size,
/// a whole number of vec4s (so one update over it takes four elements per
/// invocation). Depends only on the lengths, so parameters and each
/// optimizer slot of them, uploaded apart, share one layout.
fn flat_layout(lens: &[usize], align: u64) -> (Vec<u64>, u64) {
    let mut end = 0u64;
    let offsets = lens
        .iter()
        .map(|&len| {
            let offset = end.next_multiple_of(align);
            end = offset + 4 * len.max(1) as u64;
            offset
        })
        .collect();
    (offsets, end.max(4).next_multiple_of(16))
}

/// `tensors` in one buffer at offsets aligned for binding and set by their
/// lengths alone (zeros between them), each returned as a view of its range.
/// Where that buffer would be over the device's per-buffer limit (one
/// update binds it whole), each tensor gets a buffer of its own instead, and
/// the updates run one tensor at a time.
pub fn upload_flat(ctx: &GpuContext, tensors: &[&HostTensor<f32>]) -> Vec<GpuTensor> {
    let align = u64::from(ctx.limits.min_storage_buffer_offset_alignment);
    let lens: Vec<usize> = tensors.iter().map(|t| t.len()).collect();
    let (offsets, size) = flat_layout(&lens, align);
    if size > ctx.max_buffer_bytes() {
        return tensors
            .iter()
            .map(|t| GpuTensor {
                buffer: Arc::new(
                    ctx.storage_buffer_with(bytemuck::cast_slice(&t.data), "parameter"),
                ),
                shape: t.shape.clone(),
            })
            .collect();
    }
    let mut bytes = vec![0u8; size as usize];
    for (t, &offset) in tensors.iter().zip(&offsets) {
        let at = offset as usize;
        bytes[at..at + 4 * t.len()].copy_from_slice(bytemuck::cast_slice(&t.data));
    }
    let flat = Arc::new(ctx.storage_buffer_with(&bytes, "parameters"));
    tensors
        .iter()
        .zip(offsets)
        .map(|(t, offset)| GpuTensor {
            buffer: Arc::new(ctx.view(&flat, offset, 4 * t.len().max(1) as u64)),
            shape: t.shape.clone(),
        })
        .collect()
}

/// The flat buffer all of `tensors` are views of, at `offsets` and filling
/// its `size` bytes (their [`flat_layout`]); `None` otherwise.
fn flat_parent(tensors: &[&GpuTensor], offsets: &[u64], size: u64) -> Option<Arc<GpuBuffer>> {
    let parent = tensors.first()?.buffer.parent()?.clone();
    let laid_out = tensors.len() == offsets.len()
        && tensors.iter().zip(offsets).all(|(t, &offset)| {
            t.buffer.parent().is_some_and(|p| Arc::ptr_eq(p, &parent))
                && t.buffer.offset() == parent.offset() + offset
        });
    (laid_out && parent.size() == size).then_some(parent)
}

/// What [`FlatUpdates::update_all`] keeps between steps: per flat parameter
/// buffer, a flat gradient buffer of the same layout (its gaps stay zero).
#[derive(Default)]
pub struct FlatUpdates {
    gradients: Mutex<HashMap<u64, FlatGradients>>,
}

/// A flat gradient buffer and the flat parameter buffer it serves (weak, so
/// a dropped model's entry can be forgotten).
type FlatGradients = (Weak<GpuBuffer>, Arc<GpuBuffer>);

impl FlatUpdates {
    /// Updates every parameter in one dispatch when the parameters and each
    /// state slot are flat buffers of one layout ([`upload_flat`]): the
    /// gradients are copied into a flat buffer of that layout (copies, not
    /// dispatches), then one pass of the rule runs over the whole buffers.
    /// The values are those of one [`optimizer_update`] per parameter (the
    /// rules are elementwise). Returns false, doing nothing, otherwise.
    pub fn update_all(
        &self,
        ctx: &GpuContext,
        settings: &OptimizerSettings,
        step_values: &GpuTensor,
        params: &[&GpuTensor],
        grads: &[GpuTensor],
        state: &[Vec<GpuTensor>],
    ) -> bool {
        let align = u64::from(ctx.limits.min_storage_buffer_offset_alignment);
        let lens: Vec<usize> = params.iter().map(|t| t.len()).collect();
        let (offsets, size) = flat_layout(&lens, align);
        let Some(flat_params) = flat_parent(params, &offsets, size) else {
            return false;
        };
        let slots = settings.kind.state_slots();
        let mut flat_state = Vec::with_capacity(slots);
        for slot in 0..slots {
            let tensors: Option<Vec<&GpuTensor>> = state.iter().map(|s| s.get(slot)).collect();
            match tensors.and_then(|t| flat_parent(&t, &offsets, size)) {
                Some(flat) => flat_state.push(flat),
                None => return false,
            }
        }
        if grads.len() != params.len() || grads.iter().zip(params).any(|(g, p)| g.shape != p.shape)
        {
            return false;
        }
        let flat_grads = self.gradients_for(ctx, &flat_params);
        for (grad, &offset) in grads.iter().zip(&offsets) {
            ctx.copy(&grad.buffer, &flat_grads, offset, 4 * grad.len() as u64);
        }
        let whole = |buffer: &Arc<GpuBuffer>| GpuTensor {
            buffer: buffer.clone(),
            shape: vec![(flat_params.size() / 4) as usize],
        };
        let flat_state: Vec<GpuTensor> = flat_state.iter().map(whole).collect();
        optimizer_update(
            ctx,
            settings,
            step_values,
            &whole(&flat_params),
            &whole(&flat_grads),
            &flat_state,
        );
        true
    }

    /// The flat gradient buffer of `params` (zeroed when first made).
    fn gradients_for(&self, ctx: &GpuContext, params: &Arc<GpuBuffer>) -> Arc<GpuBuffer> {
        let mut gradients = self.gradients.lock().unwrap();
        // Forget the buffers of models that are gone.
        gradients.retain(|_, (owner, _)| owner.strong_count() > 0);
        gradients
            .entry(params.id())
            .or_insert_with(|| {
                let zeros = vec![0u8; params.size() as usize];
                (
                    Arc::downgrade(params),
                    Arc::new(ctx.storage_buffer_with(&zeros, "gradients")),
                )
            })
            .1
            .clone()
    }
}
