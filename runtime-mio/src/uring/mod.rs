//! A worker on io_uring (`io = "uring"`): the same [`Core`], commands, ledger and bookkeeping as
//! the epoll worker ([`crate::worker`]), with the system calls batched.
//!
//! - **Accepting**: a multishot poll per listener, then `accept(2)` until the queue is empty, with
//!   the shared accept policy (pausing at capacity), as the epoll worker does. Not a multishot
//!   accept: the kernel wakes one accept per connection (exclusive wake-ups), and when the woken
//!   one belonged to a worker that was cancelling it (a reload, a pause), the connection stayed
//!   queued with no one woken for it (`reloads_under_connection_churn_lose_no_connection_on_io_uring`
//!   lost one in two runs).
//! - **Reading**: one multishot receive per connection, into buffers the kernel picks from a
//!   provided-buffer ring ([`BufRing`]). The bytes are copied into the core
//!   ([`Input::Received`]) and the buffer goes back at once. When the core stops reading a
//!   connection (`Output::Interest { read: false }`) the receive is cancelled; bytes or an EOF
//!   already on their way are held here and handed over when reading resumes. A multishot
//!   receive ends after [`MSHOT_LIMIT`] bytes and is armed again, which bounds what a pause
//!   holds ([`sqe::with_total_limit`]). An upstream
//!   connection that has carried a body worth splicing receives one buffer at a time from then
//!   on, each stopping at the cap the core names for what comes next ([`Core::armed_read_cap`]:
//!   a response head), so that a large body stays in the socket ([`Worker::toward_splice`]).
//! - **Zero-copy bodies**: when the core says the next bytes of a connection may be spliced
//!   ([`Core::splice_source`]), the worker splices them into a pipe with the same non-blocking
//!   `splice(2)` calls as the epoll worker (`upkeep_runtime::splice`), a single-shot poll
//!   standing in for readiness, and writes the pipe out the same way before any send of what
//!   the core queued behind it (a writability poll when the socket is full). A body behind
//!   bytes still being sent waits for them, its source held back by the core
//!   ([`Core::wait_for_flush`]). io_uring's own `SPLICE` would need its completions ordered
//!   with the sends; the plain calls keep the epoll worker's rules and code.
//! - **Writing**: at most one send in flight per connection, from a copy of the core's queue (up to
//!   256 KiB) that the socket owns, so the kernel never reads memory the core may free or reuse.
//!   (`sendmsg` straight from the core's buffers, kept alive by `Bytes` clones, measured worse:
//!   twice HAProxy's CPU per 64 KiB response against 1.45× with the copy.)
//! - **Connecting**: the shared non-blocking connect (`upkeep_runtime::socket::connect`, the
//!   same options as the epoll worker), then a poll for writability.
//! - **Waiting**: everything queued while handling one batch of completions goes to the kernel
//!   in the next `io_uring_enter`, which also waits for the next completions (or the next
//!   deadline). Commands and the ledger's wake-ups arrive through the same [`mio::Waker`] as
//!   the epoll worker's, whose epoll descriptor the ring polls.
//! - **Handing a socket on** (to a sibling, or to a new generation at a reload): its receive
//!   is cancelled first and the socket leaves once nothing is in flight on it, so no byte is
//!   read here that the adopter then misses.
//!
//! Not here: TLS (refused by `Config::validate`).

mod bufring;
mod sqe;
mod submit;

use std::io;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use io_uring::{IoUring, cqueue, opcode, squeue, types};
use mio::{Events, Poll, Token};
use socket2::SockRef;
use upkeep_core::{
    Address, ConnId, Core, Handed, Input, ListenerId, Output, Released, ServerId, Time,
};
use upkeep_runtime::accept::Gate;
use upkeep_runtime::clock;
use upkeep_runtime::io::{Flushed, ReadStep};
use upkeep_runtime::recorder::Recorder;
use upkeep_runtime::socket::{self, Connecting};
use upkeep_runtime::splice::{Pipe, Pipes};
use upkeep_runtime::trim::Trim;

use self::bufring::BufRing;
use self::submit::Cqe;
use crate::net::{Listener, Stream};
use crate::worker::{
    Board, Command, Control, Handoff, Setup, Siblings, Took, after_pass, drain_over, next_wait,
    on_listener, open, pass_on, resumes, send_to_sibling, take_one,
};

// user_data: kind << 56 | generation (24 bits) << 32 | slot (32 bits).
const ACCEPT: u64 = 1;
const RECV: u64 = 2;
const SEND: u64 = 3;
const CONNECT: u64 = 4;
const CLOSE: u64 = 6;
const CANCEL: u64 = 7;
/// The waker's epoll descriptor became readable: commands or a ledger wake-up.
const WAKE: u64 = 8;
/// A cancelled accept or any other completion nothing waits for.
const IGNORE: u64 = 9;
/// A socket whose body is spliced became readable (the splice itself is a plain system call).
const POLL_IN: u64 = 10;
/// A socket whose pipe could not be written out became writable.
const POLL_OUT: u64 = 11;

fn ud(kind: u64, slot: u32, generation: u32) -> u64 {
    kind << 56 | u64::from(generation & 0xff_ffff) << 32 | u64::from(slot)
}

/// Most bytes one send carries (copied from the core's queue).
const SEND_MAX: usize = 256 * 1024;
/// The provided-buffer ring: this many buffers of this size, 32 MiB of address space a worker,
/// resident as far as traffic has written into them (a 100-byte message touches one page of its
/// buffer). The loop gives each back right after copying it, so the ring runs dry (`ENOBUFS`,
/// the receive is armed again) only when one wait brings more receives than this. Measured
/// (`benches/load`, against HAProxy): 256 × 16 KiB gave 0.78× its requests/s for 64 KiB
/// responses, 512 × 64 KiB 0.94× (fewer completions per response); 128 × 64 KiB ran dry with
/// 500 clients (1.02× against 1.28–1.36×).
const BUFS: u16 = 512;
const BUF_SIZE: usize = 64 * 1024;
/// A multishot receive ends after this many bytes and is armed again (where the kernel
/// supports the limit: [`sqe::with_total_limit`]), so a pause that lands while it is on its
/// way holds less than two buffers. Without it one wake-up brought up to 32 buffers (2 MiB)
/// before the cancel landed: held here, beyond the core's limits. The cost, a submission per
/// 64 KiB received, is nothing next to the receives themselves.
const MSHOT_LIMIT: u32 = BUF_SIZE as u32;
const BGID: u16 = 0;
/// Submission queue entries (completions: 4×).
const SQ_ENTRIES: u32 = 1024;
/// How long the exit waits for the kernel to finish cancelled operations.
const EXIT_WAIT: Duration = Duration::from_secs(1);
/// Splices one readable socket takes in a row before the others get their turn (as the epoll
/// worker's read budget).
const READ_BUDGET: usize = 16;
/// Rounds of ready work (receives to arm, pipes to write, bodies to splice, each of which may
/// make more) run before the next `io_uring_enter`; what is left waits one enter that does not
/// block.
const READY_ROUNDS: usize = 16;

fn build_ring() -> io::Result<IoUring> {
    IoUring::builder()
        .setup_cqsize(SQ_ENTRIES * 4)
        .setup_submit_all()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(SQ_ENTRIES)
}

/// Starts a worker thread on io_uring; it is on the board before this returns. The ring is
/// made on the worker's own thread (`SINGLE_ISSUER`): an error there comes back from here.
pub(crate) fn spawn(setup: Setup) -> io::Result<(Control, JoinHandle<()>)> {
    let poll = Poll::new()?;
    let (control, rx, recorder, mut core) = open(
        &poll,
        Token(0),
        setup.id,
        setup.index,
        setup.config,
        setup.ledger,
    )?;
    // Large plain response bodies move with splice(2) (`limits.splice_min`), as with epoll.
    core.enable_splice(true);
    let board = setup.board.clone();
    let (ready_tx, ready_rx) = mpsc::sync_channel(1);
    let id = setup.id;
    let listeners = setup.listeners;
    let rest = Rest {
        shutdown_timeout: setup.shutdown_timeout,
        board: setup.board,
        aborted: setup.aborted,
        siblings: setup.siblings,
    };
    let thread = std::thread::Builder::new()
        .name(format!("upkeep-worker-{}", setup.index))
        .spawn(move || {
            let worker = (|| -> io::Result<Worker> {
                let ring = build_ring()?;
                let bufs = BufRing::new(&ring.submitter(), BUFS, BUF_SIZE, BGID)?;
                Ok(Worker::new(
                    id, ring, bufs, poll, core, recorder, listeners, rx, rest,
                ))
            })();
            match worker {
                Ok(worker) => {
                    let _ = ready_tx.send(Ok(()));
                    worker.run();
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let _ = thread.join();
            return Err(unavailable(e));
        }
        Err(_) => return Err(io::Error::other("io_uring worker failed to start")),
    }
    board.join(control.clone());
    Ok((control, thread))
}

/// The error for a ring that cannot be made, saying what to do instead.
fn unavailable(e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!(
            "io = \"uring\": io_uring is not available here ({e}; Linux 6.1+ with \
             kernel.io_uring_disabled = 0 is needed): use io = \"epoll\""
        ),
    )
}

/// What [`Setup`] hands the worker besides its core and sockets.
struct Rest {
    shutdown_timeout: Duration,
    board: Arc<Board>,
    aborted: Arc<AtomicU64>,
    siblings: Siblings,
}

/// Where a socket goes once nothing is in flight on it (see [`Worker::leave`]).
#[derive(Debug)]
enum Leaving {
    /// An idle upstream connection to a sibling worker (`Output::HandOver`).
    Sibling { to: usize, handed: Handed },
    /// An idle client connection to a new generation's worker (a reload).
    Client { released: Released },
    /// An idle pooled upstream connection to a new generation's worker (a reload).
    Pooled { server: Address, expires: Time },
}

/// One socket, for as long as the kernel may still complete an operation on it: a slot
/// outlives the core's connection until its close (or its leaving) and every cancelled
/// operation have completed.
#[derive(Debug)]
struct Sock {
    conn: ConnId,
    /// `None` once a close was queued or the socket left.
    fd: Option<OwnedFd>,
    unix: bool,
    /// The core still knows the connection (no `Output::Close` yet, not handed on).
    open: bool,
    /// The core wants to read it (`Output::Interest`).
    want_read: bool,
    /// A multishot receive is armed (until its final completion).
    recv_armed: bool,
    /// The receive armed carries the kernel's total limit ([`MSHOT_LIMIT`]).
    limited: bool,
    /// A readability poll is armed instead: the next body bytes are spliced, not received.
    poll_in: bool,
    /// That receive is being cancelled.
    cancel_sent: bool,
    /// Receives are single-shot (one buffer each): the core paused this connection once.
    single: bool,
    /// An upstream connection that carried a body large enough to splice: its receives are
    /// single-shot and stop after a response head ([`Worker::toward_splice`]).
    capped: bool,
    /// The length asked of the single-shot receive armed (0: multishot): one that fills it
    /// may have left bytes in the socket ([`Input::ReceivedFull`]).
    recv_len: u32,
    /// The read side is over for the core (EOF or error reported).
    eof: bool,
    /// Bytes received while the core did not want to read, and whether an EOF followed them.
    held: Vec<u8>,
    /// The last receive whose bytes were held stopped for its length: the socket may hold
    /// more behind them ([`Input::ReceivedFull`] when they are handed over).
    held_full: bool,
    held_eof: bool,
    /// A receive error came while reading was paused: handed over after the held bytes too.
    held_err: bool,
    /// Upstream connect in progress (a writability poll in flight).
    connecting: bool,
    server: Option<ServerId>,
    /// A send is in flight from `wbuf` (the SQE points at it: not touched until completion).
    writing: bool,
    wbuf: Vec<u8>,
    /// The last send found no room: the next one waits for writability first.
    poll_first: bool,
    /// A send found the backend gone (reset): nothing more is sent, and the receive armed
    /// brings what the backend answered before it went, then the end (see `Worker::on_send`).
    send_dead: bool,
    /// Body bytes spliced toward this connection and not yet written out: they go first, by
    /// `splice(2)` from this pipe (a writability poll stands in for the send while it is full).
    pipe: Option<Pipe>,
    /// Operations submitted and not yet completed (a multishot receive counts once).
    inflight: u32,
    /// Its close was queued: the slot is free once nothing is in flight.
    closed: bool,
    /// Where it goes once nothing is in flight (it is not closed then).
    leaving: Option<Leaving>,
    /// A duplicate of the descriptor was handed on (an idle upstream connection): this one
    /// closes once nothing is in flight, after a shutdown if bytes came meanwhile.
    handed_copy: bool,
    /// Bytes a receive delivered after the core let the socket go.
    late: Vec<u8>,
    late_eof: bool,
    /// That end was an error (a client connection is then closed, not handed on).
    late_err: bool,
}

impl Sock {
    fn new(conn: ConnId, fd: OwnedFd, unix: bool) -> Sock {
        Sock {
            conn,
            fd: Some(fd),
            unix,
            open: true,
            want_read: true,
            recv_armed: false,
            limited: false,
            poll_in: false,
            cancel_sent: false,
            single: false,
            capped: false,
            recv_len: 0,
            eof: false,
            held: Vec::new(),
            held_full: false,
            held_eof: false,
            held_err: false,
            connecting: false,
            server: None,
            writing: false,
            wbuf: Vec::new(),
            poll_first: false,
            send_dead: false,
            pipe: None,
            inflight: 0,
            closed: false,
            leaving: None,
            handed_copy: false,
            late: Vec::new(),
            late_eof: false,
            late_err: false,
        }
    }

    fn raw(&self) -> RawFd {
        self.fd.as_ref().map_or(-1, AsRawFd::as_raw_fd)
    }

    fn sock(&self) -> Option<SockRef<'_>> {
        self.fd.as_ref().map(SockRef::from)
    }
}

/// Whether the core wants the socket read and nothing reads it yet: no receive or poll armed,
/// nothing held back from the core, its read side not over.
fn readable(s: &Sock) -> bool {
    s.open
        && s.want_read
        && !s.recv_armed
        && !s.poll_in
        && !s.eof
        && s.held.is_empty()
        && !s.held_eof
        && !s.held_err
        && !s.connecting
        && s.fd.is_some()
}

/// What a close or a socket's leaving must cancel of what is in flight on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cancel {
    /// Nothing: nothing is in flight, or only a receive whose cancel is already on its way (a
    /// client that asked to close is no longer read).
    Nothing,
    /// Its receive, by user data, when that is all there is: a lookup in the kernel's table of
    /// armed polls.
    Receive,
    /// Every request on its descriptor, which the kernel finds by walking every poll armed on
    /// the ring (`io_cancel_req_match` and `io_poll_cancel` took 3.5 % of the CPU with 64
    /// closing clients when every close cancelled this way).
    Everything,
}

/// What cancels the operations in flight on `s`: [`Cancel`]. Only the socket's own flags
/// say which kinds are in flight — not `inflight`, which still counts a cancel whose
/// completion has come while the receive's final one has not (a send counted in its place
/// would then go uncancelled and hold the socket open: review).
fn to_cancel(s: &Sock) -> Cancel {
    let others = s.writing || s.poll_in || s.connecting;
    if s.inflight == 0 {
        Cancel::Nothing
    } else if s.recv_armed && !others {
        if s.cancel_sent {
            Cancel::Nothing
        } else {
            Cancel::Receive
        }
    } else {
        Cancel::Everything
    }
}

/// The cancel for [`to_cancel`]'s answer about `s` (in `slot`, of `generation`), if any.
fn in_flight(s: &Sock, slot: u32, generation: u32) -> Option<types::CancelBuilder> {
    match to_cancel(s) {
        Cancel::Nothing => None,
        Cancel::Receive => Some(types::CancelBuilder::user_data(ud(RECV, slot, generation))),
        Cancel::Everything => Some(types::CancelBuilder::fd(types::Fd(s.raw())).all()),
    }
}

/// A socket as the other workers take it.
fn stream_of(fd: OwnedFd, unix: bool) -> Stream {
    if unix {
        Stream::Unix(mio::net::UnixStream::from_std(fd.into()))
    } else {
        Stream::Tcp(mio::net::TcpStream::from_std(fd.into()))
    }
}

#[derive(Debug, Default)]
struct Slot {
    generation: u32,
    sock: Option<Sock>,
}

/// A listener and its multishot poll for incoming connections (taken with `accept(2)`).
struct Listening {
    socket: Listener,
    /// The poll is armed (until its final completion); its generation in `user_data`.
    armed: bool,
    generation: u32,
}

impl Listening {
    fn raw(&self) -> RawFd {
        match &self.socket {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix(l) => l.as_raw_fd(),
        }
    }
}

struct Worker {
    id: u64,
    // Declared (so dropped) before the buffer ring it registered.
    ring: IoUring,
    bufs: BufRing,
    /// Only for the waker's descriptor (the ring polls it).
    poll: Poll,
    events: Events,
    core: Core,
    recorder: Recorder,
    listeners: Vec<Option<Listening>>,
    gate: Gate,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// The core's `ConnId.index` → our slot + 1 (0: none).
    by_conn: Vec<u32>,
    cqes: Vec<Cqe>,
    /// Completions taken out of the queue while submitting (`EBUSY`: `submit::submit`), to be
    /// handled before the next ones.
    backlog: Vec<Cqe>,
    /// Slots whose receive ended and is to be armed again (after the buffers went back).
    rearm: Vec<u32>,
    /// Slots whose next body bytes are to be spliced now ([`Worker::splice_read`]).
    splicing: Vec<u32>,
    /// Slots whose pipe is to be written out now ([`Worker::flush_pipe`]).
    pipe_flushes: Vec<u32>,
    pipes: Pipes,
    /// `limits.splice_min` (0: splicing is off).
    splice_min: usize,
    /// Whether the kernel ends a multishot receive at [`MSHOT_LIMIT`]: `None` until a limited
    /// receive has brought bytes (yes) or was refused with `EINVAL` (no: Linux before 6.17).
    mshot_limit: Option<bool>,
    /// The most bytes one connection has held while its reading was paused.
    held_max: usize,
    now: Time,
    rx: Receiver<Command>,
    exit: bool,
    wake_armed: bool,
    /// The waker fired in this batch of completions (acted on after the rest of the batch).
    woken: bool,
    drain_deadline: Option<Instant>,
    shutdown_timeout: Duration,
    board: Arc<Board>,
    aborted: Arc<AtomicU64>,
    handoff: Option<Handoff>,
    handed: usize,
    gone: Vec<ListenerId>,
    siblings: Siblings,
    trim: Trim,
    /// Sockets on their way to another worker ([`Worker::leave`]): a drained worker waits for
    /// them before it exits.
    leaving: usize,
}

impl Worker {
    /// Reads the clock into `now`: the time of the step that follows, which every input of
    /// that step gives the core (so the core never gets a time earlier than one it had).
    fn tick(&mut self) -> Time {
        self.now = clock::now();
        self.now
    }

    #[allow(clippy::too_many_arguments)]
    fn new(
        id: u64,
        ring: IoUring,
        bufs: BufRing,
        poll: Poll,
        core: Core,
        recorder: Recorder,
        listeners: Vec<Listener>,
        rx: Receiver<Command>,
        rest: Rest,
    ) -> Worker {
        let splice_min = usize::try_from(core.config().limits.splice_min).unwrap_or(usize::MAX);
        Worker {
            id,
            ring,
            bufs,
            poll,
            events: Events::with_capacity(8),
            core,
            recorder,
            listeners: listeners
                .into_iter()
                .map(|socket| {
                    Some(Listening {
                        socket,
                        armed: false,
                        generation: 0,
                    })
                })
                .collect(),
            gate: Gate::default(),
            slots: Vec::new(),
            free: Vec::new(),
            by_conn: Vec::new(),
            cqes: Vec::with_capacity(1024),
            backlog: Vec::new(),
            rearm: Vec::new(),
            splicing: Vec::new(),
            pipe_flushes: Vec::new(),
            pipes: Pipes::default(),
            splice_min,
            mshot_limit: None,
            held_max: 0,
            now: clock::now(),
            rx,
            exit: false,
            wake_armed: false,
            woken: false,
            drain_deadline: None,
            shutdown_timeout: rest.shutdown_timeout,
            board: rest.board,
            aborted: rest.aborted,
            handoff: None,
            handed: 0,
            gone: Vec::new(),
            siblings: rest.siblings,
            trim: Trim::default(),
            leaving: 0,
        }
    }

    fn run(mut self) {
        self.arm_wake();
        for i in 0..self.listeners.len() {
            self.arm_accept(i);
        }
        self.tick();
        self.core.start(self.now);
        self.after_input();
        loop {
            let more = self.run_ready();
            self.bufs.publish();
            let waited = match self.wait_for() {
                // Completions already taken aside, or ready work left: submit, but do not wait.
                _ if !self.backlog.is_empty() || more => self.ring.submit(),
                Some(d) => {
                    let ts = types::Timespec::new()
                        .sec(d.as_secs())
                        .nsec(d.subsec_nanos());
                    let args = types::SubmitArgs::new().timespec(&ts);
                    self.ring.submitter().submit_with_args(1, &args)
                }
                None => self.ring.submitter().submit_and_wait(1),
            };
            match waited {
                Ok(_) => {}
                // ETIME: the deadline; EINTR: a signal; EBUSY: the completion queue overflowed
                // (drained below, then entered again).
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                    ) => {}
                // Short of memory for the moment: what completed is taken, then it tries again
                // (a worker that gave up would drop every connection it holds).
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::ENOMEM)) => {
                    log::debug!("worker {}: io_uring_enter: {e}; retrying", self.id);
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => {
                    log::error!("worker {}: io_uring_enter failed: {e}", self.id);
                    break;
                }
            }
            self.cqes.clear();
            // Those taken aside while submitting came first.
            self.cqes.append(&mut self.backlog);
            submit::reap_into(&mut self.ring, &mut self.cqes);
            self.tick();
            let cqes = std::mem::take(&mut self.cqes);
            for &(user_data, res, flags) in &cqes {
                self.complete(user_data, res, flags);
            }
            self.cqes = cqes;
            // Commands last: a drain then finds this batch's accepts and reads taken in.
            if std::mem::take(&mut self.woken) {
                self.on_wake();
            }
            if self.exit {
                break;
            }
            if let Some(deadline) = self.core.poll_timeout()
                && deadline <= self.now
            {
                self.core.handle_timeout(self.now);
                self.after_input();
            }
            self.maybe_resume();
            if self.handoff.is_some() {
                self.hand_off_idle();
            }
            after_pass(&mut self.recorder, &mut self.core, &mut self.trim);
            // A drained worker also waits for the sockets on their way to another worker (until
            // its shutdown timeout).
            if drain_over(self.id, &self.core, self.drain_deadline)
                && (self.leaving == 0 || self.drain_deadline.is_some_and(|d| Instant::now() >= d))
            {
                break;
            }
        }
        self.exit();
    }

    /// Arms the receives whose last one ended (after the buffers went back), writes out the
    /// pipes that have room and splices the bodies that are ready, in rounds, since each may
    /// make work for the others; true if work is left for after the next enter.
    fn run_ready(&mut self) -> bool {
        if self.rearm.is_empty() && self.pipe_flushes.is_empty() && self.splicing.is_empty() {
            return false;
        }
        // The pass that queued this work may have ended with a memory trim: what the splices
        // tell the core happens now, not at that pass's start.
        self.tick();
        for _ in 0..READY_ROUNDS {
            if self.rearm.is_empty() && self.pipe_flushes.is_empty() && self.splicing.is_empty() {
                return false;
            }
            self.run_list(|w| &mut w.rearm, Worker::arm_recv);
            self.run_list(
                |w| &mut w.pipe_flushes,
                |w, slot| {
                    if w.flush_pipe(slot) {
                        w.start_write(slot);
                    }
                },
            );
            self.run_list(|w| &mut w.splicing, Worker::splice_read);
        }
        !(self.rearm.is_empty() && self.pipe_flushes.is_empty() && self.splicing.is_empty())
    }

    /// Runs `each` on every slot of the list `which` picks, as it stood: slots added meanwhile
    /// wait for the next round. (Taken and put back, to keep its capacity: no allocation per
    /// pass.)
    fn run_list(&mut self, which: fn(&mut Worker) -> &mut Vec<u32>, each: fn(&mut Worker, u32)) {
        let mut list = std::mem::take(which(self));
        for &slot in &list {
            each(self, slot);
        }
        list.clear();
        list.append(which(self));
        *which(self) = list;
    }

    fn wait_for(&self) -> Option<Duration> {
        next_wait(&self.core, &self.gate, self.drain_deadline, &self.trim)
    }

    // ---- submission -------------------------------------------------------------------------

    /// Queues `entry` for the next enter (submitting what is queued first if the SQ is full).
    ///
    /// SAFETY (callers): every pointer in `entry` (a send buffer) lives until its completion:
    /// it is owned by the socket's slot, which outlives its operations.
    unsafe fn push(&mut self, entry: &squeue::Entry) {
        // SAFETY: see the function's contract.
        if let Err(e) = unsafe { submit::push(&mut self.ring, &mut self.backlog, entry) } {
            // The ring refuses work for good: the worker ends, as when io_uring_enter fails.
            log::error!("worker {}: io_uring submit failed: {e}", self.id);
            self.exit = true;
        }
    }

    /// Room for `n` more SQEs (linked ones must go in the same enter).
    fn reserve(&mut self, n: usize) {
        let sq = self.ring.submission();
        if sq.capacity() - sq.len() < n {
            drop(sq);
            if let Err(e) = submit::submit(&mut self.ring, &mut self.backlog) {
                log::error!("worker {}: io_uring submit failed: {e}", self.id);
                self.exit = true;
            }
        }
    }

    /// Queues an entry that carries no pointer.
    fn push_plain(&mut self, entry: squeue::Entry) {
        // SAFETY: no pointers in it.
        unsafe { self.push(&entry) };
    }

    fn arm_wake(&mut self) {
        self.wake_armed = true;
        let fd = self.poll.as_raw_fd();
        self.push_plain(
            opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
                .multi(true)
                .build()
                .user_data(ud(WAKE, 0, 0)),
        );
    }

    fn arm_accept(&mut self, i: usize) {
        if !self.gate.is_open() || self.drain_deadline.is_some() {
            return;
        }
        let Some(l) = self.listeners.get_mut(i).and_then(Option::as_mut) else {
            return;
        };
        if l.armed {
            return;
        }
        l.armed = true;
        l.generation = l.generation.wrapping_add(1) & 0xff_ffff;
        let e = opcode::PollAdd::new(types::Fd(l.raw()), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(ud(ACCEPT, i as u32, l.generation));
        self.push_plain(e);
    }

    /// Cancels every armed accept (accepting pauses, or the listeners close).
    fn cancel_accepts(&mut self) {
        for i in 0..self.listeners.len() {
            let Some(l) = self.listeners[i].as_mut() else {
                continue;
            };
            if !l.armed {
                continue;
            }
            l.armed = false;
            let target = ud(ACCEPT, i as u32, l.generation);
            self.push_plain(
                opcode::AsyncCancel::new(target)
                    .build()
                    .user_data(ud(IGNORE, 0, 0)),
            );
        }
    }

    fn sock(&mut self, slot: u32) -> Option<&mut Sock> {
        self.slots.get_mut(slot as usize)?.sock.as_mut()
    }

    /// The live slot of `conn` (the core still knows it).
    fn slot_of(&self, conn: ConnId) -> Option<u32> {
        let s = self
            .by_conn
            .get(conn.index as usize)
            .copied()?
            .checked_sub(1)?;
        let sock = self.slots[s as usize].sock.as_ref()?;
        (sock.conn == conn && sock.open).then_some(s)
    }

    fn insert(&mut self, sock: Sock) -> u32 {
        let conn = sock.conn;
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(Slot::default());
                (self.slots.len() - 1) as u32
            }
        };
        let entry = &mut self.slots[slot as usize];
        entry.generation = entry.generation.wrapping_add(1) & 0xff_ffff;
        entry.sock = Some(sock);
        let i = conn.index as usize;
        if self.by_conn.len() <= i {
            self.by_conn.resize(i + 1, 0);
        }
        self.by_conn[i] = slot + 1;
        slot
    }

    /// The core no longer knows the connection in `slot` (closed, or handed on).
    fn unlink(&mut self, slot: u32) {
        let Some(s) = self
            .slots
            .get_mut(slot as usize)
            .and_then(|e| e.sock.as_mut())
        else {
            return;
        };
        // Bytes still in its pipe were for this connection only: the pipe is closed.
        self.pipes.give_back(&mut s.pipe);
        s.open = false;
        let i = s.conn.index as usize;
        if self.by_conn.get(i) == Some(&(slot + 1)) {
            self.by_conn[i] = 0;
        }
    }

    fn generation(&self, slot: u32) -> u32 {
        self.slots[slot as usize].generation
    }

    /// Arms what reads the socket in `slot` next, if the core wants it read and nothing is
    /// armed: a splice when its next body bytes may be spliced ([`Worker::splice_read`]), a
    /// receive otherwise.
    fn arm_recv(&mut self, slot: u32) {
        let Some(s) = self.sock(slot) else { return };
        if !readable(s) {
            return;
        }
        let conn = s.conn;
        match self.core.splice_source(conn) {
            Some(_) => self.splicing.push(slot),
            None => self.arm_receive(slot),
        }
    }

    /// Arms a receive on the socket in `slot`: multishot, or one buffer at a time on a
    /// connection the core paused once and on a `capped` upstream connection — whose receive
    /// stops at the cap the core names for what comes next (a response head).
    fn arm_receive(&mut self, slot: u32) {
        let generation = self.generation(slot);
        let Some(s) = self.slots[slot as usize].sock.as_mut() else {
            return;
        };
        if !readable(s) {
            return;
        }
        let cap = if s.capped {
            self.core.armed_read_cap(s.conn)
        } else {
            None
        };
        let single = s.single || s.capped;
        s.recv_armed = true;
        s.limited = !single && self.mshot_limit != Some(false);
        s.inflight += 1;
        let e = if single {
            let len = cap.unwrap_or(BUF_SIZE).min(BUF_SIZE) as u32;
            s.recv_len = len;
            opcode::Recv::new(types::Fd(s.raw()), std::ptr::null_mut(), len)
                .buf_group(BGID)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
        } else {
            s.recv_len = 0;
            let e = opcode::RecvMulti::new(types::Fd(s.raw()), BGID).build();
            if s.limited {
                sqe::with_total_limit(e, MSHOT_LIMIT)
            } else {
                e
            }
        };
        self.push_plain(e.user_data(ud(RECV, slot, generation)));
    }

    /// Splices the next body bytes of the socket in `slot` into the pipe toward its peer, as
    /// the epoll worker does (`upkeep_runtime::splice::fill`, a non-blocking `splice(2)`),
    /// until the socket is drained (then a readability poll waits for more), the pipe is full
    /// (the core holds the socket back until some are written), the body ends, or the core
    /// wants the bytes read after all (a receive then).
    fn splice_read(&mut self, slot: u32) {
        for _ in 0..READ_BUDGET {
            let Some(s) = self.sock(slot) else { return };
            if !readable(s) {
                return;
            }
            let conn = s.conn;
            let Some(hint) = self.core.splice_source(conn) else {
                // A splice that ended a body may have bytes behind it.
                self.settle(slot);
                return self.arm_receive(slot);
            };
            if hint.flush_first {
                // Bytes are queued toward `to` ahead of the body, and a send of them completes
                // later: the core holds this socket back until some are written, then asks for
                // it again (`Interest`). Meanwhile it is not read, nor under a read deadline.
                self.core.wait_for_flush(self.now, hint.to);
                self.after_input();
                if let Some(to_slot) = self.slot_of(hint.to) {
                    self.start_write(to_slot);
                }
                // (Still wanted: read it as usual rather than leave it unread.)
                return self.arm_receive(slot);
            }
            let Some(to_slot) = self.slot_of(hint.to) else {
                return self.arm_receive(slot);
            };
            let held = self.sock(to_slot).and_then(|t| t.pipe.take());
            let mut pipe = match self.pipes.lend(held) {
                Ok(pipe) => pipe,
                Err(e) => {
                    // Out of descriptors, say: this body is copied instead.
                    log::debug!("worker {}: no pipe for a zero-copy body: {e}", self.id);
                    return self.arm_receive(slot);
                }
            };
            let step = match self.slots[slot as usize]
                .sock
                .as_ref()
                .and_then(|s| s.fd.as_ref())
            {
                Some(fd) => upkeep_runtime::splice::fill(
                    &mut self.core,
                    self.now,
                    conn,
                    fd,
                    hint.to,
                    &mut pipe,
                ),
                None => None,
            };
            let holder = self.slots[to_slot as usize]
                .sock
                .as_mut()
                .filter(|t| t.open)
                .map(|t| &mut t.pipe);
            // The splice stopped with bytes in the pipe (maybe full): the core holds this
            // socket back until some are written, then asks for it again.
            if self.pipes.put_back(pipe, holder) && step == Some(ReadStep::Wait) {
                self.core.pipe_full(self.now, hint.to);
            }
            self.after_input();
            match step {
                None => return self.arm_receive(slot),
                Some(ReadStep::Again) => {}
                Some(ReadStep::Wait) => return self.arm_poll_in(slot),
                Some(ReadStep::Done) => {
                    if let Some(s) = self.sock(slot) {
                        s.eof = true;
                    }
                    return;
                }
            }
        }
        // Budget spent with bytes possibly left: the rest after the others had their turn.
        self.splicing.push(slot);
    }

    /// Waits (a single-shot poll) for the socket in `slot` to be readable, to splice again.
    fn arm_poll_in(&mut self, slot: u32) {
        let Some(s) = self.sock(slot) else { return };
        if !readable(s) {
            return;
        }
        s.poll_in = true;
        self.push_poll(slot, libc::POLLIN, POLL_IN);
    }

    /// Queues a single-shot poll for `events` on the live socket in `slot`, completing as `kind`.
    fn push_poll(&mut self, slot: u32, events: i16, kind: u64) {
        let generation = self.generation(slot);
        let s = self.sock(slot).expect("live slot");
        s.inflight += 1;
        let e = opcode::PollAdd::new(types::Fd(s.raw()), events as u32)
            .build()
            .user_data(ud(kind, slot, generation));
        self.push_plain(e);
    }

    fn on_poll_in(&mut self, slot: u32, res: i32) {
        let s = self.sock(slot).expect("live");
        s.poll_in = false;
        self.done(slot);
        if res != -libc::ECANCELED {
            // (Re-decides: the core may want these bytes received, or not read at all now.)
            self.splice_read(slot);
        }
    }

    /// Writes out the bytes spliced toward the socket in `slot` (`upkeep_runtime::splice::flush`,
    /// a non-blocking `splice(2)` from its pipe, as the epoll worker does); true when its pipe
    /// is empty and what the core queued behind it may be sent. A full socket: a writability
    /// poll brings this back.
    fn flush_pipe(&mut self, slot: u32) -> bool {
        let Some(s) = self.slots[slot as usize].sock.as_mut() else {
            return false;
        };
        if !s.open || s.writing || s.connecting {
            return false;
        }
        let conn = s.conn;
        let Some(mut pipe) = s.pipe.take() else {
            return true;
        };
        let Some(fd) = s.fd.as_ref() else {
            self.pipes.give(pipe);
            return false;
        };
        let flushed = upkeep_runtime::splice::flush(&mut self.core, self.now, conn, fd, &mut pipe);
        let holder = self.slots[slot as usize].sock.as_mut().map(|s| &mut s.pipe);
        self.pipes.put_back(pipe, holder);
        self.after_input();
        match flushed {
            Flushed::Empty => true,
            Flushed::Blocked => {
                self.arm_poll_out(slot);
                false
            }
            Flushed::Done => false,
        }
    }

    /// Waits (a single-shot poll, standing in for a send) for room to write the pipe out.
    fn arm_poll_out(&mut self, slot: u32) {
        let Some(s) = self.sock(slot) else { return };
        if !s.open || s.writing || s.fd.is_none() || s.pipe.is_none() {
            return;
        }
        s.writing = true;
        self.push_poll(slot, libc::POLLOUT, POLL_OUT);
    }

    fn on_poll_out(&mut self, slot: u32, res: i32) {
        let s = self.sock(slot).expect("live");
        s.writing = false;
        self.done(slot);
        if res != -libc::ECANCELED && self.flush_pipe(slot) {
            self.start_write(slot);
        }
    }

    /// Starts a send of what the core has queued for the socket in `slot`, unless one is in
    /// flight (its completion starts the next).
    fn start_write(&mut self, slot: u32) {
        let generation = self.generation(slot);
        let Some(s) = self.slots[slot as usize].sock.as_mut() else {
            return;
        };
        if !s.open || s.writing || s.connecting || s.fd.is_none() || s.send_dead {
            return;
        }
        if s.pipe.is_some() {
            // Spliced bytes go first, written from the pipe (`flush_pipe`).
            self.pipe_flushes.push(slot);
            return;
        }
        s.wbuf.clear();
        for piece in self.core.pending(s.conn) {
            let room = SEND_MAX - s.wbuf.len();
            s.wbuf.extend_from_slice(&piece[..piece.len().min(room)]);
            if s.wbuf.len() >= SEND_MAX {
                break;
            }
        }
        if s.wbuf.is_empty() {
            return;
        }
        // IORING_RECVSEND_POLL_FIRST after a send found no room: wait for room before trying.
        let ioprio = u16::from(std::mem::take(&mut s.poll_first));
        let e = opcode::Send::new(types::Fd(s.raw()), s.wbuf.as_ptr(), s.wbuf.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .ioprio(ioprio)
            .build();
        s.writing = true;
        s.inflight += 1;
        let e = e.user_data(ud(SEND, slot, generation));
        // SAFETY: `wbuf` is not touched while `writing`, and the slot (so the Vec's heap buffer)
        // lives until every operation on it completed.
        unsafe { self.push(&e) };
    }

    // ---- the core's outputs -------------------------------------------------------------------

    fn after_input(&mut self) {
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::Connect { conn, server } => self.connect(conn, server),
                Output::Write { conn } => {
                    if let Some(slot) = self.slot_of(conn) {
                        self.start_write(slot);
                    }
                }
                Output::Interest { conn, read } => self.interest(conn, read),
                // Only ever after the last queued byte was written (the core's contract).
                // A plain system call, not io_uring's SHUTDOWN: the kernel runs that one on a
                // worker thread that looks the descriptor number up only when it gets to it, and
                // by then a close queued behind it may have freed the number for another socket
                // (the admin listener's connections were seen shut down this way: EPIPE on
                // their answer, one scrape in ten under load).
                Output::Shutdown { conn } => {
                    if let Some(sock) = self.slot_of(conn).and_then(|slot| {
                        self.slots[slot as usize].sock.as_ref().and_then(Sock::sock)
                    }) {
                        let _ = sock.shutdown(std::net::Shutdown::Write);
                    }
                }
                Output::Close { conn, reset } => {
                    if let Some(slot) = self.slot_of(conn) {
                        self.trim.closed();
                        self.close(slot, reset);
                    }
                }
                Output::HandOver {
                    conn,
                    to_worker,
                    handed,
                } => match self.slot_of(conn) {
                    Some(slot) => self.leave(
                        slot,
                        Leaving::Sibling {
                            to: to_worker,
                            handed,
                        },
                    ),
                    None => self.core.hand_over_failed(self.now, handed),
                },
            }
        }
        while let Some(ex) = self.core.poll_exchange() {
            self.recorder.exchange(&self.core, &ex);
        }
    }

    fn interest(&mut self, conn: ConnId, read: bool) {
        let Some(slot) = self.slot_of(conn) else {
            return;
        };
        let s = self.slots[slot as usize].sock.as_mut().expect("live slot");
        s.want_read = read;
        if !read {
            // Without the kernel's limit on a multishot receive (`MSHOT_LIMIT`), one may bring
            // up to ~32 buffers on one wake-up before the cancel lands: held here, beyond the
            // core's limits. Then a connection the core had to pause once reads one buffer per
            // receive from now on, so a pause holds at most one more.
            if self.mshot_limit != Some(true) {
                s.single = true;
            }
            return self.cancel_recv(slot);
        }
        // Reading resumes: first what arrived meanwhile.
        if !s.held.is_empty() {
            let held = std::mem::take(&mut s.held);
            let input = if std::mem::take(&mut s.held_full) {
                Input::ReceivedFull { conn, data: &held }
            } else {
                Input::Received { conn, data: &held }
            };
            self.core.handle(self.now, input);
            // Acted on now: those bytes may have made the core stop reading again, and then
            // the end of file held behind them waits for the next resume.
            self.after_input();
        }
        self.settle(slot);
        let Some(s) = self.sock(slot).filter(|s| s.open && s.want_read) else {
            return;
        };
        if s.held_err {
            // After the bytes that came before it, as the epoll worker's read would find it.
            s.held_err = false;
            s.eof = true;
            self.core.handle(self.now, Input::Errored { conn });
            return;
        }
        if s.held_eof {
            s.held_eof = false;
            s.eof = true;
            self.core.handle(self.now, Input::ReadClosed { conn });
            return;
        }
        self.arm_recv(slot);
    }

    /// One plain non-blocking read of the connection in `slot` if its response may have bytes
    /// behind it in the socket ([`Core::is_settling`]): empty, it is pooled; a byte or an end
    /// of stream closes it. Done before a receive of ours is armed on it, which would take
    /// those bytes only after this pass's sends — one of which may be the next request on it.
    fn settle(&mut self, slot: u32) {
        let Some(s) = self.slots[slot as usize].sock.as_ref().filter(|s| s.open) else {
            return;
        };
        let conn = s.conn;
        let Some(fd) = s.fd.as_ref().filter(|_| self.core.is_settling(conn)) else {
            return;
        };
        upkeep_runtime::io::settle(&mut self.core, self.now, conn, SockRef::from(fd));
        self.after_input();
    }

    /// Cancels the receive armed on the socket in `slot`, if any; its final completion arms
    /// what reads the socket next.
    fn cancel_recv(&mut self, slot: u32) {
        let generation = self.generation(slot);
        let Some(s) = self.sock(slot) else { return };
        if s.recv_armed && !s.cancel_sent {
            s.cancel_sent = true;
            s.inflight += 1;
            let e = opcode::AsyncCancel::new(ud(RECV, slot, generation))
                .build()
                .user_data(ud(CANCEL, slot, generation));
            self.push_plain(e);
        }
    }

    /// After `n` bytes a receive on `slot` brought: when the core says the next bytes may be
    /// spliced (the rest of a large body), or an upstream connection just received at least
    /// `splice_min` bytes at once (a large response, copied because the receive took it whole
    /// with its head), a multishot receive still armed is cancelled, so the next read splices.
    /// Such an upstream connection is `capped` from then on: its receives are single-shot and
    /// stop after a response head, leaving large bodies in the socket. One that only ever
    /// carries small responses keeps its multishot receive (a single-shot one costs a
    /// submission per response: +3.6 % CPU per 100-byte request, measured).
    fn toward_splice(&mut self, slot: u32, n: usize) {
        if self.splice_min == 0 {
            return;
        }
        let Some(s) = self.slots[slot as usize].sock.as_ref() else {
            return;
        };
        if !s.open {
            return;
        }
        let conn = s.conn;
        let upstream = self.core.upstream_server(conn).is_some();
        let large = upstream && n >= self.splice_min;
        if !large && self.core.splice_source(conn).is_none() {
            return;
        }
        if upstream && let Some(s) = self.sock(slot) {
            s.capped = true;
        }
        self.cancel_recv(slot);
    }

    fn connect(&mut self, conn: ConnId, server: ServerId) {
        let addr = self.core.server_address(server).clone();
        let keepalive = socket::upstream_keepalive(&self.core, server);
        let (fd, unix) = match socket::connect(&addr, keepalive) {
            Ok(Connecting::Tcp(s)) => (OwnedFd::from(s), false),
            Ok(Connecting::Unix(s)) => (OwnedFd::from(s), true),
            Err(e) => {
                log::debug!("worker {}: connect to {addr} failed: {e}", self.id);
                upkeep_runtime::trouble::connect_failed(&self.core, server, &e);
                // Out of descriptors or ports is our problem, not the server's: the core then
                // answers 500 without marking the server down.
                self.core.handle(self.now, Input::connect_error(conn, &e));
                return;
            }
        };
        let mut sock = Sock::new(conn, fd, unix);
        sock.server = Some(server);
        let slot = self.insert(sock);
        self.poll_connect(slot);
    }

    /// Waits for the connect in `slot` to finish (the socket becomes writable).
    fn poll_connect(&mut self, slot: u32) {
        let s = self.sock(slot).expect("live slot");
        s.connecting = true;
        self.push_poll(slot, libc::POLLOUT, CONNECT);
    }

    /// Closes the socket in `slot` once whatever is in flight on it is cancelled (a pending
    /// operation holds the file, so the FIN would wait for it).
    fn close(&mut self, slot: u32, reset: bool) {
        self.unlink(slot);
        let generation = self.generation(slot);
        let s = self.sock(slot).expect("live slot");
        // Named while the descriptor is still the socket's.
        let cancel = in_flight(s, slot, generation);
        let Some(fd) = s.fd.take() else { return };
        if reset {
            socket::set_reset_on_close(SockRef::from(&fd));
        }
        s.closed = true;
        s.inflight += 1 + u32::from(cancel.is_some());
        let fd = fd.into_raw_fd();
        self.reserve(2);
        if let Some(cancel) = cancel {
            // Hard link: the close runs whatever the cancel finds.
            let e = opcode::AsyncCancel2::new(cancel)
                .build()
                .user_data(ud(CANCEL, slot, generation))
                .flags(squeue::Flags::IO_HARDLINK);
            self.push_plain(e);
        }
        // The descriptor is the close's now (taken out of its `OwnedFd` above).
        let e = opcode::Close::new(types::Fd(fd))
            .build()
            .user_data(ud(CLOSE, slot, generation));
        self.push_plain(e);
    }

    /// Hands the socket in `slot` on (see [`Leaving`]).
    ///
    /// An idle client connection leaves once nothing is in flight on it: its receive is
    /// cancelled first, and bytes that receive still delivers go with it (the start of its next
    /// request). An idle upstream connection leaves at once, as a duplicate of its descriptor,
    /// as with epoll: its `max_conns` slot is free (a reload) or promised (a handover) from now
    /// on, and a second connection opened meanwhile would reach a one-at-a-time backend while
    /// this one still held it. Should the cancelled receive still bring bytes or an end of file
    /// (the server spoke on an idle connection), the socket is shut down both ways, so its
    /// adopter finds it closed and drops it instead of reusing it.
    fn leave(&mut self, slot: u32, to: Leaving) {
        self.unlink(slot);
        if !matches!(to, Leaving::Client { .. }) {
            return self.hand_copy(slot, to);
        }
        let generation = self.generation(slot);
        self.leaving += 1;
        let s = self.sock(slot).expect("live slot");
        s.leaving = Some(to);
        // Bytes held back from the core go with the socket.
        s.late = std::mem::take(&mut s.held);
        s.late_eof = s.held_eof || s.held_err;
        s.late_err = s.held_err;
        if s.inflight == 0 {
            return self.left(slot);
        }
        self.cancel_all(slot, generation);
    }

    /// Cancels every operation in flight on the socket in `slot` (nothing more when a cancel of
    /// its receive, all there is, is on its way: [`in_flight`]).
    fn cancel_all(&mut self, slot: u32, generation: u32) {
        let s = self.sock(slot).expect("live slot");
        let Some(cancel) = in_flight(s, slot, generation) else {
            return;
        };
        s.inflight += 1;
        let e = opcode::AsyncCancel2::new(cancel)
            .build()
            .user_data(ud(CANCEL, slot, generation));
        self.push_plain(e);
    }

    /// An idle upstream connection leaves now, as a duplicate (see [`Worker::leave`]).
    fn hand_copy(&mut self, slot: u32, to: Leaving) {
        let generation = self.generation(slot);
        let s = self.sock(slot).expect("live slot");
        let copy =
            s.fd.as_ref()
                .map(OwnedFd::try_clone)
                .transpose()
                .ok()
                .flatten()
                .map(|fd| stream_of(fd, s.unix));
        s.late = std::mem::take(&mut s.held);
        s.late_eof = s.held_eof || s.held_err;
        s.late_err = s.held_err;
        let fit = s.late.is_empty() && !s.late_eof;
        let delivered = match (copy, fit) {
            (Some(stream), true) => self.send_upstream(stream, to),
            (_, _) => {
                self.not_delivered(to);
                false
            }
        };
        let s = self.sock(slot).expect("live slot");
        s.handed_copy = delivered;
        if s.inflight == 0 {
            self.drop_copy(slot);
        } else {
            self.cancel_all(slot, generation);
        }
    }

    /// Sends an idle upstream connection to its adopter; false if it cannot take it.
    fn send_upstream(&mut self, stream: Stream, to: Leaving) -> bool {
        match to {
            Leaving::Sibling { to, handed } => {
                let sent = send_to_sibling(&self.siblings, to, stream, None, handed);
                if !sent {
                    self.not_delivered(Leaving::Sibling { to, handed });
                }
                sent
            }
            Leaving::Pooled { server, expires } => match self.next_adopter() {
                Some(to) => to.send(Command::AdoptPooled {
                    stream,
                    server,
                    expires,
                    tls: None,
                }),
                None => false,
            },
            Leaving::Client { .. } => false,
        }
    }

    /// An idle upstream connection that could not be handed on: a handover's slot goes back.
    fn not_delivered(&mut self, to: Leaving) {
        if let Leaving::Sibling { handed, .. } = to {
            self.core.hand_over_failed(self.now, handed);
            self.after_input();
        }
    }

    /// The socket in `slot`, whose duplicate left, has nothing in flight any more: shut down if
    /// its receive brought anything after it left, then closed here.
    fn drop_copy(&mut self, slot: u32) {
        let mut sock = self.slots[slot as usize].sock.take().expect("live slot");
        self.free.push(slot);
        if let Some(fd) = sock.fd.take()
            && sock.handed_copy
            && (!sock.late.is_empty() || sock.late_eof)
        {
            let _ = SockRef::from(&fd).shutdown(std::net::Shutdown::Both);
        }
    }

    /// The client socket in `slot` has nothing in flight any more: it goes to a new worker.
    fn left(&mut self, slot: u32) {
        let s = self.slots[slot as usize].sock.as_mut().expect("live slot");
        let (Some(Leaving::Client { mut released }), Some(fd)) = (s.leaving.take(), s.fd.take())
        else {
            return;
        };
        self.leaving -= 1;
        let late = std::mem::take(&mut s.late);
        let (late_eof, late_err) = (s.late_eof, s.late_err);
        let stream = stream_of(fd, s.unix);
        self.slots[slot as usize].sock = None;
        self.free.push(slot);
        if late_err || (late_eof && late.is_empty()) {
            // The client closed or failed meanwhile: nothing to hand on. (A request followed by
            // its end of file goes on: the adopter reads the end of file too. An error, once
            // reported here, would not be reported to the adopter again.)
            return;
        }
        if !late.is_empty() {
            let mut received = BytesMut::from(&released.received[..]);
            received.extend_from_slice(&late);
            released.received = received.freeze();
        }
        self.pass_on(stream, released);
    }

    // ---- completions --------------------------------------------------------------------------

    fn complete(&mut self, user_data: u64, res: i32, flags: u32) {
        let kind = user_data >> 56;
        let slot = user_data as u32;
        let generation = (user_data >> 32) as u32 & 0xff_ffff;
        match kind {
            ACCEPT => return self.on_accept(slot as usize, generation, res, flags),
            WAKE => {
                self.woken = true;
                if !cqueue::more(flags) {
                    self.wake_armed = false;
                }
                return;
            }
            IGNORE => return,
            _ => {}
        }
        // A buffer in the completion goes back whatever happens to its socket.
        let bid = cqueue::buffer_select(flags);
        let live = self
            .slots
            .get(slot as usize)
            .is_some_and(|s| s.generation == generation && s.sock.is_some());
        if !live {
            log::error!(
                "worker {}: completion for a freed slot: kind {kind} slot {slot} res {res}",
                self.id
            );
            if let Some(bid) = bid {
                self.bufs.recycle(bid);
            }
            return;
        }
        match kind {
            RECV => self.on_recv(slot, res, flags, bid),
            POLL_IN => self.on_poll_in(slot, res),
            POLL_OUT => self.on_poll_out(slot, res),
            SEND => self.on_send(slot, res),
            CONNECT => self.on_connect(slot, res),
            CANCEL => self.done(slot),
            CLOSE => {
                if res < 0 {
                    log::debug!(
                        "worker {}: close failed: {}",
                        self.id,
                        io::Error::from_raw_os_error(-res)
                    );
                }
                self.done(slot);
            }
            _ => log::error!("worker {}: unknown completion kind {kind}", self.id),
        }
    }

    /// One operation on `slot` completed: frees the slot once it is closed and idle, or hands
    /// the socket on once it is leaving and idle.
    fn done(&mut self, slot: u32) {
        let s = self.sock(slot).expect("live");
        s.inflight -= 1;
        if s.inflight > 0 {
            return;
        }
        if s.closed {
            self.slots[slot as usize].sock = None;
            self.free.push(slot);
        } else if s.leaving.is_some() {
            self.left(slot);
        } else if !s.open && s.fd.is_some() {
            // Its duplicate left (`hand_copy`).
            self.drop_copy(slot);
        }
    }

    fn on_wake(&mut self) {
        // Consume the waker's event, so the next wake is a new edge.
        let _ = self.poll.poll(&mut self.events, Some(Duration::ZERO));
        if !self.wake_armed {
            self.arm_wake();
        }
        // Commands come after the pass's completions: what they adopt or accept starts now.
        self.tick();
        self.commands();
        if self.exit {
            return;
        }
        // A wake may also come from another worker through the shared ledger.
        self.core.handle_shared(self.now);
        self.after_input();
    }

    fn on_accept(&mut self, i: usize, generation: u32, res: i32, flags: u32) {
        let Some(l) = self.listeners.get_mut(i).and_then(Option::as_mut) else {
            return;
        };
        let current = l.generation == generation;
        if current && !cqueue::more(flags) {
            l.armed = false;
        }
        if res == -libc::ECANCELED || !current {
            return;
        }
        self.accept(i);
        self.arm_accept(i);
    }

    /// Takes connections off listener `i` until its queue is empty or accepting pauses (the
    /// shared accept policy, as the epoll worker's `accept`).
    fn accept(&mut self, i: usize) {
        loop {
            let Some(l) = self.listeners.get(i).and_then(Option::as_ref) else {
                return;
            };
            match take_one(&mut self.gate, &mut self.core, &l.socket, i, self.now) {
                Took::Conn(id, stream) => self.install_stream(id, stream),
                Took::Nothing => {}
                Took::Done => return,
                Took::Paused => {
                    self.cancel_accepts();
                    return;
                }
            }
        }
    }

    fn maybe_resume(&mut self) {
        if !resumes(&mut self.gate, &self.core, self.drain_deadline) {
            return;
        }
        // The pass's time is as old as its completions' work: the connections taken now start
        // now.
        self.tick();
        for i in 0..self.listeners.len() {
            self.accept(i);
            self.arm_accept(i);
        }
    }

    /// Watches a socket the core just took in (a client accepted or adopted, a pooled upstream
    /// adopted) and reads it at once: bytes may be waiting already.
    fn install(&mut self, id: ConnId, fd: OwnedFd, unix: bool) {
        let slot = self.insert(Sock::new(id, fd, unix));
        self.after_input();
        self.arm_recv(slot);
    }

    fn on_recv(&mut self, slot: u32, res: i32, flags: u32, bid: Option<u16>) {
        let more = cqueue::more(flags);
        let now = self.now;
        let s = self.slots[slot as usize].sock.as_mut().expect("live");
        if !more {
            s.recv_armed = false;
            s.cancel_sent = false;
        }
        let conn = s.conn;
        let mut fed = false;
        if more && s.limited && self.mshot_limit.is_none() {
            self.mshot_limit = Some(true);
        }
        // Refused for its limit (Linux before 6.17): armed again below without it, as every
        // one from now on. (Every receive armed before the first refusal came back gets one too.)
        let refused = res == -libc::EINVAL && s.limited && self.mshot_limit != Some(true);
        if refused {
            self.mshot_limit = Some(false);
        }
        if res > 0 {
            let bid = bid.expect("a receive with data names its buffer");
            let data = self.bufs.get(bid, res as usize);
            if !s.open {
                // Let go by the core: kept for the adopter (a client) or a sign the handed
                // upstream connection is unfit (see `Worker::leave`).
                s.late.extend_from_slice(data);
            } else if !s.eof {
                // The last completion of a receive that stopped for its length (a single-shot
                // one filled, or a multishot one reached its total limit) may have left bytes
                // behind: nothing reads them before the next receive is armed, after this
                // pass's sends. (While a multishot receive goes on, the bytes behind come in
                // its next completions, before those sends.)
                let full = !more && (s.recv_len == 0 || s.recv_len == res as u32);
                if s.want_read && s.held.is_empty() && !s.held_eof {
                    let input = if full {
                        Input::ReceivedFull { conn, data }
                    } else {
                        Input::Received { conn, data }
                    };
                    self.core.handle(now, input);
                    fed = true;
                } else {
                    s.held_full = full;
                    s.held.extend_from_slice(data);
                    self.held_max = self.held_max.max(s.held.len());
                }
            }
            self.bufs.recycle(bid);
        } else if res == 0 {
            if let Some(bid) = bid {
                self.bufs.recycle(bid);
            }
            if !s.open {
                s.late_eof = true;
            } else if !s.eof {
                if s.want_read && s.held.is_empty() {
                    s.eof = true;
                    self.core.handle(now, Input::ReadClosed { conn });
                    fed = true;
                } else {
                    s.held_eof = true;
                }
            }
        } else {
            if let Some(bid) = bid {
                self.bufs.recycle(bid);
            }
            match -res {
                // Out of buffers, or a spurious wake-up: the receive is armed again.
                libc::ENOBUFS | libc::EAGAIN | libc::EINTR | libc::ECANCELED => {}
                libc::EINVAL if refused => {}
                _ => {
                    if !s.open {
                        s.late_eof = true;
                        s.late_err = true;
                    } else if !s.eof {
                        if s.want_read && s.held.is_empty() && !s.held_eof {
                            s.eof = true;
                            self.core.handle(now, Input::Errored { conn });
                            fed = true;
                        } else {
                            // Behind the bytes held while paused, like an end of file.
                            s.held_err = true;
                        }
                    }
                }
            }
        }
        if fed {
            self.after_input();
            self.settle(slot);
            if res > 0 {
                self.toward_splice(slot, res as usize);
            }
        }
        if !more {
            // Armed again after the loop pass has given the buffers back.
            self.rearm.push(slot);
            self.done(slot);
        }
    }

    fn on_send(&mut self, slot: u32, res: i32) {
        let s = self.sock(slot).expect("live");
        s.writing = false;
        let conn = s.conn;
        let open = s.open;
        self.done(slot);
        if !open {
            return;
        }
        if res > 0 {
            self.core.handle(
                self.now,
                Input::Written {
                    conn,
                    n: res as usize,
                },
            );
            self.after_input();
            if self.slot_of(conn) == Some(slot) && self.core.pending_len(conn) > 0 {
                self.start_write(slot);
            }
        } else if res == -libc::EAGAIN {
            // The socket's buffer is full and the kernel handed the wait back (seen with
            // `SENDMSG` on a non-blocking socket): send again once it is writable.
            if let Some(s) = self.sock(slot) {
                s.poll_first = true;
            }
            self.start_write(slot);
        } else if (res == -libc::EPIPE || res == -libc::ECONNRESET)
            && self.core.upstream_server(conn).is_some()
        {
            // The backend is gone, and what it answered before it went (an early 413) may be
            // unread: the receive armed brings it, then the reset (`upkeep_runtime::io::
            // read_then_fail`'s reasoning); with none armed, one plain read does.
            let Some(s) = self.slots[slot as usize].sock.as_mut() else {
                return;
            };
            s.send_dead = true;
            // A receive armed, or one to come when reading resumes (after what was held back
            // meanwhile, in order), brings the answer and then the reset.
            if s.recv_armed || !s.want_read || !s.held.is_empty() || s.held_eof || s.held_err {
                return;
            }
            if let Some(fd) = s.fd.as_ref() {
                upkeep_runtime::io::read_then_fail(
                    &mut self.core,
                    self.now,
                    conn,
                    &SockRef::from(fd),
                );
            }
            self.after_input();
        } else if res != -libc::ECANCELED {
            self.core.handle(self.now, Input::Errored { conn });
            self.after_input();
        }
    }

    fn on_connect(&mut self, slot: u32, res: i32) {
        let s = self.sock(slot).expect("live");
        s.connecting = false;
        let conn = s.conn;
        let open = s.open;
        let server = s.server;
        let finished = match s.sock() {
            Some(sock) if res >= 0 => match socket::connect_finished(sock) {
                // Hung up without an error and not connected: no later event will come.
                Ok(false) if res & i32::from(libc::POLLHUP | libc::POLLERR) != 0 => {
                    Err(io::ErrorKind::NotConnected.into())
                }
                other => other,
            },
            _ => Err(io::Error::from_raw_os_error(-res.min(-1))),
        };
        self.done(slot);
        if !open || res == -libc::ECANCELED {
            return;
        }
        match finished {
            // A spurious wake-up: wait again.
            Ok(false) => self.poll_connect(slot),
            Ok(true) => {
                self.core.handle(self.now, Input::Connected { conn });
                // The core asks for the write itself (`Output::Write` on `Connected`).
                self.after_input();
                if self.slot_of(conn) == Some(slot) {
                    self.arm_recv(slot);
                }
            }
            Err(e) => {
                if let Some(server) = server {
                    upkeep_runtime::trouble::connect_failed(&self.core, server, &e);
                }
                self.core.handle(self.now, Input::connect_error(conn, &e));
                self.after_input();
            }
        }
    }

    // ---- commands, drain and exit -------------------------------------------------------------

    fn commands(&mut self) {
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
                Ok(Command::Stop) | Err(TryRecvError::Disconnected) => {
                    self.exit = true;
                    return;
                }
                Ok(Command::Snapshot(tx)) => {
                    let mut snapshot = self.recorder.snapshot(&self.core, clock::now());
                    let socks = || self.slots.iter().filter_map(|e| e.sock.as_ref());
                    let used = socks().filter(|s| s.pipe.is_some()).count();
                    snapshot.pipes = (used as u64, self.pipes.kept() as u64);
                    snapshot.held_bytes = socks().map(|s| s.held.len() as u64).sum();
                    snapshot.held_max = self.held_max as u64;
                    let _ = tx.send(snapshot);
                }
                Ok(Command::ReopenLog) => self.recorder.reopen(),
                Ok(Command::Adopt {
                    stream,
                    tls,
                    listener,
                    released,
                }) => {
                    // TLS connections cannot reach an io_uring worker: the configuration that
                    // made this worker has none, so one that comes along is dropped.
                    if tls.is_none() {
                        self.adopt(stream, listener, released);
                    }
                }
                Ok(Command::AdoptPooled {
                    stream,
                    server,
                    expires,
                    tls,
                }) => {
                    if tls.is_none()
                        && let Some(id) = self.core.adopt_pooled(self.now, &server, None, expires)
                    {
                        self.install_stream(id, stream);
                    }
                }
                Ok(Command::AdoptHanded {
                    stream,
                    tls: _,
                    handed,
                }) => {
                    if let Some(id) = self.core.adopt_handed(self.now, handed) {
                        self.install_stream(id, stream);
                    }
                }
                Err(TryRecvError::Empty) => return,
            }
        }
    }

    fn install_stream(&mut self, id: ConnId, stream: Stream) {
        let (fd, unix) = match stream {
            Stream::Tcp(s) => (OwnedFd::from(std::net::TcpStream::from(s)), false),
            Stream::Unix(s) => (OwnedFd::from(std::os::unix::net::UnixStream::from(s)), true),
        };
        self.install(id, fd, unix);
    }

    /// Takes over a connection an old worker released (see the epoll worker's `adopt`).
    fn adopt(&mut self, stream: Stream, listener: Address, released: Released) {
        let Some(released) = on_listener(&self.core, &listener, released) else {
            return;
        };
        let Ok(id) = self.core.adopt(self.now, released.listener, &released) else {
            self.pass_on(stream, released);
            return;
        };
        self.install_stream(id, stream);
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
        // those connections), then stop listening. A socket handed over to a new generation is
        // left alone.
        self.cancel_accepts();
        self.gate.open();
        for i in 0..self.listeners.len() {
            if !handed_over.get(i).copied().unwrap_or(false) {
                self.accept(i);
            }
        }
        // The listeners close (a cancelled poll holds its file until the cancel completes).
        for l in &mut self.listeners {
            *l = None;
        }
        if handing_off {
            // Warm upstream connections go first, so the new workers reuse them at once.
            for (id, server, settings, expires) in self.core.release_pooled() {
                let Some(slot) = self.slot_of(id) else {
                    continue;
                };
                if settings.is_some() {
                    self.close(slot, false);
                    continue;
                }
                self.leave(slot, Leaving::Pooled { server, expires });
            }
            self.core.begin_handoff(self.now);
            self.after_input();
            self.hand_off_idle();
        } else {
            self.core.begin_drain(self.now);
            self.after_input();
        }
        self.drain_deadline = Some(Instant::now() + self.shutdown_timeout);
    }

    /// Moves every idle client connection to a new worker (a reload's drain).
    fn hand_off_idle(&mut self) {
        if !self.gone.is_empty() {
            let now = self.now;
            for &l in &self.gone {
                self.core.close_idle_on(now, l);
            }
            self.after_input();
        }
        for id in self.core.idle_clients() {
            let Some(slot) = self.slot_of(id) else {
                continue;
            };
            // A send in flight still counts as unsent in the core: released now, it would be
            // sent twice. The next pass takes the connection once the send completed.
            if self.slots[slot as usize]
                .sock
                .as_ref()
                .is_some_and(|s| s.writing)
            {
                continue;
            }
            let Some(released) = self.core.release_idle(id) else {
                continue;
            };
            self.leave(slot, Leaving::Client { released });
        }
    }

    /// Sends a released connection to the next worker of the handoff; one with nowhere to go
    /// is closed (dropped).
    fn pass_on(&mut self, stream: Stream, released: Released) {
        pass_on(
            &self.core,
            self.handoff.as_ref(),
            &mut self.handed,
            stream,
            None,
            released,
        );
    }

    /// The newest worker whose turn it is to adopt a connection, if handing off.
    fn next_adopter(&mut self) -> Option<Control> {
        crate::worker::next_adopter(self.handoff.as_ref()?, &mut self.handed)
    }

    /// Leaves the board (as the epoll worker's `exit`), then cancels everything in flight and
    /// waits for the kernel to let go of the buffers before they are freed.
    fn exit(mut self) {
        self.tick();
        let cut = self.core.abort_exchanges(self.now);
        if cut > 0 {
            self.aborted.fetch_add(cut as u64, Ordering::Relaxed);
            self.after_input();
            log::warn!("worker {}: aborting {cut} requests in progress", self.id);
        }
        crate::worker::leave_board(
            self.id,
            &self.siblings,
            &mut self.recorder,
            &self.core,
            &self.board,
            &self.rx,
        );
        for l in &mut self.listeners {
            *l = None;
        }
        // Sockets still open close with their slots; first the kernel lets go of them.
        self.push_plain(
            opcode::AsyncCancel2::new(types::CancelBuilder::any().all())
                .build()
                .user_data(ud(IGNORE, 0, 0)),
        );
        let until = Instant::now() + EXIT_WAIT;
        loop {
            let inflight: u32 = self
                .slots
                .iter()
                .filter_map(|s| s.sock.as_ref())
                .map(|s| s.inflight)
                .sum();
            if inflight == 0 || Instant::now() >= until {
                break;
            }
            let ts = types::Timespec::new().nsec(10_000_000);
            let args = types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            let mut done = std::mem::take(&mut self.backlog);
            submit::reap_into(&mut self.ring, &mut done);
            for (user_data, _, flags) in done {
                let kind = user_data >> 56;
                let slot = user_data as u32;
                let generation = (user_data >> 32) as u32 & 0xff_ffff;
                if let Some(bid) = cqueue::buffer_select(flags) {
                    self.bufs.recycle(bid);
                }
                if matches!(
                    kind,
                    RECV | SEND | CONNECT | CLOSE | CANCEL | POLL_IN | POLL_OUT
                ) && let Some(entry) = self.slots.get_mut(slot as usize)
                    && entry.generation == generation
                    && let Some(s) = entry.sock.as_mut()
                    && (kind != RECV || !cqueue::more(flags))
                {
                    s.inflight = s.inflight.saturating_sub(1);
                }
            }
        }
        let stuck = self
            .slots
            .iter()
            .filter_map(|s| s.sock.as_ref())
            .any(|s| s.inflight > 0);
        if stuck {
            // The kernel may still use a send buffer or the ring's buffers: leak them rather
            // than free memory it could write to (the worker is ending anyway).
            log::warn!("worker {}: operations still in flight at exit", self.id);
            std::mem::forget(std::mem::take(&mut self.slots));
            let Worker { ring, bufs, .. } = self;
            drop(ring);
            std::mem::forget(bufs);
            return;
        }
        log::debug!("worker {} exited", self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which operations in flight a close cancels, and how (`to_cancel`).
    #[test]
    fn to_cancel_table() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let fresh = || {
            Sock::new(
                ConnId {
                    index: 0,
                    generation: 0,
                },
                OwnedFd::from(a.try_clone().unwrap()),
                true,
            )
        };
        // (inflight, recv_armed, cancel_sent, writing, poll_in, connecting, expected)
        let rows = [
            (0, false, false, false, false, false, Cancel::Nothing),
            (1, true, false, false, false, false, Cancel::Receive),
            (2, true, true, false, false, false, Cancel::Nothing),
            // The cancel's completion came, the receive's final one not yet.
            (1, true, true, false, false, false, Cancel::Nothing),
            (2, true, false, true, false, false, Cancel::Everything),
            // A send beside a receive whose cancel completed: the review's case.
            (2, true, true, true, false, false, Cancel::Everything),
            (1, false, false, true, false, false, Cancel::Everything),
            (1, false, false, false, true, false, Cancel::Everything),
            (1, false, false, false, false, true, Cancel::Everything),
            // Only a cancel of its own still on its way.
            (1, false, false, false, false, false, Cancel::Everything),
        ];
        for (i, (inflight, recv, sent, writing, poll_in, connecting, want)) in
            rows.into_iter().enumerate()
        {
            let mut s = fresh();
            s.inflight = inflight;
            s.recv_armed = recv;
            s.cancel_sent = sent;
            s.writing = writing;
            s.poll_in = poll_in;
            s.connecting = connecting;
            assert_eq!(to_cancel(&s), want, "row {i}");
        }
    }
}
