//! `upkeep`: the reverse proxy binary (see `upkeep --help`).

mod cli;

use std::process::ExitCode;

use cli::args::{self, Command};

fn main() -> ExitCode {
    cli::logger::init();
    let command = match args::parse(std::env::args_os().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("upkeep: {e}");
            return ExitCode::from(2);
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
        Command::Check { file, resolve } => match cli::config_file::load(&file).and_then(|c| {
            if resolve {
                cli::config_file::resolve(c, Some(&file))?;
            }
            Ok(())
        }) {
            Ok(_) => {
                println!("configuration ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config, file } => match cli::run::run(*config, file.as_deref()) {
            Ok(code) => ExitCode::from(code as u8),
            Err(e) => {
                eprintln!("upkeep: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Demo => match cli::demo::demo() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("upkeep demo: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
