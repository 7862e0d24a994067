//! The GPU context: adapter choice, the device (made with the adapter's own
//! limits), the pipeline cache, and the one command encoder ops record into.
//!
//! Every kernel family goes through [`GpuContext::dispatch`]; none builds its
//! own plumbing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};

/// One adapter as `wgcnn devices` lists it.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    /// Position in [`list_adapters`], the number `--device` takes.
    pub index: usize,
    /// The driver's name for the device.
    pub name: String,
    /// Vulkan, Metal, Dx12 or Gl.
    pub backend: String,
    /// Discrete, integrated, virtual, CPU or other.
    pub device_type: String,
    /// Driver name and version, where the driver reports them.
    pub driver: String,
}

/// What to say when no adapter is found.
const NO_ADAPTER_HELP: &str = "no GPU adapter found. Install your GPU's Vulkan, Metal or \
    DirectX 12 driver, or, on Linux without a GPU, the software Vulkan driver lavapipe \
    (`apt-get install mesa-vulkan-drivers libvulkan1`)";

fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

fn enumerate(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
}

/// Every adapter wgpu can see, in the order `--device N` indexes them.
pub fn list_adapters() -> Vec<AdapterSummary> {
    enumerate(&instance())
        .iter()
        .enumerate()
        .map(|(index, adapter)| summarize(index, &adapter.get_info()))
        .collect()
}

fn summarize(index: usize, info: &wgpu::AdapterInfo) -> AdapterSummary {
    let driver = [info.driver.as_str(), info.driver_info.as_str()]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    AdapterSummary {
        index,
        name: info.name.clone(),
        backend: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
        driver,
    }
}

/// Preference order when no `--device` is given: discrete, integrated, virtual,
/// then anything else, and software (CPU) adapters last; native APIs before GL,
/// since Mesa lists lavapipe both as Vulkan and as GL (llvmpipe).
fn preference(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let kind = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    let api = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        _ => 1,
    };
    (kind, api)
}

/// A compiled kernel: its pipeline and the bind-group layout that is its
/// signature (binding 0: uniform parameters; then `inputs` read-only storage
/// buffers; then `outputs` read-write storage buffers).
pub struct Kernel {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    inputs: usize,
    outputs: usize,
    label: String,
}

/// Which kernel to run: a WGSL source, an entry point, its buffer signature and
/// the values of its `override` constants. Identifies a cached pipeline.
#[derive(Clone, Debug)]
pub struct KernelSpec {
    /// Name of the shader family (for labels and the cache key).
    pub family: &'static str,
    /// WGSL source, from `include_str!`.
    pub source: &'static str,
    /// Entry point.
    pub entry: &'static str,
    /// Read-only storage buffers, bindings `1..=inputs`.
    pub inputs: usize,
    /// Read-write storage buffers, after the inputs.
    pub outputs: usize,
    /// Pipeline-overridable constants.
    pub constants: Vec<(&'static str, f64)>,
}

impl KernelSpec {
    /// A kernel with no override constants.
    pub fn new(
        family: &'static str,
        source: &'static str,
        entry: &'static str,
        inputs: usize,
        outputs: usize,
    ) -> Self {
        Self {
            family,
            source,
            entry,
            inputs,
            outputs,
            constants: Vec::new(),
        }
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
}

/// Largest workgroup count per grid dimension that every WebGPU device accepts.
pub const MAX_WORKGROUPS_PER_DIM: u32 = 65_535;

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

/// The device, queue and everything built once per device.
pub struct GpuContext {
    /// The logical device.
    pub device: wgpu::Device,
    /// Its queue.
    pub queue: wgpu::Queue,
    /// What the adapter says about itself.
    pub info: wgpu::AdapterInfo,
    /// The limits the device was created with (the adapter's own).
    pub limits: wgpu::Limits,
    modules: Mutex<HashMap<&'static str, Arc<wgpu::ShaderModule>>>,
    kernels: Mutex<HashMap<String, Arc<Kernel>>>,
    encoder: Mutex<Option<wgpu::CommandEncoder>>,
    counters: Mutex<GpuCounters>,
    uncaptured: Arc<Mutex<Option<String>>>,
}

impl GpuContext {
    /// Opens adapter `index` from [`list_adapters`], or the preferred one when
    /// `None`.
    pub fn new(index: Option<usize>) -> Result<Self> {
        let instance = instance();
        let mut adapters = enumerate(&instance);
        if adapters.is_empty() {
            return Err(Error::Gpu(NO_ADAPTER_HELP.to_string()));
        }
        let adapter = match index {
            Some(i) if i < adapters.len() => adapters.swap_remove(i),
            Some(i) => {
                return Err(Error::Gpu(format!(
                    "--device {i} does not exist: there are {} adapters (see `wgcnn devices`)",
                    adapters.len()
                )));
            }
            None => {
                let best = (0..adapters.len())
                    .min_by_key(|&i| preference(&adapters[i].get_info()))
                    .expect("adapters is not empty");
                adapters.swap_remove(best)
            }
        };
        let info = adapter.get_info();
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("wgcnn"),
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| Error::Gpu(format!("could not open {}: {e}", info.name)))?;
        let uncaptured = Arc::new(Mutex::new(None));
        let sink = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = sink.lock().unwrap();
            slot.get_or_insert_with(|| e.to_string());
        }));
        Ok(Self {
            device,
            queue,
            info,
            limits,
            modules: Mutex::new(HashMap::new()),
            kernels: Mutex::new(HashMap::new()),
            encoder: Mutex::new(None),
            counters: Mutex::new(GpuCounters::default()),
            uncaptured,
        })
    }

    /// `name (backend, type)` for logs.
    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}, {:?})",
            self.info.name, self.info.backend, self.info.device_type
        )
    }

    /// True for software adapters such as lavapipe.
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
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

    fn module(&self, family: &'static str, source: &'static str) -> Arc<wgpu::ShaderModule> {
        let mut modules = self.modules.lock().unwrap();
        modules
            .entry(family)
            .or_insert_with(|| {
                Arc::new(
                    self.device
                        .create_shader_module(wgpu::ShaderModuleDescriptor {
                            label: Some(family),
                            source: wgpu::ShaderSource::Wgsl(source.into()),
                        }),
                )
            })
            .clone()
    }

    fn build_kernel(&self, spec: &KernelSpec, key: &str) -> Kernel {
        let storage = |binding: u32, read_only: bool| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
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
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        }];
        let total = spec.inputs + spec.outputs;
        for i in 0..total {
            entries.push(storage(1 + i as u32, i < spec.inputs));
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
        }
    }

    /// A zero-filled storage buffer of `bytes` bytes (at least 4) that kernels
    /// read and write and that can be copied in and out.
    pub fn storage_buffer(&self, bytes: u64, label: &str) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(4).next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// A storage buffer holding `data`.
    pub fn storage_buffer_with(&self, data: &[u8], label: &str) -> wgpu::Buffer {
        if data.is_empty() {
            return self.storage_buffer(4, label);
        }
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: data,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            })
    }

    /// Records one dispatch of `kernel` into the pending command encoder.
    /// `params` fills the uniform at binding 0; `inputs` and `outputs` must match
    /// the kernel's signature.
    pub fn dispatch(
        &self,
        kernel: &Kernel,
        params: &Params,
        inputs: &[&wgpu::Buffer],
        outputs: &[&wgpu::Buffer],
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
        let uniform = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("params"),
                contents: &params.padded_bytes(),
                usage: wgpu::BufferUsages::UNIFORM,
            });
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        }];
        for (i, buffer) in inputs.iter().chain(outputs).enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: 1 + i as u32,
                resource: buffer.as_entire_binding(),
            });
        }
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(&kernel.label),
            layout: &kernel.layout,
            entries: &entries,
        });
        let mut slot = self.encoder.lock().unwrap();
        let encoder = slot.get_or_insert_with(|| {
            self.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("ops") })
        });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(&kernel.label),
                timestamp_writes: None,
            });
            pass.set_pipeline(&kernel.pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
        }
        self.counters.lock().unwrap().dispatches += 1;
    }

    /// Records a buffer-to-buffer copy into the pending encoder.
    pub fn copy(&self, src: &wgpu::Buffer, dst: &wgpu::Buffer, bytes: u64) {
        let mut slot = self.encoder.lock().unwrap();
        let encoder = slot.get_or_insert_with(|| {
            self.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("ops") })
        });
        encoder.copy_buffer_to_buffer(src, 0, dst, 0, bytes);
    }

    /// Submits everything recorded so far (one submission).
    pub fn submit(&self) {
        if let Some(encoder) = self.encoder.lock().unwrap().take() {
            self.queue.submit([encoder.finish()]);
            self.counters.lock().unwrap().submits += 1;
        }
    }

    /// Submits pending work, then copies `bytes` bytes of `buffer` back to the
    /// host: storage → staging copy, map, wait, read.
    pub fn read_back(&self, buffer: &wgpu::Buffer, bytes: u64) -> Vec<u8> {
        let size = bytes.max(4).next_multiple_of(4);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.copy(buffer, &staging, size);
        self.submit();
        let slice = staging.slice(..);
        let (sender, receiver) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = sender.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .expect("waiting for the GPU failed");
        receiver
            .recv()
            .expect("map callback dropped")
            .expect("mapping the readback buffer failed");
        let mut data = slice
            .get_mapped_range()
            .expect("readback buffer is mapped")
            .to_vec();
        staging.unmap();
        data.truncate(bytes as usize);
        data
    }
}

/// The uniform parameters of one dispatch: 32-bit words in WGSL struct order,
/// padded to a multiple of 16 bytes.
#[derive(Clone, Debug, Default)]
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
    /// A zero-filled tensor of `shape` in a new storage buffer.
    pub fn zeros(&self, shape: &[usize], label: &str) -> super::GpuTensor {
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
