//! Test support shared by the runtimes (work in progress).
