//! The `upkeep` binary's operator log, read from the stderr of a spawned process: a timestamp,
//! level and target on every line, a start-up line, upstream trouble with its context (group,
//! server, errno, client, request line), servers marked down, what a reload changed, a bad
//! `UPKEEP_LOG` refused at start, `trace` without the event loop's internals, and a drain cut
//! by `shutdown_timeout` that says so and logs the requests it aborted. Through the library:
//! a server removed by a reload stops reporting `upkeep_upstream_up`, and reloads are counted.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{admin_get, spawned};
use upkeep_core::Address;
use upkeep_testkit::backend::{Backend, closed_port};
use upkeep_testkit::client::{self, Client, get_text};
use upkeep_testkit::{TempDir, eventually, loopback_config};

const BIN: &str = env!("CARGO_BIN_EXE_upkeep");
const TIMEOUT: Duration = Duration::from_secs(10);

/// `[2026-12-03T09:28:04.123Z LEVEL target] message`.
const LINE: &str =
    r"^\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (ERROR|WARN |INFO |DEBUG|TRACE) ([^\] ]+)\] (.*)$";

/// A spawned `upkeep run` whose stderr lines arrive on a channel (and are kept).
struct Upkeep {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Upkeep {
    fn run(log: &str, args: &[&str]) -> Upkeep {
        let mut child = Command::new(BIN)
            .arg("run")
            .args(args)
            .env("UPKEEP_LOG", log)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = spawned::forward_stderr(&mut child);
        Upkeep {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// `upkeep run` in quick mode: one worker on 127.0.0.1:0 in front of `upstreams`.
    fn quick(log: &str, upstreams: &[String]) -> Upkeep {
        let mut args = vec!["--listen", "127.0.0.1:0", "--workers", "1"];
        for u in upstreams {
            args.extend(["--upstream", u.as_str()]);
        }
        Upkeep::run(log, &args)
    }

    /// Waits for a line containing every one of `parts`; returns it.
    fn expect(&mut self, parts: &[&str]) -> String {
        let start = Instant::now();
        while start.elapsed() < TIMEOUT {
            let Ok(line) = self.lines.recv_timeout(TIMEOUT) else {
                break;
            };
            self.seen.push(line.clone());
            if parts.iter().all(|p| line.contains(p)) {
                return line;
            }
        }
        panic!("no line with {parts:?} in {:#?}", self.seen);
    }

    /// The address after `what` in the first line with it.
    fn address_after(&mut self, what: &str) -> Address {
        let line = self.expect(&[what]);
        Address::parse(line.split(what).nth(1).unwrap()).unwrap()
    }

    /// The first listener's address.
    fn listen(&mut self) -> Address {
        self.address_after("listening on ")
    }

    /// The admin listener's address (after the listeners' lines).
    fn admin(&mut self) -> Address {
        self.address_after("admin listening on ")
    }

    fn signal(&self, sig: &str) {
        spawned::signal(&self.child, sig);
    }

    /// Waits for the exit, then keeps what was printed up to it.
    fn wait_exit(&mut self) -> i32 {
        let code = spawned::wait_exit(&mut self.child, TIMEOUT * 3);
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(l);
        }
        code
    }
}

impl Upkeep {
    /// SIGINT, exit 0, then every line printed as (level, target, line); panics on a line that
    /// is not timestamp, level, target and message.
    fn stop_and_parse(&mut self) -> Vec<(String, String, String)> {
        self.signal("INT");
        assert_eq!(self.wait_exit(), 0);
        let re = regex::Regex::new(LINE).unwrap();
        self.seen
            .iter()
            .map(|l| {
                let c = re
                    .captures(l)
                    .unwrap_or_else(|| panic!("not a log line: {l}"));
                (c[1].to_string(), c[2].to_string(), l.clone())
            })
            .collect()
    }
}

impl Drop for Upkeep {
    fn drop(&mut self) {
        spawned::stop(&mut self.child);
    }
}

#[test]
fn every_line_is_timestamped_and_upstream_trouble_is_logged_with_context() {
    // Two servers, both down (a lone server is never marked down, as in nginx).
    let dead = closed_port().to_string();
    let dead2 = closed_port().to_string();
    let mut up = Upkeep::quick("info", &[dead.clone(), dead2.clone()]);
    let started = up.expect(&["started: pid ", "1 workers, config from flags"]);
    assert!(
        started.contains(&format!("pid {}", up.child.id())),
        "{started}"
    );
    let listen = up.listen();
    let r = client::one_shot(&listen, b"GET /x?y=1 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!(r.status, 502);
    let connect = up.expect(&["upstream \"default\" server ", "connect failed: "]);
    assert!(
        (connect.contains(&dead) || connect.contains(&dead2)) && connect.contains("os error"),
        "{connect}"
    );
    let answered = up.expect(&["answered 502"]);
    for part in [
        "upstream \"default\"",
        "client 127.0.0.1",
        "\"GET /x?y=1 HTTP/1.1\"",
        "request_id ",
        "connect_failed after",
        ", then ",
    ] {
        assert!(answered.contains(part), "{part:?} in {answered}");
    }
    let down = up.expect(&["marked down"]);
    assert!(down.contains(&dead) || down.contains(&dead2), "{down}");
    for (level, _, l) in up.stop_and_parse() {
        match level.as_str() {
            "ERROR" => assert!(l.contains("answered 502"), "{l}"),
            "WARN " => assert!(
                l.contains("connect failed") || l.contains("marked down"),
                "{l}"
            ),
            _ => {}
        }
        if l == connect {
            assert_eq!(level, "WARN ");
        }
        if l == answered {
            assert_eq!(level, "ERROR");
        }
    }
}

#[test]
fn log_levels_are_checked_and_trace_leaves_mio_out() {
    // A bad level is an error at start, whatever the command.
    for bad in ["verbose", "info,upkeep_core", "upkeep=loud"] {
        let out = Command::new(BIN)
            .arg("--version")
            .env("UPKEEP_LOG", bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("UPKEEP_LOG"), "{bad}: {err}");
    }
    let out = Command::new(BIN)
        .arg("--version")
        .env("UPKEEP_LOG", "DEBUG,upkeep_runtime=trace")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));

    // `trace`: the proxy's own lines, none of mio's.
    let b = Backend::identify("t").unwrap();
    let mut up = Upkeep::quick("trace", &[b.addr().to_string()]);
    let listen = up.listen();
    assert_eq!(get_text(&listen, "/").0, 200);
    for (_, target, l) in up.stop_and_parse() {
        assert!(!target.starts_with("mio"), "{l}");
    }
    // Per-target filtering: warn for everything, info for the binary's own lines.
    let mut up = Upkeep::quick("warn,upkeep=info", &[b.addr().to_string()]);
    up.expect(&["INFO  upkeep", "started: pid"]);
    up.signal("INT");
    assert_eq!(up.wait_exit(), 0);
}

fn config_text(listen: &str, servers: &[String], log: &str) -> String {
    let servers: Vec<String> = servers.iter().map(|s| format!("{s:?}")).collect();
    format!(
        "workers = 1\nshutdown_timeout = \"1s\"\naccess_log = {log:?}\naccess_log_format = \"json\"\n[[listen]]\naddr = \"{listen}\"\n[[upstream]]\nname = \"app\"\nservers = [{}]\n",
        servers.join(", ")
    )
}

#[test]
fn a_reload_says_what_changed_and_a_cut_drain_says_what_it_aborted() {
    let slow = Backend::slow("slow", Duration::from_secs(30)).unwrap();
    let other = Backend::identify("other").unwrap();
    let dir = TempDir::new().unwrap();
    let file = dir.path().join("upkeep.toml");
    let log = dir.path().join("access.log").to_string_lossy().into_owned();
    let listen = common::free_local_addr();
    std::fs::write(
        &file,
        config_text(&listen, &[slow.addr().to_string()], &log),
    )
    .unwrap();
    let mut up = Upkeep::run("info", &["--config", file.to_str().unwrap()]);
    up.expect(&["started: pid", &format!("config {}", file.display())]);
    let listen = up.listen();

    let servers = [slow.addr().to_string(), other.addr().to_string()];
    std::fs::write(&file, config_text(&listen.to_string(), &servers, &log)).unwrap();
    up.signal("HUP");
    let reloaded = up.expect(&["reloaded"]);
    assert!(
        reloaded.contains(&format!("upstream \"app\" server {} added", other.addr())),
        "{reloaded}"
    );

    // A request that outlives `shutdown_timeout` (1 s): cut, logged, and the drain says so.
    let mut c = Client::connect(&listen).unwrap();
    c.send(&client::get("/stuck")).unwrap();
    assert!(slow.wait_until(TIMEOUT, |b| b.requests() >= 1));
    up.signal("TERM");
    up.expect(&["draining"]);
    up.expect(&["shutdown timeout", "closing"]);
    let cut = up.expect(&["aborting 1 requests in progress"]);
    assert!(cut.contains("WARN"), "{cut}");
    assert_eq!(up.wait_exit(), 0);
    assert!(
        !up.seen.iter().any(|l| l.contains("drained; exiting")),
        "a cut drain is not reported as drained: {:#?}",
        up.seen
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["request"], "GET /stuck HTTP/1.1");
    assert_eq!(
        (last["status"].as_u64(), last["end"].as_str()),
        (Some(444), Some("shutdown"))
    );
}

#[test]
fn a_server_removed_by_a_reload_stops_reporting_up() {
    let a = Backend::identify("a").unwrap();
    let b = Backend::identify("b").unwrap();
    let mut cfg = loopback_config(vec![a.addr(), b.addr()], 1);
    cfg.runtime.admin = Some(Address::parse("127.0.0.1:0").unwrap());
    let proxy = upkeep_mio::Proxy::start(cfg.clone()).unwrap();
    let up_line =
        |addr: &Address| format!("upkeep_upstream_up{{upstream=\"default\",server=\"{addr}\"}}");
    let (_, text) = admin_get(&proxy, "/metrics");
    assert!(text.contains(&up_line(&b.addr())), "{text}");
    let mut next = cfg.clone();
    next.upstreams[0].servers.truncate(1);
    proxy.reload(next).unwrap();
    assert!(
        proxy
            .reload({
                let mut bad = cfg.clone();
                bad.upstreams.clear();
                bad
            })
            .is_err()
    );
    // Once the old worker has retired, the removed server has no gauge (its counters remain).
    assert!(eventually(TIMEOUT, || {
        !admin_get(&proxy, "/metrics")
            .1
            .contains(&up_line(&b.addr()))
    }));
    let (_, text) = admin_get(&proxy, "/metrics");
    assert!(
        text.contains(&format!("{} 1\n", up_line(&a.addr()))),
        "{text}"
    );
    assert!(
        text.contains("upkeep_reloads_total{result=\"ok\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("upkeep_reloads_total{result=\"failed\"} 1\n"),
        "{text}"
    );
    proxy.shutdown();
}

#[test]
fn a_read_timeout_is_an_error_line_and_a_timeout_in_the_metrics() {
    let slow = Backend::slow("slow", Duration::from_secs(5)).unwrap();
    let server = slow.addr().to_string();
    let mut up = Upkeep::run(
        "info",
        &[
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &server,
            "--workers",
            "1",
            "--read-timeout",
            "300ms",
            "--admin",
            "127.0.0.1:0",
        ],
    );
    let listen = up.listen();
    let admin = up.admin();
    let r = client::one_shot(&listen, b"GET /late HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!(r.status, 504);
    let line = up.expect(&["answered 504"]);
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains(&format!("{server} read_timeout after 0.")),
        "{line}"
    );
    assert!(line.contains("\"GET /late HTTP/1.1\""), "{line}");
    let (_, text) = get_text(&admin, "/metrics");
    let sample = format!(
        "upkeep_upstream_timeouts_total{{upstream=\"default\",server=\"{server}\",kind=\"read_timeout\"}} 1\n"
    );
    assert!(text.contains(&sample), "{text}");
    up.stop_and_parse();
}

/// A server marked down comes back up when its `fail_timeout` passes; the log says so even
/// with no request to show it (here a metrics scrape is all that wakes the worker).
#[test]
fn a_server_marked_down_is_logged_up_again_after_fail_timeout() {
    let alive = Backend::identify("alive").unwrap();
    let dead = closed_port().to_string();
    let dir = TempDir::new().unwrap();
    let file = dir.path().join("upkeep.toml");
    std::fs::write(
        &file,
        format!(
            "workers = 1\nadmin = \"127.0.0.1:0\"\n[[listen]]\naddr = \"127.0.0.1:0\"\n[[upstream]]\nname = \"app\"\nservers = [{{ addr = \"{dead}\", fail_timeout = \"1s\" }}, \"{}\"]\n",
            alive.addr()
        ),
    )
    .unwrap();
    let mut up = Upkeep::run("info", &["--config", file.to_str().unwrap()]);
    let listen = up.listen();
    let admin = up.admin();
    let mut c = Client::connect(&listen).unwrap();
    for _ in 0..2 {
        assert_eq!(
            c.get("/").unwrap().status,
            200,
            "retried on the live server"
        );
    }
    up.expect(&["marked down", &dead]);
    let start = Instant::now();
    loop {
        assert_eq!(get_text(&admin, "/metrics").0, 200);
        if let Ok(l) = up.lines.recv_timeout(Duration::from_millis(300)) {
            up.seen.push(l.clone());
            if l.contains("marked up again") {
                assert!(l.contains(&dead) && l.contains("INFO"), "{l}");
                break;
            }
        }
        assert!(start.elapsed() < TIMEOUT, "never marked up: {:#?}", up.seen);
    }
    up.stop_and_parse();
}

#[test]
fn a_bad_access_log_format_is_refused_with_its_place() {
    let dir = TempDir::new().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "access_log = \"-\"\naccess_log_format = \"xml\"\n[[listen]]\naddr = \"127.0.0.1:0\"\n[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:9\"]\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.starts_with(&format!("{}:2:", file.display())), "{err}");
    assert!(err.contains("combined") && err.contains("json"), "{err}");
    let out = Command::new(BIN)
        .args("run --listen 127.0.0.1:0 --upstream 127.0.0.1:9 --access-log-format xml".split(' '))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--access-log-format \"xml\""), "{err}");
}

/// Requests a reload's old workers cut at their `shutdown_timeout` are theirs: a later drain
/// that finishes in time is still "drained", not "cut at shutdown_timeout".
#[test]
fn a_clean_drain_after_a_reload_that_cut_requests_says_drained() {
    let slow = Backend::slow("slow", Duration::from_secs(30)).unwrap();
    let dir = TempDir::new().unwrap();
    let file = dir.path().join("upkeep.toml");
    let log = dir.path().join("access.log").to_string_lossy().into_owned();
    let listen = common::free_local_addr();
    let text = config_text(&listen, &[slow.addr().to_string()], &log);
    std::fs::write(&file, &text).unwrap();
    let mut up = Upkeep::run("info", &["--config", file.to_str().unwrap()]);
    let listen = up.listen();
    let mut c = Client::connect(&listen).unwrap();
    c.send(&client::get("/stuck")).unwrap();
    assert!(slow.wait_until(TIMEOUT, |b| b.requests() >= 1));
    // The same file again: a new generation; the old worker drains and is cut after 1 s.
    up.signal("HUP");
    up.expect(&["reloaded"]);
    up.expect(&["aborting 1 requests in progress"]);
    up.signal("TERM");
    assert_eq!(up.wait_exit(), 0);
    assert!(
        up.seen.iter().any(|l| l.contains("drained; exiting")),
        "nothing was in flight at the drain: {:#?}",
        up.seen
    );
}

/// A pooled connection the server closed just as it was reused (the keepalive race) is
/// re-sent on a fresh one: routine, "not a sign of ill health" — no warning for it.
#[test]
fn a_keepalive_race_retried_fresh_is_not_a_warning() {
    let b = upkeep_testkit::backend::Backend::builder()
        .behaviour(upkeep_testkit::backend::Behaviour::CloseReused)
        .start()
        .unwrap();
    let mut up = Upkeep::quick("info", &[b.addr().to_string()]);
    let listen = up.listen();
    let mut c = Client::connect(&listen).unwrap();
    for _ in 0..3 {
        assert_eq!(c.get("/r").unwrap().status, 200);
    }
    let lines = up.stop_and_parse();
    let warnings: Vec<_> = lines.iter().filter(|(l, _, _)| l != "INFO ").collect();
    assert!(warnings.is_empty(), "{warnings:#?}");
}

/// A server taken out of use by its state (an admin drain) is logged as that, not as passive
/// health, and once for the process: every worker sees the change, one says it (audit: each of
/// two workers logged "marked down: 1 failures (max_fails)" for a drain).
#[test]
fn a_drained_server_is_logged_once_with_its_reason() {
    let a = Backend::identify("a").unwrap();
    let b = Backend::identify("b").unwrap();
    let dir = TempDir::new().unwrap();
    let file = dir.path().join("upkeep.toml");
    std::fs::write(
        &file,
        format!(
            "workers = 2\nadmin = \"127.0.0.1:0\"\n[[listen]]\naddr = \"127.0.0.1:0\"\n[[upstream]]\nname = \"app\"\nservers = [\"{}\", \"{}\"]\n",
            a.addr(),
            b.addr()
        ),
    )
    .unwrap();
    let mut up = Upkeep::run("info", &["--config", file.to_str().unwrap()]);
    let listen = up.listen();
    let admin = up.admin();
    let post = |path: &str| {
        let mut c = Client::connect(&admin).unwrap();
        let r = c
            .request(format!("POST {path} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes())
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    };
    post("/upstreams/app/servers/0/drain");
    let line = up.expect(&["taken out of use: state drain"]);
    assert!(
        line.contains(&a.addr().to_string()) && line.contains("WARN"),
        "{line}"
    );
    // Both workers wake and look again (requests on new connections reach either; a look
    // happens at most once a second per worker).
    let deadline = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < deadline {
        assert_eq!(
            Client::connect(&listen).unwrap().get("/").unwrap().status,
            200
        );
        assert_eq!(get_text(&admin, "/metrics").0, 200);
        std::thread::sleep(Duration::from_millis(100));
    }
    post("/upstreams/app/servers/0/up");
    up.expect(&["marked up again", &a.addr().to_string()]);
    let deadline = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < deadline {
        assert_eq!(
            Client::connect(&listen).unwrap().get("/").unwrap().status,
            200
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let lines = up.stop_and_parse();
    let count = |what: &str| lines.iter().filter(|(_, _, l)| l.contains(what)).count();
    assert_eq!(count("taken out of use"), 1, "{lines:#?}");
    assert_eq!(count("marked up again"), 1, "{lines:#?}");
    assert_eq!(
        count("max_fails"),
        0,
        "a drain is not passive health: {lines:#?}"
    );
}
