//! The transaction-service binary: logging, settings, build, run.

use std::process::ExitCode;
use std::time::Duration;

use transaction_service::config::Settings;
use transaction_service::{shutdown_signal, Application};

/// How long the runtime waits, once `run` returned, for blocking work left behind
/// (a Kafka consumer close that did not finish in time).
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run());
    // Dropping the runtime would wait for every blocking task without a limit.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    code
}

async fn run() -> ExitCode {
    service_telemetry::init();
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
