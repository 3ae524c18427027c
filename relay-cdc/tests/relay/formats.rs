//! Record formats against the real PostgreSQL and Kafka: rows inserted, records read
//! back byte for byte. `debezium` is compared with what Debezium's outbox event router
//! and its converters write (literal bytes, not our mapping); `cloudevents` is decoded
//! by the CloudEvents SDK for Rust through its message deserializer traits.

use std::collections::HashMap;
use std::time::Duration;

use cloudevents::event::SpecVersion;
use cloudevents::message::{
    BinaryDeserializer, BinarySerializer, Encoding, MessageAttributeValue, MessageDeserializer,
    StructuredDeserializer, StructuredSerializer,
};
use cloudevents::{AttributesReader, Data, Event};
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::{Headers, Message};
use testkit::RelayProcess;

use crate::helpers::{insert_txn, RelaySetup, Source, READY, STOP};

const WAIT: Duration = Duration::from_secs(60);

/// A consumed record, raw.
#[derive(Debug, Clone)]
struct Raw {
    topic: String,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
            .map(|v| std::str::from_utf8(v).unwrap())
    }

    fn text(&self) -> &str {
        std::str::from_utf8(self.value.as_deref().expect("a value")).unwrap()
    }
}

/// Reads `want` records (skipping the consumer's transient errors, e.g. a topic not
/// created yet) or fails after [`WAIT`] with the end of `relay`'s log.
async fn read_raw(consumer: &StreamConsumer, want: usize, relay: &RelayProcess) -> Vec<Raw> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut out = Vec::with_capacity(want);
    while out.len() < want {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Err(_) => panic!(
                "got {} of {want} records within {WAIT:?}; the relay's log ends:\n{}",
                out.len(),
                relay.log_tail(40)
            ),
            Ok(Err(_)) => continue,
            Ok(Ok(m)) => out.push(Raw {
                topic: m.topic().to_string(),
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
            }),
        }
    }
    out
}

/// Each row's payload as PostgreSQL's text output gives it (what pgoutput carries).
async fn payload_texts(src: &Source, ids: &[String]) -> HashMap<String, String> {
    let mut c = src.conn().await;
    let rows: Vec<(String, String)> =
        sqlx::query_as("select id::text, payload::text from outbox where id::text = any($1)")
            .bind(ids)
            .fetch_all(&mut c)
            .await
            .unwrap();
    rows.into_iter().collect()
}

/// Inserts one row whose payload exercises the expansion (key order, a null, escaping,
/// a double, an array); returns its id.
async fn insert_rich(src: &Source, aggregate_id: &str) -> String {
    let mut c = src.conn().await;
    let (id,): (uuid::Uuid,) = sqlx::query_as(
        "insert into outbox (id, aggregate_type, aggregate_id, event_type, payload) \
         values (gen_random_uuid(), 'order', $1, 'OrderPlaced', \
         jsonb_build_object('tag', 'rich', 'seq', 1, 'note', 'say \"hi\"', 'gone', null, \
         'ratio', 0.5, 'items', jsonb_build_array(1, 2))) returning id",
    )
    .bind(aggregate_id)
    .fetch_one(&mut c)
    .await
    .unwrap();
    id.to_string()
}

/// Topics of this test under a Debezium `route.topic.replacement`.
fn debezium_setup(prefix: &str) -> (RelaySetup, String) {
    let (mut cfg, t) = RelaySetup::new(prefix);
    cfg.extra.extend([
        ("RELAY_KAFKA__FORMAT".into(), "debezium".into()),
        (
            "RELAY_KAFKA__DEBEZIUM__ROUTE_TOPIC_REPLACEMENT".into(),
            format!("{t}.${{routedByValue}}"),
        ),
    ]);
    (cfg, t)
}

#[tokio::test(flavor = "multi_thread")]
async fn debezium_records_carry_the_routers_topic_key_id_header_and_payload_as_written() {
    let src = Source::new("dbz").await;
    let (mut cfg, prefix) = debezium_setup("dbz");
    cfg.extra.push((
        "RELAY_KAFKA__DEBEZIUM__TABLE_FIELDS_ADDITIONAL_PLACEMENT".into(),
        "event_type:header:eventType".into(),
    ));
    let mut relay = cfg.start(&[&src]);
    relay.wait_ready(READY).await.unwrap();
    let mut c = src.conn().await;
    let mut ids = insert_txn(&mut c, "order", "o-1", 3, "first").await;
    ids.push(insert_rich(&src, "o-2").await);

    let consumer =
        testkit::consumer(&src.db.stack().kafka_brokers, &[&format!("{prefix}.order")]).unwrap();
    let records = read_raw(&consumer, ids.len(), &relay).await;
    let payloads = payload_texts(&src, &ids).await;
    for id in &ids {
        let r = records
            .iter()
            .find(|r| r.header("id") == Some(id.as_str()))
            .unwrap_or_else(|| panic!("no record with header id {id}"));
        assert_eq!(r.topic, format!("{prefix}.order"));
        // StringConverter: the key and the value are the columns' text, unquoted.
        let key = if id == ids.last().unwrap() {
            "o-2"
        } else {
            "o-1"
        };
        assert_eq!(r.key.as_deref(), Some(key.as_bytes()));
        assert_eq!(r.text(), payloads[id], "the payload as written");
        let event_type = if key == "o-2" {
            "OrderPlaced"
        } else {
            "TestEvent"
        };
        // SimpleHeaderConverter: `id`, then the placed column; nothing of the relay's.
        let headers: Vec<(&str, Option<&str>)> = r
            .headers
            .iter()
            .map(|(k, _)| (k.as_str(), r.header(k)))
            .collect();
        assert_eq!(
            headers,
            [("id", Some(id.as_str())), ("eventType", Some(event_type))]
        );
    }
    testkit::wait_for("all rows PROCESSED", WAIT, || async {
        Ok((src.count("PENDING").await == 0).then_some(()))
    })
    .await
    .unwrap();
    assert_eq!(relay.stop(STOP).await.unwrap().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn debezium_expanded_json_through_json_converters_exactly_once() {
    let src = Source::new("dbzjson").await;
    let (mut cfg, prefix) = debezium_setup("dbzjson");
    let t = prefix.clone();
    cfg.extra.extend([
        (
            "RELAY_KAFKA__DEBEZIUM__TABLE_EXPAND_JSON_PAYLOAD".into(),
            "true".into(),
        ),
        ("RELAY_KAFKA__DEBEZIUM__KEY_CONVERTER".into(), "json".into()),
        (
            "RELAY_KAFKA__DEBEZIUM__VALUE_CONVERTER".into(),
            "org.apache.kafka.connect.json.JsonConverter".into(),
        ),
        (
            "RELAY_KAFKA__DEBEZIUM__TABLE_FIELDS_ADDITIONAL_PLACEMENT".into(),
            "event_type:envelope:type".into(),
        ),
        ("RELAY_KAFKA__DELIVERY".into(), "exactly-once".into()),
        (
            "RELAY_KAFKA__CHECKPOINT_TOPIC".into(),
            format!("{t}.checkpoints"),
        ),
        (
            "RELAY_KAFKA__TRANSACTIONAL_ID_PREFIX".into(),
            format!("{t}-"),
        ),
    ]);
    let mut relay = cfg.start(&[&src]);
    relay.wait_ready(READY).await.unwrap();
    let rich = insert_rich(&src, "o-9").await;
    let mut c = src.conn().await;
    let plain = insert_txn(&mut c, "order", "o-9", 1, "plain").await;

    let consumer =
        testkit::consumer(&src.db.stack().kafka_brokers, &[&format!("{prefix}.order")]).unwrap();
    let records = read_raw(&consumer, 2, &relay).await;
    // JsonConverter (schemas.enable=false): the key a JSON string, the value the envelope
    // with the expanded payload, compact, in jsonb's key order, the null field left out.
    assert_eq!(records[0].key.as_deref(), Some(&br#""o-9""#[..]));
    assert_eq!(records[0].header("id"), Some(rich.as_str()));
    assert_eq!(
        records[0].text(),
        r#"{"payload":{"seq":1,"tag":"rich","note":"say \"hi\"","items":[1,2],"ratio":0.5},"type":"OrderPlaced"}"#
    );
    assert_eq!(records[1].header("id"), Some(plain[0].as_str()));
    assert_eq!(
        records[1].text(),
        r#"{"payload":{"seq":1,"tag":"plain"},"type":"TestEvent"}"#
    );
    assert_eq!(relay.stop(STOP).await.unwrap().code(), Some(0));
}

/// A consumed record as the CloudEvents SDK's message deserializer traits see it: the
/// Kafka protocol binding's reading of headers and value, as the SDK's own rdkafka
/// binding does it (which this workspace cannot link: see Cargo.toml).
struct KafkaMessage {
    headers: HashMap<String, Vec<u8>>,
    value: Option<Vec<u8>>,
}

impl KafkaMessage {
    fn new(r: &Raw) -> Self {
        Self {
            headers: r
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().unwrap_or_default()))
                .collect(),
            value: r.value.clone(),
        }
    }
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> cloudevents::message::Error {
    cloudevents::message::Error::Other {
        source: Box::new(e),
    }
}

impl MessageDeserializer for KafkaMessage {
    fn encoding(&self) -> Encoding {
        let structured = self
            .headers
            .get("content-type")
            .is_some_and(|v| v.starts_with(b"application/cloudevents+json"));
        if structured {
            Encoding::STRUCTURED
        } else if self.headers.contains_key("ce_specversion") {
            Encoding::BINARY
        } else {
            Encoding::UNKNOWN
        }
    }
}

impl BinaryDeserializer for KafkaMessage {
    fn deserialize_binary<R: Sized, V: BinarySerializer<R>>(
        mut self,
        mut visitor: V,
    ) -> cloudevents::message::Result<R> {
        let text = |v: Vec<u8>| String::from_utf8(v).map_err(other);
        let version = self.headers.remove("ce_specversion").unwrap_or_default();
        let version = SpecVersion::try_from(text(version)?.as_str())?;
        let attributes = version.attribute_names();
        visitor = visitor.set_spec_version(version)?;
        if let Some(ct) = self.headers.remove("content-type") {
            visitor = visitor
                .set_attribute("datacontenttype", MessageAttributeValue::String(text(ct)?))?;
        }
        for (name, v) in self.headers {
            let Some(attr) = name.strip_prefix("ce_") else {
                continue;
            };
            let v = MessageAttributeValue::String(text(v)?);
            visitor = if attributes.contains(&attr) {
                visitor.set_attribute(attr, v)?
            } else {
                visitor.set_extension(attr, v)?
            };
        }
        match self.value {
            Some(v) => visitor.end_with_data(v),
            None => visitor.end(),
        }
    }
}

impl StructuredDeserializer for KafkaMessage {
    fn deserialize_structured<R: Sized, V: StructuredSerializer<R>>(
        self,
        visitor: V,
    ) -> cloudevents::message::Result<R> {
        visitor.set_structured_event(self.value.unwrap_or_default())
    }
}

fn to_event(r: &Raw) -> Event {
    MessageDeserializer::into_event(KafkaMessage::new(r)).expect("a valid CloudEvent")
}

/// The event's data as JSON, however the SDK holds it.
fn data_json(e: &Event) -> serde_json::Value {
    match e.data().expect("data") {
        Data::Json(v) => v.clone(),
        Data::Binary(b) => serde_json::from_slice(b).unwrap(),
        Data::String(s) => serde_json::from_str(s).unwrap(),
    }
}

/// Checks the attributes the outbox columns map to.
fn assert_event(e: &Event, id: &str, source_name: &str, subject: &str, tag: &str) {
    assert_eq!(e.specversion(), SpecVersion::V10);
    assert_eq!(e.id(), id);
    assert_eq!(e.source().to_string(), format!("/relay-cdc/{source_name}"));
    assert_eq!(e.ty(), "TestEvent");
    assert_eq!(e.subject(), Some(subject));
    assert_eq!(e.datacontenttype(), Some("application/json"));
    let age = chrono::Utc::now() - *e.time().expect("a time");
    assert!(age.num_seconds() < 300, "the commit time, recent: {age}");
    assert_eq!(data_json(e)["tag"], tag);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_in_cloudevents_binary_mode_is_read_back_by_the_sdk_beside_a_native_one() {
    let ce = Source::new("cebin").await;
    let native = Source::new("native").await;
    let (mut cfg, prefix) = RelaySetup::new("cebin");
    cfg.extra
        .push(("RELAY_SOURCES__CEBIN__FORMAT".into(), "cloudevents".into()));
    let mut relay = cfg.start(&[&ce, &native]);
    relay.wait_ready(READY).await.unwrap();
    let mut c = ce.conn().await;
    let ids = insert_txn(&mut c, "ceorder", "o-1", 2, "binary").await;
    let mut n = native.conn().await;
    let native_ids = insert_txn(&mut n, "nvorder", "o-1", 1, "native").await;

    let brokers = &ce.db.stack().kafka_brokers;
    let consumer = testkit::consumer(brokers, &[&format!("{prefix}.ceorder")]).unwrap();
    let records = read_raw(&consumer, 2, &relay).await;
    let payloads = payload_texts(&ce, &ids).await;
    for (r, id) in records.iter().zip(&ids) {
        assert_eq!(r.key.as_deref(), Some(&b"o-1"[..]), "the aggregate id");
        assert_eq!(
            r.text(),
            payloads[id],
            "binary mode: the payload as written"
        );
        assert_eq!(r.header("ce_specversion"), Some("1.0"));
        assert_eq!(r.header("event_id"), None, "no native headers");
        assert_event(&to_event(r), id, "cebin", "o-1", "binary");
    }
    // The other source keeps the native format.
    let consumer = testkit::consumer(brokers, &[&format!("{prefix}.nvorder")]).unwrap();
    let r = &read_raw(&consumer, 1, &relay).await[0];
    assert_eq!(r.header("event_id"), Some(native_ids[0].as_str()));
    assert_eq!(r.header("ce_specversion"), None);
    assert_eq!(relay.stop(STOP).await.unwrap().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn cloudevents_structured_mode_is_read_back_by_the_sdk() {
    let src = Source::new("cestr").await;
    let (mut cfg, prefix) = RelaySetup::new("cestr");
    cfg.extra.extend([
        ("RELAY_KAFKA__FORMAT".into(), "cloudevents".into()),
        ("RELAY_KAFKA__CLOUDEVENTS__MODE".into(), "structured".into()),
    ]);
    let mut relay = cfg.start(&[&src]);
    relay.wait_ready(READY).await.unwrap();
    let mut c = src.conn().await;
    let ids = insert_txn(&mut c, "order", "o-7", 2, "structured").await;

    let consumer =
        testkit::consumer(&src.db.stack().kafka_brokers, &[&format!("{prefix}.order")]).unwrap();
    let records = read_raw(&consumer, 2, &relay).await;
    for (r, id) in records.iter().zip(&ids) {
        assert_eq!(
            r.header("content-type"),
            Some("application/cloudevents+json; charset=UTF-8")
        );
        assert_eq!(r.key.as_deref(), Some(&b"o-7"[..]));
        let e = to_event(r);
        assert_event(&e, id, "cestr", "o-7", "structured");
        assert!(
            matches!(e.data(), Some(Data::Json(_))),
            "data is JSON, not a string"
        );
    }
    assert_eq!(relay.stop(STOP).await.unwrap().code(), Some(0));
}

/// Inserts one row whose payload is ~200 KB of random hex, which lz4 cannot bring under
/// a topic's `max.message.bytes=60000` (as in `faults.rs`).
async fn insert_incompressible(src: &Source) -> String {
    let mut c = src.conn().await;
    let (id,): (uuid::Uuid,) = sqlx::query_as(
        "insert into outbox (id, aggregate_type, aggregate_id, event_type, payload) \
         values (gen_random_uuid(), 'evt', 'k', 'Big', jsonb_build_object('blob', \
           (select string_agg(md5(random()::text), '') from generate_series(1, 6500)))) \
         returning id",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    id.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_debezium_record_the_broker_refuses_is_dead_lettered_as_the_row_it_came_from() {
    let src = Source::new("dbzdlq").await;
    let (mut cfg, prefix) = debezium_setup("dbzdlq");
    let dlq = format!("{prefix}.dead-letter");
    cfg.extra.extend([
        ("RELAY_KAFKA__POISON".into(), "dead-letter".into()),
        ("RELAY_KAFKA__DEAD_LETTER_TOPIC".into(), dlq.clone()),
    ]);
    let brokers = src.db.stack().kafka_brokers.clone();
    let topic = format!("{prefix}.evt");
    testkit::create_topic_with_config(&brokers, &topic, 1, &[("max.message.bytes", "60000")])
        .await
        .unwrap();
    let mut relay = cfg.start(&[&src]);
    relay.wait_ready(READY).await.unwrap();
    let consumer = testkit::consumer(&brokers, &[&topic]).unwrap();
    let mut c = src.conn().await;
    let before = insert_txn(&mut c, "evt", "k", 1, "before").await;
    let first = read_raw(&consumer, 1, &relay).await;
    assert_eq!(first[0].header("id"), Some(before[0].as_str()));
    let poison = insert_incompressible(&src).await;
    let after = insert_txn(&mut c, "evt", "k", 1, "after").await;

    // The refused record comes back as its row (it cannot be read back from a Debezium
    // record), so its dead-letter record is the native one of that row.
    let dead = read_raw(&testkit::consumer(&brokers, &[&dlq]).unwrap(), 1, &relay).await;
    assert_eq!(dead[0].header("event_id"), Some(poison.as_str()));
    assert_eq!(dead[0].header("aggregate_type"), Some("evt"));
    assert_eq!(dead[0].header("event_type"), Some("Big"));
    assert!(dead[0]
        .header("error")
        .is_some_and(|e| e.to_lowercase().contains("large")));
    let next = read_raw(&consumer, 1, &relay).await;
    assert_eq!(next[0].header("id"), Some(after[0].as_str()));
    testkit::wait_for("the poison row DEAD_LETTERED", WAIT, || async {
        Ok((src.status_of(&poison).await == "DEAD_LETTERED").then_some(()))
    })
    .await
    .unwrap();
}
