//! The markdown report: one table row per scenario, then what each scenario did.
//!
//! Duplicates have two columns: as a `read_committed` consumer read them (the
//! verdict's; in exactly-once mode any is a failure) and as a `read_uncommitted` one
//! did (records of aborted Kafka transactions included; never part of the verdict).
//!
//! Four columns show what recovered, as the processes counted it (see
//! `scenario::recovered`): the relays' session restarts, the stuck producers they
//! replaced, the orphans their audit published (any fails the scenario) and
//! transaction-service's consumer rebuilds.
//!
//! With message capture (`--capture messages`) there is no table: "orphans published"
//! says `n/a` (no audit runs), a scenario that needs the table is a row of `n/a` with
//! its reason, and a scenario whose expected end is the documented halt shows the
//! events the halt left behind as the gap they are.

use std::fmt::Write;
use std::time::Duration;
use testkit::Delivery;

use crate::scenario::{Outcome, Recovered};

/// Column headers of the table (the test suite reads the table by these names).
pub const COLUMNS: [&str; 14] = [
    "scenario",
    "committed",
    "delivered",
    "lost",
    "duplicates (read_committed)",
    "duplicates (read_uncommitted)",
    "invented",
    "order violations (aggregate / source)",
    "time to recover",
    "relay restarts",
    "stuck producers replaced",
    "orphans published",
    "consumer rebuilds",
    "end-to-end",
];

/// The four counts of what recovered; "—" where the scenario stopped before its
/// processes were read, "?" for a service that did not answer.
fn recovered_cells(o: &Outcome) -> [String; 4] {
    let mut cells = recovered_counts(o);
    if o.no_table {
        cells[2] = "n/a".to_string();
    }
    cells
}

fn recovered_counts(o: &Outcome) -> [String; 4] {
    match o.recovered {
        None => std::array::from_fn(|_| "—".to_string()),
        Some(Recovered {
            relay_restarts,
            stuck_producers,
            orphans,
            consumer_rebuilds,
            unread: _,
        }) => [
            relay_restarts.to_string(),
            stuck_producers.to_string(),
            orphans.to_string(),
            consumer_rebuilds.map_or_else(|| "?".to_string(), |n| n.to_string()),
        ],
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// "max of N faults", "never" if one did not recover, "—" without faults.
pub fn recovery_cell(o: &Outcome) -> String {
    let mut cell = if o.recoveries.is_empty() {
        "—".to_string()
    } else if o.recoveries.iter().any(Option::is_none) {
        "never".to_string()
    } else {
        let max = o
            .recoveries
            .iter()
            .flatten()
            .max()
            .copied()
            .unwrap_or_default();
        if o.recoveries.len() == 1 {
            secs(max)
        } else {
            format!("{} (max of {})", secs(max), o.recoveries.len())
        }
    };
    if let Some(t) = o.takeovers.iter().max() {
        write!(cell, "; takeover ≤ {}", secs(*t)).expect("write to string");
    }
    cell
}

fn e2e_cell(o: &Outcome) -> String {
    if o.error.is_some() {
        return "ERROR".into();
    }
    let failed: Vec<&str> = o
        .checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.name.as_str())
        .collect();
    if failed.is_empty() {
        format!("ok ({} checks)", o.checks.len())
    } else {
        format!("FAIL: {}", failed.join("; "))
    }
}

/// The table alone.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut s = String::new();
    writeln!(s, "| {} |", COLUMNS.join(" | ")).expect("write to string");
    writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|"
    )
    .expect("write to string");
    for o in outcomes {
        if o.not_applicable.is_some() {
            let na = vec!["n/a"; COLUMNS.len() - 2].join(" | ");
            writeln!(
                s,
                "| {}. {} | {na} | n/a: needs the outbox table (see below) |",
                o.scenario.number(),
                o.scenario.title(),
            )
            .expect("write to string");
            continue;
        }
        let t = &o.tally;
        let [restarts, stuck, orphans, rebuilds] = recovered_cells(o);
        let lost = if o.expect_halt {
            format!("{} (gap after the halt)", t.lost)
        } else {
            t.lost.to_string()
        };
        writeln!(
            s,
            "| {}. {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {restarts} | {stuck} | {orphans} | {rebuilds} | {} |",
            o.scenario.number(),
            o.scenario.title(),
            t.committed,
            t.delivered,
            lost,
            t.duplicates,
            o.duplicates_uncommitted
                .map_or_else(|| "—".to_string(), |d| d.to_string()),
            t.invented,
            t.order_aggregate,
            t.order_source,
            recovery_cell(o),
            e2e_cell(o)
        )
        .expect("write to string");
    }
    s
}

/// The whole report: table, verdict, and per-scenario details.
pub fn render(outcomes: &[Outcome], delivery: Delivery, preface: &str) -> String {
    let mut s = String::new();
    writeln!(s, "{preface}\n").expect("write to string");
    s.push_str(&table(outcomes));
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.passed())
        .map(|o| format!("{} ({})", o.scenario.number(), o.failures().join("; ")))
        .collect();
    let not_applicable: Vec<String> = outcomes
        .iter()
        .filter(|o| o.not_applicable.is_some())
        .map(|o| o.scenario.number().to_string())
        .collect();
    let halted: Vec<String> = outcomes
        .iter()
        .filter(|o| o.expect_halt)
        .map(|o| o.scenario.number().to_string())
        .collect();
    let mut verdict = if failed.is_empty() {
        match delivery {
            Delivery::AtLeastOnce => "PASS: nothing lost, nothing invented, no order violation, every end-to-end check holds",
            Delivery::ExactlyOnce => "PASS: nothing lost, nothing invented, nothing read twice (read_committed), no order violation, every end-to-end check holds",
        }
        .to_string()
    } else {
        format!("FAIL in scenario(s) {}", failed.join(", "))
    };
    if !halted.is_empty() {
        write!(
            verdict,
            "; scenario(s) {} ended in the documented halt (its gap not counted as lost)",
            halted.join(", ")
        )
        .expect("write to string");
    }
    if !not_applicable.is_empty() {
        write!(
            verdict,
            "; scenario(s) {} not applicable without the outbox table (not run)",
            not_applicable.join(", ")
        )
        .expect("write to string");
    }
    writeln!(s, "\n**{verdict}**\n").expect("write to string");
    for o in outcomes {
        writeln!(
            s,
            "### {}. {} ({:.0} s)\n",
            o.scenario.number(),
            o.scenario.title(),
            o.elapsed.as_secs_f64()
        )
        .expect("write to string");
        if let Some(why) = &o.not_applicable {
            writeln!(s, "- **not applicable**: {why}").expect("write to string");
        }
        if let Some(e) = &o.error {
            writeln!(s, "- **error**: {e}").expect("write to string");
        }
        if o.orphans() > 0 {
            writeln!(
                s,
                "- **orphans published**: the relays' audit found {} PENDING rows the slot had skipped and published them (`relay_orphans_total`); a drill never moves a slot or changes the publication, so each is a bug to find (the relays' logs name them)",
                o.orphans()
            )
            .expect("write to string");
        }
        if let Some(r) = o.recovered.filter(|r| r.unread > 0) {
            writeln!(
                s,
                "- the relay counts are lower bounds: {} relay processes ended before their counters could be read",
                r.unread
            )
            .expect("write to string");
        }
        if o.duplicates_forbidden() {
            writeln!(
                s,
                "- **duplicates under exactly-once**: a read_committed consumer read {} records beyond the first copy of their event",
                o.tally.duplicates
            )
            .expect("write to string");
        }
        for c in &o.checks {
            writeln!(
                s,
                "- [{}] {}: {}",
                if c.ok { "x" } else { " " },
                c.name,
                c.detail
            )
            .expect("write to string");
        }
        for n in &o.notes {
            writeln!(s, "- {n}").expect("write to string");
        }
        if !o.recoveries.is_empty() {
            let all: Vec<String> = o
                .recoveries
                .iter()
                .map(|r| r.map(secs).unwrap_or_else(|| "never".into()))
                .collect();
            writeln!(s, "- time to recover per fault: {}", all.join(", "))
                .expect("write to string");
        }
        if o.expect_halt && o.tally.lost > 0 {
            writeln!(
                s,
                "- the {} events committed but never delivered are the gap the documented halt leaves (the relay cannot tell what its lost slot had not delivered); the \"lost\" examples below are from it",
                o.tally.lost
            )
            .expect("write to string");
        }
        for e in &o.tally.examples {
            writeln!(s, "- {e}").expect("write to string");
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{Check, Scenario};
    use crate::verify::Tally;

    fn outcome() -> Outcome {
        Outcome {
            tally: Tally {
                committed: 10,
                delivered: 10,
                duplicates: 2,
                ..Tally::default()
            },
            duplicates_uncommitted: Some(5),
            recoveries: vec![
                Some(Duration::from_millis(1500)),
                Some(Duration::from_millis(900)),
            ],
            takeovers: vec![Duration::from_millis(700)],
            checks: vec![Check {
                name: "c".into(),
                ok: true,
                detail: "d".into(),
            }],
            recovered: Some(Recovered {
                relay_restarts: 3,
                stuck_producers: 1,
                orphans: 0,
                consumer_rebuilds: Some(2),
                unread: 0,
            }),
            elapsed: Duration::from_secs(30),
            ..Outcome::new(Scenario::Standby, Delivery::AtLeastOnce)
        }
    }

    /// The cell of `column` in the first row of `table`, found by the header's name as
    /// the test suite finds it.
    fn cell(table: &str, column: &str) -> String {
        let cells = |l: &str| -> Vec<String> {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        };
        let mut lines = table.lines();
        let header = cells(lines.next().unwrap());
        let row = cells(lines.nth(1).unwrap());
        assert_eq!(header.len(), row.len(), "{table}");
        let i = header.iter().position(|h| h == column).unwrap();
        row[i].clone()
    }

    #[test]
    fn a_row_shows_counts_recovery_and_checks() {
        let t = table(&[outcome()]);
        let header = t.lines().next().unwrap();
        assert!(
            header.contains("| duplicates (read_committed) | duplicates (read_uncommitted) |"),
            "{header}"
        );
        let row = t.lines().nth(2).unwrap();
        assert!(row.starts_with("| 4. active relay killed"), "{row}");
        assert!(row.contains("| 10 | 10 | 0 | 2 | 5 | 0 | 0 / 0 |"), "{row}");
        assert!(
            row.contains("1.50 s (max of 2); takeover ≤ 0.70 s"),
            "{row}"
        );
        assert!(row.ends_with("| ok (1 checks) |"), "{row}");
    }

    #[test]
    fn what_recovered_has_a_column_each() {
        let t = table(&[outcome()]);
        assert_eq!(
            t.lines().nth(1).unwrap().matches('|').count(),
            COLUMNS.len() + 1
        );
        assert_eq!(cell(&t, "relay restarts"), "3");
        assert_eq!(cell(&t, "stuck producers replaced"), "1");
        assert_eq!(cell(&t, "orphans published"), "0");
        assert_eq!(cell(&t, "consumer rebuilds"), "2");
        assert_eq!(cell(&t, "end-to-end"), "ok (1 checks)");
        let unread = Outcome {
            recovered: None,
            ..outcome()
        };
        assert_eq!(cell(&table(&[unread]), "orphans published"), "—");
        let silent_service = Outcome {
            recovered: Some(Recovered {
                consumer_rebuilds: None,
                ..outcome().recovered.unwrap()
            }),
            ..outcome()
        };
        assert_eq!(cell(&table(&[silent_service]), "consumer rebuilds"), "?");
    }

    #[test]
    fn an_orphan_fails_the_report_and_says_why() {
        let o = Outcome {
            recovered: Some(Recovered {
                orphans: 2,
                unread: 1,
                ..outcome().recovered.unwrap()
            }),
            ..outcome()
        };
        let text = render(&[o], Delivery::AtLeastOnce, "x");
        assert!(
            text.contains("**FAIL in scenario(s) 4 (2 orphans published"),
            "{text}"
        );
        assert!(
            text.contains("- **orphans published**: the relays' audit found 2 PENDING rows"),
            "{text}"
        );
        assert!(text.contains("lower bounds: 1 relay processes"), "{text}");
        assert_eq!(cell(&table(&[outcome()]), "orphans published"), "0");
    }

    #[test]
    fn a_failed_check_or_an_unrecovered_fault_shows_in_the_row() {
        let mut o = outcome();
        o.recoveries.push(None);
        o.checks[0].ok = false;
        let t = table(&[o]);
        assert!(t.contains("never"));
        assert!(t.contains("FAIL: c"));
        assert!(render(&[outcome()], Delivery::AtLeastOnce, "x").contains("PASS"));
    }

    #[test]
    fn without_a_table_orphans_are_not_applicable_and_so_is_a_scenario_that_needs_it() {
        let o = Outcome {
            no_table: true,
            ..outcome()
        };
        assert_eq!(cell(&table(&[o]), "orphans published"), "n/a");
        let na = Outcome {
            no_table: true,
            not_applicable: Some("nothing is marked PROCESSED".into()),
            ..Outcome::new(Scenario::AckBeforeMark, Delivery::AtLeastOnce)
        };
        let t = table(&[na]);
        assert_eq!(
            t.lines().nth(2).unwrap().matches('|').count(),
            COLUMNS.len() + 1,
            "{t}"
        );
        assert_eq!(cell(&t, "lost"), "n/a");
        assert_eq!(cell(&t, "committed"), "n/a");
        assert!(cell(&t, "end-to-end").starts_with("n/a"), "{t}");
        let na = Outcome {
            not_applicable: Some("nothing is marked PROCESSED".into()),
            ..Outcome::new(Scenario::AckBeforeMark, Delivery::AtLeastOnce)
        };
        let text = render(&[outcome(), na], Delivery::AtLeastOnce, "x");
        assert!(
            text.contains("**PASS: nothing lost") && text.contains("scenario(s) 5 not applicable"),
            "{text}"
        );
        assert!(
            text.contains("- **not applicable**: nothing is marked PROCESSED"),
            "{text}"
        );
    }

    #[test]
    fn an_expected_halt_shows_its_gap_as_such() {
        let o = Outcome {
            expect_halt: true,
            tally: Tally {
                committed: 10,
                delivered: 6,
                lost: 4,
                ..Tally::default()
            },
            ..outcome()
        };
        let text = render(&[o], Delivery::AtLeastOnce, "x");
        assert_eq!(cell(&table_of(&text), "lost"), "4 (gap after the halt)");
        assert!(text.contains("ended in the documented halt"), "{text}");
        assert!(text.contains("**PASS"), "{text}");
    }

    fn table_of(text: &str) -> String {
        text.lines()
            .skip_while(|l| !l.starts_with("| scenario"))
            .take(3)
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn duplicates_under_exactly_once_fail_the_report_and_say_why() {
        let o = Outcome {
            delivery: Delivery::ExactlyOnce,
            ..outcome()
        };
        let text = render(&[o], Delivery::ExactlyOnce, "x");
        assert!(
            text.contains(
                "**FAIL in scenario(s) 4 (2 read twice by read_committed under exactly-once)**"
            ),
            "{text}"
        );
        assert!(
            text.contains("read_committed consumer read 2 records beyond the first copy"),
            "{text}"
        );
        let clean = Outcome {
            delivery: Delivery::ExactlyOnce,
            tally: Tally {
                duplicates: 0,
                ..outcome().tally
            },
            ..outcome()
        };
        let text = render(&[clean], Delivery::ExactlyOnce, "x");
        assert!(text.contains("**PASS"), "{text}");
        assert!(
            text.contains("nothing read twice (read_committed)"),
            "{text}"
        );
    }
}
