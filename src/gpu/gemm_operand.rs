//! The GEMM's operands: where the caller's buffers hold them, and the
//! packed layouts (`shaders/pack.wgsl`) that most GEMM kernels read.

use std::cell::OnceCell;

use super::context::{GpuBuffer, GpuContext, KernelSpec, Params, grid, grid_extent};
use super::modules::ModuleSource;

pub(super) const PACK: ModuleSource = ModuleSource {
    family: "pack",
    source: include_str!("../../shaders/pack.wgsl"),
};

/// A GEMM operand in the packed layout: `(K, ⌈rows/4⌉·4)` per batch
/// element, `stride` elements apart (0: one shared by every element).
#[derive(Clone, Copy, Debug)]
pub struct Packed<'a> {
    /// The packed values.
    pub buffer: &'a GpuBuffer,
    /// Elements between consecutive batch elements' matrices.
    pub stride: usize,
}

/// `count` `(rows, depth)` matrices, `stride` elements apart, stored
/// `(rows, depth)` when `transposed`, else `(depth, rows)`, to be packed
/// into `(depth, ⌈rows/4⌉·4)` each (`shaders/pack.wgsl`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Packing {
    pub rows: usize,
    pub depth: usize,
    pub transposed: bool,
    pub stride: usize,
    pub count: usize,
}

impl Packing {
    /// Elements of one packed matrix.
    fn matrix_len(&self) -> usize {
        self.depth * self.rows.next_multiple_of(4)
    }

    /// Bytes of the packed matrices.
    pub fn bytes(&self) -> u64 {
        4 * (self.count * self.matrix_len()) as u64
    }

    /// Whether the stored matrices already are in the packed layout.
    fn is_identity(&self) -> bool {
        !self.transposed
            && self.rows.is_multiple_of(4)
            && (self.stride == 0 || self.stride == self.depth * self.rows)
    }

    /// Records the packing of `src` into the start of `dst`.
    pub fn record(&self, ctx: &GpuContext, src: &GpuBuffer, dst: &GpuBuffer) {
        self.record_summing(ctx, src, dst, None);
    }

    /// [`Packing::record`], also writing into `sums` each packed row's sum
    /// over the rows, `(count, depth)` (`pack.wgsl`'s `pack_summing`).
    fn record_summing(
        &self,
        ctx: &GpuContext,
        src: &GpuBuffer,
        dst: &GpuBuffer,
        sums: Option<&GpuBuffer>,
    ) {
        assert!(dst.size() >= self.bytes(), "packing into {dst:?}");
        let (entry, outputs) = match sums {
            Some(_) => ("pack_summing", 2),
            None => ("pack", 1),
        };
        let kernel = ctx.kernel(
            &KernelSpec::new(PACK, entry, 1, outputs)
                .with("TRANSPOSED", self.transposed as u8 as f64),
        );
        let params = Params::new()
            .u32(self.rows)
            .u32(self.depth)
            .u32(self.rows.next_multiple_of(4))
            .u32(self.count)
            .u32(self.stride)
            .u32(self.matrix_len());
        let grid = grid(self.count * self.depth, 256);
        match sums {
            Some(sums) => ctx.dispatch(&kernel, &params, &[src], &[dst, sums], grid),
            None => ctx.dispatch(&kernel, &params, &[src], &[dst], grid),
        }
    }
}

/// A GEMM operand where the caller holds it: `op(A)` with its M rows, or
/// `op(B)` with its N columns as the rows here, each of depth K. A kernel
/// reads it where it lies (by rows, or packed where it already is so), or
/// from a packed copy made at first need and packed again at each use.
pub(super) struct Source<'a> {
    buffer: &'a GpuBuffer,
    /// How it is stored, and how it would be packed.
    packing: Packing,
    /// Stored packed already (an im2row matrix).
    packed_already: bool,
    /// Where each pack also writes the sums over its rows (see
    /// [`Source::summed_into`]).
    sums: Option<&'a GpuBuffer>,
    /// The packed copy, made at first need.
    copy: OnceCell<GpuBuffer>,
}

impl<'a> Source<'a> {
    /// `count` `rows × depth` matrices, `stride` elements apart (0: one
    /// shared by every batch element), stored `(rows, depth)` when
    /// `by_rows`, else `(depth, rows)`.
    pub fn stored(
        buffer: &'a GpuBuffer,
        [rows, depth]: [usize; 2],
        by_rows: bool,
        stride: usize,
        count: usize,
    ) -> Self {
        Source {
            buffer,
            packing: Packing {
                rows,
                depth,
                transposed: by_rows,
                stride,
                count: if stride == 0 { 1 } else { count },
            },
            packed_already: false,
            sums: None,
            copy: OnceCell::new(),
        }
    }

    /// The same operand, whose every pack also writes `sums[z·depth + k]
    /// = Σ_r X[r, k]` of matrix z, in row order from 0; it is then always
    /// packed (a copy), so that the sums are written.
    pub fn summed_into(self, sums: &'a GpuBuffer) -> Self {
        assert!(
            !self.packed_already,
            "an operand packed already is not summed"
        );
        assert!(
            sums.size() >= 4 * (self.packing.count * self.packing.depth) as u64,
            "sums into {sums:?}"
        );
        Source {
            sums: Some(sums),
            ..self
        }
    }

    /// `rows × depth` matrices stored packed already.
    pub fn packed(packed: Packed<'a>, [rows, depth]: [usize; 2], count: usize) -> Self {
        Source {
            packed_already: true,
            ..Source::stored(packed.buffer, [rows, depth], false, packed.stride, count)
        }
    }

    /// One packed `(K, rows)` matrix as `slices` matrices of `depth`
    /// consecutive depths each (K = slices · depth): the packed layout is
    /// depth-major, so slice s is its s-th run of depth·⌈rows/4⌉·4 values.
    pub fn depth_slices(packed: Packed<'a>, rows: usize, depth: usize, slices: usize) -> Self {
        let stride = depth * rows.next_multiple_of(4);
        Source::packed(Packed { stride, ..packed }, [rows, depth], slices)
    }

    /// The buffer holding it.
    pub fn buffer(&self) -> &'a GpuBuffer {
        self.buffer
    }

    /// Elements between consecutive matrices where it lies.
    pub fn stride(&self) -> usize {
        self.packing.stride
    }

    /// Whether a kernel can read it by rows, 4 depths per vec4: stored
    /// `(rows, depth)` with whole vec4s per row and per matrix (and not
    /// summed, which takes a pack).
    pub fn by_rows(&self) -> bool {
        let p = &self.packing;
        !self.packed_already
            && self.sums.is_none()
            && p.transposed
            && p.depth.is_multiple_of(4)
            && p.stride.is_multiple_of(4)
    }

    /// Whether its buffer already holds the packed layout.
    pub fn in_place(&self) -> bool {
        self.packed_already || (self.packing.is_identity() && self.sums.is_none())
    }

    /// Elements between consecutive matrices of its packed form.
    pub fn packed_stride(&self) -> usize {
        if self.in_place() || self.packing.stride == 0 {
            self.packing.stride
        } else {
            self.packing.matrix_len()
        }
    }

    /// Elements between consecutive matrices as a kernel reads it:
    /// `packed`, or where it lies.
    pub fn stride_read(&self, packed: bool) -> usize {
        if packed {
            self.packed_stride()
        } else {
            self.stride()
        }
    }

    /// Its packed form: the buffer itself where that is packed already,
    /// else the copy, whose packing is recorded anew at every call.
    pub fn record_packed(&self, ctx: &GpuContext) -> Packed<'_> {
        let stride = self.packed_stride();
        if self.in_place() {
            return Packed {
                buffer: self.buffer,
                stride,
            };
        }
        let copy = self
            .copy
            .get_or_init(|| ctx.storage_buffer(self.packing.bytes(), "gemm.packed"));
        self.packing
            .record_summing(ctx, self.buffer, copy, self.sums);
        Packed {
            buffer: copy,
            stride,
        }
    }
}

/// A packed operand re-packed 4 depths per vec4 for a
/// [`super::gemm_source::Block::depth4`] kernel: `(⌈K/4⌉, rows)` vec4s per
/// batch element.
pub(super) struct Depth4Operand {
    rows: usize,
    depth: usize,
    /// Matrices: 1 when the source is shared by the batch.
    count: usize,
    pub buffer: GpuBuffer,
    /// Elements between consecutive batch elements' matrices (0: shared).
    pub stride: usize,
}

impl Depth4Operand {
    /// Space for `batch` matrices of `rows` rows of depth `depth` (one when
    /// the source is `shared` by the batch) in the depth4 layout.
    pub fn new(ctx: &GpuContext, [rows, depth]: [usize; 2], batch: usize, shared: bool) -> Self {
        let len = depth.div_ceil(4) * rows * 4;
        let count = if shared { 1 } else { batch };
        Depth4Operand {
            rows,
            depth,
            count,
            buffer: ctx.storage_buffer(4 * (count * len) as u64, "gemm.packed_depth4"),
            stride: if shared { 0 } else { len },
        }
    }

    /// Records the re-packing of `source`, the packed operand, into it.
    pub fn record(&self, ctx: &GpuContext, source: Packed<'_>) {
        let kernel = ctx.kernel(&KernelSpec::new(PACK, "pack_depth4", 1, 1));
        let params = Params::new()
            .u32(self.rows)
            .u32(self.depth)
            .u32(self.rows.next_multiple_of(4))
            .u32(self.count)
            .u32(source.stride)
            .u32(self.stride);
        let grid = [
            grid_extent(self.rows.div_ceil(64)),
            grid_extent(self.depth.div_ceil(4)),
            grid_extent(self.count),
        ];
        ctx.dispatch(&kernel, &params, &[source.buffer], &[&self.buffer], grid);
    }
}
