//! The benchmark command keeps working: a `--quick` run with tiny sizes against the
//! local stack, with relay-cdc in both delivery modes, prints every table row, and
//! relay-cdc keeps commit order in it; and one with both capture modes (rows, messages)
//! prints both rows of every workload. They need neither Maven nor a JVM of their own
//! (Debezium is off unless `--debezium`).

use std::path::Path;
use std::process::Command;

#[test]
fn a_quick_bench_run_prints_every_row_for_both_delivery_modes() {
    let bench = env!("CARGO_BIN_EXE_relay-bench");
    // The relay binary of the same profile (`cargo test --workspace` builds it).
    let relay = Path::new(bench).with_file_name("relay-cdc");
    assert!(
        relay.exists(),
        "no relay binary at {} (cargo build -p relay-cdc)",
        relay.display()
    );
    let out = Command::new(bench)
        .args([
            "--quick",
            "--rows",
            "400",
            "--duration",
            "1",
            "--pairs",
            "5",
            "--delivery",
            "at-least-once,exactly-once",
        ])
        .arg("--relay-bin")
        .arg(&relay)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "relay-bench failed:\n{stderr}\n{stdout}"
    );

    // The cells of the table row whose first cells are `key`.
    let row = |key: &[&str]| -> Vec<String> {
        stdout
            .lines()
            .filter(|l| l.starts_with('|'))
            .map(|l| {
                l.trim_matches('|')
                    .split('|')
                    .map(|c| c.trim().to_string())
                    .collect::<Vec<_>>()
            })
            .find(|cells| cells.len() >= key.len() && cells.iter().zip(key).all(|(c, k)| c == k))
            .unwrap_or_else(|| panic!("no row {key:?} in:\n{stdout}"))
    };
    let filled = |cells: &[String], columns: std::ops::Range<usize>| {
        for i in columns {
            assert!(
                cells[i] != "-" && !cells[i].is_empty(),
                "column {i} is empty: {cells:?}"
            );
        }
    };
    for workload in ["1 rows/txn, 100 B", "1000 rows/txn, 1 KiB"] {
        // Ceiling, Kafka ingest (rate and CPU), the relay's rates and its CPU
        // (PostgreSQL's included).
        let alo = row(&[workload, "at-least-once"]);
        assert_eq!(alo.len(), 19, "{alo:?}");
        filled(&alo, 2..16);
        assert_eq!(alo[16..], ["-", "-", "-"], "{alo:?}");
        // The bench fails a run whose exactly-once relay committed no Kafka transaction;
        // the mean records per transaction (at least one event and the checkpoint) and
        // its commit time are read from that relay's metrics.
        let eo = row(&[workload, "exactly-once"]);
        assert_eq!(eo.len(), 19, "{eo:?}");
        filled(&eo, 2..19);
        let records: f64 = eo[17].parse().unwrap_or_else(|_| panic!("{eo:?}"));
        assert!(records >= 2.0, "records per Kafka transaction: {eo:?}");
    }
    for system in [
        "relay-cdc",
        "relay-cdc (exactly-once)",
        "polling 1 s",
        "polling 10 ms",
    ] {
        let cells = row(&[&format!("{system} @ 500/s")]);
        assert_eq!(cells.len(), 15, "{cells:?}");
        filled(&cells, 1..9);
        let order = row(&[system]);
        assert_eq!(
            order[1..3],
            ["5".to_string(), "10".to_string()],
            "{order:?}"
        );
    }
    for system in ["relay-cdc", "relay-cdc (exactly-once)"] {
        assert_eq!(
            row(&[system])[3],
            "0",
            "{system} published out of commit order"
        );
    }
    assert!(stdout.contains("### Targets"), "{stdout}");
    // Debezium (Maven, a JVM) runs only when asked for.
    assert!(!stdout.contains("Debezium"), "{stdout}");
}

#[test]
fn a_quick_bench_run_prints_every_row_for_both_capture_modes() {
    let bench = env!("CARGO_BIN_EXE_relay-bench");
    let relay = Path::new(bench).with_file_name("relay-cdc");
    let out = Command::new(bench)
        .args([
            "--quick",
            "--rows",
            "400",
            "--only",
            "throughput",
            "--capture",
            "table,messages",
        ])
        .arg("--relay-bin")
        .arg(&relay)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "relay-bench failed:\n{stderr}\n{stdout}"
    );
    let row = |key: [&str; 2]| -> Vec<String> {
        stdout
            .lines()
            .map(|l| {
                l.trim_matches('|')
                    .split('|')
                    .map(|c| c.trim().to_string())
                    .collect::<Vec<_>>()
            })
            .find(|cells| cells.len() > 2 && cells[0] == key[0] && cells[1] == key[1])
            .unwrap_or_else(|| panic!("no row {key:?} in:\n{stdout}"))
    };
    for workload in ["1 rows/txn, 100 B", "1000 rows/txn, 1 KiB"] {
        // The bench fails a run whose relay did not publish every event (none
        // dead-lettered) and, for rows, mark every row: each cell is a measurement.
        for capture in ["table", "messages"] {
            let cells = row([workload, capture]);
            assert_eq!(cells.len(), 18, "{cells:?}");
            for (i, c) in cells.iter().enumerate() {
                assert!(c != "-" && !c.is_empty(), "column {i} is empty: {cells:?}");
            }
        }
    }
    assert!(
        stdout.contains("- messages: relay ≥ 90 % of the message ceiling"),
        "{stdout}"
    );
    assert!(
        stdout.contains("- messages: pipeline CPU per 100k events"),
        "{stdout}"
    );
}
