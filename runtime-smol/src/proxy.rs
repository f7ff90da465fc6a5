//! The reverse proxy: worker threads, each a single-threaded executor driving its own [`Core`],
//! and the admin listener beside them.

use async_channel::{Receiver, Sender};
use async_executor::Task;
use futures_lite::future;
use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;
use upkeep_core::{Address, Config, Core, ListenerId, Shared as Ledger};
use upkeep_runtime::admin::Operator;
use upkeep_runtime::board::{Board, Reporter};
use upkeep_runtime::clock;
use upkeep_runtime::metrics::Snapshot;
use upkeep_runtime::recorder::Recorder;
use upkeep_runtime::resolve::{Names, Resolver, SystemResolver, Watcher};
use upkeep_runtime::tls::{Contexts, ProcessTls};

use upkeep_runtime::listen::{Bound, Listening, remove_socket_files};

use crate::admin::Admin;
use crate::driver::{self, Shared};
use crate::generation::Generations;
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
    /// Re-resolution changed an address set: serve it from now on (a new generation of this
    /// worker's core; see the `generation` module).
    Servers(Box<NextServers>),
    /// Take in an idle upstream connection a sibling worker handed over: the request first in
    /// line for its server's `max_conns` slot waits here (see `Core::adopt_handed`).
    Adopt(Box<driver::Moved>),
}

/// A new server set for one worker: the configuration, the ledger every worker's new core
/// shares, the TLS material and the worker's recorder for it.
#[derive(Debug)]
struct NextServers {
    config: Config,
    ledger: Ledger,
    tls: Arc<Contexts>,
    recorder: Recorder,
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
    /// Re-resolves the groups with a `resolve_interval` (none without).
    _watcher: Option<Watcher>,
}

impl Proxy {
    /// Validates `config`, binds every listener (a TCP port 0 is resolved once and shared by
    /// every worker's SO_REUSEPORT socket), opens the access log (`runtime.access_log`), starts
    /// `config.runtime.workers` worker threads (0 = one per CPU) and the admin listener
    /// (`runtime.admin`), and returns once they are all serving. Servers written with a host
    /// name are resolved first (on a helper thread; see [`upkeep_runtime::resolve`]).
    /// A group with a `resolve_interval` is re-resolved while running (see
    /// [`Proxy::start_with_resolver`]).
    pub fn start(config: Config) -> io::Result<ProxyHandle> {
        Proxy::start_with_resolver(config, Arc::new(SystemResolver))
    }

    /// [`Proxy::start`] with host names resolved by `resolver` (service discovery of your own,
    /// or a test's answers): at start, and for a group with a `resolve_interval` again at that
    /// interval on a thread of its own. A changed address set is applied in every worker
    /// without closing a client connection: the worker starts a new core with the new servers
    /// and takes its listeners over, the old core's idle pooled connections to servers that
    /// remain move to the new one (those to a vanished address close), each client connection
    /// moves over once it is between requests, and requests in flight finish on the old core.
    /// A name that stops resolving keeps its last addresses (a warning is logged).
    pub fn start_with_resolver(
        config: Config,
        resolver: Arc<dyn Resolver>,
    ) -> io::Result<ProxyHandle> {
        let (names, config) = Names::resolve(config, resolver)?;
        config.validate()?;
        if config.runtime.io != upkeep_core::config::Io::Epoll {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "io = \"uring\" is an option of the upkeep binary's workers (upkeep-mio); the smol \
                 runtime waits with async-io: leave io out",
            ));
        }
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
        upkeep_runtime::descriptors::fit(&mut config, workers, limit, false);
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
            set_waker(&ledger, w, &tx);
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
        let mut next = Renewal {
            workers,
            limit,
            process,
            config,
            ledger,
            controls: controls.clone(),
            upstreams: operator.upstreams.clone(),
        };
        let watcher = match Watcher::start(names, move |config| next.apply(config)) {
            Ok(w) => w,
            Err(e) => {
                stop_all(&controls, handles);
                remove_socket_files(&bound);
                return Err(e);
            }
        };
        Ok(ProxyHandle {
            addrs,
            bound,
            controls,
            workers: handles,
            operator,
            admin,
            _watcher: watcher,
        })
    }
}

/// What re-resolution needs to give every worker a new server set: the shape of the process
/// and the generation in force.
struct Renewal {
    workers: usize,
    /// The descriptor limit each worker's client limit is fitted to.
    limit: Option<u64>,
    process: ProcessTls,
    config: Config,
    ledger: Ledger,
    controls: Vec<Sender<Control>>,
    upstreams: upkeep_runtime::upstreams::Upstreams,
}

impl Renewal {
    /// Sends every worker the re-resolved `config` (on the resolver's thread: certificate and
    /// log files are opened here, never on a worker). Kept servers keep their ledger entries,
    /// so `max_conns` holds over the old and new cores together.
    fn apply(&mut self, mut config: Config) {
        upkeep_runtime::descriptors::fit(&mut config, self.workers, self.limit, false);
        let tls = match Contexts::load(&config, &self.process) {
            Ok(tls) => Arc::new(tls),
            Err(e) => return log::warn!("re-resolved addresses not applied: {e}"),
        };
        let recorders = match (0..self.workers)
            .map(|_| Recorder::open(&config))
            .collect::<io::Result<Vec<_>>>()
        {
            Ok(r) => r,
            Err(e) => return log::warn!("re-resolved addresses not applied: {e}"),
        };
        let ledger = Ledger::continued(&config, self.workers, &self.ledger, &self.config);
        for (w, c) in self.controls.iter().enumerate() {
            set_waker(&ledger, w, c);
        }
        self.upstreams.set(upkeep_runtime::upstreams::Generation {
            config: config.clone(),
            ledger: ledger.clone(),
        });
        for (c, recorder) in self.controls.iter().zip(recorders) {
            let _ = c.try_send(Control::Servers(Box::new(NextServers {
                config: config.clone(),
                ledger: ledger.clone(),
                tls: tls.clone(),
                recorder,
            })));
        }
        self.config = config;
        self.ledger = ledger;
    }
}

/// Worker `w` is told through `control` when the ledger has news for it.
fn set_waker(ledger: &Ledger, w: usize, control: &Sender<Control>) {
    let wake = control.clone();
    ledger.set_waker(
        w,
        Box::new(move || {
            let _ = wake.try_send(Control::Shared);
        }),
    );
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
        // Idle connections handed to a sibling worker go through its control channel, from
        // every generation of this worker's core.
        let hand_over: HandOver = Rc::new(move |to: usize, moved: driver::Moved| {
            siblings
                .get()
                .and_then(|s| s.get(to))
                .is_some_and(|tx| tx.try_send(Control::Adopt(Box::new(moved))).is_ok())
        });
        let generations = Generations::start(core, |d| {
            d.use_tls(tls);
            d.record(recorder);
            let h = hand_over.clone();
            d.hand_over_with(Box::new(move |to, moved| h(to, moved)));
        });
        let mut listeners = Vec::new();
        for socket in sockets {
            match Listener::register(socket) {
                Ok(l) => listeners.push(Rc::new(l)),
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            }
        }
        let w = Worker {
            accepts: RefCell::new(accept_all(&generations.current(), &listeners)),
            generations: RefCell::new(generations),
            listeners,
            retired: Rc::default(),
            id,
            draining: Default::default(),
            hand_over,
        };
        let _ = ready.send(Ok(()));
        drop(ready);
        if let Control::Drain = order(&control, &w).await {
            w.draining.set(true);
            w.accepts.borrow_mut().clear();
            let d = w.current();
            d.borrow_mut().begin_drain();
            // Generations still handing over close their idle client connections now: the
            // newest one drains too and takes none.
            for old in w.generations.borrow().retiring() {
                old.borrow_mut().drain();
            }
            // Only an explicit stop (or the handle gone) cuts the drain short: a second
            // `drain()` — two parts of an application shutting down — must not turn the
            // graceful drain into an abort of the exchanges in flight.
            let stop = async { while let Control::Drain = order(&control, &w).await {} };
            let timeout = async {
                async_io::Timer::after(shutdown_timeout).await;
            };
            let all_drained = async {
                driver::drained(&d).await;
                let retiring = w.generations.borrow().retiring();
                for old in retiring {
                    driver::drained(&old).await;
                }
            };
            future::or(all_drained, future::or(stop, timeout)).await;
        }
        let mut cut = 0;
        for d in w.all() {
            cut += d.borrow_mut().abort_exchanges();
        }
        if cut > 0 {
            log::warn!("worker {id}: stopping, aborting {cut} requests in progress");
        }
        let last = w.snapshot().retired();
        for d in w.all() {
            d.borrow_mut().close_all();
        }
        retire(&board, id, &control, last);
    });
}

/// A worker's state on its thread: its core's generations (one, unless a re-resolution is
/// being applied), the listeners the current one accepts on, and the counters of generations
/// that are gone.
struct Worker {
    generations: RefCell<Generations>,
    listeners: Vec<Rc<Listener>>,
    accepts: RefCell<Vec<Task<()>>>,
    /// Final counters of the generations that drained, gauges cleared.
    retired: Rc<RefCell<Snapshot>>,
    id: u64,
    /// Told to drain: new server sets are ignored.
    draining: std::cell::Cell<bool>,
    /// Sends an idle connection to a sibling worker (installed in every generation's driver).
    hand_over: HandOver,
}

/// See [`Worker::hand_over`].
type HandOver = Rc<dyn Fn(usize, driver::Moved) -> bool>;

impl Worker {
    fn current(&self) -> Shared {
        self.generations.borrow().current()
    }

    /// The current generation and those still draining.
    fn all(&self) -> Vec<Shared> {
        let g = self.generations.borrow();
        let mut all = vec![g.current()];
        all.extend(g.retiring());
        all
    }

    /// This worker's counters: the current generation's snapshot plus the counters (not the
    /// gauges) of the older ones, so that a re-resolution sets no counter back.
    fn snapshot(&self) -> Snapshot {
        let all = self.all();
        let mut s = all[0].borrow().snapshot();
        for old in &all[1..] {
            s.add(&old.borrow().snapshot().retired());
        }
        s.add(&self.retired.borrow());
        s
    }

    /// Takes in a connection a sibling worker handed over, into this worker's core of the
    /// generation it was handed under (the ledger that counts its slot). When that generation
    /// is gone here (it finished while the connection moved), the socket closes and its slot
    /// goes back to that ledger.
    fn adopt_handed(&self, moved: driver::Moved) {
        let target = self
            .all()
            .into_iter()
            .find(|d| d.borrow().core.shared().same(&moved.ledger));
        match target {
            Some(d) => d.borrow_mut().adopt_handed(moved),
            None => {
                let (ledger, handed) = (moved.ledger.clone(), moved.handed);
                drop(moved);
                ledger.hand_over_lost(&handed);
            }
        }
    }

    /// Serves `next` from now on (see [`Proxy::start_with_resolver`]).
    fn renew(&self, next: NextServers) {
        let NextServers {
            config,
            ledger,
            tls,
            recorder,
        } = next;
        let w = self.id as usize;
        let core = match Core::with_shared(config, self.id, ledger, w) {
            Ok(mut core) => {
                core.set_request_id_prefix(upkeep_runtime::recorder::request_id_prefix(self.id));
                core
            }
            Err(e) => return log::warn!("re-resolved addresses not applied: {e}"),
        };
        let retired = self.retired.clone();
        let d = self.generations.borrow_mut().swap(
            core,
            true,
            |d| {
                d.use_tls(tls);
                d.record(recorder);
                let h = self.hand_over.clone();
                d.hand_over_with(Box::new(move |to, moved| h(to, moved)));
            },
            move |old| retired.borrow_mut().add(&old.borrow().snapshot().retired()),
        );
        // The old accept loops stop between two accepts: no connection is lost.
        *self.accepts.borrow_mut() = accept_all(&d, &self.listeners);
    }
}

/// Accepts on every listener into `d`.
fn accept_all(d: &Shared, listeners: &[Rc<Listener>]) -> Vec<Task<()>> {
    listeners
        .iter()
        .enumerate()
        .map(|(i, l)| driver::spawn_accept(d.clone(), ListenerId(i as u32), l.clone()))
        .collect()
}

/// Serves the operator's requests (snapshots, log reopening) and re-resolutions until a
/// `Drain` or a `Stop` arrives, and returns it (`Stop` when the handle is gone). A new server
/// set that arrives while draining is ignored.
async fn order(control: &Receiver<Control>, w: &Worker) -> Control {
    loop {
        match control.recv().await {
            Ok(Control::Snapshot(reply)) => {
                let _ = reply.send(w.snapshot());
            }
            Ok(Control::ReopenLog) => {
                for d in w.all() {
                    d.borrow_mut().reopen_log();
                }
            }
            Ok(Control::Adopt(moved)) => w.adopt_handed(*moved),
            Ok(Control::Shared) => {
                for d in w.all() {
                    let mut d = d.borrow_mut();
                    d.core.handle_shared(clock::now());
                    d.drain();
                }
            }
            Ok(Control::Servers(next)) => {
                if !w.draining.get() {
                    w.renew(*next);
                }
            }
            Ok(order) => return order,
            Err(_) => return Control::Stop,
        }
    }
}

/// Leaves the board: the final counters join the retired totals, and snapshot requests that
/// raced with the exit are answered from the same counters, so a scrape counts this worker
/// exactly once.
fn retire(board: &Board<WorkerControl>, id: u64, control: &Receiver<Control>, last: Snapshot) {
    // Access log lines are already written: every drain pass flushes them.
    board.retire(id, &last);
    while let Ok(c) = control.try_recv() {
        match c {
            Control::Snapshot(reply) => {
                let _ = reply.send(last.clone());
            }
            // A connection a sibling handed over while this worker was leaving: closed, its
            // slot back to the ledger it was handed under (the next in line is woken).
            Control::Adopt(moved) => {
                let (ledger, handed) = (moved.ledger.clone(), moved.handed);
                drop(moved);
                ledger.hand_over_lost(&handed);
            }
            _ => {}
        }
    }
}
