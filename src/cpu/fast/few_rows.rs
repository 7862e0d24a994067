//! `C ← A·B + β·C` for products with few rows (a convolution's forward,
//! `W (O, C·kh·kw) · X_col`, with O of 16 or fewer), without packing.
//!
//! A packing GEMM (matrixmultiply) copies all of B into panels before each
//! product, and rounds the rows up to its kernel's height: for LeNet-5's
//! first convolution (6 rows, 25 deep) the copy is a sixth of the
//! multiply-adds' worth of memory traffic, and more than half of the
//! kernel's rows are padding. Here each block of up to eight rows of C is
//! summed in registers over B's rows as they lie, row-major: one load of B
//! per `rows` multiply-adds, every row real.
//!
//! The multiply-adds are fused (`mul_add`), so results differ from the
//! unfused reference by rounding only, within the tests' tolerance. The
//! kernels need AVX-512 or AVX2 with FMA, found at run time; without them
//! the caller falls back to the packing GEMM.

/// The most rows of C this module takes.
pub const MAX_ROWS: usize = 16;
/// Rows of C summed in one pass over B.
const BLOCK_ROWS: usize = 8;

/// Computes `C ← A·B + β·C` for row-major `A (m, k)`, `B (k, n)` and
/// `C (m, n)` with row strides `lda`, `ldb`, `ldc`, if the CPU has the
/// instructions for it and `m ≤ MAX_ROWS`; returns whether it did.
#[allow(clippy::too_many_arguments)]
pub fn few_rows_matmul(
    shape: (usize, usize, usize),
    a: (&[f32], usize),
    b: (&[f32], usize),
    beta: f32,
    c: (&mut [f32], usize),
) -> bool {
    matmul_on(Isa::best(), shape, a, b, beta, c)
}

/// [`few_rows_matmul`] with the instructions of `isa` (none: declines).
fn matmul_on(
    isa: Option<Isa>,
    (m, k, n): (usize, usize, usize),
    (a, lda): (&[f32], usize),
    (b, ldb): (&[f32], usize),
    beta: f32,
    (c, ldc): (&mut [f32], usize),
) -> bool {
    if m == 0 || m > MAX_ROWS || n == 0 {
        return false;
    }
    assert!(
        (m - 1) * lda + k <= a.len() && (k == 0 || (k - 1) * ldb + n <= b.len()),
        "few_rows_matmul: operand shorter than its shape"
    );
    assert!(
        (m - 1) * ldc + n <= c.len(),
        "few_rows_matmul: C shorter than its shape"
    );
    let product = Product {
        k,
        n,
        a,
        lda,
        b,
        ldb,
        beta,
    };
    match isa {
        Some(isa) => {
            // SAFETY: callers pass only instruction sets this CPU has.
            unsafe { isa.matmul(&product, m, c, ldc) };
            true
        }
        None => false,
    }
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
    unsafe fn matmul(self, p: &Product, m: usize, c: &mut [f32], ldc: usize) {
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
    unsafe fn dots(self, d: &Dots, c: &mut [f32], ldc: usize) {
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
struct Product<'a> {
    k: usize,
    n: usize,
    a: &'a [f32],
    lda: usize,
    b: &'a [f32],
    ldb: usize,
    beta: f32,
}

/// Defines `$name`, computing every row of C: blocks of [`BLOCK_ROWS`]
/// rows, each summed in registers over B's rows, two `$lanes`-lane vectors
/// (`$vector`'s intrinsics) per row of C at a time; then the columns past
/// the last whole pair of vectors, in scalars.
#[cfg(target_arch = "x86_64")]
macro_rules! kernel {
    ($name:ident, $features:literal, $lanes:literal,
     $zero:ident, $load:ident, $splat:ident, $fma:ident, $store:ident) => {
        #[target_feature(enable = $features)]
        unsafe fn $name(p: &Product, m: usize, c: &mut [f32], ldc: usize) {
            let full = p.n / (2 * $lanes) * (2 * $lanes);
            let mut row = 0;
            while row < m {
                let rows = (m - row).min(BLOCK_ROWS);
                let (a, c) = (&p.a[row * p.lda..], &mut c[row * ldc..]);
                // SAFETY (every arm): the caller checked that A, B and C hold
                // their shapes, and `row + rows <= m`.
                unsafe {
                    match rows {
                        8 => block::<8>(p, a, c, ldc, full),
                        7 => block::<7>(p, a, c, ldc, full),
                        6 => block::<6>(p, a, c, ldc, full),
                        5 => block::<5>(p, a, c, ldc, full),
                        4 => block::<4>(p, a, c, ldc, full),
                        3 => block::<3>(p, a, c, ldc, full),
                        2 => block::<2>(p, a, c, ldc, full),
                        _ => block::<1>(p, a, c, ldc, full),
                    }
                }
                ragged_end(p, a, rows, c, ldc, full);
                row += rows;
            }

            /// `ROWS` rows of C, columns `0..full`.
            #[target_feature(enable = $features)]
            unsafe fn block<const ROWS: usize>(
                p: &Product,
                a: &[f32],
                c: &mut [f32],
                ldc: usize,
                full: usize,
            ) {
                use std::arch::x86_64::*;
                for col in (0..full).step_by(2 * $lanes) {
                    let mut low = [$zero(); ROWS];
                    let mut high = [$zero(); ROWS];
                    for depth in 0..p.k {
                        // SAFETY: B's row `depth` has at least `full` columns.
                        let (b_low, b_high) = unsafe {
                            let b = p.b.as_ptr().add(depth * p.ldb + col);
                            ($load(b), $load(b.add($lanes)))
                        };
                        for r in 0..ROWS {
                            // SAFETY: A has `ROWS` rows of `k` values.
                            let a_value = $splat(unsafe { *a.get_unchecked(r * p.lda + depth) });
                            low[r] = $fma(a_value, b_low, low[r]);
                            high[r] = $fma(a_value, b_high, high[r]);
                        }
                    }
                    for r in 0..ROWS {
                        // SAFETY: C has `ROWS` rows of `full` columns.
                        unsafe {
                            let out = c.as_mut_ptr().add(r * ldc + col);
                            let (mut low, mut high) = (low[r], high[r]);
                            if p.beta != 0.0 {
                                let beta = $splat(p.beta);
                                low = $fma(beta, $load(out), low);
                                high = $fma(beta, $load(out.add($lanes)), high);
                            }
                            $store(out, low);
                            $store(out.add($lanes), high);
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

/// Columns `full..n` of `rows` rows of C, one at a time (fused like the
/// vector blocks).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn ragged_end(p: &Product, a: &[f32], rows: usize, c: &mut [f32], ldc: usize, full: usize) {
    for r in 0..rows {
        let a_row = &a[r * p.lda..][..p.k];
        for col in full..p.n {
            let mut sum = 0.0f32;
            for (depth, &a_value) in a_row.iter().enumerate() {
                sum = a_value.mul_add(p.b[depth * p.ldb + col], sum);
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
    b: (&[f32], usize),
    beta: f32,
    c: (&mut [f32], usize),
) -> bool {
    dots_on(Isa::best(), shape, a, b, beta, c)
}

/// [`few_rows_matmul_transposed_b`] with the instructions of `isa` (none:
/// declines).
fn dots_on(
    isa: Option<Isa>,
    (m, k, n): (usize, usize, usize),
    (a, lda): (&[f32], usize),
    (b, ldb): (&[f32], usize),
    beta: f32,
    (c, ldc): (&mut [f32], usize),
) -> bool {
    if m == 0 || m > MAX_ROWS || n == 0 {
        return false;
    }
    assert!(
        (m - 1) * lda + k <= a.len() && (n - 1) * ldb + k <= b.len(),
        "few_rows_matmul_transposed_b: operand shorter than its shape"
    );
    assert!(
        (m - 1) * ldc + n <= c.len(),
        "few_rows_matmul_transposed_b: C shorter than its shape"
    );
    let dots = Dots {
        m,
        k,
        n,
        a,
        lda,
        b,
        ldb,
        beta,
    };
    match isa {
        Some(isa) => {
            // SAFETY: callers pass only instruction sets this CPU has.
            unsafe { isa.dots(&dots, c, ldc) };
            true
        }
        None => false,
    }
}

/// The operands and sizes of one product `A·Bᵀ`.
struct Dots<'a> {
    m: usize,
    k: usize,
    n: usize,
    a: &'a [f32],
    lda: usize,
    b: &'a [f32],
    ldb: usize,
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
        unsafe fn $name(d: &Dots, c: &mut [f32], ldc: usize) {
            for i in (0..d.m).step_by(DOT_ROWS_A) {
                for j in (0..d.n).step_by(DOT_ROWS_B) {
                    let rows = ((d.m - i).min(DOT_ROWS_A), (d.n - j).min(DOT_ROWS_B));
                    // SAFETY (every arm): the caller checked that A, B and C
                    // hold their shapes, and the block lies inside them.
                    unsafe {
                        match rows {
                            (2, 4) => block::<2, 4>(d, i, j, c, ldc),
                            (2, 3) => block::<2, 3>(d, i, j, c, ldc),
                            (2, 2) => block::<2, 2>(d, i, j, c, ldc),
                            (2, _) => block::<2, 1>(d, i, j, c, ldc),
                            (_, 4) => block::<1, 4>(d, i, j, c, ldc),
                            (_, 3) => block::<1, 3>(d, i, j, c, ldc),
                            (_, 2) => block::<1, 2>(d, i, j, c, ldc),
                            _ => block::<1, 1>(d, i, j, c, ldc),
                        }
                    }
                }
            }

            /// C's rows `i..i + RA`, columns `j..j + RB`.
            #[target_feature(enable = $features)]
            unsafe fn block<const RA: usize, const RB: usize>(
                d: &Dots,
                i: usize,
                j: usize,
                c: &mut [f32],
                ldc: usize,
            ) {
                use std::arch::x86_64::*;
                let whole = d.k / $lanes * $lanes;
                let a_rows: [*const f32; RA] =
                    std::array::from_fn(|r| d.a[(i + r) * d.lda..].as_ptr());
                let b_rows: [*const f32; RB] =
                    std::array::from_fn(|r| d.b[(j + r) * d.ldb..].as_ptr());
                let mut sums = [[$zero(); RB]; RA];
                for depth in (0..whole).step_by($lanes) {
                    // SAFETY: every row holds `k >= whole` values.
                    let b_values: [_; RB] =
                        std::array::from_fn(|r| unsafe { $load(b_rows[r].add(depth)) });
                    for ra in 0..RA {
                        // SAFETY: as above.
                        let a_values = unsafe { $load(a_rows[ra].add(depth)) };
                        for rb in 0..RB {
                            sums[ra][rb] = $fma(a_values, b_values[rb], sums[ra][rb]);
                        }
                    }
                }
                for ra in 0..RA {
                    let a_row = &d.a[(i + ra) * d.lda..][..d.k];
                    for rb in 0..RB {
                        let b_row = &d.b[(j + rb) * d.ldb..][..d.k];
                        let mut sum = $sum(sums[ra][rb]);
                        for depth in whole..d.k {
                            sum = a_row[depth].mul_add(b_row[depth], sum);
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

    /// Checks `run` (a kernel on one instruction set) against the
    /// definition on `shapes`, with β 0 and 1; `transposed`: B is passed as
    /// stored `(n, k)`.
    fn check_kernel(
        shapes: &[(usize, usize, usize)],
        transposed: bool,
        run: impl Fn(Isa, (usize, usize, usize), &[f32], &[f32], f32, &mut [f32]) -> bool,
    ) {
        let mut rng = SplitMix64::new(7);
        for &(m, k, n) in shapes {
            for beta in [0.0, 1.0] {
                let a = rng.uniform_vec(m * k, -1.0, 1.0);
                let b = rng.uniform_vec(k * n, -1.0, 1.0);
                // B (k, n) for the definition: stored transposed, B's rows
                // as stored are its columns.
                let b_kn: Vec<f32> = if transposed {
                    (0..k * n).map(|e| b[(e % n) * k + e / n]).collect()
                } else {
                    b.clone()
                };
                // With β = 0 whatever C held (here NaN) is ignored.
                let fill = if beta == 0.0 { f32::NAN } else { 0.5 };
                let expected = reference((m, k, n), &a, &b_kn, beta, &vec![fill; m * n]);
                // Every kernel this CPU can run, not only the best.
                for isa in Isa::BEST_FIRST.into_iter().filter(|isa| isa.is_available()) {
                    let mut c = vec![fill; m * n];
                    assert!(run(isa, (m, k, n), &a, &b, beta, &mut c));
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

    #[test]
    fn matches_the_definition_on_ragged_shapes() {
        let shapes = [
            (1, 1, 1),
            (6, 25, 784),
            (16, 150, 100),
            (3, 7, 33),
            (9, 4, 65),
            (8, 0, 40),
        ];
        check_kernel(&shapes, false, |isa, (m, k, n), a, b, beta, c| {
            matmul_on(Some(isa), (m, k, n), (a, k), (b, n), beta, (c, n))
        });
    }

    #[test]
    fn dot_products_match_the_definition_on_ragged_shapes() {
        let shapes = [
            (1, 1, 1),
            (6, 784, 25),
            (16, 100, 150),
            (3, 37, 5),
            (5, 16, 7),
            (2, 0, 3),
        ];
        check_kernel(&shapes, true, |isa, (m, k, n), a, b, beta, c| {
            dots_on(Some(isa), (m, k, n), (a, k), (b, k), beta, (c, n))
        });
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
