//! The reverse proxy: worker threads, each a single-threaded executor driving its own [`Core`],
//! and the admin listener beside them.

use async_channel::{Receiver, Sender};
use futures_lite::future;
use std::io;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;
use upkeep_core::{Address, Config, Core, ListenerId, Shared as Ledger};
use upkeep_runtime::admin::Operator;
use upkeep_runtime::board::{Board, Reporter};
use upkeep_runtime::clock;
use upkeep_runtime::metrics::Snapshot;
use upkeep_runtime::recorder::Recorder;
use upkeep_runtime::tls::{Contexts, ProcessTls};

use upkeep_runtime::listen::{Bound, Listening, remove_socket_files};

use crate::admin::Admin;
use crate::driver::{self, Driver, Shared};
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
#[derive(Debug)]
enum Control {
    /// Stop accepting, finish in-flight exchanges (up to the shutdown timeout), then exit.
    Drain,
    /// Exit now, closing every connection.
    Stop,
    /// Send a snapshot of the counters.
    Snapshot(std::sync::mpsc::Sender<Snapshot>),
    /// Reopen the access log file.
    ReopenLog,
    /// Something the workers share changed (a slot freed for a waiting request, a server's
    /// state): see `Core::handle_shared`.
    Shared,
    /// Take in an idle upstream connection a sibling worker handed over: the request first in
    /// line for its server's `max_conns` slot waits here (see `Core::adopt_handed`).
    Adopt(Box<driver::Moved>),
}

/// A worker as the admin listener's board sees it.
#[derive(Debug, Clone)]
pub(crate) struct WorkerControl {
    id: u64,
    tx: Sender<Control>,
}

impl Reporter for WorkerControl {
    fn id(&self) -> u64 {
        self.id
    }

    fn ask_snapshot(&self, reply: std::sync::mpsc::Sender<Snapshot>) -> bool {
        self.tx.try_send(Control::Snapshot(reply)).is_ok()
    }
}

/// A running proxy: its bound addresses, the controls to stop it and its admin listener.
#[derive(Debug)]
pub struct ProxyHandle {
    addrs: Vec<Address>,
    /// The bound addresses, kept (their own descriptors closed) to remove Unix socket files at
    /// exit while they are still ours.
    bound: Vec<Bound>,
    controls: Vec<Sender<Control>>,
    workers: Vec<JoinHandle<()>>,
    /// The workers' board and the draining flag.
    operator: Operator<WorkerControl>,
    /// Declared after `workers`: dropped (stopped) once the workers are.
    admin: Option<Admin>,
}

impl Proxy {
    /// Validates `config`, binds every listener (a TCP port 0 is resolved once and shared by
    /// every worker's SO_REUSEPORT socket), opens the access log (`runtime.access_log`), starts
    /// `config.runtime.workers` worker threads (0 = one per CPU) and the admin listener
    /// (`runtime.admin`), and returns once they are all serving. Servers written with a host
    /// name are resolved first (on a helper thread; see [`upkeep_runtime::resolve`]).
    pub fn start(config: Config) -> io::Result<ProxyHandle> {
        let config = upkeep_runtime::resolve::resolve_now(config)?;
        config.validate()?;
        let operator = Operator::default();
        // Certificates before anything is bound: a bad file fails `start`, naming it. The
        // session store is this proxy's, shared by every worker.
        let process = ProcessTls {
            sessions: upkeep_runtime::tls::sessions(),
            stats: operator.tls.clone(),
        };
        let tls = Arc::new(Contexts::load(&config, &process)?);
        let workers = upkeep_runtime::workers::count(config.runtime.workers);
        // Each worker's client limit leaves descriptors for its upstream connections.
        let mut config = config;
        let limit = upkeep_runtime::descriptors::raise_limit();
        upkeep_runtime::descriptors::fit(&mut config, workers, limit);
        let shutdown_timeout = config.runtime.shutdown_timeout;

        // Every worker's access log before anything is bound or started: a log that cannot be
        // opened fails `start` cleanly, naming the file.
        let recorders = (0..workers)
            .map(|_| Recorder::open(&config))
            .collect::<io::Result<Vec<_>>>()?;
        // Bind everything before starting anything, so a bad address fails `start` cleanly.
        let mut bound = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            match Bound::bind(&l.addr) {
                Ok(b) => bound.push(b),
                Err(e) => {
                    remove_socket_files(&bound);
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
                    remove_socket_files(&bound);
                    return Err(e);
                }
            }
        }
        // The workers hold every socket now; ours would keep a drained listener queueing
        // connections nobody accepts.
        for b in &mut bound {
            b.close();
        }

        // What the workers share: max_conns slots, the queue's order, server states, health.
        let ledger = Ledger::new(&config, workers);
        operator
            .upstreams
            .set(upkeep_runtime::upstreams::Generation {
                config: config.clone(),
                ledger: ledger.clone(),
            });
        let admin = config.runtime.admin.as_ref();
        let admin = match admin.map(|a| Admin::start(a, operator.clone())).transpose() {
            Ok(admin) => admin,
            Err(e) => {
                remove_socket_files(&bound);
                return Err(e);
            }
        };
        let mut controls = Vec::new();
        let mut handles = Vec::new();
        // Every worker's channel by index, once all are made: where a worker hands an idle
        // connection for another's waiting request (until then it closes it instead).
        let siblings: Arc<OnceLock<Vec<Sender<Control>>>> = Arc::default();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<()>>();
        for (w, (sockets, recorder)) in per_worker.into_iter().zip(recorders).enumerate() {
            let core = match Core::with_shared(config.clone(), w as u64, ledger.clone(), w) {
                Ok(mut core) => {
                    core.set_request_id_prefix(upkeep_runtime::recorder::request_id_prefix(
                        w as u64,
                    ));
                    core
                }
                Err(e) => {
                    stop_all(&controls, handles);
                    remove_socket_files(&bound);
                    return Err(e.into());
                }
            };
            let (tx, rx) = async_channel::unbounded();
            let wake = tx.clone();
            ledger.set_waker(
                w,
                Box::new(move || {
                    let _ = wake.try_send(Control::Shared);
                }),
            );
            // On the board before it serves, so no exchange goes uncounted.
            operator.board.join(WorkerControl {
                id: w as u64,
                tx: tx.clone(),
            });
            let board = operator.board.clone();
            controls.push(tx);
            let ready = ready_tx.clone();
            let tls = tls.clone();
            let siblings = siblings.clone();
            let handle = std::thread::Builder::new()
                .name(format!("upkeep-smol-{w}"))
                .spawn(move || {
                    worker(
                        Setup {
                            core,
                            recorder,
                            sockets,
                            id: w as u64,
                            board,
                            shutdown_timeout,
                            tls,
                            siblings,
                        },
                        rx,
                        ready,
                    )
                })?;
            handles.push(handle);
        }
        drop(ready_tx);
        let _ = siblings.set(controls.clone());
        for _ in 0..handles.len() {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    stop_all(&controls, handles);
                    remove_socket_files(&bound);
                    return Err(e);
                }
                Err(_) => {
                    stop_all(&controls, handles);
                    remove_socket_files(&bound);
                    return Err(io::Error::other("a worker thread died while starting"));
                }
            }
        }
        Ok(ProxyHandle {
            addrs,
            bound,
            controls,
            workers: handles,
            operator,
            admin,
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

    /// The admin listener's bound address, if one is configured.
    pub fn admin_addr(&self) -> Option<Address> {
        self.admin.as_ref().map(|a| a.addr.clone())
    }

    /// TLS handshakes and failures of every worker (both sides).
    pub fn tls_stats(&self) -> Arc<upkeep_runtime::tls::TlsStats> {
        self.operator.tls.clone()
    }

    /// Counters summed over every worker (what the admin listener's `/metrics` renders).
    pub fn snapshot(&self) -> Snapshot {
        self.operator.snapshot()
    }

    /// Asks every worker to reopen its access log file (after log rotation).
    pub fn reopen_logs(&self) {
        for c in &self.controls {
            let _ = c.try_send(Control::ReopenLog);
        }
    }

    /// The first step of a delayed shutdown (`runtime.shutdown_delay`), as
    /// `upkeep_mio::ProxyHandle::fail_ready`: `/ready` answers 503 from now on while every
    /// listener keeps accepting and serving; call [`ProxyHandle::drain`] once the delay has passed.
    pub fn fail_ready(&self) {
        self.operator.set_draining();
    }

    /// Graceful shutdown: stop accepting, close idle connections, let in-flight exchanges finish
    /// (bounded by `runtime.shutdown_timeout`); `/ready` answers 503 from now on. Returns at
    /// once; [`ProxyHandle::wait`] joins. Calling it again changes nothing (use
    /// [`ProxyHandle::shutdown`] to stop at once).
    pub fn drain(&self) {
        self.operator.set_draining();
        for c in &self.controls {
            let _ = c.try_send(Control::Drain);
        }
    }

    /// Stops now: every connection is closed, the workers are joined. (Dropping the handle
    /// does the same.)
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    /// Waits until the workers exit (after [`ProxyHandle::drain`], or forever), then stops the
    /// admin listener.
    pub fn wait(mut self) {
        for h in std::mem::take(&mut self.workers) {
            let _ = h.join();
        }
        remove_socket_files(&self.bound);
    }

    fn stop_now(&mut self) {
        self.operator.set_draining();
        if self.workers.is_empty() {
            return;
        }
        stop_all(&self.controls, std::mem::take(&mut self.workers));
        remove_socket_files(&self.bound);
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// What a worker thread starts with.
struct Setup {
    core: Core,
    recorder: Recorder,
    sockets: Vec<Listening>,
    /// This worker's id on the board.
    id: u64,
    board: Arc<Board<WorkerControl>>,
    shutdown_timeout: Duration,
    tls: Arc<Contexts>,
    siblings: Arc<OnceLock<Vec<Sender<Control>>>>,
}

fn worker(
    setup: Setup,
    control: Receiver<Control>,
    ready: std::sync::mpsc::Sender<io::Result<()>>,
) {
    let Setup {
        core,
        recorder,
        sockets,
        id,
        board,
        shutdown_timeout,
        tls,
        siblings,
    } = setup;
    driver::run(async move {
        let (d, _timer) = Driver::start(core);
        d.borrow_mut().use_tls(tls);
        d.borrow_mut().hand_over_with(Box::new(move |to, moved| {
            siblings
                .get()
                .and_then(|s| s.get(to))
                .is_some_and(|tx| tx.try_send(Control::Adopt(Box::new(moved))).is_ok())
        }));
        d.borrow_mut().record(recorder);
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
        if let Control::Drain = order(&control, &d).await {
            drop(accepts);
            d.borrow_mut().begin_drain();
            // Only an explicit stop (or the handle gone) cuts the drain short: a second
            // `drain()` — two parts of an application shutting down — must not turn the
            // graceful drain into an abort of the exchanges in flight.
            let stop = async { while let Control::Drain = order(&control, &d).await {} };
            let timeout = async {
                async_io::Timer::after(shutdown_timeout).await;
            };
            future::or(driver::drained(&d), future::or(stop, timeout)).await;
        }
        let cut = d.borrow_mut().abort_exchanges();
        if cut > 0 {
            log::warn!("worker {id}: stopping, aborting {cut} requests in progress");
        }
        d.borrow_mut().close_all();
        retire(&board, id, &control, &d);
    });
}

/// Serves the operator's requests (snapshots, log reopening) until a `Drain` or a `Stop`
/// arrives, and returns it (`Stop` when the handle is gone).
async fn order(control: &Receiver<Control>, d: &Shared) -> Control {
    loop {
        match control.recv().await {
            Ok(Control::Snapshot(reply)) => {
                let _ = reply.send(d.borrow().snapshot());
            }
            Ok(Control::ReopenLog) => d.borrow_mut().reopen_log(),
            Ok(Control::Adopt(moved)) => d.borrow_mut().adopt_handed(*moved),
            Ok(Control::Shared) => {
                let mut d = d.borrow_mut();
                d.core.handle_shared(clock::now());
                d.drain();
            }
            Ok(order) => return order,
            Err(_) => return Control::Stop,
        }
    }
}

/// Leaves the board: the final counters join the retired totals, and snapshot requests that
/// raced with the exit are answered from the same counters, so a scrape counts this worker
/// exactly once.
fn retire(board: &Board<WorkerControl>, id: u64, control: &Receiver<Control>, d: &Shared) {
    // Access log lines are already written: every drain pass flushes them.
    let last = d.borrow().snapshot().retired();
    board.retire(id, &last);
    while let Ok(c) = control.try_recv() {
        if let Control::Snapshot(reply) = c {
            let _ = reply.send(last.clone());
        }
    }
}
