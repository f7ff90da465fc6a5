//! The install story and the documentation stay true: the systemd unit passes
//! `systemd-analyze verify`, every configuration key and quick-mode flag is documented in the
//! README, the README's example file is valid, and no document links out of the repository.

use std::path::{Path, PathBuf};
use std::process::Command;

use upkeep_core::config::{Address, Config, QUICK_FLAGS};
use upkeep_testkit::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_upkeep");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .canonicalize()
        .unwrap()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap()
}

#[test]
fn the_systemd_unit_checks_reloads_and_verifies() {
    let unit = read("dist/upkeep.service");
    for line in [
        "ExecStartPre=/usr/local/bin/upkeep check --config /etc/upkeep/upkeep.toml",
        "ExecStart=/usr/local/bin/upkeep run --config /etc/upkeep/upkeep.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "LimitNOFILE=",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "Type=notify",
    ] {
        assert!(unit.lines().any(|l| l.starts_with(line)), "{line} missing");
    }
    let has_tool = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_tool {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    // verify insists that every Exec path exists: point them at the binary under test.
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("upkeep.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/upkeep", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // verify reports bad lines as warnings and still succeeds: none may name our unit.
    let ours: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("upkeep.service"))
        .collect();
    assert!(ours.is_empty(), "{err}");
}

/// Every `key = ` the effective configuration of a config using every table writes, and the
/// table names.
fn every_key() -> Vec<String> {
    let a = |s: &str| Address::parse(s).unwrap();
    let mut c = Config::simple(a("127.0.0.1:1"), vec![a("127.0.0.1:2")]);
    c.runtime.admin = Some(a("127.0.0.1:3"));
    c.listeners[0].upstream = Some("default".into());
    c.routes.push(upkeep_core::config::RouteConfig {
        host: Some("example.com".into()),
        path_prefix: "/".into(),
        upstream: "default".into(),
    });
    let text = c.to_toml();
    let mut keys = Vec::new();
    for piece in text.split(" = ").map(str::trim_end) {
        let key: String = piece
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        if !key.is_empty() && !piece.trim_start().starts_with('#') {
            keys.push(key);
        }
    }
    for line in text.lines().filter(|l| l.starts_with('[')) {
        keys.push(line.trim_matches(['[', ']']).to_owned());
    }
    keys.sort();
    keys.dedup();
    keys
}

#[test]
fn every_key_and_flag_is_documented() {
    let readme = read("README.md");
    let keys = every_key();
    assert!(keys.len() > 40, "{keys:?}");
    // In a code span: `key`, `[table] key`, `[table]`, `name`, `servers`, `{ addr, weight = 1 }`.
    let documented = |k: &String| {
        [
            format!("`{k}`"),
            format!(" {k}`"),
            format!("`{k} "),
            format!("{{ {k},"),
            format!(" {k} = "),
            format!("[{k}]"),
        ]
        .iter()
        .any(|form| readme.contains(form.as_str()))
    };
    let missing: Vec<&String> = keys.iter().filter(|k| !documented(k)).collect();
    assert!(
        missing.is_empty(),
        "keys missing from README.md: {missing:?}"
    );
    let help = Command::new(BIN).args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in QUICK_FLAGS {
        assert!(
            readme.contains(&format!("`--{flag}")),
            "--{flag} missing from README.md"
        );
        assert!(
            help.contains(&format!("--{flag}")),
            "--{flag} missing from run --help"
        );
    }
    let example = read("runtime-mio/upkeep.example.toml");
    for k in &keys {
        assert!(
            example.contains(k.as_str()),
            "{k} missing from upkeep.example.toml"
        );
    }
}

#[test]
fn the_readme_example_is_valid_and_quiet() {
    let readme = read("README.md");
    let start = readme.find("```toml\n").expect("a TOML example") + "```toml\n".len();
    let text = &readme[start..start + readme[start..].find("```").unwrap()];
    let config = Config::from_toml(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(config.warnings().is_empty(), "{:?}", config.warnings());
}

/// Markdown link targets `](target)` in `text`.
fn links(text: &str) -> Vec<&str> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split_once(')').map(|(t, _)| t))
        .collect()
}

#[test]
fn documents_link_only_inside_the_repository() {
    let root = repo();
    let mut files = vec![root.join("README.md"), root.join("benches/README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        files.push(entry.unwrap().path());
    }
    for file in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "md"))
    {
        let text = std::fs::read_to_string(file).unwrap();
        // Any relative path that climbs (`../`), link or plain text, stays inside.
        for (at, _) in text.match_indices("../") {
            if at > 0 && !text[..at].ends_with(['(', ' ', '`', '\n']) {
                continue; // the tail of a longer `../../` already checked from its start
            }
            let path: String = text[at..]
                .chars()
                .take_while(|c| !c.is_whitespace() && !matches!(c, ')' | '`' | '#' | '"'))
                .collect();
            let resolved = file.parent().unwrap().join(&path).canonicalize();
            assert!(
                resolved.as_ref().is_ok_and(|p| p.starts_with(&root)),
                "{}: {path} points outside the repository",
                file.display()
            );
        }
        for target in links(&text) {
            let path = target.split('#').next().unwrap();
            if target.starts_with("http://") || target.starts_with("https://") || path.is_empty() {
                continue;
            }
            let resolved = file.parent().unwrap().join(path).canonicalize();
            assert!(
                resolved.as_ref().is_ok_and(|p| p.starts_with(&root)),
                "{}: link {target} does not resolve inside the repository",
                file.display()
            );
        }
    }
}
