//! The adapter's multiply-add throughput in registers
//! (`shaders/peak.wgsl`): the ceiling no kernel passes, measured so that
//! `wgcnn bench` can say how close each GEMM comes to what the device can
//! do at all.

use std::fmt::Write;
use std::sync::OnceLock;

use super::context::{GpuBuffer, GpuContext, KernelSpec, Params, grid};
use super::modules::ModuleSource;

const HEADER: &str = include_str!("../../shaders/peak.wgsl");

/// Independent vec4 chains per invocation.
pub const CHAINS: usize = 16;
/// Steps of every chain per loop iteration, written out.
const STEPS: usize = 4;

/// Floating-point operations one invocation does per loop iteration: each
/// chain's steps on four lanes, a multiply and an add each.
pub const FLOPS_PER_ITERATION: u64 = (CHAINS * STEPS * 4 * 2) as u64;

/// Chain `c` starts at its invocation's start plus `c / 100`.
pub fn chain_offset(chain: usize) -> f32 {
    chain as f32 / 100.0
}

/// The module: the header, then the kernel written out (generated once).
pub(super) fn module() -> ModuleSource {
    ModuleSource {
        family: "peak",
        source: source(),
    }
}

fn source() -> &'static str {
    static SOURCE: OnceLock<String> = OnceLock::new();
    SOURCE.get_or_init(|| {
        let mut s = format!("{HEADER}\n");
        let w = &mut s;
        let _ = writeln!(
            w,
            "@compute @workgroup_size(64)\n\
             fn multiply_adds(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{\n    \
             let index = gid.x + gid.y * nwg.x * 64u;\n    \
             let x = coefficients[0];\n    \
             let y = coefficients[1];\n    \
             let start = vec4<f32>(f32(index % 64u) * 0.015625);"
        );
        for c in 0..CHAINS {
            // The shortest decimal that reads back as the offset: WGSL
            // parses it to the same f32 the host computes.
            let _ = writeln!(w, "    var a{c} = start + {:?};", chain_offset(c));
        }
        let _ = writeln!(w, "    for (var i = 0u; i < p.iterations; i++) {{");
        for _ in 0..STEPS {
            for c in 0..CHAINS {
                let _ = writeln!(w, "        a{c} = fma(a{c}, x, y);");
            }
        }
        let _ = writeln!(w, "    }}");
        // Pairs, then pairs of pairs, ...: the same tree the host's check
        // adds in.
        let mut terms: Vec<String> = (0..CHAINS).map(|c| format!("a{c}")).collect();
        while terms.len() > 1 {
            terms = terms
                .chunks(2)
                .map(|pair| match pair {
                    [a, b] => format!("({a} + {b})"),
                    [a] => a.clone(),
                    _ => unreachable!(),
                })
                .collect();
        }
        let _ = writeln!(w, "    out[index] = {};\n}}", terms[0]);
        s
    })
}

/// Every chain's `x` and `y`: each chain settles at `y / (1 − x)` = 0.5.
pub const COEFFICIENTS: [f32; 2] = [0.5, 0.25];

/// Invocations a measurement runs: enough to fill every core of a large
/// GPU several times over, or every thread of a CPU-like adapter.
pub fn invocations(ctx: &GpuContext) -> usize {
    if ctx.is_software() { 1 << 12 } else { 1 << 20 }
}

/// The buffers one measurement uses: the coefficients, and one vec4 out
/// per invocation.
pub struct PeakBuffers {
    coefficients: GpuBuffer,
    /// Each invocation's sum of its [`CHAINS`] chains.
    pub out: GpuBuffer,
    invocations: usize,
}

impl PeakBuffers {
    /// Buffers for `invocations` invocations.
    pub fn new(ctx: &GpuContext, invocations: usize) -> Self {
        let [x, y] = COEFFICIENTS;
        let coefficients: Vec<f32> = [[x; 4], [y; 4]].concat();
        Self {
            coefficients: ctx
                .storage_buffer_with(bytemuck::cast_slice(&coefficients), "peak.coefficients"),
            out: ctx.storage_buffer(16 * invocations as u64, "peak.out"),
            invocations,
        }
    }

    /// Records one run of `iterations` loop iterations per invocation:
    /// `invocations · iterations ·` [`FLOPS_PER_ITERATION`] operations.
    pub fn record(&self, ctx: &GpuContext, iterations: u32) {
        let kernel = ctx.kernel(&KernelSpec::new(module(), "multiply_adds", 1, 1));
        ctx.dispatch(
            &kernel,
            &Params::new().u32(iterations as usize),
            &[&self.coefficients],
            &[&self.out],
            grid(self.invocations, 64),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_writes_out_every_step_of_every_chain() {
        let source = source();
        let steps = source.matches("= fma(").count();
        assert_eq!(steps, CHAINS * STEPS);
        assert!(source.contains("var a15 = start + 0.15;"), "{source}");
        assert!(
            source.contains("out[index] = ((((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)))"),
            "{source}"
        );
    }
}
