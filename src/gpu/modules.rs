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
    let mut all = vec![
        elementwise::MODULE,
        conv::MODULE,
        gemm_operand::PACK,
        pool::MODULE,
        peak::module(),
        gemm_source::depth4_module(),
    ];
    for subgroups in [false, true] {
        all.push(gemm_source::module(subgroups));
        all.push(gemm_source::by_rows_module(subgroups));
        for summing in [&reduce::SOURCE, &batchnorm::SOURCE, &softmax::SOURCE] {
            all.push(summing.version(subgroups));
        }
    }
    for vectors in [false, true] {
        all.push(optim::module(vectors));
    }
    all.extend(direct_conv::modules());
    all
}
