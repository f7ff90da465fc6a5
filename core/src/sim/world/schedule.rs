//! Virtual time: peer events ordered by (time, sequence) beside the core's deadline, and the
//! loop that lets every peer react until nothing changes at the current instant.

use core::time::Duration;

use super::World;
use crate::{ConnId, Time};

/// Something a backend does later, on one of its connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Ev {
    /// See whether the connection has been idle long enough to close (or send a stray 408).
    IdleCheck(ConnId),
    /// Answer the next queued request (after the script's delay).
    Respond(ConnId),
    /// Bytes sent earlier reach the proxy (the keepalive race window).
    Deliver(ConnId, Vec<u8>),
    /// The backend's FIN reaches the proxy.
    Fin(ConnId),
}

impl World {
    /// Runs `ev` at `at`, after every event already scheduled for that instant.
    pub(super) fn schedule(&mut self, at: Time, ev: Ev) {
        self.ev_seq += 1;
        self.events.insert((at, self.ev_seq), ev);
    }

    fn run_event(&mut self, ev: Ev) {
        match ev {
            Ev::Respond(u) => {
                self.respond(u);
                self.backend_serve(u);
            }
            Ev::Deliver(u, bytes) => {
                if !self.ups[&u].gone && !self.ups[&u].fin_delivered {
                    self.write_split(u, &bytes, false);
                }
            }
            Ev::Fin(u) => self.fin(u),
            Ev::IdleCheck(u) => self.idle_check(u),
        }
    }

    /// Lets every peer react until nothing changes (at the current instant).
    pub fn settle(&mut self) {
        for _ in 0..100_000 {
            self.harness.pump();
            let mut progress = self.handle_connects();
            progress |= self.backends_read();
            progress |= self.clients_read();
            if !progress {
                self.check_records();
                return;
            }
        }
        panic!(
            "seed {}: no quiescence after 100000 rounds; actions: {:?}",
            self.seed, self.log
        );
    }

    /// Moves virtual time forward by `d`, firing core deadlines and peer events in order.
    pub fn advance(&mut self, d: Duration) {
        let end = self.harness.now.plus(d);
        let mut same_instant = 0u32;
        loop {
            let next_core = self.harness.core.poll_timeout();
            let next_ev = self.events.keys().next().map(|k| k.0);
            let next = match (next_core, next_ev) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(t) => t,
                    None => break,
                },
            };
            if next > end {
                break;
            }
            if next <= self.harness.now {
                same_instant += 1;
                if same_instant > 10_000 {
                    self.violation(format!(
                        "timer livelock: poll_timeout stays at {next:?} (now {:?})",
                        self.harness.now
                    ));
                    break;
                }
            } else {
                same_instant = 0;
            }
            self.harness.now = self.harness.now.max(next);
            self.step_instant();
        }
        self.harness.now = end;
        self.step_instant();
    }

    fn step_instant(&mut self) {
        let now = self.harness.now;
        self.harness.core.handle_timeout(now);
        self.harness.pump();
        self.settle();
        while let Some((&key, _)) = self.events.iter().next() {
            if key.0 > now {
                break;
            }
            let ev = self.events.remove(&key).expect("present");
            self.run_event(ev);
            self.settle();
        }
        if let Some(t) = self.harness.core.poll_timeout()
            && t < now
        {
            self.violation(format!("poll_timeout {t:?} is in the past (now {now:?})"));
        }
    }
}
