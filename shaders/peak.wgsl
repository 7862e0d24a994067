// The adapter's multiply-add throughput with everything in registers: the
// ceiling no kernel passes, which `wgcnn bench peak` measures and `bench
// gemm` compares each product with.
//
// Each invocation runs 16 independent vec4 chains a ← a·x + y (64 lanes of
// work per step, so no chain waits on its own latency), four steps per
// loop iteration, written out: on lavapipe, with the four steps as an
// inner loop (16 vec4 multiply-adds per iteration), this measured 27–37
// GFLOP/s instead of 66, the loop's own work costing as much as its
// multiply-adds. With 0 < x < 1 every chain settles at y / (1 − x): the
// values stay normal floats (no denormals, which some CPUs run slowly),
// and x and y come from a buffer so no compiler can fold the chains away.
// Each invocation stores the sum of its chains.
//
// The kernel, `multiply_adds`, follows this header, written out by
// src/gpu/peak.rs.

struct Params {
    iterations: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// x in element 0, y in element 1.
@group(0) @binding(1) var<storage, read> coefficients: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> out: array<vec4<f32>>;
