//! TLS on both sides, written once for both runtimes: rustls's sans-IO connections sit between
//! the socket and the core ([`TlsConn`]), so the core stays deterministic — it never sees a
//! socket, a record, a clock read or a random number — and learns only facts: a listener is
//! TLS (`X-Forwarded-Proto: https`), an upstream connection is up once its handshake is
//! complete ([`upkeep_core::Input::Connected`]), or our verification refused the server's
//! certificate ([`upkeep_core::Input::ConnectRejected`]). docs/tls.md explains the choices.
//!
//! - [`load`]: configuration file names → rustls configurations (SNI certificate selection,
//!   CA roots, client certificates), errors naming the file.
//! - [`Contexts`]: what one generation of workers uses — a `ServerConfig` per TLS listener, a
//!   `ClientConfig` per TLS group — sharing the process's one client session store
//!   ([`Sessions`]), so any worker resumes a session another worker obtained.
//! - [`TlsStats`]: handshakes (full / resumed) and failures by reason, both sides.

mod conn;
pub mod load;
mod session;
mod stats;

use std::io;
use std::sync::Arc;

use rustls::client::ClientSessionMemoryCache;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use upkeep_core::config::UpstreamTls;
use upkeep_core::{Address, Config, ConnId, Input, ListenerId, ServerId};

pub use conn::{Handshake, PLAIN_HTTP_RESPONSE, TlsConn};
pub use load::TlsError;
pub use session::{Origin, Session};
pub use stats::{Side, TlsStats};

/// The process's client session store (TLS 1.3 tickets and TLS 1.2 sessions per server name),
/// shared by every worker's `ClientConfig` and kept across reloads.
pub type Sessions = Arc<ClientSessionMemoryCache>;

/// What a process keeps across reloads: its one client session store and its counters.
#[derive(Debug, Clone)]
pub struct ProcessTls {
    /// The client session store every worker's `ClientConfig` shares.
    pub sessions: Sessions,
    /// Handshakes and failures.
    pub stats: Arc<TlsStats>,
}

impl Default for ProcessTls {
    fn default() -> ProcessTls {
        ProcessTls {
            sessions: sessions(),
            stats: Arc::default(),
        }
    }
}

/// Server names remembered by [`Sessions`] (each with a few tickets).
pub const SESSION_CACHE_SERVERS: usize = 1024;

/// A new session store for a process (one per proxy instance).
pub fn sessions() -> Sessions {
    Arc::new(ClientSessionMemoryCache::new(SESSION_CACHE_SERVERS))
}

/// Why a TLS connection failed (the label of `..._tls_failures_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Failure {
    /// A plain HTTP request on a TLS listener.
    PlainHttp,
    /// The peer closed during the handshake.
    Closed,
    /// A socket error.
    Io(io::ErrorKind),
    /// The peer's certificate has expired (or is not valid yet).
    CertExpired,
    /// The peer's certificate is not valid for the name we asked for.
    CertName,
    /// The peer's certificate is not signed by a CA we trust.
    CertIssuer,
    /// Any other certificate problem (revoked, bad encoding, wrong usage...).
    CertOther,
    /// The peer refused *our* certificate, or our lack of one (an alert such as
    /// `certificate_required` or `unknown_ca`): toward an upstream, our client certificate
    /// settings do not match what the server demands.
    CertRefused,
    /// The peer sent a fatal alert.
    Alert,
    /// No common application protocol (ALPN) or protocol version / cipher suite.
    Incompatible,
    /// Bytes that are not TLS, or a record that does not decrypt (garbage, truncation).
    BadRecord,
}

impl Failure {
    /// Classifies a rustls error.
    pub fn from_rustls(e: &rustls::Error) -> Failure {
        use rustls::{CertificateError as C, Error as E};
        match e {
            E::InvalidCertificate(c) => match c {
                C::Expired
                | C::ExpiredContext { .. }
                | C::NotValidYet
                | C::NotValidYetContext { .. } => Failure::CertExpired,
                C::NotValidForName | C::NotValidForNameContext { .. } => Failure::CertName,
                C::UnknownIssuer => Failure::CertIssuer,
                _ => Failure::CertOther,
            },
            E::AlertReceived(a) if refuses_certificate(*a) => Failure::CertRefused,
            E::AlertReceived(_) => Failure::Alert,
            E::NoApplicationProtocol | E::PeerIncompatible(_) => Failure::Incompatible,
            _ => Failure::BadRecord,
        }
    }

    /// What went wrong, for the log line.
    pub fn describe(self) -> &'static str {
        match self {
            Failure::PlainHttp => "a plain HTTP request on a TLS port (answered 400 in clear text)",
            Failure::Closed => "the peer closed during the handshake",
            Failure::Io(_) => "a socket error",
            Failure::CertExpired => "the certificate has expired or is not valid yet",
            Failure::CertName => "the certificate is not valid for the server name",
            Failure::CertIssuer => "the certificate is not signed by a trusted CA",
            Failure::CertOther => "the certificate was refused",
            Failure::CertRefused => "the peer refused our certificate (or its absence)",
            Failure::Alert => "the peer sent a fatal alert",
            Failure::Incompatible => "no common protocol version, cipher suite or ALPN protocol",
            Failure::BadRecord => "bytes that are not valid TLS (garbage or a broken record)",
        }
    }

    /// The metrics label.
    pub fn reason(self) -> &'static str {
        match self {
            Failure::PlainHttp => "plain_http",
            Failure::Closed => "closed",
            Failure::Io(_) => "io",
            Failure::CertExpired => "cert_expired",
            Failure::CertName => "cert_name",
            Failure::CertIssuer => "cert_issuer",
            Failure::CertOther => "cert_invalid",
            Failure::CertRefused => "cert_refused",
            Failure::Alert => "alert",
            Failure::Incompatible => "incompatible",
            Failure::BadRecord => "bad_record",
        }
    }

    /// Whether *our* verification refused the peer's certificate, or the peer refused ours:
    /// on an upstream connection a configuration matter (our CA file, our SNI, our client
    /// certificate, or a server that needs a new certificate), not a sign that the server is
    /// down.
    pub fn is_certificate(self) -> bool {
        matches!(
            self,
            Failure::CertExpired
                | Failure::CertName
                | Failure::CertIssuer
                | Failure::CertOther
                | Failure::CertRefused
        )
    }

    /// What the core hears about a failed upstream handshake: a refused certificate is
    /// [`Input::ConnectRejected`] (502, the server's health untouched, no other server tried:
    /// every server of the group is judged by the same settings); anything else is the
    /// server's failure to connect ([`Input::ConnectFailed`]: health counted, next server).
    pub fn input(self, conn: ConnId) -> Input<'static> {
        if self.is_certificate() {
            Input::ConnectRejected { conn }
        } else {
            Input::ConnectFailed { conn }
        }
    }
}

/// Whether a fatal alert says the peer refused our certificate (or that we sent none).
fn refuses_certificate(alert: rustls::AlertDescription) -> bool {
    use rustls::AlertDescription as A;
    matches!(
        alert,
        A::CertificateRequired
            | A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::AccessDenied
    )
}

/// The TLS toward one group: its client configuration and each server's name.
#[derive(Debug)]
struct UpstreamSide {
    config: Arc<ClientConfig>,
    names: Vec<ServerName<'static>>,
}

/// The TLS material of one configuration (one generation of workers), loaded from files.
#[derive(Debug, Default)]
pub struct Contexts {
    listeners: Vec<Option<Arc<ServerConfig>>>,
    upstreams: Vec<Option<UpstreamSide>>,
    stats: Arc<TlsStats>,
}

impl Contexts {
    /// Loads every certificate, key and CA file `config` names. A reload that fails here keeps
    /// the old configuration.
    pub fn load(config: &Config, process: &ProcessTls) -> Result<Contexts, TlsError> {
        let ProcessTls { sessions, stats } = process;
        let listeners = config
            .listeners
            .iter()
            .map(|l| l.tls.as_ref().map(load::server_config).transpose())
            .collect::<Result<_, _>>()?;
        // One `ClientConfig` per distinct settings, shared by the groups that have them:
        // rustls resumes a session only under the configuration (verifier, client
        // certificate) that obtained it, and takes a ticket out of the shared store before it
        // checks — groups with equal settings but configurations of their own would take and
        // throw away each other's tickets, and never resume.
        let mut built: Vec<(&UpstreamTls, Arc<ClientConfig>)> = Vec::new();
        let mut upstreams = Vec::with_capacity(config.upstreams.len());
        for g in &config.upstreams {
            let Some(tls) = &g.tls else {
                upstreams.push(None);
                continue;
            };
            let names = g
                .servers
                .iter()
                .map(|s| server_name(tls.sni.as_deref(), &s.addr))
                .collect::<Result<_, _>>()?;
            let config = match built.iter().find(|(t, _)| *t == tls) {
                Some((_, c)) => c.clone(),
                None => {
                    // Other settings get a store of their own (for this configuration: a
                    // reload's new configurations cannot resume the old ones anyway), so that
                    // they do not take each other's tickets for the same server name either.
                    let store = if built.is_empty() {
                        sessions.clone()
                    } else {
                        self::sessions()
                    };
                    let c = load::client_config(tls, &store)?;
                    built.push((tls, c.clone()));
                    c
                }
            };
            upstreams.push(Some(UpstreamSide { config, names }));
        }
        Ok(Contexts {
            listeners,
            upstreams,
            stats: stats.clone(),
        })
    }

    /// Whether any listener or group uses TLS.
    pub fn any(&self) -> bool {
        self.listeners.iter().any(Option::is_some) || self.upstreams.iter().any(Option::is_some)
    }

    /// The server side of a connection accepted on listener `i`, if it is a TLS listener.
    pub fn accept(&self, listener: ListenerId) -> Option<io::Result<Session>> {
        let config = self.listeners.get(listener.0 as usize)?.as_ref()?;
        let origin = Origin::Listener(listener);
        Some(TlsConn::server(config.clone()).map(|t| Session::new(t, origin, self.stats.clone())))
    }

    /// The client side of a connection to `server`, if its group uses TLS.
    pub fn connect(&self, server: ServerId) -> Option<io::Result<Session>> {
        let side = self.upstreams.get(server.upstream.0 as usize)?.as_ref()?;
        let name = side.names.get(server.index as usize)?.clone();
        let origin = Origin::Server(server);
        Some(
            TlsConn::client(side.config.clone(), name)
                .map(|t| Session::new(t, origin, self.stats.clone())),
        )
    }

    /// The counters these connections report to.
    pub fn stats(&self) -> &Arc<TlsStats> {
        &self.stats
    }
}

/// The name a server is verified against: the group's `sni`, else its IP address (no SNI is
/// sent for an IP), else `localhost` for a Unix socket.
fn server_name(sni: Option<&str>, addr: &Address) -> Result<ServerName<'static>, TlsError> {
    let invalid = |n: &str| TlsError {
        file: "tls".into(),
        message: format!("sni {n:?} is not a valid server name"),
    };
    match (sni, addr) {
        (Some(n), _) => ServerName::try_from(n.to_owned()).map_err(|_| invalid(n)),
        (None, Address::Tcp(a)) => Ok(ServerName::IpAddress(a.ip().into())),
        (None, Address::Unix(_)) => Ok(ServerName::try_from("localhost").expect("valid name")),
    }
}
