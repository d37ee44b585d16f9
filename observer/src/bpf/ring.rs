//! The kernel's ring buffers as typed records, and the one loop that drains them.
//!
//! Each ring carries records of one type `T` (a `#[repr(C)]` struct from `observer_common` the
//! programs wrote), optionally followed by bytes (the payload ring: a header, then the segment's
//! bytes). This is the only place that turns ring bytes into values.
use std::{marker::PhantomData, time::Duration};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

/// Ask a pump to drain its ring now and say when it did.
pub type DrainRequest = tokio::sync::oneshot::Sender<()>;

/// A type the programs write at the start of each record of a ring.
///
/// # Safety
/// Plain old data: `#[repr(C)]`, `Copy`, no padding-dependent invariants, and every bit pattern a
/// valid value, since a record is read from bytes the kernel wrote.
pub unsafe trait RingRecord: Copy {}

// SAFETY: #[repr(C)] structs of integers and byte arrays, written whole by the programs.
unsafe impl RingRecord for observer_common::conn::ConnEvent {}
// SAFETY: as above.
unsafe impl RingRecord for observer_common::http::PayloadHeader {}
// SAFETY: as above.
unsafe impl RingRecord for observer_common::trace::TraceRecord {}

/// A ring buffer of `T` records.
pub struct Ring<T> {
    fd: AsyncFd<RingBuf<MapData>>,
    _record: PhantomData<fn() -> T>,
}

/// The records waiting in a ring, oldest first.
pub struct Batch<'a, T> {
    ring: &'a mut RingBuf<MapData>,
    _record: PhantomData<fn() -> T>,
}

impl<T: RingRecord> Batch<'_, T> {
    /// Hands each waiting record to `f`: its `T`, and the bytes after it. Records shorter than a
    /// `T` (our programs never write one) are skipped.
    pub fn for_each(&mut self, mut f: impl FnMut(T, &[u8])) {
        while let Some(item) = self.ring.next() {
            if item.len() < size_of::<T>() {
                continue;
            }
            // SAFETY: the programs write a `T` (a RingRecord: any bit pattern is a valid value)
            // at the start of each record of this ring, and there are at least size_of::<T>()
            // bytes; read_unaligned copes with the ring's 8-byte alignment.
            let value = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<T>()) };
            f(value, &item[size_of::<T>()..]);
        }
    }
}

impl<T: RingRecord> Ring<T> {
    pub fn new(ring: RingBuf<MapData>, name: &str) -> Result<Self> {
        #[expect(deprecated, reason = "the RingBuf owns its fd for as long as AsyncFd holds it, which is the soundness condition")]
        let fd = AsyncFd::with_interest(ring, tokio::io::Interest::READABLE).with_context(|| format!("watching the {name} ring buffer"))?;
        Ok(Self { fd, _record: PhantomData })
    }

    /// Drains the ring for as long as the daemon runs: when the kernel wakes us (it does for a
    /// backlog, not per record), every `poll` if given (the bound on how stale the view may get),
    /// and on each request from `requests` (answered once drained). `handle` gets each batch of
    /// waiting records. Returns only on an error of the ring's descriptor.
    pub async fn pump(
        mut self,
        poll: Option<Duration>,
        mut requests: Option<tokio::sync::mpsc::Receiver<DrainRequest>>,
        mut handle: impl FnMut(&mut Batch<'_, T>),
    ) -> Result<()> {
        let mut tick = tokio::time::interval(poll.unwrap_or(Duration::from_secs(3600)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut drain = |ring: &mut RingBuf<MapData>| handle(&mut Batch { ring, _record: PhantomData });
        loop {
            tokio::select! {
                g = self.fd.readable_mut() => {
                    let mut g = g.context("waiting for ring buffer records")?;
                    drain(g.get_inner_mut());
                    g.clear_ready();
                }
                _ = tick.tick(), if poll.is_some() => drain(self.fd.get_mut()),
                Some(done) = async { requests.as_mut()?.recv().await }, if requests.is_some() => {
                    drain(self.fd.get_mut());
                    let _ = done.send(());
                }
            }
        }
    }
}
