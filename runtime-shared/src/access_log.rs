//! The access log: one line per exchange, formatted by the worker into its own buffer and
//! written when the runtime flushes it — once per event-loop pass (no `log` facade, no lock
//! shared between workers; `O_APPEND` keeps lines from different workers whole). Three formats
//! ([`AccessLogFormat`]; docs/observability.md describes every field):
//!
//! ```text
//! upkeep:   127.0.0.1 - - [22/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 612 upstream=127.0.0.1:9001 reused=1 response=0.001 total=0.002 body=512 host=shop request_id=0000…01 upstreams=127.0.0.1:9001/200/0.000/0.001/0.002 end=complete
//! combined: 127.0.0.1 - - [22/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 512 "http://ref/" "curl/8.5"
//! json:     {"time":"2026-11-22T10:00:00.123Z","remote_addr":"127.0.0.1","request":"GET / HTTP/1.1",...}
//! ```

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use upkeep_core::Config;
use upkeep_core::config::AccessLogFormat;

/// `runtime.access_log` of `config` as a sink name, with `"off"` (and an empty value) meaning no
/// access log.
pub fn target(config: &Config) -> Option<&str> {
    config
        .runtime
        .access_log
        .as_deref()
        .filter(|t| *t != "off" && !t.is_empty())
}

/// Where lines go.
#[derive(Debug)]
enum Sink {
    Stdout,
    Stderr,
    File { path: String, file: File },
}

/// What one line says.
#[derive(Debug)]
pub struct Entry<'a> {
    /// The client's address (`None` on a Unix socket: logged as `unix:`).
    pub client: Option<IpAddr>,
    /// `METHOD target` as received (empty when the request could not be parsed).
    pub request: &'a [u8],
    /// `HTTP/1.0` or `HTTP/1.1`.
    pub version: &'a str,
    /// Status sent to the client.
    pub status: u16,
    /// Bytes sent to the client (heads and body).
    pub bytes_sent: u64,
    /// The server that answered, if any.
    pub upstream: Option<String>,
    /// Whether the answer came over a reused pooled connection.
    pub reused: bool,
    /// Seconds until the response head was ready, if one came from upstream.
    pub response: Option<f64>,
    /// Seconds from the request's first byte to the end of the response.
    pub total: f64,
    /// Response body bytes sent (nginx `$body_bytes_sent`).
    pub body_bytes_sent: u64,
    /// `Host`, `Referer`, `User-Agent` and the request id as received / generated (empty:
    /// absent).
    pub host: &'a [u8],
    /// `Referer`.
    pub referer: &'a [u8],
    /// `User-Agent`.
    pub user_agent: &'a [u8],
    /// The request id (the client's `X-Request-Id` or the one generated and forwarded).
    pub request_id: &'a [u8],
    /// Every upstream attempt, in order.
    pub tries: Vec<Tried>,
    /// How the exchange ended: `complete`, `client_aborted`, `shutdown`, `upstream_failed`.
    pub end: &'static str,
}

/// One upstream attempt as logged (nginx `$upstream_*` variables, one per server tried).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Tried {
    /// The server's address.
    pub addr: String,
    /// Its response status (`None`: none arrived).
    pub status: Option<u16>,
    /// Seconds to a ready connection (0 for a pooled one).
    pub connect_time: Option<f64>,
    /// Seconds to the response head.
    pub header_time: Option<f64>,
    /// Seconds the attempt lasted.
    pub response_time: Option<f64>,
    /// Over a pooled connection.
    pub reused: bool,
    /// Why it failed (the next attempt, if any, is a retry for this reason).
    pub failure: Option<&'static str>,
}

/// A worker's access log.
#[derive(Debug)]
pub struct AccessLog {
    sink: Sink,
    format: AccessLogFormat,
    buf: Vec<u8>,
    /// `[time_local]` text of the second `stamp_second`, reformatted once per second.
    stamp: String,
    stamp_second: u64,
}

impl AccessLog {
    /// Opens `target` in the default format (see [`AccessLog::open_as`]).
    pub fn open(target: &str) -> io::Result<AccessLog> {
        AccessLog::open_as(target, AccessLogFormat::default())
    }

    /// Opens `target`, writing `format`: `-` (stdout), `stderr`, or a file path (appended to,
    /// created if missing).
    pub fn open_as(target: &str, format: AccessLogFormat) -> io::Result<AccessLog> {
        let sink = match target {
            "-" | "stdout" => Sink::Stdout,
            "stderr" => Sink::Stderr,
            path => Sink::File {
                path: path.to_string(),
                file: open_append(path)?,
            },
        };
        Ok(AccessLog {
            sink,
            format,
            buf: Vec::with_capacity(16 * 1024),
            stamp: String::new(),
            stamp_second: u64::MAX,
        })
    }

    /// Reopens a log file (after logrotate moved it away; SIGUSR1).
    pub fn reopen(&mut self) {
        self.flush();
        if let Sink::File { path, file } = &mut self.sink {
            match open_append(path) {
                Ok(f) => *file = f,
                Err(e) => log::error!("cannot reopen the {e}"),
            }
        }
    }

    /// Formats one line into the buffer.
    pub fn record(&mut self, e: &Entry<'_>) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let second = now.as_secs();
        if self.format == AccessLogFormat::Json {
            json_line(&mut self.buf, e, second, now.subsec_millis());
            return;
        }
        if second != self.stamp_second {
            self.stamp = format_time(second);
            self.stamp_second = second;
        }
        let b = &mut self.buf;
        match e.client {
            Some(ip) => {
                let _ = write!(b, "{ip}");
            }
            None => b.extend_from_slice(b"unix:"),
        }
        let _ = write!(b, " - - [{}] \"", self.stamp);
        // The request line is client data: escape what would break the line format.
        escaped(b, e.request);
        if !e.request.is_empty() {
            let _ = write!(b, " {}", e.version);
        }
        if self.format == AccessLogFormat::Combined {
            let _ = write!(b, "\" {} {} \"", e.status, e.body_bytes_sent);
            or_dash(b, e.referer);
            b.extend_from_slice(b"\" \"");
            or_dash(b, e.user_agent);
            b.extend_from_slice(b"\"\n");
            return;
        }
        let _ = write!(b, "\" {} {}", e.status, e.bytes_sent);
        match &e.upstream {
            Some(u) => {
                let _ = write!(b, " upstream={u}");
            }
            None => b.extend_from_slice(b" upstream=-"),
        }
        let _ = write!(b, " reused={}", u8::from(e.reused));
        match e.response {
            Some(r) => {
                let _ = write!(b, " response={r:.3}");
            }
            None => b.extend_from_slice(b" response=-"),
        }
        let _ = write!(b, " total={:.3} body={} host=", e.total, e.body_bytes_sent);
        or_dash(b, e.host);
        b.extend_from_slice(b" request_id=");
        or_dash(b, e.request_id);
        b.extend_from_slice(b" upstreams=");
        if e.tries.is_empty() {
            b.push(b'-');
        }
        let secs = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.3}"));
        for (i, t) in e.tries.iter().enumerate() {
            if i > 0 {
                b.push(b',');
            }
            // ADDR/STATUS/CONNECT/HEADER/RESPONSE, a failure in place of the status.
            let status = match (t.failure, t.status) {
                (Some(f), _) => f.to_string(),
                (None, Some(s)) => s.to_string(),
                (None, None) => "-".into(),
            };
            let _ = write!(
                b,
                "{}/{status}/{}/{}/{}",
                t.addr,
                secs(t.connect_time),
                secs(t.header_time),
                secs(t.response_time)
            );
        }
        let _ = writeln!(b, " end={}", e.end);
    }

    /// Writes buffered lines (once per loop pass; nothing to do when no line is buffered).
    pub fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let r = match &mut self.sink {
            Sink::Stdout => io::stdout().lock().write_all(&self.buf),
            Sink::Stderr => io::stderr().lock().write_all(&self.buf),
            Sink::File { file, .. } => file.write_all(&self.buf),
        };
        if let Err(e) = r {
            log::error!("access log: write failed: {e}");
        }
        self.buf.clear();
    }
}

/// Client bytes in a quoted field: `"`, `\\` and anything not printable ASCII as `\\xHH`
/// (nginx's escaping), so a line cannot be broken or forged.
fn escaped(b: &mut Vec<u8>, bytes: &[u8]) {
    for &c in bytes {
        match c {
            b'"' | b'\\' => {
                let _ = write!(b, "\\x{c:02X}");
            }
            0x20..=0x7e => b.push(c),
            _ => {
                let _ = write!(b, "\\x{c:02X}");
            }
        }
    }
}

/// `bytes` escaped, or `-` when empty (nginx's empty variable).
fn or_dash(b: &mut Vec<u8>, bytes: &[u8]) {
    if bytes.is_empty() {
        b.push(b'-');
    } else {
        escaped(b, bytes);
    }
}

/// The JSON line: every field named; client bytes as (lossy) UTF-8 strings, escaped by
/// serde_json.
#[derive(Serialize)]
struct JsonLine<'a> {
    time: String,
    remote_addr: String,
    request: String,
    status: u16,
    body_bytes_sent: u64,
    bytes_sent: u64,
    request_time: f64,
    host: std::borrow::Cow<'a, str>,
    referer: std::borrow::Cow<'a, str>,
    user_agent: std::borrow::Cow<'a, str>,
    request_id: std::borrow::Cow<'a, str>,
    upstream_reused: bool,
    upstreams: &'a [Tried],
    end: &'static str,
}

fn json_line(b: &mut Vec<u8>, e: &Entry<'_>, second: u64, millis: u32) {
    let (y, mo, d, h, mi, s) = civil(second);
    let request = if e.request.is_empty() {
        String::new()
    } else {
        format!("{} {}", String::from_utf8_lossy(e.request), e.version)
    };
    let line = JsonLine {
        time: format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{millis:03}Z"),
        remote_addr: e.client.map_or_else(|| "unix:".into(), |ip| ip.to_string()),
        request,
        status: e.status,
        body_bytes_sent: e.body_bytes_sent,
        bytes_sent: e.bytes_sent,
        request_time: (e.total * 1000.0).round() / 1000.0,
        host: String::from_utf8_lossy(e.host),
        referer: String::from_utf8_lossy(e.referer),
        user_agent: String::from_utf8_lossy(e.user_agent),
        request_id: String::from_utf8_lossy(e.request_id),
        upstream_reused: e.reused,
        upstreams: &e.tries,
        end: e.end,
    };
    if serde_json::to_writer(&mut *b, &line).is_ok() {
        b.push(b'\n');
    }
}

fn open_append(path: &str) -> io::Result<File> {
    // The path goes into the error: "No such file or directory" alone does not say which file
    // (this error ends `upkeep run` at start-up).
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("access log {path}: {e}")))
}

/// `22/Nov/2026:10:00:00 +0000` for `secs` since the Unix epoch (UTC: no time zone database).
fn format_time(secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (year, month, day, h, m, s) = civil(secs);
    format!(
        "{day:02}/{}/{year}:{h:02}:{m:02}:{s:02} +0000",
        MONTHS[(month - 1) as usize],
    )
}

/// (year, month, day, hour, minute, second) in UTC of `secs` since the Unix epoch. Hand-written
/// (Howard Hinnant's `civil_from_days`): a date crate for two formats is not worth its weight.
fn civil(secs: u64) -> (i64, i64, i64, u64, u64, u64) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_format_matches_nginx() {
        assert_eq!(format_time(0), "01/Jan/1970:00:00:00 +0000");
        // 2000-10-10T13:55:36Z
        assert_eq!(format_time(971_186_136), "10/Oct/2000:13:55:36 +0000");
        // 2024-02-29T23:59:59Z (leap day)
        assert_eq!(format_time(1_709_251_199), "29/Feb/2024:23:59:59 +0000");
    }

    fn entry() -> Entry<'static> {
        Entry {
            client: Some("10.0.0.1".parse().unwrap()),
            request: b"GET /a\"b",
            version: "HTTP/1.1",
            status: 200,
            bytes_sent: 120,
            upstream: Some("127.0.0.1:9001".into()),
            reused: false,
            response: Some(0.002),
            total: 0.004,
            body_bytes_sent: 12,
            host: b"shop",
            referer: b"",
            user_agent: b"curl/8 \"x\"",
            request_id: b"abc",
            tries: vec![
                Tried {
                    addr: "127.0.0.1:9002".into(),
                    failure: Some("connect_failed"),
                    connect_time: None,
                    response_time: Some(0.001),
                    ..Tried::default()
                },
                Tried {
                    addr: "127.0.0.1:9001".into(),
                    status: Some(200),
                    connect_time: Some(0.0),
                    header_time: Some(0.002),
                    response_time: Some(0.003),
                    ..Tried::default()
                },
            ],
            end: "complete",
        }
    }

    fn line(format: AccessLogFormat, e: &Entry<'_>) -> String {
        let mut log = AccessLog::open_as("-", format).unwrap();
        log.record(e);
        String::from_utf8(std::mem::take(&mut log.buf)).unwrap()
    }

    #[test]
    fn combined_is_nginx_combined() {
        let l = line(AccessLogFormat::Combined, &entry());
        assert!(l.starts_with("10.0.0.1 - - ["), "{l}");
        assert!(
            l.ends_with("] \"GET /a\\x22b HTTP/1.1\" 200 12 \"-\" \"curl/8 \\x22x\\x22\"\n"),
            "{l}"
        );
    }

    #[test]
    fn upkeep_format_names_every_attempt() {
        let l = line(AccessLogFormat::Upkeep, &entry());
        assert!(
            l.ends_with(" total=0.004 body=12 host=shop request_id=abc upstreams=127.0.0.1:9002/connect_failed/-/-/0.001,127.0.0.1:9001/200/0.000/0.002/0.003 end=complete\n"),
            "{l}"
        );
    }

    #[test]
    fn json_is_one_object_per_line() {
        let l = line(AccessLogFormat::Json, &entry());
        assert!(
            l.ends_with("}\n") && !l[..l.len() - 1].contains('\n'),
            "{l}"
        );
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["request"], "GET /a\"b HTTP/1.1");
        assert_eq!(v["user_agent"], "curl/8 \"x\"");
        assert_eq!(v["body_bytes_sent"], 12);
        assert_eq!(v["upstreams"][0]["failure"], "connect_failed");
        assert_eq!(v["upstreams"][1]["status"], 200);
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn line_format_escapes_the_request_line() {
        let mut log = AccessLog::open("-").unwrap();
        log.record(&Entry {
            client: Some("10.0.0.1".parse().unwrap()),
            request: b"GET /\"x",
            version: "HTTP/1.1",
            status: 200,
            bytes_sent: 12,
            upstream: Some("127.0.0.1:9001".into()),
            reused: true,
            response: Some(0.0015),
            total: 0.25,
            ..entry()
        });
        let line = String::from_utf8(std::mem::take(&mut log.buf)).unwrap();
        assert!(line.starts_with("10.0.0.1 - - ["), "{line}");
        assert!(
            // The upstream fields the issue asked for follow `total` now (issue 13).
            line.contains(
                "] \"GET /\\x22x HTTP/1.1\" 200 12 upstream=127.0.0.1:9001 reused=1 response=0.002 total=0.250 "
            ),
            "{line}"
        );
    }
}
