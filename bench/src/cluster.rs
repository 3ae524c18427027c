//! One broker beside a cluster: relay-cdc's throughput and latency on the shared broker
//! and on a private cluster of three brokers, pair by pair.

use crate::capture::Capture;
use crate::ctx::{Ctx, System};
use crate::latency::{latency, LatencyRow};
use crate::options::{Plan, Workload};
use crate::progress::progress;
use crate::throughput::{relay_throughput, RelayThroughput};

/// The relay measured on the shared broker and on a private three-broker cluster, one
/// right after the other for each workload, rate and delivery mode, so both see the
/// same machine.
pub struct ClusterComparison {
    /// (workload, one broker, three brokers).
    pub throughput: Vec<(Workload, RelayThroughput, RelayThroughput)>,
    /// (one broker, three brokers).
    pub latency: Vec<(LatencyRow, LatencyRow)>,
}

pub async fn kafka_cluster(ctx: &Ctx, plan: &Plan) -> anyhow::Result<ClusterComparison> {
    progress("kafka cluster: starting a private cluster of three brokers and two controllers");
    let cluster = testkit::PrivateKafka::start_cluster().await?;
    let (one, three) = (ctx.stack.kafka_brokers.as_str(), cluster.brokers.as_str());
    let mut throughput = Vec::new();
    let mut latency_pairs = Vec::new();
    for delivery in &plan.deliveries {
        for w in &plan.workloads {
            progress(format!(
                "kafka cluster: {} ({delivery}) on one broker, then on three",
                w.label()
            ));
            let a = relay_throughput(ctx, w, *delivery, Capture::Table, one, None).await?;
            let b = relay_throughput(ctx, w, *delivery, Capture::Table, three, None).await?;
            throughput.push((*w, a, b));
        }
        for rate in &plan.rates {
            let system = System::Relay(*delivery);
            let a = latency(ctx, plan, system, *rate, one).await?;
            let b = latency(ctx, plan, system, *rate, three).await?;
            latency_pairs.push((a, b));
        }
    }
    Ok(ClusterComparison {
        throughput,
        latency: latency_pairs,
    })
}
