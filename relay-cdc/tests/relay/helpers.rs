//! Runs the real relay binary against the local stack: a fresh database, a slot and
//! topics of the test's own, and a child process that can be stopped or killed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sqlx::PgConnection;
use testkit::{unique_suffix, Stack, TestDb};

pub struct Source {
    pub name: String,
    pub db: TestDb,
    pub slot: String,
}

impl Source {
    pub async fn new(name: &str) -> Source {
        let db = TestDb::create("relay", "users_db").await.unwrap();
        Source {
            name: name.to_string(),
            slot: format!("relay_t_{}", unique_suffix()),
            db,
        }
    }

    pub async fn conn(&self) -> PgConnection {
        self.db.connect().await.unwrap()
    }

    /// The relay's settings for this source: as the relay's own role, with the stack's
    /// TLS (libpq's `PGSSLMODE`/`PGSSLROOTCERT` on the secured stack).
    pub fn env(&self) -> Vec<(String, String)> {
        let s = self.db.stack();
        let p = format!("RELAY_SOURCES__{}__", self.name.to_uppercase());
        let mut env = vec![
            (format!("{p}HOST"), s.pg_host.clone()),
            (format!("{p}PORT"), s.pg_port.to_string()),
            (format!("{p}USER"), s.relay_user.clone()),
            (format!("{p}PASSWORD"), s.relay_password.clone()),
            (format!("{p}DATABASE"), self.db.name.clone()),
            (format!("{p}SLOT"), self.slot.clone()),
        ];
        env.extend(testkit::relay_source_tls_env(&self.name));
        env
    }

    /// The slot's confirmed_flush_lsn as a number (0 when the slot does not exist).
    pub async fn confirmed_lsn(&self) -> u64 {
        let mut c = self.conn().await;
        let r: Option<(i64,)> = sqlx::query_as(
            "select (confirmed_flush_lsn - '0/0'::pg_lsn)::bigint from pg_replication_slots where slot_name = $1",
        )
        .bind(&self.slot)
        .fetch_optional(&mut c)
        .await
        .unwrap();
        r.map(|(v,)| v as u64).unwrap_or(0)
    }

    pub async fn current_lsn(&self) -> u64 {
        let mut c = self.conn().await;
        let (v,): (i64,) = sqlx::query_as("select (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")
            .fetch_one(&mut c)
            .await
            .unwrap();
        v as u64
    }

    /// The status of one outbox row (`PENDING`, `PROCESSED`, ...).
    pub async fn status_of(&self, id: &str) -> String {
        let mut c = self.conn().await;
        let (s,): (String,) = sqlx::query_as("select status from outbox where id = $1::uuid")
            .bind(id)
            .fetch_one(&mut c)
            .await
            .unwrap();
        s
    }

    /// Replication slots on this source's database: (name, temporary, active).
    pub async fn slots(&self) -> Vec<(String, bool, bool)> {
        let mut c = self.conn().await;
        sqlx::query_as(
            "select slot_name::text, temporary, active from pg_replication_slots \
             where database = current_database() order by slot_name",
        )
        .fetch_all(&mut c)
        .await
        .unwrap()
    }

    /// The key of this source's series of `metric` in [`Relay::metrics`].
    pub fn series(&self, metric: &str) -> String {
        format!("{metric}{{source=\"{}\"}}", self.name)
    }

    pub async fn count(&self, status: &str) -> i64 {
        let mut c = self.conn().await;
        let (n,): (i64,) = sqlx::query_as("select count(*) from outbox where status = $1")
            .bind(status)
            .fetch_one(&mut c)
            .await
            .unwrap();
        n
    }
}

/// Inserts `rows` outbox rows in one transaction; returns their ids in insert order.
pub async fn insert_txn(
    conn: &mut PgConnection,
    aggregate_type: &str,
    aggregate_id: &str,
    rows: usize,
    tag: &str,
) -> Vec<String> {
    let ids: Vec<(uuid::Uuid,)> = sqlx::query_as(
        "insert into outbox (id, aggregate_type, aggregate_id, event_type, payload) \
         select gen_random_uuid(), $1, $2, 'TestEvent', jsonb_build_object('tag', $3::text, 'seq', g) \
         from generate_series(1, $4) g order by g returning id",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(tag)
    .bind(rows as i32)
    .fetch_all(conn)
    .await
    .unwrap();
    ids.into_iter().map(|(i,)| i.to_string()).collect()
}

/// An answer of `/healthz` or `/readyz`: the status code and the JSON body (`null` when
/// the body is not JSON).
#[derive(Debug, Clone)]
pub struct Health {
    pub status: u16,
    pub body: serde_json::Value,
}

impl Health {
    /// What the answer says about one source.
    pub fn source(&self, name: &str) -> &serde_json::Value {
        &self.body["sources"][name]
    }
}

async fn probe(url: &str) -> Option<Health> {
    let r = reqwest::get(url).await.ok()?;
    let status = r.status().as_u16();
    let text = r.text().await.ok()?;
    Some(Health {
        status,
        body: serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    })
}

pub struct Relay {
    child: Child,
    pub admin: String,
    pub log: PathBuf,
}

pub struct RelayConfig {
    pub brokers: String,
    pub topic_template: String,
    pub extra: Vec<(String, String)>,
}

impl RelayConfig {
    pub fn new(prefix: &str) -> (RelayConfig, String) {
        let stack = Stack::from_env();
        let t = format!("t.{prefix}.{}", unique_suffix());
        (
            RelayConfig {
                brokers: stack.kafka_brokers,
                topic_template: format!("{t}.{{aggregate_type}}"),
                extra: vec![],
            },
            t,
        )
    }
}

impl Relay {
    pub fn start(cfg: &RelayConfig, sources: &[&Source]) -> Relay {
        let port = testkit::free_port();
        let log = std::env::temp_dir().join(format!("relay-test-{}.log", unique_suffix()));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_relay-cdc"));
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("RELAY_")) {
            cmd.env_remove(k);
        }
        cmd.arg("run")
            .env("RELAY_KAFKA__BROKERS", &cfg.brokers)
            .env("RELAY_KAFKA__TOPIC_TEMPLATE", &cfg.topic_template)
            .env("RELAY_ADMIN__LISTEN", format!("127.0.0.1:{port}"))
            .env("RELAY_PIPELINE__STATUS_INTERVAL_MS", "200")
            .env("RELAY_PIPELINE__HEARTBEAT_INTERVAL_MS", "500")
            .env("RELAY_PIPELINE__MAX_BACKOFF_MS", "1000")
            .env("RUST_LOG", "info,relay_cdc=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for s in sources {
            cmd.envs(s.env());
        }
        cmd.envs(testkit::relay_kafka_env());
        cmd.envs(cfg.extra.iter().cloned());
        // An empty value in `extra` unsets what the lines above set.
        for (k, _) in cfg.extra.iter().filter(|(_, v)| v.is_empty()) {
            cmd.env_remove(k);
        }
        let child = cmd.spawn().expect("relay binary starts");
        Relay {
            child,
            admin: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    /// Waits until `/readyz` says every source streams.
    pub async fn wait_ready(&mut self) {
        let url = format!("{}/readyz", self.admin);
        let log = self.log.clone();
        let child = &mut self.child;
        let r = testkit::wait_for("relay readiness", Duration::from_secs(60), || {
            let exited = child.try_wait().unwrap();
            let url = url.clone();
            async move {
                if let Some(status) = exited {
                    anyhow::bail!("relay exited with {status}");
                }
                Ok(match reqwest::get(&url).await {
                    Ok(r) if r.status().is_success() => Some(()),
                    _ => None,
                })
            }
        })
        .await;
        if let Err(e) = r {
            panic!(
                "{e}\n--- relay log ---\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
    }

    /// `GET {path}` on the admin port; `None` while it does not answer.
    pub async fn probe(&self, path: &str) -> Option<Health> {
        probe(&format!("{}{path}", self.admin)).await
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, once the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Polls `/healthz` until `pred` holds for its answer, or panics after `timeout` (or
    /// when the relay exits) with the last answer and the end of the relay's log.
    pub async fn wait_health(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Health) -> bool,
    ) -> Health {
        let last = std::sync::Mutex::new(None);
        let url = format!("{}/healthz", self.admin);
        let child = &mut self.child;
        let (last_ref, pred_ref) = (&last, &pred);
        let r = testkit::wait_for(what, timeout, || {
            let exited = child.try_wait();
            let url = url.clone();
            async move {
                if let Some(status) = exited? {
                    anyhow::bail!("relay exited with {status}");
                }
                let h = probe(&url).await;
                let done = h.as_ref().is_some_and(pred_ref);
                *last_ref.lock().unwrap() = h.clone();
                Ok(h.filter(|_| done))
            }
        })
        .await;
        match r {
            Ok(h) => h,
            Err(e) => panic!(
                "{e}\nlast /healthz answer: {:?}\n--- end of relay log ---\n{}",
                last.lock().unwrap(),
                self.log_tail(80)
            ),
        }
    }

    /// The last `lines` lines the relay logged.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub async fn metrics(&self) -> HashMap<String, f64> {
        let text = reqwest::get(format!("{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect()
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        std::mem::forget(self);
        status
    }

    /// SIGKILL: no chance to drain or confirm anything.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        std::mem::forget(self);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
