//! The user-service binary: telemetry, settings, build, run.

use std::process::ExitCode;

use anyhow::Context;
use user_service::{build, shutdown_signal, Settings};

#[tokio::main]
async fn main() -> ExitCode {
    service_telemetry::init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "user-service failed");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let settings = Settings::from_env().context("configuration")?;
    let application = build(&settings).await?;
    tracing::info!(addr = %application.local_addr(), "user-service listening");
    application
        .run_until_stopped(shutdown_signal())
        .await
        .context("serving HTTP")?;
    tracing::info!("user-service stopped");
    Ok(())
}
