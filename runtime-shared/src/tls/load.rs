//! From the configuration's file names to rustls configurations: PEM files read, keys matched
//! to their certificates, one `ServerConfig` per TLS listener and one `ClientConfig` per TLS
//! group. Every error names the file it is about, so `upkeep check` and a refused reload say
//! which file to fix.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientSessionMemoryCache, Resumption};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use upkeep_core::config::{CertKey, ListenerTls, UpstreamTls};

/// The only application protocol spoken: HTTP/1.1 (ALPN). A client that offers ALPN without
/// it is refused in the handshake (`no_application_protocol`), as RFC 7301 asks.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// A TLS file that could not be used: which file, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError {
    /// The file (as written in the configuration).
    pub file: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.message)
    }
}

impl std::error::Error for TlsError {}

impl From<TlsError> for std::io::Error {
    fn from(e: TlsError) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, e)
    }
}

fn error(file: &str, message: impl fmt::Display) -> TlsError {
    TlsError {
        file: file.to_owned(),
        message: message.to_string(),
    }
}

/// The crypto provider: *ring*. It builds with a C compiler alone (aws-lc-rs, rustls's
/// default, needs cmake and roughly doubles a clean CI build), and for what a proxy does per
/// connection (X25519, ECDSA P-256 / RSA-2048 verification, AES-GCM) the two are within a few
/// per cent of each other; docs/tls.md has the reasoning.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM certificate chain (leaf first).
pub fn load_certs(file: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(file)
        .map_err(|e| error(file, pem_message(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(file, pem_message(e)))?;
    if certs.is_empty() {
        return Err(error(file, "no CERTIFICATE in the file"));
    }
    Ok(certs)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(file: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(file).map_err(|e| error(file, pem_message(e)))
}

fn pem_message(e: rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::Io(e) => format!("cannot read: {e}"),
        Error::NoItemsFound => {
            "no PEM item of the expected kind (a PRIVATE KEY?) in the file".into()
        }
        other => format!("not valid PEM: {other:?}"),
    }
}

/// A certificate chain with its key, checked to belong together.
pub fn load_cert_key(cert: &str, key: &str) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = load_certs(cert)?;
    let der = load_key(key)?;
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| error(key, format!("unusable private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => {}
        // A key rustls cannot compare (no SubjectPublicKeyInfo) is let through, as rustls does.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(error(
                key,
                format!("the private key does not match the certificate in {cert}"),
            ));
        }
    }
    Ok(Arc::new(certified))
}

/// One certificate of a listener, with the names it answers for.
#[derive(Debug)]
struct Entry {
    /// Lower-case SNI names from the configuration (may start with `*.`); empty: the names in
    /// the certificate.
    names: Vec<String>,
    key: Arc<CertifiedKey>,
}

/// Picks a listener's certificate by the client's SNI: the first whose configured names match
/// (a `*.` wildcard covers one label), else the first without configured names whose
/// certificate is valid for the name, else the first (the default).
#[derive(Debug)]
pub struct SniResolver {
    entries: Vec<Entry>,
}

impl SniResolver {
    /// Loads every certificate of `tls`.
    pub fn load(tls: &ListenerTls) -> Result<SniResolver, TlsError> {
        let entries = tls
            .certs
            .iter()
            .map(|c: &CertKey| {
                Ok(Entry {
                    names: c.names.iter().map(|n| n.to_ascii_lowercase()).collect(),
                    key: load_cert_key(&c.cert, &c.key)?,
                })
            })
            .collect::<Result<Vec<_>, TlsError>>()?;
        Ok(SniResolver { entries })
    }

    /// The index of the certificate for `sni` (see the type's docs).
    pub fn pick(&self, sni: Option<&str>) -> usize {
        let Some(sni) = sni.map(str::to_ascii_lowercase) else {
            return 0;
        };
        if let Some(i) = self
            .entries
            .iter()
            .position(|e| e.names.iter().any(|n| name_matches(n, &sni)))
        {
            return i;
        }
        let Ok(name) = ServerName::try_from(sni.as_str()) else {
            return 0;
        };
        self.entries
            .iter()
            .position(|e| {
                e.names.is_empty()
                    && e.key.end_entity_cert().is_ok_and(|der| {
                        webpki::EndEntityCert::try_from(der)
                            .is_ok_and(|c| c.verify_is_valid_for_subject_name(&name).is_ok())
                    })
            })
            .unwrap_or(0)
    }
}

/// Whether a configured name (`a.example` or `*.example`) matches an SNI name (both lower
/// case). A wildcard covers exactly one label, as in certificates (RFC 6125 §6.4.3).
pub fn name_matches(pattern: &str, sni: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => sni
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == sni,
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let i = self.pick(hello.server_name());
        self.entries.get(i).map(|e| e.key.clone())
    }
}

/// The server side of a TLS listener: TLS 1.2 and 1.3, ALPN `http/1.1`, certificates by SNI,
/// stateful resumption (rustls's in-memory session cache) and TLS 1.3 tickets.
pub fn server_config(tls: &ListenerTls) -> Result<Arc<ServerConfig>, TlsError> {
    let resolver = SniResolver::load(tls)?;
    let first = tls.certs.first().map_or("", |c| c.cert.as_str());
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| error(first, e))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// The client side of a TLS group: verification against `ca` (or the system roots), an
/// optional client certificate, ALPN `http/1.1`, and resumption through `sessions` — one
/// store for the whole process, so a connection opened by any worker resumes a session
/// another worker obtained.
pub fn client_config(
    tls: &UpstreamTls,
    sessions: &Arc<ClientSessionMemoryCache>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| error(tls.ca.as_deref().unwrap_or("tls"), e))?;
    let builder = if tls.verify {
        builder.with_root_certificates(roots(tls.ca.as_deref())?)
    } else {
        log::warn!(
            "upstream TLS with verify = false: server certificates are NOT checked (for tests \
             only; anyone on the path can impersonate the server)"
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(
                provider.signature_verification_algorithms,
            )))
    };
    let mut config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let chain = load_certs(cert)?;
            let der = load_key(key)?;
            // Checks the pair matches, with the file names in the error.
            load_cert_key(cert, key)?;
            builder
                .with_client_auth_cert(chain, der)
                .map_err(|e| error(key, e))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    config.resumption = Resumption::store(sessions.clone());
    Ok(Arc::new(config))
}

/// The CA certificates of `ca`, or the system's roots.
fn roots(ca: Option<&str>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(file) => {
            for cert in load_certs(file)? {
                roots
                    .add(cert)
                    .map_err(|e| error(file, format!("not a usable CA certificate: {e}")))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                log::warn!("system CA certificates: {e}");
            }
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(error(
                    "system roots",
                    "no CA certificate found; give `ca` in the upstream's tls table",
                ));
            }
        }
    }
    Ok(roots)
}

/// `verify = false`: accepts any certificate (the handshake signatures are still checked, so
/// the session keys are the peer's; only *who* the peer is goes unchecked).
#[derive(Debug)]
struct NoVerify(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        let cases = [
            ("a.test", "a.test", true),
            ("a.test", "b.test", false),
            ("*.test", "a.test", true),
            ("*.test", "x.a.test", false),
            ("*.test", "test", false),
            ("*.test", ".test", false),
        ];
        for (pattern, sni, want) in cases {
            assert_eq!(name_matches(pattern, sni), want, "{pattern} {sni}");
        }
    }

    #[test]
    fn missing_files_are_named() {
        let e = load_cert_key("/nonexistent/cert.pem", "/nonexistent/key.pem").unwrap_err();
        assert_eq!(e.file, "/nonexistent/cert.pem");
        assert!(
            e.to_string()
                .starts_with("/nonexistent/cert.pem: cannot read"),
            "{e}"
        );
    }
}
