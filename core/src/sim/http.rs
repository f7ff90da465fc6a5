//! A small, independent HTTP/1.1 message reader for the simulated peers (clients read
//! responses, backends read requests). Deliberately simple and separate from `framing`, so a
//! framing bug in the engine shows up as a disagreement instead of being mirrored.
//!
//! Two levels: [`read_request`] / [`read_response`] return a whole message or `None` (incomplete
//! or malformed alike), for tests that expect well-formed traffic; [`parse_request_head`] /
//! [`parse_response_head`], [`Message::request_body`] / [`Message::response_body`] and
//! [`read_body`] tell "incomplete" from "malformed", for the simulated world, which reports
//! malformed traffic from the proxy as a violation.

/// A parsed message (request or response).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// Request method (requests).
    pub method: String,
    /// Request target (requests).
    pub path: String,
    /// Status (responses).
    pub status: u16,
    /// `1` for HTTP/1.1, `0` for HTTP/1.0.
    pub version: u8,
    /// Header fields in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The decoded body.
    pub body: Vec<u8>,
}

impl Message {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// What a reader found at the start of a buffer: the message (or body) and the bytes it used,
/// `Ok(None)` if more bytes are needed, or why the bytes are malformed.
pub type Read<T> = Result<Option<(T, usize)>, String>;

fn lower_headers(h: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    h.iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

/// How a message body is delimited (RFC 9112 §6.3, as far as the simulated peers need it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyLength {
    /// No body.
    None,
    /// `Content-Length`.
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the sender closes (responses only).
    UntilClose,
}

impl Message {
    fn chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    }

    fn content_length(&self) -> Result<Option<usize>, String> {
        self.header("content-length")
            .map(|v| {
                v.trim()
                    .parse()
                    .map_err(|_| format!("bad content-length {v:?}"))
            })
            .transpose()
    }

    /// How the body of this response is delimited (`head_request`: it answers a HEAD).
    pub fn response_body(&self, head_request: bool) -> Result<BodyLength, String> {
        let no_body = head_request || self.status < 200 || self.status == 204 || self.status == 304;
        Ok(if no_body {
            BodyLength::None
        } else if self.chunked() {
            BodyLength::Chunked
        } else {
            self.content_length()?
                .map_or(BodyLength::UntilClose, BodyLength::Length)
        })
    }

    /// How the body of this request is delimited.
    pub fn request_body(&self) -> Result<BodyLength, String> {
        Ok(if self.chunked() {
            BodyLength::Chunked
        } else {
            self.content_length()?
                .map_or(BodyLength::None, BodyLength::Length)
        })
    }
}

/// `Ok(None)` for a head that is not complete yet, the head's length when it is.
fn head_len(parsed: httparse::Result<usize>) -> Result<Option<usize>, String> {
    match parsed {
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Parses a response head at the start of `buf` (the body is left empty): the message and the
/// head's length, `Ok(None)` if more bytes are needed, or why it is malformed.
pub fn parse_response_head(buf: &[u8]) -> Read<Message> {
    let mut hs = [httparse::EMPTY_HEADER; 128];
    let mut r = httparse::Response::new(&mut hs);
    let Some(n) = head_len(r.parse(buf))? else {
        return Ok(None);
    };
    let m = Message {
        status: r.code.ok_or("no status")?,
        version: r.version.ok_or("no version")?,
        headers: lower_headers(r.headers),
        ..Message::default()
    };
    Ok(Some((m, n)))
}

/// Parses a request head at the start of `buf` (the body is left empty): the message and the
/// head's length, `Ok(None)` if more bytes are needed, or why it is malformed.
pub fn parse_request_head(buf: &[u8]) -> Read<Message> {
    let mut hs = [httparse::EMPTY_HEADER; 128];
    let mut r = httparse::Request::new(&mut hs);
    let Some(n) = head_len(r.parse(buf))? else {
        return Ok(None);
    };
    let m = Message {
        method: r.method.ok_or("no method")?.to_string(),
        path: r.path.ok_or("no target")?.to_string(),
        version: r.version.ok_or("no version")?,
        headers: lower_headers(r.headers),
        ..Message::default()
    };
    Ok(Some((m, n)))
}

/// Reads a body delimited as `len` from the start of `buf` (the bytes after the head): the body
/// and the bytes it used, `Ok(None)` if more bytes are needed, or why its framing is malformed.
/// `eof`: the peer closed, so a close-delimited body ends at the end of `buf`.
pub fn read_body(buf: &[u8], len: BodyLength, eof: bool) -> Read<Vec<u8>> {
    Ok(read_body_and_trailers(buf, len, eof)?.map(|((body, _), used)| (body, used)))
}

/// Trailer fields of a chunked body, in order, names lower-cased.
pub type Trailers = Vec<(String, String)>;

/// [`read_body`], with the trailer fields of a chunked body (none for other framings).
pub fn read_body_and_trailers(buf: &[u8], len: BodyLength, eof: bool) -> Read<(Vec<u8>, Trailers)> {
    let plain = |b: Option<(Vec<u8>, usize)>| b.map(|(body, used)| ((body, Vec::new()), used));
    Ok(match len {
        BodyLength::None => plain(Some((Vec::new(), 0))),
        BodyLength::Chunked => return decode_chunked(buf),
        BodyLength::Length(n) => plain((buf.len() >= n).then(|| (buf[..n].to_vec(), n))),
        BodyLength::UntilClose => plain(eof.then(|| (buf.to_vec(), buf.len()))),
    })
}

/// Decodes a complete chunked body at the start of `buf`: (body and trailers, bytes used),
/// `Ok(None)` if incomplete.
fn decode_chunked(buf: &[u8]) -> Read<(Vec<u8>, Trailers)> {
    let mut pos = 0;
    let mut body = Vec::new();
    let mut trailers = Vec::new();
    let line = |pos: usize| -> Option<usize> {
        buf[pos..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|i| pos + i)
    };
    loop {
        let Some(eol) = line(pos) else {
            return Ok(None);
        };
        let text = core::str::from_utf8(&buf[pos..eol]).map_err(|_| "non-utf8 size line")?;
        let hex = text.split(';').next().unwrap_or("").trim();
        let size =
            usize::from_str_radix(hex, 16).map_err(|_| format!("bad chunk size {text:?}"))?;
        pos = eol + 2;
        if size == 0 {
            // Trailers until an empty line.
            loop {
                let Some(eol) = line(pos) else {
                    return Ok(None);
                };
                let empty = eol == pos;
                let field = String::from_utf8_lossy(&buf[pos..eol]).into_owned();
                pos = eol + 2;
                if empty {
                    return Ok(Some(((body, trailers), pos)));
                }
                let (name, value) = field.split_once(':').ok_or("trailer without a colon")?;
                trailers.push((name.to_ascii_lowercase(), value.trim().to_string()));
            }
        }
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        if &buf[pos + size..pos + size + 2] != b"\r\n" {
            return Err("missing CRLF after chunk".into());
        }
        pos += size + 2;
    }
}

/// A head parsed by `head`, then its body delimited as `len` says: the whole message and the
/// bytes it used, `Ok(None)` if more bytes are needed.
fn read_message(
    buf: &[u8],
    head: fn(&[u8]) -> Read<Message>,
    len: impl FnOnce(&Message) -> Result<BodyLength, String>,
    eof: bool,
) -> Read<Message> {
    let Some((mut m, n)) = head(buf)? else {
        return Ok(None);
    };
    let Some((body, used)) = read_body(&buf[n..], len(&m)?, eof)? else {
        return Ok(None);
    };
    m.body = body;
    Ok(Some((m, n + used)))
}

/// Reads one response from `buf`. `head_request`: it answers a HEAD (no body). `eof`: the peer
/// closed, so a close-delimited body ends at the end of `buf`. Returns the response and the bytes
/// it used, or None if more bytes are needed (or they are malformed). 1xx responses are returned
/// like any other.
pub fn read_response(buf: &[u8], head_request: bool, eof: bool) -> Option<(Message, usize)> {
    read_message(
        buf,
        parse_response_head,
        |m| m.response_body(head_request),
        eof,
    )
    .ok()
    .flatten()
}

/// Reads every complete response from `buf` (`head_requests[i]`: the i-th answers a HEAD).
/// Interim (1xx) responses are skipped. Returns the final responses and the bytes used.
pub fn read_responses(buf: &[u8], head_requests: &[bool], eof: bool) -> (Vec<Message>, usize) {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let head = head_requests.get(out.len()).copied().unwrap_or(false);
        let Some((m, used)) = read_response(&buf[pos..], head, eof) else {
            break;
        };
        pos += used;
        if (100..200).contains(&m.status) && m.status != 101 {
            continue;
        }
        out.push(m);
        if pos == buf.len() {
            break;
        }
    }
    (out, pos)
}

/// Reads one request from `buf` (Content-Length or chunked body): the request and the bytes it
/// used, or None if incomplete or unparseable.
pub fn read_request(buf: &[u8]) -> Option<(Message, usize)> {
    read_message(buf, parse_request_head, Message::request_body, false)
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_decoder() {
        let b = b"3\r\nabc\r\n1;x=y\r\nd\r\n0\r\nT: v\r\n\r\nrest";
        let ((body, trailers), used) = decode_chunked(b).unwrap().unwrap();
        assert_eq!(body, b"abcd");
        assert_eq!(trailers, [("t".to_string(), "v".to_string())]);
        assert_eq!(&b[used..], b"rest");
        assert_eq!(decode_chunked(b"3\r\nab").unwrap(), None);
        assert!(decode_chunked(b"zz\r\n").is_err());
    }

    #[test]
    fn reads_each_framing() {
        let b = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n";
        let (rs, used) = read_responses(b, &[], false);
        assert_eq!(used, b.len());
        assert_eq!(rs[0].body, b"ok");
        assert_eq!(rs[1].body, b"ab");
        let close = b"HTTP/1.1 200 OK\r\n\r\nuntil close";
        assert!(read_response(close, false, false).is_none());
        assert_eq!(
            read_response(close, false, true).unwrap().0.body,
            b"until close"
        );
        let req = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET";
        let (m, used) = read_request(req).unwrap();
        assert_eq!(
            (m.method.as_str(), m.path.as_str(), &m.body[..], used),
            ("POST", "/x", &b"abc"[..], req.len() - 3)
        );
    }
}
