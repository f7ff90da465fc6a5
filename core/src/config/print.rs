//! [`Config::to_toml`]: the effective configuration as a TOML file with every key spelt out,
//! defaults included (`upkeep check --print`, like `nginx -T`). The output reads back into an
//! equal [`Config`] (a test checks the round trip), so it doubles as a starting file.
//!
//! Written by hand rather than through serde: the file keeps the documented order (runtime keys,
//! listeners, groups, routes, then the tables), servers stay inline tables, and an unset optional
//! key becomes a comment saying what its absence means. Every struct is destructured without
//! `..`, so a new configuration field is a compile error here until it is printed.

use core::fmt::Write;

use super::{
    Balance, ClientTimeouts, Config, HeaderOptions, Limits, ListenerConfig, PoolKeyMode,
    RouteConfig, RuntimeOptions, ServerConfig, UpstreamConfig, UpstreamTls, format_duration,
};

/// A TOML string literal (quoted and escaped).
fn q(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn d(v: core::time::Duration) -> String {
    q(&format_duration(v))
}

fn balance(b: Balance) -> &'static str {
    match b {
        Balance::RoundRobin => "\"round_robin\"",
        Balance::LeastConn => "\"least_conn\"",
        Balance::IpHash => "\"ip_hash\"",
    }
}

fn pool_key(p: PoolKeyMode) -> &'static str {
    match p {
        PoolKeyMode::Server => "\"server\"",
        PoolKeyMode::Client => "\"client\"",
    }
}

impl Config {
    /// The configuration as TOML, every key written out (see the [module docs](super) for the
    /// schema). `Config::from_toml(&c.to_toml())` gives back `c` (durations at millisecond
    /// resolution).
    pub fn to_toml(&self) -> String {
        let Config {
            listeners,
            upstreams,
            routes,
            client_timeouts,
            limits,
            headers,
            runtime,
        } = self;
        let mut out = String::from(
            "# The effective configuration: every key with its value, defaults included.\n",
        );
        write_runtime(&mut out, runtime);
        listeners.iter().for_each(|l| write_listener(&mut out, l));
        upstreams.iter().for_each(|u| write_upstream(&mut out, u));
        routes.iter().for_each(|r| write_route(&mut out, r));
        write_tables(&mut out, client_timeouts, limits, headers);
        out
    }
}

// `write!` into a `String` cannot fail; the `let _ =` below say so once per line.

fn write_runtime(out: &mut String, r: &RuntimeOptions) {
    let RuntimeOptions {
        workers,
        admin,
        access_log,
        access_log_format,
        shutdown_timeout,
        shutdown_delay,
        io,
    } = r;
    let _ = writeln!(out, "workers = {workers}");
    match admin {
        Some(a) => {
            let _ = writeln!(out, "admin = {}", q(&a.to_string()));
        }
        None => out.push_str("# admin: off (no admin listener)\n"),
    }
    let log = access_log.as_deref().unwrap_or("off");
    let _ = writeln!(out, "access_log = {}", q(log));
    let _ = writeln!(out, "access_log_format = {}", q(access_log_format.as_str()));
    let _ = writeln!(out, "shutdown_timeout = {}", d(*shutdown_timeout));
    let _ = writeln!(out, "shutdown_delay = {}", d(*shutdown_delay));
    let _ = writeln!(out, "io = {}", q(io.as_str()));
}

fn write_listener(out: &mut String, l: &ListenerConfig) {
    let ListenerConfig {
        addr,
        upstream,
        tls,
    } = l;
    let _ = writeln!(out, "\n[[listen]]\naddr = {}", q(&addr.to_string()));
    match upstream {
        Some(u) => {
            let _ = writeln!(out, "upstream = {}", q(u));
        }
        None => out.push_str("# upstream: none (unrouted requests go by the routes)\n"),
    }
    match tls {
        Some(t) => {
            let certs: Vec<String> = t
                .certs
                .iter()
                .map(|c| {
                    let names: Vec<String> = c.names.iter().map(|n| q(n)).collect();
                    format!(
                        "{{ cert = {}, key = {}, names = [{}] }}",
                        q(&c.cert),
                        q(&c.key),
                        names.join(", ")
                    )
                })
                .collect();
            let _ = writeln!(out, "tls = {{ certs = [{}] }}", certs.join(", "));
        }
        None => out.push_str("# tls: off (plain HTTP)\n"),
    }
}

/// `[[upstream]] tls` as an inline table (unset optional fields left out).
fn write_upstream_tls(out: &mut String, tls: Option<&UpstreamTls>) {
    let Some(UpstreamTls {
        sni,
        ca,
        verify,
        cert,
        key,
    }) = tls
    else {
        out.push_str("# tls: off (plain HTTP to the servers)\n");
        return;
    };
    let mut fields = Vec::new();
    for (name, value) in [("sni", sni), ("ca", ca)] {
        if let Some(v) = value {
            fields.push(format!("{name} = {}", q(v)));
        }
    }
    fields.push(format!("verify = {verify}"));
    for (name, value) in [("cert", cert), ("key", key)] {
        if let Some(v) = value {
            fields.push(format!("{name} = {}", q(v)));
        }
    }
    let _ = writeln!(out, "tls = {{ {} }}", fields.join(", "));
}

fn write_server(out: &mut String, s: &ServerConfig) {
    let ServerConfig {
        addr: _,
        weight,
        max_fails,
        fail_timeout,
        backup,
        max_conns,
        host: _,
        state,
    } = s;
    // `target`: a host name is printed as written (`app.internal:8080`), not resolved.
    let _ = writeln!(
        out,
        "    {{ addr = {}, weight = {weight}, max_fails = {max_fails}, fail_timeout = {}, \
         backup = {backup}, max_conns = {max_conns}, state = {} }},",
        q(&s.target()),
        d(*fail_timeout),
        q(state.as_str())
    );
}

fn write_upstream(out: &mut String, u: &UpstreamConfig) {
    let UpstreamConfig {
        name,
        servers,
        balance: b,
        keepalive,
        keepalive_timeout,
        keepalive_requests,
        keepalive_time,
        pool_key: p,
        connect_timeout,
        read_timeout,
        send_timeout,
        next_upstream_tries,
        next_upstream_on_timeout,
        tls,
        min_idle,
        resolve_interval,
        tcp_keepalive,
        queue,
        queue_timeout,
        health_check,
    } = u;
    let _ = writeln!(out, "\n[[upstream]]\nname = {}\nservers = [", q(name));
    servers.iter().for_each(|s| write_server(out, s));
    let _ = writeln!(
        out,
        "]\nbalance = {}\nkeepalive = {keepalive}\nkeepalive_timeout = {}\n\
         keepalive_requests = {keepalive_requests}\nkeepalive_time = {}\npool_key = {}\n\
         connect_timeout = {}\nread_timeout = {}\nsend_timeout = {}\n\
         next_upstream_tries = {next_upstream_tries}\n\
         next_upstream_on_timeout = {next_upstream_on_timeout}\nmin_idle = {min_idle}\n\
         resolve_interval = {}{}\ntcp_keepalive = {}{}\nqueue = {queue}{}\n\
         queue_timeout = {}",
        balance(*b),
        d(*keepalive_timeout),
        d(*keepalive_time),
        pool_key(*p),
        d(*connect_timeout),
        d(*read_timeout),
        d(*send_timeout),
        d(*resolve_interval),
        if resolve_interval.is_zero() {
            "  # off: at start and on reload only"
        } else {
            ""
        },
        d(*tcp_keepalive),
        if tcp_keepalive.is_zero() {
            "  # off"
        } else {
            ""
        },
        if *queue == 0 {
            "  # off: 502 at once when every server is at max_conns"
        } else {
            ""
        },
        d(*queue_timeout),
    );
    write_upstream_tls(out, tls.as_ref());
    write_health_check(out, health_check.as_ref());
}

fn write_health_check(out: &mut String, h: Option<&crate::config::HealthCheck>) {
    let Some(h) = h else {
        out.push_str("# health_check: off (passive health only)\n");
        return;
    };
    let _ = writeln!(
        out,
        "health_check = {{ path = {}, interval = {}, timeout = {}, fall = {}, rise = {}, \
         expect = {} }}",
        q(&h.path),
        d(h.interval),
        d(h.timeout),
        h.fall,
        h.rise,
        q(&h.expect.to_string())
    );
}

fn write_route(out: &mut String, r: &RouteConfig) {
    let RouteConfig {
        host,
        path_prefix,
        upstream,
    } = r;
    out.push_str("\n[[route]]\n");
    match host {
        Some(h) => {
            let _ = writeln!(out, "host = {}", q(h));
        }
        None => out.push_str("# host: any\n"),
    }
    let _ = writeln!(
        out,
        "path_prefix = {}\nupstream = {}",
        q(path_prefix),
        q(upstream)
    );
}

fn write_tables(out: &mut String, t: &ClientTimeouts, l: &Limits, h: &HeaderOptions) {
    let ClientTimeouts {
        header,
        body,
        keepalive,
        send,
        lingering,
    } = t;
    let _ = writeln!(
        out,
        "\n[client_timeouts]\nheader = {}\nbody = {}\nkeepalive = {}\nsend = {}\nlingering = {}",
        d(*header),
        d(*body),
        d(*keepalive),
        d(*send),
        d(*lingering)
    );
    let Limits {
        max_request_line,
        max_head,
        max_body,
        client_keepalive_requests,
        max_client_connections,
        write_high_water,
        request_buffer,
        min_upload_rate,
        splice_min,
    } = l;
    let _ = writeln!(
        out,
        "\n[limits]\nmax_request_line = {max_request_line}\nmax_head = {max_head}\n\
         max_body = {max_body}{}\nclient_keepalive_requests = {client_keepalive_requests}\n\
         max_client_connections = {max_client_connections}\n\
         write_high_water = {write_high_water}\nrequest_buffer = {request_buffer}{}\n\
         min_upload_rate = {min_upload_rate}{}\nsplice_min = {splice_min}{}",
        if *max_body == 0 { "  # unlimited" } else { "" },
        if *request_buffer == 0 {
            "  # off: bodies stream at once"
        } else {
            ""
        },
        if *min_upload_rate == 0 {
            "  # off"
        } else {
            "  # bytes/s"
        },
        if *splice_min == 0 {
            "  # off: bodies are copied"
        } else {
            ""
        },
    );
    let HeaderOptions {
        x_forwarded_for,
        x_forwarded_proto,
        via,
    } = h;
    let via = via.as_deref().map_or_else(|| "false".to_owned(), q);
    let _ = writeln!(
        out,
        "\n[headers]\nx_forwarded_for = {x_forwarded_for}\n\
         x_forwarded_proto = {x_forwarded_proto}\nvia = {via}"
    );
}

#[cfg(test)]
mod tests {
    use core::time::Duration;

    use crate::config::{Address, Config, ListenerConfig, RouteConfig, ServerConfig};

    fn addr(s: &str) -> Address {
        Address::parse(s).unwrap()
    }

    #[test]
    fn defaults_are_spelt_out_and_read_back() {
        let c = Config::simple(addr("127.0.0.1:8080"), vec![addr("127.0.0.1:9001")]);
        let text = c.to_toml();
        for line in [
            "workers = 0\n",
            "access_log = \"off\"\n",
            "shutdown_timeout = \"30s\"\n",
            "keepalive = 1024\n",
            "keepalive_time = \"1h\"\n",
            "max_body = 0  # unlimited\n",
            "via = \"upkeep\"\n",
            "weight = 1, max_fails = 1, fail_timeout = \"10s\"",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
        assert_eq!(Config::from_toml(&text).unwrap(), c, "{text}");
    }

    #[test]
    fn every_field_round_trips() {
        let mut c = Config::simple(addr("[::1]:8080"), vec![addr("unix:/run/a \"b\".sock")]);
        c.listeners.push(ListenerConfig {
            addr: addr("unix:/run/u.sock"),
            upstream: Some("default".into()),
            tls: Some(crate::config::ListenerTls {
                certs: vec![
                    crate::config::CertKey {
                        cert: "/etc/a.pem".into(),
                        key: "/etc/a.key".into(),
                        names: vec!["a.example".into()],
                    },
                    crate::config::CertKey {
                        cert: "/etc/b.pem".into(),
                        key: "/etc/b.key".into(),
                        names: Vec::new(),
                    },
                ],
            }),
        });
        let mut s = ServerConfig::new(addr("127.0.0.1:9002"));
        (s.weight, s.max_fails, s.backup, s.max_conns) = (3, 0, true, 7);
        s.fail_timeout = Duration::from_millis(1500);
        let g = &mut c.upstreams[0];
        g.servers.push(s);
        g.balance = crate::config::Balance::IpHash;
        g.pool_key = crate::config::PoolKeyMode::Client;
        (g.keepalive, g.keepalive_requests, g.next_upstream_tries) = (0, 5, 4);
        g.keepalive_timeout = Duration::from_secs(90);
        g.keepalive_time = Duration::from_secs(86_400);
        g.connect_timeout = Duration::from_millis(250);
        g.read_timeout = Duration::from_secs(300);
        g.send_timeout = Duration::from_secs(7);
        g.next_upstream_on_timeout = true;
        g.tls = Some(crate::config::UpstreamTls {
            sni: Some("app.internal".into()),
            ca: Some("/etc/ca.pem".into()),
            verify: false,
            cert: Some("/etc/client.pem".into()),
            key: Some("/etc/client.key".into()),
        });
        g.health_check = Some(crate::config::HealthCheck {
            path: "/health?full=1".into(),
            interval: Duration::from_secs(3),
            timeout: Duration::from_millis(1500),
            fall: 4,
            rise: 5,
            expect: crate::config::ExpectStatus::parse("200-204").unwrap(),
        });
        c.routes.push(RouteConfig {
            host: Some("example.com".into()),
            path_prefix: "/api".into(),
            upstream: "default".into(),
        });
        c.client_timeouts.header = Duration::from_secs(1);
        c.client_timeouts.lingering = Duration::from_secs(2);
        c.limits.max_body = 1 << 20;
        c.limits.write_high_water = 1 << 16;
        c.headers.via = None;
        c.headers.x_forwarded_proto = false;
        c.runtime.workers = 3;
        c.runtime.admin = Some(addr("127.0.0.1:9901"));
        c.runtime.access_log = Some("/var/log/upkeep.log".into());
        c.runtime.shutdown_delay = Duration::from_secs(5);
        c.runtime.access_log_format = crate::config::AccessLogFormat::Json;
        let text = c.to_toml();
        assert_eq!(Config::from_toml(&text).unwrap(), c, "{text}");
    }
}
