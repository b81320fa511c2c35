//! One shutdown signal for every binary: the first SIGINT (Ctrl-C) or SIGTERM (what `docker stop` and
//! Kubernetes send).

/// Completes when the process is asked to stop. If the signal handlers cannot be installed the process
/// could never stop gracefully, so that is logged and the future completes at once.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(error) => {
                tracing::error!(%error, "cannot install the SIGTERM handler; stopping");
                return;
            }
        };
        tokio::select! {
            // Ctrl-C in a terminal.
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
            // Container runtimes and process supervisors.
            _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("Ctrl-C received, shutting down");
    }
}
