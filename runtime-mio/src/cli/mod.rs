//! The `upkeep` command line: argument parsing, config files, the signal loop, the demo.

pub(crate) mod args;
pub(crate) mod config_file;
pub(crate) mod demo;
pub(crate) mod exit;
pub(crate) mod logger;
pub(crate) mod notify;
pub(crate) mod run;
