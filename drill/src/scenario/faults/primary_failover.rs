//! Scenario 7: the PostgreSQL primary killed and its standby promoted at 50 % of the
//! load. With slot sync on, the relay's slots must first be on the standby; the
//! proxy that plays the virtual IP then moves to the promoted server, and the time
//! until the relay streams from it is the takeover.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::super::outcome::Outcome;
use super::super::world::{Window, World, READY_TIMEOUT};

/// How long the standby may take to sync the relay's slots.
const SYNC_WAIT: Duration = Duration::from_secs(180);

pub(super) async fn run(
    w: &mut World<'_>,
    window: Window,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    tokio::time::sleep_until(window.at(0.5).into()).await;
    if w.ctx.slot_sync {
        wait_slots_synced(w, out).await?;
    }
    let killed = kill_primary_and_move_proxy(w, window, out).await?;
    w.begin_recovery().await;
    wait_streaming(w, killed, out).await
}

/// Waits until both relay slots are on the standby: they must be before the primary dies.
async fn wait_slots_synced(w: &World<'_>, out: &mut Outcome) -> anyhow::Result<()> {
    let stack = &w.ctx.stack;
    let waited = Instant::now();
    let slots = [w.names.users_db.as_str(), w.names.tx_db.as_str()];
    loop {
        let synced = stack.synced_slots(stack.standby_port(), &slots).await?;
        if synced == slots.len() {
            break;
        }
        if waited.elapsed() > SYNC_WAIT {
            bail!("the standby synced {synced} of the relay's 2 slots within 180 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    out.notes.push(format!(
        "both relay slots synced on the standby ({:.1} s of waiting)",
        waited.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// SIGKILL of the primary's postmaster, promotion of the standby, and the proxy moved
/// to it (cutting every connection it carried); returns when the primary was killed.
async fn kill_primary_and_move_proxy(
    w: &World<'_>,
    window: Window,
    out: &mut Outcome,
) -> anyhow::Result<Instant> {
    let stack = &w.ctx.stack;
    let t = Instant::now();
    stack.run("pg-kill").await?;
    stack.run("standby-promote").await?;
    let proxy = w.proxy.as_ref().context("scenario 7 runs with a proxy")?;
    proxy.move_to(([127, 0, 0, 1], stack.standby_port()));
    let moved = t.elapsed();
    out.notes.push(format!(
        "primary killed (SIGKILL) at {:.1} s; standby promoted and the proxy moved to it (port {}) {:.2} s later",
        (t - window.start).as_secs_f64(),
        proxy.target().port(),
        moved.as_secs_f64()
    ));
    Ok(t)
}

/// The takeover: from the kill until relay `a` streams from the promoted server.
async fn wait_streaming(w: &World<'_>, killed: Instant, out: &mut Outcome) -> anyhow::Result<()> {
    let streaming = async {
        loop {
            if w.relay_ready(0).await {
                return killed.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    match tokio::time::timeout(READY_TIMEOUT, streaming).await {
        Ok(d) => {
            out.takeovers.push(d);
            out.notes.push(format!(
                "relay streaming from the promoted server {:.2} s after the kill",
                d.as_secs_f64()
            ));
            Ok(())
        }
        Err(_) => bail!(
            "the relay did not stream from the promoted server within {} s",
            READY_TIMEOUT.as_secs()
        ),
    }
}
