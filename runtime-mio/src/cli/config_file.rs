//! Loading a config file, with errors as `FILE:LINE:COL: message` (the line and column come
//! from [`Config::from_toml`], for syntax, schema and validation errors alike).

use std::path::Path;

use upkeep_core::Config;

/// Reads, parses and validates `path`, and loads the certificate, key and CA files it names
/// (an unreadable file or a key that does not match its certificate is reported as
/// `FILE: CERTFILE: message`).
pub(crate) fn load(path: &Path) -> Result<Config, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let config = Config::from_toml(&text).map_err(|e| format!("{}:{e}", path.display()))?;
    upkeep_runtime::tls::Contexts::load(&config, &Default::default())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(config)
}
