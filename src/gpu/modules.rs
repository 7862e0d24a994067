//! Every WGSL module the GPU path can build, in every version: what a check
//! must see to cover them all. A device builds only the versions it uses
//! (with or without subgroups, the direct convolution's shapes its layers
//! ask for), so a run on one device cannot reach the rest;
//! `tests/portability.rs` translates each module here for Metal, DirectX 12
//! and OpenGL, whose drivers the CI machine lacks, and checks that a run's
//! kernels all come from this list.

use super::{
    batchnorm, conv, direct_conv, elementwise, gemm_operand, gemm_source, optim, peak, pool,
    reduce, softmax,
};

/// One module: the family its kernels are cached under, and its whole
/// source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ModuleSource {
    /// The family name ([`super::context::KernelSpec::family`]).
    pub family: &'static str,
    /// The WGSL source.
    pub source: &'static str,
}

/// Every module, each version once (about 1,200, most of them the direct
/// convolution's generated shapes). Generated sources are built on the
/// first call.
pub fn every_module() -> Vec<ModuleSource> {
    let one = |family, source| ModuleSource { family, source };
    let mut all = vec![
        one("elementwise", elementwise::SOURCE),
        one("im2col", conv::SOURCE),
        one("pack", gemm_operand::PACK_SOURCE),
        one("pool", pool::SOURCE),
        one("peak", peak::source()),
        one("gemm_depth4", gemm_source::depth4_source()),
    ];
    for subgroups in [false, true] {
        all.push(one("gemm", gemm_source::source(subgroups)));
        all.push(one("gemm_by_rows", gemm_source::by_rows_source(subgroups)));
        for (family, summing) in [
            ("reduce", &reduce::SOURCE),
            ("batchnorm", &batchnorm::SOURCE),
            ("softmax_xent", &softmax::SOURCE),
        ] {
            all.push(one(family, summing.version(subgroups)));
        }
    }
    for vectors in [false, true] {
        let (family, source) = optim::module(vectors);
        all.push(one(family, source));
    }
    all.extend(direct_conv::modules());
    all
}
