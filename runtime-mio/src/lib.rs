//! upkeep-mio: the `upkeep` reverse proxy — [`upkeep_core`] driven by one mio event loop per
//! worker thread.
//!
//! Each worker owns a `mio::Poll`, a [`Core`](upkeep_core::Core) (and so its own keepalive pool,
//! like an nginx worker process), its own `SO_REUSEPORT` socket per TCP listen address (the
//! kernel spreads accepts across workers) and a clone of every Unix listening socket. Workers
//! share nothing on the request path; the main thread reaches them through a command channel
//! and a `mio::Waker` (drain, stop, counter snapshots, log reopening).
//!
//! ```no_run
//! use upkeep_core::{Address, Config, Shared as Ledger};
//!
//! let config = Config::simple(
//!     Address::parse("127.0.0.1:8080").unwrap(),
//!     vec![Address::parse("127.0.0.1:9001").unwrap()],
//! );
//! let proxy = upkeep_mio::Proxy::start(config)?;
//! println!("listening on {}", proxy.listen_addrs()[0]);
//! proxy.drain(); // graceful: finish in-flight requests
//! proxy.wait();
//! # Ok::<(), std::io::Error>(())
//! ```

// The audited `unsafe` of the epoll worker (reading into uninitialised spare capacity) lives in
// `upkeep_runtime::io::recv_into`; the io_uring worker's (buffers shared with the kernel) in
// `uring`, allowed there alone.
#![deny(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

mod admin;
mod net;
// io_uring shares memory with the kernel: submission entries point at buffers it fills or
// reads later. Measured reason: ~25 % less CPU per small request than epoll (benches/load).
#[allow(unsafe_code)]
mod uring;
mod worker;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use upkeep_core::{Address, Config, Shared as Ledger};
use upkeep_runtime::admin::Operator;
use upkeep_runtime::board::SNAPSHOT_WAIT;
use upkeep_runtime::listen::{Bound, remove_socket_files};
use upkeep_runtime::tls::{Contexts, ProcessTls, TlsStats};

use crate::admin::Admin;
use crate::metrics::Snapshot;
use crate::net::Listener;
use crate::worker::{Command, Control, Handoff};

pub use upkeep_core;
/// The counters and their renderings (shared with the smol runtime).
pub use upkeep_runtime::metrics;

/// Starts proxies.
#[derive(Debug)]
pub struct Proxy;

impl Proxy {
    /// Validates `config`, binds every listener (resolving port 0 once, shared by every worker's
    /// `SO_REUSEPORT` socket), starts the workers (`config.runtime.workers`, 0 = one per core)
    /// and the admin listener, and returns once all of them are ready.
    /// Servers written with a host name are resolved first (on a helper thread, by the system
    /// resolver; see [`upkeep_runtime::resolve`]).
    pub fn start(config: Config) -> io::Result<ProxyHandle> {
        let config = upkeep_runtime::resolve::resolve_now(config)?;
        config.validate()?;
        upkeep_runtime::descriptors::raise_limit();
        let shared = Arc::new(Shared::default());
        let tls = Arc::new(Contexts::load(&config, &shared.tls)?);
        let mut bound = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            match Bound::bind(&l.addr) {
                Ok(b) => bound.push(b),
                Err(e) => {
                    // The socket files bound so far were never served: none stays behind.
                    remove_socket_files(&bound);
                    return Err(e);
                }
            }
        }
        let admin = match &config.runtime.admin {
            Some(addr) => match Admin::start(addr, shared.operator.clone()) {
                Ok(admin) => Some(admin),
                Err(e) => {
                    remove_socket_files(&bound);
                    return Err(e);
                }
            },
            None => None,
        };
        let n = upkeep_runtime::workers::count(config.runtime.workers);
        let mut generation = Generation {
            ledger: Ledger::new(&config, n),
            config,
            bound,
            workers: Vec::new(),
            tls,
        };
        let mut threads = Vec::new();
        if let Err(e) = generation.spawn(&shared, &mut threads) {
            stop_all(&generation.workers, &mut threads);
            remove_socket_files(&generation.bound);
            return Err(e);
        }
        shared.operator.upstreams.set(generation.upstreams());
        Ok(ProxyHandle {
            shared,
            state: Mutex::new(State {
                current: generation,
                threads,
            }),
            admin,
        })
    }
}

/// What the handle, the admin thread and the workers share.
#[derive(Debug)]
struct Shared {
    /// The workers' board and the draining flag.
    operator: Operator<Control>,
    next_worker: AtomicU64,
    /// Requests the workers cut at `shutdown_timeout`.
    aborted: Arc<AtomicU64>,
    /// The newest generation's workers, where a reload's old workers hand their idle client
    /// connections.
    newest: Handoff,
    /// The client session store and TLS counters, kept across reloads.
    tls: ProcessTls,
}

impl Default for Shared {
    fn default() -> Shared {
        let operator = Operator::<Control>::default();
        // The admin's `/metrics` shows the same TLS counters the workers update.
        let tls = ProcessTls {
            sessions: upkeep_runtime::tls::sessions(),
            stats: operator.tls.clone(),
        };
        Shared {
            operator,
            next_worker: AtomicU64::default(),
            aborted: Arc::default(),
            newest: Handoff::default(),
            tls,
        }
    }
}

/// One configuration's listeners and workers, and the ledger its workers share (`max_conns`
/// slots, the queue, server states and health hold across its workers).
#[derive(Debug)]
struct Generation {
    ledger: Ledger,
    config: Config,
    bound: Vec<Bound>,
    workers: Vec<Control>,
    /// Certificates and keys loaded from `config`'s files.
    tls: Arc<Contexts>,
}

impl Generation {
    /// What the admin API reports on and changes.
    fn upstreams(&self) -> upkeep_runtime::upstreams::Generation {
        upkeep_runtime::upstreams::Generation {
            config: self.config.clone(),
            ledger: self.ledger.clone(),
        }
    }

    fn spawn(&mut self, shared: &Shared, threads: &mut Vec<JoinHandle<()>>) -> io::Result<()> {
        let n = self.ledger.workers();
        // Each worker's client limit leaves descriptors for its upstream connections.
        let mut config = self.config.clone();
        upkeep_runtime::descriptors::fit(
            &mut config,
            n,
            upkeep_runtime::descriptors::limit(),
            true,
        );
        let siblings = worker::Siblings::default();
        for index in 0..n {
            let mut listeners = Vec::with_capacity(self.bound.len());
            for b in &mut self.bound {
                listeners.push(Listener::new(b.for_worker()?));
            }
            let (control, thread) = worker::spawn(worker::Setup {
                index,
                id: shared.next_worker.fetch_add(1, Ordering::Relaxed),
                config: config.clone(),
                ledger: self.ledger.clone(),
                listeners,
                shutdown_timeout: self.config.runtime.shutdown_timeout,
                board: shared.operator.board.clone(),
                aborted: shared.aborted.clone(),
                tls: self.tls.clone(),
                siblings: siblings.clone(),
            })?;
            self.workers.push(control);
            threads.push(thread);
        }
        // Until now a handover finds no sibling and closes the connection instead.
        *siblings.lock().unwrap_or_else(|e| e.into_inner()) = self.workers.clone();
        for b in &mut self.bound {
            b.settle();
        }
        Ok(())
    }
}

#[derive(Debug)]
struct State {
    current: Generation,
    /// Worker threads of every generation (old ones may still be draining).
    threads: Vec<JoinHandle<()>>,
}

/// A running proxy.
#[derive(Debug)]
pub struct ProxyHandle {
    shared: Arc<Shared>,
    state: Mutex<State>,
    admin: Option<Admin>,
}

impl ProxyHandle {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The bound listen addresses, in configuration order (port 0 resolved).
    pub fn listen_addrs(&self) -> Vec<Address> {
        self.state()
            .current
            .bound
            .iter()
            .map(Bound::address)
            .collect()
    }

    /// The admin listener's bound address, if one is configured.
    pub fn admin_addr(&self) -> Option<Address> {
        self.admin.as_ref().map(|a| a.addr.clone())
    }

    /// The configuration in force.
    pub fn config(&self) -> Config {
        self.state().current.config.clone()
    }

    /// Counters summed over every worker, including workers retired by reloads.
    pub fn snapshot(&self) -> Snapshot {
        self.shared.operator.snapshot()
    }

    /// TLS handshakes and failures of every worker so far (both sides, all generations).
    pub fn tls_stats(&self) -> Arc<TlsStats> {
        self.shared.tls.stats.clone()
    }

    /// Each live worker's own snapshot (current and still-draining workers), for tests and
    /// diagnostics; [`ProxyHandle::snapshot`] is their sum plus retired workers.
    pub fn worker_snapshots(&self) -> Vec<Snapshot> {
        self.shared.operator.board.each()
    }

    /// Applies a new configuration the way nginx does: new workers start with it (fresh
    /// `SO_REUSEPORT` sockets on TCP addresses, the very same socket for an unchanged Unix
    /// address), then the old workers drain — established connections finish on them. A config
    /// that does not validate or cannot be bound changes nothing. The admin listener is not
    /// moved by a reload. Host names are resolved first, as by [`Proxy::start`].
    pub fn reload(&self, config: Config) -> Result<(), String> {
        let result = self.apply(config);
        self.shared.operator.reloads.record(result.is_ok());
        result
    }

    /// Counts a reload that failed before reaching [`ProxyHandle::reload`] (a file that does not
    /// parse), for `upkeep_reloads_total{result="failed"}`.
    pub fn reload_failed(&self) {
        self.shared.operator.reloads.record(false);
    }

    /// [`ProxyHandle::reload`] itself.
    fn apply(&self, config: Config) -> Result<(), String> {
        let config = upkeep_runtime::resolve::resolve_now(config).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        // Certificates first: a broken file refuses the reload and keeps the old generation.
        let tls = Arc::new(Contexts::load(&config, &self.shared.tls).map_err(|e| e.to_string())?);
        let mut state = self.state();
        if self.shared.operator.is_draining() {
            return Err("draining: reload refused".into());
        }
        if config.runtime.admin != state.current.config.runtime.admin {
            log::warn!("reload: runtime.admin changes take effect after a restart");
        }
        let mut bound = Vec::with_capacity(config.listeners.len());
        // Which of the current listeners live on in the new generation.
        let mut kept = vec![false; state.current.bound.len()];
        // Which of `bound` this reload bound afresh: should it fail, their socket files go
        // (the shared ones are still served by the current generation).
        let mut fresh = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            let old = state
                .current
                .config
                .listeners
                .iter()
                .position(|o| o.addr == l.addr)
                .or_else(|| {
                    state
                        .current
                        .bound
                        .iter()
                        .position(|b| b.address() == l.addr)
                });
            let b = match old {
                Some(i) => {
                    kept[i] = true;
                    state.current.bound[i].share()
                }
                None => Bound::bind(&l.addr),
            };
            match b {
                Ok(b) => {
                    fresh.push(old.is_none());
                    bound.push(b);
                }
                Err(e) => {
                    remove_fresh_unix_files(&bound, &fresh);
                    return Err(format!("listen {}: {e}", l.addr));
                }
            }
        }
        // Server states set at run time (admin API) survive the reload.
        let n = upkeep_runtime::workers::count(config.runtime.workers);
        let ledger = Ledger::continued(&config, n, &state.current.ledger, &state.current.config);
        let mut next = Generation {
            ledger,
            config,
            bound,
            workers: Vec::new(),
            tls,
        };
        let mut threads = Vec::new();
        if let Err(e) = next.spawn(&self.shared, &mut threads) {
            stop_all(&next.workers, &mut threads);
            remove_fresh_unix_files(&next.bound, &fresh);
            return Err(format!("starting workers: {e}"));
        }
        self.shared.operator.upstreams.set(next.upstreams());
        let old = std::mem::replace(&mut state.current, next);
        state.threads.extend(threads);
        // Wait until the old workers have closed their listeners, so that every connection
        // made after `reload` returns lands on a new worker.
        let (ack, acks) = mpsc::channel();
        // An old worker's listener whose socket the new generation took over is only
        // unwatched, not emptied: what is queued there goes to the new worker sharing it.
        let new_workers = state.current.workers.len();
        // Idle client connections move to the newest workers, onto the listener of the same
        // address: no client sees its connection close.
        *self.shared.newest.lock().unwrap_or_else(|e| e.into_inner()) =
            state.current.workers.clone();
        let asked = old
            .workers
            .iter()
            .enumerate()
            .filter(|&(k, w)| {
                let handed_over = old
                    .bound
                    .iter()
                    .zip(&kept)
                    .map(|(b, &kept)| kept && (b.is_unix() || k < new_workers))
                    .collect();
                w.send(Command::Drain {
                    ack: Some(ack.clone()),
                    handed_over,
                    handoff: Some(self.shared.newest.clone()),
                    kept: kept.clone(),
                })
            })
            .count();
        drop(ack);
        for _ in 0..asked {
            if acks.recv_timeout(SNAPSHOT_WAIT).is_err() {
                break;
            }
        }
        // Unix socket files that the new configuration no longer listens on (while still ours).
        let kept: Vec<Address> = state.current.bound.iter().map(Bound::address).collect();
        for b in &old.bound {
            if !kept.contains(&b.address()) {
                b.remove_socket_file();
            }
        }
        Ok(())
    }

    /// Graceful shutdown: every worker stops accepting, closes idle connections, finishes
    /// in-flight exchanges and exits (at the latest after `runtime.shutdown_timeout`); `/ready`
    /// answers 503 from now on. Follow with [`ProxyHandle::wait`].
    pub fn drain(&self) {
        self.shared.operator.set_draining();
        let live = self.live();
        for w in &live {
            w.send(Command::Drain {
                ack: None,
                handed_over: Vec::new(),
                handoff: None,
                kept: Vec::new(),
            });
        }
        // The workers close their copies of the listening sockets; ours must go too, or the
        // kernel would keep queueing connections that nobody accepts any more.
        for b in &mut self.state().current.bound {
            b.close();
        }
    }

    /// The first step of a delayed shutdown (`runtime.shutdown_delay`): `/ready` answers 503 from
    /// now on so load balancers take this instance out, while every listener keeps accepting and
    /// serving; call [`ProxyHandle::drain`] once the delay has passed.
    pub fn fail_ready(&self) {
        self.shared.operator.set_draining();
    }

    /// Whether [`ProxyHandle::drain`] (or [`ProxyHandle::fail_ready`]) was called.
    pub fn is_draining(&self) -> bool {
        self.shared.operator.is_draining()
    }

    /// Requests cut at `runtime.shutdown_timeout` so far (a drain that did not finish in time).
    pub fn aborted_requests(&self) -> u64 {
        self.shared.aborted.load(Ordering::Relaxed)
    }

    /// Whether every worker has exited (after a drain).
    pub fn is_finished(&self) -> bool {
        self.state().threads.iter().all(JoinHandle::is_finished)
    }

    /// Asks every worker to reopen its access log file (after log rotation).
    pub fn reopen_logs(&self) {
        for w in &self.live() {
            w.send(Command::ReopenLog);
        }
    }

    fn live(&self) -> Vec<Control> {
        self.shared.operator.board.live()
    }

    /// Stops every worker now (open connections are closed) and joins them.
    pub fn shutdown(self) {
        // Dropping does it.
    }

    /// Waits for every worker to exit (after [`ProxyHandle::drain`]), then stops the admin
    /// listener.
    pub fn wait(self) {
        let threads = std::mem::take(&mut self.state().threads);
        for t in threads {
            let _ = t.join();
        }
    }
}

/// Dropping the handle stops the proxy now (like [`ProxyHandle::shutdown`]): workers are not
/// left running without a way to reach them.
impl Drop for ProxyHandle {
    fn drop(&mut self) {
        self.shared.operator.set_draining();
        let live = self.live();
        let mut state = self.state();
        stop_all(&live, &mut state.threads);
        remove_socket_files(&state.current.bound);
        drop(state);
        if let Some(mut admin) = self.admin.take() {
            admin.stop();
        }
    }
}

fn stop_all(workers: &[Control], threads: &mut Vec<JoinHandle<()>>) {
    for w in workers {
        w.send(Command::Stop);
    }
    for t in threads.drain(..) {
        let _ = t.join();
    }
}

/// After a failed reload: removes the socket files of the Unix listeners it bound afresh
/// (`fresh[i]`), never those it shares with the generation still serving.
fn remove_fresh_unix_files(bound: &[Bound], fresh: &[bool]) {
    for (b, _) in bound.iter().zip(fresh).filter(|(_, fresh)| **fresh) {
        b.remove_socket_file();
    }
}
