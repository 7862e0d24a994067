//! The crate's error type: every failure a user can cause names what was wrong.

/// Errors reported by wgcnn. Messages name the setting or file at fault and what
/// was expected, so a user can act on them without reading the code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A layer or op setting that cannot produce a valid shape.
    #[error("invalid shape: {0}")]
    Shape(String),
    /// No usable GPU adapter, or a device request that failed.
    #[error("GPU: {0}")]
    Gpu(String),
    /// A setting out of its allowed range.
    #[error("invalid setting: {0}")]
    Setting(String),
    /// A data, model or checkpoint file that is missing, truncated or malformed.
    #[error("{path}: {message}")]
    File {
        /// The file at fault.
        path: std::path::PathBuf,
        /// What was wrong and what was expected.
        message: String,
    },
    /// Training stopped: the loss diverged, or the run was interrupted.
    #[error("training stopped: {0}")]
    Training(String),
}

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An error about `path`.
    pub fn file(path: impl Into<std::path::PathBuf>, message: impl Into<String>) -> Self {
        Error::File {
            path: path.into(),
            message: message.into(),
        }
    }
}
