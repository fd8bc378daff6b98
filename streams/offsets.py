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


def confirm_table_recovery_highwaters(kafka: KafkaTarget) -> None:
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
        ends = await loop.run_in_executor(None, confirmed_end_offsets, kafka, wanted)
        for tp in tps:
            end = ends.get(TopicPartition(tp.topic, tp.partition))
            if end is not None:
                # Faust's highwater is the offset of the last record (end - 1)
                destination[tp] = max(destination.get(tp, -1), end - 1)

    Recovery._build_highwaters = _build_highwaters  # type: ignore[method-assign]
    Recovery._jw_confirmed_highwaters = True  # type: ignore[attr-defined]


def never_commit_over_unacknowledged(consumer_class: Any = None) -> None:
    """Make Faust's consumer never commit past a message that is not acknowledged yet.

    Faust commits the first run of consecutive acknowledged offsets of a partition. Its check
    that the run starts right at the committed position is off by one (``min(acked) -
    committed > 1``, with ``committed`` already the next offset to read) and is skipped when
    nothing was committed yet (``committed`` None): a message held back (a touchpoint held for
    the watermark, parked behind an identity hand-off) while the next ones are acknowledged
    was committed over, and lost if the worker then died. Here the run must start at the
    committed offset or, before the first commit, at the first offset delivered since the
    partition was assigned. Installed once per process, before the worker starts.
    """
    from faust.transport.consumer import Consumer
    from faust.utils.functional import consecutive_numbers

    cls: Any = consumer_class or Consumer
    if getattr(cls, "_jw_no_commit_over_gaps", False):
        return
    original_track = cls.track_message
    original_seek = cls.perform_seek

    def track_message(self: Any, message: Any) -> None:
        floors = self.__dict__.setdefault("_jw_floor", {})
        floors.setdefault(message.tp, message.offset)
        original_track(self, message)

    async def perform_seek(self: Any) -> None:
        self.__dict__.setdefault("_jw_floor", {}).clear()
        await original_seek(self)

    def _new_offset(self: Any, tp: Any) -> int | None:
        acked = self._acked[tp]
        if not acked:
            return None
        max_offset = max(acked)
        gap_for_tp = self._gap[tp]
        if gap_for_tp:  # offsets known not to exist (compaction, transaction markers)
            candidates = sorted(gap_for_tp.overlap(0, max_offset), key=lambda x: x.begin)
            if candidates:
                extra: list[int] = []
                for entry in candidates:
                    extra.extend(range(entry.begin, entry.end))
                acked.extend(extra)
                gap_for_tp.chop(0, max(extra[-1], max_offset + 1))
        acked.sort()
        committed = self._committed_offset[tp]
        floor = committed if committed is not None else self.__dict__.get("_jw_floor", {}).get(tp)
        if floor is not None and acked[0] > floor:
            return None  # the message at ``floor`` is not acknowledged yet
        batch = next(consecutive_numbers(acked))
        acked[: len(batch)] = []
        self._acked_index[tp].difference_update(batch)
        return int(batch[-1]) + 1

    cls.track_message = track_message
    cls.perform_seek = perform_seek
    cls._new_offset = _new_offset
    cls._jw_no_commit_over_gaps = True
