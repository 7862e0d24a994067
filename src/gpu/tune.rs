//! Which GEMM kernel to run on this device: the block shapes of
//! [`super::gemm_source`] each win somewhere (small blocks fill the device on
//! small products, tall blocks halve the loads per multiply-add on large
//! ones), and where the line falls depends on the adapter. The first product
//! of each shape class is timed with every eligible block, and the winner is
//! remembered for the device in the user's cache directory
//! (`$XDG_CACHE_HOME/wgcnn` or `~/.cache/wgcnn`), so later runs skip the
//! timing. Every block gives bit-identical results, so the choice only ever
//! changes speed. `WGCNN_GEMM_TUNE=0` turns the timing off (a fixed rule
//! decides instead).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use super::gemm::ConvProduct;
use super::gemm_source::{BLOCKS, Block, CONV_BLOCKS, SLOTS, SMALL, TALL, TILED};
use crate::dirs::user_cache_dir;
use crate::fnv::fnv1a;
use crate::geometry::GemmSpec;

/// Cache file format version; files of another version are ignored.
const VERSION: u64 = 1;

/// The per-device memory of GEMM block choices.
pub struct GemmTuner {
    /// Identifies adapter, driver and wgcnn version in the cache file.
    device: String,
    /// Cache file, `None` when no cache directory is known.
    path: Option<PathBuf>,
    /// Whether unseen shape classes are timed.
    timing: bool,
    /// A CPU-like adapter (software rasteriser): register blocks only.
    cpu_like: bool,
    choices: Mutex<BTreeMap<ShapeClass, Block>>,
    forced: Mutex<Option<Block>>,
}

impl GemmTuner {
    /// The tuner of the adapter `info`, with what earlier runs chose for it.
    pub fn new(info: &wgpu::AdapterInfo) -> Self {
        let device = format!(
            "{} | {} {} | {:?} | wgcnn {}",
            info.name,
            info.driver,
            info.driver_info,
            info.backend,
            env!("CARGO_PKG_VERSION")
        );
        let timing = std::env::var("WGCNN_GEMM_TUNE").map_or(true, |v| v != "0");
        let path = user_cache_dir()
            .map(|dir| dir.join(format!("gemm-tune-{:016x}.json", fnv1a(device.as_bytes()))));
        let choices = path
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|text| parse(&text, &device))
            .unwrap_or_default();
        Self {
            device,
            path,
            timing,
            cpu_like: info.device_type == wgpu::DeviceType::Cpu,
            choices: Mutex::new(choices),
            forced: Mutex::new(None),
        }
    }

    /// Makes every GEMM use `block` (for checks of each kernel), or lifts that.
    /// An implicit block runs convolutions' forward and weight-gradient
    /// products as implicit GEMMs and every other product with its explicit
    /// twin.
    pub fn force(&self, block: Option<Block>) {
        *self.forced.lock().unwrap() = block;
    }

    /// How a convolution's `product` `spec` (batched `count` times) runs: an
    /// implicit block, or an explicit one after im2col (im2row for dW).
    /// `None`: not known yet; the caller times the explicit path (with the
    /// GEMM's own choice) against its implicit twin and calls
    /// [`GemmTuner::remember_conv`].
    pub fn conv_choice(
        &self,
        product: ConvProduct,
        spec: &GemmSpec,
        count: usize,
    ) -> Option<Block> {
        if let Some(block) = *self.forced.lock().unwrap() {
            return Some(block);
        }
        let class = ShapeClass::of(spec, count).conv(product);
        if let Some(&block) = self.choices.lock().unwrap().get(&class) {
            return Some(block);
        }
        if self.timing {
            None
        } else {
            Some(rule(spec, count, self.cpu_like))
        }
    }

    /// Remembers how convolutions' `product`s of `spec`'s shape class run
    /// best.
    pub fn remember_conv(&self, product: ConvProduct, spec: &GemmSpec, count: usize, block: Block) {
        self.remember_class(ShapeClass::of(spec, count).conv(product), block);
    }

    /// The block to use for `spec` batched `count` times: forced, remembered,
    /// or the candidates to time now (see [`GemmTuner::remember`]).
    pub fn choice(&self, spec: &GemmSpec, count: usize) -> Result<Block, &'static [Block]> {
        if let Some(block) = *self.forced.lock().unwrap() {
            return Ok(block.explicit_twin());
        }
        let candidates = candidates(spec, count, self.cpu_like);
        if candidates.len() == 1 {
            return Ok(candidates[0]);
        }
        if let Some(&block) = self
            .choices
            .lock()
            .unwrap()
            .get(&ShapeClass::of(spec, count))
        {
            return Ok(block);
        }
        if self.timing {
            Err(candidates)
        } else {
            Ok(rule(spec, count, self.cpu_like))
        }
    }

    /// Remembers the winner for `spec`'s shape class and saves the cache.
    pub fn remember(&self, spec: &GemmSpec, count: usize, block: Block) {
        self.remember_class(ShapeClass::of(spec, count), block);
    }

    fn remember_class(&self, class: ShapeClass, block: Block) {
        let mut choices = self.choices.lock().unwrap();
        choices.insert(class, block);
        if let Some(path) = &self.path {
            // The cache only saves time; failing to write it is not an error.
            let _ = save(path, &self.device, &choices);
        }
    }

    /// The remembered choices, `class → entry point`.
    pub fn choices(&self) -> Vec<(String, &'static str)> {
        let choices = self.choices.lock().unwrap();
        choices
            .iter()
            .map(|(k, b)| (k.to_string(), b.name()))
            .collect()
    }
}

/// Kernels worth trying for `spec` on this kind of adapter: a block taller
/// or wider than C never pays; CPU-like adapters get register blocks (their
/// barriers are slow), GPUs workgroup-memory tiles (their registers are few).
fn candidates(spec: &GemmSpec, count: usize, cpu_like: bool) -> &'static [Block] {
    // The tall block idles on small products: only worth timing for products
    // of half a GFLOP or more.
    let fits = spec.m >= 32
        && if cpu_like {
            spec.m * spec.n * spec.k * count >= 1 << 28
        } else {
            spec.n >= 64
        };
    // Slots in the lanes: for many products (or partial sums) of a C a few
    // column blocks wide, which leaves most of SMALL's lanes idle.
    let slots = cpu_like && count >= 16 && spec.n <= 64 && spec.m.div_ceil(SLOTS.rows) <= 65_535;
    match (fits, cpu_like, slots) {
        (false, true, true) => &[SMALL, SLOTS],
        (false, _, _) => &[SMALL],
        (true, true, false) => &[SMALL, TALL],
        (true, true, true) => &[SMALL, TALL, SLOTS],
        (true, false, _) => &[SMALL, TILED],
    }
}

/// The choice without timing: the large kernel once C (times the batch)
/// gives it enough invocations to keep a device busy.
fn rule(spec: &GemmSpec, count: usize, cpu_like: bool) -> Block {
    let candidates = candidates(spec, count, cpu_like);
    let large = *candidates
        .iter()
        .rfind(|b| !b.slot_lanes)
        .expect("SMALL is always a candidate");
    let per_workgroup = if large.tiled {
        128 * 128
    } else {
        large.rows * large.cols
    };
    let workgroups = (spec.m * spec.n * count).div_ceil(per_workgroup);
    if large != SMALL && workgroups >= 1024 {
        large
    } else {
        SMALL
    }
}

/// Shapes whose sizes round up to the same powers of two share a choice:
/// a product's (`m…n…k…z…` in the cache file, with the exponents), or a
/// convolution product's explicit-or-implicit one (`conv-m…` for the
/// forward, `convdw-m…` for the weight gradient). A plain value, so looking
/// a choice up on every product allocates nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ShapeClass {
    conv: Option<ConvProduct>,
    m: u32,
    n: u32,
    k: u32,
    z: u32,
}

impl ShapeClass {
    fn of(spec: &GemmSpec, count: usize) -> Self {
        let log2 = |x: usize| usize::BITS - (x.max(1) - 1).leading_zeros();
        Self {
            conv: None,
            m: log2(spec.m),
            n: log2(spec.n),
            k: log2(spec.k),
            z: log2(count),
        }
    }

    fn conv(self, product: ConvProduct) -> Self {
        Self {
            conv: Some(product),
            ..self
        }
    }

    /// The cache file's prefix for a class of `conv`.
    fn prefix(conv: Option<ConvProduct>) -> &'static str {
        match conv {
            None => "",
            Some(ConvProduct::Forward) => "conv-",
            Some(ConvProduct::WeightGrad) => "convdw-",
        }
    }

    /// The class a cache file names `text`, if it names one.
    fn parse(text: &str) -> Option<Self> {
        let (conv, rest) = [Some(ConvProduct::WeightGrad), Some(ConvProduct::Forward)]
            .into_iter()
            .find_map(|conv| Some((conv, text.strip_prefix(Self::prefix(conv))?)))
            .unwrap_or((None, text));
        let rest = rest.strip_prefix('m')?;
        let (m, rest) = rest.split_once('n')?;
        let (n, rest) = rest.split_once('k')?;
        let (k, z) = rest.split_once('z')?;
        Some(Self {
            conv,
            m: m.parse().ok()?,
            n: n.parse().ok()?,
            k: k.parse().ok()?,
            z: z.parse().ok()?,
        })
    }
}

impl std::fmt::Display for ShapeClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}m{}n{}k{}z{}",
            Self::prefix(self.conv),
            self.m,
            self.n,
            self.k,
            self.z
        )
    }
}

/// The choices in a cache file written for `device`; anything else (another
/// device or version, damage) gives none, and they are timed again.
fn parse(text: &str, device: &str) -> BTreeMap<ShapeClass, Block> {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return BTreeMap::new();
    };
    if value["version"].as_u64() != Some(VERSION) || value["device"].as_str() != Some(device) {
        return BTreeMap::new();
    }
    let Some(choices) = value["choices"].as_object() else {
        return BTreeMap::new();
    };
    choices
        .iter()
        .filter_map(|(class, entry)| {
            let block = BLOCKS
                .iter()
                .chain(&CONV_BLOCKS)
                .find(|b| Some(b.name()) == entry.as_str())?;
            Some((ShapeClass::parse(class)?, *block))
        })
        .collect()
}

/// Writes the cache atomically (a temporary file renamed over the old one),
/// so a concurrent reader never sees half a file.
fn save(
    path: &std::path::Path,
    device: &str,
    choices: &BTreeMap<ShapeClass, Block>,
) -> std::io::Result<()> {
    let entries: serde_json::Map<String, serde_json::Value> = choices
        .iter()
        .map(|(k, b)| (k.to_string(), b.name().into()))
        .collect();
    let text = serde_json::json!({"version": VERSION, "device": device, "choices": entries});
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, text.to_string())?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(m: usize, n: usize, k: usize) -> GemmSpec {
        GemmSpec {
            m,
            n,
            k,
            trans_a: false,
            trans_b: false,
        }
    }

    #[test]
    fn cache_files_round_trip_and_foreign_or_damaged_ones_are_ignored() {
        let dir = std::env::temp_dir().join(format!("wgcnn-tune-{}", std::process::id()));
        let path = dir.join("t.json");
        let mut choices = BTreeMap::new();
        choices.insert(ShapeClass::of(&spec(1024, 1024, 1024), 1), TALL);
        choices.insert(ShapeClass::of(&spec(64, 64, 64), 1), SMALL);
        save(&path, "dev", &choices).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(parse(&text, "dev"), choices);
        assert!(parse(&text, "another device").is_empty());
        assert!(parse(&text[..text.len() / 2], "dev").is_empty());
        assert!(parse(&text.replace("gemm_32x16", "gemm_1x1"), "dev").len() == 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn only_kernels_that_fit_c_and_the_adapter_are_candidates() {
        assert_eq!(candidates(&spec(6, 784, 25), 64, true), vec![SMALL]);
        // LeNet's first weight gradient: 6×25 outputs summed over 64 images.
        assert_eq!(candidates(&spec(6, 25, 784), 64, true), vec![SMALL, SLOTS]);
        assert_eq!(candidates(&spec(6, 25, 784), 1, true), vec![SMALL]);
        assert_eq!(candidates(&spec(6, 25, 784), 64, false), vec![SMALL]);
        assert_eq!(candidates(&spec(32, 784, 288), 64, true), vec![SMALL, TALL]);
        assert_eq!(candidates(&spec(150, 100, 16), 64, true), vec![SMALL]);
        assert_eq!(
            candidates(&spec(32, 784, 288), 1, false),
            vec![SMALL, TILED]
        );
        assert_eq!(candidates(&spec(64, 10, 288), 1, false), vec![SMALL]);
    }

    #[test]
    fn shape_classes_round_sizes_up_to_powers_of_two() {
        let class = ShapeClass::of(&spec(1000, 1024, 513), 1);
        assert_eq!(class.to_string(), "m10n10k10z0");
        assert_eq!(ShapeClass::of(&spec(1, 2, 3), 64).to_string(), "m0n1k2z6");
        assert_eq!(
            class.conv(ConvProduct::Forward).to_string(),
            "conv-m10n10k10z0"
        );
        assert_eq!(
            class.conv(ConvProduct::WeightGrad).to_string(),
            "convdw-m10n10k10z0"
        );
        for class in [
            class,
            class.conv(ConvProduct::Forward),
            class.conv(ConvProduct::WeightGrad),
        ] {
            assert_eq!(ShapeClass::parse(&class.to_string()), Some(class));
        }
        assert_eq!(ShapeClass::parse("m1n2k3"), None);
    }
}
