//! `upkeep run`: start the proxy and turn signals into drain, stop, reload and log reopening.
//! Signals arrive on the main thread's own mio `Poll` (signal-hook-mio); workers only ever see
//! commands on their channels.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::Duration;

use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1};
use signal_hook_mio::v1_0::Signals;
use upkeep_core::Config;
use upkeep_mio::{Proxy, ProxyHandle};
use upkeep_runtime::resolve::{Names, Watcher};

const SIGNALS: Token = Token(0);
/// The resolver thread has a re-resolved configuration (`resolve_interval`).
const RESOLVED: Token = Token(1);
/// How often a draining main thread checks whether the workers are done.
const TICK: Duration = Duration::from_millis(50);

/// Runs until drained or stopped; returns the exit code.
pub(crate) fn run(config: Config, file: Option<&Path>) -> io::Result<i32> {
    // Signals first: one arriving during start-up must not kill us with its default action.
    let mut signals = Signals::new([SIGTERM, SIGQUIT, SIGINT, SIGHUP, SIGUSR1])?;
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)?;
    // Host names: resolved on a helper thread; one that does not resolve stops the start.
    let (names, config) = super::config_file::resolve(config, file).map_err(io::Error::other)?;
    let proxy = Proxy::start(config)?;
    let resolved = Resolved::new(&poll)?;
    let mut watcher = resolved.watch(names)?;
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
                SIGHUP => reload(&proxy, file, &resolved, &mut watcher),
                SIGUSR1 => {
                    log::info!("reopening access logs");
                    proxy.reopen_logs();
                }
                _ => {}
            }
        }
        if !draining {
            for config in resolved.changes.try_iter() {
                match proxy.reload(config) {
                    Ok(()) => log::info!("applied the re-resolved upstream addresses"),
                    Err(e) => log::error!("re-resolved addresses not applied: {e}"),
                }
            }
        }
        if draining && proxy.is_finished() {
            proxy.wait();
            log::info!("drained; exiting");
            return Ok(0);
        }
    }
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
    let loaded = super::config_file::load(file)
        .and_then(|config| super::config_file::resolve(config, Some(file)));
    let (names, config) = match loaded {
        Ok(l) => l,
        Err(e) => return log::error!("reload failed, keeping the old configuration: {e}"),
    };
    match proxy.reload(config) {
        Ok(()) => {
            log::info!("reloaded {}", file.display());
            // The old file's names are watched no more; what their watcher found meanwhile is
            // stale.
            drop(watcher.take());
            resolved.changes.try_iter().for_each(drop);
            match resolved.watch(names) {
                Ok(w) => *watcher = w,
                Err(e) => log::error!("cannot start re-resolving host names: {e}"),
            }
        }
        Err(e) => log::error!("reload failed, keeping the old configuration: {e}"),
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
