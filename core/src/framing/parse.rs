//! Head parsing (RFC 9112 §2–§6): the line-structure pre-scan, httparse for the tokens, then
//! the validation httparse leaves to us — Host, Content-Length, Transfer-Encoding, Connection,
//! Upgrade, Expect — and the body delimitation that follows from them.

use super::head::{BodyKind, Field, Head, Method, Span, Version};
use crate::headers::{self, TransferEncoding, eq_ic};
use core::mem::MaybeUninit;

/// Why a head was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadError {
    /// 400, with a short reason for logs.
    BadRequest(&'static str),
    /// 405 (CONNECT: we are not a forward proxy).
    MethodNotAllowed,
    /// 414.
    UriTooLong,
    /// 431 (for responses the proxy answers 502).
    HeaderTooLarge,
    /// 501: a transfer coding we do not implement.
    NotImplemented,
    /// 505.
    VersionNotSupported,
}

impl HeadError {
    /// Status the proxy answers a client with (responses map every error to 502 instead).
    pub fn status(&self) -> u16 {
        match self {
            HeadError::BadRequest(_) => 400,
            HeadError::MethodNotAllowed => 405,
            HeadError::UriTooLong => 414,
            HeadError::HeaderTooLarge => 431,
            HeadError::NotImplemented => 501,
            HeadError::VersionNotSupported => 505,
        }
    }
}

/// Size limits for heads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadLimits {
    pub max_request_line: usize,
    pub max_head: usize,
}
/// Maximum number of field lines in a head (more → `HeaderTooLarge`).
pub const MAX_HEADERS: usize = 128;

/// Result of the line-structure pre-scan.
enum Scan {
    Incomplete,
    /// End of the head (after the final CRLFCRLF).
    Complete(usize),
}

/// Validate the line structure of a head (CRLF only, no obs-fold, no whitespace before the first
/// field line) and find its end, enforcing limits even while incomplete. `max_first_line`
/// applies to the start line (its violation is `first_line_err`), `max_head` to the whole head.
fn scan_head(
    buf: &[u8],
    max_first_line: usize,
    first_line_err: HeadError,
    max_head: usize,
) -> Result<Scan, HeadError> {
    let too_large = |n: usize| n > max_head || n > u32::MAX as usize;
    // Out of bytes after `n` of them: wait for more, unless the head is already too large.
    let incomplete = |n: usize| {
        if too_large(n) {
            Err(HeadError::HeaderTooLarge)
        } else {
            Ok(Scan::Incomplete)
        }
    };
    let mut i = 0;
    // RFC 9112 §2.2: ignore empty lines (CRLF) before the start line.
    loop {
        match buf.get(i) {
            None => return incomplete(i),
            Some(b'\r') => match buf.get(i + 1) {
                None => return incomplete(buf.len()),
                Some(b'\n') => i += 2,
                Some(_) => return Err(HeadError::BadRequest("bare CR")),
            },
            Some(b'\n') => return Err(HeadError::BadRequest("bare LF")),
            Some(_) => break,
        }
    }
    let mut first = true;
    loop {
        let start = i;
        if !first {
            match buf.get(i) {
                Some(b' ' | b'\t') => {
                    return Err(HeadError::BadRequest(
                        "obs-fold or whitespace before field line",
                    ));
                }
                Some(b'\r') => match buf.get(i + 1) {
                    Some(b'\n') => {
                        let end = i + 2;
                        return if too_large(end) {
                            Err(HeadError::HeaderTooLarge)
                        } else {
                            Ok(Scan::Complete(end))
                        };
                    }
                    Some(_) => return Err(HeadError::BadRequest("bare CR")),
                    None => {}
                },
                _ => {}
            }
        }
        // Find the end of this line.
        let rest = &buf[i..];
        let pos = memchr::memchr2(b'\r', b'\n', rest);
        let line_len = match pos {
            Some(p) => p,
            None => rest.len(),
        };
        if first && line_len > max_first_line {
            return Err(first_line_err);
        }
        match pos {
            None => return incomplete(buf.len()),
            Some(p) => {
                if rest[p] == b'\n' {
                    return Err(HeadError::BadRequest("bare LF"));
                }
                match rest.get(p + 1) {
                    None => return incomplete(buf.len()),
                    Some(b'\n') => i = start + p + 2,
                    Some(_) => return Err(HeadError::BadRequest("bare CR")),
                }
            }
        }
        if too_large(i) {
            return Err(HeadError::HeaderTooLarge);
        }
        first = false;
    }
}

/// The start line (after leading empty lines) as far as it is present.
fn first_line(buf: &[u8]) -> (&[u8], bool) {
    let mut i = 0;
    while buf[i..].starts_with(b"\r\n") {
        i += 2;
    }
    let rest = &buf[i..];
    match rest.iter().position(|&b| b == b'\r' || b == b'\n') {
        Some(p) => (&rest[..p], true),
        None => (rest, false),
    }
}

/// `HTTP/` DIGIT `.` DIGIT: a well-formed version we do not support → 505, else 400.
fn version_error(buf: &[u8]) -> HeadError {
    let (line, _) = first_line(buf);
    let mut parts = line.split(|&b| b == b' ');
    let (Some(m), Some(t), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return HeadError::BadRequest("invalid request line");
    };
    if m.is_empty() || t.is_empty() {
        return HeadError::BadRequest("invalid request line");
    }
    match version {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            HeadError::VersionNotSupported
        }
        _ => HeadError::BadRequest("invalid HTTP version"),
    }
}

fn map_httparse(e: httparse::Error, buf: &[u8]) -> HeadError {
    match e {
        httparse::Error::HeaderName => HeadError::BadRequest("invalid field name"),
        httparse::Error::HeaderValue => HeadError::BadRequest("invalid field value"),
        httparse::Error::NewLine => HeadError::BadRequest("invalid line ending"),
        httparse::Error::Status => HeadError::BadRequest("invalid status"),
        httparse::Error::Token => HeadError::BadRequest("invalid request line"),
        httparse::Error::TooManyHeaders => HeadError::HeaderTooLarge,
        httparse::Error::Version => version_error(buf),
    }
}

/// Offset of `part` (a sub-slice of `buf`) as a span.
fn span_in(buf: &[u8], part: &[u8]) -> Result<Span, HeadError> {
    let base = buf.as_ptr() as usize;
    let start = (part.as_ptr() as usize).wrapping_sub(base);
    let end = start.wrapping_add(part.len());
    if start > buf.len() || end > buf.len() || end > u32::MAX as usize {
        // Only possible for an empty slice httparse did not anchor in `buf`.
        if part.is_empty() {
            return Ok(Span::default());
        }
        return Err(HeadError::BadRequest("internal span error"));
    }
    Ok(Span {
        start: start as u32,
        end: end as u32,
    })
}

fn method_of(m: &[u8]) -> Method {
    match m {
        b"GET" => Method::Get,
        b"HEAD" => Method::Head,
        b"POST" => Method::Post,
        b"PUT" => Method::Put,
        b"DELETE" => Method::Delete,
        b"CONNECT" => Method::Connect,
        b"OPTIONS" => Method::Options,
        b"TRACE" => Method::Trace,
        b"PATCH" => Method::Patch,
        _ => Method::Other,
    }
}

/// What the field pass found, for the framing decision.
#[derive(Default)]
struct FieldSummary {
    host_count: usize,
    cl_count: usize,
    te: Option<Span>,
    te_count: usize,
    upgrade_count: usize,
}

impl FieldSummary {
    /// Transfer-Encoding and Content-Length counts (RFC 9112 §6.1, §6.3).
    fn check_framing(&self, version: Version) -> Result<(), HeadError> {
        if self.te_count > 0 {
            if version == Version::Http10 {
                return Err(HeadError::BadRequest("Transfer-Encoding in HTTP/1.0"));
            }
            if self.te_count > 1 {
                return Err(HeadError::BadRequest("more than one Transfer-Encoding"));
            }
            if self.cl_count > 0 {
                return Err(HeadError::BadRequest(
                    "Transfer-Encoding with Content-Length",
                ));
            }
        }
        if self.cl_count > 1 {
            return Err(HeadError::BadRequest("duplicate Content-Length"));
        }
        Ok(())
    }

    fn check_upgrade(&self) -> Result<(), HeadError> {
        if self.upgrade_count > 1 {
            return Err(HeadError::BadRequest("more than one Upgrade"));
        }
        Ok(())
    }

    /// Whether the (single, checked) Transfer-Encoding says chunked.
    fn chunked(&self, buf: &[u8]) -> Result<bool, HeadError> {
        match self.te {
            None => Ok(false),
            Some(te) => match headers::parse_transfer_encoding(te.of(buf)) {
                TransferEncoding::Chunked => Ok(true),
                TransferEncoding::Unsupported => Err(HeadError::NotImplemented),
                TransferEncoding::Invalid => {
                    Err(HeadError::BadRequest("invalid Transfer-Encoding"))
                }
            },
        }
    }
}

/// Room for httparse's field slots, left uninitialised: `[EMPTY_HEADER; MAX_HEADERS]` would
/// write 4 KiB per head (measured: ~1 % of the proxy's CPU on 100-byte requests), and httparse
/// only hands back the slots it filled.
type FieldSlots<'b> = [MaybeUninit<httparse::Header<'b>>; MAX_HEADERS];

fn field_slots<'b>() -> FieldSlots<'b> {
    [const { MaybeUninit::uninit() }; MAX_HEADERS]
}

/// What the two head parsers share of `httparse::Request` and `httparse::Response`.
trait StartLine<'h, 'b> {
    /// Limit on the start line, and the error for exceeding it.
    fn first_line_limit(limits: &HeadLimits) -> (usize, HeadError);
    /// Whether an invalid version in a start line that is not complete yet is only "incomplete".
    const PARTIAL_VERSION_OK: bool;
    fn parse(
        &mut self,
        buf: &'b [u8],
        slots: &'h mut [MaybeUninit<httparse::Header<'b>>],
    ) -> httparse::Result<usize>;
    fn version(&self) -> Option<u8>;
}

/// `StartLine` for `httparse::$ty`: start-line limit `limits.$max` (exceeding it is `$err`).
macro_rules! start_line {
    ($($ty:ident: $max:ident, $err:expr, partial_version_ok: $ok:expr, $with_slots:ident;)*) => {$(
        impl<'h, 'b> StartLine<'h, 'b> for httparse::$ty<'h, 'b> {
            fn first_line_limit(limits: &HeadLimits) -> (usize, HeadError) {
                (limits.$max, $err)
            }
            const PARTIAL_VERSION_OK: bool = $ok;
            fn parse(
                &mut self,
                buf: &'b [u8],
                slots: &'h mut [MaybeUninit<httparse::Header<'b>>],
            ) -> httparse::Result<usize> {
                httparse::ParserConfig::default().$with_slots(self, buf, slots)
            }
            fn version(&self) -> Option<u8> {
                self.version
            }
        }
    )*};
}

start_line! {
    Request: max_request_line, HeadError::UriTooLong, partial_version_ok: true,
        parse_request_with_uninit_headers;
    Response: max_head, HeadError::HeaderTooLarge, partial_version_ok: false,
        parse_response_with_uninit_headers;
}

impl Head {
    /// The front both head parsers share: reset, check the line structure, run httparse (`p`)
    /// over the head, then set `len` and `version`. `Ok(false)`: incomplete.
    fn parse_start<'h, 'b, P: StartLine<'h, 'b>>(
        &mut self,
        p: &mut P,
        buf: &'b [u8],
        slots: &'h mut [MaybeUninit<httparse::Header<'b>>],
        limits: &HeadLimits,
    ) -> Result<bool, HeadError> {
        self.reset();
        let (max_first_line, first_line_err) = P::first_line_limit(limits);
        let end = match scan_head(buf, max_first_line, first_line_err, limits.max_head)? {
            Scan::Incomplete => {
                // Surface errors already visible in the partial head (garbage, too many fields).
                return match p.parse(buf, slots) {
                    Ok(_) => Ok(false),
                    Err(httparse::Error::Version)
                        if P::PARTIAL_VERSION_OK && !first_line(buf).1 =>
                    {
                        Ok(false)
                    }
                    Err(e) => Err(map_httparse(e, buf)),
                };
            }
            Scan::Complete(end) => end,
        };
        let head = &buf[..end];
        match p.parse(head, slots) {
            Ok(httparse::Status::Complete(n)) if n == end => {}
            Ok(_) => return Err(HeadError::BadRequest("malformed head")),
            Err(e) => return Err(map_httparse(e, head)),
        }
        self.len = end;
        self.version = match p.version() {
            Some(0) => Version::Http10,
            Some(1) => Version::Http11,
            _ => return Err(HeadError::VersionNotSupported),
        };
        Ok(true)
    }

    /// Parse a request head from the start of `buf`. `Ok(false)`: incomplete, call again with
    /// more bytes. `Ok(true)`: complete (`len` bytes). Errors map to the client status via
    /// [`HeadError::status`].
    pub fn parse_request(&mut self, buf: &[u8], limits: &HeadLimits) -> Result<bool, HeadError> {
        let mut slots = field_slots();
        let mut req = httparse::Request::new(&mut []);
        if !self.parse_start(&mut req, buf, &mut slots, limits)? {
            return Ok(false);
        }
        let method = req.method.unwrap_or("");
        self.method_name = span_in(buf, method.as_bytes())?;
        self.method = method_of(method.as_bytes());
        let target = req.path.unwrap_or("").as_bytes();
        self.target = span_in(buf, target)?;
        if self.method == Method::Connect {
            return Err(HeadError::MethodNotAllowed);
        }
        if !target.iter().all(|&b| (0x21..0x7f).contains(&b)) {
            return Err(HeadError::BadRequest("invalid byte in request target"));
        }
        let origin_form = target.first() == Some(&b'/');
        let asterisk = target == b"*" && self.method == Method::Options;
        if !origin_form && !asterisk {
            return Err(HeadError::BadRequest("request target not in origin-form"));
        }
        let sum = self.collect_fields(buf, req.headers, true)?;

        // Host (RFC 9112 §3.2).
        if sum.host_count > 1 {
            return Err(HeadError::BadRequest("more than one Host"));
        }
        if sum.host_count == 0 && self.version == Version::Http11 {
            return Err(HeadError::BadRequest("missing Host"));
        }
        if let Some(h) = self.host
            && !headers::is_valid_host(h.of(buf))
        {
            return Err(HeadError::BadRequest("invalid Host"));
        }
        sum.check_upgrade()?;
        sum.check_framing(self.version)?;
        self.body = if sum.chunked(buf)? {
            BodyKind::Chunked
        } else if let Some(n) = self.content_length {
            BodyKind::Length(n)
        } else {
            BodyKind::Empty
        };
        Ok(true)
    }

    /// Parse a response head (to a request with `request_method`). Any error means 502 for the
    /// client and closing the upstream connection.
    pub fn parse_response(
        &mut self,
        buf: &[u8],
        request_method: Method,
        limits: &HeadLimits,
    ) -> Result<bool, HeadError> {
        let mut slots = field_slots();
        let mut res = httparse::Response::new(&mut []);
        if !self.parse_start(&mut res, buf, &mut slots, limits)? {
            return Ok(false);
        }
        let status = res.code.unwrap_or(0);
        if !(100..=599).contains(&status) {
            return Err(HeadError::BadRequest("invalid status code"));
        }
        self.status = status;
        self.reason = span_in(buf, res.reason.unwrap_or("").as_bytes())?;
        let sum = self.collect_fields(buf, res.headers, false)?;
        sum.check_framing(self.version)?;
        sum.check_upgrade()?;
        // RFC 9112 §6.3, in order.
        let no_body = request_method == Method::Head
            || (100..200).contains(&status)
            || status == 204
            || status == 304
            || (request_method == Method::Connect && (200..300).contains(&status));
        // A response that has no body by definition may still describe, in its
        // Transfer-Encoding, the codings a GET would get (RFC 9112 §6.1: e.g. `gzip, chunked` on a
        // HEAD response or a 304): a coding we don't implement only matters when it frames a
        // body. A malformed field is refused all the same.
        let chunked = match sum.chunked(buf) {
            Err(HeadError::NotImplemented) if no_body => false,
            other => other?,
        };
        self.body = if no_body {
            BodyKind::Empty
        } else if chunked {
            BodyKind::Chunked
        } else if let Some(n) = self.content_length {
            BodyKind::Length(n)
        } else {
            BodyKind::UntilClose
        };
        Ok(true)
    }

    /// Fill `fields` (with `strip` flags), `host`, `connection`, `upgrade`, `expect_continue`,
    /// `keep_alive_timeout`, `te_trailers` and `content_length`.
    fn collect_fields(
        &mut self,
        buf: &[u8],
        parsed: &[httparse::Header<'_>],
        request: bool,
    ) -> Result<FieldSummary, HeadError> {
        let mut sum = FieldSummary::default();
        let mut upgrade = None;
        for h in parsed {
            let name = h.name.as_bytes();
            let value = h.value;
            // httparse refuses a name that is not a token and a value with a byte outside
            // `field-value` (its byte tables match `headers::is_tchar` and
            // `is_field_value_byte`: test `field_bytes_table`), so checking them again here
            // would only cost time.
            debug_assert!(headers::is_token(name) && headers::is_field_value(value));
            let field = Field {
                name: span_in(buf, name)?,
                value: span_in(buf, value)?,
                strip: headers::is_hop_by_hop(name),
            };
            match name.len() {
                4 if eq_ic(name, b"host") => {
                    sum.host_count += 1;
                    self.host = Some(field.value);
                }
                14 if eq_ic(name, b"content-length") => {
                    sum.cl_count += 1;
                    match headers::parse_content_length(value) {
                        Some(n) => self.content_length = Some(n),
                        None => return Err(HeadError::BadRequest("invalid Content-Length")),
                    }
                }
                17 if eq_ic(name, b"transfer-encoding") => {
                    sum.te_count += 1;
                    sum.te = Some(field.value);
                }
                10 if eq_ic(name, b"connection") => match headers::parse_connection(value) {
                    Ok(t) => {
                        self.connection.close |= t.close;
                        self.connection.keep_alive |= t.keep_alive;
                        self.connection.upgrade |= t.upgrade;
                    }
                    Err(()) => return Err(HeadError::BadRequest("invalid Connection")),
                },
                7 if eq_ic(name, b"upgrade") => {
                    sum.upgrade_count += 1;
                    upgrade = Some(field.value);
                }
                6 if request
                    && eq_ic(name, b"expect")
                    && self.version == Version::Http11
                    && eq_ic(value, b"100-continue") =>
                {
                    self.expect_continue = true;
                }
                10 if !request && eq_ic(name, b"keep-alive") => {
                    if let Some(t) = headers::keep_alive_timeout(value) {
                        self.keep_alive_timeout = Some(t);
                    }
                }
                2 if request && eq_ic(name, b"te") => {
                    self.te_trailers |= headers::te_has_trailers(value);
                }
                _ => {}
            }
            self.fields.push(field);
        }
        // RFC 9110 §7.6.1: strip every field named by a Connection option.
        for i in 0..self.fields.len() {
            let f = self.fields[i];
            if !eq_ic(f.name.of(buf), b"connection") {
                continue;
            }
            for opt in headers::connection_names(f.value.of(buf)) {
                if headers::is_protected_from_connection(opt) {
                    continue;
                }
                for g in self.fields.iter_mut() {
                    if eq_ic(g.name.of(buf), opt) {
                        g.strip = true;
                    }
                }
            }
        }
        // RFC 9110 §7.8: Upgrade only counts in HTTP/1.1 with Connection: upgrade.
        if self.version == Version::Http11 && self.connection.upgrade {
            self.upgrade = upgrade;
        }
        Ok(sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::test_util::{LIMITS, req, res, valid_request};
    use proptest::prelude::*;

    fn bad_req(raw: &[u8]) -> HeadError {
        match req(raw) {
            Ok(h) => panic!("accepted {:?}: {h:?}", String::from_utf8_lossy(raw)),
            Err(e) => e,
        }
    }

    fn names<'a>(h: &Head, buf: &'a [u8]) -> Vec<(&'a [u8], bool)> {
        h.fields.iter().map(|f| (f.name.of(buf), f.strip)).collect()
    }
    /// Every byte inside a field name and inside a field value, in requests and responses:
    /// accepted exactly where RFC 9110 allows it (`is_tchar`, `is_field_value_byte`). The
    /// parser relies on httparse for both checks (`collect_fields`), so this pins httparse's
    /// byte tables to ours.
    #[test]
    fn field_bytes_table() {
        for b in 0..=255u8 {
            if b == b'\r' || b == b'\n' {
                continue; // line structure: scan_head's table (request_syntax_table)
            }
            // The field line `line` in a request and in a response: accepted (as `name` and
            // `value`) exactly when `ok`.
            let check = |what: &str, line: &[u8], ok: bool, name: &[u8], value: &[u8]| {
                let rq = [&b"GET / HTTP/1.1\r\nHost: a\r\n"[..], line, b"\r\n\r\n"].concat();
                let rs = [
                    &b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"[..],
                    line,
                    b"\r\n\r\n",
                ]
                .concat();
                let last = |h: Head, buf: &[u8]| {
                    let f = *h.fields.last().expect("a field");
                    (f.name.of(buf).to_vec(), f.value.of(buf).to_vec())
                };
                for (side, got) in [
                    ("request", req(&rq).map(|h| last(h, &rq))),
                    ("response", res(&rs, Method::Get).map(|h| last(h, &rs))),
                ] {
                    match got {
                        Ok(f) => assert!(
                            ok && f == (name.to_vec(), value.to_vec()),
                            "{side} {what} {b:#04x}: {f:?}"
                        ),
                        Err(e) => assert!(!ok, "{side} {what} {b:#04x}: {e:?}"),
                    }
                }
            };
            if b != b':' {
                let name = [b'X', b, b'Y'];
                check(
                    "name",
                    &[&name[..], b": 1"].concat(),
                    headers::is_tchar(b),
                    &name,
                    b"1",
                );
            }
            let value = [b'a', b, b'b'];
            let line = [&b"X: "[..], &value].concat();
            check(
                "value",
                &line,
                headers::is_field_value_byte(b),
                b"X",
                &value,
            );
        }
    }

    // ---- Request framing: §E 16, 17, 18 ----

    #[test]
    fn request_framing_table() {
        use BodyKind::*;
        let ok: &[(&[u8], BodyKind)] = &[
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", Empty),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
                Length(5),
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
                Length(0),
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length:  007 \r\n\r\n",
                Length(7),
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                Chunked,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n",
                Chunked,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:  chunked \r\n\r\n",
                Chunked,
            ),
            (
                b"POST / HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc",
                Length(3),
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551615\r\n\r\n",
                Length(u64::MAX),
            ),
        ];
        for (raw, want) in ok {
            let h =
                req(raw).unwrap_or_else(|e| panic!("{e:?} for {:?}", String::from_utf8_lossy(raw)));
            assert_eq!(h.body, *want, "{:?}", String::from_utf8_lossy(raw));
        }
        let br = |s| HeadError::BadRequest(s);
        let bad: &[(&[u8], HeadError)] = &[
            // 16: TE + CL
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
                br("Transfer-Encoding with Content-Length"),
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
                br("Transfer-Encoding with Content-Length"),
            ),
            // 17: TE obfuscations
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
                br("invalid Transfer-Encoding"),
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\x0b\r\n\r\n",
                br("invalid field value"),
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\x0bchunked\r\n\r\n",
                br("invalid field value"),
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n",
                br("invalid Transfer-Encoding"),
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
                br("invalid Transfer-Encoding"),
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
                br("invalid Transfer-Encoding"),
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                br("more than one Transfer-Encoding"),
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                br("invalid Transfer-Encoding"),
            ),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", br("invalid Transfer-Encoding")),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n", br("invalid Transfer-Encoding")),
            // Documented choice: well-formed but unsupported coding list → 501.
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                HeadError::NotImplemented,
            ),
            (
                b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                br("Transfer-Encoding in HTTP/1.0"),
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
                br("invalid field name"),
            ),
            (
                b"POST / HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: a\r\n\r\n",
                br("obs-fold or whitespace before field line"),
            ),
            // 18: Content-Length
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
                br("duplicate Content-Length"),
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                br("duplicate Content-Length"),
            ),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", br("invalid Content-Length")),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", br("invalid Content-Length")),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5.0\r\n\r\n", br("invalid Content-Length")),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:  5 5\r\n\r\n", br("invalid Content-Length")),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n", br("invalid Content-Length")),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1,1\r\n\r\n", br("invalid Content-Length")),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", br("invalid Content-Length")),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000,1000\r\n\r\n", br("invalid Content-Length")),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n", br("invalid Content-Length")),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n",
                br("invalid Content-Length"),
            ),
        ];
        for (raw, want) in bad {
            assert_eq!(bad_req(raw), *want, "{:?}", String::from_utf8_lossy(raw));
        }
    }

    // ---- Header syntax: §F 24 ----

    #[test]
    fn request_syntax_table() {
        let br = |s| HeadError::BadRequest(s);
        let bad: &[(&[u8], HeadError)] = &[
            (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", br("invalid field name")),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n z\r\n\r\n", br("obs-fold or whitespace before field line")),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n\tz\r\n\r\n", br("obs-fold or whitespace before field line")),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", br("bare CR")),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", br("more than one Host")),
            (b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", br("more than one Host")),
            (b"GET / HTTP/1.1\r\n\r\n", br("missing Host")),
            (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", br("invalid request line")),
            (b"GET /  HTTP/1.1\r\nHost: a\r\n\r\n", br("invalid request line")),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX\x00: 1\r\n\r\n", br("invalid field name")),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\x00\r\n\r\n", br("invalid field value")),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\x7f\r\n\r\n", br("invalid field value")),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\x01\r\n\r\n", br("invalid field value")),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX(y): 1\r\n\r\n", br("invalid field name")),
            (b"GET / HTTP/1.1\r\nHost: a\r\n: 1\r\n\r\n", br("invalid field name")),
            (b"GET / HTTP/1.1\nHost: a\r\n\r\n", br("bare LF")),
            (b"GET / HTTP/1.1\r\nHost: a\n\r\n", br("bare LF")),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\n", br("bare LF")),
            (b"GET / HTTP/1.1\r\nHost: a\n\n", br("bare LF")),
            (b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", br("bare LF")),
            (b"GET / HTTP/1.1\rHost: a\r\n\r\n", br("bare CR")),
            (b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", br("obs-fold or whitespace before field line")),
            (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", HeadError::VersionNotSupported),
            (b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", HeadError::VersionNotSupported),
            (b"GET / HTTP/0.9\r\nHost: a\r\n\r\n", HeadError::VersionNotSupported),
            (b"GET / HTTX/1.1\r\nHost: a\r\n\r\n", br("invalid HTTP version")),
            (b"GET / http/1.1\r\nHost: a\r\n\r\n", br("invalid HTTP version")),
            (b"GET / HTTP/1.1x\r\nHost: a\r\n\r\n", br("invalid line ending")),
            (b"GET /\r\nHost: a\r\n\r\n", br("invalid request line")),
            (b"GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", br("invalid request line")),
            (b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", br("invalid request line")),
            // Targets: origin-form only (absolute-form rejected, documented), `*` for OPTIONS.
            (b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n", br("request target not in origin-form")),
            (b"GET a/b HTTP/1.1\r\nHost: a\r\n\r\n", br("request target not in origin-form")),
            (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", br("request target not in origin-form")),
            (b"GET /\x80 HTTP/1.1\r\nHost: a\r\n\r\n", br("invalid request line")),
            (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", HeadError::MethodNotAllowed),
            // Host values (empty rejected, documented).
            (b"GET / HTTP/1.1\r\nHost: \r\n\r\n", br("invalid Host")),
            (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", br("invalid Host")),
            (b"GET / HTTP/1.1\r\nHost: a@b\r\n\r\n", br("invalid Host")),
            (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", br("invalid Host")),
            (b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n", br("more than one Host")),
            (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: a b\r\n\r\n", br("invalid Connection")),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: a\r\nUpgrade: b\r\n\r\n",
                br("more than one Upgrade"),
            ),
        ];
        for (raw, want) in bad {
            assert_eq!(bad_req(raw), *want, "{:?}", String::from_utf8_lossy(raw));
        }
        // Status mapping.
        assert_eq!(HeadError::BadRequest("x").status(), 400);
        assert_eq!(HeadError::VersionNotSupported.status(), 505);
    }

    #[test]
    fn request_valid_table() {
        let ok: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHOST: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: example.com:8080\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /a?b=c&d=%20#x HTTP/1.1\r\nHost: a\r\nX: \r\nY:z\r\nZ: a \xff b\r\n\r\n",
            b"PURGE /x HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nExpect: something-else\r\n\r\n",
        ];
        for raw in ok {
            req(raw).unwrap_or_else(|e| panic!("{e:?} for {:?}", String::from_utf8_lossy(raw)));
        }
        let raw = b"\r\nPURGE /x?y HTTP/1.1\r\nHost: a:1\r\nX: \r\n\r\nbody";
        let h = req(raw).unwrap();
        assert_eq!(h.len, raw.len() - 4);
        assert_eq!(h.method, Method::Other);
        assert_eq!(h.method_name.of(raw), b"PURGE");
        assert_eq!(h.target.of(raw), b"/x?y");
        assert_eq!(h.host.unwrap().of(raw), b"a:1");
        assert_eq!(h.fields[1].value.of(raw), b"");
        assert_eq!(h.version, Version::Http11);
        assert!(h.persistent());
    }

    #[test]
    fn request_flags() {
        // Expect: 100-continue (HTTP/1.1 only; other values ignored; always stripped).
        let raw =
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 5\r\n\r\n";
        let h = req(raw).unwrap();
        assert!(h.expect_continue);
        assert!(h.fields[1].strip);
        let h =
            req(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n").unwrap();
        assert!(!h.expect_continue);
        let h = req(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: foo\r\n\r\n").unwrap();
        assert!(!h.expect_continue);
        // TE: trailers
        let h = req(b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n").unwrap();
        assert!(h.te_trailers);
        // Upgrade only with HTTP/1.1 + Connection: upgrade.
        let raw =
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
        let h = req(raw).unwrap();
        assert_eq!(h.upgrade.unwrap().of(raw), b"websocket");
        assert!(h.connection.upgrade);
        let h = req(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n").unwrap();
        assert_eq!(h.upgrade, None);
        let h =
            req(b"GET /ws HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n").unwrap();
        assert_eq!(h.upgrade, None);
        // Method table.
        for (m, want, idem) in [
            (&b"GET"[..], Method::Get, true),
            (b"HEAD", Method::Head, true),
            (b"POST", Method::Post, false),
            (b"PUT", Method::Put, true),
            (b"DELETE", Method::Delete, true),
            (b"OPTIONS", Method::Options, true),
            (b"TRACE", Method::Trace, true),
            (b"PATCH", Method::Patch, false),
            (b"get", Method::Other, false),
        ] {
            let mut raw = m.to_vec();
            raw.extend_from_slice(b" / HTTP/1.1\r\nHost: a\r\n\r\n");
            let h = req(&raw).unwrap();
            assert_eq!(h.method, want);
            assert_eq!(h.method.is_idempotent(), idem);
        }
    }
    #[test]
    fn hop_by_hop_stripping() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret, Host\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nx-secret: 2\r\nTrailer: x\r\nProxy-Authorization: b\r\nX-Keep: 1\r\n\r\n";
        let h = req(raw).unwrap();
        assert_eq!(
            names(&h, raw),
            vec![
                (&b"Host"[..], false),
                (b"Connection", true),
                (b"X-Secret", true),
                (b"Keep-Alive", true),
                (b"Proxy-Connection", true),
                (b"TE", true),
                (b"x-secret", true),
                (b"Trailer", true),
                (b"Proxy-Authorization", true),
                (b"X-Keep", false),
            ]
        );
    }

    // ---- Limits: §F 25 ----

    #[test]
    fn limits_table() {
        let limits = HeadLimits {
            max_request_line: 32,
            max_head: 128,
        };
        let mut h = Head::new();
        // Request line too long, complete or not.
        let long = b"GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(h.parse_request(long, &limits), Err(HeadError::UriTooLong));
        assert_eq!(
            h.parse_request(&long[..40], &limits),
            Err(HeadError::UriTooLong)
        );
        assert_eq!(h.parse_request(&long[..20], &limits), Ok(false));
        // Exactly at the limit is fine.
        let exact = b"GET /aaaaaaaaaaaaaaaaaa HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(exact.iter().position(|&b| b == b'\r'), Some(32));
        assert_eq!(h.parse_request(exact, &limits), Ok(true));
        // Head too large, complete or not.
        let mut big = b"GET / HTTP/1.1\r\nHost: a\r\nCookie: ".to_vec();
        big.extend(std::iter::repeat_n(b'x', 200));
        assert_eq!(
            h.parse_request(&big, &limits),
            Err(HeadError::HeaderTooLarge)
        );
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            h.parse_request(&big, &limits),
            Err(HeadError::HeaderTooLarge)
        );
        // 70 KiB Cookie with default limits → 431.
        let mut big = b"GET / HTTP/1.1\r\nHost: a\r\nCookie: ".to_vec();
        big.extend(std::iter::repeat_n(b'x', 70 * 1024));
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            h.parse_request(&big, &LIMITS),
            Err(HeadError::HeaderTooLarge)
        );
        assert_eq!(HeadError::HeaderTooLarge.status(), 431);
        // 128 fields OK, 129 → 431 (complete or not).
        let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..127 {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        let mut ok = many.clone();
        ok.extend_from_slice(b"\r\n");
        assert_eq!(h.parse_request(&ok, &LIMITS), Ok(true));
        assert_eq!(h.fields.len(), 128);
        many.extend_from_slice(b"X-last: v\r\n");
        assert_eq!(
            h.parse_request(&many, &LIMITS),
            Err(HeadError::HeaderTooLarge)
        );
        many.extend_from_slice(b"\r\n");
        assert_eq!(
            h.parse_request(&many, &LIMITS),
            Err(HeadError::HeaderTooLarge)
        );
    }

    #[test]
    fn incomplete_and_early_errors() {
        let mut h = Head::new();
        for raw in [
            &b""[..],
            b"\r",
            b"\r\n",
            b"GET",
            b"GET / HTTP/1.1\r",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r",
        ] {
            assert_eq!(h.parse_request(raw, &LIMITS), Ok(false), "{raw:?}");
        }
        // Garbage is reported before the head completes.
        assert!(h.parse_request(b"G T / HTTP/1.1\r\n", &LIMITS).is_err());
        assert_eq!(
            h.parse_request(b"GET / HTTP/2.0\r\n", &LIMITS),
            Err(HeadError::VersionNotSupported)
        );
        assert_eq!(h.parse_request(b"GET / HTTP/2.", &LIMITS), Ok(false));
        assert!(
            h.parse_request(b"GET / HTTP/1.1\r\nX\x00", &LIMITS)
                .is_err()
        );
    }
    // ---- Responses ----

    #[test]
    fn response_table() {
        use BodyKind::*;
        let ok: &[(&[u8], Method, BodyKind)] = &[
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", Method::Get, Length(5)),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", Method::Get, Chunked),
            (b"HTTP/1.1 200 OK\r\n\r\n", Method::Get, UntilClose),
            (b"HTTP/1.0 200 OK\r\n\r\n", Method::Get, UntilClose),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", Method::Head, Empty),
            (b"HTTP/1.1 200 OK\r\n\r\n", Method::Head, Empty),
            (b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n", Method::Get, Empty),
            (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", Method::Get, Empty),
            (b"HTTP/1.1 100 Continue\r\n\r\n", Method::Post, Empty),
            (b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", Method::Get, Empty),
            (
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
                Method::Get,
                Empty,
            ),
            (b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n", Method::Get, Length(0)),
            (b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n", Method::Get, Length(2)),
        ];
        for (raw, m, want) in ok {
            let h = res(raw, *m)
                .unwrap_or_else(|e| panic!("{e:?} for {:?}", String::from_utf8_lossy(raw)));
            assert_eq!(h.body, *want, "{:?}", String::from_utf8_lossy(raw));
        }
        let h = res(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
            Method::Head,
        )
        .unwrap();
        assert_eq!(h.content_length, Some(1000));
        let raw = b"HTTP/1.1 404 Not Found\r\n\r\n";
        let h = res(raw, Method::Get).unwrap();
        assert_eq!((h.status, h.reason.of(raw)), (404, &b"Not Found"[..]));

        let mut big = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
        big.extend(std::iter::repeat_n(b'x', 70 * 1024));
        big.extend_from_slice(b"\r\n\r\n");
        let bad: &[&[u8]] = &[
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX : y\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: y\r\n z\r\n\r\n",
            b"HTTP/1.1 200 OK\nX: y\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\x00\r\n\r\n",
            b"HTTP/2.0 200 OK\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 099 OK\r\n\r\n",
            b"HTTP/1.1 600 OK\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: xchunked\r\n\r\n",
            &big,
        ];
        for raw in bad {
            let r = Head::new().parse_response(raw, Method::Get, &LIMITS);
            assert!(
                r.is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(&raw[..raw.len().min(80)])
            );
        }
    }

    #[test]
    fn response_keep_alive_and_connection() {
        let raw = b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5, max=100\r\nConnection: X-Int\r\nX-Int: 1\r\nContent-Length: 0\r\n\r\n";
        let h = res(raw, Method::Get).unwrap();
        assert_eq!(h.keep_alive_timeout, Some(5));
        assert!(h.persistent());
        assert_eq!(
            names(&h, raw),
            vec![
                (&b"Keep-Alive"[..], true),
                (b"Connection", true),
                (b"X-Int", true),
                (b"Content-Length", true)
            ]
        );
        let h = res(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", Method::Get).unwrap();
        assert!(!h.persistent());
        let h = res(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", Method::Get).unwrap();
        assert!(!h.persistent());
        let h = res(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
            Method::Get,
        )
        .unwrap();
        assert!(h.persistent());
        let raw = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
        let h = res(raw, Method::Get).unwrap();
        assert_eq!(h.upgrade.unwrap().of(raw), b"websocket");
    }

    #[test]
    fn response_limits() {
        let limits = HeadLimits {
            max_request_line: 16,
            max_head: 64,
        };
        let mut h = Head::new();
        // max_request_line does not apply to responses.
        let raw = b"HTTP/1.1 200 A very long reason phrase indeed\r\n\r\n";
        assert_eq!(h.parse_response(raw, Method::Get, &limits), Ok(true));
        let mut big = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'x', 60));
        assert_eq!(
            h.parse_response(&big, Method::Get, &limits),
            Err(HeadError::HeaderTooLarge)
        );
        assert_eq!(
            h.parse_response(&big[..30], Method::Get, &limits),
            Ok(false)
        );
    }

    proptest! {
        #[test]
        fn prop_request_prefixes(raw in valid_request()) {
            let mut full = Head::new();
            prop_assert_eq!(full.parse_request(&raw, &LIMITS), Ok(true));
            prop_assert_eq!(full.len, raw.len());
            let mut h = Head::new();
            for cut in 0..raw.len() {
                prop_assert_eq!(h.parse_request(&raw[..cut], &LIMITS), Ok(false));
            }
            // Trailing bytes (a body, the next request) do not change the result.
            let mut more = raw.clone();
            more.extend_from_slice(b"GET / HTTP/1.1\r\n");
            prop_assert_eq!(h.parse_request(&more, &LIMITS), Ok(true));
            prop_assert_eq!(h.len, full.len);
            prop_assert_eq!(&h.fields, &full.fields);
            prop_assert_eq!((h.method, h.method_name, h.target, h.host, h.body, h.version),
                (full.method, full.method_name, full.target, full.host, full.body, full.version));
        }
    }
}
