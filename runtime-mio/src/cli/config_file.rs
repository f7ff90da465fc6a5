//! Loading a config file, with errors as `FILE:LINE:COL: message`.
//!
//! TOML syntax and schema errors carry a byte span from the toml crate. Errors found later by
//! [`Config::validate`] carry a path-like location (`upstream "app": server 2`, `route 3`,
//! `limits.max_head`); we find that item in a spanned parse of the same text, best effort
//! (line 1, column 1 when it cannot be found).

use std::ops::Range;
use std::path::Path;

use toml::Spanned;
use toml::de::{DeTable, DeValue};
use upkeep_core::Config;
use upkeep_core::config::ConfigError;

/// Reads, parses and validates `path`.
pub(crate) fn load(path: &Path) -> Result<Config, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    parse(&text).map_err(|(span, msg)| {
        let (line, col) = span.map_or((1, 1), |s| line_col(&text, s.start));
        format!("{}:{line}:{col}: {msg}", path.display())
    })
}

/// Parses and validates `text`; an error comes with the byte range it refers to, if known.
fn parse(text: &str) -> Result<Config, (Option<Range<usize>>, String)> {
    let config: Config = toml::from_str(text).map_err(|e| (e.span(), e.message().to_string()))?;
    config
        .validate()
        .map_err(|e| (locate(text, &e), e.to_string()))?;
    Ok(config)
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[start..].chars().count() + 1)
}

/// The config key an error location segment names (`server 2` lives in `servers`).
fn key_of(word: &str) -> &str {
    match word {
        "server" => "servers",
        w => w,
    }
}

fn get<'a, 'i>(
    table: &'a DeTable<'i>,
    key: &str,
) -> Option<(&'a Spanned<DeValue<'i>>, Range<usize>)> {
    table
        .iter()
        .find(|(k, _)| k.get_ref() == key)
        .map(|(k, v)| (v, k.span()))
}

/// Best-effort span of a validation error's location.
fn locate(text: &str, e: &ConfigError) -> Option<Range<usize>> {
    let doc = DeTable::parse(text).ok()?;
    let mut table: &DeTable<'_> = doc.get_ref();
    let mut span: Option<Range<usize>> = None;
    for part in e.location.split(": ") {
        let (word, rest) = part.split_once(' ').unwrap_or((part, ""));
        if rest.is_empty() {
            // Dotted keys: `limits.max_head`, `workers`.
            for key in word.split('.') {
                let (v, kspan) = get(table, key)?;
                span = Some(kspan);
                match v.get_ref() {
                    DeValue::Table(t) => table = t,
                    _ => return span,
                }
            }
            continue;
        }
        let (v, kspan) = get(table, key_of(word))?;
        span = Some(kspan);
        let DeValue::Array(items) = v.get_ref() else {
            return span;
        };
        let item = if let Some(name) = rest.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
            items.iter().find(|it| match it.get_ref() {
                DeValue::Table(t) => get(t, "name")
                    .is_some_and(|(n, _)| matches!(n.get_ref(), DeValue::String(s) if s == name)),
                _ => false,
            })
        } else {
            let n: usize = rest.parse().ok()?;
            items.iter().nth(n.checked_sub(1)?)
        }?;
        span = Some(item.span());
        match item.get_ref() {
            DeValue::Table(t) => {
                // Point at the item's `name` key when it has one (an array-of-tables item's own
                // span may start at its header).
                if let Some((_, nspan)) = get(t, "name") {
                    span = Some(nspan);
                }
                table = t;
            }
            _ => return span,
        }
    }
    // The message often starts with the offending field: `keepalive_timeout must be > 0`.
    let first = e.message.split([' ', ':']).next().unwrap_or("");
    if let Some((_, kspan)) = get(table, first) {
        span = Some(kspan);
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> (usize, usize, String) {
        let (span, msg) = parse(text).unwrap_err();
        let (l, c) = span.map_or((1, 1), |s| line_col(text, s.start));
        (l, c, msg)
    }

    #[test]
    fn unknown_key_has_its_position() {
        let (l, c, msg) = at(
            "[[listen]]\naddr = \"127.0.0.1:1\"\n\n[[upstream]]\nname = \"a\"\nservers = [\"127.0.0.1:2\"]\n  keepalvie = 3\n",
        );
        assert_eq!((l, c), (7, 3), "{msg}");
        assert!(msg.contains("keepalvie"), "{msg}");
    }

    #[test]
    fn validation_errors_point_at_the_item() {
        let text = "[[listen]]\naddr = \"127.0.0.1:1\"\n\n[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:2\", { addr = \"127.0.0.1:0\" }]\n";
        let (l, c, msg) = at(text);
        assert_eq!((l, c), (6, 27), "{msg}");
        assert!(msg.starts_with("upstream \"app\": server 2"), "{msg}");

        let text = "[[listen]]\naddr = \"127.0.0.1:1\"\n[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:2\"]\n[[route]]\nupstream = \"app\"\n[[route]]\nupstream = \"nope\"\n";
        let (l, _, msg) = at(text);
        assert_eq!(l, 9, "{msg}");

        let text = "[[listen]]\naddr = \"127.0.0.1:1\"\n[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:2\"]\n[limits]\nmax_request_line = 100\nmax_head = 10\n";
        let (l, c, msg) = at(text);
        assert_eq!((l, c), (8, 1), "{msg}");
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncdé\nf", 7), (2, 4));
        assert_eq!(line_col("x", 0), (1, 1));
    }
}
