//! The admin listener's I/O on smol: its own thread with a small executor, a task per
//! connection, each bounded by [`IO_TIMEOUT`] — a client that trickles its head cannot hold up
//! the others (or `/ready`). What it answers is the shared protocol, [`upkeep_runtime::admin`];
//! counters come from the workers as snapshots over their control channels, collected on smol's
//! blocking pool so waiting for the workers never stalls this executor.

use async_executor::LocalExecutor;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, future};
use std::io;
use std::thread::JoinHandle;
use std::time::Duration;
use upkeep_core::Address;
use upkeep_runtime::accept::{AfterError, after_error};
use upkeep_runtime::admin::{self, Head, IO_TIMEOUT, Operator};
use upkeep_runtime::listen::Bound;

use crate::listener::Listener;
use crate::proxy::WorkerControl;

/// A running admin listener; dropping it stops the thread and removes a Unix socket file.
#[derive(Debug)]
pub(crate) struct Admin {
    pub(crate) addr: Address,
    /// The bound address, kept to remove a Unix socket file at stop while it is still ours.
    bound: Bound,
    /// Closed to stop the thread.
    stop: Option<async_channel::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Admin {
    /// Binds `addr` and starts serving it.
    pub(crate) fn start(addr: &Address, operator: Operator<WorkerControl>) -> io::Result<Admin> {
        let mut bound = Bound::bind(addr)?;
        let addr = bound.address();
        let listener = match bound.for_worker().and_then(Listener::register) {
            Ok(listener) => listener,
            Err(e) => {
                bound.remove_socket_file();
                return Err(e);
            }
        };
        // The thread's copy is the one that serves; ours would keep the socket open past stop.
        bound.close();
        let (stop, stopped) = async_channel::bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name("upkeep-smol-admin".into())
            .spawn(move || {
                let ex = LocalExecutor::new();
                let serve = accept_loop(&ex, listener, operator);
                let stopped = async {
                    let _ = stopped.recv().await;
                };
                async_io::block_on(ex.run(future::or(stopped, serve)));
            })?;
        Ok(Admin {
            addr,
            bound,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.bound.remove_socket_file();
    }
}

async fn accept_loop(
    ex: &LocalExecutor<'_>,
    listener: Listener,
    operator: Operator<WorkerControl>,
) {
    loop {
        let op = operator.clone();
        let served = match &listener {
            Listener::Tcp(l) => l.accept().await.map(|(s, _)| ex.spawn(serve(s, op))),
            Listener::Unix(l) => l.accept().await.map(|(s, _)| ex.spawn(serve(s, op))),
        };
        match served {
            Ok(task) => task.detach(),
            // The workers' accept policy: wait, skip, or pause on a shortage.
            Err(e) => match after_error(&e) {
                AfterError::Wait | AfterError::Next => {}
                AfterError::Pause(pause) => {
                    async_io::Timer::after(pause).await;
                }
            },
        }
    }
}

/// One admin connection: read the head (within [`IO_TIMEOUT`] of the accept), answer, write
/// the answer (within [`IO_TIMEOUT`] again), close.
async fn serve(mut s: impl AsyncRead + AsyncWrite + Unpin, operator: Operator<WorkerControl>) {
    let served = async {
        let mut head = Head::new();
        let mut buf = [0u8; 1024];
        within(IO_TIMEOUT, async {
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 || head.push(&buf[..n]) {
                    return Ok(());
                }
            }
        })
        .await?;
        let response = smol::unblock(move || admin::answer(head.bytes(), &operator)).await;
        within(IO_TIMEOUT, async {
            s.write_all(&response).await?;
            s.flush().await
        })
        .await
    };
    if let Err(e) = served.await {
        log::debug!("admin: {e}");
    }
}

/// `io` unless `limit` passes first.
async fn within(limit: Duration, io: impl Future<Output = io::Result<()>>) -> io::Result<()> {
    let timeout = async {
        async_io::Timer::after(limit).await;
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "admin client too slow",
        ))
    };
    future::or(io, timeout).await
}
