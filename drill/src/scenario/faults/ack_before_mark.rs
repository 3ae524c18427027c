//! Scenario 5: a crash between Kafka's ack and PROCESSED. The relay marks rows only
//! every 3 s (see the scenario's relay settings), so rows stay PENDING after Kafka
//! acked them; 3 times or more the drill waits until the collector has read rows that
//! are still PENDING (and that no earlier kill counted), kills -9 and counts them with
//! the relay dead. Those rows must end PROCESSED.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::super::outcome::{Check, Outcome};
use super::super::world::{Window, World};
use crate::kafka::Seen;

/// How long a kill waits for freshly acked, unmarked rows before it kills anyway.
const ACKED_WAIT: Duration = Duration::from_secs(15);

pub(super) async fn run(
    w: &mut World<'_>,
    window: Window,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let n = w.ctx.plan.ack_kills.max(1);
    // Per kill: rows in Kafka yet PENDING that no earlier kill counted, and
    // how many rows were PENDING in all.
    let mut hits: Vec<(usize, usize)> = Vec::new();
    let mut counted: HashSet<String> = HashSet::new();
    let seen = w.collector.seen();
    for k in 0..n {
        let f = 0.1 + 0.8 * (k as f64 + 0.5) / n as f64;
        tokio::time::sleep_until(window.at(f).into()).await;
        wait_for_acked_unmarked(w, &seen, &counted).await;
        hits.push(kill_with_evidence(w, &seen, &mut counted).await?);
    }
    out.notes.push(format!(
        "relay run with pipeline.mark_interval_ms = 3000; kill -9 {} times, each while rows were in Kafka but still PENDING (acked-unmarked rows / PENDING rows at the kill): {}",
        hits.len(),
        hits.iter().map(|(a, p)| format!("{a}/{p}")).collect::<Vec<_>>().join(", ")
    ));
    let hit = hits.iter().filter(|(a, _)| *a > 0).count();
    out.checks.push(Check {
        name: "every crash landed between ack and PROCESSED".into(),
        ok: hit == hits.len(),
        detail: format!(
            "{hit} of {} kills had freshly acked, unmarked rows",
            hits.len()
        ),
    });
    Ok(())
}

/// Waits (at most [`ACKED_WAIT`]) until Kafka holds rows the relay acked and has not
/// marked yet: fresh ones, not the replayed rows an earlier kill left behind.
async fn wait_for_acked_unmarked(w: &World<'_>, seen: &Seen, counted: &HashSet<String>) {
    let wait = Instant::now();
    while wait.elapsed() < ACKED_WAIT {
        match w.pending_ids().await {
            Ok(ids) if seen.read_of(&ids).iter().any(|id| !counted.contains(id)) => break,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Kills relay `a`, counts with it dead the fresh acked-unmarked rows and the PENDING
/// ones, then restarts it and starts measuring the recovery.
async fn kill_with_evidence(
    w: &mut World<'_>,
    seen: &Seen,
    counted: &mut HashSet<String>,
) -> anyhow::Result<(usize, usize)> {
    w.kill_relay(0).await;
    let ids = w.pending_ids().await.unwrap_or_default();
    let fresh: Vec<String> = seen
        .read_of(&ids)
        .into_iter()
        .filter(|id| !counted.contains(id))
        .collect();
    let hit = (fresh.len(), ids.len());
    counted.extend(fresh);
    w.start_relay(0)?;
    w.begin_recovery().await;
    Ok(hit)
}
