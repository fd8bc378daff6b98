"""Every Faust internal journeywatch copies, replaces, wraps or reads, in one module.

journeywatch runs on faust-streaming 0.15 (``constraints.txt`` pins the release this code was
checked against; ``pyproject.toml`` allows 0.15.x). Faust's public API does not do what the
workers need in the places below; each entry says why, with the upstream issue where there is
one. ``tests/unit/test_faust_internals.py`` holds a digest of every Faust (and mode) function
named here, and of those the copies call: a Faust release that changes one fails that test,
naming this code to compare with it. The attributes read or set (``_committed_offset``,
``_fetch_max_wait_ms``, ``_current_event``, ``spinner``) have no source to digest: the
topology and chaos tests (tests/e2e/) are what notices a change there. Those ``acknowledge``
keeps as ``Consumer.ack`` does (``_acked``, ``_acked_index``, ``_n_acked``,
``_unacked_messages``, ``_waiting_for_ack``, a message's ``refcount``) are compared with
Faust's own on a real consumer by tests/unit/test_acknowledge.py.

* ``deliver_in_batches``: ``Consumer._drain_messages``, ``Consumer.getmany`` (copied). Faust
  hands a stream one message at a time (two tasks, an ``Event``, a queue, tracking and
  acknowledgement per record): about 5,000-7,000 records/s for an agent that only decodes,
  against over 100k/s for aiokafka (../shared/PLATFORM.md; upstream "Message consumption is
  slow", https://github.com/robinhood/faust/issues/563, open). The journey and ingest agents
  take whole fetches.
* ``never_commit_over_unacknowledged``: ``Consumer._new_offset`` (replaced), ``track_message``,
  ``perform_seek`` (wrapped). Faust commits over a message that is not acknowledged yet when it
  sits right at the committed offset, or before the first commit: the journey agent holds
  touchpoints for the watermark while later ones are acknowledged, and a crash lost them.
  Upstream https://github.com/faust-streaming/faust/issues/606 (open), fix proposed in
  https://github.com/faust-streaming/faust/pull/707 (open).
* ``confirm_table_recovery_highwaters``: ``Recovery._build_highwaters`` (wrapped). The embedded
  broker (Tansu) can answer ListOffsets short of the last records, so recovery stopped early
  and a restarted worker lost its newest state (a broker behaviour, not a Faust bug;
  ../shared/PLATFORM.md). The highwaters are confirmed by a fetch; unchanged on Apache Kafka.
* ``use_fetch_max_wait``: ``AIOKafkaConsumerThread._create_worker_consumer`` (wrapped),
  ``AIOKafkaConsumer._fetch_max_wait_ms`` (set). Faust 0.15 hard-codes a fetch wait of 1,500 ms
  with no setting; the embedded broker answers a fetch only when the wait is over, so every hop
  cost that much latency.
* ``encode_key``, ``encode_value``, ``write_partition``: ``Collection._send_changelog``,
  ``Store._encode_key``, ``Store._encode_value``, the RocksDB ``Store._set``, ``_del``,
  ``_db_for_partition``, ``apply_changelog_batch``, ``set_persisted_offset`` (done as they do,
  or called). A Faust table saves one key at a time: one RocksDB put and one changelog send
  (one future) per key, not awaited. The journey agent saves a batch's state records as record
  batches, awaits them before it acknowledges the inputs, then writes each partition's keys to
  RocksDB in one write batch (streams/batching.TableWriter).
* ``open_store_partition``: ``RocksDB Store._db_for_partition`` (called). The store lists only
  the partition databases it has opened: after a restart with nothing new in the changelog, a
  partition's state is not listed until it is opened.
* ``partition_context``: ``faust.streams._current_event`` (set). A table picks its changelog
  partition and RocksDB database from "the current event": the agents save outside Faust's
  stream iteration (whole fetches, timers), for batches that mix partitions.
* ``acknowledge``: ``Message.ack``, ``Message.decref``, ``ConsumerMessage.on_final_ack`` and
  ``Consumer.ack`` (done as they do, for many messages at once). Per message they take a
  re-entrant lock three times and wake the consumer's waiters: a journey step acknowledges a
  batch of inputs together, in one hold of the lock (tests/unit/test_acknowledge.py compares
  the two on a real consumer).
* ``faust_producer``: ``Producer._ensure_producer`` (called). The record-batch API
  (``create_batch``/``send_batch``) is aiokafka's, on the producer inside Faust's.
* ``QuietWorker``: ``mode.Worker._schedule_shutdown`` (extended), ``Worker.spinner`` (set to
  None). The terminal spinner writes escape codes into the logs and sets the root logger to
  DEBUG; a stopping worker waits for the broker for ever when it is gone.
* ``committed_offset``: ``Consumer._committed_offset`` (read). Where a partition's input
  restarts after a rebalance or a restart: the shard's hand-off bookkeeping and the lag gauges
  start there.

Not internals, but bound to Faust's aiohttp web driver (the only one Faust 0.15 has), outside
this module: ``app.web.web_app`` (the aiohttp application, for the security headers hook in
streams/app.py), and Faust's ``Request``/``Response`` used as aiohttp's (``request.content``
and ``request.transport`` for bounded body reads and a 408/413 that still reaches the client
in streams/httpbody.py, ``response.force_close()`` in streams/sink.py, a raw
``StreamResponse`` for the live stream in streams/live.py). tests/integration and tests/e2e
exercise each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from types import SimpleNamespace
from typing import Any, cast

import faust
from faust.streams import _current_event
from faust.transport.consumer import CONSUMER_FETCHING
from faust.types import TP, Message
from faust.types.tuples import ack_lock
from faust.worker import Worker
from kafka import TopicPartition
from mode.utils.futures import notify

from streams.offsets import confirmed_end_offsets
from streams.topics import KafkaTarget

BatchHandler = Callable[[list[Message]], Awaitable[None]]
log = logging.getLogger(__name__)


# --- whole fetches to the agents -----------------------------------------------------------------
def deliver_in_batches(app: faust.App, topics: Iterable[str], handler: BatchHandler) -> None:
    """Subscribe ``topics`` and give ``handler`` their messages one fetch at a time.

    The consumer's fetch loop gives the handler every message of those topics fetched in one
    ``getmany`` as one list (tracked for acknowledgement as Faust's streams track them, so
    commits stay at-least-once), and keeps the ordinary per-message path for every other topic
    (other agents, table changelogs). Subscription, group membership, assignment, rebalances,
    table recovery and commits stay Faust's: the topics are subscribed through the conductor
    like an agent's.

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


# --- acknowledging -------------------------------------------------------------------------------
def acknowledge(consumer: Any, messages: Iterable[Message]) -> None:
    """``message.ack(consumer)`` for each of ``messages``, in one hold of Faust's ack lock.

    The messages are those the consumer delivered (Faust's ``ConsumerMessage``, whose final
    acknowledgement marks its offset for the next commit). ``Message.ack`` (a decrement of the
    message's references), ``ConsumerMessage.on_final_ack`` and ``Consumer.ack`` are done as
    they do, per message: they take a re-entrant lock three times and notify the consumer's
    waiters per record (about 4 % of a journey worker's time, py-spy). Here the waiters are
    notified once, when an offset of a topic with acknowledgements was marked."""
    acks_enabled_for = consumer.app.topics.acks_enabled_for
    committed_offsets = consumer._committed_offset
    acked_indexes = consumer._acked_index
    acked_offsets = consumer._acked
    unacked = consumer._unacked_messages
    marked = False
    with ack_lock:
        try:
            for message in messages:
                if message.acked:
                    continue
                refcount = message.refcount = max(message.refcount - 1, 0)
                if refcount:
                    continue  # (Message.ack: others hold it still)
                message.acked = True
                if not acks_enabled_for(message.topic):
                    continue
                marked = True
                tp, offset = message.tp, message.offset
                committed = committed_offsets[tp]
                if committed is None or offset >= committed:
                    acked_index = acked_indexes[tp]
                    if offset not in acked_index:
                        unacked.discard(message)
                        acked_index.add(offset)
                        acked_offsets[tp].append(offset)
                        consumer._n_acked += 1
        finally:
            if marked:
                notify(consumer._waiting_for_ack)


# --- producing -----------------------------------------------------------------------------------
def faust_producer(app: faust.App) -> Callable[[], Any]:
    """The AIOKafkaProducer inside a Faust app's producer (there once the app has started)."""
    return lambda: cast(Any, app.producer)._ensure_producer()


# --- table state ---------------------------------------------------------------------------------
def encode_key(store: Any, key: bytes) -> bytes:
    """``key`` as the table's store keeps it (Faust's key serializer)."""
    return cast(bytes, store._encode_key(key))


def encode_value(store: Any, value: bytes) -> bytes:
    """``value`` as the table's store keeps it (Faust's value serializer)."""
    return cast(bytes, store._encode_value(value))


def write_partition(
    store: Any, source_topic: str, partition: int, records: list[tuple[bytes, bytes | None]]
) -> None:
    """Write encoded ``records`` (None: delete) to the store's database of ``partition``: in
    RocksDB one atomic write batch, as Faust's own changelog recovery
    (``Store.apply_changelog_batch``) writes, not one put per key; in the memory store (tests,
    the sink) key by key."""
    batch = _write_batch(store)
    if batch is not None:
        for key, value in records:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        store._db_for_partition(partition).write(batch)
        return
    with partition_context(source_topic, partition):
        for key, value in records:
            if value is None:
                store._del(key)
            else:
                store._set(key, value)


def open_store_partition(store: Any, partition: int) -> None:
    """Open the RocksDB database of ``partition`` (nothing for the memory store): Faust's
    RocksDB store lists only the partition databases it has opened, and after a restart with
    nothing new in the changelog it has not opened ours yet."""
    open_partition = getattr(store, "_db_for_partition", None)
    if open_partition is not None:
        open_partition(partition)


def committed_offset(consumer: Any, tp: TP) -> int | None:
    """The offset the consumer group last committed for ``tp`` as Faust's consumer knows it
    (None before the first commit of this assignment)."""
    committed: dict[TP, int | None] = getattr(consumer, "_committed_offset", {})
    return committed.get(tp)


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


# --- commits and recovery ------------------------------------------------------------------------
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


# --- fetching ------------------------------------------------------------------------------------
def use_fetch_max_wait(app: faust.App, wait_ms: int) -> None:
    """Give ``app``'s consumer ``fetch_max_wait_ms`` (Faust 0.15 hard-codes 1,500 ms).

    Apache Kafka answers a waiting fetch as soon as records arrive, so there the wait only
    bounds idle polling. The embedded broker answers only when the wait is over: with Faust's
    1.5 s every hop (raw → ingest → by-person → journeys → hand-offs) added up to that much
    latency (median 0.42 s per hop measured here, against 5 ms with 100 ms).
    """
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    app.__dict__["_jw_fetch_max_wait_ms"] = wait_ms
    if getattr(AIOKafkaConsumerThread, "_jw_fetch_max_wait", False):
        return
    original = AIOKafkaConsumerThread._create_worker_consumer

    def _create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        wait = self.app.__dict__.get("_jw_fetch_max_wait_ms")
        if wait is not None:
            consumer._fetch_max_wait_ms = wait  # read when the consumer starts its fetcher
        return consumer

    AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]
    AIOKafkaConsumerThread._jw_fetch_max_wait = True  # type: ignore[attr-defined]


# --- the worker process --------------------------------------------------------------------------
class QuietWorker(Worker):
    """A Faust worker without the terminal spinner, that stops within a bounded time.

    The spinner writes cursor escape codes into the logs and, worse, installs a log handler
    that sets the root logger to DEBUG, so every debug record of every library is built
    and formatted even when the configured level is WARNING.

    Stopping (after SIGTERM or SIGINT) waits for the broker: with the broker gone, Faust's
    consumer thread and producer retry for ever. ``shutdown_timeout_s`` after the signal the
    process exits anyway, with status 1; nothing is lost, because what was not committed is
    read again by the partition's next owner.
    """

    def __init__(self, *args: Any, shutdown_timeout_s: float = 25.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spinner = None
        self._shutdown_timeout_s = shutdown_timeout_s
        self._watchdog: threading.Timer | None = None

    def _schedule_shutdown(self, received: signal.Signals) -> None:
        if self._watchdog is None:
            self._watchdog = threading.Timer(self._shutdown_timeout_s, self._exit_now, (received,))
            self._watchdog.daemon = True
            self._watchdog.start()
        super()._schedule_shutdown(received)

    def _exit_now(self, received: signal.Signals) -> None:
        log.error(
            "the worker did not stop within JW_SHUTDOWN_TIMEOUT_S after the signal; exiting "
            "now (what it had not committed is read again by the next owner)",
            extra={"signal": received.name, "shutdown_timeout_s": self._shutdown_timeout_s},
        )
        logging.shutdown()
        os._exit(1)
