//! The short drill, as the test suite runs it: the real binaries, a private stack of
//! each test's own (a temporary folder, free ports), and the report's table read back.
//! Five times: at-least-once with scenarios 1–6, the same with message capture;
//! exactly-once on the secured stack with
//! scenarios 1–3, where a `read_committed` consumer must also read no event twice; the
//! primary failover (scenario 7) on PostgreSQL 17; the Kafka cluster faults (scenario 8)
//! on three brokers. The runs take turns (one stack at a time on the 2-core machine).
//! Whatever happens, the drill's
//! process group is killed and the private stack stopped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Far above the few minutes the short drill takes; only a hang reaches it.
const HARD_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// One drill at a time: each brings up a PostgreSQL and a Kafka of its own and loads
/// both services; two at once would only measure the machine.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Stops everything the drill may have left: its process group (services, relays),
/// then the private stack (PostgreSQL and Kafka run in sessions of their own).
struct Cleanup {
    repo: PathBuf,
    dir: PathBuf,
    env: Vec<(String, String)>,
    pgid: Option<u32>,
    passed: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pgid}")])
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new(self.repo.join("scripts/stack"))
            .arg("down")
            .envs(self.env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if self.passed {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("drill files (logs, report) kept in {}", self.dir.display());
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The report's table: one map from column name to cell per scenario row.
fn table_rows(report: &str) -> Vec<HashMap<String, String>> {
    let cells = |l: &str| -> Vec<String> {
        l.trim()
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_string())
            .collect()
    };
    let Some(header) = report.lines().find(|l| l.starts_with("| scenario |")) else {
        return Vec::new();
    };
    let names = cells(header);
    report
        .lines()
        .filter(|l| l.starts_with("| ") && l.chars().nth(2).is_some_and(|c| c.is_ascii_digit()))
        .map(|l| names.iter().cloned().zip(cells(l)).collect())
        .collect()
}

/// Runs the short drill with `args` on a private stack and returns its report; panics
/// (after cleaning up) if the drill did not exit 0.
fn run_short_drill(args: &[&str], env: &[(&str, &str)]) -> (String, Cleanup) {
    use std::os::unix::process::CommandExt;

    let repo = testkit::repo_root();
    let drill = PathBuf::from(env!("CARGO_BIN_EXE_outbox-drill"));
    let bin_dir = drill.parent().expect("bin dir").to_path_buf();
    testkit::proc::build_service_binaries(&bin_dir);

    let dir = std::env::temp_dir().join(format!("outbox-drill-test-{}", testkit::unique_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    // Below the ephemeral range, so no client socket holds one when a server binds it:
    // PostgreSQL and its standby, then Kafka's ten (three brokers and their
    // controllers interleaved, controllers 4 and 5 on controller + 6 and + 8).
    let base = testkit::free_port_block(12);
    let (pg, kafka, controller) = (base, base + 2, base + 3);
    let mut cleanup = Cleanup {
        repo: repo.clone(),
        dir: dir.clone(),
        env: vec![
            ("STACK_DIR".into(), dir.join("stack").display().to_string()),
            ("PG_PORT".into(), pg.to_string()),
            ("KAFKA_PORT".into(), kafka.to_string()),
            ("KAFKA_CONTROLLER_PORT".into(), controller.to_string()),
            ("STANDBY_PORT".into(), (pg + 1).to_string()),
        ]
        .into_iter()
        .chain(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .collect(),
        pgid: None,
        passed: false,
    };

    let report = dir.join("report.md");
    let (out, err) = (dir.join("drill.out"), dir.join("drill.err"));
    let mut child = Command::new(&drill)
        .arg("--short")
        .args(args)
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--repo")
        .arg(&repo)
        .arg("--stack-dir")
        .arg(dir.join("stack"))
        .args(["--pg-port", &pg.to_string()])
        .args(["--kafka-port", &kafka.to_string()])
        .args(["--kafka-controller-port", &controller.to_string()])
        .arg("--report")
        .arg(&report)
        .env("RUST_LOG", "info,rdkafka=off,librdkafka=off,sqlx=warn")
        .env_remove("PG_VERSION")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        // A group of its own: on any failure the whole tree is killed at once.
        .process_group(0)
        .spawn()
        .expect("the drill starts");
    cleanup.pgid = Some(child.id());

    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > HARD_TIMEOUT {
            panic!(
                "the short drill ran over {HARD_TIMEOUT:?}\n--- stderr (tail) ---\n{}",
                tail(&err, 40)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!(
        "short drill {args:?}: {status} after {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    assert_eq!(
        status.code(),
        Some(0),
        "the drill failed\n--- report ---\n{text}\n--- stderr (tail) ---\n{}",
        tail(&err, 40)
    );
    (text, cleanup)
}

/// Every scenario row: zero lost, invented, out of order; everything delivered; no
/// orphan published; what recovered counted; every end-to-end check held. Returns the
/// rows for mode-specific checks.
fn assert_nothing_lost(text: &str, scenarios: usize) -> Vec<HashMap<String, String>> {
    let rows = table_rows(text);
    assert_eq!(rows.len(), scenarios, "one row per scenario\n{text}");
    for r in &rows {
        let cell = |c: &str| {
            r.get(c)
                .unwrap_or_else(|| panic!("no column {c:?} in {r:?}"))
                .as_str()
        };
        // A scenario that needs the outbox table, in message mode: not run, and said so.
        if cell("end-to-end").starts_with("n/a") {
            assert!(text.contains("- **not applicable**: "), "{text}");
            continue;
        }
        let n = |c: &str| {
            cell(c)
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("{c}: {r:?}"))
        };
        assert!(n("committed") > 100, "load reached the outbox: {r:?}");
        assert_eq!((n("lost"), n("invented")), (0, 0), "{r:?}");
        assert_eq!(n("delivered"), n("committed"), "{r:?}");
        if cell("orphans published") == "n/a" {
            assert!(
                text.contains(", capture messages:"),
                "no audit only without a table: {r:?}"
            );
        } else {
            assert_eq!(
                n("orphans published"),
                0,
                "an orphan in a drill is a bug: {r:?}"
            );
        }
        for c in [
            "relay restarts",
            "stuck producers replaced",
            "consumer rebuilds",
        ] {
            n(c);
        }
        assert_eq!(
            cell("order violations (aggregate / source)"),
            "0 / 0",
            "order violations: {r:?}"
        );
        assert!(
            cell("end-to-end").starts_with("ok"),
            "end-to-end checks: {r:?}\n{text}"
        );
    }
    assert!(text.contains("**PASS"), "{text}");
    rows
}

#[test]
fn the_short_drill_loses_nothing_invents_nothing_and_keeps_order() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (text, mut cleanup) = run_short_drill(&[], &[]);
    assert_nothing_lost(&text, 6);
    eprintln!("{text}");
    cleanup.passed = true;
}

/// Events as logical decoding messages (`--capture messages`): no outbox table, the
/// verdict's truth read from the drill's own slots. Every scenario that can run without
/// the table loses nothing; scenario 5 (a crash between the ack and PROCESSED) is
/// reported not applicable with its reason; no audit, so no orphans column.
#[test]
fn the_short_drill_with_message_capture_loses_nothing_and_names_what_needs_the_table() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (text, mut cleanup) = run_short_drill(&["--capture", "messages"], &[]);
    let rows = assert_nothing_lost(&text, 6);
    for r in &rows {
        assert_eq!(r["orphans published"], "n/a", "{r:?}");
        let scenario = &r["scenario"];
        if scenario.starts_with("5.") {
            assert!(r["end-to-end"].starts_with("n/a"), "{r:?}");
        } else {
            assert!(r["end-to-end"].starts_with("ok"), "{r:?}");
        }
    }
    assert!(
        text.contains("[x] no outbox row written (message capture)"),
        "{text}"
    );
    assert!(text.contains("scenario(s) 5 not applicable"), "{text}");
    eprintln!("{text}");
    cleanup.passed = true;
}

/// Exactly-once on the secured stack, in one run: the faults relay-cdc's own tests do
/// not put to a transactional producer (a broker stop, a PostgreSQL restart) and the
/// kill -9, with TLS to PostgreSQL, SASL_SSL to Kafka and every component as its
/// least-privilege principal (transactional ids under ACLs). The standby takeover and the
/// crash between ack and PROCESSED in exactly-once are relay-cdc's tests
/// (`exactly_once::a_zombie_relay_*`, `exactly_once::a_crash_after_the_kafka_commit_*`),
/// on both stacks.
#[test]
fn the_exactly_once_short_drill_on_the_secured_stack_delivers_every_row_once_to_read_committed() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (text, mut cleanup) = run_short_drill(
        &[
            "--security",
            "tls",
            "--delivery",
            "exactly-once",
            "--scenarios",
            "1,2,3",
        ],
        &[("STACK_SECURITY", "tls")],
    );
    for r in assert_nothing_lost(&text, 3) {
        assert_eq!(
            r["duplicates (read_committed)"], "0",
            "exactly-once: read_committed read an event twice: {r:?}\n{text}"
        );
    }
    assert!(text.contains("delivery exactly-once"), "{text}");
    assert!(text.contains("secured stack (TLS verify-full"), "{text}");
    eprintln!("{text}");
    cleanup.passed = true;
}

#[test]
fn the_short_primary_failover_drill_on_postgresql_17_loses_nothing() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (text, mut cleanup) = run_short_drill(&["--scenarios", "7"], &[("PG_VERSION", "17")]);
    assert_nothing_lost(&text, 1);
    assert!(
        text.contains("PostgreSQL 17") && text.contains("failover slots on, synced"),
        "{text}"
    );
    assert!(
        text.contains("relay streaming from the promoted server"),
        "{text}"
    );
    eprintln!("{text}");
    cleanup.passed = true;
}

#[test]
fn the_short_kafka_cluster_drill_on_three_brokers_loses_nothing() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (text, mut cleanup) = run_short_drill(&["--scenarios", "8"], &[("KAFKA_NODES", "3")]);
    assert_nothing_lost(&text, 1);
    for fault in [
        "(leading the most partitions) killed -9",
        "rolling restart of the three brokers",
        "writes cannot reach 2 in-sync replicas",
    ] {
        assert!(text.contains(fault), "{fault}: {text}");
    }
    for check in [
        "[x] relay memory bounded while writes are refused",
        "[x] writes were refused for too few in-sync replicas",
        "[x] the outage shows in the relay's metrics",
    ] {
        assert!(text.contains(check), "{check}: {text}");
    }
    eprintln!("{text}");
    cleanup.passed = true;
}
