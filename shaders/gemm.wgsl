// GEMM: C = op(A) · op(B) (+ bias), batched.
//
//   op(A): (M, K), stored (M, K) or, with TRANS_A, (K, M)
//   op(B): (K, N), stored (K, N) or, with TRANS_B, (N, K)
//   C:     (M, N) row-major
//
// Batches: invocation z multiplies A + z·stride_a by B + z·stride_b into
// C + z·stride_c (a stride of 0 shares an operand). With SUM_BATCH the batch is
// instead summed inside each invocation, C = Σ_z A_z · B_z: the conv weight
// gradient dW = Σ_n dY_n · X_col,nᵀ, as a deterministic in-register reduction.
//
// Register blocking: each invocation computes a TM×TN = 4×4 block of C, keeping
// the 16 sums in registers (rows as vec4 over the block's 4 columns), so every
// loaded A and B value feeds 4 multiply-adds. Rows and columns past the edge are
// clamped for loading (always in bounds, no branch in the inner loop) and
// skipped when storing.
//
// Epilogue: bias_mode 0 adds nothing, 1 adds bias[row] (conv: one per output
// channel), 2 adds bias[col] (linear: Y = X·Wᵀ + b).

struct Params {
    m: u32,
    n: u32,
    k: u32,
    batch: u32,
    stride_a: u32,
    stride_b: u32,
    stride_c: u32,
    bias_mode: u32,
}

override TRANS_A: bool = false;
override TRANS_B: bool = false;
override SUM_BATCH: bool = false;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

fn load_a(base: u32, row: u32, kk: u32) -> f32 {
    if TRANS_A {
        return a[base + kk * p.m + row];
    }
    return a[base + row * p.k + kk];
}

fn load_b(base: u32, kk: u32, col: u32) -> f32 {
    if TRANS_B {
        return b[base + col * p.k + kk];
    }
    return b[base + kk * p.n + col];
}

@compute @workgroup_size(8, 8, 1)
fn gemm(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * 4u;
    let col0 = gid.x * 4u;
    if row0 >= p.m || col0 >= p.n {
        return;
    }
    let last_row = p.m - 1u;
    let last_col = p.n - 1u;
    let rows = vec4<u32>(row0, min(row0 + 1u, last_row), min(row0 + 2u, last_row), min(row0 + 3u, last_row));
    let cols = vec4<u32>(col0, min(col0 + 1u, last_col), min(col0 + 2u, last_col), min(col0 + 3u, last_col));

    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);

    var z_begin = gid.z;
    var z_end = gid.z + 1u;
    if SUM_BATCH {
        z_begin = 0u;
        z_end = p.batch;
    }
    for (var z = z_begin; z < z_end; z++) {
        let base_a = z * p.stride_a;
        let base_b = z * p.stride_b;
        for (var kk = 0u; kk < p.k; kk++) {
            let bv = vec4<f32>(
                load_b(base_b, kk, cols.x),
                load_b(base_b, kk, cols.y),
                load_b(base_b, kk, cols.z),
                load_b(base_b, kk, cols.w),
            );
            acc0 += load_a(base_a, rows.x, kk) * bv;
            acc1 += load_a(base_a, rows.y, kk) * bv;
            acc2 += load_a(base_a, rows.z, kk) * bv;
            acc3 += load_a(base_a, rows.w, kk) * bv;
        }
    }

    var base_c = gid.z * p.stride_c;
    if SUM_BATCH {
        base_c = 0u;
    }
    let block = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var i = 0u; i < 4u; i++) {
        let row = row0 + i;
        if row >= p.m {
            break;
        }
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + j;
            if col >= p.n {
                break;
            }
            var value = block[i][j];
            if p.bias_mode == 1u {
                value += bias[row];
            } else if p.bias_mode == 2u {
                value += bias[col];
            }
            c[base_c + row * p.n + col] = value;
        }
    }
}
