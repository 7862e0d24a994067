//! Choosing where to run: a GPU adapter, or the CPU path when none is found.

use wgcnn::Result;
use wgcnn::gpu::GpuBackend;

/// Where training or evaluation runs.
pub enum Device {
    /// A wgpu adapter.
    Gpu(GpuBackend),
    /// The CPU path.
    Cpu,
}

/// The adapter `--device N` names, the best one found, or — when no adapter
/// exists and none was asked for, or `--cpu` is given — the CPU path. Says
/// which in one line.
pub fn choose(device: Option<usize>, force_cpu: bool) -> Result<Device> {
    if force_cpu {
        println!("device: CPU path (--cpu)");
        return Ok(Device::Cpu);
    }
    match GpuBackend::new(device) {
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
