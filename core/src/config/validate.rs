//! [`Config::validate`] and its error type.

use core::fmt;
use core::time::Duration;

use super::{Address, Config, ListenerConfig, PoolKeyMode};

/// Most servers an upstream group may have (the balancer keeps per-server state in a `u64` mask).
pub const MAX_SERVERS_PER_UPSTREAM: usize = 64;

/// Most worker threads a configuration may ask for (a typo guard: nginx has no limit, but a
/// thousand event loops on one machine is never what was meant).
pub const MAX_WORKERS: usize = 1024;

/// Why a [`Config`] was rejected, and where.
///
/// `location` is a path-like string naming the offending item, e.g. `upstream "app": server 2`,
/// `route 3`, `limits.max_head`, `listen 1` (items are numbered from 1, in file order). Its
/// [`Display`](fmt::Display) is `location: message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Where: a path-like location.
    pub location: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// An error at `location`.
    pub fn new(location: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            location: location.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.location.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.location, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// A configuration the runtimes refuse to start with is their caller's bad input
/// (`InvalidInput`), so `?` carries it out of `Proxy::start`.
impl From<ConfigError> for std::io::Error {
    fn from(e: ConfigError) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
    }
}

fn err<T>(location: impl Into<String>, message: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError::new(location, message))
}

fn positive(location: &str, field: &str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        return err(location, format!("{field} must be > 0"));
    }
    Ok(())
}

fn check_unix_path(location: &str, addr: &Address) -> Result<(), ConfigError> {
    if let Address::Unix(path) = addr {
        if !path.starts_with('/') {
            return err(
                location,
                format!("unix socket path {path:?} must be absolute"),
            );
        }
        if path.contains('\0') {
            return err(
                location,
                format!("unix socket path {path:?} contains a NUL byte"),
            );
        }
    }
    Ok(())
}

/// Two bind addresses that would collide. Port 0 asks the OS for a fresh port, so two `:0`
/// addresses never do (tests and `upkeep demo` bind everything on `127.0.0.1:0`).
fn same_socket(a: &Address, b: &Address) -> bool {
    match (a, b) {
        (Address::Tcp(x), Address::Tcp(y)) => x == y && x.port() != 0,
        _ => a == b,
    }
}

/// A wildcard address (`0.0.0.0:P`, `[::]:P`) and a specific one of the same family on the same
/// port: the bind-conflict probe refuses the second at start-up, so validation refuses it first
/// (`upkeep check` then catches what `run` would reject). IPv6 listeners are `IPV6_V6ONLY`, so
/// `0.0.0.0:P` beside `[::]:P` is fine.
fn overlapping(a: &Address, b: &Address) -> bool {
    match (a, b) {
        (Address::Tcp(x), Address::Tcp(y)) => {
            x.port() == y.port()
                && x.port() != 0
                && x.is_ipv4() == y.is_ipv4()
                && x.ip() != y.ip()
                && (x.ip().is_unspecified() || y.ip().is_unspecified())
        }
        _ => false,
    }
}

/// Why `addr` collides with one of the `earlier` listeners, if it does.
fn clash(earlier: &[ListenerConfig], addr: &Address) -> Option<String> {
    earlier.iter().enumerate().find_map(|(j, o)| {
        if same_socket(&o.addr, addr) {
            Some(format!(
                "address {addr} is already used by listen {}",
                j + 1
            ))
        } else if overlapping(&o.addr, addr) {
            Some(format!(
                "address {addr} overlaps listen {} ({}): a wildcard address takes the port on \
                 every interface of its family",
                j + 1,
                o.addr
            ))
        } else {
            None
        }
    })
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl Config {
    /// Checks everything the engine relies on, returning the first problem found (in file order:
    /// listeners, upstreams, routes, client timeouts, limits, headers).
    ///
    /// Rules: at least one listener, no duplicate or overlapping (a wildcard and a specific address
    /// of one family on one port) listener addresses; at least one upstream
    /// group; group names non-empty and unique; each group has 1..=64 servers, not all `backup`;
    /// every server has `weight >= 1`, a positive `fail_timeout` and a connectable address
    /// (port ≠ 0); upstream and client timeouts are > 0; `keepalive_requests` and
    /// `client_keepalive_requests` are ≥ 1; every route's `path_prefix` starts with `/` (and has
    /// no `?`), its host (if any) is a bare non-empty host name without port, and its upstream is
    /// defined; `max_head >= max_request_line >= 64`; `write_high_water >= 4096`;
    /// `max_client_connections >= 1`; a `via` pseudonym is a non-empty token; a listener's
    /// `upstream` is defined; `workers <= 1024`; the admin address is not also a listener.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_listeners()?;
        self.validate_upstreams()?;
        self.validate_routes()?;
        self.validate_client()?;
        self.validate_headers()?;
        self.validate_runtime()
    }

    fn validate_listeners(&self) -> Result<(), ConfigError> {
        if self.listeners.is_empty() {
            return err("listen", "at least one listener is required");
        }
        for (i, l) in self.listeners.iter().enumerate() {
            let loc = format!("listen {}", i + 1);
            check_unix_path(&loc, &l.addr)?;
            if let Some(why) = clash(&self.listeners[..i], &l.addr) {
                return err(loc, why);
            }
            if let Some(name) = &l.upstream
                && !self.upstreams.iter().any(|u| &u.name == name)
            {
                return err(loc, format!("upstream {name:?} is not defined"));
            }
            if let Some(Err(e)) = l.tls.as_ref().map(super::tls::check_listener) {
                return err(loc, e);
            }
        }
        Ok(())
    }

    fn validate_runtime(&self) -> Result<(), ConfigError> {
        let r = &self.runtime;
        if r.workers > MAX_WORKERS {
            return err(
                "workers",
                format!("{} is more than the {MAX_WORKERS} allowed", r.workers),
            );
        }
        if let Some(admin) = &r.admin {
            check_unix_path("admin", admin)?;
            if let Some(why) = clash(&self.listeners, admin) {
                return err("admin", why);
            }
        }
        if r.access_log.as_deref() == Some("") {
            return err("access_log", "must be \"off\", \"-\", \"stderr\" or a path");
        }
        if r.io == super::Io::Uring {
            let tls_listener = self.listeners.iter().position(|l| l.tls.is_some());
            let tls_group = self.upstreams.iter().find(|u| u.tls.is_some());
            let what = match (tls_listener, tls_group) {
                (Some(i), _) => Some(format!("listen {} has tls", i + 1)),
                (None, Some(u)) => Some(format!("upstream {:?} has tls", u.name)),
                (None, None) => None,
            };
            if let Some(what) = what {
                return err(
                    "io",
                    format!("\"uring\" does not support TLS yet ({what}): use io = \"epoll\""),
                );
            }
        }
        Ok(())
    }

    fn validate_upstreams(&self) -> Result<(), ConfigError> {
        if self.upstreams.is_empty() {
            return err("upstream", "at least one upstream group is required");
        }
        for (i, up) in self.upstreams.iter().enumerate() {
            if up.name.is_empty() {
                return err(format!("upstream {}", i + 1), "name must not be empty");
            }
            let loc = format!("upstream {:?}", up.name);
            if self.upstreams[..i].iter().any(|o| o.name == up.name) {
                return err(loc, "name is defined more than once");
            }
            if up.servers.is_empty() {
                return err(loc, "at least one server is required");
            }
            if let Some(Err(e)) = up.tls.as_ref().map(super::tls::check_upstream) {
                return err(loc, e);
            }
            if up.servers.len() > MAX_SERVERS_PER_UPSTREAM {
                return err(
                    loc,
                    format!(
                        "{} servers, at most {MAX_SERVERS_PER_UPSTREAM} are allowed",
                        up.servers.len()
                    ),
                );
            }
            for (j, s) in up.servers.iter().enumerate() {
                let sloc = format!("{loc}: server {}", j + 1);
                if s.weight == 0 {
                    return err(sloc, "weight must be > 0");
                }
                positive(&sloc, "fail_timeout", s.fail_timeout)?;
                check_unix_path(&sloc, &s.addr)?;
                if let Address::Tcp(a) = &s.addr
                    && a.port() == 0
                {
                    return err(sloc, format!("port 0 in {a} cannot be connected to"));
                }
            }
            if up.servers.iter().all(|s| s.backup) {
                return err(
                    loc,
                    "every server is a backup: at least one must be a primary",
                );
            }
            positive(&loc, "keepalive_timeout", up.keepalive_timeout)?;
            positive(&loc, "keepalive_time", up.keepalive_time)?;
            positive(&loc, "connect_timeout", up.connect_timeout)?;
            positive(&loc, "read_timeout", up.read_timeout)?;
            positive(&loc, "send_timeout", up.send_timeout)?;
            positive(&loc, "queue_timeout", up.queue_timeout)?;
            if let Some(h) = &up.health_check {
                h.validate(&loc)?;
            }
            if up.keepalive_requests == 0 {
                return err(loc, "keepalive_requests must be >= 1");
            }
            if up.min_idle > up.keepalive {
                return err(
                    loc,
                    format!("min_idle must be <= keepalive ({})", up.keepalive),
                );
            }
            if up.min_idle > 0 && up.pool_key != PoolKeyMode::Server {
                return err(
                    loc,
                    "min_idle needs pool_key = \"server\" (a warm connection serves any client)",
                );
            }
        }
        Ok(())
    }

    fn validate_routes(&self) -> Result<(), ConfigError> {
        for (i, r) in self.routes.iter().enumerate() {
            let loc = format!("route {}", i + 1);
            if !r.path_prefix.starts_with('/') {
                return err(
                    loc,
                    format!("path_prefix {:?} must start with '/'", r.path_prefix),
                );
            }
            if r.path_prefix
                .bytes()
                .any(|b| b == b'?' || b == b'#' || !b.is_ascii_graphic())
            {
                return err(
                    loc,
                    format!(
                        "path_prefix {:?} must not contain '?', '#', spaces or control characters",
                        r.path_prefix
                    ),
                );
            }
            if let Some(host) = &r.host {
                let bare = host.strip_suffix('.').unwrap_or(host);
                if bare.is_empty() {
                    return err(loc, "host must not be empty (omit it to match any host)");
                }
                let ok = bare
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
                    || (bare.starts_with('[') && bare.ends_with(']'));
                if !ok {
                    return err(
                        loc,
                        format!("host {host:?} must be a bare host name or IP, without port"),
                    );
                }
            }
            if !self.upstreams.iter().any(|u| u.name == r.upstream) {
                return err(loc, format!("upstream {:?} is not defined", r.upstream));
            }
        }
        Ok(())
    }

    fn validate_client(&self) -> Result<(), ConfigError> {
        let t = &self.client_timeouts;
        positive("client_timeouts", "header", t.header)?;
        positive("client_timeouts", "body", t.body)?;
        positive("client_timeouts", "keepalive", t.keepalive)?;
        positive("client_timeouts", "send", t.send)?;
        positive("client_timeouts", "lingering", t.lingering)?;
        let l = &self.limits;
        if l.max_request_line < 64 {
            return err("limits.max_request_line", "must be >= 64");
        }
        if l.max_head < l.max_request_line {
            return err(
                "limits.max_head",
                format!("must be >= max_request_line ({})", l.max_request_line),
            );
        }
        if l.client_keepalive_requests == 0 {
            return err("limits.client_keepalive_requests", "must be >= 1");
        }
        if l.max_client_connections == 0 {
            return err("limits.max_client_connections", "must be >= 1");
        }
        if l.write_high_water < 4096 {
            return err("limits.write_high_water", "must be >= 4096");
        }
        Ok(())
    }

    fn validate_headers(&self) -> Result<(), ConfigError> {
        if let Some(via) = &self.headers.via
            && (via.is_empty() || !via.bytes().all(is_tchar))
        {
            return err(
                "headers.via",
                format!("pseudonym {via:?} must be a non-empty token (letters, digits, -._ …)"),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ListenerConfig, RouteConfig, ServerConfig, UpstreamConfig};

    fn addr(s: &str) -> Address {
        Address::parse(s).unwrap()
    }

    fn base() -> Config {
        let mut c = Config::simple(addr("127.0.0.1:8080"), vec![addr("127.0.0.1:9001")]);
        c.upstreams[0].name = "app".into();
        c.upstreams.push(UpstreamConfig::new(
            "static",
            vec![ServerConfig::new(addr("unix:/run/s.sock"))],
        ));
        c.routes.push(RouteConfig {
            host: Some("example.com".into()),
            path_prefix: "/api".into(),
            upstream: "app".into(),
        });
        c
    }

    fn fails(f: impl FnOnce(&mut Config), want: &str) {
        let mut c = base();
        f(&mut c);
        let e = c.validate().expect_err(want);
        assert_eq!(e.to_string(), want);
        // It is a std error.
        let _: &dyn std::error::Error = &e;
    }

    #[test]
    fn base_and_simple_are_valid() {
        base().validate().unwrap();
        Config::simple(addr("[::1]:0"), vec![addr("localhost:1")])
            .validate()
            .unwrap();
    }

    #[test]
    fn listener_group_and_runtime_options() {
        let mut ok = base();
        ok.listeners[0].upstream = Some("static".into());
        ok.runtime.workers = 4;
        ok.runtime.admin = Some(addr("127.0.0.1:9901"));
        ok.validate().unwrap();
        fails(
            |c| c.listeners[0].upstream = Some("nope".into()),
            "listen 1: upstream \"nope\" is not defined",
        );
        fails(
            |c| c.runtime.workers = 5000,
            "workers: 5000 is more than the 1024 allowed",
        );
        fails(
            |c| c.runtime.admin = Some(addr("127.0.0.1:8080")),
            "admin: address 127.0.0.1:8080 is already used by listen 1",
        );
        // Port 0 is a fresh port each time: never a collision.
        let mut zero = base();
        zero.listeners[0].addr = addr("127.0.0.1:0");
        zero.listeners
            .push(ListenerConfig::new(addr("127.0.0.1:0")));
        zero.runtime.admin = Some(addr("127.0.0.1:0"));
        zero.validate().unwrap();
        fails(
            |c| c.runtime.admin = Some(Address::Unix("run/admin.sock".into())),
            "admin: unix socket path \"run/admin.sock\" must be absolute",
        );
        fails(
            |c| c.runtime.access_log = Some(String::new()),
            "access_log: must be \"off\", \"-\", \"stderr\" or a path",
        );
    }

    #[test]
    fn io_uring_refuses_tls() {
        let mut ok = base();
        ok.runtime.io = crate::config::Io::Uring;
        ok.validate().unwrap();
        fails(
            |c| {
                c.runtime.io = crate::config::Io::Uring;
                c.listeners[0].tls = Some(crate::config::ListenerTls::single("c.pem", "k.pem"));
            },
            "io: \"uring\" does not support TLS yet (listen 1 has tls): use io = \"epoll\"",
        );
        let mut group = base();
        group.runtime.io = crate::config::Io::Uring;
        group.upstreams[0].tls = Some(crate::config::UpstreamTls::default());
        let e = group.validate().unwrap_err().to_string();
        assert!(
            e.starts_with("io: \"uring\" does not support TLS yet (upstream"),
            "{e}"
        );
    }

    #[test]
    fn listeners() {
        fails(
            |c| c.listeners.clear(),
            "listen: at least one listener is required",
        );
        fails(
            |c| c.listeners.push(c.listeners[0].clone()),
            "listen 2: address 127.0.0.1:8080 is already used by listen 1",
        );
        for (first, second) in [
            ("0.0.0.0:8080", "127.0.0.1:8080"),
            ("127.0.0.1:8080", "0.0.0.0:8080"),
            ("[::]:8080", "[::1]:8080"),
        ] {
            fails(
                |c| {
                    c.listeners[0].addr = addr(first);
                    c.listeners.push(ListenerConfig::new(addr(second)));
                },
                &format!(
                    "listen 2: address {second} overlaps listen 1 ({first}): a wildcard address \
                     takes the port on every interface of its family"
                ),
            );
        }
        fails(
            |c| {
                c.listeners[0].addr = addr("0.0.0.0:9901");
                c.runtime.admin = Some(addr("127.0.0.1:9901"));
            },
            "admin: address 127.0.0.1:9901 overlaps listen 1 (0.0.0.0:9901): a wildcard address \
             takes the port on every interface of its family",
        );
        // Different families, or different ports, do not overlap.
        for (first, second) in [
            ("0.0.0.0:8080", "[::]:8080"),
            ("0.0.0.0:8080", "127.0.0.1:8081"),
        ] {
            let mut c = base();
            c.listeners[0].addr = addr(first);
            c.listeners.push(ListenerConfig::new(addr(second)));
            c.validate().unwrap();
        }
        fails(
            |c| c.listeners[0].addr = Address::Unix("rel.sock".into()),
            "listen 1: unix socket path \"rel.sock\" must be absolute",
        );
    }

    #[test]
    fn upstreams() {
        fails(
            |c| c.upstreams.clear(),
            "upstream: at least one upstream group is required",
        );
        fails(
            |c| c.upstreams[1].name.clear(),
            "upstream 2: name must not be empty",
        );
        fails(
            |c| c.upstreams[1].name = "app".into(),
            "upstream \"app\": name is defined more than once",
        );
        fails(
            |c| c.upstreams[1].servers.clear(),
            "upstream \"static\": at least one server is required",
        );
        fails(
            |c| {
                let s = c.upstreams[0].servers[0].clone();
                c.upstreams[0].servers = vec![s; 65];
            },
            "upstream \"app\": 65 servers, at most 64 are allowed",
        );
        let mut c = base();
        let s = c.upstreams[0].servers[0].clone();
        c.upstreams[0].servers = vec![s; 64];
        c.validate().unwrap();
    }

    #[test]
    fn servers() {
        fails(
            |c| {
                c.upstreams[0]
                    .servers
                    .push(ServerConfig::new(addr("127.0.0.1:9002")));
                c.upstreams[0].servers[1].weight = 0;
            },
            "upstream \"app\": server 2: weight must be > 0",
        );
        fails(
            |c| c.upstreams[0].servers[0].fail_timeout = Duration::ZERO,
            "upstream \"app\": server 1: fail_timeout must be > 0",
        );
        fails(
            |c| c.upstreams[0].servers[0].addr = addr("127.0.0.1:0"),
            "upstream \"app\": server 1: port 0 in 127.0.0.1:0 cannot be connected to",
        );
        fails(
            |c| c.upstreams[1].servers[0].addr = Address::Unix(String::new()),
            "upstream \"static\": server 1: unix socket path \"\" must be absolute",
        );
        fails(
            |c| c.upstreams[0].servers[0].backup = true,
            "upstream \"app\": every server is a backup: at least one must be a primary",
        );
        // One backup among primaries is fine.
        let mut c = base();
        let mut b = ServerConfig::new(addr("127.0.0.1:9009"));
        b.backup = true;
        c.upstreams[0].servers.push(b);
        c.validate().unwrap();
    }

    #[test]
    fn upstream_timeouts_and_requests() {
        type Field = fn(&mut UpstreamConfig) -> &mut Duration;
        let fields: [(Field, &str); 5] = [
            (|u| &mut u.keepalive_timeout, "keepalive_timeout"),
            (|u| &mut u.keepalive_time, "keepalive_time"),
            (|u| &mut u.connect_timeout, "connect_timeout"),
            (|u| &mut u.read_timeout, "read_timeout"),
            (|u| &mut u.send_timeout, "send_timeout"),
        ];
        for (field, name) in fields {
            fails(
                |c| *field(&mut c.upstreams[1]) = Duration::ZERO,
                &format!("upstream \"static\": {name} must be > 0"),
            );
        }
        fails(
            |c| c.upstreams[0].keepalive_requests = 0,
            "upstream \"app\": keepalive_requests must be >= 1",
        );
        // keepalive 0 (pooling off) is allowed.
        let mut c = base();
        c.upstreams[0].keepalive = 0;
        c.validate().unwrap();
    }

    #[test]
    fn routes() {
        fails(
            |c| c.routes[0].path_prefix = "api".into(),
            "route 1: path_prefix \"api\" must start with '/'",
        );
        fails(
            |c| c.routes[0].path_prefix = "/a?b".into(),
            "route 1: path_prefix \"/a?b\" must not contain '?', '#', spaces or control characters",
        );
        fails(
            |c| {
                c.routes.push(RouteConfig {
                    host: None,
                    path_prefix: "/".into(),
                    upstream: "static".into(),
                });
                c.routes.push(RouteConfig {
                    host: None,
                    path_prefix: "/x".into(),
                    upstream: "nope".into(),
                });
            },
            "route 3: upstream \"nope\" is not defined",
        );
        fails(
            |c| c.routes[0].host = Some(String::new()),
            "route 1: host must not be empty (omit it to match any host)",
        );
        fails(
            |c| c.routes[0].host = Some("example.com:8080".into()),
            "route 1: host \"example.com:8080\" must be a bare host name or IP, without port",
        );
        let mut c = base();
        c.routes[0].host = Some("Example.COM.".into());
        c.routes.push(RouteConfig {
            host: Some("[::1]".into()),
            path_prefix: "/".into(),
            upstream: "static".into(),
        });
        c.validate().unwrap();
    }

    #[test]
    fn client_timeouts() {
        type Field = fn(&mut Config) -> &mut Duration;
        let fields: [(Field, &str); 5] = [
            (|c| &mut c.client_timeouts.header, "header"),
            (|c| &mut c.client_timeouts.body, "body"),
            (|c| &mut c.client_timeouts.keepalive, "keepalive"),
            (|c| &mut c.client_timeouts.send, "send"),
            (|c| &mut c.client_timeouts.lingering, "lingering"),
        ];
        for (field, name) in fields {
            fails(
                |c| *field(c) = Duration::ZERO,
                &format!("client_timeouts: {name} must be > 0"),
            );
        }
    }

    #[test]
    fn limits() {
        fails(
            |c| c.limits.max_request_line = 63,
            "limits.max_request_line: must be >= 64",
        );
        fails(
            |c| {
                c.limits.max_request_line = 1000;
                c.limits.max_head = 999;
            },
            "limits.max_head: must be >= max_request_line (1000)",
        );
        fails(
            |c| c.limits.client_keepalive_requests = 0,
            "limits.client_keepalive_requests: must be >= 1",
        );
        fails(
            |c| c.limits.max_client_connections = 0,
            "limits.max_client_connections: must be >= 1",
        );
        fails(
            |c| c.limits.write_high_water = 4095,
            "limits.write_high_water: must be >= 4096",
        );
        let mut c = base();
        c.limits.max_request_line = 64;
        c.limits.max_head = 64;
        c.limits.write_high_water = 4096;
        c.limits.max_body = 0;
        c.validate().unwrap();
    }

    #[test]
    fn headers() {
        fails(
            |c| c.headers.via = Some(String::new()),
            "headers.via: pseudonym \"\" must be a non-empty token (letters, digits, -._ …)",
        );
        fails(
            |c| c.headers.via = Some("up keep".into()),
            "headers.via: pseudonym \"up keep\" must be a non-empty token (letters, digits, -._ …)",
        );
        let mut c = base();
        c.headers.via = None;
        c.validate().unwrap();
    }

    #[test]
    fn warm_connections() {
        fails(
            |c| {
                c.upstreams[0].keepalive = 2;
                c.upstreams[0].min_idle = 3;
            },
            "upstream \"app\": min_idle must be <= keepalive (2)",
        );
        fails(
            |c| {
                c.upstreams[0].min_idle = 1;
                c.upstreams[0].pool_key = PoolKeyMode::Client;
            },
            "upstream \"app\": min_idle needs pool_key = \"server\" (a warm connection serves any client)",
        );
        let mut c = base();
        c.upstreams[0].min_idle = 4;
        c.validate().unwrap();
    }
}
