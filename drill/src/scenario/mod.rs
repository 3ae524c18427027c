//! One scenario from a clean state to its verdict.
//!
//! Each scenario gets databases, replication slots, topics and a consumer group of its
//! own, so its counts are its own: fresh `drill_s<N>_users` / `drill_s<N>_tx`
//! databases (migrated by the services at start-up), slots of the same names, topics
//! `drill.<run>.s<N>.outbox.event.{user,transaction}`; in exactly-once mode also the
//! relay's checkpoint topic `drill.<run>.s<N>.checkpoints` and transactional ids
//! `drill.<run>.s<N>.relay-<source>` (shared by the scenario's relays, so a new
//! active relay fences the old one, and by no other scenario). Then: both services and
//! the relay start, the load runs while the scenario's faults are injected, the load
//! stops, everything is given time to converge, the processes stop, and every outbox
//! row of both databases is compared with everything the topics hold.
//!
//! | module | holds |
//! |---|---|
//! | [`catalog`] | the scenarios, numbered and titled as in the README |
//! | [`ctx`] | what scenarios share, and the names one scenario owns |
//! | [`relays`] | the relays' settings in a scenario |
//! | [`world`] | the running processes and connections, and the steps faults are made of |
//! | [`faults`] | one module per scenario: its faults during the load |
//! | [`verdict`] | converge, stop, compare, check |
//! | [`outcome`] | what a scenario found and whether it passed |
//! | [`recovered`] | what the processes' own counters say recovered, summed over restarts |

mod catalog;
mod ctx;
mod faults;
mod outcome;
mod recovered;
mod relays;
mod verdict;
mod world;

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use testkit::{free_port, Delivery, Proxy};

pub use catalog::Scenario;
pub use ctx::{Bins, Ctx, Plan};
pub use outcome::{Check, Outcome};
pub use recovered::Recovered;

use crate::kafka::{self, Collector, Isolation};
use crate::load::{Load, Target};
use crate::stack::Service;
use ctx::Names;
use relays::relay_env;
use world::{Window, World};

/// How long the load may run past its window and the planned outage before it stops
/// by itself (see `run_inner`).
const LOAD_SAFETY_NET: Duration = Duration::from_secs(900);

/// Why scenario 5 does not run with message capture.
const ACK_BEFORE_MARK_WITHOUT_TABLE: &str = "with message capture nothing is marked PROCESSED: there is no row, so no moment between Kafka's ack and the mark to crash in. The relay confirms the slot once Kafka acked, and a kill -9 in the unconfirmed window (replayed with the same event ids) is what scenarios 1 and 4 do";

/// Runs `sc` and always returns its outcome; processes and slots are cleaned up.
pub async fn run(ctx: &mut Ctx, sc: Scenario) -> Outcome {
    let started = Instant::now();
    let names = Names::new(&ctx.run_id, sc);
    let mut out = Outcome::new(sc, ctx.delivery);
    out.no_table = ctx.message_prefix().is_some();
    if out.no_table && sc == Scenario::AckBeforeMark {
        out.not_applicable = Some(ACK_BEFORE_MARK_WITHOUT_TABLE.to_string());
        return out;
    }
    if let Err(e) = run_inner(ctx, sc, &names, &mut out).await {
        out.error = Some(format!("{e:#}"));
    }
    if sc == Scenario::PrimaryFailover {
        // The promoted standby goes; the old primary comes back for what runs next.
        if let Err(e) = ctx.stack.run("standby-down").await {
            out.notes
                .push(format!("could not remove the standby: {e:#}"));
        }
    }
    // Processes are gone (dropped with the world); slots must not outlive the scenario.
    if let Err(e) = ctx.stack.drop_slots(&[&names.users_db, &names.tx_db]).await {
        out.notes.push(format!("could not drop the slots: {e:#}"));
    }
    if out.passed() && !ctx.keep {
        let mut topics = vec![names.user_topic.clone(), names.tx_topic.clone()];
        if ctx.delivery == Delivery::ExactlyOnce {
            topics.push(names.checkpoint_topic.clone());
        }
        kafka::delete_topics(&ctx.stack.brokers(), &topics).await;
    }
    out.elapsed = started.elapsed();
    out
}

async fn run_inner(
    ctx: &mut Ctx,
    sc: Scenario,
    names: &Names,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let mut rng = ctx.rng.fork();
    let ctx: &Ctx = ctx;
    let stack = &ctx.stack;
    stack
        .fresh_databases(&[
            (&names.users_db, Service::Users),
            (&names.tx_db, Service::Transactions),
        ])
        .await
        .context("creating the scenario's databases")?;
    let mut proxy = None;
    let messages = ctx.message_prefix().is_some();
    if sc == Scenario::PrimaryFailover {
        let version = stack.server_version_num().await?;
        if ctx.slot_sync && version < 170_000 {
            bail!(
                "scenario 7 with slot sync needs PostgreSQL 17 or newer (this stack runs {version}): run PG_VERSION=17 scripts/drill --scenarios 7, or add --slot-sync off"
            );
        }
        if messages && version < 170_000 {
            bail!(
                "scenario 7 with --capture messages needs PostgreSQL 17 or newer (this stack runs {version}): without a table the drill reads what committed from a slot of its own, which must survive the promotion as a failover slot synced to the standby; run PG_VERSION=17 scripts/drill --capture messages --scenarios 7"
            );
        }
        // Without a table and without the relay's slots on the promoted server, the
        // relay must halt (`slot_lost`), not recreate them.
        out.expect_halt = messages && !ctx.slot_sync;
        // After the scenario's databases exist: the base backup carries them.
        stack
            .run("standby-up")
            .await
            .context("starting the standby")?;
        let p = Proxy::start(([127, 0, 0, 1], stack.pg_port)).await?;
        out.notes.push(format!(
            "PostgreSQL {}.{}: primary on {}, streaming standby on {}, clients through a proxy on {} (the virtual IP); failover slots {}",
            version / 10_000,
            version % 10_000,
            stack.pg_port,
            stack.standby_port(),
            p.port,
            if ctx.slot_sync { "on, synced to the standby" } else { "off (failover_slot = false)" }
        ));
        proxy = Some(p);
    }
    let pg_port = proxy.as_ref().map_or(stack.pg_port, |p| p.port);
    if sc == Scenario::KafkaLeaderFailover && stack.kafka_nodes() != 3 {
        bail!("scenario 8 needs a three-broker cluster: run KAFKA_NODES=3 scripts/drill --scenarios 8");
    }
    let brokers = stack.brokers();
    kafka::create_topics(
        &brokers,
        &[names.user_topic.clone(), names.tx_topic.clone()],
    )
    .await?;
    let topics = [names.user_topic.clone(), names.tx_topic.clone()];
    let collector = Collector::start(&brokers, &topics, Isolation::ReadCommitted)?;
    let uncommitted = Collector::start(&brokers, &topics, Isolation::ReadUncommitted)?;

    let mut w = World {
        ctx,
        sc,
        names,
        users_pool: stack.pool_at(&names.users_db, pg_port)?,
        tx_pool: stack.pool_at(&names.tx_db, pg_port)?,
        collector,
        uncommitted,
        user_svc: None,
        tx_svc: None,
        user_url: String::new(),
        tx_url: String::new(),
        relays: [None, None],
        relay_lives: [None, None],
        lifetimes: Default::default(),
        relay_ports: [free_port(), free_port()],
        relay_env: relay_env(
            stack,
            names,
            sc,
            ctx.delivery,
            (pg_port, ctx.slot_sync),
            ctx.message_prefix(),
        )?,
        recoveries: Vec::new(),
        recoveries_at: Vec::new(),
        truth_slots: false,
        truth_read: Default::default(),
        pg_port,
        proxy,
        load_deadline: Instant::now(),
    };
    w.start_services().await?;
    let t = w.start_relay(0)?;
    w.wait_relay_ready(0).await?;
    out.notes.push(format!(
        "relay streaming {:.1} s after start",
        t.elapsed().as_secs_f64()
    ));
    if sc == Scenario::Standby {
        w.start_relay(1)?;
        w.wait_healthy(1).await?;
        let standby_ready = w.relay_ready(1).await;
        out.notes.push(format!(
            "standby started beside the active relay; its /readyz: {}",
            if standby_ready {
                "200 (unexpected)"
            } else {
                "503 (waiting for the slots)"
            }
        ));
    }

    if messages {
        // The truth survives scenario 7's promotion only as a failover slot (17+).
        w.create_truth_slots(sc == Scenario::PrimaryFailover)
            .await
            .context("creating the drill's truth slots")?;
        out.notes.push(format!(
            "message capture ({}): the services write no outbox row; what committed is read from the drill's own pgoutput slots {} and {} (read and advanced past what was read, dropped with the scenario)",
            ctx.capture,
            crate::truth::slot_name(&names.users_db),
            crate::truth::slot_name(&names.tx_db),
        ));
    }

    let plan = &ctx.plan;
    let mut load_cfg = plan.load.clone();
    if sc == Scenario::Rollbacks {
        load_cfg.rollbacks = true;
        load_cfg.failing_share = 0.15;
    }
    // The window's end stops the load; this deadline is only the net under a drill that
    // hangs. It must outlast the slowest fault routine: scenario 8's rolling restart
    // took 184 s on a loaded CI machine, and a load stopped by an earlier 200 s limit
    // left the relay nothing to send during the outage that followed.
    let hard_limit = plan.duration + plan.kafka_outage + LOAD_SAFETY_NET;
    let load = Load::start(
        Target {
            http: ctx.http.clone(),
            user_url: w.user_url.clone(),
            tx_url: w.tx_url.clone(),
            tag: format!("{}-s{}", ctx.run_id, sc.number()),
            users_pool: w.users_pool.clone(),
            tx_pool: w.tx_pool.clone(),
            message_prefix: ctx.message_prefix().map(str::to_string),
        },
        &load_cfg,
        hard_limit,
        &mut rng,
    );
    let window_start = Instant::now();
    w.load_deadline = window_start + hard_limit;
    let window = Window::new(window_start, plan.duration);
    let faults = faults::inject(&mut w, window, &mut rng, out).await;
    let window_end = (window_start + plan.duration).max(Instant::now() + Duration::from_secs(2));
    tokio::time::sleep_until(window_end.into()).await;
    let accounts_seen = load.accounts();
    let summary = load.stop().await;
    out.notes.push(format!(
        "load ran {:.1} s ({accounts_seen} accounts open when it stopped): {}",
        window_start.elapsed().as_secs_f64(),
        summary.describe()
    ));
    // A fault routine that failed leaves the world in an unknown state: report it, but
    // still stop, converge and count what can be counted.
    if let Err(e) = &faults {
        out.checks.push(Check {
            name: "faults injected as planned".into(),
            ok: false,
            detail: format!("{e:#}"),
        });
    }
    w.ensure_relay_running().await?;
    w.finish(summary, out).await
}
