//! One [`Core`] driven on a single-threaded async executor.
//!
//! The driver is shared (`Rc<RefCell<..>>`) by the tasks of one thread: an accept loop per
//! listener, a reader and a writer task per socket, a connect task per upstream connect in
//! progress, a pump task per virtual (in-process) client connection, and one timer task. No task
//! holds the borrow across an `.await`, so the core has exactly one owner at any moment and no
//! lock is needed.
//!
//! Every task does the same thing when it wakes: borrow the driver, feed the core one input, and
//! [`Driver::drain`] its outputs. Writes are attempted right there (a non-blocking `writev`), so
//! the common case costs no task switch; only a full send buffer hands the connection to its
//! writer task, which waits for writability.

use async_executor::{LocalExecutor, Task};
use event_listener::Event;
use futures_lite::future;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use upkeep_core::config::UpstreamTls;
use upkeep_core::{
    Address, ConnId, Core, Handed, Input, ListenerId, Output, ServerId, Time, WriteOutcome,
};
use upkeep_runtime::accept::{Admit, AfterError, Gate};
use upkeep_runtime::clock;
use upkeep_runtime::io::{Flushed, ReadStep, Reader};
use upkeep_runtime::metrics::Snapshot;
use upkeep_runtime::recorder::Recorder;
use upkeep_runtime::socket::upstream_keepalive;
use upkeep_runtime::tls::{Contexts, Handshake, Origin, Session};
use upkeep_runtime::trim::Trim;

use crate::listener::Listener;
use crate::stream::{Detached, Stream};

thread_local! {
    /// The executor of the current driver thread. Thread-local so the driver can spawn without
    /// owning it (tasks own `Rc`s of the driver; the executor owning the driver too would be a
    /// cycle), and so everything left is dropped when the thread ends.
    static EXECUTOR: LocalExecutor<'static> = const { LocalExecutor::new() };
}

/// Runs `main` (and every task the driver spawns) on this thread until `main` returns.
pub(crate) fn run<T>(main: impl Future<Output = T>) -> T {
    EXECUTOR.with(|ex| async_io::block_on(ex.run(main)))
}

/// Runs `f` on this thread's executor.
pub(crate) fn spawn(f: impl Future<Output = ()> + 'static) -> Task<()> {
    EXECUTOR.with(|ex| ex.spawn(f))
}

/// Reads per wake-up before yielding to other connections (fairness).
const READS_PER_WAKE: usize = 4;

/// Flags a connection's tasks watch; `changed` is notified whenever one of them changes.
#[derive(Debug, Default)]
pub(crate) struct Signals {
    /// The core wants this connection read (Output::Interest).
    read: Cell<bool>,
    /// Sockets: the last write hit a full send buffer; the writer task owns writing until the
    /// socket is writable again. Virtual connections: bytes are waiting for the pump.
    write: Cell<bool>,
    /// The core closed the connection.
    closed: Cell<bool>,
    /// ...abortively.
    reset: Cell<bool>,
    changed: Event,
}

impl Signals {
    fn notify(&self) {
        self.changed.notify(usize::MAX);
    }

    /// Waits until `ready()` holds or the connection is closed; returns false if closed.
    async fn wait(&self, ready: impl Fn(&Signals) -> bool) -> bool {
        loop {
            if self.closed.get() {
                return false;
            }
            if ready(self) {
                return true;
            }
            let listener = self.changed.listen();
            if self.closed.get() || ready(self) {
                continue;
            }
            listener.await;
        }
    }

    /// Whether the core closed the connection abortively.
    pub(crate) fn is_reset(&self) -> bool {
        self.reset.get()
    }
}

/// What the driver holds for each live connection id.
enum Slot {
    /// An upstream connect in progress.
    Connecting { task: Option<Task<()>> },
    /// A socket with its reader and writer tasks.
    Socket {
        stream: Rc<Stream>,
        signals: Rc<Signals>,
        /// TLS between the socket and the core (shared with nothing: an `Rc` only so a read
        /// or flush can hold it beside a borrow of the core).
        tls: Option<Rc<RefCell<Session>>>,
        _tasks: [Task<()>; 2],
    },
    /// An in-process client connection (the fan-out client): its pump task takes the bytes the
    /// core queues for it.
    Virtual { signals: Rc<Signals> },
}

/// Something that takes the bytes the core writes to a virtual client connection.
pub(crate) trait VirtualSink: 'static {
    /// Delivers `bytes`; `Err(())` when the receiver is gone (the connection errors out).
    fn deliver(&self, bytes: bytes::Bytes) -> impl Future<Output = Result<(), ()>>;
    /// The connection closed (`reset`: abortively) after everything delivered so far.
    fn finish(&self, reset: bool) -> impl Future<Output = ()>;
    /// Completes when the receiver is gone (a dropped request future or response).
    fn gone(&self) -> impl Future<Output = ()>;
}

/// An idle upstream connection on its way to a sibling worker (see [`Core::adopt_handed`]):
/// its socket, its TLS session, and what the receiving core needs.
#[derive(Debug)]
pub(crate) struct Moved {
    pub(crate) stream: Detached,
    pub(crate) tls: Option<Session>,
    pub(crate) handed: Handed,
    /// The ledger it was handed under: adopted by the receiver's core of that generation.
    pub(crate) ledger: upkeep_core::Shared,
}

/// Sends a [`Moved`] connection to worker `to` of the same proxy; false when that worker is
/// gone (the connection dropped: closed).
pub(crate) type HandOverTo = Box<dyn Fn(usize, Moved) -> bool>;

/// Timer-task state: the deadline it sleeps until, and a nudge when an earlier one appears.
#[derive(Debug, Default)]
struct TimerState {
    armed: Cell<Option<Time>>,
    changed: Event,
}

/// A socket's TLS session, as its tasks share it.
type SharedSession = Rc<RefCell<Session>>;

/// A core and the I/O state of its connections.
pub(crate) struct Driver {
    pub(crate) core: Core,
    slots: Vec<Option<(ConnId, Slot)>>,
    timer: Rc<TimerState>,
    drained: Rc<Event>,
    /// The proxy's counters and access log (the fan-out client keeps none).
    recorder: Option<Recorder>,
    /// Whether the accept loops take connections (the shared accept policy), for every listener
    /// of this driver.
    gate: Gate,
    /// Notified when a connection closes while accepting is paused: there may be room again.
    room: Event,
    /// The TLS material of the configuration (none by default).
    tls: Arc<Contexts>,
    /// Notified whenever a drain pass saw a connection close: a `max_conns` slot another
    /// generation sharing a server's ledger entry waits for may have freed.
    closes: Rc<Event>,
    /// In a handoff drain: the driver of the generation that takes this one's client
    /// connections once each is between requests (see [`Driver::begin_handoff`]).
    successor: Option<std::rc::Weak<RefCell<Driver>>>,
    /// Draining (plain or handing off): takes no connection from a predecessor.
    draining: bool,
    /// Where idle connections handed to a sibling worker go (the proxy's workers; none for
    /// a lone core, which never hands any).
    hand_over_to: Option<HandOverTo>,
    this: std::rc::Weak<RefCell<Driver>>,
    /// Returns freed memory to the system after bursts of closes (checked on the next
    /// activity after the burst: this runtime has no trim timer).
    trim: Trim,
}

/// The shared handle every task holds.
pub(crate) type Shared = Rc<RefCell<Driver>>;

impl Driver {
    /// A driver for `core`, with its timer task running on this thread's executor. Warm
    /// connections open at [`Driver::warm`]: a new generation adopts the old one's idle
    /// connections first ([`Driver::adopt_pooled`]), so that `min_idle` counts them.
    pub(crate) fn new(core: Core) -> (Shared, Task<()>) {
        let d = Rc::new_cyclic(|this| {
            RefCell::new(Driver {
                core,
                slots: Vec::new(),
                timer: Rc::default(),
                drained: Rc::default(),
                recorder: None,
                gate: Gate::default(),
                room: Event::new(),
                tls: Arc::default(),
                closes: Rc::default(),
                successor: None,
                draining: false,
                hand_over_to: None,
                this: this.clone(),
                trim: Trim::default(),
            })
        });
        let timer = spawn(timer_loop(d.clone()));
        (d, timer)
    }

    /// Opens the warm connections (`min_idle`) now, not at the first event.
    pub(crate) fn warm(&mut self) {
        self.core.start(clock::now());
        self.drain();
    }

    /// Uses `tls` for TLS listeners and groups from now on.
    pub(crate) fn use_tls(&mut self, tls: Arc<Contexts>) {
        self.tls = tls;
    }

    /// Sends connections the core hands to a sibling worker through `to`.
    pub(crate) fn hand_over_with(&mut self, to: HandOverTo) {
        self.hand_over_to = Some(to);
    }

    /// Takes in a connection a sibling worker handed over: pooled by the core, watched here.
    pub(crate) fn adopt_handed(&mut self, moved: Moved) {
        let now = clock::now();
        // None: not a server of this configuration (never within one proxy): it drops, closed.
        if let Some(conn) = self.core.adopt_handed(now, moved.handed) {
            match Stream::attach(moved.stream) {
                Ok(stream) => self.install_socket(conn, stream, moved.tls),
                Err(e) => {
                    log::warn!("adopting a connection: {e}");
                    self.core.handle(now, Input::Errored { conn });
                }
            }
        }
        self.drain();
    }

    /// The TLS session of a socket, if it has one.
    fn session(&self, conn: ConnId) -> Option<Rc<RefCell<Session>>> {
        match self.slot(conn) {
            Some(Slot::Socket { tls, .. }) => tls.clone(),
            _ => None,
        }
    }

    fn shared(&self) -> Shared {
        self.this.upgrade().expect("driver alive while borrowed")
    }

    fn slot(&self, conn: ConnId) -> Option<&Slot> {
        match self.slots.get(conn.index as usize) {
            Some(Some((id, s))) if *id == conn => Some(s),
            _ => None,
        }
    }

    fn slot_mut(&mut self, conn: ConnId) -> Option<&mut Slot> {
        match self.slots.get_mut(conn.index as usize) {
            Some(Some((id, s))) if *id == conn => Some(s),
            _ => None,
        }
    }

    fn put(&mut self, conn: ConnId, slot: Slot) -> Option<Slot> {
        let i = conn.index as usize;
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, || None);
        }
        self.slots[i].replace((conn, slot)).map(|(_, s)| s)
    }

    fn take(&mut self, conn: ConnId) -> Option<Slot> {
        match self.slots.get_mut(conn.index as usize) {
            Some(entry @ Some(_)) if entry.as_ref().map(|e| e.0) == Some(conn) => {
                entry.take().map(|(_, s)| s)
            }
            _ => None,
        }
    }

    /// Attaches a socket to `conn` and starts its reader and writer tasks.
    fn install_socket(&mut self, conn: ConnId, stream: Stream, tls: Option<Session>) {
        let tls = tls.map(|s| Rc::new(RefCell::new(s)));
        self.install_shared(conn, Rc::new(stream), tls);
    }

    /// [`Driver::install_socket`] for a socket (and session) already shared: one another
    /// driver let go of, whose cancelled tasks may still hold a reference.
    fn install_shared(
        &mut self,
        conn: ConnId,
        stream: Rc<Stream>,
        tls: Option<Rc<RefCell<Session>>>,
    ) {
        let signals = Rc::new(Signals::default());
        signals.read.set(true);
        let d = self.shared();
        let reader = spawn(reader_loop(
            d.clone(),
            conn,
            stream.clone(),
            signals.clone(),
        ));
        let writer = spawn(writer_loop(d, conn, stream.clone(), signals.clone()));
        let old = self.put(
            conn,
            Slot::Socket {
                stream,
                signals,
                tls,
                _tasks: [reader, writer],
            },
        );
        if let Some(Slot::Connecting { task: Some(t) }) = old {
            // Called from that very task, which is about to finish: let it.
            t.detach();
        }
    }

    /// A client connection accepted on `listener` with its socket.
    pub(crate) fn accept_socket(
        &mut self,
        listener: ListenerId,
        peer: Option<IpAddr>,
        stream: Stream,
    ) {
        let now = clock::now();
        match self.core.accept(now, listener, peer) {
            Ok(conn) => {
                match self.tls.accept(listener).transpose() {
                    Ok(tls) => self.install_socket(conn, stream, tls),
                    Err(e) => {
                        log::warn!("TLS session for a client: {e}");
                        self.core.handle(now, Input::Errored { conn });
                    }
                }
                self.drain();
            }
            Err(_at_capacity) => {
                // Only while draining (the gate checked for room first): the socket drops here
                // (closed; counted in stats().refused), and the accept loops take nothing more
                // until a client connection ends — the kernel queues the next ones meanwhile.
                self.gate.at_capacity();
            }
        }
    }

    /// A virtual client connection on `listener` that has sent `request`; `sink` receives what
    /// the core answers. Gives the sink back when the core refused it (at capacity or draining).
    pub(crate) fn accept_virtual<S: VirtualSink>(
        &mut self,
        listener: ListenerId,
        request: &[u8],
        sink: S,
    ) -> Result<(), S> {
        let now = clock::now();
        let Ok(conn) = self.core.accept(now, listener, None) else {
            return Err(sink);
        };
        let signals = Rc::new(Signals::default());
        spawn(pump_loop(self.shared(), conn, signals.clone(), sink)).detach();
        self.put(conn, Slot::Virtual { signals });
        self.core.handle(
            now,
            Input::Received {
                conn,
                data: request,
            },
        );
        self.drain();
        Ok(())
    }

    /// Records every finished exchange and acts on every output of the core, then writes the
    /// access log lines, re-arms the timer and reports a finished drain.
    pub(crate) fn drain(&mut self) {
        let now = clock::now();
        let mut closed = false;
        while let Some(out) = self.core.poll_output() {
            closed |= matches!(out, Output::Close { .. });
            match out {
                Output::Connect { conn, server } => {
                    let keepalive = upstream_keepalive(&self.core, server);
                    let task = spawn(connect_task(self.shared(), conn, server, keepalive));
                    self.put(conn, Slot::Connecting { task: Some(task) });
                }
                Output::Write { conn } => match self.slot(conn) {
                    Some(Slot::Socket { signals, .. }) if !signals.write.get() => {
                        self.flush(now, conn)
                    }
                    Some(Slot::Virtual { signals }) => {
                        signals.write.set(true);
                        signals.notify();
                    }
                    _ => {}
                },
                Output::Interest { conn, read } => {
                    if let Some(Slot::Socket { signals, .. }) = self.slot(conn) {
                        signals.read.set(read);
                        signals.notify();
                    }
                }
                // Only ever after the last queued byte was written (the core's contract).
                Output::Shutdown { conn } => {
                    match self.slot_mut(conn) {
                        Some(Slot::Socket {
                            tls: Some(session), ..
                        }) => {
                            // close_notify first; the flush shuts the socket after it.
                            session.borrow_mut().shutdown();
                            self.flush(now, conn);
                        }
                        Some(Slot::Socket { stream, .. }) => stream.shutdown_write(),
                        Some(Slot::Virtual { .. }) => {
                            // The core lingers for the client's EOF after a close-after-error
                            // response; an in-process client has nothing more to send, so say
                            // so at once instead of keeping the connection for the lingering
                            // timeout.
                            self.core.handle(now, Input::ReadClosed { conn });
                        }
                        _ => {}
                    }
                }
                Output::Close { conn, reset } => match self.take(conn) {
                    Some(Slot::Socket {
                        stream,
                        signals,
                        tls,
                        ..
                    }) => {
                        self.trim.closed();
                        if let Some(session) = tls {
                            session.borrow_mut().close(stream.sock(), reset);
                        }
                        if reset {
                            stream.set_reset_on_close();
                        }
                        signals.closed.set(true);
                        signals.notify();
                        // Dropping the slot cancels its tasks; the socket closes with the last
                        // reference to it.
                    }
                    Some(Slot::Virtual { signals }) => {
                        signals.reset.set(reset);
                        signals.closed.set(true);
                        signals.notify();
                    }
                    Some(Slot::Connecting { .. }) | None => {}
                },
                Output::HandOver {
                    conn,
                    to_worker,
                    handed,
                } => self.hand_over(now, conn, to_worker, handed),
            }
        }
        self.record_exchanges();
        if let Some(r) = &mut self.recorder {
            r.flush();
            r.tick(&self.core, now);
        }
        self.hand_off_idle();
        self.trim.released(self.core.take_released());
        if self.trim.pending() {
            self.trim.tick(std::time::Instant::now());
        }
        let next = self.core.poll_timeout();
        if next.is_some() && (self.timer.armed.get().is_none() || next < self.timer.armed.get()) {
            self.timer.changed.notify(1);
        }
        if self.core.is_drained() {
            self.drained.notify(usize::MAX);
        }
        if closed {
            self.closes.notify(usize::MAX);
        }
        if closed && !self.gate.is_open() {
            self.room.notify(usize::MAX);
        }
    }

    /// Moves the idle upstream connection `conn` to worker `to`: its socket (a duplicate
    /// descriptor, see [`Stream::detach`]) and TLS session go through the channel first; the
    /// core wakes that worker once the outputs are drained. What cannot move (no sibling, the
    /// worker gone, the session still borrowed) closes here, and the core gives its slot back.
    fn hand_over(&mut self, now: Time, conn: ConnId, to: usize, handed: Handed) {
        let Some(Slot::Socket {
            stream,
            signals,
            tls,
            ..
        }) = self.take(conn)
        else {
            self.core.hand_over_failed(now, handed);
            return;
        };
        // Its reader and writer tasks end; this thread's handle on the socket drops with them.
        signals.closed.set(true);
        signals.notify();
        let tls = match tls.map(Rc::try_unwrap) {
            None => Ok(None),
            Some(Ok(session)) => Ok(Some(session.into_inner())),
            Some(Err(_)) => Err(()),
        };
        let moved = match (tls, stream.detach()) {
            (Ok(tls), Ok(stream)) => Some(Moved {
                stream,
                tls,
                handed,
                ledger: self.core.shared().clone(),
            }),
            _ => None,
        };
        let sent = match (moved, &self.hand_over_to) {
            (Some(m), Some(send)) => send(to, m),
            _ => false,
        };
        if !sent {
            // Dropped above (the duplicate too): closed before the slot is given back.
            drop(stream);
            self.core.hand_over_failed(now, handed);
        }
    }

    /// Writes what the core has queued for a socket until the queue is empty or a write comes up
    /// short (the shared write loop, `upkeep_runtime::io::flush`); then the writer task waits
    /// for writability.
    fn flush(&mut self, now: Time, conn: ConnId) {
        let Some(Slot::Socket {
            stream, signals, ..
        }) = self.slot(conn)
        else {
            return;
        };
        let (stream, signals) = (stream.clone(), signals.clone());
        let flushed = match self.session(conn) {
            Some(session) => session
                .borrow_mut()
                .flush(&mut self.core, now, conn, stream.sock()),
            None => upkeep_runtime::io::flush(&mut self.core, now, conn, stream.sock()),
        };
        match flushed {
            Flushed::Empty | Flushed::Done => {}
            Flushed::Blocked => {
                signals.write.set(true);
                signals.notify();
            }
        }
    }

    /// Reads what a readable socket has (a few reads at most) straight into the core's buffer
    /// (the shared read loop, `upkeep_runtime::io::Reader`). False once the connection is done
    /// reading (EOF, error, or closed by the core).
    fn read_some(
        &mut self,
        conn: ConnId,
        stream: &Stream,
        signals: &Signals,
        reader: &mut Reader,
    ) -> bool {
        for _ in 0..READS_PER_WAKE {
            if signals.closed.get() {
                return false;
            }
            if !signals.read.get() {
                return true;
            }
            let step = match self.session(conn) {
                Some(session) => {
                    session
                        .borrow_mut()
                        .read(&mut self.core, clock::now(), conn, stream.sock())
                }
                None => reader.read(&mut self.core, clock::now(), conn, stream.sock()),
            };
            self.drain();
            match step {
                ReadStep::Again => {}
                ReadStep::Wait => return true,
                ReadStep::Done => return false,
            }
        }
        // The budget ended after a read that filled its room: readiness (awaited next) says
        // nothing of an empty socket, so a response that read ended is settled here.
        if self.core.is_settling(conn) && self.session(conn).is_none() {
            upkeep_runtime::io::settle(&mut self.core, clock::now(), conn, stream.sock());
            self.drain();
        }
        true
    }

    /// Records operator facts from now on: counters and, if `recorder` has one, the access log.
    pub(crate) fn record(&mut self, recorder: Recorder) {
        recorder.attach(&mut self.core);
        self.recorder = Some(recorder);
    }

    fn record_exchanges(&mut self) {
        let Some(r) = &mut self.recorder else {
            return;
        };
        while let Some(ex) = self.core.poll_exchange() {
            r.exchange(&self.core, &ex);
        }
    }

    /// A snapshot of this driver's counters (empty without a recorder).
    pub(crate) fn snapshot(&self) -> Snapshot {
        self.recorder
            .as_ref()
            .map(|r| r.snapshot(&self.core, clock::now()))
            .unwrap_or_default()
    }

    /// Reopens the access log file (after log rotation).
    pub(crate) fn reopen_log(&mut self) {
        if let Some(r) = &mut self.recorder {
            r.reopen();
        }
    }

    /// Records the exchanges still in progress as cut at shutdown (before [`Driver::close_all`]);
    /// returns how many there were.
    pub(crate) fn abort_exchanges(&mut self) -> usize {
        let cut = self.core.abort_exchanges(clock::now());
        self.record_exchanges();
        if let Some(r) = &mut self.recorder {
            r.flush();
        }
        cut
    }

    /// Graceful drain (see [`Core::begin_drain`]).
    pub(crate) fn begin_drain(&mut self) {
        self.draining = true;
        self.core.begin_drain(clock::now());
        self.drain();
    }

    /// An event notified whenever a drain pass finds the core drained.
    pub(crate) fn drained_event(&self) -> Rc<Event> {
        self.drained.clone()
    }

    /// Drains handing over (a new server set, see the `generation` module, which has moved
    /// the idle pooled connections first): each client connection moves to `to` as soon as it
    /// is between requests (requests in flight finish here first), its socket never closing;
    /// no more accepts here (the caller moves the listeners).
    pub(crate) fn begin_handoff(&mut self, to: &Shared) {
        self.successor = Some(Rc::downgrade(to));
        self.draining = true;
        self.core.begin_handoff(clock::now());
        self.drain();
    }

    /// In a handoff drain, moves every client connection that is between requests to the
    /// successor: released by the core with the bytes it held, its socket and session along.
    fn hand_off_idle(&mut self) {
        let Some(mut to) = self.successor.as_ref().and_then(std::rc::Weak::upgrade) else {
            return;
        };
        // The newest generation: a successor replaced in turn drains and would refuse.
        loop {
            let next = match to.try_borrow() {
                Ok(d) => d.successor.as_ref().and_then(std::rc::Weak::upgrade),
                Err(_) => None,
            };
            match next {
                Some(n) => to = n,
                None => break,
            }
        }
        let now = clock::now();
        if to.try_borrow().map_or(true, |d| d.draining) {
            // The newest generation drains too (a shutdown): it would refuse them. Idle client
            // connections close here instead, once what is queued for each is written (they
            // are then no longer idle: the pass this causes finds none).
            if !self.core.idle_clients().is_empty() {
                for l in 0..self.core.config().listeners.len() {
                    self.core.close_idle_on(now, ListenerId(l as u32));
                }
                self.drain();
            }
            return;
        }
        for id in self.core.idle_clients() {
            // Bytes rustls already encrypted leave with the session, not as unsent bytes.
            if let Some(session) = self.session(id) {
                session.borrow_mut().settle(&mut self.core, now, id);
            }
            let Some(released) = self.core.release_idle(id) else {
                continue;
            };
            let Some((stream, tls)) = self.detach_socket(id) else {
                continue;
            };
            // Refused only when the successor drains too (a shutdown): the socket closes.
            to.borrow_mut().adopt_client(stream, tls, &released);
        }
    }

    /// Takes the socket (and TLS session) of a connection the core let go of, for another
    /// driver: its tasks here are cancelled, the socket stays open.
    fn detach_socket(&mut self, id: ConnId) -> Option<(Rc<Stream>, Option<SharedSession>)> {
        let Some(Slot::Socket {
            stream,
            signals,
            tls,
            ..
        }) = self.take(id)
        else {
            return None;
        };
        signals.closed.set(true);
        signals.notify();
        Some((stream, tls))
    }

    /// Takes over a client connection a previous generation released ([`Core::adopt`]).
    fn adopt_client(
        &mut self,
        stream: Rc<Stream>,
        tls: Option<Rc<RefCell<Session>>>,
        released: &upkeep_core::Released,
    ) {
        let now = clock::now();
        if let Ok(conn) = self.core.adopt(now, released.listener, released) {
            self.install_shared(conn, stream, tls);
            self.drain();
        }
    }

    /// An event notified whenever a drain pass saw a connection close.
    pub(crate) fn closes_event(&self) -> Rc<Event> {
        self.closes.clone()
    }

    /// Takes every idle pooled upstream connection out of this driver's core
    /// ([`Core::release_pooled`]) with its socket, for a new generation's driver to
    /// [adopt](Driver::adopt_pooled). Their tasks here are cancelled.
    pub(crate) fn release_pooled(&mut self) -> Vec<Pooled> {
        let mut out = Vec::new();
        for (id, server, settings, expires) in self.core.release_pooled() {
            let Some((stream, tls)) = self.detach_socket(id) else {
                continue;
            };
            // A TLS connection moves with its session and the settings it was opened under;
            // one whose settings and session disagree is dropped (closed) rather than adopted
            // as something it is not.
            let tls = match (settings, tls) {
                (Some(settings), Some(session)) => Some((settings, session)),
                (None, None) => None,
                _ => continue,
            };
            out.push(Pooled {
                stream,
                server,
                expires,
                tls,
            });
        }
        out
    }

    /// Takes an idle upstream connection another driver [released](Driver::release_pooled)
    /// into this core's pool ([`Core::adopt_pooled`]); closed when no group of this
    /// configuration has its server (or the server has no room).
    pub(crate) fn adopt_pooled(&mut self, pooled: Pooled) {
        let now = clock::now();
        let (settings, session) = pooled.tls.unzip();
        if let Some(id) =
            self.core
                .adopt_pooled(now, &pooled.server, settings.as_ref(), pooled.expires)
        {
            if let (Some(session), Some(server)) = (&session, self.core.upstream_server(id)) {
                // Its session was counted under the old configuration's numbering.
                session.borrow_mut().adopted(Origin::Server(server));
            }
            self.install_shared(id, pooled.stream, session);
            // Bytes or an EOF that came while it moved evict it: it is read at once.
            self.drain();
        }
    }

    /// Cuts every connection through the core (each as if its socket failed), so that the core
    /// lets go of what it counts in the ledger — slots a generation sharing it needs — and
    /// its in-process clients see their responses cut; then drops what is left.
    pub(crate) fn abort_all(&mut self) {
        let now = clock::now();
        let conns: Vec<ConnId> = self.slots.iter().flatten().map(|(id, _)| *id).collect();
        for conn in conns {
            self.core.handle(now, Input::Errored { conn });
        }
        self.drain();
        self.close_all();
    }

    /// Drops every connection now (stop without draining).
    pub(crate) fn close_all(&mut self) {
        for (_, slot) in self.slots.drain(..).flatten() {
            match slot {
                Slot::Socket { signals, .. } | Slot::Virtual { signals } => {
                    signals.reset.set(true);
                    signals.closed.set(true);
                    signals.notify();
                }
                Slot::Connecting { .. } => {}
            }
        }
    }
}

/// An idle upstream connection on its way from one driver to another (see
/// [`Driver::release_pooled`]).
pub(crate) struct Pooled {
    stream: Rc<Stream>,
    server: Address,
    expires: Time,
    tls: Option<(UpstreamTls, Rc<RefCell<Session>>)>,
}

/// Waits for `d` to report a finished drain.
pub(crate) async fn drained(d: &Shared) {
    let event = d.borrow().drained_event();
    loop {
        let listener = event.listen();
        if d.borrow().core.is_drained() {
            return;
        }
        listener.await;
    }
}

async fn timer_loop(d: Shared) {
    let state = d.borrow().timer.clone();
    let mut timer = async_io::Timer::never();
    loop {
        let nudge = state.changed.listen();
        let deadline = d.borrow().core.poll_timeout();
        state.armed.set(deadline);
        match deadline {
            Some(t) => timer.set_at(clock::instant_of(t)),
            None => timer = async_io::Timer::never(),
        }
        future::or(
            async {
                (&mut timer).await;
            },
            nudge,
        )
        .await;
        let now = clock::now();
        if deadline.is_some_and(|t| now >= t) {
            let mut d = d.borrow_mut();
            d.core.handle_timeout(now);
            d.drain();
        }
    }
}

/// Accepts connections on one listener for the life of the task, by the shared accept policy
/// (`upkeep_runtime::accept`): while the driver's gate is paused nothing is taken off the
/// listener, so connections wait in the kernel's backlog instead of being accepted and closed.
async fn accept_loop(d: Shared, id: ListenerId, listener: Rc<Listener>) {
    loop {
        accepting(&d).await;
        let wait = {
            let mut guard = d.borrow_mut();
            let driver = &mut *guard;
            // Not `Accept`: full, or another listener's accept found the limit meanwhile.
            driver.gate.admit(&driver.core) == Admit::Accept
                && match listener.try_accept() {
                    Ok((stream, peer)) => {
                        driver.accept_socket(id, peer, stream);
                        false
                    }
                    Err(e) => driver.gate.pause_after(&e, Instant::now()) == AfterError::Wait,
                }
        };
        if wait && let Err(e) = listener.readable().await {
            d.borrow_mut().gate.pause_after(&e, Instant::now());
        }
    }
}

/// Waits until the driver's accept gate is open, ending a pause that is over: at its time, or
/// once a connection closed and the core has room.
async fn accepting(d: &Shared) {
    loop {
        let (room, until) = {
            let mut driver = d.borrow_mut();
            let driver = &mut *driver;
            if driver.gate.reopen(&driver.core, Instant::now()) {
                return;
            }
            (driver.room.listen(), driver.gate.resume_at())
        };
        match until {
            Some(t) => {
                async_io::Timer::at(t).await;
            }
            None => room.await,
        }
    }
}

async fn connect_task(shared: Shared, conn: ConnId, server: ServerId, tcp_keepalive: Duration) {
    let (addr, tls) = {
        let d = shared.borrow();
        (d.core.server_address(server).clone(), d.tls.connect(server))
    };
    let result = match tls.transpose() {
        Ok(tls) => Stream::connect(&addr, tcp_keepalive)
            .await
            .map(|s| (s, tls)),
        Err(e) => Err(e),
    };
    // A TLS upstream is connected once its handshake is complete, so the core's connect
    // timeout bounds the handshake too (it cancels this task by closing the connection).
    let result = match result {
        Ok((stream, Some(mut session))) => match handshake(&shared, &stream, &mut session).await {
            Ok(()) => Ok((stream, Some(session))),
            Err(why) => {
                let mut d = shared.borrow_mut();
                if let Some(Slot::Connecting { task: Some(t) }) = d.take(conn) {
                    t.detach();
                }
                d.core.handle(clock::now(), why.input(conn));
                d.drain();
                return;
            }
        },
        other => other,
    };
    let mut d = shared.borrow_mut();
    if !matches!(d.slot(conn), Some(Slot::Connecting { .. })) {
        return;
    }
    let now = clock::now();
    match result {
        Ok((stream, tls)) => {
            d.install_socket(conn, stream, tls);
            d.core.handle(now, Input::Connected { conn });
        }
        Err(e) => {
            upkeep_runtime::trouble::connect_failed(&d.core, server, &e);
            if let Some(Slot::Connecting { task: Some(t) }) = d.take(conn) {
                t.detach();
            }
            // A local shortage (descriptors, ports) is not the server's fault: see the core.
            d.core.handle(now, Input::connect_error(conn, &e));
        }
    }
    d.drain();
}

/// Drives an upstream TLS handshake to its end, awaiting the socket between steps.
async fn handshake(
    d: &Shared,
    stream: &Stream,
    session: &mut Session,
) -> Result<(), upkeep_runtime::tls::Failure> {
    loop {
        let step = session.handshake(&d.borrow().core, stream.sock());
        let ready = match step {
            Handshake::Done => return Ok(()),
            Handshake::Failed(why) => return Err(why),
            Handshake::Pending if session.conn().wants_write() => stream.writable().await,
            Handshake::Pending => stream.readable().await,
        };
        if let Err(e) = ready {
            return Err(upkeep_runtime::tls::Failure::Io(e.kind()));
        }
    }
}

async fn reader_loop(d: Shared, conn: ConnId, stream: Rc<Stream>, signals: Rc<Signals>) {
    let mut reader = Reader::default();
    loop {
        if !signals.wait(|s| s.read.get()).await {
            return;
        }
        // Decrypted bytes rustls kept while reading was paused are not a socket event.
        let buffered = d
            .borrow()
            .session(conn)
            .is_some_and(|s| s.borrow().conn().has_buffered());
        if !buffered && stream.readable().await.is_err() {
            let mut d = d.borrow_mut();
            d.core.handle(clock::now(), Input::Errored { conn });
            d.drain();
            return;
        }
        if !d
            .borrow_mut()
            .read_some(conn, &stream, &signals, &mut reader)
        {
            return;
        }
    }
}

async fn writer_loop(d: Shared, conn: ConnId, stream: Rc<Stream>, signals: Rc<Signals>) {
    loop {
        if !signals.wait(|s| s.write.get()).await {
            return;
        }
        let ok = stream.writable().await.is_ok();
        let mut d = d.borrow_mut();
        if signals.closed.get() {
            return;
        }
        signals.write.set(false);
        let now = clock::now();
        if ok {
            d.flush(now, conn);
        } else {
            d.core.handle(now, Input::Errored { conn });
        }
        d.drain();
    }
}

/// Moves what the core writes to a virtual connection into its sink, one queue-full at a time:
/// the core's queue, not the sink, holds the backlog, so a slow receiver backpressures the
/// upstream read like a slow client socket would.
async fn pump_loop(d: Shared, conn: ConnId, signals: Rc<Signals>, sink: impl VirtualSink) {
    loop {
        // Watch the receiver too: one that goes away while nothing is being delivered (the
        // backend has not answered yet, or its body stalls) is a client that hung up. Told
        // nothing, the core would hold the exchange and its upstream connection until the
        // backend sent more or `read_timeout` passed.
        let open = future::or(
            async { Some(signals.wait(|s| s.write.get()).await) },
            async {
                sink.gone().await;
                None
            },
        )
        .await;
        let Some(open) = open else {
            let mut d = d.borrow_mut();
            if !signals.closed.get() {
                d.core.handle(clock::now(), Input::Errored { conn });
                d.drain();
            }
            return;
        };
        let bytes = {
            let mut d = d.borrow_mut();
            signals.write.set(false);
            let n = d.core.pending_len(conn);
            if n == 0 {
                None
            } else {
                // Everything queued, taken the one way bytes leave the core (`write_with`, as
                // many times as the queue has slices for).
                let mut buf = bytes::BytesMut::with_capacity(n);
                let now = clock::now();
                while let Ok(WriteOutcome::Wrote { left: 1.., .. }) =
                    d.core.write_with(now, conn, |iov| {
                        iov.iter().for_each(|piece| buf.extend_from_slice(piece));
                        Ok(iov.iter().map(|piece| piece.len()).sum())
                    })
                {}
                d.drain();
                Some(buf.freeze())
            }
        };
        let Some(b) = bytes else {
            if !open {
                sink.finish(signals.is_reset()).await;
                return;
            }
            continue;
        };
        if sink.deliver(b).await.is_err() {
            let mut d = d.borrow_mut();
            d.core.handle(clock::now(), Input::Errored { conn });
            d.drain();
            return;
        }
    }
}

/// Starts accepting on `listener` (the task stops when dropped, between two accepts: a new
/// generation's driver takes the same listener over without losing a connection).
pub(crate) fn spawn_accept(d: Shared, id: ListenerId, listener: Rc<Listener>) -> Task<()> {
    spawn(accept_loop(d, id, listener))
}
