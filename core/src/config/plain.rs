//! Operator-facing wording for configuration errors (feature `toml`): serde speaks Rust
//! (`expected usize`, `expected a sequence`, a list of every field when one key is misspelt);
//! an operator wants "expected a whole number", "expected a list" and "did you mean
//! `keepalive`?". [`plain_message`] rewrites one error message; [`suggest`] is the "did you mean"
//! rule, shared with the command line's unknown flags.

/// The candidate closest to `word`, if it is close enough to be what was meant: a Jaro-Winkler
/// similarity of at least 0.8 (catches swapped, missing and doubled letters and `-` for `_`).
///
/// ```
/// use upkeep_core::config::suggest;
///
/// assert_eq!(suggest("keepalvie", ["name", "keepalive", "keepalive_time"]), Some("keepalive"));
/// assert_eq!(suggest("bogus", ["name", "servers"]), None);
/// ```
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word = word.to_ascii_lowercase().replace('-', "_");
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(&word, &c.replace('-', "_")), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// The keys that sit at the top of the file, outside any table.
const TOP_LEVEL_KEYS: [&str; 7] = [
    "workers",
    "admin",
    "access_log",
    "access_log_format",
    "shutdown_timeout",
    "shutdown_delay",
    "io",
];

/// What serde's `expected ...` (a Rust type or serde's data-model name) means to an operator.
const EXPECTED: [(&str, &str); 16] = [
    ("usize", "a whole number (0 or more)"),
    ("u64", "a whole number (0 or more)"),
    ("u32", "a whole number from 0 to 4294967295"),
    ("u16", "a whole number from 0 to 65535"),
    ("u8", "a whole number from 0 to 255"),
    ("isize", "a whole number"),
    ("i64", "a whole number"),
    ("i32", "a whole number"),
    ("a sequence", "a list, such as [\"a\", \"b\"]"),
    ("a boolean", "true or false"),
    ("a string", "a quoted string"),
    ("a map", "a table"),
    ("struct", "a table"),
    ("a borrowed string", "a quoted string"),
    ("f64", "a number"),
    ("a character", "a one-character string"),
];

/// serde's `unexpected` kinds, rephrased (`string "two"` → `the string "two"`).
const FOUND: [(&str, &str); 6] = [
    ("string ", "the string "),
    ("integer ", "the number "),
    ("floating point ", "the number "),
    ("boolean ", ""),
    ("sequence", "a list"),
    ("map", "a table"),
];

/// One error message in plain language; messages this does not recognise pass through as-is.
///
/// - `unknown field `x`, expected one of ...` → `unknown field `x`, did you mean `y`?` (the list
///   stays when nothing is close); the same for `unknown variant`.
/// - `invalid type: string "two", expected usize` → `expected a whole number (0 or more), found the
///   string "two"`; `invalid value: integer `-1`, expected u32` likewise.
pub fn plain_message(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((key, _)) = rest.split_once('`')
        && TOP_LEVEL_KEYS.contains(&key)
    {
        // The classic TOML trap: a top-level key written after a [table] header belongs to that
        // table.
        return format!(
            "unknown field `{key}` in this table: `{key}` is a top-level key, so it must come \
             before the first [table] or [[array]] header"
        );
    }
    for what in ["unknown field", "unknown variant"] {
        if let Some(rest) = message.strip_prefix(what) {
            return did_you_mean(what, rest).unwrap_or_else(|| message.to_owned());
        }
    }
    for what in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(what)
            && let Some((found, expected)) = rest.rsplit_once(", expected ")
        {
            return format!(
                "expected {}, found {}",
                expected_words(expected),
                found_words(found)
            );
        }
    }
    message.to_owned()
}

/// `rest` is `` `x`, expected one of `a`, `b` `` or `` `x`, expected `a` or `b` ``.
fn did_you_mean(what: &str, rest: &str) -> Option<String> {
    let (word, expected) = rest.trim_start().rsplit_once(", expected ")?;
    let word = word.trim_matches('`');
    let candidates: Vec<&str> = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|c| !c.is_empty())
        .collect();
    let best = suggest(word, candidates.iter().copied())?;
    Some(format!("{what} `{word}`, did you mean `{best}`?"))
}

fn expected_words(expected: &str) -> String {
    let expected = expected.trim();
    EXPECTED
        .iter()
        .find(|(rust, _)| expected == *rust || expected.starts_with(&format!("{rust} ")))
        .map_or_else(|| expected.to_owned(), |(_, plain)| (*plain).to_owned())
}

fn found_words(found: &str) -> String {
    let found = found.trim();
    let phrased = FOUND
        .iter()
        .find_map(|(kind, plain)| found.strip_prefix(kind).map(|v| format!("{plain}{v}")));
    phrased.unwrap_or_else(|| found.to_owned()).replace('`', "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let keys = [
            "name",
            "servers",
            "keepalive",
            "keepalive_timeout",
            "keepalive_time",
        ];
        for (typo, want) in [
            ("keepalvie", Some("keepalive")),
            ("keepalive_timout", Some("keepalive_timeout")),
            ("keepalive-time", Some("keepalive_time")),
            ("sever", Some("servers")),
            ("NAME", Some("name")),
            ("bogus", None),
            ("x", None),
        ] {
            assert_eq!(suggest(typo, keys), want, "{typo}");
        }
    }

    /// The list of top-level keys matches the file format: every key `to_toml` writes before
    /// the first table, and nothing else.
    #[test]
    fn top_level_keys_match_the_format() {
        let a = |s: &str| crate::config::Address::parse(s).unwrap();
        let mut c = crate::config::Config::simple(a("127.0.0.1:1"), vec![a("127.0.0.1:2")]);
        c.runtime.admin = Some(a("127.0.0.1:3"));
        let text = c.to_toml();
        let head = &text[..text.find("\n[").unwrap()];
        let mut keys: Vec<&str> = head
            .lines()
            .filter_map(|l| l.split_once(" = ").map(|(k, _)| k))
            .collect();
        keys.sort_unstable();
        let mut want = TOP_LEVEL_KEYS;
        want.sort_unstable();
        assert_eq!(keys, want);
    }

    #[test]
    fn messages_in_plain_language() {
        for (serde, plain) in [
            (
                "unknown field `keepalvie`, expected one of `name`, `servers`, `keepalive`",
                "unknown field `keepalvie`, did you mean `keepalive`?",
            ),
            (
                "unknown field `bogus`, expected one of `name`, `servers`",
                "unknown field `bogus`, expected one of `name`, `servers`",
            ),
            (
                "unknown variant `least_con`, expected one of `round_robin`, `least_conn`, `ip_hash`",
                "unknown variant `least_con`, did you mean `least_conn`?",
            ),
            (
                "unknown variant `clinet`, expected `server` or `client`",
                "unknown variant `clinet`, did you mean `client`?",
            ),
            (
                "invalid type: string \"two\", expected usize",
                "expected a whole number (0 or more), found the string \"two\"",
            ),
            (
                "invalid value: integer `-1`, expected usize",
                "expected a whole number (0 or more), found the number -1",
            ),
            (
                "invalid type: string \"x\", expected a sequence",
                "expected a list, such as [\"a\", \"b\"], found the string \"x\"",
            ),
            (
                "invalid type: integer `1`, expected a boolean",
                "expected true or false, found the number 1",
            ),
            (
                "invalid type: integer `3`, expected struct RawLimits",
                "expected a table, found the number 3",
            ),
            (
                "invalid type: integer `9901`, expected an address string: \"HOST:PORT\"",
                "expected an address string: \"HOST:PORT\", found the number 9901",
            ),
            // The value comes first and is the operator's: its text may contain ", expected ".
            (
                "invalid type: string \"a, expected b\", expected usize",
                "expected a whole number (0 or more), found the string \"a, expected b\"",
            ),
            (
                "unknown field `x, expected y`, expected one of `name`, `servers`",
                "unknown field `x, expected y`, expected one of `name`, `servers`",
            ),
            ("missing field `name`", "missing field `name`"),
            (
                "unknown field `workers`, expected one of `name`, `servers`",
                "unknown field `workers` in this table: `workers` is a top-level key, so it must \
                 come before the first [table] or [[array]] header",
            ),
            (
                "invalid value: integer `99999999999`, expected u32",
                "expected a whole number from 0 to 4294967295, found the number 99999999999",
            ),
        ] {
            assert_eq!(plain_message(serde), plain, "{serde}");
        }
    }
}
