//! Pure string parsers for durations, sizes and addresses (shared with the runtimes' CLIs).

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use core::str::FromStr;
use core::time::Duration;

use super::Address;

/// The units [`parse_duration`] accepts, with their length in milliseconds.
const DURATION_UNITS: [(&str, u64); 5] = [
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// Parses a duration with units, nginx style: `250ms`, `10s`, `5m`, `1h`, `1d`, or a sequence
/// of such parts in any order such as `1m30s` (parts are added).
///
/// A unit is required (`"10"` is rejected: is that seconds or milliseconds?), only non-negative
/// integers are accepted, no spaces, and the total must fit in `u64` nanoseconds (about 584 years)
/// so that [`Time`](crate::Time) arithmetic stays exact. `0s` is accepted here; [`Config::validate`]
/// rejects zero where a timeout must be positive.
///
/// [`Config::validate`]: super::Config::validate
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const HINT: &str = "expected a duration such as \"250ms\", \"10s\", \"5m\", \"1h\" or \"1d\"";
    if s.is_empty() {
        return Err(format!("empty duration: {HINT}"));
    }
    if s.starts_with('-') {
        return Err(format!("negative duration {s:?} is not allowed"));
    }
    let mut rest = s;
    let mut total_ms: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("invalid duration {s:?}: {HINT}"));
        }
        let (number, after) = rest.split_at(digits);
        let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, after) = after.split_at(unit_len);
        if unit.is_empty() {
            return if after.is_empty() {
                Err(format!(
                    "duration {s:?} has no unit: write e.g. \"{number}s\" or \"{number}ms\""
                ))
            } else {
                Err(format!("invalid duration {s:?}: {HINT}"))
            };
        }
        let Some(&(_, unit_ms)) = DURATION_UNITS.iter().find(|(u, _)| *u == unit) else {
            return Err(format!(
                "unknown unit {unit:?} in duration {s:?}: use ms, s, m, h or d"
            ));
        };
        let too_large = || format!("duration {s:?} is too large");
        let n: u64 = number.parse().map_err(|_| too_large())?;
        let part = n.checked_mul(unit_ms).ok_or_else(too_large)?;
        total_ms = total_ms.checked_add(part).ok_or_else(too_large)?;
        rest = after;
    }
    if total_ms.checked_mul(1_000_000).is_none() {
        return Err(format!("duration {s:?} is too large"));
    }
    Ok(Duration::from_millis(total_ms))
}

/// Writes a duration the way [`parse_duration`] reads it, in the largest unit up to hours that
/// divides it exactly — except that a minute or 90 seconds stay in seconds, as nginx writes them
/// (`"1h"`, `"5m"`, `"60s"`, `"90s"`, `"250ms"`, `"0s"`); below a millisecond it rounds down
/// (the file format's resolution).
///
/// ```
/// use core::time::Duration;
/// use upkeep_core::config::format_duration;
///
/// assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
/// assert_eq!(format_duration(Duration::from_secs(90)), "90s");
/// assert_eq!(format_duration(Duration::from_secs(60)), "60s");
/// assert_eq!(format_duration(Duration::from_secs(300)), "5m");
/// assert_eq!(format_duration(Duration::from_secs(86_400)), "24h");
/// assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
/// ```
pub fn format_duration(d: Duration) -> String {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return "0s".into();
    }
    let (unit, len) = DURATION_UNITS[..4]
        .iter()
        .rev()
        .filter(|(unit, _)| *unit != "m" || ms >= 120_000)
        .find(|(_, len)| ms % len == 0)
        .copied()
        .unwrap_or(DURATION_UNITS[0]);
    format!("{}{unit}", ms / len)
}

/// Parses a size in bytes, nginx style: `16384`, `16k`, `1m`, `1g` (binary multiples, case
/// insensitive). Plain integers are bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    if s.is_empty() {
        return Err("empty size: expected bytes such as \"16384\", \"16k\" or \"1m\"".into());
    }
    if s.starts_with('-') {
        return Err(format!("negative size {s:?} is not allowed"));
    }
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(format!(
            "invalid size {s:?}: expected bytes such as \"16384\", \"16k\" or \"1m\""
        ));
    }
    let (number, unit) = s.split_at(digits);
    let multiplier: u64 = match unit {
        "" => 1,
        "k" | "K" => 1 << 10,
        "m" | "M" => 1 << 20,
        "g" | "G" => 1 << 30,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in size {s:?}: use k, m or g (or plain bytes)"
            ));
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("size {s:?} is too large"))
}

const ADDRESS_FORMS: &str =
    "expected HOST:PORT (IPv4 literal or localhost), [IPV6]:PORT or unix:/path";

fn parse_port(port: &str, whole: &str) -> Result<u16, String> {
    if port.is_empty() {
        return Err(format!(
            "missing port in address {whole:?}: {ADDRESS_FORMS}"
        ));
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "invalid port {port:?} in address {whole:?}: must be a number 0-65535"
        ));
    }
    port.parse::<u16>()
        .map_err(|_| format!("port {port} in address {whole:?} is out of range (0-65535)"))
}

impl Address {
    /// Parses `HOST:PORT` (HOST an IPv4 literal or `localhost`, which means 127.0.0.1),
    /// `[V6]:PORT`, or `unix:/absolute/path`. The core does no name resolution. Port 0 is
    /// accepted here (a listener may want an ephemeral port); [`Config::validate`] rejects it for
    /// upstream servers.
    ///
    /// [`Config::validate`]: super::Config::validate
    pub fn parse(s: &str) -> Result<Address, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(format!("empty unix socket path in address {s:?}"));
            }
            if !path.starts_with('/') {
                return Err(format!(
                    "unix socket path {path:?} must be absolute (start with /)"
                ));
            }
            if path.contains('\0') {
                return Err(format!("unix socket path {path:?} contains a NUL byte"));
            }
            return Ok(Address::Unix(path.to_owned()));
        }
        if s.is_empty() {
            return Err(format!("empty address: {ADDRESS_FORMS}"));
        }
        if let Some(rest) = s.strip_prefix('[') {
            let Some((host, after)) = rest.split_once(']') else {
                return Err(format!("missing ']' in address {s:?}: {ADDRESS_FORMS}"));
            };
            let ip: Ipv6Addr = host
                .parse()
                .map_err(|_| format!("invalid IPv6 address {host:?} in address {s:?}"))?;
            let Some(port) = after.strip_prefix(':') else {
                return Err(format!("missing port in address {s:?}: {ADDRESS_FORMS}"));
            };
            let port = parse_port(port, s)?;
            return Ok(Address::Tcp(SocketAddr::new(IpAddr::V6(ip), port)));
        }
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(format!("missing port in address {s:?}: {ADDRESS_FORMS}"));
        };
        if host.contains(':') {
            return Err(format!(
                "IPv6 address in {s:?} must be written in brackets, e.g. \"[::1]:8080\""
            ));
        }
        if host.is_empty() {
            return Err(format!("missing host in address {s:?}: {ADDRESS_FORMS}"));
        }
        let ip = if host.eq_ignore_ascii_case("localhost") {
            Ipv4Addr::LOCALHOST
        } else {
            host.parse::<Ipv4Addr>().map_err(|_| {
                if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                    format!("invalid IPv4 address {host:?} in address {s:?}")
                } else {
                    format!(
                        "host {host:?} in address {s:?} is not an IP literal (names are not \
                         resolved; use an IP, localhost or unix:/path)"
                    )
                }
            })?
        };
        let port = parse_port(port, s)?;
        Ok(Address::Tcp(SocketAddr::new(IpAddr::V4(ip), port)))
    }
}

impl FromStr for Address {
    type Err = String;
    fn from_str(s: &str) -> Result<Address, String> {
        Address::parse(s)
    }
}

/// Writes the form [`Address::parse`] reads back: `127.0.0.1:80`, `[::1]:80`, `unix:/path`.
impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(addr) => write!(f, "{addr}"),
            Address::Unix(path) => write!(f, "unix:{path}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("250ms", Duration::from_millis(250)),
            ("0s", Duration::ZERO),
            ("10s", Duration::from_secs(10)),
            ("5m", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            ("1d", Duration::from_secs(86_400)),
            ("1m30s", Duration::from_secs(90)),
            ("1s500ms", Duration::from_millis(1500)),
        ];
        for (s, d) in ok {
            assert_eq!(parse_duration(s), Ok(d), "{s}");
        }
        let bad = [
            ("", "empty"),
            ("10", "no unit"),
            ("-1s", "negative"),
            ("1.5s", "invalid"),
            ("10 s", "invalid"),
            ("s", "invalid"),
            ("10parsecs", "unknown unit \"parsecs\""),
            ("10S", "unknown unit"),
            ("1s10", "no unit"),
            ("99999999999999999999s", "too large"),
            ("18446744073709551615ms", "too large"),
            ("300000d", "too large"),
        ];
        for (s, want) in bad {
            let err = parse_duration(s).unwrap_err();
            assert!(err.contains(want), "{s:?}: {err}");
        }
        // The largest accepted value fits u64 nanoseconds.
        assert!(parse_duration("200000d").is_ok());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("16384"), Ok(16384));
        assert_eq!(parse_size("16k"), Ok(16384));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        for (s, want) in [
            ("", "empty"),
            ("-1", "negative"),
            ("k", "invalid"),
            ("1kb", "unknown unit"),
            ("99999999999999999999", "too large"),
            ("17179869184g", "too large"),
        ] {
            let err = parse_size(s).unwrap_err();
            assert!(err.contains(want), "{s:?}: {err}");
        }
    }

    #[test]
    fn addresses() {
        let ok = [
            ("127.0.0.1:8080", "127.0.0.1:8080"),
            ("0.0.0.0:0", "0.0.0.0:0"),
            ("localhost:80", "127.0.0.1:80"),
            ("LocalHost:65535", "127.0.0.1:65535"),
            ("[::1]:8080", "[::1]:8080"),
            ("[2001:db8::1]:443", "[2001:db8::1]:443"),
            ("unix:/run/app.sock", "unix:/run/app.sock"),
        ];
        for (s, shown) in ok {
            let a = Address::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(a.to_string(), shown);
            // Display round-trips.
            assert_eq!(shown.parse::<Address>(), Ok(a));
        }
        assert_eq!(
            Address::parse("unix:/run/app.sock"),
            Ok(Address::Unix("/run/app.sock".into()))
        );
        let bad = [
            ("", "empty address"),
            ("127.0.0.1", "missing port"),
            ("127.0.0.1:", "missing port"),
            (":80", "missing host"),
            ("127.0.0.1:http", "invalid port"),
            ("127.0.0.1:+80", "invalid port"),
            ("127.0.0.1:65536", "out of range"),
            ("256.0.0.1:80", "invalid IPv4"),
            ("example.com:80", "not an IP literal"),
            ("::1:8080", "brackets"),
            ("[::1]", "missing port"),
            ("[::1]8080", "missing port"),
            ("[::1:8080", "missing ']'"),
            ("[127.0.0.1]:80", "invalid IPv6"),
            ("unix:", "empty unix socket path"),
            ("unix:run/app.sock", "absolute"),
        ];
        for (s, want) in bad {
            let err = Address::parse(s).unwrap_err();
            assert!(err.contains(want), "{s:?}: {err}");
        }
    }
}
