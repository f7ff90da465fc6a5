//! Routing a request to an upstream group by Host and path prefix.
//!
//! [`Router::new`] precomputes the routes of a validated [`Config`](crate::Config) into match
//! order; [`Router::route`] then walks them without allocating. The rules:
//!
//! - no routes configured → every request goes to the first group, `UpstreamId(0)`, unless its
//!   listener names a group of its own ([`ListenerConfig::upstream`](crate::config::ListenerConfig));
//! - a route matches when its host (if any) equals the request's Host — ASCII
//!   case-insensitively, ignoring a `:port` suffix and a trailing dot on either side — and its
//!   `path_prefix` is a byte prefix of the request target up to the first `?`;
//! - among matching routes the longest prefix wins; at equal length a host-specific route beats
//!   a host-less one, and then the first listed wins;
//! - nothing matches → the listener's own group if it names one ([`Router::route_from`]), else
//!   `None` (the engine answers 404).

use crate::{ListenerId, UpstreamId};

#[derive(Debug, Clone)]
struct Entry {
    /// Lowercased, without trailing dot; `None` matches any host.
    host: Option<Box<[u8]>>,
    prefix: Box<[u8]>,
    upstream: UpstreamId,
}

/// Precomputed routing table.
#[derive(Debug, Clone)]
pub struct Router {
    /// In match order: the first entry that matches wins.
    entries: Vec<Entry>,
    /// No routes configured: everything goes to group 0.
    catch_all: bool,
    /// Per listener: the group its requests go to when no route matches.
    listener_default: Vec<Option<UpstreamId>>,
}

/// The host part of a Host header value: surrounding whitespace, a `:port` suffix and a
/// trailing dot removed (`[v6]` literals keep their brackets).
pub(crate) fn bare_host(host: &[u8]) -> &[u8] {
    let host = host.trim_ascii();
    let host = if host.first() == Some(&b'[') {
        match host.iter().position(|&b| b == b']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        match host.iter().position(|&b| b == b':') {
            Some(colon) => &host[..colon],
            None => host,
        }
    };
    host.strip_suffix(b".").unwrap_or(host)
}

impl Router {
    /// Builds the table from `config`, which should have passed
    /// [`Config::validate`](crate::Config::validate); a route naming an undefined group is
    /// ignored.
    pub fn new(config: &crate::Config) -> Router {
        let mut indexed: Vec<(usize, Entry)> = config
            .routes
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let group = config.upstreams.iter().position(|u| u.name == r.upstream)?;
                let host = r
                    .host
                    .as_ref()
                    .map(|h| bare_host(h.as_bytes()).to_ascii_lowercase().into());
                Some((
                    i,
                    Entry {
                        host,
                        prefix: r.path_prefix.as_bytes().into(),
                        upstream: UpstreamId(u32::try_from(group).unwrap_or(u32::MAX)),
                    },
                ))
            })
            .collect();
        // Longest prefix first; then host-specific before host-less; then file order.
        indexed.sort_by(|(ia, a), (ib, b)| {
            b.prefix
                .len()
                .cmp(&a.prefix.len())
                .then(b.host.is_some().cmp(&a.host.is_some()))
                .then(ia.cmp(ib))
        });
        let group_of = |name: &str| {
            let i = config.upstreams.iter().position(|u| u.name == name)?;
            Some(UpstreamId(u32::try_from(i).ok()?))
        };
        Router {
            entries: indexed.into_iter().map(|(_, e)| e).collect(),
            catch_all: config.routes.is_empty(),
            listener_default: config
                .listeners
                .iter()
                .map(|l| l.upstream.as_deref().and_then(group_of))
                .collect(),
        }
    }

    /// Like [`route`](Router::route) for a request that arrived on `listener`: when no route
    /// matches, the listener's own group (if it names one) comes before the catch-all.
    pub fn route_from(
        &self,
        listener: ListenerId,
        host: Option<&[u8]>,
        path: &[u8],
    ) -> Option<UpstreamId> {
        let own = self
            .listener_default
            .get(listener.0 as usize)
            .copied()
            .flatten();
        match own {
            Some(group) => self.matching(host, path).or(Some(group)),
            None => self.route(host, path),
        }
    }

    /// The group for a request with Host header value `host` (`None` if absent) and request
    /// target `path` (raw bytes; anything from the first `?` on is ignored).
    pub fn route(&self, host: Option<&[u8]>, path: &[u8]) -> Option<UpstreamId> {
        if self.catch_all {
            return Some(UpstreamId(0));
        }
        self.matching(host, path)
    }

    /// The first configured route that matches, if any.
    fn matching(&self, host: Option<&[u8]>, path: &[u8]) -> Option<UpstreamId> {
        let path = match path.iter().position(|&b| b == b'?') {
            Some(q) => &path[..q],
            None => path,
        };
        let host = host.map(bare_host);
        self.entries
            .iter()
            .find(|e| {
                path.starts_with(&e.prefix)
                    && match (&e.host, host) {
                        (None, _) => true,
                        (Some(want), Some(got)) => want.eq_ignore_ascii_case(got),
                        (Some(_), None) => false,
                    }
            })
            .map(|e| e.upstream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Address, Config, RouteConfig, ServerConfig, UpstreamConfig};

    fn config(routes: &[(Option<&str>, &str, &str)]) -> Config {
        let a = |s: &str| Address::parse(s).unwrap();
        let mut c = Config::simple(a("127.0.0.1:80"), vec![a("127.0.0.1:9000")]);
        c.upstreams[0].name = "zero".into();
        for name in ["one", "two", "three", "four"] {
            c.upstreams.push(UpstreamConfig::new(
                name,
                vec![ServerConfig::new(a("127.0.0.1:9001"))],
            ));
        }
        c.routes = routes
            .iter()
            .map(|&(host, prefix, up)| RouteConfig {
                host: host.map(Into::into),
                path_prefix: prefix.into(),
                upstream: up.into(),
            })
            .collect();
        c.validate().unwrap();
        c
    }

    #[test]
    fn no_routes_means_group_zero() {
        let r = Router::new(&config(&[]));
        assert_eq!(r.route(None, b"/"), Some(UpstreamId(0)));
        assert_eq!(r.route(Some(b"anything"), b"*"), Some(UpstreamId(0)));
        assert_eq!(r.route(Some(b"x"), b""), Some(UpstreamId(0)));
    }

    #[test]
    fn table() {
        let r = Router::new(&config(&[
            (None, "/api", "one"),                 // route 1
            (Some("example.com"), "/api", "two"),  // route 2: beats 1 for example.com
            (Some("Example.COM."), "/", "three"),  // route 3
            (None, "/api/v2", "four"),             // route 4
            (None, "/api/v2", "zero"),             // route 5: shadowed by 4 (tie, later)
            (Some("static.test"), "/api", "zero"), // route 6
            (Some("[::1]"), "/", "four"),          // route 7
            (None, "/static/", "three"),           // route 8
        ]));
        let cases: &[(Option<&str>, &str, Option<u32>)] = &[
            // Host-less prefix match.
            (None, "/api", Some(1)),
            (None, "/api/users?x=1", Some(1)),
            (None, "/apix", Some(1)), // prefixes are byte prefixes, like nginx locations
            (Some("other.test"), "/api/x", Some(1)),
            // Longest prefix wins; ties go to the first listed.
            (None, "/api/v2/x", Some(4)),
            (Some("example.com"), "/api/v2", Some(4)),
            // Host-specific beats host-less at equal length.
            (Some("example.com"), "/api/x", Some(2)),
            (Some("EXAMPLE.com:8080"), "/api", Some(2)),
            (Some("example.com."), "/api", Some(2)),
            (Some(" example.com "), "/api", Some(2)),
            (Some("static.test"), "/api", Some(0)),
            // Host-specific catch-all.
            (Some("example.com"), "/", Some(3)),
            (Some("example.com"), "/other", Some(3)),
            (Some("example.com:443"), "/?/api", Some(3)),
            (Some("[::1]:8080"), "/api/v2", Some(4)),
            (Some("[::1]"), "/x", Some(4)),
            // The query is not part of the path.
            (None, "/static?/api", None),
            (None, "/static/app.js?v=1", Some(3)),
            // Nothing matches.
            (None, "/", None),
            (None, "/ap", None),
            (Some("example.org"), "/", None),
            (Some("example.com.evil"), "/", None),
            (Some("sub.example.com"), "/x", None),
            (None, "*", None),
            (None, "", None),
        ];
        for &(host, path, want) in cases {
            assert_eq!(
                r.route(host.map(str::as_bytes), path.as_bytes()),
                want.map(UpstreamId),
                "host {host:?} path {path:?}"
            );
        }
    }

    #[test]
    fn bare_host_forms() {
        for (input, want) in [
            ("a.b", "a.b"),
            ("a.b:80", "a.b"),
            ("a.b.:80", "a.b"),
            ("[::1]:80", "[::1]"),
            ("[::1", "[::1"),
            ("", ""),
            (":80", ""),
        ] {
            assert_eq!(bare_host(input.as_bytes()), want.as_bytes(), "{input:?}");
        }
    }

    #[test]
    fn listener_group_is_the_fallback() {
        // No routes: a listener with its own group sends everything there, others to group 0.
        let mut c = config(&[]);
        c.listeners.push(crate::config::ListenerConfig {
            addr: Address::parse("127.0.0.1:81").unwrap(),
            upstream: Some("two".into()),
            tls: None,
        });
        c.validate().unwrap();
        let r = Router::new(&c);
        assert_eq!(r.route_from(ListenerId(0), None, b"/"), Some(UpstreamId(0)));
        assert_eq!(r.route_from(ListenerId(1), None, b"/"), Some(UpstreamId(2)));
        // With routes: a matching route still wins; no match → the listener's group, not 404.
        let mut c = config(&[(None, "/api", "one")]);
        c.listeners[0].upstream = Some("three".into());
        let r = Router::new(&c);
        assert_eq!(
            r.route_from(ListenerId(0), None, b"/api/x"),
            Some(UpstreamId(1))
        );
        assert_eq!(
            r.route_from(ListenerId(0), None, b"/else"),
            Some(UpstreamId(3))
        );
        assert_eq!(r.route(None, b"/else"), None);
        // An unknown listener index behaves like one without a group.
        assert_eq!(r.route_from(ListenerId(9), None, b"/else"), None);
    }
}
