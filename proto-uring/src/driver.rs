//! One [`Core`] on one io_uring, single-threaded.
//!
//! - Listeners: one multishot accept each (re-armed when the kernel ends it).
//! - Reading: one multishot receive per connection, buffers picked by the kernel from the
//!   provided-buffer ring ([`BufRing`]); each completion's bytes are **copied** into the core with
//!   [`Input::Received`] and the buffer goes back to the ring at once. When the core stops
//!   reading a connection (`Output::Interest { read: false }`) the receive is cancelled and not
//!   re-armed; bytes (or an EOF) that were already on their way are held here and handed over
//!   when reading resumes.
//! - Writing: at most one send in flight per connection. Its bytes are **copied** from
//!   [`Core::pending`] into a buffer the connection owns (so they live until the completion, even
//!   if the core forgets the connection meanwhile); the completion reports `Input::Written`, and
//!   if more is queued the next send goes out.
//! - Upstream connects: the socket is made with `socket(2)` (plus TCP_NODELAY and keepalive, as
//!   the mio runtime does: a few syscalls per new upstream connection, which the pool makes rare),
//!   the connect is an SQE.
//! - Shutdown and close are SQEs; a close first cancels whatever is still in flight on the socket
//!   (a pending operation holds the file, so the FIN would wait for it).
//! - Time: the wait for completions carries the core's next deadline (`EXT_ARG` timeout).
//! - Batching: everything the completions of one wait produce is pushed to the SQ and goes to
//!   the kernel in the next `io_uring_enter`, which also waits for the next completions.
//!
//! Not here: TLS, splice, reload/drain, admin listener, Unix listeners, accept pausing at
//! capacity (an accept the core refuses is closed at once).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{BorrowedFd, IntoRawFd, RawFd};
use std::time::Duration;

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};
use upkeep_core::{Address, Config, ConnId, Core, Input, ListenerId, Output, ServerId, Time};
use upkeep_runtime::clock;
use upkeep_runtime::recorder::Recorder;

use crate::bufring::BufRing;

// user_data: kind << 56 | generation (24 bits) << 32 | slot (32 bits).
const ACCEPT: u64 = 1;
const RECV: u64 = 2;
const SEND: u64 = 3;
const CONNECT: u64 = 4;
const SHUTDOWN: u64 = 5;
const CLOSE: u64 = 6;
const CANCEL: u64 = 7;

fn ud(kind: u64, slot: u32, generation: u32) -> u64 {
    kind << 56 | u64::from(generation & 0xff_ffff) << 32 | u64::from(slot)
}

/// Most bytes one send carries (copied from the core's queue).
const SEND_MAX: usize = 256 * 1024;
/// The provided-buffer ring: this many buffers of this size.
const BUFS: u16 = 1024;
const BUF_SIZE: usize = 16 * 1024;
const BGID: u16 = 0;

/// Tuning knobs (environment, for experiments only).
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub sq_entries: u32,
    pub defer_taskrun: bool,
}

/// One socket, as long as the kernel may still complete an operation on it (so a slot outlives
/// the core's connection until its close and every cancelled operation have completed).
#[derive(Debug)]
struct Sock {
    conn: ConnId,
    fd: RawFd,
    /// The core still knows the connection (no `Output::Close` yet).
    open: bool,
    /// The core wants to read it (`Output::Interest`).
    want_read: bool,
    /// A multishot receive is armed (until its final completion).
    recv_armed: bool,
    /// That receive is being cancelled (backpressure).
    cancel_sent: bool,
    /// The read side is over for the core (EOF or error reported).
    eof: bool,
    /// Bytes received while the core did not want to read, and whether an EOF followed them.
    held: Vec<u8>,
    held_eof: bool,
    /// Upstream connect in flight; its address (the SQE points at it).
    connecting: bool,
    addr: Option<Box<SockAddr>>,
    server: Option<ServerId>,
    /// A send is in flight from `wbuf` (the SQE points at it: not touched until completion).
    writing: bool,
    wbuf: Vec<u8>,
    /// Operations submitted and not yet completed (a multishot receive counts once).
    inflight: u32,
    /// Its close completed: the slot is free once nothing else is in flight.
    closed: bool,
}

#[derive(Debug, Default)]
struct Slot {
    generation: u32,
    sock: Option<Sock>,
}

/// Loop counters, on stderr every 5 s (at the next loop pass) with `PROTO_URING_STATS=1`.
#[derive(Debug, Default)]
struct Counters {
    enters: u64,
    cqes: u64,
    sqes: u64,
    recv_arms: u64,
    enobufs: u64,
    sends: u64,
    short_sends: u64,
    /// Receives cancelled for backpressure, and bytes held meanwhile.
    pauses: u64,
    held_bytes: u64,
}

pub struct Driver {
    // Declared (so dropped) before the buffer ring it registered.
    ring: IoUring,
    bufs: BufRing,
    core: Core,
    recorder: Recorder,
    listeners: Vec<std::net::TcpListener>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// The core's `ConnId.index` → our slot + 1 (0: none).
    by_conn: Vec<u32>,
    cqes: Vec<(u64, i32, u32)>,
    now: Time,
    counters: Counters,
    stats_every: Option<Duration>,
}

impl Driver {
    pub fn new(config: Config, opts: Options) -> io::Result<Driver> {
        let mut builder = IoUring::builder();
        builder.setup_cqsize(opts.sq_entries * 4).setup_submit_all();
        if opts.defer_taskrun {
            builder.setup_single_issuer().setup_defer_taskrun();
        } else {
            builder.setup_coop_taskrun();
        }
        let ring = builder.build(opts.sq_entries)?;
        let bufs = BufRing::new(&ring.submitter(), BUFS, BUF_SIZE, BGID)?;
        let mut listeners = Vec::new();
        for l in &config.listeners {
            let Address::Tcp(sa) = &l.addr else {
                return Err(io::Error::other("proto-uring: TCP listeners only"));
            };
            if l.tls.is_some() {
                return Err(io::Error::other("proto-uring: no TLS"));
            }
            let listener = upkeep_runtime::listen::bind_reuseport(*sa)?;
            // io_uring does its own waiting: a blocking socket is the usual choice.
            listener.set_nonblocking(false)?;
            listeners.push(listener);
        }
        if config.upstreams.iter().any(|u| u.tls.is_some()) {
            return Err(io::Error::other("proto-uring: no upstream TLS"));
        }
        let recorder = Recorder::open(&config)?;
        let mut core = Core::new(config, 0).map_err(|e| io::Error::other(e.to_string()))?;
        recorder.attach(&mut core);
        core.set_request_id_prefix(upkeep_runtime::recorder::request_id_prefix(1));
        let stats_every = std::env::var_os("PROTO_URING_STATS").map(|_| Duration::from_secs(5));
        Ok(Driver {
            ring,
            bufs,
            core,
            recorder,
            listeners,
            slots: Vec::new(),
            free: Vec::new(),
            by_conn: Vec::new(),
            cqes: Vec::with_capacity(1024),
            now: clock::now(),
            counters: Counters::default(),
            stats_every,
        })
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    pub fn run(mut self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        for i in 0..self.listeners.len() {
            let fd = self.listeners[i].as_raw_fd();
            self.arm_accept(i, fd);
        }
        self.now = clock::now();
        self.core.start(self.now);
        self.after_input();
        let mut last_stats = std::time::Instant::now();
        loop {
            self.bufs.publish();
            self.counters.enters += 1;
            self.counters.sqes += self.ring.submission().len() as u64;
            let waited = match self.core.poll_timeout() {
                Some(deadline) => {
                    let d = clock::until(deadline);
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
                Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                // The completion queue is full (overflow): drain it and enter again.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => return Err(e),
            }
            self.cqes.clear();
            for cqe in self.ring.completion() {
                self.cqes.push((cqe.user_data(), cqe.result(), cqe.flags()));
            }
            self.counters.cqes += self.cqes.len() as u64;
            self.now = clock::now();
            let cqes = std::mem::take(&mut self.cqes);
            for &(user_data, res, flags) in &cqes {
                self.complete(user_data, res, flags);
            }
            self.cqes = cqes;
            if let Some(deadline) = self.core.poll_timeout()
                && deadline <= self.now
            {
                self.core.handle_timeout(self.now);
                self.after_input();
            }
            self.recorder.flush();
            self.recorder.tick(&self.core, self.now);
            if let Some(every) = self.stats_every
                && last_stats.elapsed() >= every
            {
                last_stats = std::time::Instant::now();
                eprintln!("proto-uring: {:?}", self.counters);
            }
        }
    }

    // ---- submission -------------------------------------------------------------------------

    /// Queues `entry` for the next enter (submitting what is queued first if the SQ is full).
    ///
    /// SAFETY (callers): every pointer in `entry` (send buffer, socket address) lives until its
    /// completion — they are owned by the socket's slot, which outlives its operations.
    unsafe fn push(&mut self, entry: &squeue::Entry) {
        loop {
            // SAFETY: see the function's contract.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return;
            }
            self.counters.sqes += self.ring.submission().len() as u64;
            if let Err(e) = self.ring.submit() {
                log::error!("submit failed: {e}");
            }
        }
    }

    /// Room for `n` more SQEs (linked ones must go in the same enter).
    fn reserve(&mut self, n: usize) {
        let sq = self.ring.submission();
        if sq.capacity() - sq.len() < n {
            drop(sq);
            self.counters.sqes += self.ring.submission().len() as u64;
            if let Err(e) = self.ring.submit() {
                log::error!("submit failed: {e}");
            }
        }
    }

    fn arm_accept(&mut self, listener: usize, fd: RawFd) {
        let e = opcode::AcceptMulti::new(types::Fd(fd))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(ud(ACCEPT, listener as u32, 0));
        // SAFETY: no pointers.
        unsafe { self.push(&e) };
    }

    fn sock(&mut self, slot: u32) -> Option<&mut Sock> {
        self.slots.get_mut(slot as usize)?.sock.as_mut()
    }

    /// The live slot of `conn`.
    fn slot_of(&self, conn: ConnId) -> Option<u32> {
        let s = self
            .by_conn
            .get(conn.index as usize)
            .copied()?
            .checked_sub(1)?;
        let sock = self.slots[s as usize].sock.as_ref()?;
        (sock.conn == conn && sock.open).then_some(s)
    }

    fn insert(&mut self, conn: ConnId, fd: RawFd) -> u32 {
        let sock = Sock {
            conn,
            fd,
            open: true,
            want_read: true,
            recv_armed: false,
            cancel_sent: false,
            eof: false,
            held: Vec::new(),
            held_eof: false,
            connecting: false,
            addr: None,
            server: None,
            writing: false,
            wbuf: Vec::new(),
            inflight: 0,
            closed: false,
        };
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

    fn generation(&self, slot: u32) -> u32 {
        self.slots[slot as usize].generation
    }

    fn arm_recv(&mut self, slot: u32) {
        let generation = self.generation(slot);
        let Some(s) = self.sock(slot) else { return };
        if !s.open || s.recv_armed || s.eof || s.held_eof || s.connecting || !s.want_read {
            return;
        }
        s.recv_armed = true;
        s.inflight += 1;
        let e = opcode::RecvMulti::new(types::Fd(s.fd), BGID)
            .build()
            .user_data(ud(RECV, slot, generation));
        self.counters.recv_arms += 1;
        // SAFETY: the buffers are the ring's, mapped for the ring's life.
        unsafe { self.push(&e) };
    }

    /// Starts a send of what the core has queued for the socket in `slot`, unless one is in
    /// flight (its completion starts the next).
    fn start_write(&mut self, slot: u32) {
        let generation = self.generation(slot);
        let Some(s) = self.slots[slot as usize].sock.as_mut() else {
            return;
        };
        if !s.open || s.writing || s.connecting {
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
        s.writing = true;
        s.inflight += 1;
        let e = opcode::Send::new(types::Fd(s.fd), s.wbuf.as_ptr(), s.wbuf.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(ud(SEND, slot, generation));
        self.counters.sends += 1;
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
                Output::Shutdown { conn } => {
                    if let Some(slot) = self.slot_of(conn) {
                        let generation = self.generation(slot);
                        let s = self.sock(slot).expect("live slot");
                        s.inflight += 1;
                        let e = opcode::Shutdown::new(types::Fd(s.fd), libc::SHUT_WR)
                            .build()
                            .user_data(ud(SHUTDOWN, slot, generation));
                        // SAFETY: no pointers.
                        unsafe { self.push(&e) };
                    }
                }
                Output::Close { conn, reset } => self.close(conn, reset),
                Output::HandOver { conn, handed, .. } => {
                    // Only with several workers sharing a ledger; there is one core here.
                    self.close(conn, false);
                    self.core.hand_over_failed(self.now, handed);
                }
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
        let generation = self.generation(slot);
        let s = self.slots[slot as usize].sock.as_mut().expect("live slot");
        s.want_read = read;
        if !read {
            if s.recv_armed && !s.cancel_sent {
                self.counters.pauses += 1;
                s.cancel_sent = true;
                s.inflight += 1;
                let e = opcode::AsyncCancel::new(ud(RECV, slot, generation))
                    .build()
                    .user_data(ud(CANCEL, slot, generation));
                // SAFETY: no pointers.
                unsafe { self.push(&e) };
            }
            return;
        }
        // Reading resumes: first what arrived meanwhile.
        if !s.held.is_empty() {
            let held = std::mem::take(&mut s.held);
            self.core
                .handle(self.now, Input::Received { conn, data: &held });
            // The outputs are drained by the caller's loop (`after_input`).
        }
        let Some(s) = self.sock(slot).filter(|s| s.open) else {
            return;
        };
        if s.held_eof && s.want_read {
            s.held_eof = false;
            s.eof = true;
            self.core.handle(self.now, Input::ReadClosed { conn });
            return;
        }
        self.arm_recv(slot);
    }

    fn connect(&mut self, conn: ConnId, server: ServerId) {
        let addr = self.core.server_address(server).clone();
        let keepalive = upkeep_runtime::socket::upstream_keepalive(&self.core, server);
        let made = (|| -> io::Result<(Socket, SockAddr)> {
            Ok(match &addr {
                Address::Tcp(sa) => {
                    let s =
                        Socket::new(Domain::for_address(*sa), Type::STREAM, Some(Protocol::TCP))?;
                    upkeep_runtime::socket::tune_tcp(SockRef::from(&s));
                    upkeep_runtime::socket::set_tcp_keepalive(SockRef::from(&s), keepalive);
                    (s, SockAddr::from(*sa))
                }
                Address::Unix(path) => (
                    Socket::new(Domain::UNIX, Type::STREAM, None)?,
                    SockAddr::unix(path)?,
                ),
            })
        })();
        let (socket, to) = match made {
            Ok(x) => x,
            Err(e) => {
                upkeep_runtime::trouble::connect_failed(&self.core, server, &e);
                self.core.handle(self.now, Input::connect_error(conn, &e));
                return;
            }
        };
        let fd = socket.into_raw_fd();
        let slot = self.insert(conn, fd);
        let generation = self.generation(slot);
        let s = self.sock(slot).expect("just inserted");
        s.connecting = true;
        s.server = Some(server);
        let to = Box::new(to);
        let e = opcode::Connect::new(types::Fd(fd), to.as_ptr().cast(), to.len())
            .build()
            .user_data(ud(CONNECT, slot, generation));
        s.addr = Some(to);
        s.inflight += 1;
        // SAFETY: the address is boxed in the slot, which outlives the connect.
        unsafe { self.push(&e) };
    }

    fn close(&mut self, conn: ConnId, reset: bool) {
        let Some(slot) = self.slot_of(conn) else {
            return;
        };
        self.by_conn[conn.index as usize] = 0;
        let generation = self.generation(slot);
        let s = self.sock(slot).expect("live slot");
        s.open = false;
        let fd = s.fd;
        if reset {
            // SAFETY: the descriptor is open (its close is queued below).
            let b = unsafe { BorrowedFd::borrow_raw(fd) };
            upkeep_runtime::socket::set_reset_on_close(SockRef::from(&b));
        }
        let pending = s.inflight > 0;
        s.inflight += 1 + u32::from(pending);
        self.reserve(2);
        if pending {
            // Whatever is still in flight holds the file: cancel it, then close (hard link: the
            // close runs whatever the cancel finds).
            let e = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all())
                .build()
                .user_data(ud(CANCEL, slot, generation))
                .flags(squeue::Flags::IO_HARDLINK);
            // SAFETY: no pointers.
            unsafe { self.push(&e) };
        }
        let e = opcode::Close::new(types::Fd(fd))
            .build()
            .user_data(ud(CLOSE, slot, generation));
        // SAFETY: no pointers.
        unsafe { self.push(&e) };
    }

    // ---- completions --------------------------------------------------------------------------

    fn complete(&mut self, user_data: u64, res: i32, flags: u32) {
        let kind = user_data >> 56;
        let slot = user_data as u32;
        let generation = (user_data >> 32) as u32 & 0xff_ffff;
        if kind == ACCEPT {
            return self.on_accept(slot as usize, res, flags);
        }
        // A buffer in the completion goes back whatever happens to its socket.
        let bid = cqueue::buffer_select(flags);
        let live = self
            .slots
            .get(slot as usize)
            .is_some_and(|s| s.generation == generation && s.sock.is_some());
        if !live {
            log::error!("completion for a freed slot: kind {kind} slot {slot} res {res}");
            if let Some(bid) = bid {
                self.bufs.recycle(bid);
            }
            return;
        }
        match kind {
            RECV => self.on_recv(slot, res, flags, bid),
            SEND => self.on_send(slot, res),
            CONNECT => self.on_connect(slot, res),
            SHUTDOWN | CANCEL => self.done(slot),
            CLOSE => {
                if res < 0 {
                    log::warn!("close failed: {}", io::Error::from_raw_os_error(-res));
                }
                self.sock(slot).expect("live").closed = true;
                self.done(slot);
            }
            _ => log::error!("unknown completion kind {kind}"),
        }
    }

    /// One operation on `slot` completed; frees the slot once it is closed and idle.
    fn done(&mut self, slot: u32) {
        let s = self.sock(slot).expect("live");
        s.inflight -= 1;
        if s.closed && s.inflight == 0 {
            self.slots[slot as usize].sock = None;
            self.free.push(slot);
        }
    }

    fn on_accept(&mut self, listener: usize, res: i32, flags: u32) {
        if !cqueue::more(flags) {
            use std::os::fd::AsRawFd;
            if res < 0 {
                log::warn!(
                    "multishot accept ended: {}",
                    io::Error::from_raw_os_error(-res)
                );
            }
            let fd = self.listeners[listener].as_raw_fd();
            self.arm_accept(listener, fd);
        }
        if res < 0 {
            return;
        }
        let fd: RawFd = res;
        // SAFETY: the descriptor the accept just gave us.
        let b = unsafe { BorrowedFd::borrow_raw(fd) };
        let sock = SockRef::from(&b);
        let peer: Option<IpAddr> = sock
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map(|a| a.ip());
        upkeep_runtime::socket::tune_tcp(sock);
        match self
            .core
            .accept(self.now, ListenerId(listener as u32), peer)
        {
            Ok(id) => {
                let slot = self.insert(id, fd);
                self.after_input();
                self.arm_recv(slot);
            }
            Err(_at_capacity) => {
                // SAFETY: ours, unused.
                unsafe { libc::close(fd) };
            }
        }
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
        if res > 0 {
            let bid = bid.expect("a receive with data names its buffer");
            let data = self.bufs.get(bid, res as usize);
            if s.open && !s.eof {
                if s.want_read && s.held.is_empty() && !s.held_eof {
                    self.core.handle(now, Input::Received { conn, data });
                    fed = true;
                } else {
                    s.held.extend_from_slice(data);
                    self.counters.held_bytes += data.len() as u64;
                }
            }
            self.bufs.recycle(bid);
        } else if res == 0 {
            if s.open && !s.eof {
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
                libc::ENOBUFS => self.counters.enobufs += 1,
                libc::ECANCELED => {}
                _ => {
                    if s.open && !s.eof {
                        s.eof = true;
                        self.core.handle(now, Input::Errored { conn });
                        fed = true;
                    }
                }
            }
        }
        if fed {
            self.after_input();
        }
        if !more {
            self.arm_recv(slot);
            self.done(slot);
        }
    }

    fn on_send(&mut self, slot: u32, res: i32) {
        let s = self.sock(slot).expect("live");
        s.writing = false;
        let conn = s.conn;
        let open = s.open;
        let offered = s.wbuf.len();
        self.done(slot);
        if !open {
            return;
        }
        if res > 0 {
            if (res as usize) < offered {
                self.counters.short_sends += 1;
            }
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
        } else if res != -libc::ECANCELED {
            if res < 0 {
                log::debug!("send failed: {}", io::Error::from_raw_os_error(-res));
            }
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
        s.addr = None;
        self.done(slot);
        if !open || res == -libc::ECANCELED {
            return;
        }
        if res == 0 {
            self.core.handle(self.now, Input::Connected { conn });
            // The core asks for the write itself (`Output::Write` on `Connected`).
            self.after_input();
            if self.slot_of(conn) == Some(slot) {
                self.arm_recv(slot);
            }
        } else {
            let e = io::Error::from_raw_os_error(-res);
            if let Some(server) = server {
                upkeep_runtime::trouble::connect_failed(&self.core, server, &e);
            }
            self.core.handle(self.now, Input::connect_error(conn, &e));
            self.after_input();
        }
    }
}
