// GEMM: C = act(A · B + bias), batched, from packed operands (shaders/pack.wgsl):
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
// Register blocking: each invocation computes an R×C block of C. Per k it
// loads R/4 vec4 of A (R rows) and C/4 vec4 of B (C columns) and does R·C
// multiply-adds into R·C/4 vec4 accumulators (acc_r_h: row r, columns
// 4h..4h+3 of the block). Padding makes every vec4 load whole and in bounds
// (loads past a padded row are clamped to its last vec4); results past M or N
// are computed from zeros and not stored. Every output sums its k terms in
// order, so all block shapes give bit-identical results.
//
// The kernels themselves are unrolled per block shape and appended to this
// file by src/gpu/gemm_source.rs (WGSL has no macros, and the unrolled
// accumulators must be separate variables to stay in registers; the epilogue
// stores one row per loop pass and shifts the rows below it up, so the store
// code appears once, which keeps LLVM's compile time on lavapipe short):
//   gemm_8x16        small products, few output rows (convolutions' O); with
//                    p.slot_lanes its invocations take batch slots of one
//                    block instead of blocks (a narrow C summed over a batch)
//   gemm_32x16       large products on CPU-like adapters: half the loads per
//                    multiply-add
//   conv_8x16, conv_32x16  implicit GEMM: B read from the input image (X_col
//                    for the forward, X_colᵀ for dW)
//   gemm_8x16_rows   (a module of its own) gemm_8x16 reading A stored (M, K)
//                    and B stored (N, K) where they lie, K a multiple of 4
//                    (a linear layer's forward): a vec4 holds 4 depths of a
//                    row, the loop takes 4 depths per pass, and each
//                    accumulator adds them in order (no packs)
//   …_sg             (with subgroups of a fixed size that fits) each of the
//                    above loading A once per subgroup and broadcasting it
// and gemm_tiled (below, written out) stages tiles in workgroup memory for
// GPUs. src/gpu/tune.rs picks one per device and shape class.
//
// Epilogue: bias_mode 0 adds nothing, 1 adds bias[row] (conv: one per output
// channel), 2 adds bias[col] (linear: Y = X·Wᵀ + b). Then act_mode 0 leaves
// the value, 1 applies relu, 2 leaky relu with `slope` — the same float
// operations as the activation kernels, so fusing changes no result.
// bias_mode 3 instead gates C by the derivative of act_mode's activation,
// read from `bias` holding an (M, N) matrix G of its outputs: relu's
// C·(G > 0), leaky relu's C·(G > 0 ? 1 : slope), as elementwise.wgsl's
// backwards compute them (a linear layer's dX taken through the activation
// that made its input, which is G).

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
    act_mode: u32,
    slope: f32,
    // Register-blocked kernels: 1 maps the workgroup's invocations to batch
    // slots of one block of C (the slot-lanes blocks), 0 to blocks of C.
    slot_lanes: u32,
    // Implicit GEMM (conv_* kernels) only: B is read from a zero-padded
    // image batch (N, C, Hp, Wp), image_stride = C·Hp·Wp apart. B[k, n]
    // lies at image z's start + column_offset(n) + depth_offset(k), each
    // offset a sum over a three-digit index (digits of n: sizes col_len_c,
    // col_len_b, then the rest; each digit × its step). The depth offset is
    // walked: +depth_step_c until depth_end_c, then back to 0 and
    // +depth_step_b until depth_end_b, then back to 0 and +depth_step_a.
    //   forward  B = X_col: n = (oh, ow), k = (c, i, j)
    //   dW       B = X_colᵀ: n = (c, i, j), k = (oh, ow)
    image_stride: u32,
    col_len_c: u32,
    col_len_b: u32,
    col_step_c: u32,
    col_step_b: u32,
    col_step_a: u32,
    depth_step_c: u32,
    depth_end_c: u32,
    depth_step_b: u32,
    depth_end_b: u32,
    depth_step_a: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
// The parameters every function reads, set by each entry point from
// `params` through load_params.
var<private> p: Params;

// Copies the parameters into p, each 32-bit field OR-ed with a zero the
// compiler cannot see through (num_workgroups.z is below 2^16). lavapipe
// otherwise inlines the values of parameters that steer loops and branches
// and compiles a variant of the kernel for every product shape: LLVM's
// second largest cost in a cold first step. With them hidden a kernel
// compiles once, whatever the shapes.
fn load_params(nwg: vec3<u32>) {
    let hidden = nwg.z >> 31u;
    p = params;
    p.m |= hidden;
    p.n |= hidden;
    p.k |= hidden;
    p.batch |= hidden;
    p.stride_a |= hidden;
    p.stride_b |= hidden;
    p.stride_c |= hidden;
    p.bias_mode |= hidden;
    p.chunk |= hidden;
    p.act_mode |= hidden;
    p.slot_lanes |= hidden;
    p.image_stride |= hidden;
    p.col_len_c |= hidden;
    p.col_len_b |= hidden;
    p.col_step_c |= hidden;
    p.col_step_b |= hidden;
    p.col_step_a |= hidden;
    p.depth_step_c |= hidden;
    p.depth_end_c |= hidden;
    p.depth_step_b |= hidden;
    p.depth_end_b |= hidden;
    p.depth_step_a |= hidden;
}
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;
// The implicit kernels' operands, in a's and b's places: A unpacked,
// row-major (M, K) (W for the forward, dY_n for dW, both stored that way),
// and the image B is read from.
@group(0) @binding(1) var<storage, read> a_rows: array<f32>;
@group(0) @binding(2) var<storage, read> image: array<f32>;

// The bias of columns col .. col + 3 (bias_mode 2; zero past N).
fn column_bias(col: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    if p.bias_mode == 2u {
        for (var j = 0u; j < 4u; j++) {
            if col + j < p.n {
                v[j] = bias[col + j];
            }
        }
    }
    return v;
}

// The bias of row `row` (bias_mode 1).
fn row_bias(row: u32) -> f32 {
    if p.bias_mode == 1u {
        return bias[row];
    }
    return 0.0;
}

// bias_mode 3: `v` (C[row, col .. col + 3], at `at`) through the derivative
// of act_mode's activation, from the gate G in `bias` at the same place.
fn gated(v: vec4<f32>, at: u32, col: u32) -> vec4<f32> {
    var g = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        if col + j < p.n {
            g[j] = bias[at + j];
        }
    }
    if p.act_mode == 2u {
        return select(p.slope * v, v, g > vec4<f32>(0.0));
    }
    return select(vec4<f32>(0.0), v, g > vec4<f32>(0.0));
}

// Stores C[row, col .. col + 3], the part inside N, plus the biases: `cb`
// from column_bias(col), computed once per block column, and `rb` from
// row_bias(row), once per row, by the caller, which keeps row < M.
// Four stores under their own tests rather than a whole-vector path and a
// loop for the ragged end: on CPU-like adapters (lavapipe) a branch's paths
// all run under lane masks and each store is a loop over the lanes, so one
// path of four tested stores runs the epilogue about a fifth faster.
fn store4(base_c: u32, row: u32, col: u32, q: vec4<f32>, cb: vec4<f32>, rb: f32) {
    let at = base_c + row * p.n + col;
    var v = q + cb + vec4<f32>(rb);
    if p.bias_mode == 3u {
        v = gated(v, at, col);
    } else {
        v = fused_activation(v, p.act_mode, p.slope);
    }
    if col < p.n {
        c[at] = v.x;
    }
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

// ---- Workgroup-memory tiles, for GPUs ----
//
// A 128×128 block of C per workgroup of 16×16 invocations, each computing an
// 8×8 sub-block: rows 4·ty.. and 64 + 4·ty.., columns 4·tx.. and
// 64 + 4·tx... K advances 8 at a time: the workgroup stages an 8×128 slice
// of A and of B in workgroup memory (one vec4 of each per invocation), then
// every invocation runs 8 rank-1 updates from it. On GPUs this turns most
// global loads into fast shared-memory reads; on CPU-like adapters barriers
// are costly, so the tuner offers these kernels to GPUs only (check runs
// them everywhere).
//
// Two slices are staged alternately: while the invocations multiply from
// one, the next slice's loads are already in flight into registers, and they
// are stored into the other after the multiplies, so one barrier per slice
// suffices (a slice is only overwritten two slices after it was read, with
// a barrier between). An invocation's two halves 64 apart make a warp's
// reads of B 16 consecutive vec4s (no bank conflicts) and its stores of C
// rows of 16 consecutive vec4s.

const TILE_K: u32 = 8u;
// One slice: TILE_K rows of 32 vec4 (128 floats).
const SLICE: u32 = 256u;
var<workgroup> tile_a: array<vec4<f32>, 512>;
var<workgroup> tile_b: array<vec4<f32>, 512>;

// The vec4 `col` of depth `k` of a packed A (B) that starts at vec4 `base`
// with rows of `stride` vec4s: zero past K or where `inside` is false (past
// the padded row), so the tiles' edges multiply zeros.
fn staged_a(base: u32, k: u32, stride: u32, col: u32, inside: bool) -> vec4<f32> {
    if k < p.k && inside {
        return a[base + k * stride + col];
    }
    return vec4<f32>(0.0);
}

fn staged_b(base: u32, k: u32, stride: u32, col: u32, inside: bool) -> vec4<f32> {
    if k < p.k && inside {
        return b[base + k * stride + col];
    }
    return vec4<f32>(0.0);
}

fn rank1(av: vec4<f32>, bv0: vec4<f32>, bv1: vec4<f32>, acc0: ptr<function, vec4<f32>>, acc1: ptr<function, vec4<f32>>, acc2: ptr<function, vec4<f32>>, acc3: ptr<function, vec4<f32>>, acc4: ptr<function, vec4<f32>>, acc5: ptr<function, vec4<f32>>, acc6: ptr<function, vec4<f32>>, acc7: ptr<function, vec4<f32>>) {
    *acc0 = fma(vec4<f32>(av.x), bv0, *acc0);
    *acc1 = fma(vec4<f32>(av.x), bv1, *acc1);
    *acc2 = fma(vec4<f32>(av.y), bv0, *acc2);
    *acc3 = fma(vec4<f32>(av.y), bv1, *acc3);
    *acc4 = fma(vec4<f32>(av.z), bv0, *acc4);
    *acc5 = fma(vec4<f32>(av.z), bv1, *acc5);
    *acc6 = fma(vec4<f32>(av.w), bv0, *acc6);
    *acc7 = fma(vec4<f32>(av.w), bv1, *acc7);
}

// One depth of a staged slice (its row at `s`): the invocation's 8×8
// multiply-adds from two vec4s of A and two of B.
fn tiled_depth(s: u32, tx: u32, ty: u32, c00: ptr<function, vec4<f32>>, c01: ptr<function, vec4<f32>>, c10: ptr<function, vec4<f32>>, c11: ptr<function, vec4<f32>>, c20: ptr<function, vec4<f32>>, c21: ptr<function, vec4<f32>>, c30: ptr<function, vec4<f32>>, c31: ptr<function, vec4<f32>>, c40: ptr<function, vec4<f32>>, c41: ptr<function, vec4<f32>>, c50: ptr<function, vec4<f32>>, c51: ptr<function, vec4<f32>>, c60: ptr<function, vec4<f32>>, c61: ptr<function, vec4<f32>>, c70: ptr<function, vec4<f32>>, c71: ptr<function, vec4<f32>>) {
    let a0 = tile_a[s + ty];
    let a1 = tile_a[s + 16u + ty];
    let b0 = tile_b[s + tx];
    let b1 = tile_b[s + 16u + tx];
    rank1(a0, b0, b1, c00, c01, c10, c11, c20, c21, c30, c31);
    rank1(a1, b0, b1, c40, c41, c50, c51, c60, c61, c70, c71);
}

// Row `row` of the block (C[row, col0 ..], C[row, col0 + 64 ..]) with its
// biases, when inside M.
fn store_tiled_row(base_c: u32, row: u32, col0: u32, lo: vec4<f32>, hi: vec4<f32>, cb0: vec4<f32>, cb1: vec4<f32>) {
    if row < p.m {
        let rb = row_bias(row);
        store4(base_c, row, col0, lo, cb0, rb);
        store4(base_c, row, col0 + 64u, hi, cb1, rb);
    }
}

@compute @workgroup_size(16, 16, 1)
fn gemm_tiled(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    load_params(nwg);
    let tx = lid.x;
    let ty = lid.y;
    let li = ty * 16u + tx;
    let a_stride = (p.m + 3u) / 4u;
    let b_stride = (p.n + 3u) / 4u;
    // The vec4 this invocation stages: row li/32 of the K slice, vec4 li%32.
    let stage_k = li / 32u;
    let a_col = wid.y * 32u + li % 32u;
    let b_col = wid.x * 32u + li % 32u;
    let a_in = a_col < a_stride;
    let b_in = b_col < b_stride;
    let row0 = wid.y * 128u + ty * 4u;
    let col0 = wid.x * 128u + tx * 4u;
    // Uniform across the workgroup, so barriers stay in uniform control flow.
    let slots = (p.batch + p.chunk - 1u) / p.chunk;
    for (var slot = wid.z; slot < slots; slot += nwg.z) {
        var c00 = vec4<f32>(0.0); var c01 = vec4<f32>(0.0); var c10 = vec4<f32>(0.0); var c11 = vec4<f32>(0.0);
        var c20 = vec4<f32>(0.0); var c21 = vec4<f32>(0.0); var c30 = vec4<f32>(0.0); var c31 = vec4<f32>(0.0);
        var c40 = vec4<f32>(0.0); var c41 = vec4<f32>(0.0); var c50 = vec4<f32>(0.0); var c51 = vec4<f32>(0.0);
        var c60 = vec4<f32>(0.0); var c61 = vec4<f32>(0.0); var c70 = vec4<f32>(0.0); var c71 = vec4<f32>(0.0);
        let z_begin = slot * p.chunk;
        let z_end = min(z_begin + p.chunk, p.batch);
        for (var z = z_begin; z < z_end; z++) {
            let ia = z * p.stride_a / 4u;
            let ib = z * p.stride_b / 4u;
            // The first slice, staged before the loop.
            var av = staged_a(ia, stage_k, a_stride, a_col, a_in);
            var bv = staged_b(ib, stage_k, b_stride, b_col, b_in);
            // Every invocation has passed the previous product's last
            // barrier, so slice 0 is no longer read.
            tile_a[li] = av;
            tile_b[li] = bv;
            workgroupBarrier();
            var at = 0u;
            for (var k0 = 0u; k0 < p.k; k0 += TILE_K) {
                let next = k0 + TILE_K < p.k;
                if next {
                    let k = k0 + TILE_K + stage_k;
                    av = staged_a(ia, k, a_stride, a_col, a_in);
                    bv = staged_b(ib, k, b_stride, b_col, b_in);
                }
                // The slice's TILE_K depths written out: NVIDIA's compiler
                // kept a loop here rolled (an H200 ran 4096³ at 39% of its
                // peak with the loop, 42% with this).
                tiled_depth(at + 0u, tx, ty, &c00, &c01, &c10, &c11, &c20, &c21, &c30, &c31, &c40, &c41, &c50, &c51, &c60, &c61, &c70, &c71);
                tiled_depth(at + 32u, tx, ty, &c00, &c01, &c10, &c11, &c20, &c21, &c30, &c31, &c40, &c41, &c50, &c51, &c60, &c61, &c70, &c71);
                tiled_depth(at + 64u, tx, ty, &c00, &c01, &c10, &c11, &c20, &c21, &c30, &c31, &c40, &c41, &c50, &c51, &c60, &c61, &c70, &c71);
                tiled_depth(at + 96u, tx, ty, &c00, &c01, &c10, &c11, &c20, &c21, &c30, &c31, &c40, &c41, &c50, &c51, &c60, &c61, &c70, &c71);
                tiled_depth(at + 128u, tx, ty, &c00, &c01, &c10, &c11, &c20, &c21, &c30, &c31, &c40, &c41, &c50, &c51, &c60, &c61, &c70, &c71);
                tiled_depth(at + 160u, tx, ty, &c00, &c01, &c10, &c11, &c20, &c21, &c30, &c31, &c40, &c41, &c50, &c51, &c60, &c61, &c70, &c71);
                tiled_depth(at + 192u, tx, ty, &c00, &c01, &c10, &c11, &c20, &c21, &c30, &c31, &c40, &c41, &c50, &c51, &c60, &c61, &c70, &c71);
                tiled_depth(at + 224u, tx, ty, &c00, &c01, &c10, &c11, &c20, &c21, &c30, &c31, &c40, &c41, &c50, &c51, &c60, &c61, &c70, &c71);
                at = SLICE - at;
                if next {
                    tile_a[at + li] = av;
                    tile_b[at + li] = bv;
                }
                workgroupBarrier();
            }
        }
        let base_c = slot * p.stride_c;
        let cb0 = column_bias(col0);
        let cb1 = column_bias(col0 + 64u);
        store_tiled_row(base_c, row0, col0, c00, c01, cb0, cb1);
        store_tiled_row(base_c, row0 + 1u, col0, c10, c11, cb0, cb1);
        store_tiled_row(base_c, row0 + 2u, col0, c20, c21, cb0, cb1);
        store_tiled_row(base_c, row0 + 3u, col0, c30, c31, cb0, cb1);
        store_tiled_row(base_c, row0 + 64u, col0, c40, c41, cb0, cb1);
        store_tiled_row(base_c, row0 + 65u, col0, c50, c51, cb0, cb1);
        store_tiled_row(base_c, row0 + 66u, col0, c60, c61, cb0, cb1);
        store_tiled_row(base_c, row0 + 67u, col0, c70, c71, cb0, cb1);
    }
}

// gemm_tiled_64: the same scheme with 64×64 blocks of C, each invocation
// computing 4×4 (rows 4·ty.., columns 4·tx..), for products with too few
// 128×128 blocks to fill a GPU (a fully connected layer's forward, 1024³):
// four times the workgroups, each with a quarter of the work per slice. A
// slice of A and one of B are 8 × 16 vec4s each: the first 128 invocations
// stage A's, the others B's (in the first halves of tile_a and tile_b's
// two slices).

const SLICE_64: u32 = 128u;

// One depth of a staged 64-wide slice (its row at `s`): 4×4 multiply-adds.
fn tiled_64_depth(s: u32, tx: u32, ty: u32, c0: ptr<function, vec4<f32>>, c1: ptr<function, vec4<f32>>, c2: ptr<function, vec4<f32>>, c3: ptr<function, vec4<f32>>) {
    let av = tile_a[s + ty];
    let bv = tile_b[s + tx];
    *c0 = fma(vec4<f32>(av.x), bv, *c0);
    *c1 = fma(vec4<f32>(av.y), bv, *c1);
    *c2 = fma(vec4<f32>(av.z), bv, *c2);
    *c3 = fma(vec4<f32>(av.w), bv, *c3);
}

// The vec4 an invocation of gemm_tiled_64 stages: of A where `stages_a`,
// else of B (as staged_a and staged_b take them).
fn tiled_64_staged(stages_a: bool, base: u32, k: u32, stride: u32, col: u32, inside: bool) -> vec4<f32> {
    if stages_a {
        return staged_a(base, k, stride, col, inside);
    }
    return staged_b(base, k, stride, col, inside);
}

// Stores what tiled_64_staged loaded at `at` of tile_a or tile_b.
fn tiled_64_store(stages_a: bool, at: u32, v: vec4<f32>) {
    if stages_a {
        tile_a[at] = v;
    } else {
        tile_b[at] = v;
    }
}

// Row `row` of a 64-wide block (C[row, col0 ..]) with its biases, when
// inside M.
fn store_tiled_64_row(base_c: u32, row: u32, col0: u32, v: vec4<f32>, cb: vec4<f32>) {
    if row < p.m {
        store4(base_c, row, col0, v, cb, row_bias(row));
    }
}

@compute @workgroup_size(16, 16, 1)
fn gemm_tiled_64(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    load_params(nwg);
    let tx = lid.x;
    let ty = lid.y;
    let li = ty * 16u + tx;
    let a_stride = (p.m + 3u) / 4u;
    let b_stride = (p.n + 3u) / 4u;
    // The vec4 this invocation stages: of A (li < 128) or B, row (li % 128)
    // / 16 of the K slice, vec4 li % 16 of the block's 16.
    let stages_a = li < SLICE_64;
    let stage = li % SLICE_64;
    let stage_k = stage / 16u;
    let stage_col = select(wid.x, wid.y, stages_a) * 16u + stage % 16u;
    let stage_stride = select(b_stride, a_stride, stages_a);
    let stage_in = stage_col < stage_stride;
    let row0 = wid.y * 64u + ty * 4u;
    let col0 = wid.x * 64u + tx * 4u;
    // Uniform across the workgroup, so barriers stay in uniform control flow.
    let slots = (p.batch + p.chunk - 1u) / p.chunk;
    for (var slot = wid.z; slot < slots; slot += nwg.z) {
        var c0 = vec4<f32>(0.0);
        var c1 = vec4<f32>(0.0);
        var c2 = vec4<f32>(0.0);
        var c3 = vec4<f32>(0.0);
        let z_begin = slot * p.chunk;
        let z_end = min(z_begin + p.chunk, p.batch);
        for (var z = z_begin; z < z_end; z++) {
            let ia = z * p.stride_a / 4u;
            let ib = z * p.stride_b / 4u;
            // The first slice, staged before the loop. Every invocation has
            // passed the previous product's last barrier, so slice 0 is no
            // longer read.
            let stage_base = select(ib, ia, stages_a);
            var v = tiled_64_staged(stages_a, stage_base, stage_k, stage_stride, stage_col, stage_in);
            tiled_64_store(stages_a, stage, v);
            workgroupBarrier();
            var at = 0u;
            for (var k0 = 0u; k0 < p.k; k0 += TILE_K) {
                let next = k0 + TILE_K < p.k;
                if next {
                    v = tiled_64_staged(stages_a, stage_base, k0 + TILE_K + stage_k, stage_stride, stage_col, stage_in);
                }
                // Written out, as in gemm_tiled.
                tiled_64_depth(at + 0u, tx, ty, &c0, &c1, &c2, &c3);
                tiled_64_depth(at + 16u, tx, ty, &c0, &c1, &c2, &c3);
                tiled_64_depth(at + 32u, tx, ty, &c0, &c1, &c2, &c3);
                tiled_64_depth(at + 48u, tx, ty, &c0, &c1, &c2, &c3);
                tiled_64_depth(at + 64u, tx, ty, &c0, &c1, &c2, &c3);
                tiled_64_depth(at + 80u, tx, ty, &c0, &c1, &c2, &c3);
                tiled_64_depth(at + 96u, tx, ty, &c0, &c1, &c2, &c3);
                tiled_64_depth(at + 112u, tx, ty, &c0, &c1, &c2, &c3);
                at = SLICE_64 - at;
                if next {
                    tiled_64_store(stages_a, at + stage, v);
                }
                workgroupBarrier();
            }
        }
        let base_c = slot * p.stride_c;
        let cb = column_bias(col0);
        store_tiled_64_row(base_c, row0, col0, c0, cb);
        store_tiled_64_row(base_c, row0 + 1u, col0, c1, cb);
        store_tiled_64_row(base_c, row0 + 2u, col0, c2, cb);
        store_tiled_64_row(base_c, row0 + 3u, col0, c3, cb);
    }
}

// ---- Split-K: a product's K slices added, then its epilogue ----
//
// A single product with few blocks of C and a long K (a fully connected
// layer's forward on a GPU: 2–8 blocks, each summing thousands of depths)
// runs as `batch` partial products over consecutive K slices, each a
// plain product (no epilogue) into its own (M, N) matrix, stride_c apart.
// split_sum adds them in slice order, 4 columns of a row per invocation,
// then applies the epilogue through store4, as an unsplit product's kernel
// does after its last depth. Every access is guarded: columns below N, rows
// below M, slices below `batch` (columns and rows past the grid loop).
@compute @workgroup_size(64)
fn split_sum(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    load_params(nwg);
    for (var col = 4u * gid.x; col < p.n; col += 256u * nwg.x) {
        let cb = column_bias(col);
        for (var row = gid.y; row < p.m; row += nwg.y) {
            var q = vec4<f32>(0.0);
            for (var s = 0u; s < p.batch; s++) {
                let at = s * p.stride_c + row * p.n + col;
                for (var j = 0u; j < 4u; j++) {
                    if col + j < p.n {
                        q[j] += a_rows[at + j];
                    }
                }
            }
            store4(0u, row, col, q, cb, row_bias(row));
        }
    }
}
