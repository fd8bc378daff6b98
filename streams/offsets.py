"""End offsets that can be trusted.

The embedded broker (Tansu) may answer ListOffsets with the start of the last record batch + 1
instead of the offset after its last record (../shared/PLATFORM.md). Anything that decides
"this partition is drained" from end offsets would stop early. This adapter confirms the end by
fetching past the reported one; on Apache Kafka the fetch simply finds nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

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


def confirm_table_recovery_highwaters(bootstrap: str | list[str]) -> None:
    """Make Faust's table recovery read each changelog up to its confirmed end.

    Faust decides that a changelog partition is recovered when it has read up to the end
    offset from ListOffsets; on the embedded broker that can be short of the last records, and
    a restarted worker would silently lose the newest state. This replaces the highwaters
    Faust builds with the confirmed ones (unchanged on Apache Kafka). Installed once per
    process, before the worker starts.
    """
    from faust.tables.recovery import Recovery

    if getattr(Recovery, "_jw_confirmed_highwaters", False):
        return
    original = Recovery._build_highwaters

    async def _build_highwaters(
        self: Recovery, consumer: Any, tps: Any, destination: Any, title: str
    ) -> None:
        await original(self, consumer, tps, destination, title)
        if not tps:
            return
        wanted = [TopicPartition(tp.topic, tp.partition) for tp in tps]
        loop = asyncio.get_running_loop()
        ends = await loop.run_in_executor(None, confirmed_end_offsets, bootstrap, wanted)
        for tp in tps:
            end = ends.get(TopicPartition(tp.topic, tp.partition))
            if end is not None:
                # Faust's highwater is the offset of the last record (end - 1)
                destination[tp] = max(destination.get(tp, -1), end - 1)

    Recovery._build_highwaters = _build_highwaters  # type: ignore[method-assign]
    Recovery._jw_confirmed_highwaters = True  # type: ignore[attr-defined]
