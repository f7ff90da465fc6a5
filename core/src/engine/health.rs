//! Active health checks (`health_check`): a core-originated exchange on an upstream connection
//! with no client.
//!
//! Schedule: the process-wide ledger holds, per server, when its next check is due. Every core
//! looks at it in `sync` and its [`Core::poll_timeout`] includes the earliest due check, so
//! idle workers wake for it; the first core to reach it claims the round with a
//! compare-exchange (see `ServerLedger::claim_check`) — one check per server per interval for
//! the whole process, whatever the number of workers.
//!
//! The check: `GET path HTTP/1.1` on an idle pooled connection to the server when this core has
//! one (HAProxy 3.2's `check-reuse-pool`: no extra connection, and the check also proves the
//! pooled connection works), else on a new connection. The response head and body are read with
//! the ordinary framing code and the connection afterwards follows the ordinary reuse rules
//! (`rules::upstream_reusable`): back to the pool, where it counts like any pooled connection.
//! `timeout` bounds connect + response. A check is never a client request: no exchange record,
//! no request counters, no passive-health failure.
//!
//! `max_conns`: a check takes a connection slot like any connection, never beyond the cap. A
//! server at its cap with no idle connection in this core is busy serving requests: the round is
//! skipped (the next one comes an interval later) rather than queued behind client requests or
//! squeezed past the cap of a one-request-at-a-time backend.
//!
//! Verdict: `fall` failed checks in a row (bad status, timeout, error) set the server's
//! `check_failed` for every worker — the group's epoch is bumped and every worker woken, so each
//! closes its idle connections to it and picks no new request for it; `rise` passes in a row
//! clear it and wake every worker, so queued requests dispatch to it.

use bytes::{Buf, Bytes};

use super::table::Role;
use super::upstream::{UState, Upstream};
use super::{Core, touch};
use crate::config::{PoolKeyMode, ServerState};
use crate::framing::{BodyDecoder, BodyKind, Method, Version};
use crate::health::CheckResult;
use crate::pool::PoolKey;
use crate::rules::{self, Failure, ResponseFacts, UpstreamFacts};
use crate::{ConnId, Time};

/// A check in progress on an upstream connection.
#[derive(Debug)]
pub(super) struct Check {
    /// When the check began: `timeout` runs from here, connect included.
    pub(super) started: Time,
    /// The final status, once the response head arrived.
    status: Option<u16>,
    /// The response body, once the head arrived (read and dropped).
    body: BodyDecoder,
}

impl Core {
    /// Starts the checks this core claims: every checked server whose round is due at `now`.
    pub(super) fn run_checks(&mut self, now: Time) {
        if self.draining {
            return;
        }
        for g in 0..self.groups.len() {
            let Some(interval) = self.config.upstreams[g]
                .health_check
                .as_ref()
                .map(|h| h.interval)
            else {
                continue;
            };
            for idx in 0..self.config.upstreams[g].servers.len() {
                let ledger = &self.shared.group(g).servers[idx];
                // A server set down (maintenance) is not checked: its rounds pass. (Drained
                // servers neither: they take no new requests whatever the checks say.)
                let up = ledger.state() == ServerState::Up;
                if now >= ledger.next_check() && ledger.claim_check(now, interval) {
                    // An owed check of the round before is overtaken by this one.
                    ledger.owe_check(false);
                    if up {
                        self.start_check(now, now, g, idx, false);
                    }
                    continue;
                }
                // The round another worker claimed but could not run, for lack of a slot this
                // core's idle connection to the server holds: it runs here, on that connection.
                let key = PoolKey {
                    server: self.groups[g].first_server + idx as u32,
                    partition: 0,
                };
                if up
                    && ledger.check_owed()
                    && self.pool.idle_for_key(key) > 0
                    && ledger.take_owed_check()
                {
                    self.start_check(now, now, g, idx, false);
                }
            }
        }
    }

    /// A drain (or a handoff) closes the checks in flight: no client waits on one, so the
    /// drain would otherwise wait up to `timeout` for an answer nobody needs, and the result
    /// of a check cut short says nothing about the server (not counted).
    pub(super) fn drop_checks(&mut self) {
        let checks: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|c| matches!(&c.role, Role::Upstream(u) if u.check.is_some()))
            .map(|c| c.id)
            .collect();
        for id in checks {
            self.close_upstream(id, false, rules::NotReusable::Draining);
        }
    }

    /// The earliest check round due, over the checked servers (every worker's `poll_timeout`
    /// includes it, so some worker wakes for it).
    pub(super) fn next_check(&self) -> Option<Time> {
        if self.draining || !self.checks_on {
            return None;
        }
        (0..self.groups.len())
            .filter(|&g| self.config.upstreams[g].health_check.is_some())
            .flat_map(|g| self.shared.group(g).servers.iter())
            .map(|l| l.next_check())
            .min()
    }

    /// Sends the check of server `idx` of group `g` (begun at `started`) on an idle pooled
    /// connection (unless `fresh`), else on a new one if the server's `max_conns` has room; else
    /// the round is skipped.
    fn start_check(&mut self, now: Time, started: Time, g: usize, idx: usize, fresh: bool) {
        // Requests wait in the group's queue and the server would take them: its slots and
        // idle connections are theirs first (FIFO), so it is busy serving requests and the
        // round is skipped. (Not for a server held out: the waiters are not waiting for it,
        // and its checks are what brings it back.)
        if self.shared.group(g).queued() > 0 && self.groups[g].balancer.is_up(now, idx) {
            return;
        }
        let server = self.groups[g].first_server + idx as u32;
        let key = PoolKey {
            server,
            partition: 0,
        };
        let pooled = self.checkout(now, key, fresh);
        let check = Box::new(Check {
            started,
            status: None,
            body: BodyDecoder::new(BodyKind::Empty),
        });
        let id = match pooled {
            Some(id) => {
                self.shared.group(g).servers[idx].idle_changed(false);
                let Some(u) = self.conns.upstream_mut(id) else {
                    return;
                };
                u.begin_check(now, check);
                id
            }
            None => {
                if !self.open_slot(g, idx) {
                    // No request holds the slots, so other workers do, with the previous
                    // round's check (still finishing as this round fell due) or an idle
                    // connection: the check is owed to the round, run by the worker that ends
                    // its check or, woken, has the idle connection. (Else the round was lost —
                    // every one of them, when the worker without the connection wakes first.)
                    // A server busy serving requests just skips the round.
                    let ledger = self.shared.group(g).clone();
                    if ledger.servers[idx].inflight() == 0 {
                        ledger.servers[idx].owe_check(true);
                        for w in 0..self.shared.workers() {
                            self.wake_later(w);
                        }
                    }
                    return;
                }
                self.stats.servers[server as usize].connects += 1;
                let mut up = Upstream::warming(server, g as u32, key, now);
                up.unused_warm = false;
                up.check = Some(check);
                self.open_upstream(now, up)
            }
        };
        self.stats.servers[server as usize].checks += 1;
        let s = &self.config.upstreams[g].servers[idx];
        // A Unix socket path is no host name: `localhost`, as curl sends with --unix-socket.
        let host = match s.addr {
            crate::config::Address::Unix(_) => "localhost".to_owned(),
            _ => s.target(),
        };
        let request = self.config.upstreams[g]
            .health_check
            .as_ref()
            .map(|h| h.request(&host))
            .unwrap_or_default();
        if let Some(c) = self.conns.get_mut(id) {
            self.spares.lend_queue(&mut c.buf);
            c.buf.push(now, Bytes::from(request));
        }
        touch(&mut self.touched, id);
        self.signal_write(id);
    }

    /// A check's connection finished connecting: the request (queued) goes out.
    pub(super) fn check_connected(&mut self, now: Time, id: ConnId) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        let Role::Upstream(u) = &mut c.role else {
            return;
        };
        u.state = UState::Check;
        u.read_progress = now;
        c.buf.write_progress = now;
        let early = !c.buf.rbuf.is_empty();
        touch(&mut self.touched, id);
        self.signal_write(id);
        if early {
            self.drive_check(now, id);
        }
    }

    /// Reads what the check's response has sent so far: its head, then its body (dropped);
    /// judges it once complete.
    pub(super) fn drive_check(&mut self, now: Time, id: ConnId) {
        loop {
            let Some(c) = self.conns.get_mut(id) else {
                return;
            };
            let Role::Upstream(u) = &mut c.role else {
                return;
            };
            let reused = u.reused();
            let Some(check) = u.check.as_mut() else {
                return;
            };
            if check.status.is_none() {
                match self
                    .head
                    .parse_response(&c.buf.rbuf, Method::Get, &self.limits)
                {
                    Ok(false) => return,
                    Err(_) => return self.check_failed_conn(now, id, Failure::BadResponse),
                    Ok(true) => {}
                }
                let head = &self.head;
                let status = head.status;
                c.buf.rbuf.advance(head.len);
                if (100..200).contains(&status) {
                    if status == 101 {
                        return self.check_failed_conn(now, id, Failure::BadResponse);
                    }
                    // Interim: the final head follows.
                    continue;
                }
                if status == 408 && reused {
                    // The backend's idle timeout racing the check on a pooled connection, as
                    // for a client request (`rules::keepalive_race`): no verdict, sent again.
                    return self.check_failed_conn(now, id, Failure::Reused408);
                }
                u.response = ResponseFacts {
                    http10: head.version == Version::Http10,
                    close: !head.persistent(),
                    close_delimited: head.body == BodyKind::UntilClose,
                    idle_hint: head.keep_alive_timeout.map(rules::keep_alive_hint),
                };
                u.response_at = now;
                check.status = Some(status);
                check.body = BodyDecoder::new(head.body);
            }
            let step = match check.body.step(&c.buf.rbuf) {
                Ok(s) => s,
                Err(_) => return self.check_failed_conn(now, id, Failure::BadResponse),
            };
            c.buf
                .rbuf
                .advance((step.skip + step.trailer + step.data).min(c.buf.rbuf.len()));
            if step.done {
                return self.check_answered(now, id);
            }
            if step.skip == 0 && step.trailer == 0 && step.data == 0 {
                return;
            }
        }
    }

    /// The backend closed a check's connection: a close-delimited response is complete,
    /// anything else failed.
    pub(super) fn check_eof(&mut self, now: Time, id: ConnId) {
        self.drive_check(now, id);
        let complete = self
            .conns
            .upstream(id)
            .and_then(|u| u.check.as_ref())
            .is_some_and(|ch| ch.status.is_some() && ch.body.on_eof().is_ok());
        if complete {
            self.check_answered(now, id);
        } else if self.conns.upstream(id).is_some_and(|u| u.check.is_some()) {
            self.check_failed_conn(now, id, Failure::Closed);
        }
    }

    /// The check's `timeout` passed (connect included).
    pub(super) fn check_timed_out(&mut self, now: Time, id: ConnId) {
        self.check_failed_conn(now, id, Failure::ReadTimeout);
    }

    /// A complete response: judged against `expect`; the connection goes back to the pool by
    /// the ordinary reuse rules.
    fn check_answered(&mut self, now: Time, id: ConnId) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        let Role::Upstream(u) = &mut c.role else {
            return;
        };
        let Some(check) = u.check.take() else { return };
        let g = u.group as usize;
        let idx = (u.server - self.groups[g].first_server) as usize;
        let gcfg = &self.config.upstreams[g];
        let Some(h) = gcfg.health_check.as_ref() else {
            return;
        };
        let passed = check.status.is_some_and(|s| h.expect.passes(s));
        let result = if passed {
            CheckResult::Pass
        } else {
            CheckResult::Fail
        };
        let server_out = self.shared.group(g).servers[idx].state() != ServerState::Up;
        let verdict = rules::upstream_reusable(&UpstreamFacts {
            // With `pool_key = "client"` no client may reuse a check's connection, yet pooled
            // it would hold one of the server's `max_conns` slots (and a pool place) from them.
            pooling: gcfg.keepalive > 0 && gcfg.pool_key == PoolKeyMode::Server,
            draining: self.draining || server_out,
            response: u.response,
            request_sent: c.buf.is_flushed(),
            extra_data: !c.buf.rbuf.is_empty(),
            peer_closed: c.buf.read_closed,
            requests: u.requests,
            max_requests: gcfg.keepalive_requests,
            age: now.since(u.created),
            max_age: gcfg.keepalive_time,
            since_response: now.since(u.response_at),
        });
        let hinted = u.response.idle_hint.map(|hint| u.response_at.plus(hint));
        let expires = super::warm::idle_until(now, gcfg, hinted, u.created);
        let (key, server, hint) = (u.key, u.server, u.response.idle_hint);
        match verdict {
            // The answer ended on a read that filled its room: pooled once a read finds the
            // socket empty, as a client's response (`UState::Settling`).
            Ok(()) if u.unread => {
                u.state = UState::Settling;
                u.read_progress = now;
                touch(&mut self.touched, id);
            }
            Ok(()) => {
                u.state = UState::Idle;
                self.checkin(g, idx, id, key, expires);
                // Someone may be waiting for a connection to this server (`max_conns` + queue).
                if self.shared.group(g).queued() > 0 {
                    self.freed.push((g as u32, true));
                }
            }
            Err(why) => self.close_upstream(id, false, why),
        }
        self.remember_hint(now, server, hint);
        self.check_result(now, g, idx, result);
        // Pooled again, it may hold the slot another generation's request waits for: that
        // request queued while the check held the connection (nothing idle to wake anyone for).
        self.yield_to_linked();
    }

    /// A check's connection failed (connect error or timeout, reset, EOF, unparsable answer,
    /// `timeout`): closed, and the check counts as failed — except the keepalive race on a
    /// pooled connection (the backend closed it as we reused it), which says nothing about the
    /// server's health: the check goes again at once on a fresh connection, within the same
    /// `timeout`.
    pub(super) fn check_failed_conn(&mut self, now: Time, id: ConnId, why: Failure) {
        let Some(c) = self.conns.get(id) else { return };
        let Role::Upstream(u) = &c.role else { return };
        let Some(check) = u.check.as_ref() else {
            return;
        };
        let (g, started) = (u.group as usize, check.started);
        let idx = (u.server - self.groups[g].first_server) as usize;
        let responded = u.responded || check.status.is_some() || !c.buf.rbuf.is_empty();
        let race = rules::keepalive_race(why, u.reused(), responded);
        self.close_upstream(id, true, rules::failure_reason(why, race));
        if race {
            self.start_check(now, started, g, idx, true);
            return;
        }
        if matches!(why, Failure::Local) {
            // The runtime could not even attempt the connect (a local shortage, e.g. of file
            // descriptors): nothing learned of the server, as for passive health. The round
            // passes without a result rather than taking every server out.
            return;
        }
        let result = match why {
            Failure::ConnectTimeout | Failure::ReadTimeout | Failure::SendTimeout => {
                CheckResult::Timeout
            }
            _ => CheckResult::Error,
        };
        self.check_result(now, g, idx, result);
    }

    /// Counts a check's result in the ledger; when the verdict flips, every worker hears of it
    /// (the epoch makes each close its idle connections to a failed server; the wake-up lets
    /// queued requests dispatch to a recovered one).
    fn check_result(&mut self, now: Time, g: usize, idx: usize, result: CheckResult) {
        let Some(h) = self.config.upstreams[g].health_check.as_ref() else {
            return;
        };
        let ledger = self.shared.group(g).clone();
        if ledger.servers[idx]
            .check_done(result, h.fall, h.rise)
            .is_some()
        {
            ledger.bump();
            if ledger.queued() > 0 {
                self.freed.push((g as u32, false));
            }
            for w in 0..self.shared.workers() {
                self.wake_later(w);
            }
        }
        // A round fell due while this check held the server's slot: its check runs now, on the
        // slot (or pooled connection) this one just gave back.
        if ledger.servers[idx].take_owed_check()
            && !self.draining
            && ledger.servers[idx].state() == ServerState::Up
        {
            self.start_check(now, now, g, idx, false);
        }
    }
}

impl Upstream {
    /// A pooled connection carries a check: everything about the previous request starts over.
    pub(super) fn begin_check(&mut self, now: Time, check: Box<Check>) {
        self.next_request(UState::Check, now);
        self.check = Some(check);
    }
}
