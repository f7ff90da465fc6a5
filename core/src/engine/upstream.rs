//! The upstream side: choosing a server and a connection (pooled or new), reading the response
//! head, and what happens to the connection afterwards — back to the pool, closed with a reason,
//! or, after a failure, a retry on a fresh connection or the next server.

use bytes::{Buf, Bytes};
use std::collections::VecDeque;

use super::exchange::Resp;
use super::record::{self, End};
use super::table::Role;
use super::{Core, HEAD_GROWTH, touch};
use crate::config::{PoolKeyMode, ServerState};
use crate::connection::AfterFlush;
use crate::framing::{self, BodyDecoder, BodyKind, OutBody, ResponseOptions, Version};
use crate::pool::{EvictReason, PoolKey};
use crate::rules::{
    self, Attempt, ClientFacts, Failure, NotReusable, ResponseFacts, Retry, UpstreamFacts,
};
use crate::{ConnId, Time};

/// Where an upstream connection is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum UState {
    /// Opening, for the request of its client.
    Connecting,
    /// Carrying a request and its response.
    Active,
    /// In the pool.
    Idle,
    /// A byte tunnel after a 101.
    Tunnel,
    /// Carrying an active health check, no client (see `engine::health`).
    Check,
    /// Its response is complete and it may be pooled, but the read that ended the response
    /// may have left bytes behind it in the socket ([`Upstream::unread`]): bytes the backend
    /// sent beyond its response would become the next request's answer. It joins the pool
    /// (and frees its slot for the next in line) once a read finds the socket empty
    /// ([`Input::Drained`](crate::Input::Drained)); a byte, an end of stream, an error or
    /// [`SETTLE_TIMEOUT`] closes it instead.
    Settling,
}

/// How long a connection may stay [`UState::Settling`] before it is closed rather than pooled.
/// A runtime settles it in the same pass (it reads again after a read that filled its room,
/// and after a splice that ended a body); this only bounds a runtime that never looks.
pub(super) const SETTLE_TIMEOUT: core::time::Duration = core::time::Duration::from_millis(50);

/// The upstream side of a connection: which server, which client it serves now, and what the
/// current request and response say about reusing it.
#[derive(Debug)]
pub(super) struct Upstream {
    /// Global server index, and its group.
    pub(super) server: u32,
    pub(super) group: u32,
    pub(super) key: PoolKey,
    pub(super) state: UState,
    /// The client whose request it carries (none while pooled).
    pub(super) client: Option<ConnId>,
    pub(super) created: Time,
    /// Requests carried, the current one included.
    pub(super) requests: u32,
    /// Bytes of the current request written to the socket.
    pub(super) written: u64,
    /// The whole request has been written.
    pub(super) sent_all: bool,
    pub(super) read_progress: Time,
    /// What the current response's head said about reuse, and when it arrived (the start of
    /// its `Keep-Alive: timeout`).
    pub(super) response: ResponseFacts,
    pub(super) response_at: Time,
    /// Bytes arrived after the current response was complete.
    pub(super) extra_data: bool,
    /// The latest read may have left bytes in the socket: it filled all the room it was given,
    /// or it was a splice (which stops at the body's end whatever follows). Set per read; a
    /// response that ends with it set settles before it is pooled ([`UState::Settling`]).
    pub(super) unread: bool,
    /// Counted as an active request of its server by the balancer (least-conn, max_conns).
    pub(super) acquired: bool,
    /// Some response bytes (even an interim 1xx) arrived for the current request: it can no
    /// longer be retried.
    pub(super) responded: bool,
    /// A warm connection (`min_idle`) that has not carried a request yet.
    pub(super) unused_warm: bool,
    /// Its latest response had a body worth splicing (a Content-Length of `splice_min` or
    /// more): the next head is read with the smaller cap ([`super::splice::head_read`]).
    pub(super) large_body: bool,
    /// The health check it carries or is opening for (boxed: rare, and the table's slots stay
    /// small).
    pub(super) check: Option<Box<super::health::Check>>,
}

impl Upstream {
    /// A connection being opened to `server` for `client`'s request.
    fn connecting(server: u32, group: u32, key: PoolKey, client: ConnId, now: Time) -> Upstream {
        Upstream {
            client: Some(client),
            acquired: true,
            unused_warm: false,
            ..Upstream::warming(server, group, key, now)
        }
    }

    /// A warm connection being opened to `server` with no request (`min_idle`). It counts as
    /// having carried one request, so that its first real request is "reused": a backend that
    /// dropped it meanwhile is the same keep-alive race as for any pooled connection, retried on
    /// a fresh connection.
    pub(super) fn warming(server: u32, group: u32, key: PoolKey, now: Time) -> Upstream {
        Upstream {
            server,
            group,
            key,
            state: UState::Connecting,
            client: None,
            created: now,
            requests: 1,
            written: 0,
            sent_all: false,
            read_progress: now,
            response: ResponseFacts::default(),
            response_at: now,
            extra_data: false,
            unread: false,
            acquired: false,
            responded: false,
            unused_warm: true,
            large_body: false,
            check: None,
        }
    }

    /// A pooled connection takes on `client`'s request: everything about the previous request
    /// starts over.
    fn reuse_for(&mut self, client: ConnId, now: Time) {
        self.next_request(UState::Active, now);
        self.client = Some(client);
        self.acquired = true;
    }

    /// A pooled connection carries one more request (a client's, or a health check) and goes
    /// to `state`: everything about the previous request starts over.
    pub(super) fn next_request(&mut self, state: UState, now: Time) {
        self.state = state;
        self.requests += 1;
        self.written = 0;
        self.sent_all = false;
        self.read_progress = now;
        self.response = ResponseFacts::default();
        self.extra_data = false;
        self.responded = false;
        self.unused_warm = false;
    }

    /// The current request is not the connection's first: it came out of the pool. The one
    /// definition of "reused" (the keepalive race, a 408 as idle timeout, access logs).
    pub(super) fn reused(&self) -> bool {
        self.requests > 1
    }
}

impl Core {
    /// Finds a server for the current request and hands it a connection (pooled or new), then
    /// queues the request on it: `queued` when given (bytes a failed connection never wrote),
    /// otherwise the rewritten head and the body received so far (the replay copy).
    pub(super) fn assign_upstream(
        &mut self,
        now: Time,
        id: ConnId,
        force_fresh: bool,
        queued: Option<VecDeque<Bytes>>,
    ) {
        let Some(cl) = self.conns.client(id) else {
            return;
        };
        let (g, hash, tried) = (cl.ex.group as usize, cl.peer_hash, cl.ex.tried);
        // Requests already waiting go first (FIFO over the process): a newcomer joins them.
        let others_wait = self.shared.group(g).queued() > 0;
        let chosen = match (force_fresh, cl.ex.server) {
            // A stale-connection retry goes back to the same (healthy) server on a fresh
            // connection, taking over the failed connection's slot (still held while it
            // closes) — even when others wait: it was admitted before them, and this attempt
            // counts as not having happened. Behind them it would wait a second time, and
            // with the queue full be answered 503.
            (true, Some(s)) => {
                let idx = self.index_in_group(g, s);
                self.open_slot(g, idx).then_some((idx, true))
            }
            _ if others_wait => None,
            _ => self.take_slot(now, g, hash, tried, force_fresh),
        };
        match chosen {
            Some((idx, slot)) => self.bind_server(now, id, g, idx, slot, force_fresh, queued),
            None => self.no_server(now, id, force_fresh, queued),
        }
    }

    /// Hands client `id`'s request to server `idx` of group `g` on a pooled connection or a
    /// new one, then queues the request on it: `queued` when given (bytes a failed connection
    /// never wrote), otherwise the rewritten head and the body received so far (the replay
    /// copy). `slot`: a connection slot of the server is already counted for this request (see
    /// [`Core::take_slot`]); a pooled connection brings its own.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn bind_server(
        &mut self,
        now: Time,
        id: ConnId,
        g: usize,
        idx: usize,
        slot: bool,
        force_fresh: bool,
        queued: Option<VecDeque<Bytes>>,
    ) {
        let Some(cl) = self.conns.client(id) else {
            if slot {
                self.groups[g].balancer.closed(idx);
            }
            return;
        };
        let hash = cl.peer_hash;
        let server = self.groups[g].first_server + idx as u32;
        let key = self.pool_key(g, server, hash);
        let pooled = self.checkout(now, key, force_fresh);
        match (pooled, slot) {
            // The pooled connection holds a slot of its own.
            (Some(_), true) => self.groups[g].balancer.closed(idx),
            // The idle connection the pick counted on had expired: a new one needs a slot.
            (None, false) if !self.open_slot(g, idx) => {
                self.no_server(now, id, force_fresh, queued);
                return;
            }
            _ => {}
        }
        self.groups[g].balancer.begin_request(idx);
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        let Role::Client(cl) = &mut c.role else {
            return;
        };
        let ex = &mut cl.ex;
        ex.tries += 1;
        ex.tried |= 1u64 << idx;
        ex.server = Some(server);
        let head = ex.req_head.clone();
        let replay_ok = ex.replayable;
        let (uid, reused) = match pooled {
            Some(uid) => {
                self.stats.groups[g].pool_hits += 1;
                self.stats.servers[server as usize].requests += 1;
                let up = self
                    .conns
                    .upstream_mut(uid)
                    .expect("the pool holds open upstreams");
                up.reuse_for(id, now);
                self.shared.group(g).servers[idx].idle_changed(false);
                (uid, up.reused())
            }
            None => {
                self.stats.groups[g].pool_misses += 1;
                self.stats.servers[server as usize].connects += 1;
                let up = Upstream::connecting(server, g as u32, key, id, now);
                (self.open_upstream(now, up), false)
            }
        };
        if let Some(cl) = self.conns.client_mut(id) {
            cl.ex.upstream = Some(uid);
            cl.ex.reused = reused;
        }
        self.try_started(now, id, self.servers[server as usize], reused);
        touch(&mut self.touched, uid);
        match queued {
            Some(bytes) => {
                if let Some(u) = self.conns.get_mut(uid) {
                    self.spares.lend_queue(&mut u.buf);
                    for b in bytes {
                        u.buf.push(now, b);
                    }
                }
            }
            None => {
                let Some((c, u)) = self.conns.pair_mut(id, uid) else {
                    return;
                };
                let Role::Client(cl) = &c.role else { return };
                self.spares.lend_queue(&mut u.buf);
                u.buf.push(now, head);
                if replay_ok {
                    for p in &cl.ex.replay {
                        u.buf.push(now, p.clone());
                    }
                }
            }
        }
        self.signal_write(uid);
        self.request_maybe_sent(now, uid);
    }

    /// The most recently pooled idle connection of `key` still within its idle time (none when
    /// `fresh`); those found expired on the way are closed.
    pub(super) fn checkout(&mut self, now: Time, key: PoolKey, fresh: bool) -> Option<ConnId> {
        let mut expired = Vec::new();
        let pooled = if fresh {
            None
        } else {
            self.pool.checkout(now, key, &mut |c| expired.push(c))
        };
        for c in expired {
            self.evict(c, false, EvictReason::IdleTimeout);
        }
        pooled
    }

    /// Pools idle connection `id` (server `idx` of group `g`, pool key `key`) until `expires`:
    /// counted idle in the shared ledger (what wake-ups across workers and generations go by)
    /// and as a check-in; a pool over its cap evicts its least recently used connection. The
    /// one way into the pool, for requests, checks, warm connections and moved-in ones.
    pub(super) fn checkin(
        &mut self,
        g: usize,
        idx: usize,
        id: ConnId,
        key: PoolKey,
        expires: Time,
    ) {
        self.shared.group(g).servers[idx].idle_changed(true);
        self.stats.groups[g].pool_checkins += 1;
        if let Some(evicted) = self.pool.checkin(key, g as u32, id, expires) {
            self.evict(evicted, false, EvictReason::Capacity);
        }
        touch(&mut self.touched, id);
    }

    /// The pool key of server `server` (global index) of group `g` for a client with `hash`.
    pub(super) fn pool_key(&self, g: usize, server: u32, hash: u64) -> PoolKey {
        let partition = match self.config.upstreams[g].pool_key {
            PoolKeyMode::Server => 0,
            PoolKeyMode::Client => hash | 1,
        };
        PoolKey { server, partition }
    }

    /// Marks the request as fully written once the client's body is complete and the queue empty.
    pub(super) fn request_maybe_sent(&mut self, now: Time, id: ConnId) {
        let Some(c) = self.conns.get(id) else { return };
        let Role::Upstream(u) = &c.role else { return };
        if u.sent_all || !c.buf.is_flushed() || u.state != UState::Active {
            return;
        }
        let Some(cl) = u.client else { return };
        let req_done = self.conns.client(cl).is_some_and(|cl| cl.ex.req_done);
        if req_done {
            if let Some(u) = self.conns.upstream_mut(id) {
                u.sent_all = true;
                u.read_progress = now;
            }
            touch(&mut self.touched, id);
        }
    }

    /// Processes whatever the upstream's read buffer holds: response head, body, tunnel bytes.
    pub(super) fn drive_upstream(&mut self, now: Time, id: ConnId) {
        loop {
            let Some(c) = self.conns.get_mut(id) else {
                return;
            };
            let Role::Upstream(u) = &mut c.role else {
                return;
            };
            let Some(cid) = u.client else {
                // Not attached (shouldn't happen for Active): drop it.
                self.close_upstream(id, true, NotReusable::ClientAborted);
                return;
            };
            if u.state == UState::Tunnel {
                let data = c.buf.rbuf.split().freeze();
                self.push(now, cid, data);
                return;
            }
            let Some(Role::Client(cl)) = self.conns.get(cid).map(|c| &c.role) else {
                self.close_upstream(id, true, NotReusable::ClientAborted);
                return;
            };
            match cl.ex.resp {
                Resp::Waiting => {
                    if !self.response_head(now, id, cid) {
                        return;
                    }
                }
                Resp::Body => {
                    if !self.relay_response_body(now, id, cid) {
                        return;
                    }
                }
                Resp::Tunnel | Resp::Done => {
                    // Bytes after a complete response: the connection is not reusable.
                    let Some(c) = self.conns.get_mut(id) else {
                        return;
                    };
                    if !c.buf.rbuf.is_empty() {
                        c.buf.rbuf.clear();
                        if let Role::Upstream(u) = &mut c.role {
                            u.extra_data = true;
                        }
                    }
                    return;
                }
            }
        }
    }

    /// Parses the upstream response head. Returns whether to keep processing.
    pub(super) fn response_head(&mut self, now: Time, id: ConnId, cid: ConnId) -> bool {
        let max_requests = self.config.limits.client_keepalive_requests;
        let (method, client_version, client_ka, upgrade) = match self.conns.client(cid) {
            Some(cl) => (
                cl.ex.method,
                cl.ex.version,
                cl.keep_alive_facts(max_requests, self.closing_clients()),
                cl.ex.upgrade,
            ),
            None => return false,
        };
        let Some(c) = self.conns.get_mut(id) else {
            return false;
        };
        let parsed = self.head.parse_response(&c.buf.rbuf, method, &self.limits);
        match parsed {
            Ok(false) => return false,
            Err(_) => {
                self.upstream_failed(now, id, Failure::BadResponse);
                return false;
            }
            Ok(true) => {}
        }
        let head = &self.head;
        let status = head.status;
        if (100..200).contains(&status) && status != 101 {
            // Interim responses: forward to HTTP/1.1 clients (103 Early Hints...), except 100,
            // which only our own Expect handling could have asked for.
            if status != 100 && client_version == Version::Http11 {
                let Some((c, cc)) = self.conns.pair_mut(id, cid) else {
                    return false;
                };
                framing::write_informational(
                    head,
                    &c.buf.rbuf,
                    cc.buf.scratch(head.len + HEAD_GROWTH),
                );
                let b = cc.buf.take_scratch();
                self.push(now, cid, b);
            }
            let Some(c) = self.conns.get_mut(id) else {
                return false;
            };
            c.buf.rbuf.advance(self.head.len);
            return true;
        }
        let reused = self.conns.upstream(id).is_some_and(Upstream::reused);
        if status == 408 && reused {
            // On a reused connection a 408 is the backend's idle timeout racing our request
            // (Node, HAProxy and others send one before closing), not an answer to it.
            self.upstream_failed(now, id, Failure::Reused408);
            return false;
        }
        if status == 101 && !upgrade {
            self.upstream_failed(now, id, Failure::BadResponse);
            return false;
        }
        let tunnel = status == 101;
        let body = head.body;
        let facts = ResponseFacts {
            http10: head.version == Version::Http10,
            close: !head.persistent(),
            close_delimited: body == BodyKind::UntilClose,
            idle_hint: head.keep_alive_timeout.map(rules::keep_alive_hint),
        };
        let out =
            rules::response_framing(body, head.content_length, method, status, client_version);
        let close_client = !rules::client_keep_alive(&ClientFacts {
            close_delimited: out == OutBody::Close,
            ..client_ka
        });
        // From here on the request can never be re-sent: let go of its replay copies, which
        // also lets the client's scratch buffer be reclaimed in place for the response head.
        if let Some(cl) = self.conns.client_mut(cid) {
            cl.ex.req_head = Bytes::new();
            cl.ex.replay.clear();
            cl.ex.replayable = false;
        }
        let head = &self.head;
        let opts = ResponseOptions {
            body: out,
            close: close_client && !tunnel,
            keep_alive_10: !close_client && client_version == Version::Http10,
            upgrade: tunnel,
            via: self.config.headers.via.as_deref(),
        };
        let Some((c, cc)) = self.conns.pair_mut(id, cid) else {
            return false;
        };
        framing::write_response_head(
            head,
            &c.buf.rbuf,
            &opts,
            cc.buf.scratch(head.len + HEAD_GROWTH),
        );
        let b = cc.buf.take_scratch();
        let len = head.len;
        c.buf.rbuf.advance(len);
        let Role::Upstream(u) = &mut c.role else {
            return false;
        };
        u.response = facts;
        u.response_at = now;
        let min = self.config.limits.splice_min;
        u.large_body = min > 0 && matches!(body, BodyKind::Length(n) if n >= min);
        let (g, srv) = (u.group as usize, u.server);
        let idx = (srv - self.groups[g].first_server) as usize;
        if tunnel {
            u.state = UState::Tunnel;
        }
        self.groups[g].balancer.success(idx);
        self.try_header(now, cid, status);
        // Remembered per server: it also bounds warm connections that carried no response.
        self.remember_hint(now, srv, facts.idle_hint);
        let Some(cl) = self.conns.client_mut(cid) else {
            return false;
        };
        cl.ex.status = status;
        cl.ex.resp_started = true;
        cl.ex.body_from = cl.ex.bytes_sent + b.len() as u64;
        cl.ex.response_at = Some(now);
        cl.ex.resp_decoder = BodyDecoder::new(body);
        cl.ex.resp_in_chunked = body == BodyKind::Chunked;
        if cl.ex.trailers && cl.ex.resp_in_chunked && out == OutBody::Chunked {
            cl.ex.resp_decoder.report_trailers();
        }
        cl.ex.resp_out = out;
        cl.ex.resp = if tunnel { Resp::Tunnel } else { Resp::Body };
        self.stats.responses[(status / 100) as usize % 6] += 1;
        self.push(now, cid, b);
        if tunnel {
            // Bytes the client sent after its upgrade request belong to the new protocol.
            touch(&mut self.touched, cid);
            if let Some(cc) = self.conns.get_mut(cid)
                && !cc.buf.rbuf.is_empty()
            {
                let data = cc.buf.rbuf.split().freeze();
                self.push(now, id, data);
            }
            if let Some(cl) = self.conns.client_mut(cid) {
                cl.ex.req_done = true;
            }
        }
        true
    }

    /// The backend closed: a close-delimited response is complete, anything else failed.
    pub(super) fn upstream_eof(&mut self, now: Time, id: ConnId) {
        let Some(u) = self.conns.upstream(id) else {
            return;
        };
        let Some(cid) = u.client else {
            self.close_upstream(id, false, NotReusable::ClientAborted);
            return;
        };
        let Some(cl) = self.conns.client(cid) else {
            self.close_upstream(id, false, NotReusable::ClientAborted);
            return;
        };
        if cl.ex.resp == Resp::Body {
            // Let the decoder see everything that arrived before the EOF.
            self.drive_upstream(now, id);
            if self.defer_eof(id) {
                return;
            }
            let Some(cl) = self.conns.client(cid) else {
                return;
            };
            if cl.ex.resp != Resp::Body || self.conns.get(id).is_none() {
                return;
            }
            if cl.ex.resp_decoder.on_eof().is_ok() {
                // Close-delimited body: complete.
                if cl.ex.resp_out == OutBody::Chunked {
                    self.push(now, cid, Bytes::from_static(framing::LAST_CHUNK));
                }
                self.finish_response(now, id, cid);
                return;
            }
        }
        self.upstream_failed(now, id, Failure::Closed);
    }

    /// The response is fully relayed: pool or close the upstream connection, then end the
    /// exchange if the request side is done too.
    pub(super) fn finish_response(&mut self, now: Time, id: ConnId, cid: ConnId) {
        let Some(c) = self.conns.get(id) else { return };
        let Role::Upstream(u) = &c.role else { return };
        let g = u.group as usize;
        let gcfg = &self.config.upstreams[g];
        let req_done = self.conns.client(cid).is_some_and(|cl| cl.ex.req_done);
        let idx = (u.server - self.groups[g].first_server) as usize;
        let verdict = rules::upstream_reusable(&UpstreamFacts {
            pooling: gcfg.keepalive > 0,
            draining: self.pool_shut_to(g, idx),
            response: u.response,
            request_sent: req_done && u.sent_all && c.buf.is_flushed(),
            extra_data: u.extra_data || !c.buf.rbuf.is_empty(),
            peer_closed: c.buf.read_closed,
            requests: u.requests,
            max_requests: gcfg.keepalive_requests,
            age: now.since(u.created),
            max_age: gcfg.keepalive_time,
            since_response: now.since(u.response_at),
        });
        let unread = u.unread;
        match verdict {
            // The socket may hold more than the response: pooled only once a read finds it
            // empty. Its slot stays taken meanwhile, so the next in line waits for it rather
            // than opening another connection to a one-request-at-a-time backend.
            Ok(()) if unread => {
                if let Some(u) = self.conns.upstream_mut(id) {
                    u.state = UState::Settling;
                    u.client = None;
                    u.read_progress = now;
                }
                // Read interest stays on (or comes back on, after backpressure): the runtime's
                // next read of it tells.
                touch(&mut self.touched, id);
            }
            Ok(()) => self.pool_settled(now, id),
            Err(why) => {
                self.release_server(id);
                self.close_upstream(id, false, why)
            }
        }
        let Some(cl) = self.conns.client_mut(cid) else {
            return;
        };
        cl.ex.resp = Resp::Done;
        cl.ex.upstream = None;
        self.record(now, cid);
        let Some(cl) = self.conns.client(cid) else {
            return;
        };
        if cl.ex.req_done {
            let keep = rules::client_keep_alive(&cl.keep_alive_facts(
                self.config.limits.client_keepalive_requests,
                self.closing_clients(),
            ));
            self.end_exchange(now, cid, keep);
        } else {
            // The upstream answered before the request body was complete (e.g. 413): we will
            // not read the rest, so the connection cannot continue.
            self.close_client_after_flush(now, cid, AfterFlush::Linger);
        }
    }

    /// Upstream connection `id`, its response complete and reusable, goes to the pool: idle
    /// until the first of our keepalive_timeout, the backend's Keep-Alive hint and the
    /// connection's keepalive_time (the pool entry is the one record of it).
    fn pool_settled(&mut self, now: Time, id: ConnId) {
        let Some(u) = self.conns.upstream_mut(id) else {
            return;
        };
        u.state = UState::Idle;
        u.client = None;
        let (g, key, acquired) = (u.group as usize, u.key, u.acquired);
        let idx = (u.server - self.groups[g].first_server) as usize;
        let hinted = u.response.idle_hint.map(|hint| u.response_at.plus(hint));
        let expires = super::warm::idle_until(now, &self.config.upstreams[g], hinted, u.created);
        self.release_server(id);
        self.checkin(g, idx, id, key, expires);
        // A health check's connection held no request slot: someone may still wait for this
        // connection (`max_conns` + queue). (A client's freed its slot above, which says so.)
        if !acquired && self.shared.group(g).queued() > 0 {
            self.freed.push((g as u32, true));
        }
        // Another generation's request may wait for its slot (a re-resolution).
        self.yield_to_linked();
    }

    /// A read of settling connection `id` found its socket empty ([`Input::Drained`]): nothing
    /// followed the response, so it joins the pool — unless the core started draining or its
    /// server stopped being usable meanwhile.
    pub(super) fn settled(&mut self, now: Time, id: ConnId) {
        let Some(u) = self.conns.upstream(id) else {
            return;
        };
        if u.state != UState::Settling {
            return;
        }
        let g = u.group as usize;
        let idx = (u.server - self.groups[g].first_server) as usize;
        if self.pool_shut_to(g, idx) {
            self.close_upstream(id, false, NotReusable::Draining);
            return;
        }
        self.pool_settled(now, id);
    }

    /// Whether a connection to server `idx` of group `g` closes after its response rather than
    /// going back to the pool: the core drains, or the server was drained or set down (while
    /// the request was in flight, or while the connection settled).
    pub(super) fn pool_shut_to(&self, g: usize, idx: usize) -> bool {
        self.draining || self.shared.group(g).servers[idx].state() != ServerState::Up
    }

    /// An upstream attempt failed: retry (stale pooled connection, or next server when safe),
    /// or answer 502/504, or abort a response already under way.
    pub(super) fn upstream_failed(&mut self, now: Time, id: ConnId, why: Failure) {
        let Some(c) = self.conns.get(id) else { return };
        let Role::Upstream(u) = &c.role else { return };
        if u.check.is_some() {
            return self.check_failed_conn(now, id, why);
        }
        let (g, srv, written) = (u.group as usize, u.server, u.written);
        let responded = u.responded || !c.buf.rbuf.is_empty();
        let race = rules::keepalive_race(why, u.reused(), responded);
        let idx = self.index_in_group(g, srv);
        let client = u.client;
        // Whatever was queued but never written can move to the next connection as is.
        // (Not bytes in the runtime's pipe: they are bound to this socket.)
        let unsent = if client.is_some()
            && written == 0
            && c.buf.piped == 0
            && why != Failure::BadResponse
        {
            let c = self.conns.get_mut(id).expect("checked above");
            Some(core::mem::take(&mut c.buf.wq))
        } else {
            None
        };
        let reason = rules::failure_reason(why, race);
        self.try_failed(now, client, why);
        self.close_upstream(id, client.is_none() || why != Failure::BadResponse, reason);
        let Some(cid) = client else { return };
        let Some(cl) = self.conns.client_mut(cid) else {
            return;
        };
        let ex = &mut cl.ex;
        ex.upstream = None;
        if ex.resp_started {
            // Part of the response already went out. The client must see it cut short: after
            // what is queued, an abortive close — a FIN would make a close-delimited body look
            // complete. The record says so (the access log, the operator log and the timeout
            // counters would otherwise never hear of it).
            self.record_end(now, cid, End::UpstreamFailed);
            self.close_client_after_flush(now, cid, AfterFlush::Reset);
            return;
        }
        let gcfg = &self.config.upstreams[g];
        let retry = rules::retry(&Attempt {
            why,
            race,
            stale_retried: ex.stale_retried,
            written: written > 0,
            replayable: unsent.is_some() || ex.replayable,
            idempotent: ex.method.is_idempotent(),
            tries: ex.tries,
            max_tries: gcfg.next_upstream_tries,
            next_on_timeout: gcfg.next_upstream_on_timeout,
        });
        match retry {
            Retry::Fresh => {
                // Not a sign of ill health: re-send once on a fresh connection to the same
                // server, as if this attempt had not happened.
                ex.stale_retried = true;
                // The record says so: routine (the keepalive race), not trouble to warn about.
                if let Some(t) = ex.tries_log.last_mut() {
                    t.failure = Some(record::STALE);
                }
                ex.tries -= 1;
                ex.tried &= !(1u64 << idx);
                self.stats.groups[g].stale_retries += 1;
            }
            Retry::Next => self.stats.groups[g].next_upstream += 1,
            Retry::Answer => {}
        }
        if retry != Retry::Fresh && rules::counts_against_server(why, race) {
            self.stats.servers[srv as usize].failures += 1;
            self.groups[g].balancer.failure(now, idx);
            if !self.groups[g].balancer.is_up(now, idx) {
                // Down for every worker: each closes its idle connections to it.
                self.shared.group(g).bump();
                for w in 0..self.shared.workers() {
                    self.wake_later(w);
                }
            }
        }
        let status = rules::failure_status(why);
        if retry == Retry::Answer {
            self.client_error(now, cid, status);
            return;
        }
        if let Some(cl) = self.conns.client_mut(cid) {
            cl.ex.status = status;
        }
        // Exactly the unsent bytes when nothing was written, else head + replay copy.
        self.assign_upstream(now, cid, retry == Retry::Fresh, unsent);
    }
}
