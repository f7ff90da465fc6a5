//! The exit statuses `upkeep check` and `upkeep run` share (documented in `upkeep --help` and the
//! README and docs/install.md): a script or a systemd `ExecStartPre` can tell a bad file from a typo in the unit.

use std::process::ExitCode;

/// Success: the configuration is fine, or the proxy drained or stopped as asked.
pub(crate) const OK: u8 = 0;
/// The configuration was rejected (`FILE:LINE:COL: message`) or could not be put to use: an
/// address already in use, an access log that cannot be opened, a failed start.
pub(crate) const CONFIG: u8 = 1;
/// The command line itself is wrong: an unknown command or flag, a bad flag value.
pub(crate) const USAGE: u8 = 2;

/// `code` as a process exit status.
pub(crate) fn code(code: u8) -> ExitCode {
    ExitCode::from(code)
}
