//! `upkeep check` against the spawned binary: every file `upkeep run` rejects is rejected by
//! `check` with the same `FILE:LINE:COL: message` and the same exit status (1); warnings;
//! `--print`; "did you mean" for flags; and request bodies unlimited by default.

use std::process::{Command, Output};

use upkeep_testkit::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_upkeep");

/// A listener (line 1) and one group (lines 3-5); the case's lines follow from line 6.
const HEAD: &str = "listen = [\"127.0.0.1:18080\"]\n\n[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:9001\"]\n";

fn upkeep(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Writes `text` to `name` in `dir`; returns the path.
fn file(dir: &TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// `check` and `run` both reject `text` with exit 1 and a first stderr line
/// `FILE:LINE:COL: message` where `message` contains `want`.
fn both_reject(dir: &TempDir, text: &str, (line, col): (usize, usize), want: &str) {
    let path = file(dir, "bad.toml", text);
    for cmd in ["check", "run"] {
        let out = upkeep(&[cmd, "--config", &path]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{cmd}: {err}");
        let first = err.lines().next().unwrap_or("");
        let at = format!("{path}:{line}:{col}: ");
        assert!(
            first.starts_with(&at) && first.contains(want),
            "{cmd}: want {at}…{want}…, got {err}"
        );
    }
}

#[test]
fn listener_overlaps_are_rejected_by_check_and_run_alike() {
    let dir = TempDir::new().unwrap();
    both_reject(
        &dir,
        &HEAD.replace(
            "listen = [\"127.0.0.1:18080\"]",
            "listen = [\"0.0.0.0:18080\", \"127.0.0.1:18080\"]",
        ),
        (1, 28),
        "listen 2: address 127.0.0.1:18080 overlaps listen 1 (0.0.0.0:18080)",
    );
    both_reject(
        &dir,
        &HEAD.replace(
            "listen = [\"127.0.0.1:18080\"]",
            "listen = [\"[::1]:18080\", \"[::]:18080\"]",
        ),
        (1, 26),
        "listen 2: address [::]:18080 overlaps listen 1 ([::1]:18080)",
    );
    both_reject(
        &dir,
        &HEAD.replace(
            "listen = [\"127.0.0.1:18080\"]",
            "listen = [\"127.0.0.1:18080\", \"127.0.0.1:18080\"]",
        ),
        (1, 30),
        "listen 2: address 127.0.0.1:18080 is already used by listen 1",
    );
    both_reject(
        &dir,
        &format!("admin = \"0.0.0.0:18080\"\n{HEAD}"),
        (1, 9),
        "admin: address 0.0.0.0:18080 overlaps listen 1",
    );
}

#[test]
fn paths_in_missing_directories_are_rejected_by_check_and_run_alike() {
    let dir = TempDir::new().unwrap();
    let missing = dir.path().join("no-such-dir");
    let m = missing.display();
    both_reject(
        &dir,
        &HEAD.replace(
            "listen = [\"127.0.0.1:18080\"]",
            &format!("listen = [\"127.0.0.1:18080\", \"unix:{m}/upkeep.sock\"]"),
        ),
        (1, 30),
        &format!("listen 2: directory {m} of unix socket {m}/upkeep.sock does not exist"),
    );
    both_reject(
        &dir,
        &format!("access_log = \"{m}/access.log\"\n{HEAD}"),
        (1, 14),
        &format!("access_log: directory {m} of access log {m}/access.log does not exist"),
    );
    both_reject(
        &dir,
        &format!("admin = \"unix:{m}/admin.sock\"\n{HEAD}"),
        (1, 9),
        &format!("admin: directory {m} of unix socket {m}/admin.sock does not exist"),
    );
    // A "directory" that is a file.
    let plain = file(&dir, "plain", "");
    both_reject(
        &dir,
        &format!("access_log = \"{plain}/access.log\"\n{HEAD}"),
        (1, 14),
        "is not a directory",
    );
    // Quick mode: the same check, the same exit status.
    let log = format!("{m}/access.log");
    let out = upkeep(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "127.0.0.1:9",
        "--access-log",
        &log,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
}

/// A Unix socket path longer than a socket address holds (`sun_path`) fails at bind: `check`
/// must say so first, for a listener and for the admin socket.
#[test]
fn unix_socket_paths_too_long_to_bind_are_rejected_by_check_and_run_alike() {
    let dir = TempDir::new().unwrap();
    let deep = dir.path().join("d".repeat(120));
    std::fs::create_dir(&deep).unwrap();
    let long = format!("{}/upkeep.sock", deep.display());
    both_reject(
        &dir,
        &HEAD.replace(
            "listen = [\"127.0.0.1:18080\"]",
            &format!("listen = [\"127.0.0.1:18080\", \"unix:{long}\"]"),
        ),
        (1, 30),
        &format!("listen 2: unix socket path {long} is too long"),
    );
    both_reject(
        &dir,
        &format!("admin = \"unix:{long}\"\n{HEAD}"),
        (1, 9),
        &format!("admin: unix socket path {long} is too long"),
    );
}

/// `run` never replaces a file that is not a socket at a Unix listener's path (it may be someone's
/// data): `check` says so first.
#[test]
fn a_unix_socket_path_naming_a_plain_file_is_rejected_by_check_and_run_alike() {
    let dir = TempDir::new().unwrap();
    let plain = file(&dir, "data.txt", "keep me");
    both_reject(
        &dir,
        &HEAD.replace(
            "listen = [\"127.0.0.1:18080\"]",
            &format!("listen = [\"127.0.0.1:18080\", \"unix:{plain}\"]"),
        ),
        (1, 30),
        &format!("listen 2: {plain} exists and is not a socket"),
    );
    assert_eq!(std::fs::read_to_string(&plain).unwrap(), "keep me");
}

#[test]
fn unwritable_directories_are_rejected() {
    let dir = TempDir::new().unwrap();
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    let mut perms = std::fs::metadata(&locked).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o555);
    std::fs::set_permissions(&locked, perms).unwrap();
    // root writes anywhere (CAP_DAC_OVERRIDE): the rule cannot be observed then.
    if std::fs::write(locked.join("probe"), "").is_ok() {
        eprintln!("skipped: this user can write into a 0555 directory (root?)");
        return;
    }
    let l = locked.display();
    both_reject(
        &dir,
        &format!("access_log = \"{l}/access.log\"\n{HEAD}"),
        (1, 14),
        &format!("access_log: directory {l} of access log {l}/access.log is not writable"),
    );
}

/// A relative access log is opened in the working directory, so that is the directory to check
/// (not `/`, which an unprivileged user cannot write into).
#[test]
fn a_relative_access_log_is_checked_in_the_working_directory() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = TempDir::new().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let path = file(
        &dir,
        "rel.toml",
        &format!("access_log = \"access.log\"\n{HEAD}"),
    );
    let mut cmd = Command::new(BIN);
    cmd.args(["check", "--config", &path])
        .current_dir(dir.path());
    // root writes anywhere, `/` included: check as `nobody` so the directory checked matters.
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
    if std::fs::write(locked.join("probe"), "").is_ok() {
        cmd.uid(65534).gid(65534);
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "configuration ok\n");
}

#[test]
fn plain_language_type_errors_and_did_you_mean() {
    let dir = TempDir::new().unwrap();
    for (extra, at, want) in [
        (
            "keepalvie = 16",
            (6, 1),
            "unknown field `keepalvie`, did you mean `keepalive`?",
        ),
        (
            "balance = \"least_con\"",
            (6, 11),
            "did you mean `least_conn`?",
        ),
        (
            "keepalive = \"many\"",
            (6, 13),
            "expected a whole number (0 or more), found the string \"many\"",
        ),
        (
            "next_upstream_on_timeout = 1",
            (6, 28),
            "expected true or false, found the number 1",
        ),
        ("keepalive_timeout = 30", (6, 21), "duration 30 has no unit"),
        (
            "workers = 2",
            (6, 1),
            "`workers` is a top-level key, so it must come before the first [table]",
        ),
    ] {
        both_reject(&dir, &format!("{HEAD}{extra}\n"), at, want);
    }
    both_reject(
        &dir,
        &HEAD.replace("[\"127.0.0.1:9001\"]", "\"127.0.0.1:9001\""),
        (5, 11),
        "expected a list, such as [\"a\", \"b\"], found the string \"127.0.0.1:9001\"",
    );
    // No Rust type names anywhere.
    let path = file(&dir, "t.toml", &format!("workers = \"two\"\n{HEAD}"));
    let err = stderr(&upkeep(&["check", "--config", &path]));
    assert!(err.contains("expected a whole number"), "{err}");
    assert!(!err.contains("usize"), "{err}");
}

#[test]
fn usage_errors_exit_2_with_did_you_mean() {
    for (args, want) in [
        (
            &["run", "--listen", "127.0.0.1:0", "--upsteam", "127.0.0.1:9"][..],
            "did you mean --upstream?",
        ),
        (&["check", "--confg", "x.toml"], "did you mean --config?"),
        (&["chek"], "did you mean \"check\"?"),
        (
            &[
                "run",
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                "127.0.0.1:9",
                "--workers",
                "x",
            ],
            "--workers",
        ),
    ] {
        let out = upkeep(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
    // A missing file is a bad configuration (1), not bad usage, for both commands.
    for cmd in ["check", "run"] {
        let out = upkeep(&[cmd, "--config", "/nonexistent-upkeep.toml"]);
        assert_eq!(out.status.code(), Some(1), "{cmd}: {}", stderr(&out));
        assert!(stderr(&out).contains("cannot read"), "{}", stderr(&out));
    }
}

#[test]
fn warnings_point_at_the_item_and_do_not_fail() {
    let dir = TempDir::new().unwrap();
    let text = "admin = \"0.0.0.0:19901\"\n\
                listen = [\"127.0.0.1:18080\"]\n\
                \n\
                [[upstream]]\n\
                name = \"app\"\n\
                servers = [\"127.0.0.1:9001\"]\n\
                keepalive_timeout = \"2h\"\n\
                \n\
                [[route]]\n\
                path_prefix = \"/api\"\n\
                upstream = \"app\"\n";
    let path = file(&dir, "warn.toml", text);
    let out = upkeep(&["check", "--config", &path]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "configuration ok\n");
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    let want = [
        format!("{path}:2:11: warning: listen 1: no route matches every request"),
        format!("{path}:1:9: warning: admin: 0.0.0.0:19901 is reachable from other hosts"),
        format!(
            "{path}:7:21: warning: upstream \"app\": keepalive_timeout (2h) is longer than \
             keepalive_time (1h)"
        ),
    ];
    assert_eq!(lines.len(), want.len(), "{err}");
    for (line, want) in lines.iter().zip(&want) {
        assert!(line.starts_with(want.as_str()), "want {want}…, got {line}");
    }
}

#[test]
fn print_shows_every_default_and_reads_back() {
    let dir = TempDir::new().unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/upkeep.example.toml");
    for source in [file(&dir, "min.toml", HEAD), example.to_owned()] {
        let out = upkeep(&["check", "--config", &source, "--print"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let printed = String::from_utf8(out.stdout).unwrap();
        for key in [
            "workers = ",
            "shutdown_timeout = ",
            "shutdown_delay = ",
            "keepalive = ",
            "keepalive_requests = ",
            "fail_timeout = ",
            "[client_timeouts]",
            "max_body = ",
            "via = ",
        ] {
            assert!(printed.contains(key), "{key} missing:\n{printed}");
        }
        // Valid TOML that `check` accepts, and printing it again changes nothing.
        let again = file(&dir, "printed.toml", &printed);
        let out = upkeep(&["check", "--config", &again, "--print"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_eq!(String::from_utf8(out.stdout).unwrap(), printed);
    }
}

/// Quick-mode flags through `check`: the same checks as `run`, and `--print` turns them into a
/// file `check --config` accepts.
#[test]
fn check_takes_quick_mode_flags_and_prints_them_as_a_file() {
    let dir = TempDir::new().unwrap();
    let flags = [
        "check",
        "--listen",
        "127.0.0.1:18080",
        "--upstream",
        "127.0.0.1:9001",
        "--keepalive",
        "8",
        "--shutdown-delay",
        "5s",
    ];
    let out = upkeep(&flags);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "configuration ok\n");
    let out = upkeep(&[&flags[..], &["--print"]].concat());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let printed = String::from_utf8(out.stdout).unwrap();
    for line in [
        "keepalive = 8\n",
        "shutdown_delay = \"5s\"\n",
        "name = \"default\"\n",
    ] {
        assert!(printed.contains(line), "{line:?} missing:\n{printed}");
    }
    let path = file(&dir, "from-flags.toml", &printed);
    let out = upkeep(&["check", "--config", &path]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // A bad path is a configuration error (1) here too.
    let missing = dir.path().join("no-such-dir/access.log");
    let out = upkeep(&[&flags[..], &["--access-log", &missing.to_string_lossy()]].concat());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
}

/// `health_check` through the binary: `check` and `run` reject a bad one at its item, and
/// `--print` writes the effective check (defaults filled in) back, which reads back the same.
#[test]
fn health_check_is_checked_and_printed_back() {
    let dir = TempDir::new().unwrap();
    both_reject(
        &dir,
        &format!("{HEAD}health_check = {{ interval = \"1s\", timeout = \"3s\" }}\n"),
        (6, 16),
        "upstream \"app\": health_check timeout must be > 0 and <= interval (1s)",
    );
    let text = format!("{HEAD}\n[upstream.health_check]\npath = \"/healthz\"\nfall = 2\n");
    let source = file(&dir, "checked.toml", &text);
    let out = upkeep(&["check", "--config", &source, "--print"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let printed = String::from_utf8(out.stdout).unwrap();
    let want = "health_check = { path = \"/healthz\", interval = \"5s\", timeout = \"5s\", \
                fall = 2, rise = 2, expect = \"200-399\" }";
    assert!(printed.contains(want), "{want} missing:\n{printed}");
    let again = file(&dir, "printed.toml", &printed);
    let out = upkeep(&["check", "--config", &again, "--print"]);
    assert_eq!(String::from_utf8(out.stdout).unwrap(), printed);
}
