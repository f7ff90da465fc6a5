//! The scripted clients: they connect, send requests (ids `/c{client}/r{n}`), read what the
//! proxy answers with [`http`], and check each response against the request it answers.

use core::net::{IpAddr, Ipv4Addr};
use std::collections::VecDeque;

use super::script::ReqKind;
use super::{World, fnv};
use crate::ConnId;
use crate::sim::http::{self, BodyLength};

/// A request a client sent, by id: what the backend must receive.
#[derive(Debug, Clone)]
pub(super) struct SentReq {
    pub(super) client: usize,
    pub(super) method: &'static str,
    pub(super) body: Vec<u8>,
    /// Sent with `TE: trailers` and an `X-Trailer: ID` trailer.
    pub(super) trailers: bool,
    /// Per server (global order): its active checks' verdict when the request was sent —
    /// failed, and how many times the verdict had changed.
    pub(super) verdicts: Vec<(bool, u64)>,
}

/// A request waiting for its response, in the order sent.
#[derive(Debug, Clone)]
pub(super) struct Pending {
    id: String,
    head_only: bool,
}

/// One scripted client connection.
#[derive(Debug)]
pub(super) struct SimClient {
    pub(super) num: usize,
    pub(super) conn: ConnId,
    pub(super) ip: IpAddr,
    pub(super) next: u32,
    pub(super) outstanding: VecDeque<Pending>,
    pub(super) inbuf: Vec<u8>,
    /// No more requests: a non-persistent request was sent, EOF was sent, or a response said close.
    pub(super) no_more: bool,
    /// Requests after the one whose response announced a close may go unanswered.
    pub(super) dropped_ok: usize,
    pub(super) eof_sent: bool,
    pub(super) reset: bool,
    pub(super) stalled: bool,
    pub(super) ever_stalled: bool,
    /// The proxy closed or shut down its side and we handled it.
    pub(super) done: bool,
}

impl World {
    pub(super) fn connect(&mut self, ip: u8) -> usize {
        let addr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, ip % 4 + 1));
        let num = self.clients.len();
        let conn =
            match self
                .harness
                .core
                .accept(self.harness.now, crate::ListenerId(0), Some(addr))
            {
                Ok(c) => c,
                Err(_) => panic!("accept refused"),
            };
        self.harness.clients.insert(
            conn,
            crate::sim::Endpoint {
                reading: true,
                ..Default::default()
            },
        );
        self.harness.pump();
        self.clients.push(SimClient {
            num,
            conn,
            ip: addr,
            next: 0,
            outstanding: VecDeque::new(),
            inbuf: Vec::new(),
            no_more: false,
            dropped_ok: 0,
            eof_sent: false,
            reset: false,
            stalled: false,
            ever_stalled: false,
            done: false,
        });
        num
    }

    /// A client able to send (connecting a new one if the chosen one cannot).
    pub(super) fn pick_client(&mut self, sel: u8) -> Option<usize> {
        if !self.clients.is_empty() {
            let c = sel as usize % self.clients.len();
            let cl = &self.clients[c];
            if !cl.no_more && !cl.done && !cl.reset && !self.harness.clients[&cl.conn].closed {
                return Some(c);
            }
        }
        if self.clients.len() >= 64 {
            return None;
        }
        Some(self.connect(sel))
    }

    pub(super) fn pick_existing(&self, sel: u8) -> Option<usize> {
        if self.clients.is_empty() {
            None
        } else {
            Some(sel as usize % self.clients.len())
        }
    }

    fn body_bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| b"abcdefghijklmnopqrstuvwxyz0123456789"[self.rng.below(36) as usize])
            .collect()
    }

    pub(super) fn send(&mut self, c: usize, kinds: &[ReqKind]) {
        let mut wire = Vec::new();
        for &kind in kinds {
            if self.clients[c].no_more {
                break;
            }
            let num = self.clients[c].num;
            let n = self.clients[c].next;
            self.clients[c].next += 1;
            let id = format!("/c{num}/r{n}");
            let (method, body, text) = self.request_bytes(&id, kind);
            wire.extend_from_slice(&text);
            self.sent.insert(
                id.clone(),
                SentReq {
                    client: c,
                    method,
                    body,
                    trailers: matches!(kind, ReqKind::PostChunked(_)),
                    verdicts: self.verdicts(),
                },
            );
            self.clients[c].outstanding.push_back(Pending {
                id,
                head_only: method == "HEAD",
            });
            if !kind.persistent() {
                self.clients[c].no_more = true;
            }
        }
        let conn = self.clients[c].conn;
        self.write_split(conn, &wire, true);
    }

    fn request_bytes(&mut self, id: &str, kind: ReqKind) -> (&'static str, Vec<u8>, Vec<u8>) {
        let host = "Host: sim\r\n";
        match kind {
            ReqKind::Get => (
                "GET",
                vec![],
                format!("GET {id} HTTP/1.1\r\n{host}\r\n").into(),
            ),
            ReqKind::Head => (
                "HEAD",
                vec![],
                format!("HEAD {id} HTTP/1.1\r\n{host}\r\n").into(),
            ),
            ReqKind::NoContent => (
                "GET",
                vec![],
                format!("GET {id}?st=204 HTTP/1.1\r\n{host}\r\n").into(),
            ),
            ReqKind::Http10 => (
                "GET",
                vec![],
                format!("GET {id} HTTP/1.0\r\n{host}\r\n").into(),
            ),
            ReqKind::Http10KeepAlive => (
                "GET",
                vec![],
                format!("GET {id} HTTP/1.0\r\n{host}Connection: keep-alive\r\n\r\n").into(),
            ),
            ReqKind::Close => (
                "GET",
                vec![],
                format!("GET {id} HTTP/1.1\r\n{host}Connection: close\r\n\r\n").into(),
            ),
            ReqKind::Post(n) | ReqKind::Put(n) => {
                let m = if matches!(kind, ReqKind::Post(_)) {
                    "POST"
                } else {
                    "PUT"
                };
                let body = self.body_bytes(n as usize);
                let mut t: Vec<u8> =
                    format!("{m} {id} HTTP/1.1\r\n{host}Content-Length: {n}\r\n\r\n").into();
                t.extend_from_slice(&body);
                (m, body, t)
            }
            ReqKind::PostExpect(n) => {
                let body = self.body_bytes(n as usize);
                let mut t: Vec<u8> = format!(
                    "POST {id} HTTP/1.1\r\n{host}Expect: 100-continue\r\nContent-Length: {n}\r\n\r\n"
                )
                .into();
                t.extend_from_slice(&body);
                ("POST", body, t)
            }
            ReqKind::PostChunked(n) => {
                let body = self.body_bytes(n as usize);
                // With trailers, announced: the proxy must forward `X-Trailer` (and drop the
                // framing field) to the backend, and the backend's trailers back.
                let mut t: Vec<u8> = format!(
                    "POST {id} HTTP/1.1\r\n{host}TE: trailers\r\nTransfer-Encoding: chunked\r\n\r\n"
                )
                .into();
                let mut rest = &body[..];
                while !rest.is_empty() {
                    let k = 1 + self.rng.below(rest.len() as u64) as usize;
                    t.extend_from_slice(format!("{k:x}\r\n").as_bytes());
                    t.extend_from_slice(&rest[..k]);
                    t.extend_from_slice(b"\r\n");
                    rest = &rest[k..];
                }
                t.extend_from_slice(
                    format!("0\r\nX-Trailer: {id}\r\nContent-Length: 1\r\n\r\n").as_bytes(),
                );
                ("POST", body, t)
            }
        }
    }

    /// Reads what the proxy wrote to clients; returns whether anything happened.
    pub(super) fn clients_read(&mut self) -> bool {
        let mut progress = false;
        for c in 0..self.clients.len() {
            if self.clients[c].reset || self.clients[c].done {
                continue;
            }
            let conn = self.clients[c].conn;
            let data = self.harness.take_client(conn);
            if !data.is_empty() {
                progress = true;
                self.digest = fnv(fnv(self.digest, &conn.index.to_le_bytes()), &data);
                self.clients[c].inbuf.extend_from_slice(&data);
            }
            let ep = &self.harness.clients[&conn];
            let peer_done = ep.closed || ep.shutdown;
            if !data.is_empty() || peer_done {
                self.parse_responses(c, peer_done);
            }
            if peer_done && !self.clients[c].done {
                progress = true;
                self.client_peer_done(c);
            }
        }
        progress
    }

    fn parse_responses(&mut self, c: usize, peer_done: bool) {
        loop {
            let buf = &self.clients[c].inbuf;
            if buf.is_empty() {
                return;
            }
            let num = self.clients[c].num;
            let (head, head_len) = match http::parse_response_head(buf) {
                Ok(Some(h)) => h,
                Ok(None) => return,
                Err(e) => {
                    let text = String::from_utf8_lossy(&buf[..buf.len().min(200)]).into_owned();
                    self.violation(format!(
                        "client c{num}: unparseable response ({e}): {text:?}"
                    ));
                    self.clients[c].inbuf.clear();
                    return;
                }
            };
            let status = head.status;
            if (100..200).contains(&status) {
                self.clients[c].inbuf.drain(..head_len);
                continue;
            }
            let Some(front) = self.clients[c].outstanding.front().cloned() else {
                let text = String::from_utf8_lossy(&buf[..head_len]).into_owned();
                self.violation(format!(
                    "client c{num}: response with no request outstanding: {text:?}"
                ));
                self.clients[c].inbuf.clear();
                return;
            };
            let length = head.response_body(front.head_only);
            let read = length
                .clone()
                .and_then(|len| http::read_body_and_trailers(&buf[head_len..], len, peer_done));
            let ((body, trailers), used) = match read {
                Ok(Some(x)) => x,
                Ok(None) => return,
                Err(e) => {
                    self.violation(format!(
                        "client c{num}: bad body framing for {}: {e}",
                        front.id
                    ));
                    self.clients[c].inbuf.clear();
                    return;
                }
            };
            self.clients[c].inbuf.drain(..head_len + used);
            self.clients[c].outstanding.pop_front();
            let has = |name: &str, token: &str| {
                head.headers_named(name)
                    .iter()
                    .any(|v| v.to_ascii_lowercase().contains(token))
            };
            let (conn_close, conn_ka) =
                (has("connection", "close"), has("connection", "keep-alive"));
            // A backend echoes the request id in X-Req-Id; a response the proxy generated has none.
            let req_id = head.headers_named("x-req-id").last().map(|v| v.to_string());
            let delimited_by_close = length == Ok(BodyLength::UntilClose);
            let closing = conn_close || (head.version == 0 && !conn_ka) || delimited_by_close;
            if delimited_by_close && self.cut.contains(&front.id) {
                // The backend cut this response and the proxy relays it close-delimited: a FIN
                // cannot tell the client it is truncated (only a reset could).
                self.stats.undetectable_truncations += 1;
                let reset = self.harness.clients[&self.clients[c].conn].reset;
                if !reset {
                    self.stats.truncated_with_fin += 1;
                }
                let cl = &mut self.clients[c];
                cl.no_more = true;
                cl.dropped_ok = cl.outstanding.len();
                continue;
            }
            // A backend that sent trailers says so in the body (`tr;`): exactly its own, and
            // never a framing field, reach the client; otherwise none do.
            let want: &[(String, String)] = &if body.windows(4).any(|w| w == b";tr;") {
                vec![("x-echo".to_string(), front.id.clone())]
            } else {
                Vec::new()
            };
            if trailers != want {
                self.violation(format!(
                    "client c{num}: trailers {trailers:?} for {}, want {want:?}",
                    front.id
                ));
            }
            self.check_response(c, &front, status, req_id, body);
            if closing {
                let cl = &mut self.clients[c];
                cl.no_more = true;
                cl.dropped_ok = cl.outstanding.len();
            }
        }
    }

    fn check_response(
        &mut self,
        c: usize,
        front: &Pending,
        status: u16,
        req_id: Option<String>,
        body: Vec<u8>,
    ) {
        let num = self.clients[c].num;
        *self.stats.statuses.entry(status).or_default() += 1;
        self.results.insert(front.id.clone(), status);
        match req_id {
            Some(rid) => {
                if rid != front.id {
                    let owner = self.sent.get(&rid).map_or("nobody".to_string(), |s| {
                        format!("c{}", self.clients[s.client].num)
                    });
                    self.violation(format!(
                        "client c{num} waiting for {} got the response to {rid} (sent by {owner})",
                        front.id
                    ));
                    return;
                }
                let want_body = if front.head_only { None } else { Some(&body) };
                let ok = self.produced.get(&rid).is_some_and(|v| {
                    v.iter()
                        .any(|(s, b)| *s == status && want_body.is_none_or(|wb| wb == b))
                });
                if !ok {
                    self.violation(format!(
                        "client c{num}: response to {rid} (status {status}, body {:?}) is not what \
                         the backend produced ({:?})",
                        String::from_utf8_lossy(&body),
                        self.produced.get(&rid)
                    ));
                }
            }
            None => {
                if status == 408 {
                    self.violation(format!(
                        "client c{num}: got a 408 for {} (a backend's stray 408 on an idle \
                         connection reached a client)",
                        front.id
                    ));
                } else if !matches!(status, 502..=504) {
                    self.violation(format!(
                        "client c{num}: unexpected proxy-generated status {status} for {}",
                        front.id
                    ));
                }
            }
        }
    }

    fn client_peer_done(&mut self, c: usize) {
        self.clients[c].done = true;
        let cl = &self.clients[c];
        let num = cl.num;
        let unanswered = cl.outstanding.len();
        if unanswered == 0 || unanswered <= cl.dropped_ok {
            return;
        }
        let front = cl.outstanding.front().expect("non-empty").id.clone();
        // A client that closes (EOF) while its request waits in the queue for a slot has left:
        // the request is dropped before any backend takes it in. It may have reached one
        // already, lost (the backend had closed the connection, as with a stray 408 on a reused
        // one): the proxy then re-sends it, and a re-send that finds every slot taken waits in
        // the queue behind the requests already there, like a newcomer. So only arrivals the
        // backend took in count against it (a request taken in and then re-sent was cut: see
        // `cut`; none of the queue's configurations here time a backend out).
        let left_queue = cl.eof_sent && self.taken_in(&front) == 0;
        let explained = self.cut.contains(&front) || cl.ever_stalled || left_queue;
        self.stats.truncated += 1;
        if !explained {
            let partial = String::from_utf8_lossy(&cl.inbuf).into_owned();
            self.violation(format!(
                "client c{num}: proxy closed the connection with {unanswered} request(s) \
                 unanswered, first {front} (neither cut by a backend nor a stalled client); \
                 partial response: {partial:?}"
            ));
        }
    }
}
