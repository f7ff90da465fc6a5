//! Bind policy: how a configured listen address becomes the listening sockets of every worker,
//! the same on both runtimes.
//!
//! - TCP: a probe bound *without* `SO_REUSEPORT` first, so a port someone already listens on is
//!   refused like a plain bind would; then one `SO_REUSEPORT` socket per worker (the kernel
//!   spreads accepts across them), all on the port the first one resolved when 0 was asked for;
//!   `IPV6_V6ONLY` on every IPv6 socket (nginx's `ipv6only=on`: `[::]:80` takes IPv6 only and
//!   `0.0.0.0:80` can be listed beside it); a backlog of [`BACKLOG`].
//! - Unix: one socket, duplicated into every worker. A path is taken over only when nothing
//!   answers on it ([`bind_unix`]), and its file is removed later only while it is still the
//!   socket this process bound ([`Bound::remove_socket_file`]).

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixListener;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use upkeep_core::Address;

/// Listen backlog (nginx's default on Linux is 511; a reverse proxy in front of bursts wants
/// more).
pub const BACKLOG: i32 = 1024;

/// A listening, non-blocking socket as one worker gets it, before its runtime registers it with
/// its reactor.
#[derive(Debug)]
pub enum Listening {
    /// One worker's `SO_REUSEPORT` socket of a TCP address.
    Tcp(TcpListener),
    /// A duplicate of the address's one Unix socket.
    Unix(UnixListener),
}

/// One configured listen address, bound: what a new worker needs to get its own socket.
///
/// The proxy keeps its own descriptor for every listening socket it made, and a reload hands
/// those very sockets (duplicated, [`Bound::share`]) to the next generation of workers. An old
/// worker then only stops watching its copy: the socket stays open, and connections the kernel
/// had already queued on it are accepted by the new worker that shares it. (Closing a
/// `SO_REUSEPORT` socket resets the connections queued on it, and a fresh socket per reload
/// would close one per old worker: clients connecting during a reload saw resets.)
#[derive(Debug)]
pub struct Bound(Kind);

#[derive(Debug)]
enum Kind {
    /// A TCP address (port 0 already resolved).
    Tcp {
        addr: SocketAddr,
        /// Every per-worker socket, in worker order (the first bound while resolving port 0).
        sockets: Vec<TcpListener>,
        /// How many of `sockets` this generation's workers have taken.
        handed: usize,
    },
    /// A Unix socket: one socket, cloned into every worker (Unix sockets have no reuseport
    /// balancing; workers race for accepts, which the kernel settles). `None` once closed.
    Unix {
        file: SocketFile,
        socket: Option<UnixListener>,
    },
}

impl Bound {
    /// Binds `addr` by the policy above: a taken TCP port or a Unix path a live process serves
    /// is refused (`AddrInUse`, naming the address); a TCP port 0 is resolved here, once.
    pub fn bind(addr: &Address) -> io::Result<Bound> {
        match addr {
            Address::Tcp(sa) => {
                refuse_taken_port(*sa)?;
                let first = bind_reuseport(*sa)?;
                let addr = first.local_addr()?;
                Ok(Bound(Kind::Tcp {
                    addr,
                    sockets: vec![first],
                    handed: 0,
                }))
            }
            Address::Unix(path) => {
                let (socket, file) = bind_unix(path)?;
                Ok(Bound(Kind::Unix {
                    file,
                    socket: Some(socket),
                }))
            }
        }
    }

    /// The same address for a new generation of workers: the very same sockets, duplicated
    /// (see the type's documentation).
    pub fn share(&self) -> io::Result<Bound> {
        match &self.0 {
            Kind::Tcp { addr, sockets, .. } => Ok(Bound(Kind::Tcp {
                addr: *addr,
                sockets: sockets
                    .iter()
                    .map(TcpListener::try_clone)
                    .collect::<io::Result<_>>()?,
                handed: 0,
            })),
            Kind::Unix { file, socket } => Ok(Bound(Kind::Unix {
                file: file.clone(),
                socket: Some(open(socket)?.try_clone()?),
            })),
        }
    }

    /// The actual address (with the resolved port).
    pub fn address(&self) -> Address {
        match &self.0 {
            Kind::Tcp { addr, .. } => Address::Tcp(*addr),
            Kind::Unix { file, .. } => Address::Unix(file.path.clone()),
        }
    }

    /// Whether this is a Unix socket (one socket shared by every worker, so a worker's copy is
    /// always handed over on a reload).
    pub fn is_unix(&self) -> bool {
        matches!(self.0, Kind::Unix { .. })
    }

    /// A listener for the next worker: a duplicate of the next socket, bound now if there is
    /// none left (on the resolved port).
    pub fn for_worker(&mut self) -> io::Result<Listening> {
        match &mut self.0 {
            Kind::Tcp {
                addr,
                sockets,
                handed,
            } => {
                if *handed == sockets.len() {
                    sockets.push(bind_reuseport(*addr)?);
                }
                let socket = sockets[*handed].try_clone()?;
                *handed += 1;
                Ok(Listening::Tcp(socket))
            }
            Kind::Unix { socket, .. } => Ok(Listening::Unix(open(socket)?.try_clone()?)),
        }
    }

    /// Once every worker of the generation has its listener: forgets TCP sockets no worker
    /// took (a reload to fewer workers), so they close with the old workers' copies.
    pub fn settle(&mut self) {
        if let Kind::Tcp {
            sockets, handed, ..
        } = &mut self.0
        {
            sockets.truncate(*handed);
        }
    }

    /// Drops the proxy's own descriptors (once the workers have theirs, and on drain): when the
    /// workers close their copies, the sockets close and new connections are refused, instead
    /// of queueing on a socket nobody accepts from.
    pub fn close(&mut self) {
        match &mut self.0 {
            Kind::Tcp { sockets, .. } => sockets.clear(),
            Kind::Unix { socket, .. } => *socket = None,
        }
    }

    /// Removes a Unix listener's socket file, but only while it is still the socket this
    /// process bound: another proxy may have taken the path over since (ours stopped answering
    /// during a drain, or the file was replaced), and stopping this one must not take that
    /// one's socket away. Nothing for TCP. Returns whether a file was removed.
    pub fn remove_socket_file(&self) -> bool {
        match &self.0 {
            Kind::Unix { file, .. } => file.remove_if_ours(),
            Kind::Tcp { .. } => false,
        }
    }
}

/// Removes the Unix socket files of `bound` that are still the ones this process bound (another
/// proxy may have taken a path over since, see [`SocketFile`]): at exit, and when a start fails
/// after binding some of its listeners.
pub fn remove_socket_files(bound: &[Bound]) {
    for b in bound {
        b.remove_socket_file();
    }
}

fn open(socket: &Option<UnixListener>) -> io::Result<&UnixListener> {
    socket
        .as_ref()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "listener closed"))
}

/// Fails with `AddrInUse` when something already listens on `addr`. Our sockets set
/// `SO_REUSEPORT` so workers can share a port, which would also let a second proxy (or anything
/// else of the same user with `SO_REUSEPORT`) bind the port and silently take a share of the
/// connections. A probe bound *without* `SO_REUSEPORT` conflicts with every listener there.
/// (Reloads keep their own sockets, see [`Bound::share`], and never probe.)
pub fn refuse_taken_port(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        // The kernel picks a free port.
        return Ok(());
    }
    let probe = tcp_socket(addr)?;
    probe
        .bind(&addr.into())
        .map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))
}

/// A non-blocking TCP listener with `SO_REUSEADDR` and `SO_REUSEPORT` (nginx
/// `listen ... reuseport`), `IPV6_V6ONLY` on IPv6, listening with [`BACKLOG`], and tuned as
/// the connections it accepts should be ([`crate::socket::tune_tcp`]): on Linux an accepted
/// socket inherits `TCP_NODELAY` from its listener, which saves a `setsockopt` per connection
/// (one of eight system calls a closing client costs the epoll worker).
pub fn bind_reuseport(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = tcp_socket(addr)?;
    crate::socket::tune_tcp(socket2::SockRef::from(&socket));
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket
        .bind(&addr.into())
        .map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// A TCP socket for `addr` with the options every listening socket (and the probe) shares:
/// `SO_REUSEADDR` (still conflicts with a listener, not with the TIME_WAIT leftovers of a
/// restart) and `IPV6_V6ONLY` on IPv6.
fn tcp_socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    Ok(socket)
}

/// Binds a non-blocking Unix listener at `path`, taking the path over only when nothing answers
/// on it:
///
/// - no file: bind;
/// - a socket file nobody listens on (a connect is refused: a process that died without
///   removing it, or one that stopped listening): remove it, bind;
/// - a socket file a live process serves (a connect succeeds, or its backlog is full): refuse
///   with `AddrInUse` naming the path — the first proxy keeps its socket;
/// - anything else at the path (a regular file: a typo in the config must not delete
///   someone's data): refuse with `AlreadyExists`.
///
/// Also returns the file's identity, for [`Bound::remove_socket_file`].
pub fn bind_unix(path: &str) -> io::Result<(UnixListener, SocketFile)> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io::Error::new(e.kind(), format!("{path}: {e}"))),
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{path} exists and is not a socket"),
            ));
        }
        Ok(_) => match probe_unix(path) {
            Probe::Stale => match std::fs::remove_file(path) {
                Ok(()) => log::info!("{path}: removed a stale socket file nobody listens on"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io::Error::new(e.kind(), format!("{path}: {e}"))),
            },
            Probe::Gone => {}
            Probe::Live => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "{path}: another process is serving on this Unix socket; \
                         not taking it over (stop it first, or listen on another path)"
                    ),
                ));
            }
            Probe::Unknown(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{path}: cannot tell whether a process serves on it: {e}"),
                ));
            }
        },
    }
    let socket = UnixListener::bind(path)
        .map_err(|e| io::Error::new(e.kind(), format!("bind {path}: {e}")))?;
    let file = socket
        .set_nonblocking(true)
        .and_then(|()| SocketFile::of(path))
        .map_err(|e| {
            // Not serving it after all: the file we just made must not stay behind.
            let _ = std::fs::remove_file(path);
            io::Error::new(e.kind(), format!("bind {path}: {e}"))
        })?;
    Ok((socket, file))
}

/// What a connect to an existing socket file says about it.
enum Probe {
    /// Refused: nobody listens there.
    Stale,
    /// The file vanished meanwhile.
    Gone,
    /// Someone accepts (or would, once its backlog drains).
    Live,
    /// Neither (permission denied...): do not touch it.
    Unknown(io::Error),
}

/// Connects to the socket at `path` without blocking (a blocking connect to a listener whose
/// backlog is full would wait for it) and closes the connection at once: a live proxy sees a
/// client that hangs up without a request.
fn probe_unix(path: &str) -> Probe {
    let result = SockAddr::unix(path).and_then(|addr| {
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
        socket.set_nonblocking(true)?;
        socket.connect(&addr)
    });
    match result {
        Ok(()) => Probe::Live,
        Err(e) => match e.kind() {
            io::ErrorKind::ConnectionRefused => Probe::Stale,
            io::ErrorKind::NotFound => Probe::Gone,
            // EAGAIN: the listener's backlog is full — it is alive, just busy.
            io::ErrorKind::WouldBlock => Probe::Live,
            _ => Probe::Unknown(e),
        },
    }
}

/// The socket file a listener created, kept open (`O_PATH`: no I/O, it only pins the inode), so
/// that it is removed only while the path still names that very file.
///
/// Comparing device and inode numbers alone is not enough: file systems hand a freed inode
/// number to the next file at once, and a proxy that takes a stale path over removes the old
/// file and creates a new one within microseconds — typically with the same number. Holding the
/// old file open keeps its inode allocated, so no file that replaces it can share its identity.
#[derive(Debug, Clone)]
pub struct SocketFile {
    path: String,
    anchor: std::sync::Arc<std::fs::File>,
}

impl SocketFile {
    /// The file now at `path`, pinned.
    pub fn of(path: &str) -> io::Result<SocketFile> {
        use std::os::unix::fs::OpenOptionsExt;
        let anchor = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
            .open(path)?;
        Ok(SocketFile {
            path: path.to_string(),
            anchor: std::sync::Arc::new(anchor),
        })
    }

    /// The path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether the path still names this file.
    pub fn is_current(&self) -> bool {
        match (
            std::fs::symlink_metadata(&self.path),
            self.anchor.metadata(),
        ) {
            (Ok(now), Ok(ours)) => now.dev() == ours.dev() && now.ino() == ours.ino(),
            _ => false,
        }
    }

    /// Removes the file if the path still names it; returns whether it did. (A takeover between
    /// the check and the unlink is not excluded, but it needs a second proxy to bind in the
    /// microseconds between them, after ours stopped answering.)
    pub fn remove_if_ours(&self) -> bool {
        if self.is_current() {
            return std::fs::remove_file(&self.path).is_ok();
        }
        if std::fs::symlink_metadata(&self.path).is_ok() {
            log::info!(
                "{}: not removed, another process has taken the path over",
                self.path
            );
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> (std::path::PathBuf, String) {
        let dir = std::env::temp_dir().join(format!(
            "upkeep-runtime-listen-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock").to_string_lossy().into_owned();
        (dir, path)
    }

    #[test]
    fn a_live_unix_socket_is_refused_naming_its_path() {
        let (dir, path) = temp_path("live");
        let (_first, _) = bind_unix(&path).unwrap();
        let err = bind_unix(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains(&path), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_stale_socket_file_is_taken_over_and_removed_only_by_its_owner() {
        let (dir, path) = temp_path("stale");
        let (first, first_file) = bind_unix(&path).unwrap();
        drop(first); // the file stays behind, nobody listens
        let (_second, second_file) = bind_unix(&path).unwrap();
        assert!(second_file.is_current());
        assert!(!first_file.is_current());
        assert!(
            !first_file.remove_if_ours(),
            "the path is someone else's now"
        );
        assert!(std::path::Path::new(&path).exists());
        assert!(second_file.remove_if_ours());
        assert!(!std::path::Path::new(&path).exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_regular_file_is_never_replaced() {
        let (dir, path) = temp_path("regular");
        std::fs::write(&path, b"data").unwrap();
        let err = bind_unix(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_taken_tcp_port_is_refused_and_port_zero_resolved_once() {
        let mut bound = Bound::bind(&Address::parse("127.0.0.1:0").unwrap()).unwrap();
        let Address::Tcp(addr) = bound.address() else {
            unreachable!()
        };
        assert_ne!(addr.port(), 0);
        for _ in 0..3 {
            let Listening::Tcp(l) = bound.for_worker().unwrap() else {
                unreachable!()
            };
            assert_eq!(l.local_addr().unwrap(), addr);
        }
        let err = Bound::bind(&Address::Tcp(addr)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }

    /// What a worker accepts from any of its listeners — the first socket, one bound later for
    /// another worker, a duplicate for a new generation — has `TCP_NODELAY` without a call of
    /// its own: inherited from the listener.
    #[test]
    fn accepted_connections_inherit_tcp_nodelay() {
        let mut bound = Bound::bind(&Address::parse("127.0.0.1:0").unwrap()).unwrap();
        let Address::Tcp(addr) = bound.address() else {
            unreachable!()
        };
        let mut listeners = Vec::new();
        for _ in 0..2 {
            let Listening::Tcp(l) = bound.for_worker().unwrap() else {
                unreachable!()
            };
            listeners.push(l);
        }
        let Listening::Tcp(l) = bound.share().unwrap().for_worker().unwrap() else {
            unreachable!()
        };
        listeners.push(l);
        let mut accepted = 0;
        // Each listener of a reuseport group gets its share of the connections.
        for _ in 0..200 {
            let _c = std::net::TcpStream::connect(addr).unwrap();
            for l in &listeners {
                if let Ok((s, _)) = l.accept() {
                    assert!(
                        s.nodelay().unwrap(),
                        "an accepted connection without TCP_NODELAY"
                    );
                    accepted += 1;
                }
            }
        }
        assert!(accepted > 100, "{accepted} of 200 accepted");
    }
}
