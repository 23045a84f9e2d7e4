use amr_gateway::config::Config;
use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    let telemetry = amr_gateway::init_telemetry("amr-gateway", config.log_format);
    let code = match amr_gateway::run(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "gateway failed");
            std::process::ExitCode::FAILURE
        }
    };
    telemetry.shutdown().await;
    code
}
