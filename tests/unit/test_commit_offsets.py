"""Faust must not commit past a message that is not acknowledged yet (streams/offsets.py)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from faust.transport.consumer import Consumer
from faust.types import TP
from intervaltree import IntervalTree

from streams.faust_internals import never_commit_over_unacknowledged

PARTITION = TP("journeys.handoff", 0)


class FakeConsumer:
    """The bookkeeping Faust's ``Consumer`` keeps for commits, and nothing else."""

    def __init__(self, committed: int | None) -> None:
        self._acked: dict[TP, list[int]] = defaultdict(list)
        self._acked_index: dict[TP, set[int]] = defaultdict(set)
        self._gap: dict[TP, IntervalTree] = defaultdict(IntervalTree)
        self._committed_offset: dict[TP, int | None] = defaultdict(lambda: None)
        self._committed_offset[PARTITION] = committed
        self.tracked: list[int] = []

    def track_message(self, message: Any) -> None:
        self.tracked.append(message.offset)

    async def perform_seek(self) -> None:
        return None

    def deliver(self, *offsets: int) -> None:
        for offset in offsets:
            self.track_message(SimpleNamespace(tp=PARTITION, offset=offset))

    def ack(self, *offsets: int) -> None:
        for offset in offsets:
            self._acked[PARTITION].append(offset)
            self._acked_index[PARTITION].add(offset)


class Patched(FakeConsumer):
    pass


never_commit_over_unacknowledged(Patched)


def faust_new_offset(consumer: FakeConsumer) -> int | None:
    return Consumer._new_offset(consumer, PARTITION)  # type: ignore[arg-type]


def test_a_held_first_message_is_not_committed_over_before_the_first_commit() -> None:
    faust = FakeConsumer(committed=None)
    faust.ack(1, 2, 3, 4)  # 0 is held for the watermark
    assert faust_new_offset(faust) == 5  # Faust as released: offset 0 would be lost
    consumer = Patched(committed=None)
    consumer.deliver(0, 1, 2)
    consumer.ack(1, 2)
    assert consumer._new_offset(PARTITION) is None  # type: ignore[attr-defined]
    consumer.ack(0)
    assert consumer._new_offset(PARTITION) == 3  # type: ignore[attr-defined]


def test_a_held_message_right_at_the_committed_offset_is_not_committed_over() -> None:
    faust = FakeConsumer(committed=31)  # 31 is the next offset to read
    faust.ack(32, 33, 34, 35)
    assert faust_new_offset(faust) == 36  # off by one: 31 skipped
    consumer = Patched(committed=31)
    consumer.deliver(31, 32, 33, 34, 35)
    consumer.ack(32, 33, 34, 35)
    assert consumer._new_offset(PARTITION) is None  # type: ignore[attr-defined]
    consumer.ack(31)
    assert consumer._new_offset(PARTITION) == 36  # type: ignore[attr-defined]


def test_offsets_that_do_not_exist_still_count_as_done() -> None:
    consumer = Patched(committed=10)
    consumer._gap[PARTITION].addi(10, 12)  # compacted away
    consumer.ack(12, 13)
    assert consumer._new_offset(PARTITION) == 14  # type: ignore[attr-defined]


def test_a_new_assignment_starts_a_new_floor() -> None:
    consumer = Patched(committed=None)
    consumer.deliver(5)
    asyncio.run(consumer.perform_seek())
    consumer.deliver(9, 10)
    consumer.ack(9, 10)
    assert consumer._new_offset(PARTITION) == 11  # type: ignore[attr-defined]
