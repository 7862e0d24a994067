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
// deterministic and free of float atomics. Max pooling whose windows tile the
// input exactly writes each window whole instead (maxpool_backward_tiles).
//
// Grid: x covers the positions of one plane (output positions forward, input
// positions backward), y the N·C planes, walked in a loop past the grid. The
// window size and stride are pipeline constants, so dividing by them folds
// into cheap arithmetic; the one division by the width happens once per
// invocation.

struct Params {
    batch: u32,
    channels: u32,
    height: u32,
    width: u32,
    padding: u32,
    out_h: u32,
    out_w: u32,
}

// Window size and stride: pipeline constants (see the header).
override KERNEL: u32 = 2u;
override STRIDE: u32 = 2u;
// The max-pool backwards can take the gradient through the activation
// before the pool too, from the pooled output y (the activation's output
// at the arg-max): MASK 0 takes dy as it is, 1 relu's dy·(y > 0), 2 leaky
// relu's dy·(y > 0 ? 1 : SLOPE), the same float operations as
// elementwise.wgsl's backwards, so fusing changes no result. Exact for
// activations that keep the sign, which the pooled maximum then shares.
override MASK: u32 = 0u;
override SLOPE: f32 = 0.0;

@group(0) @binding(0) var<uniform> p: Params;

// First and one-past-last output index whose window covers input index `x`
// along an axis with `out_len` outputs: o·s − p ≤ x ≤ o·s − p + k − 1.
fn covering(x: u32, out_len: u32) -> vec2<u32> {
    let hi = (x + p.padding) / STRIDE;
    let reach = i32(x + p.padding) - i32(KERNEL) + 1;
    var lo = 0u;
    if reach > 0 {
        lo = (u32(reach) + STRIDE - 1u) / STRIDE;
    }
    return vec2<u32>(lo, min(hi + 1u, out_len));
}

// ---- max pooling forward: one output position per invocation, every plane ----
@group(0) @binding(1) var<storage, read> maxf_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> maxf_y: array<f32>;
@group(0) @binding(3) var<storage, read_write> maxf_argmax: array<u32>;

@compute @workgroup_size(64)
fn maxpool_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let at_out = gid.x;
    if at_out >= p.out_h * p.out_w {
        return;
    }
    let ow = at_out % p.out_w;
    let oh = at_out / p.out_w;
    for (var plane = gid.y; plane < p.batch * p.channels; plane += nwg.y) {
        let i = plane * p.out_h * p.out_w + at_out;
        let base = plane * p.height * p.width;
        var best = 0.0;
        var best_at = 0u;
        var found = false;
        for (var ki = 0u; ki < KERNEL; ki++) {
            let h = i32(oh * STRIDE + ki) - i32(p.padding);
            if h < 0 || h >= i32(p.height) {
                continue;
            }
            for (var kj = 0u; kj < KERNEL; kj++) {
                let w = i32(ow * STRIDE + kj) - i32(p.padding);
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
}

// dy of a window whose maximum is y, through the activation MASK names.
fn masked(dy: f32, y: f32) -> f32 {
    if MASK == 1u {
        return select(0.0, dy, y > 0.0);
    }
    if MASK == 2u {
        return select(SLOPE * dy, dy, y > 0.0);
    }
    return dy;
}

// ---- max pooling backward: one input position per invocation, every plane ----
// (each backward's `pooled` is y for `masked`; with MASK 0 it is never read.)
@group(0) @binding(1) var<storage, read> maxb_dy: array<f32>;
@group(0) @binding(2) var<storage, read> maxb_argmax: array<u32>;
@group(0) @binding(3) var<storage, read> maxb_pooled: array<f32>;
@group(0) @binding(4) var<storage, read_write> maxb_dx: array<f32>;

@compute @workgroup_size(64)
fn maxpool_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let at_in = gid.x;
    if at_in >= p.height * p.width {
        return;
    }
    let w = at_in % p.width;
    let h = at_in / p.width;
    let rows = covering(h, p.out_h);
    let cols = covering(w, p.out_w);
    for (var plane = gid.y; plane < p.batch * p.channels; plane += nwg.y) {
        let i = plane * p.height * p.width + at_in;
        var sum = 0.0;
        for (var oh = rows.x; oh < rows.y; oh++) {
            for (var ow = cols.x; ow < cols.y; ow++) {
                let o = (plane * p.out_h + oh) * p.out_w + ow;
                if maxb_argmax[o] == at_in {
                    sum += masked(maxb_dy[o], maxb_pooled[o]);
                }
            }
        }
        maxb_dx[i] = sum;
    }
}

// ---- max pooling backward over windows that tile the input exactly ----
// (stride = window, no padding, H and W multiples of the window): each input
// lies in exactly one window, so one invocation per output position writes
// its whole window, dy at the arg-max and zeros elsewhere: a quarter of the
// gather's invocations for 2×2 windows, and the same sums (0 + dy, as the
// gather adds it to 0).
@group(0) @binding(1) var<storage, read> maxt_dy: array<f32>;
@group(0) @binding(2) var<storage, read> maxt_argmax: array<u32>;
@group(0) @binding(3) var<storage, read> maxt_pooled: array<f32>;
@group(0) @binding(4) var<storage, read_write> maxt_dx: array<f32>;

@compute @workgroup_size(64)
fn maxpool_backward_tiles(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let at_out = gid.x;
    if at_out >= p.out_h * p.out_w {
        return;
    }
    let ow = at_out % p.out_w;
    let oh = at_out / p.out_w;
    let corner = oh * KERNEL * p.width + ow * KERNEL;
    for (var plane = gid.y; plane < p.batch * p.channels; plane += nwg.y) {
        let o = plane * p.out_h * p.out_w + at_out;
        let routed = 0.0 + masked(maxt_dy[o], maxt_pooled[o]);
        let argmax = maxt_argmax[o];
        let base = plane * p.height * p.width;
        for (var ki = 0u; ki < KERNEL; ki++) {
            let row = corner + ki * p.width;
            for (var kj = 0u; kj < KERNEL; kj++) {
                maxt_dx[base + row + kj] = select(0.0, routed, row + kj == argmax);
            }
        }
    }
}

// ---- max pooling over 2×2 windows that tile the input ----
// (as above, with KERNEL = 2): a window's two rows are loaded as vec2s (the
// input's width is even, so they are aligned) and the backward stores them
// so: on lavapipe every load or store is a loop over the lanes, and this
// halves them. The same maximum and arg-max (first in row-major order), and
// the same routed gradient. Each window's maximum comes from
// window_max.wgsl's `window_max`, which the host appends to this module.
//
// One invocation per output of the whole batch (no idle lanes past a
// plane's last output, which a 5×5 output left at 39 of 64): the output
// size is a pair of pipeline constants, so finding an output's row and
// plane divides by constants, which compile to multiplications.
override OUT_H: u32 = 1u;
override OUT_W: u32 = 1u;

// Output `o` of the batch (flat over planes), and its window.
struct Pair {
    // The window's top-left input, flat over the batch's planes.
    top: u32,
    // The same within its plane (h·W + w), as the arg-max counts.
    top_in_plane: u32,
}

fn pair_of(o: u32) -> Pair {
    // Output row r of the batch: input rows 2r and 2r + 1 (H = 2·OUT_H).
    let r = o / OUT_W;
    let ow = o - r * OUT_W;
    let oh = r % OUT_H;
    return Pair(2u * (o + r * OUT_W), 4u * oh * OUT_W + 2u * ow);
}

// The flat output index of invocation `gid` on a grid folded as
// context::grid folds it.
fn pair_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 64u;
}

@group(0) @binding(1) var<storage, read> max2f_x: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read_write> max2f_y: array<f32>;
@group(0) @binding(3) var<storage, read_write> max2f_argmax: array<u32>;

@compute @workgroup_size(64)
fn maxpool_forward_pairs(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = pair_index(gid, nwg);
    if i >= p.batch * p.channels * OUT_H * OUT_W {
        return;
    }
    let pair = pair_of(i);
    let top = pair.top_in_plane;
    let corner = pair.top / 2u;
    let upper = max2f_x[corner];
    let lower = max2f_x[corner + p.width / 2u];
    let best = window_max(upper, lower, top, p.width);
    max2f_y[i] = best.value;
    max2f_argmax[i] = best.at;
}

@group(0) @binding(1) var<storage, read> max2b_dy: array<f32>;
@group(0) @binding(2) var<storage, read> max2b_argmax: array<u32>;
@group(0) @binding(3) var<storage, read> max2b_pooled: array<f32>;
@group(0) @binding(4) var<storage, read_write> max2b_dx: array<vec2<f32>>;

@compute @workgroup_size(64)
fn maxpool_backward_pairs(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = pair_index(gid, nwg);
    if o >= p.batch * p.channels * OUT_H * OUT_W {
        return;
    }
    let pair = pair_of(o);
    let top = pair.top_in_plane;
    let routed = 0.0 + masked(max2b_dy[o], max2b_pooled[o]);
    let argmax = max2b_argmax[o];
    let corner = pair.top / 2u;
    max2b_dx[corner] = vec2<f32>(
        select(0.0, routed, argmax == top),
        select(0.0, routed, argmax == top + 1u),
    );
    max2b_dx[corner + p.width / 2u] = vec2<f32>(
        select(0.0, routed, argmax == top + p.width),
        select(0.0, routed, argmax == top + p.width + 1u),
    );
}

// ---- the same two outputs at a time, for an even OUT_W ----
// Outputs 2q and 2q + 1 lie in one output row, and their windows' four
// input columns start at a multiple of 4 (W = 2·OUT_W is then one too):
// the two input rows are loaded as vec4s, and the outputs, arg-maxes and
// dx rows stored as vec2s and vec4s, half the loads and stores of the
// pairs kernels again. Each output compares as there, in the same order.

@group(0) @binding(1) var<storage, read> max4f_x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> max4f_y: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read_write> max4f_argmax: array<vec2<u32>>;

@compute @workgroup_size(64)
fn maxpool_forward_quads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let q = pair_index(gid, nwg);
    if 2u * q >= p.batch * p.channels * OUT_H * OUT_W {
        return;
    }
    let pair = pair_of(2u * q);
    let corner = pair.top / 4u;
    let upper = max4f_x[corner];
    let lower = max4f_x[corner + OUT_W / 2u];
    let left = window_max(upper.xy, lower.xy, pair.top_in_plane, 2u * OUT_W);
    let right = window_max(upper.zw, lower.zw, pair.top_in_plane + 2u, 2u * OUT_W);
    max4f_y[q] = vec2<f32>(left.value, right.value);
    max4f_argmax[q] = vec2<u32>(left.at, right.at);
}

@group(0) @binding(1) var<storage, read> max4b_dy: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read> max4b_argmax: array<vec2<u32>>;
@group(0) @binding(3) var<storage, read> max4b_pooled: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read_write> max4b_dx: array<vec4<f32>>;

@compute @workgroup_size(64)
fn maxpool_backward_quads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let q = pair_index(gid, nwg);
    if 2u * q >= p.batch * p.channels * OUT_H * OUT_W {
        return;
    }
    let pair = pair_of(2u * q);
    let top = pair.top_in_plane;
    let dy = max4b_dy[q];
    let pooled = max4b_pooled[q];
    let left = 0.0 + masked(dy.x, pooled.x);
    let right = 0.0 + masked(dy.y, pooled.y);
    let argmax = max4b_argmax[q];
    let corner = pair.top / 4u;
    max4b_dx[corner] = vec4<f32>(
        select(0.0, left, argmax.x == top),
        select(0.0, left, argmax.x == top + 1u),
        select(0.0, right, argmax.y == top + 2u),
        select(0.0, right, argmax.y == top + 3u),
    );
    let below = top + 2u * OUT_W;
    max4b_dx[corner + OUT_W / 2u] = vec4<f32>(
        select(0.0, left, argmax.x == below),
        select(0.0, left, argmax.x == below + 1u),
        select(0.0, right, argmax.y == below + 2u),
        select(0.0, right, argmax.y == below + 3u),
    );
}

// ---- average pooling forward ----
@group(0) @binding(1) var<storage, read> avgf_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> avgf_y: array<f32>;

@compute @workgroup_size(64)
fn avgpool_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let at_out = gid.x;
    if at_out >= p.out_h * p.out_w {
        return;
    }
    let ow = at_out % p.out_w;
    let oh = at_out / p.out_w;
    for (var plane = gid.y; plane < p.batch * p.channels; plane += nwg.y) {
        let i = plane * p.out_h * p.out_w + at_out;
        let base = plane * p.height * p.width;
        var sum = 0.0;
        for (var ki = 0u; ki < KERNEL; ki++) {
            let h = i32(oh * STRIDE + ki) - i32(p.padding);
            if h < 0 || h >= i32(p.height) {
                continue;
            }
            for (var kj = 0u; kj < KERNEL; kj++) {
                let w = i32(ow * STRIDE + kj) - i32(p.padding);
                if w >= 0 && w < i32(p.width) {
                    sum += avgf_x[base + u32(h) * p.width + u32(w)];
                }
            }
        }
        avgf_y[i] = sum / f32(KERNEL * KERNEL);
    }
}

// ---- average pooling backward ----
@group(0) @binding(1) var<storage, read> avgb_dy: array<f32>;
@group(0) @binding(2) var<storage, read_write> avgb_dx: array<f32>;

@compute @workgroup_size(64)
fn avgpool_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let at_in = gid.x;
    if at_in >= p.height * p.width {
        return;
    }
    let w = at_in % p.width;
    let h = at_in / p.width;
    let rows = covering(h, p.out_h);
    let cols = covering(w, p.out_w);
    for (var plane = gid.y; plane < p.batch * p.channels; plane += nwg.y) {
        let i = plane * p.height * p.width + at_in;
        var sum = 0.0;
        for (var oh = rows.x; oh < rows.y; oh++) {
            for (var ow = cols.x; ow < cols.y; ow++) {
                sum += avgb_dy[(plane * p.out_h + oh) * p.out_w + ow];
            }
        }
        avgb_dx[i] = sum / f32(KERNEL * KERNEL);
    }
}
