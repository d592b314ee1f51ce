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

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let result: Result<(), error::CliError> = match args.command {
        cli::Command::Crypt(args) => crypt::run(args),
        cli::Command::Keys(a) => keys::run(a),
        cli::Command::Demo(a) => demo::run(a),
        cli::Command::Keygen(a) => keygen::run(a),
        cli::Command::Serve(a) => transfer::serve::run(a),
        cli::Command::Cp(a) => transfer::cp::run(a),
        cli::Command::Man(a) => manual::man(a),
        cli::Command::Completions(a) => manual::completions(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.report(),
    }
}
