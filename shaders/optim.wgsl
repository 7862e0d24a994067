// Optimizer update rules, as PyTorch's torch.optim defines them (dampening 0,
// amsgrad off, maximize off, centered rmsprop off, adagrad lr decay 0).
//
// Every entry point reads `grad` and updates `param` (and the rule's state)
// in place, one `Value` per invocation, over `len` of them. The host
// declares `Value` before this source: `f32`, or `vec4<f32>` where the
// length is a multiple of 4 (a model's flat buffers), which takes a quarter
// of the loads and stores (on lavapipe each is a loop over the SIMD lanes)
// for the same arithmetic on every element. With
// g = grad + wd·p (L2 weight decay, every rule but adamw):
//
//   sgd        p ← p − lr·g
//   momentum   v ← μ·v + g                  p ← p − lr·v
//   nesterov   v ← μ·v + g                  p ← p − lr·(g + μ·v)
//   adagrad    s ← s + g²                   p ← p − lr·g/(√s + ε)
//   rmsprop    s ← α·s + (1 − α)·g²         p ← p − lr·g/(√s + ε)
//   adam       m ← β₁·m + (1 − β₁)·g
//              v ← β₂·v + (1 − β₂)·g²       p ← p − lr·m̂/(√v̂ + ε)
//   adamw      p ← p·(1 − lr·wd), then adam with g = grad
//
// where m̂ = m/(1 − β₁ᵗ) and v̂ = v/(1 − β₂ᵗ). The values that change every
// step — lr, 1 − β₁ᵗ, 1 − β₂ᵗ, computed on the host in f32 — come in a small
// storage buffer written at the start of the step, so the uniform (and the
// cached bind group holding it) stays the same from step to step.
//
// Bindings: 1 = grad, 2 = step values (read); 3 = param, 4 = first state
// (v, s or m), 5 = second state (adam's v), all read-write. Each entry point
// uses only the buffers its rule has.

struct Params {
    // Values (not elements) to update.
    len: u32,
    weight_decay: f32,
    // μ for momentum and nesterov.
    momentum: f32,
    // α for rmsprop.
    alpha: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> u: Params;
@group(0) @binding(1) var<storage, read> grad: array<Value>;
// [lr, 1 − β₁ᵗ, 1 − β₂ᵗ]
@group(0) @binding(2) var<storage, read> step_values: array<f32>;
@group(0) @binding(3) var<storage, read_write> param: array<Value>;
@group(0) @binding(4) var<storage, read_write> state0: array<Value>;
@group(0) @binding(5) var<storage, read_write> state1: array<Value>;

fn element(wid: vec3<u32>, lid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid.x;
}

// The gradient with L2 weight decay added.
fn l2_grad(i: u32) -> Value {
    if u.weight_decay == 0.0 {
        return grad[i];
    }
    return grad[i] + u.weight_decay * param[i];
}

@compute @workgroup_size(256)
fn sgd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(wid, lid, nwg);
    if i < u.len {
        let g = l2_grad(i);
        param[i] = param[i] - step_values[0] * g;
    }
}

@compute @workgroup_size(256)
fn momentum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(wid, lid, nwg);
    if i < u.len {
        let g = l2_grad(i);
        let v = u.momentum * state0[i] + g;
        state0[i] = v;
        param[i] = param[i] - step_values[0] * v;
    }
}

@compute @workgroup_size(256)
fn nesterov(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(wid, lid, nwg);
    if i < u.len {
        let g = l2_grad(i);
        let v = u.momentum * state0[i] + g;
        state0[i] = v;
        param[i] = param[i] - step_values[0] * (g + u.momentum * v);
    }
}

@compute @workgroup_size(256)
fn adagrad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(wid, lid, nwg);
    if i < u.len {
        let g = l2_grad(i);
        let s = state0[i] + g * g;
        state0[i] = s;
        param[i] = param[i] - step_values[0] * g / (sqrt(s) + u.eps);
    }
}

@compute @workgroup_size(256)
fn rmsprop(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(wid, lid, nwg);
    if i < u.len {
        let g = l2_grad(i);
        let s = u.alpha * state0[i] + (1.0 - u.alpha) * g * g;
        state0[i] = s;
        param[i] = param[i] - step_values[0] * g / (sqrt(s) + u.eps);
    }
}

// The adam step on parameter value `p` with gradient `g`; writes m, v and p.
fn adam_step(i: u32, p: Value, g: Value) {
    let m = u.beta1 * state0[i] + (1.0 - u.beta1) * g;
    let v = u.beta2 * state1[i] + (1.0 - u.beta2) * g * g;
    state0[i] = m;
    state1[i] = v;
    let m_hat = m / step_values[1];
    let v_hat = v / step_values[2];
    param[i] = p - step_values[0] * m_hat / (sqrt(v_hat) + u.eps);
}

@compute @workgroup_size(256)
fn adam(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(wid, lid, nwg);
    if i < u.len {
        adam_step(i, param[i], l2_grad(i));
    }
}

@compute @workgroup_size(256)
fn adamw(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(wid, lid, nwg);
    if i < u.len {
        adam_step(i, param[i] * (1.0 - step_values[0] * u.weight_decay), grad[i]);
    }
}
