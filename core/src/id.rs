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
