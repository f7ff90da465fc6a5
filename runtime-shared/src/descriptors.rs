//! File descriptors: the process limit, and the share of it client connections may take.
//!
//! At start a runtime raises the soft `RLIMIT_NOFILE` to the hard limit ([`raise_limit`];
//! HAProxy does the same, nginx has `worker_rlimit_nofile`): the soft default (often 1024) is a
//! compatibility relic for `select(2)` users, which neither runtime is.
//!
//! A client flood must not take the descriptors that upstream connects, the pool and the admin
//! listener need, or every request that needs a new upstream connection fails with a 500 while
//! accepting is paused. So each worker's client limit is capped ([`client_cap`]) to what leaves
//! a reserve for the process and the worker ([`worker_needs`]), the idle pool, and one upstream
//! connection per client (HAProxy sizes `maxconn` the same way: two descriptors per proxied
//! connection). The
//! worker's accept [`Gate`](crate::accept::Gate) then pauses at that cap, before `accept(2)`,
//! instead of meeting `EMFILE`.

use std::io;

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use upkeep_core::Config;

/// Descriptors the process holds whatever the traffic: standard streams, the admin listener and
/// a few admin connections, log files, the signal pipe.
pub const PROCESS_RESERVE: u64 = 32;
/// Descriptors each worker holds whatever the traffic besides its listeners: its poller, its
/// waker, its access log.
pub const WORKER_RESERVE: u64 = 4;

/// The soft descriptor limit after trying to raise it to the hard limit (returned as well when
/// the raise is refused, with a warning). `None` = unlimited.
pub fn raise_limit() -> Option<u64> {
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return limit.current;
    }
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => {
            log::debug!(
                "RLIMIT_NOFILE raised from {} to {}",
                show(limit.current),
                show(limit.maximum)
            );
            limit.maximum
        }
        Err(e) => {
            // macOS refuses a soft limit above OPEN_MAX even under a higher hard limit; keep
            // the soft one then.
            log::warn!(
                "cannot raise RLIMIT_NOFILE from {} to {}: {}",
                show(limit.current),
                show(limit.maximum),
                io::Error::from(e)
            );
            limit.current
        }
    }
}

/// The soft descriptor limit in force (`None` = unlimited).
pub fn limit() -> Option<u64> {
    getrlimit(Resource::Nofile).current
}

fn show(limit: Option<u64>) -> String {
    limit.map_or_else(|| "unlimited".into(), |n| n.to_string())
}

/// What one worker of `config` needs whatever its clients do: [`WORKER_RESERVE`] and its
/// listeners (`fixed`), and the most idle connections its pool may keep (`pool`: `keepalive`
/// summed over the groups).
pub fn worker_needs(config: &Config) -> (u64, u64) {
    let fixed = WORKER_RESERVE + config.listeners.len() as u64;
    let pool = config.upstreams.iter().map(|u| u.keepalive as u64).sum();
    (fixed, pool)
}

/// The most client connections one of `workers` workers may hold under a descriptor `limit`
/// (`None` = unlimited), each worker needing `fixed` descriptors and up to `pool` for idle
/// pooled connections: of the worker's share of the limit (after [`PROCESS_RESERVE`]), less
/// `fixed` and the pool (at most a quarter of the share: a pool only grows as large as the
/// traffic that filled it), half — the other half is for the upstream connection each client
/// may need at once. At least 1.
pub fn client_cap(limit: Option<u64>, workers: usize, fixed: u64, pool: u64) -> usize {
    let Some(limit) = limit else {
        return usize::MAX;
    };
    let share =
        (limit.saturating_sub(PROCESS_RESERVE) / workers.max(1) as u64).saturating_sub(fixed);
    let pool = pool.min(share / 4);
    usize::try_from((share - pool) / 2)
        .unwrap_or(usize::MAX)
        .max(1)
}

/// Caps `config.limits.max_client_connections` (per worker) to what the descriptor `limit`
/// leaves for `workers` workers ([`client_cap`]); logs when it lowers the configured value. A
/// runtime that `splices` zero-copy bodies (with `limits.splice_min > 0`) also keeps two
/// descriptors for each of its [`MAX_PIPES`] pipes per worker, so a pipe never takes the
/// descriptor an upstream connect needs.
pub fn fit(config: &mut Config, workers: usize, limit: Option<u64>, splices: bool) {
    let (mut fixed, pool) = worker_needs(config);
    if splices && config.limits.splice_min > 0 {
        fixed += 2 * MAX_PIPES as u64;
    }
    let cap = client_cap(limit, workers, fixed, pool);
    let configured = config.limits.max_client_connections;
    if cap < configured {
        log::info!(
            "RLIMIT_NOFILE {}: at most {cap} client connections per worker (of \
             limits.max_client_connections = {configured}), keeping descriptors for upstream \
             connections",
            show(limit)
        );
        config.limits.max_client_connections = cap;
    }
}

/// The most pipes (in use and kept empty; two descriptors each) a worker that splices holds at
/// once (HAProxy's `maxpipes`, which defaults to a quarter of `maxconn`); beyond it bodies are
/// copied. [`fit`] keeps their descriptors out of the clients' share.
pub const MAX_PIPES: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;
    use upkeep_core::Address;

    fn config(keepalive: usize) -> Config {
        let mut c = Config::simple(
            Address::parse("127.0.0.1:0").unwrap(),
            vec![Address::parse("127.0.0.1:9").unwrap()],
        );
        c.upstreams[0].keepalive = keepalive;
        c
    }

    #[test]
    fn a_worker_needs_its_listeners_and_its_pool() {
        assert_eq!(worker_needs(&config(8)), (4 + 1, 8));
    }

    #[test]
    fn clients_get_half_a_workers_share_of_what_the_reserve_leaves() {
        for (limit, workers, fixed, pool, cap) in [
            (None, 1, 5, 8, usize::MAX),
            // 1024 - 32 = 992 for one worker, less 5 fixed and 8 pooled: 979 / 2.
            (Some(1024), 1, 5, 8, 489),
            // Two workers: 496 each, less 5 and 8.
            (Some(1024), 2, 5, 8, 241),
            // A pool larger than a quarter of the share counts as a quarter: 91 - 22 = 69.
            (Some(128), 1, 5, 1024, 34),
            // Too few descriptors even for the reserve: one client still gets in.
            (Some(32), 1, 5, 1024, 1),
            (Some(1 << 20), 4, 5, 1024, 130_553),
        ] {
            assert_eq!(
                client_cap(limit, workers, fixed, pool),
                cap,
                "{limit:?} {workers} {fixed} {pool}"
            );
        }
    }

    #[test]
    fn a_splicing_runtime_keeps_descriptors_for_its_pipes() {
        // 1024 - 32 = 992, less 5 fixed and 8 pooled: 979 / 2 = 489 clients copying; with
        // 64 pipes (128 descriptors) kept apart: 851 / 2 = 425.
        let mut c = config(8);
        fit(&mut c, 1, Some(1024), true);
        assert_eq!(c.limits.max_client_connections, 425);
        let mut copying = config(8);
        fit(&mut copying, 1, Some(1024), false);
        assert_eq!(copying.limits.max_client_connections, 489);
        let mut off = config(8);
        off.limits.splice_min = 0;
        fit(&mut off, 1, Some(1024), true);
        assert_eq!(
            off.limits.max_client_connections, 489,
            "splice_min = 0: no pipes"
        );
    }

    #[test]
    fn fit_only_ever_lowers_the_configured_limit() {
        let mut c = config(8);
        c.limits.max_client_connections = 50;
        fit(&mut c, 1, Some(256), false);
        assert_eq!(c.limits.max_client_connections, 50);
        fit(&mut c, 1, Some(64), false);
        assert_eq!(c.limits.max_client_connections, 10);
        fit(&mut c, 1, None, false);
        assert_eq!(c.limits.max_client_connections, 10);
    }

    #[test]
    fn raising_keeps_or_raises_the_soft_limit() {
        let before = limit();
        let after = raise_limit();
        assert!(after.is_none() || after >= before);
        assert_eq!(limit(), after);
    }
}
