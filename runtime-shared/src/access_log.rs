//! The access log: one line per exchange, nginx `combined`-like plus upstream fields, formatted
//! by the worker into its own buffer and written when the runtime flushes it — once per
//! event-loop pass (no `log` facade, no lock shared between workers; `O_APPEND` keeps lines from
//! different workers whole).
//!
//! ```text
//! 127.0.0.1 - - [22/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 612 upstream=127.0.0.1:9001 reused=1 response=0.001 total=0.002
//! ```

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use upkeep_core::Config;

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
}

/// A worker's access log.
#[derive(Debug)]
pub struct AccessLog {
    sink: Sink,
    buf: Vec<u8>,
    /// `[time_local]` text of the second `stamp_second`, reformatted once per second.
    stamp: String,
    stamp_second: u64,
}

impl AccessLog {
    /// Opens `target`: `-` (stdout), `stderr`, or a file path (appended to, created if missing).
    pub fn open(target: &str) -> io::Result<AccessLog> {
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
        let second = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
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
        for &c in e.request {
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
        if !e.request.is_empty() {
            let _ = write!(b, " {}", e.version);
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
        let _ = writeln!(b, " total={:.3}", e.total);
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
    format!(
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
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
        });
        let line = String::from_utf8(std::mem::take(&mut log.buf)).unwrap();
        assert!(line.starts_with("10.0.0.1 - - ["), "{line}");
        assert!(
            line.ends_with(
                "] \"GET /\\x22x HTTP/1.1\" 200 12 upstream=127.0.0.1:9001 reused=1 response=0.002 total=0.250\n"
            ),
            "{line}"
        );
    }
}
