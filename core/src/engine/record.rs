//! What an exchange's record says beyond its status and times, for access logs, metrics and
//! the operator log: every upstream attempt ([`UpstreamTry`]: server, connect / header times,
//! status or failure), a few request fields (Host, Referer, User-Agent), the request id, and
//! how the exchange ended ([`End`]). All of it is gathered only while recording
//! ([`Core::record_exchanges`]; the request fields and the id with [`Core::record_requests`]),
//! so a core that records nothing pays nothing.

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

use super::Core;
use super::client::Phase;
use super::exchange::Exchange;
use super::table::Role;
use crate::framing::Head;
use crate::rules::Failure;
use crate::{ConnId, ServerId, Time};

/// One attempt to get the response from a server (nginx logs them as `$upstream_addr`,
/// `$upstream_status`, `$upstream_connect_time`, `$upstream_header_time`,
/// `$upstream_response_time`, one per server tried).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamTry {
    /// The server tried.
    pub server: ServerId,
    /// The attempt went over a pooled connection (no connect).
    pub reused: bool,
    /// When the attempt began (a connection was taken from the pool or a connect started).
    pub started: Time,
    /// When the connection was ready: the connect finished (`started` for a reused one).
    pub connected: Option<Time>,
    /// When the response head arrived.
    pub header: Option<Time>,
    /// When the attempt ended: it failed, or the exchange ended.
    pub ended: Option<Time>,
    /// The response status (0: none arrived).
    pub status: u16,
    /// Why the attempt failed (`connect_failed`, `connect_timeout`, `read_timeout`,
    /// `send_timeout`, `closed`, `bad_response`, `reused_408`, `local`, or `stale`: see [`UpstreamTry::stale`]), if it
    /// did; the next attempt, if any, is a retry for this reason.
    pub failure: Option<&'static str>,
}

impl UpstreamTry {
    /// Whether the attempt went over a pooled connection the server had closed as it was reused
    /// (the keepalive race, failure `stale`): re-sent on a fresh connection to the same server —
    /// routine, not held against the server.
    pub fn stale(&self) -> bool {
        self.failure == Some(STALE)
    }
}

/// The attempts of one exchange. Inline up to two (a request and one retry), so recording stays
/// allocation-free on the steady-state path (`tests/alloc.rs`); more spill to the heap.
pub type Tries = SmallVec<[UpstreamTry; 2]>;

/// How an exchange ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The response was queued whole (upstream's or our own).
    Complete,
    /// The client closed or reset before its response was complete (nginx logs 499 when no
    /// response had started).
    ClientAborted,
    /// Cut by the runtime as it stops: a drain past its shutdown timeout, or a stop at once
    /// ([`Core::abort_exchanges`]).
    Shutdown,
    /// The server failed (closed, reset, timed out) after its response had started: the client
    /// got the response cut short (its last attempt names the failure).
    UpstreamFailed,
}

impl End {
    /// `complete`, `client_aborted`, `shutdown`: the access log's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            End::Complete => "complete",
            End::ClientAborted => "client_aborted",
            End::Shutdown => "shutdown",
            End::UpstreamFailed => "upstream_failed",
        }
    }
}

/// The request fields a record keeps (empty when absent or not recording requests).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestFields {
    /// `Host`.
    pub host: Bytes,
    /// `Referer`.
    pub referer: Bytes,
    /// `User-Agent`.
    pub user_agent: Bytes,
    /// The client's `X-Request-Id`, or the one the core generated (and forwarded upstream).
    pub request_id: Bytes,
}

/// The value of the first field `name` of `head`.
fn field<'a>(head: &Head, buf: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    head.fields
        .iter()
        .find(|f| f.name.of(buf).eq_ignore_ascii_case(name))
        .map(|f| f.value.of(buf))
}

/// Longest client `X-Request-Id` taken as the request's id (a UUID is 36, nginx's 32).
pub(crate) const MAX_CLIENT_REQUEST_ID: usize = 128;

/// Whether a client's `X-Request-Id` value is taken as the request's id: 1 to
/// [`MAX_CLIENT_REQUEST_ID`] visible ASCII bytes, no `"` or `\`. Anything else (empty, spaces,
/// non-ASCII, kilobytes) would break or bloat the access log's unquoted `request_id=` field and
/// the operator log, so it is replaced by a generated id.
pub(crate) fn usable_request_id(v: &[u8]) -> bool {
    (1..=MAX_CLIENT_REQUEST_ID).contains(&v.len())
        && v.iter()
            .all(|&b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\')
}

/// What the forwarded head needs for the request id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum IdAction {
    /// Nothing: the client's one `X-Request-Id` is the id and goes through as sent.
    Keep,
    /// Add the id (the client sent none).
    Add,
    /// Drop the client's `X-Request-Id` fields and add the id: the backend sees exactly the one
    /// the access log shows (the client sent an unusable one, or several).
    Replace,
}

/// The request fields of `head` (received in `buf`) for the record — Host, Referer and
/// User-Agent only if `copy_fields` — with the client's request id or a new one (`ids` counts
/// those generated, after `prefix`); and what the forwarded head needs for it. Empty (and
/// nothing to add) unless `recording`.
pub(super) fn request_fields(
    recording: bool,
    copy_fields: bool,
    ids: &mut u64,
    prefix: u64,
    bytes: &mut RecordBytes,
    head: &Head,
    buf: &[u8],
) -> (RequestFields, IdAction) {
    if !recording {
        return (RequestFields::default(), IdAction::Keep);
    }
    let copy = |bytes: &mut RecordBytes, name: &[u8]| match copy_fields {
        true => field(head, buf, name).map_or_else(Bytes::new, |v| bytes.copy(v)),
        false => Bytes::new(),
    };
    let mut sent = head
        .fields
        .iter()
        .filter(|f| f.name.of(buf).eq_ignore_ascii_case(b"x-request-id"))
        .map(|f| f.value.of(buf));
    let (first, more) = (sent.next(), sent.next().is_some());
    let (request_id, action) = match first {
        Some(v) if usable_request_id(v) => (
            bytes.copy(v),
            if more {
                IdAction::Replace
            } else {
                IdAction::Keep
            },
        ),
        _ => {
            *ids += 1;
            let id = bytes.copy(&request_id(prefix, *ids));
            let action = if first.is_some() {
                IdAction::Replace
            } else {
                IdAction::Add
            };
            (id, action)
        }
    };
    let fields = RequestFields {
        host: copy(bytes, b"host"),
        referer: copy(bytes, b"referer"),
        user_agent: copy(bytes, b"user-agent"),
        request_id,
    };
    (fields, action)
}

/// The failure of an attempt on a pooled connection the server had closed as it was reused (the
/// keepalive race): re-sent once on a fresh connection to the same server, routine — not held
/// against the server, and not a warning in the operator log.
pub(crate) const STALE: &str = "stale";

/// The name of a failure in logs and metrics.
pub(crate) fn failure_name(why: Failure) -> &'static str {
    match why {
        Failure::ConnectFailed => "connect_failed",
        Failure::ConnectTimeout => "connect_timeout",
        Failure::Closed => "closed",
        Failure::ReadTimeout => "read_timeout",
        Failure::SendTimeout => "send_timeout",
        Failure::BadResponse => "bad_response",
        Failure::Reused408 => "reused_408",
        Failure::Stray => "stray_bytes",
        Failure::Local => "local",
        Failure::Rejected => "tls_rejected",
    }
}

/// `X-Request-Id` text for request `n` of a core whose runtime gave `prefix`: 32 hex digits,
/// like nginx's `$request_id`. Deterministic: the runtime makes `prefix` unique per process and
/// worker.
pub(crate) fn request_id(prefix: u64, n: u64) -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 32];
    for (half, v) in text.chunks_exact_mut(16).zip([prefix, n]) {
        for (i, digit) in half.iter_mut().enumerate() {
            *digit = HEX[(v >> (60 - 4 * i) & 0xf) as usize];
        }
    }
    text
}

/// Where the bytes a record copies (request line, request id, Host, Referer, User-Agent) go:
/// cut from one buffer, many per allocation, and the buffer is taken back once what was cut
/// from it is dropped (`BytesMut::reserve` on a buffer no `Bytes` shares any more). A `Bytes`
/// of their own cost two allocations per request (~1 % of the CPU of a 100-byte request). The
/// buffer is only ever [`RECORD_CHUNK`] bytes, and longer copies get an allocation of their
/// own, so a record a long exchange keeps (a long poll, a tunnel) pins at most one chunk: a
/// buffer sized for one long request line, once taken back, would otherwise carry every later
/// small record and be pinned whole by any of them.
#[derive(Debug, Default)]
pub(crate) struct RecordBytes {
    buf: BytesMut,
}

/// The size of the record buffer.
const RECORD_CHUNK: usize = 512;

/// Copies longer than this are allocations of their own (long request lines, User-Agents).
const RECORD_SHARED_MAX: usize = RECORD_CHUNK / 4;

impl RecordBytes {
    /// A copy of `bytes`.
    pub(crate) fn copy(&mut self, bytes: &[u8]) -> Bytes {
        if bytes.is_empty() {
            return Bytes::new();
        }
        if bytes.len() > RECORD_SHARED_MAX {
            return Bytes::copy_from_slice(bytes);
        }
        if self.buf.capacity() < bytes.len() {
            // Taken back whole when no copy shares it any more (it never grew: `reserve` of a
            // chunk on an empty, unshared chunk reuses it), else a new chunk.
            self.buf.reserve(RECORD_CHUNK);
        }
        self.buf.extend_from_slice(bytes);
        self.buf.split().freeze()
    }
}

impl Core {
    /// Starts the record of an attempt on `server` for client `cid`.
    pub(super) fn try_started(&mut self, now: Time, cid: ConnId, server: ServerId, reused: bool) {
        if !self.record_exchanges {
            return;
        }
        if let Some(cl) = self.conns.client_mut(cid) {
            cl.ex.tries_log.push(UpstreamTry {
                server,
                reused,
                started: now,
                connected: reused.then_some(now),
                header: None,
                ended: None,
                status: 0,
                failure: None,
            });
        }
    }

    /// The current attempt of client `cid`, if recording.
    fn current_try(&mut self, cid: Option<ConnId>) -> Option<&mut UpstreamTry> {
        if !self.record_exchanges {
            return None;
        }
        self.conns.client_mut(cid?)?.ex.tries_log.last_mut()
    }

    /// The connect of the current attempt of `cid` finished.
    pub(super) fn try_connected(&mut self, now: Time, cid: Option<ConnId>) {
        if let Some(t) = self.current_try(cid) {
            t.connected = Some(now);
        }
    }

    /// The response head of the current attempt of `cid` arrived with `status`.
    pub(super) fn try_header(&mut self, now: Time, cid: ConnId, status: u16) {
        if let Some(t) = self.current_try(Some(cid)) {
            t.header = Some(now);
            t.status = status;
        }
    }

    /// The current attempt of `cid` failed.
    pub(super) fn try_failed(&mut self, now: Time, cid: Option<ConnId>, why: Failure) {
        if let Some(t) = self.current_try(cid) {
            t.ended = Some(now);
            t.failure = Some(failure_name(why));
        }
    }

    /// Records every exchange still in progress as cut at shutdown, and returns how many there
    /// were. Call it once, right before the runtime closes every connection (a drain past its
    /// shutdown timeout, a stop at once): the exchanges stay as they are, so a second call would
    /// record them again.
    pub fn abort_exchanges(&mut self, now: Time) -> usize {
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|c| matches!(&c.role, Role::Client(cl) if cl.phase == Phase::Exchange))
            .map(|c| c.id)
            .collect();
        for &id in &ids {
            self.record_end(now, id, End::Shutdown);
        }
        ids.len()
    }
}

/// Ends the record of the exchange's last attempt at `now`, if still open.
pub(super) fn close_tries(ex: &mut Exchange, now: Time) -> Tries {
    if let Some(t) = ex.tries_log.last_mut()
        && t.ended.is_none()
    {
        t.ended = Some(now);
    }
    core::mem::take(&mut ex.tries_log)
}

/// `head` (a request head ending in an empty line) with `X-Request-Id: id` added before that
/// line — and, with `replace`, its `X-Request-Id` fields dropped first.
pub(super) fn add_request_id(out: &mut BytesMut, id: &[u8], replace: bool) {
    debug_assert!(out.ends_with(b"\r\n\r\n"));
    if replace {
        drop_fields(out, b"x-request-id");
    }
    out.truncate(out.len() - 2);
    out.extend_from_slice(b"X-Request-Id: ");
    out.extend_from_slice(id);
    out.extend_from_slice(b"\r\n\r\n");
}

/// Removes the field lines named `name` (any case) from the head in `out`, in place.
fn drop_fields(out: &mut BytesMut, name: &[u8]) {
    let (mut read, mut kept) = (0, 0);
    while read < out.len() {
        let end = out[read..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(out.len(), |p| read + p + 2);
        let line = &out[read..end];
        // Never the request line (the first): its method could look like a field name.
        let named = read > 0
            && line.len() > name.len()
            && line[name.len()] == b':'
            && line[..name.len()].eq_ignore_ascii_case(name);
        if !named {
            out.copy_within(read..end, kept);
            kept += end - read;
        }
        read = end;
    }
    out.truncate(kept);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Copies keep their bytes while held, and once dropped their room is used again: every
    /// copy of a long run comes from one allocation; a copy longer than the buffer's step
    /// gets room of its own.
    #[test]
    fn record_bytes_reuse_their_buffer_once_dropped() {
        let mut bytes = RecordBytes::default();
        let held: Vec<Bytes> = (0..40u64)
            .map(|n| bytes.copy(&request_id(0xab, n)))
            .collect();
        for (n, id) in held.iter().enumerate() {
            assert_eq!(id[..], request_id(0xab, n as u64));
        }
        drop(held);
        let (mut low, mut high) = (usize::MAX, 0);
        for n in 40..1000 {
            let id = bytes.copy(&request_id(0xab, n));
            assert_eq!(id[..], request_id(0xab, n));
            let at = id.as_ptr() as usize;
            (low, high) = (low.min(at), high.max(at));
            assert!(high - low < RECORD_CHUNK, "copy {n} in a new allocation");
        }
        // A long copy is an allocation of its own: once it is dropped, later small copies
        // still come from a chunk (the reviewer's case: a reclaimed 8 KiB buffer carried every
        // later record, and any one of them pinned all 8 KiB).
        let long = vec![b'x'; 8 * 1024];
        let copy = bytes.copy(&long);
        assert_eq!(copy[..], long[..]);
        drop(copy);
        let (mut low, mut high) = (usize::MAX, 0);
        for n in 0..200 {
            let id = bytes.copy(&request_id(0xab, n));
            let at = id.as_ptr() as usize;
            (low, high) = (low.min(at), high.max(at));
            assert!(
                high - low < RECORD_CHUNK,
                "copy {n} spans {} bytes",
                high - low
            );
        }
        assert!(bytes.copy(b"").is_empty());
    }

    #[test]
    fn request_ids_are_32_hex_digits() {
        assert_eq!(&request_id(0xab, 7), b"00000000000000ab0000000000000007");
        assert_eq!(
            &request_id(u64::MAX, 0x0123_4567_89ab_cdef),
            b"ffffffffffffffff0123456789abcdef"
        );
    }

    #[test]
    fn request_id_goes_before_the_blank_line() {
        let mut b = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..]);
        add_request_id(&mut b, b"42", false);
        assert_eq!(
            &b[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: 42\r\n\r\n"
        );
        let mut b = BytesMut::from(
            &b"GET / HTTP/1.1\r\nx-request-id: a b\r\nHost: a\r\nX-Request-ID:\r\n\r\n"[..],
        );
        add_request_id(&mut b, b"42", true);
        assert_eq!(
            &b[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: 42\r\n\r\n"
        );
    }

    #[test]
    fn usable_client_request_ids() {
        let long = [b'a'; MAX_CLIENT_REQUEST_ID + 1];
        let table: [(&[u8], bool); 8] = [
            (b"abc-1", true),
            (b"0f8fad5b-d9cb-469f-a165-70867728950e", true),
            (&long[1..], true),
            (&long, false),
            (b"", false),
            (b"a b", false),
            (b"a\"b", false),
            (b"caf\xc3\xa9", false),
        ];
        for (v, ok) in table {
            assert_eq!(usable_request_id(v), ok, "{:?}", String::from_utf8_lossy(v));
        }
    }
}
