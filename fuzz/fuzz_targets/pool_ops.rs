//! The keepalive pool against a model: arbitrary checkin / checkout / remove / expire / drain
//! sequences on `upkeep_core::pool::Pool` and on a plain `Vec` of entries, compared after every
//! operation (return values, the connections handed back to close and their order, idle counts
//! per group and per key, MRU / LRU orders, entries), with `Pool::check_invariants` each time.
//!
//! The model is the documented contract, written as directly as possible:
//! - an entry is (conn, key, group, expires, seq) where seq orders checkins;
//! - checkin first removes an entry of the same connection; an unknown group or a cap of 0
//!   hands the connection straight back; a full group hands back its oldest entry (smallest seq);
//! - checkout takes the newest entry of exactly that key; expired ones (`expires <= now`) met on
//!   the way are removed and reported in that order;
//! - drain empties group by group, oldest first.
//!
//! Connections are `ConnId { index: 0..16, generation: 0..4 }`; checking in a connection whose
//! index is pooled under another generation breaks the caller's contract (a debug assertion in
//! the pool) and is skipped.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use upkeep_core::pool::{IdleEntry, Pool, PoolKey};
use upkeep_core::{ConnId, Time};

#[derive(Arbitrary, Debug)]
enum Op {
    Checkin {
        key: u8,
        group: u8,
        conn: u8,
        /// Idle lifetime in ticks from now (0: already expired).
        ttl: u8,
    },
    Checkout {
        key: u8,
    },
    Remove {
        conn: u8,
    },
    /// The idle timer fired: remove every entry with `expires <= now` (what the core does).
    ExpireDue,
    Advance {
        ticks: u8,
    },
    Drain,
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Idle cap per group (mod 5): 1..=4 groups.
    caps: Vec<u8>,
    ops: Vec<Op>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ModelEntry {
    conn: ConnId,
    key: PoolKey,
    group: u32,
    expires: Time,
    seq: u64,
}

struct Model {
    caps: Vec<usize>,
    entries: Vec<ModelEntry>,
    seq: u64,
}

impl Model {
    fn remove(&mut self, conn: ConnId) -> Option<ModelEntry> {
        let i = self.entries.iter().position(|e| e.conn == conn)?;
        Some(self.entries.remove(i))
    }

    fn checkin(&mut self, key: PoolKey, group: u32, conn: ConnId, expires: Time) -> Option<ConnId> {
        self.remove(conn);
        let cap = self.caps.get(group as usize).copied().unwrap_or(0);
        if cap == 0 {
            return Some(conn);
        }
        let in_group: Vec<&ModelEntry> = self.entries.iter().filter(|e| e.group == group).collect();
        let victim = if in_group.len() >= cap {
            let oldest = in_group
                .iter()
                .min_by_key(|e| e.seq)
                .expect("non-empty")
                .conn;
            self.remove(oldest);
            Some(oldest)
        } else {
            None
        };
        self.seq += 1;
        self.entries.push(ModelEntry {
            conn,
            key,
            group,
            expires,
            seq: self.seq,
        });
        victim
    }

    fn checkout(&mut self, now: Time, key: PoolKey, expired: &mut Vec<ConnId>) -> Option<ConnId> {
        loop {
            let newest = self
                .entries
                .iter()
                .filter(|e| e.key == key)
                .max_by_key(|e| e.seq)
                .copied()?;
            self.remove(newest.conn);
            if newest.expires > now {
                return Some(newest.conn);
            }
            expired.push(newest.conn);
        }
    }

    /// Group `g`, least recently checked in first.
    fn group_lru(&self, g: u32) -> Vec<IdleEntry> {
        let mut v: Vec<&ModelEntry> = self.entries.iter().filter(|e| e.group == g).collect();
        v.sort_by_key(|e| e.seq);
        v.iter().map(|e| view(e)).collect()
    }

    /// Key `k`, most recently checked in first.
    fn key_mru(&self, k: PoolKey) -> Vec<IdleEntry> {
        let mut v: Vec<&ModelEntry> = self.entries.iter().filter(|e| e.key == k).collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.seq));
        v.iter().map(|e| view(e)).collect()
    }
}

fn view(e: &ModelEntry) -> IdleEntry {
    IdleEntry {
        conn: e.conn,
        key: e.key,
        group: e.group,
        expires: e.expires,
    }
}

fn conn_of(sel: u8) -> ConnId {
    ConnId {
        index: u32::from(sel % 16),
        generation: u32::from((sel / 16) % 4),
    }
}

fn key_of(sel: u8) -> PoolKey {
    PoolKey {
        server: u32::from(sel % 4),
        partition: u64::from((sel / 4) % 2) * 0xdead_beef,
    }
}

fn compare(pool: &Pool, model: &Model, step: usize, op: &Op) {
    pool.check_invariants();
    let ctx = || format!("after op {step} ({op:?})");
    assert_eq!(pool.idle(), model.entries.len(), "idle {}", ctx());
    // One group past the end: unknown groups are empty.
    for g in 0..=model.caps.len() as u32 {
        assert_eq!(
            pool.cap(g),
            model.caps.get(g as usize).copied().unwrap_or(0)
        );
        let lru: Vec<IdleEntry> = pool.group_lru(g).collect();
        assert_eq!(lru, model.group_lru(g), "group {g} LRU {}", ctx());
        assert_eq!(
            pool.idle_in_group(g),
            lru.len(),
            "idle_in_group({g}) {}",
            ctx()
        );
    }
    let snap = pool.snapshot();
    assert_eq!(snap.groups.len(), model.caps.len());
    for (g, gs) in snap.groups.iter().enumerate() {
        assert_eq!(
            gs.lru,
            model.group_lru(g as u32),
            "snapshot group {g} {}",
            ctx()
        );
    }
    for sel in 0..8u8 {
        let k = key_of(sel);
        let mru: Vec<IdleEntry> = pool.key_mru(k).collect();
        assert_eq!(mru, model.key_mru(k), "key {k:?} MRU {}", ctx());
        assert_eq!(pool.idle_for_key(k), mru.len(), "idle_for_key {}", ctx());
    }
    let mut keys: Vec<(PoolKey, usize)> = pool.idle_keys().collect();
    keys.sort_by_key(|(k, _)| (k.server, k.partition));
    let mut want: Vec<(PoolKey, usize)> = Vec::new();
    for e in &model.entries {
        match want.iter_mut().find(|(k, _)| *k == e.key) {
            Some((_, n)) => *n += 1,
            None => want.push((e.key, 1)),
        }
    }
    want.sort_by_key(|(k, _)| (k.server, k.partition));
    assert_eq!(keys, want, "idle_keys {}", ctx());
    for sel in 0..64u8 {
        let c = conn_of(sel);
        let m = model.entries.iter().find(|e| e.conn == c).map(view);
        assert_eq!(pool.entry(c), m, "entry({c:?}) {}", ctx());
        assert_eq!(pool.contains(c), m.is_some(), "contains({c:?}) {}", ctx());
    }
}

fuzz_target!(|input: Input| {
    let mut caps: Vec<usize> = input
        .caps
        .iter()
        .take(4)
        .map(|&c| (c % 5) as usize)
        .collect();
    if caps.is_empty() {
        caps.push(2);
    }
    let mut pool = Pool::new(&caps);
    let mut model = Model {
        caps,
        entries: Vec::new(),
        seq: 0,
    };
    let mut now = Time(1_000);
    for (step, op) in input.ops.iter().take(256).enumerate() {
        match *op {
            Op::Checkin {
                key,
                group,
                conn,
                ttl,
            } => {
                let c = conn_of(conn);
                if model
                    .entries
                    .iter()
                    .any(|e| e.conn.index == c.index && e.conn != c)
                {
                    continue;
                }
                let k = key_of(key);
                let g = u32::from(group % 6);
                let expires = Time(now.0 + u64::from(ttl));
                let got = pool.checkin(k, g, c, expires);
                let want = model.checkin(k, g, c, expires);
                assert_eq!(got, want, "checkin({k:?}, {g}, {c:?}) at op {step}");
            }
            Op::Checkout { key } => {
                let k = key_of(key);
                let mut exp = Vec::new();
                let got = pool.checkout(now, k, &mut |c| exp.push(c));
                let mut want_exp = Vec::new();
                let want = model.checkout(now, k, &mut want_exp);
                assert_eq!(got, want, "checkout({k:?}) at op {step}");
                assert_eq!(exp, want_exp, "expired by checkout({k:?}) at op {step}");
            }
            Op::Remove { conn } => {
                let c = conn_of(conn);
                assert_eq!(
                    pool.remove(c),
                    model.remove(c).is_some(),
                    "remove({c:?}) at op {step}"
                );
            }
            Op::ExpireDue => {
                let due: Vec<ConnId> = model
                    .entries
                    .iter()
                    .filter(|e| e.expires <= now)
                    .map(|e| e.conn)
                    .collect();
                for c in due {
                    assert!(pool.remove(c), "expired {c:?} not in the pool at op {step}");
                    model.remove(c);
                }
            }
            Op::Advance { ticks } => now = Time(now.0 + u64::from(ticks)),
            Op::Drain => {
                let mut got = Vec::new();
                pool.drain(&mut |c| got.push(c));
                let mut want = Vec::new();
                for g in 0..model.caps.len() as u32 {
                    want.extend(model.group_lru(g).iter().map(|e| e.conn));
                }
                model.entries.clear();
                assert_eq!(got, want, "drain order at op {step}");
            }
        }
        compare(&pool, &model, step, op);
    }
});
