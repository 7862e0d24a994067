//! The adapters wgpu sees: listing them for `wgcnn devices`, and the
//! order in which [`super::GpuContext::new`] prefers one when none is named.

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
    /// Whether it is the one opened when no `--device` is given: the first
    /// of the most preferred kind (discrete, integrated, virtual, other,
    /// then software; Vulkan, Metal or DirectX 12 before OpenGL).
    pub preferred: bool,
    /// Whether it is a software renderer (lavapipe, llvmpipe), which
    /// training passes over for the CPU path unless `--device` names it.
    pub software: bool,
}

/// What to say when no adapter is found.
pub(super) const NO_ADAPTER_HELP: &str = "no GPU adapter found. Install your GPU's Vulkan, Metal or \
    DirectX 12 driver, or, on Linux without a GPU, the software Vulkan driver lavapipe \
    (`apt-get install mesa-vulkan-drivers libvulkan1`)";

/// A wgpu instance over every backend, configured from the environment
/// (`WGPU_BACKEND` and the like).
pub(super) fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

/// The adapters `instance` sees, in the order `--device N` indexes them.
pub(super) fn enumerate(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
}

/// Every adapter wgpu can see, in the order `--device N` indexes them.
pub fn list_adapters() -> Vec<AdapterSummary> {
    let infos: Vec<wgpu::AdapterInfo> = enumerate(&instance())
        .iter()
        .map(|adapter| adapter.get_info())
        .collect();
    let preferred = preferred_index(&infos);
    infos
        .iter()
        .enumerate()
        .map(|(index, info)| summarize(index, info, preferred == Some(index)))
        .collect()
}

fn summarize(index: usize, info: &wgpu::AdapterInfo, preferred: bool) -> AdapterSummary {
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
        preferred,
        software: is_software(info),
    }
}

/// Whether the adapter is a software renderer (lavapipe, llvmpipe).
pub(super) fn is_software(info: &wgpu::AdapterInfo) -> bool {
    info.device_type == wgpu::DeviceType::Cpu
}

/// The adapter opened when no `--device` is given: the first of the most
/// preferred kind ([`preference`]).
pub(super) fn preferred_index(infos: &[wgpu::AdapterInfo]) -> Option<usize> {
    (0..infos.len()).min_by_key(|&i| preference(&infos[i]))
}

/// Preference order when no `--device` is given: discrete, integrated, virtual,
/// then anything else, and software (CPU) adapters last; native APIs before GL,
/// since Mesa lists lavapipe both as Vulkan and as GL (llvmpipe).
pub(super) fn preference(info: &wgpu::AdapterInfo) -> (u8, u8) {
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

/// The subgroup size of a device with `features` on adapter `info`, when it
/// has subgroup operations and every subgroup has that one size.
pub(super) fn fixed_subgroup_size(
    features: wgpu::Features,
    info: &wgpu::AdapterInfo,
) -> Option<usize> {
    let (min, max) = (info.subgroup_min_size, info.subgroup_max_size);
    (features.contains(wgpu::Features::SUBGROUP) && min == max && min > 0).then_some(min as usize)
}
