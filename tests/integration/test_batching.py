"""Producing in record batches (streams/batching.py) against the real broker: every record lands
once, in order, in the partition Kafka's default partitioner gives its key, with its headers; a
batch that outgrows the producer's batch size is split; the offsets reported are the last ones
written."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest
from aiokafka import AIOKafkaProducer
from kafka import KafkaProducer
from kafka.partitioner.default import murmur2

from pipeline.settings import Settings
from streams.batching import BatchSender
from streams.broker import EmbeddedBroker
from streams.topics import BY_PERSON, DLQ, ensure_topics
from tests.helpers import read_topic

pytestmark = pytest.mark.integration


def default_partition(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (kafka-python's murmur2, not the one the code uses)."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


def test_records_land_where_the_default_partitioner_puts_them_in_order(
    broker: EmbeddedBroker,
) -> None:
    ensure_topics(Settings(broker_url=broker.url, partitions=4))
    # one record through kafka-python first, so the batch's offsets do not start at 0
    first = KafkaProducer(bootstrap_servers=broker.url)
    first.send(BY_PERSON, key=b"device_id:warm-up", value=b"{}").get(timeout=30)
    first.close()
    keys = [f"device_id:d{i % 37}" for i in range(3_000)]
    # values of ~1 KiB: 3 MB in all, many times the producer's 16 KiB batch size
    values = [f'{{"n":{i},"pad":"{"x" * 1_000}"}}'.encode() for i in range(len(keys))]

    async def produce() -> dict[tuple[str, int], int]:
        producer = AIOKafkaProducer(bootstrap_servers=broker.url, acks="all")
        await producer.start()
        try:
            sender = BatchSender(lambda: producer, default_partitions=4)
            for key, value in zip(keys, values, strict=True):
                sender.add_keyed(BY_PERSON, key, value)
            sender.add_partitioned(DLQ, None, b"no key", [("jw.reason", b"x")], fallback=6)
            sender.add_partitioned(DLQ, b"k1", b"keyed", [], fallback=0)
            assert len(sender) == len(keys) + 2
            last = await sender.send()
            assert len(sender) == 0
            assert await sender.send() == {}  # nothing pending: nothing sent
            return {(tp.topic, tp.partition): offset for tp, offset in last.items()}
        finally:
            await producer.stop()

    last = asyncio.run(produce())

    records = read_topic(broker.url, BY_PERSON)
    assert len(records) == len(keys) + 1
    by_partition: dict[int, list[int]] = defaultdict(list)
    ends: dict[int, int] = {}
    for record in records:
        if record.key == b"device_id:warm-up":
            continue
        expected = default_partition(record.key, 4)
        assert record.partition == expected, record.key
        by_partition[record.partition].append(int(record.value.split(b",")[0][5:]))
        ends[record.partition] = max(ends.get(record.partition, -1), record.offset)
    # each partition holds its records once, in the order they were added
    assert sorted(n for ns in by_partition.values() for n in ns) == list(range(len(keys)))
    for numbers in by_partition.values():
        assert numbers == sorted(numbers)
    # the reported offsets are the last written to each partition
    assert {p: o for (t, p), o in last.items() if t == BY_PERSON} == ends

    dead = {record.value: record for record in read_topic(broker.url, DLQ)}
    assert dead[b"no key"].partition == 6 % 4
    assert dead[b"no key"].headers == [("jw.reason", b"x")]
    assert dead[b"keyed"].partition == default_partition(b"k1", 4)


def test_records_larger_than_the_batch_size_go_in_batches_of_their_own(
    broker: EmbeddedBroker,
) -> None:
    ensure_topics(Settings(broker_url=broker.url, partitions=4))
    values = [(b"y" * 4_096 if i % 3 == 0 else b"z") + str(i).encode() for i in range(30)]

    async def produce() -> dict[tuple[str, int], int]:
        producer = AIOKafkaProducer(bootstrap_servers=broker.url, max_batch_size=1_024)
        await producer.start()
        try:
            sender = BatchSender(lambda: producer, default_partitions=4)
            for value in values:
                sender.add(BY_PERSON, 2, b"k", value)
            last = await sender.send()
            return {(tp.topic, tp.partition): offset for tp, offset in last.items()}
        finally:
            await producer.stop()

    last = asyncio.run(produce())
    records = read_topic(broker.url, BY_PERSON)
    assert [record.value for record in records] == values
    assert {record.partition for record in records} == {2}
    assert last == {(BY_PERSON, 2): records[-1].offset}
