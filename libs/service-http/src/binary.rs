//! How a service binary runs: logs and traces first, the runtime, the listener, the
//! service until a signal, the spans still queued, the exit code.

use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Duration;

use axum::Router;
use service_telemetry::TelemetrySettings;
use tokio::net::TcpListener;

/// How long the runtime waits, once the service returned, for blocking work left
/// behind (a Kafka consumer close that did not finish in time, a password hash).
/// Dropping a runtime would wait for it without a limit.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(1);

/// Why a binary failed: any error, logged with its causes.
pub type BinaryError = Box<dyn StdError + Send + Sync>;

/// The shutdown [`run_main`] hands to the service: [`shutdown_signal`].
pub type ShutdownSignal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs `serve` on a multi-threaded runtime after installing logs and traces
/// ([`service_telemetry::init`], settings from the `OTEL_*` variables, `name` the
/// default service name), handing it [`shutdown_signal`]; logs `"{name} stopped"` and
/// exits 0 when it returns `Ok`, logs the error with its causes and exits 1 when it
/// fails or the telemetry settings are invalid. Spans still queued are exported for at
/// most [`service_telemetry::FLUSH_TIMEOUT`] before it returns.
pub fn run_main<F>(name: &'static str, serve: impl FnOnce(ShutdownSignal) -> F) -> ExitCode
where
    F: Future<Output = Result<(), BinaryError>>,
{
    let telemetry = TelemetrySettings::from_env(name)
        .map_err(BinaryError::from)
        .and_then(|settings| service_telemetry::init(&settings).map_err(BinaryError::from));
    let telemetry = match telemetry {
        Ok(telemetry) => telemetry,
        Err(error) => {
            // Logs all the same (nothing exported), so the error shows where the
            // service's logs go.
            let _ = service_telemetry::init(&TelemetrySettings::logs_only(name));
            tracing::error!(error = %crate::error::chain(&*error), "{name} failed");
            return ExitCode::FAILURE;
        }
    };
    let code = run(name, serve);
    telemetry.shutdown();
    code
}

fn run<F>(name: &'static str, serve: impl FnOnce(ShutdownSignal) -> F) -> ExitCode
where
    F: Future<Output = Result<(), BinaryError>>,
{
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(error = %error, "{name} cannot start its runtime");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(serve(Box::pin(shutdown_signal()))) {
        Ok(()) => {
            tracing::info!("{name} stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(error = %crate::error::chain(&*error), "{name} failed");
            ExitCode::FAILURE
        }
    };
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    code
}

/// What a service runs until: [`shutdown_signal`] in a binary, a channel in tests.
pub trait Shutdown: Future<Output = ()> + Send + 'static {}

impl<F: Future<Output = ()> + Send + 'static> Shutdown for F {}

/// The port could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address}")]
pub struct BindError {
    pub address: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// A bound HTTP listener: the port is taken at start-up, before anything is served.
#[derive(Debug)]
pub struct Listener {
    name: &'static str,
    inner: TcpListener,
}

impl Listener {
    /// Binds `address` (port 0 picks a free one) for the service `name`.
    pub async fn bind(name: &'static str, address: SocketAddr) -> Result<Self, BindError> {
        let inner = TcpListener::bind(address)
            .await
            .map_err(|source| BindError { address, source })?;
        Ok(Self { name, inner })
    }

    /// The bound address (its real port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Logs `"{name} listening"` with the address and serves `router` until `shutdown`
    /// resolves; then stops accepting connections and returns once in-flight requests
    /// have finished.
    pub async fn serve(self, router: Router, shutdown: impl Shutdown) -> std::io::Result<()> {
        tracing::info!(address = %self.local_addr(), "{} listening", self.name);
        axum::serve(self.inner, router)
            .with_graceful_shutdown(shutdown)
            .await
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM, logging which. A signal whose handler
/// cannot be installed is logged and never completes; the other one still works.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(error = %error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!(signal = "SIGINT", "received SIGINT, shutting down"),
        () = terminate => tracing::info!(signal = "SIGTERM", "received SIGTERM, shutting down"),
    }
}
