//! Choosing where to run: a GPU adapter, or the CPU path when none is found
//! (or when the best adapter is a software one, which trains slower than the
//! CPU path on the same cores).

use wgcnn::Result;
use wgcnn::gpu::GpuBackend;

/// Where training or evaluation runs.
pub enum Device {
    /// A wgpu adapter.
    Gpu(GpuBackend),
    /// The CPU path.
    Cpu,
}

/// The adapter `--device N` names; else the best one found, unless it is a
/// software adapter (lavapipe) — then the CPU path, which trains the built-in
/// models many times faster on the same cores; else (no adapter, or `--cpu`)
/// the CPU path. Says which in one line.
pub fn choose(device: Option<usize>, force_cpu: bool) -> Result<Device> {
    if force_cpu {
        println!("device: CPU path (--cpu)");
        return Ok(Device::Cpu);
    }
    match GpuBackend::new(device) {
        Ok(gpu) if device.is_none() && gpu.ctx.is_software() => {
            println!(
                "device: CPU path (the best adapter, {}, is a software renderer and slower \
                 than the CPU path here; --device {} trains on it anyway)",
                gpu.ctx.describe(),
                gpu.ctx.adapter_index
            );
            Ok(Device::Cpu)
        }
        Ok(gpu) => {
            println!("device: {}", gpu.ctx.describe());
            Ok(Device::Gpu(gpu))
        }
        Err(e) if device.is_none() => {
            println!("device: CPU path ({e})");
            Ok(Device::Cpu)
        }
        Err(e) => Err(e),
    }
}
