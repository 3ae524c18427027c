//! Beside the stream: heartbeats written to the source (lag in seconds stays truthful
//! and a quiet outbox still advances the slot), the WAL position and lag in bytes, and
//! the watchdog's voice: a WARN every 30 s while a source is stalled or halted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::config::SourceSettings;
use crate::metrics::Metrics;
use crate::source;
use crate::status::{SourceStatus, State};

/// Runs for one session: heartbeats every `every`, lag in bytes every second.
pub async fn heartbeats(
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
        if client
            .as_ref()
            .is_none_or(tokio_postgres::Client::is_closed)
        {
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

/// Runs for the life of a source: says, every 30 s, what keeps it from progressing.
pub async fn watch(status: Arc<SourceStatus>, stall_timeout: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_warn: Option<Instant> = None;
    loop {
        tick.tick().await;
        let snap = status.snapshot(Instant::now(), super::now_unix_micros(), stall_timeout);
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
