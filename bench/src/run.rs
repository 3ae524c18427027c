//! Orchestration: every measurement on a fresh database (and topic) of its own, the
//! systems one after another on the same stack (relay-cdc once per delivery mode of
//! the plan, Debezium when asked), then the tables.

use std::time::Instant;

use tokio_postgres::Client;

use crate::cluster::kafka_cluster;
use crate::ctx::{failed, Ctx, System};
use crate::latency::{latency, SkippedRow};
use crate::options::{Options, Part};
use crate::order::order;
use crate::outage::outage;
use crate::progress::progress;
use crate::report::render;
use crate::throughput::throughput;

pub async fn run(opts: Options) -> anyhow::Result<String> {
    let plan = opts.plan()?;
    let ctx = Ctx::new(&opts).await?;
    let started = Instant::now();
    let machine = machine(&ctx.admin).await?;
    let mut throughput_rows = Vec::new();
    let mut latency_rows = Vec::new();
    let mut latency_skipped = Vec::new();
    let mut order_rows = Vec::new();
    let single = ctx.stack.kafka_brokers.as_str();
    let pollers: Vec<System> = plan
        .poll_intervals
        .iter()
        .map(|d| System::Polling(*d))
        .collect();
    let systems: Vec<System> = plan
        .deliveries
        .iter()
        .map(|d| System::Relay(*d))
        .chain(pollers)
        .collect();

    if plan.parts.contains(&Part::Throughput) {
        for w in &plan.workloads {
            throughput_rows.push(throughput(&ctx, &plan, w).await?);
        }
    }
    if plan.parts.contains(&Part::Latency) {
        for rate in &plan.rates {
            for system in &systems {
                latency_rows.push(latency(&ctx, &plan, *system, *rate, single).await?);
            }
            // Debezium is compared, not judged: when it cannot run or fails, its row
            // says why and the run goes on.
            match &ctx.debezium {
                None => {}
                Some(Err(reason)) => latency_skipped.push(SkippedRow {
                    system: System::Debezium,
                    rate: *rate,
                    reason: format!("skipped: {reason}"),
                }),
                Some(Ok(_)) => match latency(&ctx, &plan, System::Debezium, *rate, single).await {
                    Ok(row) => latency_rows.push(row),
                    Err(e) => latency_skipped.push(SkippedRow {
                        system: System::Debezium,
                        rate: *rate,
                        reason: failed(&ctx, System::Debezium, &e),
                    }),
                },
            }
        }
    }
    if plan.parts.contains(&Part::Order) {
        for system in &systems {
            order_rows.push(order(&ctx, &plan, *system).await?);
        }
    }
    let outage_result = match plan.outage {
        Some(d) => Some(outage(&ctx, d).await?),
        None => None,
    };
    let settle_rows = match &plan.settle {
        Some(s) => crate::settle::run(&ctx, s).await?,
        None => Vec::new(),
    };
    let cluster = if plan.parts.contains(&Part::KafkaCluster) {
        Some(kafka_cluster(&ctx, &plan).await?)
    } else {
        None
    };
    let comparison = if plan.parts.contains(&Part::DebeziumCompare) {
        Some(crate::compare::run(&ctx).await?)
    } else {
        None
    };
    if ctx.keep_logs.load(std::sync::atomic::Ordering::Relaxed) {
        progress(format!("logs kept in {}", ctx.log_dir.display()));
    } else {
        let _ = std::fs::remove_dir_all(&ctx.log_dir);
    }
    let mut out = render(
        &opts,
        &plan,
        &machine,
        started.elapsed(),
        &throughput_rows,
        &latency_rows,
        &latency_skipped,
        &order_rows,
        outage_result.as_ref(),
        cluster.as_ref(),
        &settle_rows,
    );
    if let Some(c) = comparison {
        out.push_str(&c.markdown);
        if c.unexplained > 0 {
            // The tables still reach stdout; the exit status says the comparison failed.
            print!("{out}");
            anyhow::bail!(
                "debezium-compare: {} differences relay-cdc does not document",
                c.unexplained
            );
        }
    }
    Ok(out)
}

async fn machine(admin: &Client) -> anyhow::Result<String> {
    let m = testkit::proc::machine();
    let mem_gib = m.memory_bytes as f64 / (1024.0 * 1024.0 * 1024.0);
    let load: Vec<String> = m.load.iter().map(|l| format!("{l:.2}")).collect();
    let pg: String = admin.query_one("show server_version", &[]).await?.get(0);
    Ok(format!(
        "{} cores ({}), {mem_gib:.1} GiB RAM, load average at start {}; PostgreSQL {pg}",
        m.cores,
        m.cpu_model,
        load.join(" ")
    ))
}
