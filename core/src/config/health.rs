//! Active health checks of a group's servers (`health_check = { ... }`): what to ask, how often,
//! how long to wait, how many results in a row flip the verdict, and which statuses pass.
//!
//! Names follow HAProxy (`inter` → `interval`, `fall`, `rise`, `timeout check` → `timeout`,
//! `http-check expect status`) and nginx Plus (`health_check interval= fails= passes=
//! uri=`) where they agree; see `docs/health.md` for the behaviour.

use core::fmt;
use core::time::Duration;

use super::ConfigError;
use super::parse::format_duration;

/// Which response statuses pass a check: one status (`"200"`) or an inclusive range
/// (`"200-399"`). The default, `200-399`, is HAProxy's `httpchk` (2xx and 3xx pass).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpectStatus {
    /// Lowest passing status.
    pub low: u16,
    /// Highest passing status (inclusive).
    pub high: u16,
}

impl Default for ExpectStatus {
    fn default() -> ExpectStatus {
        ExpectStatus {
            low: 200,
            high: 399,
        }
    }
}

impl ExpectStatus {
    /// Parses `"200"` or `"200-399"` (statuses 100..=599, low ≤ high).
    pub fn parse(s: &str) -> Result<ExpectStatus, String> {
        let bad = || {
            format!(
                "expect {s:?}: write one status (\"200\") or an inclusive range (\"200-399\") \
                 of statuses 100 to 599"
            )
        };
        let status = |t: &str| {
            let t = t.trim();
            // Digits only: `u16::from_str` would take a sign ("+200").
            t.bytes().all(|b| b.is_ascii_digit()).then_some(())?;
            t.parse::<u16>().ok().filter(|n| (100..=599).contains(n))
        };
        let (low, high) = match s.split_once('-') {
            Some((a, b)) => (status(a).ok_or_else(bad)?, status(b).ok_or_else(bad)?),
            None => {
                let n = status(s).ok_or_else(bad)?;
                (n, n)
            }
        };
        if low > high {
            return Err(bad());
        }
        Ok(ExpectStatus { low, high })
    }

    /// Whether `status` passes.
    pub fn passes(&self, status: u16) -> bool {
        (self.low..=self.high).contains(&status)
    }
}

impl fmt::Display for ExpectStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.low == self.high {
            write!(f, "{}", self.low)
        } else {
            write!(f, "{}-{}", self.low, self.high)
        }
    }
}

/// A group's active health check: every `interval`, one `GET path` per server for the whole
/// process (not per worker), riding an idle pooled connection when there is one. `fall` failed
/// checks in a row take a server out of rotation for every worker; `rise` passing ones bring it
/// back. Servers start healthy (nginx Plus without `mandatory`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// The request target checked, starting with `/` (default `/`).
    pub path: String,
    /// Time between two checks of a server (default 5s, nginx Plus's `interval`).
    pub interval: Duration,
    /// Longest a check may take, connect included, before it counts as failed (`timeout`);
    /// at most `interval`, which is the default (HAProxy's `timeout check` falls back to
    /// `inter` too).
    pub timeout: Duration,
    /// Failed checks in a row that mark a server failed (default 3, HAProxy's `fall`).
    pub fall: u32,
    /// Passing checks in a row that bring a failed server back (default 2, HAProxy's `rise`).
    pub rise: u32,
    /// The statuses that pass (default `200-399`).
    pub expect: ExpectStatus,
}

impl Default for HealthCheck {
    fn default() -> HealthCheck {
        let interval = Duration::from_secs(5);
        HealthCheck {
            path: "/".to_owned(),
            interval,
            timeout: interval,
            fall: 3,
            rise: 2,
            expect: ExpectStatus::default(),
        }
    }
}

impl HealthCheck {
    /// The checks' rules (`loc` names the group): interval > 0, 0 < timeout ≤ interval,
    /// fall and rise ≥ 1, a path starting with `/` made of visible ASCII.
    pub(super) fn validate(&self, loc: &str) -> Result<(), ConfigError> {
        let fail = |m: String| Err(ConfigError::new(loc, format!("health_check {m}")));
        if self.interval.is_zero() {
            return fail("interval must be > 0".into());
        }
        if self.timeout.is_zero() || self.timeout > self.interval {
            return fail(format!(
                "timeout must be > 0 and <= interval ({})",
                format_duration(self.interval)
            ));
        }
        if self.fall == 0 || self.rise == 0 {
            return fail("fall and rise must be >= 1".into());
        }
        // No '#': a fragment is never sent (the backend would answer 400 and fail the server).
        if !self.path.starts_with('/')
            || !self.path.bytes().all(|b| b.is_ascii_graphic() && b != b'#')
        {
            return fail(format!(
                "path {:?} must start with '/' and hold no spaces, '#' or control characters",
                self.path
            ));
        }
        Ok(())
    }

    /// The check request: `GET path HTTP/1.1` with `Host` (the server's address or name) and
    /// a `User-Agent` that names it, so backend logs can tell checks from traffic.
    pub(crate) fn request(&self, host: &str) -> Vec<u8> {
        format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: upkeep-health-check\r\n\
             Accept: */*\r\n\r\n",
            self.path
        )
        .into_bytes()
    }
}

#[cfg(feature = "serde")]
mod de {
    use core::time::Duration;
    use serde::{Deserialize, Deserializer, de};

    use super::{ExpectStatus, HealthCheck};

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RawHealthCheck {
        path: Option<String>,
        #[serde(default, deserialize_with = "opt_duration")]
        interval: Option<Duration>,
        #[serde(default, deserialize_with = "opt_duration")]
        timeout: Option<Duration>,
        fall: Option<u32>,
        rise: Option<u32>,
        expect: Option<Expect>,
    }

    /// `expect = "200-399"` or `expect = 200`, as written (any integer, so one out of range
    /// gets `ExpectStatus::parse`'s message rather than serde's "no variant matched").
    struct Expect(String);

    impl<'de> Deserialize<'de> for Expect {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Expect, D::Error> {
            struct V;
            impl de::Visitor<'_> for V {
                type Value = Expect;
                fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                    f.write_str("a status (200) or a range of statuses (\"200-399\")")
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Expect, E> {
                    Ok(Expect(v.to_owned()))
                }
                fn visit_i64<E: de::Error>(self, v: i64) -> Result<Expect, E> {
                    Ok(Expect(v.to_string()))
                }
                fn visit_u64<E: de::Error>(self, v: u64) -> Result<Expect, E> {
                    Ok(Expect(v.to_string()))
                }
            }
            d.deserialize_any(V)
        }
    }

    fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        crate::config::de::duration(d).map(Some)
    }

    impl<'de> Deserialize<'de> for HealthCheck {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<HealthCheck, D::Error> {
            let r = RawHealthCheck::deserialize(d)?;
            let base = HealthCheck::default();
            let interval = r.interval.unwrap_or(base.interval);
            let expect = match r.expect {
                None => base.expect,
                Some(Expect(s)) => ExpectStatus::parse(&s).map_err(de::Error::custom)?,
            };
            Ok(HealthCheck {
                path: r.path.unwrap_or(base.path),
                interval,
                // Unset: the interval (so a short interval alone stays valid).
                timeout: r.timeout.unwrap_or(interval),
                fall: r.fall.unwrap_or(base.fall),
                rise: r.rise.unwrap_or(base.rise),
                expect,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expect_syntax() {
        let e = |s| ExpectStatus::parse(s).map(|e| (e.low, e.high));
        assert_eq!(e("200"), Ok((200, 200)));
        assert_eq!(e("200-399"), Ok((200, 399)));
        assert_eq!(e(" 204 - 204 "), Ok((204, 204)));
        for bad in ["", "2xx", "399-200", "99", "600", "200-", "-200", "a-b"] {
            assert!(e(bad).is_err(), "{bad}");
        }
        let r = ExpectStatus::default();
        assert!(r.passes(200) && r.passes(302) && !r.passes(404) && !r.passes(500));
        assert_eq!(r.to_string(), "200-399");
        assert_eq!(ExpectStatus::parse("200").unwrap().to_string(), "200");
    }

    #[test]
    fn validation_table() {
        let ok = HealthCheck::default();
        assert_eq!(ok.validate("g"), Ok(()));
        type Change = fn(&mut HealthCheck);
        let cases: [(Change, &str); 5] = [
            (|h| h.interval = Duration::ZERO, "interval must be > 0"),
            (
                |h| h.timeout = Duration::from_secs(6),
                "timeout must be > 0 and <= interval",
            ),
            (|h| h.fall = 0, "fall and rise must be >= 1"),
            (|h| h.rise = 0, "fall and rise must be >= 1"),
            (|h| h.path = "health".into(), "must start with '/'"),
        ];
        for (change, msg) in cases {
            let mut h = HealthCheck::default();
            change(&mut h);
            let e = h.validate("upstream \"g\"").unwrap_err();
            assert!(e.to_string().contains(msg), "{e}");
            assert!(e.message.starts_with("health_check "), "{e}");
        }
    }
}

#[cfg(all(test, feature = "toml"))]
mod toml_tests {
    use crate::Config;
    use core::time::Duration;

    const BASE: &str = "listen = [\"127.0.0.1:8080\"]\n[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:9001\"]\n";

    #[test]
    fn inline_and_table_forms_and_defaults() {
        let inline = format!(
            "{BASE}health_check = {{ path = \"/up\", interval = \"2s\", fall = 1, rise = 1, expect = \"200\" }}\n"
        );
        let c = Config::from_toml(&inline).unwrap();
        let h = c.upstreams[0].health_check.as_ref().unwrap();
        assert_eq!(h.path, "/up");
        assert_eq!(
            (h.interval, h.timeout),
            (Duration::from_secs(2), Duration::from_secs(2))
        );
        assert_eq!(
            (h.fall, h.rise, h.expect.to_string().as_str()),
            (1, 1, "200")
        );
        let table = format!("{BASE}[upstream.health_check]\ntimeout = \"1s\"\nexpect = 204\n");
        let c = Config::from_toml(&table).unwrap();
        let h = c.upstreams[0].health_check.as_ref().unwrap();
        assert_eq!(
            (h.path.as_str(), h.interval, h.timeout, h.fall, h.rise),
            ("/", Duration::from_secs(5), Duration::from_secs(1), 3, 2)
        );
        assert!(h.expect.passes(204) && !h.expect.passes(200));
        assert_eq!(
            Config::from_toml(BASE).unwrap().upstreams[0].health_check,
            None
        );
    }

    #[test]
    fn errors_point_at_the_health_check() {
        let bad = format!("{BASE}health_check = {{ interval = \"1s\", timeout = \"2s\" }}\n");
        let e = Config::from_toml(&bad).unwrap_err();
        assert_eq!((e.line, e.column), (5, 16), "{e}");
        assert_eq!(
            e.message,
            "upstream \"app\": health_check timeout must be > 0 and <= interval (1s)"
        );
        let bad = format!("{BASE}health_check = {{ path = \"up\" }}\n");
        let e = Config::from_toml(&bad).unwrap_err();
        assert!(e.message.contains("must start with '/'"), "{e}");
        let bad = format!("{BASE}health_check = {{ expect = \"2xx\" }}\n");
        let e = Config::from_toml(&bad).unwrap_err();
        assert!(e.message.contains("expect \"2xx\""), "{e}");
        assert_eq!(e.line, 5, "{e}");
        // A number out of range or signed: the same clear message, not serde's "did not match
        // any variant of untagged enum".
        for (expect, shown) in [("70000", "70000"), ("-5", "-5"), ("\"+200\"", "+200")] {
            let bad = format!("{BASE}health_check = {{ expect = {expect} }}\n");
            let e = Config::from_toml(&bad).unwrap_err();
            assert!(
                e.message
                    .contains(&format!("expect \"{shown}\": write one status")),
                "{expect}: {e}"
            );
            assert_eq!(e.line, 5, "{e}");
        }
        // A fragment is never sent: the backend would answer 400 and fail the server.
        let bad = format!("{BASE}health_check = {{ path = \"/up#x\" }}\n");
        let e = Config::from_toml(&bad).unwrap_err();
        assert!(e.message.contains("path \"/up#x\""), "{e}");
        let bad = format!("{BASE}health_check = {{ intervl = \"1s\" }}\n");
        let e = Config::from_toml(&bad).unwrap_err();
        assert!(e.message.contains("intervl"), "{e}");
    }
}
