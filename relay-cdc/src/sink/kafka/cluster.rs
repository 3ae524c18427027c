//! What the Kafka cluster does to the producer, made visible: librdkafka retries
//! transient cluster errors itself (a partition leader moved, `NotEnoughReplicas`, a
//! request timed out, a broker went away) and says nothing unless asked. This client
//! context asks: it reads the producer's statistics and its error callback, counts each
//! kind, logs it, and tells fatal producer errors (the pipeline rebuilds the producer)
//! from transient ones (the producer retries; nothing is skipped).
//!
//! A produce request the partition leader answers with a retriable error (not the
//! leader, not enough replicas) is not a request retry in librdkafka: its records go
//! back to the partition's queue and are sent again. Per partition the statistics give
//! records transmitted (`txmsgs`, every transmission), the last acked record
//! (`acked_msgid`, idempotence numbers a partition's records from 1) and those in
//! flight; transmissions that were neither acked nor are in flight failed, and each
//! new one is counted as `resent`.
//!
//! It also remembers since when the producer has had no broker connection up
//! ([`Reachability`]): once in eight short drills of a broker restart
//! the producer came back knowing no broker at all and never bootstrapped again, though
//! `metadata.recovery.rebootstrap.trigger.ms` says it should; the session asks a new
//! client then (see [`super::producer`]).
//!
//! Invariant: this only observes. What happens to a record is decided by its delivery
//! report (see [`super::producer`]): a transient error never becomes a refusal here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;

use crate::metrics::Metrics;

/// How often librdkafka reports its statistics, in milliseconds.
pub const STATS_INTERVAL_MS: u64 = 5000;

/// What an error reported by the client means for the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The producer can no longer guarantee order or idempotence: the session ends and
    /// a new producer resumes from the confirmed LSN.
    Fatal,
    /// The cluster is (partly) unreachable or busy: librdkafka retries, records wait.
    Transient,
}

/// Classifies an error from librdkafka's error callback.
pub fn classify(code: Option<RDKafkaErrorCode>) -> ErrorClass {
    match code {
        Some(RDKafkaErrorCode::Fatal) => ErrorClass::Fatal,
        _ => ErrorClass::Transient,
    }
}

/// Per-broker counters from one statistics report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BrokerCounters {
    /// Requests sent again (leader moves, `NotEnoughReplicas`, throttling, lost connections).
    pub retries: u64,
    /// Requests that timed out.
    pub timeouts: u64,
    /// Whether the broker's connection is up.
    pub up: bool,
}

/// What changed between two statistics reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Change {
    pub retries: u64,
    pub timeouts: u64,
    /// Records transmitted again after a failed produce request.
    pub resent: u64,
    pub up: i64,
    pub down: i64,
}

/// Failed transmissions per (topic, partition) so far: transmitted − acked − in flight.
pub type FailedSends = HashMap<(String, i32), u64>;

/// The failed transmissions of each partition in a statistics report (see the module).
pub fn failed_sends(stats: &Statistics) -> FailedSends {
    let mut out = FailedSends::new();
    for (topic, t) in &stats.topics {
        for (id, p) in t.partitions.iter().filter(|(id, _)| **id >= 0) {
            let settled = p.acked_msgid.saturating_add(p.msgs_inflight.max(0) as u64);
            out.insert((topic.clone(), *id), p.txmsgs.saturating_sub(settled));
        }
    }
    out
}

/// Records sent again between two reports: what each partition's failed transmissions
/// grew by (a partition seen for the first time counts from zero).
pub fn resent(before: &FailedSends, now: &FailedSends) -> u64 {
    now.iter()
        .map(|(k, n)| n.saturating_sub(before.get(k).copied().unwrap_or(0)))
        .sum()
}

/// The change from `before` to `now` (brokers by name). A broker seen for the first time
/// counts from zero: a producer's counters start at zero.
pub fn change(
    before: &HashMap<String, BrokerCounters>,
    now: &HashMap<String, BrokerCounters>,
) -> Change {
    let mut c = Change::default();
    for (name, n) in now {
        let b = before.get(name).copied().unwrap_or_default();
        c.retries += n.retries.saturating_sub(b.retries);
        c.timeouts += n.timeouts.saturating_sub(b.timeouts);
        if n.up {
            c.up += 1;
        } else {
            c.down += 1;
        }
    }
    c
}

/// The brokers of a statistics report: only the cluster's nodes (bootstrap entries and
/// the internal pseudo-broker have no node id).
pub fn brokers(stats: &Statistics) -> HashMap<String, BrokerCounters> {
    stats
        .brokers
        .iter()
        .filter(|(_, b)| b.nodeid >= 0)
        .map(|(name, b)| {
            let counters = BrokerCounters {
                retries: b.txretries,
                timeouts: b.req_timeouts,
                up: b.state == "UP",
            };
            (name.clone(), counters)
        })
        .collect()
}

/// The producer's client context: counts and logs what the cluster does.
pub struct ClusterContext {
    source: String,
    retried: prometheus::IntCounter,
    timed_out: prometheus::IntCounter,
    broker_errors: prometheus::IntCounter,
    fatal: prometheus::IntCounter,
    brokers_up: prometheus::IntGauge,
    brokers_down: prometheus::IntGauge,
    resent: prometheus::IntCounter,
    last: Mutex<(HashMap<String, BrokerCounters>, FailedSends)>,
    reachability: Reachability,
    log_limit: LogLimit,
}

/// Since when the producer has had no broker connection (bootstrap ones included) up,
/// as of its latest statistics, and the last time the brokers refused the client itself
/// (TLS or SASL); shared by the context and whoever holds a clone.
#[derive(Debug, Clone, Default)]
pub struct Reachability(Arc<Mutex<Seen>>);

#[derive(Debug, Default)]
struct Seen {
    unreachable_since: Option<Instant>,
    refused: Option<String>,
}

impl Reachability {
    /// How long the producer has had no broker connection up, if it has none now.
    pub fn unreachable_for(&self) -> Option<Duration> {
        self.lock().unreachable_since.map(|since| since.elapsed())
    }

    /// Why the brokers refused this client (a certificate that does not verify, SASL
    /// credentials they reject, plaintext to a TLS listener), if they did since a broker
    /// connection was last up.
    pub fn refused(&self) -> Option<String> {
        self.lock().refused.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.0.lock().expect("not poisoned")
    }

    fn observe(&self, any_up: bool) {
        let mut seen = self.lock();
        match (any_up, seen.unreachable_since) {
            (true, _) => {
                seen.unreachable_since = None;
                seen.refused = None;
            }
            (false, None) => seen.unreachable_since = Some(Instant::now()),
            (false, Some(_)) => {}
        }
    }

    fn refuse(&self, why: String) {
        self.lock().refused = Some(why);
    }
}

/// Whether an error the client reported means the brokers refuse the client itself
/// rather than being away: TLS (`SSL`), SASL (`Authentication`), or a transport error
/// librdkafka explains as a security mismatch. Returns how to say it.
pub fn refusal(code: Option<RDKafkaErrorCode>, reason: &str) -> Option<String> {
    let what = match code {
        // Only what the handshake decided: a broker going away mid-handshake is an outage.
        Some(RDKafkaErrorCode::SSL)
            if ["certificate", "verify", "alert"]
                .iter()
                .any(|w| reason.contains(w)) =>
        {
            "TLS handshake failed"
        }
        Some(RDKafkaErrorCode::Authentication)
        | Some(RDKafkaErrorCode::SaslAuthenticationFailed) => "SASL authentication failed",
        _ if reason.contains("security.protocol") => "wrong security.protocol",
        _ => return None,
    };
    Some(format!("kafka: {what}: {reason}"))
}

/// Logs one kind of error at most once per [`LOG_EVERY`], saying how many were not logged.
#[derive(Debug, Default)]
struct LogLimit(Mutex<HashMap<String, (Instant, u64)>>);

/// How often one kind of cluster error is logged at most (each is still counted).
const LOG_EVERY: Duration = Duration::from_secs(10);

impl LogLimit {
    /// `Some(suppressed since the last line)` when `kind` may be logged now.
    fn allow(&self, kind: &str) -> Option<u64> {
        let mut seen = self.0.lock().expect("not poisoned");
        let now = Instant::now();
        match seen.get_mut(kind) {
            Some((at, skipped)) if now.duration_since(*at) < LOG_EVERY => {
                *skipped += 1;
                None
            }
            Some((at, skipped)) => {
                let n = *skipped;
                *at = now;
                *skipped = 0;
                Some(n)
            }
            None => {
                seen.insert(kind.to_string(), (now, 0));
                Some(0)
            }
        }
    }
}

impl ClusterContext {
    pub fn new(metrics: &Metrics, source: &str) -> Self {
        let transient = |kind: &str| {
            metrics
                .kafka_transient_errors
                .with_label_values(&[source, kind])
        };
        let brokers = |state: &str| metrics.kafka_brokers.with_label_values(&[source, state]);
        Self {
            source: source.to_string(),
            retried: transient("retried"),
            timed_out: transient("timed_out"),
            resent: transient("resent"),
            broker_errors: transient("broker"),
            fatal: metrics.kafka_fatal_errors.with_label_values(&[source]),
            brokers_up: brokers("up"),
            brokers_down: brokers("down"),
            last: Mutex::default(),
            reachability: Reachability::default(),
            log_limit: LogLimit::default(),
        }
    }

    /// A handle on this producer's [`Reachability`].
    pub fn reachability(&self) -> Reachability {
        self.reachability.clone()
    }
}

impl ClientContext for ClusterContext {
    fn stats(&self, stats: Statistics) {
        self.reachability
            .observe(stats.brokers.values().any(|b| b.state == "UP"));
        let (now, failed) = (brokers(&stats), failed_sends(&stats));
        let c = {
            let mut last = self.last.lock().expect("not poisoned");
            let c = Change {
                resent: resent(&last.1, &failed),
                ..change(&last.0, &now)
            };
            *last = (now, failed);
            c
        };
        self.retried.inc_by(c.retries);
        self.timed_out.inc_by(c.timeouts);
        self.resent.inc_by(c.resent);
        self.brokers_up.set(c.up);
        self.brokers_down.set(c.down);
        if c.retries > 0 || c.timeouts > 0 || c.resent > 0 || c.down > 0 {
            tracing::warn!(
                source = %self.source,
                class = "transient",
                retried = c.retries,
                timed_out = c.timeouts,
                resent = c.resent,
                brokers_up = c.up,
                brokers_down = c.down,
                "kafka cluster: requests were retried or timed out, or records refused for now and sent again, in the last {} s (a leader moved, too few in-sync replicas, a broker is down or slow); the producer retries them in order, nothing is skipped or confirmed meanwhile",
                STATS_INTERVAL_MS / 1000
            );
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if let Some(why) = refusal(code, reason) {
            self.reachability.refuse(why);
        }
        match classify(code) {
            ErrorClass::Fatal => {
                self.fatal.inc();
                tracing::error!(source = %self.source, class = "fatal", error = %error, reason, "kafka producer in a fatal state: its records fail, the session ends and a new producer resumes from the confirmed LSN");
            }
            ErrorClass::Transient => {
                self.broker_errors.inc();
                // A broker that refuses the client is retried every few ms: say it once in
                // a while, with how often it happened meanwhile.
                let kind = code.map_or_else(|| "other".to_string(), |c| format!("{c:?}"));
                if let Some(suppressed) = self.log_limit.allow(&kind) {
                    tracing::warn!(source = %self.source, class = "transient", error = %error, reason, suppressed, "kafka cluster error; the producer retries, records wait");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(retries: u64, timeouts: u64, up: bool) -> BrokerCounters {
        BrokerCounters {
            retries,
            timeouts,
            up,
        }
    }

    #[test]
    fn reachability_counts_from_the_first_report_without_a_connection_up() {
        let r = Reachability::default();
        assert_eq!(r.unreachable_for(), None);
        r.observe(false);
        let first = r.unreachable_for().expect("unreachable since this report");
        std::thread::sleep(Duration::from_millis(20));
        r.observe(false);
        assert!(
            r.unreachable_for().unwrap() > first,
            "the clock kept its start"
        );
        r.observe(true);
        assert_eq!(r.unreachable_for(), None);
    }

    #[test]
    fn tls_and_sasl_failures_are_refusals_and_outages_are_not() {
        let bad_ca = refusal(
            Some(RDKafkaErrorCode::SSL),
            "SSL handshake failed: certificate verify failed",
        );
        assert!(bad_ca.unwrap().contains("TLS handshake failed"));
        let password = refusal(
            Some(RDKafkaErrorCode::Authentication),
            "SASL authentication error: Authentication failed due to invalid credentials",
        );
        assert!(password.unwrap().contains("SASL authentication failed"));
        let plaintext = refusal(
            Some(RDKafkaErrorCode::BrokerTransportFailure),
            "Disconnected while requesting ApiVersion: might be caused by incorrect security.protocol configuration",
        );
        assert!(plaintext.unwrap().contains("wrong security.protocol"));
        assert_eq!(
            refusal(
                Some(RDKafkaErrorCode::AllBrokersDown),
                "1/1 brokers are down"
            ),
            None
        );
        assert_eq!(
            refusal(
                Some(RDKafkaErrorCode::SSL),
                "SSL handshake failed: Disconnected: connection reset by peer"
            ),
            None,
            "a broker stopping mid-handshake is an outage"
        );
        let r = Reachability::default();
        r.refuse("kafka: SASL authentication failed".into());
        r.observe(false);
        assert!(r.refused().is_some(), "kept while no broker is up");
        r.observe(true);
        assert_eq!(r.refused(), None, "a connection up clears it");
    }

    #[test]
    fn a_repeated_error_is_logged_once_per_period_with_what_was_skipped() {
        let l = LogLimit::default();
        assert_eq!(l.allow("SSL"), Some(0));
        assert_eq!(l.allow("SSL"), None);
        assert_eq!(l.allow("SSL"), None);
        assert_eq!(l.allow("Authentication"), Some(0), "each kind on its own");
        l.0.lock().unwrap().get_mut("SSL").unwrap().0 -= LOG_EVERY;
        assert_eq!(l.allow("SSL"), Some(2));
    }

    #[test]
    fn only_the_fatal_code_is_fatal() {
        assert_eq!(classify(Some(RDKafkaErrorCode::Fatal)), ErrorClass::Fatal);
        for code in [
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::RequestTimedOut,
        ] {
            assert_eq!(classify(Some(code)), ErrorClass::Transient, "{code:?}");
        }
        assert_eq!(classify(None), ErrorClass::Transient);
    }

    #[test]
    fn a_change_counts_what_grew_and_which_brokers_are_up() {
        let before = HashMap::from([
            ("b1".to_string(), counters(3, 1, true)),
            ("b2".to_string(), counters(5, 0, true)),
        ]);
        let now = HashMap::from([
            ("b1".to_string(), counters(10, 1, true)),
            ("b2".to_string(), counters(5, 2, false)),
            ("b3".to_string(), counters(4, 0, true)),
        ]);
        assert_eq!(
            change(&before, &now),
            Change {
                retries: 7 + 4,
                timeouts: 2,
                resent: 0,
                up: 2,
                down: 1,
            }
        );
        assert_eq!(
            change(&now, &now),
            Change {
                retries: 0,
                timeouts: 0,
                resent: 0,
                up: 2,
                down: 1
            }
        );
    }

    #[test]
    fn the_brokers_of_a_report_are_the_nodes_only() {
        let json = r#"{"name":"p","client_id":"c","type":"producer","ts":0,"time":0,"age":0,"replyq":0,
            "msg_cnt":0,"msg_size":0,"msg_max":0,"msg_size_max":0,"tx":0,"tx_bytes":0,"rx":0,
            "rx_bytes":0,"txmsgs":0,"txmsg_bytes":0,"rxmsgs":0,"rxmsg_bytes":0,"simple_cnt":0,
            "metadata_cache_cnt":0,"brokers":{
              "127.0.0.1:9092/1":{"name":"127.0.0.1:9092/1","nodeid":1,"nodename":"127.0.0.1:9092",
                "source":"learned","state":"UP","stateage":0,"outbuf_cnt":0,"outbuf_msg_cnt":0,
                "waitresp_cnt":0,"waitresp_msg_cnt":0,"tx":9,"txbytes":0,"txerrs":0,"txretries":4,
                "txidle":0,"req_timeouts":1,"rx":0,"rxbytes":0,"rxerrs":0,"rxcorriderrs":0,
                "rxpartial":0,"rxidle":0,"zbuf_grow":0,"buf_grow":0,"req":{},"toppars":{}},
              "127.0.0.1:9092/bootstrap":{"name":"127.0.0.1:9092/bootstrap","nodeid":-1,
                "nodename":"127.0.0.1:9092","source":"configured","state":"INIT","stateage":0,
                "outbuf_cnt":0,"outbuf_msg_cnt":0,"waitresp_cnt":0,"waitresp_msg_cnt":0,"tx":0,
                "txbytes":0,"txerrs":0,"txretries":0,"txidle":0,"req_timeouts":0,"rx":0,
                "rxbytes":0,"rxerrs":0,"rxcorriderrs":0,"rxpartial":0,"rxidle":0,"zbuf_grow":0,
                "buf_grow":0,"req":{},"toppars":{}}},
            "topics":{}}"#;
        let stats: Statistics = serde_json::from_str(json).expect("a statistics report");
        assert_eq!(
            brokers(&stats),
            HashMap::from([("127.0.0.1:9092/1".to_string(), counters(4, 1, true))])
        );
    }

    /// A report's topic section: partition 0 with `txmsgs`, `acked_msgid` and
    /// `msgs_inflight` as given, and the unassigned pseudo-partition -1.
    fn report_with_partition(txmsgs: u64, acked: u64, inflight: i64) -> Statistics {
        let partition = |id: i32, tx: u64, acked: u64, inflight: i64| {
            format!(
                r#""{id}":{{"partition":{id},"broker":1,"leader":1,"desired":false,"unknown":false,
                "msgq_cnt":0,"msgq_bytes":0,"xmit_msgq_cnt":0,"xmit_msgq_bytes":0,"fetchq_cnt":0,
                "fetchq_size":0,"fetch_state":"none","query_offset":0,"next_offset":0,"app_offset":0,
                "stored_offset":0,"commited_offset":0,"committed_offset":0,"eof_offset":0,
                "lo_offset":0,"hi_offset":0,"ls_offset":0,"consumer_lag":0,"consumer_lag_stored":0,"txmsgs":{tx},
                "txbytes":0,"rxmsgs":0,"rxbytes":0,"msgs":{tx},"rx_ver_drops":0,
                "msgs_inflight":{inflight},"next_ack_seq":0,"next_err_seq":0,"acked_msgid":{acked}}}"#
            )
        };
        let json = format!(
            r#"{{"name":"p","client_id":"c","type":"producer","ts":0,"time":0,"age":0,"replyq":0,
            "msg_cnt":0,"msg_size":0,"msg_max":0,"msg_size_max":0,"tx":0,"tx_bytes":0,"rx":0,
            "rx_bytes":0,"txmsgs":0,"txmsg_bytes":0,"rxmsgs":0,"rxmsg_bytes":0,"simple_cnt":0,
            "metadata_cache_cnt":0,"brokers":{{}},"topics":{{"t":{{"topic":"t","age":0,
            "metadata_age":0,"batchsize":{{}},"batchcnt":{{}},"partitions":{{{},{}}}}}}}}}"#,
            partition(0, txmsgs, acked, inflight),
            partition(-1, 99, 0, 0)
        );
        let json = json.replace(
            r#""batchsize":{}"#,
            r#""batchsize":{"min":0,"max":0,"avg":0,"sum":0,"stddev":0,"p50":0,"p75":0,"p90":0,"p95":0,"p99":0,"p99_99":0,"outofrange":0,"hdrsize":0,"cnt":0}"#,
        )
        .replace(
            r#""batchcnt":{}"#,
            r#""batchcnt":{"min":0,"max":0,"avg":0,"sum":0,"stddev":0,"p50":0,"p75":0,"p90":0,"p95":0,"p99":0,"p99_99":0,"outofrange":0,"hdrsize":0,"cnt":0}"#,
        );
        serde_json::from_str(&json).expect("a statistics report")
    }

    #[test]
    fn records_sent_again_are_transmissions_neither_acked_nor_in_flight() {
        // 100 sent, 60 acked, 40 in flight: nothing failed yet.
        let healthy = failed_sends(&report_with_partition(100, 60, 40));
        assert_eq!(healthy, FailedSends::from([(("t".to_string(), 0), 0)]));
        // The leader refused the 40 (not enough replicas) and they were sent again: 140
        // transmissions, still 60 acked, 40 in flight.
        let refused = failed_sends(&report_with_partition(140, 60, 40));
        assert_eq!(resent(&healthy, &refused), 40);
        // Then acked: nothing new failed, nothing counted twice.
        let acked = failed_sends(&report_with_partition(140, 100, 0));
        assert_eq!(resent(&refused, &acked), 0);
        // A producer's first report counts what already failed.
        assert_eq!(resent(&FailedSends::new(), &refused), 40);
    }
}
