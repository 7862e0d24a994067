// Sums over the outer dimension of x: (outer, C, inner).
//
// channel_sum — the bias gradients db[o] = Σ_{n, s} dY[n, o, s]:
//   out[c] = Σ_{o < outer, i < inner} x[(o·C + c)·inner + i]
// slice_sum (inner = 1) — adds `outer` partial results slice by slice:
//   out[c] = Σ_{o < outer} x[o·C + c]
//
// channel_sum:
// One workgroup per channel. Each invocation sums a fixed strided subset, then
// workgroup_sum (workgroup_sum.wgsl or its subgroup twin, put in front of this
// module) adds the partial sums: the order of additions is fixed, so results
// are the same run to run (no atomics).

struct Params {
    outer: u32,
    channels: u32,
    inner: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn channel_sum(id: Invocation) {
    // Uniform across the workgroup, so the early return keeps barriers uniform.
    let c = id.wid.x + id.wid.y * id.nwg.x;
    let lid = id.lid;
    if c >= p.channels {
        return;
    }
    // Element e = o·inner + i, stepped by WG with running (o, i): no
    // division per element.
    let count = p.outer * p.inner;
    let step_o = WG / p.inner;
    let step_i = WG % p.inner;
    var o = lid.x / p.inner;
    var i = lid.x % p.inner;
    var sum = 0.0;
    for (var e = lid.x; e < count; e += WG) {
        sum += x[(o * p.channels + c) * p.inner + i];
        o += step_o;
        i += step_i;
        if i >= p.inner {
            i -= p.inner;
            o += 1u;
        }
    }
    let total = workgroup_sum(id, vec2<f32>(sum, 0.0)).x;
    if lid.x == 0u {
        out[c] = total;
    }
}

@compute @workgroup_size(256)
fn slice_sum(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let c = (wid.x + wid.y * nwg.x) * WG + lid.x;
    if c >= p.channels {
        return;
    }
    var sum = 0.0;
    for (var o = 0u; o < p.outer; o++) {
        sum += x[o * p.channels + c];
    }
    out[c] = sum;
}

// slice_sum over vec4s, for C a multiple of 4 (channels counts vec4s): each
// invocation adds 4 neighbouring columns with one load per slice where
// slice_sum makes four (each a loop over the lanes on lavapipe), in the
// same order, so the same sums.
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> out4: array<vec4<f32>>;

@compute @workgroup_size(256)
fn slice_sum4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let c = (wid.x + wid.y * nwg.x) * WG + lid.x;
    if c >= p.channels {
        return;
    }
    var sum = vec4<f32>(0.0);
    for (var o = 0u; o < p.outer; o++) {
        sum += x4[o * p.channels + c];
    }
    out4[c] = sum;
}
