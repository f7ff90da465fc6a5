//! Loading a config file, with errors as `FILE:LINE:COL: message` (the line and column come
//! from [`Config::from_toml`], for syntax, schema and validation errors alike).

use std::path::Path;
use std::sync::Arc;

use upkeep_core::Config;
use upkeep_runtime::resolve::{Names, SystemResolver};

/// Reads, parses and validates `path`.
pub(crate) fn load(path: &Path) -> Result<Config, String> {
    let text = read(path)?;
    Config::from_toml(&text).map_err(|e| format!("{}:{e}", path.display()))
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))
}

/// Resolves the host names of `config` (loaded from `file`, if any) with the system resolver;
/// a name that does not resolve is an error pointing at its server in the file.
pub(crate) fn resolve(config: Config, file: Option<&Path>) -> Result<(Names, Config), String> {
    Names::resolve(config, Arc::new(SystemResolver)).map_err(|e| match file {
        Some(path) => match read(path) {
            Ok(text) => format!("{}:{}", path.display(), e.in_file(&text)),
            Err(_) => format!("{}: {e}", path.display()),
        },
        None => e.to_string(),
    })
}
