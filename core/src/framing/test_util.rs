//! What the framing unit tests share: default limits, parse-or-panic helpers, a forwarding
//! setup, a split-input body decoder driver and a valid-request strategy.

use super::*;
use proptest::prelude::*;

/// The default limits (8 KiB request line, 64 KiB head).
pub(super) const LIMITS: HeadLimits = HeadLimits {
    max_request_line: 8 * 1024,
    max_head: 64 * 1024,
};

/// Parse a complete request head with [`LIMITS`] (panics if incomplete).
pub(super) fn req(raw: &[u8]) -> Result<Head, HeadError> {
    let mut h = Head::new();
    match h.parse_request(raw, &LIMITS)? {
        true => Ok(h),
        false => panic!("incomplete: {:?}", String::from_utf8_lossy(raw)),
    }
}

/// Parse a complete response head with [`LIMITS`] (panics if incomplete).
pub(super) fn res(raw: &[u8], method: Method) -> Result<Head, HeadError> {
    let mut h = Head::new();
    match h.parse_response(raw, method, &LIMITS)? {
        true => Ok(h),
        false => panic!("incomplete: {:?}", String::from_utf8_lossy(raw)),
    }
}

/// Forwarding with every addition on (client 10.0.0.1, proto `http`) and `via`.
pub(super) fn fwd(via: Option<&str>) -> Forwarding<'_> {
    Forwarding {
        default_host: "up",
        te_trailers: false,
        client_ip: Some("10.0.0.1".parse().unwrap()),
        x_forwarded_for: true,
        proto: Some("http"),
        via,
    }
}

/// Feed `input` in pieces of `split` bytes like the engine does: keep unconsumed framing,
/// append more. Returns (payload, end offset) or the error.
pub(super) fn decode(
    kind: BodyKind,
    input: &[u8],
    split: usize,
) -> Result<(Vec<u8>, Option<usize>), BodyError> {
    let mut d = BodyDecoder::new(kind);
    let mut payload = Vec::new();
    let mut consumed = 0; // bytes of `input` fully handled
    let mut avail = 0; // bytes of `input` delivered so far
    loop {
        avail = (avail + split.max(1)).min(input.len());
        loop {
            let s = d.step(&input[consumed..avail])?;
            consumed += s.skip;
            payload.extend_from_slice(&input[consumed..consumed + s.data]);
            consumed += s.data;
            if s.done {
                assert!(d.is_done());
                return Ok((payload, Some(consumed)));
            }
            if s == Step::default() {
                break;
            }
        }
        if avail == input.len() {
            return Ok((payload, None));
        }
    }
}

/// Valid request heads: a few methods, origin-form targets, both versions, random fields and
/// each request framing.
pub(super) fn valid_request() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![Just("GET"), Just("POST"), Just("PURGE"), Just("HEAD")],
        "/[a-zA-Z0-9/?=&%._-]{0,30}",
        any::<bool>(),
        proptest::collection::vec(("X-[A-Za-z0-9-]{1,10}", "[ -~]{0,20}"), 0..10),
        prop_oneof![
            Just(""),
            Just("Content-Length: 12\r\n"),
            Just("Transfer-Encoding: chunked\r\n")
        ],
    )
        .prop_map(|(m, target, v10, fields, framing)| {
            let version = if v10 && !framing.starts_with("Transfer") {
                "1.0"
            } else {
                "1.1"
            };
            let mut s = format!("{m} {target} HTTP/{version}\r\nHost: example.com\r\n");
            for (n, v) in fields {
                s.push_str(&format!("{n}: {}\r\n", v.trim()));
            }
            s.push_str(framing);
            s.push_str("\r\n");
            s.into_bytes()
        })
}
