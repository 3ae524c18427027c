//! The benchmark command keeps working: a `--quick` run with tiny sizes against the
//! local stack prints every table row, and relay-cdc keeps commit order in it.

use std::path::Path;
use std::process::Command;

#[test]
fn a_quick_bench_run_prints_every_row() {
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

    // The cells of the table row whose first cell is `label`.
    let row = |label: &str| -> Vec<String> {
        stdout
            .lines()
            .filter(|l| l.starts_with('|'))
            .map(|l| {
                l.trim_matches('|')
                    .split('|')
                    .map(|c| c.trim().to_string())
                    .collect::<Vec<_>>()
            })
            .find(|cells| cells[0] == label)
            .unwrap_or_else(|| panic!("no row {label:?} in:\n{stdout}"))
    };
    for workload in ["1 rows/txn, 100 B", "1000 rows/txn, 1 KiB"] {
        let cells = row(workload);
        assert_eq!(cells.len(), 11, "{cells:?}");
        for (i, c) in cells.iter().enumerate().skip(1) {
            assert!(
                c != "-" && !c.is_empty(),
                "column {i} of {workload} is empty: {cells:?}"
            );
        }
    }
    for system in ["relay-cdc", "polling 1 s", "polling 10 ms"] {
        let cells = row(&format!("{system} @ 500/s"));
        assert_eq!(cells.len(), 13, "{cells:?}");
        let order = row(system);
        assert_eq!(
            order[1..3],
            ["5".to_string(), "10".to_string()],
            "{order:?}"
        );
    }
    assert_eq!(
        row("relay-cdc")[3],
        "0",
        "relay-cdc published out of commit order"
    );
    assert!(stdout.contains("### Targets"), "{stdout}");
}
