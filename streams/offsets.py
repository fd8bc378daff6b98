"""End offsets that can be trusted.

The embedded broker (Tansu) may answer ListOffsets with the start of the last record batch + 1
instead of the offset after its last record (../shared/PLATFORM.md). Anything that decides
"this partition is drained" from end offsets would stop early. This adapter confirms the end by
fetching past the reported one; on Apache Kafka the fetch simply finds nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from streams.topics import KafkaTarget, kafka_connection


def confirmed_end_offsets(
    kafka: KafkaTarget, partitions: Iterable[TopicPartition], quiet_ms: int = 300
) -> dict[TopicPartition, int]:
    """The offset after the last record of each partition, confirmed by a fetch."""
    wanted = list(partitions)
    consumer = KafkaConsumer(
        **kafka_connection(kafka), enable_auto_commit=False, fetch_max_wait_ms=quiet_ms
    )
    try:
        ends = dict(consumer.end_offsets(wanted))
        consumer.assign(wanted)
        for tp in wanted:
            consumer.seek(tp, ends[tp])
        while True:
            batches = consumer.poll(timeout_ms=quiet_ms)
            if not batches:
                return ends
            for tp, records in batches.items():
                ends[tp] = max(ends[tp], records[-1].offset + 1)
    finally:
        consumer.close()


def committed_offsets(kafka: KafkaTarget, group: str) -> dict[TopicPartition, int]:
    """The offsets consumer ``group`` has committed (the next record to read), per partition."""
    admin = KafkaAdminClient(**kafka_connection(kafka))
    try:
        committed = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    return {tp: done.offset for tp, done in committed.items() if done.offset >= 0}


def group_lag(kafka: KafkaTarget, group: str, topics: Iterable[str]) -> int:
    """Records of ``topics`` that consumer ``group`` has not committed yet (all partitions)."""
    consumer = KafkaConsumer(**kafka_connection(kafka))
    try:
        committed = committed_offsets(kafka, group)
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in consumer.partitions_for_topic(topic) or ()
        ]
        ends = confirmed_end_offsets(kafka, partitions)
        lag = 0
        for tp in partitions:
            lag += max(0, ends[tp] - committed.get(tp, 0))
        return lag
    finally:
        consumer.close()
