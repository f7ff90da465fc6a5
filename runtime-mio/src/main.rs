//! `upkeep`: the reverse proxy binary (see `upkeep --help`).

mod cli;

use std::process::ExitCode;

use cli::args::{self, Command, Source};
use cli::config_file::{self, Loaded};
use cli::exit;

fn main() -> ExitCode {
    if let Err(e) = cli::logger::init() {
        eprintln!("upkeep: {e}");
        return ExitCode::from(2);
    }
    let command = match args::parse(std::env::args_os().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("upkeep: {e}");
            return exit::code(exit::USAGE);
        }
    };
    match command {
        Command::Help(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("upkeep {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Check {
            source,
            print,
            resolve,
        } => match config_file::from_source(&source).and_then(|loaded| {
            if resolve {
                let file = match &source {
                    Source::File(file) => Some(file.as_path()),
                    Source::Flags(_) => None,
                };
                config_file::resolve(loaded.config.clone(), file)?;
            }
            Ok(loaded)
        }) {
            Ok(Loaded { config, warnings }) => {
                for w in &warnings {
                    eprintln!("{w}");
                }
                if print {
                    print!("{}", config.to_toml());
                } else {
                    println!("configuration ok");
                }
                exit::code(exit::OK)
            }
            Err(e) => {
                eprintln!("{e}");
                exit::code(exit::CONFIG)
            }
        },
        Command::Run(source) => {
            let Loaded { config, warnings } = match config_file::from_source(&source) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("{e}");
                    return exit::code(exit::CONFIG);
                }
            };
            for w in &warnings {
                log::warn!("{w}");
            }
            let file = match &source {
                Source::File(file) => Some(file.as_path()),
                Source::Flags(_) => None,
            };
            match cli::run::run(config, file) {
                Ok(()) => exit::code(exit::OK),
                Err(e) => {
                    eprintln!("upkeep: {e}");
                    exit::code(exit::CONFIG)
                }
            }
        }
        Command::Demo { tls } => match cli::demo::demo(tls) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("upkeep demo: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
