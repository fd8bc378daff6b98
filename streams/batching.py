"""Whole batches out: the agents' produce path (whole fetches come in through
``streams.faust_internals.deliver_in_batches``).

* ``BatchSender`` produces many records per partition as one record batch
  (``AIOKafkaProducer.create_batch``/``send_batch``): one future per batch, not per record.
* ``TableWriter`` saves a Faust table's records that way, awaited before the inputs are
  acknowledged (the Faust internals it relies on are in streams/faust_internals.py).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

from faust.types import TP

from streams.faust_internals import encode_key, encode_value, partition_context, write_partition
from streams.topics import partition_hash

_Record = tuple[bytes | None, bytes | None, list[Any]]  # key, value, headers
_Unrouted = tuple[int, bytes | None, bytes | None, list[Any]]  # partitioner hash, then a record
_NO_HEADERS: list[Any] = []  # shared, never changed (aiokafka's batch builder wants a list)


class BatchSender:
    """Records collected per topic partition, sent as record batches, awaited together.

    Records added by key are routed when they are sent, once the producer knows the topic's
    partition count (Kafka's default partitioner: murmur2 of the key); they keep their order
    among themselves, per partition.
    """

    def __init__(self, producer: Callable[[], Any], default_partitions: int) -> None:
        self._producer = producer  # the started AIOKafkaProducer (Faust's, in a worker)
        self._default_partitions = default_partitions
        self._partitions: dict[str, int] = {}
        # keyed by (topic, partition): a TP when sent, a plain tuple (equal) when looked up
        self._pending: dict[tuple[str, int], list[_Record]] = {}
        self._unrouted: defaultdict[str, list[_Unrouted]] = defaultdict(list)

    def add(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        self._records_for(topic, partition).append(
            (key, value, list(headers) if headers else _NO_HEADERS)
        )

    def _records_for(self, topic: str, partition: int) -> list[_Record]:
        records = self._pending.get((topic, partition))
        if records is None:
            records = self._pending[TP(topic, partition)] = []
        return records

    def add_keyed(self, topic: str, key: str, value: bytes) -> None:
        """Add a record for the partition Kafka's default partitioner gives ``key``."""
        encoded = key.encode()
        self._unrouted[topic].append((partition_hash(encoded), encoded, value, _NO_HEADERS))

    def add_partitioned(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Sequence[tuple[str, bytes]],
        fallback: int,
    ) -> None:
        """Add a record keyed by ``key`` if it has one, else for partition ``fallback``."""
        hashed = fallback if key is None else partition_hash(key)
        self._unrouted[topic].append(
            (hashed, key, value, list(headers) if headers else _NO_HEADERS)
        )

    async def _route(self) -> None:
        unrouted, self._unrouted = self._unrouted, defaultdict(list)
        counts = self._partitions
        for topic in unrouted.keys() - counts.keys():
            known = await self._producer().partitions_for(topic)  # waits for metadata
            counts[topic] = len(known) if known else self._default_partitions
        for topic, records in unrouted.items():
            count = counts[topic]
            targets: list[list[_Record] | None] = [None] * count
            for hashed, key, value, headers in records:
                partition = hashed % count
                target = targets[partition]
                if target is None:
                    target = targets[partition] = self._records_for(topic, partition)
                target.append((key, value, headers))

    def __len__(self) -> int:
        unrouted = sum(len(records) for records in self._unrouted.values())
        return unrouted + sum(len(records) for records in self._pending.values())

    async def send(self) -> dict[TP, int]:
        """Send everything added and wait for the broker; returns the offset of the last record
        written to each topic partition (raises if any batch failed)."""
        if self._unrouted:
            await self._route()
        pending, self._pending = self._pending, {}
        if not pending:
            return {}
        producer = self._producer()
        sent: list[tuple[Awaitable[Any], int]] = []
        for (topic, partition), records in pending.items():
            tp = TP(topic, partition)
            batch, count = producer.create_batch(), 0
            for key, value, headers in records:
                if batch.append(timestamp=None, key=key, value=value, headers=headers) is None:
                    # full: send it and start the next one with this record (an empty batch
                    # takes any record, however large)
                    sent.append((await _submit(producer, batch, tp), count))
                    batch, count = producer.create_batch(), 0
                    batch.append(timestamp=None, key=key, value=value, headers=headers)
                count += 1
            sent.append((await _submit(producer, batch, tp), count))
        answers = await asyncio.gather(*(future for future, _ in sent))
        last: dict[TP, int] = {}
        for answer, (_, count) in zip(answers, sent, strict=True):
            tp = TP(answer.topic, answer.partition)
            last[tp] = max(last.get(tp, -1), answer.offset + count - 1)
        return last


async def _submit(producer: Any, batch: Any, tp: TP) -> Awaitable[Any]:
    batch.close()  # complete: the producer sends it without lingering
    return cast(Awaitable[Any], await producer.send_batch(batch, tp.topic, partition=tp.partition))


class TableWriter:
    """Saves records of a Faust table's partitions as Faust does (the local store and one
    changelog record per key), with the changelog records sent as record batches and awaited:
    once ``write`` returns, what it saved is in the changelog, and a restarted or new owner of
    a partition recovers it."""

    def __init__(self, table: Any, sender: BatchSender, source_topic: str) -> None:
        self._table = table
        self._sender = sender
        self._source_topic = source_topic

    async def write(self, changes: dict[int, list[tuple[bytes, bytes | None]]]) -> None:
        """Save ``changes`` (key → value, None to delete) per partition; one round of batches."""
        store = self._table.data
        changelog = self._table.changelog_topic.get_topic_name()
        saved: dict[int, list[tuple[bytes, bytes | None]]] = {}
        for partition, records in changes.items():
            kept = saved[partition] = []
            with partition_context(self._source_topic, partition):
                for key, value in records:
                    encoded_key = encode_key(store, key)
                    if value is None:
                        if key in store:  # nothing to delete: no tombstone
                            kept.append((encoded_key, None))
                    else:
                        kept.append((encoded_key, encode_value(store, value)))
            for key, value in kept:
                self._sender.add(changelog, partition, key, value)
        if not any(saved.values()):
            return
        last = await self._sender.send()
        for partition, kept in saved.items():
            write_partition(store, self._source_topic, partition, kept)
            offset = last.get(TP(changelog, partition))
            if offset is not None:
                store.set_persisted_offset(TP(changelog, partition), offset)
