//! Helpers shared by the fuzz targets in `fuzz_targets/`.

use upkeep_core::framing::{
    BodyKind, ConnectionOptions, Head, HeadError, HeadLimits, Method, Version,
};

/// Limits for the first parse: the engine's defaults (`Limits::default()`).
pub const LIMITS: HeadLimits = HeadLimits {
    max_request_line: 8 * 1024,
    max_head: 16 * 1024,
};

/// Limits for re-parsing what we wrote: the writer adds fields (Host, framing, X-Forwarded-*,
/// Via), so the re-serialised head may be a little larger than the limit the original met.
pub const ROOMY: HeadLimits = HeadLimits {
    max_request_line: 1 << 20,
    max_head: 1 << 20,
};

/// Everything a [`Head`] says, as owned bytes instead of spans (spans differ between the
/// original buffer and the re-serialised one; the bytes they point at must not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeadView {
    pub len: usize,
    pub version: Version,
    pub method: Method,
    pub method_name: Vec<u8>,
    pub target: Vec<u8>,
    pub status: u16,
    pub reason: Vec<u8>,
    /// (name, value, strip), in order.
    pub fields: Vec<(Vec<u8>, Vec<u8>, bool)>,
    pub host: Option<Vec<u8>>,
    pub body: BodyKind,
    pub connection: ConnectionOptions,
    pub upgrade: Option<Vec<u8>>,
    pub expect_continue: bool,
    pub keep_alive_timeout: Option<u32>,
    pub te_trailers: bool,
    pub content_length: Option<u64>,
    pub persistent: bool,
}

impl HeadView {
    pub fn of(head: &Head, buf: &[u8]) -> HeadView {
        HeadView {
            len: head.len,
            version: head.version,
            method: head.method,
            method_name: head.method_name.of(buf).to_vec(),
            target: head.target.of(buf).to_vec(),
            status: head.status,
            reason: head.reason.of(buf).to_vec(),
            fields: head
                .fields
                .iter()
                .map(|f| (f.name.of(buf).to_vec(), f.value.of(buf).to_vec(), f.strip))
                .collect(),
            host: head.host.map(|h| h.of(buf).to_vec()),
            body: head.body,
            connection: head.connection,
            upgrade: head.upgrade.map(|u| u.of(buf).to_vec()),
            expect_continue: head.expect_continue,
            keep_alive_timeout: head.keep_alive_timeout,
            te_trailers: head.te_trailers,
            content_length: head.content_length,
            persistent: head.persistent(),
        }
    }

    /// The forwarded (end-to-end) fields, in order, without the names in `except`
    /// (ASCII case-insensitive).
    pub fn end_to_end(&self, except: &[&[u8]]) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.fields
            .iter()
            .filter(|(n, _, strip)| !strip && !except.iter().any(|e| n.eq_ignore_ascii_case(e)))
            .map(|(n, v, _)| (n.clone(), v.clone()))
            .collect()
    }

    /// The Via value the proxy writes with pseudonym `upkeep`: the received Via elements, then
    /// our own, named with the version we received.
    pub fn expected_via(&self) -> Vec<u8> {
        let mut want = self.joined(b"via");
        if !want.is_empty() {
            want.extend_from_slice(b", ");
        }
        want.extend_from_slice(match self.version {
            Version::Http10 => b"1.0 upkeep",
            Version::Http11 => b"1.1 upkeep",
        });
        want
    }

    /// Non-empty values of the non-stripped fields called `name`, joined with ", " (what the
    /// writer does for X-Forwarded-For and Via before appending its own element).
    pub fn joined(&self, name: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, v, strip) in &self.fields {
            if *strip || !n.eq_ignore_ascii_case(name) || v.is_empty() {
                continue;
            }
            if !out.is_empty() {
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(v);
        }
        out
    }

    /// The values of every field called `name` (stripped or not).
    pub fn values(&self, name: &[u8]) -> Vec<Vec<u8>> {
        self.fields
            .iter()
            .filter(|(n, _, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v, _)| v.clone())
            .collect()
    }
}

/// A parse outcome, comparable across parses of the same bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Incomplete,
    Head(HeadView),
    Error(HeadError),
}

/// The statuses a head error may map to: a definite 4xx/5xx decision.
pub fn assert_definite(e: &HeadError) {
    let s = e.status();
    assert!(
        matches!(s, 400 | 405 | 414 | 431 | 501 | 505),
        "head error {e:?} maps to status {s}, not a definite 4xx/5xx decision"
    );
}

/// Up to `max` distinct prefix lengths in `1..len`, spread deterministically (the ends of the
/// head, where the final CRLFCRLF is, are always included).
pub fn prefix_points(len: usize, salt: &[u8], max: usize) -> Vec<usize> {
    let mut pts: Vec<usize> = Vec::new();
    if len <= 1 {
        return pts;
    }
    for back in 1..=4 {
        if len > back {
            pts.push(len - back);
        }
    }
    pts.push(len / 2);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in salt.iter().take(64) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    while pts.len() < max {
        h ^= h >> 29;
        h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        pts.push(1 + (h as usize) % (len - 1));
    }
    pts.sort_unstable();
    pts.dedup();
    pts.retain(|&p| p >= 1 && p < len);
    pts
}
