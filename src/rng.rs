//! Deterministic randomness shared by the CPU and GPU paths.
//!
//! Dropout masks come from a counter-based hash of `(seed, step, index)`, so the
//! GPU kernel (`shaders/elementwise.wgsl`, `hash_u32`/`dropout_keep`) and the CPU
//! reference draw the same mask without sharing state. The two implementations
//! must stay bit-identical; `tests/cpu_reference.rs` pins known values.

/// One round of a 32-bit integer hash (the "lowbias32" finaliser): good
/// avalanche, only wrapping multiplies, shifts and xors, all exact in WGSL `u32`.
pub fn hash_u32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// Uniform number in `[0, 1)` for element `index` of dropout draw `step` under
/// `seed`; 24 bits of the hash, so the value is exact in `f32`.
pub fn dropout_uniform(seed: u32, step: u32, index: u32) -> f32 {
    let h = hash_u32(seed ^ hash_u32(step ^ hash_u32(index)));
    (h >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// Whether dropout with drop probability `p` keeps element `index`.
pub fn dropout_keep(seed: u32, step: u32, index: u32, p: f32) -> bool {
    dropout_uniform(seed, step, index) >= p
}

/// A small seeded generator (SplitMix64) for test data and weight init.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose whole stream is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.next_f64() as f32
    }

    /// Standard normal by Box–Muller.
    pub fn normal(&mut self) -> f32 {
        let u1 = self.next_f64().max(f64::MIN_POSITIVE);
        let u2 = self.next_f64();
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }

    /// Uniform integer in `[0, n)`.
    pub fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % n as u64) as u32
    }

    /// `len` values uniform in `[lo, hi)`.
    pub fn uniform_vec(&mut self, len: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..len).map(|_| self.uniform(lo, hi)).collect()
    }
}
