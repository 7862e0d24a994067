//! Compiling kernels on a second core while the first step runs.
//!
//! lavapipe (llvmpipe) compiles a kernel with LLVM when it is first
//! dispatched, on the one thread that executes the queue, so a cold first
//! training step is mostly one core compiling while the others wait. It
//! also inlines the values of uniform parameters that steer a kernel's
//! loops and branches, so a kernel can compile once per set of parameters
//! (the GEMM kernels hide theirs, see `shaders/gemm.wgsl`). Every compiled
//! variant goes into Mesa's shader cache on disk, which all devices of the
//! process (and later processes) read.
//!
//! A [`Precompiler`] opens a second device on the same adapter, on a thread
//! of its own, and replays each new (kernel, parameters) pair the main
//! device records there, as one workgroup on scratch buffers. The main
//! queue then finds the variants the helper got to first already compiled.
//! The helper takes the newest pair first: the main queue executes a step in
//! the order it was recorded, so the two work from opposite ends of it.
//! (Longest source first, meant to start the slow register-blocked GEMMs
//! early, made LeNet-5's cold step slower: its slow kernels are the direct
//! weight gradients, recorded last.)
//!
//! Results cannot change: the helper's device shares no buffer with the
//! main one, and what it computes is thrown away (its accesses past the
//! scratch buffers are clamped by the bounds checks every shader gets).
//! Only software Vulkan adapters with two or more cores get a helper
//! (`WGCNN_PRECOMPILE=0`: none; GPU drivers compile when a pipeline is
//! created). It starts at the first dispatch and takes pairs until the
//! second step has ended or [`MAX_OFFERS`] were taken: by then every kernel
//! of a training step has been compiled.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::context::{GpuBuffer, GpuContext, KernelSpec, Params};

/// Bytes of each scratch buffer: at least the largest uniform array a kernel
/// declares (the direct convolution's 64 KiB of weights).
const SCRATCH_BYTES: u64 = 64 * 1024;

/// Read-write buffers a kernel may bind.
const MAX_OUTPUTS: usize = 8;

/// Steps after which the helper takes no more pairs.
const OFFERING_STEPS: usize = 2;

/// The most pairs the helper takes (a bound for contexts that never end a
/// step, like `wgcnn check`'s).
pub const MAX_OFFERS: usize = 4096;

/// One kernel to compile: what it is built from and the parameters whose
/// values the driver may inline.
type Offer = (KernelSpec, Params);

/// The helper of one context: started at the first offer.
pub struct Precompiler {
    /// The adapter, as [`GpuContext::new`] indexes it, and what it said
    /// about itself (the helper checks it opened the same one).
    adapter: usize,
    info: wgpu::AdapterInfo,
    state: Mutex<State>,
    steps: AtomicUsize,
    compiled: Arc<AtomicUsize>,
    /// Set when the helper should stop after the pair it is on.
    stop: Arc<AtomicBool>,
}

#[derive(Default)]
struct State {
    queue: Option<Sender<Offer>>,
    thread: Option<JoinHandle<()>>,
    /// Pairs offered so far, by kernel key and parameters.
    offered: HashSet<(String, Params)>,
    finished: bool,
}

impl Precompiler {
    /// Whether a context on `info`'s adapter gets a helper: a software
    /// Vulkan adapter, at least two cores, and `WGCNN_PRECOMPILE` not `0`.
    pub fn wanted(info: &wgpu::AdapterInfo) -> bool {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        info.device_type == wgpu::DeviceType::Cpu
            && info.backend == wgpu::Backend::Vulkan
            && cores >= 2
            && std::env::var("WGCNN_PRECOMPILE").map_or(true, |v| v != "0")
    }

    /// A helper for adapter `adapter`, which described itself as `info`,
    /// not started yet.
    pub fn new(adapter: usize, info: wgpu::AdapterInfo) -> Self {
        Self {
            adapter,
            info,
            state: Mutex::default(),
            steps: AtomicUsize::new(0),
            compiled: Arc::default(),
            stop: Arc::default(),
        }
    }

    /// Queues the dispatch of kernel `key` (built from `spec`) with
    /// `params` the main device is recording, unless it was offered before
    /// or offers have ended; starts the helper at the first.
    pub fn offer(&self, key: &str, spec: &KernelSpec, params: &Params) {
        if self.steps.load(Ordering::Relaxed) >= OFFERING_STEPS {
            return;
        }
        let mut state = self.state.lock().unwrap();
        if state.finished
            || state.offered.len() >= MAX_OFFERS
            || !state.offered.insert((key.to_string(), params.clone()))
        {
            return;
        }
        if state.queue.is_none() {
            let (queue, pending) = channel();
            let (adapter, info) = (self.adapter, self.info.clone());
            let (compiled, stop) = (self.compiled.clone(), self.stop.clone());
            state.thread = std::thread::Builder::new()
                .name("wgcnn-precompile".into())
                .spawn(move || {
                    // A device that cannot be opened, or another adapter
                    // under that index, leaves the helper idle.
                    let opened = GpuContext::open(Some(adapter), false);
                    if let Ok(ctx) = opened.as_ref()
                        && ctx.info == info
                    {
                        compile_each(ctx, &pending, &compiled, &stop);
                    }
                })
                .ok();
            state.queue = Some(queue);
        }
        if let Some(queue) = &state.queue {
            // A helper that has stopped is no loss.
            let _ = queue.send((spec.clone(), params.clone()));
        }
    }

    /// Counts a training step of the main device; after the last one that
    /// offers, the helper ends (and closes its device) once it has compiled
    /// what it holds.
    pub fn step_ended(&self) {
        if self.steps.fetch_add(1, Ordering::Relaxed) + 1 == OFFERING_STEPS {
            let mut state = self.state.lock().unwrap();
            state.finished = true;
            state.queue = None;
        }
    }

    /// Pairs offered so far.
    pub fn offered(&self) -> usize {
        self.state.lock().unwrap().offered.len()
    }

    /// Pairs the helper has dispatched so far.
    pub fn compiled(&self) -> usize {
        self.compiled.load(Ordering::Relaxed)
    }

    /// Stops the helper after the pair it is compiling and waits for it; it
    /// takes no more offers.
    pub fn finish(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let thread = {
            let mut state = self.state.lock().unwrap();
            state.finished = true;
            state.queue = None;
            state.thread.take()
        };
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for Precompiler {
    /// Waits for the helper, so that no thread is inside the driver while
    /// the process exits (LLVM's static destructors run then).
    fn drop(&mut self) {
        self.finish();
    }
}

/// The helper's loop: the newest pair first, until the main context stops
/// it.
fn compile_each(
    ctx: &GpuContext,
    pending: &Receiver<Offer>,
    compiled: &AtomicUsize,
    stop: &AtomicBool,
) {
    let input = ctx.storage_buffer(SCRATCH_BYTES, "precompile input");
    let outputs: Vec<GpuBuffer> = (0..MAX_OUTPUTS)
        .map(|_| ctx.storage_buffer(SCRATCH_BYTES, "precompile output"))
        .collect();
    let mut stack = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        stack.extend(pending.try_iter());
        let (spec, params) = match stack.pop() {
            Some(offer) => offer,
            None => match pending.recv() {
                Ok(offer) => offer,
                Err(_) => return,
            },
        };
        if spec.outputs <= MAX_OUTPUTS {
            let kernel = ctx.kernel(&spec);
            let inputs = vec![&input; spec.inputs];
            let outputs: Vec<&GpuBuffer> = outputs[..spec.outputs].iter().collect();
            ctx.dispatch(&kernel, &params, &inputs, &outputs, [1, 1, 1]);
            ctx.synchronize();
        }
        compiled.fetch_add(1, Ordering::Relaxed);
    }
}
