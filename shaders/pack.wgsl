// Packs a GEMM operand into the layout the GEMM kernel reads: depth-major
// `(K, P)` with P = rows rounded up to a multiple of 4 (zero padded), so every
// row of the packed matrix is whole `vec4`s.
//
//   source stored (R, K) row-major  → dst[k, r] = src[r, k]   (TRANSPOSED = true)
//   source stored (K, R) row-major  → dst[k, r] = src[k, r]   (TRANSPOSED = false)
//   r ≥ R                           → dst[k, r] = 0
//
// For C = op(A)·op(B): A with `op(A) = (M, K)` is packed from (M, K) storage as
// TRANSPOSED and from (K, M) storage (trans_a) as a plain copy; B with
// `op(B) = (K, N)` the other way round. Batches: matrix z at z·src_stride,
// written at z·dst_stride.

struct Params {
    rows: u32,
    depth: u32,
    padded: u32,
    batch: u32,
    src_stride: u32,
    dst_stride: u32,
}

override TRANSPOSED: bool = false;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

// One invocation per packed row (z, k): decodes it once, then walks its
// `padded` values with running offsets (no division per element, which
// CPU-like adapters scalarise). Returns the row's sum, added in row order
// from 0 (pack_summing's).
fn pack_row(row: u32) -> f32 {
    let z = row / p.depth;
    let k = row % p.depth;
    var out = z * p.dst_stride + k * p.padded;
    // Source of (k, r = 0) and the step from r to r + 1.
    var at = z * p.src_stride + k * p.rows;
    var step = 1u;
    if TRANSPOSED {
        at = z * p.src_stride + k;
        step = p.depth;
    }
    var sum = 0.0;
    for (var r = 0u; r < p.padded; r++) {
        var value = 0.0;
        if r < p.rows {
            value = src[at];
            sum += value;
        }
        dst[out] = value;
        out++;
        at += step;
    }
    return sum;
}

fn packed_row(wid: vec3<u32>, lid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid.x;
}

@compute @workgroup_size(256)
fn pack(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let row = packed_row(wid, lid, nwg);
    if row < p.depth * p.batch {
        pack_row(row);
    }
}

// pack, also writing each packed row's sum: sums[z·depth + k] =
// Σ_r src(r, k) of matrix z, in r order from 0. Packing a linear layer's
// dY (N, O) for its dX product (rows n, depth o) so yields the bias
// gradient db[o] = Σ_n dY[n, o], added in the order reduce.wgsl's
// slice_sum adds it, without a dispatch of its own.
@group(0) @binding(3) var<storage, read_write> sums: array<f32>;

@compute @workgroup_size(256)
fn pack_summing(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let row = packed_row(wid, lid, nwg);
    if row < p.depth * p.batch {
        sums[row] = pack_row(row);
    }
}

// Re-packs a packed operand (K, padded) into 4 depths per vec4 for the
// GEMM's depth4 kernels: dst vec4 (step, r) of matrix z holds rows
// 4·step .. 4·step + 3 of column r (zero past `depth`), at
// z·dst_stride / 4 + step·rows + r. One invocation per vec4.
@group(0) @binding(1) var<storage, read> depth_src: array<f32>;
@group(0) @binding(2) var<storage, read_write> depth_dst: array<vec4<f32>>;

@compute @workgroup_size(64)
fn pack_depth4(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x;
    let step = gid.y;
    let z = gid.z;
    if r >= p.rows || z >= p.batch {
        return;
    }
    let k = 4u * step;
    let at = z * p.src_stride + k * p.padded + r;
    var v = vec4<f32>(0.0);
    if k < p.depth {
        v.x = depth_src[at];
    }
    if k + 1u < p.depth {
        v.y = depth_src[at + p.padded];
    }
    if k + 2u < p.depth {
        v.z = depth_src[at + 2u * p.padded];
    }
    if k + 3u < p.depth {
        v.w = depth_src[at + 3u * p.padded];
    }
    depth_dst[((z * p.dst_stride) >> 2u) + step * p.rows + r] = v;
}
