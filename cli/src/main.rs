//! `krun-sev`: the command-line front end of libkrun-sev.

mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Build, measure and run confidential workloads with libkrun-sev.
#[derive(Debug, Parser)]
#[command(name = "krun-sev", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a confidential workload through the C API, in the order crun's krun handler uses.
    Run(run::RunArgs),
}

/// Exit status when the workload never ran (podman's convention for runtime errors).
pub const EXIT_NOT_RUN: u8 = 125;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("krun-sev: {}", krun_sev::capi::error_chain(&err));
            ExitCode::from(EXIT_NOT_RUN)
        }
    }
}
