//! Host names in upstream addresses (`"app.internal:8080"`): resolved here, by the runtime,
//! never by the core. A configuration as written (the *template*, whose named servers carry
//! [`ServerConfig::host`]) becomes the configuration a core runs by replacing each named server
//! with one server per address the name resolves to, with the name's weight and settings.
//!
//! Resolution blocks (the system resolver is `getaddrinfo`), so it runs on a helper thread:
//! [`Names::resolve`] spawns one at start and on reload, and a [`Watcher`] owns one while
//! running to re-resolve every `resolve_interval`. A name that does not resolve at start is an
//! error; one that stops resolving later keeps its last good addresses (with a warning). When
//! the address set changes, the watcher hands the new configuration to the runtime, which
//! applies it like a reload: new servers join, the workers serving the old set drain (in-flight
//! requests finish, their pooled connections close).
//!
//! The resolver is a trait so that tests (and embedders with their own service discovery) can
//! inject answers.

use std::collections::BTreeMap;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Instant;

use upkeep_core::Address;
use upkeep_core::config::{Config, ConfigError, ServerConfig};

/// Turns a host name and port into addresses. Called on a helper thread, never on a worker.
pub trait Resolver: Send + Sync + 'static {
    /// Every address `host` resolves to, with `port`. An empty answer counts as a failure.
    fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>>;
}

/// The system resolver (`getaddrinfo` through [`ToSocketAddrs`]: `/etc/hosts`, DNS, whatever
/// `nsswitch.conf` says).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        Ok((host, port).to_socket_addrs()?.collect())
    }
}

/// A name as written: host and port.
type Name = (String, u16);

/// The last good answer per name: sorted and without duplicates, so that equal sets compare
/// equal whatever order the resolver returned them in.
type Answers = BTreeMap<Name, Vec<SocketAddr>>;

/// A configuration as written and the last good answer for each of its names.
pub struct Names {
    template: Config,
    answers: Answers,
    resolver: Arc<dyn Resolver>,
    /// When each group's names are next re-resolved (`None`: the group has no names or no
    /// `resolve_interval`).
    due: Vec<Option<Instant>>,
}

impl std::fmt::Debug for Names {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Names")
            .field("answers", &self.answers)
            .field("due", &self.due)
            .finish_non_exhaustive()
    }
}

impl Names {
    /// Resolves every name in `template` (on a helper thread) and returns the names with the
    /// configuration a core can run (validated with [`Config::validate_resolved`]). A name that
    /// does not resolve is an error at its server (`upstream "app": server 2`), which
    /// [`FileError::locate`](upkeep_core::config::FileError::locate) places on the line of a config file.
    pub fn resolve(
        template: Config,
        resolver: Arc<dyn Resolver>,
    ) -> Result<(Names, Config), ConfigError> {
        template.validate()?;
        let answers = on_helper_thread(|| {
            let mut answers = Answers::new();
            for (loc, name) in names_of(&template) {
                if answers.contains_key(&name) {
                    continue;
                }
                let addrs = lookup(&*resolver, &name)
                    .map_err(|e| ConfigError::new(loc, format!("{}:{}: {e}", name.0, name.1)))?;
                answers.insert(name, addrs);
            }
            Ok::<_, ConfigError>(answers)
        })?;
        let config = expand(&template, &answers);
        config.validate_resolved()?;
        let now = Instant::now();
        let due = template
            .upstreams
            .iter()
            .map(|u| {
                let named = u.servers.iter().any(|s| s.host.is_some());
                (named && !u.resolve_interval.is_zero()).then(|| now + u.resolve_interval)
            })
            .collect();
        Ok((
            Names {
                template,
                answers,
                resolver,
                due,
            },
            config,
        ))
    }

    /// The configuration as written.
    pub fn template(&self) -> &Config {
        &self.template
    }

    /// When [`Names::refresh`] next has something to do; `None`: never (no group re-resolves).
    pub fn next_due(&self) -> Option<Instant> {
        self.due.iter().flatten().min().copied()
    }

    /// Re-resolves the names of every group whose `resolve_interval` has passed at `now`
    /// (blocking: call on a helper thread, as [`Watcher`] does). Returns the new configuration
    /// when an address set changed. A name that fails keeps its last good addresses, with a
    /// warning; so does a change that would not validate (more than 64 servers in a group).
    pub fn refresh(&mut self, now: Instant) -> Option<Config> {
        let mut answers = self.answers.clone();
        for (g, up) in self.template.upstreams.iter().enumerate() {
            match self.due[g] {
                Some(t) if t <= now => self.due[g] = Some(now + up.resolve_interval),
                _ => continue,
            }
            for s in &up.servers {
                let Some(host) = &s.host else { continue };
                let name = (host.clone(), port_of(s));
                match lookup(&*self.resolver, &name) {
                    Ok(addrs) => {
                        answers.insert(name, addrs);
                    }
                    Err(e) => log::warn!(
                        "upstream {:?}: {}:{} no longer resolves ({e}); keeping its last \
                         addresses",
                        up.name,
                        name.0,
                        name.1
                    ),
                }
            }
        }
        if answers == self.answers {
            return None;
        }
        let config = expand(&self.template, &answers);
        if let Err(e) = config.validate_resolved() {
            log::warn!("re-resolved addresses not applied: {e}");
            return None;
        }
        for (name, addrs) in &answers {
            if self.answers.get(name) != Some(addrs) {
                log::info!("{}:{} now resolves to {addrs:?}", name.0, name.1);
            }
        }
        self.answers = answers;
        Some(config)
    }
}

/// `config` with its names resolved by the system resolver (on a helper thread); `config`
/// itself when it has none. For library entry points that take a [`Config`].
pub fn resolve_now(config: Config) -> Result<Config, ConfigError> {
    if !config.has_names() {
        return Ok(config);
    }
    Names::resolve(config, Arc::new(SystemResolver)).map(|(_, c)| c)
}

/// Re-resolves a configuration's names on its own thread while running, calling `on_change`
/// (on that thread) with each changed configuration. Dropping it stops the thread.
#[derive(Debug)]
pub struct Watcher {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Starts watching; `None` when no group asks for re-resolution (nothing to do).
    pub fn start(
        mut names: Names,
        mut on_change: impl FnMut(Config) + Send + 'static,
    ) -> io::Result<Option<Watcher>> {
        if names.next_due().is_none() {
            return Ok(None);
        }
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("upkeep-resolve".into())
            .spawn(move || {
                while let Some(due) = names.next_due() {
                    let wait = due.saturating_duration_since(Instant::now());
                    match stopped.recv_timeout(wait) {
                        Err(RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    if let Some(config) = names.refresh(Instant::now()) {
                        on_change(config);
                    }
                }
            })?;
        Ok(Some(Watcher {
            stop: Some(stop),
            thread: Some(thread),
        }))
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            // A lookup in progress finishes first (getaddrinfo cannot be interrupted); its
            // answer is discarded.
            let _ = t.join();
        }
    }
}

/// Runs `f` on a thread of its own and waits for it: resolution blocks, and the caller may be
/// a thread that must not (a runtime's main loop).
fn on_helper_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// One lookup, sorted and deduplicated; an empty answer is an error.
fn lookup(resolver: &dyn Resolver, (host, port): &Name) -> io::Result<Vec<SocketAddr>> {
    let mut addrs = resolver.resolve(host, *port)?;
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "resolves to no address",
        ));
    }
    Ok(addrs)
}

fn port_of(s: &ServerConfig) -> u16 {
    match s.addr {
        Address::Tcp(sa) => sa.port(),
        Address::Unix(_) => 0,
    }
}

/// Every named server of `config`: its location (as in validation messages) and name.
fn names_of(config: &Config) -> Vec<(String, Name)> {
    let mut out = Vec::new();
    for up in &config.upstreams {
        for (j, s) in up.servers.iter().enumerate() {
            if let Some(host) = &s.host {
                let loc = format!("upstream {:?}: server {}", up.name, j + 1);
                out.push((loc, (host.clone(), port_of(s))));
            }
        }
    }
    out
}

/// `template` with each named server replaced, in place, by one server per address in
/// `answers` (same weight and settings). A name without an answer is dropped (cannot happen
/// for answers built by [`Names`]).
pub fn expand(template: &Config, answers: &BTreeMap<(String, u16), Vec<SocketAddr>>) -> Config {
    let mut config = template.clone();
    for up in &mut config.upstreams {
        up.servers = std::mem::take(&mut up.servers)
            .into_iter()
            .flat_map(|s| match &s.host {
                None => vec![s],
                Some(host) => answers
                    .get(&(host.clone(), port_of(&s)))
                    .into_iter()
                    .flatten()
                    .map(|a| ServerConfig {
                        addr: Address::Tcp(*a),
                        host: None,
                        ..s.clone()
                    })
                    .collect(),
            })
            .collect();
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    /// Answers a test controls: host → addresses (the port is the one asked for).
    #[derive(Default)]
    struct Fake(Mutex<BTreeMap<String, Vec<[u8; 4]>>>);

    impl Fake {
        fn set(&self, host: &str, ips: &[[u8; 4]]) {
            self.0.lock().unwrap().insert(host.into(), ips.to_vec());
        }
        fn forget(&self, host: &str) {
            self.0.lock().unwrap().remove(host);
        }
    }

    impl Resolver for Fake {
        fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
            let map = self.0.lock().unwrap();
            let ips = map
                .get(host)
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such host"))?;
            Ok(ips.iter().map(|ip| SocketAddr::from((*ip, port))).collect())
        }
    }

    fn template(interval: Duration) -> Config {
        let a = |s: &str| Address::parse(s).unwrap();
        let mut c = Config::simple(a("127.0.0.1:0"), vec![a("127.0.0.1:9000")]);
        let mut named = ServerConfig::named("app.test", 8080);
        named.weight = 3;
        c.upstreams[0].servers.push(named);
        c.upstreams[0].resolve_interval = interval;
        c
    }

    fn addrs(c: &Config) -> Vec<(String, u32)> {
        c.upstreams[0]
            .servers
            .iter()
            .map(|s| (s.addr.to_string(), s.weight))
            .collect()
    }

    #[test]
    fn every_address_becomes_a_server_with_the_names_weight() {
        let fake = Arc::new(Fake::default());
        fake.set("app.test", &[[10, 0, 0, 2], [10, 0, 0, 1], [10, 0, 0, 2]]);
        let (names, c) = Names::resolve(template(Duration::ZERO), fake).unwrap();
        assert_eq!(
            addrs(&c),
            [
                ("127.0.0.1:9000".to_string(), 1),
                ("10.0.0.1:8080".to_string(), 3),
                ("10.0.0.2:8080".to_string(), 3),
            ]
        );
        assert!(!c.has_names());
        assert_eq!(names.next_due(), None, "no resolve_interval: resolved once");
    }

    #[test]
    fn a_name_that_does_not_resolve_at_start_is_an_error_at_its_server() {
        let fake = Arc::new(Fake::default());
        let e = Names::resolve(template(Duration::ZERO), fake).unwrap_err();
        assert_eq!(e.location, "upstream \"default\": server 2");
        assert!(e.message.contains("app.test:8080: no such host"), "{e}");
        let empty = Arc::new(Fake::default());
        empty.set("app.test", &[]);
        let e = Names::resolve(template(Duration::ZERO), empty).unwrap_err();
        assert!(e.message.contains("resolves to no address"), "{e}");
    }

    #[test]
    fn refresh_applies_changes_and_keeps_the_last_good_answer() {
        let fake = Arc::new(Fake::default());
        fake.set("app.test", &[[10, 0, 0, 1], [10, 0, 0, 2]]);
        let every = Duration::from_secs(5);
        let (mut names, c) = Names::resolve(template(every), fake.clone()).unwrap();
        assert_eq!(c.upstreams[0].servers.len(), 3);
        let start = names.next_due().unwrap() - every;
        // Not due yet: nothing asked.
        fake.set("app.test", &[[10, 0, 0, 1]]);
        assert_eq!(names.refresh(start + Duration::from_secs(1)), None);
        // Due: one address gone.
        let c = names.refresh(start + every).expect("a changed set");
        assert_eq!(
            addrs(&c),
            [
                ("127.0.0.1:9000".to_string(), 1),
                ("10.0.0.1:8080".to_string(), 3)
            ]
        );
        assert_eq!(names.next_due(), Some(start + every + every));
        // Same answer again: no change.
        assert_eq!(names.refresh(start + every * 2), None);
        // The name stops resolving: the last addresses stay.
        fake.forget("app.test");
        assert_eq!(names.refresh(start + every * 3), None);
        // Back, with a new address in a different order.
        fake.set("app.test", &[[10, 0, 0, 3], [10, 0, 0, 1]]);
        let c = names.refresh(start + every * 4).unwrap();
        assert_eq!(c.upstreams[0].servers.len(), 3);
        assert_eq!(names.template(), &template(every));
    }

    #[test]
    fn the_watcher_reports_a_change_from_its_own_thread() {
        let fake = Arc::new(Fake::default());
        fake.set("app.test", &[[10, 0, 0, 1], [10, 0, 0, 2]]);
        let (names, _) = Names::resolve(template(Duration::from_millis(20)), fake.clone()).unwrap();
        let (tx, rx) = mpsc::channel();
        let watcher = Watcher::start(names, move |c| {
            let _ = tx.send(c);
        })
        .unwrap()
        .expect("a group re-resolves");
        fake.set("app.test", &[[10, 0, 0, 2]]);
        let c = rx.recv_timeout(Duration::from_secs(10)).expect("a change");
        assert_eq!(c.upstreams[0].servers[1].addr.to_string(), "10.0.0.2:8080");
        drop(watcher);
        let (names, _) = Names::resolve(template(Duration::ZERO), fake).unwrap();
        assert!(Watcher::start(names, |_| {}).unwrap().is_none());
    }

    #[test]
    fn the_system_resolver_resolves_localhost() {
        let addrs = SystemResolver.resolve("localhost", 8080).unwrap();
        assert!(!addrs.is_empty());
        assert!(
            addrs
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 8080)
        );
        let mut c = template(Duration::ZERO);
        c.upstreams[0].servers[1] = ServerConfig::named("localhost", 8080);
        let c = resolve_now(c).unwrap();
        assert!(c.upstreams[0].servers.len() >= 2);
        assert!(c.upstreams[0].servers[1..].iter().all(|s| s.host.is_none()));
    }
}
