//! `upkeep`: the reverse proxy binary (see `upkeep --help`).

mod cli;

use std::process::ExitCode;

use cli::args::{self, Command, Source};
use cli::config_file::{self, Loaded};
use cli::exit;

fn main() -> ExitCode {
    cli::logger::init();
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
        Command::Check { file, print } => match config_file::load(&file) {
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
            let (loaded, file) = match source {
                Source::File(file) => (config_file::load(&file), Some(file)),
                Source::Flags(config) => (config_file::check_flags(*config), None),
            };
            let Loaded { config, warnings } = match loaded {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("{e}");
                    return exit::code(exit::CONFIG);
                }
            };
            for w in &warnings {
                log::warn!("{w}");
            }
            match cli::run::run(config, file.as_deref()) {
                Ok(()) => exit::code(exit::OK),
                Err(e) => {
                    eprintln!("upkeep: {e}");
                    exit::code(exit::CONFIG)
                }
            }
        }
        Command::Demo => match cli::demo::demo() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("upkeep demo: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
