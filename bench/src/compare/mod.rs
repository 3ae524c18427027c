//! `--only debezium-compare`: Debezium's Outbox Event Router and relay-cdc's `debezium`
//! format on the same rows, record by record (issue 29's "proven against the real
//! thing").
//!
//! One database of the run's own holds Debezium-shaped outbox tables ([`rows`]): one per
//! payload type (jsonb, json, text, bytea) and router variant (plain, or with placements of
//! the extra columns), and one publication of them all. For each converter setting
//! (String; JSON without schemas; JSON with `table.expand.json.payload`, its null fields
//! ignored or kept as `optional_bytes`) a round:
//!
//! - slots are created first (one per Debezium connector, one per relay-cdc source), so
//!   both systems stream exactly the rows inserted after, whenever their process is up;
//! - Kafka Connect runs one connector per variant (`table.include.list` = its tables,
//!   the router options of [`rows::router_options`], the setting's converters);
//!   relay-cdc runs one process per variant (one source per table, `marking = "none"`,
//!   `format = "debezium"`, `[kafka.debezium]` = the same options, poison dead-lettered
//!   so that a refused row shows as such). Only `route.topic.replacement` differs:
//!   `<base>.dbz.${routedByValue}` against `<base>.rly.${routedByValue}`, and topics are
//!   compared with that prefix removed;
//! - every row is inserted with a fresh id, both systems' topics (four partitions, so
//!   the partitioners are compared too) are read until each id arrived from both (or
//!   relay-cdc dead-lettered it), and the records are paired by their `id` header.
//!
//! The run fails when a difference is not one relay-cdc documents ([`rows::Known`]).

mod diff;
mod rows;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use testkit::{RelayConfig, RelayProcess, TestDb};
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use self::diff::{Compared, Outcome, Rec};
use self::rows::{Row, Setting, Variant};
use crate::ctx::{Ctx, DEBEZIUM_START_TIMEOUT, READY_TIMEOUT};
use crate::db;
use crate::debezium::{self, ConnectProcess, Libs};
use crate::progress::progress;

/// Partitions of every compared topic: more than one, so the partitioners are compared.
const PARTITIONS: i32 = 4;
const PUBLICATION: &str = "dbzcmp_pub";
/// How long the comparison waits for a record when none arrives (a JVM starting).
const READ_IDLE: Duration = DEBEZIUM_START_TIMEOUT;

/// What the comparison found: the markdown, and how many differences nobody documented.
pub struct Report {
    pub markdown: String,
    pub unexplained: usize,
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<Report> {
    ensure!(
        testkit::kafka_security().is_empty(),
        "the Debezium comparison runs on the plain stack (its Connect worker has no Kafka security settings)"
    );
    let libs = debezium::libs()
        .await
        .map_err(|reason| anyhow::anyhow!("Debezium cannot run here: {reason}"))?;
    // Dropped at the end, also on an error: its slots with it.
    let db = TestDb::create_empty("dbzcmp").await?;
    let client = db::connect(&db.url, "relay-bench").await?;
    let rows = rows::rows();
    client
        .batch_execute(&rows::schema_sql(PUBLICATION, &rows))
        .await
        .context("creating the outbox tables")?;
    let mut results = Vec::new();
    for setting in Setting::ALL {
        let rows: Vec<Row> = rows
            .iter()
            .filter(|r| r.runs_with(setting))
            .cloned()
            .collect();
        progress(format!(
            "debezium-compare: {} ({} rows)",
            setting.label(),
            rows.len()
        ));
        results.extend(round(ctx, &libs, &db, &client, setting, &rows).await?);
    }
    let unexplained = diff::unexplained(&results);
    let mut markdown = format!(
        "### Debezium {} against relay-cdc's `debezium` format, record by record\n\n",
        debezium::VERSION
    );
    markdown.push_str(&diff::render(&results));
    markdown.push_str(&format!(
        "\nJava: {}. Each setting ran once: Kafka Connect 4.1.1 standalone with one connector per router variant, \
         relay-cdc with one process per variant, on the same rows.\n\n",
        java_version().await
    ));
    Ok(Report {
        markdown,
        unexplained,
    })
}

/// The processes and names of one round.
struct RoundSetup {
    dbz_prefix: String,
    rly_prefix: String,
    dead_topic: String,
    dir: PathBuf,
    /// Connect's REST port: the status of the connectors that should stop.
    rest_port: u16,
    /// The connector of each unwritable row's table, by row index.
    unwritable: HashMap<usize, String>,
}

async fn round(
    ctx: &Ctx,
    libs: &Libs,
    db: &TestDb,
    client: &Client,
    setting: Setting,
    rows: &[Row],
) -> anyhow::Result<Vec<Compared>> {
    let (base, _) = ctx.topic_prefix();
    let base = format!("{base}.{}", setting.slug());
    let setup = RoundSetup {
        dbz_prefix: format!("{base}.dbz."),
        rly_prefix: format!("{base}.rly."),
        dead_topic: format!("{base}.rly-dead"),
        dir: ctx.log_dir.join(format!("compare-{}", setting.slug())),
        rest_port: testkit::free_port(),
        unwritable: rows
            .iter()
            .enumerate()
            .filter(|(_, r)| r.unwritable())
            .map(|(i, r)| (i, format!("compare-{}", r.table)))
            .collect(),
    };
    std::fs::create_dir_all(&setup.dir)?;
    let brokers = ctx.stack.kafka_brokers.clone();
    let mut topics: Vec<String> = rows::Class::ALL
        .iter()
        .flat_map(|c| {
            [
                format!("{}{}", setup.dbz_prefix, c.routed()),
                format!("{}{}", setup.rly_prefix, c.routed()),
            ]
        })
        .collect();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    testkit::create_topics(&testkit::kafka_config(&brokers), &names, PARTITIONS, &[]).await?;
    testkit::create_topic(&brokers, &setup.dead_topic, 1).await?;
    topics.push(setup.dead_topic.clone());

    let result = async {
        let mut connect = start_debezium(ctx, libs, db, client, setting, rows, &setup).await?;
        let mut relays = Vec::new();
        for variant in Variant::ALL {
            let tables = rows::PayloadColumn::ALL
                .iter()
                .map(|c| {
                    (
                        format!("{}_{}", variant.slug(), c.sql_type()),
                        rows::table(variant, *c),
                    )
                })
                .collect();
            let options = rows::router_options(variant, setting);
            relays.push(
                start_relay(
                    ctx,
                    db,
                    client,
                    setting,
                    variant.slug(),
                    tables,
                    options,
                    &setup,
                )
                .await?,
            );
        }
        let unwritable: Vec<(String, String)> = rows
            .iter()
            .filter(|r| r.unwritable())
            .map(|r| (r.table.clone(), r.table.clone()))
            .collect();
        if !unwritable.is_empty() {
            let options = rows::router_options(Variant::Plain, setting);
            relays.push(
                start_relay(
                    ctx,
                    db,
                    client,
                    setting,
                    "unwritable",
                    unwritable,
                    options,
                    &setup,
                )
                .await?,
            );
        }
        for r in &mut relays {
            r.wait_ready(READY_TIMEOUT).await.with_context(|| {
                format!("relay-cdc did not get ready; log: {}", r.log().display())
            })?;
        }
        let ids = insert(client, rows).await?;
        let read = read(
            &brokers,
            &topics,
            &setup,
            rows,
            &ids,
            &mut connect,
            &mut relays,
        )
        .await;
        for r in relays {
            crate::relay::stop(r).await?;
        }
        connect.terminate().await?;
        let read = read?;
        Ok::<_, anyhow::Error>(pair(setting, rows, &ids, &read, &setup))
    }
    .await;
    drop_slots(client).await?;
    crate::ctx::delete_topics(&brokers, &topics).await;
    if result.is_err() {
        ctx.keep_logs
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
    result
}

/// Kafka Connect with one connector per variant (its four tables) and one per
/// unwritable row (its table alone: the task stops there), each on a slot created now.
async fn start_debezium(
    ctx: &Ctx,
    libs: &Libs,
    db: &TestDb,
    client: &Client,
    setting: Setting,
    rows: &[Row],
    setup: &RoundSetup,
) -> anyhow::Result<ConnectProcess> {
    let mut connectors = Vec::new();
    for variant in Variant::ALL {
        let tables: Vec<String> = rows::PayloadColumn::ALL
            .iter()
            .map(|c| rows::table(variant, *c))
            .collect();
        connectors.push(
            connector(
                ctx,
                db,
                client,
                setting,
                &format!("compare-{}", variant.slug()),
                &tables,
                rows::router_options(variant, setting),
                setup,
            )
            .await?,
        );
    }
    for (i, name) in &setup.unwritable {
        let tables = [rows[*i].table.clone()];
        let options = rows::router_options(Variant::Plain, setting);
        connectors.push(connector(ctx, db, client, setting, name, &tables, options, setup).await?);
    }
    let dir = setup.dir.join("debezium");
    let worker = debezium::worker_properties(&ctx.stack.kafka_brokers, &dir, setup.rest_port);
    ConnectProcess::spawn_connectors(libs, &dir, &worker, &connectors)
}

/// One connector's properties: pgoutput on a slot created now and the shared
/// publication, `tables` only, no snapshot, no context headers, the router with
/// `options` and the setting's converters.
#[allow(clippy::too_many_arguments)]
async fn connector(
    ctx: &Ctx,
    db: &TestDb,
    client: &Client,
    setting: Setting,
    name: &str,
    tables: &[String],
    options: Vec<(String, String)>,
    setup: &RoundSetup,
) -> anyhow::Result<String> {
    let slot = db::create_slot(client, "dbzcmp_dbz").await?;
    let tables: Vec<String> = tables.iter().map(|t| format!("public.{t}")).collect();
    let mut props = vec![
        ("name".to_string(), name.to_string()),
        (
            "connector.class".into(),
            "io.debezium.connector.postgresql.PostgresConnector".into(),
        ),
        ("tasks.max".into(), "1".into()),
        ("plugin.name".into(), "pgoutput".into()),
        ("database.hostname".into(), ctx.stack.pg_host.clone()),
        ("database.port".into(), ctx.stack.pg_port.to_string()),
        ("database.user".into(), ctx.stack.pg_user.clone()),
        ("database.password".into(), ctx.stack.pg_password.clone()),
        ("database.dbname".into(), db.name.clone()),
        ("topic.prefix".into(), slot.clone()),
        ("slot.name".into(), slot),
        ("publication.name".into(), PUBLICATION.into()),
        ("publication.autocreate.mode".into(), "disabled".into()),
        ("table.include.list".into(), tables.join(",")),
        ("snapshot.mode".into(), "no_data".into()),
        ("extended.headers.enabled".into(), "false".into()),
        // relay-cdc's heartbeats are logical messages in the same WAL.
        (
            "message.prefix.exclude.list".into(),
            "relay-cdc.heartbeat".into(),
        ),
        ("transforms".into(), "outbox".into()),
        (
            "transforms.outbox.type".into(),
            "io.debezium.transforms.outbox.EventRouter".into(),
        ),
        (
            "transforms.outbox.route.topic.replacement".into(),
            format!("{}${{routedByValue}}", setup.dbz_prefix),
        ),
    ];
    props.extend(
        options
            .into_iter()
            .map(|(k, v)| (format!("transforms.outbox.{k}"), v)),
    );
    props.extend(setting.connector_converters());
    Ok(properties(&props))
}

/// `key=value` lines, escaped as `java.util.Properties` reads them.
fn properties(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}\n", v.replace('\\', "\\\\")))
        .collect()
}

/// A relay-cdc process: one source per table (`(name, table)`), each on a slot created
/// now, the router `options` in `[kafka.debezium]`, from a TOML file (as an operator
/// writes it).
#[allow(clippy::too_many_arguments)]
async fn start_relay(
    ctx: &Ctx,
    db: &TestDb,
    client: &Client,
    setting: Setting,
    name: &str,
    tables: Vec<(String, String)>,
    router: Vec<(String, String)>,
    setup: &RoundSetup,
) -> anyhow::Result<RelayProcess> {
    let mut options = vec![(
        "route.topic.replacement".to_string(),
        format!("{}${{routedByValue}}", setup.rly_prefix),
    )];
    options.extend(router);
    options.extend(setting.relay_converters());
    let mut sources = Vec::new();
    for (source, table) in tables {
        let slot = db::create_slot(client, "dbzcmp_rly").await?;
        sources.push(SourceToml {
            name: source,
            table,
            slot,
        });
    }
    let toml = relay_toml(ctx, db, &setup.dead_topic, &options, &sources);
    let file = setup.dir.join(format!("relay-{name}.toml"));
    std::fs::write(&file, toml)?;
    RelayConfig::new(&ctx.relay_bin)
        .named(&format!("relay-cdc ({name})"))
        .set("RELAY_CONFIG", file.display().to_string())
        .envs(testkit::relay_kafka_env())
        .log_to(setup.dir.join(format!("relay-{name}.log")))
        .spawn()
}

struct SourceToml {
    name: String,
    table: String,
    slot: String,
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn relay_toml(
    ctx: &Ctx,
    db: &TestDb,
    dead_topic: &str,
    options: &[(String, String)],
    sources: &[SourceToml],
) -> String {
    let mut s = format!(
        "[kafka]\nbrokers = {}\nformat = \"debezium\"\npoison = \"dead-letter\"\ndead_letter_topic = {}\n\
         create_topics = false\n\n[kafka.debezium]\n",
        quote(&ctx.stack.kafka_brokers),
        quote(dead_topic)
    );
    for (k, v) in options {
        s.push_str(&format!("{} = {}\n", quote(k), quote(v)));
    }
    let extra: Vec<String> = rows::EXTRA.iter().map(|c| quote(c)).collect();
    for src in sources {
        s.push_str(&format!(
            "\n[[sources]]\nname = {}\nhost = {}\nport = {}\nuser = {}\npassword = {}\ndatabase = {}\n\
             schema = \"public\"\ntable = {}\npublication = {}\ncreate_publication = false\nslot = {}\n\
             create_slot = false\nmarking = \"none\"\n\n[sources.columns]\nid = \"id\"\n\
             aggregate_type = \"aggregatetype\"\naggregate_id = \"aggregateid\"\nevent_type = \"type\"\n\
             payload = \"payload\"\nextra = [{}]\n",
            quote(&src.name),
            quote(&ctx.stack.pg_host),
            ctx.stack.pg_port,
            quote(&ctx.stack.pg_user),
            quote(&ctx.stack.pg_password),
            quote(&db.name),
            quote(&src.table),
            quote(PUBLICATION),
            quote(&src.slot),
            extra.join(", ")
        ));
    }
    s
}

/// Inserts every row with a fresh id, one transaction; returns the ids by row.
async fn insert(client: &Client, rows: &[Row]) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::with_capacity(rows.len());
    client.batch_execute("begin").await?;
    for row in rows {
        let id = uuid::Uuid::new_v4().to_string();
        let params: [&(dyn ToSql + Sync); 9] = [
            &id,
            &row.class.routed(),
            &row.aggregate_id,
            &row.event_type,
            &row.payload,
            &row.tenant,
            &row.shard,
            &row.created_at,
            &row.created_ts,
        ];
        client
            .execute(&rows::insert_sql(row), &params)
            .await
            .with_context(|| format!("inserting {:?} / {}", row.class, row.label))?;
        ids.push(id);
    }
    client.batch_execute("commit").await?;
    Ok(ids)
}

/// What was read, by event id.
#[derive(Default)]
struct Read {
    debezium: HashMap<String, Rec>,
    relay: HashMap<String, Rec>,
    /// Ids relay-cdc dead-lettered.
    dead: HashSet<String>,
    /// Connectors whose task stopped, with the exception that stopped it.
    failed: HashMap<String, String>,
    /// Records that carried no id this round inserted, or came twice.
    strays: Vec<String>,
}

impl Read {
    fn debezium_done(&self, setup: &RoundSetup, i: usize, id: &str) -> bool {
        self.debezium.contains_key(id)
            || setup
                .unwritable
                .get(&i)
                .is_some_and(|c| self.failed.contains_key(c))
    }

    fn complete(&self, setup: &RoundSetup, ids: &[String]) -> bool {
        ids.iter().enumerate().all(|(i, id)| {
            self.debezium_done(setup, i, id)
                && (self.relay.contains_key(id) || self.dead.contains(id))
        })
    }

    fn missing(&self, setup: &RoundSetup, ids: &[String]) -> String {
        let dbz = ids
            .iter()
            .enumerate()
            .filter(|(i, id)| !self.debezium_done(setup, *i, id))
            .count();
        let rly = ids
            .iter()
            .filter(|i| !self.relay.contains_key(*i) && !self.dead.contains(*i))
            .count();
        format!("{dbz} records missing from Debezium, {rly} from relay-cdc")
    }
}

/// Reads every topic of the round from the beginning until each id arrived from both
/// systems, watching that the processes stay up.
#[allow(clippy::too_many_arguments)]
async fn read(
    brokers: &str,
    topics: &[String],
    setup: &RoundSetup,
    rows: &[Row],
    ids: &[String],
    connect: &mut ConnectProcess,
    relays: &mut [RelayProcess],
) -> anyhow::Result<Read> {
    let consumer: StreamConsumer = testkit::kafka_config(brokers)
        .set(
            "group.id",
            format!("relay-bench-compare-{}", testkit::unique_suffix()),
        )
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "50")
        .set("fetch.message.max.bytes", "2097152")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        let n = if *t == setup.dead_topic {
            1
        } else {
            PARTITIONS
        };
        for p in 0..n {
            tpl.add_partition_offset(t, p, Offset::Beginning)?;
        }
    }
    consumer.assign(&tpl)?;
    let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let mut read = Read::default();
    let mut last = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    while !read.complete(setup, ids) {
        tokio::select! {
            m = consumer.recv() => {
                let m = match m {
                    Ok(m) => m,
                    Err(e) => { progress(format!("debezium-compare: consumer: {e}")); continue; }
                };
                last = Instant::now();
                let rec = to_rec(&m);
                if rec.topic == setup.dead_topic {
                    // The dead letter is in the native format: its id is `event_id`.
                    match rec.header("event_id") {
                        Some(id) if wanted.contains(id.as_str()) => { read.dead.insert(id); }
                        other => read.strays.push(format!("dead letter {other:?}")),
                    }
                    continue;
                }
                let side = if rec.topic.starts_with(&setup.dbz_prefix) {
                    &mut read.debezium
                } else {
                    &mut read.relay
                };
                match rec.header("id") {
                    Some(id) if wanted.contains(id.as_str()) && !side.contains_key(&id) => {
                        side.insert(id, rec);
                    }
                    other => read.strays.push(format!("{} id {other:?}", rec.topic)),
                }
            }
            _ = tick.tick() => {
                connect.check_alive()?;
                for (i, name) in &setup.unwritable {
                    if read.failed.contains_key(name) || read.debezium.contains_key(&ids[*i]) {
                        continue;
                    }
                    if let Some(trace) = failed_task(&http, setup.rest_port, name).await {
                        progress(format!(
                            "debezium-compare: connector {name} stopped on {:?}: {trace}",
                            rows[*i].label
                        ));
                        last = Instant::now();
                        read.failed.insert(name.clone(), trace);
                    }
                }
                for r in relays.iter_mut() {
                    r.check_alive()?;
                }
                if last.elapsed() > READ_IDLE {
                    bail!(
                        "{} (nothing for {READ_IDLE:?}); logs in {}",
                        read.missing(setup, ids),
                        setup.dir.display()
                    );
                }
            }
        }
    }
    Ok(read)
}

/// The exception that stopped `connector`'s task (its last `Caused by`), if it failed.
async fn failed_task(http: &reqwest::Client, port: u16, connector: &str) -> Option<String> {
    let status: serde_json::Value = http
        .get(format!(
            "http://127.0.0.1:{port}/connectors/{connector}/status"
        ))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let task = status.get("tasks")?.get(0)?;
    if task.get("state")?.as_str()? != "FAILED" {
        return None;
    }
    let trace = task.get("trace").and_then(|t| t.as_str()).unwrap_or("");
    let cause = trace
        .lines()
        .rfind(|l| l.starts_with("Caused by: "))
        .or_else(|| trace.lines().next())
        .unwrap_or("no trace");
    Some(cause.trim_start_matches("Caused by: ").to_string())
}

fn to_rec(m: &impl Message) -> Rec {
    Rec {
        topic: m.topic().to_string(),
        partition: m.partition(),
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec),
        headers: m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Each row's records, compared.
fn pair(
    setting: Setting,
    rows: &[Row],
    ids: &[String],
    read: &Read,
    setup: &RoundSetup,
) -> Vec<Compared> {
    if !read.strays.is_empty() {
        progress(format!(
            "debezium-compare: {} records of no row of this round: {}",
            read.strays.len(),
            read.strays.join("; ")
        ));
    }
    rows.iter()
        .zip(ids)
        .enumerate()
        .map(|(i, (row, id))| {
            let failed = setup.unwritable.get(&i).and_then(|c| read.failed.get(c));
            let dead = read.dead.contains(id);
            let outcome = match (read.debezium.get(id), read.relay.get(id), failed) {
                (Some(d), Some(r), _) => diff::compare(d, &setup.dbz_prefix, r, &setup.rly_prefix),
                (Some(d), None, _) if dead => Outcome::RelayRefused {
                    debezium: d.clone(),
                },
                (Some(_), None, _) => Outcome::MissingRelay,
                (None, None, Some(trace)) if dead => Outcome::BothRefused {
                    trace: trace.clone(),
                },
                (None, _, Some(trace)) => Outcome::DebeziumFailed {
                    trace: trace.clone(),
                },
                (None, _, None) => Outcome::MissingDebezium,
            };
            Compared {
                setting,
                row: row.clone(),
                outcome,
            }
        })
        .collect()
}

/// Drops the round's slots (the processes are gone by now).
async fn drop_slots(client: &Client) -> anyhow::Result<()> {
    for _ in 0..50 {
        let left = client
            .query(
                "select pg_drop_replication_slot(slot_name) from pg_replication_slots \
                 where database = current_database() and not active",
                &[],
            )
            .await;
        let active: i64 = client
            .query_one(
                "select count(*) from pg_replication_slots where database = current_database()",
                &[],
            )
            .await?
            .get(0);
        if left.is_ok() && active == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("the round's replication slots are still held")
}

/// `java -version`'s first line.
async fn java_version() -> String {
    let out = tokio::process::Command::new("java")
        .arg("-version")
        .output()
        .await;
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stderr)
            .lines()
            .next()
            .unwrap_or("?")
            .to_string(),
        Err(_) => "?".into(),
    }
}
