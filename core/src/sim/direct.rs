//! The leanest possible runtime for one client and one backend connection: every queued byte
//! is "written" at once and counted, nothing is copied or recorded. It allocates nothing itself,
//! so allocation counts and timings taken around it are the core's own (the zero-allocation test,
//! the throughput example, benchmarks).

use crate::{Config, ConnId, Core, Input, ListenerId, Output, ReadOutcome, Time, WriteOutcome};

/// One keep-alive client and the upstream connection(s) the core opens for it.
#[derive(Debug)]
pub struct Direct {
    /// The engine.
    pub core: Core,
    /// Virtual time (advanced 1 ms per exchange).
    pub now: Time,
    /// The client connection.
    pub client: ConnId,
    /// The upstream connection in use (the last one opened).
    pub upstream: Option<ConnId>,
    /// Bytes written to the client so far.
    pub to_client: usize,
    /// Bytes written to upstream connections so far.
    pub to_upstream: usize,
}

impl Direct {
    /// A core for `config` with one accepted client from 127.0.0.1.
    pub fn new(config: Config) -> Direct {
        let mut core = Core::new(config, 7).expect("valid config");
        let now = Time::ZERO;
        let ip = core::net::IpAddr::V4(core::net::Ipv4Addr::LOCALHOST);
        let client = core.accept(now, ListenerId(0), Some(ip)).expect("capacity");
        Direct {
            core,
            now,
            client,
            upstream: None,
            to_client: 0,
            to_upstream: 0,
        }
    }

    /// Plays the runtime: connects succeed at once, writes take everything.
    pub fn drain(&mut self) {
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::Connect { conn, .. } => {
                    self.upstream = Some(conn);
                    self.core.handle(self.now, Input::Connected { conn });
                }
                Output::Write { conn } => {
                    let sink = if conn == self.client {
                        &mut self.to_client
                    } else {
                        &mut self.to_upstream
                    };
                    while let Ok(WriteOutcome::Wrote { n, left, .. }) =
                        self.core
                            .write_with(self.now, conn, |iov| Ok(iov.iter().map(|s| s.len()).sum()))
                    {
                        *sink += n;
                        if left == 0 {
                            break;
                        }
                    }
                }
                Output::Close { conn, .. } => {
                    if Some(conn) == self.upstream {
                        self.upstream = None;
                    }
                }
                Output::Interest { .. } | Output::Shutdown { .. } => {}
                Output::HandOver { .. } => unreachable!("one worker hands nothing over"),
            }
        }
    }

    /// One exchange: the client sends `request`, the backend answers with `response` delivered
    /// in the given pieces.
    pub fn exchange(&mut self, request: &[u8], response: &[&[u8]]) {
        self.now = Time(self.now.0 + 1_000_000);
        self.receive(self.client, request);
        let upstream = self.upstream.expect("an upstream connection");
        for piece in response {
            self.receive(upstream, piece);
        }
    }

    /// Bytes arrive on `conn` the way the runtimes deliver them: "read" straight into the
    /// core's buffer ([`Core::read_with`]; the extend stands for the kernel's copy).
    fn receive(&mut self, conn: ConnId, data: &[u8]) {
        let got = self.core.read_with(self.now, conn, data.len(), |buf| {
            buf.extend_from_slice(data);
            Ok(data.len())
        });
        assert!(matches!(got, Ok(ReadOutcome::Data(_))), "open");
        self.drain();
        // A runtime reads again after a read that filled its room: this one finds the socket
        // empty (`Input::Drained`), and a response that read completed is pooled.
        // (Told directly: a read would first need room in the buffer, which a runtime's
        // next read asks for anyway and this driver models only where it matters.)
        if self.core.is_settling(conn) {
            self.core.handle(self.now, Input::Drained { conn });
            self.drain();
        }
    }
}
