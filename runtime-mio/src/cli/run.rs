//! `upkeep run`: start the proxy and turn signals into drain, stop, reload and log reopening.
//! Signals arrive on the main thread's own mio `Poll` (signal-hook-mio); workers only ever see
//! commands on their channels.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1};
use signal_hook_mio::v1_0::Signals;
use upkeep_core::Config;
use upkeep_core::config::format_duration;
use upkeep_mio::{Proxy, ProxyHandle};
use upkeep_runtime::resolve::{Names, Watcher};

use super::notify::notify;

const SIGNALS: Token = Token(0);
/// The resolver thread has a re-resolved configuration (`resolve_interval`).
const RESOLVED: Token = Token(1);
/// How often a draining main thread checks whether the workers are done.
const TICK: Duration = Duration::from_millis(50);

/// Where a shutdown stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Serving and ready.
    Serving,
    /// SIGTERM/SIGQUIT arrived with a `shutdown_delay`: `/ready` fails while everything is still
    /// accepted and served; the drain starts at the deadline.
    Delaying(Instant),
    /// Draining: no more accepts, in-flight exchanges finish.
    Draining,
}

/// Runs until drained or stopped.
pub(crate) fn run(config: Config, file: Option<&Path>) -> io::Result<()> {
    // Signals first: one arriving during start-up must not kill us with its default action.
    let mut signals = Signals::new([SIGTERM, SIGQUIT, SIGINT, SIGHUP, SIGUSR1])?;
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)?;
    let workers = upkeep_runtime::workers::count(config.runtime.workers);
    // Host names: resolved on a helper thread; one that does not resolve stops the start.
    let (names, config) = super::config_file::resolve(config, file).map_err(io::Error::other)?;
    let proxy = Proxy::start(config)?;
    let resolved = Resolved::new(&poll)?;
    let mut watcher = resolved.watch(names)?;
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
    notify(&format!("READY=1\nMAINPID={}", std::process::id()));
    let mut events = Events::with_capacity(8);
    let mut phase = Phase::Serving;
    // Requests cut before the drain began (by reloads' old workers) are not the drain's.
    let mut aborted_before = 0;
    loop {
        let timeout = match phase {
            Phase::Serving => None,
            Phase::Delaying(until) => {
                Some(until.saturating_duration_since(Instant::now()).min(TICK))
            }
            Phase::Draining => Some(TICK),
        };
        if let Err(e) = poll.poll(&mut events, timeout)
            && e.kind() != io::ErrorKind::Interrupted
        {
            return Err(e);
        }
        for signal in signals.pending() {
            match signal {
                SIGTERM if phase != Phase::Serving => {
                    log::info!("second SIGTERM: stopping now");
                    notify("STOPPING=1");
                    proxy.shutdown();
                    return Ok(());
                }
                SIGTERM | SIGQUIT if phase == Phase::Serving => {
                    // The current configuration's delay: a reload may have changed it.
                    let delay = proxy.config().runtime.shutdown_delay;
                    phase = if delay.is_zero() {
                        start_drain(&proxy, &mut aborted_before)
                    } else {
                        log::info!(
                            "shutting down: /ready fails now, still serving for shutdown_delay \
                             {}, then draining",
                            format_duration(delay)
                        );
                        notify("STOPPING=1");
                        proxy.fail_ready();
                        Phase::Delaying(Instant::now() + delay)
                    };
                }
                SIGINT => {
                    log::info!("SIGINT: stopping now");
                    notify("STOPPING=1");
                    proxy.shutdown();
                    return Ok(());
                }
                SIGHUP if phase == Phase::Serving => reload(&proxy, file, &resolved, &mut watcher),
                SIGHUP => log::warn!("SIGHUP ignored: shutting down"),
                SIGUSR1 => {
                    log::info!("reopening access logs");
                    proxy.reopen_logs();
                }
                _ => {}
            }
        }
        if phase == Phase::Serving {
            for config in resolved.changes.try_iter() {
                match proxy.reload(config) {
                    Ok(()) => log::info!("applied the re-resolved upstream addresses"),
                    Err(e) => log::error!("re-resolved addresses not applied: {e}"),
                }
            }
        }
        if let Phase::Delaying(until) = phase
            && Instant::now() >= until
        {
            phase = start_drain(&proxy, &mut aborted_before);
        }
        if phase == Phase::Draining && proxy.is_finished() {
            let aborted = proxy.aborted_requests() - aborted_before;
            proxy.wait();
            if aborted > 0 {
                log::warn!("drain cut at shutdown_timeout: aborted {aborted} requests; exiting");
            } else {
                log::info!("drained; exiting");
            }
            return Ok(());
        }
    }
}

/// Begins the drain; `aborted_before` takes the requests cut so far (not the drain's).
fn start_drain(proxy: &ProxyHandle, aborted_before: &mut u64) -> Phase {
    *aborted_before = proxy.aborted_requests();
    notify("STOPPING=1");
    log::info!("draining: finishing in-flight requests");
    proxy.drain();
    Phase::Draining
}

/// SIGHUP: re-read and validate the file and resolve its names; a bad one is logged and the old
/// config keeps running (and its names keep being watched).
fn reload(
    proxy: &ProxyHandle,
    file: Option<&Path>,
    resolved: &Resolved,
    watcher: &mut Option<Watcher>,
) {
    let Some(file) = file else {
        log::warn!("SIGHUP ignored: started without --config, nothing to reload");
        return;
    };
    notify("RELOADING=1");
    // Whatever the outcome, the proxy is serving (the new or the old configuration) afterwards.
    if let Some(names) = reload_file(proxy, file) {
        // The old file's names are watched no more; what their watcher found meanwhile is stale.
        drop(watcher.take());
        resolved.changes.try_iter().for_each(drop);
        match resolved.watch(names) {
            Ok(w) => *watcher = w,
            Err(e) => log::error!("cannot start re-resolving host names: {e}"),
        }
    }
    notify("READY=1");
}

/// Loads, resolves and applies `file`; the names it resolved when it was applied.
fn reload_file(proxy: &ProxyHandle, file: &Path) -> Option<Names> {
    let outcome = super::config_file::load(file)
        .and_then(|loaded| {
            for w in &loaded.warnings {
                log::warn!("{w}");
            }
            super::config_file::resolve(loaded.config, Some(file))
        })
        .inspect_err(|_| proxy.reload_failed())
        .and_then(|(names, config)| {
            let changes = upkeep_runtime::config_diff::changes(&proxy.config(), &config);
            proxy.reload(config).map(|()| (names, changes))
        });
    match outcome {
        Ok((names, changes)) => {
            if changes.is_empty() {
                log::info!("reloaded {}: no changes", file.display());
            } else {
                log::info!("reloaded {}: {}", file.display(), changes.join("; "));
            }
            Some(names)
        }
        Err(e) => {
            log::error!("reload failed, keeping the old configuration: {e}");
            None
        }
    }
}

/// Re-resolved configurations from the resolver thread, and the waker that tells the signal
/// loop about them (it applies them with a reload: the resolver thread never touches workers).
struct Resolved {
    waker: Arc<Waker>,
    send: Sender<Config>,
    changes: Receiver<Config>,
}

impl Resolved {
    fn new(poll: &Poll) -> io::Result<Resolved> {
        let (send, changes) = mpsc::channel();
        Ok(Resolved {
            waker: Arc::new(Waker::new(poll.registry(), RESOLVED)?),
            send,
            changes,
        })
    }

    /// A watcher re-resolving `names`; `None` when no group sets `resolve_interval`.
    fn watch(&self, names: Names) -> io::Result<Option<Watcher>> {
        let (send, waker) = (self.send.clone(), self.waker.clone());
        Watcher::start(names, move |config| {
            if send.send(config).is_ok() {
                let _ = waker.wake();
            }
        })
    }
}
