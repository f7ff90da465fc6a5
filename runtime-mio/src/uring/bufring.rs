//! A provided-buffer ring (`IORING_REGISTER_PBUF_RING`, Linux 5.19+): `count` buffers of
//! `size` bytes the kernel picks from for multishot receives (`IOSQE_BUFFER_SELECT`). A
//! completion names the buffer it filled (`IORING_CQE_F_BUFFER`, id in the upper 16 bits of the
//! flags); the loop copies the bytes into the core and gives the buffer back at once
//! ([`BufRing::recycle`]), publishing the new tail before the next submission
//! ([`BufRing::publish`]).

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::Submitter;
use io_uring::types::BufRingEntry;

pub(crate) struct BufRing {
    /// The ring of `count` entries (page-aligned, mmap'd), shared with the kernel.
    ring: NonNull<BufRingEntry>,
    ring_bytes: usize,
    /// The buffers themselves, `count * size` bytes (mmap'd).
    bufs: NonNull<u8>,
    bufs_bytes: usize,
    size: usize,
    count: u16,
    /// Our tail (entries added so far, wrapping), published with [`BufRing::publish`].
    tail: u16,
    dirty: bool,
}

fn map(bytes: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: an anonymous private mapping; no file, no aliasing.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(NonNull::new(p.cast()).expect("mmap returned null"))
}

impl BufRing {
    /// Maps and registers a ring of `count` (a power of two, at most 32768) buffers of `size`
    /// bytes as buffer group `bgid`, all of them handed to the kernel.
    pub(crate) fn new(
        submitter: &Submitter<'_>,
        count: u16,
        size: usize,
        bgid: u16,
    ) -> io::Result<BufRing> {
        assert!(count.is_power_of_two());
        let ring_bytes = usize::from(count) * std::mem::size_of::<BufRingEntry>();
        let bufs_bytes = usize::from(count) * size;
        let ring = map(ring_bytes)?.cast::<BufRingEntry>();
        let bufs = map(bufs_bytes)?;
        let mut br = BufRing {
            ring,
            ring_bytes,
            bufs,
            bufs_bytes,
            size,
            count,
            tail: 0,
            dirty: false,
        };
        // SAFETY: the ring and the buffers stay mapped until `self` drops, and the driver
        // drops its io_uring (which holds the registration) before this.
        unsafe {
            submitter.register_buf_ring_with_flags(ring.as_ptr() as u64, count, bgid, 0)?;
        }
        for bid in 0..count {
            br.recycle(bid);
        }
        br.publish();
        Ok(br)
    }

    /// The first `len` bytes of buffer `bid`, as the kernel filled them.
    pub(crate) fn get(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < self.count && len <= self.size);
        // SAFETY: in bounds of the mapping; the kernel wrote these bytes before posting the
        // completion that named `bid`, and does not touch the buffer again until it is
        // recycled.
        unsafe {
            std::slice::from_raw_parts(self.bufs.as_ptr().add(usize::from(bid) * self.size), len)
        }
    }

    /// Gives buffer `bid` back to the kernel (visible after [`BufRing::publish`]).
    pub(crate) fn recycle(&mut self, bid: u16) {
        let mask = self.count - 1;
        // SAFETY: index in bounds; the kernel only reads entries between its head and our
        // published tail, and this one is past the published tail.
        unsafe {
            let e = &mut *self.ring.as_ptr().add(usize::from(self.tail & mask));
            e.set_addr(self.bufs.as_ptr().add(usize::from(bid) * self.size) as u64);
            e.set_len(self.size as u32);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        self.dirty = true;
    }

    /// Publishes the entries recycled since the last call (a release store of the tail).
    pub(crate) fn publish(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        // SAFETY: the tail field overlays entry 0's `resv`; the kernel reads it with an acquire
        // load, so the entries written before are visible to it.
        unsafe {
            let tail = BufRingEntry::tail(self.ring.as_ptr()) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: our own mappings. (The driver drops the io_uring first.)
        unsafe {
            libc::munmap(self.ring.as_ptr().cast(), self.ring_bytes);
            libc::munmap(self.bufs.as_ptr().cast(), self.bufs_bytes);
        }
    }
}
