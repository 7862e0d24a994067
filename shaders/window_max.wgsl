
// ---- the maximum of a 2×2 window ----
// Shared by pool.wgsl's max pools and direct_conv_pool.wgsl's pooled
// convolutions, so that both compare alike: upper.x, upper.y (one row),
// then lower.x, lower.y (the row below), in that order, the first maximum
// kept (strict >). `top` is the window's top-left index h·W + w in its
// plane and `width` the plane's W; the arg-max is given the same way.

struct WindowMax {
    value: f32,
    at: u32,
}

fn window_max(upper: vec2<f32>, lower: vec2<f32>, top: u32, width: u32) -> WindowMax {
    var best = WindowMax(upper.x, top);
    if upper.y > best.value {
        best = WindowMax(upper.y, top + 1u);
    }
    if lower.x > best.value {
        best = WindowMax(lower.x, top + width);
    }
    if lower.y > best.value {
        best = WindowMax(lower.y, top + width + 1u);
    }
    return best;
}
