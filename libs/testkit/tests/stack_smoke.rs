//! Proves the real pieces every other test stands on: logical decoding with pgoutput
//! on the private PostgreSQL cluster, an idempotent producer round trip through the
//! real Kafka broker, and a docker-compose file the Docker client accepts.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;
use testkit::{
    create_topic, delete_topics, read_records, unique_suffix, unique_topic, Stack, TestDb,
};

#[tokio::test]
async fn a_pgoutput_slot_can_be_created_read_and_dropped() {
    let db = TestDb::create("smoke", "users_db").await.unwrap();
    let mut conn = db.connect().await.unwrap();
    let slot = format!("smoke_{}", unique_suffix());

    let wal_level: (String,) = sqlx::query_as("show wal_level")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(wal_level.0, "logical");

    sqlx::query("select pg_create_logical_replication_slot($1, 'pgoutput')")
        .bind(&slot)
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query(
        "insert into outbox (id, aggregate_type, aggregate_id, event_type, payload) \
         values (gen_random_uuid(), 'user', 'u1', 'UserCreated', '{\"id\":\"u1\"}')",
    )
    .execute(&mut conn)
    .await
    .unwrap();

    let kinds: Vec<(Vec<u8>,)> = sqlx::query_as(
        "select data from pg_logical_slot_get_binary_changes($1, null, null, \
         'proto_version', '1', 'publication_names', 'outbox_pub')",
    )
    .bind(&slot)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let tags: String = kinds.iter().map(|(d,)| d[0] as char).collect();
    assert_eq!(tags, "BRIC", "begin, relation, insert, commit");
    let insert = &kinds[2].0;
    assert!(
        insert
            .windows(b"UserCreated".len())
            .any(|w| w == b"UserCreated"),
        "the insert carries the row's values"
    );

    sqlx::query("select pg_drop_replication_slot($1)")
        .bind(&slot)
        .execute(&mut conn)
        .await
        .unwrap();
    let left: (i64,) =
        sqlx::query_as("select count(*) from pg_replication_slots where slot_name = $1")
            .bind(&slot)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(left.0, 0);
}

#[tokio::test]
async fn an_idempotent_producer_round_trips_key_headers_and_payload() {
    let stack = Stack::from_env();
    let topic = unique_topic("smoke");
    create_topic(&stack.kafka_brokers, &topic, 3).await.unwrap();

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka_brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .unwrap();
    for i in 0..10 {
        let headers = OwnedHeaders::new().insert(Header {
            key: "event_id",
            value: Some(&format!("e{i}")),
        });
        producer
            .send(
                FutureRecord::to(&topic)
                    .key("agg-1")
                    .payload(&format!("{{\"n\":{i}}}"))
                    .headers(headers),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    let consumer = testkit::consumer(&stack.kafka_brokers, &[&topic]).unwrap();
    let records = read_records(&consumer, 10, Duration::from_secs(30))
        .await
        .unwrap();
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.key.as_deref(), Some("agg-1"));
        assert_eq!(
            r.header("event_id"),
            Some(format!("e{i}").as_str()),
            "one key keeps its order"
        );
        assert_eq!(r.payload_json(), serde_json::json!({ "n": i }));
    }
    assert!(records.iter().all(|r| r.partition == records[0].partition));
    delete_topics(&stack.kafka_brokers, &[&topic]).await;
}

#[test]
fn docker_compose_file_is_valid() {
    let root = testkit::repo_root();
    let runs = |cmd: &[&str], args: &[&str]| {
        std::process::Command::new(cmd[0])
            .args(&cmd[1..])
            .args(args)
            .current_dir(&root)
            .output()
    };
    // `docker compose` (the plugin) where installed, else the standalone `docker-compose`.
    let client: &[&str] = [&["docker", "compose"][..], &["docker-compose"][..]]
        .into_iter()
        .find(|c| runs(c, &["version"]).is_ok_and(|o| o.status.success()))
        .expect("no Docker Compose client to validate docker-compose.yml with; scripts/test installs one");
    let config = |extra: &[&str]| {
        let args = [&["-f", "docker-compose.yml"][..], extra, &["config"][..]].concat();
        let out = runs(client, &args).unwrap();
        assert!(
            out.status.success(),
            "{} {} rejected docker-compose.yml:\n{}",
            client.join(" "),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        // Clients quote values differently ('3', "3"): compare without quotes.
        String::from_utf8(out.stdout)
            .unwrap()
            .replace(['\'', '"'], "")
    };
    let single = config(&[]);
    assert!(
        single.contains("KAFKA_CONTROLLER_QUORUM_VOTERS: 1@kafka:9093"),
        "{single}"
    );
    // The cluster profile: three voters, replication 3, everyone bootstrapping from all three.
    let cluster = config(&["--env-file", "docker/cluster.env"]);
    for want in [
        "KAFKA_CONTROLLER_QUORUM_VOTERS: 1@kafka:9093,2@kafka-2:9093,3@kafka-3:9093",
        "KAFKA_DEFAULT_REPLICATION_FACTOR: 3",
        "KAFKA_MIN_INSYNC_REPLICAS: 2",
        "RELAY_KAFKA__BROKERS: kafka:9092,kafka-2:9092,kafka-3:9092",
        "KAFKA_BROKERS: kafka:9092,kafka-2:9092,kafka-3:9092",
    ] {
        assert!(cluster.contains(want), "{want}:\n{cluster}");
    }
    // The TLS override: SASL_SSL-only client listeners, verify-full everywhere, one CA.
    let tls = config(&["-f", "docker-compose.tls.yml"]);
    for want in [
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP: INTERNAL:SASL_SSL,CONTROLLER:PLAINTEXT,EXTERNAL:SASL_SSL",
        "RELAY_KAFKA__PROPERTIES__SECURITY_PROTOCOL: SASL_SSL",
        "RELAY_SOURCES__USERS_DB__SSLMODE: verify-full",
        "KAFKA_SECURITY_PROTOCOL: SASL_SSL",
        "DB_SSLMODE: verify-full",
        "ssl_cert_file=/certs/server.pem",
        "condition: service_completed_successfully",
    ] {
        assert!(tls.contains(want), "{want}:\n{tls}");
    }
}
