//! The sum over a workgroup that the per-channel reductions (batchnorm's
//! statistics and sums, `channel_sum`, the loss totals) end with: by
//! subgroup operations where the device has them
//! (`shaders/workgroup_sum_subgroups.wgsl`), else as a tree in workgroup
//! memory (`shaders/workgroup_sum.wgsl`). Both define the same names, and
//! the chosen one is put in front of each module that reduces.

use std::sync::OnceLock;

use super::context::GpuContext;
use super::modules::ModuleSource;

const TREE: &str = include_str!("../../shaders/workgroup_sum.wgsl");
const SUBGROUPS: &str = include_str!("../../shaders/workgroup_sum_subgroups.wgsl");

/// A shader module that calls `workgroup_sum`, in both versions (each
/// joined once, when first asked for).
pub struct SummingModule {
    family: &'static str,
    body: &'static str,
    with_tree: OnceLock<String>,
    with_subgroups: OnceLock<String>,
}

impl SummingModule {
    /// The module of family `family` whose source is `body`.
    pub const fn new(family: &'static str, body: &'static str) -> Self {
        Self {
            family,
            body,
            with_tree: OnceLock::new(),
            with_subgroups: OnceLock::new(),
        }
    }

    /// The module for `ctx`'s device.
    pub fn module(&'static self, ctx: &GpuContext) -> ModuleSource {
        self.version(ctx.has_subgroups())
    }

    /// The module summing by subgroup operations, or as a tree in
    /// workgroup memory.
    pub fn version(&'static self, subgroups: bool) -> ModuleSource {
        let (joined, sum) = if subgroups {
            (&self.with_subgroups, SUBGROUPS)
        } else {
            (&self.with_tree, TREE)
        };
        ModuleSource {
            family: self.family,
            source: joined.get_or_init(|| format!("{sum}\n{}", self.body)),
        }
    }
}
