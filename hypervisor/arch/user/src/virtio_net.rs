//! A virtio-net device for a ring-3 driver that does not wait for the device: `virtio-drivers`'
//! `VirtIONetRaw` with buffers this type owns. `VirtIONet::send` adds a frame, notifies and
//! spins until the device has used it; under TCG that spin waits for QEMU's I/O thread and
//! was most of a round trip (`cargo xtask bench net`, docs/networking.md). Here a transmit
//! queues the frame and returns; finished transmit buffers are taken back later.
//!
//! Why the safe API is sound: every buffer given to the device (`receive_begin`,
//! `transmit_begin`) is a heap allocation (the heap is DMA memory, `dma::init`) owned by this
//! type and not touched until the device hands it back (`poll_*`, then `*_complete` with that
//! same buffer, found by its token). None is ever freed while lent: they are leaked on drop
//! (the device may still use them until the kernel quiesces it).

use crate::dma::UserHal;
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::Transport;

/// Bytes per buffer besides the frame: room for the virtio-net header (10 or 12 bytes).
const HEADER_ROOM: usize = 16;

pub struct AsyncNet<T: Transport, const Q: usize> {
    raw: VirtIONetRaw<UserHal, T, Q>,
    /// Receive buffers the device holds, by token.
    rx: Vec<(u16, Box<[u8]>)>,
    /// Transmit buffers: free ones, and those the device holds (token, length lent).
    tx_free: Vec<Box<[u8]>>,
    tx_busy: Vec<(u16, usize, Box<[u8]>)>,
    buf_len: usize,
}

impl<T: Transport, const Q: usize> AsyncNet<T, Q> {
    /// Initialise the device with `rx_bufs` receive buffers (at most `Q`) and `tx_bufs`
    /// transmit buffers, for frames of up to `buf_len` bytes.
    pub fn new(transport: T, buf_len: usize, rx_bufs: usize, tx_bufs: usize) -> Option<Self> {
        let raw = VirtIONetRaw::new(transport).ok()?;
        let mut n = AsyncNet { raw, rx: Vec::new(), tx_free: Vec::new(), tx_busy: Vec::new(), buf_len };
        for _ in 0..rx_bufs.min(Q) {
            let b = vec![0u8; buf_len + HEADER_ROOM].into_boxed_slice();
            if !n.lend_rx(b) {
                return None;
            }
        }
        for _ in 0..tx_bufs.min(Q) {
            n.tx_free.push(vec![0u8; buf_len + HEADER_ROOM].into_boxed_slice());
        }
        Some(n)
    }

    pub fn mac_address(&self) -> [u8; 6] {
        self.raw.mac_address()
    }

    /// Give a receive buffer to the device (false: it refused; the buffer is kept aside).
    fn lend_rx(&mut self, mut b: Box<[u8]>) -> bool {
        // SAFETY: `b` is a heap (DMA) allocation now owned by `self.rx` and not accessed
        // until the device returns its token (`receive`); never freed while lent (Drop).
        match unsafe { self.raw.receive_begin(&mut b) } {
            Ok(token) => {
                self.rx.push((token, b));
                true
            }
            Err(_) => {
                self.tx_free.push(b); // not lent: any use is fine (same size)
                false
            }
        }
    }

    /// Whether a received frame waits.
    pub fn can_recv(&self) -> bool {
        self.raw.poll_receive().is_some()
    }

    /// Pass the next received frame (without the virtio header) to `f` and give the buffer
    /// back to the device. None: nothing received (or the device named a buffer it does not
    /// hold: nothing is read).
    pub fn receive<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let token = self.raw.poll_receive()?;
        let i = self.rx.iter().position(|(t, _)| *t == token)?;
        let (_, mut b) = self.rx.swap_remove(i);
        // SAFETY: `b` is the buffer lent with `token` (found by it).
        let r = match unsafe { self.raw.receive_complete(token, &mut b) } {
            Ok((hdr, len)) => hdr.checked_add(len).and_then(|end| b.get(hdr..end)).map(f),
            Err(_) => None,
        };
        self.lend_rx(b);
        r
    }

    /// Take back the transmit buffers the device has finished with.
    pub fn reclaim(&mut self) {
        while let Some(token) = self.raw.poll_transmit() {
            let Some(i) = self.tx_busy.iter().position(|(t, _, _)| *t == token) else { return };
            let (_, len, b) = self.tx_busy.swap_remove(i);
            // SAFETY: `b[..len]` is the buffer lent with `token` (found by it).
            let _ = unsafe { self.raw.transmit_complete(token, &b[..len]) };
            self.tx_free.push(b);
        }
    }

    /// Whether the device has finished every frame queued so far.
    pub fn idle_tx(&mut self) -> bool {
        self.reclaim();
        self.tx_busy.is_empty()
    }

    /// Whether a frame can be queued now (a free buffer and descriptors).
    pub fn can_send(&mut self) -> bool {
        self.reclaim();
        !self.tx_free.is_empty() && self.raw.can_send()
    }

    /// Queue a frame of `len` bytes that `fill` writes, notify the device and return without
    /// waiting for it. False: no room (the caller keeps the frame), or `len` is too large.
    pub fn transmit(&mut self, len: usize, fill: impl FnOnce(&mut [u8])) -> bool {
        if len > self.buf_len || !self.can_send() {
            return false;
        }
        let Some(mut b) = self.tx_free.pop() else { return false };
        let Ok(hdr) = self.raw.fill_buffer_header(&mut b) else {
            self.tx_free.push(b);
            return false;
        };
        fill(&mut b[hdr..hdr + len]);
        let n = hdr + len;
        // SAFETY: `b` is a heap (DMA) allocation now owned by `self.tx_busy` and not accessed
        // until the device returns its token (`reclaim`); never freed while lent (Drop).
        match unsafe { self.raw.transmit_begin(&b[..n]) } {
            Ok(token) => {
                self.tx_busy.push((token, n, b));
                true
            }
            Err(_) => {
                self.tx_free.push(b);
                false
            }
        }
    }
}

impl<T: Transport, const Q: usize> Drop for AsyncNet<T, Q> {
    fn drop(&mut self) {
        // The device may still read or write what it holds: leak it rather than free it.
        for (_, b) in self.rx.drain(..) {
            core::mem::forget(b);
        }
        for (_, _, b) in self.tx_busy.drain(..) {
            core::mem::forget(b);
        }
    }
}
