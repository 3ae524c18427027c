//! Processes: a child the harness starts ([`Process`]: a clean environment, a log file,
//! killed on drop), what `/proc` says about any process and the machine (read with
//! `procfs`), signals, and the shutdown signal the bench and the drill stop on.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use procfs::Current;

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(20);
/// Lines of a child's log an error quotes.
const LOG_LINES: usize = 80;

/// A command for `bin` that sees exactly `env` (plus `PATH` and `HOME`): nothing the
/// caller's shell exported for another stack (`DATABASE_URL`, `RELAY_*`, ...) leaks in.
/// Later pairs override earlier ones; an empty value unsets the variable.
pub fn command(bin: &Path, args: &[&str], env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(args).env_clear();
    for k in ["PATH", "HOME"] {
        if let Ok(v) = std::env::var(k) {
            cmd.env(k, v);
        }
    }
    for (k, v) in env {
        if v.is_empty() {
            cmd.env_remove(k);
        } else {
            cmd.env(k, v);
        }
    }
    cmd
}

/// A child process with its stdout and stderr in a log file; SIGKILLed and reaped when
/// dropped, so a failing test, bench or drill leaves nothing running.
pub struct Process {
    name: String,
    log: PathBuf,
    child: Child,
}

impl Process {
    /// Starts `cmd` (see [`command`]) with its output appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> anyhow::Result<Process> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("creating {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Process {
            name: name.to_string(),
            log,
            child,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The exit status, once the process has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Fails if the process has ended (it should run until told to stop).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.exited() {
            Some(status) => bail!("{} exited with {status}{}", self.name, self.log_end()),
            None => Ok(()),
        }
    }

    /// Polls `check` until it returns `Some`; fails, quoting the end of the log, when
    /// the process exits first or `timeout` passes.
    pub async fn wait_for<T, F, Fut>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut check: F,
    ) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                bail!(
                    "{} exited with {status} while waiting for {what}{}",
                    self.name,
                    self.log_end()
                );
            }
            if let Some(v) = check().await {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: no {what} after {timeout:?}{}",
                    self.name,
                    self.log_end()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until `url` answers 2xx.
    pub async fn wait_http_ok(
        &mut self,
        http: &reqwest::Client,
        url: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        self.wait_for(&format!("a 2xx answer at {url}"), timeout, || async {
            let r = http.get(url).timeout(Duration::from_secs(2)).send().await;
            r.is_ok_and(|r| r.status().is_success()).then_some(())
        })
        .await
    }

    /// SIGKILL: no chance to drain, mark or confirm anything.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to `timeout` for the exit; SIGKILL and an error after that.
    pub async fn stop(mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.exited() {
            return Ok(status);
        }
        // Fails only when the process is already gone: the wait below reaps it.
        let _ = signal(self.pid(), "TERM");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let (name, end) = (self.name.clone(), self.log_end());
                self.kill();
                bail!("{name} did not exit within {timeout:?} of SIGTERM; killed{end}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        cpu_seconds(self.pid())
    }

    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        rss_bytes(self.pid())
    }

    pub fn peak_rss_bytes(&self) -> anyhow::Result<u64> {
        peak_rss_bytes(self.pid())
    }

    fn log_end(&self) -> String {
        format!(
            "\n--- end of {} ---\n{}",
            self.log.display(),
            self.log_tail(LOG_LINES)
        )
    }
}

impl Drop for Process {
    /// A reaped child is not signalled again (std knows its status), so a reused pid is safe.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `signal` (`TERM`, `STOP`, `CONT`, ...) to process `pid`.
pub fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed with {status}");
    }
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM: what the bench and the drill stop on, so
/// their child processes are killed and their stacks and databases cleaned up.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

fn process(pid: u32) -> anyhow::Result<procfs::process::Process> {
    procfs::process::Process::new(i32::try_from(pid)?)
        .with_context(|| format!("no process {pid} in /proc"))
}

/// The command name of process `pid` (`/proc/<pid>/stat`'s `comm`, e.g. `java`).
pub fn command_name(pid: u32) -> anyhow::Result<String> {
    Ok(process(pid)?.stat()?.comm)
}

/// The CPU time of process `pid`, user and system, in seconds.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = process(pid)?
        .stat()
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    Ok((stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64)
}

/// The resident memory of process `pid` now (`VmRSS`), in bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS", |s| s.vmrss).map(|kib| kib * 1024)
}

/// The peak resident memory of process `pid` (`VmHWM`), in bytes.
pub fn peak_rss_bytes(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmHWM", |s| s.vmhwm).map(|kib| kib * 1024)
}

fn status_kib(
    pid: u32,
    key: &str,
    field: impl Fn(&procfs::process::Status) -> Option<u64>,
) -> anyhow::Result<u64> {
    let status = process(pid)?
        .status()
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    field(&status).with_context(|| format!("no {key} in /proc/{pid}/status"))
}

/// CPU seconds of each process in `pids` that still exists (backends may exit under us).
pub fn cpu_by_pid(pids: &[u32]) -> HashMap<u32, f64> {
    pids.iter()
        .filter_map(|p| Some((*p, cpu_seconds(*p).ok()?)))
        .collect()
}

/// CPU seconds the processes in `after` used since `before` was taken (a process
/// absent from `before` started in between and counts whole).
pub fn cpu_used(before: &HashMap<u32, f64>, after: &HashMap<u32, f64>) -> f64 {
    after
        .iter()
        .map(|(pid, t)| (t - before.get(pid).copied().unwrap_or(0.0)).max(0.0))
        .sum()
}

/// CPU seconds a changing set of processes (PostgreSQL backends) used over a window.
///
/// `begin` records the processes that exist when the window opens; `sample` reads the
/// processes that exist now and may be called as often as wanted; `used` is what every
/// process seen used since the window opened, a process first seen later counting
/// whole (it started inside the window). A process that starts and exits between two
/// samples is missed, and one that exits loses what it used since its last sample.
#[derive(Debug, Default, Clone)]
pub struct CpuTracker<K> {
    start: HashMap<u32, f64>,
    last: HashMap<u32, (K, f64)>,
}

impl<K: Clone + PartialEq> CpuTracker<K> {
    pub fn begin(pids: &[u32]) -> Self {
        Self {
            start: cpu_by_pid(pids),
            last: Default::default(),
        }
    }

    /// Reads the CPU time of `procs` (pid and a kind, e.g. walsender or not).
    pub fn sample(&mut self, procs: &[(u32, K)]) {
        for (pid, kind) in procs {
            if let Ok(t) = cpu_seconds(*pid) {
                self.last.insert(*pid, (kind.clone(), t));
            }
        }
    }

    /// CPU seconds used by the processes of `kind` since `begin`.
    pub fn used(&self, kind: &K) -> f64 {
        self.last
            .iter()
            .filter(|(_, (k, _))| k == kind)
            .map(|(pid, (_, t))| (t - self.start.get(pid).copied().unwrap_or(0.0)).max(0.0))
            .sum()
    }
}

/// What a report says about the machine it ran on.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub memory_bytes: u64,
    /// The 1, 5 and 15 minute load averages.
    pub load: [f32; 3],
}

/// The machine, from `/proc/cpuinfo`, `/proc/meminfo` and `/proc/loadavg` (unknown
/// parts empty or zero).
pub fn machine() -> Machine {
    let load = procfs::LoadAverage::current().map_or([0.0; 3], |l| [l.one, l.five, l.fifteen]);
    Machine {
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model: procfs::CpuInfo::current()
            .ok()
            .and_then(|c| c.model_name(0).map(str::to_string))
            .unwrap_or_else(|| "unknown CPU".into()),
        memory_bytes: procfs::Meminfo::current().map_or(0, |m| m.mem_total),
        load,
    }
}

/// Builds relay-cdc, user-service and transaction-service into `bin_dir` (a cargo
/// profile folder, as `CARGO_BIN_EXE_*` shows it), for tests that run them as a user
/// would: the drill's.
///
/// It builds their integration tests with the whole workspace selected
/// (`cargo test --workspace --no-run --test api --test relay`), which builds the three
/// binaries as a side effect, not `cargo build -p …`: cargo resolves features for the
/// packages a command selects, and a `-p` build compiled about twenty dependencies and
/// the workspace's crates a second time next to the suite's `--workspace` test build
/// (minutes of a cold CI run). Here it is a no-op inside `scripts/test`.
pub fn build_service_binaries(bin_dir: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.current_dir(crate::repo_root()).args([
        "test",
        "--workspace",
        "--no-run",
        "--quiet",
        "--test",
        "api",
        "--test",
        "relay",
    ]);
    if bin_dir.ends_with("release") {
        build.arg("--release");
    }
    let status = build.status().expect("cargo runs");
    assert!(
        status.success(),
        "building relay-cdc and the services failed"
    );
    for bin in ["relay-cdc", "user-service", "transaction-service"] {
        assert!(
            bin_dir.join(bin).is_file(),
            "{bin} was not built into {}",
            bin_dir.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_used_counts_new_processes_whole_and_ignores_gone_ones() {
        let before = [(1, 1.0), (2, 5.0)].into_iter().collect();
        let after = [(1, 1.5), (3, 0.25)].into_iter().collect();
        assert_eq!(cpu_used(&before, &after), 0.75);
    }

    #[test]
    fn a_tracker_splits_cpu_by_kind_and_counts_from_the_window_start() {
        let me = std::process::id();
        let mut t = CpuTracker::begin(&[me]);
        // Burn a little CPU so the sample is above the start.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        t.sample(&[(me, true), (u32::MAX, false)]);
        assert!(t.used(&true) >= 0.0);
        assert!(t.used(&true) <= cpu_seconds(me).unwrap());
        assert_eq!(t.used(&false), 0.0, "a pid that does not exist is ignored");
    }

    #[test]
    fn this_process_has_cpu_time_memory_and_a_name() {
        let me = std::process::id();
        assert!(cpu_seconds(me).unwrap() >= 0.0);
        // RSS first: other tests allocate meanwhile, and the peak only grows.
        let rss = rss_bytes(me).unwrap();
        assert!(rss > 0);
        assert!(peak_rss_bytes(me).unwrap() >= rss);
        assert!(!command_name(me).unwrap().is_empty());
        assert!(cpu_seconds(u32::MAX).is_err());
    }

    #[test]
    fn the_machine_has_cores_and_memory() {
        let m = machine();
        assert!(m.cores > 0 && m.memory_bytes > 0, "{m:?}");
    }

    #[tokio::test]
    async fn a_child_is_stopped_by_sigterm_and_its_environment_is_only_what_it_was_given() {
        let log = std::env::temp_dir().join(format!("testkit-proc-{}.log", crate::unique_suffix()));
        let env = [
            ("GREETING".to_string(), "hello".to_string()),
            ("GONE".to_string(), "x".to_string()),
            ("GONE".to_string(), String::new()),
        ];
        let script = "echo \"$GREETING ${GONE:-unset} ${CARGO:-clean}\"; exec sleep 30";
        let mut p = Process::spawn(
            "sh",
            command(Path::new("/bin/sh"), &["-c", script], &env),
            log.clone(),
        )
        .unwrap();
        p.wait_for("the greeting", Duration::from_secs(10), || async {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|t| t.contains('\n'))
        })
        .await
        .unwrap();
        assert_eq!(p.log_tail(1), "hello unset clean");
        p.check_alive().unwrap();
        let status = p.stop(Duration::from_secs(10)).await.unwrap();
        assert!(!status.success(), "sleep ends by the signal");
        let _ = std::fs::remove_file(log);
    }
}
