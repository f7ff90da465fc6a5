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
use upkeep_core::{ConnId, Core, Input, ListenerId, Output, ServerId, Time, WriteOutcome};
use upkeep_runtime::accept::{Admit, AfterError, Gate};
use upkeep_runtime::clock;
use upkeep_runtime::io::{Flushed, ReadStep, Reader};
use upkeep_runtime::metrics::Snapshot;
use upkeep_runtime::recorder::Recorder;
use upkeep_runtime::socket::upstream_keepalive;
use upkeep_runtime::tls::{Contexts, Handshake, Session};
use upkeep_runtime::trim::Trim;

use crate::listener::Listener;
use crate::stream::Stream;

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

fn spawn(f: impl Future<Output = ()> + 'static) -> Task<()> {
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

/// Timer-task state: the deadline it sleeps until, and a nudge when an earlier one appears.
#[derive(Debug, Default)]
struct TimerState {
    armed: Cell<Option<Time>>,
    changed: Event,
}

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
    this: std::rc::Weak<RefCell<Driver>>,
    /// Returns freed memory to the system after bursts of closes (checked on the next
    /// activity after the burst: this runtime has no trim timer).
    trim: Trim,
}

/// The shared handle every task holds.
pub(crate) type Shared = Rc<RefCell<Driver>>;

impl Driver {
    /// A driver for `core`, with its timer task running on this thread's executor.
    pub(crate) fn start(core: Core) -> (Shared, Task<()>) {
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
                this: this.clone(),
                trim: Trim::default(),
            })
        });
        let timer = spawn(timer_loop(d.clone()));
        {
            // Warm connections (`min_idle`) open now, not at the first event.
            let mut driver = d.borrow_mut();
            driver.core.start(clock::now());
            driver.drain();
        }
        (d, timer)
    }

    /// Uses `tls` for TLS listeners and groups from now on.
    pub(crate) fn use_tls(&mut self, tls: Arc<Contexts>) {
        self.tls = tls;
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
        let stream = Rc::new(stream);
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
                tls: tls.map(|s| Rc::new(RefCell::new(s))),
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
            }
        }
        self.record_exchanges();
        if let Some(r) = &mut self.recorder {
            r.flush();
            r.tick(&self.core, now);
        }
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
        if closed && !self.gate.is_open() {
            self.room.notify(usize::MAX);
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
        self.core.begin_drain(clock::now());
        self.drain();
    }

    /// An event notified whenever a drain pass finds the core drained.
    pub(crate) fn drained_event(&self) -> Rc<Event> {
        self.drained.clone()
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
async fn accept_loop(d: Shared, id: ListenerId, listener: Listener) {
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

/// Starts accepting on `listener` (the task stops when dropped).
pub(crate) fn spawn_accept(d: Shared, id: ListenerId, listener: Listener) -> Task<()> {
    spawn(accept_loop(d, id, listener))
}
