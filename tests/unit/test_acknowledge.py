"""``streams.faust_internals.acknowledge`` leaves a real Faust consumer exactly as Faust's own
``message.ack(consumer)`` per message does: the offsets its next commit may cover, the messages
it still waits for, and each message's flags."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import faust
import pytest
from faust.types import TP, ConsumerMessage

from streams.faust_internals import acknowledge

ACKING, OTHER = "journeys.by_person", "not.acking"


async def _noop(*args: Any) -> None:
    return None


def consumer() -> Any:
    app = faust.App("acknowledge-test", broker="kafka://127.0.0.1:1")
    topics: Any = app.topics
    topics._acking_topics.add(ACKING)  # (the topics an agent reads are these)
    found: Any = app.transport.create_consumer(
        callback=_noop, on_partitions_revoked=_noop, on_partitions_assigned=_noop
    )
    found._thread.thread_loop.close()  # (the fetch thread's own loop: never started here)
    found._committed_offset[TP(ACKING, 1)] = 5  # partition 1 committed up to offset 5
    return found


def messages(seed: int) -> list[ConsumerMessage]:
    """Two partitions of the acking topic (partly below partition 1's committed offset), a
    topic without acks, a message delivered twice (two objects, one offset)."""
    made = [
        ConsumerMessage(topic, partition, offset, 0.0, 0, None, None, b"", None)
        for topic, partition in ((ACKING, 0), (ACKING, 1), (OTHER, 0))
        for offset in range(10)
    ]
    made.append(ConsumerMessage(ACKING, 0, 3, 0.0, 0, None, None, b"", None))
    random.Random(seed).shuffle(made)
    return made


def state(found: Any, delivered: list[ConsumerMessage]) -> tuple[Any, ...]:
    return (
        {tp: list(offsets) for tp, offsets in found._acked.items() if offsets},
        {tp: set(index) for tp, index in found._acked_index.items() if index},
        found._n_acked,
        sorted((m.topic, m.partition, m.offset) for m in found._unacked_messages),
        [(m.acked, m.refcount) for m in delivered],
    )


@pytest.mark.parametrize("seed", range(20))
def test_acknowledge_does_what_faust_does_per_message(seed: int) -> None:
    async def run() -> None:
        faust_way, ours = consumer(), consumer()
        pick = random.Random(seed)
        delivered = {id(faust_way): messages(seed), id(ours): messages(seed)}
        for found in (faust_way, ours):
            chosen = random.Random(seed)
            for message in delivered[id(found)]:
                found.track_message(message)
                if chosen.random() < 0.2:
                    message.incref(2)  # two holders (streams): one ack does not release it
                if chosen.random() < 0.2:
                    message.ack(found)  # acknowledged before
        taken = [pick.random() < 0.7 for _ in delivered[id(ours)]]
        for message, take in zip(delivered[id(faust_way)], taken, strict=True):
            if take:
                message.ack(faust_way)
        # a commit waiting for acknowledgements (after the earlier ones woke the last waiter)
        ours._waiting_for_ack = asyncio.get_running_loop().create_future()
        acknowledge(ours, [m for m, take in zip(delivered[id(ours)], taken, strict=True) if take])
        assert state(ours, delivered[id(ours)]) == state(faust_way, delivered[id(faust_way)])
        assert ours._n_acked > 0  # (the seeds acknowledge something)
        assert ours._waiting_for_ack.done()  # it wakes

    asyncio.run(run())
