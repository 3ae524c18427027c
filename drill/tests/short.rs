//! The short drill, as the test suite runs it: the real binaries, a private stack of
//! this test's own (a temporary folder, free ports), all six scenarios, and the
//! report's table read back. Whatever happens, the drill's process group is killed and
//! the private stack stopped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Far above the few minutes the short drill takes; only a hang reaches it.
const HARD_TIMEOUT: Duration = Duration::from_secs(20 * 60);

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

/// Builds the binaries the drill starts, in the profile this test was built with, so
/// they sit next to the drill binary.
fn build_services(repo: &Path, bin_dir: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(repo).args([
        "build",
        "-p",
        "user-service",
        "-p",
        "transaction-service",
        "-p",
        "relay-cdc",
    ]);
    if bin_dir.ends_with("release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("cargo runs");
    assert!(status.success(), "building the services failed");
}

#[test]
fn the_short_drill_loses_nothing_invents_nothing_and_keeps_order() {
    use std::os::unix::process::CommandExt;

    let repo = testkit::repo_root();
    let drill = PathBuf::from(env!("CARGO_BIN_EXE_outbox-drill"));
    let bin_dir = drill.parent().expect("bin dir").to_path_buf();
    build_services(&repo, &bin_dir);

    let dir = std::env::temp_dir().join(format!("outbox-drill-test-{}", testkit::unique_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let (pg, kafka, controller) = (
        testkit::free_port(),
        testkit::free_port(),
        testkit::free_port(),
    );
    let mut cleanup = Cleanup {
        repo: repo.clone(),
        dir: dir.clone(),
        env: vec![
            ("STACK_DIR".into(), dir.join("stack").display().to_string()),
            ("PG_PORT".into(), pg.to_string()),
            ("KAFKA_PORT".into(), kafka.to_string()),
            ("KAFKA_CONTROLLER_PORT".into(), controller.to_string()),
        ],
        pgid: None,
        passed: false,
    };

    let report = dir.join("report.md");
    let (out, err) = (dir.join("drill.out"), dir.join("drill.err"));
    let mut child = Command::new(&drill)
        .args(["--short", "--bin-dir"])
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
        "short drill: {status} after {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    assert_eq!(
        status.code(),
        Some(0),
        "the drill failed\n--- report ---\n{text}\n--- stderr (tail) ---\n{}",
        tail(&err, 40)
    );

    // Read the table back: every scenario, zero lost, invented, out of order.
    let rows: Vec<Vec<String>> = text
        .lines()
        .filter(|l| l.starts_with("| ") && l.chars().nth(2).is_some_and(|c| c.is_ascii_digit()))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect();
    assert_eq!(rows.len(), 6, "one row per scenario\n{text}");
    for r in &rows {
        let n = |i: usize| r[i].parse::<u64>().unwrap_or_else(|_| panic!("{r:?}"));
        let (committed, delivered, lost, invented) = (n(1), n(2), n(3), n(5));
        assert!(committed > 100, "load reached the outbox: {r:?}");
        assert_eq!((lost, invented), (0, 0), "{r:?}");
        assert_eq!(delivered, committed, "{r:?}");
        assert_eq!(r[6], "0 / 0", "order violations: {r:?}");
        assert!(r[8].starts_with("ok"), "end-to-end checks: {r:?}\n{text}");
    }
    assert!(text.contains("**PASS"), "{text}");
    eprintln!("{text}");
    cleanup.passed = true;
}
