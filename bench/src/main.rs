//! relay-bench: measures relay-cdc against `pg_recvlogical` (the most one walsender
//! gives) and the polling outbox worker it replaces, on the local stack, and prints
//! markdown tables. `scripts/bench` builds and runs it; see bench/README.md.

mod capture;
mod ceiling;
mod cluster;
mod compare;
mod ctx;
mod db;
mod debezium;
mod ingest;
mod kafka;
mod latency;
mod load;
mod options;
mod order;
mod outage;
mod polling;
mod progress;
mod relay;
mod report;
mod run;
mod running;
mod settle;
mod stats;
mod table;
mod throughput;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let opts = options::Options::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("relay-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // On Ctrl-C or SIGTERM the run is dropped: its databases (with their slots) are
    // dropped and the relay child is killed on the way out.
    let result = rt.block_on(async {
        tokio::select! {
            r = run::run(opts) => r,
            _ = testkit::shutdown_signal() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    match result {
        Ok(table) => {
            print!("{table}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("relay-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
