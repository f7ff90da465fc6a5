//! The decisions that define the proxy, written once each as pure functions over plain facts
//! (h11's style: no connection table, no buffers, no clock — the engine gathers the facts and
//! calls each rule exactly once per decision).
//!
//! | rule | decides |
//! |---|---|
//! | [`client_keep_alive`] | whether a client connection serves another request after this one |
//! | [`upstream_reusable`] | whether an upstream connection goes back to the pool, and if not, why ([`NotReusable`]) |
//! | [`keepalive_race`], [`retry`] | whether a failed attempt is re-sent: on a fresh connection (stale pooled one) or on the next server |
//! | [`request_framing`], [`response_framing`] | the body framing we send |
//! | [`failure_status`], [`no_server_status`] | the status a failure is answered with |
//! | [`no_server`] | whether a request that finds every server full waits in the queue |

use core::time::Duration;

use crate::framing::{BodyKind, Method, OutBody, Version};

// ----- client keep-alive -----

/// What decides whether a client connection stays open after its current exchange.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClientFacts {
    /// The request allows persistence (HTTP/1.1 without `Connection: close`, HTTP/1.0 with
    /// `Connection: keep-alive`).
    pub request_persistent: bool,
    /// Requests received on the connection, the current one included.
    pub requests: u32,
    /// `client_keepalive_requests`.
    pub max_requests: u32,
    /// The core is draining (graceful shutdown).
    pub draining: bool,
    /// We stop reading part of the request (its body, or a head we could not parse): what
    /// follows on the connection can no longer be found.
    pub request_abandoned: bool,
    /// The response we send ends by closing the connection (an HTTP/1.0 client and a body
    /// without a length).
    pub close_delimited: bool,
    /// We answer with our own error to a request whose framing cannot be trusted (400, 408, 413).
    pub framing_broken: bool,
}

/// Whether the client connection may carry another request after the current exchange.
pub(crate) fn client_keep_alive(f: &ClientFacts) -> bool {
    f.request_persistent
        && f.requests < f.max_requests
        && !f.draining
        && !f.request_abandoned
        && !f.close_delimited
        && !f.framing_broken
}

/// Our own error statuses after which the request's framing cannot be trusted: the rest of the
/// request (or what looked like it) may still be on the wire.
pub(crate) fn breaks_framing(status: u16) -> bool {
    matches!(status, 400 | 408 | 413)
}

// ----- upstream reusability -----

/// Why an upstream connection was not put back into the pool after a request. Counted in
/// [`GroupStats::not_reused`](crate::stats::GroupStats::not_reused), indexed as
/// [`NotReusable::ALL`]; with the idle evictions ([`EvictReason`](crate::pool::EvictReason)) it
/// answers "why did this upstream connection close?".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NotReusable {
    /// The group's `keepalive` is 0: pooling is off.
    PoolingOff,
    /// The core is draining.
    Draining,
    /// The response was HTTP/1.0 (nginx never pools those either).
    Http10Response,
    /// The response said `Connection: close`.
    ResponseClose,
    /// The response body was delimited by the backend closing the connection.
    CloseDelimited,
    /// The backend's `Keep-Alive: timeout` leaves no time to reuse the connection safely.
    KeepAliveHint,
    /// The response ended before the request was fully sent.
    RequestUnfinished,
    /// The backend sent bytes after the response.
    UnexpectedData,
    /// The backend closed its side after the response.
    ServerClosed,
    /// The connection carried `keepalive_requests` requests.
    RequestsExhausted,
    /// The connection is older than `keepalive_time`.
    LifetimeExceeded,
    /// The response was `101 Switching Protocols`: the connection became a tunnel.
    Upgraded,
    /// The client went away, timed out or sent an invalid body before the response was complete.
    ClientAborted,
    /// The connection could not be established (refused, reset, local resource shortage).
    ConnectFailed,
    /// A connect, send or read timeout.
    Timeout,
    /// The keepalive race: a reused connection was closed by the backend (or answered with its
    /// idle-timeout 408) before any response byte.
    Stale,
    /// The backend closed or reset the connection before the response was complete.
    ResponseIncomplete,
    /// The response could not be parsed (or was a 101 nobody asked for).
    BadResponse,
}

impl NotReusable {
    /// Number of reasons.
    pub const COUNT: usize = 18;

    /// Every reason, in index order (`reason as usize`).
    pub const ALL: [NotReusable; NotReusable::COUNT] = [
        NotReusable::PoolingOff,
        NotReusable::Draining,
        NotReusable::Http10Response,
        NotReusable::ResponseClose,
        NotReusable::CloseDelimited,
        NotReusable::KeepAliveHint,
        NotReusable::RequestUnfinished,
        NotReusable::UnexpectedData,
        NotReusable::ServerClosed,
        NotReusable::RequestsExhausted,
        NotReusable::LifetimeExceeded,
        NotReusable::Upgraded,
        NotReusable::ClientAborted,
        NotReusable::ConnectFailed,
        NotReusable::Timeout,
        NotReusable::Stale,
        NotReusable::ResponseIncomplete,
        NotReusable::BadResponse,
    ];

    /// A snake_case label, e.g. for `upkeep_upstream_not_reused_total{reason="..."}`.
    pub fn as_str(self) -> &'static str {
        match self {
            NotReusable::PoolingOff => "pooling_off",
            NotReusable::Draining => "draining",
            NotReusable::Http10Response => "http10_response",
            NotReusable::ResponseClose => "connection_close",
            NotReusable::CloseDelimited => "close_delimited",
            NotReusable::KeepAliveHint => "keep_alive_hint",
            NotReusable::RequestUnfinished => "request_unfinished",
            NotReusable::UnexpectedData => "unexpected_data",
            NotReusable::ServerClosed => "server_closed",
            NotReusable::RequestsExhausted => "keepalive_requests",
            NotReusable::LifetimeExceeded => "keepalive_time",
            NotReusable::Upgraded => "upgraded",
            NotReusable::ClientAborted => "client_aborted",
            NotReusable::ConnectFailed => "connect_failed",
            NotReusable::Timeout => "timeout",
            NotReusable::Stale => "stale",
            NotReusable::ResponseIncomplete => "response_incomplete",
            NotReusable::BadResponse => "bad_response",
        }
    }
}

/// A backend's `Keep-Alive: timeout=N` is honoured minus this margin, so we stop using a
/// connection before the backend closes it (the keepalive race).
pub(crate) const KEEPALIVE_HINT_MARGIN: Duration = Duration::from_secs(1);

/// How long a backend's `Keep-Alive: timeout=secs` lets us keep its connection idle.
pub(crate) fn keep_alive_hint(secs: u32) -> Duration {
    Duration::from_secs(u64::from(secs)).saturating_sub(KEEPALIVE_HINT_MARGIN)
}

/// What the response head said about the connection, recorded when it arrives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ResponseFacts {
    /// The response was HTTP/1.0.
    pub http10: bool,
    /// It carried `Connection: close`.
    pub close: bool,
    /// Its body ends when the backend closes.
    pub close_delimited: bool,
    /// The backend's `Keep-Alive: timeout`, less our margin ([`keep_alive_hint`]), if it sent one.
    pub idle_hint: Option<Duration>,
}

/// Everything that decides whether an upstream connection goes back to the pool once its
/// response has been relayed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct UpstreamFacts {
    /// The group's `keepalive` (idle cap) is above 0.
    pub pooling: bool,
    /// The core is draining.
    pub draining: bool,
    /// What the response head said.
    pub response: ResponseFacts,
    /// The whole request was received from the client and written to the backend.
    pub request_sent: bool,
    /// Bytes arrived after the response (or are still unread).
    pub extra_data: bool,
    /// The backend sent EOF.
    pub peer_closed: bool,
    /// Requests carried by the connection, the current one included.
    pub requests: u32,
    /// `keepalive_requests`.
    pub max_requests: u32,
    /// Time since the connection was opened.
    pub age: Duration,
    /// `keepalive_time`.
    pub max_age: Duration,
    /// Time since the response head arrived (when the backend's Keep-Alive hint started).
    pub since_response: Duration,
}

/// Whether the connection can serve another request: `Ok` to pool it, else the first reason
/// found (configuration first, then what the response said, then the connection's state, then
/// its limits).
pub(crate) fn upstream_reusable(f: &UpstreamFacts) -> Result<(), NotReusable> {
    let r = &f.response;
    let why = if !f.pooling {
        NotReusable::PoolingOff
    } else if f.draining {
        NotReusable::Draining
    } else if r.http10 {
        // nginx's rule: only an HTTP/1.1 response leaves a reusable connection. An HTTP/1.0
        // `Connection: keep-alive` is legal (RFC 9112 §9.3) but 1.0 servers that send it are
        // the ones most likely to get persistence wrong.
        NotReusable::Http10Response
    } else if r.close {
        NotReusable::ResponseClose
    } else if r.close_delimited {
        NotReusable::CloseDelimited
    } else if r.idle_hint.is_some_and(|hint| hint <= f.since_response) {
        // The backend's idle time (less our margin) ran out while the response was relayed (a
        // slow client held its body back): it may close the connection at any moment.
        NotReusable::KeepAliveHint
    } else if !f.request_sent {
        NotReusable::RequestUnfinished
    } else if f.extra_data {
        NotReusable::UnexpectedData
    } else if f.peer_closed {
        NotReusable::ServerClosed
    } else if f.requests >= f.max_requests {
        NotReusable::RequestsExhausted
    } else if f.age >= f.max_age {
        NotReusable::LifetimeExceeded
    } else {
        return Ok(());
    };
    Err(why)
}

// ----- failures, retries and their statuses -----

/// Why an upstream attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    ConnectFailed,
    ConnectTimeout,
    /// EOF or reset before the response was complete.
    Closed,
    ReadTimeout,
    SendTimeout,
    BadResponse,
    /// A 408 on a reused connection: the backend's idle timeout, sent as we reused it.
    Reused408,
    /// Bytes on a reused connection before any byte of the request was reported written: they
    /// followed the previous response (or are an idle-close notice). The request may be on its
    /// way already (a write in flight), so it counts as written for re-sending.
    Stray,
    /// The runtime could not attempt the connection (a local resource shortage).
    Local,
    /// We refused the server's identity (TLS certificate verification): not its health's fault.
    Rejected,
}

/// The keepalive race: the backend gave up on an idle connection as we reused it — it closed
/// (EOF or reset before any response byte) or answered with its idle-timeout 408. Not a sign of
/// ill health.
pub(crate) fn keepalive_race(why: Failure, reused: bool, responded: bool) -> bool {
    match why {
        Failure::Closed => reused && !responded,
        Failure::Reused408 | Failure::Stray => true,
        _ => false,
    }
}

/// Why a connection whose attempt failed was not reused.
pub(crate) fn failure_reason(why: Failure, race: bool) -> NotReusable {
    if race {
        return NotReusable::Stale;
    }
    match why {
        Failure::ConnectFailed | Failure::Local | Failure::Rejected => NotReusable::ConnectFailed,
        Failure::ConnectTimeout | Failure::ReadTimeout | Failure::SendTimeout => {
            NotReusable::Timeout
        }
        Failure::Closed | Failure::Reused408 | Failure::Stray => NotReusable::ResponseIncomplete,
        Failure::BadResponse => NotReusable::BadResponse,
    }
}

/// Whether a failure counts against the server's passive health (`max_fails`).
pub(crate) fn counts_against_server(why: Failure, race: bool) -> bool {
    !race && !matches!(why, Failure::Local | Failure::Rejected)
}

/// A failed attempt, as far as retrying it is concerned.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Attempt {
    pub why: Failure,
    /// [`keepalive_race`].
    pub race: bool,
    /// This exchange was already re-sent once after a race.
    pub stale_retried: bool,
    /// Part of the request reached the socket.
    pub written: bool,
    /// The request can be sent again: nothing was written, or a copy of it was kept.
    pub replayable: bool,
    /// RFC 9110 §9.2.2.
    pub idempotent: bool,
    /// Servers tried so far, and `next_upstream_tries` (0 meaning 1).
    pub tries: u32,
    pub max_tries: u32,
    /// `next_upstream_on_timeout`.
    pub next_on_timeout: bool,
}

/// What to do with a failed attempt whose response has not started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Re-send once on a fresh connection to the same server (the keepalive race).
    Fresh,
    /// Move to another server (nginx `proxy_next_upstream`).
    Next,
    /// Answer the client with [`failure_status`].
    Answer,
}

/// Whether and where a failed attempt is re-sent.
pub(crate) fn retry(a: &Attempt) -> Retry {
    // A request the backend may have started acting on is re-sent only if repeating it is safe.
    // An idle-timeout 408 on a reused connection says the backend did not take the request in
    // (RFC 9110 §15.5.9: it was not received in time): whatever the method, nothing was acted
    // on (Chromium re-sends on it for the same reason).
    let unreceived = a.why == Failure::Reused408;
    // Stray bytes came before the runtime reported any of the request written, but a runtime
    // whose writes complete later (io_uring) may have handed it to the kernel already.
    let written = a.written || a.why == Failure::Stray;
    let resend_ok = (a.idempotent || !written || unreceived) && a.replayable;
    if a.race && !a.stale_retried && resend_ok {
        return Retry::Fresh;
    }
    let moves = match a.why {
        Failure::ConnectFailed | Failure::ConnectTimeout => !a.written,
        Failure::ReadTimeout => a.next_on_timeout && a.idempotent && a.replayable,
        _ => false,
    };
    if moves && a.tries < a.max_tries.max(1) {
        Retry::Next
    } else {
        Retry::Answer
    }
}

/// The status a failed attempt is answered with.
pub(crate) fn failure_status(why: Failure) -> u16 {
    match why {
        Failure::ConnectTimeout | Failure::ReadTimeout | Failure::SendTimeout => 504,
        Failure::Local => 500,
        _ => 502,
    }
}

/// The status when no server is left to try: that of the last failure when moving on, else 502.
pub(crate) fn no_server_status(last: u16) -> u16 {
    if last >= 500 { last } else { 502 }
}

// ----- the queue -----

/// What is known when a request finds no server that may take it now.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NoServerFacts {
    /// The group's `queue` (0: no queue).
    pub queue: usize,
    /// Requests already waiting, every worker together.
    pub queued: usize,
    /// Some server it may still use is only held back by `max_conns` (or requests already wait,
    /// which means slots are contended): a slot will free.
    pub waitable: bool,
}

/// Where a request that found no server goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NoServer {
    /// Into the queue, until a slot frees or `queue_timeout`.
    Wait,
    /// 503 with `Retry-After`: the queue is full.
    QueueFull,
    /// Answered as before queues existed: no server can take it, waiting would not help
    /// ([`no_server_status`]; nginx open source's 502 when every server is at `max_conns` and
    /// there is no queue).
    Answer,
}

/// The queue's admission rule (HAProxy's: a request waits only for servers that are full, not
/// for servers that are down or excluded — those answer at once).
pub(crate) fn no_server(f: &NoServerFacts) -> NoServer {
    if f.queue == 0 || !f.waitable {
        NoServer::Answer
    } else if f.queued >= f.queue {
        NoServer::QueueFull
    } else {
        NoServer::Wait
    }
}

/// `Retry-After` (seconds) on our own 503s (queue full or wait expired): a short pause, so
/// well-behaved clients back off without a long outage of their own.
pub(crate) const RETRY_AFTER_SECS: u32 = 1;

// ----- framing we send -----

/// The framing of a request body forwarded upstream.
pub(crate) fn request_framing(body: BodyKind) -> OutBody {
    match body {
        BodyKind::Empty | BodyKind::UntilClose => OutBody::None,
        BodyKind::Length(n) => OutBody::Length(n),
        BodyKind::Chunked => OutBody::Chunked,
    }
}

/// The framing of a response body sent to the client.
pub(crate) fn response_framing(
    body: BodyKind,
    content_length: Option<u64>,
    method: Method,
    status: u16,
    client: Version,
) -> OutBody {
    match body {
        // A HEAD response or a 304 keeps announcing the entity's length.
        BodyKind::Empty if method == Method::Head || status == 304 => {
            content_length.map_or(OutBody::None, OutBody::Length)
        }
        BodyKind::Empty => OutBody::None,
        BodyKind::Length(n) => OutBody::Length(n),
        BodyKind::Chunked | BodyKind::UntilClose if client == Version::Http11 => OutBody::Chunked,
        // An HTTP/1.0 client knows no chunked coding: the body ends with the connection.
        BodyKind::Chunked | BodyKind::UntilClose => OutBody::Close,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_keep_alive_table() {
        let base = ClientFacts {
            request_persistent: true,
            requests: 1,
            max_requests: 100,
            draining: false,
            request_abandoned: false,
            close_delimited: false,
            framing_broken: false,
        };
        type Case = (&'static str, fn(&mut ClientFacts), bool);
        let cases: [Case; 8] = [
            ("persistent", |_| {}, true),
            ("Connection: close", |f| f.request_persistent = false, false),
            ("last allowed request", |f| f.requests = 100, false),
            ("one before the limit", |f| f.requests = 99, true),
            ("draining", |f| f.draining = true, false),
            ("body left unread", |f| f.request_abandoned = true, false),
            (
                "close-delimited response",
                |f| f.close_delimited = true,
                false,
            ),
            ("our 400", |f| f.framing_broken = true, false),
        ];
        for (name, change, want) in cases {
            let mut f = base;
            change(&mut f);
            assert_eq!(client_keep_alive(&f), want, "{name}");
        }
        for (status, broken) in [
            (400, true),
            (408, true),
            (413, true),
            (502, false),
            (404, false),
        ] {
            assert_eq!(breaks_framing(status), broken, "{status}");
        }
    }

    #[test]
    fn upstream_reusable_table() {
        let base = UpstreamFacts {
            pooling: true,
            draining: false,
            response: ResponseFacts::default(),
            request_sent: true,
            extra_data: false,
            peer_closed: false,
            requests: 1,
            max_requests: 1000,
            age: Duration::from_secs(1),
            max_age: Duration::from_secs(3600),
            since_response: Duration::ZERO,
        };
        type Case = (fn(&mut UpstreamFacts), Result<(), NotReusable>);
        let cases: [Case; 17] = [
            (|_| {}, Ok(())),
            (|f| f.pooling = false, Err(NotReusable::PoolingOff)),
            (|f| f.draining = true, Err(NotReusable::Draining)),
            (
                |f| f.response.http10 = true,
                Err(NotReusable::Http10Response),
            ),
            (|f| f.response.close = true, Err(NotReusable::ResponseClose)),
            (
                |f| f.response.close_delimited = true,
                Err(NotReusable::CloseDelimited),
            ),
            (
                |f| f.response.idle_hint = Some(Duration::ZERO),
                Err(NotReusable::KeepAliveHint),
            ),
            (
                |f| f.response.idle_hint = Some(Duration::from_secs(4)),
                Ok(()),
            ),
            (
                |f| {
                    f.response.idle_hint = Some(Duration::from_secs(4));
                    f.since_response = Duration::from_secs(3);
                },
                Ok(()),
            ),
            (
                |f| {
                    f.response.idle_hint = Some(Duration::from_secs(4));
                    f.since_response = Duration::from_secs(4);
                },
                Err(NotReusable::KeepAliveHint),
            ),
            (
                |f| f.request_sent = false,
                Err(NotReusable::RequestUnfinished),
            ),
            (|f| f.extra_data = true, Err(NotReusable::UnexpectedData)),
            (|f| f.peer_closed = true, Err(NotReusable::ServerClosed)),
            (|f| f.requests = 1000, Err(NotReusable::RequestsExhausted)),
            (|f| f.requests = 999, Ok(())),
            (
                |f| f.age = Duration::from_secs(3600),
                Err(NotReusable::LifetimeExceeded),
            ),
            // Configuration wins over what the response said.
            (
                |f| {
                    f.pooling = false;
                    f.response.close = true;
                },
                Err(NotReusable::PoolingOff),
            ),
        ];
        for (i, (change, want)) in cases.into_iter().enumerate() {
            let mut f = base;
            change(&mut f);
            assert_eq!(upstream_reusable(&f), want, "case {i}: {f:?}");
        }
        assert_eq!(keep_alive_hint(1), Duration::ZERO);
        assert_eq!(keep_alive_hint(5), Duration::from_secs(4));
    }

    #[test]
    fn reasons_are_indexed_and_labelled_once() {
        for (i, r) in NotReusable::ALL.into_iter().enumerate() {
            assert_eq!(r as usize, i);
            let label = r.as_str();
            assert!(
                label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit())
            );
            assert_eq!(
                NotReusable::ALL
                    .iter()
                    .filter(|o| o.as_str() == label)
                    .count(),
                1,
                "{label}"
            );
        }
    }

    #[test]
    fn keepalive_race_table() {
        use Failure::*;
        let cases = [
            (Closed, true, false, true),
            (Closed, true, true, false),
            (Closed, false, false, false),
            (Reused408, true, false, true),
            (ReadTimeout, true, false, false),
            (ConnectFailed, false, false, false),
        ];
        for (why, reused, responded, race) in cases {
            assert_eq!(
                keepalive_race(why, reused, responded),
                race,
                "{why:?} {reused} {responded}"
            );
        }
        assert_eq!(failure_reason(Closed, true), NotReusable::Stale);
        assert_eq!(
            failure_reason(Closed, false),
            NotReusable::ResponseIncomplete
        );
        assert_eq!(failure_reason(Local, false), NotReusable::ConnectFailed);
        assert_eq!(failure_reason(SendTimeout, false), NotReusable::Timeout);
        assert!(!counts_against_server(Closed, true));
        assert!(!counts_against_server(Local, false));
        assert!(!counts_against_server(Rejected, false));
        assert_eq!(failure_reason(Rejected, false), NotReusable::ConnectFailed);
        assert!(counts_against_server(ReadTimeout, false));
    }

    #[test]
    fn retry_table() {
        use Failure::*;
        use Retry::*;
        // One attempt (tries = 1) of a request that failed; columns: why, race, stale_retried,
        // written, replayable, idempotent, next_upstream_tries, next_upstream_on_timeout.
        type Case = (&'static str, Failure, [bool; 5], u32, bool, Retry);
        let cases: [Case; 16] = [
            (
                "stray bytes before a GET was reported written: re-sent fresh",
                Stray,
                [true, false, false, true, true],
                0,
                false,
                Fresh,
            ),
            (
                "stray bytes before a POST was reported written: it may be on its way, answered",
                Stray,
                [true, false, false, true, false],
                0,
                false,
                Answer,
            ),
            (
                "idle-timeout 408 on a reused connection, POST written",
                Reused408,
                [true, false, true, true, false],
                0,
                false,
                Fresh,
            ),
            (
                "idle-timeout 408, POST written, body not kept",
                Reused408,
                [true, false, true, false, false],
                0,
                false,
                Answer,
            ),
            (
                "stale GET",
                Closed,
                [true, false, true, true, true],
                0,
                false,
                Fresh,
            ),
            (
                "stale, retried once already",
                Closed,
                [true, true, true, true, true],
                0,
                false,
                Answer,
            ),
            (
                "stale POST, written",
                Closed,
                [true, false, true, true, false],
                0,
                false,
                Answer,
            ),
            (
                "stale POST, nothing written",
                Closed,
                [true, false, false, true, false],
                0,
                false,
                Fresh,
            ),
            (
                "stale GET, body not kept",
                Closed,
                [true, false, true, false, true],
                0,
                false,
                Answer,
            ),
            (
                "closed, not a race",
                Closed,
                [false, false, true, true, true],
                3,
                false,
                Answer,
            ),
            (
                "connect failed, tries left",
                ConnectFailed,
                [false, false, false, true, true],
                2,
                false,
                Next,
            ),
            (
                "connect timeout, no tries left",
                ConnectTimeout,
                [false, false, false, true, true],
                1,
                false,
                Answer,
            ),
            (
                "read timeout, on_timeout",
                ReadTimeout,
                [false, false, true, true, true],
                3,
                true,
                Next,
            ),
            (
                "read timeout, off",
                ReadTimeout,
                [false, false, true, true, true],
                3,
                false,
                Answer,
            ),
            (
                "read timeout, POST",
                ReadTimeout,
                [false, false, true, true, false],
                3,
                true,
                Answer,
            ),
            (
                "bad response",
                BadResponse,
                [false, false, true, true, true],
                3,
                true,
                Answer,
            ),
        ];
        for (
            name,
            why,
            [race, stale_retried, written, replayable, idempotent],
            max_tries,
            next_on_timeout,
            want,
        ) in cases
        {
            let a = Attempt {
                why,
                race,
                stale_retried,
                written,
                replayable,
                idempotent,
                tries: 1,
                max_tries,
                next_on_timeout,
            };
            assert_eq!(retry(&a), want, "{name}");
        }
    }

    #[test]
    fn status_table() {
        use Failure::*;
        let cases = [
            (ConnectFailed, 502),
            (ConnectTimeout, 504),
            (Closed, 502),
            (ReadTimeout, 504),
            (SendTimeout, 504),
            (BadResponse, 502),
            (Reused408, 502),
            (Local, 500),
            (Rejected, 502),
        ];
        for (why, status) in cases {
            assert_eq!(failure_status(why), status, "{why:?}");
        }
        assert_eq!(no_server_status(0), 502);
        assert_eq!(no_server_status(404), 502);
        assert_eq!(no_server_status(504), 504);
    }

    #[test]
    fn framing_table() {
        use BodyKind::*;
        use Version::*;
        let get = Method::Get;
        let cases = [
            (Empty, None, get, 200, Http11, OutBody::None),
            (
                Empty,
                Some(7),
                Method::Head,
                200,
                Http11,
                OutBody::Length(7),
            ),
            (Empty, Some(7), get, 304, Http11, OutBody::Length(7)),
            (Empty, None, get, 304, Http11, OutBody::None),
            (Length(5), Some(5), get, 200, Http10, OutBody::Length(5)),
            (Chunked, None, get, 200, Http11, OutBody::Chunked),
            (UntilClose, None, get, 200, Http11, OutBody::Chunked),
            (Chunked, None, get, 200, Http10, OutBody::Close),
            (UntilClose, None, get, 200, Http10, OutBody::Close),
        ];
        for (body, len, method, status, client, want) in cases {
            assert_eq!(
                response_framing(body, len, method, status, client),
                want,
                "{body:?} {len:?} {method:?} {status} {client:?}"
            );
        }
        assert_eq!(request_framing(Empty), OutBody::None);
        assert_eq!(request_framing(Length(3)), OutBody::Length(3));
        assert_eq!(request_framing(Chunked), OutBody::Chunked);
        assert_eq!(request_framing(UntilClose), OutBody::None);
    }

    #[test]
    fn no_server_table() {
        use NoServer::*;
        // (queue, queued, waitable) -> verdict
        let cases: &[((usize, usize, bool), NoServer)] = &[
            ((0, 0, true), Answer),
            ((0, 0, false), Answer),
            ((4, 0, false), Answer),
            ((4, 0, true), Wait),
            ((4, 3, true), Wait),
            ((4, 4, true), QueueFull),
            ((4, 9, true), QueueFull),
        ];
        for &((queue, queued, waitable), want) in cases {
            let got = no_server(&NoServerFacts {
                queue,
                queued,
                waitable,
            });
            assert_eq!(
                got, want,
                "queue={queue} queued={queued} waitable={waitable}"
            );
        }
    }
}
