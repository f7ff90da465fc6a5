//! A change of a server's usability is logged once for the process, whichever worker looks:
//! the worker that logged a server going out may be idle when it comes back (the review of the
//! first version: a second drain was never logged, the shared "last reported" stuck at out).
use std::sync::Mutex;

use upkeep_core::config::{Address, Config, ServerState};
use upkeep_core::{Core, Shared, Time};
use upkeep_runtime::trouble::Health;

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;
impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        LINES.lock().unwrap().push(format!("{}", r.args()));
    }
    fn flush(&self) {}
}

fn count(what: &str) -> usize {
    LINES
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(what))
        .count()
}

#[test]
fn a_second_drain_is_logged_though_the_worker_that_logged_the_first_is_idle() {
    log::set_logger(&Capture).unwrap();
    log::set_max_level(log::LevelFilter::Trace);
    let local = |p| Address::parse(&format!("127.0.0.1:{p}")).unwrap();
    let config = Config::simple(local(8080), vec![local(9001), local(9002)]);
    let shared = Shared::new(&config, 2);
    let a = Core::with_shared(config.clone(), 0, shared.clone(), 0).unwrap();
    let b = Core::with_shared(config, 0, shared.clone(), 1).unwrap();
    let (mut ha, mut hb) = (Health::default(), Health::default());
    let s = |n: u64| Time::ZERO.plus(core::time::Duration::from_secs(n));
    // Both workers look once while everything is up.
    ha.watch(&a, s(1), true);
    hb.watch(&b, s(1), true);
    // Drain: worker A looks and logs it.
    shared.set_state(0, 0, ServerState::Drain);
    ha.watch(&a, s(2), true);
    assert_eq!(count("taken out of use"), 1);
    // Back up, and worker A goes idle (no traffic wakes it): B, which never saw it out, says so.
    shared.set_state(0, 0, ServerState::Up);
    hb.watch(&b, s(3), true);
    assert_eq!(count("marked up again"), 1);
    // Drained again: B sees it.
    shared.set_state(0, 0, ServerState::Drain);
    hb.watch(&b, s(4), true);
    ha.watch(&a, s(5), true); // A wakes: for it nothing changed
    let lines = LINES.lock().unwrap().clone();
    assert_eq!(count("taken out of use"), 2, "the second drain: {lines:#?}");
    assert_eq!(count("marked up again"), 1, "{lines:#?}");
}
