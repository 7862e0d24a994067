//! Where wgcnn keeps files for the user between runs.

use std::path::PathBuf;

/// A non-empty environment variable as a path.
pub fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// wgcnn's directory in the user's cache: `$XDG_CACHE_HOME/wgcnn`, or
/// `~/.cache/wgcnn` (a relative `$XDG_CACHE_HOME` is invalid under XDG and
/// ignored). Downloaded data sets and the GEMM tuning choices live there.
pub fn user_cache_dir() -> Option<PathBuf> {
    env_path("XDG_CACHE_HOME")
        .filter(|p| p.is_absolute())
        .or_else(|| env_path("HOME").map(|h| h.join(".cache")))
        .map(|c| c.join("wgcnn"))
}
