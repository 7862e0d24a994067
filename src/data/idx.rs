//! IDX files (LeCun's MNIST format, also Fashion-MNIST's): a big-endian magic
//! `0x0000 08 <ndims>` (unsigned bytes), `ndims` big-endian `u32` extents, then
//! the bytes. Files may be gzip-compressed, detected by the gzip magic bytes
//! rather than the name.
//!
//! Lengths are checked before allocating: a raw file's size must match its header
//! exactly; a gzip stream is read with a limit one byte past what the header
//! claims, so a lying header cannot make us allocate memory for data that is not
//! there, and both short and long streams are reported.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use super::{Dataset, Splits, check_labels};
use crate::error::{Error, Result};

/// The four files of a split pair, without the optional `.gz`.
const TRAIN_IMAGES: &str = "train-images-idx3-ubyte";
const TRAIN_LABELS: &str = "train-labels-idx1-ubyte";
const TEST_IMAGES: &str = "t10k-images-idx3-ubyte";
const TEST_LABELS: &str = "t10k-labels-idx1-ubyte";
const FILES: [&str; 4] = [TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS];

/// Magic of an image file: unsigned bytes, 3 dimensions (count, rows, cols).
const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic of a label file: unsigned bytes, 1 dimension (count).
const LABELS_MAGIC: u32 = 0x0000_0801;
/// The IDX type code for unsigned bytes.
const UBYTE: u8 = 0x08;
/// The first two bytes of every gzip stream.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Deflate cannot expand data by more than about 1032:1, so a gzip file of `n`
/// bytes cannot hold more than this many times `n` (plus a little slack).
const MAX_DEFLATE_RATIO: u64 = 1032;
/// Reserve at most this much up front for a gzip stream; beyond it the buffer
/// grows only as decompressed data actually arrives.
const MAX_RESERVE: usize = 256 << 20;
/// ... and at most this many times the compressed size (the real files expand
/// about 2 to 5 times), so a header that lies about the size of a small file
/// reserves little.
const RESERVE_RATIO: u64 = 8;

/// The file names `load` reads, for messages.
pub(super) fn expected_files() -> String {
    FILES
        .iter()
        .map(|f| format!("{f}[.gz]"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `dir/<name>` if it is a file, else `dir/<name>.gz` if that is, else `None`.
fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    [dir.join(name), dir.join(format!("{name}.gz"))]
        .into_iter()
        .find(|p| p.is_file())
}

/// Whether `dir` holds all four files (raw or gzip).
pub(super) fn holds_files(dir: &Path) -> bool {
    FILES.iter().all(|f| find(dir, f).is_some())
}

/// Reads train (`train-*`) and test (`t10k-*`) splits from `dir`, naming them
/// `"<set> (train)"` and `"<set> (test)"`.
pub(super) fn load(dir: &Path, set: &str, class_names: Vec<String>) -> Result<Splits> {
    // Resolve every path first, so a missing file is reported before any reading.
    let paths: Vec<PathBuf> = FILES
        .iter()
        .map(|f| {
            find(dir, f).ok_or_else(|| {
                let present: Vec<&str> = FILES
                    .iter()
                    .copied()
                    .filter(|g| find(dir, g).is_some())
                    .collect();
                Error::file(
                    dir,
                    format!(
                        "no {f} or {f}.gz here; expected the IDX files {} (found {})",
                        expected_files(),
                        if present.is_empty() {
                            "none of them".to_string()
                        } else {
                            present.join(", ")
                        }
                    ),
                )
            })
        })
        .collect::<Result<_>>()?;
    // The training images dominate (gzip decoding), so they get their own thread.
    let (train, test) = std::thread::scope(|s| {
        let train =
            s.spawn(|| read_split(&paths[0], &paths[1], format!("{set} (train)"), &class_names));
        let test = read_split(&paths[2], &paths[3], format!("{set} (test)"), &class_names);
        let train = train
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (train, test)
    });
    let (train, test) = (train?, test?);
    if test.shape != train.shape {
        let size = |shape: [usize; 3]| format!("{}x{}", shape[1], shape[2]);
        return Err(Error::file(
            &paths[2],
            format!(
                "images are {} but {} holds {} images; expected the same image size in \
                 the train and test files",
                size(test.shape),
                paths[0].display(),
                size(train.shape)
            ),
        ));
    }
    Ok(Splits { train, test })
}

/// One split from its image and label files.
fn read_split(
    images_path: &Path,
    labels_path: &Path,
    name: String,
    class_names: &[String],
) -> Result<Dataset> {
    let images = read_idx(images_path, IdxKind::Images)?;
    let labels = read_idx(labels_path, IdxKind::Labels)?;
    let (count, rows, cols) = (images.dims[0], images.dims[1], images.dims[2]);
    if count == 0 {
        return Err(Error::file(
            images_path,
            "holds no images (count 0 in the header); expected at least one",
        ));
    }
    if rows == 0 || cols == 0 {
        return Err(Error::file(
            images_path,
            format!("images are {rows}x{cols}; expected at least 1x1"),
        ));
    }
    if labels.dims[0] != count {
        return Err(Error::file(
            labels_path,
            format!(
                "holds {} labels but {} holds {count} images; expected one label per image",
                labels.dims[0],
                images_path.display()
            ),
        ));
    }
    check_labels(labels_path, &labels.data, class_names.len())?;
    Ok(Dataset {
        name,
        images: images.data,
        labels: labels.data,
        shape: [1, rows, cols],
        classes: class_names.len(),
        class_names: class_names.to_vec(),
    })
}

/// Which of a split's two IDX files: it fixes the magic number and so the
/// dimension count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdxKind {
    /// Images: magic `0x00000803`, dimensions `(count, rows, cols)`.
    Images,
    /// Labels: magic `0x00000801`, dimension `(count)`.
    Labels,
}

impl IdxKind {
    fn magic(self) -> u32 {
        match self {
            IdxKind::Images => IMAGES_MAGIC,
            IdxKind::Labels => LABELS_MAGIC,
        }
    }

    fn what(self) -> &'static str {
        match self {
            IdxKind::Images => "images (count, rows, cols)",
            IdxKind::Labels => "labels (count)",
        }
    }
}

/// A decoded IDX file of unsigned bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxFile {
    /// Extent of each dimension, as the header gives them.
    pub dims: Vec<usize>,
    /// The `dims.product()` data bytes that follow the header.
    pub data: Vec<u8>,
}

/// Decodes the contents of an IDX file of `kind` held in memory, raw or gzip
/// (detected by the gzip magic bytes), with exactly the checks [`super::load`]
/// applies to a file on disk: magic, dimension count, and a length that matches
/// the header, without allocating for data the bytes cannot hold. `path` only
/// names the source in errors, which are [`Error::File`].
pub fn parse_idx(path: &Path, bytes: &[u8], kind: IdxKind) -> Result<IdxFile> {
    decode(path, bytes, bytes.len() as u64, kind)
}

/// Reads an IDX file of `kind`.
fn read_idx(path: &Path, kind: IdxKind) -> Result<IdxFile> {
    let what = kind.what();
    let file = File::open(path)
        .map_err(|e| Error::file(path, format!("cannot open: {e}; expected IDX {what}")))?;
    let file_len = file
        .metadata()
        .map_err(|e| Error::file(path, format!("cannot read its size: {e}")))?
        .len();
    decode(path, BufReader::new(file), file_len, kind)
}

/// Decodes an IDX stream of `file_len` bytes (raw or gzip) from `reader`:
/// unsigned bytes whose magic must be `kind`'s (which fixes the dimension count).
fn decode(path: &Path, mut reader: impl Read, file_len: u64, kind: IdxKind) -> Result<IdxFile> {
    let (magic, what) = (kind.magic(), kind.what());
    let mut first = [0u8; 2];
    let got = read_up_to(&mut reader, &mut first)
        .map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    let start = io::Cursor::new(first[..got].to_vec());
    if got == 2 && first == GZIP_MAGIC {
        let stream = GzDecoder::new(start.chain(reader));
        read_body(path, stream, magic, what, Source::Gzip { file_len })
    } else {
        read_body(
            path,
            start.chain(reader),
            magic,
            what,
            Source::Raw { file_len },
        )
    }
}

/// What the IDX bytes come from, for length checks.
#[derive(Clone, Copy)]
enum Source {
    /// An uncompressed file of `file_len` bytes.
    Raw { file_len: u64 },
    /// A gzip file of `file_len` compressed bytes.
    Gzip { file_len: u64 },
}

impl Source {
    fn describe_error(self, e: &io::Error) -> String {
        match (self, e.kind()) {
            (Source::Gzip { .. }, io::ErrorKind::UnexpectedEof) => {
                format!("truncated gzip stream ({e})")
            }
            (Source::Gzip { .. }, _) => format!("corrupt gzip stream ({e})"),
            (Source::Raw { .. }, _) => format!("read error ({e})"),
        }
    }
}

/// Parses the header from `r` and reads exactly the bytes it announces.
fn read_body(
    path: &Path,
    mut r: impl Read,
    magic: u32,
    what: &str,
    src: Source,
) -> Result<IdxFile> {
    let expected_dims = (magic & 0xff) as usize;
    let header_len = 4 + 4 * expected_dims;
    let header_error = |e: io::Error, got: usize| -> Error {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            let stream = match src {
                Source::Gzip { .. } => format!("gzip stream ends after {got} decompressed bytes"),
                Source::Raw { .. } => format!("file ends after {got} bytes"),
            };
            Error::file(
                path,
                format!(
                    "truncated: the {stream}, inside the {header_len}-byte IDX header of {what}"
                ),
            )
        } else {
            Error::file(
                path,
                format!("{} in the IDX header", src.describe_error(&e)),
            )
        }
    };

    let mut m = [0u8; 4];
    read_exact_counted(&mut r, &mut m).map_err(|(e, n)| header_error(e, n))?;
    let found = u32::from_be_bytes(m);
    if m[0] != 0 || m[1] != 0 || m[2] != UBYTE {
        return Err(Error::file(
            path,
            format!(
                "bad IDX magic 0x{found:08x}; expected 0x{magic:08x} (unsigned bytes, \
                 {expected_dims} dimension{}) for {what}",
                if expected_dims == 1 { "" } else { "s" }
            ),
        ));
    }
    if m[3] as usize != expected_dims {
        return Err(Error::file(
            path,
            format!(
                "wrong dimension count {} in IDX magic 0x{found:08x}; expected {expected_dims} \
                 (magic 0x{magic:08x}) for {what}",
                m[3]
            ),
        ));
    }
    let mut raw_dims = vec![0u8; 4 * expected_dims];
    read_exact_counted(&mut r, &mut raw_dims).map_err(|(e, n)| header_error(e, n + 4))?;
    let dims: Vec<usize> = raw_dims
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let dims_text = dims
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x");
    let Some(expected) = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) else {
        return Err(Error::file(
            path,
            format!("IDX header claims {dims_text} bytes of {what}, which overflows"),
        ));
    };
    let claim = format!("the IDX header claims {dims_text} = {expected} bytes of {what}");

    let data = match src {
        Source::Raw { file_len } => {
            let after = file_len.saturating_sub(header_len as u64);
            if after != expected as u64 {
                let problem = if after < expected as u64 {
                    "truncated"
                } else {
                    "too long"
                };
                return Err(Error::file(
                    path,
                    format!(
                        "{problem}: {claim}, but {after} bytes follow the {header_len}-byte header"
                    ),
                ));
            }
            let mut data = vec![0u8; expected];
            read_exact_counted(&mut r, &mut data).map_err(|(e, n)| {
                Error::file(
                    path,
                    format!("{claim}, but reading stopped after {n} bytes: {e}"),
                )
            })?;
            data
        }
        Source::Gzip { file_len } => {
            let plausible = file_len
                .saturating_mul(MAX_DEFLATE_RATIO)
                .saturating_add(1024);
            if (expected as u64).saturating_add(header_len as u64) > plausible {
                return Err(Error::file(
                    path,
                    format!(
                        "truncated or corrupt: {claim}, more than a {file_len}-byte gzip file \
                         can hold"
                    ),
                ));
            }
            let reserve = file_len.saturating_mul(RESERVE_RATIO);
            let reserve = usize::try_from(reserve).unwrap_or(usize::MAX);
            let mut data = Vec::with_capacity(expected.min(MAX_RESERVE).min(reserve));
            // One byte past the claim: a longer stream is an error too, and asking
            // for more than `expected` makes the decoder check the gzip trailer.
            let limit = expected as u64 + 1;
            r.take(limit).read_to_end(&mut data).map_err(|e| {
                Error::file(
                    path,
                    format!(
                        "{} after {} decompressed bytes of data; {claim}",
                        src.describe_error(&e),
                        data.len()
                    ),
                )
            })?;
            if data.len() != expected {
                let problem = if data.len() < expected {
                    format!(
                        "truncated: {claim}, but the decompressed data ends after {} bytes",
                        data.len()
                    )
                } else {
                    format!("too long: {claim}, but the decompressed data holds more")
                };
                return Err(Error::file(path, problem));
            }
            data
        }
    };
    Ok(IdxFile { dims, data })
}

/// Like `read_exact`, but reports how many bytes were read before an error.
fn read_exact_counted(
    r: &mut impl Read,
    buf: &mut [u8],
) -> std::result::Result<(), (io::Error, usize)> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => {
                return Err((
                    io::Error::new(io::ErrorKind::UnexpectedEof, "unexpected end of file"),
                    filled,
                ));
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((e, filled)),
        }
    }
    Ok(())
}

/// Fills as much of `buf` as the reader has; returns the count.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    match read_exact_counted(r, buf) {
        Ok(()) => Ok(buf.len()),
        Err((e, n)) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(n),
        Err((e, _)) => Err(e),
    }
}
