//! Keepalive pool bookkeeping: which idle upstream connections exist, for which key, in which
//! order they are reused and evicted. STUB: the API is the contract.

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
}

impl EvictReason {
    pub const ALL: [EvictReason; 5] = [
        EvictReason::IdleTimeout,
        EvictReason::Capacity,
        EvictReason::PeerClosed,
        EvictReason::UnexpectedData,
        EvictReason::Draining,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            EvictReason::IdleTimeout => "idle_timeout",
            EvictReason::Capacity => "capacity",
            EvictReason::PeerClosed => "peer_closed",
            EvictReason::UnexpectedData => "unexpected_data",
            EvictReason::Draining => "draining",
        }
    }
}

/// Idle connections of one worker.
#[derive(Debug, Default)]
pub struct Pool {}

impl Pool {
    pub fn new(_group_caps: &[usize]) -> Pool {
        todo!()
    }
    pub fn checkin(&mut self, _now: Time, _key: PoolKey, _group: u32, _conn: ConnId, _expires: Time) -> Option<ConnId> {
        todo!()
    }
    pub fn checkout(&mut self, _now: Time, _key: PoolKey, _expired: &mut dyn FnMut(ConnId)) -> Option<ConnId> {
        todo!()
    }
    pub fn remove(&mut self, _conn: ConnId) -> bool {
        todo!()
    }
    pub fn contains(&self, _conn: ConnId) -> bool {
        todo!()
    }
    pub fn idle(&self) -> usize {
        todo!()
    }
    pub fn idle_in_group(&self, _group: u32) -> usize {
        todo!()
    }
    pub fn drain(&mut self, _f: &mut dyn FnMut(ConnId)) {
        todo!()
    }
}
