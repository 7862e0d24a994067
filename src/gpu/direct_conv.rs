//! Direct convolution with stride 1 (`shaders/direct_conv.wgsl`,
//! `shaders/direct_conv_dw.wgsl` and the kernels generated here): the
//! forward `Y = act(W ∗ X + b)`, the input gradient `dX = flip(W)ᵀ ∗ pad(dY)`
//! and the weight gradient, with no im2col matrix. Each input row segment
//! is loaded once per window row and reused for the window's kw shifts,
//! which on CPU-like adapters (lavapipe) beats an implicit GEMM that loads
//! it kw times. Whether a product runs here is the tuner's call
//! ([`super::tune::GemmTuner::direct_choice`]): a rule on CPU-like
//! adapters, a race per shape class on GPUs.

use std::fmt::Write;
use std::sync::OnceLock;

use super::context::{GpuBuffer, GpuContext, KernelSpec, Params, grid};
use super::conv::{Planes, input_padding, pad_planes, pad_planes_kept};
use super::gemm::{Bias, Epilogue};
use super::gemm_operand::Packing;
use super::gemm_source::ACTIVATION;
use super::modules::ModuleSource;
use super::reduce::slice_sum_into;
use super::tensor::GpuTensor;
use crate::geometry::Conv2dGeometry;

const HEADER: &str = include_str!("../../shaders/direct_conv.wgsl");
const WEIGHT_GRAD_HEADER: &str = include_str!("../../shaders/direct_conv_dw.wgsl");
const POOLED_EPILOGUE: &str = concat!(
    include_str!("../../shaders/direct_conv_pool.wgsl"),
    include_str!("../../shaders/window_max.wgsl")
);

/// Output channels per invocation (two vec4s of weights per window tap).
const CHANNELS_PER_INVOCATION: usize = 8;
/// The widest output row segment, in vec4s.
const MAX_SEGMENT_VECS: usize = 4;
/// The widest window the direct kernels are generated for.
pub const MAX_KERNEL_W: usize = 7;
/// Vec4s of weights a kernel reading them from a uniform buffer declares
/// (64 KiB, the binding size every adapter allows).
const UNIFORM_WEIGHT_VECS: usize = 4096;
const UNIFORM_WEIGHT_BYTES: u64 = 16 * UNIFORM_WEIGHT_VECS as u64;

/// Whether the direct kernel computes `g`'s forward: stride 1, a window at
/// most [`MAX_KERNEL_W`] wide, and the padded input within the device's
/// buffer limit.
pub fn runs_forward(ctx: &GpuContext, g: &Conv2dGeometry) -> bool {
    g.stride == 1
        && g.kernel_w <= MAX_KERNEL_W
        && padded_bytes(
            g.batch * g.channels,
            g.height + 2 * g.padding,
            g.width + 2 * g.padding,
        ) <= ctx.max_buffer_bytes()
}

/// Whether the direct kernel computes `g`'s input gradient: stride 1, a
/// window at most [`MAX_KERNEL_W`] wide and wider than the padding (dY is
/// padded by `k − 1 − p` on each side), and padded dY within the device's
/// buffer limit.
pub fn runs_input_grad(ctx: &GpuContext, g: &Conv2dGeometry) -> bool {
    g.stride == 1
        && g.kernel_w <= MAX_KERNEL_W
        && g.padding < g.kernel_h.min(g.kernel_w)
        && padded_bytes(
            g.batch * g.out_channels,
            g.height + g.kernel_h - 1,
            g.width + g.kernel_w - 1,
        ) <= ctx.max_buffer_bytes()
}

/// Whether the direct kernel can compute `g`'s weight gradient: stride 1,
/// a window at most [`MAX_KERNEL_W`] wide, and padded X and dY within the
/// device's buffer limit.
pub fn runs_weight_grad(ctx: &GpuContext, g: &Conv2dGeometry) -> bool {
    let max = ctx.max_buffer_bytes();
    runs_forward(ctx, g) && padded_bytes(g.batch * g.out_channels, g.out_h, g.out_w) <= max
}

/// Bytes of `planes` padded planes of `rows × width` in rows of whole
/// vec4s.
fn padded_bytes(planes: usize, rows: usize, width: usize) -> u64 {
    4 * (planes * rows * width.next_multiple_of(4)) as u64
}

/// Whether the direct kernel's neighbouring invocations take one output
/// row of different images (so a SIMD group skips the same window rows
/// over padding) rather than neighbouring rows of one image (which share
/// input rows in the cache): when at least a fifth of the window rows lie
/// over padding rows. LeNet-5's conv2 dX skips 2/7 of them and ran 2.8–3.6
/// → 1.7–2.9 ms so on lavapipe; fashion-cnn's 3×3 convolutions skip 1/42
/// and ran 5–10% slower.
fn images_first(in_rows: usize, pad_top: usize, height: usize, kernel_h: usize) -> bool {
    let out_h = in_rows + 1 - kernel_h;
    let seen: usize = (0..out_h)
        .map(|oh| kernel_h.min(pad_top + height - oh) - pad_top.saturating_sub(oh))
        .sum();
    5 * (out_h * kernel_h - seen) >= out_h * kernel_h
}

/// One generated kernel: `channels` output channels (8, or all of fewer)
/// × `vecs` vec4s of output columns per invocation, a window `kernel_w`
/// wide, weights from a uniform buffer or a storage one. Uniform buffers
/// suit small weights on lavapipe, which reads them with vector gathers
/// where each storage load is a loop over the lanes. A `pooled` kernel
/// computes two output rows per invocation and stores their 2×2 max pool
/// and its arg-max instead of the rows ([`forward_pooled_into`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Shape {
    channels: usize,
    vecs: usize,
    kernel_w: usize,
    uniform_weights: bool,
    pooled: bool,
}

/// The part of a kernel's family name for its output channels per
/// invocation: `6o_` for a kernel computing 6, nothing for the usual 8.
fn channels_tag(channels: usize) -> String {
    if channels < CHANNELS_PER_INVOCATION {
        format!("{channels}o_")
    } else {
        String::new()
    }
}

/// Every generated module, forward and weight gradient, as
/// [`super::modules::every_module`] lists them.
pub(super) fn modules() -> Vec<ModuleSource> {
    let mut all: Vec<ModuleSource> = Shape::all().map(Shape::module).collect();
    for channels in 1..=CHANNELS_PER_INVOCATION {
        for kernel_w in 1..=MAX_KERNEL_W {
            for rows in 1..=WEIGHT_GRAD_MAX_ROWS {
                all.push(weight_grad_module(channels, kernel_w, rows));
            }
        }
    }
    all
}

/// Kernels there can be: one per [`Shape`].
const SHAPES: usize = CHANNELS_PER_INVOCATION * 2 * 2 * MAX_SEGMENT_VECS * MAX_KERNEL_W;

impl Shape {
    /// The segments an output row of `out_w` columns is split into, and
    /// the shape whose segments cover it with the least waste; a
    /// convolution with fewer than 8 output channels (LeNet-5's conv1, and
    /// its conv2's dX) computes only those, not 8.
    fn for_row(
        out_channels: usize,
        out_w: usize,
        kernel_w: usize,
        uniform_weights: bool,
        pooled: bool,
    ) -> (usize, Shape) {
        let segments = out_w.div_ceil(4 * MAX_SEGMENT_VECS);
        let vecs = out_w.div_ceil(4 * segments);
        let shape = Shape {
            channels: out_channels.min(CHANNELS_PER_INVOCATION),
            vecs,
            kernel_w,
            uniform_weights,
            pooled,
        };
        (segments, shape)
    }

    /// Every shape there can be ([`SHAPES`] of them).
    fn all() -> impl Iterator<Item = Shape> {
        let flags = [(false, false), (false, true), (true, false), (true, true)];
        (1..=CHANNELS_PER_INVOCATION).flat_map(move |channels| {
            (1..=MAX_SEGMENT_VECS).flat_map(move |vecs| {
                (1..=MAX_KERNEL_W).flat_map(move |kernel_w| {
                    flags.map(|(uniform_weights, pooled)| Shape {
                        channels,
                        vecs,
                        kernel_w,
                        uniform_weights,
                        pooled,
                    })
                })
            })
        })
    }

    /// Its place in the tables of generated modules.
    fn index(self) -> usize {
        let variant =
            (self.channels - 1) * 4 + 2 * self.pooled as usize + self.uniform_weights as usize;
        (variant * MAX_SEGMENT_VECS + self.vecs - 1) * MAX_KERNEL_W + self.kernel_w - 1
    }

    /// The kernel's module: [`Shape::family`] and [`Shape::source`].
    fn module(self) -> ModuleSource {
        ModuleSource {
            family: self.family(),
            source: self.source(),
        }
    }

    /// The kernel's WGSL module (each generated once; one module per
    /// kernel, so a pipeline compiles only its own code).
    fn source(self) -> &'static str {
        static SOURCES: [OnceLock<String>; SHAPES] = [const { OnceLock::new() }; SHAPES];
        SOURCES[self.index()].get_or_init(|| {
            let weights = if self.uniform_weights {
                format!("var<uniform> weights: array<vec4<f32>, {UNIFORM_WEIGHT_VECS}>;")
            } else {
                "var<storage, read> weights: array<vec4<f32>>;".to_string()
            };
            let pooling = if self.pooled { POOLED_EPILOGUE } else { "" };
            format!(
                "{ACTIVATION}\n{HEADER}\n@group(0) @binding(2) {weights}\n{pooling}\n{}",
                self.kernel()
            )
        })
    }

    /// The module's family name (pipeline cache key and profile label).
    fn family(self) -> &'static str {
        static NAMES: [OnceLock<String>; SHAPES] = [const { OnceLock::new() }; SHAPES];
        NAMES[self.index()].get_or_init(|| {
            let memory = if self.uniform_weights { "_uniform" } else { "" };
            let channels = channels_tag(self.channels);
            let pool = if self.pooled { "_maxpool" } else { "" };
            format!(
                "direct_conv_{channels}{}x{}{memory}{pool}",
                4 * self.vecs,
                self.kernel_w
            )
        })
    }

    /// The kernel: `channels` output channels × `4·vecs` columns of one
    /// output row per invocation, or of two rows, pooled, for a `pooled`
    /// shape.
    fn kernel(self) -> String {
        let Shape {
            channels: rows,
            vecs,
            kernel_w,
            pooled,
            ..
        } = self;
        let loads = vecs + (kernel_w - 1).div_ceil(4);
        // Rows of what an invocation stores: output rows, or pooled rows.
        let out_rows = if pooled { "p.out_h / 2u" } else { "p.out_h" };
        let mut s = String::new();
        let w = &mut s;
        let _ = writeln!(
            w,
            "@compute @workgroup_size(64)\n\
             fn direct_conv(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{\n    \
             // Invocation → image and (channel block, row, segment), in\n    \
             // the order p.images_first picks.\n    \
             let index = gid.x + gid.y * nwg.x * 64u;\n    \
             let out_rows = {out_rows};\n    \
             let per_image = p.segments * out_rows * p.o_blocks;\n    \
             var n = index / per_image;\n    \
             var rest = index % per_image;\n    \
             if p.images_first != 0u {{\n        \
                 n = index % p.batch;\n        \
                 rest = index / p.batch;\n    \
             }}\n    \
             let segment = rest % p.segments;\n    \
             let row = (rest / p.segments) % out_rows;\n    \
             let block = rest / p.segments / out_rows;\n    \
             if n >= p.batch || block >= p.o_blocks {{\n        return;\n    }}"
        );
        declare_accumulators(w, "acc", "vec4<f32>", rows, vecs);
        if pooled {
            // Output row 2·row is kept in upper_* while acc_* sums 2·row + 1.
            declare_accumulators(w, "upper", "vec4<f32>", rows, vecs);
            let _ = writeln!(
                w,
                "    for (var half = 0u; half < 2u; half++) {{\n    \
                 let oh = 2u * row + half;"
            );
            for r in 0..rows {
                let line: Vec<String> = (0..vecs)
                    .map(|h| format!("acc_{r}_{h} = vec4<f32>(0.0);"))
                    .collect();
                let _ = writeln!(w, "    {}", line.join(" "));
            }
        } else {
            let _ = writeln!(w, "    let oh = row;");
        }
        let _ = writeln!(
            w,
            "    // Window rows i_lo .. i_hi − 1 see the input's own rows; the\n    \
             // others, all padding, add nothing.\n    \
             let i_lo = select(0u, p.pad_top - oh, oh < p.pad_top);\n    \
             let i_hi = min(p.kernel_h, p.pad_top + p.height - oh);\n    \
             let skipped = p.kernel_h - (i_hi - i_lo);\n    \
             var at = (n * p.channels * p.in_rows + oh + i_lo - p.row_shift) * p.pitch + segment * {vecs}u;\n    \
             var wi = p.w_start + block * {}u + i_lo * {kernel_w}u * p.w_step;\n    \
             for (var c = 0u; c < p.channels; c++) {{\n        \
             for (var i = i_lo; i < i_hi; i++) {{",
            CHANNELS_PER_INVOCATION / 4
        );
        for t in 0..loads {
            let _ = writeln!(w, "            let s{t} = image[at + {t}u];");
        }
        for j in 0..kernel_w {
            let _ = writeln!(w, "            {{");
            for q in 0..rows.div_ceil(4) {
                let _ = writeln!(w, "                let w{q} = weights[wi + {q}u];");
            }
            let _ = writeln!(w, "                wi += p.w_step;");
            for h in 0..vecs {
                let _ = writeln!(w, "                let x{h} = {};", segment_at(4 * h + j));
            }
            for r in 0..rows {
                let lane = ["x", "y", "z", "w"][r % 4];
                let line: Vec<String> = (0..vecs)
                    .map(|h| {
                        format!(
                            "acc_{r}_{h} = fma(vec4<f32>(w{}.{lane}), x{h}, acc_{r}_{h});",
                            r / 4
                        )
                    })
                    .collect();
                let _ = writeln!(w, "                {}", line.join(" "));
            }
            let _ = writeln!(w, "            }}");
        }
        let _ = writeln!(
            w,
            "            at += p.pitch;\n        \
             }}\n        \
             at += (p.in_rows - p.kernel_h + skipped) * p.pitch;\n        \
             wi += skipped * {kernel_w}u * p.w_step + p.w_channel_step;\n    \
             }}"
        );
        if pooled {
            let _ = writeln!(w, "    if half == 0u {{");
            for r in 0..rows {
                let line: Vec<String> = (0..vecs)
                    .map(|h| format!("upper_{r}_{h} = acc_{r}_{h};"))
                    .collect();
                let _ = writeln!(w, "        {}", line.join(" "));
            }
            let _ = writeln!(w, "    }}\n    }}");
        }
        // One output channel per pass, shifting the next one's accumulators
        // down (the store code appears once).
        let _ = writeln!(
            w,
            "    let o0 = block * {rows}u;\n    \
             for (var r = 0u; r < {rows}u && o0 + r < p.out_channels; r++) {{\n        \
             var b = 0.0;\n        \
             if p.bias_mode == 1u {{\n            b = bias[o0 + r];\n        }}"
        );
        if pooled {
            // Pooled column 2·v of the segment's vec4 v pools output columns
            // 4·v .. 4·v + 3 of rows 2·row and 2·row + 1.
            let _ = writeln!(
                w,
                "        let base = ((n * p.out_channels + o0 + r) * out_rows + row) * (p.out_w / 2u);\n        \
                 let top = 2u * row * p.out_w + segment * {}u;",
                4 * vecs
            );
            for h in 0..vecs {
                let _ = writeln!(
                    w,
                    "        store_pooled(base, segment * {}u + {}u, top + {}u, upper_0_{h}, acc_0_{h}, b);",
                    2 * vecs,
                    2 * h,
                    4 * h
                );
            }
            shift_accumulators(w, "upper", rows, vecs);
        } else {
            let _ = writeln!(
                w,
                "        let base = ((n * p.out_channels + o0 + r) * p.out_h + row) * p.out_w;"
            );
            for h in 0..vecs {
                let _ = writeln!(
                    w,
                    "        store4(base, segment * {}u + {}u, acc_0_{h}, b);",
                    4 * vecs,
                    4 * h
                );
            }
        }
        shift_accumulators(w, "acc", rows, vecs);
        let _ = writeln!(w, "    }}\n}}");
        s
    }
}

/// `var {name}_{r}_{h} = {ty}(0.0);` for `rows × cols` accumulators.
fn declare_accumulators(w: &mut String, name: &str, ty: &str, rows: usize, cols: usize) {
    for r in 0..rows {
        let line: Vec<String> = (0..cols)
            .map(|h| format!("var {name}_{r}_{h} = {ty}(0.0);"))
            .collect();
        let _ = writeln!(w, "    {}", line.join(" "));
    }
}

/// Moves each row of accumulators `name` one row up (`{name}_0_*` is
/// stored next): the store code appears once instead of once per row.
fn shift_accumulators(w: &mut String, name: &str, rows: usize, cols: usize) {
    for r in 1..rows {
        let line: Vec<String> = (0..cols)
            .map(|h| format!("{name}_{}_{h} = {name}_{r}_{h};", r - 1))
            .collect();
        let _ = writeln!(w, "        {}", line.join(" "));
    }
}

/// The vec4 of a loaded row segment (`s0`, `s1`, … vec4s) from its column
/// `first`: four register components, no load.
fn segment_at(first: usize) -> String {
    let column = |e: usize| format!("s{}.{}", e / 4, ["x", "y", "z", "w"][e % 4]);
    format!(
        "vec4<f32>({}, {}, {}, {})",
        column(first),
        column(first + 1),
        column(first + 2),
        column(first + 3)
    )
}

/// A stride-1 convolution as the kernel sees it.
struct Direct<'a> {
    /// The input, `(batch, channels, height, width)` planes.
    input: &'a GpuBuffer,
    batch: usize,
    channels: usize,
    height: usize,
    width: usize,
    /// Padding on each side, vertical and horizontal.
    pad: [usize; 2],
    kernel: [usize; 2],
    out_channels: usize,
    /// The weights and their packing (W itself for the forward, one
    /// matrix per output channel for the input gradient), and how the
    /// kernel walks them: `[start, step, channel step]` in vec4s.
    weights: &'a GpuBuffer,
    packing: Packing,
    walk: [u32; 3],
    epilogue: Epilogue<'a>,
    padding: InputPadding,
}

/// How [`Direct`] pads its input, and whether it keeps it for the weight
/// gradient.
#[derive(Clone, Copy)]
enum InputPadding {
    /// In full, and kept: a forward's X, whose padding rows the weight
    /// gradient reads.
    Kept,
    /// At the sides only (the kernel reads no padding row), kept when
    /// `keep`: an input gradient's dY, which the weight gradient can read
    /// in that layout ([`shared_dy_padding`]).
    Sides { keep: bool },
}

/// dY padded at the sides as the direct input gradient pads it, when the
/// direct weight gradient can read its rows there instead of padding dY
/// itself: `(planes, padding, pitch)` for [`pad_planes`]. That is when the
/// side padding `kw − 1 − p` is whole vec4s (so dY's rows start at a vec4)
/// and dY's rows are not whole vec4s (those it reads in place). LeNet-5's
/// conv2: dY rows of 10, padded by 4 to a pitch of 20.
pub(super) fn shared_dy_padding(g: &Conv2dGeometry) -> Option<(Planes, [usize; 2], usize)> {
    let pad_w = (g.kernel_w - 1).checked_sub(g.padding)?;
    if !pad_w.is_multiple_of(4) || g.out_w.is_multiple_of(4) {
        return None;
    }
    Some((
        dy_planes(g),
        [0, pad_w],
        (g.out_w + 2 * pad_w).next_multiple_of(4),
    ))
}

/// dY's planes, `(batch · O)` of `OH × OW`.
fn dy_planes(g: &Conv2dGeometry) -> Planes {
    Planes {
        count: g.batch * g.out_channels,
        height: g.out_h,
        width: g.out_w,
    }
}

/// Where [`Direct`] stores its result.
#[derive(Clone, Copy)]
enum Output<'a> {
    /// The output, `(batch, out_channels, out_h, out_w)`.
    Rows(&'a GpuBuffer),
    /// Its 2×2 max pool with stride 2, `(batch, out_channels, ⌊out_h/2⌋,
    /// ⌊out_w/2⌋)`, and the arg-max of each window as max pooling
    /// stores it.
    Pooled {
        y: &'a GpuBuffer,
        argmax: &'a GpuBuffer,
    },
}

impl Direct<'_> {
    /// Records the convolution into `out`.
    fn run(&self, ctx: &GpuContext, out: Output) {
        let [kh, kw] = self.kernel;
        let [pad_h, pad_w] = self.pad;
        let (in_rows, padded_w) = (self.height + 2 * pad_h, self.width + 2 * pad_w);
        let (out_h, out_w) = (in_rows + 1 - kh, padded_w + 1 - kw);
        let pitch = padded_w.next_multiple_of(4);
        let planes = Planes {
            count: self.batch * self.channels,
            height: self.height,
            width: self.width,
        };
        // The kernel reads no padding row, so only an input kept for the
        // weight gradient as the forward's (which it reads them of) stores
        // them.
        let (image, stored_rows, row_shift) = match self.padding {
            InputPadding::Kept => {
                let image = pad_planes_kept(ctx, self.input, planes, self.pad, pitch);
                (image, in_rows, 0)
            }
            InputPadding::Sides { keep } => {
                let pad = if keep { pad_planes_kept } else { pad_planes };
                let image = pad(ctx, self.input, planes, [0, pad_w], pitch);
                (image, self.height, pad_h)
            }
        };
        let uniform_weights = self.packing.bytes() <= UNIFORM_WEIGHT_BYTES
            && ctx.limits.max_uniform_buffer_binding_size >= UNIFORM_WEIGHT_BYTES;
        // A uniform binding is as large as the shader's array.
        let weights = ctx.storage_buffer(
            if uniform_weights {
                UNIFORM_WEIGHT_BYTES
            } else {
                self.packing.bytes()
            },
            "conv2d.direct_weights",
        );
        self.packing.record(ctx, self.weights, &weights);
        let pooled = matches!(out, Output::Pooled { .. });
        let (segments, shape) =
            Shape::for_row(self.out_channels, out_w, kw, uniform_weights, pooled);
        let o_blocks = self.out_channels.div_ceil(CHANNELS_PER_INVOCATION);
        let (act_mode, slope) = self
            .epilogue
            .activation_mode()
            .expect("only relu and leaky relu are fused into a convolution");
        let (bias, bias_mode) = match self.epilogue.bias {
            Bias::PerRow(bias) => (bias, 1),
            // Never read with bias_mode 0.
            _ => (self.input, 0),
        };
        let [w_start, w_step, w_channel_step] = self.walk;
        let params = Params::new()
            .u32(self.batch)
            .u32(self.channels)
            .u32(self.out_channels)
            .u32(out_h)
            .u32(out_w)
            .u32(pitch / 4)
            .u32(stored_rows)
            .u32(row_shift)
            .u32(pad_h)
            .u32(self.height)
            .u32(kh)
            .u32(segments)
            .u32(o_blocks)
            .u32(images_first(in_rows, pad_h, self.height, kh) as usize)
            .u32(w_start as usize)
            .u32(w_step as usize)
            .u32(w_channel_step as usize)
            .u32(bias_mode)
            .u32(act_mode as usize)
            .f32(slope);
        let (outputs, rows) = match out {
            Output::Rows(y) => (vec![y], out_h),
            Output::Pooled { y, argmax } => (vec![y, argmax], out_h / 2),
        };
        let mut spec = KernelSpec::new(shape.module(), "direct_conv", 3, outputs.len());
        if uniform_weights {
            spec = spec.with_uniform_input(1);
        }
        let kernel = ctx.kernel(&spec);
        let invocations = self.batch * o_blocks * rows * segments;
        ctx.dispatch(
            &kernel,
            &params,
            &[&image, &weights, bias],
            &outputs,
            grid(invocations, 64),
        );
    }
}

/// `Y (N, O, OH, OW) = act(W ∗ X + b)` into `y`, for a geometry
/// [`runs_forward`] accepts.
pub fn forward_into(
    ctx: &GpuContext,
    x: &GpuTensor,
    w: &GpuTensor,
    epilogue: Epilogue<'_>,
    g: &Conv2dGeometry,
    y: &GpuBuffer,
) {
    assert!(runs_forward(ctx, g), "no direct kernel for {g:?}");
    forward(x, w, epilogue, g).run(ctx, Output::Rows(y));
}

/// The 2×2 max pool with stride 2 of `act(W ∗ X + b)` into `y`, `(N, O,
/// ⌊OH/2⌋, ⌊OW/2⌋)`, and its arg-maxes into `argmax`, as
/// [`super::pool::maxpool_forward`] on [`forward_into`]'s output would
/// store them (bit for bit), in one pass that never stores the
/// convolution's output; for a geometry [`runs_forward`] accepts.
pub fn forward_pooled_into(
    ctx: &GpuContext,
    x: &GpuTensor,
    w: &GpuTensor,
    epilogue: Epilogue<'_>,
    g: &Conv2dGeometry,
    [y, argmax]: [&GpuBuffer; 2],
) {
    assert!(runs_forward(ctx, g), "no direct kernel for {g:?}");
    forward(x, w, epilogue, g).run(ctx, Output::Pooled { y, argmax });
}

/// The forward of `g` as the direct kernel runs it.
fn forward<'a>(
    x: &'a GpuTensor,
    w: &'a GpuTensor,
    epilogue: Epilogue<'a>,
    g: &Conv2dGeometry,
) -> Direct<'a> {
    // (C·kh·kw, ⌈O/4⌉·4): the 8 channels of a tap are two vec4s (the
    // second past O reads the next tap's, for outputs not stored).
    let packing = Packing {
        rows: g.out_channels,
        depth: g.col_rows(),
        transposed: true,
        stride: 0,
        count: 1,
    };
    let o_vecs = g.out_channels.div_ceil(4) as u32;
    Direct {
        input: &x.buffer,
        batch: g.batch,
        channels: g.channels,
        height: g.height,
        width: g.width,
        pad: [g.padding, g.padding],
        kernel: [g.kernel_h, g.kernel_w],
        out_channels: g.out_channels,
        weights: &w.buffer,
        packing,
        walk: [0, o_vecs, 0],
        epilogue,
        padding: InputPadding::Kept,
    }
}

/// `dX (N, C, H, W)`: dY padded by `(kh − 1 − p, kw − 1 − p)` convolved
/// with W's kernels flipped and its channel axes swapped,
/// `dX[n, c, h, w] = Σ_{o, i, j} W[o, c, kh−1−i, kw−1−j] · dY̅[n, o, h + i, w + j]`,
/// for a geometry [`runs_input_grad`] accepts.
pub fn input_grad(
    ctx: &GpuContext,
    w: &GpuTensor,
    dy: &GpuTensor,
    g: &Conv2dGeometry,
) -> GpuTensor {
    assert!(
        runs_input_grad(ctx, g),
        "no direct input gradient for {g:?}"
    );
    let taps = g.kernel_h * g.kernel_w;
    // Per output channel o, its (C, kh·kw) kernels transposed: (O, kh·kw,
    // ⌈C/4⌉·4), walked backwards over the taps (the flip).
    let packing = Packing {
        rows: g.channels,
        depth: taps,
        transposed: true,
        stride: g.channels * taps,
        count: g.out_channels,
    };
    let c_vecs = g.channels.div_ceil(4) as u32;
    let taps = taps as u32;
    let dx = ctx.tensor(&g.input_shape(), "conv2d.dx");
    Direct {
        input: &dy.buffer,
        batch: g.batch,
        channels: g.out_channels,
        height: g.out_h,
        width: g.out_w,
        pad: [g.kernel_h - 1 - g.padding, g.kernel_w - 1 - g.padding],
        kernel: [g.kernel_h, g.kernel_w],
        out_channels: g.channels,
        weights: &w.buffer,
        packing,
        walk: [
            (taps - 1) * c_vecs,
            c_vecs.wrapping_neg(),
            2 * taps * c_vecs,
        ],
        epilogue: Bias::None.into(),
        padding: InputPadding::Sides {
            keep: shared_dy_padding(g).is_some(),
        },
    }
    .run(ctx, Output::Rows(&dx.buffer));
    dx
}

/// Invocations a weight gradient's dispatch aims for at least on a GPU:
/// output channel blocks × channels × groups of window rows, times slices
/// of the batch's (image, output row) sequence to make up the rest. Set by
/// the device class alone, so every adapter of a class adds in the same
/// order.
const WEIGHT_GRAD_TARGET_INVOCATIONS_GPU: usize = 512;

/// The same on CPU-like adapters, where every slice stores its partial
/// sums and `slice_sum` adds them one slice at a time, each access a loop
/// over the SIMD lanes on lavapipe. LeNet-5's conv1 dW (one channel block
/// and one input channel) ran as 448 slices of 4 rows at 512; at 128, as
/// 128 slices of 14, its two dW kernels and their slice sums took 2.5–3.1
/// ms per step against 2.9–4.1 (`bench kernels`, four alternating rounds),
/// and fashion-cnn's were unchanged.
const WEIGHT_GRAD_TARGET_INVOCATIONS_CPU_LIKE: usize = 128;

/// [`WEIGHT_GRAD_TARGET_INVOCATIONS_GPU`] or
/// [`WEIGHT_GRAD_TARGET_INVOCATIONS_CPU_LIKE`] for `ctx`'s adapter (a
/// CPU-like one told to split like a GPU takes the GPU's, for the tests).
fn weight_grad_target_invocations(ctx: &GpuContext) -> usize {
    if ctx.gemm_tuner.splits_like_a_gpu() {
        WEIGHT_GRAD_TARGET_INVOCATIONS_GPU
    } else {
        WEIGHT_GRAD_TARGET_INVOCATIONS_CPU_LIKE
    }
}

/// The most window rows one weight-gradient invocation sums. More rows
/// share each dY load among more multiply-adds, and a 5×5 window's rows
/// are then one group (at 3, two groups computed a sixth row and loaded dY
/// twice). With vec4 accumulators 3 rows won (LeNet-5's two dW on
/// lavapipe: 1 row 4.1–4.6 ms, 3 rows 2.9–3.3, 5 rows 3.0–4.7, the 200
/// vec4s spilling); with scalar ones (8 channels × rows × kw floats) 5 rows
/// won (session 15: conv2's dW 2.9–3.9 ms against 3.7–5.2 at 3 rows).
const WEIGHT_GRAD_MAX_ROWS: usize = 5;

/// Window rows per weight-gradient invocation for a window `kernel_h`
/// high: the fewest groups of at most [`WEIGHT_GRAD_MAX_ROWS`], as even as
/// they can be (a last group's rows past kh repeat kh − 1 and are not
/// stored).
fn weight_grad_rows(kernel_h: usize) -> usize {
    kernel_h.div_ceil(kernel_h.div_ceil(WEIGHT_GRAD_MAX_ROWS))
}

/// Weight-gradient kernels there can be: one per (output channels, kw,
/// window rows).
const WEIGHT_GRAD_KERNELS: usize = CHANNELS_PER_INVOCATION * MAX_KERNEL_W * WEIGHT_GRAD_MAX_ROWS;

/// The place of the kernel for `channels`, `kernel_w` and `rows` in the
/// tables of generated modules.
fn weight_grad_index(channels: usize, kernel_w: usize, rows: usize) -> usize {
    ((channels - 1) * WEIGHT_GRAD_MAX_ROWS + rows - 1) * MAX_KERNEL_W + kernel_w - 1
}

/// The module of the weight-gradient kernel for `channels` output
/// channels, windows `kernel_w` wide and `rows` window rows per invocation.
fn weight_grad_module(channels: usize, kernel_w: usize, rows: usize) -> ModuleSource {
    ModuleSource {
        family: weight_grad_family(channels, kernel_w, rows),
        source: weight_grad_source(channels, kernel_w, rows),
    }
}

/// The module family of the weight-gradient kernel for `channels` output
/// channels, windows `kernel_w` wide and `rows` window rows per invocation.
fn weight_grad_family(channels: usize, kernel_w: usize, rows: usize) -> &'static str {
    static NAMES: [OnceLock<String>; WEIGHT_GRAD_KERNELS] =
        [const { OnceLock::new() }; WEIGHT_GRAD_KERNELS];
    NAMES[weight_grad_index(channels, kernel_w, rows)]
        .get_or_init(|| format!("direct_conv_dw_{}{rows}x{kernel_w}", channels_tag(channels)))
}

/// The weight-gradient kernel for `channels` output channels per
/// invocation (8, or all of fewer), windows `kernel_w` wide and
/// `window_rows` rows of them per invocation (generated once).
fn weight_grad_source(channels: usize, kernel_w: usize, window_rows: usize) -> &'static str {
    static SOURCES: [OnceLock<String>; WEIGHT_GRAD_KERNELS] =
        [const { OnceLock::new() }; WEIGHT_GRAD_KERNELS];
    SOURCES[weight_grad_index(channels, kernel_w, window_rows)].get_or_init(|| {
        let rows = channels;
        let loads = 1 + (kernel_w - 1).div_ceil(4);
        let taps_per_row = window_rows * kernel_w;
        let mut s = format!("{WEIGHT_GRAD_HEADER}\n");
        let w = &mut s;
        let _ = writeln!(
            w,
            "@compute @workgroup_size(64)\n\
             fn direct_conv_dw(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{\n    \
             // Invocation → (slice, channel block, c, group of window rows).\n    \
             let index = gid.x + gid.y * nwg.x * 64u;\n    \
             let group = index % p.row_groups;\n    \
             let c = (index / p.row_groups) % p.channels;\n    \
             let block = (index / p.row_groups / p.channels) % p.o_blocks;\n    \
             let slice = index / p.row_groups / p.channels / p.o_blocks;\n    \
             if slice >= p.slices {{\n        return;\n    }}\n    \
             let o0 = block * {rows}u;\n    \
             let i0 = group * {window_rows}u;\n    \
             let plane = p.out_h * p.out_vecs;"
        );
        // acc_{r}_{u·kw + j}: channel o0 + r, tap (i0 + u, j); sum_{r}: its
        // dY, the bias gradient (stored by the invocations of c = 0 and the
        // first group only, but summed by all: a lane mask would cost more).
        declare_accumulators(w, "acc", "f32", rows, taps_per_row);
        for r in 0..rows {
            let _ = writeln!(w, "    var sum_{r} = vec4<f32>(0.0);");
        }
        let _ = writeln!(
            w,
            "    // The slice's rows of the flattened (image, output row) sequence.\n    \
             let first = slice * p.rows_per_slice;\n    \
             let last = min(first + p.rows_per_slice, p.batch * p.out_h);\n    \
             var n = first / p.out_h;\n    \
             var oh = first % p.out_h;\n    \
             for (var row = first; row < last; row++) {{\n        \
             let at = ((n * p.channels + c) * p.in_rows + oh) * p.pitch;"
        );
        for u in 0..window_rows {
            let _ = writeln!(
                w,
                "        let at{u} = at + min(i0 + {u}u, p.kernel_h - 1u) * p.pitch;"
            );
        }
        for r in 0..rows {
            let _ = writeln!(
                w,
                "        let d{r} = ((n * p.out_channels + min(o0 + {r}u, p.out_channels - 1u)) * p.out_h + oh) * p.dy_pitch + p.dy_origin;"
            );
        }
        let _ = writeln!(w, "        for (var t = 0u; t < p.out_vecs; t++) {{");
        for r in 0..rows {
            let _ = writeln!(w, "            let y{r} = dy[d{r} + t];");
            let _ = writeln!(w, "            sum_{r} += y{r};");
        }
        for u in 0..window_rows {
            let _ = writeln!(w, "            {{");
            for q in 0..loads {
                let _ = writeln!(w, "                let s{q} = image[at{u} + t + {q}u];");
            }
            for j in 0..kernel_w {
                let _ = writeln!(w, "                let x{j} = {};", segment_at(j));
            }
            for r in 0..rows {
                let line: Vec<String> = (0..kernel_w)
                    .map(|j| {
                        let a = u * kernel_w + j;
                        format!("acc_{r}_{a} += dot(y{r}, x{j});")
                    })
                    .collect();
                let _ = writeln!(w, "                {}", line.join(" "));
            }
            let _ = writeln!(w, "            }}");
        }
        let _ = writeln!(
            w,
            "        }}\n        \
             oh++;\n        \
             if oh == p.out_h {{\n            oh = 0u;\n            n++;\n        }}\n    \
             }}\n    \
             let taps = p.kernel_h * {kernel_w}u;\n    \
             for (var r = 0u; r < {rows}u && o0 + r < p.out_channels; r++) {{\n        \
             if c == 0u && group == 0u {{\n            \
             bias_partial[slice * p.out_channels + o0 + r] = (sum_0.x + sum_0.y) + (sum_0.z + sum_0.w);\n        \
             }}\n        \
             let at = ((slice * p.out_channels + o0 + r) * p.channels + c) * taps + i0 * {kernel_w}u;"
        );
        for u in 0..window_rows {
            let guard = if u == 0 { String::new() } else { format!("if i0 + {u}u < p.kernel_h ") };
            let _ = writeln!(w, "        {guard}{{");
            for j in 0..kernel_w {
                let a = u * kernel_w + j;
                let _ = writeln!(
                    w,
                    "            partial[at + {a}u] = acc_0_{a};"
                );
            }
            let _ = writeln!(w, "        }}");
        }
        shift_accumulators(w, "acc", rows, taps_per_row);
        for r in 1..rows {
            let _ = writeln!(w, "        sum_{} = sum_{r};", r - 1);
        }
        let _ = writeln!(w, "    }}\n}}");
        s
    })
}

/// `dW (O, C, kh, kw) = Σ_{n, oh, ow} dY[n, o, oh, ow] · X̃[n, c, oh + i, ow + j]`
/// and `db (O) = Σ_{n, oh, ow} dY[n, o, oh, ow]` in one pass, for a geometry [`runs_weight_grad`] accepts: slices of the batch's
/// (image, output row) sequence summed by the kernel, then added in slice
/// order.
pub fn weight_grads(
    ctx: &GpuContext,
    x: &GpuTensor,
    dy: &GpuTensor,
    g: &Conv2dGeometry,
) -> (GpuTensor, GpuTensor) {
    assert!(
        runs_weight_grad(ctx, g),
        "no direct weight gradient for {g:?}"
    );
    // X padded as the forward padded it (and kept it, for this).
    let (x_planes, padding, pitch) = input_padding(g);
    let image = pad_planes(ctx, &x.buffer, x_planes, padding, pitch);
    // dY in rows of whole vec4s, `dy_pitch` vec4s apart from vec4
    // `dy_origin` on: itself when they already are, else the input
    // gradient's padded dY where it can be read (which the input gradient,
    // run first, kept), else dY padded to whole vec4s.
    let out_vecs = g.out_w.div_ceil(4);
    let (padded_dy, dy_pitch, dy_origin) = if g.out_w.is_multiple_of(4) {
        (None, out_vecs, 0)
    } else if let Some((planes, pad, pitch)) = shared_dy_padding(g) {
        let padded = pad_planes(ctx, &dy.buffer, planes, pad, pitch);
        (Some(padded), pitch / 4, pad[1] / 4)
    } else {
        let padded = pad_planes(ctx, &dy.buffer, dy_planes(g), [0, 0], 4 * out_vecs);
        (Some(padded), out_vecs, 0)
    };
    let channels = g.out_channels.min(CHANNELS_PER_INVOCATION);
    let o_blocks = g.out_channels.div_ceil(channels);
    let window_rows = weight_grad_rows(g.kernel_h);
    let row_groups = g.kernel_h.div_ceil(window_rows);
    let per_slice = o_blocks * g.channels * row_groups;
    let rows_total = g.batch * g.out_h;
    let rows_per_slice = rows_total.div_ceil(
        weight_grad_target_invocations(ctx)
            .div_ceil(per_slice)
            .min(rows_total),
    );
    let slices = rows_total.div_ceil(rows_per_slice);
    let dw = ctx.tensor(&g.weight_shape(), "conv2d.dw");
    let db = ctx.tensor(&[g.out_channels], "conv2d.db");
    let len = dw.len();
    let partials = (slices > 1).then(|| {
        (
            ctx.storage_buffer(4 * (slices * len) as u64, "conv2d.dw.slices"),
            ctx.storage_buffer(4 * (slices * g.out_channels) as u64, "conv2d.db.slices"),
        )
    });
    let params = Params::new()
        .u32(g.batch)
        .u32(g.channels)
        .u32(g.out_channels)
        .u32(g.out_h)
        .u32(out_vecs)
        .u32(dy_pitch)
        .u32(dy_origin)
        .u32(pitch / 4)
        .u32(g.height + 2 * g.padding)
        .u32(g.kernel_h)
        .u32(o_blocks)
        .u32(slices)
        .u32(rows_per_slice)
        .u32(row_groups);
    let kernel = ctx.kernel(&KernelSpec::new(
        weight_grad_module(channels, g.kernel_w, window_rows),
        "direct_conv_dw",
        2,
        2,
    ));
    let (dw_out, db_out) = match &partials {
        Some((dw_slices, db_slices)) => (dw_slices, db_slices),
        None => (&*dw.buffer, &*db.buffer),
    };
    ctx.dispatch(
        &kernel,
        &params,
        &[padded_dy.as_ref().unwrap_or(&dy.buffer), &image],
        &[dw_out, db_out],
        grid(slices * per_slice, 64),
    );
    if let Some((dw_slices, db_slices)) = &partials {
        slice_sum_into(ctx, dw_slices, &dw.buffer, slices, len);
        slice_sum_into(ctx, db_slices, &db.buffer, slices, g.out_channels);
    }
    (dw, db)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_go_first_where_a_fifth_of_the_window_rows_are_padding() {
        // LeNet-5's conv2 dX: dY 10 rows padded by 4, 5×5: 20 of 70 skipped.
        assert!(images_first(18, 4, 10, 5));
        // 3×3 with padding 1 on 28 rows: 2 of 84 skipped.
        assert!(!images_first(30, 1, 28, 3));
        // No padding: nothing skipped.
        assert!(!images_first(14, 0, 14, 5));
        // 2 rows padded by 1, 2×2: 2 of 6 skipped; 8 rows padded by 1,
        // 3×3: 2 of 24.
        assert!(images_first(4, 1, 2, 2));
        assert!(!images_first(10, 1, 8, 3));
    }

    #[test]
    fn an_invocation_computes_at_most_8_channels_and_16_columns_with_little_waste() {
        // LeNet-5's conv1: 6 channels, rows of 28 as two segments of 16.
        let (segments, shape) = Shape::for_row(6, 28, 5, true, false);
        assert_eq!((segments, shape.channels, shape.vecs), (2, 6, 4));
        // Its conv2: 16 channels in blocks of 8, rows of 10 as one of 12.
        let (segments, shape) = Shape::for_row(16, 10, 5, true, true);
        assert_eq!((segments, shape.channels, shape.vecs), (1, 8, 3));
        // Every shape has a place of its own in the tables.
        let mut places = std::collections::HashSet::new();
        for shape in Shape::all() {
            assert!(shape.index() < SHAPES && places.insert(shape.index()));
        }
        assert_eq!(places.len(), SHAPES);
    }

    #[test]
    fn weight_gradient_rows_split_the_window_evenly() {
        let rows: Vec<usize> = (1..=MAX_KERNEL_W).map(weight_grad_rows).collect();
        assert_eq!(rows, [1, 2, 3, 4, 5, 3, 4]);
    }
}
