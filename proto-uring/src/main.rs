//! `proto-uring`: a prototype of the upkeep I/O loop on io_uring (issue 14, item 5), driving the
//! same sans-IO core as the mio runtime. Single-threaded, plain TCP, no TLS, no reload.
//!
//! ```text
//! proto-uring LISTEN UPSTREAM [UPSTREAM...]   e.g. proto-uring 127.0.0.1:8080 127.0.0.1:9001 127.0.0.1:9002
//! proto-uring --config FILE                   an upkeep TOML file (plain TCP listeners and servers only)
//! ```
//!
//! The first form builds the same TOML the load bench gives `upkeep` (`workers = 1`, one
//! listener, one group of the servers, `client_keepalive_requests = 1000000`) and parses it
//! with `Config::from_toml`, so both runtimes get identical core settings.
//!
//! Environment: `PROTO_URING_SQ` (SQ entries, default 4096), `PROTO_URING_DEFER=0` (no
//! `DEFER_TASKRUN`/`SINGLE_ISSUER`; `COOP_TASKRUN` instead), `PROTO_URING_STATS=1` (counters
//! on stderr every 5 s), `RUST_LOG`.

mod bufring;
mod driver;

use std::process::ExitCode;

use upkeep_core::Config;

fn config_from_args(args: &[String]) -> Result<Config, String> {
    let text = match args {
        [flag, path] if flag == "--config" => {
            std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?
        }
        [listen, servers @ ..] if !servers.is_empty() && !listen.starts_with('-') => {
            let servers: Vec<String> = servers.iter().map(|s| format!("{s:?}")).collect();
            format!(
                "workers = 1\n\n[[listen]]\naddr = {listen:?}\n\n[[upstream]]\nname = \"origins\"\n\
                 servers = [{}]\n\n[limits]\nclient_keepalive_requests = 1000000\n",
                servers.join(", ")
            )
        }
        _ => {
            return Err(
                "usage: proto-uring LISTEN UPSTREAM [UPSTREAM...] | proto-uring --config FILE"
                    .into(),
            );
        }
    };
    Config::from_toml(&text).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match config_from_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("proto-uring: {e}");
            return ExitCode::from(2);
        }
    };
    upkeep_runtime::descriptors::raise_limit();
    let env = |k: &str| std::env::var(k).ok();
    let opts = driver::Options {
        sq_entries: env("PROTO_URING_SQ")
            .and_then(|v| v.parse().ok())
            .unwrap_or(4096),
        defer_taskrun: env("PROTO_URING_DEFER").is_none_or(|v| v != "0"),
    };
    let driver = match driver::Driver::new(config, opts) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("proto-uring: {e}");
            return ExitCode::FAILURE;
        }
    };
    for a in driver.local_addrs() {
        eprintln!("proto-uring: listening on {a} ({opts:?})");
    }
    match driver.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("proto-uring: {e}");
            ExitCode::FAILURE
        }
    }
}
