//! HTTP/1.1 message framing (RFC 9112): parsing and validating heads, deciding how a body is
//! delimited, decoding bodies incrementally, and writing the heads we forward.
//!
//! Strictness (documented decisions, each pinned by a unit test beside the code that
//! decides it):
//! - Every line of a head must end in CRLF: bare LF and bare CR are rejected, never normalised.
//! - obs-fold, whitespace before the first field line, whitespace between a field name and the
//!   colon, CTLs/NUL/DEL in values and non-token names are rejected (responses too: the caller
//!   answers 502 for any response error).
//! - Content-Length must be one field line holding 1*DIGIT that fits u64; any duplicate line,
//!   even identical, and any list is rejected (nginx's upstream behaviour).
//! - Transfer-Encoding must be exactly `chunked` (case-insensitive). A well-formed coding list
//!   ending in a single `chunked` (`gzip, chunked`) is `NotImplemented` (501); everything else
//!   (`xchunked`, `identity`, `chunked, identity`, `chunked, chunked`, two TE lines, TE in
//!   HTTP/1.0, TE together with Content-Length) is `BadRequest` (400). Responses: the same rules,
//!   any error → 502.
//! - Request targets must be origin-form (`/...`), or `*` for OPTIONS. Absolute-form is rejected
//!   with 400 (we are a reverse proxy; RFC 9112 §3.2.2 says servers MUST accept it, which we trade
//!   for a single, unambiguous Host). Only visible ASCII is accepted in the target.
//! - HTTP/1.1 requests need exactly one valid, non-empty Host; HTTP/1.0 requests may have none,
//!   never two. An empty Host is rejected (we never receive no-authority URIs).
//! - `Expect: 100-continue` (HTTP/1.1) sets `expect_continue`; any other Expect value is ignored
//!   (the field is always stripped, never forwarded); HTTP/1.0 Expect is ignored.
//! - A Connection option never strips `Host` (see `headers::is_protected_from_connection`);
//!   framing fields named in Connection are harmless because framing is always regenerated from
//!   [`OutBody`].
//! - Chunked trailers are parsed, validated and size-limited ([`MAX_TRAILERS`]); the engine
//!   forwards them only when both sides are chunked and the client sent `TE: trailers` (then
//!   without hop-by-hop, framing and other fields RFC 9110 §6.5.1 keeps out of trailers:
//!   `headers::trailer_forwardable`), and discards them otherwise.
//!
//! | module | holds |
//! |---|---|
//! | `head` | the message vocabulary: [`Head`], [`Version`], [`Method`], [`BodyKind`], [`Span`] |
//! | `parse` | head parsing and validation: [`Head::parse_request`], [`Head::parse_response`] |
//! | `write` | head writing: [`write_request_head`], [`write_response_head`], error responses |
//! | `body` | body decoding: [`BodyDecoder`], chunked framing and trailers |

mod body;
mod head;
mod parse;
#[cfg(test)]
mod test_util;
mod write;

pub use body::{BodyDecoder, BodyError, MAX_CHUNK_LINE, MAX_TRAILERS, Step};
pub use head::{BodyKind, ConnectionOptions, Field, Head, Method, Span, Version};
pub use parse::{HeadError, HeadLimits, MAX_HEADERS};
pub use write::{
    CONTINUE_100, CRLF, Forwarding, LAST_CHUNK, OutBody, ResponseOptions, reason_phrase,
    write_chunk_size, write_error_response, write_error_response_with, write_informational,
    write_last_chunk, write_request_head, write_response_head,
};

/// Properties that span the parser, the writer and the decoder.
#[cfg(test)]
mod tests {
    use super::test_util::{LIMITS, decode, fwd, valid_request};
    use super::*;
    use bytes::BytesMut;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn prop_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let limits = HeadLimits { max_request_line: 64, max_head: 200 };
            let mut h = Head::new();
            let _ = h.parse_request(&bytes, &limits);
            let _ = h.parse_response(&bytes, Method::Get, &limits);
            for kind in [BodyKind::Chunked, BodyKind::Length(7), BodyKind::UntilClose] {
                let _ = decode(kind, &bytes, 3);
            }
        }

        #[test]
        fn prop_mutated_heads_never_panic(raw in valid_request(), pos in any::<proptest::sample::Index>(), b in any::<u8>()) {
            let mut raw = raw;
            let i = pos.index(raw.len());
            raw[i] = b;
            let mut h = Head::new();
            if let Ok(true) = h.parse_request(&raw, &LIMITS) {
                let mut out = BytesMut::new();
                write_request_head(&h, &raw, OutBody::None, false, &fwd(Some("x")), &mut out);
                // What we forward always re-parses (an HTTP/1.0 request without Host gets the
                // default Host added).
                let mut again = Head::new();
                let r = again.parse_request(&out, &LIMITS);
                prop_assert_eq!(r, Ok(true));
            }
        }
    }
}
