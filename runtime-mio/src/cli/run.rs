//! `upkeep run`: start the proxy and turn signals into drain, stop, reload and log reopening.
//! Signals arrive on the main thread's own mio `Poll` (signal-hook-mio); workers only ever see
//! commands on their channels.

use std::io;
use std::path::Path;
use std::time::Duration;

use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1};
use signal_hook_mio::v1_0::Signals;
use upkeep_core::Config;
use upkeep_mio::{Proxy, ProxyHandle};

const SIGNALS: Token = Token(0);
/// How often a draining main thread checks whether the workers are done.
const TICK: Duration = Duration::from_millis(50);

/// Runs until drained or stopped; returns the exit code.
pub(crate) fn run(config: Config, file: Option<&Path>) -> io::Result<i32> {
    // Signals first: one arriving during start-up must not kill us with its default action.
    let mut signals = Signals::new([SIGTERM, SIGQUIT, SIGINT, SIGHUP, SIGUSR1])?;
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)?;
    let workers = upkeep_runtime::workers::count(config.runtime.workers);
    let proxy = Proxy::start(config)?;
    log::info!(
        "upkeep {} started: pid {}, {workers} workers, config {}",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        file.map_or_else(|| "from flags".into(), |f| f.display().to_string())
    );
    for a in proxy.listen_addrs() {
        log::info!("listening on {a}");
    }
    if let Some(a) = proxy.admin_addr() {
        log::info!("admin listening on {a}");
    }
    let mut events = Events::with_capacity(8);
    let mut draining = false;
    loop {
        let timeout = draining.then_some(TICK);
        if let Err(e) = poll.poll(&mut events, timeout)
            && e.kind() != io::ErrorKind::Interrupted
        {
            return Err(e);
        }
        for signal in signals.pending() {
            match signal {
                SIGTERM if draining => {
                    log::info!("second SIGTERM: stopping now");
                    proxy.shutdown();
                    return Ok(0);
                }
                SIGTERM | SIGQUIT if !draining => {
                    log::info!("draining: finishing in-flight requests");
                    proxy.drain();
                    draining = true;
                }
                SIGINT => {
                    log::info!("SIGINT: stopping now");
                    proxy.shutdown();
                    return Ok(0);
                }
                SIGHUP => reload(&proxy, file),
                SIGUSR1 => {
                    log::info!("reopening access logs");
                    proxy.reopen_logs();
                }
                _ => {}
            }
        }
        if draining && proxy.is_finished() {
            let aborted = proxy.aborted_requests();
            proxy.wait();
            if aborted > 0 {
                log::warn!("drain cut at shutdown_timeout: aborted {aborted} requests; exiting");
            } else {
                log::info!("drained; exiting");
            }
            return Ok(0);
        }
    }
}

/// SIGHUP: re-read and validate the file; a bad one is logged and the old config keeps running.
fn reload(proxy: &ProxyHandle, file: Option<&Path>) {
    let Some(file) = file else {
        log::warn!("SIGHUP ignored: started without --config, nothing to reload");
        return;
    };
    let outcome = super::config_file::load(file)
        .inspect_err(|_| proxy.reload_failed())
        .and_then(|config| {
            let changes = upkeep_runtime::config_diff::changes(&proxy.config(), &config);
            proxy.reload(config).map(|()| changes)
        });
    match outcome {
        Ok(changes) if changes.is_empty() => {
            log::info!("reloaded {}: no changes", file.display())
        }
        Ok(changes) => log::info!("reloaded {}: {}", file.display(), changes.join("; ")),
        Err(e) => log::error!("reload failed, keeping the old configuration: {e}"),
    }
}
