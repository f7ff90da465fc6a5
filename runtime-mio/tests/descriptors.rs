//! Descriptor limits on the spawned `upkeep` binary: the soft limit is raised to the hard one,
//! and a client flood leaves descriptors for upstream connections.

#[path = "common/spawned.rs"]
mod spawned;

use std::time::Duration;

use spawned::Spawned;
use upkeep_testkit::backend::Backend;
use upkeep_testkit::client::{self, Client};

#[test]
fn the_soft_descriptor_limit_is_raised_to_the_hard_one() {
    let b = Backend::identify("nofile").unwrap();
    let upstream = b.addr().to_string();
    let up = Spawned::start(
        &["prlimit", "--nofile=200:1000"],
        &[
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream,
            "--workers",
            "1",
        ],
        1,
    );
    let line = up.proc_limit("Max open files").expect("/proc/PID/limits");
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[3..5], ["1000", "1000"], "{line}");
    assert_eq!(up.stop(), 0);
}

/// With few descriptors and more clients than they allow, every accepted client's request —
/// each needing a new upstream connection (the backend closes after every response) — is
/// served: accepting pauses at the derived client limit, before the upstream side runs out.
#[test]
fn a_client_flood_leaves_descriptors_for_new_upstream_connections() {
    let b = Backend::builder()
        .name("flood")
        .identify()
        .max_requests_per_conn(1)
        .delay(Duration::from_millis(20))
        .start()
        .unwrap();
    let upstream = b.addr().to_string();
    let up = Spawned::start(
        &["prlimit", "--nofile=128:128"],
        &[
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream,
            "--workers",
            "1",
        ],
        1,
    );
    let listen = up.listen[0].clone();
    // Far more clients than 128 descriptors hold, each with its request sent at once: the
    // accepted ones are all in flight together, the rest wait in the backlog.
    let mut flood: Vec<Client> = (0..150)
        .map(|_| Client::connect(&listen).unwrap())
        .collect();
    for c in &mut flood {
        c.send(&client::get("/")).unwrap();
    }
    up.expect("pausing accepts");
    // In order (the backlog is FIFO): each response read frees a client slot for the next.
    for (i, mut c) in flood.into_iter().enumerate() {
        let r = c
            .read_response()
            .unwrap_or_else(|e| panic!("client {i}: {e}"));
        assert_eq!(r.status, 200, "client {i}: {}", r.text());
    }
    let warned = up
        .lines_so_far()
        .iter()
        .filter(|l| l.contains("pausing accepts"))
        .count();
    assert!(warned <= 1, "the pause warning is rate-limited: {warned}");
    assert_eq!(up.stop(), 0);
}
