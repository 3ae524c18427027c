//! user-service: registers users and records a `UserCreated` event in the transactional
//! outbox in the same PostgreSQL transaction.
//!
//! [`build`] turns [`Settings`] into a bound, migrated [`Application`]; [`app`] builds
//! the router alone so tests can serve it over any pool.

pub mod app;
pub mod domain;
pub mod http;
pub mod metrics;
pub mod settings;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use sqlx::PgPool;
use tokio::net::TcpListener;

pub use http::AppState;
pub use settings::Settings;

use crate::app::PasswordHasher;

/// The router with every route and middleware, over `state`.
pub fn app(state: AppState) -> Router {
    http::router(state)
}

/// Start-up failed; the message says which step.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The message includes sqlx's, whose own `source()` would repeat it.
    #[error("could not apply database migrations: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    #[error("could not listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A service that is migrated and listening, not yet serving.
pub struct Application {
    listener: TcpListener,
    router: Router,
    pool: PgPool,
}

/// Connects the pool (lazily), applies the migrations, and binds the listener.
///
/// Migrations are idempotent: already applied ones are skipped, and sqlx serialises
/// concurrent runs with an advisory lock.
pub async fn build(settings: &Settings) -> Result<Application, StartupError> {
    let pool = settings.database.lazy_pool(settings::APPLICATION_NAME);
    store::MIGRATOR
        .run(&pool)
        .await
        .map_err(StartupError::Migrate)?;
    tracing::info!("database migrations applied");
    let addr = settings.server.addr();
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind { addr, source })?;
    let state = AppState::new(pool.clone(), PasswordHasher::per_core());
    Ok(Application {
        listener,
        router: app(state),
        pool,
    })
}

impl Application {
    /// The address the listener is bound to (its real port when settings asked for 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes, then stops accepting connections, lets
    /// in-flight requests finish, and closes the pool.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await?;
        self.pool.close().await;
        Ok(())
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        tokio::signal::ctrl_c()
            .await
            .expect("installing the SIGINT handler");
    };
    #[cfg(unix)]
    let terminate = async {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler")
            .recv()
            .await;
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!(signal = "SIGINT", "shutting down"),
        () = terminate => tracing::info!(signal = "SIGTERM", "shutting down"),
    }
}
