// The epilogue of direct_conv.wgsl's pooled kernels: the convolution's
// output rows 2·r and 2·r + 1, after the bias and the fused activation,
// max-pooled over 2×2 windows with stride 2 into pooled row r, with no
// pass of its own and without storing the rows. The pooled value and
// arg-max (h·W + w in the convolution's output plane) are those pool.wgsl's
// max pools compute from the stored rows: the same values compared in the
// same row-major window order, the first maximum kept (strict >).
//
// y (binding 4) is then (N, O, ⌊OH/2⌋, ⌊OW/2⌋); an odd last row or column
// belongs to no window.

@group(0) @binding(5) var<storage, read_write> argmax: array<u32>;

struct WindowMax {
    value: f32,
    at: u32,
}

// The maximum of the window (upper.xy over lower.xy) whose top-left output
// is `top` in its plane, and its arg-max.
fn window_max(upper: vec2<f32>, lower: vec2<f32>, top: u32) -> WindowMax {
    var best = WindowMax(upper.x, top);
    if upper.y > best.value {
        best = WindowMax(upper.y, top + 1u);
    }
    if lower.x > best.value {
        best = WindowMax(lower.x, top + p.out_w);
    }
    if lower.y > best.value {
        best = WindowMax(lower.y, top + p.out_w + 1u);
    }
    return best;
}

// Pools output columns top .. top + 3 (a vec4 of each row's sums `upper`
// and `lower`, before the bias `b` and the activation) into pooled columns
// col and col + 1 of the row at `base`, those inside the pooled row.
fn store_pooled(base: u32, col: u32, top: u32, upper: vec4<f32>, lower: vec4<f32>, b: f32) {
    let u = fused_activation(upper + vec4<f32>(b), p.act_mode, p.slope);
    let l = fused_activation(lower + vec4<f32>(b), p.act_mode, p.slope);
    let pooled_w = p.out_w / 2u;
    if col < pooled_w {
        let left = window_max(u.xy, l.xy, top);
        y[base + col] = left.value;
        argmax[base + col] = left.at;
    }
    if col + 1u < pooled_w {
        let right = window_max(u.zw, l.zw, top + 2u);
        y[base + col + 1u] = right.value;
        argmax[base + col + 1u] = right.at;
    }
}
