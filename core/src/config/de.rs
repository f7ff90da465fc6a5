//! `serde::Deserialize` for the configuration (feature `serde`). The TOML shape is documented
//! in the [module docs](super).
//!
//! Each public type deserialises through a private mirror struct with
//! `#[serde(deny_unknown_fields)]` and nginx's defaults for omitted fields, so the public types
//! stay plain data and the defaults have a single source (`ServerConfig::new`,
//! `UpstreamConfig::new`, the `Default` impls).

use core::fmt;
use core::marker::PhantomData;
use core::time::Duration;

use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use super::{
    AccessLogFormat, Address, Balance, ClientTimeouts, Config, HeaderOptions, Io, Limits,
    ListenerConfig, PoolKeyMode, RouteConfig, RuntimeOptions, ServerConfig, ServerState,
    UpstreamConfig, parse_duration, parse_size,
};

// ---- scalar helpers -------------------------------------------------------------------------

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration string with a unit, such as \"250ms\", \"10s\", \"5m\" or \"1h\"")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse_duration(v).map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        Err(E::custom(format!(
            "duration {v} has no unit: write a string such as \"{v}s\" or \"{v}ms\""
        )))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        if v < 0 {
            return Err(E::custom(format!("negative duration {v} is not allowed")));
        }
        self.visit_u64(v.unsigned_abs())
    }
}

pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DurationVisitor)
}

struct SizeVisitor;

impl Visitor<'_> for SizeVisitor {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a size in bytes, as an integer or a string such as \"16k\" or \"1m\"")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        parse_size(v).map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::custom(format!("negative size {v} is not allowed")))
    }
}

fn size_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    d.deserialize_any(SizeVisitor)
}

fn size_usize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = d.deserialize_any(SizeVisitor)?;
    usize::try_from(n).map_err(|_| de::Error::custom(format!("size {n} is too large")))
}

/// `via = "name"`, `via = false` (off) or `via = true` (the default pseudonym `upkeep`).
fn via<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a pseudonym string, or false to turn Via off")
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Option<String>, E> {
            Ok(v.then(|| HeaderOptions::default().via).flatten())
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<String>, E> {
            Ok(Some(v.to_owned()))
        }
    }
    d.deserialize_any(V)
}

/// `"127.0.0.1:8080"`, `"[::1]:8080"` or `"unix:/path"` (see [`Address::parse`]).
impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Address, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Address;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address string: \"HOST:PORT\", \"[IPV6]:PORT\" or \"unix:/path\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Address, E> {
                Address::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

// ---- mirrors ------------------------------------------------------------------------------

/// `fn name() -> Type { expr }` for serde's `default = "..."`.
macro_rules! defaults {
    ($($name:ident: $ty:ty = $e:expr;)*) => { $(fn $name() -> $ty { $e })* };
}

fn server_default() -> ServerConfig {
    ServerConfig::new(Address::Unix(String::new()))
}
fn upstream_default() -> UpstreamConfig {
    UpstreamConfig::new("", Vec::new())
}

defaults! {
    d_weight: u32 = server_default().weight;
    d_max_fails: u32 = server_default().max_fails;
    d_fail_timeout: Duration = server_default().fail_timeout;
    d_max_conns: u32 = server_default().max_conns;
    d_state: ServerState = server_default().state;
    d_queue: usize = upstream_default().queue;
    d_queue_timeout: Duration = upstream_default().queue_timeout;
    d_balance: Balance = upstream_default().balance;
    d_keepalive: usize = upstream_default().keepalive;
    d_keepalive_timeout: Duration = upstream_default().keepalive_timeout;
    d_keepalive_requests: u32 = upstream_default().keepalive_requests;
    d_keepalive_time: Duration = upstream_default().keepalive_time;
    d_pool_key: PoolKeyMode = upstream_default().pool_key;
    d_connect_timeout: Duration = upstream_default().connect_timeout;
    d_read_timeout: Duration = upstream_default().read_timeout;
    d_send_timeout: Duration = upstream_default().send_timeout;
    d_next_upstream_tries: u32 = upstream_default().next_upstream_tries;
    d_next_upstream_on_timeout: bool = upstream_default().next_upstream_on_timeout;
    d_tcp_keepalive: Duration = upstream_default().tcp_keepalive;
    d_min_idle: usize = upstream_default().min_idle;
    d_resolve_interval: Duration = upstream_default().resolve_interval;
    d_path_prefix: String = "/".to_owned();
}

/// A private serde mirror `$raw` of the public plain-data struct `$public`, field for field (the
/// names must match, both ways, so a field added to one is a compile error until added to the
/// other), with conversions in both directions.
macro_rules! mirror {
    (
        $(#[$cattr:meta])*
        struct $raw:ident for $public:ident {
            $($(#[$attr:meta])* $field:ident: $ty:ty,)*
        }
    ) => {
        #[derive(Deserialize)]
        $(#[$cattr])*
        struct $raw {
            $($(#[$attr])* $field: $ty,)*
        }

        impl From<$raw> for $public {
            fn from(r: $raw) -> $public {
                let $raw { $($field),* } = r;
                $public { $($field),* }
            }
        }

        impl From<$public> for $raw {
            fn from(p: $public) -> $raw {
                let $public { $($field),* } = p;
                $raw { $($field),* }
            }
        }
    };
}

/// `impl Deserialize for $public` through its mirror `$raw`.
macro_rules! deserialize_via {
    ($($(#[$doc:meta])* $raw:ident => $public:ident,)*) => {$(
        $(#[$doc])*
        impl<'de> Deserialize<'de> for $public {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<$public, D::Error> {
                $raw::deserialize(d).map(<$public>::from)
            }
        }
    )*};
}

/// `impl Default for $raw`: the public type's defaults (for mirrors with `#[serde(default)]`).
macro_rules! default_via {
    ($($raw:ident => $public:ident,)*) => {$(
        impl Default for $raw {
            fn default() -> Self {
                $public::default().into()
            }
        }
    )*};
}

/// A visitor for the types written as `"ADDR"` or as a table (`$raw`, whose `addr` is required).
struct AddrOrTable<R, T> {
    expecting: &'static str,
    parse: fn(&str) -> Result<T, String>,
    raw: PhantomData<R>,
}

impl<'de, R: Deserialize<'de> + Into<T>, T> Visitor<'de> for AddrOrTable<R, T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.parse)(v).map_err(E::custom)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        R::deserialize(MapAccessDeserializer::new(map)).map(Into::into)
    }
}

fn addr_or_table<'de, R: Deserialize<'de> + Into<T>, T, D: Deserializer<'de>>(
    d: D,
    expecting: &'static str,
    parse: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    d.deserialize_any(AddrOrTable::<R, T> {
        expecting,
        parse,
        raw: PhantomData,
    })
}

/// A server's `addr`: an address or `NAME:PORT` ([`ServerConfig::parse`]), as the server it
/// names with every other key at its default.
fn server_target<'de, D: Deserializer<'de>>(d: D) -> Result<ServerConfig, D::Error> {
    let s = String::deserialize(d)?;
    ServerConfig::parse(&s).map_err(de::Error::custom)
}

mirror! {
    #[serde(deny_unknown_fields)]
    struct RawListener for ListenerConfig {
        addr: Address,
        #[serde(default)]
        upstream: Option<String>,
        #[serde(default)]
        tls: Option<super::ListenerTls>,
    }
}

/// A listener: `"ADDR"` or `{ addr = "ADDR" }` (`[[listen]]` tables).
impl<'de> Deserialize<'de> for ListenerConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ListenerConfig, D::Error> {
        addr_or_table::<RawListener, _, _>(
            d,
            "a listener: an address string or a table with `addr`",
            |s| Address::parse(s).map(ListenerConfig::new),
        )
    }
}

/// Not a `mirror!`: `addr` may carry a host name, which lands in [`ServerConfig::host`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    #[serde(deserialize_with = "server_target")]
    addr: ServerConfig,
    #[serde(default = "d_weight")]
    weight: u32,
    #[serde(default = "d_max_fails")]
    max_fails: u32,
    #[serde(default = "d_fail_timeout", deserialize_with = "duration")]
    fail_timeout: Duration,
    #[serde(default)]
    backup: bool,
    #[serde(default = "d_max_conns")]
    max_conns: u32,
    #[serde(default = "d_state")]
    state: ServerState,
}

impl From<RawServer> for ServerConfig {
    fn from(r: RawServer) -> ServerConfig {
        let RawServer {
            addr,
            weight,
            max_fails,
            fail_timeout,
            backup,
            max_conns,
            state,
        } = r;
        // Every field named, so a field added to `ServerConfig` is a compile error here.
        ServerConfig {
            addr: addr.addr,
            host: addr.host,
            weight,
            max_fails,
            fail_timeout,
            backup,
            max_conns,
            state,
        }
    }
}

/// A server: `"ADDR"` (all defaults) or `{ addr = "ADDR", weight = 2, ... }`.
impl<'de> Deserialize<'de> for ServerConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ServerConfig, D::Error> {
        addr_or_table::<RawServer, _, _>(
            d,
            "a server: an address string or a table with `addr`",
            ServerConfig::parse,
        )
    }
}

mirror! {
    #[serde(deny_unknown_fields)]
    struct RawUpstream for UpstreamConfig {
        name: String,
        servers: Vec<ServerConfig>,
        #[serde(default = "d_balance")]
        balance: Balance,
        #[serde(default = "d_keepalive")]
        keepalive: usize,
        #[serde(default = "d_keepalive_timeout", deserialize_with = "duration")]
        keepalive_timeout: Duration,
        #[serde(default = "d_keepalive_requests")]
        keepalive_requests: u32,
        #[serde(default = "d_keepalive_time", deserialize_with = "duration")]
        keepalive_time: Duration,
        #[serde(default = "d_pool_key")]
        pool_key: PoolKeyMode,
        #[serde(default = "d_connect_timeout", deserialize_with = "duration")]
        connect_timeout: Duration,
        #[serde(default = "d_read_timeout", deserialize_with = "duration")]
        read_timeout: Duration,
        #[serde(default = "d_send_timeout", deserialize_with = "duration")]
        send_timeout: Duration,
        #[serde(default = "d_next_upstream_tries")]
        next_upstream_tries: u32,
        #[serde(default = "d_next_upstream_on_timeout")]
        next_upstream_on_timeout: bool,
        #[serde(default)]
        tls: Option<super::UpstreamTls>,
        #[serde(default = "d_min_idle")]
        min_idle: usize,
        #[serde(default = "d_resolve_interval", deserialize_with = "duration")]
        resolve_interval: Duration,
        #[serde(default = "d_tcp_keepalive", deserialize_with = "duration")]
        tcp_keepalive: Duration,
        #[serde(default = "d_queue")]
        queue: usize,
        #[serde(default = "d_queue_timeout", deserialize_with = "duration")]
        queue_timeout: Duration,
        #[serde(default)]
        health_check: Option<super::HealthCheck>,
    }
}

/// `upstream` must be an array of tables (`[[upstream]]`): group order is meaningful (the first
/// is the default when there are no routes) and TOML tables are unordered.
fn upstreams<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<UpstreamConfig>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<UpstreamConfig>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array of upstream tables ([[upstream]] with name = \"...\")")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(u) = seq.next_element()? {
                out.push(u);
            }
            Ok(out)
        }
        fn visit_map<A: MapAccess<'de>>(self, _map: A) -> Result<Self::Value, A::Error> {
            Err(de::Error::custom(
                "write upstream groups as [[upstream]] tables with name = \"...\", not \
                 [upstream.NAME]: their order matters (the first is the default group)",
            ))
        }
    }
    d.deserialize_any(V)
}

mirror! {
    #[serde(deny_unknown_fields)]
    struct RawRoute for RouteConfig {
        #[serde(default)]
        host: Option<String>,
        #[serde(default = "d_path_prefix")]
        path_prefix: String,
        upstream: String,
    }
}

mirror! {
    #[serde(deny_unknown_fields, default)]
    struct RawClientTimeouts for ClientTimeouts {
        #[serde(deserialize_with = "duration")]
        header: Duration,
        #[serde(deserialize_with = "duration")]
        body: Duration,
        #[serde(deserialize_with = "duration")]
        keepalive: Duration,
        #[serde(deserialize_with = "duration")]
        send: Duration,
        #[serde(deserialize_with = "duration")]
        lingering: Duration,
    }
}

mirror! {
    #[serde(deny_unknown_fields, default)]
    struct RawLimits for Limits {
        #[serde(deserialize_with = "size_usize")]
        max_request_line: usize,
        #[serde(deserialize_with = "size_usize")]
        max_head: usize,
        #[serde(deserialize_with = "size_u64")]
        max_body: u64,
        client_keepalive_requests: u32,
        max_client_connections: usize,
        #[serde(deserialize_with = "size_usize")]
        write_high_water: usize,
        #[serde(deserialize_with = "size_u64")]
        request_buffer: u64,
        #[serde(deserialize_with = "size_u64")]
        min_upload_rate: u64,
        #[serde(deserialize_with = "size_u64")]
        splice_min: u64,
    }
}

mirror! {
    #[serde(deny_unknown_fields, default)]
    struct RawHeaders for HeaderOptions {
        x_forwarded_for: bool,
        x_forwarded_proto: bool,
        #[serde(deserialize_with = "via")]
        via: Option<String>,
    }
}

default_via! {
    RawClientTimeouts => ClientTimeouts,
    RawLimits => Limits,
    RawHeaders => HeaderOptions,
}

/// `access_log = "off"` is the same as leaving it out.
fn access_log<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() {
        return Err(de::Error::custom(
            "access_log: write \"off\", \"-\" (stdout), \"stderr\" or a file path",
        ));
    }
    Ok((s != "off").then_some(s))
}

fn d_shutdown_timeout() -> Duration {
    RuntimeOptions::default().shutdown_timeout
}

fn d_shutdown_delay() -> Duration {
    RuntimeOptions::default().shutdown_delay
}

/// The whole file. Not a `mirror!`: the [`RuntimeOptions`] keys sit at the top level (nginx and
/// ecosystem convention: `workers = 4`, `admin = "..."`), not in a table of their own.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    workers: usize,
    #[serde(default)]
    admin: Option<Address>,
    #[serde(default, deserialize_with = "access_log")]
    access_log: Option<String>,
    #[serde(default)]
    access_log_format: AccessLogFormat,
    #[serde(default = "d_shutdown_timeout", deserialize_with = "duration")]
    shutdown_timeout: Duration,
    #[serde(default = "d_shutdown_delay", deserialize_with = "duration")]
    shutdown_delay: Duration,
    #[serde(default)]
    io: Io,
    #[serde(rename = "listen", default)]
    listeners: Vec<ListenerConfig>,
    #[serde(rename = "upstream", default, deserialize_with = "upstreams")]
    upstreams: Vec<UpstreamConfig>,
    #[serde(rename = "route", default)]
    routes: Vec<RouteConfig>,
    #[serde(default)]
    client_timeouts: ClientTimeouts,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    headers: HeaderOptions,
}

impl From<RawConfig> for Config {
    fn from(r: RawConfig) -> Config {
        // Destructured in full so a field added to one side is a compile error here.
        let RawConfig {
            workers,
            admin,
            access_log,
            access_log_format,
            shutdown_timeout,
            shutdown_delay,
            io,
            listeners,
            upstreams,
            routes,
            client_timeouts,
            limits,
            headers,
        } = r;
        Config {
            listeners,
            upstreams,
            routes,
            client_timeouts,
            limits,
            headers,
            runtime: RuntimeOptions {
                workers,
                admin,
                access_log,
                access_log_format,
                shutdown_timeout,
                shutdown_delay,
                io,
            },
        }
    }
}

deserialize_via! {
    RawUpstream => UpstreamConfig,
    RawRoute => RouteConfig,
    RawClientTimeouts => ClientTimeouts,
    RawLimits => Limits,
    RawHeaders => HeaderOptions,
    /// The whole file; see the [module docs](super) for the shape. Deserialising does not
    /// validate: call [`Config::validate`] next.
    RawConfig => Config,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// Line (1-based) of a byte offset.
    fn line_of(text: &str, offset: usize) -> usize {
        text[..offset].matches('\n').count() + 1
    }

    const MINIMAL: &str = "listen = [\"127.0.0.1:8080\"]\n\n[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:9001\"]\n";

    #[test]
    fn minimal_file_takes_every_default() {
        let c = parse(MINIMAL).unwrap();
        let a = |s: &str| Address::parse(s).unwrap();
        let mut want = Config::simple(a("127.0.0.1:8080"), vec![a("127.0.0.1:9001")]);
        want.upstreams[0].name = "app".into();
        assert_eq!(c, want);
        c.validate().unwrap();
        // An empty file parses (and then fails validation, with a clear message).
        let empty = parse("").unwrap();
        assert_eq!(
            empty.validate().unwrap_err().to_string(),
            "listen: at least one listener is required"
        );
    }

    #[test]
    fn typo_key_names_the_key_with_line_and_column() {
        let text = "[[listen]]\naddr = \"127.0.0.1:8080\"\n\n[[upstream]]\nkeepalvie = 16\nname = \"app\"\nservers = [\"127.0.0.1:9001\"]\n";
        let err = parse(text).unwrap_err();
        assert!(err.message().contains("unknown field `keepalvie`"), "{err}");
        assert!(
            err.message().contains("`keepalive`"),
            "lists the expected keys: {err}"
        );
        let span = err.span().expect("toml reports a span");
        assert_eq!(line_of(text, span.start), 5);
        assert_eq!(&text[span], "keepalvie");
        assert!(err.to_string().contains("line 5, column 1"), "{err}");
    }

    #[test]
    fn unknown_keys_are_rejected_everywhere() {
        for extra in [
            "bogus = 1\n",
            "[client_timeouts]\nheadr = \"1s\"\n",
            "[limits]\nmax_heads = 1\n",
            "[headers]\nxff = true\n",
            "[[route]]\nupstream = \"app\"\nprefix = \"/\"\n",
        ] {
            let text = format!("{MINIMAL}{extra}");
            let err = parse(&text).unwrap_err();
            assert!(err.message().contains("unknown field"), "{extra:?}: {err}");
        }
        for text in [
            format!("bogus = 1\n{MINIMAL}"),
            MINIMAL.replace(
                "listen = [\"127.0.0.1:8080\"]",
                "[[listen]]\naddr = \"127.0.0.1:1\"\nport = 1",
            ),
        ] {
            let err = parse(&text).unwrap_err();
            assert!(err.message().contains("unknown field"), "{text:?}: {err}");
        }
        let text = MINIMAL.replace(
            "\"127.0.0.1:9001\"",
            "{ addr = \"127.0.0.1:9001\", wieght = 2 }",
        );
        let err = parse(&text).unwrap_err();
        assert!(err.message().contains("unknown field `wieght`"), "{err}");
    }

    #[test]
    fn bad_values_point_at_the_value() {
        let cases = [
            (
                "keepalive_timeout = \"75 parsecs\"\n",
                "invalid duration \"75 parsecs\"",
            ),
            (
                "keepalive_timeout = \"75parsecs\"\n",
                "unknown unit \"parsecs\"",
            ),
            ("keepalive_timeout = 30\n", "duration 30 has no unit"),
            ("keepalive_timeout = -3\n", "negative duration"),
            ("balance = \"least_con\"\n", "unknown variant `least_con`"),
            ("pool_key = \"Server\"\n", "unknown variant `Server`"),
        ];
        for (line, want) in cases {
            let text = format!("{MINIMAL}{line}");
            let err = parse(&text).unwrap_err();
            assert!(err.message().contains(want), "{line:?}: {err}");
            let span = err.span().expect("span");
            assert_eq!(line_of(&text, span.start), 6, "{line:?}: {err}");
        }
        // Issue 16: a server may be a host name now (resolved by the runtime); a listener may not.
        let text = MINIMAL.replace("127.0.0.1:9001", "example.com:9001");
        let named = parse(&text).unwrap();
        assert_eq!(named.upstreams[0].servers[0].target(), "example.com:9001");
        let text = MINIMAL.replace("127.0.0.1:9001", "exa mple.com:9001");
        let err = parse(&text).unwrap_err();
        assert!(err.message().contains("nor a host name"), "{err}");
        assert_eq!(line_of(&text, err.span().unwrap().start), 5);
        let text = MINIMAL.replace("127.0.0.1:8080", "example.com:8080");
        let err = parse(&text).unwrap_err();
        assert!(err.message().contains("not an IP literal"), "{err}");
        assert_eq!(line_of(&text, err.span().unwrap().start), 1);
        let text = MINIMAL.replace(
            "\"127.0.0.1:9001\"",
            "{ addr = \"app.internal:9001\", weight = 3 }",
        );
        let s = &parse(&text).unwrap().upstreams[0].servers[0];
        assert_eq!((s.host.as_deref(), s.weight), (Some("app.internal"), 3));
        let text = format!("{MINIMAL}[limits]\nmax_body = \"1t\"\n");
        assert!(
            parse(&text)
                .unwrap_err()
                .message()
                .contains("unknown unit \"t\"")
        );
    }

    #[test]
    fn enums_and_via() {
        for (s, b) in [
            ("round_robin", Balance::RoundRobin),
            ("least_conn", Balance::LeastConn),
            ("ip_hash", Balance::IpHash),
        ] {
            let c = parse(&format!("{MINIMAL}balance = \"{s}\"\n")).unwrap();
            assert_eq!(c.upstreams[0].balance, b);
        }
        for (s, p) in [
            ("server", PoolKeyMode::Server),
            ("client", PoolKeyMode::Client),
        ] {
            let c = parse(&format!("{MINIMAL}pool_key = \"{s}\"\n")).unwrap();
            assert_eq!(c.upstreams[0].pool_key, p);
        }
        for (v, want) in [
            ("false", None),
            ("true", Some("upkeep")),
            ("\"edge-1\"", Some("edge-1")),
        ] {
            let c = parse(&format!("{MINIMAL}[headers]\nvia = {v}\n")).unwrap();
            assert_eq!(c.headers.via.as_deref(), want, "{v}");
        }
        assert!(parse(&format!("{MINIMAL}[headers]\nvia = 1\n")).is_err());
    }

    #[test]
    fn runtime_keys_at_top_level() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.runtime, RuntimeOptions::default());
        let text = format!(
            "workers = 3\nadmin = \"unix:/run/admin.sock\"\naccess_log = \"-\"\n\
             shutdown_timeout = \"5s\"\n{MINIMAL}"
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.runtime.workers, 3);
        assert_eq!(
            c.runtime.admin,
            Some(Address::Unix("/run/admin.sock".into()))
        );
        assert_eq!(c.runtime.access_log.as_deref(), Some("-"));
        assert_eq!(c.runtime.shutdown_timeout, Duration::from_secs(5));
        let c = parse(&format!("access_log = \"off\"\n{MINIMAL}")).unwrap();
        assert_eq!(c.runtime.access_log, None);
        for (bad, want) in [
            ("workers = -1", "invalid value"),
            ("shutdown_timeout = 5", "has no unit"),
            ("admin = 9901", "invalid type"),
            ("access_log = \"\"", "access_log: write"),
        ] {
            let err = parse(&format!("{bad}\n{MINIMAL}")).unwrap_err();
            assert!(err.message().contains(want), "{bad}: {err}");
            assert_eq!(
                line_of(&format!("{bad}\n{MINIMAL}"), err.span().unwrap().start),
                1
            );
        }
        // A listener may name its own group.
        let c = parse(&MINIMAL.replace(
            "listen = [\"127.0.0.1:8080\"]",
            "listen = [{ addr = \"127.0.0.1:8080\", upstream = \"app\" }]",
        ))
        .unwrap();
        assert_eq!(c.listeners[0].upstream.as_deref(), Some("app"));
        c.validate().unwrap();
    }

    #[test]
    fn listen_and_server_shapes() {
        let text = "[[listen]]\naddr = \"[::1]:80\"\n[[listen]]\naddr = \"unix:/run/u.sock\"\n\
                    [[upstream]]\nname = \"a\"\nservers = [\"unix:/run/a.sock\", { addr = \"localhost:1\", backup = true, max_fails = 0, max_conns = 8, fail_timeout = \"1s\" }]\n";
        let c = parse(text).unwrap();
        assert_eq!(c.listeners[0].addr.to_string(), "[::1]:80");
        assert_eq!(c.listeners[1].addr, Address::Unix("/run/u.sock".into()));
        let s = &c.upstreams[0].servers[1];
        assert_eq!(s.addr.to_string(), "127.0.0.1:1");
        assert!(s.backup);
        assert_eq!((s.weight, s.max_fails, s.max_conns), (1, 0, 8));
        assert_eq!(s.fail_timeout, Duration::from_secs(1));
        // A server table needs an address.
        let err = parse(&MINIMAL.replace("\"127.0.0.1:9001\"", "{ weight = 2 }")).unwrap_err();
        assert!(err.message().contains("missing field `addr`"), "{err}");
    }

    #[test]
    fn upstreams_keep_file_order_and_need_the_array_shape() {
        let text = format!(
            "{MINIMAL}[[upstream]]\nname = \"b\"\nservers = [\"127.0.0.1:2\"]\n\
             [[upstream]]\nname = \"a\"\nservers = [\"127.0.0.1:3\"]\n"
        );
        let c = parse(&text).unwrap();
        let names: Vec<&str> = c.upstreams.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["app", "b", "a"]);
        let err = parse("[upstream.app]\nservers = [\"127.0.0.1:9001\"]\n").unwrap_err();
        assert!(err.message().contains("[[upstream]]"), "{err}");
        let err = parse("[[upstream]]\nservers = [\"127.0.0.1:9001\"]\n").unwrap_err();
        assert!(err.message().contains("missing field `name`"), "{err}");
    }
}
