//! What a reload changed, in words an operator reads in the log: listeners and upstream groups
//! added or removed, servers added to or removed from a group, a group's settings changed, and
//! which other sections differ. Compares two validated [`Config`]s; no I/O.

use std::fmt::Debug;

use upkeep_core::Config;
use upkeep_core::config::UpstreamConfig;

/// The changes from `old` to `new`, one phrase each, in configuration order (empty: identical).
pub fn changes(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let old_listen: Vec<String> = old.listeners.iter().map(|l| l.addr.to_string()).collect();
    let new_listen: Vec<String> = new.listeners.iter().map(|l| l.addr.to_string()).collect();
    added_removed(&mut out, "listener", &old_listen, &new_listen);
    let old_groups: Vec<String> = old.upstreams.iter().map(|u| u.name.clone()).collect();
    let new_groups: Vec<String> = new.upstreams.iter().map(|u| u.name.clone()).collect();
    added_removed(&mut out, "upstream", &old_groups, &new_groups);
    for n in &new.upstreams {
        if let Some(o) = old.upstreams.iter().find(|o| o.name == n.name) {
            group_changes(&mut out, o, n);
        }
    }
    let sections: [(&str, bool); 5] = [
        ("routes", differ(&old.routes, &new.routes)),
        (
            "client timeouts",
            differ(&old.client_timeouts, &new.client_timeouts),
        ),
        ("limits", differ(&old.limits, &new.limits)),
        ("headers", differ(&old.headers, &new.headers)),
        ("runtime options", differ(&old.runtime, &new.runtime)),
    ];
    for (name, changed) in sections {
        if changed {
            out.push(format!("{name} changed"));
        }
    }
    out
}

/// Servers added or removed in a group kept by the reload, and whether its other settings moved.
fn group_changes(out: &mut Vec<String>, o: &UpstreamConfig, n: &UpstreamConfig) {
    let addrs = |u: &UpstreamConfig| -> Vec<String> {
        u.servers.iter().map(|s| s.addr.to_string()).collect()
    };
    added_removed(
        out,
        &format!("upstream {:?} server", n.name),
        &addrs(o),
        &addrs(n),
    );
    let same_servers =
        o.servers.len() == n.servers.len() && o.servers.iter().zip(&n.servers).all(|(a, b)| a == b);
    let mut settings_o = o.clone();
    settings_o.servers = n.servers.clone();
    if differ(&settings_o, n) || (!same_servers && addrs(o) == addrs(n)) {
        out.push(format!("upstream {:?} settings changed", n.name));
    }
}

/// "`what` X added" / "`what` X removed" for each name in only one of the lists.
fn added_removed(out: &mut Vec<String>, what: &str, old: &[String], new: &[String]) {
    for n in new.iter().filter(|n| !old.contains(n)) {
        out.push(format!("{what} {n} added"));
    }
    for o in old.iter().filter(|o| !new.contains(o)) {
        out.push(format!("{what} {o} removed"));
    }
}

/// Whether two config sections differ. Through their `Debug` text: the config types are plain
/// data whose `Debug` shows every field, and not all of them implement `PartialEq`.
fn differ<T: Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") != format!("{b:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::from_toml(text).unwrap()
    }

    #[test]
    fn names_what_moved() {
        let old = config(
            "[[listen]]\naddr = \"127.0.0.1:8080\"\n[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:9001\", \"127.0.0.1:9002\"]\n",
        );
        assert!(changes(&old, &old).is_empty());
        let new = config(
            "[[listen]]\naddr = \"127.0.0.1:8081\"\n[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:9001\", \"127.0.0.1:9003\"]\nkeepalive = 3\n",
        );
        assert_eq!(
            changes(&old, &new),
            [
                "listener 127.0.0.1:8081 added",
                "listener 127.0.0.1:8080 removed",
                "upstream \"app\" server 127.0.0.1:9003 added",
                "upstream \"app\" server 127.0.0.1:9002 removed",
                "upstream \"app\" settings changed",
            ]
        );
    }
}
