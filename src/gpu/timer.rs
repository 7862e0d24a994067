//! GPU time of a span of recorded work, from timestamp queries.

use super::context::GpuContext;

/// Measures the GPU time of a span of recorded work on the device's own
/// clock: [`GpuTimer::begin`] and [`GpuTimer::end`] bracket the dispatches
/// recorded between them, and [`GpuTimer::seconds`] reads the span back once
/// it has run. One span at a time; marking again starts a new one.
///
/// Each mark is an empty compute pass that writes one timestamp, so only
/// `TIMESTAMP_QUERY` is needed (not timestamps inside encoders or passes)
/// and the dispatches' own passes are recorded as always. On Vulkan both
/// marks are written at the bottom of the pipe, once every earlier command
/// has finished, so the span is the bracketed work (and gaps within it).
pub struct GpuTimer<'a> {
    ctx: &'a GpuContext,
    queries: wgpu::QuerySet,
    /// The two resolved timestamps (ticks), read back by `seconds`.
    resolved: wgpu::Buffer,
    state: Marks,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Marks {
    None,
    Begun,
    Ended,
}

impl GpuContext {
    /// A timer of spans of recorded work on the GPU's clock, or `None` where
    /// the device has no timestamp queries (`TIMESTAMP_QUERY` not in
    /// [`GpuContext::features`]). Its query set and resolve buffer are made
    /// here, so code that never asks for a timer creates nothing.
    pub fn gpu_timer(&self) -> Option<GpuTimer<'_>> {
        if !self.features.contains(wgpu::Features::TIMESTAMP_QUERY) {
            return None;
        }
        let queries = self.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("gpu timer"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        });
        let resolved = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("gpu timer"),
            size: 2 * wgpu::QUERY_SIZE as u64,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        Some(GpuTimer {
            ctx: self,
            queries,
            resolved,
            state: Marks::None,
        })
    }
}

impl GpuTimer<'_> {
    /// Starts a span: dispatches recorded after this call are in it.
    pub fn begin(&mut self) {
        self.mark(0);
        self.state = Marks::Begun;
    }

    /// Ends the span begun by [`GpuTimer::begin`].
    pub fn end(&mut self) {
        assert_eq!(self.state, Marks::Begun, "GpuTimer::end without begin");
        self.mark(1);
        self.state = Marks::Ended;
    }

    /// Seconds between the marks on the GPU clock. Submits pending work and
    /// waits for it (a readback), so call it after the span's work.
    pub fn seconds(&self) -> f64 {
        assert_eq!(self.state, Marks::Ended, "GpuTimer::seconds before end");
        self.ctx
            .record(|encoder| encoder.resolve_query_set(&self.queries, 0..2, &self.resolved, 0));
        let bytes = self
            .ctx
            .read_back_raw(&self.resolved, 0, 2 * wgpu::QUERY_SIZE as u64);
        let ticks: [u64; 2] = bytemuck::pod_read_unaligned(&bytes);
        // Nanoseconds per tick; a clock that stepped back reads as zero.
        let period = f64::from(self.ctx.queue.get_timestamp_period());
        ticks[1].saturating_sub(ticks[0]) as f64 * period * 1e-9
    }

    fn mark(&self, index: u32) {
        self.ctx.record(|encoder| {
            encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("gpu timer"),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &self.queries,
                    beginning_of_pass_write_index: (index == 0).then_some(0),
                    end_of_pass_write_index: (index == 1).then_some(1),
                }),
            });
        });
    }
}

impl crate::backend::SpanTimer for GpuTimer<'_> {
    fn begin(&mut self) {
        GpuTimer::begin(self);
    }

    fn end(&mut self) {
        GpuTimer::end(self);
    }

    fn seconds(&mut self) -> f64 {
        GpuTimer::seconds(self)
    }
}
