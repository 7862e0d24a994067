//! From a [`Dataset`] to batches: the order of an epoch, normalisation, and
//! optional augmentation, all fixed by seeds so a resumed run reproduces them.

use super::{AUGMENT_TAG, Dataset, EPOCH_TAG, derive_seed, permutation};
use crate::rng::SplitMix64;
use crate::tensor::HostTensor;

/// Per-channel mean and standard deviation of a data set's pixels scaled to
/// `[0, 1]`, for normalisation: a batch holds `(x/255 − mean[c]) / std[c]`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalization {
    /// Mean of each channel, in `[0, 1]`.
    pub mean: Vec<f32>,
    /// Standard deviation (population) of each channel; a constant channel gets
    /// 1 so normalising never divides by zero.
    pub std: Vec<f32>,
}

impl Normalization {
    /// Mean and standard deviation of every channel of `ds` (exact: computed
    /// from a histogram of byte values). An empty set gives mean 0, std 1.
    pub fn of(ds: &Dataset) -> Self {
        let [c, h, w] = ds.shape;
        let plane = h * w;
        let mut hist = vec![[0u64; 256]; c];
        if plane > 0 {
            for image in ds.images.chunks_exact(c * plane) {
                for (ch, pixels) in image.chunks_exact(plane).enumerate() {
                    let hist = &mut hist[ch];
                    for &p in pixels {
                        hist[p as usize] += 1;
                    }
                }
            }
        }
        let (mut mean, mut std) = (Vec::with_capacity(c), Vec::with_capacity(c));
        for hist in &hist {
            let count: u64 = hist.iter().sum();
            if count == 0 {
                mean.push(0.0);
                std.push(1.0);
                continue;
            }
            let n = count as f64;
            let m = hist
                .iter()
                .enumerate()
                .map(|(v, &k)| v as f64 / 255.0 * k as f64)
                .sum::<f64>()
                / n;
            let var = hist
                .iter()
                .enumerate()
                .map(|(v, &k)| (v as f64 / 255.0 - m).powi(2) * k as f64)
                .sum::<f64>()
                / n;
            let s = var.sqrt();
            mean.push(m as f32);
            std.push(if s > 1e-6 { s as f32 } else { 1.0 });
        }
        Self { mean, std }
    }

    /// No normalisation beyond scaling to `[0, 1]`: mean 0, std 1 for each of
    /// `channels`.
    pub fn identity(channels: usize) -> Self {
        Self {
            mean: vec![0.0; channels],
            std: vec![1.0; channels],
        }
    }
}

/// Optional augmentation: random crop after zero padding by `crop_padding`
/// pixels, and random horizontal flip (each image with probability ½). Padding
/// is black (byte 0) before normalisation, as torchvision's `RandomCrop(padding)`
/// does before `Normalize`.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Augmentation {
    /// Pixels of zero padding on each side before a random crop back to the
    /// image size; 0 for no cropping.
    pub crop_padding: usize,
    /// Mirror each image left–right with probability ½.
    pub horizontal_flip: bool,
}

impl Augmentation {
    /// True when it changes nothing.
    pub fn is_identity(&self) -> bool {
        self.crop_padding == 0 && !self.horizontal_flip
    }
}

/// One batch ready for a backend.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// `[B, C, H, W]`, each pixel `(x/255 − mean[c]) / std[c]`.
    pub images: HostTensor<f32>,
    /// `B` labels.
    pub labels: Vec<u32>,
}

/// The order of one epoch: a seeded permutation of `0..n` that depends only on
/// `(seed, epoch)`, so a resumed run reproduces it, or `0..n` when `shuffle` is
/// false.
pub fn epoch_order(n: usize, seed: u64, epoch: usize, shuffle: bool) -> Vec<usize> {
    if !shuffle {
        return (0..n).collect();
    }
    let mut rng = SplitMix64::new(derive_seed(&[EPOCH_TAG, seed, epoch as u64]));
    permutation(n, &mut rng)
}

/// The augmentation seed for batch `batch` of epoch `epoch` of a run seeded with
/// `seed`: what to pass to [`make_batch`] alongside the [`Augmentation`].
pub fn batch_seed(seed: u64, epoch: usize, batch: usize) -> u64 {
    derive_seed(&[AUGMENT_TAG, seed, epoch as u64, batch as u64])
}

/// Assembles the batch of examples `indices` of `ds`, normalising with `norm`
/// and, when `augment` is `Some((aug, rng_seed))`, augmenting with an RNG seeded
/// by `rng_seed` (use [`batch_seed`]`(seed, epoch, batch index)`). The result
/// depends only on the arguments.
///
/// # Panics
/// When an index is not below `ds.len()` or `norm` does not have one mean and
/// std per channel: both are bugs in the caller.
pub fn make_batch(
    ds: &Dataset,
    indices: &[usize],
    norm: &Normalization,
    augment: Option<(&Augmentation, u64)>,
) -> Batch {
    let [c, h, w] = ds.shape;
    assert!(
        norm.mean.len() == c && norm.std.len() == c,
        "normalisation has {} means and {} stds for {c} channels",
        norm.mean.len(),
        norm.std.len()
    );
    // One lookup table per channel: byte → normalised value.
    let lut: Vec<[f32; 256]> = (0..c)
        .map(|ch| {
            let (m, inv) = (norm.mean[ch], 1.0 / norm.std[ch]);
            std::array::from_fn(|v| (v as f32 / 255.0 - m) * inv)
        })
        .collect();
    let plane = h * w;
    let mut data = vec![0f32; indices.len() * c * plane];
    let mut labels = Vec::with_capacity(indices.len());
    let mut rng = augment.map(|(_, s)| SplitMix64::new(s));
    for (b, &i) in indices.iter().enumerate() {
        let image = ds.image(i);
        labels.push(ds.labels[i] as u32);
        let out = &mut data[b * c * plane..(b + 1) * c * plane];
        // Offsets of the crop window in the padded image, and the flip.
        let (mut dy, mut dx, mut flip) = (0isize, 0isize, false);
        if let (Some((aug, _)), Some(rng)) = (augment, rng.as_mut()) {
            let p = aug.crop_padding;
            if p > 0 {
                let span = 2 * p as u64 + 1;
                dy = (rng.next_u64() % span) as isize - p as isize;
                dx = (rng.next_u64() % span) as isize - p as isize;
            }
            if aug.horizontal_flip {
                flip = rng.next_u64() >> 63 == 1;
            }
        }
        for ch in 0..c {
            let lut = &lut[ch];
            let src = &image[ch * plane..(ch + 1) * plane];
            let dst = &mut out[ch * plane..(ch + 1) * plane];
            if dy == 0 && dx == 0 && !flip {
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = lut[s as usize];
                }
                continue;
            }
            for y in 0..h {
                let sy = y as isize + dy;
                for x in 0..w {
                    // Flip after cropping: output column x shows crop column w−1−x.
                    let cx = if flip { w - 1 - x } else { x };
                    let sx = cx as isize + dx;
                    let inside = sy >= 0 && sy < h as isize && sx >= 0 && sx < w as isize;
                    let v = if inside {
                        src[sy as usize * w + sx as usize]
                    } else {
                        0
                    };
                    dst[y * w + x] = lut[v as usize];
                }
            }
        }
    }
    Batch {
        images: HostTensor::new(&[indices.len(), c, h, w], data),
        labels,
    }
}
