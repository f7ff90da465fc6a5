//! Head writing: the request head we send upstream and the response head we send the client
//! (always HTTP/1.1, hop-by-hop fields dropped, framing regenerated from [`OutBody`], our
//! X-Forwarded-For / X-Forwarded-Proto / Via appended), interim and error responses, chunk
//! size lines.

use super::head::{Head, Version};
use crate::headers::eq_ic;
use bytes::BytesMut;
use core::net::IpAddr;

/// Added headers for a forwarded request.
#[derive(Clone, Copy, Debug)]
pub struct Forwarding<'a> {
    /// The client's address (appended to X-Forwarded-For).
    pub client_ip: Option<IpAddr>,
    /// Whether to append X-Forwarded-For.
    pub x_forwarded_for: bool,
    /// X-Forwarded-Proto value, if set.
    pub proto: Option<&'static str>,
    /// Via pseudonym, if set.
    pub via: Option<&'a str>,
    /// Host to send when the request has none (an HTTP/1.0 request): HTTP/1.1 requires one.
    /// nginx sends the upstream group's name (`$proxy_host`) the same way.
    pub default_host: &'a str,
    /// Send `TE: trailers` (with its `Connection: te`): the client announced it accepts
    /// trailers and they are forwarded (gRPC servers insist on it).
    pub te_trailers: bool,
}

/// Framing of a message we write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutBody {
    /// No body and no framing field.
    None,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Delimited by closing the connection: no framing field.
    Close,
}

/// `n` in base `RADIX` (10 or 16, lower-case digits).
fn put_num<const RADIX: u64>(n: u64, out: &mut BytesMut) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    let mut n = n;
    loop {
        i -= 1;
        tmp[i] = b"0123456789abcdef"[(n % RADIX) as usize];
        n /= RADIX;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

fn put_u64(n: u64, out: &mut BytesMut) {
    put_num::<10>(n, out);
}

fn put_field(name: &[u8], value: &[u8], out: &mut BytesMut) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(CRLF);
}

/// The received fields that are forwarded verbatim: not `strip`, and not `replaced` (fields we
/// write ourselves).
fn put_fields(head: &Head, buf: &[u8], replaced: impl Fn(&[u8]) -> bool, out: &mut BytesMut) {
    for f in &head.fields {
        if f.strip {
            continue;
        }
        let name = f.name.of(buf);
        if replaced(name) {
            continue;
        }
        put_field(name, f.value.of(buf), out);
    }
}

fn put_ip(ip: IpAddr, out: &mut BytesMut) {
    match ip {
        // Dotted decimal by hand: through `fmt` it cost ~1 % of the proxy's CPU on 100-byte
        // requests (every request carries X-Forwarded-For).
        // Built on the stack and copied once: a copy per octet showed up as calls to memcpy.
        IpAddr::V4(v4) => {
            let mut text = [0u8; 15];
            let mut n = 0;
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[n] = b'.';
                    n += 1;
                }
                if o >= 100 {
                    text[n] = b'0' + o / 100;
                    n += 1;
                }
                if o >= 10 {
                    text[n] = b'0' + o / 10 % 10;
                    n += 1;
                }
                text[n] = b'0' + o % 10;
                n += 1;
            }
            out.extend_from_slice(&text[..n]);
        }
        IpAddr::V6(_) => {
            use core::fmt::Write;
            // BytesMut's fmt::Write never fails (it grows) and IpAddr's Display does not
            // allocate. (Its text form, `::` compression included, is not worth redoing.)
            let _ = write!(out, "{ip}");
        }
    }
}

fn put_framing(body: OutBody, out: &mut BytesMut) {
    match body {
        OutBody::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            put_u64(n, out);
            out.extend_from_slice(CRLF);
        }
        OutBody::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        OutBody::None | OutBody::Close => {}
    }
}

fn put_upgrade(head: &Head, buf: &[u8], out: &mut BytesMut) {
    out.extend_from_slice(b"Connection: upgrade\r\n");
    if let Some(u) = head.upgrade {
        put_field(b"Upgrade", u.of(buf), out);
    }
}

/// Join every field named `name` (non-empty values, in order) with ", ". Returns whether any
/// value was written.
fn put_joined(head: &Head, buf: &[u8], name: &[u8], out: &mut BytesMut) -> bool {
    let mut any = false;
    for f in &head.fields {
        if f.strip || !eq_ic(f.name.of(buf), name) {
            continue;
        }
        let v = f.value.of(buf);
        if v.is_empty() {
            continue;
        }
        if any {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(v);
        any = true;
    }
    any
}

/// `Name: <received values joined>, ` (no trailing `, ` when there were none): the start of a
/// field that appends our element to the received list (`field` is `name` in lower case).
fn put_list_start(head: &Head, buf: &[u8], name: &[u8], field: &[u8], out: &mut BytesMut) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    if put_joined(head, buf, field, out) {
        out.extend_from_slice(b", ");
    }
}

/// `Via: <existing>, <received-version> <pseudonym>` (RFC 9110 §7.6.3). The received protocol
/// is the version of the message we received (`1.1` for HTTP/1.1, `1.0` for HTTP/1.0).
fn put_via(head: &Head, buf: &[u8], via: &str, out: &mut BytesMut) {
    put_list_start(head, buf, b"Via", b"via", out);
    out.extend_from_slice(match head.version {
        Version::Http10 => b"1.0 ",
        Version::Http11 => b"1.1 ",
    });
    out.extend_from_slice(via.as_bytes());
    out.extend_from_slice(CRLF);
}

/// Append the request head to send upstream (always HTTP/1.1). See the module docs of the
/// contract: non-strip fields verbatim, then framing from `body`, `Connection: upgrade` +
/// `Upgrade` when `upgrade`, then X-Forwarded-For / X-Forwarded-Proto / Via.
pub fn write_request_head(
    head: &Head,
    buf: &[u8],
    body: OutBody,
    upgrade: bool,
    fwd: &Forwarding<'_>,
    out: &mut BytesMut,
) {
    let xff = if fwd.x_forwarded_for {
        fwd.client_ip
    } else {
        None
    };
    out.extend_from_slice(head.method_name.of(buf));
    out.extend_from_slice(b" ");
    out.extend_from_slice(head.target.of(buf));
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let replaced = |name: &[u8]| {
        (xff.is_some() && eq_ic(name, b"x-forwarded-for"))
            || (fwd.proto.is_some() && eq_ic(name, b"x-forwarded-proto"))
            || (fwd.via.is_some() && eq_ic(name, b"via"))
    };
    put_fields(head, buf, replaced, out);
    if head.host.is_none() {
        put_field(b"Host", fwd.default_host.as_bytes(), out);
    }
    put_framing(body, out);
    if upgrade {
        put_upgrade(head, buf, out);
    }
    if fwd.te_trailers {
        // TE is hop-by-hop: its sender lists it in Connection (RFC 9110 §10.1.4).
        out.extend_from_slice(b"TE: trailers\r\nConnection: te\r\n");
    }
    if let Some(ip) = xff {
        put_list_start(head, buf, b"X-Forwarded-For", b"x-forwarded-for", out);
        put_ip(ip, out);
        out.extend_from_slice(CRLF);
    }
    if let Some(proto) = fwd.proto {
        put_field(b"X-Forwarded-Proto", proto.as_bytes(), out);
    }
    if let Some(via) = fwd.via {
        put_via(head, buf, via, out);
    }
    out.extend_from_slice(CRLF);
}

/// What [`write_response_head`] adds to the received fields.
#[derive(Clone, Copy, Debug)]
pub struct ResponseOptions<'a> {
    /// The framing we send.
    pub body: OutBody,
    /// Add `Connection: close`.
    pub close: bool,
    /// Add `Connection: keep-alive` (an HTTP/1.0 client that asked to keep the connection).
    pub keep_alive_10: bool,
    /// Add `Connection: upgrade` and the received `Upgrade` (a 101 we relay).
    pub upgrade: bool,
    /// Via pseudonym, if set.
    pub via: Option<&'a str>,
}

fn put_status_line(status: u16, reason: &[u8], out: &mut BytesMut) {
    out.extend_from_slice(b"HTTP/1.1 ");
    put_u64(u64::from(status), out);
    out.extend_from_slice(b" ");
    out.extend_from_slice(reason);
    out.extend_from_slice(CRLF);
}

/// Append the response head to send to the client (always HTTP/1.1).
pub fn write_response_head(
    head: &Head,
    buf: &[u8],
    opts: &ResponseOptions<'_>,
    out: &mut BytesMut,
) {
    put_status_line(head.status, head.reason.of(buf), out);
    put_fields(
        head,
        buf,
        |name| opts.via.is_some() && eq_ic(name, b"via"),
        out,
    );
    put_framing(opts.body, out);
    if opts.close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    if opts.keep_alive_10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    if opts.upgrade {
        put_upgrade(head, buf, out);
    }
    if let Some(via) = opts.via {
        put_via(head, buf, via, out);
    }
    out.extend_from_slice(CRLF);
}

/// Forward an interim (1xx) response with hop-by-hop fields stripped.
pub fn write_informational(head: &Head, buf: &[u8], out: &mut BytesMut) {
    put_status_line(head.status, head.reason.of(buf), out);
    put_fields(head, buf, |_| false, out);
    out.extend_from_slice(CRLF);
}

/// Standard reason phrase for the statuses the proxy generates (and a few more).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// A complete small response generated by the proxy: status line, `Content-Type: text/plain`,
/// `Content-Length`, `Connection: close` if `close`, and the body `"<status> <reason>\n"` unless
/// `head_only` (Content-Length still announces the body's length).
pub fn write_error_response(status: u16, close: bool, head_only: bool, out: &mut BytesMut) {
    write_error_response_with(status, close, head_only, None, out);
}

/// [`write_error_response`] with a `Retry-After: SECONDS` header when `retry_after` is given.
pub fn write_error_response_with(
    status: u16,
    close: bool,
    head_only: bool,
    retry_after: Option<u32>,
    out: &mut BytesMut,
) {
    let reason = reason_phrase(status).as_bytes();
    put_status_line(status, reason, out);
    out.extend_from_slice(b"Content-Type: text/plain\r\nContent-Length: ");
    // "NNN " + reason + "\n"
    let body_len = 3 + 1 + reason.len() + 1;
    put_u64(body_len as u64, out);
    out.extend_from_slice(CRLF);
    if let Some(secs) = retry_after {
        out.extend_from_slice(b"Retry-After: ");
        put_u64(u64::from(secs), out);
        out.extend_from_slice(CRLF);
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(CRLF);
    if !head_only {
        put_u64(u64::from(status), out);
        out.extend_from_slice(b" ");
        out.extend_from_slice(reason);
        out.extend_from_slice(b"\n");
    }
}

/// `{len:x}\r\n`.
pub fn write_chunk_size(len: u64, out: &mut BytesMut) {
    put_num::<16>(len, out);
    out.extend_from_slice(CRLF);
}

/// The last chunk followed by `trailers` (complete field lines, each with its CRLF; none gives
/// [`LAST_CHUNK`]) and the final CRLF.
pub fn write_last_chunk(trailers: &[u8], out: &mut BytesMut) {
    out.extend_from_slice(b"0\r\n");
    out.extend_from_slice(trailers);
    out.extend_from_slice(CRLF);
}

/// The line terminator.
pub const CRLF: &[u8] = b"\r\n";
/// The last chunk of a chunked body with an empty trailer section.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";
/// The interim response to `Expect: 100-continue`.
pub const CONTINUE_100: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::test_util::{LIMITS, fwd, req, res};
    use crate::framing::{BodyKind, Head, Method};

    fn write_req(raw: &[u8], body: OutBody, upgrade: bool, f: &Forwarding<'_>) -> String {
        let h = req(raw).unwrap();
        let mut out = BytesMut::new();
        write_request_head(&h, raw, body, upgrade, f, &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    /// `put_ip` writes what `IpAddr`'s `Display` writes (the hand-written IPv4 path included).
    #[test]
    fn put_ip_table() {
        let ips = [
            "0.0.0.0",
            "10.0.0.1",
            "127.0.0.1",
            "1.20.255.100",
            "9.99.100.199",
            "255.255.255.255",
            "::1",
            "::ffff:1.2.3.4",
            "2001:db8::1",
            "fe80::1:2:3:4",
        ];
        for text in ips {
            let ip: IpAddr = text.parse().unwrap();
            let mut out = BytesMut::new();
            put_ip(ip, &mut out);
            assert_eq!(&out[..], text.as_bytes());
        }
        for n in (0..=u32::MAX).step_by(65_521) {
            let ip = IpAddr::from(n.to_be_bytes());
            let mut out = BytesMut::new();
            put_ip(ip, &mut out);
            assert_eq!(&out[..], ip.to_string().as_bytes());
        }
    }

    #[test]
    fn rewrite_strips_hop_by_hop() {
        let raw = b"GET /p?q HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nX-Secret: 2\r\nAccept: */*\r\n\r\n";
        let out = write_req(raw, OutBody::None, false, &fwd(None));
        assert_eq!(
            out,
            "GET /p?q HTTP/1.1\r\nHost: a\r\nAccept: */*\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: http\r\n\r\n"
        );
    }

    #[test]
    fn rewrite_xff_via_proto() {
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\nVia: 1.1 a\r\nX-Forwarded-Proto: https\r\nx-forwarded-for: 2.2.2.2, 3.3.3.3\r\nContent-Length: 5\r\n\r\nhello";
        let out = write_req(raw, OutBody::Length(5), false, &fwd(Some("upkeep")));
        assert_eq!(
            out,
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nX-Forwarded-For: 1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.1\r\nX-Forwarded-Proto: http\r\nVia: 1.1 a, 1.1 upkeep\r\n\r\n"
        );
        // Disabled: inbound values pass through untouched.
        let none = Forwarding {
            default_host: "up",
            te_trailers: false,
            client_ip: None,
            x_forwarded_for: true,
            proto: None,
            via: None,
        };
        let out = write_req(raw, OutBody::Length(5), false, &none);
        assert_eq!(
            out,
            "POST / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\nVia: 1.1 a\r\nX-Forwarded-Proto: https\r\nx-forwarded-for: 2.2.2.2, 3.3.3.3\r\nContent-Length: 5\r\n\r\n"
        );
        // IPv6 client, HTTP/1.0 without Host (version forced to 1.1 upstream, a Host added, Via
        // names the received 1.0).
        let raw = b"GET / HTTP/1.0\r\n\r\n";
        let f = Forwarding {
            default_host: "up",
            te_trailers: false,
            client_ip: Some("::1".parse().unwrap()),
            x_forwarded_for: true,
            proto: None,
            via: Some("p"),
        };
        let out = write_req(raw, OutBody::None, false, &f);
        assert_eq!(
            out,
            "GET / HTTP/1.1\r\nHost: up\r\nX-Forwarded-For: ::1\r\nVia: 1.0 p\r\n\r\n"
        );
    }

    #[test]
    fn rewrite_connection_cannot_remove_framing_or_host() {
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\nConnection: Content-Length, Host, Transfer-Encoding\r\nContent-Length: 5\r\n\r\nhello";
        let h = req(raw).unwrap();
        assert_eq!(h.body, BodyKind::Length(5));
        let none = Forwarding {
            default_host: "up",
            te_trailers: false,
            client_ip: None,
            x_forwarded_for: false,
            proto: None,
            via: None,
        };
        let out = write_req(raw, OutBody::Length(5), false, &none);
        assert_eq!(
            out,
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n"
        );
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: Transfer-Encoding\r\n\r\n";
        assert_eq!(req(raw).unwrap().body, BodyKind::Chunked);
        let out = write_req(raw, OutBody::Chunked, false, &none);
        assert_eq!(
            out,
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn rewrite_upgrade_and_expect() {
        let raw = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n\r\n";
        let none = Forwarding {
            default_host: "up",
            te_trailers: false,
            client_ip: None,
            x_forwarded_for: false,
            proto: None,
            via: None,
        };
        let out = write_req(raw, OutBody::None, true, &none);
        assert_eq!(
            out,
            "GET /ws HTTP/1.1\r\nHost: a\r\nSec-WebSocket-Key: k\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
        );
        let out = write_req(raw, OutBody::None, false, &none);
        assert_eq!(
            out,
            "GET /ws HTTP/1.1\r\nHost: a\r\nSec-WebSocket-Key: k\r\n\r\n"
        );
        let raw =
            b"PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(
            write_req(raw, OutBody::Length(2), false, &none),
            "PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n"
        );
        let raw = b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(
            write_req(raw, OutBody::None, false, &none),
            "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"
        );
    }

    #[test]
    fn response_writers() {
        let raw = b"HTTP/1.1 200 OK\r\nConnection: X-Int\r\nX-Int: 1\r\nKeep-Alive: timeout=5\r\nVia: 1.0 b\r\nServer: s\r\nTransfer-Encoding: chunked\r\n\r\n";
        let h = res(raw, Method::Get).unwrap();
        let mut out = BytesMut::new();
        let opts = ResponseOptions {
            body: OutBody::Chunked,
            close: false,
            keep_alive_10: false,
            upgrade: false,
            via: Some("upkeep"),
        };
        write_response_head(&h, raw, &opts, &mut out);
        assert_eq!(&out[..], b"HTTP/1.1 200 OK\r\nServer: s\r\nTransfer-Encoding: chunked\r\nVia: 1.0 b, 1.1 upkeep\r\n\r\n");

        out.clear();
        let opts = ResponseOptions {
            body: OutBody::Length(3),
            close: true,
            keep_alive_10: false,
            upgrade: false,
            via: None,
        };
        write_response_head(&h, raw, &opts, &mut out);
        assert_eq!(
            &out[..],
            b"HTTP/1.1 200 OK\r\nVia: 1.0 b\r\nServer: s\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"
        );

        out.clear();
        let raw = b"HTTP/1.0 200 \r\n\r\n";
        let h = res(raw, Method::Get).unwrap();
        let opts = ResponseOptions {
            body: OutBody::Close,
            close: false,
            keep_alive_10: true,
            upgrade: false,
            via: None,
        };
        write_response_head(&h, raw, &opts, &mut out);
        assert_eq!(&out[..], b"HTTP/1.1 200 \r\nConnection: keep-alive\r\n\r\n");

        out.clear();
        let raw = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: x\r\n\r\n";
        let h = res(raw, Method::Get).unwrap();
        let opts = ResponseOptions {
            body: OutBody::None,
            close: false,
            keep_alive_10: false,
            upgrade: true,
            via: None,
        };
        write_response_head(&h, raw, &opts, &mut out);
        assert_eq!(
            &out[..],
            b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
        );

        out.clear();
        let raw =
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\nConnection: close\r\n\r\n";
        let h = res(raw, Method::Get).unwrap();
        write_informational(&h, raw, &mut out);
        assert_eq!(
            &out[..],
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
        );
    }

    #[test]
    fn error_responses() {
        let mut out = BytesMut::new();
        write_error_response(502, true, false, &mut out);
        assert_eq!(
            &out[..],
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: 16\r\nConnection: close\r\n\r\n502 Bad Gateway\n"
        );
        out.clear();
        write_error_response(404, false, true, &mut out);
        assert_eq!(
            &out[..],
            b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 14\r\n\r\n"
        );
        for s in [
            400u16, 404, 405, 408, 413, 414, 417, 431, 501, 502, 503, 504, 505,
        ] {
            out.clear();
            write_error_response(s, false, false, &mut out);
            let text = String::from_utf8(out.to_vec()).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(
                head.contains(&format!("Content-Length: {}", body.len())),
                "{text}"
            );
            assert_ne!(reason_phrase(s), "Error");
            // Our own output parses as a valid response.
            let r = Head::new().parse_response(text.as_bytes(), Method::Get, &LIMITS);
            assert_eq!(r, Ok(true));
        }
    }

    #[test]
    fn chunk_size_writer() {
        let mut out = BytesMut::new();
        for (n, want) in [
            (0u64, &b"0\r\n"[..]),
            (5, b"5\r\n"),
            (255, b"ff\r\n"),
            (4096, b"1000\r\n"),
        ] {
            out.clear();
            write_chunk_size(n, &mut out);
            assert_eq!(&out[..], want);
        }
        out.clear();
        write_chunk_size(u64::MAX, &mut out);
        assert_eq!(out.len(), 16 + 2);
        assert_eq!(LAST_CHUNK, b"0\r\n\r\n");
    }

    #[test]
    fn writers_do_not_grow_with_capacity() {
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\nVia: 1.1 a\r\nContent-Length: 5\r\n\r\n";
        let h = req(raw).unwrap();
        let mut out = BytesMut::with_capacity(1024);
        let cap = out.capacity();
        write_request_head(
            &h,
            raw,
            OutBody::Length(5),
            false,
            &fwd(Some("upkeep")),
            &mut out,
        );
        write_chunk_size(123, &mut out);
        write_error_response(502, true, false, &mut out);
        assert_eq!(out.capacity(), cap);
    }
}
