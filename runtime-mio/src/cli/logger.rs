//! The operator log on stderr, through `env_logger` (the `log` facade's usual backend): every
//! line carries a UTC timestamp with milliseconds, its level and its target:
//!
//! ```text
//! [2026-12-03T09:28:04.123Z WARN  upkeep_runtime::trouble] upstream "app" server 127.0.0.1:9001: ...
//! ```
//!
//! `UPKEEP_LOG` takes env_logger's directive syntax — `LEVEL` or `TARGET=LEVEL`, comma separated,
//! e.g. `info,upkeep_runtime=debug` — with two differences an operator would trip over
//! otherwise: a directive that is neither (`UPKEEP_LOG=verbose`) is an error at start instead of
//! being taken as a target name, and `mio` stays at `info` unless named, so `trace` shows the
//! proxy's own trace lines without the event loop's internals. Access logs do not go through
//! here.

use log::LevelFilter;

/// The variable that sets the log level.
pub(crate) const VAR: &str = "UPKEEP_LOG";

/// Targets kept at `info` unless a directive names them: their `trace` is every poll's detail.
const QUIET: [&str; 3] = ["mio", "polling", "async_io"];

/// Checks a `UPKEEP_LOG` value: each comma-separated directive must be `LEVEL` or
/// `TARGET=LEVEL` with a level env_logger knows (any case: `DEBUG` is `debug`).
pub(crate) fn check_spec(spec: &str) -> Result<(), String> {
    for d in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let (target, level) = match d.split_once('=') {
            Some((t, l)) => (Some(t.trim()), l.trim()),
            None => (None, d),
        };
        if target.is_some_and(|t| t.is_empty() || t.contains(char::is_whitespace)) {
            return Err(format!("{VAR}: {d:?} names no target (TARGET=LEVEL)"));
        }
        if level.parse::<LevelFilter>().is_err() {
            return Err(format!(
                "{VAR}: {level:?} is not a level (off, error, warn, info, debug, trace){}",
                if target.is_none() {
                    "; a target takes TARGET=LEVEL"
                } else {
                    ""
                }
            ));
        }
    }
    Ok(())
}

/// The directives actually installed for `spec`: `spec` (default `info`) plus `TARGET=info` for
/// each quiet target it does not name.
pub(crate) fn effective_spec(spec: Option<&str>) -> String {
    let spec = spec
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("info");
    let mut out = spec.to_string();
    for quiet in QUIET {
        let named = spec
            .split(',')
            .any(|d| d.split('=').next().map(str::trim) == Some(quiet));
        if !named {
            out.push_str(&format!(",{quiet}=info"));
        }
    }
    out
}

/// Installs the logger (once), from `UPKEEP_LOG`. A bad value is an error (the caller exits
/// with it): a typo must not silently mean another level.
pub(crate) fn init() -> Result<(), String> {
    let spec = std::env::var(VAR).ok();
    if let Some(s) = &spec {
        check_spec(s)?;
    }
    let _ = env_logger::Builder::new()
        .parse_filters(&effective_spec(spec.as_deref()))
        .format_timestamp_millis()
        .target(env_logger::Target::Stderr)
        .try_init();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let table: [(&str, bool); 10] = [
            ("info", true),
            ("DEBUG", true),
            ("info,upkeep_core=debug", true),
            ("warn, upkeep_runtime::trouble = info", true),
            ("off", true),
            ("verbose", false),
            ("info,upkeep_core", false),
            ("upkeep=loud", false),
            ("=debug", false),
            ("", true),
        ];
        for (spec, ok) in table {
            assert_eq!(check_spec(spec).is_ok(), ok, "{spec:?}");
        }
    }

    #[test]
    fn quiet_targets_stay_at_info_unless_named() {
        assert_eq!(
            effective_spec(None),
            "info,mio=info,polling=info,async_io=info"
        );
        assert_eq!(
            effective_spec(Some("trace,mio=debug")),
            "trace,mio=debug,polling=info,async_io=info"
        );
    }
}
