//! Load through both HTTP services, and the SQL client whose transactions roll back.
//!
//! Every loop is bounded twice: by a request count and by a hard deadline, and it stops
//! earlier when the scenario says so. Requests go to 127.0.0.1 only.
//!
//! - sign-ups on user-service (`POST /users`); a share of them reuse an address and
//!   must fail with 409, their transaction rolled back;
//! - deposits and transfers on transaction-service once accounts exist (accounts open
//!   from `UserCreated` events, so they appear only when the relay delivers); a share
//!   name an unknown account and must fail with 422. Transport errors and 5xx are
//!   retried with the same `Idempotency-Key`, as a careful client would;
//! - optionally, per database, a client that writes events with the event type
//!   [`ROLLED_BACK_EVENT`] and rolls back (explicitly, or after an error): outbox rows,
//!   or with message capture one `pg_logical_emit_message(true, prefix, envelope)` per
//!   event, as the services write them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// The event type of every outbox row the rollback client writes; none may reach Kafka.
pub const ROLLED_BACK_EVENT: &str = "DrillRolledBack";

/// A small deterministic generator (SplitMix64): no dependency, reproducible by seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// A child generator for one task.
    pub fn fork(&mut self) -> Rng {
        Rng(self.next_u64())
    }
}

/// How hard to push.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Sign-ups per second, over all sign-up workers.
    pub signups_per_s: f64,
    /// Deposits + transfers per second, over all transaction workers.
    pub transactions_per_s: f64,
    pub signup_workers: usize,
    pub transaction_workers: usize,
    /// Share of requests made to fail (duplicate e-mail, unknown account).
    pub failing_share: f64,
    /// Run the rollback client on both databases.
    pub rollbacks: bool,
}

/// What the load tasks need.
pub struct Target {
    pub http: reqwest::Client,
    pub user_url: String,
    pub tx_url: String,
    /// Makes e-mail addresses unique per run and scenario.
    pub tag: String,
    pub users_pool: PgPool,
    pub tx_pool: PgPool,
    /// With message capture, the prefix the rollback client's messages carry; `None`:
    /// it writes outbox rows.
    pub message_prefix: Option<String>,
}

struct Shared {
    target: Target,
    stop: AtomicBool,
    hard_deadline: Instant,
    failing_share: f64,
    accounts: RwLock<Vec<Uuid>>,
    stats: Mutex<BTreeMap<String, u64>>,
    rolled_back_ids: Mutex<Vec<String>>,
    rolled_back_txns: AtomicU64,
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || Instant::now() > self.hard_deadline
    }

    fn count(&self, label: String) {
        *self
            .stats
            .lock()
            .expect("stats lock")
            .entry(label)
            .or_default() += 1;
    }
}

/// What the load did.
#[derive(Debug, Default)]
pub struct LoadSummary {
    /// `"<what> <status>"` → count, e.g. `"sign-up 201"`, `"transfer 202"`.
    pub stats: BTreeMap<String, u64>,
    /// Ids of outbox rows written in transactions that rolled back.
    pub rolled_back_ids: Vec<String>,
    pub rolled_back_txns: u64,
}

impl LoadSummary {
    /// One line for the report, e.g. `sign-up 201: 140, sign-up 409: 7, ...`.
    pub fn describe(&self) -> String {
        self.stats
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The running load.
pub struct Load {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts every loop; none runs past `hard_limit` from now.
    pub fn start(target: Target, cfg: &LoadConfig, hard_limit: Duration, rng: &mut Rng) -> Load {
        let shared = Arc::new(Shared {
            target,
            stop: AtomicBool::new(false),
            hard_deadline: Instant::now() + hard_limit,
            failing_share: cfg.failing_share,
            accounts: RwLock::new(Vec::new()),
            stats: Mutex::new(BTreeMap::new()),
            rolled_back_ids: Mutex::new(Vec::new()),
            rolled_back_txns: AtomicU64::new(0),
        });
        let mut tasks = Vec::new();
        let bound = |rate: f64, workers: usize| {
            let per_worker = rate / workers.max(1) as f64;
            let period = Duration::from_secs_f64(1.0 / per_worker.max(0.01));
            let max = (per_worker * hard_limit.as_secs_f64()).ceil() as u64 + 1;
            (period, max)
        };
        let (period, max) = bound(cfg.signups_per_s, cfg.signup_workers);
        for w in 0..cfg.signup_workers {
            tasks.push(tokio::spawn(signups(
                shared.clone(),
                w,
                period,
                max,
                rng.fork(),
            )));
        }
        let (period, max) = bound(cfg.transactions_per_s, cfg.transaction_workers);
        for _ in 0..cfg.transaction_workers {
            tasks.push(tokio::spawn(transactions(
                shared.clone(),
                period,
                max,
                rng.fork(),
            )));
        }
        tasks.push(tokio::spawn(watch_accounts(shared.clone())));
        if cfg.rollbacks {
            let max = (200.0 * hard_limit.as_secs_f64()) as u64;
            let users = shared.target.users_pool.clone();
            let txs = shared.target.tx_pool.clone();
            tasks.push(tokio::spawn(rollbacks(
                shared.clone(),
                users,
                "user",
                max,
                rng.fork(),
            )));
            tasks.push(tokio::spawn(rollbacks(
                shared.clone(),
                txs,
                "transaction",
                max,
                rng.fork(),
            )));
        }
        Load { shared, tasks }
    }

    /// How many accounts transaction-service has opened so far.
    pub fn accounts(&self) -> usize {
        self.shared.accounts.read().expect("accounts lock").len()
    }

    /// Stops every loop and waits for them (each request is bounded by its timeout).
    pub async fn stop(self) -> LoadSummary {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        LoadSummary {
            stats: std::mem::take(&mut *self.shared.stats.lock().expect("stats lock")),
            rolled_back_ids: std::mem::take(
                &mut *self.shared.rolled_back_ids.lock().expect("ids lock"),
            ),
            rolled_back_txns: self.shared.rolled_back_txns.load(Ordering::Relaxed),
        }
    }
}

fn ticker(period: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval(period);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

fn status_label(what: &str, r: &Result<reqwest::Response, reqwest::Error>) -> String {
    match r {
        Ok(resp) => format!("{what} {}", resp.status().as_u16()),
        Err(e) if e.is_timeout() => format!("{what} timeout"),
        Err(_) => format!("{what} connection error"),
    }
}

async fn signups(s: Arc<Shared>, worker: usize, period: Duration, max: u64, mut rng: Rng) {
    let mut mine: Vec<String> = Vec::new();
    let mut tick = ticker(period);
    let url = format!("{}/users", s.target.user_url);
    for i in 0..max {
        tick.tick().await;
        if s.stopped() {
            break;
        }
        let reuse = !mine.is_empty() && rng.chance(s.failing_share);
        let email = if reuse {
            mine[rng.below(mine.len() as u64) as usize].to_uppercase()
        } else {
            format!("drill-{}-w{worker}-{i}@example.com", s.target.tag)
        };
        let r = s
            .target
            .http
            .post(&url)
            .json(&serde_json::json!({"email": email, "password": "drill password 123"}))
            .send()
            .await;
        let what = if reuse {
            "sign-up (taken e-mail)"
        } else {
            "sign-up"
        };
        if !reuse && matches!(&r, Ok(resp) if resp.status().as_u16() == 201) {
            mine.push(email);
        }
        s.count(status_label(what, &r));
    }
}

fn amount(rng: &mut Rng, lo_cents: u64, hi_cents: u64) -> String {
    let c = lo_cents + rng.below(hi_cents - lo_cents + 1);
    format!("{}.{:02}", c / 100, c % 100)
}

async fn transactions(s: Arc<Shared>, period: Duration, max: u64, mut rng: Rng) {
    let mut tick = ticker(period);
    let url = format!("{}/api/v1/transactions", s.target.tx_url);
    for _ in 0..max {
        tick.tick().await;
        if s.stopped() {
            break;
        }
        let pick = {
            let accounts = s.accounts.read().expect("accounts lock");
            if accounts.len() < 2 {
                None
            } else {
                let n = accounts.len() as u64;
                let a = accounts[rng.below(n) as usize];
                let mut b = accounts[rng.below(n) as usize];
                while b == a {
                    b = accounts[rng.below(n) as usize];
                }
                Some((a, b))
            }
        };
        let Some((a, b)) = pick else { continue };
        let roll = rng.unit();
        let (what, body) = if roll < s.failing_share {
            (
                "transfer (unknown account)",
                serde_json::json!({"amount": amount(&mut rng, 100, 5000), "fromUserId": a, "toUserId": Uuid::now_v7(), "description": "drill"}),
            )
        } else if roll < 0.3 {
            (
                "deposit",
                serde_json::json!({"amount": amount(&mut rng, 1000, 20000), "toUserId": b, "description": "drill deposit"}),
            )
        } else {
            (
                "transfer",
                serde_json::json!({"amount": amount(&mut rng, 100, 8000), "fromUserId": a, "toUserId": b, "description": "drill transfer"}),
            )
        };
        let key = Uuid::new_v4().to_string();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let r = s
                .target
                .http
                .post(&url)
                .header("Idempotency-Key", &key)
                .json(&body)
                .send()
                .await;
            let retry = match &r {
                Ok(resp) => resp.status().is_server_error(),
                Err(_) => true,
            };
            let label = status_label(what, &r);
            if retry && attempt < 3 && !s.stopped() {
                s.count(format!("{label} (retried)"));
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                continue;
            }
            s.count(label);
            break;
        }
    }
}

/// Keeps the list of open accounts fresh (errors, e.g. during a restart, are skipped).
async fn watch_accounts(s: Arc<Shared>) {
    while !s.stopped() {
        if let Ok(rows) = sqlx::query_as::<_, (Uuid,)>("select user_id from accounts")
            .fetch_all(&s.target.tx_pool)
            .await
        {
            *s.accounts.write().expect("accounts lock") = rows.into_iter().map(|(u,)| u).collect();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Writes outbox rows that never commit: most transactions roll back explicitly, some
/// after a failing statement, some are large (the decoder may spill them to disk).
async fn rollbacks(
    s: Arc<Shared>,
    pool: PgPool,
    aggregate_type: &'static str,
    max: u64,
    mut rng: Rng,
) {
    for _ in 0..max {
        if s.stopped() {
            break;
        }
        let n = if rng.chance(0.03) {
            500
        } else {
            1 + rng.below(4) as usize
        };
        let ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
        s.rolled_back_ids
            .lock()
            .expect("ids lock")
            .extend(ids.iter().map(Uuid::to_string));
        let hold = Duration::from_millis(rng.below(30));
        let fail_first = rng.chance(0.25);
        let r: Result<(), sqlx::Error> = async {
            let mut tx = pool.begin().await?;
            match &s.target.message_prefix {
                None => {
                    sqlx::query(
                        "insert into outbox (id, aggregate_type, aggregate_id, event_type, payload) \
                         select id, $2, id::text, $3, jsonb_build_object('drill', 'rolled back') \
                         from unnest($1::uuid[]) as id",
                    )
                    .bind(&ids)
                    .bind(aggregate_type)
                    .bind(ROLLED_BACK_EVENT)
                    .execute(&mut *tx)
                    .await?;
                }
                Some(prefix) => {
                    sqlx::query(
                        "select pg_logical_emit_message(true, $1, m) \
                         from unnest($2::bytea[]) with ordinality as e (m, n) order by n",
                    )
                    .bind(prefix)
                    .bind(rolled_back_envelopes(&ids, aggregate_type))
                    .execute(&mut *tx)
                    .await?;
                }
            }
            // Stay open while other transactions commit around this one.
            tokio::time::sleep(hold).await;
            if fail_first {
                let _ = sqlx::query("select 1 / 0").execute(&mut *tx).await;
            }
            tx.rollback().await
        }
        .await;
        match r {
            Ok(()) => {
                s.rolled_back_txns.fetch_add(1, Ordering::Relaxed);
                s.count("rolled-back transaction".into());
            }
            Err(_) => s.count("rolled-back transaction (connection error)".into()),
        }
        tokio::time::sleep(Duration::from_millis(5 + rng.below(15))).await;
    }
}

/// The envelopes of the rollback client's events with `ids` (aggregate id = event id),
/// as the rows it writes with the table carry them.
fn rolled_back_envelopes(ids: &[Uuid], aggregate_type: &str) -> Vec<Vec<u8>> {
    ids.iter()
        .map(|id| {
            let event = outbox::NewEvent::new(
                aggregate_type,
                id,
                ROLLED_BACK_EVENT,
                &serde_json::json!({"drill": "rolled back"}),
            )
            .expect("a JSON object serialises");
            outbox::message::encode(*id, &event).expect("the drill's event keeps the outbox rules")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolled_back_envelopes_decode_to_the_rows_the_table_would_hold() {
        let ids = [Uuid::now_v7(), Uuid::now_v7()];
        let envs = rolled_back_envelopes(&ids, "user");
        assert_eq!(envs.len(), 2);
        for (id, env) in ids.iter().zip(&envs) {
            let e = outbox::message::decode(env).unwrap();
            assert_eq!(e.id, *id);
            assert_eq!(e.aggregate_type, "user");
            assert_eq!(e.aggregate_id, id.to_string());
            assert_eq!(e.event_type, ROLLED_BACK_EVENT);
        }
    }

    #[test]
    fn the_generator_is_reproducible_and_stays_in_range() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        for _ in 0..1000 {
            assert!(a.below(10) < 10);
            let u = a.unit();
            assert!((0.0..1.0).contains(&u));
        }
    }

    #[test]
    fn amounts_have_two_fraction_digits_within_bounds() {
        let mut r = Rng::new(1);
        for _ in 0..1000 {
            let a = amount(&mut r, 100, 8000);
            let (units, cents) = a.split_once('.').unwrap();
            assert_eq!(cents.len(), 2);
            let v: u64 = units.parse::<u64>().unwrap() * 100 + cents.parse::<u64>().unwrap();
            assert!((100..=8000).contains(&v), "{a}");
        }
    }
}
