//! The subgroup code (the reductions' sums, the GEMMs that share A) must be
//! right at every subgroup size a GPU may have, not only at lavapipe's
//! default of 8 lanes. Lavapipe's subgroups are as wide as its SIMD
//! vectors, which `LP_NATIVE_VECTOR_WIDTH` sets when the process starts
//! (wider than the CPU's own vectors, LLVM splits them): 128 bits give 4
//! lanes (the small GEMM still shares A, the tall one no longer can), 512
//! give 16 (the tall GEMM shares A across a wider subgroup, the small one
//! no longer can), 1024 give NVIDIA's 32 and 2048 AMD's 64 (neither shares
//! A, as on those GPUs; the reductions add over 8 or 4 subgroups). `wgcnn
//! check` runs every op against the CPU reference at each width, in a
//! process of its own.

mod common;

use common::cli::text;

#[test]
fn every_op_matches_the_reference_at_lavapipes_other_subgroup_sizes() {
    let Some(gpu) = common::gpu() else {
        return;
    };
    let info = &gpu.ctx.info;
    if !(gpu.ctx.is_software() && info.name.contains("llvmpipe")) {
        eprintln!(
            "the default adapter is {}, not lavapipe: its subgroup size cannot be varied here",
            info.name
        );
        return;
    }
    for (bits, lanes) in [(128, 4), (512, 16), (1024, 32), (2048, 64)] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wgcnn"))
            .arg("check")
            .env("LP_NATIVE_VECTOR_WIDTH", bits.to_string())
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .output()
            .expect("run wgcnn check");
        let printed = text(&out);
        // The width took (so the subgroups really had `lanes` lanes), and
        // the device was opened with subgroup operations.
        let device = printed
            .lines()
            .find(|l| l.starts_with("device:"))
            .unwrap_or_else(|| panic!("no device line in:\n{printed}"));
        assert!(
            device.contains(&format!("{bits} bits")) && device.ends_with(", subgroups)"),
            "{lanes} lanes wanted, but {device}"
        );
        assert!(
            out.status.success(),
            "wgcnn check failed with {lanes}-lane subgroups:\n{printed}"
        );
    }
}
