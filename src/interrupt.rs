//! Interruption: Ctrl-C (SIGINT), SIGTERM and SIGHUP ask a running training
//! loop to stop at the end of its current step. The loop writes a checkpoint of
//! exactly where it stands and returns; `wgcnn train` then exits with
//! [`EXIT_CODE`]. A second signal exits at once: the last complete checkpoint
//! stays as it was (checkpoints are written to a temporary file and renamed), and
//! the temporary file of a write in progress is removed.
//!
//! The handlers come from the `ctrlc` crate (with its `termination` feature):
//! it works on Unix and on Windows consoles alike, and it calls the handler on
//! its own thread rather than inside the signal, so the handler may print and
//! remove files. The state is process-wide, as signals are.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::error::{Error, Result};

/// Exit status of a run stopped by a signal: 128 + SIGINT, as shells report a
/// Ctrl-C. (`ctrlc` does not say which signal arrived, so SIGTERM gets it too.)
pub const EXIT_CODE: i32 = 130;

static STOP: AtomicBool = AtomicBool::new(false);
static SIGNALS: AtomicUsize = AtomicUsize::new(0);
static CHECKPOINTS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static INSTALLED: OnceLock<std::result::Result<(), String>> = OnceLock::new();

/// Installs the handlers for Ctrl-C, SIGTERM and SIGHUP (once per process;
/// later calls return the first call's outcome). After that, the first signal
/// makes [`requested`] true and prints what happens next; the second exits the
/// process at once with [`EXIT_CODE`].
pub fn install() -> Result<()> {
    INSTALLED
        .get_or_init(|| ctrlc::set_handler(on_signal).map_err(|e| e.to_string()))
        .clone()
        .map_err(|e| Error::Setting(format!("cannot install the Ctrl-C handler: {e}")))
}

/// True once a stop has been asked for (by a signal or [`request`]).
pub fn requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Asks for a stop, as a first Ctrl-C does (for programs that embed training).
pub fn request() {
    STOP.store(true, Ordering::SeqCst);
}

/// Forgets an earlier stop request, so another run can start.
pub fn clear() {
    STOP.store(false, Ordering::SeqCst);
    SIGNALS.store(0, Ordering::SeqCst);
}

/// Registers a checkpoint path whose temporary file (see
/// [`crate::checkpoint::write_atomically`]) is removed if a second signal exits
/// the process in the middle of writing it.
pub fn watch_checkpoint(path: &Path) {
    let mut paths = CHECKPOINTS.lock().unwrap_or_else(|p| p.into_inner());
    if !paths.iter().any(|p| p == path) {
        paths.push(path.to_path_buf());
    }
}

/// The temporary file [`crate::checkpoint::write_atomically`] writes `path`
/// through in this process (`.<name>.tmp-<pid>` in the same directory).
pub fn temporary_path(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Some(dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

fn on_signal() {
    let count = SIGNALS.fetch_add(1, Ordering::SeqCst) + 1;
    STOP.store(true, Ordering::SeqCst);
    if count == 1 {
        eprintln!(
            "\ninterrupt: stopping after the current step (and writing the checkpoint, if \
             --checkpoint was given); press Ctrl-C again to quit at once"
        );
    } else {
        exit_now();
    }
}

/// Removes any half-written temporary checkpoint and leaves without running
/// exit handlers, which other threads (a GPU driver's) may still be using.
fn exit_now() -> ! {
    let paths = CHECKPOINTS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    for path in &paths {
        if let Some(tmp) = temporary_path(path) {
            let _ = std::fs::remove_file(tmp);
        }
    }
    eprintln!("interrupted again: exiting now; the last complete checkpoint, if any, is unchanged");
    #[cfg(unix)]
    // SAFETY: `_exit` ends the process; nothing runs after it.
    unsafe {
        libc::_exit(EXIT_CODE)
    }
    #[cfg(not(unix))]
    std::process::exit(EXIT_CODE)
}
