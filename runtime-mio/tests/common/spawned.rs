//! A spawned `upkeep` process, for the tests that drive the binary: its stderr lines forwarded
//! to a channel (and echoed to the test's own stderr), signals by PID, a bounded wait for its
//! exit, and a kill when the test is done with it.

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Forwards `child`'s stderr, line by line, to the returned channel.
pub fn forward_stderr(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, lines) = mpsc::channel();
    let stderr = child.stderr.take().expect("stderr piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            eprintln!("[upkeep] {line}");
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    lines
}

/// Sends `-SIG` to `child` with kill(1).
pub fn signal(child: &Child, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig}");
}

/// Waits (at most `limit`) for `child` to exit; its exit code.
pub fn wait_exit(child: &mut Child, limit: Duration) -> i32 {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code().unwrap_or(-1);
        }
        assert!(start.elapsed() < limit, "upkeep did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills `child` unless it has exited.
pub fn stop(child: &mut Child) {
    if child.try_wait().ok().flatten().is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}
