//! A spawned `upkeep` process, for the tests that drive the binary: its stderr lines forwarded
//! to a channel (and echoed to the test's own stderr), signals by PID, a bounded wait for its
//! exit, and a kill when the test is done with it; [`Spawned`] wraps them for the tests that
//! need the process itself (its descriptor limit, its signals).

// Each test file uses a part of it (some include this file alone with `#[path]`).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use upkeep_core::Address;

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

/// How long a spawned proxy may take to say something.
pub const WAIT: Duration = Duration::from_secs(20);

/// `upkeep run`, its stderr lines on a channel (and echoed), killed on drop.
pub struct Spawned {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    /// The addresses it printed as "listening on ADDR" (the admin listener's excluded).
    pub listen: Vec<Address>,
}

impl Spawned {
    /// Runs `[wrapper..] upkeep run args` (a wrapper such as `prlimit --nofile=64`) and waits
    /// for its first "listening on" line (`listeners` of them).
    pub fn start(wrapper: &[&str], args: &[&str], listeners: usize) -> Spawned {
        let bin = env!("CARGO_BIN_EXE_upkeep");
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = cmd
            .arg("run")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = forward_stderr(&mut child);
        let mut s = Spawned {
            child,
            lines,
            listen: Vec::new(),
        };
        while s.listen.len() < listeners {
            let line = s.line();
            if let Some(a) = line.split("listening on ").nth(1)
                && !line.contains("admin")
            {
                s.listen.push(Address::parse(a.trim()).unwrap());
            }
        }
        s
    }

    /// The next stderr line.
    pub fn line(&self) -> String {
        self.lines
            .recv_timeout(WAIT)
            .expect("upkeep printed nothing in time")
    }

    /// Waits for a stderr line containing `text`.
    pub fn expect(&self, text: &str) {
        let start = Instant::now();
        while start.elapsed() < WAIT {
            if self.line().contains(text) {
                return;
            }
        }
        panic!("no line containing {text:?}");
    }

    /// The stderr lines printed so far and not yet read.
    pub fn lines_so_far(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    /// Sends signal `sig` (a name such as `HUP`) with kill(1).
    pub fn signal(&self, sig: &str) {
        signal(&self.child, sig);
    }

    /// Sends SIGINT and waits for the exit code.
    pub fn stop(mut self) -> i32 {
        self.signal("INT");
        wait_exit(&mut self.child, WAIT)
    }

    /// A line of `/proc/PID/limits` (Linux), such as "Max open files".
    pub fn proc_limit(&self, name: &str) -> Option<String> {
        let text = std::fs::read_to_string(format!("/proc/{}/limits", self.child.id())).ok()?;
        text.lines()
            .find(|l| l.starts_with(name))
            .map(str::to_owned)
    }

    /// How many descriptors the process has open (Linux).
    pub fn open_fds(&self) -> Option<usize> {
        let dir = std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).ok()?;
        Some(dir.count())
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}
