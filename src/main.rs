//! The `keygate` binary: `serve` and `policy` from the server library, every command
//! that talks to a running keygate from `keygate-client`.

use clap::{Parser, Subcommand};
use keygate::clock::SystemClock;
use keygate::config::ServeArgs;
use keygate::policy::Policy;
use keygate::startup::Application;
use std::path::PathBuf;
use std::sync::Arc;

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

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Admin(command) => keygate_client::cli::run(command).await,
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

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let settings = args.into_settings()?;
    let _telemetry = keygate::telemetry::init(settings.log_format);
    let app = Application::build(settings, Arc::new(SystemClock)).await?;
    reload_policy_on_sighup(app.handles());
    app.run_until(shutdown_signal()).await
}

/// SIGHUP re-reads the policy file and the TLS certificates; a bad file is logged and the
/// last good policy (or certificate) stays.
fn reload_policy_on_sighup(handles: keygate::startup::Handles) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            return;
        };
        while hangups.recv().await.is_some() {
            // Success and failure are both logged by reload_policy.
            // The built-in policy has nothing to reload: SIGHUP then rotates certificates only.
            if handles.policy_path.is_some() {
                let _ = handles.reload_policy();
            }
            let _ = handles.reload_tls();
        }
    });
    #[cfg(not(unix))]
    let _ = handles;
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
