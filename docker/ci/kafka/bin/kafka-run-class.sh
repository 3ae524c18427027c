#!/usr/bin/env bash
# CI-only stand-in (see ../Dockerfile): runs a Kafka tool class on the image's jars, as
# Kafka's own kafka-run-class.sh does, with the tools' logging on stderr at WARN. The
# other scripts here are links to this one; their name selects the class. A tool started
# by a healthcheck every few seconds should be cheap: tools default to a small serial-GC
# JVM that does not optimise hard (KAFKA_JVM_PERFORMANCE_OPTS overrides it).
set -euo pipefail
case "$(basename "$0")" in
    kafka-run-class.sh) class=$1; shift ;;
    kafka-storage.sh) class=kafka.tools.StorageTool ;;
    kafka-topics.sh) class=org.apache.kafka.tools.TopicCommand ;;
    kafka-broker-api-versions.sh) class=org.apache.kafka.tools.BrokerApiVersionsCommand ;;
    kafka-console-consumer.sh) class=org.apache.kafka.tools.consumer.ConsoleConsumer ;;
    kafka-console-producer.sh) class=org.apache.kafka.tools.ConsoleProducer ;;
    kafka-consumer-groups.sh) class=org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ;;
    kafka-get-offsets.sh) class=org.apache.kafka.tools.GetOffsetShell ;;
    kafka-metadata-quorum.sh) class=org.apache.kafka.tools.MetadataQuorumCommand ;;
    kafka-cluster.sh) class=org.apache.kafka.tools.ClusterTool ;;
    *) echo "$(basename "$0"): not provided by this stand-in" >&2; exit 1 ;;
esac
# shellcheck disable=SC2086 # lists of JVM options, as in Kafka's own scripts
exec java -Xmx256m \
    ${KAFKA_JVM_PERFORMANCE_OPTS:--XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true} \
    -Dlog4j2.configurationFile=/opt/kafka/config/tools-log4j2.yaml \
    -cp '/opt/kafka/libs/*' "$class" "$@"
