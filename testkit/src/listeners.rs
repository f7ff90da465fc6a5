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
use crate::wire::{IO_TIMEOUT, TempDir};

/// How a listener scenario starts the runtime under test: like [`crate::Start`], but a refusal
/// comes back as the runtime's error instead of a panic.
pub type TryStart = fn(Config) -> io::Result<Box<dyn RunningProxy>>;

/// Starts a proxy (one worker) on `listen` in front of a backend of its own that answers with
/// `name`; the backend lives as long as the returned value.
fn start_on(
    start: TryStart,
    listen: &Address,
    name: &str,
) -> (Backend, io::Result<Box<dyn RunningProxy>>) {
    let backend = Backend::identify(name).unwrap();
    let mut config = crate::loopback_config(vec![backend.addr()], 1);
    config.listeners[0].addr = listen.clone();
    let proxy = start(config);
    (backend, proxy)
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
    let (_first_backend, first) = start_on(start, &listen, "first");
    let first = first.expect("the first proxy starts");
    assert_eq!(get_text(&listen, "/"), (200, "first GET /".to_string()));

    let (second_backend, second) = start_on(start, &listen, "second");
    let err = match second {
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
    let (_backend, proxy) = start_on(start, &listen, "heir");
    let proxy = proxy.expect("a dead socket file is taken over");
    assert_eq!(get_text(&listen, "/"), (200, "heir GET /".to_string()));
    proxy.stop();
    assert!(!path_of(&listen).exists(), "removed at exit");
}

/// A path that changed hands while a proxy ran (its file was replaced by another proxy's) is
/// left alone when that proxy stops: stopping one proxy does not take another's socket away.
pub fn stopping_a_proxy_leaves_a_path_another_took_over(start: TryStart) {
    let dir = TempDir::new().unwrap();
    let listen = dir.socket("shared.sock");
    let (_old_backend, old) = start_on(start, &listen, "old");
    let old = old.expect("the first proxy starts");
    // The file is removed from under the running proxy, and a second proxy binds the path.
    std::fs::remove_file(path_of(&listen)).unwrap();
    let (_new_backend, new) = start_on(start, &listen, "new");
    let new = new.expect("the path is free");
    old.stop();
    assert!(
        path_of(&listen).exists(),
        "stopping the first proxy removed the second one's socket file"
    );
    assert_eq!(get_text(&listen, "/"), (200, "new GET /".to_string()));
    new.stop();
    assert!(!path_of(&listen).exists(), "its owner removes it");
}

/// A draining proxy stops answering on its Unix path, so a new proxy may take the path over
/// while the old one still finishes its exchanges; the old one's exit then leaves the new one's
/// socket file alone. For runtimes whose handle drains (`drain`) and waits (`wait`): the
/// lifecycle in which stopping one proxy used to delete the other's path.
pub fn a_draining_proxy_hands_its_unix_path_over<P>(
    start: impl Fn(Config) -> io::Result<P>,
    drain: impl Fn(&P),
    wait: impl FnOnce(P) + Send + 'static,
) where
    P: Send + 'static,
{
    let dir = TempDir::new().unwrap();
    let listen = dir.socket("handover.sock");
    let config_for = |backend: &Backend| {
        let mut config = crate::loopback_config(vec![backend.addr()], 1);
        config.listeners[0].addr = listen.clone();
        config
    };
    let old_backend = Backend::slow("old", std::time::Duration::from_millis(500)).unwrap();
    let old = start(config_for(&old_backend)).expect("the first proxy starts");
    let mut busy = client::in_flight(&listen, "/busy", &old_backend);
    drain(&old);
    // Refused while the old proxy still listens; taken over once it stopped answering.
    let new_backend = Backend::identify("new").unwrap();
    let mut new = None;
    assert!(
        crate::eventually(IO_TIMEOUT, || {
            new = start(config_for(&new_backend)).ok();
            new.is_some()
        }),
        "the path of a drained proxy was never taken over"
    );
    assert_eq!(
        busy.read_response().unwrap().status,
        200,
        "the old proxy finishes"
    );
    crate::within("the old proxy's exit", IO_TIMEOUT, move || wait(old));
    assert!(
        path_of(&listen).exists(),
        "the old proxy's exit removed the new one's socket file"
    );
    assert_eq!(get_text(&listen, "/"), (200, "new GET /".to_string()));
    drop(new);
}

/// A start that fails after some listeners were bound (a later listener's port, or the admin
/// address, is taken) leaves no socket file behind at the Unix paths it had bound: the proxy
/// never served them, and its error is all that is left of it.
pub fn a_failed_start_leaves_no_socket_file(start: TryStart) {
    let dir = TempDir::new().unwrap();
    // Someone else's listener: the port stays taken for the whole test.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = Address::Tcp(holder.local_addr().unwrap());
    let backend = Backend::identify("never").unwrap();

    // A second listener on a taken port.
    let listen = dir.socket("first.sock");
    let mut config = crate::loopback_config(vec![backend.addr()], 1);
    config.listeners[0].addr = listen.clone();
    let mut second = config.listeners[0].clone();
    second.addr = taken.clone();
    config.listeners.push(second);
    let err = start(config).err().expect("a taken port fails the start");
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
    assert!(
        !path_of(&listen).exists(),
        "a failed start left its socket file behind"
    );

    // An admin address that is taken.
    let listen = dir.socket("admin-taken.sock");
    let mut config = crate::loopback_config(vec![backend.addr()], 1);
    config.listeners[0].addr = listen.clone();
    config.runtime.admin = Some(taken.clone());
    let err = start(config)
        .err()
        .expect("a taken admin port fails the start");
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
    assert!(
        !path_of(&listen).exists(),
        "a failed start left its socket file behind"
    );
    assert_eq!(backend.requests(), 0);
}

/// At the client connection limit accepting pauses before taking a connection: the ones over
/// the limit wait in the kernel's backlog — never accepted only to be closed — and are served
/// one by one, in order, as clients leave (HAProxy's `maxconn`).
pub fn at_capacity_accepting_pauses_until_a_client_leaves(start: TryStart) {
    let backend = Backend::identify("one at a time").unwrap();
    let mut config = crate::loopback_config(vec![backend.addr()], 1);
    config.limits.max_client_connections = 1;
    let proxy = start(config).expect("the proxy starts");
    let listen = proxy.listen_addrs()[0].clone();
    let mut holder = Client::connect(&listen).unwrap();
    assert_eq!(
        holder.get_text("/"),
        (200, "one at a time GET /".to_string())
    );

    let queued: Vec<Client> = (0..4)
        .map(|i| {
            let mut c = Client::connect(&listen).unwrap();
            c.send(&client::get(&format!("/queued/{i}"))).unwrap();
            c
        })
        .collect();
    for (i, mut next) in queued.into_iter().enumerate() {
        // A slot frees up: the longest-waiting connection is taken and served.
        drop(holder);
        let r = next.read_response().unwrap();
        assert_eq!(r.text(), format!("one at a time GET /queued/{i}"));
        holder = next;
    }
    drop(holder);
    assert_eq!(
        backend.requests(),
        5,
        "every connection over the limit was served"
    );
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
            a_failed_start_leaves_no_socket_file,
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
