//! A driver thread's core across re-resolutions (`resolve_interval`): one *generation* per
//! server set, for the fan-out client and for each proxy worker.
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
//!   one when it arrives — so none is lost or answered twice. In the proxy the old core drains
//!   *handing off* ([`Driver::begin_handoff`]): each client connection moves to the new core
//!   once it is between requests, and the caller moves the listeners.
//!
//! A retiring generation is watched by a task of its own until it is drained (at the latest
//! after `runtime.shutdown_timeout`, when what is left is cut). Since both generations count the
//! kept servers in the same entries, a connection closing in either may free a slot the other's
//! queue waits for: that task tells both cores ([`Core::handle_shared`]) whenever one closes.

use async_executor::Task;
use futures_lite::future;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};
use upkeep_core::Core;
use upkeep_runtime::clock;

use crate::driver::{self, Driver, Shared};

/// A driver thread's current core and the retiring ones.
pub(crate) struct Generations {
    current: Rc<RefCell<Shared>>,
    timer: Task<()>,
    /// The generations still draining, each watched by a task of its own.
    retiring: Rc<RefCell<Vec<Shared>>>,
}

impl Generations {
    /// The first generation: `core`, set up by `setup` (TLS, recorder), its warm connections
    /// opening.
    pub(crate) fn start(core: Core, setup: impl FnOnce(&mut Driver)) -> Generations {
        let (d, timer) = Driver::new(core);
        {
            let mut driver = d.borrow_mut();
            setup(&mut driver);
            driver.warm();
        }
        Generations {
            current: Rc::new(RefCell::new(d)),
            timer,
            retiring: Rc::default(),
        }
    }

    /// The current generation's driver: where a new request goes.
    pub(crate) fn current(&self) -> Shared {
        self.current.borrow().clone()
    }

    /// The generations still draining.
    pub(crate) fn retiring(&self) -> Vec<Shared> {
        self.retiring.borrow().clone()
    }

    /// Replaces the current generation by `core` (the same groups and listeners, another
    /// server set), set up by `setup`: the old generation's idle pooled connections move to
    /// it, it opens its warm connections, and the old one drains — with `handoff`, handing each
    /// client connection over once it is between requests (real sockets: the proxy), else
    /// finishing them (the client's one-request virtual connections). `on_retired` gets the
    /// old generation once it is done, before it is dropped. Returns the new current driver.
    pub(crate) fn swap(
        &mut self,
        core: Core,
        handoff: bool,
        setup: impl FnOnce(&mut Driver),
        on_retired: impl FnOnce(&Shared) + 'static,
    ) -> Shared {
        let old = self.current();
        let limit = old.borrow().core.config().runtime.shutdown_timeout;
        let (d, timer) = Driver::new(core);
        {
            let mut driver = d.borrow_mut();
            setup(&mut driver);
            for pooled in old.borrow_mut().release_pooled() {
                driver.adopt_pooled(pooled);
            }
            driver.warm();
        }
        if handoff {
            old.borrow_mut().begin_handoff(&d);
        } else {
            old.borrow_mut().begin_drain();
        }
        *self.current.borrow_mut() = d.clone();
        let old_timer = std::mem::replace(&mut self.timer, timer);
        self.retiring.borrow_mut().push(old.clone());
        let (current, retiring) = (self.current.clone(), self.retiring.clone());
        driver::spawn(async move {
            retire(&old, current, limit).await;
            on_retired(&old);
            retiring.borrow_mut().retain(|r| !Rc::ptr_eq(r, &old));
            drop(old_timer);
        })
        .detach();
        d
    }
}

/// Watches a retiring generation until it is drained (or `limit` has passed: then what it
/// still carries is cut), telling both it and the current generation whenever either closes a
/// connection (see the module documentation).
async fn retire(old: &Shared, current: Rc<RefCell<Shared>>, limit: Duration) {
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
        for d in [old, &now_current] {
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
}
