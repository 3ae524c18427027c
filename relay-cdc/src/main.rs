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
    /// Print the relay configuration equivalent to a Debezium PostgreSQL connector with
    /// the outbox event router; exit 2 naming every option the relay cannot honour.
    ImportDebezium {
        /// The connector's configuration: JSON as POSTed to Kafka Connect
        /// (`{"name": ..., "config": {...}}` or the config object), or a .properties file.
        file: PathBuf,
    },
}

/// The commands that load the configuration.
enum Online {
    Run,
    Check,
    Status,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        Command::ImportDebezium { file } => return import_debezium(&file),
        Command::Run => Online::Run,
        Command::Check => Online::Check,
        Command::Status => Online::Status,
    };
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
        match command {
            Online::Run => match commands::run(settings).await {
                Ok(()) => true,
                Err(e) => {
                    eprintln!("relay-cdc: {e:#}");
                    false
                }
            },
            Online::Check => commands::check(&settings).await,
            Online::Status => commands::status(&settings).await,
        }
    });
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Needs no configuration: prints the converted file, or the refusals with status 2.
fn import_debezium(file: &std::path::Path) -> ExitCode {
    match commands::import_debezium(file) {
        Ok(toml) => {
            print!("{toml}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("relay-cdc: {e}");
            ExitCode::from(2)
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_debezium_takes_one_file_and_no_configuration() {
        let cli = Cli::try_parse_from(["relay-cdc", "import-debezium", "connector.json"]).unwrap();
        assert!(
            matches!(&cli.command, Command::ImportDebezium { file } if file == &PathBuf::from("connector.json"))
        );
        assert!(Cli::try_parse_from(["relay-cdc", "import-debezium"]).is_err());
    }
}
