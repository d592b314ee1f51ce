//! The `ferry` command.
#![forbid(unsafe_code)]

mod cli;
mod crypt;
mod demo;
mod error;
mod exit;
mod keygen;
mod keys;
mod manual;
mod transfer;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

fn main() -> ExitCode {
    let matches = cli::Cli::command().get_matches();
    let mut args = match cli::Cli::from_arg_matches(&matches) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    if let (cli::Command::Cp(a), Some(("cp", m))) = (&mut args.command, matches.subcommand()) {
        // -E and -N apply in command-line order, across the two options.
        a.order_rules(m);
    }
    let result: Result<(), error::CliError> = match args.command {
        cli::Command::Crypt(args) => crypt::run(args),
        cli::Command::Keys(a) => keys::run(a),
        cli::Command::Demo(a) => demo::run(a),
        cli::Command::Keygen(a) => keygen::run(a),
        cli::Command::Serve(a) => transfer::serve::run(a),
        cli::Command::Cp(a) => transfer::cp::run(a),
        cli::Command::Doctor(a) => transfer::doctor::run(a),
        cli::Command::Man(a) => manual::man(a),
        cli::Command::Completions(a) => manual::completions(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.report(),
    }
}
