//! The sum over a workgroup that the per-channel reductions (batchnorm's
//! statistics and sums, `channel_sum`, the loss totals) end with: by
//! subgroup operations where the device has them
//! (`shaders/workgroup_sum_subgroups.wgsl`), else as a tree in workgroup
//! memory (`shaders/workgroup_sum.wgsl`). Both define the same names, and
//! the chosen one is put in front of each module that reduces.

use std::sync::OnceLock;

use super::context::GpuContext;

const TREE: &str = include_str!("../../shaders/workgroup_sum.wgsl");
const SUBGROUPS: &str = include_str!("../../shaders/workgroup_sum_subgroups.wgsl");

/// A shader module that calls `workgroup_sum`, in both versions (each
/// joined once, when first asked for).
pub struct SummingModule {
    body: &'static str,
    with_tree: OnceLock<String>,
    with_subgroups: OnceLock<String>,
}

impl SummingModule {
    /// The module whose source is `body`.
    pub const fn new(body: &'static str) -> Self {
        Self {
            body,
            with_tree: OnceLock::new(),
            with_subgroups: OnceLock::new(),
        }
    }

    /// The module's whole source for `ctx`'s device.
    pub fn source(&'static self, ctx: &GpuContext) -> &'static str {
        self.version(ctx.has_subgroups())
    }

    /// The module's whole source summing by subgroup operations, or as a
    /// tree in workgroup memory.
    pub fn version(&'static self, subgroups: bool) -> &'static str {
        let (joined, sum) = if subgroups {
            (&self.with_subgroups, SUBGROUPS)
        } else {
            (&self.with_tree, TREE)
        };
        joined.get_or_init(|| format!("{sum}\n{}", self.body))
    }
}
