//! Request bodies and backend connections (issue 15): which bodies are buffered before an
//! upstream connection is taken, and how slowly a body may arrive. Pure rules, driven by tables.
//!
//! A process-per-connection backend (a CGI-style or prefork server) is starved by clients that
//! upload slowly while holding one of its connections. Two rules keep that from happening:
//! small bodies are read in full first ([`buffer_first`], nginx's `proxy_request_buffering`),
//! and a body of any size must arrive at a minimum average rate ([`upload_deadline`], Apache
//! `mod_reqtimeout`'s `MinRate`).

use core::time::Duration;

use crate::Time;
use crate::framing::BodyKind;

/// Whether a request body delimited as `body` is read in full (up to `limit` bytes; 0 = off)
/// before an upstream connection is taken. A Content-Length body within the limit is; a chunked
/// body is until it grows past the limit (then it streams); no body needs nothing.
pub fn buffer_first(body: BodyKind, limit: u64) -> bool {
    limit > 0
        && match body {
            BodyKind::Length(n) => n > 0 && n <= limit,
            BodyKind::Chunked => true,
            BodyKind::Empty | BodyKind::UntilClose => false,
        }
}

/// When a request body that began at `started` and has brought `received` bytes so far is too
/// slow: after `grace`, one more second per `min_rate` bytes received (`None` when
/// `min_rate` is 0, off).
pub fn upload_deadline(
    started: Time,
    grace: Duration,
    received: u64,
    min_rate: u64,
) -> Option<Time> {
    if min_rate == 0 {
        return None;
    }
    let earned = Duration::from_secs(received / min_rate)
        + Duration::from_nanos((received % min_rate) * 1_000_000_000 / min_rate);
    Some(started.plus(grace.saturating_add(earned)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_chunked_bodies_are_buffered() {
        for (body, limit, want) in [
            (BodyKind::Length(10), 64, true),
            (BodyKind::Length(64), 64, true),
            (BodyKind::Length(65), 64, false),
            (BodyKind::Length(0), 64, false),
            (BodyKind::Chunked, 64, true),
            (BodyKind::Empty, 64, false),
            (BodyKind::Length(10), 0, false),
            (BodyKind::Chunked, 0, false),
        ] {
            assert_eq!(buffer_first(body, limit), want, "{body:?} {limit}");
        }
    }

    #[test]
    fn the_upload_deadline_grows_with_the_bytes_received() {
        let t0 = Time::ZERO;
        let s = Duration::from_secs;
        for (grace, received, rate, want) in [
            (s(60), 0, 500, Some(s(60))),
            (s(60), 500, 500, Some(s(61))),
            (s(60), 250, 500, Some(s(60) + Duration::from_millis(500))),
            (s(60), 1_000_000, 500, Some(s(2060))),
            (s(10), 1 << 30, 1 << 20, Some(s(10 + 1024))),
            (s(60), 1000, 0, None),
        ] {
            assert_eq!(
                upload_deadline(t0, grace, received, rate),
                want.map(|d| t0.plus(d)),
                "{grace:?} {received} {rate}"
            );
        }
    }
}
