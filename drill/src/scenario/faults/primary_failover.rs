//! Scenario 7: the PostgreSQL primary killed and its standby promoted at 50 % of the
//! load. With slot sync on, the relay's slots must first be on the standby; the
//! proxy that plays the virtual IP then moves to the promoted server, and the time
//! until the relay streams from it is the takeover.
//!
//! With message capture the drill's truth slots are failover slots too, and the kill
//! waits for them as well: the verdict reads what committed on the promoted server.
//! Without slot sync (`--slot-sync off`) and without a table the relay cannot know what
//! its lost slot had not delivered, so the expected end is the documented halt: both
//! sources halt (`slot_lost`, `/healthz` 503, `relay_source_halted` 1) within
//! [`HALT_BOUND`], and the relay's slots are not recreated on the promoted server.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::super::outcome::{Check, Outcome};
use super::super::world::{Window, World, READY_TIMEOUT};
use crate::truth;

/// How long the standby may take to sync the relay's slots.
const SYNC_WAIT: Duration = Duration::from_secs(180);
/// Message capture without slot sync: how long after the promotion both sources must
/// have halted.
const HALT_BOUND: Duration = Duration::from_secs(60);
/// How long after the halt the drill watches that the relay does not recreate its slots.
const NOT_RECREATED_WATCH: Duration = Duration::from_secs(5);

pub(super) async fn run(
    w: &mut World<'_>,
    window: Window,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    tokio::time::sleep_until(window.at(0.5).into()).await;
    let messages = w.ctx.message_prefix().is_some();
    let mut slots: Vec<String> = Vec::new();
    if w.ctx.slot_sync {
        slots.extend([w.names.users_db.clone(), w.names.tx_db.clone()]);
    }
    if messages {
        slots.extend([
            truth::slot_name(&w.names.users_db),
            truth::slot_name(&w.names.tx_db),
        ]);
    }
    if !slots.is_empty() {
        wait_slots_synced(w, &slots, out).await?;
    }
    let killed = kill_primary_and_move_proxy(w, window, out).await?;
    if out.expect_halt {
        return wait_halted(w, killed, out).await;
    }
    w.begin_recovery().await;
    wait_streaming(w, killed, out).await
}

/// Waits until `slots` are on the standby: they must be before the primary dies.
async fn wait_slots_synced(
    w: &World<'_>,
    slots: &[String],
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let stack = &w.ctx.stack;
    let waited = Instant::now();
    let names: Vec<&str> = slots.iter().map(String::as_str).collect();
    loop {
        if w.truth_slots {
            // The truth slots' copies become usable only once the primary's move past
            // the WAL the standby reserved for them: read (and advance) them.
            w.truth().await?;
        }
        let synced = stack.synced_slots(stack.standby_port(), &names).await?;
        if synced == names.len() {
            break;
        }
        if waited.elapsed() > SYNC_WAIT {
            bail!(
                "the standby synced {synced} of the slots {} within 180 s",
                names.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    out.notes.push(format!(
        "slots {} synced on the standby ({:.1} s of waiting)",
        names.join(", "),
        waited.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Message capture without slot sync: both sources of relay `a` must halt with the
/// lost slot within [`HALT_BOUND`] of the kill, and neither slot may come back on the
/// promoted server.
async fn wait_halted(w: &World<'_>, killed: Instant, out: &mut Outcome) -> anyhow::Result<()> {
    let relay = w.relays[0].as_ref().context("relay a runs")?;
    let mut last = String::from("no answer");
    let halted_after = loop {
        if let Some(h) = relay.probe("/healthz").await {
            let sources = &h.body["sources"];
            let halted: Vec<String> = ["users_db", "transaction_db"]
                .iter()
                .filter(|s| sources[**s]["state"] == "halted")
                .map(|s| format!("{s}: {}", sources[*s]["reason"].as_str().unwrap_or("?")))
                .collect();
            if halted.len() == 2 {
                break Some((killed.elapsed(), h.status, halted));
            }
            last = h.body.to_string();
        }
        if killed.elapsed() > HALT_BOUND {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let Some((after, status, reasons)) = halted_after else {
        out.checks.push(Check {
            name: "the sources halted with the lost slot, which was not recreated".into(),
            ok: false,
            detail: format!(
                "not both halted {} s after the kill; /healthz last said {last}",
                HALT_BOUND.as_secs()
            ),
        });
        return Ok(());
    };
    let lost_slot = reasons
        .iter()
        .all(|r| r.contains("is missing on") && r.contains("capture = \"messages\""));
    tokio::time::sleep(NOT_RECREATED_WATCH).await;
    let halted_gauge = w
        .relay_metric(0, "relay_source_halted", &[])
        .await
        .unwrap_or(0.0);
    let relay_slots = vec![w.names.users_db.clone(), w.names.tx_db.clone()];
    let (present,): (i64,) =
        sqlx::query_as("select count(*) from pg_replication_slots where slot_name = any($1)")
            .bind(&relay_slots)
            .fetch_one(&w.users_pool)
            .await
            .context("looking for the relay's slots on the promoted server")?;
    out.checks.push(Check {
        name: "the sources halted with the lost slot, which was not recreated".into(),
        ok: lost_slot && status == 503 && halted_gauge == 2.0 && present == 0,
        detail: format!(
            "both halted {:.2} s after the kill, /healthz {status}, relay_source_halted summed over the sources {halted_gauge}, relay slots on the promoted server {:.0} s later: {present}; {}",
            after.as_secs_f64(),
            NOT_RECREATED_WATCH.as_secs_f64(),
            reasons.join("; ")
        ),
    });
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
