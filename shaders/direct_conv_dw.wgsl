// The weight gradient of a stride-1 convolution, directly (the companion
// of direct_conv.wgsl):
//
//   dW[o, c, i, j] = Σ_{n, oh, ow} dY[n, o, oh, ow] · X̃[n, c, oh + i, ow + j]
//   db[o]          = Σ_{n, oh, ow} dY[n, o, oh, ow]
//
// with X̃ the padded input in rows of `pitch` vec4s and dY in rows of
// `out_vecs` vec4s (zero past OW; im2col.wgsl's pad), `dy_pitch` vec4s
// apart from vec4 `dy_origin` on (the input gradient's padded dY, or dY
// itself or padded to whole vec4s). An invocation sums,
// over one slice of the batch's (image, oh) rows, 8 output channels (all of
// them when there are fewer) × the kw taps of a group of window rows
// (c, i0 .. i0 + R − 1): per row and vec4 of output columns it loads those
// channels' dY once for the R window rows,
// and each window row's input segment once for its kw taps, taken as
// register swizzles. The invocations of channel 0's first group also
// store their dY sums, the bias gradient, which costs them no load. Each
// accumulator is one float that adds the dot product of a dY vec4 and an
// input vec4 (4 columns) per step: four times fewer accumulators than
// vec4 ones summed across at the end, which spilled on lavapipe. The
// slices' partial sums are added by reduce.wgsl's slice_sum, in slice
// order.
//
// The generated kernels (src/gpu/direct_conv.rs) follow this header, one
// per (channels, kw, R).

struct Params {
    batch: u32,
    channels: u32,
    out_channels: u32,
    out_h: u32,
    // dY's row length, in vec4s, the vec4s from one row to the next, and
    // where row 0 starts.
    out_vecs: u32,
    dy_pitch: u32,
    dy_origin: u32,
    // X̃'s row length, in vec4s, and rows per channel.
    pitch: u32,
    in_rows: u32,
    kernel_h: u32,
    // Blocks of output channels (8, or all of fewer).
    o_blocks: u32,
    // Slices of the flattened (image, output row) sequence, rows per
    // slice, and groups of window rows.
    slices: u32,
    rows_per_slice: u32,
    row_groups: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dy: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> image: array<vec4<f32>>;
// (slices, O, C, kh, kw): each slice's partial dW.
@group(0) @binding(3) var<storage, read_write> partial: array<f32>;
// (slices, O): each slice's partial db = Σ dY.
@group(0) @binding(4) var<storage, read_write> bias_partial: array<f32>;
