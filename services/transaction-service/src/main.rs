//! The transaction-service binary: logging, settings, build, run.

use std::process::ExitCode;

use transaction_service::config::Settings;
use transaction_service::{shutdown_signal, telemetry, Application};

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init();
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(error) => {
            tracing::error!(variable = error.variable, "invalid configuration: {error}");
            return ExitCode::FAILURE;
        }
    };
    let app = match Application::build(&settings).await {
        Ok(app) => app,
        Err(error) => {
            tracing::error!("cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(address = %app.local_addr(), "transaction-service listening");
    match app.run_until_stopped(shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!("server failed: {error}");
            ExitCode::FAILURE
        }
    }
}
