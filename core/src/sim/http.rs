//! A small, independent HTTP/1.1 message reader for the simulated peers (clients read
//! responses, backends read requests). Deliberately simple and separate from `framing`, so a
//! framing bug in the engine shows up as a disagreement instead of being mirrored.

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

/// Decodes a chunked body at the start of `buf`: (body, bytes used), or None if incomplete.
fn dechunk(buf: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut pos = 0;
    let mut body = Vec::new();
    loop {
        let line_end = buf[pos..].windows(2).position(|w| w == b"\r\n")? + pos;
        let line = std::str::from_utf8(&buf[pos..line_end]).ok()?;
        let size_str = line.split(';').next()?.trim();
        let size = usize::from_str_radix(size_str, 16).ok()?;
        pos = line_end + 2;
        if size == 0 {
            // Trailers until an empty line.
            loop {
                let end = buf[pos..].windows(2).position(|w| w == b"\r\n")? + pos;
                let empty = end == pos;
                pos = end + 2;
                if empty {
                    return Some((body, pos));
                }
            }
        }
        if buf.len() < pos + size + 2 {
            return None;
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        pos += size + 2;
    }
}

/// Reads one response from `buf`. `head_request`: it answers a HEAD (no body). `eof`: the peer
/// closed, so a close-delimited body ends at the end of `buf`. Returns the response and the bytes
/// it used, or None if more bytes are needed. 1xx responses are returned like any other.
pub fn read_response(buf: &[u8], head_request: bool, eof: bool) -> Option<(Message, usize)> {
    let mut hs = [httparse::EMPTY_HEADER; 128];
    let mut r = httparse::Response::new(&mut hs);
    let n = match r.parse(buf).ok()? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return None,
    };
    let mut m = Message {
        status: r.code?,
        version: r.version?,
        headers: lower_headers(r.headers),
        ..Message::default()
    };
    let no_body = head_request || m.status < 200 || m.status == 204 || m.status == 304;
    if no_body {
        return Some((m, n));
    }
    if m.header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        let (body, used) = dechunk(&buf[n..])?;
        m.body = body;
        return Some((m, n + used));
    }
    if let Some(cl) = m.header("content-length") {
        let len: usize = cl.trim().parse().ok()?;
        if buf.len() < n + len {
            return None;
        }
        m.body = buf[n..n + len].to_vec();
        return Some((m, n + len));
    }
    if !eof {
        return None;
    }
    m.body = buf[n..].to_vec();
    Some((m, buf.len()))
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
    let mut hs = [httparse::EMPTY_HEADER; 128];
    let mut r = httparse::Request::new(&mut hs);
    let n = match r.parse(buf).ok()? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return None,
    };
    let mut m = Message {
        method: r.method?.to_string(),
        path: r.path?.to_string(),
        version: r.version?,
        headers: lower_headers(r.headers),
        ..Message::default()
    };
    if m.header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        let (body, used) = dechunk(&buf[n..])?;
        m.body = body;
        return Some((m, n + used));
    }
    let len: usize = m
        .header("content-length")
        .map_or(Some(0), |v| v.trim().parse().ok())?;
    if buf.len() < n + len {
        return None;
    }
    m.body = buf[n..n + len].to_vec();
    Some((m, n + len))
}

#[cfg(test)]
mod tests {
    use super::*;

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
