//! relay-cdc: thin entry point (logging, configuration, the chosen command).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use relay_cdc::{commands, config::Settings};

#[derive(Parser)]
#[command(
    version,
    about = "Publishes outbox inserts from PostgreSQL logical replication to Kafka"
)]
struct Cli {
    /// TOML configuration file; every key can also come from RELAY_* variables.
    #[arg(long, short, env = "RELAY_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay until SIGTERM/SIGINT.
    Run,
    /// Check configuration, connectivity and prerequisites; non-zero exit on failure.
    Check,
    /// Show each source's slot, confirmed LSN and lag.
    Status,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    relay_cdc::tls::install_provider();
    let settings = match Settings::load(cli.config.as_deref(), std::env::vars()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("relay-cdc: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("relay-cdc: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ok = rt.block_on(async {
        match cli.command {
            Command::Run => match commands::run(settings).await {
                Ok(()) => true,
                Err(e) => {
                    eprintln!("relay-cdc: {e:#}");
                    false
                }
            },
            Command::Check => commands::check(&settings).await,
            Command::Status => commands::status(&settings).await,
        }
    });
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder.json().init();
    }
}
