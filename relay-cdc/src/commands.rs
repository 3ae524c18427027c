//! The commands: `run` (the daemon), `check` (configuration, connectivity and
//! prerequisites), `status` (each source's slot, position and lag) and `import-debezium`
//! (a Debezium connector's configuration as the relay's; it needs no configuration).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::admin::{self, AdminState};
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::sink::kafka::KafkaSink;
use crate::source;
use crate::status::Health;

/// Runs every source until SIGINT/SIGTERM, then drains and confirms before returning.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let settings = Arc::new(settings);
    let metrics = Metrics::new();
    let names: Vec<String> = settings.sources.iter().map(|s| s.name.clone()).collect();
    let health = Health::new(&names, settings.pipeline.stall_timeout());
    health.refresh(&metrics);
    let (stop_tx, stop_rx) = watch::channel(false);

    let listener = tokio::net::TcpListener::bind(&settings.admin.listen)
        .await
        .with_context(|| format!("cannot listen on admin.listen = {}", settings.admin.listen))?;
    tracing::info!(listen = %settings.admin.listen, sources = names.len(), delivery = settings.kafka.delivery.as_str(), "relay-cdc starting");
    let mut admin_stop = stop_rx.clone();
    let router = admin::router(AdminState {
        metrics: metrics.clone(),
        health: health.clone(),
        delivery: settings.kafka.delivery.as_str(),
    });
    let admin = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = admin_stop.wait_for(|s| *s).await;
            })
            .await
    });

    let tasks: Vec<_> = settings
        .sources
        .iter()
        .map(|s| {
            tokio::spawn(
                Pipeline {
                    settings: settings.clone(),
                    source: s.clone(),
                    metrics: metrics.clone(),
                    status: health.source(&s.name),
                    shutdown: stop_rx.clone(),
                    suspects: Default::default(),
                }
                .run(),
            )
        })
        .collect();

    shutdown_signal().await;
    tracing::info!("shutting down: draining in-flight records");
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let _ = admin.await;
    tracing::info!("relay-cdc stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Checks every source and the brokers; prints one line per check. Returns whether all passed.
pub async fn check(settings: &Settings) -> bool {
    let mut ok = true;
    for s in &settings.sources {
        println!(
            "source {} ({}@{}/{})",
            s.name,
            s.user,
            s.endpoints_text(),
            s.database
        );
        match source::connect(s).await {
            Ok(client) => match source::check(&client, s).await {
                Ok(checks) => {
                    for c in checks {
                        ok &= c.ok;
                        println!(
                            "  [{}] {}: {}",
                            match (c.ok, c.warn) {
                                (false, _) => "FAIL",
                                (true, true) => "WARN",
                                (true, false) => " ok ",
                            },
                            c.what,
                            c.detail
                        );
                    }
                }
                Err(e) => {
                    ok = false;
                    println!("  [FAIL] checks: {e}");
                }
            },
            Err(e) => {
                ok = false;
                println!("  [FAIL] connect: {e}");
            }
        }
    }
    println!("kafka ({})", settings.kafka.brokers);
    let kafka = settings.kafka.clone();
    let probe = tokio::task::spawn_blocking(move || {
        KafkaSink::new(
            &kafka,
            "check",
            crate::format::RecordFormat::Native,
            &crate::metrics::Metrics::new(),
        )
        .map_err(|e| e.to_string())
        .and_then(|p| p.probe(Duration::from_secs(10)))
    })
    .await;
    match probe {
        Ok(Ok(n)) => println!("  [ ok ] metadata: {n} broker(s)"),
        Ok(Err(e)) => {
            ok = false;
            println!("  [FAIL] metadata: {e}");
        }
        Err(e) => {
            ok = false;
            println!("  [FAIL] metadata: {e}");
        }
    }
    ok
}

/// Prints each source's slot, whether a session holds it, its confirmed LSN and lag.
pub async fn status(settings: &Settings) -> bool {
    let mut ok = true;
    let exactly_once = settings.kafka.delivery == crate::config::Delivery::ExactlyOnce;
    println!("delivery: {}", settings.kafka.delivery.as_str());
    if exactly_once {
        println!("checkpoints: topic {}", settings.kafka.checkpoint_topic);
        for s in &settings.sources {
            let (kafka, name) = (settings.kafka.clone(), s.name.clone());
            let found = tokio::task::spawn_blocking(move || {
                crate::sink::checkpoint::read_last(&kafka, &name, Duration::from_secs(15))
            })
            .await;
            match found {
                Ok(Ok(Some(c))) => println!(
                    "  {:<20} committed through {} (written {})",
                    s.name, c.end_lsn, c.written_at
                ),
                Ok(Ok(None)) => println!("  {:<20} no checkpoint yet", s.name),
                Ok(Err(e)) => {
                    ok = false;
                    println!("  {:<20} error: {e}", s.name);
                }
                Err(e) => {
                    ok = false;
                    println!("  {:<20} error: {e}", s.name);
                }
            }
        }
    }
    println!(
        "{:<20} {:<28} {:<7} {:<18} {:>14}",
        "SOURCE", "SLOT", "ACTIVE", "CONFIRMED_LSN", "LAG_BYTES"
    );
    for s in &settings.sources {
        let slot = s.slot_name();
        let row = async {
            let c = source::connect(s).await?;
            let r = c
                .query_opt(
                    "select active, confirmed_flush_lsn::text, \
                     pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint \
                     from pg_replication_slots where slot_name = $1 and database = current_database()",
                    &[&slot],
                )
                .await
                .map_err(source::SourceError::from)?;
            Ok::<_, source::SourceError>(r.map(|r| {
                (
                    r.get::<_, bool>(0),
                    r.get::<_, Option<String>>(1),
                    r.get::<_, Option<i64>>(2),
                )
            }))
        };
        match row.await {
            Ok(Some((active, lsn, lag))) => println!(
                "{:<20} {:<28} {:<7} {:<18} {:>14}",
                s.name,
                slot,
                if active { "yes" } else { "no" },
                lsn.unwrap_or_else(|| "-".into()),
                lag.map(|l| l.to_string()).unwrap_or_else(|| "-".into())
            ),
            Ok(None) => println!(
                "{:<20} {:<28} {:<7} {:<18} {:>14}",
                s.name, slot, "-", "(no slot)", "-"
            ),
            Err(e) => {
                ok = false;
                println!("{:<20} {:<28} error: {e}", s.name, slot);
            }
        }
    }
    ok
}

/// The relay configuration equivalent to the Debezium connector configuration in `file`
/// (JSON or .properties); the error names every option the relay cannot honour.
pub fn import_debezium(file: &Path) -> Result<String, crate::import::ImportError> {
    crate::import::import_file(file)
}
