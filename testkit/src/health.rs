//! Active health check scenarios every runtime runs against itself (issue 11, item 5): a
//! backend whose check path starts failing (500, then no answer at all) gets no new requests
//! once `fall` checks failed, and traffic again after `rise` passes; with two workers the
//! backend sees one check per interval for the whole process; a check rides the pooled
//! connection a proxied request used. [`health_scenario_tests!`](crate::health_scenario_tests)
//! turns the list into `#[test]`s.
//!
//! The backend here ([`CheckedBackend`]) answers its check path as the test says at the moment
//! (pass, fail, or silence) and logs every request with the connection it came on. Bounded in
//! time: every wait polls with a generous limit; the one fixed window (counting checks over
//! ~2 s) is a measurement, its assertion an upper bound that holds however slow the machine.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use upkeep_core::config::HealthCheck;
use upkeep_core::{Address, Config};

use crate::client::{Client, get_text, metric};
use crate::{Start, eventually, loopback_config};

/// Expands to one `#[test]` per health check scenario, each calling
/// `upkeep_testkit::health::<name>(start_fn)`.
#[macro_export]
macro_rules! health_scenario_tests {
    ($start:expr) => {
        $crate::health_scenario_tests!(@each $start;
            health_checks_flip_a_server_both_ways,
            health_checks_run_once_per_interval_for_the_process,
            a_health_check_rides_a_pooled_connection,
            health_checks_run_every_round_behind_max_conns_1_with_two_workers,
        );
    };
    (@each $start:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::health::$name($start);
            }
        )*
    };
}

/// The check path the scenarios configure.
pub const CHECK_PATH: &str = "/healthz";

/// How a [`CheckedBackend`] answers its check path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckAnswer {
    /// `200 OK`.
    Pass = 0,
    /// `500 Internal Server Error`.
    Fail = 1,
    /// Reads the check and never answers it (a hung application).
    Silent = 2,
}

/// One request as the backend received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// Index of the connection that carried it (0 = first accepted).
    pub conn: usize,
    /// Request target.
    pub target: String,
    /// `User-Agent`, if any.
    pub user_agent: Option<String>,
    /// When it arrived.
    pub at: Instant,
}

struct State {
    answer: AtomicU8,
    log: Mutex<Vec<Seen>>,
    accepted: AtomicUsize,
    stop: AtomicBool,
}

/// A loopback HTTP/1.1 keep-alive backend whose check path answers as told
/// ([`CheckedBackend::answer`]); every other target gets `200` with the backend's name. A small
/// hand-written server rather than [`Backend`](crate::backend::Backend): the check answer must
/// change while connections stay open, and the log must say which connection carried what.
pub struct CheckedBackend {
    addr: std::net::SocketAddr,
    state: Arc<State>,
}

impl CheckedBackend {
    /// Starts a backend named `name` (its answers' body) on 127.0.0.1, passing checks.
    pub fn start(name: &str) -> io::Result<CheckedBackend> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            answer: AtomicU8::new(CheckAnswer::Pass as u8),
            log: Mutex::new(Vec::new()),
            accepted: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let (st, body) = (state.clone(), name.to_owned());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if st.stop.load(SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let conn = st.accepted.fetch_add(1, SeqCst);
                let (st, body) = (st.clone(), body.clone());
                std::thread::spawn(move || serve(stream, conn, &st, &body));
            }
        });
        Ok(CheckedBackend { addr, state })
    }

    /// Where it listens.
    pub fn addr(&self) -> Address {
        Address::Tcp(self.addr)
    }

    /// From now on, answer checks this way.
    pub fn answer(&self, a: CheckAnswer) {
        self.state.answer.store(a as u8, SeqCst);
    }

    /// Every request so far.
    pub fn log(&self) -> Vec<Seen> {
        self.state.log.lock().unwrap().clone()
    }

    /// Check requests so far.
    pub fn checks(&self) -> Vec<Seen> {
        self.log()
            .into_iter()
            .filter(|s| s.target == CHECK_PATH)
            .collect()
    }

    /// Requests other than checks so far.
    pub fn traffic(&self) -> usize {
        self.log().iter().filter(|s| s.target != CHECK_PATH).count()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(SeqCst)
    }
}

impl Drop for CheckedBackend {
    fn drop(&mut self) {
        self.state.stop.store(true, SeqCst);
        // Unblocks the accept loop.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Serves one connection: heads without bodies (the scenarios send GETs only).
fn serve(mut s: TcpStream, conn: usize, st: &State, body: &str) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !st.stop.load(SeqCst) {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            match s.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if is_timeout(&e) => {}
                Err(_) => return,
            }
            continue;
        };
        let head: Vec<u8> = buf.drain(..end + 4).collect();
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if !matches!(req.parse(&head), Ok(httparse::Status::Complete(_))) {
            return;
        }
        let target = req.path.unwrap_or("").to_owned();
        let user_agent = req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("user-agent"))
            .map(|h| String::from_utf8_lossy(h.value).into_owned());
        st.log.lock().unwrap().push(Seen {
            conn,
            target: target.clone(),
            user_agent,
            at: Instant::now(),
        });
        let (status, text) = if target == CHECK_PATH {
            match st.answer.load(SeqCst) {
                0 => ("200 OK", "ok"),
                1 => ("500 Internal Server Error", "sick"),
                _ => {
                    // Hung: hold the connection without answering until the proxy gives up
                    // (its EOF or reset), reading whatever else arrives.
                    while !st.stop.load(SeqCst) {
                        match s.read(&mut chunk) {
                            Ok(0) => break,
                            Ok(_) => {}
                            Err(e) if is_timeout(&e) => {}
                            Err(_) => break,
                        }
                    }
                    let _ = s.shutdown(Shutdown::Both);
                    return;
                }
            }
        } else {
            ("200 OK", body)
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        if s.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// A read timeout (the serving loop's chance to notice the stop flag), not a failure.
fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// A group with checks every `interval` (timeout: three quarters of it), `fall` 2, `rise` 2,
/// and the admin listener (for `/upstreams` and `/metrics`).
fn checked_config(servers: Vec<Address>, workers: usize, interval: Duration) -> Config {
    let mut config = loopback_config(servers, workers);
    config.runtime.admin = Some(Address::Tcp((std::net::Ipv4Addr::LOCALHOST, 0).into()));
    config.upstreams[0].health_check = Some(HealthCheck {
        path: CHECK_PATH.into(),
        interval,
        // Generous (a busy machine must not fail a healthy server): three quarters of it.
        timeout: interval * 3 / 4,
        fall: 2,
        rise: 2,
        ..HealthCheck::default()
    });
    config
}

/// Sends `n` requests on one connection; the names of the backends that answered.
fn names(addr: &Address, n: usize) -> Vec<String> {
    let mut c = Client::connect(addr).unwrap();
    (0..n)
        .map(|i| {
            let r = c.get(&format!("/r{i}")).unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            r.text()
        })
        .collect()
}

/// A's check answers 500: once `fall` checks failed, A gets no new request (and `/upstreams`
/// says `health: down`, `/metrics` counts the failed checks); it answers 200 again: traffic
/// reaches it again after `rise` passes. The same with a check that gets no answer at all
/// (timeouts). Two workers, so the verdict is seen by both.
pub fn health_checks_flip_a_server_both_ways(start: Start) {
    let a = CheckedBackend::start("a").unwrap();
    let b = CheckedBackend::start("b").unwrap();
    let interval = Duration::from_millis(200);
    let proxy = start(checked_config(vec![a.addr(), b.addr()], 2, interval));
    let addr = proxy.listen_addrs()[0].clone();
    let admin = proxy.admin_addr().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || !a.checks().is_empty()
            && !b.checks().is_empty()),
        "both servers are checked from the start"
    );
    assert!(
        a.checks()
            .iter()
            .all(|s| s.user_agent.as_deref() == Some("upkeep-health-check"))
    );
    assert!(
        eventually(Duration::from_secs(20), || names(&addr, 4)
            .iter()
            .any(|n| n == "a")),
        "A serves at first"
    );
    for sick in [CheckAnswer::Fail, CheckAnswer::Silent] {
        a.answer(sick);
        let began = Instant::now();
        // Out once two checks in a row failed (a 500, or the timeout of an unanswered check).
        let out = eventually(Duration::from_secs(20), || {
            get_text(&admin, "/upstreams")
                .1
                .contains("\"health\":\"down\"")
        });
        assert!(out, "{sick:?}: A marked down by its checks");
        eprintln!(
            "{sick:?}: out after {:?} (interval x fall = {:?})",
            began.elapsed(),
            interval * 2
        );
        let before = a.traffic();
        let served = names(&addr, 20);
        assert!(served.iter().all(|n| n == "b"), "{sick:?}: {served:?}");
        assert_eq!(a.traffic(), before, "{sick:?}: no new request reaches A");
        a.answer(CheckAnswer::Pass);
        let began = Instant::now();
        let back = eventually(Duration::from_secs(20), || {
            names(&addr, 4).iter().any(|n| n == "a")
        });
        assert!(back, "{sick:?}: traffic reaches A again after rise passes");
        eprintln!(
            "{sick:?}: back after {:?} (interval x rise = {:?})",
            began.elapsed(),
            interval * 2
        );
    }
    let (_, text) = get_text(&admin, "/metrics");
    let server = a.addr().to_string();
    let count = |result: &str| {
        metric(
            &text,
            &format!(
                "upkeep_upstream_health_checks_total{{upstream=\"default\",server=\"{server}\",result=\"{result}\"}}"
            ),
        )
    };
    assert!(
        count("fail") >= 2 && count("timeout") >= 2 && count("pass") >= 4,
        "{text}"
    );
    proxy.stop();
}

/// The checks `a` saw over a window of ~2 s from its first one, and the rounds of `interval`
/// that window spanned (counted against the time it actually spanned: a busy machine only
/// stretches it).
fn check_window(a: &CheckedBackend, interval: Duration) -> (Vec<Seen>, usize) {
    assert!(eventually(Duration::from_secs(10), || !a
        .checks()
        .is_empty()));
    let first = a.checks()[0].at;
    std::thread::sleep(Duration::from_secs(2));
    let checks = a.checks();
    let span = checks.last().unwrap().at.duration_since(first);
    let rounds = (span.as_millis() / interval.as_millis()) as usize + 1;
    eprintln!(
        "{} checks in {span:?} at one per {interval:?} ({rounds} rounds), over {} connections",
        checks.len(),
        a.accepted()
    );
    (checks, rounds)
}

/// Two workers, checks every 250 ms: over a ~2 s window the backend sees about 8 checks, one
/// per interval for the process — never one per worker per interval (16) — and they come on at
/// most one connection per worker (each check rides its worker's pooled connection).
pub fn health_checks_run_once_per_interval_for_the_process(start: Start) {
    let a = CheckedBackend::start("a").unwrap();
    let interval = Duration::from_millis(250);
    let proxy = start(checked_config(vec![a.addr()], 2, interval));
    let (checks, rounds) = check_window(&a, interval);
    // Rounds are claimed at least an interval apart; their arrival here jitters (a check that
    // opens a connection arrives later than one riding a pooled one): two extra for that and
    // the window's ends. One check per worker per interval would be twice as many.
    assert!(
        checks.len() <= rounds + 2,
        "{} checks for {rounds} rounds: more than one per interval",
        checks.len()
    );
    assert!(checks.len() >= 2, "checks keep coming");
    let mut conns: Vec<usize> = checks.iter().map(|s| s.conn).collect();
    conns.sort();
    conns.dedup();
    assert!(
        conns.len() <= 2,
        "a check rides the pooled connection: {conns:?}"
    );
    assert_eq!(a.traffic(), 0, "a check is not forwarded traffic");
    proxy.stop();
}

/// One worker: a proxied request, then the next check arrives on the very connection that
/// carried it (and no other connection was ever opened).
pub fn a_health_check_rides_a_pooled_connection(start: Start) {
    let a = CheckedBackend::start("a").unwrap();
    let interval = Duration::from_millis(300);
    let proxy = start(checked_config(vec![a.addr()], 1, interval));
    let addr = proxy.listen_addrs()[0].clone();
    assert!(eventually(Duration::from_secs(10), || !a
        .checks()
        .is_empty()));
    assert_eq!(names(&addr, 1), ["a"]);
    let proxied = a.log().into_iter().find(|s| s.target == "/r0").unwrap();
    assert!(
        eventually(Duration::from_secs(10), || a
            .checks()
            .iter()
            .any(|c| c.at > proxied.at)),
        "a check after the request"
    );
    let next = a.checks().into_iter().find(|c| c.at > proxied.at).unwrap();
    assert_eq!(
        next.conn, proxied.conn,
        "the check rode the request's pooled connection"
    );
    assert_eq!(a.accepted(), 1, "one connection for checks and traffic");
    proxy.stop();
}

/// Seed 000's setup: `max_conns = 1`, two workers, no traffic. The worker holding the one
/// (idle, pooled) connection is not always the one that wakes first for a round; the other
/// finds no slot and no connection of its own. Every round still runs (the first worker runs
/// it on its connection) — it used to be lost, about every other one — and on that one
/// connection: the backend never sees a second.
pub fn health_checks_run_every_round_behind_max_conns_1_with_two_workers(start: Start) {
    let a = CheckedBackend::start("a").unwrap();
    let interval = Duration::from_millis(200);
    let mut config = checked_config(vec![a.addr()], 2, interval);
    config.upstreams[0].servers[0].max_conns = 1;
    let proxy = start(config);
    let (checks, rounds) = check_window(&a, interval);
    // Counted against the time the checks actually spanned, so a slow machine only stretches
    // the window; losing a round to the worker without the connection is what this catches.
    assert!(
        checks.len() * 4 >= rounds * 3,
        "{} checks for {rounds} rounds: rounds were lost",
        checks.len()
    );
    assert_eq!(a.accepted(), 1, "one connection, max_conns = 1");
    proxy.stop();
}
