//! Command-line parsing (lexopt) and the help texts.

use std::ffi::OsString;
use std::path::PathBuf;

use lexopt::prelude::*;
use upkeep_core::Config;
use upkeep_core::config::QuickConfig;

pub(crate) const MAIN_HELP: &str = "\
upkeep: an HTTP/1.1 reverse proxy with an nginx-style upstream keepalive pool

Usage:
  upkeep run --config FILE             run with a TOML config file
  upkeep run --listen ADDR --upstream ADDR [OPTIONS]
                                       run without a file
  upkeep check --config FILE           validate a config file and exit
  upkeep demo                          show pooling on loopback (about 10 s)

Options:
  -h, --help       print help (also after a subcommand)
  -V, --version    print the version

ADDR is HOST:PORT, [V6]:PORT or unix:/path. Signals: SIGTERM/SIGQUIT drain gracefully, SIGINT
(or a second SIGTERM) stops at once, SIGHUP reloads the config file, SIGUSR1 reopens the access
log. Log level: UPKEEP_LOG=error|warn|info|debug|trace.
";

pub(crate) const RUN_HELP: &str = "\
Usage:
  upkeep run --config FILE
  upkeep run --listen ADDR --upstream ADDR [--upstream ADDR]... [OPTIONS]

Options:
  -c, --config FILE                TOML config file (see upkeep.example.toml); reloaded on SIGHUP
      --listen ADDR                listen address (repeatable)
      --upstream ADDR              upstream server (repeatable; one group named \"default\")
      --workers N                  worker threads (default: one per CPU core)
      --keepalive N                idle upstream connections kept per worker (default 1024; 0 = off)
      --keepalive-timeout DUR      idle upstream connection lifetime (default 60s)
      --keepalive-requests N       requests per upstream connection (default 10000)
      --connect-timeout DUR        upstream connect timeout (default 60s)
      --read-timeout DUR           upstream read timeout; 504 before the response head (default 60s)
      --client-header-timeout DUR  time to receive a request head (default 60s)
      --pool-key server|client     share idle connections across clients, or not (default server)
      --admin ADDR                 admin listener: /metrics, /status, /ready
      --access-log PATH|-          access log file, or - for stdout (default off)
      --max-conns N                connections per server, all workers together (default 0 = no cap)
      --queue N                    requests that may wait for a server at --max-conns (default 1024)
      --queue-timeout DUR          longest wait in the queue before a 503 (default 60s)
  -h, --help                       print this help

ADDR is HOST:PORT, [V6]:PORT or unix:/path; DUR is 250ms, 10s, 5m, 1h.
";

pub(crate) const CHECK_HELP: &str = "\
Usage: upkeep check --config FILE

Parses and validates FILE. Prints `configuration ok` and exits 0, or prints
`FILE:LINE:COL: message` and exits 1.
";

pub(crate) const DEMO_HELP: &str = "\
Usage: upkeep demo

Starts two origin servers and the proxy on 127.0.0.1, sends a bounded burst of keep-alive
requests with upstream pooling on and then off, and prints requests/s, upstream connections
opened, pool hit ratio and TIME_WAIT sockets left. Takes well under 30 seconds.
";

/// What to do.
#[derive(Debug)]
pub(crate) enum Command {
    Help(&'static str),
    Version,
    /// Run from a file (reloadable) or from flags.
    Run {
        config: Box<Config>,
        file: Option<PathBuf>,
    },
    Check(PathBuf),
    Demo,
}

/// Parses the command line; `Err` is a usage error (exit 2).
pub(crate) fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, String> {
    let mut p = lexopt::Parser::from_args(args);
    let sub = match p.next().map_err(|e| e.to_string())? {
        Some(Short('h') | Long("help")) => return Ok(Command::Help(MAIN_HELP)),
        Some(Short('V') | Long("version")) => return Ok(Command::Version),
        Some(Value(v)) => v.string().map_err(|e| format!("{e:?}"))?,
        Some(other) => return Err(other.unexpected().to_string()),
        None => return Err("missing command: run, check or demo (see --help)".into()),
    };
    match sub.as_str() {
        "run" => parse_run(&mut p),
        "check" => {
            let mut file = None;
            while let Some(arg) = p.next().map_err(|e| e.to_string())? {
                match arg {
                    Short('h') | Long("help") => return Ok(Command::Help(CHECK_HELP)),
                    Short('c') | Long("config") => file = Some(PathBuf::from(value(&mut p)?)),
                    other => return Err(other.unexpected().to_string()),
                }
            }
            file.map(Command::Check)
                .ok_or_else(|| "check: --config FILE is required".into())
        }
        "demo" => match p.next().map_err(|e| e.to_string())? {
            Some(Short('h') | Long("help")) => Ok(Command::Help(DEMO_HELP)),
            Some(other) => Err(other.unexpected().to_string()),
            None => Ok(Command::Demo),
        },
        "help" => Ok(Command::Help(MAIN_HELP)),
        other => Err(format!(
            "unknown command {other:?}: expected run, check or demo (see --help)"
        )),
    }
}

fn value(p: &mut lexopt::Parser) -> Result<String, String> {
    p.value()
        .map_err(|e| e.to_string())?
        .string()
        .map_err(|e| format!("invalid UTF-8 in argument: {e:?}"))
}

fn parse_run(p: &mut lexopt::Parser) -> Result<Command, String> {
    let mut file = None;
    // What each quick-mode flag means lives in the core (shared with the smol example).
    let mut quick = QuickConfig::default();
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        let flag = match &arg {
            Long(l) => (*l).to_owned(),
            _ => String::new(),
        };
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help(RUN_HELP)),
            Short('c') | Long("config") => file = Some(PathBuf::from(value(p)?)),
            Long(_) if QuickConfig::takes(&flag) => quick.set(&flag, &value(p)?)?,
            other => return Err(format!("run: {}", other.unexpected())),
        }
    }
    if let Some(file) = file {
        if !quick.is_empty() {
            return Err(
                "run: --config cannot be combined with other options (put them in the file)".into(),
            );
        }
        let config = super::config_file::load(&file)?;
        return Ok(Command::Run {
            config: Box::new(config),
            file: Some(file),
        });
    }
    if quick.is_empty() {
        return Err("run: either --config FILE, or --listen ADDR and --upstream ADDR".into());
    }
    let config = quick.build().map_err(|e| format!("run: {e}"))?;
    Ok(Command::Run {
        config: Box::new(config),
        file: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use upkeep_core::config::PoolKeyMode;

    fn run(args: &[&str]) -> Result<Command, String> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn quick_mode_flags_fill_the_config() {
        let Ok(Command::Run { config, file: None }) = run(&[
            "run",
            "--listen",
            "127.0.0.1:8080",
            "--upstream",
            "127.0.0.1:9001",
            "--upstream",
            "unix:/tmp/app.sock",
            "--workers",
            "3",
            "--keepalive",
            "8",
            "--keepalive-timeout",
            "5s",
            "--pool-key",
            "client",
            "--client-header-timeout",
            "250ms",
            "--access-log",
            "-",
        ]) else {
            panic!("not a run command")
        };
        assert_eq!(config.runtime.workers, 3);
        assert_eq!(config.upstreams[0].servers.len(), 2);
        assert_eq!(config.upstreams[0].keepalive, 8);
        assert_eq!(
            config.upstreams[0].keepalive_timeout,
            Duration::from_secs(5)
        );
        assert_eq!(config.upstreams[0].pool_key, PoolKeyMode::Client);
        assert_eq!(config.client_timeouts.header, Duration::from_millis(250));
        assert_eq!(config.runtime.access_log.as_deref(), Some("-"));
    }

    #[test]
    fn usage_errors_are_clear() {
        assert!(run(&[]).unwrap_err().contains("missing command"));
        assert!(run(&["serve"]).unwrap_err().contains("unknown command"));
        assert!(run(&["run", "--bogus"]).unwrap_err().contains("--bogus"));
        assert!(
            run(&["run", "--listen", "nope", "--upstream", "127.0.0.1:1"])
                .unwrap_err()
                .contains("--listen")
        );
        assert!(
            run(&["run", "--listen", "127.0.0.1:1"])
                .unwrap_err()
                .contains("--upstream")
        );
        assert!(
            run(&[
                "run",
                "--listen",
                "127.0.0.1:1",
                "--upstream",
                "127.0.0.1:2",
                "--keepalive-timeout",
                "5"
            ])
            .unwrap_err()
            .contains("--keepalive-timeout")
        );
        assert!(matches!(
            run(&["check", "--help"]),
            Ok(Command::Help(CHECK_HELP))
        ));
        assert!(matches!(run(&["--version"]), Ok(Command::Version)));
    }
}
