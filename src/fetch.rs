//! `wgcnn fetch`: downloads the standard data-set files from their official
//! mirrors, verifies their SHA-256 checksums and puts them where
//! [`crate::data::locate`] finds them.
//!
//! Each file is streamed into a temporary file next to its destination while
//! it is hashed, and renamed into place only when the hash matches, so an
//! interrupted or corrupt download never leaves a file `wgcnn train` would
//! read. Mirrors are tried in order; a transient failure (connection error,
//! timeout, HTTP 5xx or 429) is retried before moving on to the next mirror.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::checkpoint::write_atomically;
use crate::data::{DatasetKind, search_paths};
use crate::{Error, Result};

/// A file to download: its name (appended to a mirror's base URL) and the
/// SHA-256 of its bytes, in lower-case hex.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteFile {
    /// File name, e.g. `train-images-idx3-ubyte.gz`.
    pub name: String,
    /// Expected SHA-256, 64 lower-case hex digits.
    pub sha256: String,
}

impl RemoteFile {
    /// A file named `name` whose SHA-256 is `sha256`.
    pub fn new(name: &str, sha256: &str) -> Self {
        RemoteFile {
            name: name.to_string(),
            sha256: sha256.to_ascii_lowercase(),
        }
    }
}

/// The standard files of a data set with their published SHA-256 checksums
/// (empty for [`DatasetKind::Synthetic`]).
///
/// MNIST and Fashion-MNIST: the four gzip IDX files as their authors publish
/// them (the checksums TensorFlow Datasets and others pin). CIFAR-10: the
/// binary-version archive `cifar-10-binary.tar.gz`, whose batches
/// [`fetch_from`] extracts.
pub fn standard_files(kind: DatasetKind) -> Vec<RemoteFile> {
    let list: &[(&str, &str)] = match kind {
        DatasetKind::Mnist => &[
            (
                "train-images-idx3-ubyte.gz",
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            ),
            (
                "train-labels-idx1-ubyte.gz",
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            ),
            (
                "t10k-images-idx3-ubyte.gz",
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            ),
            (
                "t10k-labels-idx1-ubyte.gz",
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            ),
        ],
        DatasetKind::FashionMnist => &[
            (
                "train-images-idx3-ubyte.gz",
                "08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc",
            ),
            (
                "train-labels-idx1-ubyte.gz",
                "b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc",
            ),
            (
                "t10k-images-idx3-ubyte.gz",
                "78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229",
            ),
            (
                "t10k-labels-idx1-ubyte.gz",
                "42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf",
            ),
        ],
        DatasetKind::Cifar10 => &[(
            CIFAR10_ARCHIVE,
            "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
        )],
        DatasetKind::Synthetic => &[],
    };
    list.iter()
        .map(|(name, sha)| RemoteFile::new(name, sha))
        .collect()
}

/// The CIFAR-10 binary-version archive.
pub const CIFAR10_ARCHIVE: &str = "cifar-10-binary.tar.gz";

/// The files extracted from [`CIFAR10_ARCHIVE`] (its `cifar-10-batches-bin/`).
const CIFAR10_MEMBERS: [&str; 7] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
    "test_batch.bin",
    "batches.meta.txt",
];

/// The official mirrors of a data set, in the order they are tried: base URLs
/// that a file name is appended to.
pub fn official_mirrors(kind: DatasetKind) -> Vec<String> {
    let list: &[&str] = match kind {
        // yann.lecun.com now refuses most downloads; the PyTorch and Google
        // copies serve the original files.
        DatasetKind::Mnist => &[
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ],
        DatasetKind::FashionMnist => &[
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ],
        DatasetKind::Cifar10 => &[
            "https://www.cs.toronto.edu/~kriz/",
            "http://www.cs.toronto.edu/~kriz/",
        ],
        DatasetKind::Synthetic => &[],
    };
    list.iter().map(|s| s.to_string()).collect()
}

/// Where `wgcnn fetch` puts a data set by default: `$WGCNN_DATA/<name>` when
/// that is set, else the user cache entry of [`search_paths`]
/// (`$XDG_CACHE_HOME/wgcnn/<name>` or `~/.cache/wgcnn/<name>`). Both are
/// searched by `wgcnn train` before the system-wide directory.
pub fn default_dir(kind: DatasetKind) -> Option<PathBuf> {
    search_paths(kind)
        .into_iter()
        .find(|p| !p.starts_with("/usr/share"))
}

/// Attempts per mirror for transient failures.
const ATTEMPTS: u32 = 3;

/// Downloads `files` of `kind` into `dir` from the first of `mirrors` that
/// serves each with the right SHA-256, and for CIFAR-10 extracts the batches
/// from the archive (then removes it). Files already in `dir` with the right
/// checksum are kept. `log` receives one line per event.
///
/// Errors name the file, and for a checksum mismatch the expected and the
/// received SHA-256; when every mirror fails, the error lists each one's
/// failure.
pub fn fetch_from(
    kind: DatasetKind,
    files: &[RemoteFile],
    mirrors: &[String],
    dir: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<()> {
    if files.is_empty() || mirrors.is_empty() {
        return Err(Error::Setting(format!(
            "{} has no files to download",
            kind.name()
        )));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::file(dir, format!("cannot create the directory: {e}")))?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(20)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_recv_body(Some(Duration::from_secs(120)))
        .http_status_as_error(true)
        .user_agent(concat!("wgcnn/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    for file in files {
        let path = dir.join(&file.name);
        if path.is_file() && sha256_of_file(&path).is_ok_and(|h| h == file.sha256) {
            log(&format!("{}: already present and verified", path.display()));
            continue;
        }
        download(&agent, file, mirrors, &path, log)?;
    }
    if kind == DatasetKind::Cifar10 {
        let archive = dir.join(CIFAR10_ARCHIVE);
        if archive.is_file() {
            extract_tar_gz(&archive, dir, &CIFAR10_MEMBERS)?;
            log(&format!(
                "extracted {} into {}",
                CIFAR10_MEMBERS.join(", "),
                dir.display()
            ));
            std::fs::remove_file(&archive)
                .map_err(|e| Error::file(&archive, format!("cannot remove the archive: {e}")))?;
        }
    }
    Ok(())
}

/// Downloads one file from the first mirror that delivers it intact.
fn download(
    agent: &ureq::Agent,
    file: &RemoteFile,
    mirrors: &[String],
    path: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<()> {
    let mut failures = Vec::new();
    for mirror in mirrors {
        let url = join_url(mirror, &file.name);
        for attempt in 1..=ATTEMPTS {
            log(&format!("downloading {url}"));
            match download_once(agent, &url, file, path) {
                Ok(bytes) => {
                    log(&format!(
                        "{}: {bytes} bytes, SHA-256 verified",
                        path.display()
                    ));
                    return Ok(());
                }
                Err(failure) => {
                    let retry = failure.transient && attempt < ATTEMPTS;
                    log(&format!(
                        "{url}: {}{}",
                        failure.message,
                        if retry { "; retrying" } else { "" }
                    ));
                    if retry {
                        std::thread::sleep(Duration::from_millis(500 << attempt));
                        continue;
                    }
                    failures.push(format!("{url}: {}", failure.message));
                    break;
                }
            }
        }
    }
    Err(Error::file(
        path,
        format!(
            "could not download {} from any mirror:\n  {}",
            file.name,
            failures.join("\n  ")
        ),
    ))
}

/// Why one download attempt failed, and whether trying again may help.
struct Failure {
    message: String,
    transient: bool,
}

/// One attempt: streams `url` into a temporary file next to `path` while
/// hashing it, and renames it into place when the SHA-256 matches. Returns
/// the number of bytes.
fn download_once(
    agent: &ureq::Agent,
    url: &str,
    file: &RemoteFile,
    path: &Path,
) -> std::result::Result<u64, Failure> {
    let response = agent.get(url).call().map_err(|e| Failure {
        transient: match &e {
            ureq::Error::StatusCode(code) => *code >= 500 || *code == 429,
            ureq::Error::Io(_) | ureq::Error::Timeout(_) | ureq::Error::ConnectionFailed => true,
            _ => false,
        },
        message: e.to_string(),
    })?;
    let tmp = temp_path(path);
    let result = (|| {
        let mut out = File::create(&tmp).map_err(|e| Failure {
            message: format!("cannot create {}: {e}", tmp.display()),
            transient: false,
        })?;
        let mut reader = response.into_body().into_reader();
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 1 << 16];
        let mut total = 0u64;
        loop {
            let n = reader.read(&mut buffer).map_err(|e| Failure {
                message: format!("the transfer broke off after {total} bytes: {e}"),
                transient: true,
            })?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            out.write_all(&buffer[..n]).map_err(|e| Failure {
                message: format!("cannot write {}: {e}", tmp.display()),
                transient: false,
            })?;
            total += n as u64;
        }
        let actual = hex(&hasher.finalize());
        if actual != file.sha256 {
            return Err(Failure {
                message: format!(
                    "checksum mismatch for {}: expected SHA-256 {}, received {} ({total} bytes)",
                    file.name, file.sha256, actual
                ),
                transient: false,
            });
        }
        out.sync_all().map_err(|e| Failure {
            message: format!("cannot write {}: {e}", tmp.display()),
            transient: false,
        })?;
        std::fs::rename(&tmp, path).map_err(|e| Failure {
            message: format!("cannot move the download to {}: {e}", path.display()),
            transient: false,
        })?;
        Ok(total)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `.<name>.part-<pid>` next to `path`.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.part-{}", std::process::id()))
}

fn join_url(base: &str, name: &str) -> String {
    if base.ends_with('/') {
        format!("{base}{name}")
    } else {
        format!("{base}/{name}")
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a file's bytes, in lower-case hex.
pub fn sha256_of_file(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Extracts the regular files of a gzip-compressed (ustar) tar archive whose
/// base names are in `wanted` into `dir`, each written atomically. Every
/// wanted name must be present.
pub fn extract_tar_gz(archive: &Path, dir: &Path, wanted: &[&str]) -> Result<()> {
    let fail = |message: String| Error::file(archive, message);
    let file = File::open(archive).map_err(|e| fail(format!("cannot open: {e}")))?;
    let mut reader = flate2::read::GzDecoder::new(std::io::BufReader::new(file));
    let mut found = vec![false; wanted.len()];
    let mut header = [0u8; 512];
    loop {
        if let Err(e) = reader.read_exact(&mut header) {
            return Err(fail(format!("truncated tar archive: {e}")));
        }
        if header.iter().all(|&b| b == 0) {
            break;
        }
        let field = |range: std::ops::Range<usize>| {
            let raw = &header[range];
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            String::from_utf8_lossy(&raw[..end]).into_owned()
        };
        let size_text = field(124..136);
        let size = u64::from_str_radix(size_text.trim(), 8)
            .map_err(|_| fail(format!("bad tar header: size {size_text:?}")))?;
        let name = field(0..100);
        let base = name.rsplit('/').next().unwrap_or("").to_string();
        let regular = matches!(header[156], b'0' | 0);
        let padded = size.div_ceil(512) * 512;
        match wanted.iter().position(|w| *w == base) {
            Some(i) if regular => {
                let mut bytes = vec![0u8; size as usize];
                reader
                    .read_exact(&mut bytes)
                    .map_err(|e| fail(format!("truncated member {name}: {e}")))?;
                std::io::copy(&mut (&mut reader).take(padded - size), &mut std::io::sink())
                    .map_err(|e| fail(format!("truncated tar archive: {e}")))?;
                let out = dir.join(&base);
                write_atomically(&out, &bytes)
                    .map_err(|e| Error::file(&out, format!("cannot write: {e}")))?;
                found[i] = true;
            }
            _ => {
                let skipped = std::io::copy(&mut (&mut reader).take(padded), &mut std::io::sink())
                    .map_err(|e| fail(format!("truncated tar archive: {e}")))?;
                if skipped < padded {
                    return Err(fail(format!("truncated member {name}")));
                }
            }
        }
    }
    let missing: Vec<&str> = wanted
        .iter()
        .zip(&found)
        .filter(|(_, f)| !**f)
        .map(|(w, _)| *w)
        .collect();
    if !missing.is_empty() {
        return Err(fail(format!("the archive lacks {}", missing.join(", "))));
    }
    Ok(())
}
