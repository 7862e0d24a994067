// The adapter's multiply-add throughput with everything in registers: the
// ceiling no kernel passes, which `wgcnn bench peak` measures and `bench
// gemm` compares each product with.
//
// Each invocation runs 16 independent vec4 chains a ← a·x + y (64 lanes of
// work per step, so no chain waits on its own latency), four steps per
// loop iteration, written out: on lavapipe with the four steps as an inner
// loop (16 vec4 multiply-adds per iteration) this measured 27–37 GFLOP/s
// instead of 66, the loop's own work costing as much as its multiply-adds.
// With
// 0 < x < 1 every chain settles at y / (1 − x): the values stay normal
// floats (no denormals, which some CPUs run slowly), and x and y come from
// a buffer so no compiler can fold the chains away. Each invocation stores
// the sum of its chains.
//
// 64 multiply-adds × 4 steps = 512 floating-point operations per iteration.

struct Params {
    iterations: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// x in element 0, y in element 1.
@group(0) @binding(1) var<storage, read> coefficients: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> out: array<vec4<f32>>;

@compute @workgroup_size(64)
fn multiply_adds(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let index = gid.x + gid.y * nwg.x * 64u;
    let x = coefficients[0];
    let y = coefficients[1];
    let start = vec4<f32>(f32(index % 64u) * 0.015625);
    var a0 = start;
    var a1 = start + 0.01;
    var a2 = start + 0.02;
    var a3 = start + 0.03;
    var a4 = start + 0.04;
    var a5 = start + 0.05;
    var a6 = start + 0.06;
    var a7 = start + 0.07;
    var a8 = start + 0.08;
    var a9 = start + 0.09;
    var a10 = start + 0.10;
    var a11 = start + 0.11;
    var a12 = start + 0.12;
    var a13 = start + 0.13;
    var a14 = start + 0.14;
    var a15 = start + 0.15;
    for (var i = 0u; i < p.iterations; i++) {
        // Four steps, written out.
        a0 = fma(a0, x, y);
        a1 = fma(a1, x, y);
        a2 = fma(a2, x, y);
        a3 = fma(a3, x, y);
        a4 = fma(a4, x, y);
        a5 = fma(a5, x, y);
        a6 = fma(a6, x, y);
        a7 = fma(a7, x, y);
        a8 = fma(a8, x, y);
        a9 = fma(a9, x, y);
        a10 = fma(a10, x, y);
        a11 = fma(a11, x, y);
        a12 = fma(a12, x, y);
        a13 = fma(a13, x, y);
        a14 = fma(a14, x, y);
        a15 = fma(a15, x, y);
        a0 = fma(a0, x, y);
        a1 = fma(a1, x, y);
        a2 = fma(a2, x, y);
        a3 = fma(a3, x, y);
        a4 = fma(a4, x, y);
        a5 = fma(a5, x, y);
        a6 = fma(a6, x, y);
        a7 = fma(a7, x, y);
        a8 = fma(a8, x, y);
        a9 = fma(a9, x, y);
        a10 = fma(a10, x, y);
        a11 = fma(a11, x, y);
        a12 = fma(a12, x, y);
        a13 = fma(a13, x, y);
        a14 = fma(a14, x, y);
        a15 = fma(a15, x, y);
        a0 = fma(a0, x, y);
        a1 = fma(a1, x, y);
        a2 = fma(a2, x, y);
        a3 = fma(a3, x, y);
        a4 = fma(a4, x, y);
        a5 = fma(a5, x, y);
        a6 = fma(a6, x, y);
        a7 = fma(a7, x, y);
        a8 = fma(a8, x, y);
        a9 = fma(a9, x, y);
        a10 = fma(a10, x, y);
        a11 = fma(a11, x, y);
        a12 = fma(a12, x, y);
        a13 = fma(a13, x, y);
        a14 = fma(a14, x, y);
        a15 = fma(a15, x, y);
        a0 = fma(a0, x, y);
        a1 = fma(a1, x, y);
        a2 = fma(a2, x, y);
        a3 = fma(a3, x, y);
        a4 = fma(a4, x, y);
        a5 = fma(a5, x, y);
        a6 = fma(a6, x, y);
        a7 = fma(a7, x, y);
        a8 = fma(a8, x, y);
        a9 = fma(a9, x, y);
        a10 = fma(a10, x, y);
        a11 = fma(a11, x, y);
        a12 = fma(a12, x, y);
        a13 = fma(a13, x, y);
        a14 = fma(a14, x, y);
        a15 = fma(a15, x, y);
    }
    out[index] = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))
        + ((a8 + a9) + (a10 + a11)) + ((a12 + a13) + (a14 + a15));
}
