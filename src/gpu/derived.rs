//! Buffers computed from another buffer's contents and kept for a later use
//! in the same step: a convolution's zero-padded input, made by its forward
//! and read again by its weight gradient. Each stays valid until its source
//! is next written (the context reports every write: dispatch outputs,
//! copies, uploads), and all are dropped when a step ends.

use std::sync::{Arc, Mutex};

use super::context::GpuBuffer;

/// What a derived buffer is, besides its source: a name and the numbers
/// that shape it.
pub type DerivedKey = (&'static str, [usize; 6]);

/// The derived buffers a context keeps.
#[derive(Default)]
pub(super) struct DerivedBuffers {
    entries: Mutex<Vec<Entry>>,
}

struct Entry {
    source: u64,
    /// The buffer the source's bytes lie in (itself, or a view's parent).
    root: u64,
    key: DerivedKey,
    buffer: Arc<GpuBuffer>,
}

/// The id of the buffer `buffer`'s bytes lie in.
fn root_id(buffer: &GpuBuffer) -> u64 {
    buffer
        .parent()
        .map_or(buffer.id(), |parent| root_id(parent))
}

impl DerivedBuffers {
    /// Keeps `derived`, computed from `source`'s current contents, under
    /// `key` (replacing what was kept there).
    pub fn keep(&self, source: &GpuBuffer, key: DerivedKey, derived: Arc<GpuBuffer>) {
        let mut entries = self.entries.lock().unwrap();
        entries.retain(|e| !(e.source == source.id() && e.key == key));
        entries.push(Entry {
            source: source.id(),
            root: root_id(source),
            key,
            buffer: derived,
        });
    }

    /// The buffer kept for `source` under `key`, if `source` has not been
    /// written since; it is no longer kept.
    pub fn take(&self, source: &GpuBuffer, key: DerivedKey) -> Option<Arc<GpuBuffer>> {
        let mut entries = self.entries.lock().unwrap();
        let at = entries
            .iter()
            .position(|e| e.source == source.id() && e.key == key)?;
        Some(entries.swap_remove(at).buffer)
    }

    /// Drops what was derived from any buffer sharing `written`'s bytes.
    pub fn forget_written(&self, written: &GpuBuffer) {
        let mut entries = self.entries.lock().unwrap();
        if !entries.is_empty() {
            let root = root_id(written);
            entries.retain(|e| e.root != root);
        }
    }

    /// Drops everything kept.
    pub fn clear(&self) {
        self.entries.lock().unwrap().clear();
    }
}
