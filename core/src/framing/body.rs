//! Body decoding (RFC 9112 §6.3, §7.1): the incremental decoder for Content-Length, chunked
//! and read-until-close bodies, with the chunk-size line, chunk extension and trailer grammar.

use super::head::BodyKind;
use crate::headers;

/// Maximum length of a chunk-size line including extensions (without the CRLF).
pub const MAX_CHUNK_LINE: usize = 4096;
/// Maximum size of a chunked trailer section (all trailer lines and the final CRLF).
pub const MAX_TRAILERS: usize = 16 * 1024;

/// Why a body could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Malformed chunked framing or trailers, with a short reason for logs.
    BadChunk(&'static str),
    /// The peer closed before the body was complete.
    Incomplete,
}

/// One decoding step: drop `skip` framing bytes, then `data` payload bytes follow; `done` means
/// the message ends right after them. `Step::default()` means "need more input".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// Framing bytes to drop first.
    pub skip: usize,
    /// Payload bytes that follow them.
    pub data: usize,
    /// The message ends right after `skip + data`.
    pub done: bool,
    /// Chunked: a chunk of this size starts here (its size line is in `skip`), before `data`.
    /// A relay that re-emits the size line at this point reproduces the sender's chunk
    /// boundaries, so its output does not depend on how the input was split into reads.
    pub chunk_start: Option<u64>,
    /// Chunked: `data` completes the current chunk.
    pub chunk_end: bool,
    /// Chunked, from a decoder that [reports trailers](BodyDecoder::report_trailers): this many
    /// bytes of complete trailer field lines (each with its CRLF) follow `skip` (and `data` is
    /// 0). Without reporting, trailer lines are framing, counted in `skip`.
    pub trailer: usize,
}

impl Step {
    /// Only framing (`skip` bytes, no payload); `done`: the message ends after them, else more
    /// input is needed.
    fn framing(skip: usize, chunk_start: Option<u64>, done: bool) -> Step {
        Step {
            skip,
            data: 0,
            done,
            chunk_start,
            chunk_end: false,
            trailer: 0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DecState {
    Length(u64),
    UntilClose,
    /// Expecting a chunk-size line.
    Size,
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataCrlf,
    /// Expecting a trailer field line or the final CRLF.
    Trailers,
    Done,
}

/// Incremental body decoder (RFC 9112 §6.3, §7.1). Partial framing is never consumed: the
/// caller keeps it and calls again with more bytes appended.
#[derive(Clone, Debug)]
pub struct BodyDecoder {
    state: DecState,
    trailer_bytes: usize,
    /// Trailer lines are reported in [`Step::trailer`] instead of skipped.
    report_trailers: bool,
}

fn bad(msg: &'static str) -> BodyError {
    BodyError::BadChunk(msg)
}

fn hex_val(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
        _ => None,
    }
}

/// Parse `chunk-size [ chunk-ext ] CRLF` at the start of `input`. `Ok(None)`: incomplete.
/// `Ok(Some((consumed, size)))`.
fn parse_size_line(input: &[u8]) -> Result<Option<(usize, u64)>, BodyError> {
    let lim = input.len().min(MAX_CHUNK_LINE + 2);
    let line = &input[..lim];
    let need_more = || {
        if input.len() >= MAX_CHUNK_LINE + 2 {
            Err(bad("chunk size line too long"))
        } else {
            Ok(None)
        }
    };
    let mut i = 0;
    let mut size: u64 = 0;
    while let Some(v) = line.get(i).copied().and_then(hex_val) {
        if i == 16 {
            return Err(bad("chunk size too large"));
        }
        size = (size << 4) | v;
        i += 1;
    }
    if i == line.len() {
        return need_more();
    }
    if i == 0 {
        return Err(bad("invalid chunk size"));
    }
    // chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] )
    // `after_name`: the last element was an ext-name, so "=" may follow.
    let mut after_name = false;
    loop {
        let ws_start = i;
        while line.get(i).is_some_and(|&b| headers::is_ows(b)) {
            i += 1;
        }
        let had_ws = i > ws_start;
        let Some(&b) = line.get(i) else {
            return need_more();
        };
        match b {
            b'\r' if !had_ws => {
                return match line.get(i + 1) {
                    None => need_more(),
                    Some(b'\n') => Ok(Some((i + 2, size))),
                    Some(_) => Err(bad("bare CR in chunk size line")),
                };
            }
            b';' => {
                i += 1;
                i = skip(line, i, headers::is_ows);
                let start = i;
                i = skip(line, i, headers::is_tchar);
                if i == line.len() {
                    return need_more();
                }
                if i == start {
                    return Err(bad("invalid chunk extension name"));
                }
                after_name = true;
            }
            b'=' if after_name => {
                after_name = false;
                i += 1;
                i = skip(line, i, headers::is_ows);
                match line.get(i) {
                    None => return need_more(),
                    Some(b'"') => {
                        i += 1;
                        loop {
                            match line.get(i) {
                                None => return need_more(),
                                Some(b'"') => {
                                    i += 1;
                                    break;
                                }
                                Some(b'\\') => match line.get(i + 1) {
                                    None => return need_more(),
                                    Some(&q)
                                        if q == b'\t' || (0x20..0x7f).contains(&q) || q >= 0x80 =>
                                    {
                                        i += 2
                                    }
                                    Some(_) => {
                                        return Err(bad("invalid quoted-pair in chunk extension"));
                                    }
                                },
                                Some(&q)
                                    if q == b'\t'
                                        || q == b' '
                                        || q == 0x21
                                        || (0x23..=0x5b).contains(&q)
                                        || (0x5d..=0x7e).contains(&q)
                                        || q >= 0x80 =>
                                {
                                    i += 1
                                }
                                Some(_) => {
                                    return Err(bad("invalid byte in chunk extension value"));
                                }
                            }
                        }
                    }
                    Some(_) => {
                        let start = i;
                        i = skip(line, i, headers::is_tchar);
                        if i == line.len() {
                            return need_more();
                        }
                        if i == start {
                            return Err(bad("invalid chunk extension value"));
                        }
                    }
                }
            }
            b'\n' => return Err(bad("bare LF in chunk size line")),
            _ => return Err(bad("invalid byte in chunk size line")),
        }
    }
}

enum TrailerLine {
    /// The final CRLF.
    End,
    /// A field line of this many bytes (with its CRLF).
    Field(usize),
}

/// Parse one trailer field line (or the final CRLF), within `budget` bytes.
fn parse_trailer_line(input: &[u8], budget: usize) -> Result<Option<TrailerLine>, BodyError> {
    let need_more = |seen: usize| {
        if seen >= budget {
            Err(bad("trailer section too large"))
        } else {
            Ok(None)
        }
    };
    match input {
        [] => return need_more(0),
        [b'\r'] => return need_more(1),
        [b'\r', b'\n', ..] => {
            return if budget < 2 {
                Err(bad("trailer section too large"))
            } else {
                Ok(Some(TrailerLine::End))
            };
        }
        [b'\r', ..] => return Err(bad("bare CR in trailers")),
        [b'\n', ..] => return Err(bad("bare LF in trailers")),
        [b' ' | b'\t', ..] => return Err(bad("obs-fold in trailers")),
        _ => {}
    }
    let mut i = 0;
    while input.get(i).is_some_and(|&b| headers::is_tchar(b)) {
        i += 1;
    }
    match input.get(i) {
        None => return need_more(i),
        Some(b':') if i > 0 => i += 1,
        Some(_) => return Err(bad("invalid trailer field name")),
    }
    loop {
        if i >= budget {
            return Err(bad("trailer section too large"));
        }
        match input.get(i) {
            None => return need_more(i),
            Some(b'\r') => {
                return match input.get(i + 1) {
                    None => need_more(i + 1),
                    Some(b'\n') if i + 2 <= budget => Ok(Some(TrailerLine::Field(i + 2))),
                    Some(b'\n') => Err(bad("trailer section too large")),
                    Some(_) => Err(bad("bare CR in trailers")),
                };
            }
            Some(&b) if headers::is_field_value_byte(b) => i += 1,
            Some(_) => return Err(bad("invalid byte in trailer value")),
        }
    }
}

impl BodyDecoder {
    /// A decoder for a body delimited as `kind`.
    pub fn new(kind: BodyKind) -> BodyDecoder {
        let state = match kind {
            BodyKind::Empty | BodyKind::Length(0) => DecState::Done,
            BodyKind::Length(n) => DecState::Length(n),
            BodyKind::Chunked => DecState::Size,
            BodyKind::UntilClose => DecState::UntilClose,
        };
        BodyDecoder {
            state,
            trailer_bytes: 0,
            report_trailers: false,
        }
    }

    /// Reports chunked trailer field lines in [`Step::trailer`] (for a relay that forwards
    /// them) instead of counting them as framing in [`Step::skip`].
    pub fn report_trailers(&mut self) {
        self.report_trailers = true;
    }

    /// Decode framing at the front of `input` (see [`Step`]).
    pub fn step(&mut self, input: &[u8]) -> Result<Step, BodyError> {
        let mut skip = 0;
        let mut chunk_start = None;
        // Reported trailer lines, right after `skip`.
        let mut trailer = 0;
        loop {
            let rest = &input[skip + trailer..];
            match self.state {
                DecState::Done => return Ok(Step::framing(skip, chunk_start, true)),
                DecState::UntilClose => {
                    return Ok(Step {
                        skip,
                        data: rest.len(),
                        done: false,
                        chunk_start,
                        chunk_end: false,
                        trailer: 0,
                    });
                }
                DecState::Length(_) | DecState::Data(_) => {
                    if rest.is_empty() {
                        return Ok(Step::framing(skip, chunk_start, false));
                    }
                    return Ok(Step {
                        skip,
                        chunk_start,
                        ..self.take_payload(rest.len() as u64)
                    });
                }
                DecState::Size => match parse_size_line(rest)? {
                    None => return Ok(Step::framing(skip, chunk_start, false)),
                    Some((n, size)) => {
                        skip += n;
                        self.state = if size == 0 {
                            DecState::Trailers
                        } else {
                            chunk_start = Some(size);
                            DecState::Data(size)
                        };
                    }
                },
                DecState::DataCrlf => match rest {
                    [] | [b'\r'] => return Ok(Step::framing(skip, chunk_start, false)),
                    [b'\r', b'\n', ..] => {
                        skip += 2;
                        self.state = DecState::Size;
                    }
                    _ => return Err(bad("missing CRLF after chunk data")),
                },
                DecState::Trailers => {
                    let budget = MAX_TRAILERS - self.trailer_bytes;
                    let reported = |skip| Step {
                        trailer,
                        ..Step::framing(skip, chunk_start, false)
                    };
                    match parse_trailer_line(rest, budget)? {
                        None => return Ok(reported(skip)),
                        // The reported lines first: the final CRLF is the next step's.
                        Some(TrailerLine::End) if trailer > 0 => return Ok(reported(skip)),
                        Some(TrailerLine::End) => {
                            skip += 2;
                            self.state = DecState::Done;
                            return Ok(Step::framing(skip, chunk_start, true));
                        }
                        Some(TrailerLine::Field(n)) => {
                            self.trailer_bytes += n;
                            if self.report_trailers {
                                trailer += n;
                            } else {
                                skip += n;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Payload bytes that come next with no framing among them: the rest of a Content-Length
    /// body or of the current chunk's data (0 anywhere else — framing to parse, a
    /// close-delimited body, the end). A relay may move that many without looking at them
    /// (`splice(2)`) and report them with [`BodyDecoder::pass`].
    pub fn opaque(&self) -> u64 {
        match self.state {
            DecState::Length(n) | DecState::Data(n) => n,
            _ => 0,
        }
    }

    /// `n` payload bytes (at most [`BodyDecoder::opaque`]) went past unseen: the step they
    /// make, as [`BodyDecoder::step`] would have given for them.
    pub fn pass(&mut self, n: u64) -> Step {
        debug_assert!(
            n <= self.opaque(),
            "{n} bytes passed, {} opaque",
            self.opaque()
        );
        if self.opaque() == 0 {
            return Step::default();
        }
        self.take_payload(n)
    }

    /// Takes up to `available` bytes of the current Length or Data state's payload.
    fn take_payload(&mut self, available: u64) -> Step {
        let (is_length, n) = match self.state {
            DecState::Length(n) => (true, n),
            DecState::Data(n) => (false, n),
            _ => return Step::default(),
        };
        let data = available.min(n);
        let left = n - data;
        self.state = match (is_length, left) {
            (true, 0) => DecState::Done,
            (true, l) => DecState::Length(l),
            (false, 0) => DecState::DataCrlf,
            (false, l) => DecState::Data(l),
        };
        Step {
            data: data as usize,
            done: is_length && left == 0,
            chunk_end: !is_length && left == 0,
            ..Step::default()
        }
    }

    /// Whether the whole body (and any trailers) has been decoded.
    pub fn is_done(&self) -> bool {
        self.state == DecState::Done
    }

    /// The peer closed: is the body complete?
    pub fn on_eof(&self) -> Result<(), BodyError> {
        match self.state {
            DecState::Done | DecState::UntilClose => Ok(()),
            _ => Err(BodyError::Incomplete),
        }
    }
}

/// The index of the first byte at or after `i` that `keep` rejects (`line.len()` if none): the
/// one scan the chunk-size line's whitespace, extension names and token values share.
fn skip(line: &[u8], mut i: usize, keep: impl Fn(u8) -> bool) -> usize {
    while line.get(i).is_some_and(|&b| keep(b)) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::test_util::decode;
    use proptest::prelude::*;

    fn decode_all(kind: BodyKind, input: &[u8]) -> Result<(Vec<u8>, Option<usize>), BodyError> {
        decode(kind, input, input.len())
    }

    #[test]
    fn chunked_valid_table() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
            (b"5;name=value\r\nhello\r\n0\r\n\r\n", b"hello"),
            (
                b"5;a;b=c;d=\"q \\\" ;x\"\r\nhello\r\n0;last\r\n\r\n",
                b"hello",
            ),
            (b"5 ; a = b\r\nhello\r\n0\r\n\r\n", b"hello"),
            (b"A\r\n0123456789\r\n1\r\nx\r\n0\r\n\r\n", b"0123456789x"),
            (b"a\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
            (b"0005\r\nhello\r\n000\r\n\r\n", b"hello"),
            (b"5\r\nhello\r\n0\r\nX-T: 1\r\nY:2\r\n\r\n", b"hello"),
            (b"0\r\n\r\n", b""),
            (b"0\r\nX: \r\n\r\n", b""),
        ];
        for (raw, want) in cases {
            for split in 1..=raw.len() {
                let (p, end) = decode(BodyKind::Chunked, raw, split)
                    .unwrap_or_else(|e| panic!("{e:?} for {:?}", String::from_utf8_lossy(raw)));
                assert_eq!(&p, want);
                assert_eq!(end, Some(raw.len()));
            }
        }
        // Bytes after the last chunk belong to the next message.
        let raw = b"3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
        let (p, end) = decode_all(BodyKind::Chunked, raw).unwrap();
        assert_eq!((&p[..], end), (&b"abc"[..], Some(13)));
    }

    #[test]
    fn chunked_invalid_table() {
        let mut long_ext = b"5;x=".to_vec();
        long_ext.extend(std::iter::repeat_n(b'a', MAX_CHUNK_LINE));
        let mut long_trailer = b"0\r\nX: ".to_vec();
        long_trailer.extend(std::iter::repeat_n(b'a', MAX_TRAILERS));
        let mut many_trailers = b"0\r\n".to_vec();
        for _ in 0..2000 {
            many_trailers.extend_from_slice(b"X-T: 123\r\n");
        }
        let cases: &[&[u8]] = &[
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\rhello\r\n0\r\n\r\n",
            b"FFFFFFFFFFFFFFFFF1\r\n",
            b"00000000000000005\r\nhello\r\n0\r\n\r\n",
            b"5;a=b\x00\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhello\r0\r\n\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"+5\r\nhello\r\n0\r\n\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"5_0\r\nhello\r\n0\r\n\r\n",
            b"\r\n5\r\nhello\r\n0\r\n\r\n",
            b"5;\r\nhello\r\n0\r\n\r\n",
            b"5;=b\r\nhello\r\n0\r\n\r\n",
            b"5;a=\r\nhello\r\n0\r\n\r\n",
            b"5;a=\"b\r\nhello\r\n0\r\n\r\n",
            b"5;a b\r\nhello\r\n0\r\n\r\n",
            b"5;a=b c\r\nhello\r\n0\r\n\r\n",
            b"5,a\r\nhello\r\n0\r\n\r\n",
            b"0\r\n\n",
            b"0\r\nX: 1\n\r\n",
            b"0\r\nX : 1\r\n\r\n",
            b"0\r\n X: 1\r\n\r\n",
            b"0\r\nX: 1\r\n y\r\n\r\n",
            b"0\r\nX\x00: 1\r\n\r\n",
            b"0\r\nX: 1\x00\r\n\r\n",
            b"0\r\nX: 1\rY\r\n\r\n",
            b"0\r\nno-colon\r\n\r\n",
            &long_ext,
            &long_trailer,
            &many_trailers,
        ];
        for raw in cases {
            for split in [1, 2, 3, 7, raw.len()] {
                let r = decode(BodyKind::Chunked, raw, split);
                assert!(
                    matches!(r, Err(BodyError::BadChunk(_))),
                    "{:?} split {split}: {r:?}",
                    String::from_utf8_lossy(&raw[..raw.len().min(60)])
                );
            }
        }
        // A size line with no CRLF beyond the limit is an error, not buffered forever.
        let endless = vec![b'0'; 17];
        assert!(BodyDecoder::new(BodyKind::Chunked).step(&endless).is_err());
        let mut endless_ext = b"5;a=".to_vec();
        endless_ext.extend(std::iter::repeat_n(b'b', MAX_CHUNK_LINE + 10));
        assert!(
            BodyDecoder::new(BodyKind::Chunked)
                .step(&endless_ext)
                .is_err()
        );
        assert_eq!(
            BodyDecoder::new(BodyKind::Chunked).step(&endless_ext[..100]),
            Ok(Step::default())
        );
    }

    #[test]
    fn reported_trailers_come_whole_at_every_split() {
        let raw = b"5\r\nhello\r\n0\r\nX-T: 1\r\nY:2\r\n\r\nNEXT";
        let end = raw.len() - 4;
        for split in 1..=raw.len() {
            let mut d = BodyDecoder::new(BodyKind::Chunked);
            d.report_trailers();
            let (mut payload, mut trailers) = (Vec::new(), Vec::new());
            let (mut consumed, mut avail) = (0, 0);
            'feed: loop {
                avail = (avail + split).min(raw.len());
                loop {
                    let s = d.step(&raw[consumed..avail]).unwrap();
                    consumed += s.skip;
                    let t = &raw[consumed..consumed + s.trailer];
                    assert!(t.is_empty() || t.ends_with(b"\r\n"), "whole lines: {t:?}");
                    assert!(s.trailer == 0 || s.data == 0);
                    trailers.extend_from_slice(t);
                    consumed += s.trailer;
                    payload.extend_from_slice(&raw[consumed..consumed + s.data]);
                    consumed += s.data;
                    if s.done {
                        break 'feed;
                    }
                    if s == Step::default() {
                        assert!(avail < raw.len(), "stuck at {consumed}");
                        break;
                    }
                }
            }
            assert_eq!(payload, b"hello", "split {split}");
            assert_eq!(trailers, b"X-T: 1\r\nY:2\r\n", "split {split}");
            assert_eq!(consumed, end, "split {split}");
        }
        // Not reporting: the same lines are framing.
        assert_eq!(
            decode_all(BodyKind::Chunked, &raw[..end]),
            Ok((b"hello".to_vec(), Some(end)))
        );
    }

    #[test]
    fn passed_payload_steps_like_read_payload() {
        // Bytes that went past unseen (spliced) leave the decoder where reading them would.
        let wire = b"5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n";
        let mut seen = BodyDecoder::new(BodyKind::Chunked);
        let mut passed = BodyDecoder::new(BodyKind::Chunked);
        let head = passed.step(&wire[..3]).unwrap();
        assert_eq!(
            (head.skip, head.chunk_start, passed.opaque()),
            (3, Some(5), 5)
        );
        let a = passed.pass(2);
        let b = passed.pass(3);
        assert_eq!(
            (a.data, a.chunk_end, b.data, b.chunk_end),
            (2, false, 3, true)
        );
        assert_eq!(passed.opaque(), 0, "the CRLF after the data is framing");
        let rest = passed.step(&wire[8..]).unwrap();
        assert_eq!(rest.chunk_start, Some(3));
        let whole = seen.step(wire).unwrap();
        assert_eq!(whole.data, 5);
        let mut length = BodyDecoder::new(BodyKind::Length(10));
        assert_eq!(length.opaque(), 10);
        assert!(!length.pass(9).done);
        let last = length.pass(1);
        assert!(last.done && length.is_done() && length.opaque() == 0);
        assert_eq!(BodyDecoder::new(BodyKind::UntilClose).opaque(), 0);
    }

    #[test]
    fn length_empty_until_close() {
        let mut d = BodyDecoder::new(BodyKind::Length(5));
        assert_eq!(d.step(b""), Ok(Step::default()));
        assert_eq!(
            d.step(b"abc"),
            Ok(Step {
                skip: 0,
                data: 3,
                done: false,
                ..Step::default()
            })
        );
        assert_eq!(d.on_eof(), Err(BodyError::Incomplete));
        assert_eq!(
            d.step(b"deGET"),
            Ok(Step {
                skip: 0,
                data: 2,
                done: true,
                ..Step::default()
            })
        );
        assert!(d.is_done());
        assert_eq!(d.on_eof(), Ok(()));
        assert_eq!(
            d.step(b"GET"),
            Ok(Step {
                skip: 0,
                data: 0,
                done: true,
                ..Step::default()
            })
        );

        let mut d = BodyDecoder::new(BodyKind::Length(0));
        assert_eq!(
            d.step(b"x"),
            Ok(Step {
                skip: 0,
                data: 0,
                done: true,
                ..Step::default()
            })
        );
        let mut d = BodyDecoder::new(BodyKind::Empty);
        assert_eq!(
            d.step(b""),
            Ok(Step {
                skip: 0,
                data: 0,
                done: true,
                ..Step::default()
            })
        );
        assert!(d.is_done());

        let mut d = BodyDecoder::new(BodyKind::UntilClose);
        assert_eq!(
            d.step(b"abc"),
            Ok(Step {
                skip: 0,
                data: 3,
                done: false,
                ..Step::default()
            })
        );
        assert_eq!(d.step(b""), Ok(Step::default()));
        assert!(!d.is_done());
        assert_eq!(d.on_eof(), Ok(()));

        let mut d = BodyDecoder::new(BodyKind::Chunked);
        assert_eq!(
            d.step(b"5\r\nhel"),
            Ok(Step {
                skip: 3,
                data: 3,
                done: false,
                chunk_start: Some(5),
                chunk_end: false,
                trailer: 0,
            })
        );
        assert_eq!(d.on_eof(), Err(BodyError::Incomplete));
        assert_eq!(
            d.step(b"lo\r\n0\r\n"),
            Ok(Step {
                skip: 0,
                data: 2,
                done: false,
                chunk_start: None,
                chunk_end: true,
                trailer: 0,
            })
        );
        assert_eq!(
            d.step(b"\r\n0\r\n"),
            Ok(Step {
                skip: 5,
                data: 0,
                done: false,
                ..Step::default()
            })
        );
        assert_eq!(d.step(b""), Ok(Step::default()));
        assert_eq!(
            d.step(b"\r\n"),
            Ok(Step {
                skip: 2,
                data: 0,
                done: true,
                ..Step::default()
            })
        );
        assert_eq!(d.on_eof(), Ok(()));
    }
    fn ext_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-z]{1,5}".prop_map(|n| format!(";{n}")),
            ("[a-z]{1,5}", "[a-z0-9]{1,5}").prop_map(|(n, v)| format!(";{n}={v}")),
            ("[a-z]{1,5}", "[ a-z,;]{0,5}").prop_map(|(n, v)| format!(" ; {n} = \"{v}\"")),
        ]
    }

    fn chunked_body() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
        (
            proptest::collection::vec(
                (
                    proptest::collection::vec(any::<u8>(), 1..40),
                    ext_strategy(),
                    any::<bool>(),
                ),
                0..8,
            ),
            ext_strategy(),
            proptest::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,8}", "[ -~]{0,12}"), 0..3),
        )
            .prop_map(|(chunks, last_ext, trailers)| {
                let mut wire = Vec::new();
                let mut payload = Vec::new();
                for (data, ext, upper) in chunks {
                    let size = if upper {
                        format!("{:X}", data.len())
                    } else {
                        format!("{:x}", data.len())
                    };
                    wire.extend_from_slice(size.as_bytes());
                    wire.extend_from_slice(ext.as_bytes());
                    wire.extend_from_slice(b"\r\n");
                    wire.extend_from_slice(&data);
                    wire.extend_from_slice(b"\r\n");
                    payload.extend_from_slice(&data);
                }
                wire.extend_from_slice(b"0");
                wire.extend_from_slice(last_ext.as_bytes());
                wire.extend_from_slice(b"\r\n");
                for (n, v) in trailers {
                    wire.extend_from_slice(format!("{n}: {}\r\n", v.trim()).as_bytes());
                }
                wire.extend_from_slice(b"\r\n");
                (wire, payload)
            })
    }

    proptest! {
        #[test]
        fn prop_chunked_split_invariance((wire, payload) in chunked_body(), split in 1usize..64, extra in proptest::collection::vec(any::<u8>(), 0..8)) {
            let mut input = wire.clone();
            input.extend_from_slice(&extra);
            let one = decode_all(BodyKind::Chunked, &input).unwrap();
            prop_assert_eq!(&one.0, &payload);
            prop_assert_eq!(one.1, Some(wire.len()));
            let split_res = decode(BodyKind::Chunked, &input, split).unwrap();
            prop_assert_eq!(&split_res, &one);
            let bytewise = decode(BodyKind::Chunked, &input, 1).unwrap();
            prop_assert_eq!(&bytewise, &one);
        }

        #[test]
        fn prop_chunked_prefix_is_incomplete((wire, _payload) in chunked_body(), cut in any::<proptest::sample::Index>()) {
            let cut = cut.index(wire.len());
            let (_, end) = decode_all(BodyKind::Chunked, &wire[..cut]).unwrap();
            prop_assert_eq!(end, None);
        }
    }
}
