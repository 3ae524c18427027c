//! One scrape of a Prometheus `/metrics` page (relay-cdc's admin port, a service's
//! `/metrics`), parsed by the `prometheus-parse` crate, and the questions tests, the
//! bench and the drill ask of it: one series' value, the sum over series, a histogram
//! bucket.
//!
//! A series is named as Prometheus renders it, `name` or `name{label="value",...}`
//! (labels in any order). prometheus-parse reads label values without `,`, `=` or `}`:
//! the relay's and the services' labels (sources, outcomes, kinds, states) have none.

use std::io;

use anyhow::Context;
use prometheus_parse::{Labels, Sample, Scrape, Value};

/// The samples of one scrape.
#[derive(Debug, Clone)]
pub struct Metrics {
    samples: Vec<Sample>,
}

impl Metrics {
    /// Parses Prometheus text; lines that are not samples or comments are skipped.
    pub fn parse(text: &str) -> Self {
        Self {
            samples: parse_lines(text),
        }
    }

    /// `GET url` (a `/metrics` page) and parses the answer.
    pub async fn scrape(http: &reqwest::Client, url: &str) -> anyhow::Result<Self> {
        let text = http
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("GET {url}"))?
            .text()
            .await?;
        Ok(Self::parse(&text))
    }

    /// The value of the one series `series` names (`name` or `name{label="value",...}`,
    /// every label of the series given); `None` when it is not exposed. A histogram's
    /// `_sum` and `_count` are series of their own; its buckets are read with
    /// [`Metrics::bucket`].
    pub fn get(&self, series: &str) -> Option<f64> {
        let wanted = parse_lines(&format!("{series} 0")).pop()?;
        self.samples
            .iter()
            .find(|s| s.metric == wanted.metric && s.labels == wanted.labels)
            .and_then(scalar)
    }

    /// The sum of the series of `name` whose labels include every pair of `labels` (all
    /// of them when `labels` is empty); `None` when there is none.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .filter(|s| s.metric == name && has(&s.labels, labels))
            .filter_map(scalar)
            .fold(None, |sum, v| Some(sum.unwrap_or(0.0) + v))
    }

    /// How many observations of histogram `name` (the series with exactly `labels`, `le`
    /// aside) were at most `le` (the bucket's cumulative count).
    pub fn bucket(&self, name: &str, labels: &[(&str, &str)], le: f64) -> Option<f64> {
        self.samples
            .iter()
            .filter(|s| {
                s.metric == name && s.labels.len() == labels.len() && has(&s.labels, labels)
            })
            .find_map(|s| match &s.value {
                Value::Histogram(buckets) => {
                    buckets.iter().find(|b| b.less_than == le).map(|b| b.count)
                }
                _ => None,
            })
    }

    /// Every series of `name` with its labels as rendered (`label="value",...`, sorted)
    /// and its value: what a failing test prints.
    pub fn series(&self, name: &str) -> Vec<(String, f64)> {
        let mut out: Vec<(String, f64)> = self
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter_map(|s| Some((s.labels.to_string(), scalar(s)?)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

fn parse_lines(text: &str) -> Vec<Sample> {
    let lines = text.lines().map(|l| Ok::<_, io::Error>(l.to_string()));
    Scrape::parse(lines).map_or_else(|_| Vec::new(), |s| s.samples)
}

fn scalar(s: &Sample) -> Option<f64> {
    match s.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
        Value::Histogram(_) | Value::Summary(_) => None,
    }
}

fn has(labels: &Labels, wanted: &[(&str, &str)]) -> bool {
    wanted.iter().all(|(k, v)| labels.get(k) == Some(*v))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# HELP relay_events_published_total Events published.
# TYPE relay_events_published_total counter
relay_events_published_total{source=\"a\"} 3
relay_events_published_total{source=\"b\"} 4
relay_events_published_total_extra 100
# TYPE relay_kafka_brokers gauge
relay_kafka_brokers{source=\"a\",state=\"down\"} 1
relay_kafka_brokers{source=\"a\",state=\"up\"} 0
# TYPE relay_kafka_transactions_total counter
relay_kafka_transactions_total{outcome=\"committed\",source=\"bench\"} 40
relay_kafka_transactions_total{outcome=\"aborted\",source=\"bench\"} 1
# TYPE relay_kafka_transaction_records histogram
relay_kafka_transaction_records_bucket{source=\"bench\",le=\"16384\"} 39
relay_kafka_transaction_records_bucket{source=\"bench\",le=\"+Inf\"} 40
relay_kafka_transaction_records_sum{source=\"bench\"} 4040
relay_kafka_transaction_records_count{source=\"bench\"} 40
";

    #[test]
    fn a_series_is_found_by_its_labels_in_any_order() {
        let m = Metrics::parse(TEXT);
        assert_eq!(
            m.get("relay_kafka_brokers{state=\"down\",source=\"a\"}"),
            Some(1.0)
        );
        assert_eq!(
            m.get("relay_kafka_brokers{source=\"a\",state=\"up\"}"),
            Some(0.0)
        );
        assert_eq!(
            m.get("relay_kafka_brokers{source=\"a\"}"),
            None,
            "labels are exact"
        );
        assert_eq!(m.get("relay_events_published_total_extra"), Some(100.0));
        assert_eq!(m.get("relay_source_up{source=\"a\"}"), None);
    }

    #[test]
    fn sums_run_over_series_and_are_not_confused_with_longer_names() {
        let m = Metrics::parse(TEXT);
        assert_eq!(m.sum("relay_events_published_total", &[]), Some(7.0));
        assert_eq!(
            m.sum(
                "relay_kafka_transactions_total",
                &[("outcome", "committed")]
            ),
            Some(40.0)
        );
        assert_eq!(
            m.sum("relay_kafka_brokers", &[("state", "down")]),
            Some(1.0)
        );
        assert_eq!(m.sum("relay_source_up", &[]), None);
    }

    #[test]
    fn a_histogram_has_buckets_a_sum_and_a_count() {
        let m = Metrics::parse(TEXT);
        let bench = [("source", "bench")];
        assert_eq!(
            m.bucket("relay_kafka_transaction_records", &bench, 16384.0),
            Some(39.0)
        );
        assert_eq!(
            m.bucket("relay_kafka_transaction_records", &bench, f64::INFINITY),
            Some(40.0)
        );
        assert_eq!(
            m.sum("relay_kafka_transaction_records_sum", &bench),
            Some(4040.0)
        );
        assert_eq!(
            m.get("relay_kafka_transaction_records_count{source=\"bench\"}"),
            Some(40.0)
        );
    }

    #[test]
    fn series_are_listed_for_a_failure_message() {
        let m = Metrics::parse(TEXT);
        assert_eq!(
            m.series("relay_events_published_total"),
            vec![
                ("source=\"a\"".to_string(), 3.0),
                ("source=\"b\"".to_string(), 4.0)
            ]
        );
    }
}
