//! Choosing a server within an upstream group, and passive health.
//!
//! One [`Balancer`] per upstream group per worker, modelled on nginx's round-robin module
//! (`ngx_http_upstream_round_robin.c`), `least_conn` and `ip_hash`:
//!
//! - **Usable** server: weight > 0, not in the request's `tried` mask, not at `max_conns` (when
//!   nonzero; counted with [`Balancer::acquire`]/[`Balancer::release`]), and up (see below).
//!   Primary servers are considered first; backup servers only when no primary is usable.
//! - **Round-robin**: nginx's smooth weighted round-robin. Each pick adds every usable
//!   candidate's *effective* weight to its current weight, picks the largest current weight (the
//!   first one on ties) and subtracts the total. The effective weight equals the configured
//!   weight except after failures: each failure lowers it by `weight / max_fails`, and each pick
//!   round in which the server is a candidate raises it by 1 again (nginx's slow recovery).
//! - **Least-conn**: fewest `active / weight` (cross-multiplied), ties broken by smooth
//!   round-robin among the tied servers.
//! - **Ip-hash**: the caller's client-address hash chooses a primary server by weight; if that
//!   server is not usable, the hash is re-mixed deterministically (up to 20 tries, as nginx), then
//!   it falls back to round-robin.
//! - **Passive health** (`max_fails`, `fail_timeout`): failures are counted in a window that
//!   starts at the first failure and lasts `fail_timeout`; a failure at or after the window's end
//!   starts a new count. At the `max_fails`-th failure of a window the server is down until
//!   `now + fail_timeout`. Afterwards it is usable again for ONE probe request: picking it while
//!   its failures are still counted marks it busy for another `fail_timeout` (as nginx bumps
//!   `checked`), so only one request at a time tests it. [`Balancer::success`] resets the count
//!   (the server is fully up); a failure of the probe marks it down again for `fail_timeout`.
//!   `max_fails == 0` disables all of this.
//!
//! - **Shared**: in-flight counts (`max_conns`, least-conn), passive health, the server's
//!   administrative state and its active-check verdict live in the process's ledger
//!   ([`crate::shared`]), so every worker's balancer sees the same; only the round-robin weights
//!   are per worker.
//!
//! Nothing here allocates after [`Balancer::new`].

use core::time::Duration;
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;

use crate::Time;
use crate::config::{Balance, ServerState, UpstreamConfig};
use crate::shared::{GroupLedger, ServerLedger};

/// nginx `ip_hash` gives up re-hashing after 20 tries and falls back to round-robin.
const IP_HASH_TRIES: u32 = 20;

#[derive(Debug, Clone)]
struct Peer {
    weight: u32,
    backup: bool,
    max_fails: u32,
    fail_timeout: Duration,
    // --- this worker's round-robin state ---
    effective_weight: i64,
    current_weight: i64,
}

/// Whether passive health and the server's state let a request through at `now`.
fn up(p: &Peer, l: &ServerLedger, now: Time) -> bool {
    let health = p.max_fails == 0
        || l.fails.load(SeqCst) < p.max_fails
        || now.0 >= l.down_until.load(SeqCst);
    health && l.state() == ServerState::Up && !l.check_failed()
}

/// Server choice and passive health for one upstream group.
#[derive(Debug)]
pub struct Balancer {
    peers: Vec<Peer>,
    /// In-flight counts, state and health: shared by every worker's balancer of this group.
    ledger: Arc<GroupLedger>,
    /// During a pick: servers with an idle connection this request may reuse.
    spare: u64,
    balance: Balance,
    /// Sum of the primaries' configured weights (for ip_hash).
    primary_weight: u64,
}

/// Which servers a pass considers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tier {
    Primary,
    Backup,
}

impl Balancer {
    /// Builds the balancer of one group. Servers beyond index 63 cannot be marked in a `tried`
    /// mask and are never picked (the configuration allows at most 64).
    pub fn new(cfg: &UpstreamConfig) -> Balancer {
        Balancer::with_ledger(cfg, Arc::new(GroupLedger::new(cfg, 1)))
    }

    /// The balancer of one group whose counts, state and health live in `ledger` (shared by
    /// every worker of the process).
    pub(crate) fn with_ledger(cfg: &UpstreamConfig, ledger: Arc<GroupLedger>) -> Balancer {
        // nginx: with a single server, max_fails and fail_timeout are ignored — marking the only
        // server down would turn one failure into fail_timeout seconds of instant 502s.
        let single = cfg.servers.len() == 1;
        let peers: Vec<Peer> = cfg
            .servers
            .iter()
            .take(64)
            .map(|s| Peer {
                weight: s.weight,
                backup: s.backup,
                max_fails: if single { 0 } else { s.max_fails },
                fail_timeout: s.fail_timeout,
                effective_weight: i64::from(s.weight),
                current_weight: 0,
            })
            .collect();
        let primary_weight = peers
            .iter()
            .filter(|p| !p.backup)
            .map(|p| u64::from(p.weight))
            .sum();
        Balancer {
            peers,
            ledger,
            spare: 0,
            balance: cfg.balance,
            primary_weight,
        }
    }

    /// Chooses a server for a request: an index into the group's `servers` that is not in
    /// `tried` (bit i = server i was already tried for this request) and is usable at `now`.
    /// `hash` is the client-address hash (used by [`Balance::IpHash`] only). `None`: no server
    /// is usable (the caller answers 502).
    ///
    /// Picking does not count the request as active: call [`acquire`](Balancer::acquire) when
    /// the request is bound to the server.
    pub fn pick(&mut self, now: Time, hash: u64, tried: u64) -> Option<usize> {
        self.pick_with(now, hash, tried, 0)
    }

    /// [`pick`](Balancer::pick), where the servers in the `spare` mask (bit i = server i) are
    /// usable even at `max_conns`: this worker holds an idle connection to them the request may
    /// reuse, so no new connection is needed.
    pub fn pick_with(&mut self, now: Time, hash: u64, tried: u64, spare: u64) -> Option<usize> {
        self.spare = spare;
        let chosen = self.pick_inner(now, hash, tried);
        self.spare = 0;
        chosen
    }

    fn pick_inner(&mut self, now: Time, hash: u64, tried: u64) -> Option<usize> {
        let chosen = match self.balance {
            Balance::RoundRobin => self.pick_tiered(now, tried, Self::pick_rr),
            Balance::LeastConn => self.pick_tiered(now, tried, Self::pick_least_conn),
            Balance::IpHash => self
                .pick_ip_hash(now, hash, tried)
                .or_else(|| self.pick_tiered(now, tried, Self::pick_rr)),
        }?;
        self.picked(now, chosen);
        Some(chosen)
    }

    /// One more active request on `server` on a connection of its own, whatever its
    /// `max_conns` (the unit tests' shorthand for [`begin_request`](Balancer::begin_request) +
    /// [`try_open`](Balancer::try_open)).
    pub fn acquire(&mut self, server: usize) {
        if let Some(l) = self.ledger.servers.get(server) {
            l.begin_request();
            l.force_open();
        }
    }

    /// Undoes [`acquire`](Balancer::acquire).
    pub fn release(&mut self, server: usize) {
        if let Some(l) = self.ledger.servers.get(server) {
            debug_assert!(
                l.inflight() > 0,
                "release without acquire on server {server}"
            );
            l.end_request();
            l.closed();
        }
    }

    /// One more request in flight on `server` (least-conn's load).
    pub fn begin_request(&mut self, server: usize) {
        if let Some(l) = self.ledger.servers.get(server) {
            l.begin_request();
        }
    }

    /// One request fewer in flight on `server`.
    pub fn end_request(&mut self, server: usize) {
        if let Some(l) = self.ledger.servers.get(server) {
            l.end_request();
        }
    }

    /// Counts a new connection to `server` if its `max_conns` (connections open, busy or idle,
    /// over every worker) allows: false when another worker took the last slot since the pick.
    pub fn try_open(&mut self, server: usize) -> bool {
        self.ledger
            .servers
            .get(server)
            .is_some_and(|l| l.try_open())
    }

    /// A connection to `server` counted by [`try_open`](Balancer::try_open) closed.
    pub fn closed(&mut self, server: usize) {
        if let Some(l) = self.ledger.servers.get(server) {
            l.closed();
        }
    }

    /// A request to `server` failed in a way that counts against its health (connect error,
    /// timeout...). Shared: the server is down for every worker.
    pub fn failure(&mut self, now: Time, server: usize) {
        let (Some(p), Some(l)) = (self.peers.get_mut(server), self.ledger.servers.get(server))
        else {
            return;
        };
        if p.max_fails == 0 {
            return;
        }
        let mut fails = l.fails.load(SeqCst);
        let window_start = Time(l.window_start.load(SeqCst));
        if fails >= p.max_fails {
            // The server was down and this is its probe (or a late failure): down again.
            fails = p.max_fails;
            l.window_start.store(now.0, SeqCst);
        } else {
            if fails == 0 || now.since(window_start) >= p.fail_timeout {
                fails = 0;
                l.window_start.store(now.0, SeqCst);
            }
            fails += 1;
        }
        l.fails.store(fails, SeqCst);
        if fails >= p.max_fails {
            l.down_until.store(now.plus(p.fail_timeout).0, SeqCst);
        }
        p.effective_weight = (p.effective_weight - i64::from(p.weight / p.max_fails)).max(0);
    }

    /// A request to `server` succeeded: its failure count is reset.
    pub fn success(&mut self, server: usize) {
        if let Some(l) = self.ledger.servers.get(server)
            && l.fails.load(SeqCst) != 0
        {
            l.fails.store(0, SeqCst);
            l.down_until.store(0, SeqCst);
        }
    }

    /// Whether passive health, the active checks and the server's state let a request through
    /// to `server` at `now` (ignores `max_conns` and weight; false for an unknown server).
    pub fn is_up(&self, now: Time, server: usize) -> bool {
        match (self.peers.get(server), self.ledger.servers.get(server)) {
            (Some(p), Some(l)) => up(p, l, now),
            _ => false,
        }
    }

    /// Active requests on `server` (every worker together).
    pub fn active(&self, server: usize) -> u32 {
        self.ledger.servers.get(server).map_or(0, |l| l.inflight())
    }

    /// Whether a request that found no usable server could wait for one: some server not in
    /// `tried`, with weight, up, is only held back by its `max_conns` (connections open).
    pub fn could_wait(&self, now: Time, tried: u64) -> bool {
        (0..self.peers.len()).any(|i| {
            i < 64
                && tried & (1u64 << i) == 0
                && self.peers[i].weight > 0
                && self.is_up(now, i)
                && !self.ledger.servers[i].has_room()
        })
    }

    // ----- introspection -----

    /// Number of servers.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether the group has no server.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Failures currently counted against `server`.
    pub fn fails(&self, server: usize) -> u32 {
        self.ledger
            .servers
            .get(server)
            .map_or(0, |l| l.fails.load(SeqCst))
    }

    // ----- internals -----

    fn usable(&self, now: Time, tried: u64, i: usize) -> bool {
        let (Some(p), Some(l)) = (self.peers.get(i), self.ledger.servers.get(i)) else {
            return false;
        };
        let room = l.has_room() || self.spare & (1u64 << i) != 0;
        i < 64 && tried & (1u64 << i) == 0 && p.weight > 0 && room && up(p, l, now)
    }

    fn in_tier(&self, now: Time, tried: u64, tier: Tier, i: usize) -> bool {
        self.peers[i].backup == (tier == Tier::Backup) && self.usable(now, tried, i)
    }

    fn pick_tiered(
        &mut self,
        now: Time,
        tried: u64,
        f: fn(&mut Balancer, Time, u64, Tier) -> Option<usize>,
    ) -> Option<usize> {
        f(self, now, tried, Tier::Primary).or_else(|| f(self, now, tried, Tier::Backup))
    }

    /// Smooth weighted round-robin among the usable servers of `tier` for which `also` holds.
    fn smooth_rr(
        &mut self,
        now: Time,
        tried: u64,
        tier: Tier,
        also: impl Fn(&Balancer, usize) -> bool,
    ) -> Option<usize> {
        let mut best: Option<usize> = None;
        let mut total: i64 = 0;
        for i in 0..self.peers.len() {
            if !self.in_tier(now, tried, tier, i) || !also(self, i) {
                continue;
            }
            let p = &mut self.peers[i];
            p.current_weight += p.effective_weight;
            total += p.effective_weight;
            if p.effective_weight < i64::from(p.weight) {
                p.effective_weight += 1;
            }
            let cw = p.current_weight;
            if best.is_none_or(|b| cw > self.peers[b].current_weight) {
                best = Some(i);
            }
        }
        let b = best?;
        self.peers[b].current_weight -= total;
        Some(b)
    }

    fn pick_rr(&mut self, now: Time, tried: u64, tier: Tier) -> Option<usize> {
        self.smooth_rr(now, tried, tier, |_, _| true)
    }

    fn pick_least_conn(&mut self, now: Time, tried: u64, tier: Tier) -> Option<usize> {
        // The least loaded: active_i / weight_i minimal, i.e. active_i * weight_b < active_b * weight_i.
        let mut best: Option<usize> = None;
        let mut ties = 0usize;
        for i in 0..self.peers.len() {
            if !self.in_tier(now, tried, tier, i) {
                continue;
            }
            match best {
                None => {
                    best = Some(i);
                    ties = 1;
                }
                Some(b) => match self.load_cmp(i, b) {
                    core::cmp::Ordering::Less => {
                        best = Some(i);
                        ties = 1;
                    }
                    core::cmp::Ordering::Equal => ties += 1,
                    core::cmp::Ordering::Greater => {}
                },
            }
        }
        let b = best?;
        if ties == 1 {
            return Some(b);
        }
        self.smooth_rr(now, tried, tier, |s, i| {
            s.load_cmp(i, b) == core::cmp::Ordering::Equal
        })
    }

    /// Compares `active / weight` of two servers (weights > 0).
    fn load_cmp(&self, a: usize, b: usize) -> core::cmp::Ordering {
        let (pa, pb) = (&self.peers[a], &self.peers[b]);
        (u64::from(self.active(a)) * u64::from(pb.weight))
            .cmp(&(u64::from(self.active(b)) * u64::from(pa.weight)))
    }

    fn pick_ip_hash(&mut self, now: Time, hash: u64, tried: u64) -> Option<usize> {
        if self.primary_weight == 0 {
            return None;
        }
        let mut h = hash;
        for _ in 0..IP_HASH_TRIES {
            let mut w = h % self.primary_weight;
            let mut chosen = None;
            for (i, p) in self.peers.iter().enumerate() {
                if p.backup {
                    continue;
                }
                let pw = u64::from(p.weight);
                if w < pw {
                    chosen = Some(i);
                    break;
                }
                w -= pw;
            }
            if let Some(i) = chosen
                && self.usable(now, tried, i)
            {
                return Some(i);
            }
            h = mix(h);
        }
        None
    }

    /// Bookkeeping for a chosen server: a server whose failures are still counted (it was down
    /// and its `fail_timeout` passed) gets one probe; it stays unusable for another
    /// `fail_timeout` unless a success comes back first.
    fn picked(&mut self, now: Time, i: usize) {
        let (p, l) = (&self.peers[i], &self.ledger.servers[i]);
        if p.max_fails != 0 && l.fails.load(SeqCst) >= p.max_fails {
            l.down_until.store(now.plus(p.fail_timeout).0, SeqCst);
        }
    }
}

/// Deterministic re-hash (splitmix64 finaliser with its increment).
fn mix(h: u64) -> u64 {
    let mut z = h.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Address, ServerConfig};
    use proptest::prelude::*;

    fn server(port: u16) -> ServerConfig {
        ServerConfig::new(Address::Tcp(([127, 0, 0, 1], port).into()))
    }

    fn group(weights: &[u32], balance: Balance) -> UpstreamConfig {
        let servers = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| ServerConfig {
                weight: w,
                ..server(8000 + i as u16)
            })
            .collect();
        let mut g = UpstreamConfig::new("g", servers);
        g.balance = balance;
        g
    }

    fn seq(b: &mut Balancer, n: usize) -> String {
        (0..n)
            .map(|_| (b'a' + b.pick(Time::ZERO, 0, 0).unwrap() as u8) as char)
            .collect()
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn smooth_wrr_nginx_pattern() {
        let mut b = Balancer::new(&group(&[5, 1, 1], Balance::RoundRobin));
        assert_eq!(seq(&mut b, 7), "aabacaa");
        assert_eq!(seq(&mut b, 7), "aabacaa");
    }

    #[test]
    fn equal_weights_rotate() {
        let mut b = Balancer::new(&group(&[1, 1, 1], Balance::RoundRobin));
        assert_eq!(seq(&mut b, 7), "abcabca");
        let mut b = Balancer::new(&group(&[2, 2], Balance::RoundRobin));
        assert_eq!(seq(&mut b, 4), "abab");
    }

    #[test]
    fn zero_weight_never_picked() {
        let mut b = Balancer::new(&group(&[0, 1], Balance::RoundRobin));
        assert_eq!(seq(&mut b, 3), "bbb");
        let mut b = Balancer::new(&group(&[0], Balance::RoundRobin));
        assert_eq!(b.pick(Time::ZERO, 0, 0), None);
    }

    #[test]
    fn tried_excluded() {
        let mut b = Balancer::new(&group(&[1, 1, 1], Balance::RoundRobin));
        for _ in 0..10 {
            let s = b.pick(Time::ZERO, 0, 0b011).unwrap();
            assert_eq!(s, 2);
        }
        assert_eq!(b.pick(Time::ZERO, 0, 0b111), None);
        let mut b = Balancer::new(&group(&[1, 1], Balance::LeastConn));
        assert_eq!(b.pick(Time::ZERO, 0, 0b01), Some(1));
        let mut b = Balancer::new(&group(&[1, 1], Balance::IpHash));
        for h in 0..20 {
            assert_eq!(b.pick(Time::ZERO, h, 0b10), Some(0));
        }
    }

    #[test]
    fn backup_only_when_primaries_unusable() {
        let mut cfg = group(&[1, 1, 1], Balance::RoundRobin);
        cfg.servers[2].backup = true;
        let mut b = Balancer::new(&cfg);
        let t = Time::ZERO;
        assert_eq!(seq(&mut b, 4), "abab");
        b.failure(t, 0);
        assert_eq!(seq(&mut b, 3), "bbb");
        b.failure(t, 1);
        assert_eq!(seq(&mut b, 3), "ccc");
        // Tried primaries also let the backup through.
        let mut b = Balancer::new(&cfg);
        assert_eq!(b.pick(t, 0, 0b011), Some(2));
        assert_eq!(b.pick(t, 0, 0b111), None);
    }

    #[test]
    fn all_down_is_none() {
        let mut b = Balancer::new(&group(&[1, 1], Balance::RoundRobin));
        b.failure(Time::ZERO, 0);
        b.failure(Time::ZERO, 1);
        assert_eq!(b.pick(Time::ZERO, 0, 0), None);
        assert!(!b.is_up(Time::ZERO, 0));
    }

    #[test]
    fn max_fails_timeline() {
        let mut cfg = group(&[1, 1], Balance::RoundRobin);
        cfg.servers[0].max_fails = 3;
        cfg.servers[0].fail_timeout = Duration::from_secs(10);
        let mut b = Balancer::new(&cfg);
        let at = |s: u64| Time(s * S);
        b.failure(at(0), 0);
        b.failure(at(5), 0);
        assert!(b.is_up(at(5), 0));
        // The window [0s, 10s) ended: the count restarts at 12s.
        b.failure(at(12), 0);
        assert_eq!(b.fails(0), 1);
        assert!(b.is_up(at(12), 0));
        b.failure(at(13), 0);
        assert!(b.is_up(at(13), 0));
        b.failure(at(14), 0); // third failure within [12s, 22s): down until 24s
        assert!(!b.is_up(at(14), 0));
        assert!(!b.is_up(at(23), 0));
        for _ in 0..4 {
            assert_eq!(b.pick(at(23), 0, 0), Some(1));
        }
        assert!(b.is_up(at(24), 0));
        // One probe goes through, then the server waits for its outcome.
        let mut picked0 = 0;
        for _ in 0..6 {
            if b.pick(at(24), 0, 0) == Some(0) {
                picked0 += 1;
            }
        }
        assert_eq!(picked0, 1);
        assert!(!b.is_up(at(25), 0));
        // The probe failed: down again for fail_timeout.
        b.failure(at(25), 0);
        assert!(!b.is_up(at(34), 0));
        assert!(b.is_up(at(35), 0));
        assert_eq!(b.pick(at(35), 0, 0b10), Some(0));
        // The probe succeeded: fully up, count reset.
        b.success(0);
        assert_eq!(b.fails(0), 0);
        assert!(b.is_up(at(36), 0));
        assert_eq!(b.pick(at(36), 0, 0b10), Some(0));
        assert_eq!(b.pick(at(36), 0, 0b10), Some(0));
    }

    #[test]
    fn success_resets_count() {
        let mut cfg = group(&[1, 1], Balance::RoundRobin);
        cfg.servers[0].max_fails = 2;
        let mut b = Balancer::new(&cfg);
        b.failure(Time(0), 0);
        b.success(0);
        b.failure(Time(2), 0);
        assert!(b.is_up(Time(2), 0));
        b.failure(Time(3), 0);
        assert!(!b.is_up(Time(3), 0));
    }

    #[test]
    fn a_single_server_is_never_marked_down() {
        let mut b = Balancer::new(&group(&[1], Balance::RoundRobin));
        for t in 0..5 {
            b.failure(Time(t), 0);
        }
        assert!(b.is_up(Time(5), 0));
        assert_eq!(b.pick(Time(5), 0, 0), Some(0));
    }

    #[test]
    fn max_fails_zero_never_down() {
        let mut cfg = group(&[1], Balance::RoundRobin);
        cfg.servers[0].max_fails = 0;
        let mut b = Balancer::new(&cfg);
        for i in 0..100 {
            b.failure(Time(i), 0);
        }
        assert!(b.is_up(Time(100), 0));
        assert_eq!(b.pick(Time(100), 0, 0), Some(0));
    }

    #[test]
    fn failures_lower_effective_weight_then_recover() {
        let mut cfg = group(&[10, 10], Balance::RoundRobin);
        cfg.servers[0].max_fails = 2;
        let mut b = Balancer::new(&cfg);
        b.failure(Time(0), 0); // effective weight 10 - 10/2 = 5, still up
        assert!(b.is_up(Time(0), 0));
        let s = seq(&mut b, 20);
        // The weakened server yields its turn first.
        assert!(s.starts_with('b'), "{s}");
        assert_eq!(b.peers[0].effective_weight, 10);
        // Recovered (one step per pick round): back to an even split.
        let s = seq(&mut b, 20);
        assert_eq!(s.bytes().filter(|&c| c == b'a').count(), 10, "{s}");
    }

    #[test]
    fn least_conn_prefers_idle_and_weights() {
        let mut b = Balancer::new(&group(&[1, 1, 1], Balance::LeastConn));
        b.acquire(0);
        b.acquire(1);
        assert_eq!(b.pick(Time::ZERO, 0, 0), Some(2));
        b.acquire(2);
        b.acquire(2);
        assert_ne!(b.pick(Time::ZERO, 0, 0), Some(2));
        b.release(2);
        b.release(2);
        b.release(0);
        assert_eq!(b.pick(Time::ZERO, 0, 0).map(|s| s != 1), Some(true));
        assert_eq!(b.active(1), 1);
        // Weights: server 0 (weight 3) takes up to 3x the load of server 1.
        let mut b = Balancer::new(&group(&[3, 1], Balance::LeastConn));
        let mut counts = [0u32; 2];
        for _ in 0..8 {
            let s = b.pick(Time::ZERO, 0, 0).unwrap();
            b.acquire(s);
            counts[s] += 1;
        }
        assert_eq!(counts, [6, 2]);
        // Ties are broken by weighted round-robin.
        let mut b = Balancer::new(&group(&[1, 1], Balance::LeastConn));
        assert_eq!(seq(&mut b, 4), "abab");
    }

    #[test]
    fn ip_hash_sticky_and_moves_only_when_down() {
        let mut b = Balancer::new(&group(&[1, 1, 1, 1], Balance::IpHash));
        let t = Time::ZERO;
        for h in [0u64, 1, 7, 12345, u64::MAX] {
            let s = b.pick(t, h, 0).unwrap();
            for _ in 0..5 {
                assert_eq!(b.pick(t, h, 0), Some(s));
            }
        }
        let home: Vec<usize> = (0..64).map(|h| b.pick(t, h, 0).unwrap()).collect();
        let mut seen = [false; 4];
        for &s in &home {
            seen[s] = true;
        }
        assert_eq!(seen, [true; 4]);
        b.failure(t, 2);
        for h in 0..64u64 {
            let s = b.pick(t, h, 0).unwrap();
            if home[h as usize] == 2 {
                assert_ne!(s, 2);
                // Deterministic new home.
                assert_eq!(b.pick(t, h, 0), Some(s));
            } else {
                assert_eq!(s, home[h as usize]);
            }
        }
    }

    #[test]
    fn ip_hash_falls_back_to_backup() {
        let mut cfg = group(&[1, 1], Balance::IpHash);
        cfg.servers[1].backup = true;
        let mut b = Balancer::new(&cfg);
        assert_eq!(b.pick(Time::ZERO, 9, 0), Some(0));
        b.failure(Time::ZERO, 0);
        assert_eq!(b.pick(Time::ZERO, 9, 0), Some(1));
    }

    #[test]
    fn max_conns_respected() {
        let mut cfg = group(&[1, 1], Balance::RoundRobin);
        cfg.servers[0].max_conns = 1;
        let mut b = Balancer::new(&cfg);
        let s = b.pick(Time::ZERO, 0, 0).unwrap();
        assert_eq!(s, 0);
        b.acquire(0);
        for _ in 0..4 {
            assert_eq!(b.pick(Time::ZERO, 0, 0), Some(1));
        }
        assert_eq!(b.pick(Time::ZERO, 0, 0b10), None);
        b.release(0);
        assert_eq!(b.pick(Time::ZERO, 0, 0b10), Some(0));
    }

    // ----- property test -----

    #[derive(Debug, Clone)]
    enum Op {
        Pick { hash: u64, tried: u8 },
        Acquire(u8),
        Release(u8),
        Failure(u8),
        Success(u8),
        Advance(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            5 => (any::<u64>(), any::<u8>()).prop_map(|(hash, tried)| Op::Pick { hash, tried }),
            2 => (0u8..6).prop_map(Op::Acquire),
            2 => (0u8..6).prop_map(Op::Release),
            2 => (0u8..6).prop_map(Op::Failure),
            1 => (0u8..6).prop_map(Op::Success),
            1 => (0u16..3000).prop_map(Op::Advance),
        ]
    }

    fn server_cfg() -> impl Strategy<Value = ServerConfig> {
        (0u32..4, 0u32..3, 0u64..2000, any::<bool>(), 0u32..3).prop_map(
            |(weight, max_fails, ft, backup, max_conns)| ServerConfig {
                weight,
                max_fails,
                fail_timeout: Duration::from_millis(ft),
                backup,
                max_conns,
                ..server(9000)
            },
        )
    }

    fn run(cfg: &UpstreamConfig, ops: &[Op]) -> Result<Vec<Option<usize>>, TestCaseError> {
        let mut b = Balancer::new(cfg);
        let n = cfg.servers.len();
        let mut now = Time::ZERO;
        let mut out = Vec::new();
        for op in ops {
            match *op {
                Op::Pick { hash, tried } => {
                    let tried = u64::from(tried);
                    // What was usable before the pick.
                    let usable: Vec<bool> = (0..n).map(|i| b.usable(now, tried, i)).collect();
                    let got = b.pick(now, hash, tried);
                    if let Some(s) = got {
                        prop_assert!(s < n);
                        prop_assert!(usable[s], "picked unusable server {}", s);
                        prop_assert!(tried & (1 << s) == 0);
                        prop_assert!(cfg.servers[s].weight > 0);
                        let sc = &cfg.servers[s];
                        prop_assert!(sc.max_conns == 0 || b.active(s) < sc.max_conns);
                        if sc.backup {
                            prop_assert!(
                                (0..n).all(|i| cfg.servers[i].backup || !usable[i]),
                                "backup chosen while a primary was usable"
                            );
                        }
                    } else {
                        prop_assert!(usable.iter().all(|&u| !u), "None while a server was usable");
                    }
                    out.push(got);
                }
                Op::Acquire(s) => b.acquire(s as usize % n),
                Op::Release(s) => {
                    let s = s as usize % n;
                    if b.active(s) > 0 {
                        b.release(s);
                    }
                }
                Op::Failure(s) => b.failure(now, s as usize % n),
                Op::Success(s) => b.success(s as usize % n),
                Op::Advance(ms) => now = now.plus(Duration::from_millis(u64::from(ms))),
            }
        }
        Ok(out)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
        #[test]
        fn pick_is_safe_and_deterministic(
            servers in proptest::collection::vec(server_cfg(), 1..6),
            balance in prop_oneof![Just(Balance::RoundRobin), Just(Balance::LeastConn), Just(Balance::IpHash)],
            ops in proptest::collection::vec(op(), 0..150),
        ) {
            let mut cfg = UpstreamConfig::new("p", servers);
            cfg.balance = balance;
            let a = run(&cfg, &ops)?;
            let b = run(&cfg, &ops)?;
            prop_assert_eq!(a, b);
        }
    }
}
