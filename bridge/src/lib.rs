//! AMR Bridge in one process.
//!
//! Without `AMR_NATS_URL` it runs embedded: the gateway and the session state machine in one
//! process, sessions in memory (the same engine and store semantics as with Redis), sensor
//! data in NDJSON files, lifecycle events in a session index. With `AMR_NATS_URL` (and
//! `AMR_REDIS_URL`) it runs the distributed gateway and session service together instead.
//!
//! It owns only wiring and the embedded implementations (file sink, session index, in-process
//! connections); it must never hold session logic of its own.

pub mod config;
pub mod embedded;
pub mod file_sink;
pub mod index;

use config::BridgeConfig;
use tokio::sync::watch;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs embedded until SIGTERM/SIGINT; then drains connections and flushes every file.
pub async fn run_embedded(config: BridgeConfig) -> Result<(), BoxError> {
    let gateway = config.gateway();
    let session = config.session();
    std::fs::create_dir_all(&config.data_dir)?;
    let data_dir = std::fs::canonicalize(&config.data_dir)?;
    let parts = embedded::assemble(&gateway, &session, &data_dir)?;
    let ws = gateway.ws_listen;
    let host = if ws.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        ws.ip().to_string()
    };
    println!(
        "AMR Bridge (embedded mode) on ws://{host}:{}{}\n  sensor data: {}/<deviceId>/<sessionId>.ndjson\n  session index: {}/{}\n  sessions API: http://{host}:{}/api/sessions",
        ws.port(),
        gateway.ws_path,
        data_dir.display(),
        data_dir.display(),
        index::INDEX_FILE,
        gateway.http_listen.port(),
    );
    amr_gateway::serve(gateway, parts.backend, amr_gateway::shutdown_signal()).await?;
    parts.sink.flush().await;
    let _ = parts.stop_sweeper.send(true);
    let _ = parts.sweeper.await;
    tracing::info!("stopped; every accepted message is on disk");
    Ok(())
}

/// Runs the distributed gateway and session service in one process until SIGTERM/SIGINT.
pub async fn run_distributed(config: BridgeConfig) -> Result<(), BoxError> {
    let gateway = config.gateway();
    let session = config.session();
    let metrics = amr_gateway::http::install_metrics()?;
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let service = tokio::spawn(amr_session_service::serve(session, metrics, async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    }));
    let (backend, nats) = amr_gateway::nats_backend(&gateway).await?;
    amr_gateway::serve(gateway, backend, amr_gateway::shutdown_signal()).await?;
    // Connections have reported their sessions; now the service part may stop.
    let _ = stop_tx.send(true);
    match service.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "session service part failed"),
        Err(e) => tracing::error!(error = %e, "session service part panicked"),
    }
    let _ = nats.flush().await;
    Ok(())
}
