//! `krun-sev`: the command-line front end of libkrun-sev.

mod broker_check;
mod measure;
mod mkcw;
mod model_trust;
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
    /// Build an encrypted confidential-workload disk image (buildah mkcw layout).
    Mkcw(Box<mkcw::MkcwArgs>),
    /// Run a confidential workload through the C API, in the order crun's krun handler uses.
    Run(run::RunArgs),
    /// Print the launch measurement a key broker registers (docs/measurement.md).
    Measure(measure::MeasureArgs),
    /// Check that a key broker releases to genuine PSP-model evidence and refuses bad evidence.
    BrokerCheck(broker_check::BrokerCheckArgs),
    /// Write the PSP model's trust roots for a key broker (testing without SEV hardware).
    ModelTrust(model_trust::ModelTrustArgs),
}

/// Exit status when the workload never ran (podman's convention for runtime errors).
pub const EXIT_NOT_RUN: u8 = 125;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result =
        match cli.command {
            Command::Mkcw(args) => mkcw::mkcw(&args)
                .map(|_| ExitCode::SUCCESS)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error>),
            Command::Run(args) => {
                run::run(&args).map_err(|e| Box::new(e) as Box<dyn std::error::Error>)
            }
            Command::Measure(args) => {
                measure::measure(&args).map_err(|e| Box::new(e) as Box<dyn std::error::Error>)
            }
            Command::BrokerCheck(args) => broker_check::broker_check(&args)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error>),
            Command::ModelTrust(args) => model_trust::model_trust(&args)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error>),
        };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("krun-sev: {}", krun_sev::capi::error_chain(err.as_ref()));
            ExitCode::from(EXIT_NOT_RUN)
        }
    }
}
