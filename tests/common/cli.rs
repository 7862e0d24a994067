//! Helpers for tests that run the `wgcnn` binary.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the `wgcnn` binary with `args` (lavapipe's runtime-dir warning kept
/// quiet) and returns what it did.
pub fn wgcnn<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgcnn"))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .expect("run wgcnn")
}

/// Standard output then standard error, as text.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A fresh, empty directory unique to this test process: `wgcnn-<group>-<pid>-<name>`.
pub fn temp_dir(group: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgcnn-{group}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes an MNIST-layout split `prefix` (`train` or `t10k`) into `dir`: `n`
/// images of 28×28 whose label is the row holding a bright bar (so the set is
/// learnable), as raw IDX files.
pub fn write_mnist(dir: &Path, prefix: &str, n: usize) {
    let mut images = vec![0, 0, 8, 3];
    for d in [n as u32, 28, 28] {
        images.extend(d.to_be_bytes());
    }
    let mut labels = vec![0, 0, 8, 1];
    labels.extend((n as u32).to_be_bytes());
    for i in 0..n {
        let label = (i % 10) as u8;
        let mut pixels = [0u8; 784];
        let row = 2 + 2 * label as usize;
        for col in 4..24 {
            pixels[row * 28 + col] = 255;
        }
        images.extend(pixels);
        labels.push(label);
    }
    std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
    std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
}
