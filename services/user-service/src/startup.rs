//! [`Application`]: the database pool, the migrated schema and the bound HTTP
//! listener, wired together; and the shutdown that stops them in order.

use std::net::SocketAddr;

use service_http::{BindError, Listener, Shutdown};

use crate::app::PasswordHasher;
use crate::config::{Settings, APPLICATION_NAME};
use crate::http::{self, AppState};
use crate::store;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot apply migrations")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Bind(#[from] BindError),
}

/// A service ready to run: migrations applied, port bound.
pub struct Application {
    listener: Listener,
    state: AppState,
}

impl Application {
    /// Connects the pool (lazily, so an outage later is a 503, not a crash), applies
    /// the migrations and binds the HTTP port (port 0 picks a free one; see
    /// [`Application::local_addr`]).
    pub async fn build(settings: &Settings) -> Result<Self, StartupError> {
        let migrator = &store::MIGRATOR;
        let pool = service_postgres::migrated_pool(&settings.database, APPLICATION_NAME, migrator);
        let pool = pool.await?;
        let state = AppState::new(pool, PasswordHasher::per_core(), settings.capture.clone());
        let listener = Listener::bind(APPLICATION_NAME, settings.server.addr()).await?;
        Ok(Self { listener, state })
    }

    /// The address the HTTP server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// Serves HTTP until `shutdown` resolves; then stops accepting connections, lets
    /// in-flight requests finish, and closes the pool. This returns when all of that
    /// is done.
    pub async fn run_until_stopped(self, shutdown: impl Shutdown) -> std::io::Result<()> {
        let pool = self.state.pool.clone();
        let served = self
            .listener
            .serve(http::router(self.state), shutdown)
            .await;
        pool.close().await;
        served
    }
}
