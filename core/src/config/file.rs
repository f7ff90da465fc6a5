//! Loading a configuration file (feature `toml`): TOML text → a validated [`Config`], or one
//! error with the line and column it points at — both for syntax and type errors (toml's own
//! spans) and for [`Config::validate`]'s semantic errors, whose path-like location
//! (`upstream "app": server 2`, `route 3`, `limits.max_head`) is mapped back onto the item in the
//! file. Both runtimes load files through here, so `upkeep check` and a reload report the same
//! position for the same mistake.

use core::fmt;
use core::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{Config, ConfigError};

/// A configuration file that could not be used: where (1-based line and column, in characters)
/// and why. Its [`Display`](fmt::Display) is `LINE:COL: message`; prefix the file name for the
/// usual `FILE:LINE:COL: message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What is wrong (one line).
    pub message: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

impl std::error::Error for FileError {}

impl Config {
    /// Parses and validates a TOML configuration (the schema is in the [module docs](super)).
    ///
    /// ```
    /// use upkeep_core::Config;
    ///
    /// let text = "listen = [\"127.0.0.1:8080\"]\n\n[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:0\"]\n";
    /// let err = Config::from_toml(text).unwrap_err();
    /// assert_eq!(err.to_string(), "5:12: upstream \"app\": server 1: port 0 in 127.0.0.1:0 cannot be connected to");
    /// ```
    pub fn from_toml(text: &str) -> Result<Config, FileError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start);
            at_offset(text, at, e.message().trim().replace('\n', " "))
        })?;
        config.validate().map_err(|e| e.in_file(text))?;
        Ok(config)
    }
}

impl ConfigError {
    /// This error placed on the item it names in the file `text` the configuration came from:
    /// for errors found after loading, such as a host name that does not resolve.
    pub fn in_file(&self, text: &str) -> FileError {
        let at = DeTable::parse(text)
            .ok()
            .and_then(|doc| locate(doc.get_ref(), self))
            .map_or(0, |span| span.start);
        at_offset(text, at, self.to_string())
    }
}

fn at_offset(text: &str, offset: usize, message: String) -> FileError {
    let before = &text[..offset.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    FileError {
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
        message,
    }
}

/// The span of the item a validation error names, as deep as the file lets us follow it.
fn locate(doc: &DeTable<'_>, e: &ConfigError) -> Option<Range<usize>> {
    let loc = e.location.as_str();
    // The first word of the message often names the offending key ("weight must be > 0").
    let field = e.message.split([' ', ':']).next().unwrap_or("");
    let (head, rest) = loc.split_once(' ').unwrap_or((loc, ""));
    let (table, key) = head.split_once('.').unwrap_or((head, ""));
    let top = doc.get(table)?;
    if !key.is_empty() {
        // `limits.max_head`, `headers.via`.
        return in_item(top, key);
    }
    if rest.is_empty() {
        // `workers`, `listen`, or a table whose message names the key (`client_timeouts`).
        return in_item(top, field);
    }
    if let Some(name) = rest.strip_prefix('"') {
        // `upstream "app"` or `upstream "app": server 2`.
        let (name, server) = match name.split_once("\": server ") {
            Some((n, s)) => (n, Some(s)),
            None => (name.strip_suffix('"').unwrap_or(name), None),
        };
        let DeValue::Array(groups) = top.get_ref() else {
            return Some(top.span());
        };
        let named = |g: &&Spanned<DeValue<'_>>| match g.get_ref() {
            DeValue::Table(t) => t
                .get("name")
                .is_some_and(|n| matches!(n.get_ref(), DeValue::String(s) if s == name)),
            _ => false,
        };
        // A duplicate name is reported at its second definition.
        let skip = usize::from(e.message.contains("defined more than once"));
        let group = groups.iter().filter(named).nth(skip)?;
        return match server {
            Some(n) => {
                let DeValue::Table(t) = group.get_ref() else {
                    return Some(group.span());
                };
                let servers = t.get("servers")?;
                nth(servers, n).map_or(Some(servers.span()), |s| in_item(s, field))
            }
            None => in_item(group, field),
        };
    }
    // `listen 2`, `route 3`, `upstream 1`.
    nth(top, rest).map_or(Some(top.span()), |item| in_item(item, field))
}

/// The span of `field` inside `item` if it is a table with that key, else of `item`.
fn in_item(item: &Spanned<DeValue<'_>>, field: &str) -> Option<Range<usize>> {
    match item.get_ref() {
        DeValue::Table(t) => t.get(field).map(Spanned::span).or(Some(item.span())),
        _ => Some(item.span()),
    }
}

/// Element `n` (1-based, as in validation messages) of an array.
fn nth<'a, 'i>(v: &'a Spanned<DeValue<'i>>, n: &str) -> Option<&'a Spanned<DeValue<'i>>> {
    let i = n.parse::<usize>().ok()?.checked_sub(1)?;
    match v.get_ref() {
        DeValue::Array(a) => a.get(i),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"workers = 2

[[listen]]
addr = "127.0.0.1:8080"

[[upstream]]
name = "app"
servers = ["127.0.0.1:9001", { addr = "127.0.0.1:9002", weight = 2 }]

[[upstream]]
name = "static"
servers = ["127.0.0.1:9100"]

[[route]]
path_prefix = "/static"
upstream = "static"

[limits]
max_head = "16k"
"#;

    /// `(line, column)` of the error after replacing `from` with `to` in the good file.
    fn error_at(from: &str, to: &str) -> (usize, usize, String) {
        assert!(GOOD.contains(from), "{from}");
        let e = Config::from_toml(&GOOD.replacen(from, to, 1)).unwrap_err();
        (e.line, e.column, e.message)
    }

    #[test]
    fn a_good_file_loads() {
        let c = Config::from_toml(GOOD).unwrap();
        assert_eq!(c.upstreams.len(), 2);
        assert_eq!(c.runtime.workers, 2);
    }

    #[test]
    fn syntax_and_type_errors_point_at_the_token() {
        let (line, col, msg) = error_at("workers = 2", "workers = \"two\"");
        assert_eq!((line, col), (1, 11), "{msg}");
        let (line, col, msg) = error_at("max_head = \"16k\"", "max_hed = \"16k\"");
        assert_eq!((line, col), (19, 1), "{msg}");
        assert!(msg.contains("unknown field `max_hed`"), "{msg}");
        assert!(!msg.contains('\n'));
        let (line, _, msg) = error_at("[limits]", "[limits");
        assert_eq!(line, 18, "{msg}");
    }

    #[test]
    fn validation_errors_point_at_the_item() {
        // A server's key (its value).
        let (line, col, msg) = error_at("weight = 2", "weight = 0");
        assert_eq!((line, col), (8, 66), "{msg}");
        assert_eq!(msg, "upstream \"app\": server 2: weight must be > 0");
        // A server as a whole.
        let (line, col, msg) = error_at("\"127.0.0.1:9001\"", "\"127.0.0.1:0\"");
        assert_eq!((line, col), (8, 12), "{msg}");
        // A route's key.
        let (line, col, msg) = error_at("upstream = \"static\"", "upstream = \"nope\"");
        assert_eq!((line, col), (16, 12), "{msg}");
        assert_eq!(msg, "route 1: upstream \"nope\" is not defined");
        // A duplicate group name: its second definition.
        let (line, col, msg) = error_at("name = \"static\"", "name = \"app\"");
        assert_eq!((line, col), (11, 8), "{msg}");
        // A dotted location.
        let (line, col, msg) = error_at("max_head = \"16k\"", "max_head = 16");
        assert_eq!((line, col), (19, 12), "{msg}");
        // A top-level key.
        let (line, col, msg) = error_at("workers = 2", "workers = 2000");
        assert_eq!((line, col), (1, 11), "{msg}");
    }

    #[test]
    fn columns_count_characters() {
        let e = at_offset("é = 1\nab", 8, "m".into());
        assert_eq!((e.line, e.column), (2, 2));
    }
}
