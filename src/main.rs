use clap::Parser;
use keygate::cli::{Cli, Command};
use keygate::clock::SystemClock;
use keygate::startup::Application;
use std::sync::Arc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args).await,
        other => keygate::cli::run(other).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(args: keygate::config::ServeArgs) -> anyhow::Result<()> {
    let settings = args.into_settings()?;
    let _telemetry = keygate::telemetry::init(settings.log_format);
    let app = Application::build(settings, Arc::new(SystemClock)).await?;
    reload_policy_on_sighup(app.handles());
    app.run_until(shutdown_signal()).await
}

/// SIGHUP re-reads the policy file; a bad file is logged and the last good policy stays.
fn reload_policy_on_sighup(handles: keygate::startup::Handles) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            return;
        };
        while hangups.recv().await.is_some() {
            // Success and failure are both logged by reload_policy.
            let _ = handles.reload_policy();
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
