//! The built-in synthetic set: 1×28×28 grey images of ten shapes drawn at random
//! positions and sizes, with random brightness and (near-)Gaussian noise. It needs no
//! files, so tests and first runs can train anywhere.
//!
//! Each class has a feature the others lack — curvature and fill (disc, ring),
//! corners and fill (square, square outline), slanted edges with a flat base
//! (triangle), a single crossing of perpendicular strokes (plus), three parallel
//! strokes in one orientation (horizontal or vertical bars), one thin diagonal
//! stroke (diagonal line), a lattice of isolated blobs (dot grid) — and shapes
//! span at least 12 pixels with a contrast of at least 130 grey levels over noise
//! of σ = 12, so a small CNN (two conv layers with pooling) separates them well
//! above 90%.
//!
//! Shapes are rendered from signed distances with one pixel of anti-aliasing.

use super::{Dataset, SYNTHETIC_TAG, Splits, derive_seed, permutation};
use crate::rng::SplitMix64;

/// The class names, by label.
pub(super) const CLASS_NAMES: [&str; 10] = [
    "disc",
    "ring",
    "square",
    "square outline",
    "triangle",
    "plus",
    "horizontal bars",
    "vertical bars",
    "diagonal line",
    "dot grid",
];

/// Image side.
const SIDE: usize = 28;
/// Standard deviation of the pixel noise, in grey levels.
const NOISE: f32 = 12.0;

/// The built-in synthetic set: `train` and `test` examples of 1×28×28 grey
/// images of 10 shape classes (disc, ring, square, square outline, triangle,
/// plus, horizontal bars, vertical bars, diagonal line, dot grid) drawn at random
/// positions and sizes with noise. Each split holds every class equally often
/// (to within one) in shuffled order; the whole set is fixed by `seed`, and the
/// two splits are drawn from independent streams.
pub fn synthetic(seed: u64, train: usize, test: usize) -> Splits {
    Splits {
        train: split(seed, 0, train, "synthetic (train)"),
        test: split(seed, 1, test, "synthetic (test)"),
    }
}

fn split(seed: u64, which: u64, n: usize, name: &str) -> Dataset {
    let mut rng = SplitMix64::new(derive_seed(&[SYNTHETIC_TAG, seed, which]));
    let classes = CLASS_NAMES.len();
    let labels: Vec<u8> = permutation(n, &mut rng)
        .into_iter()
        .map(|i| (i % classes) as u8)
        .collect();
    let mut images = vec![0u8; n * SIDE * SIDE];
    for (image, &label) in images.chunks_exact_mut(SIDE * SIDE).zip(&labels) {
        draw(image, label, &mut rng);
    }
    Dataset {
        name: name.to_string(),
        images,
        labels,
        shape: [1, SIDE, SIDE],
        classes,
        class_names: CLASS_NAMES.iter().map(|s| s.to_string()).collect(),
    }
}

/// Signed distance from `(x, y)` to an axis-aligned box centred at the origin
/// with half-extents `(hx, hy)`; negative inside.
fn sd_box(x: f32, y: f32, hx: f32, hy: f32) -> f32 {
    let (qx, qy) = (x.abs() - hx, y.abs() - hy);
    let outside = (qx.max(0.0).powi(2) + qy.max(0.0).powi(2)).sqrt();
    outside + qx.max(qy).min(0.0)
}

/// Distance from `(x, y)` to the segment `a`–`b`.
fn dist_segment(x: f32, y: f32, a: (f32, f32), b: (f32, f32)) -> f32 {
    let (px, py) = (x - a.0, y - a.1);
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let t = ((px * dx + py * dy) / (dx * dx + dy * dy)).clamp(0.0, 1.0);
    ((px - t * dx).powi(2) + (py - t * dy).powi(2)).sqrt()
}

/// Approximately standard-normal noise from one 64-bit draw: the sum of four
/// 16-bit uniforms (Irwin–Hall), centred and scaled to unit variance. Several
/// times cheaper than Box–Muller, and plenty for pixel noise.
fn noise(rng: &mut SplitMix64) -> f32 {
    let r = rng.next_u64();
    let sum: u64 = (0..4).map(|k| (r >> (16 * k)) & 0xffff).sum();
    // Each uniform has mean ½ and variance 1/12, so the sum has mean 2, variance ⅓.
    (sum as f32 / 65536.0 - 2.0) * 3f32.sqrt()
}

/// Draws one example of class `label` into `image` (28×28 bytes).
fn draw(image: &mut [u8], label: u8, rng: &mut SplitMix64) {
    let s = rng.uniform(6.0, 10.0); // half-size of the shape
    let cx = rng.uniform(s + 1.0, SIDE as f32 - s - 1.0);
    let cy = rng.uniform(s + 1.0, SIDE as f32 - s - 1.0);
    let t = rng.uniform(1.8, 2.8); // stroke width
    let background = rng.uniform(0.0, 40.0);
    let foreground = rng.uniform(170.0, 255.0);
    let diagonal_sign = if rng.next_u64() >> 63 == 1 { 1.0 } else { -1.0 };
    let dot_radius = rng.uniform(1.2, 1.7);

    // Signed distance to the shape at offset (x, y) from its centre.
    let sdf = |x: f32, y: f32| -> f32 {
        match label {
            0 => (x * x + y * y).sqrt() - s,
            1 => ((x * x + y * y).sqrt() - s).abs() - t / 2.0,
            2 => sd_box(x, y, 0.85 * s, 0.85 * s),
            3 => sd_box(x, y, 0.85 * s, 0.85 * s).abs() - t / 2.0,
            4 => {
                // Apex (0, −s), base from (−s, s) to (s, s): intersection of
                // three half-planes, each distance along its unit outward normal.
                let k = 1.0 / 5f32.sqrt();
                let left = (-2.0 * x - y - s) * k;
                let right = (2.0 * x - y - s) * k;
                let base = y - s;
                left.max(right).max(base)
            }
            5 => sd_box(x, y, s, t / 2.0).min(sd_box(x, y, t / 2.0, s)),
            6 | 7 => {
                let (along, across) = if label == 6 { (x, y) } else { (y, x) };
                let gap = 0.75 * s;
                [-gap, 0.0, gap]
                    .iter()
                    .map(|o| sd_box(along, across - o, s, t / 2.0))
                    .fold(f32::INFINITY, f32::min)
            }
            8 => dist_segment(x, y, (-s, -s * diagonal_sign), (s, s * diagonal_sign)) - t / 2.0,
            _ => {
                let gap = 0.8 * s;
                let (gx, gy) = (
                    (x / gap).round().clamp(-1.0, 1.0),
                    (y / gap).round().clamp(-1.0, 1.0),
                );
                ((x - gx * gap).powi(2) + (y - gy * gap).powi(2)).sqrt() - dot_radius
            }
        }
    };
    for (i, px) in image.iter_mut().enumerate() {
        let x = (i % SIDE) as f32 + 0.5 - cx;
        let y = (i / SIDE) as f32 + 0.5 - cy;
        let coverage = (0.5 - sdf(x, y)).clamp(0.0, 1.0);
        let v = background + (foreground - background) * coverage + NOISE * noise(rng);
        *px = v.round().clamp(0.0, 255.0) as u8;
    }
}
