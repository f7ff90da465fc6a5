//! The upkeep proxy on mio (work in progress).
