//! The relay: body bytes moved between the two sides without copying, reframed on the way
//! (chunked in and out, close-delimited to chunked, or as they came), and tunnels after a 101.

use bytes::{Buf, Bytes, BytesMut};

use super::client::Phase;
use super::exchange::REPLAY_LIMIT;
use super::table::Role;
use super::{Core, touch};
use crate::connection::{AfterFlush, Buffers};
use crate::framing::{self, OutBody};
use crate::headers;
use crate::rules::{Failure, NotReusable};
use crate::{ConnId, Time};

/// A chunk-size line: up to 16 hex digits and CRLF.
pub(super) const CHUNK_LINE: usize = 18;

impl Core {
    /// Moves request body bytes from the client to the upstream. Returns whether to continue.
    pub(super) fn relay_request_body(&mut self, now: Time, id: ConnId) -> bool {
        let hw = self.config.limits.write_high_water;
        let max_body = self.config.limits.max_body;
        let buffer = self.config.limits.request_buffer;
        let replay_limit = replay_limit(buffer);
        loop {
            let Some(cl) = self.conns.client(id) else {
                return false;
            };
            let upstream = cl.ex.upstream;
            if upstream
                .and_then(|u| self.conns.get(u))
                .is_some_and(|u| u.buf.wq_len >= hw)
            {
                return false;
            }
            let Some(c) = self.conns.get_mut(id) else {
                return false;
            };
            let Role::Client(cl) = &mut c.role else {
                return false;
            };
            let ex = &mut cl.ex;
            if c.buf.rbuf.is_empty() && !ex.req_decoder.is_done() {
                return false;
            }
            let step = match ex.req_decoder.step(&c.buf.rbuf) {
                Ok(s) => s,
                Err(_) => {
                    self.release_upstream_of(id);
                    self.client_error(now, id, 400);
                    return false;
                }
            };
            if step.skip == 0 && step.trailer == 0 && step.data == 0 && !step.done {
                return false;
            }
            cl.body_progress = now;
            c.buf.rbuf.advance(step.skip);
            keep_trailers(&mut ex.req_trailers, c.buf.rbuf.split_to(step.trailer));
            if step.data > 0 {
                ex.req_bytes += step.data as u64;
                if max_body > 0 && ex.req_bytes > max_body {
                    self.release_upstream_of(id);
                    self.client_error(now, id, 413);
                    return false;
                }
            }
            let data = c.buf.rbuf.split_to(step.data).freeze();
            let mode = if ex.req_chunked {
                Reframe::Chunks
            } else {
                Reframe::Raw
            };
            let mut pieces = reframe(mode, &step, data, &mut c.buf);
            if step.done && mode == Reframe::Chunks {
                pieces[3] = last_chunk(&mut ex.req_trailers, &mut c.buf);
            }
            if step.done {
                ex.req_done = true;
            }
            for p in &pieces {
                if p.is_empty() {
                    continue;
                }
                if ex.replayable {
                    ex.replay_len += p.len();
                    // While buffering, the copy is the only one: kept whatever its size.
                    if ex.replay_len > replay_limit && !ex.buffering {
                        ex.replayable = false;
                        ex.replay.clear();
                    } else {
                        ex.replay.push_back(p.clone());
                    }
                }
            }
            let done = ex.req_done;
            // The body is complete, or too large to buffer: now it needs its upstream.
            let flush = ex.buffering && (done || ex.replay_len as u64 >= buffer);
            if flush {
                ex.buffering = false;
            }
            if let Some(u) = upstream {
                for p in pieces {
                    self.push(now, u, p);
                }
                if done {
                    self.request_maybe_sent(now, u);
                }
            }
            if flush {
                // Sends the head and the buffered body (the replay copy).
                self.assign_upstream(now, id, false, None);
                if let Some(cl) = self.conns.client_mut(id)
                    && cl.ex.replay_len > replay_limit
                {
                    cl.ex.replayable = false;
                    cl.ex.replay.clear();
                }
            }
            if done {
                touch(&mut self.touched, id);
                return true;
            }
        }
    }

    /// Moves response body bytes to the client. Returns whether to keep processing.
    pub(super) fn relay_response_body(&mut self, now: Time, id: ConnId, cid: ConnId) -> bool {
        let hw = self.config.limits.write_high_water;
        loop {
            if self.conns.get(cid).is_none_or(|c| c.buf.wq_len >= hw) {
                return false;
            }
            let Some((c, cc)) = self.conns.pair_mut(id, cid) else {
                return false;
            };
            let Role::Client(cl) = &mut cc.role else {
                return false;
            };
            let step = match cl.ex.resp_decoder.step(&c.buf.rbuf) {
                Ok(s) => s,
                Err(_) => {
                    self.upstream_failed(now, id, Failure::BadResponse);
                    return false;
                }
            };
            if step.skip == 0 && step.trailer == 0 && step.data == 0 && !step.done {
                return false;
            }
            let mode = match (cl.ex.resp_out, cl.ex.resp_in_chunked) {
                (OutBody::Chunked, true) => Reframe::Chunks,
                (OutBody::Chunked, false) => Reframe::EachRead,
                _ => Reframe::Raw,
            };
            c.buf.rbuf.advance(step.skip);
            keep_trailers(&mut cl.ex.resp_trailers, c.buf.rbuf.split_to(step.trailer));
            let data = c.buf.rbuf.split_to(step.data).freeze();
            let mut pieces = reframe(mode, &step, data, &mut cc.buf);
            if step.done && mode == Reframe::Chunks {
                pieces[3] = last_chunk(&mut cl.ex.resp_trailers, &mut cc.buf);
            }
            for p in pieces {
                self.push(now, cid, p);
            }
            if step.done {
                self.finish_response(now, id, cid);
                return false;
            }
        }
    }

    /// One side of a tunnel closed or timed out: both close once their queued bytes are out.
    pub(super) fn end_tunnel(&mut self, client: ConnId) {
        let u = self.conns.client(client).and_then(|cl| cl.ex.upstream);
        for id in [Some(client), u].into_iter().flatten() {
            let Some(c) = self.conns.get_mut(id) else {
                continue;
            };
            c.buf.after_flush = AfterFlush::Close;
            if let Role::Client(cl) = &mut c.role {
                cl.phase = Phase::Closing;
            }
            touch(&mut self.touched, id);
            if c.buf.is_flushed() {
                match c.role {
                    Role::Client(_) => self.close(id, false),
                    Role::Upstream(_) => self.close_upstream(id, false, NotReusable::Upgraded),
                }
            }
        }
    }
}

/// How much of a request body is kept for a re-send: [`REPLAY_LIMIT`], or the request buffer
/// when that is larger (a buffered body can be re-sent whole).
fn replay_limit(request_buffer: u64) -> usize {
    usize::try_from(request_buffer).map_or(usize::MAX, |b| b.max(REPLAY_LIMIT))
}

/// Keeps the forwardable fields of complete trailer lines (`headers::trailer_forwardable`;
/// hop-by-hop, framing and the like are dropped) for the last chunk.
fn keep_trailers(kept: &mut BytesMut, lines: BytesMut) {
    for line in lines.split_inclusive(|&b| b == b'\n') {
        let name = line.split(|&b| b == b':').next().unwrap_or_default();
        if headers::trailer_forwardable(name) {
            kept.extend_from_slice(line);
        }
    }
}

/// The last chunk with the trailers kept for it (taken), or the plain one.
fn last_chunk(trailers: &mut BytesMut, buf: &mut Buffers) -> Bytes {
    if trailers.is_empty() {
        return Bytes::from_static(framing::LAST_CHUNK);
    }
    framing::write_last_chunk(trailers, buf.scratch(trailers.len() + 5));
    trailers.clear();
    buf.take_scratch()
}

/// How body bytes are framed on the way out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reframe {
    /// As they came (Content-Length on both sides, or close-delimited toward an HTTP/1.0 client).
    Raw,
    /// Chunked in, chunked out: the sender's chunk boundaries are kept, so the output does not
    /// depend on how reads split the input (and a 1-byte read does not become a 1-byte chunk).
    Chunks,
    /// Close-delimited in, chunked out: each read becomes a chunk.
    EachRead,
}

/// The pieces to queue for one decoder step: chunk-size line, payload, chunk CRLF, last chunk.
/// Small framing pieces come from `buf`'s scratch or are static; the payload is passed through.
pub(super) fn reframe(
    mode: Reframe,
    step: &framing::Step,
    data: Bytes,
    buf: &mut Buffers,
) -> [Bytes; 4] {
    let mut out = [Bytes::new(), Bytes::new(), Bytes::new(), Bytes::new()];
    match mode {
        Reframe::Raw => out[1] = data,
        Reframe::Chunks => {
            if let Some(size) = step.chunk_start {
                framing::write_chunk_size(size, buf.scratch(CHUNK_LINE));
                out[0] = buf.take_scratch();
            }
            out[1] = data;
            if step.chunk_end {
                out[2] = Bytes::from_static(framing::CRLF);
            }
            if step.done {
                out[3] = Bytes::from_static(framing::LAST_CHUNK);
            }
        }
        Reframe::EachRead => {
            if !data.is_empty() {
                framing::write_chunk_size(data.len() as u64, buf.scratch(CHUNK_LINE));
                out[0] = buf.take_scratch();
                out[1] = data;
                out[2] = Bytes::from_static(framing::CRLF);
            }
        }
    }
    out
}
