use amr_bridge::config::BridgeConfig;
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let matches = BridgeConfig::command().get_matches();
    // Embedded unless a NATS URL was given (flag or AMR_NATS_URL).
    let embedded = matches.value_source("nats_url") == Some(ValueSource::DefaultValue);
    let config = match BridgeConfig::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let telemetry = amr_gateway::init_telemetry("amr-bridge", config.gateway.log_format);
    let result = if embedded {
        amr_bridge::run_embedded(config).await
    } else {
        amr_bridge::run_distributed(config).await
    };
    let code = match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "amr-bridge failed");
            eprintln!("amr-bridge: {e}");
            std::process::ExitCode::FAILURE
        }
    };
    telemetry.shutdown().await;
    code
}
