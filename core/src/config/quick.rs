//! Quick mode: a whole configuration from a handful of command-line flags, no file.
//!
//! `upkeep run --listen ADDR --upstream ADDR ...` and the smol runtime's `proxy` example take the
//! same flags; this is the one place that knows what each flag means, so the two command lines
//! can never drift apart. The runtimes only split their argument lists into `(flag, value)`
//! pairs.

use core::time::Duration;

use super::{
    AccessLogFormat, Address, Config, ListenerConfig, ListenerTls, PoolKeyMode, ServerConfig,
    UpstreamTls, parse_duration,
};

/// Flags that take no value (without the leading `--`): see [`QuickConfig::switch`].
pub const QUICK_SWITCHES: [&str; 1] = ["upstream-tls"];

/// Flags that take a value, in help-text order (without the leading `--`).
pub const QUICK_FLAGS: [&str; 21] = [
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
    "shutdown-delay",
    "access-log-format",
    "tls-cert",
    "tls-key",
    "upstream-ca",
    "upstream-sni",
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
    upstream: Vec<ServerConfig>,
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
    shutdown_delay: Option<Duration>,
    access_log_format: Option<AccessLogFormat>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    upstream_tls: bool,
    upstream_ca: Option<String>,
    upstream_sni: Option<String>,
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
            && self.shutdown_delay.is_none()
            && self.access_log_format.is_none()
            && self.tls_cert.is_none()
            && self.tls_key.is_none()
            && !self.upstream_tls
            && self.upstream_ca.is_none()
            && self.upstream_sni.is_none()
            && self.max_conns.is_none()
            && self.queue.is_none()
            && self.queue_timeout.is_none()
    }

    /// Whether `flag` (without `--`) is a quick-mode flag that takes no value.
    pub fn is_switch(flag: &str) -> bool {
        QUICK_SWITCHES.contains(&flag)
    }

    /// Records a flag without a value (`--upstream-tls`: TLS toward every upstream server).
    pub fn switch(&mut self, flag: &str) -> Result<(), String> {
        match flag {
            "upstream-tls" => self.upstream_tls = true,
            _ => return Err(format!("unknown option --{flag}")),
        }
        Ok(())
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
            "upstream" => self
                .upstream
                .push(ServerConfig::parse(value).map_err(|e| format!("--{flag} {value:?}: {e}"))?),
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
            "shutdown-delay" => self.shutdown_delay = Some(duration()?),
            "access-log-format" => {
                self.access_log_format = Some(AccessLogFormat::parse(value).ok_or_else(|| {
                    format!("--access-log-format {value:?}: expected upkeep, combined or json")
                })?)
            }
            "tls-cert" => self.tls_cert = Some(value.to_owned()),
            "tls-key" => self.tls_key = Some(value.to_owned()),
            "upstream-ca" => self.upstream_ca = Some(value.to_owned()),
            "upstream-sni" => self.upstream_sni = Some(value.to_owned()),
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
        let mut c = Config::simple(first, Vec::new());
        c.upstreams[0].servers = self.upstream;
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
        if let Some(d) = self.shutdown_delay {
            c.runtime.shutdown_delay = d;
        }
        c.runtime.admin = self.admin;
        c.runtime.access_log = self.access_log.filter(|a| a != "off");
        if let Some(f) = self.access_log_format {
            c.runtime.access_log_format = f;
        }
        match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => {
                for l in &mut c.listeners {
                    l.tls = Some(ListenerTls::single(&cert, &key));
                }
            }
            (None, None) => {}
            _ => return Err("--tls-cert FILE and --tls-key FILE go together".into()),
        }
        // `--upstream-ca` or `--upstream-sni` alone mean TLS too: neither makes sense without.
        if self.upstream_tls || self.upstream_ca.is_some() || self.upstream_sni.is_some() {
            c.upstreams[0].tls = Some(UpstreamTls {
                sni: self.upstream_sni,
                ca: self.upstream_ca,
                ..UpstreamTls::default()
            });
        }
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
            ("shutdown-delay", "5s"),
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
        assert_eq!(c.runtime.shutdown_delay, Duration::from_secs(5));
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
    fn tls_flags() {
        let base = [("listen", "127.0.0.1:8443"), ("upstream", "127.0.0.1:9001")];
        let mut q = QuickConfig::default();
        for (f, v) in base.iter().chain(&[
            ("tls-cert", "c.pem"),
            ("tls-key", "k.pem"),
            ("upstream-sni", "app.test"),
        ]) {
            q.set(f, v).unwrap();
        }
        let c = q.build().unwrap();
        assert_eq!(
            c.listeners[0].tls,
            Some(ListenerTls::single("c.pem", "k.pem"))
        );
        assert_eq!(c.listeners[0].scheme(), "https");
        let tls = c.upstreams[0].tls.clone().unwrap();
        assert_eq!((tls.sni.as_deref(), tls.verify), (Some("app.test"), true));
        let mut q = QuickConfig::default();
        q.switch("upstream-tls").unwrap();
        assert!(!q.is_empty());
        assert!(QuickConfig::is_switch("upstream-tls"));
        for (f, v) in base {
            q.set(f, v).unwrap();
        }
        let c = q.build().unwrap();
        assert_eq!(c.upstreams[0].tls, Some(UpstreamTls::default()));
        assert_eq!(c.listeners[0].tls, None);
        let e = quick(&[base[0], base[1], ("tls-cert", "c.pem")]).unwrap_err();
        assert_eq!(e, "--tls-cert FILE and --tls-key FILE go together");
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

    #[test]
    fn an_upstream_may_be_a_host_name() {
        let c = quick(&[
            ("listen", "127.0.0.1:8080"),
            ("upstream", "app.internal:9001"),
        ])
        .unwrap();
        assert_eq!(c.upstreams[0].servers[0].target(), "app.internal:9001");
        let e = quick(&[("listen", "127.0.0.1:8080"), ("upstream", "app internal:1")]).unwrap_err();
        assert!(e.starts_with("--upstream \"app internal:1\": "), "{e}");
    }
}
