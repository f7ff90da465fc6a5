//! The admin API's upstream part, without I/O: `GET /upstreams` lists each group and server
//! (index, address, weight, state, health, requests in flight, connections, idle pooled
//! connections, and the group's queue length), and `POST /upstreams/{group}/servers/{index}/
//! {drain,down,up}` changes a server's state for every worker and answers the new one. An
//! unknown group or index is a 404, a wrong method a 405 with `Allow`. Answers are JSON.
//!
//! The facts come from the current generation's ledger ([`Shared`]): a runtime stores it in the
//! [`Upstreams`] handle at start and after each reload. A state set here survives a reload (see
//! [`Shared::carried_over`]).

use std::sync::{Arc, RwLock};

use serde_json::{Value, json};
use upkeep_core::{Config, ServerState, Shared};

use crate::clock;

/// The generation in force: its upstream groups and the ledger its workers share.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The configuration (group names, server addresses and weights).
    pub config: Config,
    /// The ledger the generation's workers share.
    pub ledger: Shared,
}

/// What the admin listener reads and changes; the runtime replaces the generation on reload.
#[derive(Debug, Clone, Default)]
pub struct Upstreams {
    current: Arc<RwLock<Option<Generation>>>,
}

impl Upstreams {
    /// Makes `generation` the one the API reports on and changes.
    pub fn set(&self, generation: Generation) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(generation);
    }

    fn get(&self) -> Option<Generation> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// An answer of the upstream API: status line, the `Allow` header of a 405, JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// `"200 OK"`, `"404 Not Found"`, ...
    pub status: &'static str,
    /// Methods allowed, for a 405.
    pub allow: Option<&'static str>,
    /// The JSON body.
    pub body: String,
}

fn reply(status: &'static str, allow: Option<&'static str>, body: Value) -> Reply {
    let mut body = body.to_string();
    body.push('\n');
    Reply {
        status,
        allow,
        body,
    }
}

fn error(status: &'static str, allow: Option<&'static str>, msg: &str) -> Reply {
    reply(status, allow, json!({ "error": msg }))
}

/// The answer to `method path` when `path` is `/upstreams` or below it; `None` otherwise (the
/// rest of the admin protocol answers).
pub fn answer(method: &str, path: &str, upstreams: &Upstreams) -> Option<Reply> {
    let rest = path.strip_prefix("/upstreams")?;
    if !rest.is_empty() && !rest.starts_with('/') {
        return None;
    }
    let Some(generation) = upstreams.get() else {
        return Some(error("404 Not Found", None, "no upstreams"));
    };
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    Some(match parts.as_slice() {
        [] => match method {
            "GET" | "HEAD" => reply("200 OK", None, list(&generation)),
            _ => error(
                "405 Method Not Allowed",
                Some("GET, HEAD"),
                "method not allowed",
            ),
        },
        [group, "servers", index, action] => {
            let Some(state) = ServerState::parse(action) else {
                return Some(error("404 Not Found", None, "unknown action"));
            };
            let Some((g, i)) = locate(&generation.config, group, index) else {
                return Some(error("404 Not Found", None, "unknown group or server"));
            };
            if method != "POST" {
                return Some(error(
                    "405 Method Not Allowed",
                    Some("POST"),
                    "method not allowed",
                ));
            }
            match generation.ledger.set_state(g, i, state) {
                Some(s) => {
                    log::info!(
                        "admin: upstream {:?} server {i} ({}) set {}",
                        generation.config.upstreams[g].name,
                        generation.config.upstreams[g].servers[i].addr,
                        s.as_str()
                    );
                    reply("200 OK", None, server(&generation, g, i))
                }
                None => error("404 Not Found", None, "unknown group or server"),
            }
        }
        _ => error("404 Not Found", None, "not found"),
    })
}

/// Group `name` (as it appears in the path: percent-encoded where the name has a space, a `/`,
/// non-ASCII...) and server `index` (from 0) of `config`.
fn locate(config: &Config, name: &str, index: &str) -> Option<(usize, usize)> {
    let name = percent_decode(name)?;
    let g = config.upstreams.iter().position(|u| u.name == name)?;
    let i: usize = index.parse().ok()?;
    (i < config.upstreams[g].servers.len()).then_some((g, i))
}

/// `%XX` escapes of a path segment decoded (UTF-8); `None` for a malformed escape or bytes that
/// are not UTF-8. Hand-written: a dozen lines, not worth a dependency for one segment.
fn percent_decode(segment: &str) -> Option<String> {
    let b = segment.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = core::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn server(generation: &Generation, g: usize, i: usize) -> Value {
    let cfg = &generation.config.upstreams[g].servers[i];
    let view = generation.ledger.server(g, i, clock::now());
    let Some(v) = view else {
        return Value::Null;
    };
    json!({
        "index": i,
        "address": cfg.addr.to_string(),
        "weight": cfg.weight,
        "backup": cfg.backup,
        "max_conns": cfg.max_conns,
        "state": v.state.as_str(),
        "health": if v.healthy { "up" } else { "down" },
        "requests": v.inflight,
        "connections": v.conns,
        "idle": v.idle,
    })
}

fn list(generation: &Generation) -> Value {
    let groups: Vec<Value> = generation
        .config
        .upstreams
        .iter()
        .enumerate()
        .map(|(g, up)| {
            json!({
                "name": up.name,
                "queue": generation.ledger.queued(g),
                "queue_limit": up.queue,
                "servers": (0..up.servers.len()).map(|i| server(generation, g, i)).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "upstreams": groups })
}

#[cfg(test)]
mod tests {
    use super::*;
    use upkeep_core::Address;

    fn upstreams() -> (Upstreams, Shared) {
        let config = Config::simple(
            Address::parse("127.0.0.1:8080").unwrap(),
            vec![
                Address::parse("127.0.0.1:9001").unwrap(),
                Address::parse("127.0.0.1:9002").unwrap(),
            ],
        );
        let ledger = Shared::new(&config, 2);
        let u = Upstreams::default();
        u.set(Generation {
            config,
            ledger: ledger.clone(),
        });
        (u, ledger)
    }

    fn json(r: &Reply) -> Value {
        serde_json::from_str(&r.body).unwrap()
    }

    #[test]
    fn lists_groups_and_servers() {
        let (u, _) = upstreams();
        let r = answer("GET", "/upstreams", &u).unwrap();
        assert_eq!(r.status, "200 OK");
        let v = json(&r);
        let g = &v["upstreams"][0];
        assert_eq!(g["name"], "default");
        assert_eq!(g["queue"], 0);
        assert_eq!(g["servers"][1]["address"], "127.0.0.1:9002");
        assert_eq!(g["servers"][1]["state"], "up");
        assert_eq!(g["servers"][1]["health"], "up");
        assert_eq!(g["servers"][1]["idle"], 0);
    }

    #[test]
    fn changes_a_state_and_answers_it() {
        let (u, ledger) = upstreams();
        for (action, want) in [
            ("drain", ServerState::Drain),
            ("down", ServerState::Down),
            ("up", ServerState::Up),
        ] {
            let r = answer(
                "POST",
                &format!("/upstreams/default/servers/1/{action}"),
                &u,
            )
            .unwrap();
            assert_eq!(r.status, "200 OK");
            assert_eq!(json(&r)["state"], action);
            assert_eq!(ledger.state(0, 1), Some(want));
        }
    }

    #[test]
    fn group_names_are_percent_decoded() {
        let (u, ledger) = upstreams();
        let mut generation = u.get().unwrap();
        generation.config.upstreams[0].name = "my app/é".into();
        u.set(generation);
        let r = answer("POST", "/upstreams/my%20app%2F%C3%A9/servers/1/drain", &u).unwrap();
        assert_eq!(r.status, "200 OK", "{}", r.body);
        assert_eq!(ledger.state(0, 1), Some(ServerState::Drain));
        for bad in ["my%2", "my%zzapp", "%FF"] {
            let r = answer("POST", &format!("/upstreams/{bad}/servers/1/up"), &u).unwrap();
            assert_eq!(r.status, "404 Not Found", "{bad}");
        }
    }

    #[test]
    fn errors() {
        let (u, _) = upstreams();
        let cases = [
            (
                "POST",
                "/upstreams",
                "405 Method Not Allowed",
                Some("GET, HEAD"),
            ),
            (
                "GET",
                "/upstreams/default/servers/0/drain",
                "405 Method Not Allowed",
                Some("POST"),
            ),
            (
                "POST",
                "/upstreams/nope/servers/0/drain",
                "404 Not Found",
                None,
            ),
            (
                "POST",
                "/upstreams/default/servers/2/drain",
                "404 Not Found",
                None,
            ),
            (
                "POST",
                "/upstreams/default/servers/x/drain",
                "404 Not Found",
                None,
            ),
            (
                "POST",
                "/upstreams/default/servers/0/explode",
                "404 Not Found",
                None,
            ),
            ("GET", "/upstreams/default", "404 Not Found", None),
        ];
        for (method, path, status, allow) in cases {
            let r = answer(method, path, &u).unwrap();
            assert_eq!((r.status, r.allow), (status, allow), "{method} {path}");
            assert!(json(&r)["error"].is_string());
        }
        assert!(answer("GET", "/upstreamsX", &u).is_none());
        assert!(answer("GET", "/metrics", &u).is_none());
    }
}
