//! `wgcnn check --against`: the committed PyTorch fixtures pass on every path,
//! an altered expected tensor fails with its case named, and malformed
//! fixtures are errors naming the file.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use wgcnn::check::against::{FIXTURE_OPS, Fixture, load_dir};
use wgcnn::cpu::CpuBackend;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pytorch")
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgcnn-against-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn wgcnn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgcnn"))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .expect("run wgcnn")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// One tensor of a fixture, owned: dtype, shape, little-endian bytes.
type Owned = (Dtype, Vec<usize>, Vec<u8>);

/// Reads `src`, lets `edit` change the metadata and the tensors, and writes
/// the result to `dst` with the safetensors crate.
fn rewrite(
    src: &Path,
    dst: &Path,
    edit: impl FnOnce(&mut HashMap<String, String>, &mut Vec<(String, Owned)>),
) {
    let bytes = std::fs::read(src).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut metadata = header.metadata().clone().unwrap_or_default();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Owned)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect();
    edit(&mut metadata, &mut tensors);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(dst, safetensors::serialize(views, Some(metadata)).unwrap()).unwrap();
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn set_f32s(bytes: &mut Vec<u8>, values: &[f32]) {
    *bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
}

fn load_all() -> Vec<Fixture> {
    load_dir(&fixtures_dir())
        .expect("the committed fixtures directory")
        .into_iter()
        .map(|(path, f)| f.unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .collect()
}

#[test]
fn committed_fixtures_cover_every_op_and_stay_small() {
    let fixtures = load_all();
    for op in FIXTURE_OPS {
        assert!(
            fixtures.iter().filter(|f| f.op == op).count() >= 5,
            "fewer than 5 fixtures of {op}"
        );
    }
    let bytes: u64 = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(bytes < 1_000_000, "fixtures hold {bytes} bytes");
    // Max pooling with padding, batchnorm in both modes, stride 2.
    assert!(
        fixtures
            .iter()
            .any(|f| f.op == "maxpool2d" && !f.shape.ends_with("p=0"))
    );
    for mode in ["train", "eval"] {
        assert!(
            fixtures
                .iter()
                .any(|f| f.op == "batchnorm2d" && f.shape.contains(mode))
        );
    }
    assert!(
        fixtures
            .iter()
            .any(|f| f.op == "conv2d" && f.shape.contains("s=2"))
    );
}

#[test]
fn committed_fixtures_pass_on_the_cpu_paths() {
    for (path, backend) in [
        ("cpu", CpuBackend::<f32>::new()),
        ("fast", CpuBackend::<f32>::fast()),
    ] {
        for f in load_all() {
            let o = f.check(&backend);
            assert!(o.passed, "{} ({}) on {path}: {}", f.name, f.op, o.worst);
        }
    }
}

#[test]
fn committed_fixtures_pass_on_the_gpu() {
    let Some(gpu) = common::gpu() else { return };
    for f in load_all() {
        let o = f.check(gpu);
        assert!(o.passed, "{} ({}) on the GPU: {}", f.name, f.op, o.worst);
    }
}

/// Copies `name` into a fresh directory with one element of its expected
/// tensor `tensor` moved by `fraction` of the tensor's largest magnitude.
fn altered(dir_name: &str, name: &str, tensor: &str, index: usize, fraction: f32) -> PathBuf {
    let dir = temp_dir(dir_name);
    rewrite(&fixtures_dir().join(name), &dir.join(name), |_, tensors| {
        let (_, (_, _, bytes)) = tensors.iter_mut().find(|(n, _)| n == tensor).unwrap();
        let mut values = f32s(bytes);
        let scale = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        values[index] += fraction * scale;
        set_f32s(bytes, &values);
    });
    dir
}

#[test]
fn an_altered_expected_tensor_fails_on_every_path() {
    let backends = [CpuBackend::<f32>::new(), CpuBackend::<f32>::fast()];
    for (name, tensor) in [
        ("conv2d_03.safetensors", "grad_weight"),
        ("batchnorm2d_02.safetensors", "grad_x"),
        ("batchnorm1d_04.safetensors", "running_var_out"),
        ("softmax_cross_entropy_03.safetensors", "loss"),
        ("maxpool2d_02.safetensors", "y"),
        ("tanh_02.safetensors", "grad_x"),
    ] {
        // One element moved by 1% of the tensor's scale.
        let dir = altered("alter", name, tensor, 0, 0.01);
        let f = Fixture::load(&dir.join(name)).unwrap();
        for b in &backends {
            let o = f.check(b);
            assert!(!o.passed, "{name}: altered {tensor} passed");
            assert!(o.worst.starts_with(&format!("{tensor}[")), "{}", o.worst);
        }
        if let Some(gpu) = common::gpu() {
            assert!(
                !f.check(gpu).passed,
                "{name}: altered {tensor} passed on the GPU"
            );
        }
    }
}

#[test]
fn the_command_names_the_failing_case() {
    let dir = altered("cli", "conv2d_01.safetensors", "y", 5, 0.01);
    std::fs::copy(
        fixtures_dir().join("linear_02.safetensors"),
        dir.join("linear_02.safetensors"),
    )
    .unwrap();
    let out = wgcnn(&["check", "--against", dir.to_str().unwrap(), "--cpu"]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    let row = t
        .lines()
        .find(|l| l.starts_with("conv2d_01.safetensors"))
        .unwrap_or_else(|| panic!("no row for the altered case:\n{t}"));
    assert!(row.contains("conv2d") && row.ends_with("FAIL"), "{row}");
    assert!(t.contains("worst (out of tolerance): y[0,0,0,5]"), "{t}");
    let linear = t
        .lines()
        .find(|l| l.starts_with("linear_02.safetensors"))
        .unwrap();
    assert!(linear.ends_with("PASS"), "{linear}");
    assert!(t.contains("check: 1 passed, 1 failed"), "{t}");

    // The untouched copy passes, and `--op` selects cases.
    let out = wgcnn(&[
        "check",
        "--against",
        dir.to_str().unwrap(),
        "--cpu",
        "--op",
        "linear",
    ]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.trim_end().ends_with("check: 1 passed, 0 failed"), "{t}");
}

#[test]
fn the_command_passes_the_committed_fixtures_on_the_cpu() {
    let out = wgcnn(&[
        "check",
        "--against",
        fixtures_dir().to_str().unwrap(),
        "--cpu",
    ]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let count = load_all().len();
    assert!(
        t.trim_end()
            .ends_with(&format!("check: {count} passed, 0 failed")),
        "{t}"
    );
}

/// Loads a copy of `name` changed by `edit` and returns the error message.
fn broken(
    tag: &str,
    name: &str,
    edit: impl FnOnce(&mut HashMap<String, String>, &mut Vec<(String, Owned)>),
) -> (PathBuf, String) {
    let dir = temp_dir(tag);
    let path = dir.join(name);
    rewrite(&fixtures_dir().join(name), &path, edit);
    let e = Fixture::load(&path).expect_err("a broken fixture must not load");
    let message = e.to_string();
    assert!(
        message.contains(&path.display().to_string()),
        "the error does not name the file: {message}"
    );
    (path, message)
}

#[test]
fn malformed_fixtures_are_errors_naming_the_file() {
    let (_, m) = broken("unknown-op", "relu_00.safetensors", |meta, _| {
        meta.insert("op".into(), "gelu".into());
    });
    assert!(m.contains("unknown op \"gelu\""), "{m}");

    let (_, m) = broken("no-op", "relu_00.safetensors", |meta, _| {
        meta.remove("op");
    });
    assert!(m.contains("no \"op\""), "{m}");

    let (_, m) = broken("missing", "conv2d_02.safetensors", |_, tensors| {
        tensors.retain(|(n, _)| n != "grad_weight");
    });
    assert!(m.contains("needs the tensor \"grad_weight\""), "{m}");

    let (_, m) = broken("setting", "conv2d_02.safetensors", |meta, _| {
        meta.remove("stride");
    });
    assert!(m.contains("\"stride\""), "{m}");

    let (_, m) = broken("bad-setting", "maxpool2d_02.safetensors", |meta, _| {
        meta.insert("kernel".into(), "three".into());
    });
    assert!(m.contains("kernel = \"three\""), "{m}");

    let (_, m) = broken("dtype", "linear_01.safetensors", |_, tensors| {
        let (_, (dtype, _, bytes)) = tensors.iter_mut().find(|(n, _)| n == "weight").unwrap();
        *dtype = Dtype::F64;
        *bytes = f32s(bytes)
            .iter()
            .flat_map(|&v| (v as f64).to_le_bytes())
            .collect();
    });
    assert!(m.contains("weight is F64"), "{m}");

    let (_, m) = broken("shape", "linear_01.safetensors", |_, tensors| {
        let (_, (_, shape, _)) = tensors.iter_mut().find(|(n, _)| n == "grad_x").unwrap();
        shape.reverse();
    });
    assert!(
        m.contains("tensor grad_x has shape [7, 3], expected [3, 7]"),
        "{m}"
    );

    let (_, m) = broken("extra", "tanh_00.safetensors", |_, tensors| {
        tensors.push(("grad_wieght".into(), (Dtype::F32, vec![1], vec![0; 4])));
    });
    assert!(m.contains("unexpected tensor(s) grad_wieght"), "{m}");

    let (_, m) = broken(
        "label",
        "softmax_cross_entropy_02.safetensors",
        |_, tensors| {
            let (_, (dtype, _, bytes)) = tensors.iter_mut().find(|(n, _)| n == "labels").unwrap();
            assert_eq!(*dtype, Dtype::I64);
            bytes[..8].copy_from_slice(&10i64.to_le_bytes());
        },
    );
    assert!(
        m.contains("labels[0] = 10 is not a class index in 0..3"),
        "{m}"
    );

    let (_, m) = broken("training", "batchnorm2d_01.safetensors", |meta, _| {
        meta.insert("training".into(), "yes".into());
    });
    assert!(m.contains("training = \"yes\""), "{m}");

    // The command reports the broken file, runs the others, and fails.
    let dir = temp_dir("cli-broken");
    rewrite(
        &fixtures_dir().join("sigmoid_01.safetensors"),
        &dir.join("sigmoid_01.safetensors"),
        |meta, _| {
            meta.insert("op".into(), "softsign".into());
        },
    );
    std::fs::copy(
        fixtures_dir().join("relu_01.safetensors"),
        dir.join("relu_01.safetensors"),
    )
    .unwrap();
    let out = wgcnn(&["check", "--against", dir.to_str().unwrap(), "--cpu"]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("sigmoid_01.safetensors: unknown op \"softsign\""),
        "{t}"
    );
    assert!(t.contains("check: 1 passed, 1 failed"), "{t}");

    // An empty directory, or none, is an error too.
    let empty = temp_dir("empty");
    let out = wgcnn(&["check", "--against", empty.to_str().unwrap(), "--cpu"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("no *.safetensors fixtures"),
        "{}",
        text(&out)
    );
}
