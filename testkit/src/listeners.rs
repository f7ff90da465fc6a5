//! Who may bind a listen address and who may remove it: scenarios every runtime runs against
//! itself (through [`listener_tests!`](crate::listener_tests)), on real Unix and TCP sockets.
//!
//! The rules (one implementation, `upkeep_runtime::listen`): a Unix socket path is taken over only
//! when nothing answers on it; its file is removed at exit only while it is still the socket
//! this proxy bound; at the client connection limit a proxy stops accepting until a client
//! leaves, so a connection over the limit waits in the kernel's backlog.

use std::io;
use std::path::Path;

use upkeep_core::{Address, Config};

use crate::RunningProxy;
use crate::backend::Backend;
use crate::client::{self, Client, get_text};
use crate::wire::TempDir;

/// How a listener scenario starts the runtime under test: like [`crate::Start`], but a refusal
/// comes back as the runtime's error instead of a panic.
pub type TryStart = fn(Config) -> io::Result<Box<dyn RunningProxy>>;

/// One worker listening on `listen` in front of `backend`.
fn config_on(listen: &Address, backend: &Backend) -> Config {
    let mut config = crate::loopback_config(vec![backend.addr()], 1);
    config.listeners[0].addr = listen.clone();
    config
}

fn path_of(addr: &Address) -> &Path {
    match addr {
        Address::Unix(p) => Path::new(p),
        Address::Tcp(_) => unreachable!("a Unix address"),
    }
}

/// A second proxy started on a Unix socket path a live proxy serves is refused with an error
/// naming the path, and the first keeps its socket and keeps serving.
pub fn a_live_unix_listener_is_not_taken_over(start: TryStart) {
    let dir = TempDir::new().unwrap();
    let listen = dir.socket("live.sock");
    let first_backend = Backend::identify("first").unwrap();
    let second_backend = Backend::identify("second").unwrap();
    let first = start(config_on(&listen, &first_backend)).expect("the first proxy starts");
    assert_eq!(get_text(&listen, "/"), (200, "first GET /".to_string()));

    let err = match start(config_on(&listen, &second_backend)) {
        Ok(second) => {
            second.stop();
            panic!("a second proxy took over a path a live proxy serves");
        }
        Err(e) => e,
    };
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&path_of(&listen).to_string_lossy().into_owned()),
        "the error names the path: {message}"
    );
    for _ in 0..5 {
        assert_eq!(get_text(&listen, "/"), (200, "first GET /".to_string()));
    }
    assert_eq!(second_backend.requests(), 0);
    first.stop();
    assert!(!path_of(&listen).exists(), "removed at exit");
}

/// A socket file left behind by a listener that is gone (bound, then dropped without unlinking)
/// is taken over.
pub fn a_dead_socket_file_is_taken_over(start: TryStart) {
    let dir = TempDir::new().unwrap();
    let listen = dir.socket("dead.sock");
    drop(std::os::unix::net::UnixListener::bind(path_of(&listen)).unwrap());
    assert!(
        path_of(&listen).exists(),
        "the dead socket's file stays behind"
    );
    let backend = Backend::identify("heir").unwrap();
    let proxy = start(config_on(&listen, &backend)).expect("a dead socket file is taken over");
    assert_eq!(get_text(&listen, "/"), (200, "heir GET /".to_string()));
    proxy.stop();
    assert!(!path_of(&listen).exists(), "removed at exit");
}

/// A path that changed hands while a proxy ran (its file was replaced by another proxy's) is
/// left alone when that proxy stops: stopping one proxy does not take another's socket away.
pub fn stopping_a_proxy_leaves_a_path_another_took_over(start: TryStart) {
    let dir = TempDir::new().unwrap();
    let listen = dir.socket("shared.sock");
    let old_backend = Backend::identify("old").unwrap();
    let new_backend = Backend::identify("new").unwrap();
    let old = start(config_on(&listen, &old_backend)).expect("the first proxy starts");
    // The file is removed from under the running proxy, and a second proxy binds the path.
    std::fs::remove_file(path_of(&listen)).unwrap();
    let new = start(config_on(&listen, &new_backend)).expect("the path is free");
    old.stop();
    assert!(
        path_of(&listen).exists(),
        "stopping the first proxy removed the second one's socket file"
    );
    assert_eq!(get_text(&listen, "/"), (200, "new GET /".to_string()));
    new.stop();
    assert!(!path_of(&listen).exists(), "its owner removes it");
}

/// At the client connection limit accepting pauses: the connection that found the limit is
/// closed, and later ones wait in the kernel's backlog — not accepted and dropped — and are
/// served once a client leaves.
pub fn at_capacity_accepting_pauses_until_a_client_leaves(start: TryStart) {
    let backend = Backend::identify("limited").unwrap();
    let mut config = crate::loopback_config(vec![backend.addr()], 1);
    config.limits.max_client_connections = 2;
    let proxy = start(config).expect("the proxy starts");
    let listen = proxy.listen_addrs()[0].clone();
    let mut first = Client::connect(&listen).unwrap();
    let mut second = Client::connect(&listen).unwrap();
    assert_eq!(first.get_text("/").0, 200);
    assert_eq!(second.get_text("/").0, 200);
    // Over the limit: accepted by the kernel, closed by the proxy, which stops accepting.
    let mut third = Client::connect(&listen).unwrap();
    let _ = third.send(&client::get("/"));
    assert!(
        matches!(third.read_some().as_deref(), Ok([]) | Err(_)),
        "the third connection is refused"
    );
    // These wait in the backlog until slots free up (a proxy that kept accepting at capacity
    // would close them at once).
    let mut fourth = Client::connect(&listen).unwrap();
    fourth.send(&client::get("/")).unwrap();
    let mut fifth = Client::connect(&listen).unwrap();
    fifth.send(&client::get("/")).unwrap();
    drop(first);
    let r = fourth.read_response().unwrap();
    assert_eq!((r.status, r.text()), (200, "limited GET /".to_string()));
    drop(second);
    let r = fifth.read_response().unwrap();
    assert_eq!((r.status, r.text()), (200, "limited GET /".to_string()));
    assert_eq!(fourth.get_text("/").0, 200);
    proxy.stop();
}

/// Expands to one `#[test]` per listener scenario, each calling
/// `upkeep_testkit::listeners::<name>(try_start)`.
#[macro_export]
macro_rules! listener_tests {
    ($try_start:expr) => {
        $crate::listener_tests!(@each $try_start;
            a_live_unix_listener_is_not_taken_over,
            a_dead_socket_file_is_taken_over,
            stopping_a_proxy_leaves_a_path_another_took_over,
            at_capacity_accepting_pauses_until_a_client_leaves,
        );
    };
    (@each $try_start:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::listeners::$name($try_start);
            }
        )*
    };
}
