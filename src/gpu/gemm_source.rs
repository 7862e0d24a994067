//! The WGSL source of the GEMM kernels: `shaders/gemm.wgsl` (parameters,
//! bindings, the epilogue) followed by one register-blocked kernel per block
//! shape, unrolled here because WGSL has no macros and the accumulators must
//! be separate variables for the compiler to keep them in registers.

use std::fmt::Write;
use std::sync::OnceLock;

use super::modules::ModuleSource;

/// The shared part of the GEMM module.
const COMMON: &str = include_str!("../../shaders/gemm.wgsl");
/// The epilogue's activation, shared with the direct convolution.
pub(super) const ACTIVATION: &str = include_str!("../../shaders/activation.wgsl");

/// One GEMM kernel: each invocation computes `rows × cols` outputs, from
/// registers alone or (`tiled`) from tiles shared through workgroup memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Block {
    /// Rows of C per invocation (a multiple of 4).
    pub rows: usize,
    /// Columns of C per invocation (a multiple of 4).
    pub cols: usize,
    /// Workgroup-memory tiles (`gemm_tiled` in shaders/gemm.wgsl) instead of
    /// registers alone.
    pub tiled: bool,
    /// Implicit GEMM for a convolution's forward or weight gradient: B is
    /// `X_col` or `X_colᵀ`, read straight from the (zero-padded) input image
    /// instead of from an im2col or im2row matrix.
    pub implicit: bool,
    /// Invocations of a workgroup take different batch slots (products, or
    /// partial sums of a summed batch) of one block of C, instead of
    /// different blocks: on CPU-like adapters, where a workgroup's
    /// invocations are SIMD lanes, a C of one or two blocks (a small conv's
    /// weight gradient) then still fills the lanes. The same pipeline as the
    /// block without it (a uniform parameter picks the mapping), so it costs
    /// no compile of its own.
    pub slot_lanes: bool,
    /// Operands packed with 4 consecutive depths per vec4 instead of 4
    /// consecutive rows (`depth4_kernel` in this module): CPU-like adapters
    /// with subgroups of exactly `workgroup[0]` lanes only.
    pub depth4: bool,
    /// Invocations per workgroup along N and M (along the slots with
    /// `slot_lanes`). A register-blocked kernel's invocations are laid out
    /// in one dimension and mapped to this shape by the kernel itself, so a
    /// block and its slot-lanes variant (as many invocations) share a
    /// pipeline. The small block has 32 (see [`SMALL`]), the others 64.
    /// One shape per kernel: every pipeline is compiled anew on CPU-like
    /// adapters, which a cold first step pays for. (Shapes fitted to each product ran no
    /// faster in training; idle invocations of a small product mostly skip.)
    pub workgroup: [usize; 2],
}

impl Block {
    /// The block's name, e.g. `gemm_8x16_slots` (in the tuning cache, check
    /// rows and errors).
    pub fn name(self) -> &'static str {
        if self.depth4 {
            return match (self.rows, self.cols) {
                (32, 8) => "gemm_32x8_k4",
                _ => unreachable!("no GEMM kernel is generated for {self:?}"),
            };
        }
        match (
            self.rows,
            self.cols,
            self.tiled,
            self.implicit,
            self.slot_lanes,
        ) {
            (8, 16, false, false, false) => "gemm_8x16",
            (32, 16, false, false, false) => "gemm_32x16",
            (8, 8, true, false, false) => "gemm_tiled",
            (4, 4, true, false, false) => "gemm_tiled_64",
            (8, 16, false, true, false) => "conv_8x16",
            (32, 16, false, true, false) => "conv_32x16",
            (8, 16, false, false, true) => "gemm_8x16_slots",
            (8, 16, false, true, true) => "conv_8x16_slots",
            _ => unreachable!("no GEMM kernel is generated for {self:?}"),
        }
    }

    /// The WGSL entry point that runs the block: its name, except that a
    /// slot-lanes block runs its twin's kernel.
    pub fn entry(self) -> &'static str {
        Block {
            slot_lanes: false,
            ..self
        }
        .name()
    }

    /// The entry point of the block's twin that loads A once per subgroup
    /// (see [`source`]); register blocks only, not their slot-lanes
    /// mapping.
    pub fn entry_sharing_a(self) -> &'static str {
        if self.depth4 {
            return self.name();
        }
        match self.name() {
            "gemm_8x16" => "gemm_8x16_sg",
            "gemm_32x16" => "gemm_32x16_sg",
            "conv_8x16" => "conv_8x16_sg",
            "conv_32x16" => "conv_32x16_sg",
            name => unreachable!("{name} has no subgroup twin"),
        }
    }

    /// Whether the block's kernel has a twin reading both operands by rows
    /// ([`Reads::BY_ROWS`]): the small block's (its slot-lanes mapping runs
    /// the same kernel).
    pub fn reads_by_rows(self) -> bool {
        self.entry() == SMALL.name()
    }

    /// The entry point that runs the block reading its operands as `reads`
    /// says, loading A once per subgroup when `share_a`.
    pub fn entry_reading(self, reads: Reads, share_a: bool) -> &'static str {
        if reads == Reads::PACKED || reads == Reads::IMPLICIT {
            return if share_a {
                self.entry_sharing_a()
            } else {
                self.entry()
            };
        }
        assert!(
            reads == Reads::BY_ROWS && self.reads_by_rows(),
            "no kernel of {} reads {reads:?}",
            self.name()
        );
        if share_a {
            "gemm_8x16_rows_sg"
        } else {
            "gemm_8x16_rows"
        }
    }

    /// Whether the block can load A once per subgroup, read as `a`, on a
    /// device whose subgroups are always `lanes` invocations: see
    /// [`Block::shares_a_in`]; A read by rows takes a lane per row.
    pub fn shares_a_read_in(self, a: ARead, lanes: usize) -> bool {
        self.shares_a_in(lanes) && (a != ARead::Rows4 || lanes >= self.rows)
    }

    /// Whether the block can load A once per subgroup on a device whose
    /// subgroups are always `lanes` invocations: the lanes of a subgroup
    /// must all compute the same rows of C (so `lanes` divides the
    /// workgroup's width), and enough of them must exist to load those
    /// rows' vec4s.
    pub fn shares_a_in(self, lanes: usize) -> bool {
        if self.depth4 {
            return lanes == self.workgroup[0];
        }
        !self.tiled
            && !self.slot_lanes
            && lanes.is_power_of_two()
            && lanes >= self.rows / 4
            && self.workgroup[0].is_multiple_of(lanes)
    }

    /// The same block reading B from an image (implicit GEMM), where one is
    /// generated; the tiled kernel has none.
    pub fn implicit_twin(self) -> Option<Block> {
        CONV_BLOCKS.into_iter().find(|b| {
            (b.rows, b.cols, b.slot_lanes) == (self.rows, self.cols, self.slot_lanes) && !self.tiled
        })
    }

    /// The same block reading a packed B.
    pub fn explicit_twin(self) -> Block {
        Block {
            implicit: false,
            ..self
        }
    }
}

/// How a register kernel reads A.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ARead {
    /// Packed (`shaders/pack.wgsl`): a vec4 holds 4 rows at one depth.
    Packed,
    /// Row-major `(M, K)` where it lies, one value per load (the implicit
    /// kernels').
    Rows,
    /// Row-major `(M, K)` where it lies, K a multiple of 4: a vec4 holds 4
    /// depths of one row.
    Rows4,
}

/// How a register kernel reads B.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BRead {
    /// Packed: a vec4 holds 4 columns at one depth.
    Packed,
    /// From a convolution's image (the implicit kernels).
    Image,
    /// `(N, K)` row-major where it lies (`op(B)` transposed), K a multiple
    /// of 4: a vec4 holds 4 depths of one column.
    Rows4,
}

/// How a register kernel reads its operands. Reading both by rows
/// (`Rows4`) saves their packs, a dispatch each, with as many vec4 loads as
/// the packed layout takes: a linear layer's input and weight are both
/// stored so, the forward's A and B.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reads {
    /// How it reads A.
    pub a: ARead,
    /// How it reads B.
    pub b: BRead,
}

impl Reads {
    /// Both operands packed.
    pub const PACKED: Reads = Reads {
        a: ARead::Packed,
        b: BRead::Packed,
    };
    /// The implicit kernels': A by rows, B from the image.
    pub const IMPLICIT: Reads = Reads {
        a: ARead::Rows,
        b: BRead::Image,
    };
    /// Both by rows, 4 depths per vec4 (the small block's twin). The only
    /// such kernel generated: each one (its loop body 4 depths long) costs
    /// LLVM about 0.3 s at its first dispatch on lavapipe, and the others
    /// (one operand by rows, the other packed) gained less than that.
    pub const BY_ROWS: Reads = Reads {
        a: ARead::Rows4,
        b: BRead::Rows4,
    };

    /// Depths per pass of the loop over K: 4 where an operand is read by
    /// rows (K is then a multiple of 4).
    fn depths_per_pass(self) -> usize {
        if self.a == ARead::Rows4 || self.b == BRead::Rows4 {
            4
        } else {
            1
        }
    }
}

/// The default kernel: small register blocks, good everywhere. 32
/// invocations per workgroup, so a product of 32–64 blocks (LeNet-5's
/// fully connected layers: 64×120 is 8 × 8 blocks) is two workgroups, which
/// lavapipe runs on two threads, not one.
pub const SMALL: Block = Block {
    rows: 8,
    cols: 16,
    tiled: false,
    implicit: false,
    slot_lanes: false,
    depth4: false,
    workgroup: [8, 4],
};
/// Tall register blocks: half the loads per multiply-add, for large products
/// on CPU-like adapters (on GPUs its 128 accumulators would spill).
pub const TALL: Block = Block {
    rows: 32,
    cols: 16,
    tiled: false,
    implicit: false,
    slot_lanes: false,
    depth4: false,
    workgroup: [16, 4],
};
/// Workgroup-memory tiles of 128×128, for large products on GPUs.
pub const TILED: Block = Block {
    rows: 8,
    cols: 8,
    tiled: true,
    implicit: false,
    slot_lanes: false,
    depth4: false,
    workgroup: [16, 16],
};
/// Workgroup-memory tiles of 64×64, for products with too few 128×128
/// blocks to fill a GPU.
pub const TILED_64: Block = Block {
    rows: 4,
    cols: 4,
    ..TILED
};
/// The small block with 32 batch slots per workgroup, one per invocation
/// (`gemm_8x16` with its invocations mapped to slots).
pub const SLOTS: Block = Block {
    slot_lanes: true,
    workgroup: [32, 1],
    ..SMALL
};

/// Tall register blocks over operands packed 4 depths per vec4: each
/// accumulator takes 4 depths in a row, so one that lives on the stack is
/// loaded and stored once per 4 (`depth4_kernel` in this module). Needs
/// subgroups of exactly 8 lanes (lavapipe's).
pub const DEPTH4: Block = Block {
    rows: 32,
    cols: 8,
    tiled: false,
    implicit: false,
    slot_lanes: false,
    depth4: true,
    workgroup: [8, 8],
};

/// Every GEMM kernel on packed operands.
pub const BLOCKS: [Block; 6] = [SMALL, TALL, TILED_64, TILED, SLOTS, DEPTH4];

/// Every implicit-GEMM convolution kernel: the register blocks with B read
/// from the image.
pub const CONV_BLOCKS: [Block; 3] = [
    Block {
        implicit: true,
        ..SMALL
    },
    Block {
        implicit: true,
        ..TALL
    },
    Block {
        implicit: true,
        ..SLOTS
    },
];

/// The complete GEMM module source (built once per version). With
/// `subgroups`, each register-blocked kernel also has a twin (`…_sg`) that
/// loads A once per subgroup: the rows of C a subgroup computes are the
/// same for all its lanes, so each of the first `rows / 4` lanes loads one
/// of their vec4s and `subgroupBroadcast` hands it to the others. On
/// CPU-like adapters, where every lane's load is a gather, that removes
/// most of A's loads; see [`Block::shares_a_in`] for when it applies.
pub fn source(subgroups: bool) -> &'static str {
    static SOURCES: [OnceLock<String>; 2] = [const { OnceLock::new() }; 2];
    SOURCES[subgroups as usize].get_or_init(|| {
        let mut s = format!("{ACTIVATION}\n{COMMON}");
        for block in BLOCKS
            .iter()
            .chain(&CONV_BLOCKS)
            .filter(|b| !b.tiled && !b.slot_lanes && !b.depth4)
        {
            let reads = if block.implicit {
                Reads::IMPLICIT
            } else {
                Reads::PACKED
            };
            s.push('\n');
            s.push_str(&register_blocked(block, false, reads));
            if subgroups {
                s.push('\n');
                s.push_str(&register_blocked(block, true, reads));
            }
        }
        s
    })
}

/// [`source`] as the `gemm` module.
pub fn module(subgroups: bool) -> ModuleSource {
    ModuleSource {
        family: "gemm",
        source: source(subgroups),
    }
}

/// [`by_rows_source`] as the `gemm_by_rows` module.
pub fn by_rows_module(subgroups: bool) -> ModuleSource {
    ModuleSource {
        family: "gemm_by_rows",
        source: by_rows_source(subgroups),
    }
}

/// [`depth4_source`] as the `gemm_depth4` module.
pub fn depth4_module() -> ModuleSource {
    ModuleSource {
        family: "gemm_depth4",
        source: depth4_source(),
    }
}

/// The module of the small block's twin reading both operands by rows
/// ([`Reads::BY_ROWS`]): a module of its own, so the other GEMM pipelines'
/// shader translation does not parse it.
pub fn by_rows_source(subgroups: bool) -> &'static str {
    static SOURCES: [OnceLock<String>; 2] = [const { OnceLock::new() }; 2];
    SOURCES[subgroups as usize].get_or_init(|| {
        let mut s = format!("{ACTIVATION}\n{COMMON}");
        s.push('\n');
        s.push_str(&register_blocked(&SMALL, false, Reads::BY_ROWS));
        if subgroups {
            s.push('\n');
            s.push_str(&register_blocked(&SMALL, true, Reads::BY_ROWS));
        }
        s
    })
}

/// The module of the [`Block::depth4`] kernel: a module of its own, so the
/// other GEMM pipelines' shader translation does not parse it (it needs
/// subgroups, so there is no version without).
pub fn depth4_source() -> &'static str {
    static SOURCE: OnceLock<String> = OnceLock::new();
    SOURCE.get_or_init(|| format!("{ACTIVATION}\n{COMMON}\n{}", depth4_kernel(&DEPTH4)))
}

/// One kernel computing a `rows × cols` block of C per invocation; with
/// `share_a`, its twin that loads A once per subgroup (the lanes of a
/// subgroup are laid out along a row of blocks, from the subgroup builtins,
/// and every lane runs the loops, out-of-range ones on clamped indices, so
/// the broadcasts are in uniform control flow). `reads` says where its
/// operands come from; an operand read by rows is loaded 4 depths per vec4
/// and the loop over K takes 4 depths per pass, each accumulator taking
/// them in depth order as it would one by one.
fn register_blocked(block: &Block, share_a: bool, reads: Reads) -> String {
    assert_eq!(
        block.implicit,
        reads == Reads::IMPLICIT,
        "an implicit block reads an image"
    );
    let (rows, cols, vecs) = (block.rows, block.cols, block.cols / 4);
    let entry = block.entry_reading(reads, share_a);
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "// {rows}×{cols} block per invocation.");
    let [wg_x, wg_y] = block.workgroup;
    let size = wg_x * wg_y;
    let _ = writeln!(w, "@compute @workgroup_size({size}, 1, 1)");
    if share_a {
        let _ = writeln!(
            w,
            "fn {entry}(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_id) sg: u32, @builtin(subgroup_size) sg_size: u32, @builtin(subgroup_invocation_id) sg_lane: u32) {{"
        );
        // Invocations numbered by subgroup, so a subgroup's lanes are
        // consecutive and (the host checks) within one row of blocks.
        let _ = writeln!(
            w,
            "    let lid = vec3<u32>(sg * sg_size + sg_lane, 0u, 0u);"
        );
    } else {
        let _ = writeln!(
            w,
            "fn {entry}(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{"
        );
    }
    let _ = writeln!(w, "    load_params(nwg);");
    // Grid: (column block, row block, slot), the invocations laid out over
    // blocks of C in the block's workgroup shape; or with p.slot_lanes (the
    // slot-lanes block), (slot, column block, row block), each invocation on
    // a slot.
    let _ = writeln!(
        w,
        "    let on_slots = p.slot_lanes != 0u;\n    \
         let row_block = select(wid.y * {wg_y}u + lid.x / {wg_x}u, wid.z, on_slots);\n    \
         let col_block = select(wid.x * {wg_x}u + lid.x % {wg_x}u, wid.y, on_slots);\n    \
         let first_slot = select(wid.z, wid.x * {size}u + lid.x, on_slots);\n    \
         let slot_step = select(nwg.z, nwg.x * {size}u, on_slots);"
    );
    let _ = writeln!(w, "    let row0 = row_block * {rows}u;");
    let _ = writeln!(w, "    let col0 = col_block * {cols}u;");
    if share_a {
        // A subgroup shares its rows: it leaves only when all its lanes are
        // outside C (lanes past N in a live subgroup run on clamped
        // indices; the stores are guarded).
        let _ = writeln!(
            w,
            "    if row0 >= p.m || subgroupAll(col0 >= p.n) {{\n        return;\n    }}"
        );
    } else {
        let _ = writeln!(
            w,
            "    if row0 >= p.m || col0 >= p.n {{\n        return;\n    }}"
        );
    }
    // Where each row of A and column of B starts. Rows past M and columns
    // past N repeat the last one (their results are not stored).
    // Row strides of packed operands, in vec4s.
    if reads.a == ARead::Packed {
        let _ = writeln!(w, "    let a_stride = (p.m + 3u) / 4u;");
    }
    if reads.b == BRead::Packed {
        let _ = writeln!(w, "    let b_stride = (p.n + 3u) / 4u;");
    }
    match (reads.a, share_a) {
        (ARead::Packed, true) => {
            let _ = writeln!(
                w,
                "    let a_mine = min(row0 / 4u + sg_lane % {}u, a_stride - 1u);",
                rows / 4
            );
        }
        (ARead::Packed, false) => {
            for q in 0..rows / 4 {
                let _ = writeln!(w, "    let a{q} = min(row0 / 4u + {q}u, a_stride - 1u);");
            }
        }
        (ARead::Rows, true) => {
            // This lane loads rows 4·q .. 4·q + 3 of the block, q = its
            // lane number modulo rows / 4.
            let _ = writeln!(w, "    let mine = row0 + 4u * (sg_lane % {}u);", rows / 4);
            for t in 0..4 {
                let _ = writeln!(w, "    let am{t} = min(mine + {t}u, p.m - 1u) * p.k;");
            }
        }
        (ARead::Rows, false) => {
            for r in 0..rows {
                let _ = writeln!(w, "    let ar{r} = min(row0 + {r}u, p.m - 1u) * p.k;");
            }
        }
        (ARead::Rows4, true) => {
            // This lane loads row q of the block, q = its lane number
            // modulo rows (the host shares A only with as many lanes).
            let _ = writeln!(
                w,
                "    let a_mine = min(row0 + sg_lane % {rows}u, p.m - 1u) * (p.k / 4u);"
            );
        }
        (ARead::Rows4, false) => {
            for r in 0..rows {
                let _ = writeln!(w, "    let a{r} = min(row0 + {r}u, p.m - 1u) * (p.k / 4u);");
            }
        }
    }
    match reads.b {
        BRead::Packed => {
            for h in 0..vecs {
                let _ = writeln!(w, "    let b{h} = min(col0 / 4u + {h}u, b_stride - 1u);");
            }
        }
        BRead::Image => image_offsets(w, cols),
        BRead::Rows4 => {
            for c in 0..cols {
                let _ = writeln!(w, "    let b{c} = min(col0 + {c}u, p.n - 1u) * (p.k / 4u);");
            }
        }
    }
    let _ = writeln!(
        w,
        "    // Slot z: products z·chunk .. z·chunk + chunk − 1 (one product, or one\n    \
         // partial sum over the batch), walked in a loop past the grid's z extent."
    );
    let _ = writeln!(w, "    let slots = (p.batch + p.chunk - 1u) / p.chunk;");
    let _ = writeln!(
        w,
        "    for (var slot = first_slot; slot < slots; slot += slot_step) {{"
    );
    for r in 0..rows {
        let line: Vec<String> = (0..vecs)
            .map(|h| format!("var acc_{r}_{h} = vec4<f32>(0.0);"))
            .collect();
        let _ = writeln!(w, "        {}", line.join(" "));
    }
    let _ = writeln!(w, "        let z_begin = slot * p.chunk;");
    let _ = writeln!(w, "        let z_end = min(z_begin + p.chunk, p.batch);");
    let _ = writeln!(w, "        for (var z = z_begin; z < z_end; z++) {{");
    // Offsets of batch element z: in vec4s, or in values for scalar loads.
    if reads.a == ARead::Rows {
        let _ = writeln!(w, "            var ia = z * p.stride_a;");
    } else {
        let _ = writeln!(w, "            var ia = z * p.stride_a / 4u;");
    }
    if reads.b == BRead::Image {
        let _ = writeln!(
            w,
            "            // Row k of B lies chan + row + j past a column's offset\n            \
             // (see Params): the depth offset's three digits, walked.\n            \
             var chan = z * p.image_stride;\n            \
             var row = 0u;\n            \
             var j = 0u;"
        );
    } else {
        let _ = writeln!(w, "            var ib = z * p.stride_b / 4u;");
    }
    let depths = reads.depths_per_pass();
    let _ = writeln!(
        w,
        "            for (var kk = 0u; kk < p.k; kk += {depths}u) {{"
    );
    // Operands read by rows: 4 depths of each row (or column) per pass.
    match (reads.a, share_a) {
        (ARead::Rows4, true) => {
            let _ = writeln!(w, "                let own = a[ia + a_mine];");
            for r in 0..rows {
                let _ = writeln!(
                    w,
                    "                let ar{r} = subgroupBroadcast(own, {r}u);"
                );
            }
        }
        (ARead::Rows4, false) => {
            for r in 0..rows {
                let _ = writeln!(w, "                let ar{r} = a[ia + a{r}];");
            }
        }
        _ => {}
    }
    if reads.b == BRead::Rows4 {
        for c in 0..cols {
            let _ = writeln!(w, "                let bc{c} = b[ib + b{c}];");
        }
    }
    for d in 0..depths {
        let lane = ["x", "y", "z", "w"];
        if depths > 1 {
            let _ = writeln!(w, "                // Depth kk + {d}.");
        }
        // A: the rows' values at this depth, s{r}.
        match (reads.a, share_a) {
            (ARead::Rows4, _) => {}
            (ARead::Packed, true) => {
                let _ = writeln!(w, "                let own{d} = a[ia + a_mine];");
            }
            (ARead::Rows, true) => {
                let own = vec4_of(|t| format!("a_rows[ia + am{t}]"));
                let _ = writeln!(w, "                let own{d} = {own};");
            }
            (ARead::Packed, false) => {
                for q in 0..rows / 4 {
                    let _ = writeln!(w, "                let av{d}_{q} = a[ia + a{q}];");
                }
            }
            (ARead::Rows, false) => {
                for q in 0..rows / 4 {
                    let av = vec4_of(|t| format!("a_rows[ia + ar{}]", 4 * q + t));
                    let _ = writeln!(w, "                let av{d}_{q} = {av};");
                }
            }
        }
        if share_a && reads.a != ARead::Rows4 {
            for q in 0..rows / 4 {
                let _ = writeln!(
                    w,
                    "                let av{d}_{q} = subgroupBroadcast(own{d}, {q}u);"
                );
            }
        }
        // B: the columns' values at this depth, bv{h}.
        if reads.b == BRead::Image {
            let _ = writeln!(w, "                let window = chan + row + j;");
        }
        for h in 0..vecs {
            let bv = match reads.b {
                BRead::Packed => format!("b[ib + b{h}]"),
                BRead::Image => vec4_of(|t| format!("image[column{} + window]", 4 * h + t)),
                BRead::Rows4 => vec4_of(|t| format!("bc{}.{}", 4 * h + t, lane[d])),
            };
            let _ = writeln!(w, "                let bv{d}_{h} = {bv};");
        }
        for r in 0..rows {
            let a_value = match reads.a {
                ARead::Rows4 => format!("ar{r}.{}", lane[d]),
                _ => format!("av{d}_{}.{}", r / 4, lane[r % 4]),
            };
            let _ = writeln!(w, "                let s{d}_{r} = vec4<f32>({a_value});");
        }
        // Next depth, for operands loaded one depth at a time.
        match reads.a {
            ARead::Packed => {
                let _ = writeln!(w, "                ia += a_stride;");
            }
            ARead::Rows => {
                let _ = writeln!(w, "                ia++;");
            }
            ARead::Rows4 => {}
        }
        match reads.b {
            BRead::Packed => {
                let _ = writeln!(w, "                ib += b_stride;");
            }
            // Next k: the forward's (c, i, j) along the window's row, then
            // down, then a channel on (the image is padded, so a channel
            // follows its last window row); dW's (oh, ow) along an output
            // row, then down.
            BRead::Image => {
                let _ = writeln!(
                    w,
                    "                j += p.depth_step_c;\n                \
                     if j == p.depth_end_c {{\n                    \
                         j = 0u;\n                    \
                         row += p.depth_step_b;\n                    \
                         if row == p.depth_end_b {{\n                        \
                             row = 0u;\n                        \
                             chan += p.depth_step_a;\n                    \
                         }}\n                \
                     }}"
                );
            }
            BRead::Rows4 => {}
        }
    }
    // The multiply-adds, accumulator by accumulator, each taking the
    // pass's depths in order: one that lives on the stack (most do on
    // lavapipe) is loaded and stored once per pass.
    for r in 0..rows {
        let line: Vec<String> = (0..vecs)
            .map(|h| {
                let sum = (0..depths).fold(format!("acc_{r}_{h}"), |acc, d| {
                    format!("fma(s{d}_{r}, bv{d}_{h}, {acc})")
                });
                format!("acc_{r}_{h} = {sum};")
            })
            .collect();
        let _ = writeln!(w, "                {}", line.join(" "));
    }
    // Next 4 depths, for operands read by rows.
    if reads.a == ARead::Rows4 {
        let _ = writeln!(w, "                ia++;");
    }
    if reads.b == BRead::Rows4 {
        let _ = writeln!(w, "                ib++;");
    }
    let _ = writeln!(w, "            }}");
    let _ = writeln!(w, "        }}");
    let _ = writeln!(w, "        let base_c = slot * p.stride_c;");
    for h in 0..vecs {
        let _ = writeln!(w, "        let cb{h} = column_bias(col0 + {}u);", 4 * h);
    }
    store_rows(w, rows, vecs, vecs, |h| format!("acc_0_{h}"));
    let _ = writeln!(w, "    }}");
    let _ = writeln!(w, "}}");
    s
}

/// The kernel of a [`Block::depth4`] block. A and B are packed as
/// `(⌈K/4⌉, rows)` vec4s, each holding a row's (or column's) 4 consecutive
/// depths (zero past K; [`crate::gpu::gemm`]'s `pack_depth4`). A
/// workgroup's 8 subgroups take 8 row blocks, the 8 lanes of each 8 column
/// blocks of one row block; per step of 4 depths each lane loads
/// `rows / 8` of the row block's A vec4s, `subgroupBroadcast` hands them
/// to all lanes, and each accumulator takes its 4 depths as a chain of
/// `fma`s in depth order: the same operations in the same order as the
/// other kernels, but a spilled accumulator is loaded and stored once per
/// 4 depths instead of once per depth, with only its row's and column's
/// vec4s live. No slot-lanes mapping.
fn depth4_kernel(block: &Block) -> String {
    let (rows, cols) = (block.rows, block.cols);
    let lanes = block.workgroup[0];
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(
        w,
        "// {rows}×{cols} block per invocation, 4 depths per vec4.\n\
         @compute @workgroup_size({}, 1, 1)\n\
         fn {}(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) sg_lane: u32) {{\n    \
         load_params(nwg);\n    \
         let row0 = (wid.y * {}u + sg) * {rows}u;\n    \
         let col0 = (wid.x * {lanes}u + sg_lane) * {cols}u;\n    \
         // A subgroup shares its rows: it leaves only when all its lanes\n    \
         // are outside C (the others run on clamped indices; the stores\n    \
         // are guarded).\n    \
         if row0 >= p.m || subgroupAll(col0 >= p.n) {{\n        return;\n    }}",
        block.workgroup[0] * block.workgroup[1],
        block.name(),
        block.workgroup[1],
    );
    for j in 0..rows / lanes {
        let _ = writeln!(
            w,
            "    let a{j} = min(row0 + sg_lane + {}u, p.m - 1u);",
            lanes * j
        );
    }
    for c in 0..cols {
        let _ = writeln!(w, "    let b{c} = min(col0 + {c}u, p.n - 1u);");
    }
    let _ = writeln!(
        w,
        "    let steps = (p.k + 3u) / 4u;\n    \
         let slots = (p.batch + p.chunk - 1u) / p.chunk;\n    \
         for (var slot = wid.z; slot < slots; slot += nwg.z) {{"
    );
    for r in 0..rows {
        let line: Vec<String> = (0..cols)
            .map(|c| format!("var acc_{r}_{c} = 0.0;"))
            .collect();
        let _ = writeln!(w, "        {}", line.join(" "));
    }
    let _ = writeln!(
        w,
        "        let z_begin = slot * p.chunk;\n        \
         let z_end = min(z_begin + p.chunk, p.batch);\n        \
         for (var z = z_begin; z < z_end; z++) {{\n            \
         var ia = z * p.stride_a / 4u;\n            \
         var ib = z * p.stride_b / 4u;\n            \
         for (var step = 0u; step < steps; step++) {{"
    );
    for j in 0..rows / lanes {
        let _ = writeln!(w, "                let own{j} = a[ia + a{j}];");
    }
    for c in 0..cols {
        let _ = writeln!(w, "                let bv{c} = b[ib + b{c}];");
    }
    for r in 0..rows {
        let _ = write!(
            w,
            "                {{ let av = subgroupBroadcast(own{}, {}u);",
            r / lanes,
            r % lanes
        );
        for c in 0..cols {
            let _ = write!(
                w,
                " acc_{r}_{c} = fma(av.w, bv{c}.w, fma(av.z, bv{c}.z, fma(av.y, bv{c}.y, fma(av.x, bv{c}.x, acc_{r}_{c}))));"
            );
        }
        let _ = writeln!(w, " }}");
    }
    let _ = writeln!(
        w,
        "                ia += p.m;\n                \
         ib += p.n;\n            \
         }}\n        \
         }}\n        \
         let base_c = slot * p.stride_c;"
    );
    for h in 0..cols / 4 {
        let _ = writeln!(w, "        let cb{h} = column_bias(col0 + {}u);", 4 * h);
    }
    store_rows(w, rows, cols / 4, cols, |h| {
        vec4_of(|t| format!("acc_0_{}", 4 * h + t))
    });
    let _ = writeln!(w, "    }}\n}}");
    s
}

/// The register kernels' stores: one row of C per pass, `vecs` vec4s of
/// it (`vec4(h)`: the `h`-th, from row 0's accumulators), then every row's
/// `per_row` accumulators shifted one row down. The store code appears once
/// instead of once per row, which on CPU-like adapters (lavapipe) cuts a
/// kernel's compile time several-fold.
fn store_rows(
    w: &mut String,
    rows: usize,
    vecs: usize,
    per_row: usize,
    vec4: impl Fn(usize) -> String,
) {
    let _ = writeln!(
        w,
        "        for (var r = 0u; r < {rows}u && row0 + r < p.m; r++) {{\n            \
         let rb = row_bias(row0 + r);"
    );
    for h in 0..vecs {
        let _ = writeln!(
            w,
            "            store4(base_c, row0 + r, col0 + {}u, {}, cb{h}, rb);",
            4 * h,
            vec4(h)
        );
    }
    for r in 1..rows {
        let line: Vec<String> = (0..per_row)
            .map(|c| format!("acc_{}_{c} = acc_{r}_{c};", r - 1))
            .collect();
        let _ = writeln!(w, "            {}", line.join(" "));
    }
    let _ = writeln!(w, "        }}");
}

/// `vec4<f32>(…)` of the four scalar loads `load(0)` .. `load(3)`.
fn vec4_of(load: impl Fn(usize) -> String) -> String {
    let loads: Vec<String> = (0..4).map(load).collect();
    format!("vec4<f32>({})", loads.join(", "))
}

/// The implicit kernels' column offsets: `column{t}`, the offset in an
/// image of B's column `col0 + t` (columns past N repeat the last one; their
/// results are not stored): its three digits found by division once, then
/// walked.
fn image_offsets(w: &mut String, cols: usize) {
    let _ = writeln!(
        w,
        "    var pos = min(col0, p.n - 1u);\n    \
         var digit_c = pos % p.col_len_c;\n    \
         var digit_b = (pos / p.col_len_c) % p.col_len_b;\n    \
         var digit_a = pos / p.col_len_c / p.col_len_b;"
    );
    for t in 0..cols {
        if t > 0 {
            let _ = writeln!(
                w,
                "    if pos + 1u < p.n {{\n        \
                 pos++;\n        \
                 digit_c++;\n        \
                 if digit_c == p.col_len_c {{\n            \
                     digit_c = 0u;\n            \
                     digit_b++;\n            \
                     if digit_b == p.col_len_b {{\n                \
                         digit_b = 0u;\n                \
                         digit_a++;\n            \
                     }}\n        \
                 }}\n    \
                 }}"
            );
        }
        let _ = writeln!(
            w,
            "    let column{t} = digit_a * p.col_step_a + digit_b * p.col_step_b + digit_c * p.col_step_c;"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_lanes_block_has_as_many_invocations_as_the_kernel_it_runs() {
        for block in BLOCKS.iter().chain(&CONV_BLOCKS).filter(|b| b.slot_lanes) {
            let twin = *BLOCKS
                .iter()
                .chain(&CONV_BLOCKS)
                .find(|b| {
                    !b.slot_lanes
                        && (b.rows, b.cols, b.tiled, b.implicit)
                            == (block.rows, block.cols, block.tiled, block.implicit)
                })
                .expect("every slot-lanes block has a twin");
            let size = |b: &Block| b.workgroup[0] * b.workgroup[1];
            assert_eq!(size(block), size(&twin), "{}", block.name());
            assert_eq!(block.entry(), twin.name());
        }
    }

    #[test]
    fn every_block_has_its_entry_points() {
        for subgroups in [false, true] {
            let source = source(subgroups);
            for block in BLOCKS.iter().chain(&CONV_BLOCKS) {
                if block.depth4 {
                    // In a module of its own.
                    let entry = format!("fn {}(", block.entry());
                    assert!(!source.contains(&entry) && depth4_source().contains(&entry));
                    continue;
                }
                assert!(source.contains(&format!("fn {}(", block.entry())));
                if !block.tiled && !block.slot_lanes {
                    let twin = format!("fn {}(", block.entry_sharing_a());
                    assert_eq!(source.contains(&twin), subgroups, "{twin}");
                }
            }
        }
    }

    #[test]
    fn the_small_block_reading_by_rows_has_its_own_module() {
        for subgroups in [false, true] {
            for share_a in [false, true] {
                let entry = format!("fn {}(", SMALL.entry_reading(Reads::BY_ROWS, share_a));
                let here = by_rows_source(subgroups).contains(&entry);
                assert_eq!(here, subgroups || !share_a, "{entry}");
                assert!(!source(subgroups).contains(&entry), "{entry}");
            }
        }
        assert!(SLOTS.reads_by_rows() && !TALL.reads_by_rows() && !DEPTH4.reads_by_rows());
        // Read by rows, A takes a lane per row of the block.
        assert!(SMALL.shares_a_read_in(ARead::Rows4, 8));
        assert!(
            !SMALL.shares_a_read_in(ARead::Rows4, 4) && SMALL.shares_a_read_in(ARead::Packed, 4)
        );
    }

    #[test]
    fn blocks_share_a_only_where_a_subgroup_computes_one_row_of_blocks() {
        // lavapipe: subgroups of 8.
        assert!(SMALL.shares_a_in(8) && TALL.shares_a_in(8));
        assert!(!SLOTS.shares_a_in(8) && !TILED.shares_a_in(8));
        // Subgroups wider than a row of blocks (GPUs' 32 or 64 lanes), or
        // too narrow to load the block's rows.
        assert!(!SMALL.shares_a_in(32) && !TALL.shares_a_in(32));
        assert!(!TALL.shares_a_in(4) && SMALL.shares_a_in(4));
        // The depth4 kernel needs exactly its 8 lanes.
        assert!(DEPTH4.shares_a_in(8));
        assert!(!DEPTH4.shares_a_in(4) && !DEPTH4.shares_a_in(16) && !DEPTH4.shares_a_in(32));
    }
}
