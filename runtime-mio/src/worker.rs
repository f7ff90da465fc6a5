//! One worker: a thread with its own `mio::Poll`, its own [`Core`] and pool, its own listeners
//! (an `SO_REUSEPORT` socket per TCP address) and a table of sockets indexed by the core's
//! `ConnId.index` (which doubles as the mio `Token`). What workers share is the core's ledger
//! of servers (atomics: `max_conns` slots, the queue, states, health), so the request path takes
//! no lock; the main thread talks to a worker only through a command channel and a
//! `mio::Waker`, which other workers also use when a slot this worker waits for frees.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::{Events, Poll, Token, Waker};
use upkeep_core::config::{Io, UpstreamTls};
use upkeep_core::{
    Address, Config, ConnId, Core, Handed, Input, ListenerId, Output, Released, ServerId, Shared,
    Time,
};
use upkeep_runtime::accept::{Admit, AfterError, Gate};
use upkeep_runtime::board::{self, Reporter};
use upkeep_runtime::clock;
use upkeep_runtime::io::{Flushed, ReadStep, Reader};
use upkeep_runtime::metrics::Snapshot;
use upkeep_runtime::recorder::Recorder;
use upkeep_runtime::socket::upstream_keepalive;
use upkeep_runtime::splice::{Pipe, Pipes};
use upkeep_runtime::tls::{self, Contexts, Session};
use upkeep_runtime::trim::Trim;

use crate::net::{Listener, Stream};

/// Wakes the loop for commands.
const WAKER: Token = Token(usize::MAX);
/// Listener `i` has token `LISTENER_BASE - i` (connection tokens are `u32` slab indexes, far below).
const LISTENER_BASE: usize = usize::MAX - 1;
/// Reads per socket per loop pass, so one fast sender cannot starve the others.
const READ_BUDGET: usize = 16;
/// A peer with this many bytes queued after a read is written to right after that read, not
/// with the pass's other writes (`run_queues`): one full read (`io::READ_SIZE`), so small
/// answers still go out back to back, while bulk copies are written as they are read, as
/// before reads came first (what a peer may hold is the core's `write_high_water` either way).
const FLUSH_AT_ONCE: usize = upkeep_runtime::io::READ_SIZE;

/// What the main thread can ask of a worker.
#[derive(Debug)]
pub(crate) enum Command {
    /// Stop accepting, finish in-flight exchanges, exit when drained (or at the shutdown timeout).
    /// The sender, if any, hears back once the worker's listeners are closed.
    Drain {
        ack: Option<Sender<()>>,
        /// Per listener: the socket lives on in a new generation (a reload), so the queue is
        /// left to the new worker instead of being accepted here before closing.
        handed_over: Vec<bool>,
        /// A reload: idle client connections move to these workers instead of being closed.
        handoff: Option<Handoff>,
        /// Per listener: the new configuration has it. Idle connections on one it dropped have
        /// nowhere to move: they close once their last response is written.
        kept: Vec<bool>,
    },
    /// Take over a client connection a draining worker released (a reload).
    Adopt {
        stream: Stream,
        /// Its TLS session, when it arrived on a TLS listener (it moves with the socket).
        tls: Option<Box<Session>>,
        /// The configured address of the listener it arrived on.
        listener: Address,
        released: Released,
    },
    /// Take an idle upstream connection to `server` into the pool (a reload keeps them).
    AdoptPooled {
        stream: Stream,
        server: Address,
        /// Idle until then at the latest (see [`Core::release_pooled`]).
        expires: upkeep_core::Time,
        /// The TLS settings it was opened (and verified) under, and its session: only a group
        /// with the very same settings may take it in.
        tls: Option<(UpstreamTls, Box<Session>)>,
    },
    /// Take an idle upstream connection a sibling worker of the same generation handed over:
    /// the request first in line for its server's `max_conns` slot waits here (see
    /// [`Core::adopt_handed`]).
    AdoptHanded {
        stream: Stream,
        /// Its TLS session, when its group is TLS (it moves with the socket).
        tls: Option<Box<Session>>,
        handed: Handed,
    },
    /// Exit now.
    Stop,
    /// Send a snapshot of the counters.
    Snapshot(Sender<Snapshot>),
    /// Reopen the access log file.
    ReopenLog,
}

/// Where a reload's old worker sends its idle client connections (see
/// [`Core::begin_handoff`]): the newest generation's workers at the time each connection
/// becomes idle (a connection that finishes its exchange after further reloads goes to the
/// newest workers, not to ones that may have exited since). The adopting worker finds the
/// listener of the same address in its configuration; a connection with none is closed.
pub(crate) type Handoff = Arc<Mutex<Vec<Control>>>;

/// The main thread's handle on a worker.
#[derive(Debug, Clone)]
pub(crate) struct Control {
    /// Process-unique worker id.
    pub(crate) id: u64,
    tx: Sender<Command>,
    waker: Arc<Waker>,
}

impl Control {
    /// Sends `cmd`; false if the worker has exited.
    pub(crate) fn send(&self, cmd: Command) -> bool {
        self.tx.send(cmd).is_ok() && self.waker.wake().is_ok()
    }
}

impl Reporter for Control {
    fn id(&self) -> u64 {
        self.id
    }

    fn ask_snapshot(&self, reply: Sender<Snapshot>) -> bool {
        self.send(Command::Snapshot(reply))
    }
}

/// Live workers and the retired totals (see [`Worker::exit`]).
pub(crate) type Board = board::Board<Control>;

/// Everything a worker starts with.
#[derive(Debug)]
pub(crate) struct Setup {
    pub(crate) index: usize,
    pub(crate) id: u64,
    pub(crate) config: Config,
    /// The ledger this worker's generation shares.
    pub(crate) ledger: Shared,
    pub(crate) listeners: Vec<Listener>,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) board: Arc<Board>,
    /// Counts the requests cut at the shutdown timeout (the proxy's drain reports them).
    pub(crate) aborted: Arc<AtomicU64>,
    /// The TLS material of this generation's configuration.
    pub(crate) tls: Arc<Contexts>,
    /// Every worker of this generation by index (filled once all are spawned): where an idle
    /// upstream connection is handed for the request first in line.
    pub(crate) siblings: Siblings,
}

/// The workers of one generation, by their index in its ledger.
pub(crate) type Siblings = Arc<Mutex<Vec<Control>>>;

/// Starts a worker thread; it is on the board (visible to metrics) before this returns.
pub(crate) fn spawn(setup: Setup) -> io::Result<(Control, JoinHandle<()>)> {
    if setup.config.runtime.io == Io::Uring {
        return crate::uring::spawn(setup);
    }
    let poll = Poll::new()?;
    let (control, rx, recorder, mut core) = open(
        &poll,
        WAKER,
        setup.id,
        setup.index,
        setup.config,
        setup.ledger,
    )?;
    // Large plain bodies move with splice(2) (`limits.splice_min`).
    core.enable_splice(true);
    let mut worker = Worker {
        id: setup.id,
        poll,
        core,
        listeners: setup.listeners.into_iter().map(Some).collect(),
        gate: Gate::default(),
        socks: Vec::new(),
        to_read: VecDeque::new(),
        to_write: VecDeque::new(),
        spliced_to: None,
        now: Time::ZERO,
        rx,
        recorder,
        drain_deadline: None,
        shutdown_timeout: setup.shutdown_timeout,
        board: setup.board,
        aborted: setup.aborted,
        handoff: None,
        handed: 0,
        gone: Vec::new(),
        tls: setup.tls,
        siblings: setup.siblings,
        trim: Trim::default(),
        pipes: Pipes::default(),
    };
    for i in 0..worker.listeners.len() {
        if let Some(l) = worker.listeners[i].as_mut() {
            l.register(worker.poll.registry(), Token(LISTENER_BASE - i))?;
        }
    }
    worker.board.join(control.clone());
    let thread = std::thread::Builder::new()
        .name(format!("upkeep-worker-{}", setup.index))
        .spawn(move || worker.run())?;
    Ok((control, thread))
}

/// A socket the core knows as `id`.
#[derive(Debug)]
struct Sock {
    id: ConnId,
    stream: Stream,
    /// The core wants us to read (backpressure turns this off).
    read: bool,
    /// The peer's EOF was reported; nothing more to read.
    eof: bool,
    /// Upstream connect still in progress.
    connecting: bool,
    /// The server an upstream connection goes to (for the operator log).
    server: Option<ServerId>,
    /// Read size and announced FIN (the shared read loop's state).
    reader: Reader,
    /// TLS between the socket and the core (a TLS listener's or TLS group's connection).
    tls: Option<Box<Session>>,
    /// Body bytes spliced toward this connection, not yet written (`upkeep_runtime::splice`;
    /// as many as the core's `piped` count).
    pipe: Option<Pipe>,
}

/// The socket the core knows as `id` (a slot reused by a newer connection is not it). A free
/// function so `read` and `flush` can hold it beside a borrow of the core.
fn sock_in(socks: &mut [Option<Sock>], id: ConnId) -> Option<&mut Sock> {
    socks
        .get_mut(id.index as usize)
        .and_then(Option::as_mut)
        .filter(|s| s.id == id)
}

struct Worker {
    id: u64,
    poll: Poll,
    core: Core,
    listeners: Vec<Option<Listener>>,
    /// Whether accepting is paused (the shared accept policy).
    gate: Gate,
    socks: Vec<Option<Sock>>,
    to_read: VecDeque<ConnId>,
    to_write: VecDeque<ConnId>,
    /// The peer the last read spliced toward, written out right after that read (see
    /// `run_queues`).
    spliced_to: Option<ConnId>,
    /// The time of the current pass of `run_queues`, read once when it starts: the reads and
    /// writes of a pass are the core's inputs at that time, as the core's `Time` contract has
    /// it (a clock read per read and write cost ~1 % of the CPU of a 100-byte request).
    now: Time,
    rx: Receiver<Command>,
    recorder: Recorder,
    drain_deadline: Option<Instant>,
    shutdown_timeout: Duration,
    board: Arc<Board>,
    aborted: Arc<AtomicU64>,
    /// Draining for a reload: where idle client connections go.
    handoff: Option<Handoff>,
    /// Connections handed off so far (spreads them over the new workers).
    handed: usize,
    /// Draining for a reload: the listeners the new configuration dropped.
    gone: Vec<ListenerId>,
    tls: Arc<Contexts>,
    /// This generation's workers (see [`Setup::siblings`]).
    siblings: Siblings,
    /// Returns freed memory to the system after bursts of closes.
    trim: Trim,
    /// Empty pipes for zero-copy bodies.
    pipes: Pipes,
}

/// Whether the loop goes on.
enum Flow {
    Continue,
    Exit,
}

impl Worker {
    /// Reads the clock into `now`: the time of the step that follows, which every input of
    /// that step gives the core (so the core never gets a time earlier than one it had).
    fn tick(&mut self) -> Time {
        self.now = clock::now();
        self.now
    }

    fn run(mut self) {
        // Warm connections (`min_idle`) open now, not at the first event.
        self.tick();
        self.core.start(self.now);
        self.after_input();
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("worker {}: poll failed: {e}", self.id);
                break;
            }
            // The time of this pass's events (`now`: refreshed before each later step).
            self.tick();
            let mut commands = false;
            for event in events.iter() {
                match event.token() {
                    WAKER => commands = true,
                    Token(t) if t > LISTENER_BASE - self.listeners.len() && t <= LISTENER_BASE => {
                        self.accept(LISTENER_BASE - t)
                    }
                    Token(t) => self.on_event(t, event),
                }
            }
            if commands {
                if matches!(self.commands(), Flow::Exit) {
                    break;
                }
                // A wake may also come from another worker through the shared ledger.
                self.tick();
                self.core.handle_shared(self.now);
                self.after_input();
            }
            self.tick();
            if let Some(deadline) = self.core.poll_timeout()
                && deadline <= self.now
            {
                self.core.handle_timeout(self.now);
                self.after_input();
            }
            self.run_queues();
            self.maybe_resume();
            if self.handoff.is_some() {
                self.hand_off_idle();
            }
            after_pass(&mut self.recorder, &mut self.core, &mut self.trim);
            if drain_over(self.id, &self.core, self.drain_deadline) {
                break;
            }
        }
        self.exit();
    }

    /// The poll timeout: the core's next deadline, a pending resume or drain deadline, or zero
    /// when reads were cut short by the budget.
    fn poll_timeout(&self) -> Option<Duration> {
        if !self.to_read.is_empty() || !self.to_write.is_empty() {
            return Some(Duration::ZERO);
        }
        next_wait(&self.core, &self.gate, self.drain_deadline, &self.trim)
    }

    fn sock(&mut self, id: ConnId) -> Option<&mut Sock> {
        sock_in(&mut self.socks, id)
    }

    fn insert(&mut self, sock: Sock) {
        let i = sock.id.index as usize;
        if self.socks.len() <= i {
            self.socks.resize_with(i + 1, || None);
        }
        self.socks[i] = Some(sock);
    }

    // ---- events -------------------------------------------------------------------------------

    fn on_event(&mut self, slot: usize, event: &Event) {
        let Some(sock) = self.socks.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let id = sock.id;
        // Before the connect check: the event that reports a connect complete may also carry
        // the peer's FIN, behind data it sent at once, and no later edge will announce it.
        if event.is_read_closed() || event.is_error() {
            sock.reader.hang_up();
        }
        if sock.connecting {
            match sock.stream.finish_connect() {
                Ok(false) => return,
                Ok(true) => {
                    // A TLS upstream is connected once its handshake is complete, so the
                    // connect timeout bounds the handshake too.
                    if let Some(session) = sock.tls.as_mut() {
                        match session.handshake(&self.core, sock.stream.sock()) {
                            tls::Handshake::Pending => return,
                            tls::Handshake::Done => {}
                            tls::Handshake::Failed(why) => {
                                self.core.handle(self.now, why.input(id));
                                self.after_input();
                                self.forget_if_closed(id);
                                return;
                            }
                        }
                    }
                    sock.connecting = false;
                    self.core.handle(self.now, Input::Connected { conn: id });
                    // The core asks for the write itself (`Output::Write` on `Connected`); a
                    // response may already be waiting to be read.
                    self.after_input();
                    self.to_read.push_back(id);
                    return;
                }
                Err(e) => {
                    if let Some(server) = sock.server {
                        upkeep_runtime::trouble::connect_failed(&self.core, server, &e);
                    }
                    self.core.handle(self.now, Input::connect_error(id, &e));
                    self.after_input();
                    self.forget_if_closed(id);
                    return;
                }
            }
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            self.to_read.push_back(id);
        }
        if event.is_writable() || event.is_error() {
            self.to_write.push_back(id);
        }
    }

    /// Works through sockets to read (those queued when the pass began: sockets re-queued
    /// because their read budget ran out, or queued by outputs meanwhile, wait for the next
    /// pass, which then polls without blocking), then those with something to write (all of
    /// them).
    ///
    /// Reads first, so the sends a pass produces go out back to back: a backend or client
    /// woken by the first finds the others ready, where a send after each read woke it (and
    /// was preempted by it) once per request. Measured with 64 keep-alive clients and 100-byte
    /// responses, old and new binary side by side: 1.25x the requests/s at 0.85x the CPU per
    /// request. Spliced bodies are the exception: the pipe a read filled is written out at
    /// once, so it is empty again for the next splice (filling one pipe per connection first
    /// needed more pipes than are kept: a `pipe2` and two `close` per two 64 KiB responses).
    fn run_queues(&mut self) {
        // Never earlier than any input before it: everything before the pass (events,
        // commands, timers) read the clock before this.
        self.tick();
        let mut reads = self.to_read.len();
        loop {
            if reads > 0
                && let Some(id) = self.to_read.pop_front()
            {
                reads -= 1;
                let queued = self.to_write.len();
                self.read(id);
                if let Some(to) = self.spliced_to.take() {
                    self.flush(to);
                }
                // Bulk bytes a read queued for a peer go out at once too: held until the
                // pass's reads are done, every connection's relayed bytes would be in memory at
                // the same time (review: 400 clients downloading 4 MiB bodies without splicing
                // peaked at ~100 MiB RSS against 48).
                for i in queued..self.to_write.len() {
                    let to = self.to_write[i];
                    if self.core.pending_len(to) >= FLUSH_AT_ONCE {
                        self.flush(to);
                    }
                }
            } else if let Some(id) = self.to_write.pop_front() {
                self.flush(id);
            } else {
                return;
            }
        }
    }

    /// Reads `id` until the socket is drained (the shared read loop, `upkeep_runtime::io`),
    /// at most `READ_BUDGET` times, handing every read to the core in place.
    fn read(&mut self, id: ConnId) {
        for _ in 0..READ_BUDGET {
            let Some(sock) = sock_in(&mut self.socks, id) else {
                return;
            };
            if !sock.read || sock.eof || sock.connecting {
                return;
            }
            if sock.tls.is_none()
                && let Some(step) = self.splice(id)
            {
                let Some(sock) = sock_in(&mut self.socks, id) else {
                    return;
                };
                sock.eof = step == ReadStep::Done;
                self.after_input();
                if step != ReadStep::Again {
                    return;
                }
                continue;
            }
            let Some(sock) = sock_in(&mut self.socks, id) else {
                return;
            };
            let step = match sock.tls.as_mut() {
                Some(session) => session.read(&mut self.core, self.now, id, sock.stream.sock()),
                None => sock
                    .reader
                    .read(&mut self.core, self.now, id, sock.stream.sock()),
            };
            sock.eof = step == ReadStep::Done;
            self.after_input();
            if step != ReadStep::Again {
                return;
            }
        }
        // Budget spent with data possibly left: edge-triggered readiness will not fire again,
        // so come back to it next pass.
        self.to_read.push_back(id);
    }

    /// Moves the next body bytes of `id` into the pipe toward its peer when the core allows it
    /// (`upkeep_runtime::splice::fill`); `None`: read them as usual.
    fn splice(&mut self, id: ConnId) -> Option<ReadStep> {
        let hint = self.core.splice_source(id)?;
        if hint.flush_first {
            // Piped bytes may only follow what is queued: write that first.
            self.flush(hint.to);
            if self.core.splice_source(id).is_none_or(|h| h.flush_first) {
                return None;
            }
        }
        let to = sock_in(&mut self.socks, hint.to)?;
        if to.tls.is_some() || to.connecting {
            return None;
        }
        let mut pipe = match self.pipes.lend(to.pipe.take()) {
            Ok(pipe) => pipe,
            Err(e) => {
                // Out of descriptors, say: this body is copied instead.
                log::debug!("worker {}: no pipe for a zero-copy body: {e}", self.id);
                return None;
            }
        };
        let Some(from) = sock_in(&mut self.socks, id) else {
            self.pipes.give(pipe);
            return None;
        };
        let step = upkeep_runtime::splice::fill(
            &mut self.core,
            self.now,
            id,
            &*from.stream.sock(),
            hint.to,
            &mut pipe,
        );
        let holder = sock_in(&mut self.socks, hint.to).map(|to| &mut to.pipe);
        // The splice stopped with bytes in the pipe (maybe full): the core holds `id` back
        // until some are written, then asks for it to be read again (Interest).
        if self.pipes.put_back(pipe, holder) {
            self.spliced_to = Some(hint.to);
            if step == Some(ReadStep::Wait) {
                self.core.pipe_full(self.now, hint.to);
            }
        }
        step
    }

    /// Writes what the core queued for `id` until a write comes up short (the shared write
    /// loops: piped bytes first, `upkeep_runtime::splice::flush`, then the queue,
    /// `upkeep_runtime::io::flush`); the writable edge brings us back.
    fn flush(&mut self, id: ConnId) {
        let Some(sock) = sock_in(&mut self.socks, id) else {
            return;
        };
        if sock.connecting {
            return;
        }
        if let Some(mut pipe) = sock.pipe.take() {
            let flushed = upkeep_runtime::splice::flush(
                &mut self.core,
                self.now,
                id,
                &*sock.stream.sock(),
                &mut pipe,
            );
            let holder = sock_in(&mut self.socks, id).map(|sock| &mut sock.pipe);
            self.pipes.put_back(pipe, holder);
            if flushed != Flushed::Empty {
                self.after_input();
                return;
            }
        }
        let Some(sock) = sock_in(&mut self.socks, id) else {
            return;
        };
        match sock.tls.as_mut() {
            Some(session) => {
                session.flush(&mut self.core, self.now, id, sock.stream.sock());
            }
            None => {
                upkeep_runtime::io::flush(&mut self.core, self.now, id, sock.stream.sock());
            }
        }
        self.after_input();
    }

    // ---- the core's outputs ---------------------------------------------------------------------

    /// Acts on every output after an input, then records the exchanges that finished (each
    /// carries what its log line needs, so the order does not matter).
    fn after_input(&mut self) {
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::Connect { conn, server } => self.connect(conn, server),
                Output::Write { conn } => self.to_write.push_back(conn),
                Output::Interest { conn, read } => {
                    if let Some(s) = self.sock(conn) {
                        s.read = read;
                        if read {
                            self.to_read.push_back(conn);
                        }
                    }
                }
                // Only ever after the last queued byte was written (the core's contract).
                Output::Shutdown { conn } => {
                    if let Some(s) = self.sock(conn) {
                        match s.tls.as_mut() {
                            // close_notify first; the flush shuts the socket after it.
                            Some(session) => {
                                session.shutdown();
                                self.to_write.push_back(conn);
                            }
                            None => s.stream.shutdown_write(),
                        }
                    }
                }
                Output::Close { conn, reset } => self.close(conn, reset),
                Output::HandOver {
                    conn,
                    to_worker,
                    handed,
                } => self.hand_over(conn, to_worker, handed),
            }
        }
        while let Some(ex) = self.core.poll_exchange() {
            self.recorder.exchange(&self.core, &ex);
        }
    }

    fn connect(&mut self, conn: ConnId, server: ServerId) {
        let addr = self.core.server_address(server).clone();
        let keepalive = upstream_keepalive(&self.core, server);
        let result = self.tls.connect(server).transpose().and_then(|tls| {
            let mut stream = Stream::connect(&addr, keepalive)?;
            stream.register(self.poll.registry(), Token(conn.index as usize))?;
            Ok((stream, tls))
        });
        match result {
            Ok((stream, tls)) => self.insert(Sock {
                id: conn,
                stream,
                read: true,
                eof: false,
                connecting: true,
                server: Some(server),
                reader: Reader::default(),
                tls: tls.map(Box::new),
                pipe: None,
            }),
            Err(e) => {
                log::debug!("worker {}: connect to {addr} failed: {e}", self.id);
                upkeep_runtime::trouble::connect_failed(&self.core, server, &e);
                // Out of descriptors or ports is our problem, not the server's: the core then
                // answers 500 without marking the server down.
                self.core.handle(self.now, Input::connect_error(conn, &e));
                // The loop in `after_input` picks up what this produced.
            }
        }
    }

    fn close(&mut self, conn: ConnId, reset: bool) {
        let Some(slot) = self.socks.get_mut(conn.index as usize) else {
            return;
        };
        if slot.as_ref().is_none_or(|s| s.id != conn) {
            return;
        }
        if let Some(mut s) = slot.take() {
            self.trim.closed();
            // Its pipe is counted: back to the pool (closed there if bytes are left in it).
            self.pipes.give_back(&mut s.pipe);
            if let Some(session) = s.tls.as_mut() {
                session.close(s.stream.sock(), reset);
            }
            // No deregister: closing the descriptor (the drop below) takes it out of the epoll
            // set — no other descriptor shares its file — and saves an epoll_ctl per closed
            // connection (strace -c, closing clients: 2.0 → 1.0 epoll_ctl per request). Events
            // already fetched for it are filtered by the connection id's generation.
            if reset {
                s.stream.set_reset_on_close();
            }
        }
        // After a spike the socket table gives its memory back, as the core's table does.
        while self.socks.last().is_some_and(Option::is_none) {
            self.socks.pop();
        }
        if self.socks.capacity() >= 1024 && self.socks.len() * 4 < self.socks.capacity() {
            self.socks.shrink_to_fit();
        }
    }

    /// Moves the idle upstream connection `conn` to sibling worker `to` (socket and TLS
    /// session), whose core adopts it; the core wakes that worker once the outputs are drained,
    /// after this send. A sibling that has exited cannot take it: the socket closes here and
    /// the core gives its slot back.
    fn hand_over(&mut self, conn: ConnId, to: usize, handed: Handed) {
        let Some(mut sock) = self
            .socks
            .get_mut(conn.index as usize)
            .and_then(|s| s.take_if(|s| s.id == conn))
        else {
            return;
        };
        // (An idle connection has no pipe — its piped bytes were written — but its count must
        // never be lost.)
        self.pipes.give_back(&mut sock.pipe);
        sock.stream.deregister(self.poll.registry());
        if !send_to_sibling(&self.siblings, to, sock.stream, sock.tls, handed) {
            log::debug!("worker {}: worker {to} cannot take a connection", self.id);
            self.core.hand_over_failed(self.now, handed);
        }
    }

    /// Takes in an idle upstream connection a sibling worker handed over.
    fn adopt_handed(&mut self, stream: Stream, tls: Option<Box<Session>>, handed: Handed) {
        let now = self.tick();
        if let Some(id) = self.core.adopt_handed(now, handed) {
            self.install(now, id, stream, tls);
        }
    }

    /// Frees the slot of a socket the core no longer knows (defensive: every path that ends a
    /// connection in the core also emits `Close`).
    fn forget_if_closed(&mut self, id: ConnId) {
        if !self.core.is_open(id) {
            self.close(id, false);
        }
    }

    // ---- accepting --------------------------------------------------------------------------

    fn accept(&mut self, i: usize) {
        loop {
            let Some(listener) = self.listeners.get(i).and_then(Option::as_ref) else {
                return;
            };
            match take_one(&mut self.gate, &mut self.core, listener, i, self.now) {
                Took::Conn(id, stream) => {
                    let now = self.now;
                    match self.tls.accept(ListenerId(i as u32)).transpose() {
                        Ok(tls) => self.install(now, id, stream, tls.map(Box::new)),
                        Err(e) => {
                            log::warn!("worker {}: TLS setup failed: {e}", self.id);
                            self.core.handle(now, Input::Errored { conn: id });
                            self.after_input();
                        }
                    }
                }
                Took::Nothing => {}
                Took::Done => return,
                Took::Paused => {
                    self.unwatch_listeners();
                    return;
                }
            }
        }
    }

    /// Stops watching the listeners while accepting is paused (connections queue in the
    /// kernel's backlog meanwhile).
    fn unwatch_listeners(&mut self) {
        for l in self.listeners.iter_mut().flatten() {
            l.deregister(self.poll.registry());
        }
    }

    fn maybe_resume(&mut self) {
        if !resumes(&mut self.gate, &self.core, self.drain_deadline) {
            return;
        }
        // The pass's time is as old as its queues' work: the connections taken now start now.
        self.tick();
        for i in 0..self.listeners.len() {
            if let Some(l) = self.listeners[i].as_mut()
                && let Err(e) = l.register(self.poll.registry(), Token(LISTENER_BASE - i))
            {
                log::error!("worker {}: cannot resume listener: {e}", self.id);
            }
        }
        for i in 0..self.listeners.len() {
            self.accept(i);
        }
    }

    // ---- commands and exit ------------------------------------------------------------------

    fn commands(&mut self) -> Flow {
        loop {
            match self.rx.try_recv() {
                Ok(Command::Drain {
                    ack,
                    handed_over,
                    handoff,
                    kept,
                }) => {
                    self.drain(&handed_over, handoff, &kept);
                    if let Some(ack) = ack {
                        let _ = ack.send(());
                    }
                }
                Ok(Command::Stop) => return Flow::Exit,
                Ok(Command::Snapshot(tx)) => {
                    let mut snapshot = self.recorder.snapshot(&self.core, clock::now());
                    let used = self.socks.iter().flatten().filter(|s| s.pipe.is_some());
                    snapshot.pipes = (used.count() as u64, self.pipes.kept() as u64);
                    let _ = tx.send(snapshot);
                }
                Ok(Command::ReopenLog) => self.recorder.reopen(),
                Ok(Command::Adopt {
                    stream,
                    tls,
                    listener,
                    released,
                }) => self.adopt(stream, tls, listener, released),
                Ok(Command::AdoptPooled {
                    stream,
                    server,
                    expires,
                    tls,
                }) => self.adopt_pooled(stream, &server, expires, tls),
                Ok(Command::AdoptHanded {
                    stream,
                    tls,
                    handed,
                }) => self.adopt_handed(stream, tls, handed),
                Err(TryRecvError::Empty) => return Flow::Continue,
                Err(TryRecvError::Disconnected) => return Flow::Exit,
            }
        }
    }

    fn drain(&mut self, handed_over: &[bool], handoff: Option<Handoff>, kept: &[bool]) {
        if self.drain_deadline.is_some() {
            return;
        }
        let handing_off = handoff.is_some();
        self.handoff = handoff;
        self.gone = (0..self.listeners.len())
            .filter(|&i| !kept.get(i).copied().unwrap_or(false))
            .map(|i| ListenerId(i as u32))
            .collect();
        // Take what is already queued on listeners about to close (closing them would reset
        // those connections) and read what they sent, then stop listening. A socket handed
        // over to a new generation is left alone: a connection taken here now would be closed
        // as idle by the drain if its request has not arrived yet.
        self.gate.open();
        for i in 0..self.listeners.len() {
            if !handed_over.get(i).copied().unwrap_or(false) {
                self.accept(i);
            }
        }
        self.run_queues();
        for l in self.listeners.iter_mut() {
            if let Some(mut l) = l.take() {
                l.deregister(self.poll.registry());
            }
        }
        if handing_off {
            // Warm upstream connections go first, so the new workers reuse them at once.
            for (id, server, settings, expires) in self.core.release_pooled() {
                if let Some(mut sock) = self.socks.get_mut(id.index as usize).and_then(Option::take)
                {
                    self.pipes.give_back(&mut sock.pipe);
                    sock.stream.deregister(self.poll.registry());
                    // A TLS connection moves with its session and the settings it was opened
                    // under; one whose settings are gone (no TLS session, or no settings) is
                    // dropped here rather than adopted as something it is not.
                    let tls = match (settings, sock.tls) {
                        (Some(settings), Some(session)) => Some((settings, session)),
                        (None, None) => None,
                        _ => continue,
                    };
                    if let Some(to) = self.next_adopter() {
                        to.send(Command::AdoptPooled {
                            stream: sock.stream,
                            server,
                            expires,
                            tls,
                        });
                    }
                }
            }
            self.tick();
            self.core.begin_handoff(self.now);
            self.after_input();
            self.hand_off_idle();
        } else {
            self.tick();
            self.core.begin_drain(self.now);
            self.after_input();
        }
        self.drain_deadline = Some(Instant::now() + self.shutdown_timeout);
    }

    /// Moves every idle client connection to a new worker (a reload's drain): released by the
    /// core with the bytes it held, the socket unwatched here and sent along — it never closes.
    fn hand_off_idle(&mut self) {
        self.tick();
        if !self.gone.is_empty() {
            let now = self.now;
            for &l in &self.gone {
                self.core.close_idle_on(now, l);
            }
            self.after_input();
        }
        for id in self.core.idle_clients() {
            // Bytes rustls already encrypted leave with the session, not as unsent bytes.
            if let Some(session) = sock_in(&mut self.socks, id).and_then(|s| s.tls.as_mut()) {
                session.settle(&mut self.core, self.now, id);
            }
            let Some(released) = self.core.release_idle(id) else {
                continue;
            };
            let Some(mut sock) = self.socks.get_mut(id.index as usize).and_then(Option::take)
            else {
                continue;
            };
            self.pipes.give_back(&mut sock.pipe);
            sock.stream.deregister(self.poll.registry());
            self.pass_on(sock.stream, sock.tls, released);
        }
    }

    /// Sends a released connection to the next worker of the handoff; one with nowhere to go
    /// (its listener gone from the new configuration, or every new worker gone) is closed.
    fn pass_on(&mut self, stream: Stream, tls: Option<Box<Session>>, released: Released) {
        pass_on(
            &self.core,
            self.handoff.as_ref(),
            &mut self.handed,
            stream,
            tls,
            released,
        );
    }

    /// The newest worker whose turn it is to adopt a connection, if handing off.
    fn next_adopter(&mut self) -> Option<Control> {
        next_adopter(self.handoff.as_ref()?, &mut self.handed)
    }

    /// Takes an idle upstream connection an old worker released into the pool (closed when no
    /// group of this configuration has its server).
    fn adopt_pooled(
        &mut self,
        stream: Stream,
        server: &Address,
        expires: upkeep_core::Time,
        tls: Option<(UpstreamTls, Box<Session>)>,
    ) {
        let now = self.tick();
        let (settings, session) = tls.unzip();
        // Bytes or an EOF that came while it moved evict it: it is read at once.
        if let Some(id) = self
            .core
            .adopt_pooled(now, server, settings.as_ref(), expires)
        {
            // Its session was counted under the old configuration's numbering.
            let session = session.map(|mut s| {
                if let Some(server) = self.core.upstream_server(id) {
                    s.adopted(tls::Origin::Server(server));
                }
                s
            });
            self.install(now, id, stream, session);
        }
    }

    /// Takes over a connection an old worker released. Should this worker already be handing
    /// off itself (reloads in quick succession), it passes the connection on.
    fn adopt(
        &mut self,
        stream: Stream,
        tls: Option<Box<Session>>,
        listener: Address,
        released: Released,
    ) {
        let now = self.tick();
        let Some(released) = on_listener(&self.core, &listener, released) else {
            return;
        };
        let Ok(id) = self.core.adopt(now, released.listener, &released) else {
            self.pass_on(stream, tls, released);
            return;
        };
        let tls = tls.map(|mut s| {
            s.adopted(tls::Origin::Listener(released.listener));
            s
        });
        // The reload made the listener TLS or plain: this connection is still what it was, but
        // the core would forward its next request with the listener's scheme
        // (`X-Forwarded-Proto`). It gets what it is owed, then closes: as if the client had
        // half-closed, so no further request is read from it.
        let listener = released.listener.0 as usize;
        let changed = self.core.config().listeners[listener].tls.is_some() != tls.is_some();
        self.install(now, id, stream, tls);
        if changed {
            self.core.handle(now, Input::ReadClosed { conn: id });
            self.after_input();
        }
    }

    /// Watches the socket of a connection the core just took in (a client accepted or adopted,
    /// a pooled upstream adopted) and reads it at once: bytes may be waiting already.
    fn install(
        &mut self,
        now: upkeep_core::Time,
        id: ConnId,
        mut stream: Stream,
        tls: Option<Box<Session>>,
    ) {
        if let Err(e) = stream.register(self.poll.registry(), Token(id.index as usize)) {
            log::warn!("worker {}: register failed: {e}", self.id);
            self.core.handle(now, Input::Errored { conn: id });
            self.after_input();
            return;
        }
        self.insert(Sock {
            id,
            stream,
            read: true,
            eof: false,
            connecting: false,
            server: None,
            reader: Reader::default(),
            tls,
            pipe: None,
        });
        self.after_input();
        self.to_read.push_back(id);
    }

    /// Leaves the board: the final counters join the retired totals under the board's lock, and
    /// snapshot requests that raced with the exit are answered from the same final counters, so a
    /// scrape counts this worker exactly once.
    fn exit(mut self) {
        // Whatever is still in progress (a drain cut at its timeout, a stop) is cut here: logged
        // as such before the connections close.
        self.tick();
        let cut = self.core.abort_exchanges(self.now);
        if cut > 0 {
            self.aborted.fetch_add(cut as u64, Ordering::Relaxed);
            self.after_input();
            log::warn!("worker {}: aborting {cut} requests in progress", self.id);
        }
        leave_board(
            self.id,
            &self.siblings,
            &mut self.recorder,
            &self.core,
            &self.board,
            &self.rx,
        );
        log::debug!("worker {} exited", self.id);
    }
}

/// What every worker starts with, whatever its I/O: its handle (commands through a channel,
/// wake-ups through a waker on `poll` under `token`), its command receiver, its recorder, and
/// its core on the generation's `ledger`.
pub(crate) fn open(
    poll: &Poll,
    token: Token,
    id: u64,
    index: usize,
    config: Config,
    ledger: Shared,
) -> io::Result<(Control, Receiver<Command>, Recorder, Core)> {
    let waker = Arc::new(Waker::new(poll.registry(), token)?);
    let (tx, rx) = mpsc::channel();
    let control = Control { id, tx, waker };
    let recorder = Recorder::open(&config)?;
    // Another worker frees a slot this worker's queue waits for, or a server's state changes:
    // the same waker as commands, and the loop calls `handle_shared` on every wake.
    let wake = control.waker.clone();
    ledger.set_waker(
        index,
        Box::new(move || {
            let _ = wake.wake();
        }),
    );
    let mut core = Core::with_shared(config, index as u64, ledger, index)?;
    recorder.attach(&mut core);
    core.set_request_id_prefix(upkeep_runtime::recorder::request_id_prefix(id));
    Ok((control, rx, recorder, core))
}

/// Hands an idle upstream connection (and its TLS session) to sibling `to`, for the request
/// first in line there; false if that worker cannot take it (gone, or exiting).
pub(crate) fn send_to_sibling(
    siblings: &Siblings,
    to: usize,
    stream: Stream,
    tls: Option<Box<Session>>,
    handed: Handed,
) -> bool {
    let sibling = siblings
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(to)
        .cloned();
    sibling.is_some_and(|w| {
        w.send(Command::AdoptHanded {
            stream,
            tls,
            handed,
        })
    })
}

/// The worker of `handoff` whose turn it is to adopt a connection (`handed` so far).
pub(crate) fn next_adopter(handoff: &Handoff, handed: &mut usize) -> Option<Control> {
    let workers = handoff.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let to = workers.get(*handed % workers.len().max(1)).cloned();
    *handed += 1;
    to
}

/// A worker's last step, whatever its I/O: the final counters join the retired totals under
/// the board's lock, and snapshot requests that raced with the exit are answered from the same
/// final counters, so a scrape counts this worker exactly once.
pub(crate) fn leave_board(
    id: u64,
    siblings: &Siblings,
    recorder: &mut Recorder,
    core: &Core,
    board: &Board,
    rx: &Receiver<Command>,
) {
    // The generation is ending (its workers drain or stop together): no more handovers
    // (they close instead), and the workers' channels are no longer held by each other.
    siblings.lock().unwrap_or_else(|e| e.into_inner()).clear();
    recorder.flush();
    let last = recorder.snapshot(core, clock::now()).retired();
    board.retire(id, &last);
    while let Ok(cmd) = rx.try_recv() {
        match cmd {
            Command::Snapshot(tx) => {
                let _ = tx.send(last.clone());
            }
            // A connection a sibling handed over while this worker was leaving: its socket
            // closes (dropped with the command), its slot goes back to the generation's
            // ledger, and whoever is first in line now is woken for it.
            Command::AdoptHanded {
                stream,
                tls,
                handed,
            } => {
                drop((stream, tls));
                core.shared().hand_over_lost(&handed);
            }
            _ => {}
        }
    }
}

/// What [`take_one`] did.
pub(crate) enum Took {
    /// A connection, which the core took in as this id (TCP already tuned).
    Conn(ConnId, Stream),
    /// That connection was gone before it was taken: try the next.
    Nothing,
    /// The queue is empty, or accepting was paused already: wait for the listener.
    Done,
    /// Accepting paused just now (the core is full, or out of descriptors): stop watching the
    /// listeners until the gate reopens.
    Paused,
}

/// Takes one connection off listener `i` by the shared accept policy (`upkeep_runtime::accept`),
/// for the epoll and the io_uring worker alike; `now` is the worker's time for its current step
/// (a fresh clock read here would be later than the `now` the worker's next inputs carry).
pub(crate) fn take_one(
    gate: &mut Gate,
    core: &mut Core,
    listener: &Listener,
    i: usize,
    now: Time,
) -> Took {
    match gate.admit(core) {
        Admit::Accept => {}
        Admit::Paused => return Took::Done,
        Admit::PausedNow => return Took::Paused,
    }
    match listener.accept() {
        Ok((stream, peer)) => {
            match core.accept(now, ListenerId(i as u32), peer.map(|a| a.ip())) {
                // Tuned already: options set on the listener (`bind_reuseport`) are inherited.
                Ok(id) => Took::Conn(id, stream),
                // Only while draining (the gate checked for room first): the new socket closes on
                // drop; accept no more until a client connection ends (the kernel keeps queueing
                // meanwhile).
                Err(_at_capacity) if gate.at_capacity() => Took::Paused,
                Err(_at_capacity) => Took::Done,
            }
        }
        Err(e) => match gate.pause_after(&e, Instant::now()) {
            AfterError::Next => Took::Nothing,
            AfterError::Wait => Took::Done,
            AfterError::Pause(_) => Took::Paused,
        },
    }
}

/// The end of every loop pass, whatever the worker's I/O: log lines out, counters ticked, freed
/// memory counted toward a trim (and trimmed when one is due).
pub(crate) fn after_pass(recorder: &mut Recorder, core: &mut Core, trim: &mut Trim) {
    recorder.flush();
    recorder.tick(core, clock::now());
    trim.released(core.take_released());
    if trim.pending() {
        trim.tick(Instant::now());
    }
}

/// Whether a draining worker (`deadline`: its shutdown timeout) is done: its core drained, or
/// the timeout reached (logged).
pub(crate) fn drain_over(id: u64, core: &Core, deadline: Option<Instant>) -> bool {
    let Some(deadline) = deadline else {
        return false;
    };
    if core.is_drained() {
        return true;
    }
    if Instant::now() >= deadline {
        log::warn!(
            "worker {id}: shutdown timeout, closing {} connections",
            core.connections()
        );
        return true;
    }
    false
}

/// Whether a worker whose accepting paused takes connections again now: the gate reopens
/// (`Gate::reopen`: below the limits, or the timed pause is over), and the worker is not
/// draining (a draining worker accepts nothing more).
pub(crate) fn resumes(gate: &mut Gate, core: &Core, drain: Option<Instant>) -> bool {
    !gate.is_open() && drain.is_none() && gate.reopen(core, Instant::now())
}

/// How long a worker's wait may block: until the core's next deadline, the end of a timed
/// accept pause, the drain's timeout or a due trim, whichever comes first.
pub(crate) fn next_wait(
    core: &Core,
    gate: &Gate,
    drain: Option<Instant>,
    trim: &Trim,
) -> Option<Duration> {
    let now = Instant::now();
    let mut t = core.poll_timeout().map(clock::until);
    let due = [gate.resume_at(), drain]
        .into_iter()
        .flatten()
        .map(|i| i.saturating_duration_since(now))
        .chain(trim.pending().then(|| trim.due_in(now)).flatten());
    for d in due {
        t = Some(t.map_or(d, |t| t.min(d)));
    }
    t
}

/// Sends a connection a reload released to the next worker of `handoff` (`handed` so far); one
/// with nowhere to go (its listener gone from the new configuration, or every new worker gone)
/// is closed (dropped).
pub(crate) fn pass_on(
    core: &Core,
    handoff: Option<&Handoff>,
    handed: &mut usize,
    stream: Stream,
    tls: Option<Box<Session>>,
    released: Released,
) {
    let Some(l) = core.config().listeners.get(released.listener.0 as usize) else {
        return;
    };
    let listener = l.addr.clone();
    let Some(to) = handoff.and_then(|h| next_adopter(h, handed)) else {
        return;
    };
    to.send(Command::Adopt {
        stream,
        tls,
        listener,
        released,
    });
}

/// A connection another worker released, renumbered for this core's listener of the same
/// address (`None`: this configuration has no such listener, and the connection closes).
pub(crate) fn on_listener(core: &Core, listener: &Address, released: Released) -> Option<Released> {
    let j = core
        .config()
        .listeners
        .iter()
        .position(|l| l.addr == *listener)?;
    Some(Released {
        listener: ListenerId(j as u32),
        ..released
    })
}
