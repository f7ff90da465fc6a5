//! Handles the core gives out. They are plain indexes: nothing is hashed or reference-counted.

/// A connection the core knows about (client or upstream side).
///
/// `index` is a slab key — a runtime can use it directly as its own slab key or mio `Token` —
/// and `generation` tells a reused slot from the connection that held it before, so an event that
/// arrives for a connection the core already closed is recognised and ignored instead of being
/// applied to a stranger.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    /// Slab slot.
    pub index: u32,
    /// Generation of that slot.
    pub generation: u32,
}

/// Index of a listener in [`Config::listeners`](crate::Config::listeners).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerId(pub u32);

/// Index of an upstream group in [`Config::upstreams`](crate::Config::upstreams).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UpstreamId(pub u32);

/// A server: its group and its index in that group's `servers`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerId {
    /// The group.
    pub upstream: UpstreamId,
    /// Index in the group's server list.
    pub index: u32,
}

/// Gives back the memory of a table indexed by connection slot ([`ConnId::index`]) whose unused
/// entries hold `u32::MAX` (the pool's and the timers' indexes), once a peak has passed: cut after
/// the last used entry, and only when a quarter or less of the capacity is in use, so a steady
/// state never reallocates.
pub(crate) fn shrink_slot_index(index: &mut Vec<u32>) {
    let used = index
        .iter()
        .rposition(|&e| e != u32::MAX)
        .map_or(0, |i| i + 1);
    if used * 4 < index.capacity() {
        index.truncate(used);
        index.shrink_to(used.max(64));
    }
}
