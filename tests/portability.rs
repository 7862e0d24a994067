//! Metal, DirectX 12 and OpenGL, which the CI machine cannot run: every
//! WGSL module the GPU path can build (`wgcnn::gpu::modules`) goes through
//! the translation wgpu would give it there, with naga (wgpu's own shader
//! translator, the version wgpu uses) writing Metal Shading Language, HLSL
//! and GLSL. A module that fails here would fail to compile on those
//! backends' devices. Each entry point's workgroup must also fit WebGPU's
//! default limits. And since the list is what this test covers, a run on
//! lavapipe checks that every kernel it builds is on it.

mod common;

use std::collections::HashSet;

use naga::back::{glsl, hlsl, msl, pipeline_constants};
use naga::valid::{Capabilities, ModuleInfo, ValidationFlags, Validator};
use rayon::prelude::*;
use wgcnn::backend::Backend;
use wgcnn::data::synthetic;
use wgcnn::gpu::modules::{ModuleSource, every_module};
use wgcnn::nn::BUILTIN_MODELS;

/// The module parsed and validated with every capability, its override
/// constants at their defaults (every override in shaders/ has one; a
/// kernel's own values change constants, not the code's shape); and whether
/// it also validates without subgroup operations, which wgpu's GL backend
/// lacks.
fn parse(m: &ModuleSource) -> Result<(naga::Module, ModuleInfo, bool), String> {
    let module = naga::front::wgsl::parse_str(m.source).map_err(|e| e.emit_to_string(m.source))?;
    let info = Validator::new(ValidationFlags::all(), Capabilities::all())
        .validate(&module)
        .map_err(|e| format!("validation: {e:?}"))?;
    let without_subgroups =
        Capabilities::all() - Capabilities::SUBGROUP - Capabilities::SUBGROUP_BARRIER;
    let for_gl = Validator::new(ValidationFlags::all(), without_subgroups)
        .validate(&module)
        .is_ok();
    let (module, info) =
        pipeline_constants::process_overrides(&module, &info, None, &Default::default())
            .map_err(|e| format!("override constants: {e}"))?;
    Ok((module.into_owned(), info.into_owned(), for_gl))
}

/// Metal Shading Language 2.4 (macOS 12, the first with everything wgpu's
/// Metal backend asks of compute), every entry point.
fn to_msl(module: &naga::Module, info: &ModuleInfo) -> Result<String, String> {
    let options = msl::Options {
        lang_version: (2, 4),
        fake_missing_bindings: true,
        zero_initialize_workgroup_memory: true,
        ..Default::default()
    };
    msl::write_string(module, info, &options, &msl::PipelineOptions::default())
        .map(|(text, _)| text)
        .map_err(|e| format!("MSL: {e}"))
}

/// HLSL for shader model 6.0 (the first with wave operations, which the
/// subgroup modules need; DirectX 12 compiles it with DXC), every entry
/// point.
fn to_hlsl(module: &naga::Module, info: &ModuleInfo) -> Result<String, String> {
    let options = hlsl::Options {
        shader_model: hlsl::ShaderModel::V6_0,
        fake_missing_bindings: true,
        zero_initialize_workgroup_memory: true,
        restrict_indexing: true,
        ..Default::default()
    };
    let mut text = String::new();
    hlsl::Writer::new(&mut text, &options, &hlsl::PipelineOptions::default())
        .write(module, info, None)
        .map_err(|e| format!("HLSL: {e}"))?;
    Ok(text)
}

/// GLSL ES 3.10 (the first with compute shaders, what wgpu's GL backend
/// asks for), one entry point at a time as the GL backend writes them.
fn to_glsl(module: &naga::Module, info: &ModuleInfo) -> Result<String, String> {
    let options = glsl::Options {
        version: glsl::Version::Embedded {
            version: 310,
            is_webgl: false,
        },
        zero_initialize_workgroup_memory: true,
        ..Default::default()
    };
    let mut all = String::new();
    for entry in &module.entry_points {
        let pipeline = glsl::PipelineOptions {
            shader_stage: naga::ShaderStage::Compute,
            entry_point: entry.name.clone(),
            multiview: None,
        };
        let mut text = String::new();
        glsl::Writer::new(
            &mut text,
            module,
            info,
            &options,
            &pipeline,
            naga::proc::BoundsCheckPolicies::default(),
        )
        .and_then(|mut w| w.write().map(|_| ()))
        .map_err(|e| format!("GLSL ({}): {e}", entry.name))?;
        all += &text;
    }
    Ok(all)
}

/// Each entry point's workgroup against WebGPU's default limits, which
/// every WebGPU adapter meets: its size, its invocations, and the
/// workgroup memory it uses (which wgpu does not check when it builds a
/// pipeline, so `tests/gpu_webgpu_limits.rs` cannot see it); and the
/// storage and uniform buffers it uses, each uniform within its binding
/// limit.
fn within_webgpu_limits(module: &naga::Module, info: &ModuleInfo) -> Result<(), String> {
    let limits = wgpu::Limits::defaults();
    let mut over = Vec::new();
    for (i, entry) in module.entry_points.iter().enumerate() {
        let uses = info.get_entry_point(i);
        let [x, y, z] = entry.workgroup_size;
        if x * y * z > limits.max_compute_invocations_per_workgroup
            || x > limits.max_compute_workgroup_size_x
            || y > limits.max_compute_workgroup_size_y
            || z > limits.max_compute_workgroup_size_z
        {
            over.push(format!("{}: workgroup {x}×{y}×{z}", entry.name));
        }
        let (mut workgroup_bytes, mut storage) = (0u64, 0u32);
        for (handle, var) in module.global_variables.iter() {
            if uses[handle].is_empty() {
                continue;
            }
            let bytes = u64::from(module.types[var.ty].inner.size(module.to_ctx()));
            match var.space {
                naga::AddressSpace::WorkGroup => workgroup_bytes += bytes,
                naga::AddressSpace::Storage { .. } => storage += 1,
                naga::AddressSpace::Uniform if bytes > limits.max_uniform_buffer_binding_size => {
                    over.push(format!("{}: a {bytes}-byte uniform", entry.name));
                }
                _ => {}
            }
        }
        if workgroup_bytes > u64::from(limits.max_compute_workgroup_storage_size) {
            over.push(format!(
                "{}: {workgroup_bytes} bytes of workgroup memory",
                entry.name
            ));
        }
        if storage > limits.max_storage_buffers_per_shader_stage {
            over.push(format!("{}: {storage} storage buffers", entry.name));
        }
    }
    if over.is_empty() {
        Ok(())
    } else {
        Err(format!("over WebGPU's default limits: {}", over.join("; ")))
    }
}

/// What one module's translation gave: the MSL, HLSL and (for a module
/// without subgroup operations, which wgpu's GL backend has not) GLSL.
struct Translated {
    msl: String,
    hlsl: String,
    glsl: Option<String>,
}

fn translate(m: &ModuleSource) -> Result<Translated, String> {
    let (module, info, for_gl) = parse(m)?;
    within_webgpu_limits(&module, &info)?;
    let glsl = if for_gl {
        Some(to_glsl(&module, &info)?)
    } else {
        None
    };
    Ok(Translated {
        msl: to_msl(&module, &info)?,
        hlsl: to_hlsl(&module, &info)?,
        glsl,
    })
}

#[test]
fn every_module_translates_for_metal_directx_and_opengl_within_webgpus_limits() {
    let modules = every_module();
    let distinct: HashSet<&ModuleSource> = modules.iter().collect();
    assert_eq!(distinct.len(), modules.len(), "a module is listed twice");
    let results: Vec<(ModuleSource, Result<Translated, String>)> =
        modules.par_iter().map(|m| (*m, translate(m))).collect();
    let failures: Vec<String> = results
        .iter()
        .filter_map(|(m, r)| r.as_ref().err().map(|e| format!("{}: {e}", m.family)))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} modules failed:\n{}",
        failures.len(),
        modules.len(),
        failures.join("\n")
    );
    // Not vacuous: each backend got every entry point, and the GL backend
    // every module that has no subgroup operation.
    let translated: Vec<(&ModuleSource, &Translated)> = results
        .iter()
        .map(|(m, r)| (m, r.as_ref().unwrap()))
        .collect();
    let of = |family: &'static str| {
        translated
            .iter()
            .filter(move |(m, _)| m.family == family)
            .map(|(_, t)| *t)
    };
    for gemm in of("gemm") {
        for entry in ["gemm_tiled", "gemm_tiled_64", "split_sum", "gemm_8x16"] {
            assert!(gemm.msl.contains(entry), "no {entry} in the MSL");
            assert!(gemm.hlsl.contains(entry), "no {entry} in the HLSL");
        }
    }
    // The summing modules' subgroup versions are Metal's and DirectX's
    // only; their tree versions go to GL too.
    let reduce: Vec<&Translated> = of("reduce").collect();
    assert_eq!(reduce.len(), 2);
    assert_eq!(reduce.iter().filter(|t| t.glsl.is_some()).count(), 1);
    assert!(reduce.iter().any(|t| t.hlsl.contains("WaveActiveSum")));
    assert!(reduce.iter().any(|t| t.msl.contains("simd_sum")));
    let gl = translated.iter().filter(|(_, t)| t.glsl.is_some()).count();
    assert!(
        gl > modules.len() / 2,
        "only {gl} of {} modules went to GL",
        modules.len()
    );
    println!(
        "{} modules translated to MSL and HLSL, {gl} of them to GLSL",
        modules.len()
    );
}

/// Every kernel a run builds on this machine's adapter comes from a module
/// in the list: the check grid (every GEMM kernel, every op) and a few
/// training steps of every built-in model.
#[test]
fn every_kernel_a_run_builds_is_in_the_list() {
    let Some(gpu) = common::own_gpu() else { return };
    let failed: Vec<_> = wgcnn::check::run_all(&gpu)
        .into_iter()
        .filter(|c| !c.passed)
        .collect();
    assert!(failed.is_empty(), "{} check cases failed", failed.len());
    let data = synthetic(3, 32, 1).train;
    for model in BUILTIN_MODELS {
        let mut trained = common::train_built_in(&gpu, model, &data, 16, 2);
        trained.trainer.evaluate(&gpu, &data, &trained.norm, 16);
    }
    gpu.take_error().unwrap();

    let listed: HashSet<ModuleSource> = every_module().into_iter().collect();
    let built = gpu.ctx.built_kernels();
    let missing: Vec<String> = built
        .iter()
        .filter(|k| {
            !listed.contains(&ModuleSource {
                family: k.family,
                source: k.source,
            })
        })
        .map(|k| format!("{}::{}", k.family, k.entry))
        .collect();
    assert!(
        missing.is_empty(),
        "kernels from modules missing in gpu::modules::every_module: {missing:?}"
    );
    assert!(built.len() > 50, "only {} kernels built", built.len());
}
