//! Loading a config file, with errors as `FILE:LINE:COL: message` (the line and column come
//! from [`Config::from_toml`], for syntax, schema and validation errors alike).

use std::path::Path;

use upkeep_core::Config;

/// Reads, parses and validates `path`.
pub(crate) fn load(path: &Path) -> Result<Config, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    Config::from_toml(&text).map_err(|e| format!("{}:{e}", path.display()))
}
