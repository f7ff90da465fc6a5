//! The scripted backends: they accept connects (or refuse them when down), read the requests
//! the proxy forwards with [`http`], check them against what the client sent, and answer as
//! their [`BackendScript`](super::BackendScript) says — framing, delays, caps, cuts, resets,
//! idle closes, stray 408s.

use core::time::Duration;
use std::collections::{BTreeSet, VecDeque};

use super::schedule::Ev;
use super::script::{BackendEvent, Framing};
use super::{Arrival, FNV_OFFSET, World, fnv};
use crate::config::PoolKeyMode;
use crate::sim::http;
use crate::{ConnId, Time};

/// A request a backend has read and not answered yet.
#[derive(Debug)]
pub(super) struct Job {
    id: String,
    method: String,
    body: Vec<u8>,
    no_content: bool,
    close: bool,
    /// The request announced `TE: trailers`: a chunked response carries trailers.
    te_trailers: bool,
    /// An active health check (answered by `answer_check`).
    check: bool,
}

/// The backend's side of one upstream connection.
#[derive(Debug)]
pub(super) struct UpConn {
    pub(super) server: usize,
    pub(super) group: usize,
    pub(super) inbuf: Vec<u8>,
    pub(super) queue: VecDeque<Job>,
    pub(super) busy: bool,
    pub(super) served: u32,
    pub(super) last_active: Time,
    /// The backend closed (or reset) its side.
    pub(super) closed: bool,
    /// It closed with a stray `408` (idle), which tells the proxy nothing sent after was taken in.
    pub(super) sent_408: bool,
    pub(super) fin_delivered: bool,
    /// Data arrived after the backend closed: deliver a reset rather than a FIN.
    pub(super) lost_data: bool,
    pub(super) announced_close: bool,
    pub(super) close_delimited: bool,
    /// The core closed it.
    pub(super) gone: bool,
    pub(super) ids: Vec<String>,
    pub(super) xff: BTreeSet<String>,
}

impl UpConn {
    /// The backend holds a health check it has not answered yet.
    pub(super) fn checking(&self) -> bool {
        self.queue.front().is_some_and(|j| j.check)
    }
}

impl World {
    fn server_index(&self, u: ConnId) -> usize {
        let s = self.harness.upstreams[&u]
            .server
            .expect("upstream has a server");
        self.harness
            .core
            .servers()
            .iter()
            .position(|x| *x == s)
            .expect("known server")
    }

    pub(super) fn handle_connects(&mut self) -> bool {
        let mut progress = false;
        while let Some(&u) = self.harness.connects.first() {
            progress = true;
            let server = self.server_index(u);
            if self.scripts[server].down {
                self.harness.refuse_connect();
            } else if self.scripts[server].rejected {
                self.harness.reject_connect();
            } else {
                let group = self.harness.upstreams[&u]
                    .server
                    .expect("server")
                    .upstream
                    .0 as usize;
                self.ups.insert(
                    u,
                    UpConn {
                        server,
                        group,
                        inbuf: Vec::new(),
                        queue: VecDeque::new(),
                        busy: false,
                        served: 0,
                        last_active: self.harness.now,
                        closed: false,
                        sent_408: false,
                        fin_delivered: false,
                        lost_data: false,
                        announced_close: false,
                        close_delimited: false,
                        gone: false,
                        ids: Vec::new(),
                        xff: BTreeSet::new(),
                    },
                );
                self.schedule_idle(u);
                self.harness.accept_connect();
            }
        }
        progress
    }

    pub(super) fn schedule_idle(&mut self, u: ConnId) {
        let up = &self.ups[&u];
        let s = &self.scripts[up.server];
        let t = up.last_active;
        for ms in [s.idle_close_ms, s.stray_408_ms].into_iter().flatten() {
            self.schedule(t.plus(Duration::from_millis(ms)), Ev::IdleCheck(u));
        }
    }

    pub(super) fn backends_read(&mut self) -> bool {
        let mut progress = false;
        let ids: Vec<ConnId> = self.ups.keys().copied().collect();
        for u in ids {
            if self.ups[&u].gone {
                continue;
            }
            if self.harness.upstreams[&u].closed {
                self.ups.get_mut(&u).expect("known").gone = true;
                progress = true;
                continue;
            }
            let data = self.harness.take_upstream(u);
            if !data.is_empty() {
                progress = true;
                self.digest = fnv(fnv(self.digest, &(u.index | 1 << 31).to_le_bytes()), &data);
                self.ups
                    .get_mut(&u)
                    .expect("known")
                    .inbuf
                    .extend_from_slice(&data);
                self.backend_parse(u);
            }
            if self.backend_serve(u) {
                progress = true;
            }
        }
        progress
    }

    fn backend_parse(&mut self, u: ConnId) {
        loop {
            let up = self.ups.get_mut(&u).expect("known");
            if up.inbuf.is_empty() {
                return;
            }
            let parsed = match parse_request(&up.inbuf) {
                Ok(Some(p)) => p,
                Ok(None) => return,
                Err(e) => {
                    let text = String::from_utf8_lossy(&up.inbuf).into_owned();
                    up.inbuf.clear();
                    self.violation(format!(
                        "backend got an unparseable request ({e}): {text:?}"
                    ));
                    return;
                }
            };
            up.inbuf.drain(..parsed.used);
            let (server, group, lost) = (up.server, up.group, up.closed);
            if lost {
                up.lost_data = true;
                self.stats.lost += 1;
            }
            self.arrivals.push(Arrival {
                id: parsed.id.clone(),
                method: parsed.method.clone(),
                server,
                conn: u,
                lost,
                at: self.harness.now,
            });
            if self.is_check(group, &parsed.id) {
                if parsed.method != "GET" || !parsed.body.is_empty() {
                    self.violation(format!("a health check {} with a body", parsed.method));
                }
                let up = self.ups.get_mut(&u).expect("known");
                if !lost {
                    up.queue.push_back(Job {
                        id: parsed.id,
                        method: parsed.method,
                        body: Vec::new(),
                        no_content: false,
                        close: parsed.close,
                        te_trailers: false,
                        check: true,
                    });
                }
                continue;
            }
            let up = self.ups.get_mut(&u).expect("known");
            up.ids.push(parsed.id.clone());
            if let Some(x) = &parsed.xff {
                up.xff.insert(x.clone());
            }
            let xff_n = up.xff.len();
            if parsed.expect {
                self.violation(format!(
                    "{}: Expect was forwarded to the backend",
                    parsed.id
                ));
            }
            // A client that announced trailers sent `X-Trailer: ID` (and a Content-Length
            // trailer the proxy must drop); TE and the trailer arrive, or neither.
            let announced = self.sent.get(&parsed.id).is_some_and(|s| s.trailers);
            let want: &[(String, String)] = &if announced {
                vec![("x-trailer".to_string(), parsed.id.clone())]
            } else {
                Vec::new()
            };
            if parsed.trailers != want || parsed.te_trailers != announced {
                self.violation(format!(
                    "{}: backend got trailers {:?} (TE: trailers {}), want {want:?}",
                    parsed.id, parsed.trailers, parsed.te_trailers
                ));
            }
            // What the client sent, intact?
            match self.sent.get(&parsed.id).cloned() {
                None => self.violation(format!("backend got a request nobody sent: {}", parsed.id)),
                Some(s) => {
                    if s.method != parsed.method || s.body != parsed.body {
                        let msg = format!(
                            "backend got {} {} with body {:?}; the client sent {} with body {:?}",
                            parsed.method,
                            parsed.id,
                            String::from_utf8_lossy(&parsed.body),
                            s.method,
                            String::from_utf8_lossy(&s.body)
                        );
                        self.violation(msg);
                    }
                    let cip = self.clients[s.client].ip.to_string();
                    if parsed.xff.as_deref() != Some(cip.as_str()) {
                        self.violation(format!(
                            "{}: X-Forwarded-For {:?}, client address {cip}",
                            parsed.id, parsed.xff
                        ));
                    }
                }
            }
            if !lost {
                self.check_assignment(&parsed.id, server);
            }
            if self.harness.core.config().upstreams[group].pool_key == PoolKeyMode::Client
                && xff_n > 1
            {
                let seen = self.ups[&u].xff.clone();
                self.violation(format!(
                    "pool_key=client but upstream connection {u:?} carried requests of clients {seen:?}"
                ));
            }
            // A second arrival is a re-send the backend may act on twice, unless every earlier
            // one was lost on a connection the backend had closed with a stray 408: nothing
            // acted on it, and the 408 told the proxy so (`rules::retry`'s `Reused408` re-sends
            // any method). Lost after a plain close, the proxy could not know: no re-send.
            let arrived: Vec<&Arrival> =
                self.arrivals.iter().filter(|a| a.id == parsed.id).collect();
            let taken_before = arrived[..arrived.len() - 1]
                .iter()
                .any(|a| !a.lost || !self.ups.get(&a.conn).is_some_and(|up| up.sent_408));
            if parsed.method != "GET"
                && parsed.method != "HEAD"
                && parsed.method != "PUT"
                && taken_before
            {
                let where_: Vec<_> = self
                    .arrivals
                    .iter()
                    .filter(|a| a.id == parsed.id)
                    .map(|a| (a.conn, a.lost))
                    .collect();
                self.violation(format!(
                    "non-idempotent {} {} reached backends twice (conn, lost): {where_:?}",
                    parsed.method, parsed.id
                ));
            }
            if !lost {
                let up = self.ups.get_mut(&u).expect("known");
                up.queue.push_back(Job {
                    id: parsed.id,
                    method: parsed.method,
                    body: parsed.body,
                    no_content: parsed.no_content,
                    close: parsed.close,
                    te_trailers: parsed.te_trailers,
                    check: false,
                });
            }
        }
    }

    /// Starts answering the next queued request, if any. Returns whether anything happened.
    pub(super) fn backend_serve(&mut self, u: ConnId) -> bool {
        let mut progress = false;
        loop {
            let up = &self.ups[&u];
            if up.busy || up.closed || up.gone || up.queue.is_empty() {
                return progress;
            }
            progress = true;
            let delay = self.scripts[up.server].delay_ms;
            if delay > 0 {
                self.ups.get_mut(&u).expect("known").busy = true;
                let at = self.harness.now.plus(Duration::from_millis(delay));
                self.schedule(at, Ev::Respond(u));
                return progress;
            }
            self.respond(u);
        }
    }

    pub(super) fn respond(&mut self, u: ConnId) {
        let up = self.ups.get_mut(&u).expect("known");
        up.busy = false;
        if up.closed || up.gone {
            return;
        }
        let Some(job) = up.queue.pop_front() else {
            return;
        };
        if job.check {
            return self.answer_check(u, &job.id);
        }
        let server = up.server;
        let script = self.scripts[server].clone();
        self.server_count[server] += 1;
        let k = self.server_count[server];
        let up = self.ups.get_mut(&u).expect("known");
        up.served += 1;
        up.last_active = self.harness.now;
        let hits = |every: Option<u32>| every.is_some_and(|e| e > 0 && k.is_multiple_of(e));
        if hits(script.reset_every) {
            up.closed = true;
            self.cut.insert(job.id);
            self.harness.reset(u);
            return;
        }
        let last = script.max_requests.is_some_and(|m| up.served >= m);
        let head_only = job.method == "HEAD";
        let status: u16 = if job.no_content { 204 } else { 200 };
        let mut body = Vec::new();
        if status != 204 {
            body.extend_from_slice(
                format!(
                    "id={};m={};len={};sum={:016x};",
                    job.id,
                    job.method,
                    job.body.len(),
                    fnv(FNV_OFFSET, &job.body)
                )
                .as_bytes(),
            );
            if job.te_trailers && script.framing == Framing::Chunked {
                body.extend_from_slice(b"tr;");
            }
            for i in 0..script.body_size {
                body.push(b'a' + (i % 26) as u8);
            }
        }
        // HEAD answers carry the framing headers a GET would get, but no body.
        let framing = if status == 204 {
            Framing::ContentLength
        } else {
            script.framing
        };
        let close_after = job.close || last || (framing == Framing::CloseDelimited && !head_only);
        let mut wire: Vec<u8> = Vec::new();
        if script.early_hints {
            wire.extend_from_slice(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n");
        }
        let reason = if status == 204 { "No Content" } else { "OK" };
        wire.extend_from_slice(
            format!("HTTP/1.1 {status} {reason}\r\nX-Req-Id: {}\r\n", job.id).as_bytes(),
        );
        if let Some(h) = script.keep_alive_hint {
            wire.extend_from_slice(format!("Keep-Alive: timeout={h}\r\n").as_bytes());
        }
        if (job.close || (last && script.announce_close)) && framing != Framing::CloseDelimited {
            wire.extend_from_slice(b"Connection: close\r\n");
            up.announced_close = true;
        }
        up.close_delimited = framing == Framing::CloseDelimited && !head_only;
        let mut body_wire = Vec::new();
        match framing {
            Framing::ContentLength => {
                if status != 204 {
                    wire.extend_from_slice(
                        format!("Content-Length: {}\r\n", body.len()).as_bytes(),
                    );
                }
                if !head_only {
                    body_wire.extend_from_slice(&body);
                }
            }
            Framing::Chunked if head_only => {
                wire.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
            }
            Framing::CloseDelimited if head_only => {}
            Framing::Chunked => {
                wire.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
                let mut rest = &body[..];
                while !rest.is_empty() {
                    let n = 1 + self.rng.below(rest.len() as u64) as usize;
                    body_wire.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                    body_wire.extend_from_slice(&rest[..n]);
                    body_wire.extend_from_slice(b"\r\n");
                    rest = &rest[n..];
                }
                if job.te_trailers {
                    // Its own field, and a hop-by-hop one the proxy must drop.
                    body_wire.extend_from_slice(
                        format!("0\r\nX-Echo: {}\r\nConnection: x\r\n\r\n", job.id).as_bytes(),
                    );
                } else {
                    body_wire.extend_from_slice(b"0\r\n\r\n");
                }
            }
            Framing::CloseDelimited => body_wire.extend_from_slice(&body),
        }
        wire.extend_from_slice(b"\r\n");
        let recorded_body = if head_only { Vec::new() } else { body };
        if hits(script.cut_every) && !body_wire.is_empty() {
            let up = self.ups.get_mut(&u).expect("known");
            up.closed = true;
            self.cut.insert(job.id.clone());
            wire.extend_from_slice(&body_wire[..body_wire.len() / 2]);
            self.write_split(u, &wire, false);
            if framing == Framing::CloseDelimited {
                self.harness.reset(u);
            } else {
                self.fin(u);
            }
            return;
        }
        self.produced
            .entry(job.id.clone())
            .or_default()
            .push((status, recorded_body));
        wire.extend_from_slice(&body_wire);
        if close_after {
            self.ups.get_mut(&u).expect("known").closed = true;
        }
        if hits(script.stray_every) && !close_after {
            // Behind the response in the same write, taken by the read after the one that
            // ended the response (bytes that arrive later are the race no HTTP/1.1 proxy can
            // see: a reused connection's request may be on its way; not what this plays).
            self.harness
                .upstream_send_in_two_reads(u, &wire, super::script::STRAY);
            self.schedule_idle(u);
            return;
        }
        self.write_split(u, &wire, false);
        if close_after {
            self.fin(u);
        } else {
            self.schedule_idle(u);
        }
    }

    /// The backend's FIN reaches the proxy now.
    pub(super) fn fin(&mut self, u: ConnId) {
        let up = self.ups.get_mut(&u).expect("known");
        if up.gone || up.fin_delivered {
            return;
        }
        up.fin_delivered = true;
        if up.lost_data {
            self.harness.reset(u);
        } else {
            self.harness.upstream_eof(u);
        }
    }

    fn is_idle(&self, u: ConnId) -> bool {
        let up = &self.ups[&u];
        !up.closed
            && !up.gone
            && !up.busy
            && up.queue.is_empty()
            && up.inbuf.is_empty()
            && self.harness.upstreams[&u].received.is_empty()
    }

    /// A scheduled idle check: an idle connection past the script's stray-408 or idle-close time
    /// closes (its last bytes delayed by the race window).
    pub(super) fn idle_check(&mut self, u: ConnId) {
        if !self.is_idle(u) {
            return;
        }
        let up = &self.ups[&u];
        let s = &self.scripts[up.server];
        let idle = self.harness.now.since(up.last_active);
        let due = |ms: Option<u64>| ms.is_some_and(|ms| idle >= Duration::from_millis(ms));
        let race = Duration::from_millis(s.race_ms);
        let at = self.harness.now.plus(race);
        if due(s.stray_408_ms) {
            let up = self.ups.get_mut(&u).expect("known");
            up.closed = true;
            up.sent_408 = true;
            let b = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n".to_vec();
            if race.is_zero() {
                self.write_split(u, &b, false);
                self.fin(u);
            } else {
                self.schedule(at, Ev::Deliver(u, b));
                self.schedule(at, Ev::Fin(u));
            }
        } else if due(s.idle_close_ms) {
            self.ups.get_mut(&u).expect("known").closed = true;
            if race.is_zero() {
                self.fin(u);
            } else {
                self.schedule(at, Ev::Fin(u));
            }
        }
    }

    pub(super) fn backend_event(&mut self, sel: u8, event: BackendEvent) {
        let open: Vec<ConnId> = self
            .ups
            .iter()
            .filter(|(u, up)| !up.gone && !up.closed && !self.harness.upstreams[u].closed)
            .map(|(u, _)| *u)
            .collect();
        if open.is_empty() {
            return;
        }
        let u = open[sel as usize % open.len()];
        match event {
            BackendEvent::Reset => {
                let up = self.ups.get_mut(&u).expect("known");
                up.closed = true;
                up.fin_delivered = true;
                for id in up.ids.clone() {
                    self.cut.insert(id);
                }
                self.harness.reset(u);
            }
            _ if !self.is_idle(u) => {}
            BackendEvent::CloseIdle => {
                self.ups.get_mut(&u).expect("known").closed = true;
                self.fin(u);
            }
            BackendEvent::Stray408 => {
                self.ups.get_mut(&u).expect("known").closed = true;
                self.write_split(
                    u,
                    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n",
                    false,
                );
                self.fin(u);
            }
            BackendEvent::Garbage => {
                self.write_split(u, b"garbage\r\n", false);
            }
        }
    }
}

/// A forwarded request as a backend takes it: the request id and the query that scripts the
/// answer (`st=204`), with what the checks need.
struct ParsedReq {
    /// Bytes of the request, head and body.
    used: usize,
    method: String,
    /// The target without its query.
    id: String,
    body: Vec<u8>,
    /// The query asks for a 204.
    no_content: bool,
    /// The connection ends after this request (HTTP/1.0 without keep-alive, or `close`).
    close: bool,
    /// The last X-Forwarded-For element: the address the proxy saw.
    xff: Option<String>,
    /// An Expect field reached the backend (the proxy must never forward one).
    expect: bool,
    /// `TE: trailers` reached the backend.
    te_trailers: bool,
    /// The request body's trailer fields.
    trailers: http::Trailers,
}

/// Reads one request at the start of `buf` with [`http`]'s reader: `Ok(None)` if incomplete.
fn parse_request(buf: &[u8]) -> Result<Option<ParsedReq>, String> {
    let Some((m, head_len)) = http::parse_request_head(buf)? else {
        return Ok(None);
    };
    let Some(((body, trailers), used)) =
        http::read_body_and_trailers(&buf[head_len..], m.request_body()?, false)?
    else {
        return Ok(None);
    };
    let (id, query) = m.path.split_once('?').unwrap_or((&m.path, ""));
    let mut close = m.version == 0;
    for v in m.headers_named("connection") {
        let v = v.to_ascii_lowercase();
        if v.contains("close") {
            close = true;
        }
        if v.contains("keep-alive") {
            close = false;
        }
    }
    let xff = m.headers_named("x-forwarded-for").last().map(|v| {
        let last = v.rsplit(',').next().unwrap_or(v);
        last.trim().to_string()
    });
    Ok(Some(ParsedReq {
        used: head_len + used,
        method: m.method.clone(),
        id: id.to_string(),
        body,
        no_content: query.contains("st=204"),
        close,
        xff,
        expect: m.header("expect").is_some(),
        te_trailers: m.headers_named("te").iter().any(|v| v.contains("trailers")),
        trailers,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_parser() {
        let r = parse_request(b"POST /c1/r2?st=204 HTTP/1.1\r\nContent-Length: 2\r\nX-Forwarded-For: 1.2.3.4, 10.0.0.1\r\n\r\nhiGET")
            .unwrap()
            .unwrap();
        assert_eq!(r.id, "/c1/r2");
        assert_eq!(r.body, b"hi");
        assert!(r.no_content);
        assert_eq!(r.xff.as_deref(), Some("10.0.0.1"));
        assert_eq!(r.used, b"POST /c1/r2?st=204 HTTP/1.1\r\nContent-Length: 2\r\nX-Forwarded-For: 1.2.3.4, 10.0.0.1\r\n\r\nhi".len());
    }
}
