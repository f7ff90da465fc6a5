//! [`Config::warnings`]: configurations that are valid but almost certainly not what was meant.
//! `upkeep check` prints them as `FILE:LINE:COL: warning: ...` and `upkeep run` logs them; they
//! never stop a start or a reload.

use core::net::IpAddr;

use super::{Address, Config, ConfigError, format_duration};

impl Config {
    /// Every warning, in file order (listeners, admin, upstreams, routes). Each is a
    /// [`ConfigError`] whose location names the item, like a validation error.
    ///
    /// - a listener without its own `upstream` when routes exist but none matches every request
    ///   (any host, `path_prefix = "/"`): everything else gets upkeep's own 404;
    /// - an admin listener on a TCP address other than loopback: `/metrics` and `/status` have no
    ///   authentication;
    /// - an upstream `keepalive_timeout` longer than its `keepalive_time`: the idle timeout can
    ///   never fire;
    /// - a server listed twice in one group (it gets twice the share, and one health state per
    ///   entry);
    /// - a group no route and no listener uses, when routes exist;
    /// - a route with the same host and `path_prefix` as an earlier one: it never matches.
    pub fn warnings(&self) -> Vec<ConfigError> {
        let mut out = Vec::new();
        self.warn_listeners(&mut out);
        if let Some(a) = &self.runtime.admin {
            warn_admin(a, &mut out);
        }
        self.warn_upstreams(&mut out);
        self.warn_routes(&mut out);
        out
    }

    fn has_catch_all(&self) -> bool {
        self.routes
            .iter()
            .any(|r| r.host.is_none() && r.path_prefix == "/")
    }

    fn warn_listeners(&self, out: &mut Vec<ConfigError>) {
        if self.routes.is_empty() || self.has_catch_all() {
            return;
        }
        for (i, l) in self.listeners.iter().enumerate() {
            if l.upstream.is_none() {
                out.push(ConfigError::new(
                    format!("listen {}", i + 1),
                    "no route matches every request (no [[route]] with path_prefix = \"/\" and \
                     no host), so requests that match no route get upkeep's own 404: add a \
                     catch-all route or give this listener an `upstream`",
                ));
            }
        }
    }

    fn warn_upstreams(&self, out: &mut Vec<ConfigError>) {
        for up in &self.upstreams {
            let loc = format!("upstream {:?}", up.name);
            if up.keepalive_timeout > up.keepalive_time {
                out.push(ConfigError::new(
                    &loc,
                    format!(
                        "keepalive_timeout ({}) is longer than keepalive_time ({}): a \
                         connection is retired at keepalive_time first, so the idle timeout \
                         never applies",
                        format_duration(up.keepalive_timeout),
                        format_duration(up.keepalive_time)
                    ),
                ));
            }
            for (j, s) in up.servers.iter().enumerate() {
                if let Some(k) = up.servers[..j].iter().position(|o| o.addr == s.addr) {
                    out.push(ConfigError::new(
                        format!("{loc}: server {}", j + 1),
                        format!(
                            "{} is also server {}: list it once and raise its weight instead",
                            s.addr,
                            k + 1
                        ),
                    ));
                }
            }
            let used = self.routes.iter().any(|r| r.upstream == up.name)
                || self
                    .listeners
                    .iter()
                    .any(|l| l.upstream.as_ref() == Some(&up.name));
            if !self.routes.is_empty() && !used {
                out.push(ConfigError::new(
                    &loc,
                    "name: no route and no listener sends requests to this group",
                ));
            }
        }
    }

    fn warn_routes(&self, out: &mut Vec<ConfigError>) {
        for (i, r) in self.routes.iter().enumerate() {
            // The router's own comparison (case, a trailing dot).
            let host = |h: &Option<String>| {
                h.as_ref()
                    .map(|h| crate::route::bare_host(h.as_bytes()).to_ascii_lowercase())
            };
            if let Some(j) = self.routes[..i]
                .iter()
                .position(|o| o.path_prefix == r.path_prefix && host(&o.host) == host(&r.host))
            {
                out.push(ConfigError::new(
                    format!("route {}", i + 1),
                    format!(
                        "path_prefix: the same host and path_prefix as route {}, so this route \
                         never matches",
                        j + 1
                    ),
                ));
            }
        }
    }
}

fn warn_admin(admin: &Address, out: &mut Vec<ConfigError>) {
    if let Address::Tcp(a) = admin {
        let loopback = match a.ip() {
            IpAddr::V4(ip) => ip.is_loopback(),
            IpAddr::V6(ip) => {
                ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v| v.is_loopback())
            }
        };
        if !loopback {
            out.push(ConfigError::new(
                "admin",
                format!(
                    "{a} is reachable from other hosts, and /metrics, /status and /ready have no \
                     authentication: bind it to 127.0.0.1, [::1] or a unix: path"
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use core::time::Duration;

    use crate::config::{
        Address, Config, ListenerConfig, RouteConfig, ServerConfig, UpstreamConfig,
    };

    fn addr(s: &str) -> Address {
        Address::parse(s).unwrap()
    }

    fn route(host: Option<&str>, prefix: &str, upstream: &str) -> RouteConfig {
        RouteConfig {
            host: host.map(Into::into),
            path_prefix: prefix.into(),
            upstream: upstream.into(),
        }
    }

    /// Two groups, both routed, with a catch-all: no warning.
    fn base() -> Config {
        let mut c = Config::simple(addr("127.0.0.1:8080"), vec![addr("127.0.0.1:9001")]);
        c.upstreams[0].name = "app".into();
        c.upstreams.push(UpstreamConfig::new(
            "static",
            vec![ServerConfig::new(addr("127.0.0.1:9100"))],
        ));
        c.routes.push(route(None, "/static", "static"));
        c.routes.push(route(None, "/", "app"));
        c
    }

    fn warns(f: impl FnOnce(&mut Config)) -> Vec<String> {
        let mut c = base();
        f(&mut c);
        c.validate().unwrap();
        c.warnings().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn quiet_when_nothing_is_odd() {
        assert!(warns(|_| {}).is_empty());
        let simple = Config::simple(addr("0.0.0.0:80"), vec![addr("127.0.0.1:1")]);
        assert!(simple.warnings().is_empty());
        // A listener with its own group needs no catch-all.
        assert!(
            warns(|c| {
                c.routes.pop();
                c.listeners[0].upstream = Some("app".into());
            })
            .is_empty()
        );
    }

    #[test]
    fn each_warning() {
        type Edit = fn(&mut Config);
        let cases: [(Edit, &str); 8] = [
            (
                |c| c.routes[1].host = Some("example.com".into()),
                "listen 1: no route matches every request",
            ),
            // With routes, the first group is no fallback: unnamed, it is unused like any other.
            (
                |c| {
                    c.routes.pop();
                    c.listeners[0].upstream = Some("static".into());
                },
                "upstream \"app\": name: no route and no listener sends requests to this group",
            ),
            (
                |c| c.runtime.admin = Some(addr("0.0.0.0:9901")),
                "admin: 0.0.0.0:9901 is reachable from other hosts",
            ),
            (
                |c| c.upstreams[0].keepalive_timeout = Duration::from_secs(7200),
                "upstream \"app\": keepalive_timeout (2h) is longer than keepalive_time (1h)",
            ),
            (
                |c| {
                    let s = c.upstreams[0].servers[0].clone();
                    c.upstreams[0].servers.push(s);
                },
                "upstream \"app\": server 2: 127.0.0.1:9001 is also server 1",
            ),
            (
                |c| {
                    c.routes.remove(0);
                },
                "upstream \"static\": name: no route and no listener sends requests to this group",
            ),
            (
                |c| c.routes.push(route(None, "/", "static")),
                "route 3: path_prefix: the same host and path_prefix as route 2",
            ),
            // Hosts compare as the router compares them: case and a trailing dot aside.
            (
                |c| {
                    c.routes.push(route(Some("example.com"), "/x", "app"));
                    c.routes.push(route(Some("Example.COM."), "/x", "static"));
                },
                "route 4: path_prefix: the same host and path_prefix as route 3",
            ),
        ];
        for (f, want) in cases {
            let got = warns(f);
            assert!(
                got.len() == 1 && got[0].starts_with(want),
                "{want}: {got:?}"
            );
        }
        // Loopback admin addresses are fine, v4 and v6.
        for a in [
            "127.0.0.1:9901",
            "[::1]:9901",
            "unix:/run/upkeep-admin.sock",
        ] {
            assert!(warns(|c| c.runtime.admin = Some(addr(a))).is_empty(), "{a}");
        }
        // A second listener with its own group, the first without: only the first warns.
        let got = warns(|c| {
            c.routes.pop();
            c.listeners.push(ListenerConfig {
                addr: addr("127.0.0.1:8081"),
                upstream: Some("app".into()),
                tls: None,
            });
        });
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].starts_with("listen 1:"), "{got:?}");
    }
}
