//! Logging: JSON lines when stdout is not a terminal (containers, files), readable
//! text when it is. `RUST_LOG` filters (default `info`, without PostgreSQL's
//! `NOTICE`s such as "relation already exists, skipping" from the migrator).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber (and routes the `log` records of librdkafka and sqlx
/// into it). Call once, first thing in `main`.
pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx::postgres::notice=warn"));
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
