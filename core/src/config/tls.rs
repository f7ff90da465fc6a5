//! TLS settings as plain data: file names and names, nothing loaded. The core never touches a
//! certificate (it does no I/O); the shared runtime layer (`upkeep-runtime`'s `tls` module)
//! loads these files, and the core only learns the facts it needs (a listener is TLS, so
//! `X-Forwarded-Proto: https`).
//!
//! TOML:
//!
//! ```toml
//! [[listen]]
//! addr = "0.0.0.0:443"
//! tls = { cert = "fullchain.pem", key = "key.pem" }
//! # or several certificates chosen by SNI, the first the default:
//! # tls = { certs = [{ cert = "a.pem", key = "a.key", names = ["a.example"] }, { cert = "b.pem", key = "b.key" }] }
//!
//! [[upstream]]
//! name = "app"
//! servers = ["10.0.0.5:443"]
//! tls = { sni = "app.internal", ca = "ca.pem", verify = true, cert = "client.pem", key = "client.key" }
//! ```

/// One certificate chain and its private key (PEM files), optionally restricted to some SNI
/// names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertKey {
    /// PEM file with the certificate chain, leaf first (`fullchain.pem`).
    pub cert: String,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// Server names (SNI) this certificate answers for. Empty: the names in the certificate
    /// itself (its subject alternative names).
    pub names: Vec<String>,
}

/// TLS on a listener (`[[listen]] tls = { ... }`): TLS 1.2 and 1.3, ALPN `http/1.1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerTls {
    /// The certificates, chosen by the client's SNI; the first is the default (no SNI, or a
    /// name no certificate claims). At least one.
    pub certs: Vec<CertKey>,
}

impl ListenerTls {
    /// One certificate for every name.
    pub fn single(cert: impl Into<String>, key: impl Into<String>) -> ListenerTls {
        ListenerTls {
            certs: vec![CertKey {
                cert: cert.into(),
                key: key.into(),
                names: Vec::new(),
            }],
        }
    }
}

/// TLS toward the servers of an upstream group (`[[upstream]] tls = { ... }`).
///
/// The pool never mixes TLS identities: idle connections are keyed by server, and a server
/// belongs to one group, whose TLS settings (this struct) are the same for all its
/// connections; two groups with the same address and different settings have different
/// servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamTls {
    /// Server name sent as SNI and verified against the certificate. `None`: the server's
    /// address (an IP address is verified against the certificate's IP SANs and sends no SNI).
    pub sni: Option<String>,
    /// PEM file of the CA certificates to trust; `None`: the system roots.
    pub ca: Option<String>,
    /// Verify the server's certificate (default true). `false` is for tests only and is logged
    /// as a warning.
    pub verify: bool,
    /// Client certificate chain (PEM) for mutual TLS; requires `key`.
    pub cert: Option<String>,
    /// Client private key (PEM); requires `cert`.
    pub key: Option<String>,
}

impl Default for UpstreamTls {
    fn default() -> UpstreamTls {
        UpstreamTls {
            sni: None,
            ca: None,
            verify: true,
            cert: None,
            key: None,
        }
    }
}

/// Checks that need no file: a listener has a certificate, each with both files named; a
/// client certificate comes with its key; names are non-empty.
pub(super) fn check_listener(tls: &ListenerTls) -> Result<(), String> {
    if tls.certs.is_empty() {
        return Err("tls: at least one certificate is required".into());
    }
    for (i, c) in tls.certs.iter().enumerate() {
        if c.cert.is_empty() || c.key.is_empty() {
            return Err(format!(
                "tls: certificate {}: cert and key are required",
                i + 1
            ));
        }
        if c.names.iter().any(String::is_empty) {
            return Err(format!("tls: certificate {}: empty name", i + 1));
        }
    }
    Ok(())
}

/// See [`check_listener`].
pub(super) fn check_upstream(tls: &UpstreamTls) -> Result<(), String> {
    if tls.cert.is_some() != tls.key.is_some() {
        return Err("tls: cert and key go together (client certificate)".into());
    }
    if tls.sni.as_deref() == Some("") {
        return Err("tls: sni must not be empty".into());
    }
    Ok(())
}

#[cfg(feature = "serde")]
mod de {
    use super::{CertKey, ListenerTls, UpstreamTls};
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RawCertKey {
        cert: String,
        key: String,
        #[serde(default)]
        names: Vec<String>,
    }

    /// `{ cert, key }` or `{ certs = [...] }` (not both).
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RawListenerTls {
        cert: Option<String>,
        key: Option<String>,
        #[serde(default)]
        certs: Vec<RawCertKey>,
    }

    impl<'de> Deserialize<'de> for ListenerTls {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ListenerTls, D::Error> {
            let raw = RawListenerTls::deserialize(d)?;
            let mut certs: Vec<CertKey> = Vec::new();
            match (raw.cert, raw.key) {
                (Some(cert), Some(key)) => certs.push(CertKey {
                    cert,
                    key,
                    names: Vec::new(),
                }),
                (None, None) => {}
                _ => return Err(serde::de::Error::custom("tls: cert and key go together")),
            }
            if !certs.is_empty() && !raw.certs.is_empty() {
                return Err(serde::de::Error::custom(
                    "tls: give either cert and key, or certs, not both",
                ));
            }
            certs.extend(raw.certs.into_iter().map(|c| CertKey {
                cert: c.cert,
                key: c.key,
                names: c.names,
            }));
            if certs.is_empty() {
                return Err(serde::de::Error::custom(
                    "tls: cert and key (or certs) are required",
                ));
            }
            Ok(ListenerTls { certs })
        }
    }

    fn yes() -> bool {
        true
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RawUpstreamTls {
        sni: Option<String>,
        ca: Option<String>,
        #[serde(default = "yes")]
        verify: bool,
        cert: Option<String>,
        key: Option<String>,
    }

    impl<'de> Deserialize<'de> for UpstreamTls {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<UpstreamTls, D::Error> {
            let RawUpstreamTls {
                sni,
                ca,
                verify,
                cert,
                key,
            } = RawUpstreamTls::deserialize(d)?;
            Ok(UpstreamTls {
                sni,
                ca,
                verify,
                cert,
                key,
            })
        }
    }
}

#[cfg(all(test, feature = "toml"))]
mod tests {
    use crate::Config;

    const BASE: &str = "[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:9001\"]\n";

    #[test]
    fn listener_tls_forms() {
        let one = format!(
            "[[listen]]\naddr = \"127.0.0.1:8443\"\ntls = {{ cert = \"c.pem\", key = \"k.pem\" }}\n{BASE}"
        );
        let c = Config::from_toml(&one).unwrap();
        let tls = c.listeners[0].tls.as_ref().unwrap();
        assert_eq!(tls.certs.len(), 1);
        assert_eq!(tls.certs[0].cert, "c.pem");
        let many = format!(
            "[[listen]]\naddr = \"127.0.0.1:8443\"\ntls = {{ certs = [{{ cert = \"a.pem\", key = \"a.key\", names = [\"a.test\"] }}, {{ cert = \"b.pem\", key = \"b.key\" }}] }}\n{BASE}"
        );
        let c = Config::from_toml(&many).unwrap();
        let tls = c.listeners[0].tls.as_ref().unwrap();
        assert_eq!(tls.certs[0].names, ["a.test"]);
        assert_eq!(tls.certs[1].key, "b.key");
        let half =
            format!("[[listen]]\naddr = \"127.0.0.1:8443\"\ntls = {{ cert = \"c.pem\" }}\n{BASE}");
        let e = Config::from_toml(&half).unwrap_err();
        assert!(e.message.contains("cert and key go together"), "{e}");
        assert_eq!(e.line, 3, "{e}");
        let typo = format!(
            "[[listen]]\naddr = \"127.0.0.1:8443\"\ntls = {{ cert = \"c.pem\", key = \"k.pem\", kye = 1 }}\n{BASE}"
        );
        let e = Config::from_toml(&typo).unwrap_err();
        assert!(e.message.contains("kye"), "{e}");
    }

    #[test]
    fn upstream_tls_forms() {
        let text = "listen = [\"127.0.0.1:8080\"]\n[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:9001\"]\ntls = { sni = \"app.test\", ca = \"ca.pem\" }\n";
        let c = Config::from_toml(text).unwrap();
        let tls = c.upstreams[0].tls.as_ref().unwrap();
        assert_eq!(tls.sni.as_deref(), Some("app.test"));
        assert!(tls.verify);
        let text = "listen = [\"127.0.0.1:8080\"]\n[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:9001\"]\ntls = { cert = \"c.pem\" }\n";
        let e = Config::from_toml(text).unwrap_err();
        assert!(e.message.contains("cert and key go together"), "{e}");
        assert_eq!(e.line, 5, "{e}");
        let text = "listen = [\"127.0.0.1:8080\"]\n[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:9001\"]\ntls = {}\n";
        let c = Config::from_toml(text).unwrap();
        assert_eq!(c.upstreams[0].tls, Some(Default::default()));
    }
}
