"""End offsets that can be trusted.

The embedded broker (Tansu) may answer ListOffsets with the start of the last record batch + 1
instead of the offset after its last record (../shared/PLATFORM.md). Anything that decides
"this partition is drained" from end offsets would stop early. This adapter confirms the end by
fetching past the reported one; on Apache Kafka the fetch simply finds nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition


def confirmed_end_offsets(
    bootstrap: str | list[str], partitions: Iterable[TopicPartition], quiet_ms: int = 300
) -> dict[TopicPartition, int]:
    """The offset after the last record of each partition, confirmed by a fetch."""
    wanted = list(partitions)
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=quiet_ms
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


def group_lag(bootstrap: str | list[str], group: str, topics: Iterable[str]) -> int:
    """Records of ``topics`` that consumer ``group`` has not committed yet (all partitions)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        committed = admin.list_group_offsets(group).get(group, {})
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in consumer.partitions_for_topic(topic) or ()
        ]
        ends = confirmed_end_offsets(bootstrap, partitions)
        lag = 0
        for tp in partitions:
            done = committed.get(tp)
            position = done.offset if done is not None and done.offset >= 0 else 0
            lag += max(0, ends[tp] - position)
        return lag
    finally:
        consumer.close()
        admin.close()
