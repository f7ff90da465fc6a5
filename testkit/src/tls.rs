//! TLS for tests: a throwaway certificate authority whose certificates land as PEM files in a
//! temporary directory ([`Pki`]), a TLS front for the loopback backends that counts handshakes
//! (full and resumed) and the SNI names it saw ([`TlsFront`]), and a raw rustls client
//! ([`connect`]) that reports what the handshake negotiated.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, date_time_ymd,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, HandshakeKind, RootCertStore, ServerConfig};
use rustls::{ServerConnection, StreamOwned};
use upkeep_core::Address;

use crate::wire::TempDir;

/// How often blocked front threads wake up to check for shutdown.
const POLL: Duration = Duration::from_millis(20);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate and its key as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The certificate chain (leaf first).
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

impl CertFiles {
    /// `cert` as the string a configuration takes.
    pub fn cert_str(&self) -> String {
        self.cert.display().to_string()
    }

    /// `key` as the string a configuration takes.
    pub fn key_str(&self) -> String {
        self.key.display().to_string()
    }

    /// The chain and the key, parsed.
    pub fn load(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let certs = CertificateDer::pem_file_iter(&self.cert)
            .expect("cert")
            .map(|c| c.expect("cert"))
            .collect();
        (certs, PrivateKeyDer::from_pem_file(&self.key).expect("key"))
    }

    /// The leaf certificate (DER), to compare with what a client was shown.
    pub fn leaf(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(&self.cert).expect("certificate")
    }
}

/// A test certificate authority writing PEM files into its own temporary directory.
pub struct Pki {
    dir: TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
    next: AtomicUsize,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl Pki {
    /// A new CA (its certificate is [`Pki::ca_file`]).
    pub fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "upkeep test CA");
        let key = KeyPair::generate().expect("key");
        let ca = CertifiedIssuer::self_signed(params, key).expect("CA");
        let dir = TempDir::new().expect("temp dir");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write CA");
        Pki {
            dir,
            ca,
            next: AtomicUsize::new(0),
        }
    }

    /// The CA certificate (PEM).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The directory the files are in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A leaf certificate for `names` (DNS names or IP addresses), valid now.
    pub fn leaf(&self, names: &[&str]) -> CertFiles {
        self.issue(names, false)
    }

    /// A leaf certificate for `names` that expired in 2001.
    pub fn expired_leaf(&self, names: &[&str]) -> CertFiles {
        self.issue(names, true)
    }

    fn issue(&self, names: &[&str], expired: bool) -> CertFiles {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("params");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        if expired {
            params.not_before = date_time_ymd(2000, 1, 1);
            params.not_after = date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca).expect("sign");
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let files = CertFiles {
            cert: self.dir.path().join(format!("leaf{n}.pem")),
            key: self.dir.path().join(format!("leaf{n}.key")),
        };
        std::fs::write(&files.cert, cert.pem()).expect("write cert");
        std::fs::write(&files.key, key.serialize_pem()).expect("write key");
        files
    }

    /// Upstream TLS settings verifying against this CA, with `sni` (else the server's IP).
    pub fn upstream_tls(&self, sni: Option<&str>) -> upkeep_core::config::UpstreamTls {
        upkeep_core::config::UpstreamTls {
            sni: sni.map(str::to_owned),
            ca: Some(self.ca_file().display().to_string()),
            ..upkeep_core::config::UpstreamTls::default()
        }
    }

    /// Runs curl against `https://localhost:PORT/PATH` for each path (one curl, so one
    /// connection when it can keep it alive), trusting this CA; returns stdout, each body
    /// followed by a line `STATUS HTTP-VERSION`. Panics when curl fails.
    pub fn curl(&self, port: u16, paths: &[&str]) -> String {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "20", "--cacert"])
            .arg(self.ca_file())
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
            .args(["-w", "\n%{http_code} %{http_version}\n"])
            .args(paths.iter().map(|p| format!("https://localhost:{port}{p}")))
            .output()
            .expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    /// A client configuration trusting this CA, with ALPN `http/1.1` (and a session store of
    /// its own, so resumption works within one config).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(self.ca_file()).expect("CA") {
            roots.add(c.expect("CA cert")).expect("add CA");
        }
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl Default for Pki {
    fn default() -> Pki {
        Pki::new()
    }
}

/// A server configuration with one certificate (TLS 1.2 and 1.3, rustls's default session
/// cache and tickets, so clients can resume).
pub fn server_config(files: &CertFiles) -> Arc<ServerConfig> {
    let (certs, key) = files.load();
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("cert and key");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// [`server_config`] that also requires a client certificate signed by `pki`'s CA (mutual TLS).
pub fn server_config_requiring_client_cert(files: &CertFiles, pki: &Pki) -> Arc<ServerConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(pki.ca_file()).expect("CA") {
        roots.add(c.expect("CA cert")).expect("add CA");
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .expect("client verifier");
    let (certs, key) = files.load();
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .expect("cert and key");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// What a raw TLS client's handshake negotiated.
#[derive(Debug)]
pub struct Negotiated {
    /// The server's leaf certificate.
    pub leaf: CertificateDer<'static>,
    /// The ALPN protocol, if any.
    pub alpn: Option<Vec<u8>>,
}

/// A blocking rustls client stream over TCP.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// Connects to `addr` with TLS, asking for `sni`, and completes the handshake (bounded by
/// `IO_TIMEOUT`).
pub fn connect(
    addr: &Address,
    sni: &str,
    config: Arc<ClientConfig>,
) -> io::Result<(TlsStream, Negotiated)> {
    let Address::Tcp(a) = addr else {
        return Err(io::Error::other("TLS tests use TCP"));
    };
    let tcp = TcpStream::connect(a)?;
    tcp.set_read_timeout(Some(crate::wire::IO_TIMEOUT))?;
    tcp.set_write_timeout(Some(crate::wire::IO_TIMEOUT))?;
    let name = ServerName::try_from(sni.to_owned()).map_err(io::Error::other)?;
    let conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
    let mut stream = StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    let leaf = stream
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned()
        .ok_or_else(|| io::Error::other("no server certificate"))?;
    let alpn = stream.conn.alpn_protocol().map(<[u8]>::to_vec);
    Ok((stream, Negotiated { leaf, alpn }))
}

/// Counts shared between a [`TlsFront`] and its connection threads.
#[derive(Debug, Default)]
struct FrontStats {
    full: AtomicUsize,
    resumed: AtomicUsize,
    failed: AtomicUsize,
    sni: Mutex<BTreeMap<String, usize>>,
}

/// A TLS front for plain loopback backends: accepts TLS, completes the handshake, counts it
/// (full or resumed, and by SNI), then relays the plaintext both ways over one fresh TCP
/// connection to the backend the SNI maps to (or the default backend) — one backend
/// connection per TLS connection, so the backend's own counters still count connections.
#[derive(Debug)]
pub struct TlsFront {
    addr: SocketAddr,
    stats: Arc<FrontStats>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TlsFront {
    /// A front on 127.0.0.1 for `backend`, serving `config`'s certificate.
    pub fn start(config: Arc<ServerConfig>, backend: Address) -> io::Result<TlsFront> {
        TlsFront::start_routed(config, backend, BTreeMap::new())
    }

    /// The same, relaying connections whose SNI is a key of `by_sni` to that backend instead.
    pub fn start_routed(
        config: Arc<ServerConfig>,
        default: Address,
        by_sni: BTreeMap<String, Address>,
    ) -> io::Result<TlsFront> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(FrontStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (stats.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("tls-front".into())
            .spawn(move || {
                while !st.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((tcp, _)) => {
                            let (config, s, st) = (config.clone(), s.clone(), st.clone());
                            let (default, by_sni) = (default.clone(), by_sni.clone());
                            let _ = std::thread::Builder::new()
                                .name("tls-front-conn".into())
                                .spawn(move || {
                                    if serve(tcp, config, &s, &st, &default, &by_sni).is_err() {
                                        s.failed.fetch_add(1, Ordering::Relaxed);
                                    }
                                });
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
                        Err(_) => std::thread::sleep(POLL),
                    }
                }
            })?;
        Ok(TlsFront {
            addr,
            stats,
            stop,
            thread: Some(thread),
        })
    }

    /// Where the front listens.
    pub fn addr(&self) -> Address {
        Address::Tcp(self.addr)
    }

    /// Completed handshakes: `(full, resumed)`.
    pub fn handshakes(&self) -> (usize, usize) {
        (
            self.stats.full.load(Ordering::Relaxed),
            self.stats.resumed.load(Ordering::Relaxed),
        )
    }

    /// Connections that failed (handshake refused by either side, or I/O errors).
    pub fn failed(&self) -> usize {
        self.stats.failed.load(Ordering::Relaxed)
    }

    /// Completed handshakes per SNI name (`""` for none).
    pub fn sni(&self) -> BTreeMap<String, usize> {
        self.stats.sni.lock().unwrap().clone()
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One TLS connection of a front: handshake, count, then relay until either side closes.
fn serve(
    tcp: TcpStream,
    config: Arc<ServerConfig>,
    stats: &FrontStats,
    stop: &AtomicBool,
    default: &Address,
    by_sni: &BTreeMap<String, Address>,
) -> io::Result<()> {
    tcp.set_nonblocking(false)?;
    tcp.set_read_timeout(Some(crate::wire::IO_TIMEOUT))?;
    // Without SNI routing the backend is known before the handshake: connect to it first, and
    // reset the client's connection if it is down, so a proxy sees a refused connect (as it
    // would without the front) rather than a handshake that then goes nowhere.
    let early = if by_sni.is_empty() {
        match connect_inner(default) {
            Ok(inner) => Some(inner),
            Err(e) => {
                let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
                return Err(e);
            }
        }
    } else {
        None
    };
    let conn = ServerConnection::new(config).map_err(io::Error::other)?;
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    let resumed = tls.conn.handshake_kind() == Some(HandshakeKind::Resumed);
    if resumed { &stats.resumed } else { &stats.full }.fetch_add(1, Ordering::Relaxed);
    let sni = tls.conn.server_name().unwrap_or("").to_owned();
    *stats.sni.lock().unwrap().entry(sni.clone()).or_default() += 1;
    let mut inner = match early {
        Some(inner) => inner,
        None => connect_inner(by_sni.get(&sni).unwrap_or(default))?,
    };
    inner.set_nonblocking(true)?;
    tls.sock.set_nonblocking(true)?;
    // One thread drives both directions with non-blocking sockets (a rustls stream cannot be
    // split between threads), sleeping briefly when neither side has anything.
    let mut buf = vec![0; 64 * 1024];
    let (mut client_open, mut inner_open) = (true, true);
    while !stop.load(Ordering::Relaxed) && (client_open || inner_open) {
        let mut idle = true;
        if client_open {
            match tls.read(&mut buf) {
                Ok(0) => {
                    client_open = false;
                    let _ = inner.shutdown(Shutdown::Write);
                }
                Ok(n) => {
                    idle = false;
                    write_all_nonblocking(&mut inner, &buf[..n])?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    client_open = false;
                    let _ = inner.shutdown(Shutdown::Write);
                }
            }
        }
        if inner_open {
            match inner.read(&mut buf) {
                Ok(0) => {
                    inner_open = false;
                    tls.conn.send_close_notify();
                    flush_tls(&mut tls)?;
                    let _ = tls.sock.shutdown(Shutdown::Write);
                    if !client_open {
                        break;
                    }
                }
                Ok(n) => {
                    idle = false;
                    // rustls takes at most its buffer limit (64 KiB, records included) at a
                    // time: write what it takes, send it, go on.
                    let mut rest = &buf[..n];
                    while !rest.is_empty() {
                        let taken = tls.conn.writer().write(rest)?;
                        rest = &rest[taken..];
                        flush_tls(&mut tls)?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    // The backend reset: so does the front.
                    let _ = socket2::SockRef::from(&tls.sock).set_linger(Some(Duration::ZERO));
                    return Ok(());
                }
            }
        }
        if !inner_open && !client_open {
            break;
        }
        if idle {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(())
}

fn connect_inner(target: &Address) -> io::Result<TcpStream> {
    match target {
        Address::Tcp(a) => TcpStream::connect(a),
        Address::Unix(_) => Err(io::Error::other("TLS fronts relay to TCP backends")),
    }
}

fn write_all_nonblocking(w: &mut impl Write, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match w.write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn flush_tls(tls: &mut StreamOwned<ServerConnection, TcpStream>) -> io::Result<()> {
    while tls.conn.wants_write() {
        match tls.conn.write_tls(&mut tls.sock) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The rustls the helpers use, for tests that build their own connections.
pub use rustls as rustls_crate;

/// The first `len` bytes of a real ClientHello for `sni` (a handshake that stalls midway).
pub fn client_hello_prefix(config: Arc<ClientConfig>, sni: &str, len: usize) -> Vec<u8> {
    let name = ServerName::try_from(sni.to_owned()).expect("name");
    let mut conn = ClientConnection::new(config, name).expect("client");
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).expect("ClientHello");
    hello.truncate(len.min(hello.len()));
    hello
}
