//! Topic creation through the admin API, so brokers with `auto.create.topics.enable=false`
//! work: each topic once per sink (remembered when created or found), the checkpoint
//! topic compacted with one partition.
//!
//! A refusal an operator must fix (policy, authorization, bad partition or replication
//! settings) is [`PrepareError::Refused`]; anything that may work later is
//! [`PrepareError::Transient`].

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use super::KafkaSink;
use crate::sink::{PrepareError, Preparing};

impl KafkaSink {
    /// Creates the compacted checkpoint topic (one partition) unless it exists.
    pub async fn prepare_checkpoint_topic(&self, topic: &str) -> Result<(), PrepareError> {
        create_topic(
            &self.admin,
            topic,
            1,
            self.replication_factor,
            &[("cleanup.policy", "compact")],
        )
        .await
    }

    /// Makes sure `topic` exists; `None` when it is known to.
    pub fn prepare_topic(&self, topic: &str) -> Option<Preparing> {
        if !self.create_topics || self.ready.lock().expect("not poisoned").contains(topic) {
            return None;
        }
        let (admin, ready, topic) = (self.admin.clone(), self.ready.clone(), topic.to_string());
        let (partitions, rf) = (self.partitions, self.replication_factor);
        Some(Box::pin(async move {
            create_topic(&admin, &topic, partitions, rf, &[]).await?;
            tracing::debug!(topic = %topic, "topic exists");
            ready.lock().expect("not poisoned").insert(topic);
            Ok(())
        }))
    }
}

/// Creates `topic` unless it exists. Refusals an operator must fix are
/// [`PrepareError::Refused`]; an unreachable cluster is [`PrepareError::Transient`].
async fn create_topic(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    partitions: i32,
    replication_factor: i32,
    config: &[(&str, &str)],
) -> Result<(), PrepareError> {
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    let mut new = NewTopic::new(
        topic,
        partitions,
        TopicReplication::Fixed(replication_factor),
    );
    for (k, v) in config {
        new = new.set(k, v);
    }
    let results = admin
        .create_topics(&[new], &opts)
        .await
        .map_err(|e| PrepareError::Transient(format!("creating topic {topic}: {e}")))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) if is_refused_creation(code) => {
                return Err(PrepareError::Refused(format!(
                    "the cluster refused to create topic {t}: {code}"
                )))
            }
            Err((t, code)) => {
                return Err(PrepareError::Transient(format!(
                    "creating topic {t}: {code}"
                )))
            }
        }
    }
    Ok(())
}

fn is_refused_creation(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::PolicyViolation
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::InvalidReplicationFactor
            | RDKafkaErrorCode::InvalidPartitions
            | RDKafkaErrorCode::InvalidConfig
            | RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::InvalidRequest
    )
}
