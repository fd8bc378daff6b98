"""End offsets that can be trusted.

The embedded broker (Tansu) may answer ListOffsets with the start of the last record batch + 1
instead of the offset after its last record (../shared/PLATFORM.md). Anything that decides
"this partition is drained" from end offsets would stop early. This adapter confirms the end by
fetching the record before the reported one: the batch it comes in runs to the real end. On
Apache Kafka that record is the last one, and the reported end stands.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from streams.topics import KafkaTarget, kafka_connection


class EndOffsetsTimeout(TimeoutError):
    pass


def confirmed_end_offsets(
    kafka: KafkaTarget,
    partitions: Iterable[TopicPartition],
    quiet_ms: int = 300,
    timeout_s: float = 60.0,
) -> dict[TopicPartition, int]:
    """The offset after the last record of each partition, confirmed by a fetch.

    The record before each reported end is fetched and waited for (until ``timeout_s``, then
    ``EndOffsetsTimeout``): an end confirmed by the first poll that found nothing was short by
    all but one record of the last batch whenever the answer took longer than that poll (a
    loaded machine: a worker's table recovery stopped early, a test read a topic short). Then
    records that arrive meanwhile are taken up to a poll that finds nothing for ``quiet_ms``
    (or until ``timeout_s``: the ends of a busy topic as far as they were read by then).
    """
    wanted = list(partitions)
    consumer = KafkaConsumer(
        **kafka_connection(kafka), enable_auto_commit=False, fetch_max_wait_ms=max(1, quiet_ms)
    )
    try:
        reported = dict(consumer.end_offsets(wanted))
        ends = dict(reported)
        consumer.assign(wanted)
        for tp in wanted:
            consumer.seek(tp, max(0, reported[tp] - 1))
        # a partition is confirmed once the fetch position is past the record before its
        # reported end (the whole batch read: a control batch moves the position too)
        waiting = {tp for tp in wanted if reported[tp] > 0}
        deadline = time.monotonic() + timeout_s
        while True:
            # (while waiting, a poll long enough for an answer: it returns when one comes)
            batches = consumer.poll(timeout_ms=max(quiet_ms, 500) if waiting else quiet_ms)
            for tp, records in batches.items():
                ends[tp] = max(ends[tp], records[-1].offset + 1)
            waiting = {tp for tp in waiting if consumer.position(tp) < reported[tp]}
            late = time.monotonic() > deadline
            if not waiting and (not batches or late):  # (a topic that never goes quiet)
                return ends
            if late:
                raise EndOffsetsTimeout(
                    f"no answer within {timeout_s:.0f} s to a fetch of the last records of "
                    f"{sorted(f'{tp.topic}[{tp.partition}]' for tp in waiting)}: is the broker "
                    "overloaded or gone?"
                )
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
