//! The end of a scenario: converge, stop the services and the relays, read the topics
//! back, compare every outbox row with them and run the end-to-end checks.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::catalog::Scenario;
use super::outcome::{Check, Outcome};
use super::recovered::{self, Recovered};
use super::world::World;
use crate::load::{LoadSummary, ROLLED_BACK_EVENT};
use crate::truth::{self, TruthEvent};
use crate::verify::{self, Committed};

const STOP_TIMEOUT: Duration = Duration::from_secs(30);

impl World<'_> {
    /// The scenario's recoveries once every relay ended: the relays' lifetimes summed,
    /// transaction-service's rebuilds as read.
    fn recovered(&self, consumer_rebuilds: Option<u64>) -> Recovered {
        let (relays, unread) = self.lifetimes.total();
        Recovered {
            relay_restarts: relays.restarts,
            stuck_producers: relays.stuck_producers,
            orphans: relays.orphans,
            consumer_rebuilds,
            unread,
        }
    }

    /// Relay `i`'s last audit round per source as its `/healthz` shows it
    /// (`users_db: 12 rows checked, 0 orphans at …`); `None` when it does not run or
    /// has not audited yet.
    async fn last_audits(&self, i: usize) -> Option<String> {
        let health = self.relays[i].as_ref()?.probe("/healthz").await?;
        let sources = health.body["sources"].as_object()?;
        let rounds: Vec<String> = sources
            .iter()
            .filter_map(|(name, s)| {
                let a = s.get("audit")?;
                Some(format!(
                    "{name}: {} rows checked, {} orphans at {}",
                    a["checked"],
                    a["orphans"],
                    a["at"].as_str().unwrap_or("?")
                ))
            })
            .collect();
        (!rounds.is_empty()).then(|| rounds.join("; "))
    }

    /// Converge, stop everything, then compare and check.
    pub(super) async fn finish(
        mut self,
        summary: LoadSummary,
        out: &mut Outcome,
    ) -> anyhow::Result<()> {
        let ctx = self.ctx;
        let plan = &ctx.plan;
        let messages = ctx.message_prefix().is_some();
        if out.expect_halt {
            // The halted sources deliver nothing more: nothing can settle.
            out.notes
                .push("not waiting for the outbox and the settlements: the sources halted".into());
        } else {
            match self.wait_settled(plan.converge_timeout).await {
                Ok(t) => out.notes.push(format!(
                    "settled {:.1} s after the load stopped",
                    t.as_secs_f64()
                )),
                Err(why) => out.notes.push(format!(
                    "did not settle within {:?} after the load: {why}",
                    plan.converge_timeout
                )),
            }
        }

        // Its counters go with it: read them before the SIGTERM.
        let consumer_rebuilds = match &self.tx_svc {
            Some(_) => testkit::Metrics::scrape(&ctx.http, &format!("{}/metrics", self.tx_url))
                .await
                .ok()
                .and_then(|m| recovered::consumer_rebuilds(&m)),
            None => None,
        };

        // Services first (the transaction-service consumer may write its last events).
        let mut services_up = true;
        for (name, p) in [
            ("user-service", self.user_svc.take()),
            ("transaction-service", self.tx_svc.take()),
        ] {
            let Some(mut p) = p else { continue };
            if let Some(status) = p.exited() {
                services_up = false;
                out.notes
                    .push(format!("{name} had exited by itself with {status}"));
                continue;
            }
            match p.stop(STOP_TIMEOUT).await {
                Ok(s) if s.success() => {}
                Ok(s) => out.notes.push(format!("{name} exited with {s} on SIGTERM")),
                Err(e) => out.notes.push(format!("{name}: {e:#}")),
            }
        }
        out.checks.push(Check {
            name: "services stayed up".into(),
            ok: services_up,
            detail: if services_up {
                "both ran until SIGTERM".into()
            } else {
                "a service died".into()
            },
        });
        let processed =
            !out.expect_halt && self.wait_outbox_processed(Duration::from_secs(60)).await;

        // Then the relays: SIGTERM, a clean exit expected.
        let mut relay_exits = Vec::new();
        for i in 0..2 {
            if let Some(audits) = self.last_audits(i).await {
                out.notes.push(format!(
                    "relay {}'s last audit round per source: {audits}",
                    ["a", "b"][i]
                ));
            }
            if let Some(p) = self.take_relay(i).await {
                relay_exits.push(match p.stop(STOP_TIMEOUT).await {
                    Ok(s) => (s.success(), format!("relay {}: {s}", ["a", "b"][i])),
                    Err(e) => (false, format!("relay {}: {e:#}", ["a", "b"][i])),
                });
            }
        }
        out.checks.push(Check {
            name: "relays stop cleanly on SIGTERM".into(),
            ok: relay_exits.iter().all(|(ok, _)| *ok),
            detail: relay_exits
                .iter()
                .map(|(_, d)| d.clone())
                .collect::<Vec<_>>()
                .join("; "),
        });
        out.recovered = Some(self.recovered(consumer_rebuilds));

        // Recovery measurements are done once everything was delivered.
        for h in self.recoveries.drain(..) {
            out.recoveries.push(
                tokio::time::timeout(Duration::from_secs(30), h)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .flatten(),
            );
        }
        if !out.recoveries.is_empty() {
            let never = out.recoveries.iter().filter(|r| r.is_none()).count();
            out.checks.push(Check {
                name: "every fault recovered".into(),
                ok: never == 0,
                detail: format!(
                    "{never} of {} faults never saw their backlog delivered",
                    out.recoveries.len()
                ),
            });
        }

        self.collector.catch_up(Duration::from_secs(120)).await?;
        self.uncommitted.catch_up(Duration::from_secs(120)).await?;
        let rebuilt = self.collector.rebuilt() + self.uncommitted.rebuilt();
        let records = self.collector.finish();
        let records_uncommitted = self.uncommitted.finish();
        if rebuilt > 0 {
            out.notes.push(format!(
                "the drill's own consumers were rebuilt {rebuilt} times after 10 s without a record (idle, or stuck after a broker restart)"
            ));
        }

        let committed = if messages {
            // Everything has stopped: the truth slots hold every event that committed.
            let truth = self.truth().await?;
            let seen = self.collector.seen();
            let events: Vec<&TruthEvent> = truth.iter().map(|(_, e)| e).collect();
            for (start, lsn) in self.recoveries_at.drain(..) {
                out.recoveries.push(lsn.and_then(|lsn| {
                    truth::recovery(start, lsn, &events, |ids| {
                        seen.first_read(ids.iter().copied())
                    })
                }));
            }
            truth
                .iter()
                .map(|(source, e)| e.committed(source))
                .collect()
        } else {
            self.outbox_rows().await?
        };
        if messages && !out.recoveries.is_empty() {
            let never = out.recoveries.iter().filter(|r| r.is_none()).count();
            out.checks.push(Check {
                name: "every fault recovered".into(),
                ok: never == 0,
                detail: format!(
                    "{never} of {} faults never saw the events committed before their end delivered",
                    out.recoveries.len()
                ),
            });
        }
        let names = self.names;
        out.tally = verify::tally(&committed, &records, |a| names.topic_for(a));
        let uncommitted = verify::tally(&committed, &records_uncommitted, |a| names.topic_for(a));
        out.duplicates_uncommitted = Some(uncommitted.duplicates);
        out.notes.push(format!(
            "{} records read back from Kafka read_committed, {} read_uncommitted ({} committed rows)",
            records.len(),
            records_uncommitted.len(),
            committed.len()
        ));

        self.end_to_end(processed, &summary, &records, &committed, out)
            .await?;
        Ok(())
    }

    /// Every row of both outbox tables: the truth with table capture.
    async fn outbox_rows(&self) -> anyhow::Result<Vec<Committed>> {
        let mut committed = Vec::new();
        for (source, pool, _) in self.sources() {
            let rows: Vec<(String, String, String, String)> = sqlx::query_as(
                "select id::text, aggregate_type, aggregate_id, event_type from outbox",
            )
            .fetch_all(pool)
            .await?;
            committed.extend(rows.into_iter().map(
                |(id, aggregate_type, aggregate_id, event_type)| Committed {
                    id,
                    source: source.to_string(),
                    aggregate_type,
                    aggregate_id,
                    event_type,
                },
            ));
        }
        Ok(committed)
    }

    async fn end_to_end(
        &self,
        processed: bool,
        summary: &LoadSummary,
        records: &[verify::Delivered],
        committed: &[Committed],
        out: &mut Outcome,
    ) -> anyhow::Result<()> {
        let (u, t) = (&self.users_pool, &self.tx_pool);
        let messages = self.ctx.message_prefix().is_some();
        if messages {
            // The services really wrote messages: a row would mean they ignored
            // OUTBOX_CAPTURE (and the relays, reading messages, would never send it).
            let rows = "select count(*) from outbox";
            let (ru, rt) = (self.count(u, rows).await?, self.count(t, rows).await?);
            out.checks.push(Check {
                name: "no outbox row written (message capture)".into(),
                ok: ru == 0 && rt == 0,
                detail: format!("outbox rows: {ru} in users_db, {rt} in transaction_db"),
            });
            if !out.expect_halt {
                out.checks.push(Check {
                    name: "every committed event read from Kafka before the relays stopped".into(),
                    ok: processed,
                    detail: format!("{} events committed (the truth slots)", committed.len()),
                });
            }
        } else {
            let pending = "select count(*) from outbox where status = 'PENDING'";
            let (pu, pt) = (self.count(u, pending).await?, self.count(t, pending).await?);
            out.checks.push(Check {
                name: "every outbox row PROCESSED".into(),
                ok: processed && pu == 0 && pt == 0,
                detail: format!("PENDING: {pu} in users_db, {pt} in transaction_db"),
            });
        }

        let statuses: Vec<(String, i64)> = sqlx::query_as(
            "select status, count(*) from transactions group by status order by status",
        )
        .fetch_all(t)
        .await?;
        let n = |s: &str| {
            statuses
                .iter()
                .find(|(k, _)| k == s)
                .map(|(_, c)| *c)
                .unwrap_or(0)
        };
        let transfers: Vec<(String, i64)> = sqlx::query_as(
            "select status, count(*) from transactions where from_user_id is not null group by status order by status",
        )
        .fetch_all(t)
        .await?;
        let settled = Check {
            name: "every transaction COMPLETED or FAILED".into(),
            ok: n("PENDING") == 0,
            detail: format!(
                "COMPLETED {}, FAILED {}, PENDING {} (transfers: {})",
                n("COMPLETED"),
                n("FAILED"),
                n("PENDING"),
                transfers
                    .iter()
                    .map(|(s, c)| format!("{s} {c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        push_unless_halted(out, settled);

        let (balances, deposits, equal): (String, String, bool) = sqlx::query_as(
            "select b::text, d::text, b = d from \
             (select coalesce(sum(balance), 0) as b from accounts) x, \
             (select coalesce(sum(amount), 0) as d from transactions where from_user_id is null and status = 'COMPLETED') y",
        )
        .fetch_one(t)
        .await?;
        out.checks.push(Check {
            name: "sum of balances = sum of completed deposits".into(),
            ok: equal,
            detail: format!("balances {balances}, deposits {deposits}"),
        });

        let (bad_settled, bad_created): (i64, i64) = if messages {
            let transactions: Vec<(String, String)> =
                sqlx::query_as("select id::text, status from transactions")
                    .fetch_all(t)
                    .await?;
            events_per_transaction(&transactions, committed)
        } else {
            sqlx::query_as(
                "select \
                   count(*) filter (where settled <> case when t.status = 'PENDING' then 0 else 1 end), \
                   count(*) filter (where created <> 1) \
                 from transactions t cross join lateral ( \
                   select count(*) filter (where o.event_type in ('TransactionCompleted', 'TransactionFailed')) as settled, \
                          count(*) filter (where o.event_type = 'TransactionCreated') as created \
                   from outbox o where o.aggregate_id = t.id::text) e",
            )
            .fetch_one(t)
            .await?
        };
        out.checks.push(Check {
            name: "one TransactionCreated and one settlement event per transaction".into(),
            ok: bad_settled == 0 && bad_created == 0,
            detail: format!("{bad_settled} with a wrong number of settlement events, {bad_created} with a wrong number of TransactionCreated"),
        });

        let users: Vec<(uuid::Uuid,)> = sqlx::query_as("select id from users order by id")
            .fetch_all(u)
            .await?;
        let accounts: Vec<(uuid::Uuid,)> =
            sqlx::query_as("select user_id from accounts order by user_id")
                .fetch_all(t)
                .await?;
        let every_account = Check {
            name: "an account for every user".into(),
            ok: users == accounts,
            detail: format!("{} users, {} accounts", users.len(), accounts.len()),
        };
        push_unless_halted(out, every_account);

        if self.sc == Scenario::Rollbacks || !summary.rolled_back_ids.is_empty() {
            let rolled: HashSet<&str> =
                summary.rolled_back_ids.iter().map(String::as_str).collect();
            let in_kafka = records
                .iter()
                .filter(|r| r.event_id.as_deref().is_some_and(|id| rolled.contains(id)))
                .count();
            // With message capture the truth slots stand for the table: a rolled-back
            // message must not be decoded there either.
            let (in_store, store, written) = if messages {
                let n = committed
                    .iter()
                    .filter(|c| rolled.contains(c.id.as_str()) || c.event_type == ROLLED_BACK_EVENT)
                    .count() as i64;
                (n, "in the truth slots", "messages")
            } else {
                let q =
                    format!("select count(*) from outbox where event_type = '{ROLLED_BACK_EVENT}'");
                let n = self.count(u, &q).await? + self.count(t, &q).await?;
                (n, "in the outbox", "outbox rows")
            };
            out.checks.push(Check {
                name: "rolled-back rows appear nowhere".into(),
                ok: in_kafka == 0 && in_store == 0 && summary.rolled_back_txns > 0,
                detail: format!(
                    "{} transactions rolled back with {} {written}; in Kafka: {in_kafka}, {store}: {in_store}",
                    summary.rolled_back_txns,
                    summary.rolled_back_ids.len()
                ),
            });
            let failed: u64 = summary
                .stats
                .iter()
                .filter(|(k, _)| k.ends_with(" 409") || k.ends_with(" 422"))
                .map(|(_, v)| *v)
                .sum();
            out.notes.push(format!(
                "{failed} HTTP requests failed by design (409 taken e-mail, 422 unknown account)"
            ));
        }
        if self.sc == Scenario::Standby {
            out.checks.push(Check {
                name: "the standby took over every time".into(),
                ok: out.takeovers.len() == self.ctx.plan.failovers.max(1),
                detail: format!(
                    "{} of {} failovers",
                    out.takeovers.len(),
                    self.ctx.plan.failovers.max(1)
                ),
            });
        }
        Ok(())
    }
}

/// A check that needs every event delivered; after the expected halt, the events after
/// it never are (the gap): then it is only a note of what it found.
fn push_unless_halted(out: &mut Outcome, check: Check) {
    if out.expect_halt {
        out.notes.push(format!(
            "not checked after the halt (the gap leaves it open): {}: {}",
            check.name, check.detail
        ));
    } else {
        out.checks.push(check);
    }
}

/// The per-transaction event check from the truth (message capture): how many
/// transactions have a wrong number of settlement events (one once settled, none while
/// PENDING) and how many a wrong number of `TransactionCreated` (exactly one), as the
/// table-mode query counts them from the outbox.
fn events_per_transaction(
    transactions: &[(String, String)],
    committed: &[Committed],
) -> (i64, i64) {
    let mut per: HashMap<&str, (i64, i64)> = HashMap::new();
    for c in committed {
        let e = per.entry(c.aggregate_id.as_str()).or_default();
        match c.event_type.as_str() {
            "TransactionCompleted" | "TransactionFailed" => e.0 += 1,
            "TransactionCreated" => e.1 += 1,
            _ => {}
        }
    }
    let (mut bad_settled, mut bad_created) = (0, 0);
    for (id, status) in transactions {
        let (settled, created) = per.get(id.as_str()).copied().unwrap_or_default();
        let want = if status == "PENDING" { 0 } else { 1 };
        bad_settled += i64::from(settled != want);
        bad_created += i64::from(created != 1);
    }
    (bad_settled, bad_created)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(aggregate_id: &str, event_type: &str) -> Committed {
        Committed {
            id: format!("{aggregate_id}-{event_type}"),
            source: "transaction_db".into(),
            aggregate_type: "transaction".into(),
            aggregate_id: aggregate_id.into(),
            event_type: event_type.into(),
        }
    }

    #[test]
    fn each_transaction_needs_one_created_and_one_settlement_once_settled() {
        let committed = [
            event("t1", "TransactionCreated"),
            event("t1", "TransactionCompleted"),
            event("t2", "TransactionCreated"),
            event("t3", "TransactionCreated"),
            event("t3", "TransactionFailed"),
            event("t3", "TransactionFailed"),
        ];
        let tx = |id: &str, status: &str| (id.to_string(), status.to_string());
        assert_eq!(
            events_per_transaction(&[tx("t1", "COMPLETED"), tx("t2", "PENDING")], &committed),
            (0, 0)
        );
        // t2 settled without its event, t3 settled twice, t4 never created.
        assert_eq!(
            events_per_transaction(
                &[tx("t2", "FAILED"), tx("t3", "FAILED"), tx("t4", "PENDING")],
                &committed
            ),
            (2, 1)
        );
    }
}
