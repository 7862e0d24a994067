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

@compute @workgroup_size(256)
fn pack(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let idx = (wid.x + wid.y * nwg.x) * 256u + lid.x;
    let per_matrix = p.depth * p.padded;
    if idx >= per_matrix * p.batch {
        return;
    }
    let z = idx / per_matrix;
    let e = idx % per_matrix;
    let k = e / p.padded;
    let r = e % p.padded;
    var value = 0.0;
    if r < p.rows {
        if TRANSPOSED {
            value = src[z * p.src_stride + r * p.depth + k];
        } else {
            value = src[z * p.src_stride + k * p.rows + r];
        }
    }
    dst[z * p.dst_stride + e] = value;
}
