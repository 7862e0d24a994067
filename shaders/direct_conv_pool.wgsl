// The epilogue of direct_conv.wgsl's pooled kernels: the convolution's
// output rows 2·r and 2·r + 1, after the bias and the fused activation,
// max-pooled over 2×2 windows with stride 2 into pooled row r, with no
// pass of its own and without storing the rows. The pooled value and
// arg-max (h·W + w in the convolution's output plane) are those pool.wgsl's
// max pools compute from the stored rows: the same values compared in the
// same row-major window order, the first maximum kept (strict >).
//
// y (binding 4) is then (N, O, ⌊OH/2⌋, ⌊OW/2⌋); an odd last row or column
// belongs to no window. `window_max` (window_max.wgsl, appended by the
// host) compares as pool.wgsl's max pools do.

@group(0) @binding(5) var<storage, read_write> argmax: array<u32>;

// Pools output columns top .. top + 3 (a vec4 of each row's sums `upper`
// and `lower`, before the bias `b` and the activation) into pooled columns
// col and col + 1 of the row at `base`, those inside the pooled row.
fn store_pooled(base: u32, col: u32, top: u32, upper: vec4<f32>, lower: vec4<f32>, b: f32) {
    let u = fused_activation(upper + vec4<f32>(b), p.act_mode, p.slope);
    let l = fused_activation(lower + vec4<f32>(b), p.act_mode, p.slope);
    let pooled_w = p.out_w / 2u;
    if col < pooled_w {
        let left = window_max(u.xy, l.xy, top, p.out_w);
        y[base + col] = left.value;
        argmax[base + col] = left.at;
    }
    if col + 1u < pooled_w {
        let right = window_max(u.zw, l.zw, top + 2u, p.out_w);
        y[base + col + 1u] = right.value;
        argmax[base + col + 1u] = right.at;
    }
}
