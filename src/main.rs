//! The `keygate` binary: `serve` and `policy` from the server library, every command
//! that talks to a running keygate from `keygate-client`.

use clap::{Parser, Subcommand};
use keygate::config::ServeArgs;
use keygate::policy::Policy;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "keygate", version, about = "Auth and policy service for API keys, over gRPC")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Parsed once per process: a variant's size costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    #[command(flatten)]
    Admin(keygate_client::cli::Command),
    /// Route policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate a policy file and list its routes.
    Check { file: PathBuf },
}

/// Not `async`: the server and the admin commands each run on a runtime their own crate
/// starts, so neither is compiled again here (`keygate::process`).
fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => keygate::process::serve(args),
        Command::Admin(command) => keygate_client::cli::run_blocking(command),
        Command::Policy(PolicyCommand::Check { file }) => check_policy(&file),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Loads a policy file as `serve` would, and lists its routes.
fn check_policy(file: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write;
    let policy = Policy::load(file)?;
    let mut out = std::io::stdout().lock();
    // A closed pipe (`keygate policy check … | head`) ends output quietly.
    let _ = writeln!(out, "{}: {} routes, valid", file.display(), policy.routes().len());
    for route in policy.routes() {
        let scopes: Vec<_> = route.scopes.iter().map(|s| s.as_str()).collect();
        let _ = writeln!(out, "  {:<60} {}", route.template, scopes.join(","));
    }
    Ok(())
}
