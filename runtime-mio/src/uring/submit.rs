//! Submitting to the ring when it pushes back: a full submission queue is submitted to make
//! room, and a submission the kernel refuses with `EBUSY` — the completion queue overflowed
//! and its backlog cannot be flushed until completions are taken (`IORING_FEAT_NODROP`) —
//! takes the completions waiting in the queue into a backlog for the loop, then tries again.
//! Without that, a batch that fills the completion queue while it queues more work would spin
//! forever on such a kernel: the SQ stays full because every submit says `EBUSY`, and nobody
//! takes a completion. Errors that persist end the worker (the caller's choice), as a failing
//! `io_uring_enter` does.

use std::io;
use std::time::Duration;

use io_uring::{IoUring, squeue};

/// A completion as the loop handles it: user data, result, flags.
pub(crate) type Cqe = (u64, i32, u32);

/// Takes every completion waiting in the queue into `backlog`, in order.
pub(crate) fn reap_into(ring: &mut IoUring, backlog: &mut Vec<Cqe>) {
    backlog.extend(
        ring.completion()
            .map(|c| (c.user_data(), c.result(), c.flags())),
    );
}

/// Submits what is queued. `EBUSY`: completions are taken into `backlog` and it tries again;
/// `EINTR`: again. Short of memory or resources for the moment (`EAGAIN`, `ENOMEM`): waits
/// a millisecond and tries again, as the loop's `io_uring_enter` does (a worker that gave up
/// would drop every connection it holds). Other errors are returned.
pub(crate) fn submit(ring: &mut IoUring, backlog: &mut Vec<Cqe>) -> io::Result<usize> {
    loop {
        match ring.submit() {
            Ok(n) => return Ok(n),
            Err(e) => match e.raw_os_error() {
                Some(libc::EBUSY) => reap_into(ring, backlog),
                Some(libc::EINTR) => {}
                Some(libc::EAGAIN | libc::ENOMEM) => std::thread::sleep(Duration::from_millis(1)),
                _ => return Err(e),
            },
        }
    }
}

/// Queues `entry`, submitting what is queued first while the submission queue is full
/// ([`submit`]).
///
/// # Safety
/// Every pointer in `entry` must stay valid until its completion.
pub(crate) unsafe fn push(
    ring: &mut IoUring,
    backlog: &mut Vec<Cqe>,
    entry: &squeue::Entry,
) -> io::Result<()> {
    loop {
        // SAFETY: the caller's contract.
        if unsafe { ring.submission().push(entry) }.is_ok() {
            return Ok(());
        }
        submit(ring, backlog)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use io_uring::opcode;

    /// A ring with a 2-entry SQ and a 4-entry CQ takes 64 no-ops in a row without the loop
    /// reaping in between (the completion queue overflows many times over): `push` and
    /// `submit` lose none, repeat none, and the completions come out in order. A kernel that
    /// answers the overflow with `EBUSY` (as io_uring did when the backlog was introduced)
    /// makes `submit` take them aside; before, `push` spun forever there. Linux 6.18 flushes
    /// the overflow itself and never said `EBUSY` in this test.
    #[test]
    fn pushing_past_a_full_completion_queue_loses_no_completion() {
        const N: u64 = 64;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut ring = match IoUring::builder().setup_cqsize(4).build(2) {
                Ok(ring) => ring,
                Err(e) => {
                    // No io_uring here (a sandbox): nothing to check.
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            let mut backlog = Vec::new();
            for i in 0..N {
                let nop = opcode::Nop::new().build().user_data(i);
                // SAFETY: a no-op carries no pointer.
                unsafe { push(&mut ring, &mut backlog, &nop) }.unwrap();
            }
            while (backlog.len() as u64) < N {
                submit(&mut ring, &mut backlog).unwrap();
                ring.submitter().submit_and_wait(0).ok();
                reap_into(&mut ring, &mut backlog);
            }
            let _ = tx.send(Ok(backlog));
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(done)) => {
                let ids: Vec<u64> = done.iter().map(|c| c.0).collect();
                assert_eq!(
                    ids,
                    (0..N).collect::<Vec<_>>(),
                    "every no-op once, in order"
                );
                assert!(done.iter().all(|c| c.1 == 0));
            }
            Ok(Err(e)) => eprintln!("skipped: io_uring is not available here: {e}"),
            Err(_) => panic!("pushing to a ring whose completion queue overflowed hung"),
        }
    }
}
