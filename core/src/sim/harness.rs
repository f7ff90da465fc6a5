use core::net::{IpAddr, Ipv4Addr};
use core::time::Duration;
use std::collections::{BTreeMap, VecDeque};

use crate::{Config, ConnId, Core, Handed, Input, ListenerId, Output, ReadOutcome, ServerId, Time};

/// Largest piece a splicing harness hands to the core the copying way at once (see
/// [`Harness::enable_splice`]).
pub const SPLICE_PIECE: usize = 64;

/// One side of a connection as the simulated peer sees it.
#[derive(Debug, Default, Clone)]
pub struct Endpoint {
    /// Bytes the proxy wrote to this peer that the test has not taken yet.
    pub received: Vec<u8>,
    /// Every byte the proxy ever wrote to this peer.
    pub total_received: usize,
    /// The proxy closed the connection.
    pub closed: bool,
    /// The close was abortive.
    pub reset: bool,
    /// The proxy shut down its write side.
    pub shutdown: bool,
    /// The proxy wants to read from this peer.
    pub reading: bool,
    /// Bytes the peer sent that the proxy has not read yet (it stopped reading).
    pub unread: Vec<u8>,
    /// The peer sent EOF; delivered once the proxy reads again.
    pub eof_pending: bool,
    /// For upstream connections: the server it goes to.
    pub server: Option<ServerId>,
    /// For upstream connections: whether the connect was accepted.
    pub connected: bool,
    /// Stop writing to this peer (a client that does not read): output stays queued in the core.
    pub stalled: bool,
    /// Bytes spliced toward this peer that are not written yet: the runtime's pipe
    /// ([`Harness::enable_splice`]). As many as [`Core::piped`] says, always.
    pub piped: Vec<u8>,
}

/// An idle upstream connection this harness's core handed to another worker
/// ([`Output::HandOver`]), on its way: the peer (its endpoint) moves with it.
#[derive(Debug, Clone)]
pub struct InFlight {
    /// Its id in the sending core (dead there now).
    pub conn: ConnId,
    /// The worker to deliver it to.
    pub to_worker: usize,
    /// What the receiving core needs.
    pub handed: Handed,
    /// The backend's side of it, as the sender's endpoint left it.
    pub endpoint: Endpoint,
}

/// The runtime's part, played in memory with a virtual clock.
#[derive(Debug)]
pub struct Harness {
    /// The engine under test.
    pub core: Core,
    /// Virtual time.
    pub now: Time,
    /// Client connections by id (closed ones stay, marked closed).
    pub clients: BTreeMap<ConnId, Endpoint>,
    /// Upstream connections by id (closed ones stay, marked closed).
    pub upstreams: BTreeMap<ConnId, Endpoint>,
    /// Connects requested and not answered yet, oldest first.
    pub connects: Vec<ConnId>,
    /// Every output, in order (a trace: equal for equal inputs).
    pub trace: Vec<Output>,
    /// Connections handed to another worker and not delivered yet (see
    /// [`Harness::adopt_handed`]): out of `upstreams`, still open.
    pub handed_out: Vec<InFlight>,
    /// Accept connects automatically.
    pub auto_connect: bool,
    /// Largest write the fake sockets accept at once (None = everything).
    pub write_chunk: Option<usize>,
    /// Body bytes are spliced where the core allows it, into pipes of this many bytes
    /// ([`Harness::enable_splice`]).
    splice: Option<usize>,
    /// Waits for a peer's queue instead of copying meanwhile ([`Harness::wait_for_flushes`]).
    wait_flush: bool,
    /// While a splicing delivery reads a peer: the connections to write afterwards (as the
    /// mio runtime reads a socket until `EAGAIN`, then writes; so a pipe can fill).
    deferred: Option<Vec<ConnId>>,
    /// Deliveries so far: they alternate between the two ways a runtime can hand bytes to the
    /// core, so every test drives both (`Input::Received`, and `Core::read_with`, which reads
    /// in place through `Core::read_buffer` + `Input::Appended`).
    deliveries: u64,
    /// How deep `pump` calls are nested (a delivery pumps, and a pump may resume a read).
    pump_depth: u32,
    /// Connections the core asked to be read again while a pump was nested: their held bytes
    /// are delivered by the outermost pump, one after another. Delivering them on the spot made
    /// the harness recurse (pump → deliver → pump …) until the stack ran out, with long bodies
    /// through a small pipe.
    resume: VecDeque<ConnId>,
    /// Those deliveries are under way.
    resuming: bool,
}

impl Harness {
    /// A harness around `Core::new(config, 1)`, at time zero, accepting connects automatically.
    pub fn new(config: Config) -> Harness {
        Harness::with_core(Core::new(config, 1).expect("valid config"))
    }

    /// A harness around `core` (one worker of several sharing a ledger, say), at time zero,
    /// accepting connects automatically.
    pub fn with_core(core: Core) -> Harness {
        Harness {
            core,
            now: Time::from_millis(1),
            clients: BTreeMap::new(),
            upstreams: BTreeMap::new(),
            connects: Vec::new(),
            trace: Vec::new(),
            handed_out: Vec::new(),
            auto_connect: true,
            write_chunk: None,
            splice: None,
            wait_flush: false,
            deferred: None,
            deliveries: 0,
            pump_depth: 0,
            resume: VecDeque::new(),
            resuming: false,
        }
    }

    /// Plays a runtime that splices body bytes ([`Core::enable_splice`]): a peer's bytes the
    /// core lets pass go straight into an in-memory pipe toward the other peer
    /// ([`Endpoint::piped`]) and are written from there first. Deliveries are cut into pieces
    /// of at most `SPLICE_PIECE` bytes so that a body sent in one write still meets the
    /// splice offer after its head.
    /// A pipe holds at most `capacity` bytes: a splice that finds it full stops, the core is
    /// told ([`Core::pipe_full`]) and must stop reading the source until some of it is written.
    pub fn enable_splice(&mut self, capacity: usize) {
        self.splice = Some(capacity.max(1));
        self.core.enable_splice(true);
    }

    /// Plays a splicing runtime whose writes complete later (io_uring): when bytes are still
    /// queued toward the peer ahead of a body to splice, it does not copy the body in the
    /// meantime but waits ([`Core::wait_for_flush`]), and the core must stop reading the source
    /// until some of that queue is written.
    pub fn wait_for_flushes(&mut self, on: bool) {
        self.wait_flush = on;
    }

    /// A new client connection from 127.0.0.1.
    pub fn connect_client(&mut self) -> ConnId {
        self.connect_client_from(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// A new client connection from `ip`.
    pub fn connect_client_from(&mut self, ip: IpAddr) -> ConnId {
        let id = self
            .core
            .accept(self.now, ListenerId(0), Some(ip))
            .expect("accept");
        self.track_client(id)
    }

    /// A client endpoint for the connection the core just took in.
    fn track_client(&mut self, id: ConnId) -> ConnId {
        self.clients.insert(
            id,
            Endpoint {
                reading: true,
                ..Endpoint::default()
            },
        );
        self.pump();
        id
    }

    /// A client connection another core released (a reload's handoff), adopted on listener 0:
    /// the same peer, so what it already received stays with the `from` harness's endpoint.
    pub fn adopt_client(&mut self, released: &crate::Released) -> ConnId {
        let id = self
            .core
            .adopt(self.now, ListenerId(0), released)
            .expect("adopt");
        self.track_client(id)
    }

    /// Delivers a connection another harness's core handed over to this one's
    /// ([`Core::adopt_handed`]): its endpoint joins `upstreams` under the new id (`None`: the
    /// core did not know its server; the connection is closed).
    pub fn adopt_handed(&mut self, moved: InFlight) -> Option<ConnId> {
        let id = self.core.adopt_handed(self.now, moved.handed)?;
        self.upstreams.insert(
            id,
            Endpoint {
                closed: false,
                ..moved.endpoint
            },
        );
        self.pump();
        Some(id)
    }

    /// The client sends bytes.
    pub fn client_send(&mut self, c: ConnId, data: &[u8]) {
        self.send(c, data, true);
    }

    /// The backend side of upstream connection `u` sends bytes.
    pub fn upstream_send(&mut self, u: ConnId, data: &[u8]) {
        self.send(u, data, false);
    }

    /// The backend side of upstream connection `u` sends `first` and `then` in one write, which
    /// the runtime takes in two reads: the first fills its room ([`Input::ReceivedFull`], or
    /// a splice), so only the second tells what followed. Nothing is written in between (as a
    /// runtime reads again before it writes). Both are delivered at once, or both held if the
    /// connection is not read now.
    pub fn upstream_send_in_two_reads(&mut self, u: ConnId, first: &[u8], then: &[u8]) {
        let Some(ep) = self.upstreams.get_mut(&u) else {
            return;
        };
        if ep.closed {
            return;
        }
        if !(ep.reading && ep.unread.is_empty()) {
            ep.unread.extend_from_slice(first);
            ep.unread.extend_from_slice(then);
            return self.pump();
        }
        let outer = self.deferred.is_none();
        if outer {
            self.deferred = Some(Vec::new());
        }
        match self.splice {
            Some(capacity) => self.deliver_spliced(u, first, capacity),
            None => {
                self.deliveries += 1;
                self.core.handle(
                    self.now,
                    Input::ReceivedFull {
                        conn: u,
                        data: first,
                    },
                );
            }
        }
        if self.core.is_open(u) {
            let reading = self.upstreams.get(&u).is_some_and(|ep| ep.reading);
            if reading {
                self.deliver_copied(u, then);
            } else if let Some(ep) = self.upstreams.get_mut(&u) {
                ep.unread.extend_from_slice(then);
            }
            self.drained(u);
        }
        if outer {
            for id in self.deferred.take().unwrap_or_default() {
                self.flush(id);
            }
        }
        self.pump();
    }

    fn send(&mut self, id: ConnId, data: &[u8], client: bool) {
        let ep = self.endpoint_mut(id, client);
        if ep.closed {
            return;
        }
        if ep.reading && ep.unread.is_empty() {
            self.deliver(id, data);
        } else {
            ep.unread.extend_from_slice(data);
        }
        self.pump();
    }

    /// Hands bytes the peer sent to the core: spliced where it allows that
    /// ([`Harness::enable_splice`]), else copied (`Received`) or in place (`Appended`), in turn.
    fn deliver(&mut self, conn: ConnId, data: &[u8]) {
        let Some(capacity) = self.splice else {
            self.deliver_copied(conn, data);
            return self.drained(conn);
        };
        let outer = self.deferred.is_none();
        if outer {
            self.deferred = Some(Vec::new());
        }
        self.deliver_spliced(conn, data, capacity);
        self.drained(conn);
        if outer {
            for id in self.deferred.take().unwrap_or_default() {
                self.flush(id);
            }
            self.pump();
        }
    }

    /// [`Harness::deliver`] on a splicing harness: writes wait until the delivery is done.
    fn deliver_spliced(&mut self, conn: ConnId, data: &[u8], capacity: usize) {
        let mut rest = data;
        while !rest.is_empty() {
            // As a runtime: no reading while the core holds it back (bytes wait in the socket).
            let Some(ep) = self.endpoint_of(conn) else {
                return;
            };
            if ep.closed {
                return;
            }
            if !ep.reading {
                ep.unread.extend_from_slice(rest);
                return;
            }
            if let Some(hint) = self.core.splice_source(conn) {
                if hint.flush_first {
                    self.flush(hint.to);
                    if self.wait_flush
                        && self.core.splice_source(conn).is_some_and(|h| h.flush_first)
                    {
                        // Not all of it went out: wait for it, the source held back meanwhile.
                        self.core.wait_for_flush(self.now, hint.to);
                        self.pump();
                        let reading = self.endpoint_of(conn).is_some_and(|ep| ep.reading);
                        assert!(
                            !reading,
                            "{conn:?} still read while its peer's queue is waited for"
                        );
                        continue;
                    }
                }
                let full = self
                    .endpoint_of(hint.to)
                    .is_some_and(|p| p.piped.len() >= capacity);
                if full {
                    // The runtime's splice says EAGAIN: the core holds the source back.
                    self.core.pipe_full(self.now, hint.to);
                    self.pump();
                    let reading = self.endpoint_of(conn).is_some_and(|ep| ep.reading);
                    assert!(!reading, "{conn:?} still read with its peer's pipe full");
                    continue;
                }
            }
            let (clients, upstreams) = (&mut self.clients, &mut self.upstreams);
            let moved = self.core.splice_with(self.now, conn, |to, max| {
                let ep = match clients.get_mut(&to) {
                    Some(ep) => ep,
                    None => upstreams.get_mut(&to).expect("a known peer"),
                };
                let n = max.min(rest.len()).min(capacity - ep.piped.len());
                ep.piped.extend_from_slice(&rest[..n]);
                Ok(n)
            });
            match moved {
                Some(Ok(ReadOutcome::Data(n))) => rest = &rest[n..],
                Some(other) => panic!("an in-memory splice cannot fail: {other:?}"),
                None => {
                    // As a runtime: a head's read stops at the core's cap, leaving the body
                    // behind it to be spliced. (With 64-byte pieces the cap does not bind here:
                    // a capped read is a short read, which these pieces already play;
                    // core/tests/splice.rs drives a capped read itself.)
                    let cap = self.core.read_cap(conn).unwrap_or(usize::MAX);
                    let n = rest.len().min(SPLICE_PIECE).min(cap);
                    self.deliver_copied(conn, &rest[..n]);
                    rest = &rest[n..];
                }
            }
            self.pump();
        }
    }

    /// As a runtime after a read that filled its room or a splice: it reads again before it
    /// writes anything, and the read finds the socket empty (everything sent was delivered), so
    /// a settling connection's response is pooled.
    fn drained(&mut self, conn: ConnId) {
        if self.core.is_settling(conn) {
            let got = self.core.read_with(self.now, conn, 1, |_| {
                Err(std::io::ErrorKind::WouldBlock.into())
            });
            debug_assert!(got.is_err(), "nothing more to read");
        }
    }

    /// Hands bytes the peer sent to the core, copied (`Received`) or in place (`Appended`), in
    /// turn.
    fn deliver_copied(&mut self, conn: ConnId, data: &[u8]) {
        self.deliveries += 1;
        // An empty read means end of stream to `read_with`; an empty delivery means nothing.
        if self.deliveries.is_multiple_of(2) || data.is_empty() {
            self.core.handle(self.now, Input::Received { conn, data });
        } else {
            let got = self.core.read_with(self.now, conn, data.len(), |buf| {
                buf.extend_from_slice(data);
                Ok(data.len())
            });
            debug_assert!(matches!(
                got,
                Ok(ReadOutcome::Data(_) | ReadOutcome::Unknown)
            ));
        }
    }

    /// The client closes its write side (EOF).
    pub fn client_eof(&mut self, c: ConnId) {
        self.eof(c, true);
    }

    /// The backend closes its write side (EOF) of upstream connection `u`.
    pub fn upstream_eof(&mut self, u: ConnId) {
        self.eof(u, false);
    }

    fn eof(&mut self, id: ConnId, client: bool) {
        let ep = self.endpoint_mut(id, client);
        if ep.closed {
            return;
        }
        if ep.reading && ep.unread.is_empty() {
            self.core.handle(self.now, Input::ReadClosed { conn: id });
        } else {
            ep.eof_pending = true;
        }
        self.pump();
    }

    /// The connection fails abruptly (RST).
    pub fn reset(&mut self, id: ConnId) {
        self.core.handle(self.now, Input::Errored { conn: id });
        self.pump();
    }

    /// Answers the oldest pending connect (when `auto_connect` is off).
    pub fn accept_connect(&mut self) -> Option<ConnId> {
        if self.connects.is_empty() {
            return None;
        }
        let u = self.connects.remove(0);
        self.complete_connect(u, Input::Connected { conn: u });
        Some(u)
    }

    /// Refuses the oldest pending connect.
    pub fn refuse_connect(&mut self) -> Option<ConnId> {
        if self.connects.is_empty() {
            return None;
        }
        let u = self.connects.remove(0);
        self.complete_connect(u, Input::ConnectFailed { conn: u });
        Some(u)
    }

    /// The oldest pending connect could not even be attempted (the runtime ran out of file
    /// descriptors): [`Input::ConnectAborted`].
    pub fn abort_connect(&mut self) -> Option<ConnId> {
        if self.connects.is_empty() {
            return None;
        }
        let u = self.connects.remove(0);
        self.complete_connect(u, Input::ConnectAborted { conn: u });
        Some(u)
    }

    /// The runtime refused the oldest pending connect's server identity (a TLS certificate
    /// our verification rejects): [`Input::ConnectRejected`].
    pub fn reject_connect(&mut self) -> Option<ConnId> {
        if self.connects.is_empty() {
            return None;
        }
        let u = self.connects.remove(0);
        self.complete_connect(u, Input::ConnectRejected { conn: u });
        Some(u)
    }

    fn complete_connect(&mut self, u: ConnId, input: Input<'_>) {
        if let Some(ep) = self.upstreams.get_mut(&u) {
            ep.connected = matches!(input, Input::Connected { .. });
        }
        self.core.handle(self.now, input);
        self.pump();
    }

    /// Moves the clock forward by `d`, firing deadlines on the way.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now.plus(d);
        while let Some(t) = self.core.poll_timeout() {
            if t > end {
                break;
            }
            assert!(
                t >= self.now || t.since(self.now).is_zero(),
                "deadline in the past is fine"
            );
            self.now = self.now.max(t);
            self.core.handle_timeout(self.now);
            self.pump();
        }
        self.now = end;
        self.core.handle_timeout(self.now);
        self.pump();
    }

    /// Takes what the proxy wrote to a client.
    pub fn take_client(&mut self, c: ConnId) -> Vec<u8> {
        core::mem::take(&mut self.endpoint_mut(c, true).received)
    }

    /// Takes what the proxy wrote to an upstream connection.
    pub fn take_upstream(&mut self, u: ConnId) -> Vec<u8> {
        core::mem::take(&mut self.endpoint_mut(u, false).received)
    }

    /// Upstream connections that are open (connected, not closed), oldest first.
    pub fn open_upstreams(&self) -> Vec<ConnId> {
        self.upstreams
            .iter()
            .filter(|(_, e)| !e.closed)
            .map(|(&id, _)| id)
            .collect()
    }

    /// The newest upstream connection.
    pub fn last_upstream(&self) -> Option<ConnId> {
        self.upstreams
            .keys()
            .max_by_key(|id| (self.order(id), id.index))
            .copied()
    }

    fn order(&self, id: &ConnId) -> usize {
        self.trace
            .iter()
            .position(|o| matches!(o, Output::Connect { conn, .. } if conn == id))
            .unwrap_or(0)
    }

    /// Upstream connections ever opened, in the order they were requested.
    pub fn upstreams_in_order(&self) -> Vec<ConnId> {
        self.trace
            .iter()
            .filter_map(|o| match o {
                Output::Connect { conn, .. } => Some(*conn),
                _ => None,
            })
            .collect()
    }

    /// Stops (or resumes) writing to a peer, as if it stopped reading.
    pub fn stall(&mut self, id: ConnId, stalled: bool) {
        let client = self.clients.contains_key(&id);
        self.endpoint_mut(id, client).stalled = stalled;
        if !stalled {
            self.flush(id);
            self.pump();
        }
    }

    /// Plays a socket that accepted only `n` of the bytes queued for `id` (a slow peer that
    /// reads a little, then pauses): reports them written and returns them. `stall` + unstall
    /// can only express all-or-nothing.
    pub fn partial_write(&mut self, id: ConnId, n: usize) -> Vec<u8> {
        let buf = self.write_some(id, n);
        self.pump();
        buf
    }

    /// Plays one socket write of at most `limit` bytes of what is queued for `id`, through
    /// [`Core::write_with`] as the runtimes write; returns the bytes that went out.
    fn write_some(&mut self, id: ConnId, limit: usize) -> Vec<u8> {
        let mut buf = Vec::new();
        let _ = self.core.write_with(self.now, id, |iov| {
            for piece in iov {
                let take = piece.len().min(limit - buf.len());
                buf.extend_from_slice(&piece[..take]);
                if buf.len() == limit {
                    break;
                }
            }
            // A write of nothing would fail the connection; "nothing fitted" is WouldBlock.
            if buf.is_empty() {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            Ok(buf.len())
        });
        buf
    }

    fn endpoint_mut(&mut self, id: ConnId, client: bool) -> &mut Endpoint {
        let map = if client {
            &mut self.clients
        } else {
            &mut self.upstreams
        };
        map.get_mut(&id).expect("known connection")
    }

    fn endpoint_of(&mut self, id: ConnId) -> Option<&mut Endpoint> {
        if self.clients.contains_key(&id) {
            self.clients.get_mut(&id)
        } else {
            self.upstreams.get_mut(&id)
        }
    }

    /// "Writes" everything the core has queued for `id` (up to `write_chunk` per call).
    fn flush(&mut self, id: ConnId) {
        loop {
            let Some(ep) = self.endpoint_of(id) else {
                return;
            };
            if ep.stalled || ep.closed {
                return;
            }
            let limit = self.write_chunk.unwrap_or(usize::MAX);
            if self.core.piped(id) > 0 {
                let ep = self.endpoint_of(id).expect("checked");
                // The pipe first, as the runtime's splice out of it.
                let mut piped = core::mem::take(&mut ep.piped);
                let mut out = Vec::new();
                let _ = self.core.write_piped_with(self.now, id, |n| {
                    let k = n.min(limit).min(piped.len());
                    out.extend(piped.drain(..k));
                    Ok(k)
                });
                if let Some(ep) = self.endpoint_of(id) {
                    ep.piped = piped;
                }
                let ep = self.endpoint_of(id).expect("checked");
                ep.total_received += out.len();
                ep.received.extend_from_slice(&out);
                if out.is_empty() {
                    return;
                }
                continue;
            }
            let buf = self.write_some(id, limit);
            if buf.is_empty() {
                return;
            }
            let ep = self.endpoint_of(id).expect("checked");
            ep.received.extend_from_slice(&buf);
            ep.total_received += buf.len();
        }
    }

    /// Drains the core's outputs, playing the runtime.
    pub fn pump(&mut self) {
        self.pump_depth += 1;
        self.drain_outputs();
        self.pump_depth -= 1;
        if self.pump_depth == 0 {
            self.resume_reads();
        }
    }

    /// Delivers what the connections read again hold ([`Harness::pump`]), until none is left.
    fn resume_reads(&mut self) {
        if self.resuming {
            return;
        }
        self.resuming = true;
        while let Some(conn) = self.resume.pop_front() {
            let Some(ep) = self.endpoint_of(conn) else {
                continue;
            };
            if !ep.reading || ep.closed {
                continue;
            }
            let data = core::mem::take(&mut ep.unread);
            let eof = core::mem::take(&mut ep.eof_pending);
            if !data.is_empty() {
                self.deliver(conn, &data);
            }
            // The end of the stream comes after every byte before it: if reading stopped again
            // with some of them still unread, it waits with them.
            let Some(ep) = self.endpoint_of(conn) else {
                continue;
            };
            if eof && !ep.unread.is_empty() {
                ep.eof_pending = true;
            } else if eof {
                self.core.handle(self.now, Input::ReadClosed { conn });
            }
            self.pump();
        }
        self.resuming = false;
    }

    /// The outputs the core has queued, acted on in order.
    fn drain_outputs(&mut self) {
        while let Some(o) = self.core.poll_output() {
            self.trace.push(o);
            match o {
                Output::Connect { conn, server } => {
                    self.upstreams.insert(
                        conn,
                        Endpoint {
                            reading: true,
                            server: Some(server),
                            ..Endpoint::default()
                        },
                    );
                    if self.auto_connect {
                        self.upstreams.get_mut(&conn).expect("inserted").connected = true;
                        self.core.handle(self.now, Input::Connected { conn });
                    } else {
                        self.connects.push(conn);
                    }
                }
                Output::Write { conn } => match &mut self.deferred {
                    Some(later) => later.push(conn),
                    None => self.flush(conn),
                },
                Output::Interest { conn, read } => {
                    let Some(ep) = self.endpoint_of(conn) else {
                        continue;
                    };
                    ep.reading = read;
                    if read && (!ep.unread.is_empty() || ep.eof_pending) {
                        self.resume.push_back(conn);
                    } else if read && self.core.is_settling(conn) {
                        // Asked to look: the read finds the socket empty.
                        self.drained(conn);
                    }
                }
                Output::Shutdown { conn } => {
                    // The contract of `Output::Shutdown`: it follows the last written byte.
                    assert_eq!(
                        self.core.pending_len(conn),
                        0,
                        "Shutdown with bytes still queued for {conn:?}"
                    );
                    if let Some(ep) = self.endpoint_of(conn) {
                        ep.shutdown = true;
                    }
                }
                Output::HandOver {
                    conn,
                    to_worker,
                    handed,
                } => {
                    let endpoint = self
                        .upstreams
                        .remove(&conn)
                        .expect("only a known upstream connection is handed over");
                    assert!(!endpoint.closed, "a closed connection handed over");
                    self.handed_out.push(InFlight {
                        conn,
                        to_worker,
                        handed,
                        endpoint,
                    });
                }
                Output::Close { conn, reset } => {
                    if let Some(ep) = self.endpoint_of(conn) {
                        ep.closed = true;
                        ep.reset = reset;
                        // Its pipe closes with it, bytes and all.
                        ep.piped.clear();
                    }
                    self.connects.retain(|&c| c != conn);
                }
            }
        }
    }
}
