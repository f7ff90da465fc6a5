//! Keepalive pool bookkeeping: which idle upstream connections exist, for which key, in which
//! order they are reused and evicted.
//!
//! The pool is plain data owned by one worker. It never closes anything itself: connections that
//! leave it without being reused are handed back to the caller (the return value of
//! [`Pool::checkin`], the `expired` callback of [`Pool::checkout`], the callback of
//! [`Pool::drain`]), which closes them and counts the [`EvictReason`].
//!
//! Layout (no allocation per operation once the structures reached their high-water marks):
//! - `entries`: a [`Slab`] of idle connections. Each entry sits on two intrusive doubly-linked
//!   lists: the list of its [`PoolKey`] (most recently checked in at the head, reuse takes the
//!   head: MRU) and the list of its group (head = most recent, tail = least recent, eviction
//!   takes the tail: LRU).
//! - `keys`: a [`Slab`] of per-key list heads, found through a `HashMap<PoolKey, slot>` with a
//!   deterministic hasher. A key is inserted when its first connection is checked in and removed
//!   when its last one leaves, so the map holds at most as many keys as there are idle
//!   connections (its capacity is kept, so re-inserting does not allocate).
//! - `by_conn`: a `Vec<u32>` indexed by `ConnId::index` giving the entry slot, so
//!   [`Pool::remove`] and [`Pool::contains`] are O(1) without hashing; the entry's stored
//!   `ConnId` (with its generation) confirms the match.
//! - `groups`: per-group cap, count and list ends.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::BuildHasherDefault;

use slab::Slab;

use crate::{ConnId, Time};

/// What makes two idle connections interchangeable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// Global server index (the core numbers every server of every group).
    pub server: u32,
    /// 0 unless the pool is partitioned by client, then a hash of the client address.
    pub partition: u64,
}

/// Why an idle connection left the pool without being reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EvictReason {
    IdleTimeout,
    Capacity,
    PeerClosed,
    UnexpectedData,
    Draining,
    /// Its server stopped being usable (drained, set down, failed health): nothing from before
    /// an outage is reused after it.
    ServerUnusable,
    /// Closed to give its `max_conns` slot to a waiting request that could not take it over:
    /// another worker's, when the connection may not move (a `pool_key = "client"` group, or
    /// its worker gone; others are handed over instead), or a fresh-connection retry's.
    Yielded,
}

impl EvictReason {
    pub const ALL: [EvictReason; 7] = [
        EvictReason::IdleTimeout,
        EvictReason::Capacity,
        EvictReason::PeerClosed,
        EvictReason::UnexpectedData,
        EvictReason::Draining,
        EvictReason::ServerUnusable,
        EvictReason::Yielded,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            EvictReason::IdleTimeout => "idle_timeout",
            EvictReason::Capacity => "capacity",
            EvictReason::PeerClosed => "peer_closed",
            EvictReason::UnexpectedData => "unexpected_data",
            EvictReason::Draining => "draining",
            EvictReason::ServerUnusable => "server_unusable",
            EvictReason::Yielded => "yielded",
        }
    }
}

/// "No slot" in the intrusive lists and in `by_conn`.
const NIL: u32 = u32::MAX;

type DetHasher = BuildHasherDefault<DefaultHasher>;

/// One idle connection.
#[derive(Debug, Clone)]
struct Entry {
    conn: ConnId,
    /// Slot in `Pool::keys`.
    key_slot: u32,
    group: u32,
    expires: Time,
    /// Place on the key list.
    key_links: Links,
    /// Place on the group list.
    grp_links: Links,
}

/// An entry's neighbours on one list.
#[derive(Debug, Clone, Copy)]
struct Links {
    /// Towards the MRU end (head).
    prev: u32,
    /// Towards the LRU end (tail).
    next: u32,
}

impl Links {
    const NONE: Links = Links {
        prev: NIL,
        next: NIL,
    };
}

/// Which of its two lists an operation walks or edits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum List {
    Key,
    Group,
}

impl List {
    fn of(self, e: &Entry) -> Links {
        match self {
            List::Key => e.key_links,
            List::Group => e.grp_links,
        }
    }

    fn of_mut(self, e: &mut Entry) -> &mut Links {
        match self {
            List::Key => &mut e.key_links,
            List::Group => &mut e.grp_links,
        }
    }

    /// Name used in invariant-check messages.
    fn name(self) -> &'static str {
        match self {
            List::Key => "key",
            List::Group => "group",
        }
    }
}

/// Ends of one list: head = most recently checked in, tail = least recently checked in.
#[derive(Debug, Clone, Copy)]
struct Ends {
    head: u32,
    tail: u32,
    len: usize,
}

impl Ends {
    const EMPTY: Ends = Ends {
        head: NIL,
        tail: NIL,
        len: 0,
    };

    /// Links slot `e` (on no `list` yet) at the head.
    fn push_front(&mut self, entries: &mut Slab<Entry>, list: List, e: u32) {
        let old_head = self.head;
        self.head = e;
        if old_head == NIL {
            self.tail = e;
        }
        self.len += 1;
        list.of_mut(&mut entries[e as usize]).next = old_head;
        if old_head != NIL {
            list.of_mut(&mut entries[old_head as usize]).prev = e;
        }
    }

    /// Unlinks slot `s`, whose neighbours on `list` were `l` (the entry itself may already be
    /// out of the slab).
    fn unlink(&mut self, entries: &mut Slab<Entry>, list: List, s: u32, l: Links) {
        if l.prev != NIL {
            list.of_mut(&mut entries[l.prev as usize]).next = l.next;
        }
        if l.next != NIL {
            list.of_mut(&mut entries[l.next as usize]).prev = l.prev;
        }
        if self.head == s {
            self.head = l.next;
        }
        if self.tail == s {
            self.tail = l.prev;
        }
        self.len -= 1;
    }
}

#[derive(Debug, Clone, Copy)]
struct KeyList {
    key: PoolKey,
    ends: Ends,
}

#[derive(Debug, Clone, Copy)]
struct Group {
    cap: usize,
    ends: Ends,
}

/// Idle connections of one worker.
#[derive(Debug, Default)]
pub struct Pool {
    entries: Slab<Entry>,
    keys: Slab<KeyList>,
    key_index: HashMap<PoolKey, u32, DetHasher>,
    by_conn: Vec<u32>,
    groups: Vec<Group>,
}

/// A read-only view of one idle connection, for introspection and invariant checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdleEntry {
    pub conn: ConnId,
    pub key: PoolKey,
    pub group: u32,
    pub expires: Time,
}

/// An owned picture of the pool (allocates; for tests, the simulation and debugging).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSnapshot {
    /// One entry per group, in group order.
    pub groups: Vec<GroupSnapshot>,
}

/// One group of a [`PoolSnapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSnapshot {
    /// The group's idle cap.
    pub cap: usize,
    /// Its idle connections, least recently checked in first (the eviction order).
    pub lru: Vec<IdleEntry>,
}

fn slot(i: usize) -> u32 {
    u32::try_from(i).expect("pool slab larger than u32::MAX")
}

impl Pool {
    /// A pool with one idle cap per upstream group (index = group id); a cap of 0 disables pooling
    /// for that group.
    pub fn new(group_caps: &[usize]) -> Pool {
        Pool {
            groups: group_caps
                .iter()
                .map(|&cap| Group {
                    cap,
                    ends: Ends::EMPTY,
                })
                .collect(),
            ..Pool::default()
        }
    }

    /// Puts an idle connection in the pool, to be reused (by [`checkout`](Pool::checkout)) only
    /// while `now < expires`.
    ///
    /// Returns a connection the caller must close (reason [`EvictReason::Capacity`]):
    /// - `Some(conn)` itself if the group's cap is 0 (or the group is unknown);
    /// - otherwise, if the group already held `cap` idle connections, its least recently
    ///   checked-in one;
    /// - `None` if nothing has to be closed.
    ///
    /// Checking in a connection that is already pooled first removes it (then it is handled like
    /// any other checkin).
    pub fn checkin(
        &mut self,
        key: PoolKey,
        group: u32,
        conn: ConnId,
        expires: Time,
    ) -> Option<ConnId> {
        // An entry for this slab index (the same connection checked in twice, or a stale
        // generation the caller forgot to remove) is replaced.
        if let Some(old) = self.slot_of_index(conn.index) {
            let stale = self.entries[old as usize].conn;
            debug_assert_eq!(
                stale, conn,
                "checkin of a connection whose index is still pooled under another generation"
            );
            self.remove_slot(old);
        }
        let cap = self.groups.get(group as usize).map_or(0, |g| g.cap);
        if cap == 0 {
            return Some(conn);
        }
        let victim = if self.groups[group as usize].ends.len >= cap {
            let tail = self.groups[group as usize].ends.tail;
            debug_assert_ne!(tail, NIL);
            Some(self.remove_slot(tail).conn)
        } else {
            None
        };

        let key_slot = match self.key_index.get(&key) {
            Some(&s) => s,
            None => {
                let s = slot(self.keys.insert(KeyList {
                    key,
                    ends: Ends::EMPTY,
                }));
                self.key_index.insert(key, s);
                s
            }
        };
        let e = slot(self.entries.insert(Entry {
            conn,
            key_slot,
            group,
            expires,
            key_links: Links::NONE,
            grp_links: Links::NONE,
        }));
        self.keys[key_slot as usize]
            .ends
            .push_front(&mut self.entries, List::Key, e);
        self.groups[group as usize]
            .ends
            .push_front(&mut self.entries, List::Group, e);
        // Index by connection.
        let idx = conn.index as usize;
        if idx >= self.by_conn.len() {
            self.by_conn.resize(idx + 1, NIL);
        }
        self.by_conn[idx] = e;
        victim
    }

    /// Takes the most recently checked-in connection for exactly `key` whose `expires > now`.
    /// Entries of that key found expired on the way are removed and passed to `expired` (the
    /// caller closes them, reason [`EvictReason::IdleTimeout`]).
    pub fn checkout(
        &mut self,
        now: Time,
        key: PoolKey,
        expired: &mut dyn FnMut(ConnId),
    ) -> Option<ConnId> {
        let key_slot = *self.key_index.get(&key)?;
        loop {
            // The key list may disappear (and its slot be reused) once its last entry leaves.
            let head = match self.keys.get(key_slot as usize) {
                Some(kl) if kl.key == key => kl.ends.head,
                _ => return None,
            };
            if head == NIL {
                return None;
            }
            let entry = self.remove_slot(head);
            if entry.expires > now {
                return Some(entry.conn);
            }
            expired(entry.conn);
        }
    }

    /// Removes `conn` (it became readable or closed, or its idle timer fired). O(1). True if it
    /// was pooled.
    pub fn remove(&mut self, conn: ConnId) -> bool {
        match self.slot_of(conn) {
            Some(s) => {
                self.remove_slot(s);
                true
            }
            None => false,
        }
    }

    /// Gives back the memory a peak of idle connections left, if at most a quarter of it is used
    /// (the entries cannot move, so only as far as the last one).
    pub fn shrink(&mut self) {
        if self.entries.capacity() >= 1024 && self.entries.len() * 4 < self.entries.capacity() {
            self.entries.shrink_to_fit();
        }
        crate::id::shrink_slot_index(&mut self.by_conn);
    }

    /// Whether `conn` (this generation) is idle in the pool.
    pub fn contains(&self, conn: ConnId) -> bool {
        self.slot_of(conn).is_some()
    }

    /// Number of idle connections.
    pub fn idle(&self) -> usize {
        self.entries.len()
    }

    /// Number of idle connections of one group (0 for an unknown group).
    pub fn idle_in_group(&self, group: u32) -> usize {
        self.groups.get(group as usize).map_or(0, |g| g.ends.len)
    }

    /// Removes every idle connection (graceful shutdown), passing each to `f`: group by group in
    /// group order, least recently checked in first.
    pub fn drain(&mut self, f: &mut dyn FnMut(ConnId)) {
        for g in 0..self.groups.len() {
            loop {
                let tail = self.groups[g].ends.tail;
                if tail == NIL {
                    break;
                }
                let e = self.remove_slot(tail);
                f(e.conn);
            }
        }
        debug_assert!(self.entries.is_empty());
        debug_assert!(self.key_index.is_empty());
    }

    // ----- introspection (cheap, allocation-free except where noted) -----

    /// The idle cap of `group` (0 for an unknown group).
    pub fn cap(&self, group: u32) -> usize {
        self.groups.get(group as usize).map_or(0, |g| g.cap)
    }

    /// Number of groups the pool was created with.
    pub fn groups(&self) -> usize {
        self.groups.len()
    }

    /// Number of idle connections for `key`.
    pub fn idle_for_key(&self, key: PoolKey) -> usize {
        self.key_index
            .get(&key)
            .map_or(0, |&s| self.keys[s as usize].ends.len)
    }

    /// The pooled entry of `conn`, if it is idle in the pool.
    pub fn entry(&self, conn: ConnId) -> Option<IdleEntry> {
        self.slot_of(conn).map(|s| self.view(s))
    }

    /// Every key that has idle connections, with its count, in a deterministic order (by the
    /// internal slot; identical call sequences give identical orders).
    pub fn idle_keys(&self) -> impl Iterator<Item = (PoolKey, usize)> + '_ {
        self.keys.iter().map(|(_, kl)| (kl.key, kl.ends.len))
    }

    /// Idle connections of `key`, most recently checked in first (the order of reuse).
    pub fn key_mru(&self, key: PoolKey) -> impl Iterator<Item = IdleEntry> + '_ {
        let head = self
            .key_index
            .get(&key)
            .map_or(NIL, |&s| self.keys[s as usize].ends.head);
        ListIter {
            pool: self,
            cur: head,
            next: |e: &Entry| e.key_links.next,
        }
    }

    /// Idle connections of `group`, least recently checked in first (the order of eviction).
    pub fn group_lru(&self, group: u32) -> impl Iterator<Item = IdleEntry> + '_ {
        let tail = self.groups.get(group as usize).map_or(NIL, |g| g.ends.tail);
        ListIter {
            pool: self,
            cur: tail,
            next: |e: &Entry| e.grp_links.prev,
        }
    }

    /// An owned copy of the pool's state (allocates).
    pub fn snapshot(&self) -> PoolSnapshot {
        PoolSnapshot {
            groups: (0..self.groups.len())
                .map(|g| GroupSnapshot {
                    cap: self.groups[g].cap,
                    lru: self.group_lru(g as u32).collect(),
                })
                .collect(),
        }
    }

    /// Panics if the internal structures are inconsistent (lists, counts, caps, indexes). O(n);
    /// for tests and the engine's simulation.
    pub fn check_invariants(&self) {
        let n = self.entries.len();
        // Group lists: walk both directions, counts, caps, membership.
        let mut seen_groups = 0usize;
        for (g, grp) in self.groups.iter().enumerate() {
            assert!(
                grp.ends.len <= grp.cap,
                "group {g}: {} idle > cap {}",
                grp.ends.len,
                grp.cap
            );
            seen_groups += self.check_list(List::Group, g, grp.ends, |e| e.group as usize);
        }
        assert_eq!(seen_groups, n, "entries not on any group list");
        // Key lists.
        assert_eq!(
            self.keys.len(),
            self.key_index.len(),
            "key slab and key map disagree"
        );
        let mut seen_keys = 0usize;
        for (s, kl) in self.keys.iter() {
            assert_eq!(
                self.key_index.get(&kl.key),
                Some(&slot(s)),
                "key map does not point at slot {s}"
            );
            assert!(kl.ends.len > 0, "empty key list {s} kept");
            seen_keys += self.check_list(List::Key, s, kl.ends, |e| e.key_slot as usize);
        }
        assert_eq!(seen_keys, n, "entries not on any key list");
        // Connection index.
        let mut indexed = 0usize;
        for (i, &s) in self.by_conn.iter().enumerate() {
            if s != NIL {
                let e = self
                    .entries
                    .get(s as usize)
                    .unwrap_or_else(|| panic!("by_conn[{i}] dangling"));
                assert_eq!(
                    e.conn.index as usize, i,
                    "by_conn[{i}] points at another connection"
                );
                indexed += 1;
            }
        }
        assert_eq!(indexed, n, "by_conn count differs from entries");
        for (s, e) in self.entries.iter() {
            assert_eq!(
                self.by_conn.get(e.conn.index as usize),
                Some(&slot(s)),
                "entry {s} not indexed"
            );
            assert!(
                (e.group as usize) < self.groups.len(),
                "entry {s} in unknown group"
            );
        }
    }

    /// Walks list `id` (of kind `list`) from its head, checking links, membership (`owner` of each entry is `id`),
    /// tail and length; returns its length.
    fn check_list(
        &self,
        list: List,
        id: usize,
        ends: Ends,
        owner: impl Fn(&Entry) -> usize,
    ) -> usize {
        let name = list.name();
        let mut count = 0usize;
        let mut prev = NIL;
        let mut cur = ends.head;
        while cur != NIL {
            let e = self
                .entries
                .get(cur as usize)
                .unwrap_or_else(|| panic!("{name} {id}: dangling slot {cur}"));
            assert_eq!(owner(e), id, "entry {cur} on the wrong {name} list");
            let links = list.of(e);
            assert_eq!(links.prev, prev, "{name} {id}: broken prev link at {cur}");
            count += 1;
            assert!(count <= self.entries.len(), "{name} {id}: cycle");
            prev = cur;
            cur = links.next;
        }
        assert_eq!(ends.tail, prev, "{name} {id}: wrong tail");
        assert_eq!(ends.len, count, "{name} {id}: wrong len");
        count
    }

    // ----- internals -----

    fn slot_of_index(&self, index: u32) -> Option<u32> {
        match self.by_conn.get(index as usize) {
            Some(&s) if s != NIL => Some(s),
            _ => None,
        }
    }

    fn slot_of(&self, conn: ConnId) -> Option<u32> {
        self.slot_of_index(conn.index)
            .filter(|&s| self.entries[s as usize].conn == conn)
    }

    fn view(&self, s: u32) -> IdleEntry {
        let e = &self.entries[s as usize];
        IdleEntry {
            conn: e.conn,
            key: self.keys[e.key_slot as usize].key,
            group: e.group,
            expires: e.expires,
        }
    }

    /// Unlinks and frees one entry, dropping its key list if it became empty.
    fn remove_slot(&mut self, s: u32) -> Entry {
        let e = self.entries.remove(s as usize);
        let kl = &mut self.keys[e.key_slot as usize];
        kl.ends.unlink(&mut self.entries, List::Key, s, e.key_links);
        if kl.ends.len == 0 {
            let key = kl.key;
            self.keys.remove(e.key_slot as usize);
            self.key_index.remove(&key);
        }
        self.groups[e.group as usize]
            .ends
            .unlink(&mut self.entries, List::Group, s, e.grp_links);
        self.by_conn[e.conn.index as usize] = NIL;
        e
    }
}

struct ListIter<'a, F> {
    pool: &'a Pool,
    cur: u32,
    next: F,
}

impl<F: Fn(&Entry) -> u32> Iterator for ListIter<'_, F> {
    type Item = IdleEntry;
    fn next(&mut self) -> Option<IdleEntry> {
        if self.cur == NIL {
            return None;
        }
        let s = self.cur;
        self.cur = (self.next)(&self.pool.entries[s as usize]);
        Some(self.pool.view(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(i: u32) -> ConnId {
        ConnId {
            index: i,
            generation: 0,
        }
    }
    fn k(server: u32) -> PoolKey {
        PoolKey {
            server,
            partition: 0,
        }
    }
    const T0: Time = Time(0);
    const FAR: Time = Time(u64::MAX);

    fn out(pool: &mut Pool, now: Time, key: PoolKey) -> (Option<ConnId>, Vec<ConnId>) {
        let mut exp = Vec::new();
        let got = pool.checkout(now, key, &mut |c| exp.push(c));
        pool.check_invariants();
        (got, exp)
    }

    #[test]
    fn evict_reason_names() {
        let names: Vec<_> = EvictReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            names,
            [
                "idle_timeout",
                "capacity",
                "peer_closed",
                "unexpected_data",
                "draining",
                "server_unusable",
                "yielded"
            ]
        );
    }

    /// http-proxy-rules item 1: cap 2, five connections released → the two most recent stay, the
    /// three least recent are returned for closing.
    #[test]
    fn cap_keeps_most_recent() {
        let mut p = Pool::new(&[2]);
        let mut evicted = Vec::new();
        for i in 0..5 {
            if let Some(v) = p.checkin(k(0), 0, c(i), FAR) {
                evicted.push(v);
            }
            p.check_invariants();
            assert!(p.idle_in_group(0) <= 2);
        }
        assert_eq!(evicted, [c(0), c(1), c(2)]);
        assert_eq!(p.idle(), 2);
        assert!(p.contains(c(3)) && p.contains(c(4)));
    }

    #[test]
    fn cap_is_per_group_and_across_keys() {
        let mut p = Pool::new(&[2, 1]);
        assert_eq!(p.checkin(k(0), 0, c(0), FAR), None);
        assert_eq!(p.checkin(k(1), 0, c(1), FAR), None);
        assert_eq!(p.checkin(k(5), 1, c(5), FAR), None);
        // Group 0 is full: the LRU of the group goes, even though it is of another key.
        assert_eq!(p.checkin(k(1), 0, c(2), FAR), Some(c(0)));
        assert_eq!(p.idle_for_key(k(0)), 0);
        assert_eq!(p.idle_in_group(1), 1);
        assert_eq!(p.checkin(k(5), 1, c(6), FAR), Some(c(5)));
        p.check_invariants();
    }

    #[test]
    fn cap_zero_refuses() {
        let mut p = Pool::new(&[0]);
        assert_eq!(p.checkin(k(0), 0, c(7), FAR), Some(c(7)));
        assert_eq!(p.idle(), 0);
        // Unknown group: refused too.
        assert_eq!(p.checkin(k(0), 3, c(8), FAR), Some(c(8)));
        assert!(!p.contains(c(8)));
        p.check_invariants();
    }

    /// Item 2: MRU reuse.
    #[test]
    fn reuse_is_most_recent_first() {
        let mut p = Pool::new(&[8]);
        p.checkin(k(0), 0, c(1), FAR);
        p.checkin(k(0), 0, c(2), FAR);
        assert_eq!(out(&mut p, T0, k(0)).0, Some(c(2)));
        // Sequential use keeps riding the same connection.
        p.checkin(k(0), 0, c(2), FAR);
        assert_eq!(out(&mut p, T0, k(0)).0, Some(c(2)));
        p.checkin(k(0), 0, c(2), FAR);
        assert_eq!(out(&mut p, T0, k(0)).0, Some(c(2)));
        assert_eq!(out(&mut p, T0, k(0)).0, Some(c(1)));
        assert_eq!(out(&mut p, T0, k(0)).0, None);
    }

    /// Item 3: a key never gets another key's connection; partitions separate clients.
    #[test]
    fn keys_never_mix() {
        let mut p = Pool::new(&[8]);
        p.checkin(k(1), 0, c(1), FAR);
        assert_eq!(out(&mut p, T0, k(2)), (None, vec![]));
        let a = PoolKey {
            server: 1,
            partition: 11,
        };
        let b = PoolKey {
            server: 1,
            partition: 22,
        };
        p.checkin(a, 0, c(2), FAR);
        p.checkin(b, 0, c(3), FAR);
        assert_eq!(out(&mut p, T0, a).0, Some(c(2)));
        assert_eq!(out(&mut p, T0, a).0, None);
        assert_eq!(out(&mut p, T0, k(1)).0, Some(c(1)));
        assert_eq!(out(&mut p, T0, b).0, Some(c(3)));
        assert_eq!(p.idle(), 0);
    }

    #[test]
    fn expiry_at_checkout() {
        let mut p = Pool::new(&[8]);
        p.checkin(k(0), 0, c(1), Time(100)); // valid
        p.checkin(k(0), 0, c(2), Time(10)); // expired at 50
        p.checkin(k(0), 0, c(3), Time(50)); // expires == now: expired
        p.checkin(k(1), 0, c(4), Time(10)); // other key: untouched
        let (got, exp) = out(&mut p, Time(50), k(0));
        assert_eq!(got, Some(c(1)));
        assert_eq!(exp, [c(3), c(2)]);
        assert!(p.contains(c(4)));
        let (got, exp) = out(&mut p, Time(50), k(1));
        assert_eq!((got, exp), (None, vec![c(4)]));
        assert_eq!(p.idle(), 0);
        // Found-valid entry stops the walk: older expired entries stay for their timer.
        p.checkin(k(0), 0, c(5), Time(1));
        p.checkin(k(0), 0, c(6), Time(100));
        assert_eq!(out(&mut p, Time(50), k(0)), (Some(c(6)), vec![]));
        assert!(p.contains(c(5)));
    }

    #[test]
    fn remove_from_middle_and_generation() {
        let mut p = Pool::new(&[8, 8]);
        for i in 0..5 {
            p.checkin(k(0), i % 2, c(i), FAR);
        }
        assert!(p.remove(c(2)));
        assert!(!p.remove(c(2)));
        p.check_invariants();
        // A newer generation of the same slot is a stranger.
        assert!(!p.remove(ConnId {
            index: 3,
            generation: 1
        }));
        assert!(!p.contains(ConnId {
            index: 3,
            generation: 1
        }));
        assert!(p.contains(c(3)));
        assert!(!p.remove(c(99)));
        assert!(p.remove(c(4))); // head of both lists
        assert!(p.remove(c(0))); // tail of both lists
        p.check_invariants();
        let order: Vec<_> = p.key_mru(k(0)).map(|e| e.conn).collect();
        assert_eq!(order, [c(3), c(1)]);
        let lru: Vec<_> = p.group_lru(1).map(|e| e.conn).collect();
        assert_eq!(lru, [c(1), c(3)]);
        assert_eq!(p.idle_in_group(0), 0);
    }

    #[test]
    fn drain_empties_deterministically() {
        let mut p = Pool::new(&[4, 4]);
        p.checkin(k(0), 1, c(0), FAR);
        p.checkin(k(1), 0, c(1), FAR);
        p.checkin(k(2), 1, c(2), FAR);
        p.checkin(k(0), 0, c(3), FAR);
        let mut got = Vec::new();
        p.drain(&mut |c| got.push(c));
        assert_eq!(got, [c(1), c(3), c(0), c(2)]);
        assert_eq!(p.idle(), 0);
        assert_eq!(p.idle_keys().count(), 0);
        p.check_invariants();
        // Still usable afterwards.
        assert_eq!(p.checkin(k(0), 0, c(5), FAR), None);
        assert_eq!(out(&mut p, T0, k(0)).0, Some(c(5)));
    }

    #[test]
    fn recheckin_moves_entry() {
        let mut p = Pool::new(&[2]);
        p.checkin(k(0), 0, c(0), FAR);
        p.checkin(k(0), 0, c(1), FAR);
        // c(0) checked in again becomes the most recent; no eviction since it was already counted.
        assert_eq!(p.checkin(k(1), 0, c(0), FAR), None);
        p.check_invariants();
        assert_eq!(p.entry(c(0)).map(|e| e.key), Some(k(1)));
        assert_eq!(p.checkin(k(0), 0, c(2), FAR), Some(c(1)));
    }

    #[test]
    fn introspection() {
        let mut p = Pool::new(&[3]);
        p.checkin(k(0), 0, c(0), Time(5));
        p.checkin(k(1), 0, c(1), FAR);
        p.checkin(k(0), 0, c(2), FAR);
        let keys: Vec<_> = p.idle_keys().collect();
        assert_eq!(keys, [(k(0), 2), (k(1), 1)]);
        assert_eq!(p.cap(0), 3);
        assert_eq!(p.groups(), 1);
        assert_eq!(
            p.entry(c(0)),
            Some(IdleEntry {
                conn: c(0),
                key: k(0),
                group: 0,
                expires: Time(5)
            })
        );
        assert_eq!(p.entry(c(9)), None);
        let snap = p.snapshot();
        assert_eq!(snap.groups.len(), 1);
        assert_eq!(snap.groups[0].cap, 3);
        let lru: Vec<_> = snap.groups[0].lru.iter().map(|e| e.conn).collect();
        assert_eq!(lru, [c(0), c(1), c(2)]);
    }

    // ----- model-based property test -----

    #[derive(Debug, Clone)]
    enum Op {
        Checkin {
            key: u8,
            part: u8,
            group: u8,
            conn: u8,
            ttl: u8,
        },
        Checkout {
            key: u8,
            part: u8,
        },
        Remove {
            conn: u8,
        },
        Advance {
            by: u8,
        },
        Drain,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u8..4, 0u8..2, 0u8..3, 0u8..24, 0u8..40)
                .prop_map(|(key, part, group, conn, ttl)| Op::Checkin { key, part, group, conn, ttl }),
            4 => (0u8..4, 0u8..2).prop_map(|(key, part)| Op::Checkout { key, part }),
            2 => (0u8..24).prop_map(|conn| Op::Remove { conn }),
            2 => (0u8..30).prop_map(|by| Op::Advance { by }),
            1 => Just(Op::Drain),
        ]
    }

    /// Reference: one Vec in check-in order (oldest first).
    #[derive(Debug, Default)]
    struct Model {
        caps: Vec<usize>,
        items: Vec<(ConnId, PoolKey, u32, Time)>,
    }

    impl Model {
        fn checkin(
            &mut self,
            key: PoolKey,
            group: u32,
            conn: ConnId,
            expires: Time,
        ) -> Option<ConnId> {
            self.items.retain(|it| it.0.index != conn.index);
            let cap = self.caps.get(group as usize).copied().unwrap_or(0);
            if cap == 0 {
                return Some(conn);
            }
            let mut victim = None;
            if self.items.iter().filter(|it| it.2 == group).count() >= cap {
                let pos = self.items.iter().position(|it| it.2 == group).unwrap();
                victim = Some(self.items.remove(pos).0);
            }
            self.items.push((conn, key, group, expires));
            victim
        }
        fn checkout(
            &mut self,
            now: Time,
            key: PoolKey,
            expired: &mut Vec<ConnId>,
        ) -> Option<ConnId> {
            while let Some(pos) = self.items.iter().rposition(|it| it.1 == key) {
                let it = self.items.remove(pos);
                if it.3 > now {
                    return Some(it.0);
                }
                expired.push(it.0);
            }
            None
        }
        fn remove(&mut self, conn: ConnId) -> bool {
            let before = self.items.len();
            self.items.retain(|it| it.0 != conn);
            before != self.items.len()
        }
        fn drain(&mut self) -> Vec<ConnId> {
            let mut out = Vec::new();
            for g in 0..self.caps.len() as u32 {
                out.extend(self.items.iter().filter(|it| it.2 == g).map(|it| it.0));
            }
            self.items.clear();
            out
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
        #[test]
        fn matches_model(caps in proptest::collection::vec(0usize..5, 1..3), ops in proptest::collection::vec(op(), 0..200)) {
            let mut p = Pool::new(&caps);
            let mut m = Model { caps: caps.clone(), items: Vec::new() };
            let mut now = Time(0);
            // Generations: bump when a connection leaves, like a runtime reusing slab slots.
            let mut gens = [0u32; 24];
            for op in ops {
                match op {
                    Op::Checkin { key, part, group, conn, ttl } => {
                        let key = PoolKey { server: key as u32, partition: part as u64 };
                        // A pooled index gets a re-checkin of the same generation (which
                        // moves it); others get their current generation.
                        let id = ConnId { index: conn as u32, generation: gens[conn as usize] };
                        let exp = Time(now.0 + ttl as u64);
                        let a = p.checkin(key, group as u32, id, exp);
                        let b = m.checkin(key, group as u32, id, exp);
                        prop_assert_eq!(a, b);
                        if let Some(v) = a {
                            gens[v.index as usize] += 1;
                        }
                    }
                    Op::Checkout { key, part } => {
                        let key = PoolKey { server: key as u32, partition: part as u64 };
                        let mut ea = Vec::new();
                        let mut eb = Vec::new();
                        let a = p.checkout(now, key, &mut |c| ea.push(c));
                        let b = m.checkout(now, key, &mut eb);
                        prop_assert_eq!(a, b);
                        prop_assert_eq!(&ea, &eb);
                        for v in ea { gens[v.index as usize] += 1; }
                    }
                    Op::Remove { conn } => {
                        // Alternate between the current generation and a stale one.
                        let g = gens[conn as usize];
                        let id = ConnId { index: conn as u32, generation: if conn % 3 == 0 { g.wrapping_add(1) } else { g } };
                        let a = p.remove(id);
                        prop_assert_eq!(a, m.remove(id));
                        if a { gens[conn as usize] += 1; }
                    }
                    Op::Advance { by } => now = Time(now.0 + by as u64),
                    Op::Drain => {
                        let mut a = Vec::new();
                        p.drain(&mut |c| a.push(c));
                        let b = m.drain();
                        prop_assert_eq!(&a, &b);
                        for v in a { gens[v.index as usize] += 1; }
                    }
                }
                p.check_invariants();
                prop_assert_eq!(p.idle(), m.items.len());
                for (g, &cap) in caps.iter().enumerate() {
                    let n = p.idle_in_group(g as u32);
                    prop_assert!(n <= cap);
                    prop_assert_eq!(n, m.items.iter().filter(|it| it.2 == g as u32).count());
                    let lru: Vec<_> = p.group_lru(g as u32).map(|e| e.conn).collect();
                    let mlru: Vec<_> = m.items.iter().filter(|it| it.2 == g as u32).map(|it| it.0).collect();
                    prop_assert_eq!(lru, mlru);
                }
                for it in &m.items {
                    prop_assert!(p.contains(it.0));
                }
            }
        }
    }
}
