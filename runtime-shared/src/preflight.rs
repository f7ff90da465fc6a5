//! Start-up checks against the file system: what [`Config::validate`] cannot see because the core
//! does no I/O. A Unix socket (listener or admin) or an access log in a directory that is missing
//! or not writable would fail at bind or open; checking first lets `upkeep check` reject the file
//! `upkeep run` would, with the same `FILE:LINE:COL` position (the errors name their item the way
//! validation errors do, so `FileError::locate` finds them).
//!
//! [`Config::validate`]: upkeep_core::Config::validate

use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use rustix::fs::{Access, access};
use upkeep_core::config::{Address, Config, ConfigError};

use crate::access_log;

/// The first path problem in `config`: each Unix listener, a Unix admin socket, then the access
/// log file.
pub fn check_paths(config: &Config) -> Result<(), ConfigError> {
    for (i, l) in config.listeners.iter().enumerate() {
        if let Address::Unix(path) = &l.addr {
            socket_dir(path).map_err(|m| ConfigError::new(format!("listen {}", i + 1), m))?;
        }
    }
    if let Some(Address::Unix(path)) = &config.runtime.admin {
        socket_dir(path).map_err(|m| ConfigError::new("admin", m))?;
    }
    if let Some(path) = access_log::target(config).filter(|t| !matches!(*t, "-" | "stderr")) {
        log_file(path).map_err(|m| ConfigError::new("access_log", m))?;
    }
    Ok(())
}

/// A socket file is created in its directory: the directory must exist and be writable, and the
/// path must fit in a socket address (`sun_path`), which bind refuses otherwise.
fn socket_dir(path: &str) -> Result<(), String> {
    if std::os::unix::net::SocketAddr::from_pathname(path).is_err() {
        // `from_pathname` is bind's own rule (room for the path and its NUL).
        let max = core::mem::size_of::<libc::sockaddr_un>()
            - core::mem::offset_of!(libc::sockaddr_un, sun_path)
            - 1;
        return Err(format!(
            "unix socket path {path} is too long ({} bytes; a socket address holds at most {max})",
            path.len()
        ));
    }
    // `listen::bind_unix` replaces only a socket file (a stale one), never other data.
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && !meta.file_type().is_socket()
    {
        return Err(format!("{path} exists and is not a socket"));
    }
    writable_dir(path, "unix socket")
}

/// An access log is appended to if it exists (the file must be writable), else created (its
/// directory must be).
fn log_file(path: &str) -> Result<(), String> {
    let p = Path::new(path);
    if p.is_dir() {
        return Err(format!("access log {path} is a directory"));
    }
    if p.exists() {
        return access(p, Access::WRITE_OK)
            .map_err(|e| format!("access log {path} is not writable: {e}"));
    }
    writable_dir(path, "access log")
}

fn writable_dir(path: &str, what: &str) -> Result<(), String> {
    // A bare file name (`access.log`) has the parent "": it is opened in the working directory.
    let dir = match Path::new(path).parent() {
        Some(d) if d.as_os_str().is_empty() => Path::new("."),
        Some(d) => d,
        None => Path::new("/"),
    };
    let shown = dir.display();
    if !dir.exists() {
        return Err(format!("directory {shown} of {what} {path} does not exist"));
    }
    if !dir.is_dir() {
        return Err(format!("{shown} (of {what} {path}) is not a directory"));
    }
    access(dir, Access::WRITE_OK | Access::EXEC_OK)
        .map_err(|e| format!("directory {shown} of {what} {path} is not writable: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(listen: &str, admin: Option<&str>, log: Option<&str>) -> Config {
        let a = |s: &str| Address::parse(s).unwrap();
        let mut c = Config::simple(a(listen), vec![a("127.0.0.1:9")]);
        c.runtime.admin = admin.map(a);
        c.runtime.access_log = log.map(Into::into);
        c
    }

    /// A directory of the test's own: tests run in parallel in one process, and one removing a
    /// shared directory would pull it from under another.
    fn temp_dir(test: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("upkeep-preflight-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn existing_writable_paths_pass() {
        let dir = temp_dir("existing_writable_paths_pass");
        let d = dir.display();
        for c in [
            config("127.0.0.1:0", None, None),
            config("127.0.0.1:0", None, Some("-")),
            config("127.0.0.1:0", None, Some("stderr")),
            config(
                &format!("unix:{d}/l.sock"),
                Some(&format!("unix:{d}/a.sock")),
                Some(&format!("{d}/access.log")),
            ),
        ] {
            check_paths(&c).unwrap();
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn missing_directories_and_odd_paths_are_named() {
        let dir = temp_dir("missing_directories_and_odd_paths_are_named");
        let file = dir.join("plain");
        std::fs::write(&file, "x").unwrap();
        let f = file.display();
        for (c, want) in [
            (
                config("unix:/nonexistent-upkeep/l.sock", None, None),
                "listen 1: directory /nonexistent-upkeep of unix socket /nonexistent-upkeep/l.sock does not exist",
            ),
            (
                config("127.0.0.1:0", Some("unix:/nonexistent-upkeep/a.sock"), None),
                "admin: directory /nonexistent-upkeep of unix socket /nonexistent-upkeep/a.sock does not exist",
            ),
            (
                config("127.0.0.1:0", None, Some("/nonexistent-upkeep/access.log")),
                "access_log: directory /nonexistent-upkeep of access log /nonexistent-upkeep/access.log does not exist",
            ),
            (
                config(&format!("unix:{f}/l.sock"), None, None),
                &format!("listen 1: {f} (of unix socket {f}/l.sock) is not a directory"),
            ),
            (
                config("127.0.0.1:0", None, Some(&dir.display().to_string())),
                &format!("access_log: access log {} is a directory", dir.display()),
            ),
        ] {
            assert_eq!(check_paths(&c).unwrap_err().to_string(), want);
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
