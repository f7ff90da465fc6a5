//! A [`TlsConn`] with what the runtime needs around it: which listener or server it belongs
//! to, so its handshake and failure are counted ([`TlsStats`]) and logged once, the same way
//! by both runtimes.

use std::sync::Arc;

use socket2::SockRef;
use upkeep_core::{ConnId, Core, ListenerId, ServerId, Time};

use super::{Failure, Handshake, Side, TlsConn, TlsStats};
use crate::io::{Flushed, ReadStep};

/// Where a TLS connection belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Accepted on this listener.
    Listener(ListenerId),
    /// Opened to this upstream server.
    Server(ServerId),
}

/// One connection's TLS, counted.
#[derive(Debug)]
pub struct Session {
    tls: TlsConn,
    origin: Origin,
    counted: bool,
    stats: Arc<TlsStats>,
}

impl Session {
    pub(super) fn new(tls: TlsConn, origin: Origin, stats: Arc<TlsStats>) -> Session {
        Session {
            tls,
            origin,
            counted: false,
            stats,
        }
    }

    /// The TLS connection itself.
    pub fn conn(&self) -> &TlsConn {
        &self.tls
    }

    /// The connection moved to a core whose configuration numbers listeners and groups its
    /// own way (a reload's hand-over): count and log it as `origin` of that configuration.
    pub fn adopted(&mut self, origin: Origin) {
        self.origin = origin;
    }

    /// [`TlsConn::read`], then counts what it completed or why it failed.
    pub fn read(
        &mut self,
        core: &mut Core,
        now: Time,
        conn: ConnId,
        sock: SockRef<'_>,
    ) -> ReadStep {
        let step = self.tls.read(core, now, conn, sock);
        self.note(core);
        step
    }

    /// [`TlsConn::flush`], then counts as [`Session::read`] does.
    pub fn flush(
        &mut self,
        core: &mut Core,
        now: Time,
        conn: ConnId,
        sock: SockRef<'_>,
    ) -> Flushed {
        let flushed = self.tls.flush(core, now, conn, sock);
        self.note(core);
        flushed
    }

    /// [`TlsConn::handshake`] (upstream connections), counted; a failure is logged with its
    /// reason. On `Failed(why)`, tell the core [`Failure::input`].
    pub fn handshake(&mut self, core: &Core, sock: SockRef<'_>) -> Handshake {
        let h = self.tls.handshake(sock);
        match &h {
            Handshake::Done => self.note(core),
            Handshake::Failed(why) => self.failed(core, *why),
            Handshake::Pending => {}
        }
        h
    }

    /// [`TlsConn::settle`].
    pub fn settle(&mut self, core: &mut Core, now: Time, conn: ConnId) {
        self.tls.settle(core, now, conn);
    }

    /// [`TlsConn::shutdown`].
    pub fn shutdown(&mut self) {
        self.tls.shutdown();
    }

    /// [`TlsConn::close`].
    pub fn close(&mut self, sock: SockRef<'_>, reset: bool) {
        self.tls.close(sock, reset);
    }

    fn side(&self, core: &Core) -> Side {
        let config = core.config();
        match self.origin {
            Origin::Listener(l) => Side::Listener(
                config
                    .listeners
                    .get(l.0 as usize)
                    .map_or_else(String::new, |l| l.addr.to_string()),
            ),
            Origin::Server(s) => {
                // Looked up without indexing: a label is never worth a panic.
                let group = config.upstreams.get(s.upstream.0 as usize);
                Side::Upstream {
                    upstream: group.map_or_else(String::new, |g| g.name.clone()),
                    server: group
                        .and_then(|g| g.servers.get(s.index as usize))
                        .map_or_else(String::new, |s| s.addr.to_string()),
                }
            }
        }
    }

    fn note(&mut self, core: &Core) {
        if !self.counted
            && let Some(resumed) = self.tls.resumed()
        {
            self.counted = true;
            self.stats.handshake(self.side(core), resumed);
        }
        if let Some(why) = self.tls.take_failure() {
            // After the handshake, a socket error is a connection ending the ordinary way (a
            // client that resets, a server dropping a pooled connection), as on plain TCP:
            // not a TLS failure to count and warn about.
            if self.tls.is_handshaking() || !matches!(why, Failure::Io(_)) {
                self.failed(core, why);
            }
        }
    }

    fn failed(&mut self, core: &Core, why: Failure) {
        let side = self.side(core);
        match &side {
            Side::Upstream { upstream, server } => log::warn!(
                "upstream {upstream:?} server {server}: TLS failed: {} ({})",
                why.describe(),
                why.reason()
            ),
            // Clients sending garbage are the internet's background noise: debug only.
            Side::Listener(addr) => log::debug!(
                "listener {addr}: client TLS failed: {} ({})",
                why.describe(),
                why.reason()
            ),
        }
        self.stats.failure(side, why);
    }
}
