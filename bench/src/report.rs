//! The report: the run's markdown, its tables in the README's order with the notes
//! that say how to read them, and where the targets stand. It renders the rows the
//! measurements return and measures nothing.

use std::time::Duration;
use testkit::Delivery;

use crate::capture::Capture;
use crate::cluster::ClusterComparison;
use crate::ctx::System;
use crate::debezium;
use crate::latency::{LatencyRow, SkippedRow};
use crate::load::Rate;
use crate::options::{Options, Plan};
use crate::order::OrderRow;
use crate::outage::OutageResult;
use crate::settle::{Offered, Phase, SettleRow};
use crate::stats::Latency;
use crate::table::{self, Table};
use crate::throughput::ThroughputRow;

#[allow(clippy::too_many_arguments)]
pub fn render(
    opts: &Options,
    plan: &Plan,
    machine: &str,
    took: Duration,
    throughput_rows: &[ThroughputRow],
    latency_rows: &[LatencyRow],
    latency_skipped: &[SkippedRow],
    order_rows: &[OrderRow],
    outage: Option<&OutageResult>,
    cluster: Option<&ClusterComparison>,
    settle_rows: &[SettleRow],
) -> String {
    let mut out = String::new();
    let args: Vec<String> = std::env::args().skip(1).collect();
    out.push_str(&format!(
        "## relay-bench{}\n\nMachine: {machine}. Run took {:.0} s.\n\n",
        if args.is_empty() {
            String::new()
        } else {
            format!(" {}", args.join(" "))
        },
        took.as_secs_f64()
    ));
    let _ = opts;

    if !throughput_rows.is_empty() {
        out.push_str("### Throughput: a preloaded backlog, as fast as possible\n\n");
        out.push_str(&throughput_table(plan, throughput_rows).render());
        out.push_str(&format!(
            "\nPolling drains the backlog in rounds of {} rows (the interval only matters when a round finds nothing). \
             Kafka ingest: relay-shaped records from one librdkafka producer with the relay's settings, no PostgreSQL \
             (the most this broker takes from this client); its CPU is that producer's, librdkafka's own cost per record and the floor under the relay's. PG CPU columns: the relay's PostgreSQL backends over the timed run, \
             its ordinary sessions (marking) apart from the walsender.\n",
            plan.poll_batch
        ));
        if !plan.relay_baselines.is_empty() {
            let list: Vec<String> = plan
                .relay_baselines
                .iter()
                .map(|(label, path)| format!("{label} = {}", path.display()))
                .collect();
            out.push_str(&format!(
                "relay-cdc binaries: this build = {}; {}. Each ran the same workloads right after this build's, on its own database and topics; vs this build = its relay rows/s over this build's.\n",
                opts.relay_bin
                    .as_ref()
                    .map_or("relay-cdc next to relay-bench".into(), |p| p.display().to_string()),
                list.join("; ")
            ));
        }
        if plan.compares_capture() {
            out.push_str(
                "Capture: the same events (count, transactions, aggregate ids, JSON payloads) as outbox rows (table) or as \
                 pg_logical_emit_message(true, 'outbox', envelope) per event (messages, the envelope built in SQL), each mode \
                 on its own database and topics; the ceiling of a messages row is pg_recvlogical with messages=true over the \
                 message load. PG writer CPU: the loader's backend while it wrote the load (one server-side call, event \
                 generation included). pipeline CPU: writer + marking + walsender + relay; the broker is shared and not counted.\n",
            );
        }
        if plan.compares_delivery() {
            out.push_str(
                "Ceiling, Kafka ingest and polling are measured once per workload; each delivery mode of the relay ran on its own database and topics. \
                 Exactly-once: acked = its Kafka transaction committed; records/Kafka txn counts the checkpoint record; \
                 commit ms is flush + commit of a transaction (relay_kafka_transaction_* of the timed run).\n",
            );
        }
        out.push('\n');
        if plan.debezium {
            out.push_str(&format!(
                "### Debezium {} (Kafka Connect 4.1.1 standalone, Outbox Event Router) on the same backlog\n\n",
                debezium::VERSION
            ));
            out.push_str(&debezium_table(throughput_rows).render());
            out.push_str(
                "\nDebezium rows/s: rows / (JVM start → last record in Kafka, the routed topic's end offsets); \
                 streaming: first → last record. Debezium does not mark rows PROCESSED, so compare it with the relay's \
                 acked rows/s (Kafka has every record), not its end-to-end rows/s. JVM CPU includes its start-up.\n\n",
            );
        }
    }

    if !latency_rows.is_empty() || !latency_skipped.is_empty() {
        out.push_str(&format!(
            "### Latency: 1-row transactions at an offered rate for {} s, commit → broker append (LogAppendTime − commit_time)\n\n",
            plan.duration.as_secs()
        ));
        out.push_str(&latency_table(plan, latency_rows, latency_skipped).render());
        out.push_str(
            "\nDB columns: what the system's own sessions cost the database during the run \
             (pg_stat_database deltas without the generator's transactions; CPU of its backends, walsender included).\n",
        );
        if plan.debezium {
            out.push_str(
                "debezium: relay CPU and RSS are its JVM's; it streams before the run starts (a warm-up row reached Kafka). \
                 Its commit_time header is the row's created_at (the inserting transaction's start), as for polling.\n",
            );
        }
        if plan.compares_delivery() {
            out.push_str(
                "read columns: commit → the bench's read_committed consumer got the record (this host's clock). \
                 An exactly-once relay's records are appended before their Kafka transaction commits, \
                 so for it the read columns, not the append ones, say when a consumer sees them.\n",
            );
        }
        out.push('\n');
    }

    if !order_rows.is_empty() {
        out.push_str("### Commit order: interleaved transactions (T1 begins and inserts, T2 inserts and commits, T1 commits)\n\n");
        let mut t = Table::new(&["system", "pairs", "events", "out of commit order"]);
        for r in order_rows {
            t.row(vec![
                r.system.to_string(),
                r.pairs.to_string(),
                r.events.to_string(),
                r.violations.to_string(),
            ]);
        }
        out.push_str(&t.render());
        out.push('\n');
    }

    if let Some(o) = outage {
        out.push_str(&format!(
            "### Broker outage: relay-cdc at {}/s, broker stopped for {} s\n\n",
            o.rate,
            o.outage.as_secs()
        ));
        let mut t = Table::new(&[
            "events",
            "peak RSS before MiB",
            "max RSS during outage MiB",
            "records in flight at the end of it",
            "RSS after recovery MiB",
            "all delivered after restart, s",
        ]);
        t.row(vec![
            table::count(o.events as f64),
            table::mib(o.steady_peak_rss),
            table::mib(o.outage_max_rss),
            table::count(o.in_flight_at_end),
            table::mib(o.after_rss),
            table::secs(o.recovery_s),
        ]);
        out.push_str(&t.render());
        out.push('\n');
    }

    if let Some(c) = cluster {
        out.push_str(&cluster_tables(c));
    }
    if !settle_rows.is_empty() {
        out.push_str(&settle_table(settle_rows));
    }

    // The targets judge relay measurements; a run of other parts alone has none.
    if !throughput_rows.is_empty() || !latency_rows.is_empty() || outage.is_some() {
        out.push_str(&targets(throughput_rows, latency_rows, outage));
    }
    out
}

/// One row per workload and delivery mode (and `--relay-baseline` binary). A run
/// without exactly-once prints the columns it always did; with it, a delivery column
/// and the exactly-once ones; with baselines, the binary and its ratio to this build.
fn throughput_table(plan: &Plan, rows: &[ThroughputRow]) -> Table {
    let compare = plan.compares_delivery();
    let captures = plan.compares_capture();
    let baselines = !plan.relay_baselines.is_empty();
    let mut headers = vec!["workload"];
    if captures {
        headers.push("capture");
    }
    if compare {
        headers.push("delivery");
    }
    if baselines {
        headers.push("relay-cdc binary");
    }
    headers.extend([
        "rows",
        "ceiling rows/s",
        "Kafka ingest rows/s",
        "Kafka ingest CPU s/100k",
        "relay-cdc rows/s",
        "relay/ceiling",
        "polling rows/s",
        "relay/polling",
        "relay acked rows/s",
        "relay start s",
        "relay CPU s/100k",
        "PG marking CPU s/100k",
        "walsender CPU s/100k",
        "relay peak RSS MiB",
    ]);
    if captures {
        headers.extend(["PG writer CPU s/100k", "pipeline CPU s/100k"]);
    }
    if compare {
        headers.extend(["vs at-least-once", "records/Kafka txn", "Kafka commit ms"]);
    }
    if baselines {
        headers.push("vs this build");
    }
    let mut t = Table::new(&headers);
    for r in rows {
        for relay in &r.relays {
            let mut cells = vec![r.workload.label()];
            if captures {
                cells.push(relay.capture.to_string());
            }
            if compare {
                cells.push(relay.delivery.to_string());
            }
            if baselines {
                cells.push(
                    relay
                        .baseline
                        .clone()
                        .unwrap_or_else(|| "this build".into()),
                );
            }
            cells.extend([
                table::count(r.workload.rows as f64),
                table::count(r.ceiling_of(relay.capture)),
                table::count(r.ingest),
                table::secs(r.ingest_cpu_per_100k),
                table::count(relay.rows_per_s),
                table::ratio(relay.rows_per_s, r.ceiling_of(relay.capture)),
                table::count(r.polling),
                table::ratio(relay.rows_per_s, r.polling),
                table::count(relay.acked_rows_per_s),
                table::secs(relay.startup_s),
                table::secs(relay.cpu_per_100k),
                table::secs(relay.pg_marking_cpu_per_100k),
                table::secs(relay.walsender_cpu_per_100k),
                table::mib(relay.peak_rss),
            ]);
            if captures {
                cells.extend([
                    table::secs(relay.writer_cpu_per_100k),
                    table::secs(relay.pipeline_cpu_per_100k()),
                ]);
            }
            if compare {
                let baseline = r
                    .relays
                    .iter()
                    .find(|b| {
                        b.delivery == Delivery::AtLeastOnce
                            && b.capture == relay.capture
                            && b.baseline == relay.baseline
                    })
                    .filter(|_| relay.delivery != Delivery::AtLeastOnce);
                cells.extend([
                    baseline.map_or("-".into(), |b| table::ratio(relay.rows_per_s, b.rows_per_s)),
                    relay
                        .transactions
                        .mean_records
                        .map_or("-".into(), |n| format!("{n:.1}")),
                    relay
                        .transactions
                        .mean_commit_s
                        .map_or("-".into(), |s| table::ms(s * 1000.0)),
                ]);
            }
            if baselines {
                let this = r
                    .relay_in(relay.delivery, relay.capture)
                    .filter(|_| relay.baseline.is_some());
                cells.push(
                    this.map_or("-".into(), |t| table::ratio(relay.rows_per_s, t.rows_per_s)),
                );
            }
            t.row(cells);
        }
    }
    t
}

/// One row per workload: Debezium beside the relay's acked rate (both "every record is
/// in Kafka"), or why it did not run.
fn debezium_table(rows: &[ThroughputRow]) -> Table {
    let mut t = Table::new(&[
        "workload",
        "rows",
        "debezium rows/s",
        "relay acked rows/s",
        "relay acked/debezium",
        "debezium streaming rows/s",
        "first record s",
        "JVM CPU s/100k",
        "walsender CPU s/100k",
        "JVM peak RSS MiB",
    ]);
    for r in rows {
        let Some(result) = &r.debezium else { continue };
        // The relay's default mode when it ran, else the first one.
        let relay = r.relay(Delivery::AtLeastOnce).or(r.relays.first());
        let acked = relay.map(|x| x.acked_rows_per_s);
        let mut cells = vec![r.workload.label(), table::count(r.workload.rows as f64)];
        match result {
            Ok(d) => cells.extend([
                table::count(d.rows_per_s),
                acked.map_or("-".into(), table::count),
                acked.map_or("-".into(), |a| table::ratio(a, d.rows_per_s)),
                table::count(d.streaming_rows_per_s),
                table::secs(d.first_record_s),
                table::secs(d.cpu_per_100k),
                table::secs(d.walsender_cpu_per_100k),
                table::mib(d.peak_rss),
            ]),
            Err(reason) => {
                cells.push(reason.clone());
                cells.push(acked.map_or("-".into(), table::count));
                cells.extend(std::iter::repeat_n("-".to_string(), 6));
            }
        }
        t.row(cells);
    }
    t
}

/// One row per system and rate; with exactly-once in the run, also commit → read.
/// Skipped rows (Debezium) say why in their first cell after the name.
fn latency_table(plan: &Plan, rows: &[LatencyRow], skipped: &[SkippedRow]) -> Table {
    let compare = plan.compares_delivery();
    let mut headers = vec![
        "system @ offered rate",
        "achieved/s",
        "events",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
    ];
    if compare {
        headers.extend(["read p50 ms", "read p99 ms"]);
    }
    headers.extend([
        "relay CPU s/100k",
        "relay peak RSS MiB",
        "DB xacts/s",
        "DB rows read/s",
        "DB blks hit/s",
        "DB CPU s/100k",
    ]);
    let mut t = Table::new(&headers);
    for r in rows {
        let mut cells = vec![
            format!("{} @ {}", r.system, r.rate),
            table::count(r.achieved),
            table::count(r.events as f64),
            table::ms(r.latency.p50),
            table::ms(r.latency.p95),
            table::ms(r.latency.p99),
            table::ms(r.latency.max),
        ];
        if compare {
            cells.extend([table::ms(r.read_latency.p50), table::ms(r.read_latency.p99)]);
        }
        cells.extend([
            r.process_cpu_per_100k.map_or("-".into(), table::secs),
            r.process_peak_rss.map_or("-".into(), table::mib),
            table::count(r.db.xacts_per_s),
            table::count(r.db.rows_read_per_s),
            table::count(r.db.blks_hit_per_s),
            table::secs(r.db.cpu_per_100k),
        ]);
        t.row(cells);
    }
    for s in skipped {
        let mut cells = vec![format!("{} @ {}", s.system, s.rate), s.reason.clone()];
        cells.resize(t.columns(), "-".into());
        t.row(cells);
    }
    t
}

/// Where the targets stand in this run.
fn targets(
    throughput_rows: &[ThroughputRow],
    latency_rows: &[LatencyRow],
    outage: Option<&OutageResult>,
) -> String {
    let mark = |ok: bool| if ok { "met" } else { "NOT met" };
    let mut lines = vec!["### Targets\n".to_string()];
    for delivery in [Delivery::AtLeastOnce, Delivery::ExactlyOnce] {
        let name = match delivery {
            Delivery::AtLeastOnce => String::new(),
            d => format!(", {d}"),
        };
        if let Some((worst, r)) = throughput_rows
            .iter()
            .filter_map(|row| Some((row, row.relay(delivery)?.rows_per_s / row.ceiling)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
        {
            lines.push(format!(
                "- relay ≥ 90 % of the ceiling on every workload{name}: {} (lowest {:.0} %, {})",
                mark(r >= 0.9),
                100.0 * r,
                worst.workload.label()
            ));
        }
        if let Some(r) = latency_rows
            .iter()
            .find(|r| r.system == System::Relay(delivery) && r.rate == Rate::Fixed(1000))
        {
            // Exactly-once records are appended before their transaction commits: what
            // counts is when a read_committed consumer gets them.
            let (p99, what) = match delivery {
                Delivery::AtLeastOnce => (r.latency.p99, ""),
                Delivery::ExactlyOnce => (r.read_latency.p99, ", commit → read_committed read"),
            };
            lines.push(format!(
                "- p99 commit → Kafka ≤ 50 ms at 1k events/s{name}{what}: {} (p99 {} ms)",
                mark(p99 <= 50.0),
                table::ms(p99)
            ));
        }
    }
    lines.extend(capture_targets(throughput_rows));
    let peaks: Vec<u64> = throughput_rows
        .iter()
        .flat_map(|r| r.relays.iter().map(|relay| relay.peak_rss))
        .chain(
            latency_rows
                .iter()
                .filter(|r| matches!(r.system, System::Relay(_)))
                .filter_map(|r| r.process_peak_rss),
        )
        .collect();
    if let Some(max) = peaks.iter().max() {
        lines.push(format!(
            "- peak RSS ≤ 64 MiB in steady state: {} (highest {} MiB)",
            mark(*max <= 64 * 1024 * 1024),
            table::mib(*max)
        ));
    }
    lines.push(match outage {
        Some(o) => format!(
            "- RSS during a {} s broker outage: max {} MiB (from {} MiB before it)",
            o.outage.as_secs(),
            table::mib(o.outage_max_rss),
            table::mib(o.steady_peak_rss)
        ),
        None => "- RSS during a broker outage: not measured in this run (--outage)".into(),
    });
    lines.join("\n") + "\n"
}

/// Issue 30's targets for the message mode, when it ran: the relay keeps pace with its
/// own decode ceiling, and the whole pipeline costs at most half the CPU of table mode.
fn capture_targets(rows: &[ThroughputRow]) -> Vec<String> {
    let mark = |ok: bool| if ok { "met" } else { "NOT met" };
    let mut lines = Vec::new();
    for delivery in [Delivery::AtLeastOnce, Delivery::ExactlyOnce] {
        let name = match delivery {
            Delivery::AtLeastOnce => String::new(),
            d => format!(", {d}"),
        };
        let ratios = rows.iter().filter_map(|row| {
            let m = row.relay_in(delivery, Capture::Messages)?;
            Some((row, m.rows_per_s / row.ceiling_of(Capture::Messages)))
        });
        if let Some((worst, r)) = ratios.min_by(|a, b| a.1.total_cmp(&b.1)) {
            lines.push(format!(
                "- messages: relay ≥ 90 % of the message ceiling on every workload{name}: {} (lowest {:.0} %, {})",
                mark(r >= 0.9),
                100.0 * r,
                worst.workload.label()
            ));
        }
        let cpu = rows.iter().filter_map(|row| {
            let m = row.relay_in(delivery, Capture::Messages)?;
            let t = row.relay_in(delivery, Capture::Table)?;
            Some((row, m.pipeline_cpu_per_100k() / t.pipeline_cpu_per_100k()))
        });
        if let Some((worst, r)) = cpu.max_by(|a, b| a.1.total_cmp(&b.1)) {
            lines.push(format!(
                "- messages: pipeline CPU per 100k events ≤ half of table mode's{name}: {} (highest {:.0} % of table mode, {}; broker not counted)",
                mark(r <= 0.5),
                100.0 * r,
                worst.workload.label()
            ));
        }
    }
    lines
}

fn cluster_tables(c: &ClusterComparison) -> String {
    let mut t = Table::new(&[
        "workload",
        "delivery",
        "rows",
        "1 broker rows/s",
        "3 brokers rows/s",
        "3/1",
        "1 broker acked rows/s",
        "3 brokers acked rows/s",
        "1 broker relay CPU s/100k",
        "3 brokers relay CPU s/100k",
    ]);
    for (w, one, three) in &c.throughput {
        t.row(vec![
            w.label(),
            one.delivery.to_string(),
            table::count(w.rows as f64),
            table::count(one.rows_per_s),
            table::count(three.rows_per_s),
            table::ratio(three.rows_per_s, one.rows_per_s),
            table::count(one.acked_rows_per_s),
            table::count(three.acked_rows_per_s),
            table::secs(one.cpu_per_100k),
            table::secs(three.cpu_per_100k),
        ]);
    }
    let mut l = Table::new(&[
        "relay @ offered rate",
        "1 broker p50 ms",
        "1 broker p99 ms",
        "3 brokers p50 ms",
        "3 brokers p99 ms",
        "1 broker read p99 ms",
        "3 brokers read p99 ms",
    ]);
    for (one, three) in &c.latency {
        l.row(vec![
            format!("{} @ {}", one.system, one.rate),
            table::ms(one.latency.p50),
            table::ms(one.latency.p99),
            table::ms(three.latency.p50),
            table::ms(three.latency.p99),
            table::ms(one.read_latency.p99),
            table::ms(three.read_latency.p99),
        ]);
    }
    format!(
        "### Kafka: one broker beside a cluster of three (replication 3, min.insync.replicas 2, acks=all)\n\n{}\n{}\n\
         Each pair ran one after the other on fresh databases and topics (3 partitions; the cluster's are replicated \
         to all three brokers, and acks=all waits for two of them). The cluster's five JVMs (three brokers, two \
         controllers) share the machine's cores with everything else. Latency: commit → broker append; read: commit → \
         a read_committed consumer got it.\n\n",
        t.render(),
        l.render()
    )
}

/// The settle table: every binary's phases, one row each, the binaries one under the
/// other (before/after in one table).
fn settle_table(rows: &[SettleRow]) -> String {
    let mut t = table::Table::new(&[
        "transaction-service",
        "load",
        "transfers",
        "POST/s",
        "settled/s",
        "unsettled at load end",
        "drained after s",
        "POST answered p50 / p99 ms",
        "answer → Created in Kafka p50 / p99 ms",
        "Created → Completed in Kafka p50 / p99 ms",
        "POST → COMPLETED p50 ms",
        "p99 ms",
        "max ms",
        "DB CPU s/1k",
        "service CPU s/1k",
        "records per DB txn",
        "ms per DB txn (visibility wait)",
        "failed (funds)",
    ]);
    for r in rows {
        for p in &r.phases {
            t.row(vec![
                r.label.clone(),
                match p.offered {
                    Offered::Rate(r) => format!("{r}/s"),
                    Offered::ClosedLoop => "max (closed loop)".into(),
                    Offered::Backlog(n) => format!("backlog of {}", table::count(n as f64)),
                },
                table::count(p.posted as f64),
                table::count(p.post_rate),
                table::count(p.settled_rate),
                p.backlog_at_end.to_string(),
                table::secs(p.drain_s),
                format!(
                    "{} / {}",
                    table::ms(p.post_latency.p50),
                    table::ms(p.post_latency.p99)
                ),
                settle_hop(p, p.relayed.as_ref()),
                settle_hop(p, p.applied.as_ref()),
                settle_latency(p, p.latency.p50),
                settle_latency(p, p.latency.p99),
                settle_latency(p, p.latency.max),
                table::secs(p.db_cpu_per_1k),
                table::secs(p.service_cpu_per_1k),
                p.mean_batch
                    .map_or("1 (no batches)".into(), |(b, _, _)| format!("{b:.1}")),
                p.mean_batch
                    .map_or("—".into(), |(_, ms, wait)| format!("{ms:.1} ({wait:.1})")),
                p.failed.to_string(),
            ]);
        }
    }
    format!(
        "### Settlement: POST /api/v1/transactions → COMPLETED (transaction-service, relay-cdc, Kafka)\n\n{}\n\
         Each binary on a fresh database it migrates itself, relay-cdc on it, 0.01 transfers between random funded \
         accounts. COMPLETED: the settlement's TransactionCompleted/Failed record read from Kafka by the bench (the \
         relay's publish included). settled/s: transfers / (first POST → last settlement). DB CPU: every backend of \
         the service's database (its sessions, the relay's, the walsender) per 1,000 transfers, from the start of the \
         load to the last settlement; service CPU: its process, the same span. Backlog: the transfers POSTed with \
         the relay stopped (POST/s is that phase's), then the relay restarted: settled/s, the drain and the CPU \
         are from the restart to the last settlement, settlement alone (no POSTs), the relay's publish included. \
         records (and ms) per DB txn: the consumer's mean batch over the phase and the mean time to apply one \
         (its consumer_batch_events and consumer_batch_duration_seconds histograms), in brackets the part spent \
         waiting for a transaction row to become visible (consumer_visibility_wait_seconds_total).\n\n",
        t.render()
    )
}

/// A "p50 / p99" cell of one hop; none for a backlog (the relay was down).
fn settle_hop(p: &Phase, l: Option<&Latency>) -> String {
    match (p.offered, l) {
        (Offered::Backlog(_), _) | (_, None) => "—".into(),
        (_, Some(l)) => format!("{} / {}", table::ms(l.p50), table::ms(l.p99)),
    }
}

/// A latency cell; a backlog's POST → COMPLETED is mostly the time the relay was down.
fn settle_latency(p: &Phase, ms: f64) -> String {
    match p.offered {
        Offered::Backlog(_) => "—".into(),
        _ => table::ms(ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::latency::DbLoad;
    use crate::options::Workload;
    use crate::relay::KafkaTransactions;
    use crate::throughput::{DebeziumThroughput, RelayThroughput};

    fn plan(args: &[&str]) -> Plan {
        use clap::Parser;
        Options::try_parse_from([&["relay-bench"], args].concat())
            .unwrap()
            .plan()
            .unwrap()
    }

    fn relay(delivery: Delivery, rows_per_s: f64) -> RelayThroughput {
        let transactional = delivery == Delivery::ExactlyOnce;
        RelayThroughput {
            delivery,
            capture: Capture::Table,
            baseline: None,
            rows_per_s,
            acked_rows_per_s: rows_per_s,
            startup_s: 0.05,
            cpu_per_100k: 2.0,
            writer_cpu_per_100k: 1.0,
            pg_marking_cpu_per_100k: 1.5,
            walsender_cpu_per_100k: 0.75,
            peak_rss: 20 << 20,
            transactions: KafkaTransactions {
                committed: if transactional { 10 } else { 0 },
                aborted: 0,
                mean_records: transactional.then_some(1001.0),
                mean_commit_s: transactional.then_some(0.0042),
            },
        }
    }

    fn throughput_row(relays: Vec<RelayThroughput>) -> ThroughputRow {
        ThroughputRow {
            workload: Workload {
                rows_per_txn: 1000,
                payload: 100,
                rows: 10_000,
            },
            ceiling: 40_000.0,
            message_ceiling: None,
            ingest: 200_000.0,
            ingest_cpu_per_100k: 0.4,
            relays,
            polling: 10_000.0,
            debezium: None,
        }
    }

    fn latency_row(system: System) -> LatencyRow {
        let ms = |v: f64| Latency {
            samples: 1,
            p50: v,
            p95: v,
            p99: v,
            max: v,
        };
        LatencyRow {
            system,
            rate: Rate::Fixed(1000),
            achieved: 1000.0,
            events: 5000,
            latency: ms(10.0),
            read_latency: ms(60.0),
            process_cpu_per_100k: None,
            process_peak_rss: None,
            db: DbLoad {
                xacts_per_s: 0.0,
                rows_read_per_s: 0.0,
                blks_hit_per_s: 0.0,
                cpu_per_100k: 0.0,
            },
        }
    }

    #[test]
    fn the_cluster_tables_set_three_brokers_beside_one() {
        let w = throughput_row(vec![]).workload;
        let mut three = latency_row(System::Relay(Delivery::AtLeastOnce));
        three.latency.p99 = 25.0;
        let text = cluster_tables(&ClusterComparison {
            throughput: vec![(
                w,
                relay(Delivery::AtLeastOnce, 40_000.0),
                relay(Delivery::AtLeastOnce, 30_000.0),
            )],
            latency: vec![(latency_row(System::Relay(Delivery::AtLeastOnce)), three)],
        });
        let row = |starts: &str| -> Vec<String> {
            text.lines()
                .find(|l| l.starts_with(starts))
                .unwrap_or_else(|| panic!("no row {starts}: {text}"))
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        };
        let t = row("| 1000 rows/txn, 100 B");
        assert_eq!(
            t[2..7],
            ["at-least-once", "10,000", "40,000", "30,000", "75 %"],
            "{text}"
        );
        let l = row("| relay-cdc @ 1000/s");
        assert_eq!(l[2..6], ["10", "10", "10", "25"], "{text}");
    }

    #[test]
    fn a_default_run_prints_the_tables_it_always_did() {
        let p = plan(&[]);
        let t = throughput_table(
            &p,
            &[throughput_row(vec![relay(Delivery::AtLeastOnce, 20_000.0)])],
        )
        .render();
        let header = t.lines().next().unwrap();
        assert!(header.starts_with("| workload             | rows "), "{t}");
        assert!(
            !header.contains("delivery") && !header.contains("Kafka txn"),
            "{t}"
        );
        assert_eq!(header.matches('|').count(), 16, "{t}");
        let cells: Vec<&str> = t
            .lines()
            .nth(2)
            .unwrap()
            .split('|')
            .map(str::trim)
            .collect();
        assert_eq!(cells[4..6], ["200,000", "0.40"], "Kafka ingest: {t}");
        assert_eq!(cells[13..15], ["1.50", "0.75"], "PG CPU: {t}");
        let l = latency_table(
            &p,
            &[latency_row(System::Relay(Delivery::AtLeastOnce))],
            &[],
        )
        .render();
        assert!(!l.contains("read p99"), "{l}");
        assert_eq!(l.lines().next().unwrap().matches('|').count(), 14, "{l}");
    }

    #[test]
    fn both_capture_modes_get_a_row_against_their_own_ceiling_and_targets() {
        let p = plan(&["--capture", "table,messages"]);
        let messages = RelayThroughput {
            capture: Capture::Messages,
            writer_cpu_per_100k: 0.5,
            pg_marking_cpu_per_100k: 0.0,
            ..relay(Delivery::AtLeastOnce, 27_000.0)
        };
        let mut row = throughput_row(vec![relay(Delivery::AtLeastOnce, 20_000.0), messages]);
        row.message_ceiling = Some(30_000.0);
        let t = throughput_table(&p, std::slice::from_ref(&row)).render();
        let cells = |n: usize| -> Vec<String> {
            t.lines()
                .nth(n)
                .unwrap()
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        };
        let (table_row, message_row) = (cells(2), cells(3));
        assert_eq!(table_row[2..5], ["table", "10,000", "40,000"], "{t}");
        assert_eq!(message_row[2..5], ["messages", "10,000", "30,000"], "{t}");
        assert_eq!(message_row[8], "90 %", "relay/ceiling of its own mode: {t}");
        // writer 0.5 + marking 0 + walsender 0.75 + relay 2.0; table: 1 + 1.5 + 0.75 + 2.
        let n = message_row.len();
        assert_eq!(message_row[n - 3..n - 1], ["0.50", "3.25"], "{t}");
        assert_eq!(table_row[n - 2], "5.25", "{t}");
        let lines = capture_targets(&[row]).join("\n");
        assert!(
            lines.contains("message ceiling on every workload: met (lowest 90 %"),
            "{lines}"
        );
        assert!(
            lines.contains("≤ half of table mode's: NOT met (highest 62 %"),
            "{lines}"
        );
    }

    #[test]
    fn a_baseline_binary_gets_a_row_after_this_builds_with_its_ratio() {
        let me = std::env::current_exe().unwrap();
        let p = plan(&["--relay-baseline", &format!("before={}", me.display())]);
        let before = RelayThroughput {
            baseline: Some("before".into()),
            ..relay(Delivery::AtLeastOnce, 25_000.0)
        };
        let t = throughput_table(
            &p,
            &[throughput_row(vec![
                relay(Delivery::AtLeastOnce, 20_000.0),
                before,
            ])],
        )
        .render();
        let rows: Vec<Vec<&str>> = t
            .lines()
            .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
            .collect();
        assert_eq!(rows[0][1], "relay-cdc binary");
        assert_eq!(rows[0].last(), Some(&"vs this build"));
        assert_eq!((rows[2][1], *rows[2].last().unwrap()), ("this build", "-"));
        assert_eq!((rows[3][1], *rows[3].last().unwrap()), ("before", "125 %"));
    }

    #[test]
    fn exactly_once_rows_sit_beside_at_least_once_with_their_cost() {
        let p = plan(&["--delivery", "at-least-once,exactly-once"]);
        let t = throughput_table(
            &p,
            &[throughput_row(vec![
                relay(Delivery::AtLeastOnce, 20_000.0),
                relay(Delivery::ExactlyOnce, 15_000.0),
            ])],
        )
        .render();
        let rows: Vec<Vec<&str>> = t
            .lines()
            .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
            .collect();
        assert_eq!(rows[0][1], "delivery");
        assert_eq!(
            rows[0][16..],
            ["vs at-least-once", "records/Kafka txn", "Kafka commit ms"]
        );
        assert_eq!(rows[2][1..2], ["at-least-once"]);
        assert_eq!(rows[2][16..], ["-", "-", "-"]);
        assert_eq!(rows[3][0], "1000 rows/txn, 100 B");
        assert_eq!(rows[3][1], "exactly-once");
        assert_eq!(rows[3][16..], ["75 %", "1001.0", "4.2"]);

        let l = latency_table(
            &p,
            &[
                latency_row(System::Relay(Delivery::AtLeastOnce)),
                latency_row(System::Relay(Delivery::ExactlyOnce)),
            ],
            &[],
        )
        .render();
        assert!(l.contains("| relay-cdc (exactly-once) @ 1000/s |"), "{l}");
        assert!(
            l.lines()
                .next()
                .unwrap()
                .contains("| read p50 ms | read p99 ms |"),
            "{l}"
        );
    }

    #[test]
    fn debezium_rows_say_why_they_were_skipped() {
        let mut row = throughput_row(vec![relay(Delivery::AtLeastOnce, 20_000.0)]);
        row.debezium = Some(Err("skipped: mvn not found".into()));
        let t = debezium_table(&[row]).render();
        let cells: Vec<&str> = t
            .lines()
            .nth(2)
            .unwrap()
            .split('|')
            .map(str::trim)
            .collect();
        assert_eq!(cells[3..5], ["skipped: mvn not found", "20,000"], "{t}");
        assert!(cells[5..11].iter().all(|c| *c == "-"), "{t}");

        let l = latency_table(
            &plan(&["--debezium"]),
            &[latency_row(System::Relay(Delivery::AtLeastOnce))],
            &[SkippedRow {
                system: System::Debezium,
                rate: Rate::Fixed(1000),
                reason: "skipped: java not found".into(),
            }],
        )
        .render();
        let last: Vec<&str> = l
            .lines()
            .last()
            .unwrap()
            .split('|')
            .map(str::trim)
            .collect();
        assert_eq!(
            last[1..3],
            ["debezium @ 1000/s", "skipped: java not found"],
            "{l}"
        );
    }

    #[test]
    fn debezium_is_set_beside_the_relays_acked_rate() {
        let mut row = throughput_row(vec![relay(Delivery::AtLeastOnce, 20_000.0)]);
        row.debezium = Some(Ok(DebeziumThroughput {
            rows_per_s: 10_000.0,
            streaming_rows_per_s: 25_000.0,
            first_record_s: 9.5,
            cpu_per_100k: 30.0,
            walsender_cpu_per_100k: 0.8,
            peak_rss: 800 << 20,
        }));
        let t = debezium_table(&[row]).render();
        let cells: Vec<&str> = t
            .lines()
            .nth(2)
            .unwrap()
            .split('|')
            .map(str::trim)
            .collect();
        assert_eq!(
            cells[3..11],
            ["10,000", "20,000", "200 %", "25,000", "9.50", "30.00", "0.80", "800.0"],
            "{t}"
        );
    }

    #[test]
    fn the_rss_target_judges_the_relay_not_debezium() {
        let mut dbz = latency_row(System::Debezium);
        dbz.process_peak_rss = Some(800 << 20);
        let mut relay = latency_row(System::Relay(Delivery::AtLeastOnce));
        relay.process_peak_rss = Some(10 << 20);
        let t = targets(&[], &[relay, dbz], None);
        assert!(
            t.contains("64 MiB in steady state: met (highest 10.0 MiB)"),
            "{t}"
        );
    }

    #[test]
    fn exactly_once_latency_is_judged_when_a_consumer_can_read() {
        let rows = [
            latency_row(System::Relay(Delivery::AtLeastOnce)),
            latency_row(System::Relay(Delivery::ExactlyOnce)),
        ];
        let t = targets(&[], &rows, None);
        assert!(t.contains("1k events/s: met (p99 10 ms)"), "{t}");
        assert!(
            t.contains(
                "1k events/s, exactly-once, commit → read_committed read: NOT met (p99 60 ms)"
            ),
            "{t}"
        );
    }
}
