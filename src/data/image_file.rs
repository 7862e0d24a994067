//! One PNG or JPEG file turned into an example of a data set's shape, for
//! `wgcnn predict`.

use std::path::Path;

use image::imageops::{self, FilterType};

use crate::error::{Error, Result};

/// Largest accepted side of the target shape (a guard against nonsense shapes).
const MAX_SIDE: usize = 16_384;

/// Converts one image (any size and colour) from a PNG/JPEG file to `shape`
/// (`[C, H, W]` with `C` = 1 or 3): decodes it with the `image` crate (format
/// guessed from the content, the crate's default memory limits), converts it to
/// grey (`C` = 1) or RGB (`C` = 3) — alpha is dropped, nothing is inverted —
/// and resizes it to `H`×`W` with a triangle filter, ignoring the aspect ratio.
/// Returns `C·H·W` bytes in channel planes, like [`super::Dataset::image`].
pub fn load_image_file(path: &Path, shape: [usize; 3]) -> Result<Vec<u8>> {
    let [c, h, w] = shape;
    if c != 1 && c != 3 {
        return Err(Error::Setting(format!(
            "cannot convert {} to {c} channels; expected 1 (grey) or 3 (RGB)",
            path.display()
        )));
    }
    if h == 0 || w == 0 || h > MAX_SIDE || w > MAX_SIDE {
        return Err(Error::Setting(format!(
            "cannot resize {} to {h}x{w}; each side must lie in 1..={MAX_SIDE}",
            path.display()
        )));
    }
    let decoded = image::ImageReader::open(path)
        .map_err(|e| Error::file(path, format!("cannot open: {e}")))?
        .with_guessed_format()
        .map_err(|e| Error::file(path, format!("cannot read: {e}")))?
        .decode()
        .map_err(|e| {
            Error::file(
                path,
                format!("cannot decode as an image ({e}); expected a PNG or JPEG file"),
            )
        })?;
    let (w32, h32) = (w as u32, h as u32);
    let out = if c == 1 {
        imageops::resize(&decoded.to_luma8(), w32, h32, FilterType::Triangle).into_raw()
    } else {
        let rgb = imageops::resize(&decoded.to_rgb8(), w32, h32, FilterType::Triangle);
        // Interleaved RGB → three planes.
        let plane = h * w;
        let mut planes = vec![0u8; 3 * plane];
        for (i, px) in rgb.pixels().enumerate() {
            for ch in 0..3 {
                planes[ch * plane + i] = px.0[ch];
            }
        }
        planes
    };
    Ok(out)
}
