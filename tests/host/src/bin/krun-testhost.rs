//! krun-testhost: the command-line entry point behind tests/host/run.sh.
//!
//! ```text
//! krun-testhost [--mem MIB] [--timeout SECS] [--verbose] [--file HOST:GUEST]... -- COMMAND [ARGS]
//! ```
//! Prints the command's output on stdout and exits with its status; test host failures
//! (timeout, crash) exit with 125 after printing the last console lines.

use std::process::ExitCode;
use std::time::Duration;

use krun_testhost::TestHost;

const USAGE: &str = "usage: run.sh [--mem MIB] [--timeout SECS] [--verbose] [--file HOST_PATH:TEST_HOST_PATH]... -- COMMAND [ARGS]";
/// Exit status for failures of the test host itself.
const HOST_FAILURE: u8 = 125;

fn parse(args: &[String]) -> Option<(TestHost, Vec<String>)> {
    let mut host = TestHost::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--mem" => host = host.mem_mib(iter.next()?.parse().ok()?),
            "--timeout" => host = host.timeout(Duration::from_secs(iter.next()?.parse().ok()?)),
            "--file" => {
                let (from, to) = iter.next()?.split_once(':')?;
                host = host.file(from, to);
            }
            "--verbose" => host = host.verbose(true),
            "--" => {
                let command: Vec<String> = iter.cloned().collect();
                return (!command.is_empty()).then_some((host, command));
            }
            _ => return None,
        }
    }
    None
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((host, command)) = parse(&args) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    match host.run(&command) {
        Ok(outcome) => {
            print!("{}", outcome.output);
            // Statuses are 0..=255 from the shell; anything else is a test host failure.
            ExitCode::from(u8::try_from(outcome.status).unwrap_or(HOST_FAILURE))
        }
        Err(err) => {
            let mut message = format!("krun-testhost: {err}");
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("{message}");
            ExitCode::from(HOST_FAILURE)
        }
    }
}
