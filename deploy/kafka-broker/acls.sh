#!/bin/bash
# journeywatch's Kafka ACLs (docker-compose job `kafka-acls`, as the admin user; idempotent).
# The broker denies everything without an ACL (allow.everyone.if.no.acl.found=false): each role
# (collector, worker, sink, actions) may touch its own topics only. Topic names: streams/topics.py (a static test keeps them equal).
set -euo pipefail

bootstrap="${KAFKA_BOOTSTRAP:-kafka:9092}"
prefix="${JW_TOPIC_PREFIX:-}"
app="${prefix}journeywatch"  # the workers' Faust app id: consumer group and changelog prefix
actions_app="${prefix}journeywatch-actions"  # the actions agent's (streams/actions.py)

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
# its table's changelog: this one by name (a prefix "${app}-" would also match the actions
# agent's "${app}-actions-..." changelog)
acl --allow-principal User:worker --operation Read --operation Write --operation Describe \
  --topic "${app}-journey_state-changelog"
acl --allow-principal User:worker --operation Read --group "${app}"

# sink: reads what it stores in ClickHouse
# shellcheck disable=SC2046
acl --allow-principal User:sink --operation Read \
  $(topics touchpoints.by_person touchpoints.dlq journey.events experience.moments journeys.dlq)
# ... and the actions agent's dead letters (into action_failures)
# shellcheck disable=SC2046
acl --allow-principal User:sink --operation Describe --operation Read $(topics actions.dlq)
acl --allow-principal User:sink --operation Read --group "${app}-sink"

# actions: the closed-loop actions agent (journeywatch actions run): reads the journey outputs,
# routes triggers through its own topic, writes undeliverable actions to actions.dlq and its
# action_state table's changelog; nothing else (it never writes the journey topics)
# shellcheck disable=SC2046
acl --allow-principal User:actions --operation Describe \
  $(topics journey.events experience.moments actions.triggers actions.dlq)
# shellcheck disable=SC2046
acl --allow-principal User:actions --operation Read \
  $(topics journey.events experience.moments actions.triggers)
# shellcheck disable=SC2046
acl --allow-principal User:actions --operation Write $(topics actions.triggers actions.dlq)
acl --allow-principal User:actions --operation Read --operation Write --operation Describe \
  --topic "${actions_app}-action_state-changelog"
acl --allow-principal User:actions --operation Read --group "${actions_app}"

echo "journeywatch ACLs in place"
/opt/kafka/bin/kafka-acls.sh --bootstrap-server "$bootstrap" \
  --command-config /run/secrets/kafka_admin_client --list
