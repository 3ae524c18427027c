//! Debezium as a further system under test: Kafka Connect standalone (the broker's
//! version) with Debezium's PostgreSQL connector and its Outbox Event Router, run as a
//! JVM child process. Its jars are fetched once with Maven (`bench/debezium/pom.xml`,
//! compiled in) into a cache folder; when Java or Maven is missing or the fetch fails,
//! [`libs`] says why, and the run reports Debezium as skipped instead of failing.
//!
//! The connector reads the outbox table through the migrations' publication
//! (`outbox_pub`) on a slot of its own, routes each row by `aggregate_type` to the
//! same topics relay-cdc writes (`<prefix>.<aggregate_type>`), keys it by
//! `aggregate_id`, writes `payload` as the value and `id` / `created_at` as the
//! `event_id` / `commit_time` headers the bench's reader looks for. It does not mark
//! rows PROCESSED: it does less work per row than relay-cdc.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

use crate::progress::progress;

/// The Debezium release the pom fetches.
pub const VERSION: &str = "3.6.1.Final";
/// What relay-bench runs `mvn dependency:copy-dependencies` on.
const POM: &str = include_str!("../debezium/pom.xml");
/// Marks a complete cache: holds the pom the jars were fetched with.
const STAMP: &str = ".pom.xml";
const FETCH_TIMEOUT: Duration = Duration::from_secs(900);
/// How long the JVM gets to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A folder of jars that runs Kafka Connect standalone with the Debezium connector.
#[derive(Debug, Clone)]
pub struct Libs {
    pub dir: PathBuf,
}

/// The cache folder: `DEBEZIUM_LIBS_CACHE`, else
/// `${XDG_CACHE_HOME:-$HOME/.cache}/outbox-relay/debezium-libs` (next to the broker's jars).
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DEBEZIUM_LIBS_CACHE") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("outbox-relay").join("debezium-libs")
}

/// Java 17+ and the jars (fetched with Maven on first use); `Err` is the reason
/// Debezium cannot run here, for the tables.
pub async fn libs() -> Result<Libs, String> {
    let major = java_major().await?;
    if major < 17 {
        return Err(format!(
            "Kafka Connect 4 needs Java 17 or newer, found {major}"
        ));
    }
    let dir = cache_dir();
    if is_cached(&dir) {
        return Ok(Libs { dir });
    }
    fetch(&dir).await?;
    Ok(Libs { dir })
}

fn is_cached(dir: &Path) -> bool {
    let stamp_ok = std::fs::read_to_string(dir.join(STAMP)).is_ok_and(|s| s == POM);
    let has_jars = std::fs::read_dir(dir).is_ok_and(|mut d| {
        d.any(|e| {
            e.is_ok_and(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("debezium-connector-postgres")
            })
        })
    });
    stamp_ok && has_jars
}

async fn java_major() -> Result<u32, String> {
    let out = Command::new("java")
        .arg("-version")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "java not found".to_string(),
            _ => format!("cannot run java: {e}"),
        })?;
    let text = String::from_utf8_lossy(&out.stderr);
    parse_java_major(&text).ok_or_else(|| "cannot read the version of java".to_string())
}

/// The major version in `java -version` output: `openjdk version "17.0.15" …` → 17,
/// `java version "1.8.0_392"` → 8.
fn parse_java_major(text: &str) -> Option<u32> {
    let v = text.split('"').nth(1)?;
    let mut parts = v.split(['.', '-', '_', '+']);
    match parts.next()?.parse().ok()? {
        1 => parts.next()?.parse().ok(),
        n => Some(n),
    }
}

/// Fetches the jars into a fresh folder beside `dir`, then moves it into place, so an
/// interrupted fetch never leaves a half-filled cache behind.
async fn fetch(dir: &Path) -> Result<(), String> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    let work = parent.join(format!("debezium-fetch-{}", testkit::unique_suffix()));
    let log = parent.join("debezium-mvn.log");
    let result = async {
        std::fs::create_dir_all(&work)
            .map_err(|e| format!("cannot create {}: {e}", work.display()))?;
        let pom = work.join("pom.xml");
        std::fs::write(&pom, POM).map_err(|e| format!("cannot write {}: {e}", pom.display()))?;
        let out = work.join("libs");
        let log_file = std::fs::File::create(&log)
            .map_err(|e| format!("cannot write {}: {e}", log.display()))?;
        let err_file = log_file.try_clone().map_err(|e| e.to_string())?;
        progress(format!(
            "fetching Debezium {VERSION} and Kafka Connect with Maven into {} (first run only)",
            dir.display()
        ));
        let status = Command::new("mvn")
            .args(["-q", "-B", "-f"])
            .arg(&pom)
            .arg("dependency:copy-dependencies")
            .arg(format!("-DoutputDirectory={}", out.display()))
            .arg("-DincludeScope=runtime")
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(err_file)
            .kill_on_drop(true)
            .status();
        let status = tokio::time::timeout(FETCH_TIMEOUT, status)
            .await
            .map_err(|_| {
                format!(
                    "mvn did not finish within {FETCH_TIMEOUT:?}; see {}",
                    log.display()
                )
            })?
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => format!(
                    "mvn not found (needed once to fetch the jars into {})",
                    dir.display()
                ),
                _ => format!("cannot run mvn: {e}"),
            })?;
        if !status.success() {
            return Err(format!(
                "mvn dependency:copy-dependencies failed ({status}); see {}",
                log.display()
            ));
        }
        std::fs::write(out.join(STAMP), POM).map_err(|e| e.to_string())?;
        let _ = std::fs::remove_dir_all(dir);
        std::fs::rename(&out, dir)
            .map_err(|e| format!("cannot move the jars to {}: {e}", dir.display()))?;
        Ok(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// One Debezium deployment: a Connect worker with one connector.
#[derive(Debug, Clone)]
pub struct ConnectSpec {
    pub libs: Libs,
    pub brokers: String,
    pub pg_host: String,
    pub pg_port: u16,
    pub pg_user: String,
    pub pg_password: String,
    pub database: String,
    /// A slot the connector uses; created before it starts, so it streams from there.
    pub slot: String,
    /// Records go to `<topic_prefix>.<aggregate_type>`, as relay-cdc's do.
    pub topic_prefix: String,
    /// Holds the configuration, the offsets file and the logs of this deployment.
    pub dir: PathBuf,
    /// Further settings, applied last: `worker.<key>` goes to the worker (without the
    /// prefix), any other key to the connector.
    pub extra: Vec<(String, String)>,
}

impl ConnectSpec {
    /// The worker's settings ([`worker_properties`]), then the `worker.` extras.
    fn worker_properties(&self, rest_port: u16) -> String {
        worker_properties(&self.brokers, &self.dir, rest_port) + &self.extra_lines(true)
    }

    /// The extra settings of the worker (`worker == true`) or of the connector.
    fn extra_lines(&self, worker: bool) -> String {
        self.extra
            .iter()
            .filter_map(|(k, v)| match (k.strip_prefix("worker."), worker) {
                (Some(k), true) => Some(format!("{k}={v}\n")),
                (None, false) => Some(format!("{k}={v}\n")),
                _ => None,
            })
            .collect()
    }

    /// The connector: pgoutput on the bench's slot and the migrations' publication
    /// (`publication.autocreate.mode=disabled` leaves it alone), the outbox table only,
    /// no snapshot (with no stored offset it streams from where the slot was created),
    /// no Debezium context headers, and the Outbox Event Router.
    fn connector_properties(&self) -> String {
        let logical = self.slot.replace(['-', '.'], "_");
        format!(
            "name=bench-debezium\n\
             connector.class=io.debezium.connector.postgresql.PostgresConnector\n\
             tasks.max=1\n\
             plugin.name=pgoutput\n\
             database.hostname={host}\n\
             database.port={port}\n\
             database.user={user}\n\
             database.password={password}\n\
             database.dbname={db}\n\
             topic.prefix={logical}\n\
             slot.name={slot}\n\
             publication.name=outbox_pub\n\
             publication.autocreate.mode=disabled\n\
             table.include.list=public.outbox\n\
             snapshot.mode=no_data\n\
             extended.headers.enabled=false\n\
             transforms=outbox\n\
             transforms.outbox.type=io.debezium.transforms.outbox.EventRouter\n\
             transforms.outbox.route.by.field=aggregate_type\n\
             transforms.outbox.route.topic.replacement={prefix}.${{routedByValue}}\n\
             transforms.outbox.table.field.event.id=id\n\
             transforms.outbox.table.field.event.key=aggregate_id\n\
             transforms.outbox.table.field.event.payload=payload\n\
             transforms.outbox.table.fields.additional.placement=id:header:event_id,created_at:header:commit_time\n",
            host = self.pg_host,
            port = self.pg_port,
            user = self.pg_user,
            password = self.pg_password,
            db = self.database,
            slot = self.slot,
            prefix = self.topic_prefix,
        ) + &self.extra_lines(false)
    }
}

/// A Connect worker's settings: string converters (the value is the payload's text, the
/// key the aggregate id, as relay-cdc writes them; a connector may set its own), offsets
/// in a file under `dir`, and a producer set like relay-cdc's where Connect lets it be
/// (idempotent, acks=all, up to 5 requests in flight, linger 5 ms, lz4; Java's default
/// partitioner is murmur2, as relay-cdc's).
pub fn worker_properties(brokers: &str, dir: &Path, rest_port: u16) -> String {
    format!(
        "bootstrap.servers={brokers}\n\
         key.converter=org.apache.kafka.connect.storage.StringConverter\n\
         value.converter=org.apache.kafka.connect.storage.StringConverter\n\
         offset.storage.file.filename={offsets}\n\
         offset.flush.interval.ms=1000\n\
         listeners=http://127.0.0.1:{rest_port}\n\
         plugin.discovery=only_scan\n\
         producer.enable.idempotence=true\n\
         producer.acks=all\n\
         producer.max.in.flight.requests.per.connection=5\n\
         producer.linger.ms=5\n\
         producer.compression.type=lz4\n",
        offsets = dir.join("offsets").display(),
    )
}

fn log4j2_properties(dir: &Path) -> String {
    format!(
        "appender.file.type=File\n\
         appender.file.name=file\n\
         appender.file.fileName={}\n\
         appender.file.layout.type=PatternLayout\n\
         appender.file.layout.pattern=[%d] %p %m (%c)%n\n\
         rootLogger.level=INFO\n\
         rootLogger.appenderRef.file.ref=file\n",
        dir.join("connect.log").display()
    )
}

/// A running Connect worker; killed (SIGKILL) if dropped before [`ConnectProcess::terminate`].
pub struct ConnectProcess {
    child: Child,
    pid: u32,
    /// Connect's own log (log4j2).
    pub log: PathBuf,
}

impl ConnectProcess {
    /// Writes the configuration into `spec.dir` and starts the JVM with the heap and GC
    /// settings of Kafka's `connect-standalone.sh` (`-Xms256M -Xmx2G`, G1).
    pub fn spawn(spec: &ConnectSpec) -> anyhow::Result<Self> {
        Self::spawn_connectors(
            &spec.libs,
            &spec.dir,
            &spec.worker_properties(testkit::free_port()),
            &[spec.connector_properties()],
        )
    }

    /// A worker with `worker` settings running each of `connectors` (properties text,
    /// each with a `name` of its own), its files and logs in `dir`.
    pub fn spawn_connectors(
        libs: &Libs,
        dir: &Path,
        worker: &str,
        connectors: &[String],
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let worker_file = dir.join("worker.properties");
        let log4j = dir.join("log4j2.properties");
        std::fs::write(&worker_file, worker)?;
        std::fs::write(&log4j, log4j2_properties(dir))?;
        let mut connector_files = Vec::new();
        for (i, c) in connectors.iter().enumerate() {
            let file = dir.join(format!("connector-{i}.properties"));
            std::fs::write(&file, c)?;
            connector_files.push(file);
        }
        let out = std::fs::File::create(dir.join("stdout.log"))?;
        let child = Command::new("java")
            .args(["-Xms256M", "-Xmx2G", "-server", "-XX:+UseG1GC"])
            .args([
                "-XX:MaxGCPauseMillis=20",
                "-XX:InitiatingHeapOccupancyPercent=35",
            ])
            .args([
                "-XX:+ExplicitGCInvokesConcurrent",
                "-Djava.awt.headless=true",
            ])
            .arg(format!("-Dlog4j2.configurationFile={}", log4j.display()))
            .arg("-cp")
            .arg(format!("{}/*", libs.dir.display()))
            .arg("org.apache.kafka.connect.cli.ConnectStandalone")
            .arg(&worker_file)
            .args(&connector_files)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .context("starting java (Kafka Connect)")?;
        let pid = child.id().context("the JVM exited at once")?;
        Ok(Self {
            child,
            pid,
            log: dir.join("connect.log"),
        })
    }

    /// Fails if the JVM exited (it should run until told to stop).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "Kafka Connect exited with {status}; log: {}",
                self.log.display()
            );
        }
        Ok(())
    }

    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        testkit::proc::cpu_seconds(self.pid)
    }

    pub fn peak_rss(&self) -> anyhow::Result<u64> {
        testkit::proc::peak_rss_bytes(self.pid)
    }

    /// SIGTERM (Connect stops its connector and flushes offsets), then SIGKILL if it
    /// has not exited within 30 s. A JVM ends with 143 on SIGTERM: the status is not checked.
    pub async fn terminate(mut self) -> anyhow::Result<()> {
        let _ = testkit::proc::signal(self.pid, "TERM");
        if tokio::time::timeout(STOP_TIMEOUT, self.child.wait())
            .await
            .is_err()
        {
            progress(format!(
                "Kafka Connect did not stop within {STOP_TIMEOUT:?} of SIGTERM; killing it"
            ));
            self.child.kill().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_versions_are_read_old_and_new() {
        assert_eq!(
            parse_java_major("openjdk version \"17.0.15\" 2025-04-15\nOpenJDK Runtime"),
            Some(17)
        );
        assert_eq!(parse_java_major("java version \"1.8.0_392\""), Some(8));
        assert_eq!(
            parse_java_major("openjdk version \"21\" 2023-09-19"),
            Some(21)
        );
        assert_eq!(parse_java_major("openjdk version \"25-ea\""), Some(25));
        assert_eq!(parse_java_major("nothing here"), None);
    }

    fn spec() -> ConnectSpec {
        ConnectSpec {
            libs: Libs {
                dir: PathBuf::from("/libs"),
            },
            brokers: "127.0.0.1:59092".into(),
            pg_host: "127.0.0.1".into(),
            pg_port: 55432,
            pg_user: "outbox".into(),
            pg_password: "outbox".into(),
            database: "t_bench_x".into(),
            slot: "bench_dbz_abc".into(),
            topic_prefix: "bench.r1.4".into(),
            dir: PathBuf::from("/run/dbz"),
            extra: vec![
                ("poll.interval.ms".into(), "50".into()),
                ("worker.producer.batch.size".into(), "65536".into()),
            ],
        }
    }

    #[test]
    fn the_connector_routes_like_the_relay_and_reads_the_benchs_slot() {
        let c = spec().connector_properties();
        for line in [
            "slot.name=bench_dbz_abc",
            "publication.name=outbox_pub",
            "snapshot.mode=no_data",
            "table.include.list=public.outbox",
            "transforms.outbox.type=io.debezium.transforms.outbox.EventRouter",
            "transforms.outbox.route.topic.replacement=bench.r1.4.${routedByValue}",
            "transforms.outbox.table.field.event.key=aggregate_id",
            "transforms.outbox.table.fields.additional.placement=id:header:event_id,created_at:header:commit_time",
        ] {
            assert!(c.lines().any(|l| l == line), "{line} missing in:\n{c}");
        }
        let w = spec().worker_properties(58083);
        for line in [
            "offset.storage.file.filename=/run/dbz/offsets",
            "producer.enable.idempotence=true",
            "producer.linger.ms=5",
            "producer.compression.type=lz4",
            "listeners=http://127.0.0.1:58083",
            "producer.batch.size=65536",
        ] {
            assert!(w.lines().any(|l| l == line), "{line} missing in:\n{w}");
        }
        // Extra settings come last (a later line wins) and go where they belong.
        assert_eq!(c.lines().last(), Some("poll.interval.ms=50"));
        assert!(!w.contains("poll.interval.ms") && !c.contains("batch.size"));
    }

    #[test]
    fn the_pom_pins_the_versions_the_tables_name() {
        assert!(POM.contains(&format!("<debezium.version>{VERSION}</debezium.version>")));
        assert!(POM.contains("<kafka.version>4.1.1</kafka.version>"));
    }
}
