//! Deadlines, one per connection, in an indexed binary min-heap.
//!
//! Each connection has at most one armed deadline at a time (the earliest of whatever applies to
//! its current state: header, body, send, connect, read, pool idle...), so the heap holds at most
//! one entry per connection and is updated in place. Compared with a `BTreeSet` this allocates
//! nothing once the vectors have grown to the peak connection count, and compared with
//! lazy-deletion queues it never accumulates stale entries for connections that closed or
//! re-armed — at tens of thousands of requests per second those would pile up for the whole
//! timeout (60 s) before being popped. Written by hand because no maintained crate offers an
//! indexed heap with in-place update and no allocation per operation.

use crate::Time;

const NONE: u32 = u32::MAX;

/// An indexed min-heap of `(deadline, slot)`.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: Vec<(Time, u32)>,
    /// Position of each slot in `heap`, or `NONE`.
    pos: Vec<u32>,
}

impl Timers {
    /// Arms, moves or (with `None`) disarms the deadline of `slot`.
    pub(crate) fn set(&mut self, slot: u32, deadline: Option<Time>) {
        let s = slot as usize;
        if s >= self.pos.len() {
            if deadline.is_none() {
                return;
            }
            self.pos.resize(s + 1, NONE);
        }
        let at = self.pos[s];
        match (at, deadline) {
            (NONE, None) => {}
            (NONE, Some(t)) => {
                self.heap.push((t, slot));
                let i = self.heap.len() - 1;
                self.pos[s] = i as u32;
                self.sift_up(i);
            }
            (i, None) => self.remove_at(i as usize),
            (i, Some(t)) => {
                let i = i as usize;
                let old = self.heap[i].0;
                self.heap[i].0 = t;
                if t < old {
                    self.sift_up(i);
                } else {
                    self.sift_down(i);
                }
            }
        }
    }

    /// Gives back the memory a peak of connections left: the heap down to what is armed, the
    /// slot index down to the last armed slot (both reallocate only when a quarter or less is
    /// used).
    pub(crate) fn shrink(&mut self) {
        if self.heap.len() * 4 < self.heap.capacity() {
            self.heap.shrink_to(self.heap.len().max(64));
        }
        crate::id::shrink_slot_index(&mut self.pos);
    }

    /// The deadline of `slot`, if armed.
    #[cfg(test)]
    pub(crate) fn get(&self, slot: u32) -> Option<Time> {
        match self.pos.get(slot as usize) {
            Some(&i) if i != NONE => Some(self.heap[i as usize].0),
            _ => None,
        }
    }

    /// The earliest deadline.
    pub(crate) fn next(&self) -> Option<Time> {
        self.heap.first().map(|e| e.0)
    }

    /// Removes and returns a slot whose deadline is `<= now`, earliest first.
    pub(crate) fn pop_expired(&mut self, now: Time) -> Option<u32> {
        let &(t, slot) = self.heap.first()?;
        if t > now {
            return None;
        }
        self.remove_at(0);
        Some(slot)
    }

    fn remove_at(&mut self, i: usize) {
        let last = self.heap.len() - 1;
        self.heap.swap(i, last);
        let (_, removed) = self.heap.pop().expect("non-empty");
        self.pos[removed as usize] = NONE;
        if i < self.heap.len() {
            self.pos[self.heap[i].1 as usize] = i as u32;
            self.sift_down(i);
            self.sift_up(i);
        }
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.heap[i] >= self.heap[parent] {
                break;
            }
            self.swap(i, parent);
            i = parent;
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        loop {
            let l = 2 * i + 1;
            let r = l + 1;
            let mut m = i;
            if l < self.heap.len() && self.heap[l] < self.heap[m] {
                m = l;
            }
            if r < self.heap.len() && self.heap[r] < self.heap[m] {
                m = r;
            }
            if m == i {
                break;
            }
            self.swap(i, m);
            i = m;
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.pos[self.heap[a].1 as usize] = a as u32;
        self.pos[self.heap[b].1 as usize] = b as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn earliest_first_and_update_in_place() {
        let mut t = Timers::default();
        t.set(3, Some(Time(30)));
        t.set(1, Some(Time(10)));
        t.set(2, Some(Time(20)));
        assert_eq!(t.next(), Some(Time(10)));
        t.set(1, Some(Time(40))); // re-armed later: no stale entry left behind
        assert_eq!(t.heap.len(), 3);
        assert_eq!(t.pop_expired(Time(25)), Some(2));
        assert_eq!(t.pop_expired(Time(25)), None);
        t.set(3, None);
        assert_eq!(t.get(3), None);
        assert_eq!(t.pop_expired(Time(100)), Some(1));
        assert_eq!(t.next(), None);
    }

    proptest! {
        /// The heap agrees with a map-based model after any sequence of set/pop operations.
        #[test]
        fn matches_model(ops in proptest::collection::vec((0u32..16, proptest::option::of(0u64..50), any::<bool>()), 0..200)) {
            let mut t = Timers::default();
            let mut model: BTreeMap<u32, u64> = BTreeMap::new();
            for (slot, deadline, pop) in ops {
                if pop {
                    let now = Time(deadline.unwrap_or(25));
                    let got = t.pop_expired(now);
                    let min = model.iter().map(|(&s, &d)| (d, s)).min();
                    match min {
                        Some((d, _)) if d <= now.0 => {
                            let s = got.expect("model has an expired entry");
                            prop_assert_eq!(model.remove(&s), Some(d));
                        }
                        _ => prop_assert_eq!(got, None),
                    }
                } else {
                    t.set(slot, deadline.map(Time));
                    match deadline { Some(d) => { model.insert(slot, d); } None => { model.remove(&slot); } }
                }
                prop_assert_eq!(t.next().map(|x| x.0), model.values().copied().min());
                for (&s, &d) in &model { prop_assert_eq!(t.get(s), Some(Time(d))); }
                prop_assert_eq!(t.heap.len(), model.len());
            }
        }
    }
}
