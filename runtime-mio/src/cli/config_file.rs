//! Loading a config file, with errors as `FILE:LINE:COL: message` (the line and column come
//! from [`Config::from_toml`], for syntax, schema and validation errors alike, and from
//! [`FileError::locate`] for the file-system checks and the warnings).

use std::path::Path;
use std::sync::Arc;

use upkeep_core::Config;
use upkeep_core::config::{ConfigError, FileError};
use upkeep_runtime::preflight;
use upkeep_runtime::resolve::{Names, SystemResolver};

use super::args::Source;

/// A configuration ready to run, and what looked odd about it.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) config: Config,
    /// `FILE:LINE:COL: warning: message` (`location: message` without a file), one per item.
    pub(crate) warnings: Vec<String>,
}

/// Reads, parses and validates `path`, and checks the paths it names on this machine — exactly
/// what `upkeep run` (and a reload) would reject.
pub(crate) fn load(path: &Path) -> Result<Loaded, String> {
    let text = read(path)?;
    let at = |e: &ConfigError| format!("{}:{}", path.display(), FileError::locate(&text, e));
    let config = Config::from_toml(&text).map_err(|e| format!("{}:{e}", path.display()))?;
    preflight::check_paths(&config).map_err(|e| at(&e))?;
    // The certificate, key and CA files it names: an unreadable file or a key that does not
    // match its certificate is `FILE: CERTFILE: message`.
    upkeep_runtime::tls::Contexts::load(&config, &Default::default())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let warnings = config
        .warnings()
        .iter()
        .map(|w| {
            let f = FileError::locate(&text, w);
            format!(
                "{}:{}:{}: warning: {}",
                path.display(),
                f.line,
                f.column,
                f.message
            )
        })
        .collect();
    Ok(Loaded { config, warnings })
}

/// [`load`] for a file, [`check_flags`] for quick-mode flags.
pub(crate) fn from_source(source: &Source) -> Result<Loaded, String> {
    match source {
        Source::File(file) => load(file),
        Source::Flags(config) => check_flags(Config::clone(config)),
    }
}

/// The same checks for a configuration built from flags (no file to point into).
fn check_flags(config: Config) -> Result<Loaded, String> {
    preflight::check_paths(&config).map_err(|e| format!("upkeep: {e}"))?;
    upkeep_runtime::tls::Contexts::load(&config, &Default::default())
        .map_err(|e| format!("upkeep: {e}"))?;
    let warnings = config.warnings().iter().map(ToString::to_string).collect();
    Ok(Loaded { config, warnings })
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))
}

/// Resolves the host names of `config` (loaded from `file`, if any) with the system resolver;
/// a name that does not resolve is an error pointing at its server in the file.
pub(crate) fn resolve(config: Config, file: Option<&Path>) -> Result<(Names, Config), String> {
    Names::resolve(config, Arc::new(SystemResolver)).map_err(|e| match file {
        Some(path) => match read(path) {
            Ok(text) => format!("{}:{}", path.display(), FileError::locate(&text, &e)),
            Err(_) => format!("{}: {e}", path.display()),
        },
        None => e.to_string(),
    })
}
