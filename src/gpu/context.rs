//! The GPU context: the device (made with the chosen adapter's own limits),
//! the pipeline cache, the buffer pool, and the one command encoder ops
//! record into.
//!
//! Every kernel family goes through [`GpuContext::dispatch`]; none builds its
//! own plumbing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::adapter::{NO_ADAPTER_HELP, enumerate, fixed_subgroup_size, instance, preferred_index};
use super::derived::DerivedKey;
use super::modules::ModuleSource;
use super::precompile::Precompiler;
use crate::error::{Error, Result};

/// A compiled kernel: its pipeline and the bind-group layout that is its
/// signature (binding 0: uniform parameters; then `inputs` read-only storage
/// buffers; then `outputs` read-write storage buffers).
pub struct Kernel {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    inputs: usize,
    outputs: usize,
    label: String,
    /// What it was built from, for the precompiling helper.
    spec: KernelSpec,
    /// Whether it has been dispatched: some drivers (lavapipe) compile a
    /// pipeline at its first dispatch, so a first run is no timing.
    dispatched: std::sync::atomic::AtomicBool,
}

impl Kernel {
    /// Whether it has been dispatched before.
    pub fn has_run(&self) -> bool {
        self.dispatched.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Which kernel to run: a WGSL source, an entry point, its buffer signature and
/// the values of its `override` constants. Identifies a cached pipeline.
#[derive(Clone, Debug)]
pub struct KernelSpec {
    /// Name of the shader family (for labels and the cache key).
    pub family: &'static str,
    /// WGSL source: from `include_str!`, or generated once (the GEMM and
    /// direct convolution kernels, the modules that sum over workgroups).
    pub source: &'static str,
    /// Entry point.
    pub entry: &'static str,
    /// Read-only storage buffers, bindings `1..=inputs`.
    pub inputs: usize,
    /// Read-write storage buffers, after the inputs.
    pub outputs: usize,
    /// Pipeline-overridable constants.
    pub constants: Vec<(&'static str, f64)>,
    /// Bit i: input i is a uniform buffer instead of a storage buffer.
    pub uniform_inputs: u32,
}

impl KernelSpec {
    /// Entry point `entry` of `module`, with no override constants.
    pub fn new(module: ModuleSource, entry: &'static str, inputs: usize, outputs: usize) -> Self {
        Self {
            family: module.family,
            source: module.source,
            entry,
            inputs,
            outputs,
            constants: Vec::new(),
            uniform_inputs: 0,
        }
    }

    /// Binds input `input` as a uniform buffer: its binding must be at
    /// most the adapter's uniform binding size, and at least what the
    /// shader declares.
    pub fn with_uniform_input(mut self, input: usize) -> Self {
        assert!(input < self.inputs, "input {input} of {}", self.inputs);
        self.uniform_inputs |= 1 << input;
        self
    }

    /// Sets an override constant.
    pub fn with(mut self, name: &'static str, value: f64) -> Self {
        self.constants.push((name, value));
        self
    }

    fn key(&self) -> String {
        let mut key = format!("{}::{}", self.family, self.entry);
        for (name, value) in &self.constants {
            key.push_str(&format!(",{name}={value}"));
        }
        if self.uniform_inputs != 0 {
            key.push_str(&format!(",uniform={:b}", self.uniform_inputs));
        }
        key
    }
}

/// Counts of expensive events, for tests that pin how often they happen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuCounters {
    /// Queue submissions.
    pub submits: u64,
    /// Compute pipelines compiled.
    pub pipelines: u64,
    /// Dispatches recorded.
    pub dispatches: u64,
    /// Storage buffers created (the pool reuses freed ones).
    pub buffers: u64,
    /// Bind groups created, each with its uniform buffer (cached by kernel,
    /// parameters and buffers).
    pub bind_groups: u64,
    /// Read-back staging buffers created.
    pub staging_buffers: u64,
    /// Bytes of storage buffers created: the pool's high-water mark.
    pub buffer_bytes: u64,
}

impl GpuCounters {
    /// Everything created (pipelines, buffers, bind groups): constant once a
    /// training step has run, since every later step reuses them.
    pub fn creations(&self) -> u64 {
        self.pipelines + self.buffers + self.bind_groups + self.staging_buffers
    }
}

/// Freed storage buffers by size, for reuse. Reuse is safe in stream order:
/// every use of a buffer is recorded into the queue before the buffer can be
/// freed and handed out again, so the GPU runs the old uses first.
///
/// The pool hands out the free buffer with the lowest id. Ids grow with
/// creation, so a step that makes the same allocations as the step before,
/// from the same buffers in use, gets the very same buffers back — and hence
/// the same cached bind groups: after the first training step nothing is
/// created.
#[derive(Default)]
struct BufferPool {
    free: Mutex<HashMap<u64, std::collections::BTreeMap<u64, wgpu::Buffer>>>,
}

/// A storage buffer from the context's pool, returned to it when dropped, or
/// a view of a range of one ([`GpuContext::view`]), which keeps it alive.
/// Each has an id, unique for the context's lifetime, that keys the
/// bind-group cache.
pub struct GpuBuffer {
    storage: Storage,
    id: u64,
    /// Where its bytes start in [`GpuBuffer::raw`].
    offset: u64,
    /// How many bytes it has.
    size: u64,
}

enum Storage {
    Owned {
        buffer: Option<wgpu::Buffer>,
        pool: Arc<BufferPool>,
    },
    View(Arc<GpuBuffer>),
}

impl GpuBuffer {
    /// The id that identifies this buffer in bind-group cache keys.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The wgpu buffer its bytes lie in (a view's is its parent's).
    pub fn raw(&self) -> &wgpu::Buffer {
        match &self.storage {
            Storage::Owned { buffer, .. } => buffer.as_ref().expect("present until dropped"),
            Storage::View(parent) => parent.raw(),
        }
    }

    /// Byte offset of its first byte in [`GpuBuffer::raw`] (0 unless a view).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The buffer a view lies in; `None` for a buffer of its own.
    pub fn parent(&self) -> Option<&Arc<GpuBuffer>> {
        match &self.storage {
            Storage::Owned { .. } => None,
            Storage::View(parent) => Some(parent),
        }
    }

    /// The binding of exactly its bytes.
    fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: self.raw(),
            offset: self.offset,
            size: wgpu::BufferSize::new(self.size),
        })
    }
}

impl std::fmt::Debug for GpuBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuBuffer#{}({} bytes", self.id, self.size)?;
        if let Storage::View(parent) = &self.storage {
            write!(f, " at {} of #{}", self.offset, parent.id)?;
        }
        write!(f, ")")
    }
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        if let Storage::Owned { buffer, pool } = &mut self.storage
            && let Some(buffer) = buffer.take()
        {
            let mut free = pool.free.lock().unwrap();
            free.entry(buffer.size())
                .or_default()
                .insert(self.id, buffer);
        }
    }
}

/// Key of a cached bind group: kernel and buffer ids. Parameters are not part
/// of it: they live in the parameter ring, selected by a dynamic offset.
type BindKey = (String, Vec<u64>);

/// Bytes of parameters one dispatch may have (32 words; the ring's offsets
/// are aligned to 256 bytes on most adapters anyway).
const PARAMS_BYTES: u64 = 128;
/// Size of the parameter ring: room for the parameters of this many
/// dispatches (at the largest offset alignment, 256 bytes) per submission.
const PARAMS_RING_BYTES: u64 = 1 << 22;

/// What has been recorded but not yet submitted: the commands, and the
/// parameters of their dispatches, written into the ring right before the
/// commands are submitted (queue writes land before the submission's work).
struct Recording {
    encoder: Option<wgpu::CommandEncoder>,
    params: Vec<u8>,
}

/// Largest workgroup count per grid dimension that every WebGPU device accepts.
pub const MAX_WORKGROUPS_PER_DIM: u32 = 65_535;

/// Grid extent along one dimension for `count` items (images, planes,
/// batch slots) that the kernel walks in a loop past the extent.
pub fn grid_extent(count: usize) -> u32 {
    count.clamp(1, MAX_WORKGROUPS_PER_DIM as usize) as u32
}

/// Splits `count` workgroups over x and y so neither exceeds
/// [`MAX_WORKGROUPS_PER_DIM`]; kernels rebuild the linear index as
/// `wid.x + wid.y · num_workgroups.x` and skip indices past the end.
pub fn fold_workgroups(count: u32) -> [u32; 2] {
    if count <= MAX_WORKGROUPS_PER_DIM {
        [count.max(1), 1]
    } else {
        let y = count.div_ceil(MAX_WORKGROUPS_PER_DIM);
        [count.div_ceil(y), y]
    }
}

/// The largest buffer the kernels address: they index elements with `u32`,
/// and some multiply an element index by 4 before dividing, so 2³⁰ floats
/// keep every such product in range. Adapters that allow larger bindings
/// (some report tens of GiB) are held to this.
pub const MAX_ADDRESSABLE_BYTES: u64 = 1 << 32;

/// The device, queue and everything built once per device.
pub struct GpuContext {
    /// The logical device.
    pub device: wgpu::Device,
    /// Its queue.
    pub queue: wgpu::Queue,
    /// What the adapter says about itself.
    pub info: wgpu::AdapterInfo,
    /// The adapter's index in [`list_adapters`](super::list_adapters) (what
    /// `--device` takes).
    pub adapter_index: usize,
    /// The limits the device was created with (the adapter's own, or
    /// WebGPU's defaults under `WGCNN_LIMITS=webgpu`).
    pub limits: wgpu::Limits,
    /// The optional features the device was created with, those of
    /// `TIMESTAMP_QUERY` (see [`GpuContext::gpu_timer`]) and `SUBGROUP` (see
    /// [`GpuContext::has_subgroups`]) that the adapter offers.
    pub features: wgpu::Features,
    modules: Mutex<HashMap<&'static str, Arc<wgpu::ShaderModule>>>,
    kernels: Mutex<HashMap<String, Arc<Kernel>>>,
    recording: Mutex<Recording>,
    /// Uniform buffer holding every pending dispatch's parameters.
    params_ring: wgpu::Buffer,
    /// Offset alignment of dynamic uniform bindings on this device.
    params_align: u64,
    counters: Mutex<GpuCounters>,
    uncaptured: Arc<Mutex<Option<String>>>,
    pool: Arc<BufferPool>,
    bind_groups: Mutex<HashMap<BindKey, wgpu::BindGroup>>,
    staging: Mutex<HashMap<u64, Vec<wgpu::Buffer>>>,
    next_buffer_id: Mutex<u64>,
    /// The submission of the previous step, waited for before the next one is
    /// submitted so at most one step is in flight.
    in_flight: Mutex<Option<wgpu::SubmissionIndex>>,
    /// The GEMM block choices for this device.
    pub gemm_tuner: super::tune::GemmTuner,
    /// Per-kernel wall time when profiling (see [`GpuContext::set_profiling`]).
    profile: Mutex<Option<HashMap<String, KernelTime>>>,
    /// The id of each view ever made, by (buffer id, offset, size): a view of
    /// the same range of the same pooled buffer gets the same id every step,
    /// and so the same cached bind groups.
    view_ids: Mutex<HashMap<(u64, u64, u64), u64>>,
    /// A smaller per-buffer limit than the device's, set by
    /// [`GpuContext::limit_buffer_bytes`].
    buffer_limit: Mutex<Option<u64>>,
    /// Buffers derived from others' contents, kept until their source is
    /// written or the step ends ([`GpuContext::keep_derived`]).
    derived: super::derived::DerivedBuffers,
    /// The helper compiling new kernels on another core, on software
    /// adapters ([`super::precompile`]).
    precompiler: Option<Precompiler>,
}

/// Time spent in one kernel while profiling.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KernelTime {
    /// Dispatches timed.
    pub calls: u64,
    /// Seconds, summed: on the device's clock where it has timestamp
    /// queries, else the wall time from submit to completion.
    pub seconds: f64,
}

/// The checks wgpu compiles into the shaders of `family`.
///
/// No family gets wgpu's loop bound (a counter in every loop that ends it
/// after 2^64 passes, so that an endless loop is not undefined behaviour):
/// every loop in shaders/ and in the generated kernels counts up by at least
/// 1 (or halves down to 0) towards a bound its parameters set far below
/// 2^32, so none is endless. On an NVIDIA H200 the counters cost a lot:
/// `gemm_tiled` on 4096³ ran at 31–33% of the measured peak with them and
/// 38% without, and LeNet-5 trained 1.28× faster without them (fashion-cnn
/// and cifar-cnn 1.2× at batch 256). On lavapipe they made no difference.
///
/// The GEMM family also goes without index clamps: its only indexed arrays
/// are the two workgroup tiles of `gemm_tiled` and `gemm_tiled_64`, whose
/// indices stay below their 512 vec4s by construction (`gemm_tiled`: a
/// slice offset of 0 or 256, a depth's row of 32 vec4s, a lane below 32;
/// `gemm_tiled_64`: below 256, half of that), and its storage loads and stores stay inside the padded
/// operands and C by construction (`split_sum` reads the partial products
/// under the same row, column and slice bounds as it stores; and, on
/// Vulkan, everything stays inside the binding by the driver's robust
/// buffer access). Without the clamps `gemm_tiled` went
/// from 38% to 42% of the H200's peak on 4096³. Integer division keeps its
/// check.
fn runtime_checks(family: &str) -> wgpu::ShaderRuntimeChecks {
    let mut checks = wgpu::ShaderRuntimeChecks::checked();
    checks.force_loop_bounding = false;
    if family == "gemm" {
        checks.bounds_checks = false;
    }
    checks
}

/// The limits a device is opened with: the adapter's; or, with
/// `WGCNN_LIMITS=webgpu`, WebGPU's defaults, which every WebGPU adapter
/// meets (a run that passes so fits any of them: 8 storage buffers per
/// kernel, 16 KiB of workgroup memory, 128 MiB per binding, 256 MiB per
/// buffer). An adapter below them cannot open so, and says which limit.
fn requested_limits(adapter: &wgpu::Adapter) -> Result<wgpu::Limits> {
    let own = adapter.limits();
    match std::env::var("WGCNN_LIMITS").as_deref() {
        Err(_) | Ok("") | Ok("adapter") => Ok(own),
        Ok("webgpu") => {
            let webgpu = wgpu::Limits::defaults();
            let mut short = Vec::new();
            webgpu.check_limits_with_fail_fn(&own, false, |name, wanted, has| {
                short.push(format!("{name} (WebGPU: {wanted}, adapter: {has})"));
            });
            if short.is_empty() {
                Ok(webgpu)
            } else {
                Err(Error::Gpu(format!(
                    "WGCNN_LIMITS=webgpu: {} falls short of WebGPU's default limits: {}",
                    adapter.get_info().name,
                    short.join(", ")
                )))
            }
        }
        Ok(other) => Err(Error::Gpu(format!(
            "WGCNN_LIMITS={other}: expected `webgpu` (WebGPU's default limits) or `adapter`"
        ))),
    }
}

impl GpuContext {
    /// Opens adapter `index` from [`list_adapters`](super::list_adapters), or the preferred one when
    /// `None`.
    pub fn new(index: Option<usize>) -> Result<Self> {
        Self::open(index, true)
    }

    /// [`GpuContext::new`], with a [`Precompiler`] where
    /// [`Precompiler::wanted`] and `precompile`.
    pub(super) fn open(index: Option<usize>, precompile: bool) -> Result<Self> {
        let instance = instance();
        let mut adapters = enumerate(&instance);
        if adapters.is_empty() {
            return Err(Error::Gpu(NO_ADAPTER_HELP.to_string()));
        }
        let chosen = match index {
            Some(i) if i < adapters.len() => i,
            Some(i) => {
                return Err(Error::Gpu(format!(
                    "--device {i} does not exist: there are {} adapters (see `wgcnn devices`)",
                    adapters.len()
                )));
            }
            None => {
                let infos: Vec<wgpu::AdapterInfo> = adapters.iter().map(|a| a.get_info()).collect();
                preferred_index(&infos).expect("adapters is not empty")
            }
        };
        let adapter = adapters.swap_remove(chosen);
        let info = adapter.get_info();
        let limits = requested_limits(&adapter)?;
        // Timestamp queries and subgroup operations only where the adapter
        // has them, so any adapter still opens; `WGCNN_TIMESTAMPS=0` and
        // `WGCNN_SUBGROUPS=0` leave them off, to see (and test) the
        // fallbacks on an adapter that has them.
        let off = |name: &str| std::env::var(name).is_ok_and(|v| v == "0");
        let mut wanted = wgpu::Features::empty();
        if !off("WGCNN_TIMESTAMPS") {
            wanted |= wgpu::Features::TIMESTAMP_QUERY;
        }
        if !off("WGCNN_SUBGROUPS") {
            wanted |= wgpu::Features::SUBGROUP;
        }
        let features = adapter.features() & wanted;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("wgcnn"),
            required_features: features,
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| Error::Gpu(format!("could not open {}: {e}", info.name)))?;
        let params_align = limits
            .min_uniform_buffer_offset_alignment
            .max(PARAMS_BYTES as u32) as u64;
        let params_ring = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params ring"),
            size: PARAMS_RING_BYTES,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let uncaptured = Arc::new(Mutex::new(None));
        let sink = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = sink.lock().unwrap();
            slot.get_or_insert_with(|| e.to_string());
        }));
        // A lost device (driver reset, GPU removed, out of memory in the driver)
        // explains every later failure, so it is reported ahead of them.
        let sink = uncaptured.clone();
        device.set_device_lost_callback(move |reason, message| {
            let mut slot = sink.lock().unwrap_or_else(|p| p.into_inner());
            let lost = format!("the GPU device was lost ({reason:?}): {message}");
            *slot = Some(match slot.take() {
                Some(earlier) => format!("{lost} (after: {earlier})"),
                None => lost,
            });
        });
        let depth4_runs = fixed_subgroup_size(features, &info)
            .is_some_and(|lanes| super::gemm_source::DEPTH4.shares_a_in(lanes));
        let precompiler = (precompile && Precompiler::wanted(&info))
            .then(|| Precompiler::new(chosen, info.clone()));
        Ok(Self {
            precompiler,
            gemm_tuner: super::tune::GemmTuner::new(&info, depth4_runs),
            view_ids: Mutex::new(HashMap::new()),
            buffer_limit: Mutex::new(None),
            derived: Default::default(),
            device,
            queue,
            info,
            adapter_index: chosen,
            limits,
            features,
            modules: Mutex::new(HashMap::new()),
            kernels: Mutex::new(HashMap::new()),
            recording: Mutex::new(Recording {
                encoder: None,
                params: Vec::new(),
            }),
            params_ring,
            params_align,
            counters: Mutex::new(GpuCounters::default()),
            uncaptured,
            pool: Arc::default(),
            bind_groups: Mutex::new(HashMap::new()),
            staging: Mutex::new(HashMap::new()),
            next_buffer_id: Mutex::new(0),
            in_flight: Mutex::new(None),
            profile: Mutex::new(None),
        })
    }

    /// The helper compiling this context's kernels on another core
    /// ([`super::precompile`]), where the adapter gets one.
    pub fn precompiler(&self) -> Option<&Precompiler> {
        self.precompiler.as_ref()
    }

    /// `name (backend, type)` for logs, with `, subgroups` when the device
    /// has them.
    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}, {:?}{})",
            self.info.name,
            self.info.backend,
            self.info.device_type,
            if self.has_subgroups() {
                ", subgroups"
            } else {
                ""
            }
        )
    }

    /// True for software adapters such as lavapipe.
    pub fn is_software(&self) -> bool {
        super::adapter::is_software(&self.info)
    }

    /// How many submits, pipeline compilations and dispatches happened so far.
    pub fn counters(&self) -> GpuCounters {
        *self.counters.lock().unwrap()
    }

    /// The first wgpu error raised outside an error scope since the last call
    /// (validation, out of memory), as a crate error.
    pub fn take_error(&self) -> Result<()> {
        match self.uncaptured.lock().unwrap().take() {
            Some(message) => Err(Error::Gpu(message)),
            None => Ok(()),
        }
    }

    /// Whether the device has subgroup operations, which the reductions
    /// (`gpu/workgroup_sum.rs`) and the register-blocked GEMMs then use.
    pub fn has_subgroups(&self) -> bool {
        self.features.contains(wgpu::Features::SUBGROUP)
    }

    /// The device's subgroup size when it has subgroup operations and every
    /// subgroup has that one size (lavapipe: 8); kernels that rely on how
    /// a subgroup's lanes fall in a workgroup need it fixed.
    pub fn fixed_subgroup_size(&self) -> Option<usize> {
        fixed_subgroup_size(self.features, &self.info)
    }

    /// The compiled kernel for `spec`, built on first use and cached.
    pub fn kernel(&self, spec: &KernelSpec) -> Arc<Kernel> {
        let key = spec.key();
        if let Some(kernel) = self.kernels.lock().unwrap().get(&key) {
            return kernel.clone();
        }
        let kernel = Arc::new(self.build_kernel(spec, &key));
        self.counters.lock().unwrap().pipelines += 1;
        self.kernels
            .lock()
            .unwrap()
            .entry(key)
            .or_insert(kernel)
            .clone()
    }

    /// What every kernel built so far was built from (one per cached
    /// pipeline, in no particular order).
    pub fn built_kernels(&self) -> Vec<KernelSpec> {
        let kernels = self.kernels.lock().unwrap();
        kernels.values().map(|k| k.spec.clone()).collect()
    }

    fn module(&self, family: &'static str, source: &'static str) -> Arc<wgpu::ShaderModule> {
        let mut modules = self.modules.lock().unwrap();
        modules
            .entry(family)
            .or_insert_with(|| {
                let desc = wgpu::ShaderModuleDescriptor {
                    label: Some(family),
                    source: wgpu::ShaderSource::Wgsl(source.into()),
                };
                // SAFETY: runtime_checks lists what each family's shaders
                // guarantee in place of the checks it leaves out.
                Arc::new(unsafe {
                    self.device
                        .create_shader_module_trusted(desc, runtime_checks(family))
                })
            })
            .clone()
    }

    fn build_kernel(&self, spec: &KernelSpec, key: &str) -> Kernel {
        let buffer = |binding: u32, ty: wgpu::BufferBindingType| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: true,
                min_binding_size: None,
            },
            count: None,
        }];
        let total = spec.inputs + spec.outputs;
        for i in 0..total {
            let ty = if spec.uniform_inputs & (1 << i) != 0 {
                wgpu::BufferBindingType::Uniform
            } else {
                wgpu::BufferBindingType::Storage {
                    read_only: i < spec.inputs,
                }
            };
            entries.push(buffer(1 + i as u32, ty));
        }
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(key),
                entries: &entries,
            });
        let pipeline_layout = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(key),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        let module = self.module(spec.family, spec.source);
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(key),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(spec.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &spec.constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        Kernel {
            pipeline,
            layout,
            inputs: spec.inputs,
            outputs: spec.outputs,
            label: key.to_string(),
            spec: spec.clone(),
            dispatched: Default::default(),
        }
    }

    /// A storage buffer of at least `bytes` bytes (rounded up to 4) from the
    /// pool, or new. Its contents are unspecified: every kernel writes all of
    /// its outputs.
    pub fn storage_buffer(&self, bytes: u64, label: &str) -> GpuBuffer {
        let size = bytes.max(4).next_multiple_of(4);
        let reused = self
            .pool
            .free
            .lock()
            .unwrap()
            .get_mut(&size)
            .and_then(|free| free.pop_first());
        let (id, buffer) = match reused {
            Some(entry) => entry,
            None => {
                let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size,
                    // Uniform too, for the small operands some kernels
                    // read as uniform buffers (one pool for all sizes).
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::UNIFORM
                        | wgpu::BufferUsages::COPY_SRC
                        | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                let mut counters = self.counters.lock().unwrap();
                counters.buffers += 1;
                counters.buffer_bytes += size;
                drop(counters);
                let mut next = self.next_buffer_id.lock().unwrap();
                *next += 1;
                (*next, buffer)
            }
        };
        GpuBuffer {
            storage: Storage::Owned {
                buffer: Some(buffer),
                pool: self.pool.clone(),
            },
            id,
            offset: 0,
            size,
        }
    }

    /// A view of `size` bytes of `parent` from byte `offset` (a multiple of
    /// the adapter's storage offset alignment): bound, copied and read back
    /// as a buffer of its own, while the bytes stay in `parent`.
    ///
    /// # Panics
    /// When the range is outside `parent` or misaligned.
    pub fn view(&self, parent: &Arc<GpuBuffer>, offset: u64, size: u64) -> GpuBuffer {
        let align = u64::from(self.limits.min_storage_buffer_offset_alignment);
        assert!(
            offset.is_multiple_of(align) && offset + size <= parent.size && size > 0,
            "view of {size} bytes at {offset} of {parent:?} (alignment {align})"
        );
        let id = *self
            .view_ids
            .lock()
            .unwrap()
            .entry((parent.id, offset, size))
            .or_insert_with(|| {
                let mut next = self.next_buffer_id.lock().unwrap();
                *next += 1;
                *next
            });
        GpuBuffer {
            storage: Storage::View(parent.clone()),
            id,
            offset: parent.offset + offset,
            size,
        }
    }

    /// The most bytes one buffer (and one binding) may hold on this device,
    /// at most [`MAX_ADDRESSABLE_BYTES`], or the smaller limit
    /// [`GpuContext::limit_buffer_bytes`] set.
    pub fn max_buffer_bytes(&self) -> u64 {
        let device = self
            .limits
            .max_buffer_size
            .min(self.limits.max_storage_buffer_binding_size)
            .min(MAX_ADDRESSABLE_BYTES);
        self.buffer_limit
            .lock()
            .unwrap()
            .map_or(device, |limit| limit.min(device))
    }

    /// Makes work that splits itself to fit the per-buffer limit (a
    /// convolution's im2col-sized temporaries) split as if the limit were
    /// `bytes`; `None` restores the device's. For tests and experiments.
    pub fn limit_buffer_bytes(&self, bytes: Option<u64>) {
        *self.buffer_limit.lock().unwrap() = bytes;
    }

    /// A storage buffer holding `data`, written through the queue.
    ///
    /// Queue writes land before the *next* submission's commands, so work
    /// still pending in the encoder (which may read this pooled buffer's
    /// previous contents) is submitted first. In a training step uploads come
    /// first, when nothing is pending, so this costs no extra submission.
    pub fn storage_buffer_with(&self, data: &[u8], label: &str) -> GpuBuffer {
        let buffer = self.storage_buffer(data.len() as u64, label);
        self.derived.forget_written(&buffer);
        self.submit();
        if !data.is_empty() {
            if data.len().is_multiple_of(4) {
                self.queue.write_buffer(buffer.raw(), 0, data);
            } else {
                let mut padded = data.to_vec();
                padded.resize(data.len().next_multiple_of(4), 0);
                self.queue.write_buffer(buffer.raw(), 0, &padded);
            }
        }
        buffer
    }

    /// Keeps `derived`, computed from `source`'s current contents, for a
    /// later [`GpuContext::take_derived`] with the same `key`: until
    /// `source` is next written (by a dispatch, a copy or an upload) or the
    /// step ends ([`GpuContext::end_step`]).
    pub fn keep_derived(&self, source: &GpuBuffer, key: DerivedKey, derived: Arc<GpuBuffer>) {
        self.derived.keep(source, key, derived);
    }

    /// The buffer [`GpuContext::keep_derived`] kept for `source` under
    /// `key`, if it is still valid; it is kept no longer.
    pub fn take_derived(&self, source: &GpuBuffer, key: DerivedKey) -> Option<Arc<GpuBuffer>> {
        self.derived.take(source, key)
    }

    /// Turns per-kernel profiling on or off. While on, every dispatch is
    /// submitted on its own and waited for, and its time is added to its
    /// kernel's entry: far slower than normal running, but it shows where a
    /// step's time goes. The time is the device's, from timestamp queries
    /// around the dispatch, where the adapter has them
    /// ([`GpuContext::profiles_on_gpu_clock`]), else the wall time of the
    /// dispatch's submit and wait.
    pub fn set_profiling(&self, on: bool) {
        self.synchronize();
        *self.profile.lock().unwrap() = on.then(HashMap::new);
    }

    /// Whether profiling times dispatches on the device's clock (timestamp
    /// queries) rather than the wall clock.
    pub fn profiles_on_gpu_clock(&self) -> bool {
        self.features.contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// The per-kernel times gathered since profiling was turned on, slowest
    /// first (empty when it is off).
    pub fn profile(&self) -> Vec<(String, KernelTime)> {
        let mut rows: Vec<_> = self
            .profile
            .lock()
            .unwrap()
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        rows.sort_by(|a, b| b.1.seconds.total_cmp(&a.1.seconds));
        rows
    }

    /// Records one dispatch of `kernel` into the pending command encoder.
    /// `params` fills the uniform at binding 0; `inputs` and `outputs` must match
    /// the kernel's signature.
    pub fn dispatch(
        &self,
        kernel: &Kernel,
        params: &Params,
        inputs: &[&GpuBuffer],
        outputs: &[&GpuBuffer],
        workgroups: [u32; 3],
    ) {
        if self.profile.lock().unwrap().is_none() {
            self.record_dispatch(kernel, params, inputs, outputs, workgroups);
            return;
        }
        self.synchronize();
        let seconds = match self.gpu_timer() {
            // The device's clock: the dispatch alone, without the submit and
            // wait that the wall clock adds to each (about 0.2 ms on lavapipe,
            // more than many of a small model's dispatches take).
            Some(mut timer) => {
                timer.begin();
                self.record_dispatch(kernel, params, inputs, outputs, workgroups);
                timer.end();
                timer.seconds()
            }
            None => {
                let start = std::time::Instant::now();
                self.record_dispatch(kernel, params, inputs, outputs, workgroups);
                self.synchronize();
                start.elapsed().as_secs_f64()
            }
        };
        if let Some(profile) = self.profile.lock().unwrap().as_mut() {
            let entry = profile
                .entry(format!("{} {workgroups:?}", kernel.label))
                .or_default();
            entry.calls += 1;
            entry.seconds += seconds;
        }
    }

    fn record_dispatch(
        &self,
        kernel: &Kernel,
        params: &Params,
        inputs: &[&GpuBuffer],
        outputs: &[&GpuBuffer],
        workgroups: [u32; 3],
    ) {
        assert_eq!(
            (inputs.len(), outputs.len()),
            (kernel.inputs, kernel.outputs),
            "kernel {} takes {} inputs and {} outputs",
            kernel.label,
            kernel.inputs,
            kernel.outputs
        );
        for output in outputs {
            self.derived.forget_written(output);
        }
        if let Some(precompiler) = &self.precompiler {
            precompiler.offer(&kernel.label, &kernel.spec, params);
        }
        let buffers: Vec<&GpuBuffer> = inputs.iter().chain(outputs).copied().collect();
        let key: BindKey = (
            kernel.label.clone(),
            buffers.iter().map(|b| b.id()).collect(),
        );
        let mut cache = self.bind_groups.lock().unwrap();
        let bind_group = cache.entry(key).or_insert_with(|| {
            let mut entries = vec![wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &self.params_ring,
                    offset: 0,
                    size: wgpu::BufferSize::new(PARAMS_BYTES),
                }),
            }];
            for (i, buffer) in buffers.iter().enumerate() {
                entries.push(wgpu::BindGroupEntry {
                    binding: 1 + i as u32,
                    resource: buffer.binding(),
                });
            }
            self.counters.lock().unwrap().bind_groups += 1;
            self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(&kernel.label),
                layout: &kernel.layout,
                entries: &entries,
            })
        });
        let mut recording = self.recording.lock().unwrap();
        let mut offset = recording
            .params
            .len()
            .next_multiple_of(self.params_align as usize) as u64;
        if offset + PARAMS_BYTES > PARAMS_RING_BYTES {
            // The ring is full for this submission: submit what is recorded.
            self.submit_recording(&mut recording);
            offset = 0;
        }
        let bytes = params.padded_bytes();
        assert!(
            bytes.len() as u64 <= PARAMS_BYTES,
            "kernel {} has more than 32 parameter words",
            kernel.label
        );
        recording.params.resize(offset as usize, 0);
        recording.params.extend_from_slice(&bytes);
        let encoder = recording.encoder.get_or_insert_with(|| {
            self.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("ops") })
        });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(&kernel.label),
                timestamp_writes: None,
            });
            pass.set_pipeline(&kernel.pipeline);
            pass.set_bind_group(0, &*bind_group, &[offset as u32]);
            pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
        }
        self.counters.lock().unwrap().dispatches += 1;
        kernel
            .dispatched
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records a copy of `bytes` bytes from the start of `src` to `dst` at
    /// byte `dst_offset`.
    ///
    /// # Panics
    /// When either range is outside its buffer.
    pub fn copy(&self, src: &GpuBuffer, dst: &GpuBuffer, dst_offset: u64, bytes: u64) {
        self.copy_range(src, 0, dst, dst_offset, bytes);
    }

    /// Records a copy of `bytes` bytes from `src` at byte `src_offset` to
    /// `dst` at byte `dst_offset` (offsets and size multiples of 4).
    ///
    /// # Panics
    /// When either range is outside its buffer.
    pub fn copy_range(
        &self,
        src: &GpuBuffer,
        src_offset: u64,
        dst: &GpuBuffer,
        dst_offset: u64,
        bytes: u64,
    ) {
        assert!(
            src_offset + bytes <= src.size && dst_offset + bytes <= dst.size,
            "copy of {bytes} bytes from {src:?} at {src_offset} to {dst:?} at {dst_offset}"
        );
        self.derived.forget_written(dst);
        self.record(|encoder| {
            encoder.copy_buffer_to_buffer(
                src.raw(),
                src.offset + src_offset,
                dst.raw(),
                dst.offset + dst_offset,
                bytes,
            )
        });
    }

    /// Records commands into the pending encoder (made if there is none).
    pub(super) fn record(&self, f: impl FnOnce(&mut wgpu::CommandEncoder)) {
        let mut recording = self.recording.lock().unwrap();
        let encoder = recording.encoder.get_or_insert_with(|| {
            self.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("ops") })
        });
        f(encoder);
    }

    /// Submits everything recorded so far (one submission).
    pub fn submit(&self) -> Option<wgpu::SubmissionIndex> {
        // Submit while holding the recording: commands reach the queue in the
        // order they were recorded, even with several threads sharing the
        // context (a freed buffer's old reads must run before its new writes).
        let mut recording = self.recording.lock().unwrap();
        self.submit_recording(&mut recording)
    }

    /// Writes the pending parameters into the ring, then submits the pending
    /// commands.
    fn submit_recording(&self, recording: &mut Recording) -> Option<wgpu::SubmissionIndex> {
        let encoder = recording.encoder.take()?;
        if !recording.params.is_empty() {
            self.queue
                .write_buffer(&self.params_ring, 0, &recording.params);
            recording.params.clear();
        }
        let index = self.queue.submit([encoder.finish()]);
        self.counters.lock().unwrap().submits += 1;
        Some(index)
    }

    /// Submits pending work and waits until the GPU has finished all of it.
    pub fn synchronize(&self) {
        self.submit();
        self.wait(wgpu::PollType::wait_indefinitely());
    }

    /// Waits as `poll` says. A failed wait (a submission that an earlier
    /// error made invalid, a lost device) is recorded for
    /// [`GpuContext::take_error`] after the error that caused it, rather than
    /// a panic: the callers check for errors at their sync points.
    fn wait(&self, poll: wgpu::PollType) -> bool {
        let Err(e) = self.device.poll(poll) else {
            return true;
        };
        self.record_error(format!("waiting for the GPU failed: {e}"));
        false
    }

    /// Keeps `message` for [`GpuContext::take_error`] unless an earlier
    /// error waits there: that one is the cause, the later failure its echo.
    fn record_error(&self, message: String) {
        let mut slot = self.uncaptured.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(message);
    }

    /// Ends a step: submits what it recorded, then waits for the *previous*
    /// step's submission, so the host prepares the next batch while this one
    /// runs and at most one step is queued ahead.
    pub fn end_step(&self) {
        self.derived.clear();
        if let Some(precompiler) = &self.precompiler {
            precompiler.step_ended();
        }
        let Some(index) = self.submit() else { return };
        if let Some(previous) = self.in_flight.lock().unwrap().replace(index) {
            self.wait(wgpu::PollType::Wait {
                submission_index: Some(previous),
                timeout: None,
            });
        }
    }

    /// Submits pending work, then copies the first `bytes` bytes of `buffer`
    /// back to the host.
    pub fn read_back(&self, buffer: &GpuBuffer, bytes: u64) -> Vec<u8> {
        assert!(
            bytes <= buffer.size,
            "read of {bytes} bytes from {buffer:?}"
        );
        self.read_back_raw(buffer.raw(), buffer.offset, bytes)
    }

    /// [`GpuContext::read_back`] from `bytes` bytes at `offset` of a wgpu
    /// buffer: storage → staging copy, map, wait, read.
    pub fn read_back_raw(&self, buffer: &wgpu::Buffer, offset: u64, bytes: u64) -> Vec<u8> {
        let size = bytes.max(4).next_multiple_of(4);
        let reused = self
            .staging
            .lock()
            .unwrap()
            .get_mut(&size)
            .and_then(Vec::pop);
        let staging = reused.unwrap_or_else(|| {
            self.counters.lock().unwrap().staging_buffers += 1;
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        // Whole words; a view's last word is always its own (sizes are
        // multiples of 4), a buffer's tail may be rounded up within it.
        let size = size.min(buffer.size() - offset);
        self.record(|encoder| encoder.copy_buffer_to_buffer(buffer, offset, &staging, 0, size));
        self.submit();
        let slice = staging.slice(..);
        let (sender, receiver) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = sender.send(r);
        });
        let waited = self.wait(wgpu::PollType::wait_indefinitely());
        let outcome = if waited {
            receiver.recv().ok()
        } else {
            receiver.try_recv().ok()
        };
        let mapped = match outcome {
            Some(Ok(())) => waited,
            Some(Err(e)) => {
                self.record_error(format!("reading back from the GPU failed: {e}"));
                false
            }
            None => {
                if waited {
                    self.record_error("reading back from the GPU failed: never mapped".into());
                }
                false
            }
        };
        if !mapped {
            // Zeros stand in for the lost values until the caller's next
            // `take_error` reports why (a staging buffer that may still be
            // mapping is not reused).
            return vec![0; bytes as usize];
        }
        let mut data = slice
            .get_mapped_range()
            .expect("readback buffer is mapped")
            .to_vec();
        staging.unmap();
        self.staging
            .lock()
            .unwrap()
            .entry(size)
            .or_default()
            .push(staging);
        data.truncate(bytes as usize);
        data
    }
}

/// The uniform parameters of one dispatch: 32-bit words in WGSL struct order,
/// padded to a multiple of 16 bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Params {
    words: Vec<u32>,
}

impl Params {
    /// No parameters yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a `u32` field.
    pub fn u32(mut self, v: usize) -> Self {
        self.words
            .push(u32::try_from(v).expect("size does not fit in a u32 kernel parameter"));
        self
    }

    /// Appends an `f32` field.
    pub fn f32(mut self, v: f32) -> Self {
        self.words.push(v.to_bits());
        self
    }

    /// The words as bytes, zero-padded to a multiple of 16 as uniform buffers need.
    fn padded_bytes(&self) -> Vec<u8> {
        let mut words = self.words.clone();
        words.resize(words.len().max(1).next_multiple_of(4), 0);
        bytemuck::cast_slice(&words).to_vec()
    }
}

impl GpuContext {
    /// A tensor of `shape` in a storage buffer, for a kernel to write.
    ///
    /// The buffer comes from the pool; its contents are unspecified until a
    /// kernel writes it (every kernel writes all of its outputs).
    pub fn tensor(&self, shape: &[usize], label: &str) -> super::GpuTensor {
        let len: usize = shape.iter().product();
        super::GpuTensor {
            buffer: Arc::new(self.storage_buffer(4 * len as u64, label)),
            shape: shape.to_vec(),
        }
    }
}

/// Workgroup grid for `items` independent items at `per_workgroup` items per
/// workgroup, folded into y past the per-dimension limit.
pub fn grid(items: usize, per_workgroup: usize) -> [u32; 3] {
    let count = u32::try_from(items.div_ceil(per_workgroup)).expect("dispatch too large");
    let [x, y] = fold_workgroups(count);
    [x, y, 1]
}
