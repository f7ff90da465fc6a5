//! The client side: reading request heads, starting exchanges, our own error responses, and
//! what happens to the connection after a response (next request, close, or linger).
//!
//! Lifecycle of a client connection (see also the crate docs):
//!
//! ```text
//!   accept ─► Idle ──first byte──► Head ──complete──► Exchange ──response done──► Idle (keep-alive)
//!                                   │ bad / too big        │ error / close          │
//!                                   ▼                      ▼                        ▼
//!                          error response, Linger ──► Close ◄───────────── Connection: close
//! ```
//!
//! One exchange at a time per client connection: pipelined requests wait in the read buffer
//! until the previous response is fully queued, which is what keeps responses in request order
//! (RFC 9112 §9.3.2) and makes "which client does this upstream byte belong to" a single field.

use bytes::{Buf, Bytes};
use core::net::IpAddr;

use super::exchange::{Exchange, Resp};
use super::record::{self, End};
use super::table::Role;
use super::upstream::UState;
use super::{Core, HEAD_GROWTH, Output, touch};
use crate::config::ListenerConfig;
use crate::connection::AfterFlush;
use crate::framing::{self, BodyKind, Forwarding, Method, OutBody, Version};
use crate::rules::{self, ClientFacts, NotReusable};
use crate::{ConnId, ListenerId, Time, uploads};

/// Room for a response the proxy generates itself.
const ERROR_RESPONSE: usize = 256;

/// Where a client connection is in its lifecycle (the diagram above).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Between requests (keep-alive idle), nothing buffered.
    Idle,
    /// Reading a request head.
    Head,
    /// An exchange is in progress.
    Exchange,
    /// Our last bytes are queued; the connection closes (or lingers) once they are written.
    Closing,
    /// Half-closed after our last response; discarding input until EOF or the deadline.
    Lingering,
}

/// The client side of a connection: where it came from, where it is in its lifecycle, and its
/// current (or last) exchange.
#[derive(Debug)]
pub(super) struct Client {
    pub(super) listener: ListenerId,
    pub(super) peer: Option<IpAddr>,
    pub(super) peer_hash: u64,
    pub(super) requests: u32,
    pub(super) phase: Phase,
    /// Start of the current idle / head / lingering period.
    pub(super) since: Time,
    /// Last progress reading the request body.
    pub(super) body_progress: Time,
    pub(super) ex: Exchange,
}

impl Client {
    /// What the connection and its current exchange say about keeping it open, as far as known
    /// before the response is complete (callers refine the last three facts).
    pub(super) fn keep_alive_facts(&self, max_requests: u32, draining: bool) -> ClientFacts {
        ClientFacts {
            request_persistent: self.ex.persistent,
            requests: self.requests,
            max_requests,
            draining,
            request_abandoned: false,
            close_delimited: self.ex.resp_out == OutBody::Close,
            framing_broken: false,
        }
    }
}

impl Core {
    /// Processes whatever the client's read buffer holds, as far as the current state allows.
    pub(super) fn drive_client(&mut self, now: Time, id: ConnId) {
        loop {
            let Some(c) = self.conns.get_mut(id) else {
                return;
            };
            let Role::Client(cl) = &mut c.role else {
                return;
            };
            match cl.phase {
                Phase::Closing | Phase::Lingering => {
                    c.buf.rbuf.clear();
                    return;
                }
                Phase::Idle | Phase::Head => {
                    if c.buf.rbuf.is_empty() {
                        return;
                    }
                    if cl.phase == Phase::Idle {
                        cl.phase = Phase::Head;
                        // The first request's header deadline runs from the accept (nginx arms
                        // client_header_timeout there); later ones from their first byte.
                        if cl.requests > 0 {
                            cl.since = now;
                        }
                    }
                    if !self.start_exchange(now, id) {
                        return;
                    }
                }
                Phase::Exchange => {
                    if cl.ex.resp == Resp::Tunnel {
                        let data = c.buf.rbuf.split().freeze();
                        if let Some(u) = cl.ex.upstream {
                            self.push(now, u, data);
                        }
                        return;
                    }
                    // A waiting request's body is relayed once it has a connection.
                    if cl.ex.req_done || cl.ex.queued_at.is_some() {
                        return;
                    }
                    if !self.relay_request_body(now, id) {
                        return;
                    }
                }
            }
        }
    }

    /// Parses a request head and starts its exchange. Returns whether to keep processing.
    pub(super) fn start_exchange(&mut self, now: Time, id: ConnId) -> bool {
        let recording = self.recording_requests();
        let Some(c) = self.conns.get_mut(id) else {
            return false;
        };
        let parsed = self.head.parse_request(&c.buf.rbuf, &self.limits);
        let head = &self.head;
        match parsed {
            Ok(false) => {
                if c.buf.read_closed {
                    // The client closed with only part of a request sent: nothing to answer.
                    self.close_client_after_flush(now, id, AfterFlush::Close);
                }
                return false;
            }
            Err(e) => {
                self.client_error(now, id, e.status());
                return false;
            }
            Ok(true) => {}
        }
        let Role::Client(cl) = &mut c.role else {
            return false;
        };
        cl.requests += 1;
        let request = match recording {
            // `GET /x?y`: the method, one space (httparse allows no other) and the target.
            true => {
                let line = head.method_name.start as usize..head.target.end as usize;
                debug_assert_eq!(
                    line.len(),
                    head.method_name.of(&c.buf.rbuf).len() + 1 + head.target.of(&c.buf.rbuf).len()
                );
                self.record_bytes.copy(&c.buf.rbuf[line])
            }
            false => Bytes::new(),
        };
        let replay = core::mem::take(&mut cl.ex.replay);
        cl.ex = Exchange::start(head, cl.since, request, replay);
        let (fields, id_action) = record::request_fields(
            recording,
            self.record_fields,
            &mut self.request_ids,
            self.request_id_prefix,
            &mut self.record_bytes,
            head,
            &c.buf.rbuf,
        );
        let ex = &mut cl.ex;
        ex.fields = fields;
        let target = head.target.of(&c.buf.rbuf);
        let path = target.split(|&b| b == b'?').next().unwrap_or(target);
        let host = head.host.map(|h| h.of(&c.buf.rbuf));
        let route = self.router.route_from(cl.listener, host, path);
        let max_body = self.config.limits.max_body;
        let too_big = matches!(head.body, BodyKind::Length(n) if max_body > 0 && n > max_body);
        let out_body = rules::request_framing(head.body);
        let buffer_body = uploads::buffer_first(head.body, self.config.limits.request_buffer);
        // Only worth sending while the client is actually waiting: no body bytes yet.
        let expect = head.expect_continue && !ex.req_done && c.buf.rbuf.len() == head.len;
        cl.phase = Phase::Exchange;
        cl.body_progress = now;
        // The minimum upload rate runs from the request's head, not from `since` (for a first
        // request, the accept: a preconnected client would lose its grace).
        ex.upload_since = now;
        let peer = cl.peer;
        let scheme = self
            .config
            .listeners
            .get(cl.listener.0 as usize)
            .map_or("http", ListenerConfig::scheme);
        let Some(group) = route else {
            c.buf.rbuf.advance(head.len);
            self.client_error(now, id, 404);
            return true;
        };
        if too_big {
            c.buf.rbuf.advance(head.len);
            self.client_error(now, id, 413);
            return false;
        }
        ex.group = group.0;
        let fwd = Forwarding {
            client_ip: peer,
            x_forwarded_for: self.config.headers.x_forwarded_for,
            proto: self.config.headers.x_forwarded_proto.then_some(scheme),
            via: self.config.headers.via.as_deref(),
            default_host: &self.config.upstreams[group.0 as usize].name,
            te_trailers: ex.trailers,
        };
        let upgrade = ex.upgrade;
        // Borrowed, not cloned: a clone of a fresh `Bytes` allocates (its first clone promotes
        // it to shared), on every request.
        let rid = &ex.fields.request_id;
        let req_head = c.buf.rewrite(head.len + HEAD_GROWTH, |buf, out| {
            framing::write_request_head(head, buf, out_body, upgrade, &fwd, out);
            if id_action != record::IdAction::Keep {
                // The id the access log shows reaches the backend's logs too.
                record::add_request_id(out, rid, id_action == record::IdAction::Replace);
            }
        });
        c.buf.rbuf.advance(head.len);
        let Role::Client(cl) = &mut c.role else {
            return false;
        };
        cl.ex.req_head = req_head;
        if expect {
            // nginx's model: we answer 100 Continue ourselves and stream the body upstream
            // without Expect, so no upstream 1xx is ours to suppress or forward.
            self.push(now, id, Bytes::from_static(framing::CONTINUE_100));
        }
        // A small body is read in full first: no upstream connection waits on the client.
        if buffer_body && let Some(cl) = self.conns.client_mut(id) {
            cl.ex.buffering = true;
            return true;
        }
        self.assign_upstream(now, id, false, None);
        true
    }

    /// Queues a response the proxy generates itself and ends the exchange. The connection stays
    /// open only when the request was fully read and the client allows it.
    pub(super) fn client_error(&mut self, now: Time, id: ConnId, status: u16) {
        self.abandon_queue(now, id);
        let closing = self.closing_clients();
        let recording = self.recording_requests();
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        let Role::Client(cl) = &mut c.role else {
            return;
        };
        let in_exchange = cl.phase == Phase::Exchange;
        if !in_exchange {
            // No exchange started (an unparsable head, a timeout): nothing of the previous
            // exchange belongs in this one's record.
            let mut request = Bytes::new();
            let mut version = cl.ex.version;
            if recording
                && let Some((line, v)) =
                    request_line_of(&c.buf.rbuf, self.config.limits.max_request_line)
            {
                // nginx logs the request line of a request it refuses (missing Host, bad
                // header...) when the line itself was well formed.
                request = Bytes::copy_from_slice(line);
                version = v;
            }
            let replay = core::mem::take(&mut cl.ex.replay);
            cl.ex = Exchange {
                version,
                request,
                started: cl.since,
                ..Exchange::idle(replay)
            };
        }
        if in_exchange && cl.ex.resp_started {
            // A response is already on its way: a second one would be read as part of its body.
            // The only honest signal left is an abortive close.
            self.abort_exchange(now, id);
            return;
        }
        // After an error in the request itself (or an unread body) the connection's framing
        // can't be trusted; after an upstream failure on a complete request it can (nginx too
        // keeps the client connection after a 502/504).
        let keep = in_exchange
            && rules::client_keep_alive(&ClientFacts {
                request_abandoned: !cl.ex.req_done,
                framing_broken: rules::breaks_framing(status),
                ..cl.keep_alive_facts(self.config.limits.client_keepalive_requests, closing)
            });
        let head_only = in_exchange && cl.ex.method == Method::Head;
        // Our 503s (queue full, wait expired) say when to come back.
        let retry_after = (status == 503).then_some(rules::RETRY_AFTER_SECS);
        framing::write_error_response_with(
            status,
            !keep,
            head_only,
            retry_after,
            c.buf.scratch(ERROR_RESPONSE),
        );
        let b = c.buf.take_scratch();
        self.stats.responses[(status / 100) as usize % 6] += 1;
        self.stats.local_responses += 1;
        // Our error pages are one buffer: the body follows the blank line.
        let head_len = b
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(b.len(), |p| p + 4);
        if let Some(cl) = self.conns.client_mut(id) {
            cl.ex.status = status;
            cl.ex.resp = Resp::Done;
            cl.ex.response_at = Some(now);
            cl.ex.body_from = cl.ex.bytes_sent + head_len as u64;
        }
        self.push(now, id, b);
        self.record(now, id);
        if keep {
            self.end_exchange(now, id, true);
        } else {
            self.close_client_after_flush(now, id, AfterFlush::Linger);
        }
    }

    /// The client gets no more from us: close once the queue is flushed, lingering if unread
    /// input may follow (so it reads our response instead of a reset).
    pub(super) fn close_client_after_flush(&mut self, now: Time, id: ConnId, how: AfterFlush) {
        self.abandon_queue(now, id);
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        let Role::Client(cl) = &mut c.role else {
            return;
        };
        cl.phase = Phase::Closing;
        c.buf.rbuf.clear();
        // Lingering only makes sense while the client may still send.
        c.buf.after_flush = match how {
            AfterFlush::Linger if c.buf.read_closed => AfterFlush::Close,
            AfterFlush::Keep => AfterFlush::Close,
            other => other,
        };
        touch(&mut self.touched, id);
        if c.buf.is_flushed() {
            self.flushed(now, id);
        }
    }

    /// Our last response is out: half-close and discard input until the client closes or the
    /// lingering deadline passes.
    pub(super) fn start_linger(&mut self, now: Time, id: ConnId) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        // Only clients linger (see `close_client_after_flush`).
        let Role::Client(cl) = &mut c.role else {
            return;
        };
        cl.phase = Phase::Lingering;
        cl.since = now;
        c.buf.after_flush = AfterFlush::Close;
        touch(&mut self.touched, id);
        self.out.push_back(Output::Shutdown { conn: id });
    }

    /// The response is fully queued and the request fully read: next request if `keep` (the
    /// verdict of [`rules::client_keep_alive`]), or close.
    pub(super) fn end_exchange(&mut self, now: Time, id: ConnId, keep: bool) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        let Role::Client(cl) = &mut c.role else {
            return;
        };
        cl.ex.upstream = None;
        cl.ex.replay.clear();
        cl.ex.req_head = Bytes::new();
        if keep {
            cl.phase = Phase::Idle;
            cl.since = now;
            touch(&mut self.touched, id);
            // Pipelined requests already buffered start next, in order. Queued rather than
            // driven from here: this may run inside `drive_client` itself, and a burst of
            // requests answered locally (404s, 502s) must not recurse once per request.
            // In a handoff drain they move with the connection instead (released with it):
            // a client that always has one more request queued would otherwise never be idle
            // and stay on the old configuration until `shutdown_timeout` cuts it.
            if !c.buf.rbuf.is_empty() {
                if !self.handing_off || c.buf.read_closed {
                    self.ready.push_back(id);
                }
            } else if c.buf.read_closed {
                self.close_client_after_flush(now, id, AfterFlush::Close);
            }
        } else {
            self.close_client_after_flush(now, id, AfterFlush::Close);
        }
    }

    /// The client went away (or stopped reading) mid-exchange: close the exchange's upstream
    /// connection (not reused: the client aborted) and reset the client.
    pub(super) fn abort_exchange(&mut self, now: Time, id: ConnId) {
        self.record_end(now, id, End::ClientAborted);
        // Before `close` (which has no clock): its wait in the queue, if any, is counted.
        self.abandon_queue(now, id);
        self.release_upstream_of(id);
        self.close(id, true);
    }

    /// Detaches the current upstream connection from client `id` and closes it (it is mid-
    /// exchange, so never pooled).
    pub(super) fn release_upstream_of(&mut self, id: ConnId) {
        let Some(cl) = self.conns.client_mut(id) else {
            return;
        };
        let Some(u) = cl.ex.upstream.take() else {
            return;
        };
        // After a 101 the connection was a tunnel, never to be pooled, whichever side ends it.
        let why = match self.conns.upstream(u).map(|u| u.state) {
            Some(UState::Tunnel) => NotReusable::Upgraded,
            _ => NotReusable::ClientAborted,
        };
        self.close_upstream(u, true, why);
    }
}

/// `METHOD SP target` and the version of a well-formed first line `METHOD SP target SP
/// HTTP/1.x CRLF` at the start of `buf`, for the record of a refused request.
fn request_line_of(buf: &[u8], max: usize) -> Option<(&[u8], Version)> {
    let end = buf.iter().take(max).position(|&b| b == b'\n')?;
    let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
    let (rest, version) = if let Some(r) = line.strip_suffix(b" HTTP/1.1") {
        (r, Version::Http11)
    } else {
        (line.strip_suffix(b" HTTP/1.0")?, Version::Http10)
    };
    let sp = rest.iter().position(|&b| b == b' ')?;
    let (method, target) = (&rest[..sp], &rest[sp + 1..]);
    let visible = |b: &u8| b.is_ascii_graphic();
    (!method.is_empty()
        && method.iter().all(visible)
        && !target.is_empty()
        && target.iter().all(visible))
    .then_some((rest, version))
}
