// Max and average pooling over NCHW input with a k×k window, stride s and
// padding p on both axes; output (N, C, OH, OW). Window (oh, ow) covers rows
// oh·s − p .. oh·s − p + k − 1 and the matching columns.
//
//   maxpool  y = max over the window (padding is −∞); argmax = h·W + w of the
//            first maximum in row-major window order (strict > keeps the first)
//            dx[h, w] = Σ dy[oh, ow] over windows whose argmax is (h, w)
//   avgpool  y = Σ window / k² (padding counts as zeros, PyTorch's default)
//            dx[h, w] = Σ dy[oh, ow] / k² over windows containing (h, w)
//
// Both backwards are gathers over the windows that contain (h, w):
// deterministic and free of float atomics.

struct Params {
    batch: u32,
    channels: u32,
    height: u32,
    width: u32,
    kernel: u32,
    stride: u32,
    padding: u32,
    out_h: u32,
    out_w: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

fn element(wid: vec3<u32>, lid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid.x;
}

// First and one-past-last output index whose window covers input index `x`
// along an axis with `out_len` outputs: o·s − p ≤ x ≤ o·s − p + k − 1.
fn covering(x: u32, out_len: u32) -> vec2<u32> {
    let hi = (x + p.padding) / p.stride;
    let reach = i32(x + p.padding) - i32(p.kernel) + 1;
    var lo = 0u;
    if reach > 0 {
        lo = (u32(reach) + p.stride - 1u) / p.stride;
    }
    return vec2<u32>(lo, min(hi + 1u, out_len));
}

// ---- max pooling forward: one output per invocation ----
@group(0) @binding(1) var<storage, read> maxf_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> maxf_y: array<f32>;
@group(0) @binding(3) var<storage, read_write> maxf_argmax: array<u32>;

@compute @workgroup_size(256)
fn maxpool_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(wid, lid, nwg);
    if i >= p.batch * p.channels * p.out_h * p.out_w {
        return;
    }
    let ow = i % p.out_w;
    let oh = (i / p.out_w) % p.out_h;
    let plane = i / (p.out_w * p.out_h);
    let base = plane * p.height * p.width;
    var best = 0.0;
    var best_at = 0u;
    var found = false;
    for (var ki = 0u; ki < p.kernel; ki++) {
        let h = i32(oh * p.stride + ki) - i32(p.padding);
        if h < 0 || h >= i32(p.height) {
            continue;
        }
        for (var kj = 0u; kj < p.kernel; kj++) {
            let w = i32(ow * p.stride + kj) - i32(p.padding);
            if w < 0 || w >= i32(p.width) {
                continue;
            }
            let at = u32(h) * p.width + u32(w);
            let v = maxf_x[base + at];
            if !found || v > best {
                best = v;
                best_at = at;
                found = true;
            }
        }
    }
    maxf_y[i] = best;
    maxf_argmax[i] = best_at;
}

// ---- max pooling backward: one input element per invocation ----
@group(0) @binding(1) var<storage, read> maxb_dy: array<f32>;
@group(0) @binding(2) var<storage, read> maxb_argmax: array<u32>;
@group(0) @binding(3) var<storage, read_write> maxb_dx: array<f32>;

@compute @workgroup_size(256)
fn maxpool_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(wid, lid, nwg);
    if i >= p.batch * p.channels * p.height * p.width {
        return;
    }
    let w = i % p.width;
    let h = (i / p.width) % p.height;
    let plane = i / (p.width * p.height);
    let at = h * p.width + w;
    let rows = covering(h, p.out_h);
    let cols = covering(w, p.out_w);
    var sum = 0.0;
    for (var oh = rows.x; oh < rows.y; oh++) {
        for (var ow = cols.x; ow < cols.y; ow++) {
            let o = (plane * p.out_h + oh) * p.out_w + ow;
            if maxb_argmax[o] == at {
                sum += maxb_dy[o];
            }
        }
    }
    maxb_dx[i] = sum;
}

// ---- average pooling forward ----
@group(0) @binding(1) var<storage, read> avgf_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> avgf_y: array<f32>;

@compute @workgroup_size(256)
fn avgpool_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(wid, lid, nwg);
    if i >= p.batch * p.channels * p.out_h * p.out_w {
        return;
    }
    let ow = i % p.out_w;
    let oh = (i / p.out_w) % p.out_h;
    let plane = i / (p.out_w * p.out_h);
    let base = plane * p.height * p.width;
    var sum = 0.0;
    for (var ki = 0u; ki < p.kernel; ki++) {
        let h = i32(oh * p.stride + ki) - i32(p.padding);
        if h < 0 || h >= i32(p.height) {
            continue;
        }
        for (var kj = 0u; kj < p.kernel; kj++) {
            let w = i32(ow * p.stride + kj) - i32(p.padding);
            if w >= 0 && w < i32(p.width) {
                sum += avgf_x[base + u32(h) * p.width + u32(w)];
            }
        }
    }
    avgf_y[i] = sum / f32(p.kernel * p.kernel);
}

// ---- average pooling backward ----
@group(0) @binding(1) var<storage, read> avgb_dy: array<f32>;
@group(0) @binding(2) var<storage, read_write> avgb_dx: array<f32>;

@compute @workgroup_size(256)
fn avgpool_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(wid, lid, nwg);
    if i >= p.batch * p.channels * p.height * p.width {
        return;
    }
    let w = i % p.width;
    let h = (i / p.width) % p.height;
    let plane = i / (p.width * p.height);
    let rows = covering(h, p.out_h);
    let cols = covering(w, p.out_w);
    var sum = 0.0;
    for (var oh = rows.x; oh < rows.y; oh++) {
        for (var ow = cols.x; ow < cols.y; ow++) {
            sum += avgb_dy[(plane * p.out_h + oh) * p.out_w + ow];
        }
    }
    avgb_dx[i] = sum / f32(p.kernel * p.kernel);
}
