//! The fan-out client's core across re-resolutions (`resolve_interval`): one *generation* per
//! server set.
//!
//! The core's server set is fixed for its life, so a changed set (a name now resolving to other
//! addresses) is a new [`Core`] — the same design as the mio binary's reload, on one thread:
//!
//! - the new core's ledger is [continued](upkeep_core::Shared::continued) from the old one, so a
//!   server both sets have keeps its ledger entry and `max_conns` holds over both generations
//!   together (the old one's in-flight requests hold their slots until they finish);
//! - the old core's idle pooled connections move, sockets and all, into the new core's pool
//!   ([`Driver::release_pooled`] / [`Driver::adopt_pooled`]) when the new set still has their
//!   server, and close otherwise; then the new core opens its warm connections (`min_idle`),
//!   which counts the adopted ones;
//! - the old core drains: requests in flight finish on it (and their upstream connections close
//!   after them), nothing new reaches it. A request is handed to exactly one core — the current
//!   one when its command is taken from the channel — so none is lost or answered twice.
//!
//! A retiring generation is watched by a task of its own until it is drained (at the latest
//! after `runtime.shutdown_timeout`, when what is left is cut). Since both generations count the
//! kept servers in the same entries, a connection closing in either may free a slot the other's
//! queue waits for: that task tells both cores ([`Core::handle_shared`]) whenever one closes.

use async_executor::Task;
use futures_lite::future;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use upkeep_core::{Config, Core, Shared as Ledger};
use upkeep_runtime::clock;
use upkeep_runtime::tls::Contexts;

use crate::driver::{self, Driver, Shared};

/// The client's current core and, through their watch tasks, the retiring ones.
pub(crate) struct Generations {
    current: Rc<RefCell<Shared>>,
    timer: Task<()>,
    /// Generations started so far: each core's seed, so that two differ.
    started: u64,
}

impl Generations {
    /// The first generation: `core` with `tls`, its warm connections opening.
    pub(crate) fn start(core: Core, tls: Arc<Contexts>) -> Generations {
        let (d, timer) = Driver::new(core);
        {
            let mut driver = d.borrow_mut();
            driver.use_tls(tls);
            driver.warm();
        }
        Generations {
            current: Rc::new(RefCell::new(d)),
            timer,
            started: 1,
        }
    }

    /// The current generation's driver: where a new request goes.
    pub(crate) fn current(&self) -> Shared {
        self.current.borrow().clone()
    }

    /// Replaces the current generation by one running `config` (the same groups and virtual
    /// listeners, another server set) with `tls` (loaded for `config`); the old one drains.
    /// Keeps the current one when `config` does not make a core (logged).
    pub(crate) fn swap(&mut self, config: Config, tls: Arc<Contexts>) {
        let old = self.current();
        let core = {
            let o = old.borrow();
            let ledger = Ledger::continued(&config, 1, o.core.shared(), o.core.config());
            Core::with_shared(config, self.started, ledger, 0)
        };
        let core = match core {
            Ok(core) => core,
            Err(e) => {
                log::warn!("re-resolved addresses not applied: {e}");
                return;
            }
        };
        self.started += 1;
        let limit = old.borrow().core.config().runtime.shutdown_timeout;
        let (d, timer) = Driver::new(core);
        {
            let mut driver = d.borrow_mut();
            driver.use_tls(tls);
            for pooled in old.borrow_mut().release_pooled() {
                driver.adopt_pooled(pooled);
            }
            driver.warm();
        }
        old.borrow_mut().begin_drain();
        *self.current.borrow_mut() = d;
        let old_timer = std::mem::replace(&mut self.timer, timer);
        driver::spawn(retire(old, old_timer, self.current.clone(), limit)).detach();
    }
}

/// Watches a retiring generation until it is drained (or `limit` has passed: then what it
/// still carries is cut), telling both it and the current generation whenever either closes a
/// connection (see the module documentation). Dropping its timer task and driver then frees it.
async fn retire(old: Shared, timer: Task<()>, current: Rc<RefCell<Shared>>, limit: Duration) {
    let deadline = Instant::now() + limit;
    let closes_old = old.borrow().closes_event();
    loop {
        let now_current = current.borrow().clone();
        let closes_new = now_current.borrow().closes_event();
        // Listening before looking: a close from here on is not missed.
        let closed = future::or(closes_old.listen(), closes_new.listen());
        if old.borrow().core.is_drained() {
            break;
        }
        for d in [&old, &now_current] {
            let mut d = d.borrow_mut();
            d.core.handle_shared(clock::now());
            d.drain();
        }
        let in_time = future::or(
            async {
                closed.await;
                true
            },
            async {
                async_io::Timer::at(deadline).await;
                false
            },
        )
        .await;
        if !in_time {
            let mut d = old.borrow_mut();
            log::warn!(
                "re-resolution: the previous server set still had connections after {limit:?}; \
                 cutting them"
            );
            d.abort_all();
            break;
        }
    }
    drop(timer);
}
