//! [`Application`]: the database pool, the migrated schema, the event consumer and the
//! bound HTTP listener, wired together; and the shutdown that stops them in order.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::KafkaError;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{Settings, APPLICATION_NAME};
use crate::consumer::{self, Topics};
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::store;

/// How long a shutdown waits for the Kafka consumer to commit its stored offsets and
/// leave its group; it gives up after that (the inbox absorbs the redeliveries). Short
/// enough that the whole shutdown fits Docker's default 10 s grace period.
pub const CONSUMER_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot connect to the database: {0}")]
    Database(#[source] sqlx::Error),
    #[error("cannot apply migrations: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("cannot create the kafka consumer: {0}")]
    Kafka(#[source] KafkaError),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// A service ready to run: migrations applied, consumer subscribed, port bound.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    topics: Topics,
}

impl Application {
    /// Connects to the database, applies migrations, subscribes the consumer and binds
    /// the HTTP port (port 0 picks a free one; see [`Application::local_addr`]).
    pub async fn build(settings: &Settings) -> Result<Self, StartupError> {
        let pool = settings
            .database
            .pool_options()
            .connect_with(settings.database.connect_options(APPLICATION_NAME))
            .await
            .map_err(StartupError::Database)?;
        store::MIGRATOR
            .run(&pool)
            .await
            .map_err(StartupError::Migrate)?;

        let consumer = Arc::new(consumer::create(&settings.kafka).map_err(StartupError::Kafka)?);
        let address = SocketAddr::new(settings.server.host, settings.server.port);
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| StartupError::Bind { address, source })?;
        Ok(Self {
            listener,
            state: AppState {
                pool,
                metrics: Metrics::new(),
                consumer,
            },
            topics: Topics {
                user_events: settings.kafka.user_events_topic.clone(),
                transaction_events: settings.kafka.transaction_events_topic.clone(),
            },
        })
    }

    /// The address the HTTP server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The service's database pool.
    pub fn pool(&self) -> &PgPool {
        &self.state.pool
    }

    /// Serves HTTP and consumes events until `shutdown` resolves. Then the server stops
    /// accepting, finishes in-flight requests, and the consumer stops after the event
    /// it is applying; then the consumer is closed, for at most
    /// [`CONSUMER_CLOSE_TIMEOUT`]. This returns when all of that is done.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (stop, stopped) = watch::channel(false);
        let kafka = self.state.consumer.clone();
        let consumer = tokio::spawn(consumer::run(
            self.state.consumer.clone(),
            self.state.pool.clone(),
            self.state.metrics.clone(),
            self.topics,
            stopped.clone(),
        ));

        let router = http::router(self.state);
        let server = axum::serve(self.listener, router).with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down: draining HTTP requests, stopping the consumer");
            let _ = stop.send(true);
        });
        let served = server.await;
        if let Err(error) = consumer.await {
            tracing::error!(error = %error, "event consumer task failed");
        }
        consumer::close(kafka, CONSUMER_CLOSE_TIMEOUT).await;
        served
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
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
        _ = interrupt => tracing::info!("received SIGINT"),
        _ = terminate => tracing::info!("received SIGTERM"),
    }
}
