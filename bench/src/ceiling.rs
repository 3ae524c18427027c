//! The ceiling: `pg_recvlogical` decoding the slot with pgoutput into `/dev/null`. No
//! client logic at all, so its rows/s is what one walsender can give. For `--capture
//! messages` it is asked for the messages too (`-o messages=true`): the decode ceiling of
//! that mode.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};

use crate::db::format_lsn;

/// `pg_recvlogical` of the newest PostgreSQL installed, else the one on `PATH`.
pub fn find_pg_recvlogical() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let p = e.path().join("bin/pg_recvlogical");
            p.exists().then_some((v, p))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, p)| p)
        .unwrap_or_else(|| PathBuf::from("pg_recvlogical"))
}

pub struct Recv<'a> {
    pub bin: &'a Path,
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
    pub password: &'a str,
    pub database: &'a str,
    pub slot: &'a str,
    /// Ask pgoutput for logical decoding messages (PostgreSQL 14+).
    pub messages: bool,
}

/// Streams `slot` up to `end_lsn` and returns the seconds it took, start to exit.
pub async fn stream_to(r: &Recv<'_>, end_lsn: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let out = tokio::process::Command::new(r.bin)
        .args(["-h", r.host, "-p", &r.port.to_string(), "-U", r.user])
        .args(["-d", r.database, "--slot", r.slot, "--start", "--no-loop"])
        .args(["-P", "pgoutput", "-o", "proto_version=1"])
        .args(["-o", &format!("publication_names={}", outbox_publication())])
        .args(if r.messages {
            &["-o", "messages=true"][..]
        } else {
            &[]
        })
        .arg(format!("--endpos={}", format_lsn(end_lsn)))
        .args(["-f", "/dev/null"])
        .env("PGPASSWORD", r.password)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {}", r.bin.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "pg_recvlogical exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(seconds)
}

/// The publication `sql/*/0001_outbox.sql` creates.
fn outbox_publication() -> &'static str {
    "outbox_pub"
}
