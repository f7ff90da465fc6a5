//! The upkeep reverse proxy on smol, with the same flags as `upkeep run`:
//!
//! ```text
//! cargo run --release -p upkeep-smol --example proxy -- \
//!     --listen 127.0.0.1:8080 --upstream 127.0.0.1:9001 --upstream unix:/run/app.sock \
//!     [--workers N] [--keepalive N] [--keepalive-timeout DUR] [--keepalive-requests N] \
//!     [--connect-timeout DUR] [--read-timeout DUR] [--client-header-timeout DUR] \
//!     [--pool-key server|client] [--admin ADDR] [--access-log PATH|-] [--shutdown-delay DUR]
//! ```
//!
//! SIGINT or SIGTERM drains gracefully (a second one stops at once), after `--shutdown-delay`
//! during which `/ready` fails while everything is still served; SIGUSR1 reopens the access log
//! file (after log rotation).

use async_signal::Signal;
use futures_lite::StreamExt;
use std::process::ExitCode;
use upkeep_core::Config;
use upkeep_core::config::QuickConfig;

const USAGE: &str =
    "usage: proxy --listen ADDR --upstream ADDR [--upstream ADDR]... [--workers N] \
[--keepalive N] [--keepalive-timeout DUR] [--keepalive-requests N] [--connect-timeout DUR] \
[--read-timeout DUR] [--client-header-timeout DUR] [--pool-key server|client] [--admin ADDR] \
[--access-log PATH|-] [--shutdown-delay DUR] [--max-conns N] [--queue N]
[--queue-timeout DUR]";

/// `upkeep run`'s quick-mode flags: their meaning lives in the core ([`QuickConfig`]), so both
/// command lines stay the same.
fn parse_args() -> Result<Config, String> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_env();
    let mut quick = QuickConfig::default();
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        let flag = match &arg {
            Long(l) => (*l).to_owned(),
            _ => String::new(),
        };
        match arg {
            Long("help") | Short('h') => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            Long(_) if QuickConfig::takes(&flag) => {
                let value = parser.value().map_err(|e| e.to_string())?;
                let value = value.to_str().ok_or("value is not UTF-8")?;
                quick.set(&flag, value)?;
            }
            Long(_) if QuickConfig::is_switch(&flag) => quick.switch(&flag)?,
            other => return Err(other.unexpected().to_string()),
        }
    }
    quick.build()
}

fn main() -> ExitCode {
    let config = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("proxy: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let delay = config.runtime.shutdown_delay;
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
    if let Some(a) = proxy.admin_addr() {
        eprintln!("proxy: admin listening on {a}");
    }
    let signals = async_signal::Signals::new([Signal::Int, Signal::Term, Signal::Usr1]);
    let mut signals = match signals {
        Ok(s) => s,
        Err(e) => {
            eprintln!("proxy: signals: {e}");
            proxy.shutdown();
            return ExitCode::FAILURE;
        }
    };
    while let Some(Ok(Signal::Usr1)) = smol::block_on(signals.next()) {
        eprintln!("proxy: reopening the access log");
        proxy.reopen_logs();
    }
    if !delay.is_zero() {
        // `--shutdown-delay`: /ready fails while everything is still served; a second signal
        // (other than SIGUSR1) ends the wait and stops at once.
        eprintln!("proxy: /ready fails now; draining in {delay:?} (signal again to stop now)");
        proxy.fail_ready();
        let deadline = std::time::Instant::now() + delay;
        let stop_now = smol::block_on(async {
            loop {
                let signal =
                    futures_lite::future::or(async { signals.next().await.map(Some) }, async {
                        smol::Timer::at(deadline).await;
                        Some(None)
                    })
                    .await;
                match signal {
                    Some(Some(Ok(Signal::Usr1))) => proxy.reopen_logs(),
                    Some(None) => break false,
                    _ => break true,
                }
            }
        });
        if stop_now {
            eprintln!("proxy: stopping now");
            proxy.shutdown();
            return ExitCode::SUCCESS;
        }
    }
    eprintln!("proxy: draining (signal again to stop now)");
    proxy.drain();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        proxy.wait();
        let _ = done_tx.send(());
    });
    std::thread::spawn(move || {
        // The proxy is the waiter's now: a SIGUSR1 while draining is ignored.
        while let Some(Ok(Signal::Usr1)) = smol::block_on(signals.next()) {}
        eprintln!("proxy: stopping now");
        std::process::exit(1);
    });
    let _ = done_rx.recv();
    let _ = waiter.join();
    ExitCode::SUCCESS
}
