//! TLS listeners on the mio runtime: curl and a raw rustls client through a TLS listener (the
//! certificate SNI asks for, ALPN http/1.1, X-Forwarded-Proto: https), and every bad input a
//! client can send to a TLS port — plain HTTP (a clear-text 400), garbage, a truncated record,
//! a ClientHello that stalls (bounded by the header timeout) — never a panic or a hang.

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use upkeep_core::config::{CertKey, ListenerTls};
use upkeep_core::{Address, Config};
use upkeep_mio::{Proxy, ProxyHandle};
use upkeep_runtime::tls::Side;
use upkeep_testkit::backend::Backend;
use upkeep_testkit::client::{Client, get};
use upkeep_testkit::tls::{Pki, client_hello_prefix};
use upkeep_testkit::{eventually, loopback_config};

const WAIT: Duration = Duration::from_secs(20);

fn port(addr: &Address) -> u16 {
    match addr {
        Address::Tcp(a) => a.port(),
        Address::Unix(_) => panic!("TCP expected"),
    }
}

/// A one-worker proxy whose listener serves `tls`, in front of `backend`.
fn tls_proxy(backend: &Backend, tls: ListenerTls, tweak: impl FnOnce(&mut Config)) -> ProxyHandle {
    let mut config = loopback_config(vec![backend.addr()], 1);
    config.listeners[0].tls = Some(tls);
    tweak(&mut config);
    Proxy::start(config).expect("proxy starts")
}

fn single(pki: &Pki, names: &[&str]) -> ListenerTls {
    let leaf = pki.leaf(names);
    ListenerTls::single(leaf.cert_str(), leaf.key_str())
}

#[test]
fn curl_through_a_tls_listener() {
    let pki = Pki::new();
    let backend = Backend::builder().name("b").identify().start().unwrap();
    let proxy = tls_proxy(&backend, single(&pki, &["localhost"]), |_| {});
    let p = port(&proxy.listen_addrs()[0]);
    let text = pki.curl(p, &["/hello", "/again"]);
    assert!(text.contains("b GET /hello\n200 1.1"), "{text}");
    assert!(text.contains("b GET /again\n200 1.1"), "{text}");
    // Both requests rode one client connection, and so one upstream connection.
    assert_eq!(backend.accepted(), 1);
    for r in backend.log() {
        assert_eq!(r.header("x-forwarded-proto"), Some("https"), "{r:?}");
    }
    let stats = proxy.tls_stats();
    let (full, resumed) = stats.handshake_counts(|s| matches!(s, Side::Listener(_)));
    assert_eq!((full, resumed), (1, 0));
}

#[test]
fn sni_picks_the_certificate_and_alpn_is_http11() {
    let pki = Pki::new();
    let a = pki.leaf(&["a.test"]);
    let b = pki.leaf(&["b.test", "*.b.test"]);
    let tls = ListenerTls {
        certs: vec![
            CertKey {
                cert: a.cert_str(),
                key: a.key_str(),
                names: vec!["a.test".into()],
            },
            // No names: the certificate's own (b.test and *.b.test).
            CertKey {
                cert: b.cert_str(),
                key: b.key_str(),
                names: Vec::new(),
            },
        ],
    };
    let backend = Backend::builder().name("x").identify().start().unwrap();
    let proxy = tls_proxy(&backend, tls, |_| {});
    let addr = proxy.listen_addrs()[0].clone();
    for (sni, want) in [("a.test", &a), ("b.test", &b), ("www.b.test", &b)] {
        let (mut stream, negotiated) =
            upkeep_testkit::tls::connect(&addr, sni, pki.client_config()).unwrap();
        assert_eq!(negotiated.leaf, want.leaf(), "{sni}");
        assert_eq!(negotiated.alpn.as_deref(), Some(&b"http/1.1"[..]), "{sni}");
        stream.write_all(&get("/sni")).unwrap();
        stream.flush().unwrap();
    }
    // The same through the test client (a full exchange over TLS).
    let mut c = Client::connect_tls(&addr, "b.test", pki.client_config()).unwrap();
    assert_eq!(c.get_text("/via-b"), (200, "x GET /via-b".into()));
}

#[test]
fn plain_http_to_a_tls_port_gets_a_clear_text_400() {
    let pki = Pki::new();
    let backend = Backend::builder().start().unwrap();
    let proxy = tls_proxy(&backend, single(&pki, &["localhost"]), |_| {});
    let addr = proxy.listen_addrs()[0].clone();
    let mut c = Client::connect(&addr).unwrap();
    c.send(&get("/")).unwrap();
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 400);
    assert!(
        r.text()
            .contains("plain HTTP request was sent to an HTTPS port"),
        "{}",
        r.text()
    );
    assert!(c.closed_within(WAIT), "closed after the 400");
    assert_eq!(backend.accepted(), 0);
    let stats = proxy.tls_stats();
    assert!(eventually(WAIT, || stats.failures().iter().any(
        |(s, why, n)| matches!(s, Side::Listener(_)) && *why == "plain_http" && *n == 1
    )));
}

#[test]
fn garbage_truncated_and_stalled_handshakes_end_without_harm() {
    let pki = Pki::new();
    let backend = Backend::builder().name("b").identify().start().unwrap();
    let proxy = tls_proxy(&backend, single(&pki, &["localhost"]), |c| {
        c.client_timeouts.header = Duration::from_secs(1);
    });
    let addr = proxy.listen_addrs()[0].clone();
    // Garbage that is not even a TLS record header.
    let mut garbage = Client::connect(&addr).unwrap();
    garbage
        .send(&[0u8, 1, 2, 3, 250, 251, 252, 253, 13, 10, 13, 10])
        .unwrap();
    assert!(garbage.closed_within(WAIT), "garbage: closed");
    // A handshake record announcing 16 KiB that ends after 100 bytes, then EOF.
    let mut truncated = Client::connect(&addr).unwrap();
    let mut record = vec![0x16, 0x03, 0x01, 0x40, 0x00];
    record.extend_from_slice(&[0x01; 100]);
    truncated.send(&record).unwrap();
    truncated.shutdown_write().unwrap();
    assert!(truncated.closed_within(WAIT), "truncated record: closed");
    // Half a real ClientHello, then nothing: the header timeout (1 s) ends it.
    let mut stalled = Client::connect(&addr).unwrap();
    stalled
        .send(&client_hello_prefix(pki.client_config(), "localhost", 60))
        .unwrap();
    assert!(stalled.closed_within(WAIT), "stalled ClientHello: closed");
    // A random-looking handshake record (right header, nonsense inside).
    let mut forged = Client::connect(&addr).unwrap();
    let mut record = vec![0x16, 0x03, 0x03, 0x00, 0x40];
    record.extend((0..64u8).map(|i| i.wrapping_mul(37)));
    forged.send(&record).unwrap();
    assert!(forged.closed_within(WAIT), "forged record: closed");
    // The proxy is unharmed: a real client still gets through.
    let mut ok = Client::connect_tls(&addr, "localhost", pki.client_config()).unwrap();
    assert_eq!(ok.get_text("/fine"), (200, "b GET /fine".into()));
    assert_eq!(
        backend.requests(),
        1,
        "nothing but the real request reached the backend"
    );
}

/// `upkeep check` loads the certificate files: an unreadable one, or a key that belongs to
/// another certificate, is reported with its file name and exit status 1.
#[test]
fn check_names_an_unreadable_or_mismatched_certificate_file() {
    let pki = Pki::new();
    let a = pki.leaf(&["a.test"]);
    let b = pki.leaf(&["b.test"]);
    let file = pki.dir().join("upkeep.toml");
    let check = |cert: &str, key: &str| {
        let text = format!(
            "[[listen]]\naddr = \"127.0.0.1:8443\"\ntls = {{ cert = {cert:?}, key = {key:?} }}\n\n[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:9001\"]\n"
        );
        std::fs::write(&file, text).unwrap();
        Command::new(env!("CARGO_BIN_EXE_upkeep"))
            .args(["check", "--config"])
            .arg(&file)
            .output()
            .unwrap()
    };
    let out = check(&a.cert_str(), &a.key_str());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let missing = pki.dir().join("missing.pem").display().to_string();
    let out = check(&missing, &a.key_str());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains(&format!("{missing}: cannot read")), "{err}");
    let out = check(&a.cert_str(), &b.key_str());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains(&format!(
            "{}: the private key does not match the certificate in {}",
            b.key_str(),
            a.cert_str()
        )),
        "{err}"
    );
    // A certificate file that holds no certificate (a key, say).
    let out = check(&a.key_str(), &a.key_str());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains(&a.key_str()), "{err}");
}

/// A reload (SIGHUP) reads the certificate files again: new connections get the new
/// certificate. A broken file refuses the reload, naming the file, and the running
/// configuration keeps serving with the certificate it had.
#[test]
fn reload_picks_up_new_certificates_and_a_broken_file_keeps_the_old_ones() {
    let pki = Pki::new();
    let first = pki.leaf(&["localhost"]);
    let second = pki.leaf(&["localhost"]);
    // The configuration names files that are rewritten between reloads.
    let live_cert = pki.dir().join("live.pem");
    let live_key = pki.dir().join("live.key");
    let install = |files: &upkeep_testkit::tls::CertFiles| {
        std::fs::copy(&files.cert, &live_cert).unwrap();
        std::fs::copy(&files.key, &live_key).unwrap();
    };
    install(&first);
    let backend = Backend::builder().name("b").identify().start().unwrap();
    let tls = ListenerTls::single(
        live_cert.display().to_string(),
        live_key.display().to_string(),
    );
    let proxy = tls_proxy(&backend, tls, |_| {});
    let addr = proxy.listen_addrs()[0].clone();
    let leaf = || {
        upkeep_testkit::tls::connect(&addr, "localhost", pki.client_config())
            .unwrap()
            .1
            .leaf
    };
    assert_eq!(leaf(), first.leaf());
    install(&second);
    proxy.reload(proxy.config()).unwrap();
    assert!(eventually(WAIT, || leaf() == second.leaf()));
    std::fs::write(&live_cert, "not a certificate\n").unwrap();
    let err = proxy.reload(proxy.config()).unwrap_err();
    assert!(err.contains(&live_cert.display().to_string()), "{err}");
    assert_eq!(leaf(), second.leaf(), "the running configuration is kept");
    let mut c = Client::connect_tls(&addr, "localhost", pki.client_config()).unwrap();
    assert_eq!(c.get_text("/still"), (200, "b GET /still".into()));
}
