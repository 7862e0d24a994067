// im2col, its transposed form im2row, and col2im for a convolution over NCHW
// input.
//
//   X:     (N, C, H, W)
//   X_col: (N, C·kh·kw, OH·OW)
//   X_col[n, (c·kh + i)·kw + j, oh·OW + ow] = X[n, c, oh·s − p + i, ow·s − p + j]
//                                            (0 where that falls in the padding)
//   X_row: (N, OH·OW, R), R = C·kh·kw rounded up to a multiple of 4:
//   X_row[n, pos, row] = X_col[n, row, pos] (0 for row ≥ C·kh·kw) — the
//   depth-major packed layout (shaders/pack.wgsl) the GEMM reads for
//   dW = Σ_n dY_n · X_col,nᵀ, written directly instead of transposed later.
//
// col2im is im2col's adjoint, written as a gather (core WGSL has no float
// atomics, and a gather is deterministic): each input element sums the column
// entries that read it,
//   dX[n, c, h, w] = Σ_{i, j} dX_col[n, (c·kh + i)·kw + j, oh·OW + ow]
// over the (i, j) for which oh = (h + p − i)/s and ow = (w + p − j)/s are
// whole numbers inside the output.
//
// Each invocation decodes its indices once and then walks a run of elements
// with running offsets: integer division is slow on CPU-like adapters
// (lavapipe scalarises it), so none happens per element. Batches (and planes)
// beyond the grid's y or z extent are walked in a loop.

struct Params {
    batch: u32,
    channels: u32,
    height: u32,
    width: u32,
    kernel_h: u32,
    kernel_w: u32,
    padding: u32,
    out_h: u32,
    out_w: u32,
    rows_padded: u32,
}

// The convolution's stride, a pipeline constant so divisions by it fold.
override STRIDE: u32 = 1u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

// One invocation per (output position, image): walks every row (c, i, j).
@compute @workgroup_size(64)
fn im2col(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let positions = p.out_h * p.out_w;
    let pos = gid.x;
    if pos >= positions {
        return;
    }
    let rows = p.channels * p.kernel_h * p.kernel_w;
    let plane = p.height * p.width;
    let h0 = i32((pos / p.out_w) * STRIDE) - i32(p.padding);
    let w0 = i32((pos % p.out_w) * STRIDE) - i32(p.padding);
    for (var n = gid.y; n < p.batch; n += nwg.y) {
        var out = n * rows * positions + pos;
        var image = n * p.channels * plane;
        for (var c = 0u; c < p.channels; c++) {
            for (var i = 0u; i < p.kernel_h; i++) {
                let h = h0 + i32(i);
                let h_inside = h >= 0 && h < i32(p.height);
                for (var j = 0u; j < p.kernel_w; j++) {
                    let w = w0 + i32(j);
                    var value = 0.0;
                    if h_inside && w >= 0 && w < i32(p.width) {
                        value = src[image + u32(h) * p.width + u32(w)];
                    }
                    dst[out] = value;
                    out += positions;
                }
            }
            image += plane;
        }
    }
}

// One invocation per (row, output row oh, image): walks ow.
@compute @workgroup_size(16, 4)
fn im2row(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = gid.x;
    let oh = gid.y;
    if row >= p.rows_padded || oh >= p.out_h {
        return;
    }
    let rows = p.channels * p.kernel_h * p.kernel_w;
    let real = row < rows;
    let j = row % p.kernel_w;
    let i = (row / p.kernel_w) % p.kernel_h;
    let c = row / (p.kernel_w * p.kernel_h);
    let h = i32(oh * STRIDE + i) - i32(p.padding);
    let h_inside = real && h >= 0 && h < i32(p.height);
    let positions = p.out_h * p.out_w;
    for (var n = gid.z; n < p.batch; n += nwg.z) {
        var out = (n * positions + oh * p.out_w) * p.rows_padded + row;
        let line = ((n * p.channels + c) * p.height + u32(max(h, 0))) * p.width;
        var w = i32(j) - i32(p.padding);
        for (var ow = 0u; ow < p.out_w; ow++) {
            var value = 0.0;
            if h_inside && w >= 0 && w < i32(p.width) {
                value = src[line + u32(w)];
            }
            dst[out] = value;
            out += p.rows_padded;
            w += i32(STRIDE);
        }
    }
}

// One invocation per (input position, plane n·C + c).
@compute @workgroup_size(64)
fn col2im(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let plane_len = p.height * p.width;
    let at = gid.x;
    if at >= plane_len {
        return;
    }
    let h = at / p.width;
    let w = at % p.width;
    let positions = p.out_h * p.out_w;
    let window = p.kernel_h * p.kernel_w;
    let rows = p.channels * window;
    for (var plane = gid.y; plane < p.batch * p.channels; plane += nwg.y) {
        let n = plane / p.channels;
        let c = plane % p.channels;
        // Column entries of row (c, 0, 0) of image n.
        let base = (n * rows + c * window) * positions;
        var sum = 0.0;
        for (var i = 0u; i < p.kernel_h; i++) {
            let hi = i32(h + p.padding) - i32(i);
            if hi < 0 || u32(hi) % STRIDE != 0u || u32(hi) / STRIDE >= p.out_h {
                continue;
            }
            let oh = u32(hi) / STRIDE;
            for (var j = 0u; j < p.kernel_w; j++) {
                let wj = i32(w + p.padding) - i32(j);
                if wj < 0 || u32(wj) % STRIDE != 0u || u32(wj) / STRIDE >= p.out_w {
                    continue;
                }
                let ow = u32(wj) / STRIDE;
                sum += src[base + (i * p.kernel_w + j) * positions + oh * p.out_w + ow];
            }
        }
        dst[plane * plane_len + at] = sum;
    }
}

// Zero padding for the kernels that read a convolution's input whole: the
// implicit GEMMs (gemm.wgsl, conv_*) and the direct convolution
// (direct_conv.wgsl). Planes of (height, width) become (height + 2·pad_h)
// rows of `pitch` values (a multiple of 4), each the row's inside between
// pad_w zeros on the left and zeros up to the pitch on the right. One
// invocation per padded row (over a folded grid), storing whole vec4s: on
// lavapipe each store is a loop over the lanes, so one per four values.
struct PadParams {
    planes: u32,
    height: u32,
    width: u32,
    pad_h: u32,
    pad_w: u32,
    pitch: u32,
}

@group(0) @binding(0) var<uniform> pad_p: PadParams;
@group(0) @binding(2) var<storage, read_write> padded: array<vec4<f32>>;

// Value `w` of padded row `h` (of the plane starting at `line`'s row).
fn padded_value(line: u32, inside: bool, w: u32) -> f32 {
    let x = i32(w) - i32(pad_p.pad_w);
    if inside && x >= 0 && x < i32(pad_p.width) {
        return src[line + u32(x)];
    }
    return 0.0;
}

// Padded row `r` of all the planes': whether it is one (past the last plane
// it is not), whether it is an input row rather than padding, and where that
// input row starts (in values).
struct PadRow {
    exists: bool,
    inside: bool,
    line: u32,
}

fn pad_row(r: u32) -> PadRow {
    let padded_h = pad_p.height + 2u * pad_p.pad_h;
    let plane = r / padded_h;
    let h = i32(r % padded_h) - i32(pad_p.pad_h);
    let line = (plane * pad_p.height + u32(max(h, 0))) * pad_p.width;
    let exists = r < pad_p.planes * padded_h;
    let inside = h >= 0 && h < i32(pad_p.height);
    return PadRow(exists, inside, line);
}

@compute @workgroup_size(64)
fn pad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = gid.x + gid.y * nwg.x * 64u;
    let row = pad_row(r);
    if !row.exists {
        return;
    }
    var out = r * (pad_p.pitch / 4u);
    for (var w = 0u; w < pad_p.pitch; w += 4u) {
        padded[out] = vec4<f32>(
            padded_value(row.line, row.inside, w),
            padded_value(row.line, row.inside, w + 1u),
            padded_value(row.line, row.inside, w + 2u),
            padded_value(row.line, row.inside, w + 3u),
        );
        out++;
    }
}

// The same padding where a plane's rows are whole vec4s (width a multiple of
// 4, so every row starts at one): each stored vec4 takes the row's values
// from at most two loaded vec4s, the one before and the current one, shifted
// by SHIFT = pad_w mod 4, so a row costs one vec4 load per stored vec4 where
// `pad` makes four scalar loads (lavapipe turns each into a loop over the
// lanes). The same values as `pad`.
override SHIFT: u32 = 0u;

@group(0) @binding(1) var<storage, read> src4: array<vec4<f32>>;

@compute @workgroup_size(64)
fn pad4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = gid.x + gid.y * nwg.x * 64u;
    let row = pad_row(r);
    if !row.exists {
        return;
    }
    let row_vecs = i32(pad_p.width / 4u);
    let line = row.line / 4u;
    // Stored vec4 k holds input vec4 k − lead's first 4 − SHIFT values,
    // after the last SHIFT of the one before.
    let lead = i32(pad_p.pad_w / 4u);
    var out = r * (pad_p.pitch / 4u);
    var before = vec4<f32>(0.0);
    for (var k = 0; k < i32(pad_p.pitch / 4u); k++) {
        let i = k - lead;
        var current = vec4<f32>(0.0);
        if row.inside && i >= 0 && i < row_vecs {
            current = src4[line + u32(i)];
        }
        var v = current;
        if SHIFT == 1u {
            v = vec4<f32>(before.w, current.xyz);
        } else if SHIFT == 2u {
            v = vec4<f32>(before.zw, current.xy);
        } else if SHIFT == 3u {
            v = vec4<f32>(before.yzw, current.x);
        }
        padded[out] = v;
        before = current;
        out++;
    }
}
