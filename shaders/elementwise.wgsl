// Elementwise layers: activations and inverted dropout, forward and backward.
//
// Every entry point reads `a` (and `b`) and writes `out`, one element per
// invocation, over `len` elements (relu and leaky relu: one vec4 per
// invocation where `len` is a multiple of 4, the `…4` entry points below).
//
//   relu          y = max(x, 0)                 dx = dy · [x > 0]
//   leaky_relu    y = x > 0 ? x : α·x           dx = dy · (x > 0 ? 1 : α)
//   sigmoid       y = 1 / (1 + e^(−x))          dx = dy · y · (1 − y)
//   tanh          y = tanh(x)                   dx = dy · (1 − y²)
//   dropout       y = x · keep / (1 − p)        dx = dy · keep / (1 − p)
//
// Dropout's keep decision is a counter-based hash of (seed, step, index), the
// same function as `wgcnn::rng::dropout_keep` on the CPU, so the backward
// recomputes the mask instead of storing it.

struct Params {
    len: u32,
    // Negative slope for leaky relu; drop probability p for dropout.
    alpha: f32,
    seed: u32,
    step: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

fn element(wid: vec3<u32>, lid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid.x;
}

// Stable logistic: never exponentiates a large positive number.
fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        return 1.0 / (1.0 + exp(-x));
    }
    let e = exp(x);
    return e / (1.0 + e);
}

// tanh from e^(−2|x|) ≤ 1: no overflow for large |x|, unlike (e^2x − 1)/(e^2x + 1).
fn stable_tanh(x: f32) -> f32 {
    let t = exp(-2.0 * abs(x));
    return sign(x) * (1.0 - t) / (1.0 + t);
}

// lowbias32 integer hash; must match `wgcnn::rng::hash_u32` bit for bit.
fn hash_u32(v: u32) -> u32 {
    var x = v;
    x ^= x >> 16u;
    x *= 0x7feb352du;
    x ^= x >> 15u;
    x *= 0x846ca68bu;
    x ^= x >> 16u;
    return x;
}

fn dropout_scale(index: u32) -> f32 {
    let h = hash_u32(p.seed ^ hash_u32(p.step ^ hash_u32(index)));
    let u = f32(h >> 8u) * (1.0 / 16777216.0);
    if u >= p.alpha {
        return 1.0 / (1.0 - p.alpha);
    }
    return 0.0;
}

// a = x
@compute @workgroup_size(256)
fn relu_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(wid, lid, nwg);
    if i < p.len {
        // Not max(x, 0): that may swallow a NaN; this passes it on like the CPU path.
        let x = a[i];
        out[i] = select(x, 0.0, x <= 0.0);
    }
}

// a = x, b = dy
@compute @workgroup_size(256)
fn relu_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(wid, lid, nwg);
    if i < p.len {
        out[i] = select(0.0, b[i], a[i] > 0.0);
    }
}

// a = x
@compute @workgroup_size(256)
fn leaky_relu_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(wid, lid, nwg);
    if i < p.len {
        let x = a[i];
        out[i] = select(p.alpha * x, x, x > 0.0);
    }
}

// a = x, b = dy
@compute @workgroup_size(256)
fn leaky_relu_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(wid, lid, nwg);
    if i < p.len {
        out[i] = select(p.alpha * b[i], b[i], a[i] > 0.0);
    }
}

// a = x
@compute @workgroup_size(256)
fn sigmoid_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(wid, lid, nwg);
    if i < p.len {
        out[i] = sigmoid(a[i]);
    }
}

// a = y, b = dy
@compute @workgroup_size(256)
fn sigmoid_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(wid, lid, nwg);
    if i < p.len {
        let y = a[i];
        out[i] = b[i] * y * (1.0 - y);
    }
}

// a = x
@compute @workgroup_size(256)
fn tanh_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(wid, lid, nwg);
    if i < p.len {
        out[i] = stable_tanh(a[i]);
    }
}

// a = y, b = dy
@compute @workgroup_size(256)
fn tanh_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(wid, lid, nwg);
    if i < p.len {
        let y = a[i];
        out[i] = b[i] * (1.0 - y * y);
    }
}

// a = x (forward) or dy (backward): the same scaling by keep / (1 − p).
@compute @workgroup_size(256)
fn dropout(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(wid, lid, nwg);
    if i < p.len {
        out[i] = a[i] * dropout_scale(i);
    }
}

// ---- relu and leaky relu by vec4, for lengths that are whole vec4s ----
// One load per operand per four values: on CPU-like adapters (lavapipe) each
// storage load or store is a loop over the lanes. The same operations per
// value as the kernels above. `len` stays the number of values.
@group(0) @binding(1) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> out4: array<vec4<f32>>;

// a = x
@compute @workgroup_size(256)
fn relu_forward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(wid, lid, nwg);
    if i < p.len / 4u {
        let x = a4[i];
        out4[i] = select(x, vec4<f32>(0.0), x <= vec4<f32>(0.0));
    }
}

// a = x, b = dy
@compute @workgroup_size(256)
fn relu_backward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(wid, lid, nwg);
    if i < p.len / 4u {
        out4[i] = select(vec4<f32>(0.0), b4[i], a4[i] > vec4<f32>(0.0));
    }
}

// a = x
@compute @workgroup_size(256)
fn leaky_relu_forward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(wid, lid, nwg);
    if i < p.len / 4u {
        let x = a4[i];
        out4[i] = select(p.alpha * x, x, x > vec4<f32>(0.0));
    }
}

// a = x, b = dy
@compute @workgroup_size(256)
fn leaky_relu_backward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(wid, lid, nwg);
    if i < p.len / 4u {
        let dy = b4[i];
        out4[i] = select(p.alpha * dy, dy, a4[i] > vec4<f32>(0.0));
    }
}
