//! What `/proc` says about a process: CPU seconds (user + system) and resident memory
//! (current and peak). Used for the relay child and for the PostgreSQL backends that
//! serve each system under test.

use anyhow::{bail, Context};

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`, 100 on Linux).
pub fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    Ok(parse_stat_ticks(&text)? as f64 / clock_ticks())
}

/// utime + stime (clock ticks) from the text of `/proc/<pid>/stat`.
pub fn parse_stat_ticks(stat: &str) -> anyhow::Result<u64> {
    // The command name (field 2) is in parentheses and may hold spaces: split after it.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        bail!("unexpected /proc stat line")
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let field = |n: usize| -> anyhow::Result<u64> {
        fields
            .get(n - 3)
            .context("short /proc stat line")?
            .parse()
            .context("non-numeric /proc stat field")
    };
    Ok(field(14)? + field(15)?)
}

/// A `Vm*:` line of `/proc/<pid>/status` in bytes, e.g. `VmHWM` (peak RSS) or `VmRSS`.
pub fn status_bytes(pid: u32, key: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    parse_status_kib(&text, key)
        .map(|kib| kib * 1024)
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}

pub fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix(':')?;
        v.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// CPU seconds of each process that still exists (backends may exit under us).
pub fn cpu_by_pid(pids: &[u32]) -> std::collections::HashMap<u32, f64> {
    pids.iter()
        .filter_map(|p| Some((*p, cpu_seconds(*p).ok()?)))
        .collect()
}

/// CPU seconds the processes in `after` used since `before` was taken (a process
/// absent from `before` started in between and counts whole).
pub fn cpu_used(
    before: &std::collections::HashMap<u32, f64>,
    after: &std::collections::HashMap<u32, f64>,
) -> f64 {
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
    start: std::collections::HashMap<u32, f64>,
    last: std::collections::HashMap<u32, (K, f64)>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_survive_spaces_and_parentheses_in_the_name() {
        let line = "4242 (relay cdc (x)) S 1 4242 4242 0 -1 4194560 2000 0 0 0 150 25 0 0 20 0 9 0 123 456 789";
        assert_eq!(parse_stat_ticks(line).unwrap(), 175);
        assert!(parse_stat_ticks("garbage").is_err());
    }

    #[test]
    fn status_lines_are_read_in_kib() {
        let status = "Name:\trelay-cdc\nVmHWM:\t   40960 kB\nVmRSS:\t   30720 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(40960));
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(30720));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
    }

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
    fn this_process_has_cpu_time_and_a_peak_rss() {
        let me = std::process::id();
        assert!(cpu_seconds(me).unwrap() >= 0.0);
        assert!(status_bytes(me, "VmHWM").unwrap() > 0);
    }
}
