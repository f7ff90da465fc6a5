//! The exchange: one request and its response on a client connection, from the parsed head to
//! the last byte queued, and the record of it a runtime can take ([`ExchangeInfo`]).

use bytes::{Bytes, BytesMut};
use core::net::IpAddr;
use std::collections::VecDeque;

use super::Core;
use super::record::{self, End, RequestFields, Tries};
use crate::framing::{BodyDecoder, BodyKind, Head, Method, OutBody, Version};
use crate::{ConnId, ListenerId, ServerId, Time};

/// Request bodies up to this size are kept (as cheap `Bytes` references) so that a request whose
/// reused upstream connection turns out stale can be re-sent on a fresh one.
pub(super) const REPLAY_LIMIT: usize = 64 * 1024;

/// What the proxy knows about a finished exchange (for access logs and latency histograms).
///
/// Recorded when the response's last byte is queued to the client (or the proxy's own error
/// response is), when the client gives up on it ([`End::ClientAborted`], status 499 if no
/// response had started) and when the runtime cuts it at shutdown ([`End::Shutdown`], status 444
/// if no response had started) and when the server fails after its response started
/// ([`End::UpstreamFailed`]). Upgraded (tunnelled) exchanges are not recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExchangeInfo {
    /// Client connection.
    pub client: ConnId,
    /// Listener the client connection arrived on.
    pub listener: ListenerId,
    /// The client's address as given to [`Core::accept`] (`None` for Unix sockets), so a
    /// runtime's access log needs no copy of its own.
    pub peer: Option<IpAddr>,
    /// Status sent to the client.
    pub status: u16,
    /// Server that answered, if any.
    pub server: Option<ServerId>,
    /// Whether that answer came over a reused pooled connection.
    pub reused: bool,
    /// Method and target as received (`GET /x?y`), recorded only after
    /// [`Core::record_requests`]`(true)` (one small copy per request, for access logs); empty
    /// otherwise and when the request head could not be parsed. With `version` it gives an
    /// access log's `"$request"`.
    pub request: Bytes,
    /// The client's HTTP version.
    pub version: Version,
    /// When the request began: its first byte (the accept, for a connection's first request).
    pub started: Time,
    /// When the response head was queued to the client (upstream's or our own).
    pub response_at: Option<Time>,
    /// When the response's last byte was queued to the client.
    pub finished: Time,
    /// Bytes queued to the client for this exchange (heads, interim responses and body).
    pub bytes_sent: u64,
    /// Request body bytes received from the client.
    pub bytes_received: u64,
    /// Response body bytes queued to the client (nginx `$body_bytes_sent`): `bytes_sent`
    /// without the heads.
    pub body_bytes_sent: u64,
    /// Every upstream attempt, in order (empty for our own answers that tried none).
    pub tries: Tries,
    /// Host, Referer, User-Agent and the request id (only with [`Core::record_requests`]).
    pub fields: RequestFields,
    /// How the exchange ended.
    pub end: End,
}

/// Where the response of an exchange is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Resp {
    /// Waiting for the (final) response head.
    Waiting,
    /// Relaying the response body.
    Body,
    /// 101: both directions are a byte tunnel.
    Tunnel,
    /// Response fully queued to the client.
    Done,
}

/// One request and its response: how the request is read and forwarded (and kept for a
/// retry), which server and connection answer it, how the response is relayed, and what is
/// recorded of it.
#[derive(Debug)]
pub(super) struct Exchange {
    pub(super) method: Method,
    pub(super) version: Version,
    /// The request allows a persistent connection (its own say in [`rules::client_keep_alive`]).
    pub(super) persistent: bool,
    pub(super) group: u32,
    pub(super) req_head: Bytes,
    pub(super) req_decoder: BodyDecoder,
    pub(super) req_chunked: bool,
    /// The client sent `TE: trailers`: chunked trailers are forwarded in both directions
    /// where both sides are chunked (`req_trailers`/`resp_trailers` hold them until the last
    /// chunk).
    pub(super) trailers: bool,
    pub(super) req_trailers: BytesMut,
    pub(super) resp_trailers: BytesMut,
    pub(super) req_done: bool,
    pub(super) req_bytes: u64,
    pub(super) replay: VecDeque<Bytes>,
    pub(super) replay_len: usize,
    pub(super) replayable: bool,
    /// The body is being read in full before an upstream connection is taken
    /// ([`uploads::buffer_first`](crate::uploads::buffer_first)); it collects in `replay`.
    pub(super) buffering: bool,
    /// The minimum upload rate is measured from this instant and this many body bytes: the
    /// request's start, moved up whenever we resume reading after refusing to (backpressure is
    /// not the client's slowness).
    pub(super) upload_since: Time,
    pub(super) upload_base: u64,
    pub(super) upgrade: bool,
    pub(super) upstream: Option<ConnId>,
    pub(super) server: Option<u32>,
    pub(super) reused: bool,
    pub(super) tries: u32,
    pub(super) tried: u64,
    pub(super) stale_retried: bool,
    pub(super) resp: Resp,
    pub(super) resp_decoder: BodyDecoder,
    /// The upstream response body is chunked (its chunk boundaries can be kept).
    pub(super) resp_in_chunked: bool,
    pub(super) resp_out: OutBody,
    pub(super) resp_started: bool,
    pub(super) status: u16,
    /// For [`ExchangeInfo`]: `METHOD target` (only with `record_requests`), when the request
    /// began and its response head was queued, and the bytes queued to the client.
    pub(super) request: Bytes,
    pub(super) started: Time,
    pub(super) response_at: Option<Time>,
    pub(super) bytes_sent: u64,
    /// `bytes_sent` when the final response head was queued: what follows is body.
    pub(super) body_from: u64,
    /// Upstream attempts and request fields, while recording (see [`record`]).
    pub(super) tries_log: Tries,
    pub(super) fields: RequestFields,
    /// Waiting in its group's queue since then (see `engine::queue`).
    pub(super) queued_at: Option<Time>,
}

impl Exchange {
    /// No exchange: between requests, or a request refused before its head was understood.
    /// `replay` is the previous exchange's queue, emptied, so its allocation is kept.
    pub(super) fn idle(mut replay: VecDeque<Bytes>) -> Exchange {
        replay.clear();
        Exchange {
            method: Method::Get,
            version: Version::Http11,
            persistent: true,
            group: 0,
            req_head: Bytes::new(),
            req_decoder: BodyDecoder::new(BodyKind::Empty),
            req_chunked: false,
            trailers: false,
            req_trailers: BytesMut::new(),
            resp_trailers: BytesMut::new(),
            req_done: true,
            req_bytes: 0,
            replay,
            replay_len: 0,
            replayable: true,
            buffering: false,
            upload_since: Time::ZERO,
            upload_base: 0,
            upgrade: false,
            upstream: None,
            server: None,
            reused: false,
            tries: 0,
            tried: 0,
            stale_retried: false,
            resp: Resp::Done,
            resp_decoder: BodyDecoder::new(BodyKind::Empty),
            resp_in_chunked: false,
            resp_out: OutBody::None,
            resp_started: false,
            status: 0,
            request: Bytes::new(),
            started: Time::ZERO,
            response_at: None,
            bytes_sent: 0,
            body_from: 0,
            tries_log: Tries::new(),
            fields: RequestFields::default(),
            queued_at: None,
        }
    }

    /// The exchange of the request whose head was just parsed, begun at `started`.
    pub(super) fn start(
        head: &Head,
        started: Time,
        request: Bytes,
        replay: VecDeque<Bytes>,
    ) -> Exchange {
        let trailers = head.te_trailers && head.version == Version::Http11;
        let mut req_decoder = BodyDecoder::new(head.body);
        if trailers {
            req_decoder.report_trailers();
        }
        Exchange {
            method: head.method,
            version: head.version,
            persistent: head.persistent(),
            req_decoder,
            req_chunked: head.body == BodyKind::Chunked,
            trailers,
            req_done: matches!(head.body, BodyKind::Empty | BodyKind::Length(0)),
            upgrade: head.version == Version::Http11
                && head.connection.upgrade
                && head.upgrade.is_some()
                && head.body == BodyKind::Empty,
            resp: Resp::Waiting,
            request,
            started,
            upload_since: started,
            ..Exchange::idle(replay)
        }
    }
}

impl Core {
    /// Queues the [`ExchangeInfo`] of the exchange of `id` that just ended, if recording.
    pub(super) fn record(&mut self, now: Time, id: ConnId) {
        self.record_end(now, id, End::Complete);
    }

    /// Queues the [`ExchangeInfo`] of the exchange of `id`, ended as `end`, if recording.
    pub(super) fn record_end(&mut self, now: Time, id: ConnId, end: End) {
        if !self.record_exchanges {
            return;
        }
        let Some(cl) = self.conns.client_mut(id) else {
            return;
        };
        // An exchange already recorded as complete (its response queued whole) is not recorded
        // again when the client then goes away; a tunnel is never recorded.
        if end != End::Complete && matches!(cl.ex.resp, Resp::Done | Resp::Tunnel) {
            return;
        }
        let (listener, peer) = (cl.listener, cl.peer);
        let ex = &mut cl.ex;
        let tries = record::close_tries(ex, now);
        // Taken, not cloned (an exchange is recorded once): cloning a fresh `Bytes` allocates.
        let request = core::mem::take(&mut ex.request);
        let status = match end {
            End::Complete => ex.status,
            _ if ex.resp_started => ex.status,
            End::ClientAborted => 499,
            End::Shutdown => 444,
            // Only recorded once a response started; what the client got otherwise.
            End::UpstreamFailed => 502,
        };
        let info = ExchangeInfo {
            client: id,
            listener,
            peer,
            status,
            server: ex.server.map(|s| self.servers[s as usize]),
            reused: ex.reused,
            request,
            version: ex.version,
            started: ex.started,
            response_at: ex.response_at,
            finished: now,
            bytes_sent: ex.bytes_sent,
            bytes_received: ex.req_bytes,
            body_bytes_sent: ex.bytes_sent.saturating_sub(ex.body_from),
            tries,
            fields: core::mem::take(&mut ex.fields),
            end,
        };
        self.finished.push_back(info);
    }
}
