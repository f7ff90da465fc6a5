//! The rules checked after every step — pool caps, clean pooled connections, dead peers
//! forgotten, deadlines never in the past, busy connections per server within `max_conns`, plus what the peers recorded as violations — and the
//! leak checks [`World::finish`] runs once every client has closed.

use core::time::Duration;

use super::World;
use crate::UpstreamId;

impl World {
    pub(super) fn violation(&mut self, msg: String) {
        self.violations
            .push(format!("t={}ms: {msg}", self.harness.now.0 / 1_000_000));
    }

    /// Takes the exchanges the core recorded and checks each: its attempts' times are in order
    /// and within the exchange, the answering server is the last one tried, a failed attempt
    /// has no status unless its response head came, a completed upstream answer's status is its last attempt's, and a
    /// generated request id is 32 hex digits.
    pub(super) fn check_records(&mut self) {
        while let Some(ex) = self.harness.core.poll_exchange() {
            let mut problems = Vec::new();
            for t in &ex.tries {
                let times = [Some(t.started), t.connected, t.header, t.ended];
                let known: Vec<_> = times.iter().flatten().collect();
                if known.windows(2).any(|w| w[0] > w[1]) || t.started < ex.started {
                    problems.push(format!("attempt times out of order: {t:?}"));
                }
                // A status only from a response head (a server may fail after sending one).
                if t.failure.is_some() && t.status != 0 && t.header.is_none() {
                    problems.push(format!("failed attempt with a status: {t:?}"));
                }
            }
            if let Some(s) = ex.server
                && ex.tries.last().map(|t| t.server) != Some(s)
            {
                problems.push(format!(
                    "answered by {s:?}, last tried {:?}",
                    ex.tries.last()
                ));
            }
            if let Some(last) = ex.tries.last()
                && ex.end == crate::End::Complete
                && last.failure.is_none()
                && last.status != ex.status
            {
                problems.push(format!(
                    "status {} but the last attempt says {last:?}",
                    ex.status
                ));
            }
            let id = &ex.fields.request_id;
            if (!ex.tries.is_empty() || !id.is_empty())
                && (id.len() != 32 || !id.iter().all(u8::is_ascii_hexdigit))
            {
                problems.push(format!("request id {id:?}"));
            }
            for p in problems {
                self.violation(format!("record of {:?}: {p}", ex.client));
            }
        }
    }

    /// Closes every client (unstalling it first), lets time run past every client timeout and
    /// checks nothing leaks; then past the pool idle timeout, and checks nothing is left at all.
    pub fn finish(&mut self) {
        for c in 0..self.clients.len() {
            let cl = &mut self.clients[c];
            let conn = cl.conn;
            if cl.reset || self.harness.clients[&conn].closed {
                continue;
            }
            if cl.stalled {
                cl.stalled = false;
                self.harness.stall(conn, false);
            }
            let cl = &mut self.clients[c];
            if !cl.eof_sent {
                cl.eof_sent = true;
                cl.no_more = true;
                self.harness.client_eof(conn);
            }
            self.settle();
        }
        self.settle();
        self.check_invariants();
        let cfg = self.harness.core.config().clone();
        let t = &cfg.client_timeouts;
        let max_client = [t.header, t.body, t.keepalive, t.send, t.lingering]
            .into_iter()
            .max()
            .unwrap_or_default();
        let max_up = cfg
            .upstreams
            .iter()
            .flat_map(|g| [g.connect_timeout, g.read_timeout, g.send_timeout])
            .max()
            .unwrap_or_default();
        let max_delay = self
            .scripts
            .iter()
            .map(|s| s.delay_ms + s.race_ms)
            .max()
            .unwrap_or(0);
        let first = max_client.max(max_up) + Duration::from_millis(max_delay + 1000);
        // Every outstanding exchange ends within `first` of the previous one (answered, timed
        // out or failed), but pipelined requests are answered one after another: keep
        // advancing while exchanges are still completing, bounded by the requests outstanding.
        let outstanding = self.sent.len().saturating_sub(self.results.len());
        self.advance(first);
        for _ in 0..outstanding {
            let open = self.harness.clients.values().any(|e| !e.closed);
            if !open {
                break;
            }
            let done = self.results.len();
            self.advance(first);
            if self.results.len() == done {
                break;
            }
        }
        self.check_invariants();
        let pooled: usize = (0..cfg.upstreams.len())
            .map(|g| self.harness.core.pool_idle(UpstreamId(g as u32)))
            .sum();
        // A health check under way holds its connection too.
        let checking = self
            .ups
            .iter()
            .filter(|(id, up)| !self.harness.upstreams[id].closed && up.checking())
            .count();
        let conns = self.harness.core.connections();
        if conns != pooled + checking {
            let open_clients: Vec<_> = self
                .harness
                .clients
                .iter()
                .filter(|(_, e)| !e.closed)
                .map(|(id, _)| *id)
                .collect();
            let open_ups: Vec<_> = self
                .harness
                .upstreams
                .iter()
                .filter(|(id, e)| !e.closed && !self.harness.core.is_pooled(**id))
                .map(|(id, _)| *id)
                .collect();
            self.violation(format!(
                "leak: after every client closed and {first:?} passed, the core holds {conns} \
                 connections but only {pooled} are pooled (open clients {open_clients:?}, \
                 open non-pooled upstreams {open_ups:?})"
            ));
        }
        for c in 0..self.clients.len() {
            let cl = &self.clients[c];
            if !cl.reset && !self.harness.clients[&cl.conn].closed {
                let num = cl.num;
                self.violation(format!("leak: client c{num} is still open after it closed"));
            }
        }
        self.check_invariants();
        // Warm connections (`min_idle`) are replaced as they expire, and health checks run
        // forever, by design: a drain, which closes the pool and stops the top-ups and checks,
        // comes before checking that nothing is left.
        if cfg
            .upstreams
            .iter()
            .any(|g| g.min_idle > 0 || g.health_check.is_some())
        {
            let now = self.harness.now;
            self.harness.core.begin_drain(now);
            self.settle();
        }
        let idle = cfg
            .upstreams
            .iter()
            .map(|g| g.keepalive_timeout.min(g.keepalive_time))
            .max()
            .unwrap_or_default();
        self.advance(idle + Duration::from_secs(1));
        let conns = self.harness.core.connections();
        if conns != 0 {
            self.violation(format!(
                "leak: {conns} connections remain after the pool idle timeout passed"
            ));
        }
        if let Some(t) = self.harness.core.poll_timeout() {
            self.violation(format!("a deadline {t:?} remains with no connection open"));
        }
        // An idle worker gives every spare buffer back (memory after close).
        let spares = self.harness.core.spares_held();
        if spares != (0, 0) {
            self.violation(format!("an idle core still holds {spares:?} spare buffers"));
        }
        self.check_invariants();
    }

    /// Panics with a report if any invariant is broken.
    pub fn check_invariants(&self) {
        let mut problems = self.violations.clone();
        // 7. active health checks: at most one result per server per interval
        problems.extend(self.check_rounds());
        let core = &self.harness.core;
        let now = self.harness.now;
        // 8. zero-copy bodies: the bytes in a peer's pipe are the ones the core counts as piped
        // toward it (they go out first, and its queue's length includes them)
        for (id, ep) in self.harness.clients.iter().chain(&self.harness.upstreams) {
            if !ep.closed && core.piped(*id) != ep.piped.len() {
                problems.push(format!(
                    "{id:?}: {} bytes in its pipe, the core counts {}",
                    ep.piped.len(),
                    core.piped(*id)
                ));
            }
        }
        // 5. deadlines
        if let Some(t) = core.poll_timeout()
            && t < now
        {
            problems.push(format!("poll_timeout {t:?} is in the past (now {now:?})"));
        }
        // 6. a server whose certificate we reject is never blamed for it (its health is ours
        // to keep: the failure is a configuration mismatch, not the server being down)
        for (i, server) in core.servers().iter().enumerate() {
            // (A server that is also `down` refuses the connection first: that one is its own.)
            let rejected_only = self.scripts.get(i).is_some_and(|s| s.rejected && !s.down);
            if rejected_only && !core.server_up(now, *server) {
                problems.push(format!(
                    "server {i} was marked down for a rejected certificate"
                ));
            }
        }
        // 2. pool caps and clean pooled connections; warm connects within min_idle per server
        let mut server = 0;
        for up in &core.config().upstreams {
            for _ in &up.servers {
                let opening = core.warm_opening(server) as usize;
                if opening > up.min_idle {
                    problems.push(format!(
                        "{opening} warm connects in progress to server {server}, min_idle {}",
                        up.min_idle
                    ));
                }
                server += 1;
            }
        }
        for (g, up) in core.config().upstreams.iter().enumerate() {
            let idle = core.pool_idle(UpstreamId(g as u32));
            if idle > up.keepalive {
                problems.push(format!(
                    "pool of group {g} holds {idle} idle connections, cap {}",
                    up.keepalive
                ));
            }
        }
        for (&u, ep) in &self.harness.upstreams {
            if !core.is_pooled(u) {
                continue;
            }
            // 2b. an idle pooled connection gave its buffers back (memory per idle connection)
            let (held, spares) = core.buffers_held(u);
            if held > 0 {
                problems.push(format!("{u:?} is pooled but holds {held} bytes of buffers"));
            }
            // a free list holding anything is always bound for a sweep (an idle worker's
            // frees everything, the floor too)
            if spares.0.max(spares.1) > 0 && core.spares_due().is_none() {
                problems.push(format!(
                    "the free list holds {spares:?} buffers, no sweep due"
                ));
            }
            if ep.closed {
                problems.push(format!("{u:?} is pooled but the core closed it"));
                continue;
            }
            let Some(up) = self.ups.get(&u) else {
                problems.push(format!("{u:?} is pooled but never connected"));
                continue;
            };
            let mut why = Vec::new();
            if up.busy || !up.queue.is_empty() {
                why.push("the backend has a request in flight");
            }
            if !up.inbuf.is_empty() || !ep.received.is_empty() {
                why.push("the backend has unread request bytes");
            }
            if !ep.unread.is_empty() {
                why.push("the backend sent bytes the proxy has not read");
            }
            if core.pending_len(u) > 0 {
                why.push("the core has output queued on it");
            }
            if up.announced_close {
                why.push("the backend announced Connection: close");
            }
            if up.close_delimited {
                why.push("its last response was close-delimited");
            }
            if up.fin_delivered && !ep.eof_pending {
                why.push("the backend's FIN was delivered");
            }
            if !why.is_empty() {
                problems.push(format!(
                    "pooled {u:?} is not at a clean boundary: {}",
                    why.join(", ")
                ));
            }
        }
        // 6. max_conns: never more connections carrying a request (or opening for one) to a
        //    server than its cap — the queue holds the rest.
        let mut busy = vec![0u32; core.servers().len()];
        for (&u, ep) in &self.harness.upstreams {
            if ep.closed || core.is_pooled(u) {
                continue;
            }
            if let Some(s) = ep.server
                && let Some(i) = core.servers().iter().position(|&x| x == s)
            {
                busy[i] += 1;
            }
        }
        for (i, &s) in core.servers().iter().enumerate() {
            let cap =
                core.config().upstreams[s.upstream.0 as usize].servers[s.index as usize].max_conns;
            if cap > 0 && busy[i] > cap {
                problems.push(format!(
                    "server {i} has {} busy connections, max_conns {cap}",
                    busy[i]
                ));
            }
        }
        // 7. the shared ledger counts exactly the open and the idle connections (one worker
        //    here: see `sim::Process` for several)
        problems.extend(crate::sim::process::ledger_problems(std::slice::from_ref(
            &self.harness,
        )));
        // 3. dead peers are forgotten; nothing is queued for a closed peer
        for cl in &self.clients {
            if cl.reset && core.is_open(cl.conn) {
                problems.push(format!(
                    "client c{} reset but its connection is still open",
                    cl.num
                ));
            }
        }
        for (&u, up) in &self.ups {
            let ep = &self.harness.upstreams[&u];
            if up.fin_delivered && !ep.eof_pending && !ep.closed && core.is_open(u) && ep.reading {
                problems.push(format!(
                    "{u:?}: the backend closed (FIN/RST delivered) but the core keeps the connection"
                ));
            }
        }
        for (&id, ep) in self
            .harness
            .clients
            .iter()
            .chain(self.harness.upstreams.iter())
        {
            if ep.closed && core.pending_len(id) > 0 {
                problems.push(format!("output queued for closed peer {id:?}"));
            }
        }
        if !problems.is_empty() {
            panic!(
                "simulation invariant broken (seed {}):\n  - {}\nactions ({}): {:?}",
                self.seed,
                problems.join("\n  - "),
                self.log.len(),
                self.log
            );
        }
    }
}
