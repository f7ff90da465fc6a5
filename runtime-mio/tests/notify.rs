//! `Type=notify` readiness: a spawned `upkeep run` under a fake service manager (a Unix datagram
//! socket named by `$NOTIFY_SOCKET`) reports READY once serving, RELOADING then READY around a
//! SIGHUP reload, and STOPPING at SIGTERM or SIGINT.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use upkeep_testkit::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_upkeep");

/// The spawned proxy, killed if a test fails before it exits.
struct Upkeep(Child);

impl Drop for Upkeep {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Upkeep {
    /// `upkeep run --config FILE` with `$NOTIFY_SOCKET` = `notify`.
    fn start(config: &Path, notify: &str) -> Upkeep {
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .env("NOTIFY_SOCKET", notify)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Upkeep(child)
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.0.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    fn exit_code(&mut self) -> Option<i32> {
        let status = (0..1000).find_map(|_| {
            let s = self.0.try_wait().unwrap();
            if s.is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            s
        });
        status.expect("upkeep exits").code()
    }
}

fn config_file(dir: &TempDir) -> PathBuf {
    let config = dir.path().join("upkeep.toml");
    std::fs::write(
        &config,
        "workers = 1\nlisten = [\"127.0.0.1:0\"]\n[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:9\"]\n",
    )
    .unwrap();
    config
}

/// The next datagram, as text (a generous timeout: the machine may be busy).
fn next(socket: &UnixDatagram) -> String {
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("a notification in time");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn ready_reloading_and_stopping_reach_the_service_manager() {
    let dir = TempDir::new().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let manager = UnixDatagram::bind(&socket_path).unwrap();
    let mut up = Upkeep::start(&config_file(&dir), &socket_path.to_string_lossy());
    let ready = next(&manager);
    assert!(ready.starts_with("READY=1"), "{ready}");
    assert!(ready.contains(&format!("MAINPID={}", up.0.id())), "{ready}");
    up.signal("HUP");
    assert_eq!(next(&manager), "RELOADING=1");
    assert_eq!(next(&manager), "READY=1");
    up.signal("TERM");
    assert_eq!(next(&manager), "STOPPING=1");
    assert_eq!(up.exit_code(), Some(0));
}

/// systemd's usual `$NOTIFY_SOCKET` is in the abstract namespace (`@name`).
#[test]
fn an_abstract_notify_socket_works_too() {
    use std::os::linux::net::SocketAddrExt;
    let dir = TempDir::new().unwrap();
    let name = format!("upkeep-notify-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
    let manager = UnixDatagram::bind_addr(&addr).unwrap();
    let mut up = Upkeep::start(&config_file(&dir), &format!("@{name}"));
    assert!(next(&manager).starts_with("READY=1"));
    up.signal("INT");
    assert_eq!(next(&manager), "STOPPING=1");
    assert_eq!(up.exit_code(), Some(0));
}
