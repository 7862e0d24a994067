// Direct convolution with stride 1, for CPU-like adapters: no im2col
// matrix, and each input row segment loaded once for a whole window row.
//
//   Y[n, o, oh, ow] = act(Σ_{c, i, j} W[o, c, i, j] · X̃[n, c, oh + i, ow + j] + b[o])
//
// with X̃ the input zero-padded and laid out in rows of `pitch` vec4s
// (im2col.wgsl's pad). An invocation computes 8 output channels × 4·V
// columns of one output row: per (c, i) it loads the V + ⌈(kw − 1)/4⌉
// vec4s of input row oh + i that the window slides over, and takes the
// window's kw shifts of them as register swizzles. On lavapipe every
// storage load is a loop over the SIMD lanes, so loading each input value
// once per window row (instead of kw times, as an implicit GEMM does) is
// what makes this kernel fast there.
//
// Window rows over padding rows are skipped. With `images_first`,
// neighbouring invocations take the same output row of different images, so
// the lanes of a SIMD group (lavapipe runs 8 invocations as one) skip the
// same rows and the loop is really shorter: an input gradient's dY is padded
// by k − 1 − p rows, which LeNet-5's conv2 would otherwise multiply for 2/7
// of its window rows. Otherwise neighbours take neighbouring rows of one
// image, which share input rows in the cache (the host picks; see
// src/gpu/direct_conv.rs).
//
// The same kernel computes a convolution's input gradient: dX is the
// convolution of dY, padded by (kh − 1 − p, kw − 1 − p), with W's kernels
// flipped and its channel axes swapped; `w_start`, `w_step` and
// `w_channel_step` walk the weights backwards for that (u32 arithmetic
// wraps, and no weight is read at a wrapped index).
//
// The generated kernels (src/gpu/direct_conv.rs) follow this header, one
// per (V, kw).

struct Params {
    batch: u32,
    // Input channels of this convolution (O for an input gradient).
    channels: u32,
    // Output channels (C for an input gradient).
    out_channels: u32,
    out_h: u32,
    out_w: u32,
    // Padded input row length, in vec4s.
    pitch: u32,
    // Input rows stored per channel, and where the input's own rows lie
    // among the padded ones: rows pad_top .. pad_top + height − 1 (the rest
    // are zeros, which window rows skip). Padded row r is stored at
    // r − row_shift: row_shift is 0 for an input padded in full and pad_top
    // for one padded only at the sides (whose padding rows, never read, are
    // not stored).
    in_rows: u32,
    row_shift: u32,
    pad_top: u32,
    height: u32,
    kernel_h: u32,
    // Output row segments of 4·V columns.
    segments: u32,
    // Blocks of 8 output channels.
    o_blocks: u32,
    // 1: invocations → (channel block, output row, segment, image), the
    // image varying fastest; 0: (image, channel block, output row, segment).
    images_first: u32,
    // Weights: vec4 index of the first (c, i, j)'s 8 channels, its step to
    // the next j, and the extra step after a channel's kh·kw.
    w_start: u32,
    w_step: u32,
    w_channel_step: u32,
    // 1: add bias[o].
    bias_mode: u32,
    act_mode: u32,
    slope: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
// The padded input, rows of `pitch` vec4s (from padded row row_shift on).
@group(0) @binding(1) var<storage, read> image: array<vec4<f32>>;
// Binding 2, `weights`: packed (…, kh·kw, out channels rounded up to 4)
// (pack.wgsl), declared after this header as a storage or uniform buffer.
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

// Stores Y[base + col .. base + col + 3], the part inside the row, after
// the bias `b` and the fused activation.
fn store4(base: u32, col: u32, q: vec4<f32>, b: f32) {
    let v = fused_activation(q + vec4<f32>(b), p.act_mode, p.slope);
    if col < p.out_w {
        y[base + col] = v.x;
    }
    if col + 1u < p.out_w {
        y[base + col + 1u] = v.y;
    }
    if col + 2u < p.out_w {
        y[base + col + 2u] = v.z;
    }
    if col + 3u < p.out_w {
        y[base + col + 3u] = v.w;
    }
}
