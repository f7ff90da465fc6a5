//! Fields of a submission queue entry that the io-uring crate (0.7.16) has no setter for.

use io_uring::squeue;

/// Where `optlen` lies in the kernel's 64-byte `struct io_uring_sqe`: a union with
/// `splice_fd_in`, `file_index` and `addr_len`, after `opcode` (0), `flags` (1), `ioprio`
/// (2), `fd` (4), `off` (8), `addr` (16), `len` (24), the op flags (28), `user_data` (32),
/// `buf_index`/`buf_group` (40) and `personality` (42).
const OPTLEN: usize = 44;

/// A multishot receive (`entry`, from `opcode::RecvMulti`) that ends once it has brought
/// `limit` bytes (its last completion then lacks `IORING_CQE_F_MORE`, as when it is
/// cancelled). Linux 6.17+ reads the limit from `optlen`; an older kernel refuses the entry
/// with `EINVAL` (it wanted that field zero), which tells the caller to go without.
///
/// The limit bounds what a receive brings on its own, before the loop sees the first of its
/// completions — up to 32 buffers on one wake-up otherwise.
pub(crate) fn with_total_limit(entry: squeue::Entry, limit: u32) -> squeue::Entry {
    // SAFETY: `squeue::Entry` is `#[repr(C)]` around the kernel's `io_uring_sqe`, 64 bytes
    // (`transmute` checks the size), whose fields and unions are all plain integers: any 64
    // bytes are a valid value, and the bytes written are the `u32` at `OPTLEN`. Not for speed:
    // the crate offers no other way to set that field.
    let mut raw: [u8; 64] = unsafe { std::mem::transmute::<squeue::Entry, [u8; 64]>(entry) };
    raw[OPTLEN..OPTLEN + 4].copy_from_slice(&limit.to_ne_bytes());
    // SAFETY: as above.
    unsafe { std::mem::transmute::<[u8; 64], squeue::Entry>(raw) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use io_uring::{opcode, types};

    /// The limit lands in `optlen` and nothing else changes (`user_data`, the one field the
    /// crate shows, included).
    #[test]
    fn total_limit_lands_in_optlen_alone() {
        let e = opcode::RecvMulti::new(types::Fd(7), 3)
            .build()
            .user_data(99);
        // SAFETY: as in `with_total_limit`.
        let before: [u8; 64] = unsafe { std::mem::transmute(e.clone()) };
        let limited = with_total_limit(e, 65536);
        assert_eq!(limited.get_user_data(), 99);
        // SAFETY: as in `with_total_limit`.
        let after: [u8; 64] = unsafe { std::mem::transmute(limited) };
        assert_eq!(after[OPTLEN..OPTLEN + 4], 65536u32.to_ne_bytes());
        assert_eq!(before[..OPTLEN], after[..OPTLEN]);
        assert_eq!(before[OPTLEN + 4..], after[OPTLEN + 4..]);
        assert_eq!(before[OPTLEN..OPTLEN + 4], [0; 4]);
        // The fd and the buffer group where the kernel reads them.
        assert_eq!(after[4..8], 7i32.to_ne_bytes());
        assert_eq!(after[40..42], 3u16.to_ne_bytes());
    }
}
