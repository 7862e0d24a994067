//! What a model needs in memory, checked before anything is allocated: each
//! parameter against a device's per-buffer limit, and a lower bound of host
//! memory against what the machine has free. A model or batch too large is
//! then refused with the reason, instead of aborting on a failed allocation,
//! being killed part-way, or failing a GPU validation.

use super::sequential::parameter_shapes;
use super::spec::ModelSpec;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::geometry::element_count;
use crate::host_memory::{available_bytes, describe_bytes};

/// Where a run keeps its tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// All in host memory: the CPU path.
    Host,
    /// On a device; the host holds the parameters while it makes them and
    /// packs them for the upload (two copies at once).
    Device,
}

/// What a run does with the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Training with an optimizer that keeps `optimizer_slots` tensors per
    /// parameter.
    Train {
        /// [`crate::optim::OptimizerKind::state_slots`].
        optimizer_slots: usize,
    },
    /// Forward passes only (evaluation, prediction).
    Infer,
}

/// Host memory a run needs at least: what every tensor it surely holds at
/// one time adds up to. Allocator overheads, workspaces and the data set are
/// left out, so a run refused by it cannot have fitted.
#[derive(Clone, Debug)]
pub struct HostNeed {
    /// Bytes whatever the batch size: copies of the parameters.
    pub fixed: u128,
    /// Bytes per example of a batch: the widest layer's input and output.
    pub per_example: u128,
    parameter_count: u128,
    parameter_copies: &'static str,
    widest_layer: String,
}

impl HostNeed {
    /// The lower bound for `spec` doing `workload` with its tensors at
    /// `placement`.
    pub fn of(spec: &ModelSpec, workload: Workload, placement: Placement) -> Result<Self> {
        let mut all = 0u128;
        let mut trained = 0u128;
        for (name, shape) in parameter_shapes(spec)? {
            let count = element_count(&format!("parameter {name}"), &shape)? as u128;
            all += count;
            if !name.contains("running") {
                trained += count;
            }
        }
        let (fixed_elements, parameter_copies) = match (placement, workload) {
            (Placement::Device, _) => (
                2 * all,
                "two copies on the host: as made and as packed for the device",
            ),
            (Placement::Host, Workload::Infer) => (all, "the values"),
            (Placement::Host, Workload::Train { optimizer_slots }) => (
                all + trained * (1 + optimizer_slots as u128),
                "values, gradients and the optimizer's state",
            ),
        };
        let (per_example, widest_layer) = match placement {
            Placement::Device => (0, String::new()),
            Placement::Host => widest_layer(spec)?,
        };
        Ok(Self {
            fixed: 4 * fixed_elements,
            per_example: 4 * per_example,
            parameter_count: all,
            parameter_copies,
            widest_layer,
        })
    }

    /// Bytes at batch size `batch`.
    pub fn bytes(&self, batch: usize) -> u128 {
        self.fixed + self.per_example * batch as u128
    }

    /// Checks the need at `batch` against `available` bytes.
    pub fn check(&self, batch: usize, available: u64) -> Result<()> {
        let available = available as u128;
        if self.bytes(batch) <= available {
            return Ok(());
        }
        let free = describe_bytes(available);
        if self.fixed > available {
            return Err(Error::Setting(format!(
                "the model's {} parameters need at least {} of memory ({}), but this \
                 machine has {free} free; make its layers smaller",
                self.parameter_count,
                describe_bytes(self.fixed),
                self.parameter_copies,
            )));
        }
        let fits = (available - self.fixed) / self.per_example.max(1);
        Err(Error::Setting(format!(
            "batch size {batch} needs at least {} of memory ({} for the parameters, {} for \
             {}), but this machine has {free} free; use --batch-size {fits} or less",
            describe_bytes(self.bytes(batch)),
            describe_bytes(self.fixed),
            describe_bytes(self.per_example * batch as u128),
            self.widest_layer,
        )))
    }
}

/// Elements per example of the layer whose input and output together are
/// the largest (both exist at once in its forward), and its description.
fn widest_layer(spec: &ModelSpec) -> Result<(u128, String)> {
    let shapes = spec.shapes(1)?;
    let mut widest = (0u128, String::new());
    for (i, layer) in spec.layers.iter().enumerate() {
        let both = shapes[i].iter().product::<usize>() as u128
            + shapes[i + 1].iter().product::<usize>() as u128;
        if both > widest.0 {
            widest = (
                both,
                format!("layer {i} ({})'s input and output", layer.kind()),
            );
        }
    }
    Ok(widest)
}

/// Checks that every parameter tensor of `spec` fits in a buffer of
/// `max_bytes` (the batch size does not change them).
pub fn check_parameters_fit(spec: &ModelSpec, max_bytes: u64) -> Result<()> {
    for (name, shape) in parameter_shapes(spec)? {
        let bytes = 4 * element_count(&format!("parameter {name}"), &shape)? as u128;
        if bytes > max_bytes as u128 {
            let (layer, what) = name.split_once('.').unwrap_or((&name, ""));
            let kind = layer
                .parse::<usize>()
                .ok()
                .and_then(|i| spec.layers.get(i))
                .map_or("", |l| l.kind());
            return Err(Error::Setting(format!(
                "layer {layer} ({kind}) has a {what} of shape {shape:?} that needs a {} \
                 buffer, but this device allows {} per buffer, whatever the batch size; make \
                 the layer smaller",
                describe_bytes(bytes),
                describe_bytes(max_bytes as u128)
            )));
        }
    }
    Ok(())
}

/// Checks that the values of `spec`'s parameters fit in the host memory the
/// machine has free (where the system says), before they are made.
pub fn check_room_for_parameters(spec: &ModelSpec) -> Result<()> {
    match available_bytes() {
        Some(available) => {
            HostNeed::of(spec, Workload::Infer, Placement::Host)?.check(0, available)
        }
        None => Ok(()),
    }
}

/// Checks, before anything is allocated, that `spec` doing `workload` at
/// batch `batch` fits `backend`: every tensor within the device's
/// per-buffer limit where it has one, and the host memory the run needs at
/// least within what the machine has free (where the system says).
pub fn check_memory<B: Backend>(
    backend: &B,
    spec: &ModelSpec,
    batch: usize,
    workload: Workload,
) -> Result<()> {
    if let Some(max) = backend.max_buffer_bytes() {
        spec.check_fits(batch, max)?;
    }
    let placement = if backend.keeps_tensors_in_host_memory() {
        Placement::Host
    } else {
        Placement::Device
    };
    match available_bytes() {
        Some(available) => HostNeed::of(spec, workload, placement)?.check(batch, available),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::LayerSpec;

    fn dense(widths: &[usize]) -> ModelSpec {
        let mut layers = vec![LayerSpec::Flatten];
        layers.extend(
            widths
                .iter()
                .map(|&out_features| LayerSpec::Linear { out_features }),
        );
        ModelSpec {
            input: vec![1, 4, 4],
            layers,
        }
    }

    #[test]
    fn the_host_need_counts_the_copies_each_placement_holds() {
        // 16 → 8 → 2: 136 + 18 = 154 parameters.
        let spec = dense(&[8, 2]);
        let adam = Workload::Train { optimizer_slots: 2 };
        let device = HostNeed::of(&spec, adam, Placement::Device).unwrap();
        assert_eq!((device.fixed, device.per_example), (4 * 2 * 154, 0));
        let host = HostNeed::of(&spec, adam, Placement::Host).unwrap();
        // Values, gradients and two slots; flatten's 16 in and 16 out are
        // the widest pair per example.
        assert_eq!((host.fixed, host.per_example), (4 * 4 * 154, 4 * 32));
        let infer = HostNeed::of(&spec, Workload::Infer, Placement::Host).unwrap();
        assert_eq!(infer.fixed, 4 * 154);
    }

    #[test]
    fn too_little_memory_names_the_parameters_or_the_batch_size_that_fits() {
        let spec = dense(&[8, 2]);
        let need = HostNeed::of(&spec, Workload::Infer, Placement::Host).unwrap();
        assert!(need.check(10, need.bytes(10) as u64).is_ok());
        let batch = need
            .check(10, need.bytes(10) as u64 - 1)
            .unwrap_err()
            .to_string();
        assert!(
            batch.contains("batch size 10") && batch.contains("--batch-size 9 or less"),
            "{batch}"
        );
        assert!(
            batch.contains("layer 0 (flatten)'s input and output"),
            "{batch}"
        );
        let params = need.check(1, 100).unwrap_err().to_string();
        assert!(
            params.contains("the model's 154 parameters") && params.contains("smaller"),
            "{params}"
        );
    }

    #[test]
    fn a_parameter_over_the_buffer_limit_is_named() {
        let spec = dense(&[8, 2]);
        assert!(check_parameters_fit(&spec, 4 * 128).is_ok());
        let e = check_parameters_fit(&spec, 4 * 127)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("layer 1 (linear) has a weight of shape [8, 16]")
                && e.contains("whatever the batch size"),
            "{e}"
        );
    }
}
