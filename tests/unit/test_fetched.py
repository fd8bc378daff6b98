"""Records a fetch brought and the worker did not deliver are fetched again
(``streams.faust_internals._fetched``, the whole-fetch copy of Faust's ``Consumer.getmany``):
each partition with records left out is sought back to the first of them, when it is still
assigned. Faust's own loop drops them, with the consumer's position already past them."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from streams.faust_internals import _fetched

A, B, C = TP("journeys.handoff", 0), TP("journeys.handoff", 1), TP("touchpoints.by_person", 2)


def record(offset: int) -> Any:
    return SimpleNamespace(offset=offset)


class Consumer:
    """What ``_fetched`` uses of Faust's consumer, with one fetch waiting."""

    def __init__(self, records: dict[TP, list[Any]], active: set[TP] | None) -> None:
        self.records = records
        self.active = active
        self.flow_active = True
        self.should_stop = False
        self.assigned = {A, B, C}
        self.app = SimpleNamespace(
            consumer_generation_id=1, monitor=SimpleNamespace(track_tp_end_offset=self.noop)
        )
        self._buffered_partitions: set[TP] = set()
        self._committed_offset: dict[TP, int | None] = {}
        self.sought: dict[TP, int] = {}
        self.seeks_to_committed = 0
        self.log = SimpleNamespace(dev=self.noop, warning=self.noop)  # (Faust's logger)

    def noop(self, *args: Any) -> None:
        return None

    async def _wait_next_records(self, timeout: float) -> tuple[Any, Any]:
        return self.records, self.active

    def _to_message(self, tp: TP, record: Any) -> tuple[TP, int]:
        return (tp, record.offset)

    def highwater(self, tp: TP) -> int:
        return 100

    def assignment(self) -> set[TP]:
        return self.assigned

    async def seek(self, tp: TP, offset: int) -> None:
        self.sought[tp] = offset

    async def perform_seek(self) -> None:
        self.seeks_to_committed += 1


def deliver(consumer: Consumer, on_message: Any = None) -> list[tuple[TP, int]]:
    async def run() -> list[tuple[TP, int]]:
        delivered: list[Any] = []  # (the fake's messages: partition and offset)
        async for _, message in _fetched(consumer, timeout=1.0):
            delivered.append(message)
            if on_message is not None:
                on_message(message)
        return delivered

    return asyncio.run(run())


def test_a_whole_fetch_is_delivered_and_nothing_sought() -> None:
    consumer = Consumer({A: [record(5), record(6)], C: [record(0)]}, {A, C})
    assert deliver(consumer) == [(A, 5), (A, 6), (C, 0)]
    assert consumer.sought == {}


def test_a_partition_paused_since_the_fetch_is_sought_back_to_its_first_record() -> None:
    consumer = Consumer({A: [record(5), record(6)], B: [record(0), record(1)]}, {A})
    assert deliver(consumer) == [(A, 5), (A, 6)]
    assert consumer.sought == {B: 0}  # Faust's copy dropped 0 and 1, its position at 2


def test_a_partition_buffered_is_delivered() -> None:
    consumer = Consumer({B: [record(3)]}, set())
    consumer._buffered_partitions.add(B)
    assert deliver(consumer) == [(B, 3)]
    assert consumer.sought == {}


def test_a_rebalance_mid_fetch_seeks_back_what_is_left_where_still_assigned() -> None:
    consumer = Consumer({A: [record(5), record(6)], B: [record(0)], C: [record(9)]}, None)
    consumer.assigned = {A, B}  # C moved to another worker: its owner reads it from its commit

    def rebalance(message: tuple[TP, int]) -> None:
        if message == (A, 5):
            consumer.app.consumer_generation_id = 2

    assert deliver(consumer, rebalance) == [(A, 5)]
    assert consumer.sought == {A: 6, B: 0}


def test_the_flow_stopped_mid_fetch_seeks_back_likewise() -> None:
    consumer = Consumer({A: [record(5), record(6)], B: [record(0)]}, None)

    def stop(message: tuple[TP, int]) -> None:
        consumer.flow_active = False

    assert deliver(consumer, stop) == [(A, 5)]
    assert consumer.sought == {A: 6, B: 0}


def test_a_fetch_while_the_flow_is_stopped_seeks_back_what_committed_offsets_do_not() -> None:
    consumer = Consumer({A: [record(5)], B: [record(0)], C: [record(7)]}, None)
    consumer.flow_active = False
    consumer._committed_offset = {A: 3, B: None, C: 0}  # (aiokafka seeks A only)
    assert deliver(consumer) == []
    assert consumer.seeks_to_committed == 1
    assert consumer.sought == {B: 0, C: 7}
