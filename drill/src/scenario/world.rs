//! A scenario's running world ([`World`]): both services, up to two relays, the
//! collectors reading the topics, the pools on both databases and, in scenario 7, the
//! proxy; the small steps faults are made of (start, kill, wait until ready, read a
//! metric, measure a recovery) and the waits until everything settled. Every relay
//! process is a lifetime whose counters are read before it is killed or stopped (see
//! [`super::recovered`]).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sqlx::PgPool;
use testkit::proc::{command, Process};
use testkit::{free_port, Proxy, RelayConfig, RelayProcess};
use tokio::task::JoinHandle;

use super::catalog::Scenario;
use super::ctx::{Ctx, Names};
use super::recovered::{LifeId, Lifetimes, RelayCounters};
use crate::kafka::{Collector, Seen};
use crate::stack::Service;
use crate::truth::{self, TruthEvent};

/// How long a service or a relay may take to answer its readiness probe.
pub(super) const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Bound on one recovery measurement.
const RECOVERY_BOUND: Duration = Duration::from_secs(600);
/// Bound on reading a relay's counters before a kill: the kill must stay close to the
/// moment the fault planned.
const COUNTERS_READ_TIMEOUT: Duration = Duration::from_secs(1);

/// The load window faults are placed in.
#[derive(Debug, Clone, Copy)]
pub(super) struct Window {
    pub(super) start: Instant,
    /// Its planned length in seconds.
    pub(super) secs: f64,
}

impl Window {
    pub(super) fn new(start: Instant, length: Duration) -> Window {
        Window {
            start,
            secs: length.as_secs_f64(),
        }
    }

    /// The moment a fraction `f` of the window has passed.
    pub(super) fn at(&self, f: f64) -> Instant {
        self.start + Duration::from_secs_f64(self.secs * f)
    }
}

/// The events read from the truth slots so far. A slot read again after a failed
/// advance (or a promoted server's synced copy, a little behind) gives some events
/// twice: each is kept once.
#[derive(Debug, Default)]
pub(super) struct TruthRead {
    ids: std::collections::HashSet<String>,
    events: Vec<(&'static str, TruthEvent)>,
}

impl TruthRead {
    fn keep(&mut self, source: &'static str, events: Vec<TruthEvent>) {
        for e in events {
            if self.ids.insert(e.id.clone()) {
                self.events.push((source, e));
            }
        }
    }
}

/// A scenario's running processes and connections.
pub(super) struct World<'a> {
    pub(super) ctx: &'a Ctx,
    pub(super) sc: Scenario,
    pub(super) names: &'a Names,
    pub(super) users_pool: PgPool,
    pub(super) tx_pool: PgPool,
    /// Reads `read_committed`: the verdict, recovery times, scenario 5's evidence.
    pub(super) collector: Collector,
    /// Reads `read_uncommitted`: aborted copies too, for the informational column.
    pub(super) uncommitted: Collector,
    pub(super) user_svc: Option<Process>,
    pub(super) tx_svc: Option<Process>,
    pub(super) user_url: String,
    pub(super) tx_url: String,
    pub(super) relays: [Option<RelayProcess>; 2],
    /// The lifetime of the process in `relays[i]`.
    pub(super) relay_lives: [Option<LifeId>; 2],
    /// Every relay process of the scenario and the counters each showed last.
    pub(super) lifetimes: Lifetimes,
    pub(super) relay_ports: [u16; 2],
    pub(super) relay_env: Vec<(String, String)>,
    pub(super) recoveries: Vec<JoinHandle<Option<Duration>>>,
    /// Message capture: per fault, when it ended and the WAL position then (`None`
    /// when the server did not answer); the recovery is computed from the truth at the
    /// end (see [`World::begin_recovery`]).
    pub(super) recoveries_at: Vec<(Instant, Option<u64>)>,
    /// Message capture: the truth slots exist (see [`World::create_truth_slots`]).
    pub(super) truth_slots: bool,
    /// Message capture: every event read from the truth slots so far, each once.
    pub(super) truth_read: std::sync::Mutex<TruthRead>,
    /// Where the services, the relay and the drill's own pools connect: PostgreSQL, or
    /// in scenario 7 the proxy that plays the virtual IP.
    pub(super) pg_port: u16,
    pub(super) proxy: Option<Proxy>,
    /// When the load's own deadline passes: after it, nothing new reaches the relay.
    pub(super) load_deadline: Instant,
}

impl World<'_> {
    /// The log file of one of the scenario's processes.
    pub(super) fn log(&self, what: &str) -> PathBuf {
        self.ctx
            .log_dir
            .join(format!("s{}-{what}.log", self.sc.number()))
    }

    pub(super) async fn start_services(&mut self) -> anyhow::Result<()> {
        let stack = &self.ctx.stack;
        // Each service as its own role (the admin on the plain stack), over TLS on the
        // secured one.
        let db = |name: &str, service: Service| -> anyhow::Result<Vec<(String, String)>> {
            let (user, password) = stack.service_role(service)?;
            let mut env = vec![
                ("DB_HOST".to_string(), stack.host().to_string()),
                ("DB_PORT".to_string(), self.pg_port.to_string()),
                ("DB_USER".to_string(), user),
                ("DB_PASSWORD".to_string(), password),
                ("DB_NAME".to_string(), name.to_string()),
                ("RUST_LOG".to_string(), "info,tower_http=warn".to_string()),
                // `table` or `messages:<prefix>`: the relays' sources say the same.
                ("OUTBOX_CAPTURE".to_string(), self.ctx.capture.to_string()),
            ];
            for (k, v) in stack.pg_tls() {
                env.push((format!("DB_{}", k.to_uppercase()), v));
            }
            Ok(env)
        };
        let user_port = free_port();
        let mut env = db(&self.names.users_db, Service::Users)?;
        env.push(("SERVER_PORT".into(), user_port.to_string()));
        let mut user = Process::spawn(
            "user-service",
            command(&self.ctx.bins.user_service, &[], &env),
            self.log("user-service"),
        )?;
        let tx_port = free_port();
        let mut env = db(&self.names.tx_db, Service::Transactions)?;
        for (k, v) in stack.kafka_security("transaction_service")? {
            env.push((format!("KAFKA_{}", k.replace('.', "_").to_uppercase()), v));
        }
        env.extend([
            ("SERVER_HOST".to_string(), "127.0.0.1".to_string()),
            ("SERVER_PORT".to_string(), tx_port.to_string()),
            ("KAFKA_BROKERS".to_string(), stack.brokers()),
            ("KAFKA_GROUP_ID".to_string(), self.names.group.clone()),
            (
                "USER_EVENTS_TOPIC".to_string(),
                self.names.user_topic.clone(),
            ),
            (
                "TRANSACTION_EVENTS_TOPIC".to_string(),
                self.names.tx_topic.clone(),
            ),
        ]);
        let mut tx = Process::spawn(
            "transaction-service",
            command(&self.ctx.bins.transaction_service, &[], &env),
            self.log("transaction-service"),
        )?;
        self.user_url = format!("http://127.0.0.1:{user_port}");
        self.tx_url = format!("http://127.0.0.1:{tx_port}");
        let http = &self.ctx.http;
        user.wait_http_ok(http, &format!("{}/readyz", self.user_url), READY_TIMEOUT)
            .await?;
        tx.wait_http_ok(http, &format!("{}/readyz", self.tx_url), READY_TIMEOUT)
            .await?;
        self.user_svc = Some(user);
        self.tx_svc = Some(tx);
        // The services have created their outbox tables: the relay's role may read them.
        stack
            .grant_relay(&[&self.names.users_db, &self.names.tx_db])
            .await
            .context("granting the relay its rights")?;
        Ok(())
    }

    /// Starts relay instance `i` (0 = "a", 1 = "b"); returns when it was started.
    pub(super) fn start_relay(&mut self, i: usize) -> anyhow::Result<Instant> {
        let name = ["relay-a", "relay-b"][i];
        let p = RelayConfig::new(&self.ctx.bins.relay)
            .named(name)
            .envs(self.relay_env.iter().cloned())
            .set(
                "RELAY_ADMIN__LISTEN",
                format!("127.0.0.1:{}", self.relay_ports[i]),
            )
            .log_to(self.log(name))
            .spawn()?;
        self.relays[i] = Some(p);
        // A process replaced without a kill first (dropped: SIGKILL) ended unread.
        if let Some(id) = self.relay_lives[i].replace(self.lifetimes.begin()) {
            self.lifetimes.end(id, None);
        }
        Ok(Instant::now())
    }

    /// kill -9 of relay `i`; its counters are read first, as they die with it.
    pub(super) async fn kill_relay(&mut self, i: usize) {
        if let Some(p) = self.take_relay(i).await {
            p.kill();
        }
    }

    /// Takes relay `i` out of the world to kill or stop it, ending its lifetime with
    /// a last read of its counters.
    pub(super) async fn take_relay(&mut self, i: usize) -> Option<RelayProcess> {
        let last = self.relay_counters(i).await;
        if let Some(id) = self.relay_lives[i].take() {
            self.lifetimes.end(id, last);
        }
        self.relays[i].take()
    }

    /// Relay `i`'s counters now; `None` when it does not run or answer in time.
    async fn relay_counters(&self, i: usize) -> Option<RelayCounters> {
        let relay = self.relays[i].as_ref()?;
        let m = tokio::time::timeout(COUNTERS_READ_TIMEOUT, relay.metrics())
            .await
            .ok()?
            .ok()?;
        Some(RelayCounters::read(&m))
    }

    /// The sum of relay `i`'s series of `name` with `labels`; `None` when it does not
    /// run or answer.
    pub(super) async fn relay_metric(
        &self,
        i: usize,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Option<f64> {
        let relay = self.relays[i].as_ref()?;
        relay.metrics().await.ok()?.sum(name, labels)
    }

    pub(super) async fn relay_ready(&self, i: usize) -> bool {
        match &self.relays[i] {
            Some(r) => r.is_ready().await,
            None => false,
        }
    }

    pub(super) async fn wait_relay_ready(&mut self, i: usize) -> anyhow::Result<()> {
        let p = self.relays[i].as_mut().context("relay not running")?;
        p.wait_ready(READY_TIMEOUT).await
    }

    pub(super) async fn wait_healthy(&mut self, i: usize) -> anyhow::Result<()> {
        let p = self.relays[i].as_mut().context("relay not running")?;
        p.wait_healthy(READY_TIMEOUT).await
    }

    /// Outbox ids still PENDING in both databases.
    pub(super) async fn pending_ids(&self) -> anyhow::Result<Vec<String>> {
        let mut ids = Vec::new();
        for pool in [&self.users_pool, &self.tx_pool] {
            let rows: Vec<(String,)> =
                sqlx::query_as("select id::text from outbox where status = 'PENDING'")
                    .fetch_all(pool)
                    .await?;
            ids.extend(rows.into_iter().map(|(i,)| i));
        }
        Ok(ids)
    }

    /// The relays' source names with the pool and database of each.
    pub(super) fn sources(&self) -> [(&'static str, &PgPool, &str); 2] {
        [
            ("users_db", &self.users_pool, self.names.users_db.as_str()),
            ("transaction_db", &self.tx_pool, self.names.tx_db.as_str()),
        ]
    }

    /// Message capture: creates the drill's truth slot on both databases (a failover
    /// slot when `failover`), once the services migrated and the relay streams, before
    /// the load. Dropped with the scenario's other slots.
    pub(super) async fn create_truth_slots(&mut self, failover: bool) -> anyhow::Result<()> {
        for (_, pool, db) in self.sources() {
            truth::create(pool, &truth::slot_name(db), failover).await?;
        }
        self.truth_slots = true;
        Ok(())
    }

    /// Message capture: every event committed in both databases since the truth slots
    /// were made, with its source, in commit order per source. Each call reads what is
    /// new, keeps it, then advances the slots past it (see [`truth::advance`]).
    pub(super) async fn truth(&self) -> anyhow::Result<Vec<(&'static str, TruthEvent)>> {
        let prefix = self
            .ctx
            .message_prefix()
            .context("the truth slots serve message capture only")?;
        anyhow::ensure!(self.truth_slots, "the truth slots were not created");
        for (source, pool, db) in self.sources() {
            let slot = truth::slot_name(db);
            let peeked = truth::peek(pool, &slot, prefix).await?;
            self.truth_read
                .lock()
                .expect("truth lock")
                .keep(source, peeked.events);
            if let Some(lsn) = peeked.last_commit_end {
                truth::advance(pool, &slot, lsn).await?;
            }
        }
        Ok(self.truth_read.lock().expect("truth lock").events.clone())
    }

    /// Message capture: how many committed events the collector has not read yet.
    pub(super) async fn undelivered(&self) -> anyhow::Result<usize> {
        let ids: Vec<String> = self.truth().await?.into_iter().map(|(_, e)| e.id).collect();
        Ok(ids.len() - self.collector.seen().read_of(&ids).len())
    }

    /// Starts measuring a recovery: from now until every row pending now is in Kafka.
    /// With message capture there is no PENDING row: the WAL position now is kept, and
    /// at the end the recovery is the time until every event whose transaction
    /// committed before it had been read ([`truth::recovery`]).
    pub(super) async fn begin_recovery(&mut self) {
        let start = Instant::now();
        if self.ctx.message_prefix().is_some() {
            let lsn = loop {
                match truth::current_lsn(&self.users_pool).await {
                    Ok(lsn) => break Some(lsn),
                    Err(_) if start.elapsed() < Duration::from_secs(30) => {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    Err(_) => break None,
                }
            };
            self.recoveries_at.push((start, lsn));
            return;
        }
        let ids = loop {
            match self.pending_ids().await {
                Ok(ids) => break ids,
                Err(_) if start.elapsed() < Duration::from_secs(30) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(_) => break Vec::new(),
            }
        };
        let seen: Seen = self.collector.seen();
        self.recoveries.push(tokio::spawn(async move {
            loop {
                if seen.has_all(&ids) {
                    return Some(start.elapsed());
                }
                if start.elapsed() > RECOVERY_BOUND {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    /// After faults: make sure a relay runs (the one that should be active).
    pub(super) async fn ensure_relay_running(&mut self) -> anyhow::Result<()> {
        for i in 0..2 {
            if let Some(p) = self.relays[i].as_mut() {
                if let Some(status) = p.exited() {
                    bail!(
                        "relay {} exited by itself with {status}; see {}",
                        ["a", "b"][i],
                        p.log().display()
                    );
                }
            }
        }
        if self.relays.iter().all(Option::is_none) {
            self.start_relay(0)?;
        }
        Ok(())
    }

    pub(super) async fn count(&self, pool: &PgPool, sql: &str) -> anyhow::Result<i64> {
        Ok(sqlx::query_as::<_, (i64,)>(sql).fetch_one(pool).await?.0)
    }

    /// The numbers that must settle: (pending outbox users, pending outbox tx, pending
    /// transactions, users, accounts).
    async fn settle_state(&self) -> anyhow::Result<[i64; 5]> {
        let pending = "select count(*) from outbox where status = 'PENDING'";
        Ok([
            self.count(&self.users_pool, pending).await?,
            self.count(&self.tx_pool, pending).await?,
            self.count(
                &self.tx_pool,
                "select count(*) from transactions where status = 'PENDING'",
            )
            .await?,
            self.count(&self.users_pool, "select count(*) from users")
                .await?,
            self.count(&self.tx_pool, "select count(*) from accounts")
                .await?,
        ])
    }

    /// Waits until the outbox is PROCESSED, every transaction settled and every user has
    /// an account; with message capture, until every committed event was read from Kafka
    /// instead of the outbox (the truth is peeked at most every 500 ms).
    pub(super) async fn wait_settled(&self, timeout: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        let mut last;
        loop {
            match self.settle_state().await {
                Ok([0, 0, 0, users, accounts])
                    if users == accounts && self.ctx.message_prefix().is_some() =>
                {
                    match self.undelivered().await {
                        Ok(0) => return Ok(start.elapsed()),
                        Ok(n) => last = format!("{n} committed events not read from Kafka yet"),
                        Err(e) => last = format!("{e:#}"),
                    }
                    tokio::time::sleep(Duration::from_millis(400)).await;
                }
                Ok([0, 0, 0, users, accounts]) if users == accounts => return Ok(start.elapsed()),
                Ok([pu, pt, ptx, users, accounts]) => {
                    last = format!(
                        "PENDING outbox rows: {pu} (users_db) + {pt} (transaction_db); PENDING transactions: {ptx}; users {users}, accounts {accounts}"
                    )
                }
                Err(e) => last = format!("{e:#}"),
            }
            if start.elapsed() > timeout {
                return Err(last);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the outbox is PROCESSED; with message capture, until every
    /// committed event was read from Kafka.
    pub(super) async fn wait_outbox_processed(&self, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.ctx.message_prefix().is_some() {
                if let Ok(0) = self.undelivered().await {
                    return true;
                }
            } else if let Ok([0, 0, ..]) = self.settle_state().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, commit_lsn: u64) -> TruthEvent {
        TruthEvent {
            id: id.into(),
            aggregate_type: "user".into(),
            aggregate_id: id.into(),
            event_type: "UserCreated".into(),
            commit_lsn,
        }
    }

    #[test]
    fn an_event_read_twice_from_the_truth_is_kept_once_in_first_read_order() {
        let mut t = TruthRead::default();
        t.keep("users_db", vec![event("a", 1), event("b", 2)]);
        // The slot was not advanced (or a synced copy was behind): read again.
        t.keep("users_db", vec![event("b", 2), event("c", 3)]);
        t.keep("transaction_db", vec![event("d", 4)]);
        let got: Vec<(&str, &str)> = t.events.iter().map(|(s, e)| (*s, e.id.as_str())).collect();
        assert_eq!(
            got,
            [
                ("users_db", "a"),
                ("users_db", "b"),
                ("users_db", "c"),
                ("transaction_db", "d")
            ]
        );
    }
}
