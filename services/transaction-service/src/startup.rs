//! [`Application`]: the database pool, the migrated schema, the event consumer and the
//! bound HTTP listener, wired together; and the shutdown that stops them in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::KafkaError;
use service_http::{BindError, Listener, Shutdown};
use service_postgres::DatabaseSettings;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::config::KafkaSettings;
use crate::config::{Settings, APPLICATION_NAME, CONSUMER_APPLICATION_NAME, CONSUMER_CONNECTIONS};
use crate::consumer;
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
    #[error("cannot apply migrations")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot create the kafka consumer: {0}")]
    Kafka(#[source] KafkaError),
    #[error(transparent)]
    Bind(#[from] BindError),
}

/// A service ready to run: migrations applied, consumer subscribed, port bound.
pub struct Application {
    listener: Listener,
    state: AppState,
    /// The event consumer's own connections: settlement never queues behind HTTP
    /// requests for a connection of the request pool, nor requests behind it.
    consumer_pool: PgPool,
    /// The event consumer's client; [`consumer::run`] owns it from the start and may
    /// replace it.
    consumer: Arc<consumer::EventConsumer>,
    kafka: KafkaSettings,
}

impl Application {
    /// Creates the Kafka consumer and the client `/readyz` asks for metadata (both
    /// connect in the background), connects the pool
    /// (lazily, so an outage later is a 503, not a crash), applies the migrations and
    /// binds the HTTP port (port 0 picks a free one; see [`Application::local_addr`]).
    pub async fn build(settings: &Settings) -> Result<Self, StartupError> {
        let consumer = Arc::new(consumer::create(&settings.kafka).map_err(StartupError::Kafka)?);
        let kafka_probe =
            Arc::new(http::kafka_probe(&settings.kafka).map_err(StartupError::Kafka)?);
        let migrator = &store::MIGRATOR;
        let pool = service_postgres::migrated_pool(&settings.database, APPLICATION_NAME, migrator);
        let pool = pool.await?;
        let consumer_db = DatabaseSettings {
            max_connections: CONSUMER_CONNECTIONS,
            ..settings.database.clone()
        };
        // The consumer's statements take arrays of 1 to CONSUMER_MAX_BATCH ids. A cached
        // generic plan is made once, for no array length and the tables' size of that
        // moment: made while `transactions` was small it seq-scans the table on every
        // batch long after it has grown (seen in the settle bench: 2.7 ms per lookup of
        // 8 rows). A custom plan sees the array and the table as they are, for ~0.1 ms
        // of planning per statement.
        let consumer_pool = consumer_db.pool_options().connect_lazy_with(
            consumer_db
                .connect_options(CONSUMER_APPLICATION_NAME)
                .options([("plan_cache_mode", "force_custom_plan")]),
        );
        let listener = Listener::bind(APPLICATION_NAME, settings.server.addr()).await?;
        Ok(Self {
            listener,
            state: AppState {
                pool,
                metrics: Metrics::new(),
                kafka_probe,
                capture: settings.capture.clone(),
            },
            consumer_pool,
            consumer,
            kafka: settings.kafka.clone(),
        })
    }

    /// The address the HTTP server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// Serves HTTP and consumes events until `shutdown` resolves. Then the server
    /// stops accepting, finishes in-flight requests, and the consumer stops after the
    /// event it is applying; then the consumer is closed, for at most
    /// [`CONSUMER_CLOSE_TIMEOUT`]. This returns when all of that is done.
    pub async fn run_until_stopped(self, shutdown: impl Shutdown) -> std::io::Result<()> {
        let (stop, stopped) = watch::channel(false);
        let consumer = tokio::spawn(consumer::run(
            self.consumer,
            self.kafka,
            self.consumer_pool,
            self.state.capture.clone(),
            self.state.metrics.clone(),
            stopped.clone(),
        ));

        let router = http::router(self.state);
        let served = self
            .listener
            .serve(router, async move {
                shutdown.await;
                tracing::info!("shutting down: draining HTTP requests, stopping the consumer");
                let _ = stop.send(true);
            })
            .await;
        match consumer.await {
            Ok(client) => consumer::close(client, CONSUMER_CLOSE_TIMEOUT).await,
            Err(error) => tracing::error!(error = %error, "event consumer task failed"),
        }
        served
    }
}
