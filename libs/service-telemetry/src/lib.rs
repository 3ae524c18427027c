//! How both HTTP services report: log output and the Prometheus text exposition.
//! (relay-cdc has its own: its admin endpoint and log setup differ.)

use std::io::IsTerminal;

use prometheus::{Encoder, Registry, TextEncoder};
use tracing_subscriber::EnvFilter;

/// The filter when `RUST_LOG` is unset: `info`, with PostgreSQL's notices ("relation
/// already exists, skipping" from the migrator) at `warn`.
pub const DEFAULT_FILTER: &str = "info,sqlx::postgres::notice=warn";

/// Installs the global subscriber: JSON lines when stdout is not a terminal
/// (containers, files), readable text when it is; `RUST_LOG` filters. The `log`
/// records of librdkafka and sqlx are routed into it. Call once, first thing in `main`.
pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if std::io::stdout().is_terminal() {
        builder.init();
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    }
}

/// The content type of [`render`]'s output.
pub fn content_type() -> &'static str {
    prometheus::TEXT_FORMAT
}

/// The Prometheus text exposition of everything `registry` holds.
pub fn render(registry: &Registry) -> String {
    let mut buffer = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut buffer)
        .expect("text encoding of gathered metrics");
    String::from_utf8(buffer).expect("the text format is UTF-8")
}

#[cfg(test)]
mod tests {
    use prometheus::{IntCounter, Registry};

    use super::*;

    #[test]
    fn a_registered_counter_shows_in_the_exposition() {
        let registry = Registry::new();
        let counter = IntCounter::new("things_total", "Things.").unwrap();
        registry.register(Box::new(counter.clone())).unwrap();
        counter.inc_by(3);
        let text = render(&registry);
        assert!(text.contains("# TYPE things_total counter"), "{text}");
        assert!(text.contains("things_total 3"), "{text}");
        assert!(content_type().starts_with("text/plain"));
    }
}
