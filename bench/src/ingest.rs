//! The Kafka ingest ceiling: the most the broker here takes from this client. A
//! librdkafka producer with relay-cdc's exact settings writes records of the relay's
//! shape (a 36-character aggregate id as key, its seven headers, a payload of the
//! workload's size) to a fresh topic, as fast as it can, and is timed from the first
//! send until the last ack. No PostgreSQL at all: relay-cdc's "acked rows/s" can at
//! best reach this, and the CPU this process spends meanwhile is what librdkafka alone
//! costs per record: the floor under the relay's own CPU.

use std::time::{Duration, Instant};

use anyhow::bail;
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;
use uuid::Uuid;

use testkit::proc::cpu_seconds;

/// Distinct aggregates, as in the bench's load procedure (`agg-0` … `agg-63`).
const AGGREGATES: usize = 64;
/// Random hex the payloads are cut from (like the load procedure's pool).
const POOL_BYTES: usize = 1 << 20;

/// relay-cdc's producer configuration, copied from `relay-cdc/src/sink/kafka.rs`
/// (`producer_config`), not imported: the bench measures the relay as a black box.
pub fn relay_producer_config(brokers: &str, client_id: &str) -> ClientConfig {
    // The stack's security (SASL_SSL on the secured stack), as the relay gets it.
    let mut c = testkit::kafka_config(brokers);
    c.set("client.id", client_id)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "200000")
        .set("queue.buffering.max.kbytes", "262144")
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        .set("message.timeout.ms", "0");
    c
}

/// One record as relay-cdc builds it for an outbox row.
struct Record {
    key: String,
    payload: String,
    event_id: String,
    commit_lsn: String,
}

/// `rows` records in transactions of `rows_per_txn` (they share a commit LSN), each
/// with a payload of `payload_bytes`: a JSON object whose padding is random hex.
fn records(rows: u64, rows_per_txn: u32, payload_bytes: usize) -> Vec<Record> {
    let aggregates: Vec<String> = (0..AGGREGATES)
        .map(|_| Uuid::new_v4().hyphenated().to_string())
        .collect();
    let pool_bytes = POOL_BYTES.max(2 * payload_bytes);
    let mut pool = String::with_capacity(pool_bytes + 32);
    while pool.len() < pool_bytes {
        pool.push_str(&Uuid::new_v4().simple().to_string());
    }
    (0..rows)
        .map(|i| {
            let txn = i / u64::from(rows_per_txn);
            let head = format!("{{\"t\": {txn}, \"i\": {i}, \"pad\": \"");
            let pad = payload_bytes.saturating_sub(head.len() + 2).max(1);
            // A random cut, so that no two records in a batch share their padding.
            let at = (Uuid::new_v4().as_u128() % (pool_bytes - pad) as u128) as usize;
            Record {
                key: aggregates[i as usize % AGGREGATES].clone(),
                payload: format!("{head}{}\"}}", &pool[at..at + pad]),
                event_id: Uuid::now_v7().to_string(),
                commit_lsn: format!("0/{:X}", 0x1000_0000 + txn * 0x100),
            }
        })
        .collect()
}

/// What one ingest run measured.
pub struct Ingest {
    /// Records per second from the first send to the last ack.
    pub rows_per_s: f64,
    /// CPU seconds of this process (the producer's threads; nothing else runs) per
    /// 100,000 records over the same span.
    pub cpu_per_100k: f64,
}

/// Writes `rows` relay-shaped records to `topic` (which exists) and measures them (see
/// [`Ingest`]). The producer is connected before the clock starts (one untimed record),
/// and the records are built before it too.
pub async fn ingest(
    brokers: &str,
    topic: &str,
    extra: &[(String, String)],
    (rows, rows_per_txn, payload_bytes): (u64, u32, usize),
) -> anyhow::Result<Ingest> {
    let records = records(rows, rows_per_txn, payload_bytes);
    let mut config = relay_producer_config(brokers, "relay-bench-ingest");
    for (k, v) in extra {
        config.set(k, v);
    }
    let producer: FutureProducer = config.create()?;
    let commit_time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    // Warm-up, untimed: the connection, the topic's metadata and the idempotent
    // producer id, which the relay has long had when a backlog drains.
    let warm_up = FutureRecord::to(topic).key("warm-up").payload("{}");
    match producer.send_result(warm_up) {
        Ok(d) => check(d.await)?,
        Err((e, _)) => return Err(e.into()),
    }
    let mut pending: FuturesUnordered<DeliveryFuture> = FuturesUnordered::new();
    let started = Instant::now();
    let cpu_before = cpu_seconds(std::process::id())?;
    for r in &records {
        let headers = OwnedHeaders::new_with_capacity(8)
            .insert(Header {
                key: "event_id",
                value: Some(&r.event_id),
            })
            .insert(Header {
                key: "event_type",
                value: Some("BenchEvent"),
            })
            .insert(Header {
                key: "aggregate_type",
                value: Some("bench"),
            })
            .insert(Header {
                key: "aggregate_id",
                value: Some(&r.key),
            })
            .insert(Header {
                key: "source",
                value: Some("bench"),
            })
            .insert(Header {
                key: "commit_lsn",
                value: Some(&r.commit_lsn),
            })
            .insert(Header {
                key: "commit_time",
                value: Some(&commit_time),
            });
        let mut record = FutureRecord::to(topic)
            .key(r.key.as_str())
            .payload(r.payload.as_str())
            .headers(headers);
        loop {
            match producer.send_result(record) {
                Ok(f) => {
                    pending.push(f);
                    break;
                }
                // Back-pressure: wait for an ack (or a moment) and send again.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    match pending.next().await {
                        Some(d) => check(d)?,
                        None => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }
    while let Some(d) = pending.next().await {
        check(d)?;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(std::process::id())? - cpu_before;
    producer.flush(Duration::from_secs(10))?;
    Ok(Ingest {
        rows_per_s: rows as f64 / secs,
        cpu_per_100k: cpu * 100_000.0 / rows as f64,
    })
}

fn check(
    d: Result<OwnedDeliveryResult, futures::channel::oneshot::Canceled>,
) -> anyhow::Result<()> {
    match d {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => bail!("kafka refused a record: {e}"),
        Err(_) => bail!("the producer dropped a record"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_have_the_relays_shape_and_the_workloads_size() {
        let rs = records(2000, 10, 100);
        assert_eq!(rs.len(), 2000);
        assert!(rs.iter().all(|r| r.key.len() == 36));
        assert!(
            rs.iter().all(|r| r.payload.len() == 100),
            "{}",
            rs[0].payload
        );
        let v: serde_json::Value = serde_json::from_str(&rs[1999].payload).unwrap();
        assert_eq!(v["t"], 199);
        assert_eq!(rs[0].commit_lsn, rs[9].commit_lsn);
        assert_ne!(rs[9].commit_lsn, rs[10].commit_lsn);
        let keys: std::collections::HashSet<&str> = rs.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys.len(), AGGREGATES);
        assert!(records(3, 1, 16384)
            .iter()
            .all(|r| r.payload.len() == 16384));
    }
}
