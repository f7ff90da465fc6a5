//! The reverse proxy: worker threads, each a single-threaded executor driving its own [`Core`].

use async_channel::{Receiver, Sender};
use futures_lite::future;
use std::io;
use std::thread::JoinHandle;
use std::time::Duration;
use upkeep_core::{Address, Config, Core, ListenerId};

use upkeep_runtime::listen::{Bound, Listening};

use crate::driver::{self, Driver};
use crate::listener::Listener;

/// The async reverse proxy: `upkeep-core` on smol's reactor and executors.
///
/// ```no_run
/// use upkeep_core::{Address, Config};
/// let config = Config::simple(
///     Address::parse("127.0.0.1:8080").unwrap(),
///     vec![Address::parse("127.0.0.1:9001").unwrap()],
/// );
/// let proxy = upkeep_smol::Proxy::start(config).unwrap();
/// println!("listening on {:?}", proxy.listen_addrs());
/// proxy.wait();
/// ```
#[derive(Debug)]
pub struct Proxy;

/// What a worker is told from outside.
#[derive(Debug, Clone, Copy)]
enum Control {
    /// Stop accepting, finish in-flight exchanges (up to the shutdown timeout), then exit.
    Drain,
    /// Exit now, closing every connection.
    Stop,
}

/// A running proxy: its bound addresses and the controls to stop it.
#[derive(Debug)]
pub struct ProxyHandle {
    addrs: Vec<Address>,
    /// The bound addresses, kept (their own descriptors closed) to remove Unix socket files at
    /// exit while they are still ours.
    bound: Vec<Bound>,
    controls: Vec<Sender<Control>>,
    workers: Vec<JoinHandle<()>>,
}

impl Proxy {
    /// Validates `config`, binds every listener (a TCP port 0 is resolved once and shared by
    /// every worker's SO_REUSEPORT socket), starts `config.runtime.workers` worker threads (0 =
    /// one per CPU) and returns once they are all serving.
    pub fn start(config: Config) -> io::Result<ProxyHandle> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let workers = upkeep_runtime::workers::count(config.runtime.workers);
        let shutdown_timeout = config.runtime.shutdown_timeout;

        // Bind everything before starting anything, so a bad address fails `start` cleanly.
        let mut bound = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            match Bound::bind(&l.addr) {
                Ok(b) => bound.push(b),
                Err(e) => {
                    remove_unix_files(&bound);
                    return Err(e);
                }
            }
        }
        let addrs: Vec<Address> = bound.iter().map(Bound::address).collect();
        let mut per_worker: Vec<Vec<Listening>> = Vec::with_capacity(workers);
        for _ in 0..workers {
            match bound.iter_mut().map(Bound::for_worker).collect() {
                Ok(sockets) => per_worker.push(sockets),
                Err(e) => {
                    remove_unix_files(&bound);
                    return Err(e);
                }
            }
        }
        // The workers hold every socket now; ours would keep a drained listener queueing
        // connections nobody accepts.
        for b in &mut bound {
            b.close();
        }

        let mut controls = Vec::new();
        let mut handles = Vec::new();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<()>>();
        for (w, sockets) in per_worker.into_iter().enumerate() {
            let core = match Core::new(config.clone(), w as u64) {
                Ok(core) => core,
                Err(e) => {
                    stop_all(&controls, handles);
                    remove_unix_files(&bound);
                    return Err(io::Error::new(io::ErrorKind::InvalidInput, e.to_string()));
                }
            };
            let (tx, rx) = async_channel::unbounded();
            controls.push(tx);
            let ready = ready_tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("upkeep-smol-{w}"))
                .spawn(move || worker(core, sockets, rx, shutdown_timeout, ready))?;
            handles.push(handle);
        }
        drop(ready_tx);
        for _ in 0..handles.len() {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    stop_all(&controls, handles);
                    remove_unix_files(&bound);
                    return Err(e);
                }
                Err(_) => {
                    stop_all(&controls, handles);
                    remove_unix_files(&bound);
                    return Err(io::Error::other("a worker thread died while starting"));
                }
            }
        }
        Ok(ProxyHandle {
            addrs,
            bound,
            controls,
            workers: handles,
        })
    }
}

fn stop_all(controls: &[Sender<Control>], handles: Vec<JoinHandle<()>>) {
    for c in controls {
        let _ = c.try_send(Control::Stop);
    }
    for h in handles {
        let _ = h.join();
    }
}

impl ProxyHandle {
    /// The bound listener addresses, in configuration order (port 0 replaced by the real one).
    pub fn listen_addrs(&self) -> &[Address] {
        &self.addrs
    }

    /// Graceful shutdown: stop accepting, close idle connections, let in-flight exchanges finish
    /// (bounded by `runtime.shutdown_timeout`). Returns at once; [`ProxyHandle::wait`] joins.
    /// Calling it again changes nothing (use [`ProxyHandle::shutdown`] to stop at once).
    pub fn drain(&self) {
        for c in &self.controls {
            let _ = c.try_send(Control::Drain);
        }
    }

    /// Stops now: every connection is closed, the workers are joined. (Dropping the handle
    /// does the same.)
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    /// Waits until the workers exit (after [`ProxyHandle::drain`], or forever).
    pub fn wait(mut self) {
        for h in std::mem::take(&mut self.workers) {
            let _ = h.join();
        }
        remove_unix_files(&self.bound);
    }

    fn stop_now(&mut self) {
        if self.workers.is_empty() {
            return;
        }
        stop_all(&self.controls, std::mem::take(&mut self.workers));
        remove_unix_files(&self.bound);
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Removes the Unix socket files of `bound` that are still the ones this process bound (another
/// proxy may have taken a path over since, see [`upkeep_runtime::listen::SocketFile`]).
fn remove_unix_files(bound: &[Bound]) {
    for b in bound {
        b.remove_socket_file();
    }
}

fn worker(
    core: Core,
    sockets: Vec<Listening>,
    control: Receiver<Control>,
    shutdown_timeout: Duration,
    ready: std::sync::mpsc::Sender<io::Result<()>>,
) {
    driver::run(async move {
        let (d, _timer) = Driver::start(core);
        let mut accepts = Vec::new();
        for (i, socket) in sockets.into_iter().enumerate() {
            match Listener::register(socket) {
                Ok(l) => accepts.push(driver::spawn_accept(d.clone(), ListenerId(i as u32), l)),
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            }
        }
        let _ = ready.send(Ok(()));
        drop(ready);
        match control.recv().await {
            Ok(Control::Drain) => {
                drop(accepts);
                d.borrow_mut().begin_drain();
                // Only an explicit stop (or the handle gone) cuts the drain short: a second
                // `drain()` — two parts of an application shutting down — must not turn the
                // graceful drain into an abort of the exchanges in flight.
                let stop = async { while let Ok(Control::Drain) = control.recv().await {} };
                let timeout = async {
                    async_io::Timer::after(shutdown_timeout).await;
                };
                future::or(driver::drained(&d), future::or(stop, timeout)).await;
            }
            Ok(Control::Stop) | Err(_) => {}
        }
        d.borrow_mut().close_all();
    });
}
