// Batch normalisation over x viewed as (N, C, S): statistics per channel c over
// the M = N·S values x[n, c, s]. (N, D) input is S = 1 (batchnorm1d);
// (N, C, H, W) is S = H·W (batchnorm2d).
//
// Forward (training):
//   μ = Σ x / M,  σ² = Σ (x − μ)² / M            (two passes, biased variance)
//   invstd = 1/√(σ² + eps),  x̂ = (x − μ)·invstd,  y = γ·x̂ + β
//   running_mean ← (1 − m)·running_mean + m·μ
//   running_var  ← (1 − m)·running_var  + m·σ²·M/(M − 1)   (unbiased)
// Forward (evaluation): μ, invstd from the running statistics.
// Backward:
//   dβ = Σ dy,  dγ = Σ dy·x̂
//   training:   dx = γ·invstd/M · (M·dy − dβ − x̂·dγ)
//   evaluation: dx = γ·invstd·dy
//
// Per-channel sums take one workgroup per channel, each invocation summing a
// fixed strided subset, then workgroup_sum (workgroup_sum.wgsl or its
// subgroup twin, put in front of this module): deterministic, no atomics.

struct Params {
    batch: u32,
    channels: u32,
    spatial: u32,
    eps: f32,
    momentum: f32,
    training: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// Indices are decoded once per invocation and then walked (integer division
// per element is scalarised on CPU-like adapters).

// The values of channel c an invocation `lid` of a per-channel workgroup
// reads: e = lid, lid + WG, … of the channel's M, each at index
// (n·C + c)·S + s with (n, s) = (e / S, e % S) advanced by WG.
struct ChannelWalk {
    at: u32,
    n: u32,
    s: u32,
}

// `plane` is S, or S / 4 for the vec4 kernels (which read whole vec4s).
fn channel_walk(c: u32, lid: u32, plane: u32) -> ChannelWalk {
    let n = lid / plane;
    let s = lid % plane;
    return ChannelWalk((n * p.channels + c) * plane + s, n, s);
}

fn channel_step(w: ptr<function, ChannelWalk>, c: u32, plane: u32) {
    (*w).n += WG / plane;
    (*w).s += WG % plane;
    if (*w).s >= plane {
        (*w).s -= plane;
        (*w).n += 1u;
    }
    (*w).at = ((*w).n * p.channels + c) * plane + (*w).s;
}

// The sum of a vec4's values, in a fixed order.
fn total4(v: vec4<f32>) -> f32 {
    return (v.x + v.y) + (v.z + v.w);
}

// One value per invocation, over a folded grid.
fn element(wid: vec3<u32>, lid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid.x;
}

// Elementwise kernels: each invocation takes RUN consecutive elements from
// `first_element`, walking their channel along.
const RUN: u32 = 8u;

fn first_element(wid: vec3<u32>, lid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return element(wid, lid, nwg) * RUN;
}

// Moves (channel c, position s) to the next element of the (N, C, S) view.
fn next_element(c: ptr<function, u32>, s: ptr<function, u32>) {
    *s += 1u;
    if *s == p.spatial {
        *s = 0u;
        *c += 1u;
        if *c == p.channels {
            *c = 0u;
        }
    }
}

// ---- training statistics: one workgroup per channel ----
@group(0) @binding(1) var<storage, read> stats_x: array<f32>;
@group(0) @binding(2) var<storage, read> stats_running_mean: array<f32>;
@group(0) @binding(3) var<storage, read> stats_running_var: array<f32>;
@group(0) @binding(4) var<storage, read_write> stats_mean: array<f32>;
@group(0) @binding(5) var<storage, read_write> stats_invstd: array<f32>;
@group(0) @binding(6) var<storage, read_write> stats_new_mean: array<f32>;
@group(0) @binding(7) var<storage, read_write> stats_new_var: array<f32>;

// Adds the workgroup's sums of squares and stores channel c's statistics
// and running statistics.
fn finish_statistics(id: Invocation, c: u32, mean: f32, squares: f32) {
    let total = workgroup_sum(id, vec2<f32>(squares, 0.0)).x;
    if id.lid.x == 0u {
        let count = p.batch * p.spatial;
        let var_biased = total / f32(count);
        let var_unbiased = total / f32(count - 1u);
        stats_mean[c] = mean;
        stats_invstd[c] = 1.0 / sqrt(var_biased + p.eps);
        stats_new_mean[c] = (1.0 - p.momentum) * stats_running_mean[c] + p.momentum * mean;
        stats_new_var[c] = (1.0 - p.momentum) * stats_running_var[c] + p.momentum * var_unbiased;
    }
}

@compute @workgroup_size(WG)
fn batch_statistics(id: Invocation) {
    let c = id.wid.x + id.wid.y * id.nwg.x;
    if c >= p.channels {
        return;
    }
    let count = p.batch * p.spatial;
    var sum = 0.0;
    var walk = channel_walk(c, id.lid.x, p.spatial);
    for (var e = id.lid.x; e < count; e += WG) {
        sum += stats_x[walk.at];
        channel_step(&walk, c, p.spatial);
    }
    let mean = workgroup_sum(id, vec2<f32>(sum, 0.0)).x / f32(count);
    var squares = 0.0;
    walk = channel_walk(c, id.lid.x, p.spatial);
    for (var e = id.lid.x; e < count; e += WG) {
        let d = stats_x[walk.at] - mean;
        squares += d * d;
        channel_step(&walk, c, p.spatial);
    }
    finish_statistics(id, c, mean, squares);
}

// batch_statistics by vec4 (S a multiple of 4; see normalize4): each
// invocation sums four values per load, adding its vec4's lanes at the end.
@group(0) @binding(1) var<storage, read> stats_x4: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn batch_statistics4(id: Invocation) {
    let c = id.wid.x + id.wid.y * id.nwg.x;
    if c >= p.channels {
        return;
    }
    let count = p.batch * p.spatial;
    let plane = p.spatial / 4u;
    var sum = vec4<f32>(0.0);
    var walk = channel_walk(c, id.lid.x, plane);
    for (var e = id.lid.x; e < count / 4u; e += WG) {
        sum += stats_x4[walk.at];
        channel_step(&walk, c, plane);
    }
    let mean = workgroup_sum(id, vec2<f32>(total4(sum), 0.0)).x / f32(count);
    var squares = vec4<f32>(0.0);
    walk = channel_walk(c, id.lid.x, plane);
    for (var e = id.lid.x; e < count / 4u; e += WG) {
        let d = stats_x4[walk.at] - vec4<f32>(mean);
        squares += d * d;
        channel_step(&walk, c, plane);
    }
    finish_statistics(id, c, mean, total4(squares));
}

// ---- evaluation statistics: μ = running mean, invstd from the running variance ----
@group(0) @binding(1) var<storage, read> eval_running_mean: array<f32>;
@group(0) @binding(2) var<storage, read> eval_running_var: array<f32>;
@group(0) @binding(3) var<storage, read_write> eval_mean: array<f32>;
@group(0) @binding(4) var<storage, read_write> eval_invstd: array<f32>;

@compute @workgroup_size(256)
fn running_statistics(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let c = element(wid, lid, nwg);
    if c < p.channels {
        eval_mean[c] = eval_running_mean[c];
        eval_invstd[c] = 1.0 / sqrt(eval_running_var[c] + p.eps);
    }
}

// ---- y = γ·(x − μ)·invstd + β, one element per invocation ----
@group(0) @binding(1) var<storage, read> norm_x: array<f32>;
@group(0) @binding(2) var<storage, read> norm_mean: array<f32>;
@group(0) @binding(3) var<storage, read> norm_invstd: array<f32>;
@group(0) @binding(4) var<storage, read> norm_gamma: array<f32>;
@group(0) @binding(5) var<storage, read> norm_beta: array<f32>;
@group(0) @binding(6) var<storage, read_write> norm_y: array<f32>;

@compute @workgroup_size(256)
fn normalize(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let first = first_element(wid, lid, nwg);
    let total = p.batch * p.channels * p.spatial;
    if first >= total {
        return;
    }
    var c = (first / p.spatial) % p.channels;
    var s = first % p.spatial;
    for (var i = first; i < min(first + RUN, total); i++) {
        norm_y[i] = norm_gamma[c] * (norm_x[i] - norm_mean[c]) * norm_invstd[c] + norm_beta[c];
        next_element(&c, &s);
    }
}

// The elementwise kernels by vec4, where every channel's plane is whole
// vec4s (S a multiple of 4): one load of x (and dy) per four values, and the
// channel's factors loaded once per four. On CPU-like adapters (lavapipe)
// each load is a loop over the lanes, so this is the kernel's cost. The same
// float operations per value as the scalar kernels.
@group(0) @binding(1) var<storage, read> norm_x4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> norm_y4: array<vec4<f32>>;

// Moves (channel c, position s) four elements on (S a multiple of 4).
fn next_vec4(c: ptr<function, u32>, s: ptr<function, u32>) {
    *s += 4u;
    if *s == p.spatial {
        *s = 0u;
        *c += 1u;
        if *c == p.channels {
            *c = 0u;
        }
    }
}

@compute @workgroup_size(256)
fn normalize4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let first = first_element(wid, lid, nwg);
    let total = p.batch * p.channels * p.spatial;
    if first >= total {
        return;
    }
    var c = (first / p.spatial) % p.channels;
    var s = first % p.spatial;
    for (var i = first; i < min(first + RUN, total); i += 4u) {
        let at = i / 4u;
        norm_y4[at] = vec4<f32>(norm_gamma[c]) * (norm_x4[at] - vec4<f32>(norm_mean[c])) * vec4<f32>(norm_invstd[c]) + vec4<f32>(norm_beta[c]);
        next_vec4(&c, &s);
    }
}

// ---- backward sums dβ = Σ dy, dγ = Σ dy·x̂: one workgroup per channel ----
@group(0) @binding(1) var<storage, read> sums_x: array<f32>;
@group(0) @binding(2) var<storage, read> sums_dy: array<f32>;
@group(0) @binding(3) var<storage, read> sums_mean: array<f32>;
@group(0) @binding(4) var<storage, read> sums_invstd: array<f32>;
@group(0) @binding(5) var<storage, read_write> sums_dgamma: array<f32>;
@group(0) @binding(6) var<storage, read_write> sums_dbeta: array<f32>;

// Adds the workgroup's sums and stores channel c's dγ and dβ.
fn finish_sums(id: Invocation, c: u32, dgamma: f32, dbeta: f32) {
    let total = workgroup_sum(id, vec2<f32>(dgamma, dbeta));
    if id.lid.x == 0u {
        sums_dgamma[c] = total.x;
        sums_dbeta[c] = total.y;
    }
}

@compute @workgroup_size(WG)
fn backward_sums(id: Invocation) {
    let c = id.wid.x + id.wid.y * id.nwg.x;
    if c >= p.channels {
        return;
    }
    let count = p.batch * p.spatial;
    let mean = sums_mean[c];
    let invstd = sums_invstd[c];
    var dbeta = 0.0;
    var dgamma = 0.0;
    var walk = channel_walk(c, id.lid.x, p.spatial);
    for (var e = id.lid.x; e < count; e += WG) {
        let i = walk.at;
        let dy = sums_dy[i];
        dbeta += dy;
        dgamma += dy * (sums_x[i] - mean) * invstd;
        channel_step(&walk, c, p.spatial);
    }
    finish_sums(id, c, dgamma, dbeta);
}

// backward_sums by vec4 (see batch_statistics4).
@group(0) @binding(1) var<storage, read> sums_x4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> sums_dy4: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn backward_sums4(id: Invocation) {
    let c = id.wid.x + id.wid.y * id.nwg.x;
    if c >= p.channels {
        return;
    }
    let count = p.batch * p.spatial;
    let plane = p.spatial / 4u;
    let mean = sums_mean[c];
    let invstd = sums_invstd[c];
    var dbeta = vec4<f32>(0.0);
    var dgamma = vec4<f32>(0.0);
    var walk = channel_walk(c, id.lid.x, plane);
    for (var e = id.lid.x; e < count / 4u; e += WG) {
        let i = walk.at;
        let dy = sums_dy4[i];
        dbeta += dy;
        dgamma += dy * (sums_x4[i] - vec4<f32>(mean)) * invstd;
        channel_step(&walk, c, plane);
    }
    finish_sums(id, c, total4(dgamma), total4(dbeta));
}

// ---- dx, one element per invocation ----
@group(0) @binding(1) var<storage, read> dx_x: array<f32>;
@group(0) @binding(2) var<storage, read> dx_dy: array<f32>;
@group(0) @binding(3) var<storage, read> dx_mean: array<f32>;
@group(0) @binding(4) var<storage, read> dx_invstd: array<f32>;
@group(0) @binding(5) var<storage, read> dx_gamma: array<f32>;
@group(0) @binding(6) var<storage, read> dx_dgamma: array<f32>;
@group(0) @binding(7) var<storage, read> dx_dbeta: array<f32>;
@group(0) @binding(8) var<storage, read_write> dx_out: array<f32>;

@compute @workgroup_size(256)
fn backward_dx(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let first = first_element(wid, lid, nwg);
    let total = p.batch * p.channels * p.spatial;
    if first >= total {
        return;
    }
    let m = f32(p.batch * p.spatial);
    var c = (first / p.spatial) % p.channels;
    var s = first % p.spatial;
    for (var i = first; i < min(first + RUN, total); i++) {
        let scale = dx_gamma[c] * dx_invstd[c];
        if p.training == 0u {
            dx_out[i] = scale * dx_dy[i];
        } else {
            let xhat = (dx_x[i] - dx_mean[c]) * dx_invstd[c];
            dx_out[i] = scale / m * (m * dx_dy[i] - dx_dbeta[c] - xhat * dx_dgamma[c]);
        }
        next_element(&c, &s);
    }
}

// backward_dx by vec4 (see normalize4).
@group(0) @binding(1) var<storage, read> dx_x4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> dx_dy4: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> dx_out4: array<vec4<f32>>;

@compute @workgroup_size(256)
fn backward_dx4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let first = first_element(wid, lid, nwg);
    let total = p.batch * p.channels * p.spatial;
    if first >= total {
        return;
    }
    let m = f32(p.batch * p.spatial);
    var c = (first / p.spatial) % p.channels;
    var s = first % p.spatial;
    for (var i = first; i < min(first + RUN, total); i += 4u) {
        let at = i / 4u;
        let scale = dx_gamma[c] * dx_invstd[c];
        if p.training == 0u {
            dx_out4[at] = scale * dx_dy4[at];
        } else {
            let xhat = (dx_x4[at] - vec4<f32>(dx_mean[c])) * dx_invstd[c];
            dx_out4[at] = scale / m * (m * dx_dy4[at] - vec4<f32>(dx_dbeta[c]) - xhat * dx_dgamma[c]);
        }
        next_vec4(&c, &s);
    }
}
