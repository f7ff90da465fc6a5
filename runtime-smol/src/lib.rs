//! upkeep-core on smol (work in progress).
