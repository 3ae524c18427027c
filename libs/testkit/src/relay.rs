//! relay-cdc as a child process: the one place relay-cdc's tests, the bench and the drill
//! start the relay binary. A [`RelayConfig`] holds the binary and its settings (the
//! `RELAY_*` variables, nothing else of the caller's environment); [`RelayConfig::spawn`]
//! starts `relay-cdc run` with an admin port of its own and returns a [`RelayProcess`]
//! (wait until ready, probe, metrics, `/proc` figures, kill, stop), and
//! [`RelayConfig::output`] runs a one-shot command (`check`, `status`).
//!
//! [`Delivery`] is relay-cdc's delivery mode as the bench and the drill name it.
//!
//! The stack's conventions come along: [`relay_kafka_env`] (the stack's Kafka security
//! as the relay's own principal) and [`relay_source_tls_env`] (the stack's PostgreSQL
//! TLS for a source), both empty on the plain stack.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::Duration;

use anyhow::Context;

use crate::kafka::kafka_security;
use crate::metrics::Metrics;
use crate::net::free_port;
use crate::proc::{self, Process};
use crate::{unique_suffix, Stack};

/// relay-cdc's `kafka.delivery` (`RELAY_KAFKA__DELIVERY`), spelled as the relay's
/// configuration spells it (`at-least-once`, `exactly-once`): the mode the bench
/// measures and the drill runs its relays in. relay-cdc's own definition stays in its
/// configuration; this one is for the programs that start it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Delivery {
    /// An idempotent producer (the relay's default): after a crash or an outage the
    /// unconfirmed tail is sent again with the same event ids, so duplicates are allowed.
    #[default]
    AtLeastOnce,
    /// A transactional producer: whole PostgreSQL transactions and a checkpoint record
    /// per Kafka transaction; a `read_committed` consumer sees every row once.
    ExactlyOnce,
}

impl Delivery {
    /// Both modes, the relay's default first.
    pub const ALL: [Delivery; 2] = [Delivery::AtLeastOnce, Delivery::ExactlyOnce];

    /// The value of `RELAY_KAFKA__DELIVERY`.
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::AtLeastOnce => "at-least-once",
            Delivery::ExactlyOnce => "exactly-once",
        }
    }
}

impl std::fmt::Display for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A delivery mode the relay does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownDelivery(pub String);

impl std::fmt::Display for UnknownDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "unknown delivery mode {:?} (at-least-once or exactly-once)",
            self.0
        )
    }
}

impl std::error::Error for UnknownDelivery {}

impl std::str::FromStr for Delivery {
    type Err = UnknownDelivery;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Delivery::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| UnknownDelivery(s.to_string()))
    }
}

/// How long one request to the admin port may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The stack's Kafka security as relay-cdc settings (`RELAY_KAFKA__PROPERTIES__*`), with
/// the relay's own principal (`KAFKA_RELAY_USERNAME`/`_PASSWORD` on the secured stack) in
/// place of the admin; nothing on the plain stack.
pub fn relay_kafka_env() -> Vec<(String, String)> {
    kafka_properties_env(kafka_security().into_iter().map(|(prop, value)| {
        let value = match prop {
            "sasl.username" => std::env::var("KAFKA_RELAY_USERNAME").unwrap_or(value),
            "sasl.password" => std::env::var("KAFKA_RELAY_PASSWORD").unwrap_or(value),
            _ => value,
        };
        (prop, value)
    }))
}

/// librdkafka properties as the relay's settings: `linger.ms` →
/// `RELAY_KAFKA__PROPERTIES__LINGER_MS` (the relay turns `_` back into `.`).
pub fn kafka_properties_env<'a>(
    properties: impl IntoIterator<Item = (&'a str, String)>,
) -> Vec<(String, String)> {
    properties
        .into_iter()
        .map(|(prop, value)| {
            let key = prop.replace('.', "_").to_uppercase();
            (format!("RELAY_KAFKA__PROPERTIES__{key}"), value)
        })
        .collect()
}

/// The stack's PostgreSQL TLS (libpq's `PGSSLMODE`, `PGSSLROOTCERT`) as settings of the
/// relay's source `name`; nothing on the plain stack.
pub fn relay_source_tls_env(name: &str) -> Vec<(String, String)> {
    source_settings(name, &stack_pg_tls())
}

/// The stack's PostgreSQL TLS as a source's settings (`sslmode`, `sslrootcert`).
fn stack_pg_tls() -> Vec<(String, String)> {
    [("PGSSLMODE", "sslmode"), ("PGSSLROOTCERT", "sslrootcert")]
        .into_iter()
        .filter_map(|(var, key)| std::env::var(var).ok().map(|v| (key.to_string(), v)))
        .collect()
}

/// `RELAY_SOURCES__<NAME>__<KEY>` for each (key, value), keys in any case.
fn source_settings(name: &str, pairs: &[(String, String)]) -> Vec<(String, String)> {
    let p = format!("RELAY_SOURCES__{}__", name.to_uppercase());
    pairs
        .iter()
        .map(|(k, v)| (format!("{p}{}", k.to_uppercase()), v.clone()))
        .collect()
}

/// One of the relay's sources: a database and the slot the relay reads it through.
#[derive(Debug, Clone)]
pub struct RelaySource {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub database: String,
    pub slot: String,
    /// Further settings of the source, libpq-style keys in any case (`sslmode`,
    /// `sslrootcert`, `failover_slot`, ...).
    pub extra: Vec<(String, String)>,
}

impl RelaySource {
    /// Source `name` on the local stack's `database`, read through `slot`, as the relay's
    /// own role, with the stack's TLS (see [`relay_source_tls_env`]).
    pub fn on_stack(stack: &Stack, name: &str, database: &str, slot: &str) -> Self {
        Self {
            name: name.to_string(),
            host: stack.pg_host.clone(),
            port: stack.pg_port,
            user: stack.relay_user.clone(),
            password: stack.relay_password.clone(),
            database: database.to_string(),
            slot: slot.to_string(),
            extra: stack_pg_tls(),
        }
    }

    /// The source as the relay's settings (`RELAY_SOURCES__<NAME>__*`).
    pub fn env(&self) -> Vec<(String, String)> {
        let mut pairs = vec![
            ("HOST".to_string(), self.host.clone()),
            ("PORT".to_string(), self.port.to_string()),
            ("USER".to_string(), self.user.clone()),
            ("PASSWORD".to_string(), self.password.clone()),
            ("DATABASE".to_string(), self.database.clone()),
            ("SLOT".to_string(), self.slot.clone()),
        ];
        pairs.extend(self.extra.iter().cloned());
        source_settings(&self.name, &pairs)
    }
}

/// How to start relay-cdc: the binary, its settings in order (a later one overrides an
/// earlier one, an empty value unsets it) and where it logs.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    bin: PathBuf,
    name: String,
    settings: Vec<(String, String)>,
    log: Option<PathBuf>,
}

impl RelayConfig {
    /// relay-cdc at `bin`, logging at `info` (librdkafka's client at `warn`), with no
    /// other setting.
    pub fn new(bin: impl Into<PathBuf>) -> Self {
        Self {
            bin: bin.into(),
            name: "relay-cdc".into(),
            settings: vec![("RUST_LOG".into(), "info,rdkafka=warn".into())],
            log: None,
        }
    }

    /// The process's name in messages (`relay-a`, `relay-b`, ...).
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// Where the relay writes: `RELAY_KAFKA__BROKERS`, `RELAY_KAFKA__TOPIC_TEMPLATE`.
    pub fn kafka(self, brokers: &str, topic_template: &str) -> Self {
        self.set("RELAY_KAFKA__BROKERS", brokers)
            .set("RELAY_KAFKA__TOPIC_TEMPLATE", topic_template)
    }

    /// librdkafka properties (a stack's security, `linger.ms`, ...), see
    /// [`kafka_properties_env`].
    pub fn kafka_properties<'a>(
        self,
        properties: impl IntoIterator<Item = (&'a str, String)>,
    ) -> Self {
        self.envs(kafka_properties_env(properties))
    }

    pub fn source(self, source: &RelaySource) -> Self {
        self.envs(source.env())
    }

    /// One setting (`RELAY_*` or `RUST_LOG`); an empty value unsets it.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((key.into(), value.into()));
        self
    }

    pub fn envs(mut self, settings: impl IntoIterator<Item = (String, String)>) -> Self {
        self.settings.extend(settings);
        self
    }

    /// Appends the relay's output to `log` (default: a new file in the temp folder).
    pub fn log_to(mut self, log: impl Into<PathBuf>) -> Self {
        self.log = Some(log.into());
        self
    }

    /// The value `key` gets (the last one set), `None` when unset.
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.settings
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// The one command line of relay-cdc: `bin args` with exactly these settings.
    fn command(&self, args: &[&str]) -> Command {
        proc::command(&self.bin, args, &self.settings)
    }

    /// Runs a command that ends by itself (`check`, `status`, `run` with a bad
    /// configuration) and returns what it printed.
    pub fn output(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.command(args)
            .output()
            .with_context(|| format!("running {} {}", self.bin.display(), args.join(" ")))
    }

    /// Starts `relay-cdc run`, its admin port on a free local port unless
    /// `RELAY_ADMIN__LISTEN` is set.
    pub fn spawn(&self) -> anyhow::Result<RelayProcess> {
        let mut config = self.clone();
        let listen = match self.setting("RELAY_ADMIN__LISTEN") {
            Some(l) => l.to_string(),
            None => {
                let l = format!("127.0.0.1:{}", free_port());
                config = config.set("RELAY_ADMIN__LISTEN", &l);
                l
            }
        };
        let log = self
            .log
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join(format!("relay-{}.log", unique_suffix())));
        let process = Process::spawn(&self.name, config.command(&["run"]), log)?;
        Ok(RelayProcess {
            process,
            admin: format!("http://{listen}"),
            http: reqwest::Client::builder()
                .timeout(ADMIN_TIMEOUT)
                .build()
                .context("an http client")?,
        })
    }
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

async fn probe(http: &reqwest::Client, admin: &str, path: &str) -> Option<Health> {
    let r = http.get(format!("{admin}{path}")).send().await.ok()?;
    let status = r.status().as_u16();
    let text = r.text().await.ok()?;
    Some(Health {
        status,
        body: serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    })
}

/// A running relay; SIGKILLed if dropped before [`RelayProcess::stop`].
pub struct RelayProcess {
    process: Process,
    admin: String,
    http: reqwest::Client,
}

impl RelayProcess {
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The admin port's base URL, `http://127.0.0.1:<port>`.
    pub fn admin(&self) -> &str {
        &self.admin
    }

    pub fn log(&self) -> &Path {
        self.process.log()
    }

    /// The last `lines` lines the relay logged.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// The exit status, once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.process.exited()
    }

    /// Fails if the relay exited (it should run until told to stop).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.process.check_alive()
    }

    /// `GET {path}` on the admin port; `None` while it does not answer.
    pub async fn probe(&self, path: &str) -> Option<Health> {
        probe(&self.http, &self.admin, path).await
    }

    /// One look at `/readyz`: every source streams.
    pub async fn is_ready(&self) -> bool {
        self.probe("/readyz")
            .await
            .is_some_and(|h| (200..300).contains(&h.status))
    }

    /// Waits until `/readyz` says every source streams.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.wait_answer("readiness", "/readyz", timeout, |h| {
            (200..300).contains(&h.status)
        })
        .await
        .map(drop)
    }

    /// Waits until `/healthz` answers 2xx: the relay runs (a standby waiting for its
    /// slots included).
    pub async fn wait_healthy(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.wait_answer("health", "/healthz", timeout, |h| {
            (200..300).contains(&h.status)
        })
        .await
        .map(drop)
    }

    /// Polls `/healthz` until `pred` holds for its answer; fails after `timeout` or when
    /// the relay exits, with the last answer and the end of the relay's log.
    pub async fn wait_health(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Health) -> bool,
    ) -> anyhow::Result<Health> {
        self.wait_answer(what, "/healthz", timeout, pred).await
    }

    async fn wait_answer(
        &mut self,
        what: &str,
        path: &str,
        timeout: Duration,
        pred: impl Fn(&Health) -> bool,
    ) -> anyhow::Result<Health> {
        let Self {
            process,
            admin,
            http,
        } = self;
        let last = std::sync::Mutex::new(None);
        let (admin, http, last_ref, pred_ref) = (&*admin, &*http, &last, &pred);
        process
            .wait_for(what, timeout, || async move {
                let h = probe(http, admin, path).await;
                let done = h.as_ref().is_some_and(pred_ref);
                *last_ref.lock().expect("not poisoned") = h.clone();
                h.filter(|_| done)
            })
            .await
            .with_context(|| {
                format!(
                    "last {path} answer: {:?}",
                    last.lock().expect("not poisoned")
                )
            })
    }

    /// One scrape of `/metrics`.
    pub async fn metrics(&self) -> anyhow::Result<Metrics> {
        Metrics::scrape(&self.http, &format!("{}/metrics", self.admin)).await
    }

    /// CPU seconds (user + system) the relay used so far.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        self.process.cpu_seconds()
    }

    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        self.process.rss_bytes()
    }

    pub fn peak_rss_bytes(&self) -> anyhow::Result<u64> {
        self.process.peak_rss_bytes()
    }

    /// SIGKILL: no chance to drain or confirm anything.
    pub fn kill(self) {
        self.process.kill();
    }

    /// SIGTERM, then waits up to `timeout` for the exit (a graceful stop exits 0);
    /// SIGKILL and an error after that.
    pub async fn stop(self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.process.stop(timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_modes_are_spelled_as_the_relays_configuration_spells_them() {
        for d in Delivery::ALL {
            assert_eq!(d.as_str().parse::<Delivery>(), Ok(d));
            assert_eq!(d.to_string(), d.as_str());
        }
        assert_eq!(Delivery::default(), Delivery::AtLeastOnce);
        assert_eq!(Delivery::ExactlyOnce.as_str(), "exactly-once");
        assert!("exactly_once".parse::<Delivery>().is_err());
    }

    #[test]
    fn librdkafka_properties_become_the_relays_property_variables() {
        let env = kafka_properties_env([
            ("linger.ms", "5".to_string()),
            ("batch.num.messages", "100".to_string()),
        ]);
        assert_eq!(
            env,
            [
                (
                    "RELAY_KAFKA__PROPERTIES__LINGER_MS".to_string(),
                    "5".to_string()
                ),
                (
                    "RELAY_KAFKA__PROPERTIES__BATCH_NUM_MESSAGES".to_string(),
                    "100".to_string()
                ),
            ]
        );
    }

    #[test]
    fn a_later_setting_wins_and_an_empty_one_unsets() {
        let c = RelayConfig::new("/bin/relay-cdc")
            .set("RELAY_KAFKA__DELIVERY", Delivery::ExactlyOnce.as_str())
            .set("RELAY_KAFKA__DELIVERY", Delivery::AtLeastOnce.as_str())
            .set("RELAY_PIPELINE__MARK_INTERVAL_MS", "10")
            .set("RELAY_PIPELINE__MARK_INTERVAL_MS", "");
        assert_eq!(c.setting("RELAY_KAFKA__DELIVERY"), Some("at-least-once"));
        assert_eq!(c.setting("RELAY_PIPELINE__MARK_INTERVAL_MS"), None);
    }
}
