//! The `keygate serve` process: its tokio runtime, and the signals it answers (SIGHUP
//! reloads the policy and certificates; SIGTERM or Ctrl-C drains and stops).
//!
//! [`serve`] is a plain function, not `async`: an async function's body is compiled again
//! in each crate that polls it, so the binary calling an `async fn serve` compiled the
//! whole server (every listener's tonic, hyper and axum stack) a second time, alone at the
//! end of a cold build. Called through this function, it is compiled once, here.

use crate::clock::SystemClock;
use crate::config::ServeArgs;
use crate::startup::{Application, Handles};
use std::sync::Arc;

/// Runs the server until SIGTERM or Ctrl-C, on a multi-threaded runtime of its own.
pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(serve_async(args))
}

async fn serve_async(args: ServeArgs) -> anyhow::Result<()> {
    let settings = args.into_settings()?;
    let _telemetry = crate::telemetry::init(settings.log_format);
    let app = Application::build(settings, Arc::new(SystemClock)).await?;
    reload_on_sighup(app.handles());
    app.run_until(shutdown_signal()).await
}

/// SIGHUP re-reads the policy file and the TLS certificates; a bad file is logged and the
/// last good policy (or certificate) stays.
fn reload_on_sighup(handles: Handles) {
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
