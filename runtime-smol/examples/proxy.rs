//! The upkeep reverse proxy on smol, with the same flags as `upkeep run`:
//!
//! ```text
//! cargo run --release -p upkeep-smol --example proxy -- \
//!     --listen 127.0.0.1:8080 --upstream 127.0.0.1:9001 --upstream unix:/run/app.sock \
//!     [--workers N] [--keepalive N] [--keepalive-timeout DUR] [--keepalive-requests N] \
//!     [--connect-timeout DUR] [--read-timeout DUR] [--client-header-timeout DUR] \
//!     [--pool-key server|client]
//! ```
//!
//! SIGINT or SIGTERM drains gracefully (a second one stops at once).

use futures_lite::StreamExt;
use std::process::ExitCode;
use upkeep_core::config::{PoolKeyMode, parse_duration};
use upkeep_core::{Address, Config};

const USAGE: &str = "usage: proxy --listen ADDR --upstream ADDR [--upstream ADDR]... [--workers N] \
[--keepalive N] [--keepalive-timeout DUR] [--keepalive-requests N] [--connect-timeout DUR] \
[--read-timeout DUR] [--client-header-timeout DUR] [--pool-key server|client]";

fn parse_args() -> Result<Config, String> {
    use lexopt::prelude::*;
    fn value<T>(
        parser: &mut lexopt::Parser,
        f: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, String> {
        let v = parser.value().map_err(|e| e.to_string())?;
        let s = v.to_str().ok_or("value is not UTF-8")?;
        f(s)
    }
    fn number<T: std::str::FromStr>(s: &str) -> Result<T, String> {
        s.parse().map_err(|_| format!("invalid number {s:?}"))
    }
    fn duration(s: &str) -> Result<std::time::Duration, String> {
        parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
    }

    let mut parser = lexopt::Parser::from_env();
    let mut listen = None;
    let mut upstreams = Vec::new();
    let mut workers = None;
    let mut keepalive = None;
    let mut keepalive_timeout = None;
    let mut keepalive_requests = None;
    let mut connect_timeout = None;
    let mut read_timeout = None;
    let mut header_timeout = None;
    let mut pool_key = None;
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Long("listen") => listen = Some(value(&mut parser, address)?),
            Long("upstream") => upstreams.push(value(&mut parser, address)?),
            Long("workers") => workers = Some(value(&mut parser, number)?),
            Long("keepalive") => keepalive = Some(value(&mut parser, number)?),
            Long("keepalive-timeout") => keepalive_timeout = Some(value(&mut parser, duration)?),
            Long("keepalive-requests") => keepalive_requests = Some(value(&mut parser, number)?),
            Long("connect-timeout") => connect_timeout = Some(value(&mut parser, duration)?),
            Long("read-timeout") => read_timeout = Some(value(&mut parser, duration)?),
            Long("client-header-timeout") => header_timeout = Some(value(&mut parser, duration)?),
            Long("pool-key") => {
                pool_key = Some(value(&mut parser, |s| match s {
                    "server" => Ok(PoolKeyMode::Server),
                    "client" => Ok(PoolKeyMode::Client),
                    _ => Err(format!("--pool-key: expected server or client, got {s:?}")),
                })?)
            }
            Long("help") | Short('h') => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(other.unexpected().to_string()),
        }
    }
    let listen = listen.ok_or("--listen is required")?;
    if upstreams.is_empty() {
        return Err("at least one --upstream is required".into());
    }
    let mut config = Config::simple(listen, upstreams);
    let group = &mut config.upstreams[0];
    if let Some(v) = keepalive {
        group.keepalive = v;
    }
    if let Some(v) = keepalive_timeout {
        group.keepalive_timeout = v;
    }
    if let Some(v) = keepalive_requests {
        group.keepalive_requests = v;
    }
    if let Some(v) = connect_timeout {
        group.connect_timeout = v;
    }
    if let Some(v) = read_timeout {
        group.read_timeout = v;
    }
    if let Some(v) = pool_key {
        group.pool_key = v;
    }
    if let Some(v) = header_timeout {
        config.client_timeouts.header = v;
    }
    if let Some(v) = workers {
        config.runtime.workers = v;
    }
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

fn address(s: &str) -> Result<Address, String> {
    Address::parse(s).map_err(|e| format!("invalid address {s:?}: {e}"))
}

fn main() -> ExitCode {
    let config = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("proxy: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let proxy = match upkeep_smol::Proxy::start(config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("proxy: {e}");
            return ExitCode::FAILURE;
        }
    };
    for a in proxy.listen_addrs() {
        eprintln!("proxy: listening on {a}");
    }
    let signals =
        async_signal::Signals::new([async_signal::Signal::Int, async_signal::Signal::Term]);
    let mut signals = match signals {
        Ok(s) => s,
        Err(e) => {
            eprintln!("proxy: signals: {e}");
            proxy.shutdown();
            return ExitCode::FAILURE;
        }
    };
    smol::block_on(signals.next());
    eprintln!("proxy: draining (signal again to stop now)");
    proxy.drain();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        proxy.wait();
        let _ = done_tx.send(());
    });
    std::thread::spawn(move || {
        smol::block_on(signals.next());
        eprintln!("proxy: stopping now");
        std::process::exit(1);
    });
    let _ = done_rx.recv();
    let _ = waiter.join();
    ExitCode::SUCCESS
}
