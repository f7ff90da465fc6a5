//! Chunked bodies: `BodyDecoder::step` on arbitrary bytes in arbitrary splits.
//!
//! Input: byte 0 = `n` (mod 8) piece sizes in bytes 1..=n (0 means "everything left"); the rest
//! is the body, fed in pieces of those sizes, cycling. The body is also fed at once and, when
//! short, one byte at a time.
//!
//! Checked:
//! - no panic, no hang, every step stays inside the bytes it was given;
//! - the outcome (done after `consumed` bytes / needs more / error), the payload, and the chunk
//!   boundaries the decoder reports (`chunk_start` sizes, `chunk_end` exactly when a chunk's
//!   data is complete) are the same whatever the split (error messages may differ: a split can
//!   reveal a different problem first, e.g. "too large" before "invalid name");
//! - they agree with `reference`, a straightforward decoder written here from RFC 9112 §7.1 and
//!   the engine's documented limits (at most 16 hex digits, a size line of at most
//!   `MAX_CHUNK_LINE` bytes before its CRLF, at most `MAX_TRAILERS` bytes of trailer section
//!   including the final CRLF);
//! - `is_done` / `on_eof` agree with the outcome, and a finished decoder stays finished.
#![no_main]

use libfuzzer_sys::fuzz_target;
use upkeep_core::framing::{BodyDecoder, BodyError, BodyKind, MAX_CHUNK_LINE, MAX_TRAILERS};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// The body ended after this many bytes.
    Done(usize),
    NeedMore,
    Error,
}

#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    payload: Vec<u8>,
    chunks: Vec<u64>,
    end: End,
}

/// Feed `input` to a fresh decoder in pieces (sizes from `cuts`, cycling; 0 = the rest), the way
/// the engine does: unconsumed framing stays in the buffer and is offered again with more bytes.
fn drive(input: &[u8], cuts: &[u8]) -> (Decoded, Option<&'static str>) {
    let mut dec = BodyDecoder::new(BodyKind::Chunked);
    let mut out = Decoded {
        payload: Vec::new(),
        chunks: Vec::new(),
        end: End::NeedMore,
    };
    let mut pending: Vec<u8> = Vec::new();
    let mut consumed = 0usize;
    let mut fed = 0usize;
    let mut cut = 0usize;
    // (size, received) of the chunk whose data is being delivered.
    let mut current: Option<(u64, u64)> = None;
    loop {
        // Feed the next piece.
        if fed == input.len() && !(fed == 0 && cut == 0) {
            break;
        }
        let size = match cuts.get(cut % cuts.len().max(1)) {
            None | Some(0) => input.len() - fed,
            Some(&n) => (n as usize).min(input.len() - fed),
        };
        cut += 1;
        pending.extend_from_slice(&input[fed..fed + size]);
        fed += size;
        loop {
            let step = match dec.step(&pending) {
                Ok(s) => s,
                Err(BodyError::BadChunk(msg)) => {
                    assert!(!dec.is_done());
                    out.end = End::Error;
                    return (out, Some(msg));
                }
                Err(BodyError::Incomplete) => panic!("step returned Incomplete"),
            };
            let used = step.skip + step.data;
            assert!(
                used <= pending.len(),
                "{step:?} beyond {} bytes",
                pending.len()
            );
            if let Some(sz) = step.chunk_start {
                assert!(sz > 0, "chunk_start of 0");
                assert_eq!(current, None, "chunk started inside another");
                out.chunks.push(sz);
                current = Some((sz, 0));
            }
            if step.data > 0 {
                let (sz, got) = current.as_mut().expect("payload outside a chunk");
                *got += step.data as u64;
                assert!(*got <= *sz, "more data than the chunk size");
                assert_eq!(step.chunk_end, *got == *sz, "chunk_end at {got}/{sz}");
            } else {
                assert!(!step.chunk_end, "chunk_end without data");
            }
            if step.chunk_end {
                current = None;
            }
            out.payload
                .extend_from_slice(&pending[step.skip..step.skip + step.data]);
            pending.drain(..used);
            consumed += used;
            if step.done {
                assert!(dec.is_done());
                assert_eq!(dec.on_eof(), Ok(()));
                assert_eq!(current, None, "done inside a chunk");
                // Finished stays finished, and consumes nothing more.
                let again = dec.step(&pending).expect("step after done");
                assert!(
                    again.done && again.skip == 0 && again.data == 0,
                    "{again:?}"
                );
                out.end = End::Done(consumed);
                return (out, None);
            }
            if used == 0 {
                break;
            }
        }
    }
    assert!(!dec.is_done());
    assert_eq!(dec.on_eof(), Err(BodyError::Incomplete));
    (out, None)
}

// ------------------------------------------------------------------------------------------
// The reference decoder: whole input at once, one byte at a time through explicit states.

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}
fn is_vchar_or_obs(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) || b >= 0x80
}
/// qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text
fn is_qdtext(b: u8) -> bool {
    b == b'\t' || b == b' ' || (is_vchar_or_obs(b) && b != b'"' && b != b'\\')
}

enum Line {
    /// (chunk size, bytes of the line with its CRLF)
    Size(u64, usize),
    NeedMore,
    Bad,
}

/// `chunk-size [ chunk-ext ] CRLF`, chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS value ] ),
/// value = token / quoted-string.
fn size_line(b: &[u8]) -> Line {
    #[derive(Clone, Copy)]
    enum S {
        Start,
        Digits(usize),
        /// Whitespace after the size or a value: only ";" may follow.
        Ws,
        /// After ";": whitespace, then a name.
        Semi,
        Name,
        /// Whitespace after a name: ";" or "=".
        NameWs,
        /// After "=": whitespace, then a token or a quoted string.
        Eq,
        Token,
        Quoted,
        Escape,
        Closed,
        Cr,
    }
    // The line, CRLF included, must fit in MAX_CHUNK_LINE + 2 bytes.
    let limit = MAX_CHUNK_LINE + 2;
    let mut s = S::Start;
    for i in 0.. {
        if i >= limit {
            return Line::Bad;
        }
        let Some(&c) = b.get(i) else {
            return Line::NeedMore;
        };
        s = match (s, c) {
            (S::Start, c) if c.is_ascii_hexdigit() => S::Digits(1),
            (S::Digits(16), c) if c.is_ascii_hexdigit() => return Line::Bad,
            (S::Digits(n), c) if c.is_ascii_hexdigit() => S::Digits(n + 1),
            (S::Digits(_) | S::Name | S::Token | S::Closed, b'\r') => S::Cr,
            (S::Digits(_) | S::Token | S::Closed | S::Ws, c) if is_ows(c) => S::Ws,
            (S::Digits(_) | S::Token | S::Closed | S::Ws | S::Name | S::NameWs, b';') => S::Semi,
            (S::Semi, c) if is_ows(c) => S::Semi,
            (S::Semi | S::Name, c) if is_tchar(c) => S::Name,
            (S::Name | S::NameWs, c) if is_ows(c) => S::NameWs,
            (S::Name | S::NameWs, b'=') => S::Eq,
            (S::Eq, c) if is_ows(c) => S::Eq,
            (S::Eq, b'"') => S::Quoted,
            (S::Eq | S::Token, c) if is_tchar(c) => S::Token,
            (S::Quoted, b'"') => S::Closed,
            (S::Quoted, b'\\') => S::Escape,
            (S::Quoted, c) if is_qdtext(c) => S::Quoted,
            (S::Escape, c) if c == b'\t' || c == b' ' || is_vchar_or_obs(c) => S::Quoted,
            (S::Cr, b'\n') => {
                let digits: Vec<u8> = b
                    .iter()
                    .copied()
                    .take_while(u8::is_ascii_hexdigit)
                    .collect();
                let hex = std::str::from_utf8(&digits).expect("ascii");
                let size = u64::from_str_radix(hex, 16).expect("at most 16 hex digits fit");
                return Line::Size(size, i + 1);
            }
            _ => return Line::Bad,
        };
    }
    unreachable!()
}

enum Trailers {
    /// Bytes of the section (final CRLF included).
    Done(usize),
    NeedMore,
    Bad,
}

/// `*( field-name ":" field-value CRLF ) CRLF` (no obs-fold), at most MAX_TRAILERS bytes.
fn trailers(b: &[u8]) -> Trailers {
    #[derive(Clone, Copy, PartialEq)]
    enum S {
        LineStart,
        EndCr,
        Name,
        Value,
        Cr,
    }
    let mut s = S::LineStart;
    let mut i = 0;
    let result = loop {
        let Some(&c) = b.get(i) else {
            break Trailers::NeedMore;
        };
        s = match (s, c) {
            (S::LineStart, b'\r') => S::EndCr,
            (S::EndCr, b'\n') => break Trailers::Done(i + 1),
            (S::LineStart | S::Name, c) if is_tchar(c) => S::Name,
            (S::Name, b':') => S::Value,
            (S::Value, b'\r') => S::Cr,
            (S::Value, c) if c == b'\t' || c == b' ' || is_vchar_or_obs(c) => S::Value,
            (S::Cr, b'\n') => S::LineStart,
            _ => break Trailers::Bad,
        };
        i += 1;
    };
    match result {
        Trailers::Done(n) if n > MAX_TRAILERS => Trailers::Bad,
        // Incomplete, but already too long to ever fit.
        Trailers::NeedMore if b.len() >= MAX_TRAILERS => Trailers::Bad,
        r => r,
    }
}

fn reference(b: &[u8]) -> Decoded {
    let mut out = Decoded {
        payload: Vec::new(),
        chunks: Vec::new(),
        end: End::NeedMore,
    };
    let mut pos = 0;
    loop {
        let size = match size_line(&b[pos..]) {
            Line::NeedMore => return out,
            Line::Bad => {
                out.end = End::Error;
                return out;
            }
            Line::Size(size, n) => {
                pos += n;
                size
            }
        };
        if size == 0 {
            break;
        }
        out.chunks.push(size);
        let avail = (b.len() - pos) as u64;
        if avail < size {
            out.payload.extend_from_slice(&b[pos..]);
            return out;
        }
        out.payload.extend_from_slice(&b[pos..pos + size as usize]);
        pos += size as usize;
        match &b[pos..] {
            [] | [b'\r'] => return out,
            [b'\r', b'\n', ..] => pos += 2,
            _ => {
                out.end = End::Error;
                return out;
            }
        }
    }
    out.end = match trailers(&b[pos..]) {
        Trailers::Done(n) => End::Done(pos + n),
        Trailers::NeedMore => End::NeedMore,
        Trailers::Bad => End::Error,
    };
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = ((n & 7) as usize).min(rest.len());
    let (cuts, body) = rest.split_at(n);

    let want = reference(body);
    let (whole, whole_err) = drive(body, &[]);
    assert_eq!(
        whole,
        want,
        "decoder (whole input, error {whole_err:?}) disagrees with the reference on {:?}",
        String::from_utf8_lossy(body)
    );
    if !cuts.is_empty() {
        let (split, err) = drive(body, cuts);
        assert_eq!(
            split,
            whole,
            "split {cuts:?} changes the result (error {err:?} vs {whole_err:?}) on {:?}",
            String::from_utf8_lossy(body)
        );
    }
    if body.len() <= 512 {
        let (bytewise, err) = drive(body, &[1]);
        assert_eq!(
            bytewise,
            whole,
            "byte-at-a-time changes the result (error {err:?} vs {whole_err:?}) on {:?}",
            String::from_utf8_lossy(body)
        );
    }
});
