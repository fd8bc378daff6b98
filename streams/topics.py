"""journeywatch's Kafka topics, created explicitly with the partition count from settings.

Topics are never left to broker auto-creation: the embedded broker would give every
auto-created topic 4 partitions whatever is asked, and a production cluster should not guess.
"""

from __future__ import annotations

import logging
import ssl
import time
from functools import lru_cache
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from pipeline import partitioning
from pipeline.settings import Settings

log = logging.getLogger(__name__)

RAW = "touchpoints.raw"
BY_PERSON = "touchpoints.by_person"
DLQ = "touchpoints.dlq"
HANDOFF = "journeys.handoff"  # identity hand-off between journey partitions (pipeline/shard.py)
JOURNEYS_DLQ = "journeys.dlq"  # records the journey agent could not apply (streams/journeys.py)
JOURNEY_EVENTS = "journey.events"  # started, stage reached, converted, dropped off, merged …
EXPERIENCE_MOMENTS = "experience.moments"  # negative moments, moments of truth, scores, KPIs
JOURNEY_STATE_TABLE = "journey_state"
# header of a control record in touchpoints.by_person (not a touchpoint): "advance", the end of
# a backfill (streams/importer.py end_backfill, streams/journeys.py advance_of)
CONTROL_HEADER = "jw-control"

ALL_TOPICS = (RAW, BY_PERSON, DLQ, HANDOFF, JOURNEY_EVENTS, EXPERIENCE_MOMENTS, JOURNEYS_DLQ)


KafkaTarget = Settings | str | list[str]


def kafka_connection(target: KafkaTarget) -> dict[str, Any]:
    """``bootstrap_servers`` and the security options for a Kafka client: from the settings
    (every process of the product), or a bare address (tests and tools on a plaintext broker)."""
    if isinstance(target, Settings):
        return {"bootstrap_servers": bootstrap_servers(target), **kafka_client_options(target)}
    return {"bootstrap_servers": target}


def changelog_topic(app_id: str, table: str) -> str:
    """Faust's name for a table's changelog topic (created here like every other topic)."""
    return f"{app_id}-{table}-changelog"


class TopicSetupError(RuntimeError):
    pass


def bootstrap_servers(settings: Settings) -> list[str]:
    if settings.broker_url is None:
        raise TopicSetupError("no broker configured (JW_BROKER_URL is unset)")
    return [
        server.strip().removeprefix("kafka://")
        for server in settings.broker_url.replace(";", ",").split(",")
        if server.strip()
    ]


def kafka_client_options(settings: Settings) -> dict[str, Any]:
    """How every Kafka client of journeywatch authenticates: keyword arguments that
    kafka-python (``KafkaProducer``, ``KafkaConsumer``, ``KafkaAdminClient``) and aiokafka
    (``AIOKafkaProducer``, ``AIOKafkaConsumer``) take alike; empty for PLAINTEXT.

    ``JW_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT`` (or ``SASL_SSL``) with
    ``JW_KAFKA_SASL_MECHANISM=SCRAM-SHA-512``, ``JW_KAFKA_SASL_USERNAME`` and
    ``JW_KAFKA_SASL_PASSWORD``: each role connects as its own user, whose ACLs allow its
    topics only. TLS (``SSL``, ``SASL_SSL``) verifies the broker with the system's CAs.
    """
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl.create_default_context()
    if protocol.startswith("SASL_"):
        missing = [
            f"JW_KAFKA_SASL_{name.upper()}"
            for name, value in (
                ("mechanism", settings.kafka_sasl_mechanism),
                ("username", settings.kafka_sasl_username),
                ("password", settings.kafka_sasl_password),
            )
            if not value
        ]
        if missing:
            raise TopicSetupError(
                f"JW_KAFKA_SECURITY_PROTOCOL={protocol} needs {', '.join(missing)}"
            )
        assert settings.kafka_sasl_password is not None
        options |= {
            "sasl_mechanism": settings.kafka_sasl_mechanism,
            "sasl_plain_username": settings.kafka_sasl_username,
            "sasl_plain_password": settings.kafka_sasl_password.get_secret_value(),
        }
    return options


def faust_broker_url(settings: Settings) -> str:
    return ";".join(f"kafka://{server}" for server in bootstrap_servers(settings))


def admin_client(settings: Settings, timeout_s: float = 30.0) -> KafkaAdminClient:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return KafkaAdminClient(
                bootstrap_servers=bootstrap_servers(settings),
                client_id="journeywatch-admin",
                **kafka_client_options(settings),
            )
        except KafkaError as exc:
            if time.monotonic() > deadline:
                raise TopicSetupError(
                    f"no Kafka broker answers at {settings.broker_url}: start it or fix "
                    "JW_BROKER_URL"
                ) from exc
            time.sleep(0.2)


def all_topics(settings: Settings) -> tuple[str, ...]:
    """Every topic journeywatch uses, prefix applied, the journey state changelog included."""
    return (
        *(settings.topic(name) for name in ALL_TOPICS),
        changelog_topic(settings.topic("journeywatch"), JOURNEY_STATE_TABLE),
    )


COMPACTED = {"cleanup.policy": "compact"}


def topic_configs(settings: Settings) -> dict[str, dict[str, str]]:
    """Topic configs journeywatch sets when it creates a topic (others: the broker's
    defaults). The journey state changelog is compacted: it is the workers' state, whose
    latest record per person must stay however old (a worker that lost its local copy
    rebuilds from it); with the default ``delete`` policy a customer silent longer than the
    topic's retention (7 days by default) would be forgotten."""
    return {changelog_topic(settings.topic("journeywatch"), JOURNEY_STATE_TABLE): COMPACTED}


def _check_compacted(admin: KafkaAdminClient, names: list[str]) -> None:
    """Warn (and try to fix) when a topic that must be compacted exists with another policy:
    created by an earlier version, or by hand."""
    if not names:
        return
    try:
        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names],
            config_filter="all",
        )
    except Exception:  # a broker without DescribeConfigs (the embedded one answers nothing)
        log.debug("cannot read topic configs", exc_info=True)
        return
    for name in names:
        entry = (described.get("topic") or {}).get(name) or {}
        policy = entry.get("cleanup.policy")
        value = policy.get("value") if isinstance(policy, dict) else policy
        if not isinstance(value, str) or "compact" in value:
            continue
        try:
            admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name, configs=COMPACTED)])
            log.warning(
                "topic was not compacted: cleanup.policy set to compact",
                extra={"topic": name, "was": value},
            )
        except Exception as exc:
            log.error(
                "topic must be compacted (cleanup.policy=compact) and could not be changed: "
                "records of customers silent longer than its retention are lost when a "
                "worker rebuilds its state. Run: kafka-configs.sh --bootstrap-server <broker> "
                f"--alter --entity-type topics --entity-name {name} "
                "--add-config cleanup.policy=compact",
                extra={"topic": name, "cleanup_policy": value, "error": str(exc)},
            )


def ensure_topics(settings: Settings, names: tuple[str, ...] = ALL_TOPICS) -> dict[str, str]:
    """Create the missing topics and check the others; returns each topic's id.

    A topic id changes when a topic is deleted and created again (and on every start of the
    in-memory embedded broker): offsets start again from zero, so sinks key their positions
    by topic id, not by name alone.
    """
    admin = admin_client(settings)
    try:
        wanted = [settings.topic(name) for name in names]
        if names == ALL_TOPICS:
            wanted = list(all_topics(settings))
        existing = set(admin.list_topics())
        missing = [name for name in wanted if name not in existing]
        configs = topic_configs(settings)
        _check_compacted(admin, [n for n in wanted if n in existing and n in configs])
        if missing:
            try:
                admin.create_topics(
                    [
                        NewTopic(
                            name,
                            settings.partitions,
                            settings.replication_factor,
                            topic_configs=configs.get(name, {}),
                        )
                        for name in missing
                    ]
                )
            except TopicAlreadyExistsError:
                pass  # another process won the race
            except KafkaError as exc:
                raise TopicSetupError(f"could not create topics {missing}: {exc}") from exc
        topic_ids: dict[str, str] = {}
        for description in admin.describe_topics(wanted):
            topic_ids[description["name"]] = str(description.get("topic_id") or "")
            count = len(description["partitions"])
            if count != settings.partitions:
                log.warning(
                    "topic has a different partition count than configured",
                    extra={
                        "topic": description["name"],
                        "partitions": count,
                        "configured": settings.partitions,
                    },
                )
        return topic_ids
    finally:
        admin.close()


@lru_cache(maxsize=262_144)
def kafka_partition(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` (murmur2, as the producers);
    cached, because person keys repeat."""
    return partitioning.partition_for(key.encode(), partitions)


# The partitioner's hash before the modulo (a producer that learns the count later), cached:
# record keys repeat, and the hash is interpreted Python where the core is not compiled.
partition_hash = lru_cache(maxsize=65_536)(partitioning.partition_hash)
