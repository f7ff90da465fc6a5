//! The scenario suite over TLS on both sides: [`over_tls`] wraps a runtime's [`Start`] so that
//! every TCP listener of a scenario's configuration is a TLS listener and every TCP upstream
//! server sits behind a [`TlsFront`] reached with TLS (verified against a test CA). Clients
//! need no change: [`Stream::connect`](crate::wire::Stream::connect) speaks TLS to an address
//! registered here while the proxy runs. Unix sockets stay plain.
//!
//! [`scenario_tests_tls!`](crate::scenario_tests_tls) registers the scenarios that run this way.

use std::sync::{Arc, Mutex, OnceLock};

use rustls::ClientConfig;
use upkeep_core::config::{ListenerTls, UpstreamTls};
use upkeep_core::{Address, Config};

use crate::tls::{CertFiles, Pki, TlsFront, server_config};
use crate::{RunningProxy, Start};

/// The server name TLS clients ask for.
pub const SNI: &str = "localhost";

struct Material {
    pki: Pki,
    leaf: CertFiles,
    client: Arc<ClientConfig>,
}

/// One CA and one certificate (localhost, 127.0.0.1, ::1) for the whole test process.
fn material() -> &'static Material {
    static M: OnceLock<Material> = OnceLock::new();
    M.get_or_init(|| {
        let pki = Pki::new();
        let leaf = pki.leaf(&[SNI, "127.0.0.1", "::1"]);
        let client = pki.client_config();
        Material { pki, leaf, client }
    })
}

/// Listener addresses that speak TLS right now.
fn registry() -> &'static Mutex<Vec<Address>> {
    static R: OnceLock<Mutex<Vec<Address>>> = OnceLock::new();
    R.get_or_init(Mutex::default)
}

/// The client configuration to reach `addr` with, if it is a TLS listener of a running
/// [`over_tls`] proxy.
pub fn client_config_for(addr: &Address) -> Option<Arc<ClientConfig>> {
    let r = registry().lock().unwrap_or_else(|e| e.into_inner());
    r.contains(addr).then(|| material().client.clone())
}

/// Backends behind a running [`over_tls`] proxy's fronts: (backend, front).
fn fronted() -> &'static Mutex<Vec<(Address, Address)>> {
    static F: OnceLock<Mutex<Vec<(Address, Address)>>> = OnceLock::new();
    F.get_or_init(Mutex::default)
}

/// The scheme a client reaches a proxy listener with: `https` over [`over_tls`], else `http`.
pub fn scheme(listener: &Address) -> &'static str {
    if client_config_for(listener).is_some() {
        "https"
    } else {
        "http"
    }
}

/// The address the proxy knows a backend by: its TLS front's over [`over_tls`], else its own
/// (what the proxy's metrics and access log name).
pub fn proxied_addr(backend: &Address) -> Address {
    let f = fronted().lock().unwrap_or_else(|e| e.into_inner());
    f.iter()
        .find(|(b, _)| b == backend)
        .map_or_else(|| backend.clone(), |(_, front)| front.clone())
}

/// A proxy started by [`over_tls`], with the fronts of its upstream servers.
struct OverTls {
    inner: Option<Box<dyn RunningProxy>>,
    tls_addrs: Vec<Address>,
    _fronts: Vec<TlsFront>,
}

impl OverTls {
    fn unregister(&self) {
        let mut r = registry().lock().unwrap_or_else(|e| e.into_inner());
        r.retain(|a| !self.tls_addrs.contains(a));
        let fronts: Vec<Address> = self._fronts.iter().map(TlsFront::addr).collect();
        let mut f = fronted().lock().unwrap_or_else(|e| e.into_inner());
        f.retain(|(_, front)| !fronts.contains(front));
    }
}

impl RunningProxy for OverTls {
    fn listen_addrs(&self) -> Vec<Address> {
        self.inner
            .as_ref()
            .map_or_else(Vec::new, |p| p.listen_addrs())
    }

    fn admin_addr(&self) -> Option<Address> {
        self.inner.as_ref().and_then(|p| p.admin_addr())
    }

    fn stop(mut self: Box<Self>) {
        self.unregister();
        if let Some(p) = self.inner.take() {
            p.stop();
        }
    }
}

impl Drop for OverTls {
    fn drop(&mut self) {
        self.unregister();
    }
}

/// Starts `config` with `start`, TLS on both sides (see the module docs).
pub fn over_tls(mut config: Config, start: Start) -> Box<dyn RunningProxy> {
    let m = material();
    let tls = ListenerTls::single(m.leaf.cert_str(), m.leaf.key_str());
    for l in &mut config.listeners {
        if matches!(l.addr, Address::Tcp(_)) {
            l.tls = Some(tls.clone());
        }
    }
    let server = server_config(&m.leaf);
    let mut fronts = Vec::new();
    for g in &mut config.upstreams {
        if !g.servers.iter().all(|s| matches!(s.addr, Address::Tcp(_))) {
            continue;
        }
        for s in &mut g.servers {
            let front = TlsFront::start(server.clone(), s.addr.clone()).expect("TLS front");
            fronted()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((s.addr.clone(), front.addr()));
            s.addr = front.addr();
            fronts.push(front);
        }
        g.tls = Some(UpstreamTls {
            sni: Some(SNI.into()),
            ca: Some(m.pki.ca_file().display().to_string()),
            ..UpstreamTls::default()
        });
    }
    let tls_listeners: Vec<bool> = config.listeners.iter().map(|l| l.tls.is_some()).collect();
    let inner = start(config);
    let tls_addrs: Vec<Address> = inner
        .listen_addrs()
        .into_iter()
        .zip(tls_listeners)
        .filter_map(|(a, tls)| tls.then_some(a))
        .collect();
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(tls_addrs.iter().cloned());
    Box::new(OverTls {
        inner: Some(inner),
        tls_addrs,
        _fronts: fronts,
    })
}
