//! Command-line parsing (lexopt) and the help texts.

use std::ffi::OsString;
use std::path::PathBuf;

use lexopt::prelude::*;
use upkeep_core::Config;
use upkeep_core::config::{QUICK_FLAGS, QUICK_SWITCHES, QuickConfig, suggest};

pub(crate) const MAIN_HELP: &str = "\
upkeep: an HTTP/1.1 reverse proxy with an nginx-style upstream keepalive pool

Usage:
  upkeep run --config FILE             run with a TOML config file
  upkeep run --listen ADDR --upstream ADDR [OPTIONS]
                                       run without a file
  upkeep check --config FILE [--print] [--resolve]
                                       validate a config file and exit
  upkeep demo [--tls]                  show pooling on loopback (about 10 s; --tls: TLS origins)

Options:
  -h, --help       print help (also after a subcommand)
  -V, --version    print the version

ADDR is HOST:PORT, [V6]:PORT or unix:/path. Signals: SIGTERM/SIGQUIT drain gracefully (after
shutdown_delay), SIGINT (or a second SIGTERM) stops at once, SIGHUP reloads the config file,
SIGUSR1 reopens the access log. Log level: UPKEEP_LOG=LEVEL[,TARGET=LEVEL]...
(error|warn|info|debug|trace|off; default info), e.g. UPKEEP_LOG=info,upkeep_runtime=debug.

Exit status (check and run alike): 0 ok; 1 the configuration was rejected or could not be put to
use (FILE:LINE:COL: message, an address in use, an unopenable file); 2 bad command-line usage.
";

pub(crate) const RUN_HELP: &str = "\
Usage:
  upkeep run --config FILE
  upkeep run --listen ADDR --upstream ADDR [--upstream ADDR]... [OPTIONS]

Options:
  -c, --config FILE                TOML config file (see upkeep.example.toml); reloaded on SIGHUP
      --listen ADDR                listen address (repeatable)
      --upstream ADDR              upstream server, or NAME:PORT (repeatable; one group \"default\")
      --workers N                  worker threads (default: one per CPU core)
      --keepalive N                idle upstream connections kept per worker (default 1024; 0 = off)
      --keepalive-timeout DUR      idle upstream connection lifetime (default 60s)
      --keepalive-requests N       requests per upstream connection (default 10000)
      --connect-timeout DUR        upstream connect timeout (default 5s)
      --read-timeout DUR           upstream read timeout; 504 before the response head (default 60s)
      --client-header-timeout DUR  time to receive a request head (default 60s)
      --pool-key server|client     share idle connections across clients, or not (default server)
      --admin ADDR                 admin listener: /metrics, /status, /ready
      --access-log PATH|-          access log file, or - for stdout (default off)
      --access-log-format FMT      upkeep (default), combined (nginx) or json
      --shutdown-delay DUR         after SIGTERM, fail /ready but keep serving this long, then
                                   drain (default 0s)
      --tls-cert FILE              with --tls-key: every --listen is TLS (PEM chain, leaf first)
      --tls-key FILE               the certificate's private key (PEM)
      --upstream-tls               TLS toward the upstream servers (system roots unless --upstream-ca)
      --upstream-ca FILE           CA certificates (PEM) to verify upstream servers with
      --upstream-sni NAME          server name to send and verify (default: the server's IP)
      --max-conns N                connections per server, all workers together (default 0 = no cap)
      --queue N                    requests that may wait for a server at --max-conns (default 1024)
      --queue-timeout DUR          longest wait in the queue before a 503 (default 60s)
  -h, --help                       print this help

ADDR is HOST:PORT, [V6]:PORT or unix:/path; DUR is 250ms, 10s, 5m, 1h.
";

pub(crate) const CHECK_HELP: &str = "\
Usage: upkeep check --config FILE [--print] [--resolve]
       upkeep check --listen ADDR --upstream ADDR [OPTIONS] [--print] [--resolve]

Parses and validates FILE (or `upkeep run`'s quick-mode flags, see `upkeep run --help`) as
`upkeep run` would (including that Unix socket and access log
directories exist and are writable). Prints `configuration ok` and exits 0, or prints
`FILE:LINE:COL: message` and exits 1. Suspicious but valid settings are printed as
`FILE:LINE:COL: warning: message` and do not change the exit status. Host names in server
addresses are only checked for syntax, without the network, unless --resolve asks to resolve
them too (as `upkeep run` does at start).

Options:
  -c, --config FILE   the file to check
  -p, --print         print the effective configuration instead, every default spelt out (valid
                      TOML that `upkeep check` accepts again: quick-mode flags become a file)
      --resolve       also resolve the host names of server addresses
  -h, --help          print this help
";

pub(crate) const DEMO_HELP: &str = "\
Usage: upkeep demo [--tls]

Starts two origin servers and the proxy on 127.0.0.1, sends a bounded burst of keep-alive
requests with upstream pooling on and then off, and prints requests/s, upstream connections
opened, pool hit ratio, the proxy's CPU time per request and TIME_WAIT sockets left. Takes
well under 30 seconds. With --tls the origins speak TLS (verified against a demo CA): the table
adds the upstream TLS handshakes, full and resumed.
";

/// What to do.
#[derive(Debug)]
pub(crate) enum Command {
    Help(&'static str),
    Version,
    /// Run from a file (loaded by the caller: a bad file is exit 1, not a usage error) or from
    /// flags.
    Run(Source),
    /// Check a file (or quick-mode flags); with `print`, print the effective configuration.
    Check {
        source: Source,
        print: bool,
        /// `--resolve`: also resolve the host names of server addresses.
        resolve: bool,
    },
    /// `--tls`: TLS origins (the upstream handshakes are what pooling saves).
    Demo {
        tls: bool,
    },
}

/// Where `run`'s (or `check`'s) configuration comes from.
#[derive(Debug)]
pub(crate) enum Source {
    /// A file, reloaded on SIGHUP.
    File(PathBuf),
    /// Quick-mode flags, already validated.
    Flags(Box<Config>),
}

/// The flags each command takes (without `--`), for "did you mean".
const CHECK_FLAGS: [&str; 4] = ["config", "print", "resolve", "help"];
const COMMANDS: [&str; 3] = ["run", "check", "demo"];

/// An unexpected argument as a usage error, with the closest flag of `known` when one is close.
fn unexpected(arg: lexopt::Arg<'_>, known: &[&str]) -> String {
    if let Long(flag) = arg
        && let Some(near) = suggest(flag, known.iter().copied())
    {
        return format!("unknown option --{flag}, did you mean --{near}?");
    }
    arg.unexpected().to_string()
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
        "run" => Ok(match parse_source(&mut p, "run")? {
            Some((source, ..)) => Command::Run(source),
            None => Command::Help(RUN_HELP),
        }),
        "check" => Ok(match parse_source(&mut p, "check")? {
            Some((source, print, resolve)) => Command::Check {
                source,
                print,
                resolve,
            },
            None => Command::Help(CHECK_HELP),
        }),
        "demo" => {
            let mut tls = false;
            while let Some(arg) = p.next().map_err(|e| e.to_string())? {
                match arg {
                    Short('h') | Long("help") => return Ok(Command::Help(DEMO_HELP)),
                    Long("tls") => tls = true,
                    other => return Err(unexpected(other, &["tls", "help"])),
                }
            }
            Ok(Command::Demo { tls })
        }
        "help" => Ok(Command::Help(MAIN_HELP)),
        other => Err(match suggest(other, COMMANDS) {
            Some(near) => format!("unknown command {other:?}, did you mean {near:?}? (see --help)"),
            None => format!("unknown command {other:?}: expected run, check or demo (see --help)"),
        }),
    }
}

fn value(p: &mut lexopt::Parser) -> Result<String, String> {
    p.value()
        .map_err(|e| e.to_string())?
        .string()
        .map_err(|e| format!("invalid UTF-8 in argument: {e:?}"))
}

/// `run`'s and `check`'s arguments: `--config FILE`, or quick-mode flags; `check` also takes
/// `--print`. `Ok(None)` is `--help`.
/// `check` also takes `--print` and `--resolve` (the two booleans, in that order).
fn parse_source(p: &mut lexopt::Parser, cmd: &str) -> Result<Option<(Source, bool, bool)>, String> {
    let check = cmd == "check";
    let mut file = None;
    let mut print = false;
    let mut resolve = false;
    // What each quick-mode flag means lives in the core (shared with the smol example).
    let mut quick = QuickConfig::default();
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        let flag = match &arg {
            Long(l) => (*l).to_owned(),
            _ => String::new(),
        };
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Short('c') | Long("config") => file = Some(PathBuf::from(value(p)?)),
            Short('p') | Long("print") if check => print = true,
            Long("resolve") if check => resolve = true,
            Long(_) if QuickConfig::takes(&flag) => quick.set(&flag, &value(p)?)?,
            Long(_) if QuickConfig::is_switch(&flag) => quick.switch(&flag)?,
            other => {
                let own: &[&str] = if check {
                    &CHECK_FLAGS
                } else {
                    &["config", "help"]
                };
                let known: Vec<&str> = QUICK_FLAGS
                    .iter()
                    .chain(QUICK_SWITCHES.iter())
                    .copied()
                    .chain(own.iter().copied())
                    .collect();
                return Err(format!("{cmd}: {}", unexpected(other, &known)));
            }
        }
    }
    if let Some(file) = file {
        if !quick.is_empty() {
            return Err(format!(
                "{cmd}: --config cannot be combined with other options (put them in the file)"
            ));
        }
        return Ok(Some((Source::File(file), print, resolve)));
    }
    if quick.is_empty() {
        return Err(format!(
            "{cmd}: either --config FILE, or --listen ADDR and --upstream ADDR"
        ));
    }
    let config = quick.build().map_err(|e| format!("{cmd}: {e}"))?;
    Ok(Some((Source::Flags(Box::new(config)), print, resolve)))
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
        let Ok(Command::Run(Source::Flags(config))) = run(&[
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
        // "did you mean" for flags and commands; nothing suggested when nothing is close.
        for (args, want) in [
            (
                &["run", "--keepalive-timout", "5s"][..],
                "run: unknown option --keepalive-timout, did you mean --keepalive-timeout?",
            ),
            (
                &["run", "--upsteam", "127.0.0.1:1"],
                "run: unknown option --upsteam, did you mean --upstream?",
            ),
            (
                &["check", "--confg", "x"],
                "check: unknown option --confg, did you mean --config?",
            ),
            (
                &["chekc"],
                "unknown command \"chekc\", did you mean \"check\"? (see --help)",
            ),
            (&["run", "--zzz"], "run: invalid option '--zzz'"),
        ] {
            assert_eq!(run(args).unwrap_err(), want, "{args:?}");
        }
        assert!(matches!(
            run(&["check", "-c", "f.toml", "--print"]),
            Ok(Command::Check {
                print: true,
                source: Source::File(_),
                resolve: false,
            })
        ));
        assert!(matches!(
            run(&[
                "check",
                "--listen",
                "127.0.0.1:1",
                "--upstream",
                "127.0.0.1:2",
                "-p"
            ]),
            Ok(Command::Check {
                print: true,
                source: Source::Flags(_),
                resolve: false,
            })
        ));
        assert_eq!(
            run(&["run", "-c", "f.toml", "--print"]).unwrap_err(),
            "run: invalid option '--print'"
        );
        assert!(matches!(
            run(&["run", "--config", "f.toml"]),
            Ok(Command::Run(Source::File(_)))
        ));
        assert!(matches!(run(&["--version"]), Ok(Command::Version)));
    }
}
