#!/bin/sh
# The TLS material of docker-compose.tls.yml, made once per volume by its tls-init service:
# a throwaway CA, one server certificate for every host name the stack's clients use
# (kafka, kafka-2, kafka-3, users-db, transaction-db, localhost), Kafka's PEM key store,
# and an admin client's properties for Kafka's own tools (the healthcheck). Replace the
# CA with your own for anything but a local stack: see README, "With Docker".
set -eu
out=/certs
if [ -s "$out/server.pem" ]; then
    echo "tls-init: certificates already in $out"
    exit 0
fi
umask 022
cd "$out"
openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=outbox-relay compose CA" \
    -keyout ca.key -out ca.pem 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=outbox-relay compose" \
    -keyout server.key -out server.csr 2>/dev/null
printf '%s\n' \
    "subjectAltName=DNS:kafka,DNS:kafka-2,DNS:kafka-3,DNS:users-db,DNS:transaction-db,DNS:localhost,IP:127.0.0.1" \
    "basicConstraints=CA:FALSE" "keyUsage=digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth,clientAuth" >server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
    -extfile server.ext -out server.pem 2>/dev/null
cat server.key server.pem >kafka-keystore.pem
cat >admin.properties <<PROPS
security.protocol=SASL_SSL
sasl.mechanism=PLAIN
sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" password="${KAFKA_ADMIN_PASSWORD}";
ssl.truststore.type=PEM
ssl.truststore.location=$out/ca.pem
PROPS
rm -f server.csr server.ext ca.key ca.srl
# Kafka runs as its own user and PostgreSQL copies its key for itself: readable here. The
# volume holds nothing else and lives as long as the stack (scripts/compose down removes it).
chmod 644 ./*
echo "tls-init: CA and server certificate made in $out"
