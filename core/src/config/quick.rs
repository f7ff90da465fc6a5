//! Quick mode: a whole configuration from a handful of command-line flags, no file.
//!
//! `upkeep run --listen ADDR --upstream ADDR ...` and the smol runtime's `proxy` example take the
//! same flags; this is the one place that knows what each flag means, so the two command lines
//! can never drift apart. The runtimes only split their argument lists into `(flag, value)`
//! pairs.

use core::time::Duration;

use super::{Address, Config, ListenerConfig, PoolKeyMode, parse_duration};

/// Flags that take a value, in help-text order (without the leading `--`).
pub const QUICK_FLAGS: [&str; 15] = [
    "listen",
    "upstream",
    "workers",
    "keepalive",
    "keepalive-timeout",
    "keepalive-requests",
    "connect-timeout",
    "read-timeout",
    "client-header-timeout",
    "pool-key",
    "admin",
    "access-log",
    "max-conns",
    "queue",
    "queue-timeout",
];

/// Flags collected one by one, turned into a validated [`Config`] by [`QuickConfig::build`].
///
/// ```
/// use upkeep_core::config::QuickConfig;
///
/// let mut q = QuickConfig::default();
/// q.set("listen", "127.0.0.1:8080").unwrap();
/// q.set("upstream", "127.0.0.1:9001").unwrap();
/// q.set("keepalive-timeout", "30s").unwrap();
/// assert_eq!(q.set("workers", "many").unwrap_err(), "--workers \"many\": expected a non-negative integer");
/// let config = q.build().unwrap();
/// assert_eq!(config.upstreams[0].keepalive_timeout.as_secs(), 30);
/// ```
#[derive(Clone, Debug, Default)]
pub struct QuickConfig {
    listen: Vec<Address>,
    upstream: Vec<Address>,
    workers: Option<usize>,
    keepalive: Option<usize>,
    keepalive_timeout: Option<Duration>,
    keepalive_requests: Option<u32>,
    connect_timeout: Option<Duration>,
    read_timeout: Option<Duration>,
    client_header_timeout: Option<Duration>,
    pool_key: Option<PoolKeyMode>,
    admin: Option<Address>,
    access_log: Option<String>,
    max_conns: Option<u32>,
    queue: Option<usize>,
    queue_timeout: Option<Duration>,
}

impl QuickConfig {
    /// Whether `flag` (without `--`) is a quick-mode flag.
    pub fn takes(flag: &str) -> bool {
        QUICK_FLAGS.contains(&flag)
    }

    /// Whether no flag was set.
    pub fn is_empty(&self) -> bool {
        self.listen.is_empty()
            && self.upstream.is_empty()
            && self.workers.is_none()
            && self.keepalive.is_none()
            && self.keepalive_timeout.is_none()
            && self.keepalive_requests.is_none()
            && self.connect_timeout.is_none()
            && self.read_timeout.is_none()
            && self.client_header_timeout.is_none()
            && self.pool_key.is_none()
            && self.admin.is_none()
            && self.access_log.is_none()
            && self.max_conns.is_none()
            && self.queue.is_none()
            && self.queue_timeout.is_none()
    }

    /// Records `--flag value`; an unknown flag or a bad value is an error naming both.
    pub fn set(&mut self, flag: &str, value: &str) -> Result<(), String> {
        let addr = || Address::parse(value).map_err(|e| format!("--{flag} {value:?}: {e}"));
        let duration = || parse_duration(value).map_err(|e| format!("--{flag} {value:?}: {e}"));
        fn number<T: core::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
            value
                .parse()
                .map_err(|_| format!("--{flag} {value:?}: expected a non-negative integer"))
        }
        match flag {
            "listen" => self.listen.push(addr()?),
            "upstream" => self.upstream.push(addr()?),
            "workers" => self.workers = Some(number(flag, value)?),
            "keepalive" => self.keepalive = Some(number(flag, value)?),
            "keepalive-timeout" => self.keepalive_timeout = Some(duration()?),
            "keepalive-requests" => self.keepalive_requests = Some(number(flag, value)?),
            "connect-timeout" => self.connect_timeout = Some(duration()?),
            "read-timeout" => self.read_timeout = Some(duration()?),
            "client-header-timeout" => self.client_header_timeout = Some(duration()?),
            "pool-key" => {
                self.pool_key = Some(match value {
                    "server" => PoolKeyMode::Server,
                    "client" => PoolKeyMode::Client,
                    _ => return Err(format!("--pool-key {value:?}: expected server or client")),
                })
            }
            "admin" => self.admin = Some(addr()?),
            "access-log" => self.access_log = Some(value.to_owned()),
            "max-conns" => self.max_conns = Some(number(flag, value)?),
            "queue" => self.queue = Some(number(flag, value)?),
            "queue-timeout" => self.queue_timeout = Some(duration()?),
            _ => return Err(format!("unknown option --{flag}")),
        }
        Ok(())
    }

    /// The configuration: the listeners in front of one round-robin group named `default` with
    /// every server, nginx's defaults for everything not set, validated.
    pub fn build(self) -> Result<Config, String> {
        let mut listen = self.listen.into_iter();
        let (Some(first), false) = (listen.next(), self.upstream.is_empty()) else {
            return Err("--listen ADDR and --upstream ADDR are both required".into());
        };
        let mut c = Config::simple(first, self.upstream);
        c.listeners.extend(listen.map(ListenerConfig::new));
        let g = &mut c.upstreams[0];
        if let Some(n) = self.keepalive {
            g.keepalive = n;
        }
        if let Some(d) = self.keepalive_timeout {
            g.keepalive_timeout = d;
        }
        if let Some(n) = self.keepalive_requests {
            g.keepalive_requests = n;
        }
        if let Some(d) = self.connect_timeout {
            g.connect_timeout = d;
        }
        if let Some(d) = self.read_timeout {
            g.read_timeout = d;
        }
        if let Some(k) = self.pool_key {
            g.pool_key = k;
        }
        if let Some(n) = self.max_conns {
            g.servers.iter_mut().for_each(|s| s.max_conns = n);
        }
        if let Some(n) = self.queue {
            g.queue = n;
        }
        if let Some(d) = self.queue_timeout {
            g.queue_timeout = d;
        }
        if let Some(d) = self.client_header_timeout {
            c.client_timeouts.header = d;
        }
        if let Some(n) = self.workers {
            c.runtime.workers = n;
        }
        c.runtime.admin = self.admin;
        c.runtime.access_log = self.access_log.filter(|a| a != "off");
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick(pairs: &[(&str, &str)]) -> Result<Config, String> {
        let mut q = QuickConfig::default();
        for (f, v) in pairs {
            q.set(f, v)?;
        }
        q.build()
    }

    #[test]
    fn every_flag_lands_in_its_field() {
        let c = quick(&[
            ("listen", "127.0.0.1:8080"),
            ("listen", "unix:/tmp/u.sock"),
            ("upstream", "127.0.0.1:9001"),
            ("upstream", "[::1]:9002"),
            ("workers", "3"),
            ("keepalive", "8"),
            ("keepalive-timeout", "5s"),
            ("keepalive-requests", "50"),
            ("connect-timeout", "250ms"),
            ("read-timeout", "2m"),
            ("client-header-timeout", "7s"),
            ("pool-key", "client"),
            ("admin", "127.0.0.1:9901"),
            ("access-log", "-"),
            ("max-conns", "1"),
            ("queue", "7"),
            ("queue-timeout", "3s"),
        ])
        .unwrap();
        assert_eq!(c.listeners.len(), 2);
        let g = &c.upstreams[0];
        assert_eq!((g.name.as_str(), g.servers.len()), ("default", 2));
        assert_eq!((g.keepalive, g.keepalive_requests), (8, 50));
        assert_eq!(g.keepalive_timeout, Duration::from_secs(5));
        assert_eq!(g.connect_timeout, Duration::from_millis(250));
        assert_eq!(g.read_timeout, Duration::from_secs(120));
        assert_eq!(g.pool_key, PoolKeyMode::Client);
        assert!(g.servers.iter().all(|s| s.max_conns == 1));
        assert_eq!((g.queue, g.queue_timeout), (7, Duration::from_secs(3)));
        assert_eq!(c.client_timeouts.header, Duration::from_secs(7));
        assert_eq!(c.runtime.workers, 3);
        assert_eq!(
            c.runtime.admin,
            Some(Address::parse("127.0.0.1:9901").unwrap())
        );
        assert_eq!(c.runtime.access_log.as_deref(), Some("-"));
        // Nothing else differs from the defaults.
        let mut plain = Config::simple(
            Address::parse("127.0.0.1:8080").unwrap(),
            vec![Address::parse("127.0.0.1:9001").unwrap()],
        );
        plain.upstreams[0].servers = g.servers.clone();
        plain.upstreams[0]
            .servers
            .iter_mut()
            .for_each(|s| s.max_conns = 0);
        assert_eq!(
            quick(&[
                ("listen", "127.0.0.1:8080"),
                ("upstream", "127.0.0.1:9001"),
                ("upstream", "[::1]:9002")
            ])
            .unwrap(),
            plain
        );
        assert!(QUICK_FLAGS.iter().all(|f| QuickConfig::takes(f)));
    }

    #[test]
    fn bad_values_name_the_flag() {
        for (pair, want) in [
            (
                ("workers", "-1"),
                "--workers \"-1\": expected a non-negative integer",
            ),
            (("keepalive-timeout", "5"), "--keepalive-timeout \"5\":"),
            (("listen", "nonsense"), "--listen \"nonsense\":"),
            (
                ("pool-key", "any"),
                "--pool-key \"any\": expected server or client",
            ),
            (("bogus", "1"), "unknown option --bogus"),
        ] {
            let e = QuickConfig::default().set(pair.0, pair.1).unwrap_err();
            assert!(e.starts_with(want), "{e}");
        }
        assert_eq!(
            quick(&[("listen", "127.0.0.1:1")]).unwrap_err(),
            "--listen ADDR and --upstream ADDR are both required"
        );
        assert!(QuickConfig::default().is_empty());
        // Validation still applies (a listener and the admin on one address).
        let e = quick(&[
            ("listen", "127.0.0.1:8080"),
            ("upstream", "127.0.0.1:9001"),
            ("admin", "127.0.0.1:8080"),
        ])
        .unwrap_err();
        assert!(e.contains("already used by listen 1"), "{e}");
    }
}
