// im2col and col2im for a convolution over NCHW input.
//
//   X:     (N, C, H, W)
//   X_col: (N, C·kh·kw, OH·OW)
//   X_col[n, (c·kh + i)·kw + j, oh·OW + ow] = X[n, c, oh·s − p + i, ow·s − p + j]
//                                            (0 where that falls in the padding)
//
// col2im is im2col's adjoint, written as a gather (core WGSL has no float
// atomics, and a gather is deterministic): each input element sums the column
// entries that read it,
//   dX[n, c, h, w] = Σ_{i, j} dX_col[n, (c·kh + i)·kw + j, oh·OW + ow]
// over the (i, j) for which oh = (h + p − i)/s and ow = (w + p − j)/s are
// whole numbers inside the output.

struct Params {
    batch: u32,
    channels: u32,
    height: u32,
    width: u32,
    kernel_h: u32,
    kernel_w: u32,
    stride: u32,
    padding: u32,
    out_h: u32,
    out_w: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

fn linear_index(wid: vec3<u32>, lid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid.x;
}

@compute @workgroup_size(256)
fn im2col(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let positions = p.out_h * p.out_w;
    let rows = p.channels * p.kernel_h * p.kernel_w;
    let idx = linear_index(wid, lid, nwg);
    if idx >= p.batch * rows * positions {
        return;
    }
    let pos = idx % positions;
    let row = (idx / positions) % rows;
    let n = idx / (positions * rows);
    let ow = pos % p.out_w;
    let oh = pos / p.out_w;
    let j = row % p.kernel_w;
    let i = (row / p.kernel_w) % p.kernel_h;
    let c = row / (p.kernel_w * p.kernel_h);
    let h = i32(oh * p.stride + i) - i32(p.padding);
    let w = i32(ow * p.stride + j) - i32(p.padding);
    var value = 0.0;
    if h >= 0 && h < i32(p.height) && w >= 0 && w < i32(p.width) {
        value = src[((n * p.channels + c) * p.height + u32(h)) * p.width + u32(w)];
    }
    dst[idx] = value;
}

@compute @workgroup_size(256)
fn col2im(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let idx = linear_index(wid, lid, nwg);
    if idx >= p.batch * p.channels * p.height * p.width {
        return;
    }
    let w = idx % p.width;
    let h = (idx / p.width) % p.height;
    let c = (idx / (p.width * p.height)) % p.channels;
    let n = idx / (p.width * p.height * p.channels);
    let positions = p.out_h * p.out_w;
    let rows = p.channels * p.kernel_h * p.kernel_w;
    let col_base = n * rows * positions;
    var sum = 0.0;
    for (var i = 0u; i < p.kernel_h; i++) {
        let hi = i32(h + p.padding) - i32(i);
        if hi < 0 || hi % i32(p.stride) != 0 {
            continue;
        }
        let oh = u32(hi) / p.stride;
        if oh >= p.out_h {
            continue;
        }
        for (var j = 0u; j < p.kernel_w; j++) {
            let wj = i32(w + p.padding) - i32(j);
            if wj < 0 || wj % i32(p.stride) != 0 {
                continue;
            }
            let ow = u32(wj) / p.stride;
            if ow >= p.out_w {
                continue;
            }
            let row = (c * p.kernel_h + i) * p.kernel_w + j;
            sum += src[col_base + row * positions + oh * p.out_w + ow];
        }
    }
    dst[idx] = sum;
}
