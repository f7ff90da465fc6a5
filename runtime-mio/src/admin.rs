//! The admin listener's I/O on mio: its own thread and its own small mio loop, serving one
//! connection at a time, so it never touches the request path. What it answers
//! (`/metrics`, `/status`, `/ready`) is the shared protocol, [`upkeep_runtime::admin`]; counters
//! come from the workers as snapshots over their command channels.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};
use upkeep_core::Address;
use upkeep_runtime::admin::{self, Head, IO_TIMEOUT, Operator};

use upkeep_runtime::listen::Bound;

use crate::net::{Listener, Stream};
use crate::worker::Control;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);

/// A running admin listener.
#[derive(Debug)]
pub(crate) struct Admin {
    pub(crate) addr: Address,
    /// The bound address, kept to remove a Unix socket file at stop while it is still ours.
    bound: Bound,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Admin {
    pub(crate) fn start(addr: &Address, operator: Operator<Control>) -> io::Result<Admin> {
        let mut bound = Bound::bind(addr)?;
        let addr = bound.address();
        let mut listener = Listener::new(bound.for_worker()?);
        // The thread's copy is the one that serves; ours would keep the socket open past stop.
        bound.close();
        let mut poll = Poll::new()?;
        listener.register(poll.registry(), LISTENER)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("upkeep-admin".into())
            .spawn(move || {
                let mut events = Events::with_capacity(16);
                while !stop2.load(Ordering::Acquire) {
                    if let Err(e) = poll.poll(&mut events, None)
                        && e.kind() != io::ErrorKind::Interrupted
                    {
                        log::error!("admin: poll failed: {e}");
                        return;
                    }
                    accept_all(&listener, &operator);
                }
            })?;
        Ok(Admin {
            addr,
            bound,
            waker,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and removes a Unix socket file.
    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.bound.remove_socket_file();
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_all(listener: &Listener, operator: &Operator<Control>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = serve(stream, operator) {
                    log::debug!("admin: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::warn!("admin: accept: {e}");
                return;
            }
        }
    }
}

fn serve(mut stream: Stream, operator: &Operator<Control>) -> io::Result<()> {
    stream.make_blocking(IO_TIMEOUT)?;
    // One deadline for the whole head, not a timeout per read: connections are served one at a
    // time, and a client trickling a byte just under every IO_TIMEOUT would otherwise hold the
    // admin thread (and every /ready health check behind it) for as long as it likes.
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut head = Head::new();
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request head not received in time",
            ));
        }
        // At least 1 ms: socket2 turns a sub-microsecond timeout into {0, 0}, which the kernel
        // reads as "no timeout at all".
        stream.set_read_timeout(left.max(Duration::from_millis(1)))?;
        let n = stream.read(&mut buf)?;
        if n == 0 || head.push(&buf[..n]) {
            break;
        }
    }
    stream.write_all(&admin::answer(head.bytes(), operator))
}
