#!/bin/bash
# journeywatch's Kafka (docker-compose): SASL/SCRAM users must be in the KRaft metadata before
# the broker starts, so the storage is formatted here with them (`kafka-storage format
# --add-scram`, once: --ignore-formatted keeps an existing log), then the image's own start-up
# runs. The users and passwords come from the Docker secret kafka_scram_users
# (deploy/compose_secrets.py); to add a user later: kafka-configs.sh --alter --add-config
# 'SCRAM-SHA-512=[password=...]' --entity-type users --entity-name NAME (as admin).
set -euo pipefail

scram=()
while IFS= read -r credential; do
  [[ -n "$credential" ]] && scram+=(--add-scram "$credential")
done < /run/secrets/kafka_scram_users
if [[ ${#scram[@]} -eq 0 ]]; then
  echo "no SCRAM users in /run/secrets/kafka_scram_users: run deploy/compose_secrets.py" >&2
  exit 1
fi

# the settings the storage tool validates, from the same KAFKA_* variables the image renders
cat > /tmp/journeywatch-format.properties <<PROPERTIES
process.roles=${KAFKA_PROCESS_ROLES}
node.id=${KAFKA_NODE_ID}
controller.quorum.voters=${KAFKA_CONTROLLER_QUORUM_VOTERS}
controller.listener.names=${KAFKA_CONTROLLER_LISTENER_NAMES}
listeners=${KAFKA_LISTENERS}
advertised.listeners=${KAFKA_ADVERTISED_LISTENERS}
listener.security.protocol.map=${KAFKA_LISTENER_SECURITY_PROTOCOL_MAP}
inter.broker.listener.name=${KAFKA_INTER_BROKER_LISTENER_NAME}
sasl.enabled.mechanisms=${KAFKA_SASL_ENABLED_MECHANISMS}
sasl.mechanism.inter.broker.protocol=${KAFKA_SASL_MECHANISM_INTER_BROKER_PROTOCOL}
sasl.mechanism.controller.protocol=${KAFKA_SASL_MECHANISM_CONTROLLER_PROTOCOL}
listener.name.controller.sasl.enabled.mechanisms=${KAFKA_LISTENER_NAME_CONTROLLER_SASL_ENABLED_MECHANISMS}
log.dirs=${KAFKA_LOG_DIRS}
PROPERTIES

/opt/kafka/bin/kafka-storage.sh format --ignore-formatted --cluster-id "${CLUSTER_ID}" \
  --config /tmp/journeywatch-format.properties "${scram[@]}"
rm -f /tmp/journeywatch-format.properties
exec /etc/kafka/docker/run
