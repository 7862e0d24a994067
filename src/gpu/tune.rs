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
use super::gemm_source::{BLOCKS, Block, CONV_BLOCKS, DEPTH4, SLOTS, SMALL, TALL, TILED, TILED_64};
use crate::dirs::user_cache_dir;
use crate::fnv::fnv1a;
use crate::geometry::GemmSpec;

/// Cache file format version; files of another version are ignored. Raised
/// when the candidates change, so that choices made without a new kernel
/// are timed again (2: `gemm_tiled_64` joined the GPUs' candidates).
const VERSION: u64 = 2;

/// The most taps (C·kh·kw) of a convolution whose weight gradient a
/// CPU-like adapter computes with the direct kernel. Its kernel loads 8
/// channels' dY per 8·kw multiply-adds: on lavapipe it beat the GEMM paths
/// on the built-in models' convolutions of 9–150 taps and lost on all of
/// 288–576 taps.
pub const DIRECT_WEIGHT_GRAD_MAX_TAPS: usize = 256;

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
    /// The device runs [`DEPTH4`] (a CPU-like adapter with subgroups of its
    /// lanes).
    depth4: bool,
    choices: Mutex<BTreeMap<ShapeClass, Block>>,
    /// Whether convolution products of a class run the direct kernel
    /// ([`super::direct_conv`]) rather than a GEMM path.
    direct: Mutex<BTreeMap<ShapeClass, bool>>,
    forced: Mutex<Option<Block>>,
    forced_direct: Mutex<Option<bool>>,
    /// A CPU-like adapter races convolution paths as a GPU does, instead
    /// of choosing by rule (for tests of the races).
    race_direct: std::sync::atomic::AtomicBool,
    /// A CPU-like adapter splits summed batches as a GPU does (for tests of
    /// the GPU's split).
    split_as_gpu: std::sync::atomic::AtomicBool,
    /// Single products may be split over K where a GPU splits
    /// (`WGCNN_SPLIT_K=0`: never, to compare).
    split_k: bool,
}

impl GemmTuner {
    /// The tuner of the adapter `info`, with what earlier runs chose for it;
    /// `depth4_runs`: the device can run [`DEPTH4`] (subgroups of its
    /// lanes).
    pub fn new(info: &wgpu::AdapterInfo, depth4_runs: bool) -> Self {
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
        let Memory { choices, direct } = path
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|text| parse(&text, &device))
            .unwrap_or_default();
        Self {
            device,
            path,
            timing,
            cpu_like: info.device_type == wgpu::DeviceType::Cpu,
            depth4: depth4_runs && info.device_type == wgpu::DeviceType::Cpu,
            choices: Mutex::new(choices),
            direct: Mutex::new(direct),
            forced: Mutex::new(None),
            forced_direct: Mutex::new(None),
            race_direct: Default::default(),
            split_as_gpu: Default::default(),
            split_k: std::env::var("WGCNN_SPLIT_K").map_or(true, |v| v != "0"),
        }
    }

    /// Makes every GEMM use `block` (for checks of each kernel), or lifts that.
    /// An implicit block runs convolutions' forward and weight-gradient
    /// products as implicit GEMMs and every other product with its explicit
    /// twin.
    pub fn force(&self, block: Option<Block>) {
        *self.forced.lock().unwrap() = block;
    }

    /// Makes every convolution product the direct kernel computes run it
    /// (`Some(true)`) or a GEMM path (`Some(false)`), or lifts that. While a
    /// block is forced, and this is not, convolutions run GEMMs.
    pub fn force_direct(&self, direct: Option<bool>) {
        *self.forced_direct.lock().unwrap() = direct;
    }

    /// Makes a CPU-like adapter time the direct kernel against the GEMM
    /// paths, and a weight gradient's implicit GEMM against its explicit
    /// one, as a GPU does (`true`), instead of choosing by rule (`false`,
    /// the default); for tests of the races.
    pub fn race_direct(&self, race: bool) {
        self.race_direct
            .store(race, std::sync::atomic::Ordering::Relaxed);
    }

    /// Makes a CPU-like adapter split a summed batch of small products
    /// (and a direct weight gradient's rows) into as many partial sums as
    /// a GPU does (`true`), or as itself (`false`, the default); for tests
    /// of the GPU's split on lavapipe.
    pub fn split_like_a_gpu(&self, split: bool) {
        self.split_as_gpu
            .store(split, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether summed batches (and direct weight gradients) are split as
    /// on a GPU: on GPUs, and where [`GemmTuner::split_like_a_gpu`] asks
    /// for it.
    pub fn splits_like_a_gpu(&self) -> bool {
        !self.cpu_like || self.split_as_gpu.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether a single product with few blocks of C and a long K runs as
    /// partial products over K slices, added afterwards
    /// (`super::gemm::k_slices`): where summed batches split as on a GPU,
    /// unless `WGCNN_SPLIT_K=0`.
    pub fn splits_k(&self) -> bool {
        self.split_k && self.splits_like_a_gpu()
    }

    /// Whether a convolution's forward followed by a 2×2 max pool runs
    /// as one pooled direct kernel: on CPU-like adapters, where the direct
    /// forward runs by rule (not where a test forces kernels or races).
    /// Fusing saves a store and a load of the convolution's output, which
    /// on lavapipe are loops over the SIMD lanes; on GPUs it is not yet
    /// measured, so they keep the two passes their races chose.
    pub fn pools_in_direct_forward(&self, spec: &GemmSpec, count: usize) -> bool {
        self.cpu_like && self.direct_choice(ConvProduct::Forward, spec, count) == Some(true)
    }

    fn races_like_a_gpu(&self) -> bool {
        self.race_direct.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether a convolution's `product` of `spec`'s class (batched `count`
    /// times), for a geometry the direct kernel computes, runs it. On
    /// CPU-like adapters the forward and dX always do, and dW when its
    /// convolution has at most [`DIRECT_WEIGHT_GRAD_MAX_TAPS`] taps: there
    /// that is what won every race on the built-in models (see
    /// ARCHITECTURE.md), and racing would compile and tune GEMM kernels for
    /// nothing.
    /// Elsewhere `None` means not known yet: the caller times the direct
    /// kernel against the GEMM path and calls
    /// [`GemmTuner::remember_direct`].
    pub fn direct_choice(
        &self,
        product: ConvProduct,
        spec: &GemmSpec,
        count: usize,
    ) -> Option<bool> {
        if let Some(direct) = *self.forced_direct.lock().unwrap() {
            return Some(direct);
        }
        if self.forced.lock().unwrap().is_some() {
            return Some(false);
        }
        if self.cpu_like && !self.races_like_a_gpu() {
            return Some(
                product != ConvProduct::WeightGrad || spec.n <= DIRECT_WEIGHT_GRAD_MAX_TAPS,
            );
        }
        let class = ShapeClass::of(spec, count).conv(product);
        if let Some(&direct) = self.direct.lock().unwrap().get(&class) {
            return Some(direct);
        }
        // Without timing, GPUs keep their GEMM kernels.
        if self.timing { None } else { Some(false) }
    }

    /// Remembers whether convolutions' `product`s of `spec`'s class run the
    /// direct kernel.
    pub fn remember_direct(
        &self,
        product: ConvProduct,
        spec: &GemmSpec,
        count: usize,
        direct: bool,
    ) {
        let class = ShapeClass::of(spec, count).conv(product);
        // The two maps are locked in one order everywhere (as in
        // `remember_class`), so threads remembering both never deadlock.
        let choices = self.choices.lock().unwrap();
        let mut memory = self.direct.lock().unwrap();
        memory.insert(class, direct);
        self.save(&choices, &memory);
    }

    /// How a convolution's `product` `spec` (batched `count` times) runs: an
    /// implicit block, or an explicit one after im2col (im2row for dW).
    /// On CPU-like adapters a weight gradient the direct kernel leaves over
    /// runs the implicit tall block (the small one where C has fewer rows
    /// than the tall): it ran as fast as the best explicit path on the
    /// built-in models' 288–576-tap convolutions, needs no im2row buffer,
    /// and racing would compile three more kernels, seconds of a cold first
    /// step on lavapipe (see ARCHITECTURE.md).
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
        if self.cpu_like && !self.races_like_a_gpu() && product == ConvProduct::WeightGrad {
            let block = if spec.m >= TALL.rows { TALL } else { SMALL };
            return block.implicit_twin();
        }
        let class = ShapeClass::of(spec, count).conv(product);
        if let Some(&block) = self.choices.lock().unwrap().get(&class) {
            return Some(block);
        }
        if self.timing {
            None
        } else {
            Some(rule(spec, count, self.cpu_like, self.depth4))
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
        let candidates = candidates(spec, count, self.cpu_like, self.depth4);
        if candidates.len() == 1 {
            return Ok(candidates[0]);
        }
        // A cache written with subgroups may name a kernel this device (or
        // this run, with subgroups off) cannot run: time the class again.
        if let Some(&block) = self
            .choices
            .lock()
            .unwrap()
            .get(&ShapeClass::of(spec, count))
            .filter(|b| !b.depth4 || self.depth4)
        {
            return Ok(block);
        }
        if self.timing {
            Err(candidates)
        } else {
            Ok(rule(spec, count, self.cpu_like, self.depth4))
        }
    }

    /// Remembers the winner for `spec`'s shape class and saves the cache.
    pub fn remember(&self, spec: &GemmSpec, count: usize, block: Block) {
        self.remember_class(ShapeClass::of(spec, count), block);
    }

    fn remember_class(&self, class: ShapeClass, block: Block) {
        let mut choices = self.choices.lock().unwrap();
        choices.insert(class, block);
        self.save(&choices, &self.direct.lock().unwrap());
    }

    fn save(&self, choices: &BTreeMap<ShapeClass, Block>, direct: &BTreeMap<ShapeClass, bool>) {
        if let Some(path) = &self.path {
            // The cache only saves time; failing to write it is not an error.
            let _ = save(path, &self.device, choices, direct);
        }
    }

    /// The remembered choices, `class → entry point`, then the direct
    /// kernel's, `direct:class → direct` or `gemm`.
    pub fn choices(&self) -> Vec<(String, &'static str)> {
        let choices = self.choices.lock().unwrap();
        let direct = self.direct.lock().unwrap();
        choices
            .iter()
            .map(|(k, b)| (k.to_string(), b.name()))
            .chain(
                direct
                    .iter()
                    .map(|(k, &d)| (format!("direct:{k}"), if d { "direct" } else { "gemm" })),
            )
            .collect()
    }
}

/// Kernels worth trying for `spec` on this kind of adapter: a block taller
/// or wider than C never pays; CPU-like adapters get register blocks (their
/// barriers are slow), GPUs workgroup-memory tiles (their registers are few).
fn candidates(spec: &GemmSpec, count: usize, cpu_like: bool, depth4: bool) -> &'static [Block] {
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
    // The depth4 block goes before TALL, which stays the rule's large block.
    match (fits, cpu_like, slots, depth4) {
        (false, true, true, _) => &[SMALL, SLOTS],
        (false, ..) => &[SMALL],
        (true, true, false, false) => &[SMALL, TALL],
        (true, true, false, true) => &[SMALL, DEPTH4, TALL],
        (true, true, true, false) => &[SMALL, TALL, SLOTS],
        (true, true, true, true) => &[SMALL, DEPTH4, TALL, SLOTS],
        (true, false, ..) => &[SMALL, TILED_64, TILED],
    }
}

/// The choice without timing: the large kernel once C (times the batch)
/// gives it enough invocations to keep a device busy.
fn rule(spec: &GemmSpec, count: usize, cpu_like: bool, depth4: bool) -> Block {
    let candidates = candidates(spec, count, cpu_like, depth4);
    let large = *candidates
        .iter()
        .rfind(|b| !b.slot_lanes)
        .expect("SMALL is always a candidate");
    let per_workgroup = if large.tiled {
        large.rows * large.workgroup[1] * large.cols * large.workgroup[0]
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
/// forward, `convdw-m…` for the weight gradient), or whether it runs the
/// direct kernel (the forward, and `convdx-m…` for the input gradient). A
/// plain value, so looking a choice up on every product allocates nothing.
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
            Some(ConvProduct::InputGrad) => "convdx-",
        }
    }

    /// The class a cache file names `text`, if it names one.
    fn parse(text: &str) -> Option<Self> {
        let (conv, rest) = [
            Some(ConvProduct::WeightGrad),
            Some(ConvProduct::InputGrad),
            Some(ConvProduct::Forward),
        ]
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

/// What a cache file holds: GEMM blocks, and the direct kernel's
/// decisions (a file without them has none).
#[derive(Debug, Default, PartialEq)]
struct Memory {
    choices: BTreeMap<ShapeClass, Block>,
    direct: BTreeMap<ShapeClass, bool>,
}

/// The choices in a cache file written for `device`; anything else (another
/// device or version, damage) gives none, and they are timed again.
fn parse(text: &str, device: &str) -> Memory {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return Memory::default();
    };
    if value["version"].as_u64() != Some(VERSION) || value["device"].as_str() != Some(device) {
        return Memory::default();
    }
    let Some(choices) = value["choices"].as_object() else {
        return Memory::default();
    };
    let choices = choices
        .iter()
        .filter_map(|(class, entry)| {
            let block = BLOCKS
                .iter()
                .chain(&CONV_BLOCKS)
                .find(|b| Some(b.name()) == entry.as_str())?;
            Some((ShapeClass::parse(class)?, *block))
        })
        .collect();
    let direct = value["direct"]
        .as_object()
        .map_or_else(BTreeMap::new, |direct| {
            direct
                .iter()
                .filter_map(|(class, d)| Some((ShapeClass::parse(class)?, d.as_bool()?)))
                .collect()
        });
    Memory { choices, direct }
}

/// Writes the cache atomically (a temporary file renamed over the old one),
/// so a concurrent reader never sees half a file.
fn save(
    path: &std::path::Path,
    device: &str,
    choices: &BTreeMap<ShapeClass, Block>,
    direct: &BTreeMap<ShapeClass, bool>,
) -> std::io::Result<()> {
    let entries: serde_json::Map<String, serde_json::Value> = choices
        .iter()
        .map(|(k, b)| (k.to_string(), b.name().into()))
        .collect();
    let direct: serde_json::Map<String, serde_json::Value> = direct
        .iter()
        .map(|(k, &d)| (k.to_string(), d.into()))
        .collect();
    let text = serde_json::json!({
        "version": VERSION,
        "device": device,
        "choices": entries,
        "direct": direct,
    });
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
        let mut direct = BTreeMap::new();
        let conv = ShapeClass::of(&spec(6, 784, 25), 64);
        direct.insert(conv.conv(ConvProduct::Forward), true);
        direct.insert(conv.conv(ConvProduct::InputGrad), false);
        save(&path, "dev", &choices, &direct).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let memory = Memory { choices, direct };
        assert_eq!(parse(&text, "dev"), memory);
        assert_eq!(parse(&text, "another device"), Memory::default());
        assert_eq!(parse(&text[..text.len() / 2], "dev"), Memory::default());
        assert!(
            parse(&text.replace("gemm_32x16", "gemm_1x1"), "dev")
                .choices
                .len()
                == 1
        );
        // A file written before the direct kernel: its GEMM choices hold.
        let old = text.replace("\"direct\"", "\"other\"");
        assert_eq!(parse(&old, "dev").choices, memory.choices);
        assert!(parse(&old, "dev").direct.is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn only_kernels_that_fit_c_and_the_adapter_are_candidates() {
        assert_eq!(candidates(&spec(6, 784, 25), 64, true, false), vec![SMALL]);
        // LeNet's first weight gradient: 6×25 outputs summed over 64 images.
        assert_eq!(
            candidates(&spec(6, 25, 784), 64, true, false),
            vec![SMALL, SLOTS]
        );
        assert_eq!(candidates(&spec(6, 25, 784), 1, true, false), vec![SMALL]);
        assert_eq!(candidates(&spec(6, 25, 784), 64, false, false), vec![SMALL]);
        assert_eq!(
            candidates(&spec(32, 784, 288), 64, true, false),
            vec![SMALL, TALL]
        );
        assert_eq!(
            candidates(&spec(150, 100, 16), 64, true, false),
            vec![SMALL]
        );
        assert_eq!(
            candidates(&spec(32, 784, 288), 1, false, false),
            vec![SMALL, TILED_64, TILED]
        );
        assert_eq!(candidates(&spec(64, 10, 288), 1, false, false), vec![SMALL]);
        // The depth4 block where TALL competes, on adapters that run it; the
        // rule (no timing) keeps TALL.
        let large = spec(1024, 1024, 1024);
        assert_eq!(candidates(&large, 1, true, true), vec![SMALL, DEPTH4, TALL]);
        assert_eq!(candidates(&large, 1, true, false), vec![SMALL, TALL]);
        assert_eq!(
            candidates(&large, 1, false, true),
            vec![SMALL, TILED_64, TILED]
        );
        assert_eq!(candidates(&spec(6, 784, 25), 64, true, true), vec![SMALL]);
        assert_eq!(rule(&large, 1, true, true), TALL);
    }

    #[test]
    fn a_remembered_depth4_choice_is_timed_again_where_it_cannot_run() {
        let info = wgpu::AdapterInfo::new(wgpu::DeviceType::Cpu, wgpu::Backend::Vulkan);
        let large = spec(1024, 1024, 1024);
        for depth4_runs in [true, false] {
            let tuner = GemmTuner::new(&info, depth4_runs);
            tuner
                .choices
                .lock()
                .unwrap()
                .insert(ShapeClass::of(&large, 1), DEPTH4);
            let choice = tuner.choice(&large, 1);
            if depth4_runs {
                assert_eq!(choice, Ok(DEPTH4));
            } else {
                assert_eq!(choice, Err(&[SMALL, TALL][..]));
            }
        }
    }

    #[test]
    fn cpu_like_adapters_run_the_direct_kernel_by_rule() {
        let info = wgpu::AdapterInfo::new(wgpu::DeviceType::Cpu, wgpu::Backend::Vulkan);
        let tuner = GemmTuner::new(&info, false);
        let (forward, dw, dx) = (
            ConvProduct::Forward,
            ConvProduct::WeightGrad,
            ConvProduct::InputGrad,
        );
        // LeNet's conv2: 16 channels of 6·5·5 taps, 10×10 outputs.
        assert_eq!(
            tuner.direct_choice(forward, &spec(16, 100, 150), 64),
            Some(true)
        );
        assert_eq!(tuner.direct_choice(dx, &spec(150, 100, 16), 64), Some(true));
        assert_eq!(tuner.direct_choice(dw, &spec(16, 150, 100), 64), Some(true));
        // fashion-cnn's second conv: 32·3·3 taps, over the limit for dW.
        assert_eq!(
            tuner.direct_choice(dw, &spec(32, 288, 784), 64),
            Some(false)
        );
        // Forcing a GEMM block turns the direct kernel off; forcing it on
        // wins over both.
        tuner.force(Some(SMALL));
        assert_eq!(
            tuner.direct_choice(forward, &spec(16, 100, 150), 64),
            Some(false)
        );
        tuner.force_direct(Some(true));
        assert_eq!(tuner.direct_choice(dw, &spec(32, 288, 784), 64), Some(true));
        // Racing on: unknown classes are timed (or, without timing, GEMMs).
        tuner.force(None);
        tuner.force_direct(None);
        tuner.race_direct(true);
        let raced = tuner.direct_choice(forward, &spec(16, 100, 150), 64);
        assert!(raced.is_none() || raced == Some(false), "{raced:?}");
    }

    #[test]
    fn cpu_like_adapters_run_large_weight_gradients_as_implicit_gemms_by_rule() {
        let (dw, forward) = (ConvProduct::WeightGrad, ConvProduct::Forward);
        let cpu = GemmTuner::new(
            &wgpu::AdapterInfo::new(wgpu::DeviceType::Cpu, wgpu::Backend::Vulkan),
            false,
        );
        let tall = TALL.implicit_twin();
        let small = SMALL.implicit_twin();
        assert!(tall.is_some_and(|b| b.implicit) && tall != small);
        // fashion-cnn's second and fourth convolutions.
        assert_eq!(cpu.conv_choice(dw, &spec(32, 288, 784), 64), tall);
        assert_eq!(cpu.conv_choice(dw, &spec(64, 576, 196), 64), tall);
        // Fewer output channels than the tall block has rows.
        assert_eq!(cpu.conv_choice(dw, &spec(16, 400, 100), 64), small);
        // Only weight gradients; racing turns the rule off; a GPU races.
        // (Unknown classes are timed: `None`; or, without timing, the
        // explicit path's rule.)
        let raced = |choice: Option<Block>| choice.is_none_or(|b| !b.implicit);
        assert!(raced(cpu.conv_choice(forward, &spec(32, 784, 288), 64)));
        cpu.race_direct(true);
        assert!(raced(cpu.conv_choice(dw, &spec(32, 288, 784), 64)));
        let gpu = GemmTuner::new(
            &wgpu::AdapterInfo::new(wgpu::DeviceType::DiscreteGpu, wgpu::Backend::Vulkan),
            false,
        );
        assert!(raced(gpu.conv_choice(dw, &spec(32, 288, 784), 64)));
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
        assert_eq!(
            class.conv(ConvProduct::InputGrad).to_string(),
            "convdx-m10n10k10z0"
        );
        for class in [
            class,
            class.conv(ConvProduct::Forward),
            class.conv(ConvProduct::WeightGrad),
            class.conv(ConvProduct::InputGrad),
        ] {
            assert_eq!(ShapeClass::parse(&class.to_string()), Some(class));
        }
        assert_eq!(ShapeClass::parse("m1n2k3"), None);
    }
}
