//! `spawn_app()` and what tests do with a running service: call its API, look into its
//! database, read what it logged, and cut it off from PostgreSQL with a TCP proxy.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use outbox::Capture;
use serde_json::Value;
use service_config::ServerSettings;
use service_postgres::{DatabaseSettings, DatabaseTarget, DEFAULT_ACQUIRE_TIMEOUT};
use service_telemetry::LogBuffer;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool};
use testkit::TestDb;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, Mutex};
use tokio::task::JoinSet;
use user_service::app::PasswordHasher;
use user_service::config::Settings;
use user_service::http::{self, AppState};
use user_service::Application;

/// A password no test output, log, row or event may contain.
pub const PASSWORD: &str = "correct horse battery staple";

/// A running service and, when it has one, the database it owns.
pub struct TestApp {
    pub base_url: String,
    pub client: reqwest::Client,
    pub db: Option<TestDb>,
    shutdown: Option<oneshot::Sender<()>>,
}

/// The log lines of every service this test binary runs, as the binary logs them
/// (JSON lines, `service_telemetry::init_in_memory`).
pub fn logs() -> &'static LogBuffer {
    service_telemetry::init_in_memory("user-service")
}

/// The service as `main` builds it ([`Application::build`]: migrations, pool,
/// listener) on 127.0.0.1:0 over a fresh database, writing outbox rows (`table`
/// capture: what the tests that read the `outbox` table need).
pub async fn spawn_app() -> TestApp {
    spawn_app_with_capture(Capture::Table).await
}

/// [`spawn_app`] with `OUTBOX_CAPTURE` = `capture`.
pub async fn spawn_app_with_capture(capture: Capture) -> TestApp {
    logs();
    let db = TestDb::create("users", "users_db").await.unwrap();
    let mut database = DatabaseSettings::new(
        DatabaseTarget::Url(db.url.clone().into()),
        DEFAULT_ACQUIRE_TIMEOUT,
    );
    database.max_connections = 5;
    let settings = Settings {
        server: ServerSettings::local_ephemeral(),
        database,
        capture,
    };
    let application = Application::build(&settings).await.unwrap();
    let addr = application.local_addr();
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(application.run_until_stopped(async {
        let _ = rx.await;
    }));
    TestApp::new(addr, Some(db), tx)
}

/// The router over `pool`, without start-up migrations: for pools that cannot reach
/// a database.
pub async fn spawn_app_with_pool(pool: PgPool) -> TestApp {
    logs();
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = http::router(AppState::new(
        pool,
        PasswordHasher::per_core(),
        Capture::Table,
    ));
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await
    });
    TestApp::new(addr, None, tx)
}

impl TestApp {
    fn new(addr: SocketAddr, db: Option<TestDb>, shutdown: oneshot::Sender<()>) -> Self {
        Self {
            base_url: format!("http://{addr}"),
            client: reqwest::Client::new(),
            db,
            shutdown: Some(shutdown),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// `POST /users` with a JSON body.
    pub async fn post_user(&self, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url("/users"))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// `POST /users` with raw bytes and an optional content type.
    pub async fn post_raw(
        &self,
        body: impl Into<reqwest::Body>,
        content_type: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self.client.post(self.url("/users")).body(body);
        if let Some(ct) = content_type {
            request = request.header(reqwest::header::CONTENT_TYPE, ct);
        }
        request.send().await.unwrap()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// A connection to the app's own database.
    pub async fn db(&self) -> PgConnection {
        self.db
            .as_ref()
            .expect("this app owns a database")
            .connect()
            .await
            .unwrap()
    }

    /// Rows in `table` of the app's database.
    pub async fn count(&self, table: &str) -> i64 {
        let (n,): (i64,) = sqlx::query_as(&format!("select count(*) from {table}"))
            .fetch_one(&mut self.db().await)
            .await
            .unwrap();
        n
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A sign-up body with [`PASSWORD`].
pub fn sign_up(email: &str) -> Value {
    serde_json::json!({"email": email, "password": PASSWORD})
}

/// A unique, valid email address.
pub fn unique_email() -> String {
    format!("user-{}@example.com", testkit::unique_suffix())
}

/// Status and JSON body of a response.
pub async fn status_and_json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|err| panic!("body is not JSON ({err}): {text}"));
    (status, json)
}

/// Checks the error envelope: `code` repeats the status and `message` says something.
pub fn assert_error_envelope(status: u16, body: &Value, expected: u16) {
    assert_eq!(status, expected, "unexpected status, body: {body}");
    assert_eq!(body["code"], expected, "code repeats the status: {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "a message: {body}"
    );
    assert!(body.get("data").is_none(), "errors carry no data: {body}");
}

/// A pool to `port` on localhost that gives up on a connection after `acquire_timeout`.
pub fn pool_to_port(port: u16, db: &TestDb, acquire_timeout: Duration) -> PgPool {
    let stack = db.stack();
    let url = format!(
        "postgres://{}:{}@127.0.0.1:{port}/{}",
        stack.pg_user, stack.pg_password, db.name
    );
    PgPoolOptions::new()
        .max_connections(5)
        .acquire_timeout(acquire_timeout)
        .connect_lazy(&url)
        .unwrap()
}

/// A TCP port nothing listens on (bound, then released).
pub async fn closed_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    listener.local_addr().unwrap().port()
}

/// A TCP proxy in front of PostgreSQL that can simulate an outage: while cut, open
/// connections are closed and new ones are accepted and closed at once.
pub struct DbProxy {
    pub port: u16,
    up: watch::Sender<bool>,
    forwards: Arc<Mutex<JoinSet<()>>>,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl DbProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (up, _) = watch::channel(true);
        let forwards = Arc::new(Mutex::new(JoinSet::new()));
        let accept_loop = tokio::spawn({
            let up = up.clone();
            let forwards = Arc::clone(&forwards);
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    let mut forwards = forwards.lock().await;
                    if !*up.borrow() {
                        drop(client);
                        continue;
                    }
                    let mut cut = up.subscribe();
                    forwards.spawn(async move {
                        let Ok(mut server) = TcpStream::connect(target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = cut.wait_for(|up| !*up) => {}
                        }
                    });
                }
            }
        });
        Self {
            port,
            up,
            forwards,
            accept_loop,
        }
    }

    /// Cuts the database off; returns once every proxied connection is closed.
    pub async fn cut(&self) {
        let mut forwards = self.forwards.lock().await;
        self.up.send_replace(false);
        while forwards.join_next().await.is_some() {}
    }

    /// Lets connections through again.
    pub async fn restore(&self) {
        let _forwards = self.forwards.lock().await;
        self.up.send_replace(true);
    }
}

impl Drop for DbProxy {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}
