// GEMM: C = A · B (+ bias), batched, from packed operands (shaders/pack.wgsl):
//
//   a: (K, Mp) — A transposed, rows padded to Mp = ⌈M/4⌉·4 with zeros
//   b: (K, Np) — B, columns padded to Np = ⌈N/4⌉·4 with zeros
//   c: (M, N) row-major
//
// Batches: slot z sums the products of a + i·stride_a and b + i·stride_b
// for i in z·chunk .. z·chunk + chunk − 1 into c + z·stride_c (a stride of 0
// shares an operand). chunk = 1 gives one product per batch element; a chunk
// of the whole batch sums it inside each invocation, C = Σ_i A_i · B_i: the
// conv weight gradient dW = Σ_n dY_n · X_col,nᵀ as a deterministic
// in-register reduction. A C too small to fill the device is split over the
// batch instead: each slot writes a partial sum, and the host adds them in
// order (shaders/reduce.wgsl).
//
// Register blocking: each invocation computes an 8×16 block of C. Per k it
// loads two vec4 of A (8 rows) and four vec4 of B (16 columns) and does 128
// multiply-adds into 32 vec4 accumulators (acc_r_h: row r, columns 4h..4h+3 of
// the block). Padding makes every vec4 load whole and in bounds; results past
// M or N are computed from zeros and not stored.
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
    chunk: u32,
}

// Workgroup shape (invocations along N and M); 64 invocations either way.
override WG_X: u32 = 8u;
override WG_Y: u32 = 8u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

fn bias_at(col: u32) -> f32 {
    if col < p.n {
        return bias[col];
    }
    return 0.0;
}

// Stores C[row, col..col+4] (the part inside N), plus the bias.
fn store4(base_c: u32, row: u32, col: u32, q: vec4<f32>) {
    if col >= p.n {
        return;
    }
    var v = q;
    if p.bias_mode == 1u {
        v += vec4<f32>(bias[row]);
    } else if p.bias_mode == 2u {
        v += vec4<f32>(bias_at(col), bias_at(col + 1u), bias_at(col + 2u), bias_at(col + 3u));
    }
    let at = base_c + row * p.n + col;
    c[at] = v.x;
    if col + 1u < p.n {
        c[at + 1u] = v.y;
    }
    if col + 2u < p.n {
        c[at + 2u] = v.z;
    }
    if col + 3u < p.n {
        c[at + 3u] = v.w;
    }
}

fn store_row(base_c: u32, row: u32, col0: u32, q0: vec4<f32>, q1: vec4<f32>, q2: vec4<f32>, q3: vec4<f32>) {
    if row >= p.m {
        return;
    }
    store4(base_c, row, col0, q0);
    store4(base_c, row, col0 + 4u, q1);
    store4(base_c, row, col0 + 8u, q2);
    store4(base_c, row, col0 + 12u, q3);
}

@compute @workgroup_size(WG_X, WG_Y, 1)
fn gemm(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row0 = gid.y * 8u;
    let col0 = gid.x * 16u;
    if row0 >= p.m || col0 >= p.n {
        return;
    }
    // Row strides of the packed operands, in vec4s.
    let a_stride = (p.m + 3u) / 4u;
    let b_stride = (p.n + 3u) / 4u;
    // vec4s of the block past a padded row are clamped to the row's last
    // vec4 (their results are not stored).
    let a0 = row0 / 4u;
    let a1 = min(a0 + 1u, a_stride - 1u);
    let b0 = col0 / 4u;
    let b1 = min(b0 + 1u, b_stride - 1u);
    let b2 = min(b0 + 2u, b_stride - 1u);
    let b3 = min(b0 + 3u, b_stride - 1u);

    // Slot z: products z·chunk .. z·chunk + chunk − 1 (one product, or one
    // partial sum over the batch), walked in a loop past the grid's z extent.
    let slots = (p.batch + p.chunk - 1u) / p.chunk;
    for (var slot = gid.z; slot < slots; slot += nwg.z) {
        var acc_0_0 = vec4<f32>(0.0); var acc_0_1 = vec4<f32>(0.0); var acc_0_2 = vec4<f32>(0.0); var acc_0_3 = vec4<f32>(0.0);
        var acc_1_0 = vec4<f32>(0.0); var acc_1_1 = vec4<f32>(0.0); var acc_1_2 = vec4<f32>(0.0); var acc_1_3 = vec4<f32>(0.0);
        var acc_2_0 = vec4<f32>(0.0); var acc_2_1 = vec4<f32>(0.0); var acc_2_2 = vec4<f32>(0.0); var acc_2_3 = vec4<f32>(0.0);
        var acc_3_0 = vec4<f32>(0.0); var acc_3_1 = vec4<f32>(0.0); var acc_3_2 = vec4<f32>(0.0); var acc_3_3 = vec4<f32>(0.0);
        var acc_4_0 = vec4<f32>(0.0); var acc_4_1 = vec4<f32>(0.0); var acc_4_2 = vec4<f32>(0.0); var acc_4_3 = vec4<f32>(0.0);
        var acc_5_0 = vec4<f32>(0.0); var acc_5_1 = vec4<f32>(0.0); var acc_5_2 = vec4<f32>(0.0); var acc_5_3 = vec4<f32>(0.0);
        var acc_6_0 = vec4<f32>(0.0); var acc_6_1 = vec4<f32>(0.0); var acc_6_2 = vec4<f32>(0.0); var acc_6_3 = vec4<f32>(0.0);
        var acc_7_0 = vec4<f32>(0.0); var acc_7_1 = vec4<f32>(0.0); var acc_7_2 = vec4<f32>(0.0); var acc_7_3 = vec4<f32>(0.0);

        let z_begin = slot * p.chunk;
        let z_end = min(z_begin + p.chunk, p.batch);
        for (var z = z_begin; z < z_end; z++) {
            var ia = z * p.stride_a / 4u;
            var ib = z * p.stride_b / 4u;
            for (var kk = 0u; kk < p.k; kk++) {
                let av0 = a[ia + a0];
                let av1 = a[ia + a1];
                let bv0 = b[ib + b0];
                let bv1 = b[ib + b1];
                let bv2 = b[ib + b2];
                let bv3 = b[ib + b3];
                let s0 = vec4<f32>(av0.x);
                acc_0_0 = fma(s0, bv0, acc_0_0); acc_0_1 = fma(s0, bv1, acc_0_1); acc_0_2 = fma(s0, bv2, acc_0_2); acc_0_3 = fma(s0, bv3, acc_0_3);
                let s1 = vec4<f32>(av0.y);
                acc_1_0 = fma(s1, bv0, acc_1_0); acc_1_1 = fma(s1, bv1, acc_1_1); acc_1_2 = fma(s1, bv2, acc_1_2); acc_1_3 = fma(s1, bv3, acc_1_3);
                let s2 = vec4<f32>(av0.z);
                acc_2_0 = fma(s2, bv0, acc_2_0); acc_2_1 = fma(s2, bv1, acc_2_1); acc_2_2 = fma(s2, bv2, acc_2_2); acc_2_3 = fma(s2, bv3, acc_2_3);
                let s3 = vec4<f32>(av0.w);
                acc_3_0 = fma(s3, bv0, acc_3_0); acc_3_1 = fma(s3, bv1, acc_3_1); acc_3_2 = fma(s3, bv2, acc_3_2); acc_3_3 = fma(s3, bv3, acc_3_3);
                let s4 = vec4<f32>(av1.x);
                acc_4_0 = fma(s4, bv0, acc_4_0); acc_4_1 = fma(s4, bv1, acc_4_1); acc_4_2 = fma(s4, bv2, acc_4_2); acc_4_3 = fma(s4, bv3, acc_4_3);
                let s5 = vec4<f32>(av1.y);
                acc_5_0 = fma(s5, bv0, acc_5_0); acc_5_1 = fma(s5, bv1, acc_5_1); acc_5_2 = fma(s5, bv2, acc_5_2); acc_5_3 = fma(s5, bv3, acc_5_3);
                let s6 = vec4<f32>(av1.z);
                acc_6_0 = fma(s6, bv0, acc_6_0); acc_6_1 = fma(s6, bv1, acc_6_1); acc_6_2 = fma(s6, bv2, acc_6_2); acc_6_3 = fma(s6, bv3, acc_6_3);
                let s7 = vec4<f32>(av1.w);
                acc_7_0 = fma(s7, bv0, acc_7_0); acc_7_1 = fma(s7, bv1, acc_7_1); acc_7_2 = fma(s7, bv2, acc_7_2); acc_7_3 = fma(s7, bv3, acc_7_3);
                ia += a_stride;
                ib += b_stride;
            }
        }

        let base_c = slot * p.stride_c;

        store_row(base_c, row0, col0, acc_0_0, acc_0_1, acc_0_2, acc_0_3);
        store_row(base_c, row0 + 1u, col0, acc_1_0, acc_1_1, acc_1_2, acc_1_3);
        store_row(base_c, row0 + 2u, col0, acc_2_0, acc_2_1, acc_2_2, acc_2_3);
        store_row(base_c, row0 + 3u, col0, acc_3_0, acc_3_1, acc_3_2, acc_3_3);
        store_row(base_c, row0 + 4u, col0, acc_4_0, acc_4_1, acc_4_2, acc_4_3);
        store_row(base_c, row0 + 5u, col0, acc_5_0, acc_5_1, acc_5_2, acc_5_3);
        store_row(base_c, row0 + 6u, col0, acc_6_0, acc_6_1, acc_6_2, acc_6_3);
        store_row(base_c, row0 + 7u, col0, acc_7_0, acc_7_1, acc_7_2, acc_7_3);
    }
}
