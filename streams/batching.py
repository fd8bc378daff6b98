"""Whole fetches in, whole batches out: the journey agent's path around Faust's per-message one.

Faust hands a stream one message at a time: for every record its consumer loop waits on the
conductor callback *and* the flow-suspension event (two tasks), the conductor decodes it into
an ``Event`` and queues it, the stream takes it off the queue, tracks and acknowledges it. That
path costs far more per record than the journey engine itself (docs/benchmarks.md). Here:

* ``deliver_in_batches`` registers a handler for some topics: the consumer's fetch loop gives it
  every message of those topics fetched in one ``getmany`` as one list (tracked for
  acknowledgement as Faust's streams track them, so commits stay at-least-once), and keeps the
  ordinary per-message path for every other topic (other agents, table changelogs).
* ``BatchSender`` produces many records per partition as one record batch
  (``AIOKafkaProducer.create_batch``/``send_batch``): one future per batch, not per record.

Subscription, group membership, partition assignment, rebalances, table recovery and commits
stay Faust's: the topics are subscribed through the conductor like an agent's.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from types import SimpleNamespace
from typing import Any, cast

import faust
from faust.streams import _current_event
from faust.transport.consumer import CONSUMER_FETCHING
from faust.types import TP, Message

from streams.topics import partition_hash

BatchHandler = Callable[[list[Message]], Awaitable[None]]
_Record = tuple[bytes | None, bytes | None, list[Any]]  # key, value, headers
_Unrouted = tuple[int, bytes | None, bytes | None, list[Any]]  # partitioner hash, then a record
_NO_HEADERS: list[Any] = []  # shared, never changed (aiokafka's batch builder wants a list)


def deliver_in_batches(app: faust.App, topics: Iterable[str], handler: BatchHandler) -> None:
    """Subscribe ``topics`` and give ``handler`` their messages one fetch at a time.

    The handler acknowledges each message (``message.ack(app.consumer)``) when its effects are
    safe; Faust commits a partition only up to its first unacknowledged message.
    """
    _install()
    names = list(topics)
    app.topics.add(app.topic(*names, key_serializer="raw", value_serializer="raw"))
    handlers: dict[str, BatchHandler] = app.__dict__.setdefault("_jw_batch_handlers", {})
    for name in names:
        handlers[name] = handler


def _install() -> None:
    from faust.transport.consumer import Consumer

    if getattr(Consumer, "_jw_batch_delivery", False):
        return
    per_message = Consumer._drain_messages

    async def _drain_messages(self: Any, fetcher: Any) -> None:
        handlers: dict[str, BatchHandler] = self.app.__dict__.get("_jw_batch_handlers", {})
        if not handlers:
            await per_message(self, fetcher)
            return
        await _drain_in_batches(self, fetcher, handlers)

    Consumer._drain_messages = _drain_messages  # type: ignore[method-assign]
    Consumer._jw_batch_delivery = True  # type: ignore[attr-defined]


async def _drain_in_batches(
    self: Any, fetcher: Any, handlers: dict[str, BatchHandler]
) -> None:  # pragma: no cover - runs inside the worker, covered by the topology tests
    """Faust's ``Consumer._drain_messages`` with the batch topics collected per fetch."""
    callback = self.callback
    consumer_should_stop = self._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set
    get_read_offset = self._read_offset.__getitem__
    set_read_offset = self._read_offset.__setitem__
    acks_enabled_for = self.app.topics.acks_enabled_for
    track = self.track_message

    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            self.diag.set_flag(CONSUMER_FETCHING)
            await self.sleep(0)
            if self.should_stop:
                continue
            batches: dict[BatchHandler, list[Message]] = {}
            since_yield = 0
            async for tp, message in _fetched(self, timeout=1.0):
                offset = message.offset
                r_offset = get_read_offset(tp)
                if r_offset is not None and offset < r_offset:
                    continue  # read already (Faust drops these too)
                if r_offset and offset - r_offset > 1 and acks_enabled_for(message.topic):
                    await self._add_gap(tp, r_offset + 1, offset)
                handler = handlers.get(message.topic)
                if handler is not None:
                    if not message.tracked:
                        message.tracked = True
                        track(message)
                    batches.setdefault(handler, []).append(message)
                    set_read_offset(tp, offset)
                    continue
                since_yield += 1
                if since_yield > 100:
                    await asyncio.sleep(0)
                    since_yield = 0
                commit_every = self._commit_every
                if commit_every is not None and self._n_acked >= commit_every:
                    self._n_acked = 0
                    await self.commit()
                await self.wait_first(callback(message), self.suspend_flow.wait())
                set_read_offset(tp, offset)
            if batches:
                # the handlers are independent (their own topics, producers' batches and
                # locks): their broker round trips overlap
                await asyncio.gather(*(handler(batch) for handler, batch in batches.items()))
            self.diag.unset_flag(CONSUMER_FETCHING)
    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            return
        raise
    finally:
        self.diag.unset_flag(CONSUMER_FETCHING)


async def _fetched(
    self: Any, timeout: float
) -> AsyncIterator[tuple[TP, Message]]:  # pragma: no cover - runs inside the worker
    """Faust's ``Consumer.getmany`` for a whole fetch at a time: the same messages, with each
    partition's high watermark read once per fetch rather than once per record (each read
    crosses into the consumer thread's client), partition by partition rather than round-robin
    (the handlers take the whole fetch anyway)."""
    records, active_partitions = await self._wait_next_records(timeout)
    if records is None or self.should_stop:
        return
    if not self.flow_active:
        self.log.dev("getmany called while flow not active. Seek back to committed offsets.")
        try:
            await self.perform_seek()
        except Exception as exc:  # as Faust: logged, the fetch loop goes on
            self.log.warning(f"exception performing seek when flow not active {exc}")
        return
    app = self.app
    generation_id = app.consumer_generation_id
    to_message = self._to_message
    track_end_offset = app.monitor.track_tp_end_offset
    buffered = self._buffered_partitions
    for tp, tp_records in records.items():
        if active_partitions is None or tp in active_partitions or tp in buffered:
            track_end_offset(tp, self.highwater(tp))
            for record in tp_records:
                if not self.flow_active or app.consumer_generation_id != generation_id:
                    return  # a rebalance began: the partitions' owners fetch the rest again
                yield tp, to_message(tp, record)


def faust_producer(app: faust.App) -> Callable[[], Any]:
    """The AIOKafkaProducer inside a Faust app's producer (there once the app has started)."""
    return lambda: cast(Any, app.producer)._ensure_producer()


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
                    encoded_key = store._encode_key(key)
                    if value is None:
                        if key in store:  # nothing to delete: no tombstone
                            kept.append((encoded_key, None))
                    else:
                        kept.append((encoded_key, store._encode_value(value)))
            for key, value in kept:
                self._sender.add(changelog, partition, key, value)
        if not any(saved.values()):
            return
        last = await self._sender.send()
        for partition, kept in saved.items():
            batch = _write_batch(store)
            if batch is not None:
                # RocksDB: one atomic write per partition, as Faust's own changelog recovery
                # (Store.apply_changelog_batch) writes, not one put per key
                for key, value in kept:
                    if value is None:
                        batch.delete(key)
                    else:
                        batch.put(key, value)
                store._db_for_partition(partition).write(batch)
            else:
                with partition_context(self._source_topic, partition):
                    for key, value in kept:
                        if value is None:
                            store._del(key)
                        else:
                            store._set(key, value)
            offset = last.get(TP(changelog, partition))
            if offset is not None:
                store.set_persisted_offset(TP(changelog, partition), offset)


def _write_batch(store: Any) -> Any:
    """An empty RocksDB write batch for ``store`` if it is Faust's RocksDB store, else None."""
    if not hasattr(store, "_db_for_partition"):
        return None  # the memory store (tests, the sink)
    if store.use_rocksdict:
        import rocksdict

        return rocksdict.WriteBatch(raw_mode=True)
    import rocksdb  # python-rocksdb, where Faust uses it instead

    return rocksdb.WriteBatch()


@contextlib.contextmanager
def partition_context(topic: str, partition: int) -> Iterator[None]:
    """Faust's table and RocksDB store pick the changelog partition and the database from
    "the current event": name one of this partition, also outside stream iteration (a timer)
    and for a batch that mixes partitions."""
    marker = _PartitionEvent(topic, partition)
    token = _current_event.set(weakref.ref(marker))  # type: ignore[arg-type]
    try:
        yield
    finally:
        _current_event.reset(token)


class _PartitionEvent:
    """Just what Faust's table code reads of an event: ``message.topic`` and ``.partition``."""

    def __init__(self, topic: str, partition: int) -> None:
        self.message = SimpleNamespace(topic=topic, partition=partition, tp=TP(topic, partition))
