//! Beside the stream: heartbeats written to the source (lag in seconds stays truthful
//! and a quiet outbox still advances the slot), the WAL position and lag in bytes,
//! retention of PROCESSED rows, and the watchdog's voice: a WARN every 30 s while a
//! source is stalled or halted (the watchdog's rule is [`crate::status::Watchdog`]).
//! The audit of the table against the slot runs beside the session too, in a room of its
//! own ([`super::audit`]).
//!
//! Each task has a connection of its own and never holds the stream back; [`Tasks`]
//! ends them with their owner (a session, or the source's supervisor).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::config::{PipelineSettings, SourceSettings};
use crate::metrics::Metrics;
use crate::source;
use crate::status::{now_unix_micros, SourceStatus, State};

/// Tasks that run beside their owner: aborted when this is dropped, so a failed session
/// leaves nothing running.
pub struct Tasks(Vec<JoinHandle<()>>);

impl Tasks {
    pub fn new(tasks: Vec<JoinHandle<()>>) -> Self {
        Self(tasks)
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// The tasks of one streaming session: heartbeats and lag, and retention when it is on
/// (never under `marking = "none"`: nothing says a row was published).
pub fn beside_session(
    source: &SourceSettings,
    pipeline: &PipelineSettings,
    metrics: &Metrics,
    status: &Arc<SourceStatus>,
    going_away: &Arc<Notify>,
) -> Tasks {
    let mut tasks = vec![tokio::spawn(heartbeats(
        source.clone(),
        pipeline.heartbeat_interval(),
        metrics.clone(),
        status.clone(),
        going_away.clone(),
    ))];
    if pipeline.retention_seconds > 0 && source.marks_rows() {
        tasks.push(tokio::spawn(retention(
            source.clone(),
            pipeline.retention_seconds,
            metrics.clone(),
        )));
    }
    Tasks(tasks)
}

/// The task of a source for its whole life: the watchdog's voice.
pub fn beside_source(status: &Arc<SourceStatus>, stall_timeout: Duration) -> Tasks {
    Tasks(vec![tokio::spawn(watch(status.clone(), stall_timeout))])
}

/// Heartbeats every `every`, lag in bytes every second.
async fn heartbeats(
    source: SourceSettings,
    every: Duration,
    metrics: Metrics,
    status: Arc<SourceStatus>,
    going_away: Arc<Notify>,
) {
    let name = source.name.clone();
    let labels = [name.as_str()];
    let slot = source.slot_name();
    let mut client = None;
    let mut tick = tokio::time::interval(every.min(Duration::from_secs(1)));
    let mut last_beat = Instant::now() - every;
    loop {
        tick.tick().await;
        if client.as_ref().is_none_or(Client::is_closed) {
            client = match source::connect(&source).await {
                Ok(c) => Some(c),
                Err(e) => {
                    if e.server_going_away() {
                        going_away.notify_one();
                    }
                    None
                }
            };
        }
        let Some(c) = client.as_ref() else { continue };
        if last_beat.elapsed() >= every {
            last_beat = Instant::now();
            match source::emit_heartbeat(c).await {
                Ok(()) => status.heartbeat_written(Instant::now()),
                Err(e) => tracing::debug!(source = %name, error = %e, "heartbeat failed"),
            }
        }
        if let (Ok(wal), Ok(Some(st))) = (
            source::current_wal_lsn(c).await,
            source::slot_state(c, &slot).await,
        ) {
            metrics
                .server_wal_lsn
                .with_label_values(&labels)
                .set(wal.as_u64() as i64);
            if let Some(confirmed) = st.confirmed_flush {
                metrics
                    .lag_bytes
                    .with_label_values(&labels)
                    .set(wal.as_u64().saturating_sub(confirmed.as_u64()) as i64);
            }
        }
    }
}

/// Deletes PROCESSED rows older than `retention_seconds`, 1000 at a time, every
/// `retention_seconds` (between 1 and 30 s), also under constant load.
async fn retention(source: SourceSettings, retention_seconds: u64, metrics: Metrics) {
    let every = Duration::from_secs(retention_seconds.clamp(1, 30));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut client: Option<Client> = None;
    loop {
        tick.tick().await;
        delete_expired(&source, retention_seconds, &metrics, &mut client).await;
    }
}

async fn delete_expired(
    source: &SourceSettings,
    retention_seconds: u64,
    metrics: &Metrics,
    client: &mut Option<Client>,
) {
    let name = &source.name;
    if client.as_ref().is_none_or(Client::is_closed) {
        match source::connect(source).await {
            Ok(c) => *client = Some(c),
            Err(_) => return,
        }
    }
    let c = client.as_ref().expect("connected above");
    let sql = format!(
        "delete from \"{s}\".\"{t}\" where id in (select id from \"{s}\".\"{t}\" \
         where status = 'PROCESSED' and processed_at < now() - make_interval(secs => $1) limit 1000)",
        s = source.schema,
        t = source.table
    );
    let age = retention_seconds as f64;
    loop {
        match c.execute(&sql, &[&age]).await {
            Ok(n) => {
                metrics
                    .retention_deleted
                    .with_label_values(&[name])
                    .inc_by(n);
                if n < 1000 {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(source = %name, error = %source::pg_reason(&e), "retention delete failed");
                *client = None;
                return;
            }
        }
    }
}

/// Says, every 30 s, what keeps the source from progressing.
async fn watch(status: Arc<SourceStatus>, stall_timeout: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_warn: Option<Instant> = None;
    loop {
        tick.tick().await;
        let snap = status.snapshot(Instant::now(), now_unix_micros(), stall_timeout);
        let due = last_warn.is_none_or(|t| t.elapsed() >= Duration::from_secs(30));
        match (&snap.state, snap.stall) {
            (State::Halted { reason }, _) if due => {
                tracing::error!(source = %status.name, reason = %reason, "source halted; fix the cause (see relay-cdc README, failure behaviour), then restart the relay");
                last_warn = Some(Instant::now());
            }
            (_, Some((stage, age))) if due => {
                tracing::warn!(
                    source = %status.name,
                    stage = %stage,
                    seconds = age.as_secs(),
                    lag_seconds = snap.lag_seconds,
                    "source stalled: no progress past this stage"
                );
                last_warn = Some(Instant::now());
            }
            (State::Halted { .. }, _) | (_, Some(_)) => {}
            _ => {
                if last_warn.take().is_some() {
                    tracing::info!(source = %status.name, state = snap.state.name(), "source progressing again");
                }
            }
        }
    }
}
