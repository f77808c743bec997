//! One shutdown future for SIGTERM and SIGINT, as linkerd2-proxy does it.

/// Resolves on the first SIGTERM or SIGINT. If the handlers cannot be installed the
/// future never resolves, and the process still dies by the default signal action.
pub async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::warn!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = interrupt.recv() => tracing::info!("SIGINT received, shutting down"),
    }
}
