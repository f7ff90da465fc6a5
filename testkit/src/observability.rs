//! What both runtimes show operators, checked through real interfaces: access log lines in
//! each format (JSON parsed with serde_json, `combined` matched with nginx's regex), every
//! upstream attempt and the request id in them, a client abort logged as 499, and `/metrics`
//! parsed by a Prometheus text parser (`prometheus-parse`). One `pub fn` per scenario taking the
//! runtime's [`Start`]; [`observability_tests!`](crate::observability_tests) makes the tests.

use std::time::Duration;

use prometheus_parse::{Sample, Scrape, Value};
use upkeep_core::config::AccessLogFormat;
use upkeep_core::{Address, Config};

use crate::Start;
use crate::backend::{Backend, Behaviour, closed_port};
use crate::client::{self, Client};
use crate::scenarios::{config, log_lines, with_access_log, with_admin};
use crate::wire::TempDir;

/// nginx's `combined`: `$remote_addr - $remote_user [$time_local] "$request" $status
/// $body_bytes_sent "$http_referer" "$http_user_agent"`.
pub const COMBINED: &str = r#"^(\S+) - (\S+) \[([^\]]+)\] "((?:[^"\\]|\\.)*)" (\d{3}) (\d+) "((?:[^"\\]|\\.)*)" "((?:[^"\\]|\\.)*)"$"#;

/// Makes `#[test]`s of the observability scenarios for a runtime's `start` function.
#[macro_export]
macro_rules! observability_tests {
    ($start:expr) => {
        $crate::observability_tests!(@each $start;
            access_log_json_names_every_attempt,
            access_log_combined_is_nginx_combined,
            a_client_that_gives_up_is_logged_499,
            a_response_the_server_cuts_is_logged_with_its_failure,
            metrics_parse_per_server,
        );
    };
    (@each $start:expr; $($name:ident),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::observability::$name($start);
            }
        )+
    };
}

fn started(start: Start, config: Config) -> (Box<dyn crate::RunningProxy>, Address) {
    let p = start(config);
    let addr = p.listen_addrs()[0].clone();
    (p, addr)
}

fn json_lines(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    log_lines(path, n)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Two servers, the first down: one of two requests tries it, fails to connect and is retried
/// on the second; its JSON line lists both attempts. The request id is the client's own when it
/// sent one, else a generated one — forwarded to the backend either way.
pub fn access_log_json_names_every_attempt(start: Start) {
    let b = Backend::identify("b").unwrap();
    let dir = TempDir::new().unwrap();
    let (mut cfg, path) = with_access_log(config(vec![closed_port(), b.addr()]), &dir);
    cfg.runtime.access_log_format = AccessLogFormat::Json;
    let (p, addr) = started(start, cfg);
    let mut c = Client::connect(&addr).unwrap();
    let r = c
        .request(b"GET /one HTTP/1.1\r\nHost: shop\r\nReferer: http://r/\r\nUser-Agent: t \"1\"\r\nX-Request-Id: my-id-1\r\n\r\n")
        .unwrap();
    assert_eq!(r.status, 200);
    let r = c.get("/two").unwrap();
    assert_eq!(r.status, 200);
    let lines = json_lines(&path, 2);
    let one = &lines[0];
    assert_eq!(one["request"], "GET /one HTTP/1.1");
    assert_eq!(one["status"], 200);
    assert_eq!(one["host"], "shop");
    assert_eq!(one["referer"], "http://r/");
    assert_eq!(one["user_agent"], "t \"1\"");
    assert_eq!(one["request_id"], "my-id-1");
    assert_eq!(one["end"], "complete");
    assert_eq!(
        one["body_bytes_sent"],
        "b GET /one".len(),
        "the body only: {one}"
    );
    assert!(one["bytes_sent"].as_u64().unwrap() > "b GET /one".len() as u64);
    let two = &lines[1];
    let generated = two["request_id"].as_str().unwrap();
    assert!(
        generated.len() == 32 && generated.chars().all(|c| c.is_ascii_hexdigit()),
        "{two}"
    );
    let seen: Vec<String> = b
        .log()
        .iter()
        .filter_map(|r| r.header("x-request-id").map(String::from))
        .collect();
    assert_eq!(seen, ["my-id-1", generated], "ids forwarded upstream");
    let retried: Vec<_> = lines
        .iter()
        .filter(|l| l["upstreams"].as_array().unwrap().len() == 2)
        .collect();
    assert_eq!(retried.len(), 1, "{lines:#?}");
    let tries = retried[0]["upstreams"].as_array().unwrap();
    assert_eq!(tries[0]["failure"], "connect_failed", "{tries:?}");
    assert_eq!(tries[0]["status"], serde_json::Value::Null);
    assert_eq!(tries[1]["addr"], b.addr().to_string());
    assert_eq!(tries[1]["status"], 200);
    for t in ["connect_time", "header_time", "response_time"] {
        assert!(tries[1][t].as_f64().unwrap() >= 0.0, "{t}: {tries:?}");
    }
    p.stop();
}

/// `combined` lines match nginx's format exactly; `$body_bytes_sent` counts the body only, for
/// upstream answers and our own (a 400 here).
pub fn access_log_combined_is_nginx_combined(start: Start) {
    let b = Backend::identify("c").unwrap();
    let dir = TempDir::new().unwrap();
    let (mut cfg, path) = with_access_log(config(vec![b.addr()]), &dir);
    cfg.runtime.access_log_format = AccessLogFormat::Combined;
    let (p, addr) = started(start, cfg);
    let mut c = Client::connect(&addr).unwrap();
    let r = c
        .request(b"GET /x?y=1 HTTP/1.1\r\nHost: a\r\nReferer: http://ref/\r\nUser-Agent: curl/8.5\r\n\r\n")
        .unwrap();
    assert_eq!(r.status, 200);
    let bad = client::one_shot(
        &addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    )
    .unwrap();
    assert_eq!(bad.status, 400);
    let re = regex::Regex::new(COMBINED).unwrap();
    let lines = log_lines(&path, 2);
    let ok = re
        .captures(&lines[0])
        .unwrap_or_else(|| panic!("{}", lines[0]));
    assert_eq!(&ok[1], "127.0.0.1");
    assert_eq!(&ok[4], "GET /x?y=1 HTTP/1.1");
    assert_eq!(&ok[5], "200");
    assert_eq!(ok[6].parse::<usize>().unwrap(), "c GET /x?y=1".len());
    assert_eq!(&ok[7], "http://ref/");
    assert_eq!(&ok[8], "curl/8.5");
    let refused = re
        .captures(&lines[1])
        .unwrap_or_else(|| panic!("{}", lines[1]));
    assert_eq!(&refused[5], "400");
    assert_eq!(refused[6].parse::<usize>().unwrap(), bad.body.len());
    assert_eq!((&refused[7], &refused[8]), ("-", "-"));
    p.stop();
}

/// A client that gives up (resets) before its (slow) response is logged with nginx's 499. (A
/// FIN alone is a half-close: the response is still owed and sent.)
pub fn a_client_that_gives_up_is_logged_499(start: Start) {
    let b = Backend::slow("slow", Duration::from_secs(5)).unwrap();
    let dir = TempDir::new().unwrap();
    let (mut cfg, path) = with_access_log(config(vec![b.addr()]), &dir);
    cfg.runtime.access_log_format = AccessLogFormat::Json;
    let (p, addr) = started(start, cfg);
    let mut c = client::in_flight(&addr, "/gone", &b);
    if let crate::wire::Stream::Tcp(s) = c.stream() {
        // Linger 0: the close is a reset.
        socket2::SockRef::from(&*s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    }
    drop(c);
    let line = &json_lines(&path, 1)[0];
    assert_eq!(line["status"], 499, "{line}");
    assert_eq!(line["end"], "client_aborted");
    assert_eq!(line["request"], "GET /gone HTTP/1.1");
    p.stop();
}

/// A server that stalls after its response head: the client's response is cut at the read
/// timeout, and the access log says so — the server's status, the body bytes that went out,
/// `end` `upstream_failed` and the attempt's `read_timeout` (not a client abort, not missing).
pub fn a_response_the_server_cuts_is_logged_with_its_failure(start: Start) {
    let b = Backend::builder()
        .behaviour(Behaviour::Raw(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789".to_vec(),
        ))
        .start()
        .unwrap();
    let dir = TempDir::new().unwrap();
    let (mut cfg, path) = with_access_log(config(vec![b.addr()]), &dir);
    cfg.runtime.access_log_format = AccessLogFormat::Json;
    cfg.upstreams[0].read_timeout = Duration::from_millis(300);
    let (p, addr) = started(start, cfg);
    let mut c = Client::connect(&addr).unwrap();
    c.send(&client::get("/cut")).unwrap();
    let line = &json_lines(&path, 1)[0];
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["end"], "upstream_failed", "{line}");
    assert_eq!(line["body_bytes_sent"], 10, "{line}");
    assert_eq!(line["upstreams"][0]["failure"], "read_timeout", "{line}");
    assert_eq!(line["upstreams"][0]["status"], 200, "{line}");
    drop(c);
    p.stop();
}

/// The value of the sample named `metric` whose labels include `labels`.
fn sample<'a>(scrape: &'a Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
}

fn number(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    match sample(scrape, metric, labels).map(|s| &s.value) {
        Some(Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v)) => *v,
        other => panic!("{metric}{labels:?}: {other:?}"),
    }
}

/// Observations in a histogram (its `+Inf` bucket).
fn observations(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    match sample(scrape, metric, labels).map(|s| &s.value) {
        Some(Value::Histogram(buckets)) => {
            let inf = buckets.iter().find(|b| b.less_than.is_infinite());
            inf.map(|b| b.count)
                .unwrap_or_else(|| panic!("{metric}: no +Inf"))
        }
        other => panic!("{metric}{labels:?}: {other:?}"),
    }
}

/// `/metrics` parses, and says per server what was sent: three answered requests, our own 400
/// kept out of the upstream latency, connect and header times observed, nothing in flight;
/// build and process facts present.
pub fn metrics_parse_per_server(start: Start) {
    let b = Backend::identify("m").unwrap();
    let (p, addr) = started(start, with_admin(config(vec![b.addr()])));
    let admin = p.admin_addr().unwrap();
    let mut c = Client::connect(&addr).unwrap();
    for _ in 0..3 {
        assert_eq!(c.get("/m").unwrap().status, 200);
    }
    let bad = client::one_shot(
        &addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    )
    .unwrap();
    assert_eq!(bad.status, 400);
    let (status, text) = client::get_text(&admin, "/metrics");
    assert_eq!(status, 200);
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let server = b.addr().to_string();
    let at = [("upstream", "default"), ("server", server.as_str())];
    let with = |extra: (&'static str, &'static str)| {
        let mut v = at.to_vec();
        v.push(extra);
        v
    };
    assert_eq!(
        number(
            &scrape,
            "upkeep_upstream_responses_total",
            &with(("code", "2xx"))
        ),
        3.0
    );
    assert_eq!(
        number(
            &scrape,
            "upkeep_upstream_responses_total",
            &with(("code", "5xx"))
        ),
        0.0
    );
    assert_eq!(
        number(&scrape, "upkeep_requests_total", &[("code", "400")]),
        1.0
    );
    assert_eq!(
        observations(&scrape, "upkeep_upstream_request_duration_seconds", &at),
        3.0,
        "our 400 is not an upstream latency"
    );
    assert_eq!(
        observations(&scrape, "upkeep_upstream_header_duration_seconds", &at),
        3.0
    );
    assert!(observations(&scrape, "upkeep_upstream_connect_duration_seconds", &at) >= 1.0);
    assert_eq!(
        number(
            &scrape,
            "upkeep_upstream_timeouts_total",
            &with(("kind", "read_timeout"))
        ),
        0.0
    );
    assert!(number(&scrape, "upkeep_upstream_received_bytes_total", &at) > 0.0);
    assert_eq!(
        number(&scrape, "upkeep_upstream_requests_in_flight", &at),
        0.0
    );
    assert_eq!(number(&scrape, "upkeep_upstream_up", &at), 1.0);
    assert_eq!(number(&scrape, "upkeep_build_info", &[]), 1.0);
    assert!(number(&scrape, "process_resident_memory_bytes", &[]) > 0.0);
    assert!(number(&scrape, "process_open_fds", &[]) > 0.0);
    assert!(number(&scrape, "process_start_time_seconds", &[]) > 1.6e9);
    assert_eq!(
        number(&scrape, "upkeep_reloads_total", &[("result", "ok")]),
        0.0
    );
    p.stop();
}
