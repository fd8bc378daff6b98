#!/bin/bash
# journeywatch's Kafka ACLs (docker-compose job `kafka-acls`, as the admin user; idempotent).
# The broker denies everything without an ACL (allow.everyone.if.no.acl.found=false): each role
# may touch its own topics only. Topic names: streams/topics.py (a static test keeps them equal).
set -euo pipefail

bootstrap="${KAFKA_BOOTSTRAP:-kafka:9092}"
prefix="${JW_TOPIC_PREFIX:-}"
app="${prefix}journeywatch"  # the workers' Faust app id: consumer group and changelog prefix

acl() {
  /opt/kafka/bin/kafka-acls.sh --bootstrap-server "$bootstrap" \
    --command-config /run/secrets/kafka_admin_client --add --force "$@" >/dev/null
}
topics() { for name in "$@"; do printf -- '--topic %s ' "${prefix}${name}"; done; }

all=(touchpoints.raw touchpoints.by_person touchpoints.dlq journeys.handoff journey.events
  experience.moments journeys.dlq journeywatch-journey_state-changelog)

# every role checks the topics' partition counts at start: Describe, no more
for user in collector worker sink; do
  # shellcheck disable=SC2046
  acl --allow-principal "User:${user}" --operation Describe $(topics "${all[@]}")
done

# collector: writes raw touchpoints
# shellcheck disable=SC2046
acl --allow-principal User:collector --operation Write $(topics touchpoints.raw)

# worker: ingest (raw -> by_person, dlq) and journeys (by_person, hand-offs -> outputs, state)
# shellcheck disable=SC2046
acl --allow-principal User:worker --operation Read \
  $(topics touchpoints.raw touchpoints.by_person journeys.handoff)
# shellcheck disable=SC2046
acl --allow-principal User:worker --operation Write \
  $(topics touchpoints.by_person touchpoints.dlq journeys.handoff journey.events experience.moments \
    journeys.dlq)
acl --allow-principal User:worker --operation Read --operation Write --operation Describe \
  --topic "${app}-" --resource-pattern-type prefixed  # table changelogs
acl --allow-principal User:worker --operation Read --group "${app}"

# sink: reads what it stores in ClickHouse
# shellcheck disable=SC2046
acl --allow-principal User:sink --operation Read \
  $(topics touchpoints.by_person touchpoints.dlq journey.events experience.moments journeys.dlq)
acl --allow-principal User:sink --operation Read --group "${app}-sink"

echo "journeywatch ACLs in place"
/opt/kafka/bin/kafka-acls.sh --bootstrap-server "$bootstrap" \
  --command-config /run/secrets/kafka_admin_client --list
