//! `C ← A·B + β·C` and `C ← A·Bᵀ + β·C` without packing: SIMD kernels that
//! read B's rows where they lie.
//!
//! A packing GEMM (matrixmultiply) copies all of B into panels before each
//! product, and rounds the rows up to its kernel's height: for LeNet-5's
//! first convolution (6 rows, 25 deep) the copy is a sixth of the
//! multiply-adds' worth of memory traffic, and more than half of the
//! kernel's rows are padding. Here each block of up to eight rows of C is
//! summed in registers over B's rows as they lie: one load of B per `rows`
//! multiply-adds, every row real. Two kinds of B:
//! - rows a stride apart ([`few_rows_matmul`]): products with few rows, a
//!   convolution's forward `W (O, C·kh·kw) · X_col` with O of 16 or fewer;
//! - rows at listed offsets of one slice ([`matmul_unpacked`]): the
//!   direct convolution (`direct_conv.rs`), whose B rows are shifted
//!   windows of one padded input, so no im2col matrix is built.
//!
//! The multiply-adds are fused (`mul_add`), so results differ from the
//! unfused reference by rounding only, within the tests' tolerance. The
//! kernels need AVX-512 or AVX2 with FMA, found at run time; without them
//! the callers fall back to the packing GEMM and im2col.

/// The most rows of C [`few_rows_matmul`] and
/// [`few_rows_matmul_transposed_b`] take.
pub const MAX_ROWS: usize = 16;
/// Rows of C summed in one pass over B.
const BLOCK_ROWS: usize = 8;
/// Columns of C one pass sums per row, at most (two AVX-512 vectors): the
/// product is fastest when `n` is a multiple of this.
pub const BLOCK_COLUMNS: usize = 32;
/// The fewest columns of C a pass takes (one AVX-512 vector, two AVX2
/// ones); narrower products are summed in scalars.
pub const MIN_BLOCK_COLUMNS: usize = 16;

/// Whether this CPU has the instructions the kernels need.
pub fn available() -> bool {
    Isa::best().is_some()
}

/// Where a matrix's rows start in its slice.
#[derive(Clone, Copy, Debug)]
pub enum Rows<'a> {
    /// Row `r` at `r · stride`.
    Strided(usize),
    /// Row `r` at `starts[r]`.
    Listed(&'a [usize]),
}

/// Where each row of an operand starts in its slice.
trait RowStarts: Copy {
    /// The offset of row `row`.
    ///
    /// # Safety
    /// `row` is below the row count the caller checked with [`Self::fit`].
    unsafe fn start(self, row: usize) -> usize;

    /// Whether `rows` rows of `len` values each lie inside `slice_len`.
    fn fit(self, rows: usize, len: usize, slice_len: usize) -> bool;
}

/// Rows a stride apart.
#[derive(Clone, Copy)]
struct Strided(usize);

impl RowStarts for Strided {
    #[inline(always)]
    unsafe fn start(self, row: usize) -> usize {
        row * self.0
    }

    fn fit(self, rows: usize, len: usize, slice_len: usize) -> bool {
        rows == 0 || (rows - 1) * self.0 + len <= slice_len
    }
}

/// Rows at listed offsets.
#[derive(Clone, Copy)]
struct Listed<'a>(&'a [usize]);

impl RowStarts for Listed<'_> {
    #[inline(always)]
    unsafe fn start(self, row: usize) -> usize {
        // SAFETY: the caller's promise; `fit` checked the list's length.
        unsafe { *self.0.get_unchecked(row) }
    }

    fn fit(self, rows: usize, len: usize, slice_len: usize) -> bool {
        self.0.len() == rows && self.0.iter().all(|&start| start + len <= slice_len)
    }
}

/// Computes `C ← A·B + β·C` for row-major `A (m, k)`, `B (k, n)` and
/// `C (m, n)` with row strides `lda`, `ldb`, `ldc`, if the CPU has the
/// instructions for it and `m ≤ MAX_ROWS`; returns whether it did.
pub fn few_rows_matmul(
    shape: (usize, usize, usize),
    a: (&[f32], usize),
    (b, ldb): (&[f32], usize),
    beta: f32,
    c: (&mut [f32], usize),
) -> bool {
    let (a, lda) = a;
    shape.0 <= MAX_ROWS
        && matmul_on(
            Isa::best(),
            shape,
            (a, Strided(lda)),
            (b, Strided(ldb)),
            beta,
            c,
        )
}

/// Computes `C ← A·B + β·C` for `A (m, k)`, `B (k, n)` and row-major
/// `C (m, n)` (row stride `ldc`), each of A's and B's rows contiguous where
/// [`Rows`] puts it, if the CPU has the instructions for it; returns
/// whether it did. Any `m`; fastest when `n` is a multiple of
/// [`BLOCK_COLUMNS`] (the rest of each row is summed in scalars).
pub fn matmul_unpacked(
    shape: (usize, usize, usize),
    a: (&[f32], Rows),
    b: (&[f32], Rows),
    beta: f32,
    c: (&mut [f32], usize),
) -> bool {
    matmul_unpacked_on(Isa::best(), shape, a, b, beta, c)
}

/// [`matmul_unpacked`] with the instructions of `isa` (none: declines).
fn matmul_unpacked_on(
    isa: Option<Isa>,
    shape: (usize, usize, usize),
    (a, a_rows): (&[f32], Rows),
    (b, b_rows): (&[f32], Rows),
    beta: f32,
    c: (&mut [f32], usize),
) -> bool {
    use Rows::{Listed as L, Strided as S};
    let (a_strided, b_strided) = (|lda| (a, Strided(lda)), |ldb| (b, Strided(ldb)));
    let (a_listed, b_listed) = (|starts| (a, Listed(starts)), |starts| (b, Listed(starts)));
    match (a_rows, b_rows) {
        (S(lda), S(ldb)) => matmul_on(isa, shape, a_strided(lda), b_strided(ldb), beta, c),
        (S(lda), L(rows)) => matmul_on(isa, shape, a_strided(lda), b_listed(rows), beta, c),
        (L(rows), S(ldb)) => matmul_on(isa, shape, a_listed(rows), b_strided(ldb), beta, c),
        (L(a_rows), L(b_rows)) => {
            matmul_on(isa, shape, a_listed(a_rows), b_listed(b_rows), beta, c)
        }
    }
}

/// `C ← A·B + β·C` with the instructions of `isa` (none: declines).
fn matmul_on<RA: RowStarts, RB: RowStarts>(
    isa: Option<Isa>,
    (m, k, n): (usize, usize, usize),
    (a, a_rows): (&[f32], RA),
    (b, b_rows): (&[f32], RB),
    beta: f32,
    (c, ldc): (&mut [f32], usize),
) -> bool {
    if m == 0 || n == 0 {
        return false;
    }
    assert!(
        a_rows.fit(m, k, a.len()) && b_rows.fit(k, n, b.len()),
        "unpacked matmul: operand shorter than its shape"
    );
    let product = Product {
        k,
        n,
        a,
        a_rows,
        b,
        b_rows,
        beta,
    };
    run_on(isa, (m, n), (c, ldc), "matmul", |isa, c| {
        // SAFETY: callers pass only instruction sets this CPU has.
        unsafe { isa.matmul(&product, m, c, ldc) }
    })
}

/// Runs `kernel` on C with the instructions of `isa`, once C is known to
/// hold `m` rows of `n` at row stride `ldc`; returns whether it ran (no
/// instruction set: declines). `what` names the product in the panic.
fn run_on(
    isa: Option<Isa>,
    (m, n): (usize, usize),
    (c, ldc): (&mut [f32], usize),
    what: &str,
    kernel: impl FnOnce(Isa, &mut [f32]),
) -> bool {
    assert!(
        (m - 1) * ldc + n <= c.len(),
        "unpacked {what}: C shorter than its shape"
    );
    let Some(isa) = isa else { return false };
    kernel(isa, c);
    true
}

/// The instruction sets the kernels are written for, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F (with FMA): 16-lane vectors.
    Avx512,
    /// AVX2 with FMA: 8-lane vectors.
    Avx2,
}

impl Isa {
    /// Every instruction set a kernel is written for, best first.
    const BEST_FIRST: [Isa; 2] = [Isa::Avx512, Isa::Avx2];

    /// Whether this CPU has the instructions (the detection is cached, so
    /// this is cheap enough for every product).
    fn is_available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("fma") && is_x86_feature_detected!("avx2");
            match self {
                Isa::Avx512 => avx2 && is_x86_feature_detected!("avx512f"),
                Isa::Avx2 => avx2,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = self;
            false
        }
    }

    /// The best this CPU has.
    fn best() -> Option<Isa> {
        Isa::BEST_FIRST.into_iter().find(|isa| isa.is_available())
    }

    /// # Safety
    /// The CPU has `self`'s instructions.
    unsafe fn matmul<RA: RowStarts, RB: RowStarts>(
        self,
        p: &Product<RA, RB>,
        m: usize,
        c: &mut [f32],
        ldc: usize,
    ) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller's promise.
        unsafe {
            match self {
                Isa::Avx512 => with_avx512(p, m, c, ldc),
                Isa::Avx2 => with_avx2(p, m, c, ldc),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (p, m, c, ldc);
    }

    /// # Safety
    /// The CPU has `self`'s instructions.
    unsafe fn dots<R: RowStarts>(self, d: &Dots<R>, c: &mut [f32], ldc: usize) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller's promise.
        unsafe {
            match self {
                Isa::Avx512 => dots_with_avx512(d, c, ldc),
                Isa::Avx2 => dots_with_avx2(d, c, ldc),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (d, c, ldc);
    }
}

/// The operands and sizes of one product (all rows of `A`).
struct Product<'a, RA, RB> {
    k: usize,
    n: usize,
    a: &'a [f32],
    a_rows: RA,
    b: &'a [f32],
    b_rows: RB,
    beta: f32,
}

/// Defines `$name`, computing every row of C: blocks of [`BLOCK_ROWS`]
/// rows, each summed in registers over B's rows, two `$lanes`-lane vectors
/// (`$vector`'s intrinsics) per row of C at a time, then one where a whole
/// vector is left; then the columns past the last whole vector, in
/// scalars.
#[cfg(target_arch = "x86_64")]
macro_rules! kernel {
    ($name:ident, $features:literal, $lanes:literal,
     $zero:ident, $load:ident, $splat:ident, $fma:ident, $store:ident) => {
        #[target_feature(enable = $features)]
        unsafe fn $name<RA: RowStarts, RB: RowStarts>(
            p: &Product<RA, RB>,
            m: usize,
            c: &mut [f32],
            ldc: usize,
        ) {
            let pairs = p.n / (2 * $lanes) * (2 * $lanes);
            let full = p.n / $lanes * $lanes;
            let mut row = 0;
            while row < m {
                let rows = (m - row).min(BLOCK_ROWS);
                let c = &mut c[row * ldc..];
                // SAFETY: the caller checked that A, B and C hold their
                // shapes, and `row + rows <= m`.
                unsafe {
                    blocks::<2, RA, RB>(p, row, rows, c, ldc, 0..pairs);
                    blocks::<1, RA, RB>(p, row, rows, c, ldc, pairs..full);
                }
                ragged_end(p, row..row + rows, c, ldc, full);
                row += rows;
            }

            /// Rows `first..first + rows` of C (`c` starts at the first),
            /// columns `cols`, `VECS` vectors at a time.
            #[target_feature(enable = $features)]
            unsafe fn blocks<const VECS: usize, RA: RowStarts, RB: RowStarts>(
                p: &Product<RA, RB>,
                first: usize,
                rows: usize,
                c: &mut [f32],
                ldc: usize,
                cols: std::ops::Range<usize>,
            ) {
                // SAFETY (every arm): the caller's promise.
                unsafe {
                    match rows {
                        8 => block::<8, VECS, RA, RB>(p, first, c, ldc, cols),
                        7 => block::<7, VECS, RA, RB>(p, first, c, ldc, cols),
                        6 => block::<6, VECS, RA, RB>(p, first, c, ldc, cols),
                        5 => block::<5, VECS, RA, RB>(p, first, c, ldc, cols),
                        4 => block::<4, VECS, RA, RB>(p, first, c, ldc, cols),
                        3 => block::<3, VECS, RA, RB>(p, first, c, ldc, cols),
                        2 => block::<2, VECS, RA, RB>(p, first, c, ldc, cols),
                        _ => block::<1, VECS, RA, RB>(p, first, c, ldc, cols),
                    }
                }
            }

            /// Rows `first..first + ROWS` of C (`c` starts at the first),
            /// columns `cols` (a multiple of `VECS` vectors).
            #[target_feature(enable = $features)]
            unsafe fn block<const ROWS: usize, const VECS: usize, RA: RowStarts, RB: RowStarts>(
                p: &Product<RA, RB>,
                first: usize,
                c: &mut [f32],
                ldc: usize,
                cols: std::ops::Range<usize>,
            ) {
                use std::arch::x86_64::*;
                // SAFETY: `first + ROWS <= m`, the rows `fit` checked.
                let a_rows: [usize; ROWS] =
                    std::array::from_fn(|r| unsafe { p.a_rows.start(first + r) });
                for col in cols.step_by(VECS * $lanes) {
                    let mut sums = [[$zero(); VECS]; ROWS];
                    for depth in 0..p.k {
                        let mut b_values = [$zero(); VECS];
                        for (v, value) in b_values.iter_mut().enumerate() {
                            // SAFETY: B's row `depth` has at least `cols.end`
                            // columns.
                            *value = unsafe {
                                $load(p.b.as_ptr().add(p.b_rows.start(depth) + col + v * $lanes))
                            };
                        }
                        for (r, row_sums) in sums.iter_mut().enumerate() {
                            // SAFETY: A has `ROWS` rows of `k` values.
                            let a_value = $splat(unsafe { *p.a.get_unchecked(a_rows[r] + depth) });
                            for (sum, &b_value) in row_sums.iter_mut().zip(&b_values) {
                                *sum = $fma(a_value, b_value, *sum);
                            }
                        }
                    }
                    for (r, row_sums) in sums.iter().enumerate() {
                        for (v, &sum) in row_sums.iter().enumerate() {
                            // SAFETY: C has `ROWS` rows of `cols.end` columns.
                            unsafe {
                                let out = c.as_mut_ptr().add(r * ldc + col + v * $lanes);
                                let sum = if p.beta != 0.0 {
                                    $fma($splat(p.beta), $load(out), sum)
                                } else {
                                    sum
                                };
                                $store(out, sum);
                            }
                        }
                    }
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
kernel!(
    with_avx512,
    "avx512f,avx2,fma",
    16,
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    _mm512_set1_ps,
    _mm512_fmadd_ps,
    _mm512_storeu_ps
);

#[cfg(target_arch = "x86_64")]
kernel!(
    with_avx2,
    "avx2,fma",
    8,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_set1_ps,
    _mm256_fmadd_ps,
    _mm256_storeu_ps
);

/// Columns `full..n` of C's rows `rows` (`c` starts at the first), one at a time (fused like the
/// vector blocks).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn ragged_end<RA: RowStarts, RB: RowStarts>(
    p: &Product<RA, RB>,
    rows: std::ops::Range<usize>,
    c: &mut [f32],
    ldc: usize,
    full: usize,
) {
    for (r, row) in rows.enumerate() {
        // SAFETY: `row < m`, the rows `fit` checked.
        let a_row = &p.a[unsafe { p.a_rows.start(row) }..][..p.k];
        for col in full..p.n {
            let mut sum = 0.0f32;
            for (depth, &a_value) in a_row.iter().enumerate() {
                // SAFETY: `depth < k`, the rows `fit` checked.
                let start = unsafe { p.b_rows.start(depth) };
                sum = a_value.mul_add(p.b[start + col], sum);
            }
            let out = &mut c[r * ldc + col];
            *out = if p.beta == 0.0 {
                sum
            } else {
                p.beta.mul_add(*out, sum)
            };
        }
    }
}

/// Computes `C ← A·Bᵀ + β·C` for row-major `A (m, k)`, `B (n, k)` and
/// `C (m, n)` (row strides `lda`, `ldb`, `ldc`) as dot products along the
/// rows, if the CPU has the instructions for it and `m ≤ MAX_ROWS`; returns
/// whether it did. A convolution's weight gradient, `dY_n (O, OH·OW) ·
/// X_colᵀ`, is this shape: few rows of C, both operands contiguous along
/// the long depth, which a packing GEMM would copy transposed.
pub fn few_rows_matmul_transposed_b(
    shape: (usize, usize, usize),
    a: (&[f32], usize),
    (b, ldb): (&[f32], usize),
    beta: f32,
    c: (&mut [f32], usize),
) -> bool {
    shape.0 <= MAX_ROWS && dots_on(Isa::best(), shape, a, (b, Strided(ldb)), beta, c)
}

/// Computes `C ← A·Bᵀ + β·C` for row-major `A (m, k)` and `C (m, n)` (row
/// strides `lda`, `ldc`) as dot products, where B's row `r` (C's column
/// `r`) is `b[starts[r]..][..k]`, if the CPU has the instructions for it;
/// returns whether it did. Any `m`.
pub fn dots_listed_rows(
    shape: (usize, usize, usize),
    a: (&[f32], usize),
    (b, starts): (&[f32], &[usize]),
    beta: f32,
    c: (&mut [f32], usize),
) -> bool {
    dots_on(Isa::best(), shape, a, (b, Listed(starts)), beta, c)
}

/// `C ← A·Bᵀ + β·C` with the instructions of `isa` (none: declines).
fn dots_on<R: RowStarts>(
    isa: Option<Isa>,
    (m, k, n): (usize, usize, usize),
    (a, lda): (&[f32], usize),
    (b, b_rows): (&[f32], R),
    beta: f32,
    (c, ldc): (&mut [f32], usize),
) -> bool {
    if m == 0 || n == 0 {
        return false;
    }
    assert!(
        (m - 1) * lda + k <= a.len() && b_rows.fit(n, k, b.len()),
        "unpacked dot products: operand shorter than its shape"
    );
    let dots = Dots {
        m,
        k,
        n,
        a,
        lda,
        b,
        b_rows,
        beta,
    };
    run_on(isa, (m, n), (c, ldc), "dot products", |isa, c| {
        // SAFETY: callers pass only instruction sets this CPU has.
        unsafe { isa.dots(&dots, c, ldc) }
    })
}

/// The operands and sizes of one product `A·Bᵀ`.
struct Dots<'a, R> {
    m: usize,
    k: usize,
    n: usize,
    a: &'a [f32],
    lda: usize,
    b: &'a [f32],
    b_rows: R,
    beta: f32,
}

/// Rows of A and of B whose dot products one block sums at a time.
const DOT_ROWS_A: usize = 2;
const DOT_ROWS_B: usize = 4;

/// Defines `$name`, computing `A·Bᵀ` in blocks of [`DOT_ROWS_A`] ×
/// [`DOT_ROWS_B`] dot products, each summed in one `$lanes`-lane vector
/// (`$vector`'s intrinsics) and added across its lanes by `$sum` at the end;
/// the depth past the last whole vector in scalars.
#[cfg(target_arch = "x86_64")]
macro_rules! dot_kernel {
    ($name:ident, $features:literal, $lanes:literal,
     $zero:ident, $load:ident, $fma:ident, $sum:ident) => {
        #[target_feature(enable = $features)]
        unsafe fn $name<R: RowStarts>(d: &Dots<R>, c: &mut [f32], ldc: usize) {
            for i in (0..d.m).step_by(DOT_ROWS_A) {
                for j in (0..d.n).step_by(DOT_ROWS_B) {
                    let rows = ((d.m - i).min(DOT_ROWS_A), (d.n - j).min(DOT_ROWS_B));
                    // SAFETY (every arm): the caller checked that A, B and C
                    // hold their shapes, and the block lies inside them.
                    unsafe {
                        match rows {
                            (2, 4) => block::<2, 4, R>(d, i, j, c, ldc),
                            (2, 3) => block::<2, 3, R>(d, i, j, c, ldc),
                            (2, 2) => block::<2, 2, R>(d, i, j, c, ldc),
                            (2, _) => block::<2, 1, R>(d, i, j, c, ldc),
                            (_, 4) => block::<1, 4, R>(d, i, j, c, ldc),
                            (_, 3) => block::<1, 3, R>(d, i, j, c, ldc),
                            (_, 2) => block::<1, 2, R>(d, i, j, c, ldc),
                            _ => block::<1, 1, R>(d, i, j, c, ldc),
                        }
                    }
                }
            }

            /// C's rows `i..i + RA`, columns `j..j + RB`.
            #[target_feature(enable = $features)]
            unsafe fn block<const RA: usize, const RB: usize, R: RowStarts>(
                d: &Dots<R>,
                i: usize,
                j: usize,
                c: &mut [f32],
                ldc: usize,
            ) {
                use std::arch::x86_64::*;
                let whole = d.k / $lanes * $lanes;
                let a_rows: [&[f32]; RA] = std::array::from_fn(|r| &d.a[(i + r) * d.lda..][..d.k]);
                // SAFETY: `j + r < n`, the rows `fit` checked.
                let b_rows: [&[f32]; RB] =
                    std::array::from_fn(|r| &d.b[unsafe { d.b_rows.start(j + r) }..][..d.k]);
                let mut sums = [[$zero(); RB]; RA];
                for depth in (0..whole).step_by($lanes) {
                    // A loop, not `array::from_fn`: a closure lacks this
                    // function's target features, so the loads in it were
                    // calls, not inlined.
                    let mut b_values = [$zero(); RB];
                    for (value, row) in b_values.iter_mut().zip(&b_rows) {
                        // SAFETY: every row holds `k >= whole` values.
                        *value = unsafe { $load(row.as_ptr().add(depth)) };
                    }
                    for ra in 0..RA {
                        // SAFETY: as above.
                        let a_values = unsafe { $load(a_rows[ra].as_ptr().add(depth)) };
                        for rb in 0..RB {
                            sums[ra][rb] = $fma(a_values, b_values[rb], sums[ra][rb]);
                        }
                    }
                }
                for ra in 0..RA {
                    for rb in 0..RB {
                        let mut sum = $sum(sums[ra][rb]);
                        for depth in whole..d.k {
                            sum = a_rows[ra][depth].mul_add(b_rows[rb][depth], sum);
                        }
                        let out = &mut c[(i + ra) * ldc + j + rb];
                        *out = if d.beta == 0.0 {
                            sum
                        } else {
                            d.beta.mul_add(*out, sum)
                        };
                    }
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
dot_kernel!(
    dots_with_avx512,
    "avx512f,avx2,fma",
    16,
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    _mm512_fmadd_ps,
    _mm512_reduce_add_ps
);

#[cfg(target_arch = "x86_64")]
dot_kernel!(
    dots_with_avx2,
    "avx2,fma",
    8,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_fmadd_ps,
    sum_lanes_avx2
);

/// The sum of an AVX vector's eight lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn sum_lanes_avx2(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let halves = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let pairs = _mm_hadd_ps(halves, halves);
    _mm_cvtss_f32(_mm_hadd_ps(pairs, pairs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    /// The definition, in f64.
    fn reference(
        (m, k, n): (usize, usize, usize),
        a: &[f32],
        b: &[f32],
        beta: f32,
        c: &[f32],
    ) -> Vec<f32> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let sum: f64 = (0..k)
                    .map(|l| a[i * k + l] as f64 * b[l * n + j] as f64)
                    .sum();
                let prior = if beta == 0.0 {
                    0.0
                } else {
                    beta as f64 * c[i * n + j] as f64
                };
                out[i * n + j] = (sum + prior) as f32;
            }
        }
        out
    }

    /// An operand as a kernel is given it: its slice and row starts.
    type Operand<'a> = (&'a [f32], &'a [usize]);

    /// A kernel on one instruction set: `(isa, (m, k, n), A, B, β, C)`.
    type Run<'a> =
        &'a dyn Fn(Isa, (usize, usize, usize), Operand, Operand, f32, &mut [f32]) -> bool;

    /// `rows` rows of `len` random values, one after another or (`listed`)
    /// at random, overlapping offsets of one slice; and the rows as a
    /// row-major matrix.
    fn operand(
        rng: &mut SplitMix64,
        rows: usize,
        len: usize,
        listed: bool,
    ) -> (Vec<f32>, Vec<usize>, Vec<f32>) {
        let (values, starts): (Vec<f32>, Vec<usize>) = if listed {
            let values = rng.uniform_vec(rows * len / 2 + len + 7, -1.0, 1.0);
            let room = (values.len() - len + 1) as u64;
            let starts = (0..rows)
                .map(|_| (rng.next_u64() % room) as usize)
                .collect();
            (values, starts)
        } else {
            let values = rng.uniform_vec(rows * len, -1.0, 1.0);
            (values, (0..rows).map(|r| r * len).collect())
        };
        let matrix = starts
            .iter()
            .flat_map(|&start| values[start..][..len].to_vec())
            .collect();
        (values, starts, matrix)
    }

    /// Checks `run` against the definition on `shapes`, with β 0 and 1.
    /// `transposed`: B is passed as its `n` rows of `k` (else its `k` rows
    /// of `n`); `listed_a`, `listed_b`: the operand's rows start at random,
    /// overlapping offsets of one slice (else one after another).
    fn check_kernel(
        shapes: &[(usize, usize, usize)],
        transposed: bool,
        (listed_a, listed_b): (bool, bool),
        run: Run,
    ) {
        let mut rng = SplitMix64::new(7);
        for &(m, k, n) in shapes {
            for beta in [0.0, 1.0] {
                let (a, a_starts, a_mk) = operand(&mut rng, m, k, listed_a);
                let (rows, len) = if transposed { (n, k) } else { (k, n) };
                let (b, b_starts, b_rows) = operand(&mut rng, rows, len, listed_b);
                // B (k, n) for the definition.
                let b_kn: Vec<f32> = if transposed {
                    (0..k * n).map(|e| b_rows[(e % n) * k + e / n]).collect()
                } else {
                    b_rows
                };
                // With β = 0 whatever C held (here NaN) is ignored.
                let fill = if beta == 0.0 { f32::NAN } else { 0.5 };
                let expected = reference((m, k, n), &a_mk, &b_kn, beta, &vec![fill; m * n]);
                // Every kernel this CPU can run, not only the best.
                for isa in Isa::BEST_FIRST.into_iter().filter(|isa| isa.is_available()) {
                    let mut c = vec![fill; m * n];
                    let operands = ((&a[..], &a_starts[..]), (&b[..], &b_starts[..]));
                    assert!(run(isa, (m, k, n), operands.0, operands.1, beta, &mut c));
                    for (got, want) in c.iter().zip(&expected) {
                        assert!(
                            (got - want).abs() <= 1e-5 * (1.0 + k as f32),
                            "{isa:?} {m}x{k}x{n} β {beta}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// Pairs of vectors, one vector (784, 40 on AVX2, 16 and 57 on
    /// AVX-512) and scalars after them.
    const MATMUL_SHAPES: [(usize, usize, usize); 9] = [
        (1, 1, 1),
        (6, 25, 784),
        (16, 150, 100),
        (3, 7, 33),
        (9, 4, 65),
        (8, 0, 40),
        (37, 20, 64),
        (10, 9, 16),
        (5, 3, 57),
    ];

    const DOT_SHAPES: [(usize, usize, usize); 7] = [
        (1, 1, 1),
        (6, 784, 25),
        (16, 100, 150),
        (3, 37, 5),
        (5, 16, 7),
        (2, 0, 3),
        (33, 64, 19),
    ];

    #[test]
    fn matches_the_definition_on_ragged_shapes() {
        for listed in [(false, false), (false, true), (true, false), (true, true)] {
            check_kernel(
                &MATMUL_SHAPES,
                false,
                listed,
                &|isa, shape, a, b, beta, c| {
                    let (a_rows, b_rows) = match listed {
                        (false, false) => (Rows::Strided(shape.1), Rows::Strided(shape.2)),
                        (false, true) => (Rows::Strided(shape.1), Rows::Listed(b.1)),
                        (true, false) => (Rows::Listed(a.1), Rows::Strided(shape.2)),
                        (true, true) => (Rows::Listed(a.1), Rows::Listed(b.1)),
                    };
                    matmul_unpacked_on(
                        Some(isa),
                        shape,
                        (a.0, a_rows),
                        (b.0, b_rows),
                        beta,
                        (c, shape.2),
                    )
                },
            );
        }
    }

    #[test]
    fn dot_products_match_the_definition_on_ragged_shapes() {
        check_kernel(
            &DOT_SHAPES,
            true,
            (false, false),
            &|isa, shape, a, b, beta, c| {
                let (k, n) = (shape.1, shape.2);
                dots_on(Some(isa), shape, (a.0, k), (b.0, Strided(k)), beta, (c, n))
            },
        );
    }

    #[test]
    fn dot_products_of_listed_rows_match_the_definition_on_ragged_shapes() {
        check_kernel(
            &DOT_SHAPES,
            true,
            (false, true),
            &|isa, shape, a, b, beta, c| {
                let (k, n) = (shape.1, shape.2);
                dots_on(Some(isa), shape, (a.0, k), (b.0, Listed(b.1)), beta, (c, n))
            },
        );
    }

    #[test]
    fn declines_more_rows_than_it_takes() {
        let (a, b) = (vec![0.0; 17], vec![0.0; 1]);
        let mut c = vec![0.0; 17];
        assert!(!few_rows_matmul(
            (17, 1, 1),
            (&a, 1),
            (&b, 1),
            0.0,
            (&mut c, 1)
        ));
        assert!(!few_rows_matmul_transposed_b(
            (17, 1, 1),
            (&a, 1),
            (&b, 1),
            0.0,
            (&mut c, 1)
        ));
    }
}
