// The sum over a workgroup that the per-channel reductions end with, as a
// tree in workgroup memory: for devices without subgroup operations. The
// host puts this (or workgroup_sum_subgroups.wgsl, with the same names) in
// front of each module that reduces (src/gpu/workgroup_sum.rs).

// A reducing entry point's builtins.
struct Invocation {
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
}

// The reducing kernels' workgroup size.
const WG: u32 = 256u;
var<workgroup> sum_partial: array<vec2<f32>, WG>;

// `value` summed over the workgroup's WG invocations, returned to each of
// them; call it in workgroup-uniform control flow. Adds in a fixed order.
fn workgroup_sum(id: Invocation, value: vec2<f32>) -> vec2<f32> {
    let lid = id.lid.x;
    sum_partial[lid] = value;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if lid < half {
            sum_partial[lid] += sum_partial[lid + half];
        }
        workgroupBarrier();
    }
    let total = sum_partial[0];
    // The next call may write sum_partial once every invocation has read it.
    workgroupBarrier();
    return total;
}
