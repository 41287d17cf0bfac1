//! Device memory of the CUDA engine: activations, the KV cache, and the
//! workspace of a pass's intermediates.

use super::ok;
use crate::engine::Rows;
use cudarc::driver::{CudaSlice, CudaStream, CudaView};
use std::sync::Arc;

/// A buffer of `n` elements (at least one: CUDA refuses empty allocations)
/// that the next kernel overwrites entirely, so it is not zeroed: no memset
/// launch per intermediate.
pub(crate) fn scratch<T: cudarc::driver::DeviceRepr>(
    stream: &Arc<CudaStream>,
    n: usize,
) -> CudaSlice<T> {
    // SAFETY: every caller's next kernel or copy writes all n elements
    // before anything reads them.
    ok(unsafe { stream.alloc::<T>(n.max(1)) })
}

/// Intermediate buffers of a pass, kept between passes so that a layer costs
/// kernel launches only, not stream-ordered allocations and frees.
#[derive(Clone, Copy)]
pub(crate) enum Buf {
    Norm,
    Qkv,
    Attn,
    Out,
    GateUp,
    Act,
    Logits,
    /// Split attention's per-chunk partial results.
    Partials,
}

#[derive(Default)]
pub(crate) struct Workspace {
    bufs: [Option<CudaSlice<f32>>; 8],
}

impl Workspace {
    /// Buffer `b` with room for at least `n` floats (contents undefined);
    /// give it back with [`Workspace::put`].
    pub(crate) fn take(&mut self, stream: &Arc<CudaStream>, b: Buf, n: usize) -> CudaSlice<f32> {
        match self.bufs[b as usize].take() {
            Some(buf) if buf.len() >= n => buf,
            // Grown by half again, so that slowly growing passes do not
            // reallocate every time.
            _ => scratch(stream, n + n / 2),
        }
    }

    pub(crate) fn put(&mut self, b: Buf, buf: CudaSlice<f32>) {
        self.bufs[b as usize] = Some(buf);
    }
}

/// Device activations: `rows x width` f32, row-major (the buffer may be longer).
pub struct DeviceActs {
    pub(crate) buf: CudaSlice<f32>,
    pub(crate) rows: usize,
    width: usize,
}

impl DeviceActs {
    /// Uninitialised: the caller fills every row.
    pub(crate) fn new(stream: &Arc<CudaStream>, rows: usize, width: usize) -> DeviceActs {
        let buf = scratch(stream, rows * width);
        DeviceActs { buf, rows, width }
    }

    pub(crate) fn view(&self) -> CudaView<'_, f32> {
        self.buf.slice(..self.rows * self.width)
    }

    /// Copies rows `from..` of `self` then all of `other` into a new buffer.
    fn joined(&self, from: usize, other: Option<&DeviceActs>) -> DeviceActs {
        let stream = self.buf.stream().clone();
        let extra = other.map_or(0, |o| o.rows);
        let mut out = DeviceActs::new(&stream, self.rows - from + extra, self.width);
        let mine = (self.rows - from) * self.width;
        if mine > 0 {
            let src = self.buf.slice(from * self.width..self.rows * self.width);
            ok(stream.memcpy_dtod(&src, &mut out.buf.slice_mut(..mine)));
        }
        if let Some(o) = other.filter(|o| o.rows > 0) {
            let n = o.rows * o.width;
            ok(stream.memcpy_dtod(&o.buf.slice(..n), &mut out.buf.slice_mut(mine..mine + n)));
        }
        out
    }
}

impl Rows for DeviceActs {
    fn rows(&self) -> usize {
        self.rows
    }
    fn append(&mut self, other: Self) {
        *self = self.joined(0, Some(&other));
    }
    fn truncate(&mut self, rows: usize) {
        self.rows = self.rows.min(rows);
    }
    fn split_off(&mut self, at: usize) -> Self {
        let tail = self.joined(at, None);
        self.rows = at;
        tail
    }
    fn tail(&self, from: usize) -> Self {
        self.joined(from, None)
    }
}

/// Per-layer K/V on the device, position-major, grown on demand up to the
/// session's `capacity` positions (`kv_grown`): a session asking for a
/// model's whole context (128k positions for Llama 3) holds only what it
/// uses. The session tracks each layer's length, so truncation copies
/// nothing.
pub struct CudaKv {
    pub(crate) k: Vec<CudaSlice<f32>>,
    pub(crate) v: Vec<CudaSlice<f32>>,
    /// Positions each layer's buffers hold now.
    pub(crate) allocated: Vec<usize>,
    pub(crate) capacity: usize,
}

/// Positions a layer's K/V buffers grow to when `needed` exceed the
/// `current` ones: at least double (so appends cost amortised O(1) copies),
/// at least `KV_MIN_POSITIONS`, at most `capacity`.
pub(crate) fn kv_grown(current: usize, needed: usize, capacity: usize) -> usize {
    if needed <= current {
        return current;
    }
    needed
        .max(current * 2)
        .max(KV_MIN_POSITIONS)
        .min(capacity.max(needed))
}

/// A new session's K/V buffers start with this many positions.
pub(crate) const KV_MIN_POSITIONS: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_buffers_grow_geometrically_up_to_the_capacity() {
        // A 128k-position session starts small.
        assert_eq!(kv_grown(0, 1, 131_072), KV_MIN_POSITIONS);
        assert_eq!(kv_grown(256, 256, 131_072), 256);
        assert_eq!(kv_grown(256, 257, 131_072), 512);
        assert_eq!(kv_grown(512, 2000, 131_072), 2000);
        assert_eq!(kv_grown(65_536, 65_537, 100_000), 100_000);
        // Never below what a pass needs, never above the capacity.
        assert_eq!(kv_grown(0, 40, 40), 40);
        let mut cur = 0;
        let mut grows = 0;
        for pos in 1..=131_072 {
            let next = kv_grown(cur, pos, 131_072);
            assert!(next >= pos && next <= 131_072);
            if next != cur {
                grows += 1;
                cur = next;
            }
        }
        assert!(grows <= 10, "{grows} reallocations for 128k positions");
    }
}
