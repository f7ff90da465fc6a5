//! The load comparison's report (filled in below).
