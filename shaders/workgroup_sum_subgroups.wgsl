// The sum over a workgroup that the per-channel reductions end with, by
// subgroup operations: each subgroup adds its values across its lanes
// (subgroupAdd) and leaves the total in workgroup memory; then every
// subgroup adds those totals the same way, each lane a strided few. One
// barrier instead of a tree's log2(WG). The twin of workgroup_sum.wgsl, for
// devices with subgroups.

struct Invocation {
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_id) subgroup: u32,
    @builtin(num_subgroups) subgroups: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) lanes: u32,
}

const WG: u32 = 256u;
// One total per subgroup (at most WG of them).
var<workgroup> sum_partial: array<vec2<f32>, WG>;

fn workgroup_sum(id: Invocation, value: vec2<f32>) -> vec2<f32> {
    let own = subgroupAdd(value);
    if id.lane == 0u {
        sum_partial[id.subgroup] = own;
    }
    workgroupBarrier();
    var totals = vec2<f32>(0.0);
    for (var s = id.lane; s < id.subgroups; s += id.lanes) {
        totals += sum_partial[s];
    }
    let total = subgroupAdd(totals);
    workgroupBarrier();
    return total;
}
