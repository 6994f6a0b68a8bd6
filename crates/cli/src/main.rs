//! `oxmesh`: one binary for every part of the mesh. This crate parses arguments and
//! wires the library crates together; it holds no mesh logic of its own.

mod ca;
mod validate;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "oxmesh",
    version,
    about = "A service mesh that speaks Istio's API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check Istio and Kubernetes objects as Istio's validating webhook would.
    Validate(validate::Args),
    /// The mesh certificate authority: print roots, sign CSRs offline, inspect certificates.
    Ca {
        #[command(subcommand)]
        command: ca::Command,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate(args) => validate::run(args),
        Command::Ca { command } => ca::run(command),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
