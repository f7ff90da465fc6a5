//! Host names in server addresses (`"app.internal:8080"`). The core never resolves them: a
//! server written with a name keeps it in [`ServerConfig::host`], and a runtime replaces that
//! server by one per resolved address (`upkeep_runtime::resolve`) before a
//! [`Core`](crate::Core) sees the configuration. [`Config::validate`] accepts names (so that
//! `upkeep check` needs no network); [`Config::validate_resolved`], which the core runs, does not.

use core::net::{Ipv4Addr, SocketAddr};

use super::{Address, Config, ConfigError, ServerConfig};

/// Longest DNS name (RFC 1035 §2.3.4, without the trailing dot).
const MAX_NAME: usize = 253;

/// Whether `host` is a plausible DNS host name: dot-separated labels of ASCII letters, digits,
/// `-` and `_` (Docker and Kubernetes service names use `_` rarely, but they exist), each 1..=63
/// bytes, not starting or ending with `-`, and not all-numeric at the end (that is a mistyped
/// IPv4 address).
pub(super) fn is_host_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    !host.is_empty()
        && host.len() <= MAX_NAME
        && host.split('.').all(label_ok)
        && !host
            .rsplit('.')
            .next()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

impl ServerConfig {
    /// A server written as `host:port`, to be resolved by the runtime. Until then
    /// [`addr`](ServerConfig::addr) is the unspecified address with that port.
    pub fn named(host: impl Into<String>, port: u16) -> ServerConfig {
        ServerConfig {
            host: Some(host.into()),
            ..ServerConfig::new(Address::Tcp(SocketAddr::from((
                Ipv4Addr::UNSPECIFIED,
                port,
            ))))
        }
    }

    /// Parses a server address: whatever [`Address::parse`] reads, or `NAME:PORT` with NAME a
    /// host name ([`ServerConfig::named`]).
    ///
    /// ```
    /// use upkeep_core::config::ServerConfig;
    ///
    /// let s = ServerConfig::parse("app.internal:8080").unwrap();
    /// assert_eq!(s.host.as_deref(), Some("app.internal"));
    /// assert_eq!(s.target(), "app.internal:8080");
    /// assert!(ServerConfig::parse("127.0.0.1:8080").unwrap().host.is_none());
    /// assert!(ServerConfig::parse("bad name:80").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<ServerConfig, String> {
        let literal = match Address::parse(s) {
            Ok(addr) => return Ok(ServerConfig::new(addr)),
            Err(e) => e,
        };
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(literal);
        };
        // Only the "not an IP literal" failure can be a name; anything else (a bad port, a
        // mistyped IPv4 address, a missing bracket) keeps the literal parser's message.
        if !literal.contains("not an IP literal") {
            return Err(literal);
        }
        if !is_host_name(host) {
            return Err(format!(
                "host {host:?} in address {s:?} is neither an IP address nor a host name"
            ));
        }
        let port = Address::parse(&format!("0.0.0.0:{port}"))
            .map_err(|e| e.replace("0.0.0.0:", &format!("{host}:")))?;
        let Address::Tcp(sa) = port else {
            unreachable!("a TCP literal")
        };
        Ok(ServerConfig::named(host, sa.port()))
    }

    /// What the server was written as, for messages: `host:port` for a name, else the address.
    pub fn target(&self) -> String {
        match (&self.host, &self.addr) {
            (Some(host), Address::Tcp(sa)) => format!("{host}:{}", sa.port()),
            _ => self.addr.to_string(),
        }
    }
}

impl Config {
    /// Whether any server is written with a host name still to be resolved.
    pub fn has_names(&self) -> bool {
        self.upstreams
            .iter()
            .any(|u| u.servers.iter().any(|s| s.host.is_some()))
    }

    /// [`Config::validate`], and every server address is literal (names resolved): what a
    /// [`Core`](crate::Core) needs, since it never resolves.
    pub fn validate_resolved(&self) -> Result<(), ConfigError> {
        self.validate()?;
        for up in &self.upstreams {
            for (j, s) in up.servers.iter().enumerate() {
                if s.host.is_some() {
                    return Err(ConfigError::new(
                        format!("upstream {:?}: server {}", up.name, j + 1),
                        format!(
                            "host name {} is not resolved: the core takes addresses only \
                             (resolve with upkeep_runtime::resolve first)",
                            s.target()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names() {
        for ok in [
            "app",
            "app.internal",
            "my-svc.ns.svc.cluster.local",
            "a_b.c",
            "x1.",
            "web-1",
        ] {
            assert!(is_host_name(ok), "{ok}");
        }
        for bad in [
            "", ".", "a..b", "-a", "a-", "a b", "1.2.3", "app.123", "ä.de", "a/b",
        ] {
            assert!(!is_host_name(bad), "{bad}");
        }
        assert!(!is_host_name(&"a".repeat(64)));
    }

    #[test]
    fn server_addresses() {
        let named = ServerConfig::parse("app.internal:8080").unwrap();
        assert_eq!(named, ServerConfig::named("app.internal", 8080));
        assert_eq!(named.weight, 1);
        assert_eq!(
            ServerConfig::parse("localhost:80")
                .unwrap()
                .addr
                .to_string(),
            "127.0.0.1:80",
            "localhost stays the literal it always was"
        );
        assert_eq!(ServerConfig::parse("unix:/a").unwrap().host, None);
        for (bad, want) in [
            ("app.internal", "missing port"),
            ("app.internal:", "missing port"),
            ("app.internal:http", "invalid port"),
            ("app.internal:70000", "out of range"),
            ("app internal:80", "neither an IP address nor a host name"),
            ("1.2.3:80", "invalid IPv4"),
            ("::1:80", "brackets"),
        ] {
            let e = ServerConfig::parse(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
        let e = ServerConfig::parse("app.internal:70000").unwrap_err();
        assert!(e.contains("app.internal:70000"), "{e}");
    }

    #[test]
    fn names_validate_but_are_not_resolved() {
        let a = |s: &str| Address::parse(s).unwrap();
        let mut c = Config::simple(a("127.0.0.1:0"), vec![a("127.0.0.1:9")]);
        c.validate_resolved().unwrap();
        assert!(!c.has_names());
        c.upstreams[0].servers.push(ServerConfig::named("app", 80));
        assert!(c.has_names());
        c.validate().unwrap();
        let e = c.validate_resolved().unwrap_err();
        assert_eq!(e.location, "upstream \"default\": server 2");
        assert!(e.message.contains("app:80 is not resolved"), "{e}");
        c.upstreams[0].servers[1] = ServerConfig::named("app", 0);
        assert!(c.validate().is_err(), "port 0 is refused for names too");
    }
}
