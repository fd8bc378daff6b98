"""The journey agent: the journey engine on Kafka, one ``JourneyShard`` per partition.

Input: ``touchpoints.by_person`` (keyed by each event's strongest identifier) and the co-partitioned
``journeys.handoff`` topic that carries identities from partition to partition
(pipeline/shard.py). Output: ``journey.events`` and ``experience.moments``, every record with a
deterministic ``output_id``.

Delivery is at-least-once without holding anything only in memory: the agent acknowledges an
input record only once its effects are safe: the outputs it caused are acknowledged by the
broker, then the person records it changed are written to the ``journey_state`` table (RocksDB,
with its changelog topic), with the hand-off messages it decided (the outbox), and only then are
those messages sent and acknowledged. Touchpoints held for the watermark
stay unacknowledged, so Faust commits only up to the oldest of them and a restarted worker reads
them again; the engine recognises what it has already applied by event id.

A timer (``sweep_interval_s``) drives each partition's watermark with the wall clock when it is
idle, so drop-offs fire on time without traffic, sends each partition's frontier to the others
(watermark alignment, pipeline/shard.py: after that step's hand-off messages, each shard told
the offsets its messages were written at) and refreshes the operational gauges. A partition's
frontier also leaves with each batch of its input (``_tell_now``): at the sweep's pace alone,
alignment held every touchpoint back by a sweep interval or more.

The error policy: a record whose application raises (a touchpoint, a hand-off message, a saved
state record) does not stop the worker. It goes to ``journeys.dlq`` with the reason, a short
stack and its position (pipeline/deadletter.py), is counted (``jw_journey_errors_total{kind}``)
and skipped. The partition's engine is never left half-applied: on a failure its shard is
dropped, rebuilt from the saved state records, and every input record of the partition not yet
acknowledged (held for the watermark, parked, or of this batch) is applied again, one at a time,
without the failing one (``_rebuild``); the cost is paid only on failure. Broker and RocksDB
errors are not records' failures: they still stop the batch as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter as Tally
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import faust
import orjson
from faust.types import TP, Message

from pipeline.codec import message_kind
from pipeline.contract import Channel
from pipeline.deadletter import Failure, failure_headers, failure_of
from pipeline.definitions import JourneyCatalog, load_catalog
from pipeline.engine import JourneyEngine, Output
from pipeline.segment_rules import OTHER, SegmentRules
from pipeline.settings import Settings
from pipeline.shard import JourneyShard, Step
from pipeline.touch import Touch
from sinks.metrics import (
    ACTIVE_JOURNEYS,
    CONSUMER_LAG,
    DROPOFF_DELAY,
    DROPOFF_HOLD,
    HANDOFF_MESSAGES,
    JOURNEY_ERRORS,
    JOURNEY_INPUT_OFFSET,
    JOURNEY_INPUTS_DONE,
    JOURNEY_STAGE_ENTERED,
    JOURNEYS_CONVERTED,
    JOURNEYS_DROPOFFS_RETRACTED,
    JOURNEYS_DROPPED_OFF,
    JOURNEYS_RETIRED,
    JOURNEYS_STARTED,
    KPI_OUTPUT_TYPES,
    LATE_EVENTS,
    MOMENTS_OF_TRUTH,
    NEGATIVE_MOMENTS,
    OUTPUT_LATENCY,
    SEGMENT_CONVERTED,
    SEGMENT_DROPOFFS_RETRACTED,
    SEGMENT_DROPPED_OFF,
    SEGMENT_STAGE_ENTERED,
    SWEEP_SECONDS,
    TOUCHES_TAKEN,
    WATERMARK_ALIGNMENT_LAG,
    ExperienceKpis,
    LabelCache,
    observe_many,
)
from streams.app import Readiness
from streams.batching import BatchSender, TableWriter
from streams.faust_internals import (
    acknowledge,
    committed_offset,
    deliver_in_batches,
    faust_producer,
    open_store_partition,
    partition_context,
)
from streams.process import LongLivedHeap
from streams.topics import (
    BY_PERSON,
    CONTROL_HEADER,
    EXPERIENCE_MOMENTS,
    HANDOFF,
    JOURNEY_EVENTS,
    JOURNEY_STATE_TABLE,
    JOURNEYS_DLQ,
    changelog_topic,
    kafka_partition,
)

log = logging.getLogger(__name__)

JOURNEY_OUTPUT_TYPES = frozenset({"journey", "identity"})
GAUGE_EVERY_S = 10.0
ERROR_KINDS = ("touchpoint", "handoff", "state")
# Records of one partition that may fail in one batch (or sweep) before the error policy stops
# searching: each costs a rebuild pass (the partition's saved state read again, its
# unacknowledged input replayed). Past it the failures are taken as systematic (a bug, an
# incompatible producer): the partition's input from the failing record on, and the rest of
# its batch, go to the dead letters unapplied (reason ``TooManyFailures``), so the work stays
# bounded and the worker keeps going (docs/runbooks/journey-records-failing.md).
MAX_FAILURES = 16
RUNBOOK = "docs/runbooks/journey-records-failing.md"
Position = tuple[str, int]  # (topic, offset) of an input record within its partition


def advance_of(message: Message) -> int | None:
    """The event time a control record of ``touchpoints.by_person`` announces (header
    ``jw-control: advance``, ``journeywatch import --end-of-backfill``); None for a touchpoint
    or another control record. Raises ValueError for a control record it cannot read."""
    control = control_of(message)
    return control if isinstance(control, int) else None


def control_of(message: Message) -> int | tuple[str, ...] | None:
    """What a control record of ``touchpoints.by_person`` (header ``jw-control``) says: the
    event time an ``advance`` announces (``journeywatch import --end-of-backfill``), or the
    identifier keys an ``erase`` names (``journeywatch erase``, streams/erasure.py); None for
    a touchpoint. Raises ValueError for a control record it cannot read (dead-lettered)."""
    headers = message.headers
    if not headers:
        return None
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    control = next((value for name, value in pairs if name == CONTROL_HEADER), None)
    if control is None:
        return None
    body = orjson.loads(message.value) if isinstance(message.value, bytes) else None
    if control == b"erase":
        keys = body.get("erase") if isinstance(body, dict) else None
        if not isinstance(keys, list) or not all(isinstance(k, str) and ":" in k for k in keys):
            raise ValueError("an erase control record without a list of identifier keys")
        return tuple(keys)
    if control != b"advance":
        raise ValueError(f"unknown control record {control!r} (a newer journeywatch's?)")
    at = body.get("advance_to") if isinstance(body, dict) else None
    if not isinstance(at, int) or isinstance(at, bool):
        raise ValueError("an advance control record without an integer advance_to")
    return at


def touch_of(raw: bytes, segments: SegmentRules | None = None) -> Touch:
    """A validated event from ``touchpoints.by_person`` as the engine's ``Touch`` (with its
    segment under ``segments``, the journeys file's)."""
    return Touch.from_canonical(orjson.loads(raw), segments)


class JourneyRole:
    """The journey agent, its state table, its sweep timer and its metrics."""

    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        readiness: Readiness,
        catalog: JourneyCatalog | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.readiness = readiness
        self.catalog = catalog or load_catalog(settings.journeys_file)
        # read once: a pydantic private attribute costs a __getattr__ call per touchpoint
        self._segment_rules = self.catalog.segment_rules
        self.partitions = settings.partitions
        self.shards: dict[int, JourneyShard] = {}
        self.lock = asyncio.Lock()
        self._last_gauges = 0.0
        self._late_seen = 0
        self._taken_seen = 0
        self.by_person = settings.topic(BY_PERSON)
        self.handoff = settings.topic(HANDOFF)
        self.journey_events = settings.topic(JOURNEY_EVENTS)
        self.moments = settings.topic(EXPERIENCE_MOMENTS)
        self.table = app.Table(
            JOURNEY_STATE_TABLE,
            key_type=bytes,
            value_type=bytes,
            partitions=settings.partitions,
        )
        readiness.checks["tables_recovered"] = False
        self._metrics = _Metrics(self.catalog)
        self._heap = LongLivedHeap(settings.gc_thaw_interval_s)  # (streams/process.py)
        self._inputs_done = {  # both series exist from the start, at 0
            topic: JOURNEY_INPUTS_DONE.labels(topic) for topic in (self.by_person, self.handoff)
        }
        self._sender = BatchSender(faust_producer(app), settings.partitions)
        self._state = TableWriter(self.table, self._sender, self.by_person)
        # the error policy (module documentation)
        self.dead_letters = settings.topic(JOURNEYS_DLQ)
        self.changelog = changelog_topic(settings.topic("journeywatch"), JOURNEY_STATE_TABLE)
        self._errors = {kind: JOURNEY_ERRORS.labels(kind) for kind in ERROR_KINDS}
        # per partition: input records given to its shard and not yet acknowledged, in order
        self._unacked: defaultdict[int, dict[Position, Message]] = defaultdict(dict)
        # (failures are kept as ``Failure``s, never as exceptions: an exception's traceback
        # keeps its frames alive, and with them the discarded shard and the batch)
        self._refused: defaultdict[int, dict[str, Failure]] = defaultdict(dict)  # event id →
        # state records dead-lettered (key → hash of the value) and persons whose deadline
        # raised (``p:<person>`` →): left out when loading, their deadlines not fired in a
        # replay; both only until their key is written again (``_written``), so a new value
        # under the key (the person back with a healthy state) is loaded, or dead-lettered, anew
        self._lettered: defaultdict[int, dict[str, int]] = defaultdict(dict)
        self._poisoned: defaultdict[int, dict[str, Failure]] = defaultdict(dict)
        self._carry: dict[int, Step] = {}  # what a rebuild's replay did, delivered with the batch
        # input records to acknowledge once their dead letters are out, with the batch
        self._dead: defaultdict[int, list[Message]] = defaultdict(list)
        self._failures: Tally[int] = Tally()  # per partition, in this batch (MAX_FAILURES)
        # partitions whose shard was (re)loaded and not drained since: its first step sends
        # again what its outbox held, which only then counts in its frontier (``_tell``)
        self._fresh: set[int] = set()

    # --- wiring ---------------------------------------------------------------------------------
    def register(self) -> None:
        # Whole fetches straight to the agent (streams/faust_internals.py): Faust's per-message
        # stream path costs more per record than the engine does.
        deliver_in_batches(self.app, (self.by_person, self.handoff), self._on_fetch)
        self.app.timer(self.settings.sweep_interval_s)(self._sweep)

        @self.app.on_partitions_revoked.connect
        async def _revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
            # Partitions may move: rebuild every shard from the recovered table afterwards.
            # (Waits for the batch in progress; what it leaves unacknowledged is read again.)
            async with self.lock:
                self.readiness.checks["tables_recovered"] = False
                self.shards.clear()
                self._heap.thaw_soon()  # (the shards let go of are collected with the next batch)
                # what is not acknowledged is read again by the partition's next owner
                for held in (
                    self._unacked,
                    self._refused,
                    self._lettered,
                    self._poisoned,
                    self._carry,
                    self._dead,
                    self._failures,
                    self._fresh,
                ):
                    held.clear()

        @self.app.on_rebalance_complete.connect
        async def _recovered(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
            self.readiness.checks["tables_recovered"] = True

    # --- the hot path ---------------------------------------------------------------------------
    async def _on_fetch(self, messages: list[Message]) -> None:
        size = self.settings.journey_batch_size
        for start in range(0, len(messages), size):
            async with self.lock:
                await self._process(messages[start : start + size])
            self._heap.settle()

    async def _process(self, messages: list[Message]) -> None:
        # Messages the shard holds (for the watermark, behind a hand-off) stay unacknowledged
        # until the shard says they are done (``_complete``); a message never acknowledged is
        # read again after a restart or a rebalance.
        if not self.readiness.checks.get("tables_recovered"):
            # Fetched before a rebalance: not acknowledged, so read again from the committed
            # offset by whoever owns the partition once its table has recovered.
            log.warning(
                "journey batch arrived during a rebalance; left for re-delivery",
                extra={"records": len(messages)},
            )
            return
        touched: set[int] = set()
        positions: dict[tuple[str, int], int] = {}
        assigned = self.app.consumer.assignment()
        generation = self.app.consumer_generation_id
        by_person = self.by_person
        for message in messages:
            if message.tp not in assigned or message.generation_id != generation:
                # fetched before the partition moved to another worker, which reads it again
                # from the committed offset: applying it here would write a stale shard's
                # records into the partition's changelog
                continue
            partition = message.partition
            positions[(message.topic, partition)] = message.offset + 1
            shard = self._shard(partition)
            touched.add(partition)
            raw = message.value if isinstance(message.value, bytes) else b""
            if message.topic == by_person and message.headers:
                try:
                    control = control_of(message)
                except Exception as exc:  # bad input is data (the error policy)
                    self._dead_letter(message, "touchpoint", failure_of(exc))
                    self._dead[partition].append(message)
                    continue
                if isinstance(control, int):  # the end of a backfill (streams/importer.py)
                    self._unacked[partition][(message.topic, message.offset)] = message
                    shard.reach(control, message)
                    continue
                if control is not None:  # an erasure (streams/erasure.py)
                    self._unacked[partition][(message.topic, message.offset)] = message
                    self._erase(partition, shard, control, message)
                    continue
            if message.topic == by_person:
                try:
                    touch = touch_of(raw, self._segment_rules)
                except MemoryError:  # the worker's, not a record's: stops the batch
                    raise
                except Exception as exc:  # bad input is data (the error policy)
                    # nothing applied: no rebuild; acknowledged once its dead letter is out
                    self._dead_letter(message, "touchpoint", failure_of(exc))
                    self._dead[partition].append(message)
                    continue
            if self._failures[partition] > MAX_FAILURES:  # systematic: not searched
                kind = "touchpoint" if message.topic == by_person else "handoff"
                self._dead_letter(message, kind, _too_many(partition))
                self._dead[partition].append(message)
                continue
            self._unacked[partition][(message.topic, message.offset)] = message
            try:
                if message.topic == by_person:
                    shard.touch(touch, message, message.offset)
                else:
                    shard.message(raw, message, message.offset)
            except MemoryError:  # the worker's, not a record's: stops the batch
                raise
            except Exception as exc:  # a record's failure is data: the error policy
                self._rebuild(partition, exc)
        wall = int(time.time() * 1000)
        for partition in touched:
            self._tell_now(partition, wall)
        await self._complete({partition: self._drain(partition) for partition in touched})
        for (topic, partition), offset in positions.items():
            JOURNEY_INPUT_OFFSET.labels(topic, str(partition)).set(offset)

    def _tell_now(self, partition: int, wall: int) -> None:
        """What a sweep does for the partition, with this batch rather than at the next sweep:
        its frontier goes out with the batch's hand-off messages (after them). Watermark
        alignment holds each partition's watermark at its peers' last frontiers, so frontiers
        sent only at sweeps held every touchpoint back by up to a sweep interval per hop of
        the frontier and of the report that a hand-off message was absorbed (docs/streaming-
        topology.md, "Time"). Ticking is what a sweep may do between any two batches; here it
        comes before the batch's drain, when hops within the partition and hand-off messages
        not yet produced count in the frontier as held and outstanding (so it is no higher
        than after them). Not while the shard still waits to hear from every peer (its
        frontiers ask for answers: at the sweep's pace, or the partitions' greetings would
        bounce at the pace of the batches) nor before a reloaded shard's first drain."""
        shard = self.shards.get(partition)
        if (
            shard is None
            or partition in self._fresh
            or not shard.partitions
            or len(shard.peers) < shard.partitions - 1
        ):
            return
        self._tick(partition, shard, wall)

    def _tick(self, partition: int, shard: JourneyShard, wall: int) -> None:
        """``shard.tick(wall)`` under the error policy (a sweep's and a batch's alike)."""
        try:
            shard.tick(wall)
        except MemoryError:  # the worker's, not a record's: stops the batch
            raise
        except Exception as exc:  # a record's failure is data: the error policy
            self._rebuild(partition, exc)

    # --- the error policy -----------------------------------------------------------------------
    def _feed(self, shard: JourneyShard, message: Message) -> None:
        raw = message.value if isinstance(message.value, bytes) else b""
        if message.topic == self.by_person:
            control = control_of(message)
            if isinstance(control, int):
                shard.reach(control, message)
            elif control is not None:
                shard.erase(control, message)  # (idempotent: replayed by a rebuild)
            else:
                shard.touch(touch_of(raw, self._segment_rules), message, message.offset)
        else:
            shard.message(raw, message, message.offset)

    def _erase(
        self, partition: int, shard: JourneyShard, keys: tuple[str, ...], message: Message
    ) -> None:
        """Forget the persons and identifier records ``keys`` name (``JourneyShard.erase``);
        logged with counts only (no identifier in the log)."""
        forgotten = shard.erase(keys, message)
        log.info(
            "erasure applied",
            extra={"partition": partition, "identifiers": len(keys), "persons": forgotten},
        )

    def _drain(self, partition: int) -> Step:
        """The partition's step, with what a rebuild did and the touches refused since."""
        try:
            step = self.shards[partition].drain()
        except MemoryError:  # the worker's, not a record's: stops the batch
            raise
        except Exception as exc:  # a record's failure is data: the error policy
            self._rebuild(partition, exc)
            step = self.shards[partition].drain()
        self._report_refusals(partition, self.shards[partition])
        carried = self._carry.pop(partition, None)
        if carried is not None:
            step = _merge(carried, step)
        dead = self._dead.pop(partition, None)
        if dead:
            step.done.extend(dead)
        self._fresh.discard(partition)
        return step

    def _rebuild(self, partition: int, error: Exception) -> None:
        """Replace a partition's shard that raised by one rebuilt from the saved state records,
        with every input record not yet acknowledged applied again, one at a time, each
        followed by a drain, without the records that raise: a touch whose application raised
        (the engine names it, wherever it came from) is refused from then on; any other
        failure leaves out the input record being applied. A failure is deterministic, so each
        pass finds one more; a pass without one ends it. Past ``MAX_FAILURES`` failures of the
        partition in this batch, the input being applied and every one after it are left out
        unapplied (``TooManyFailures``) and the next pass ends it."""
        failed = self.shards.pop(partition)
        self._heap.thaw_soon()
        refused = self._refused[partition]
        poisoned = self._poisoned[partition]
        failure = failure_of(error)
        self._failures[partition] += 1
        applying, firing = failed.engine.applying, failed.engine.firing
        del failed  # (nothing of the discarded shard is kept: see ``Failure``)
        if applying is not None:
            refused[applying] = failure
        elif firing is not None:  # a person's state fails its own deadline
            poisoned["p:" + firing] = failure
        log.error(
            "a journey record failed; rebuilding the partition without it",
            extra={"partition": partition, "error": f"{failure.reason}: {failure.detail}"},
        )
        left_out: dict[Position, tuple[Message, Failure]] = {}
        for _ in range(MAX_FAILURES + 2):
            shard = self._load(partition)
            # a poisoned person the replay builds again (its state never saved, or changed
            # since) must not fail the input that moves the watermark past its deadline
            shard.engine.quarantined = {key[2:] for key in poisoned}
            steps: list[Step] = []
            for position, message in list(self._unacked[partition].items()):
                if position in left_out:
                    continue
                try:
                    self._feed(shard, message)
                    steps.append(shard.drain())
                except MemoryError:  # the worker's, not a record's: stops the batch
                    raise
                except Exception as exc:  # the error policy
                    self._failures[partition] += 1
                    applying, firing = shard.engine.applying, shard.engine.firing
                    if self._failures[partition] > MAX_FAILURES:
                        # systematic: this input and every one after it are left out unapplied
                        unacked = list(self._unacked[partition].items())
                        at = next(i for i, (p, _) in enumerate(unacked) if p == position)
                        named = applying is not None or firing is not None  # (not this input)
                        own = _too_many(partition) if named else failure_of(exc)
                        left_out[position] = (message, own)
                        for later, held in unacked[at + 1 :]:
                            left_out.setdefault(later, (held, _too_many(partition)))
                    elif applying is not None and applying not in refused:
                        refused[applying] = failure_of(exc)
                    elif firing is not None and "p:" + firing not in poisoned:
                        poisoned["p:" + firing] = failure_of(exc)
                    else:
                        left_out[position] = (message, failure_of(exc))
                    break
            else:
                break
        else:  # (a failure that is not deterministic: the worker stops, nothing acknowledged)
            raise RuntimeError(
                f"journey partition {partition}: still failing after {MAX_FAILURES + 2} rebuild "
                f"passes (records failing at random?): see {RUNBOOK}"
            ) from error
        shard.engine.quarantined = set()  # (a person back after its drop is a new one)
        self.shards[partition] = shard
        step = Step([], [], {}, [], [])
        for done in steps:
            step = _merge(step, done)
        for key, failure in poisoned.items():
            value = step.records.get(key)
            if value is not None:  # built again by the replay: dead-lettered and dropped
                self._letter_state(partition, key, value, failure)
                shard.discard(key)  # (deleted from the table with the next save)
        for position, (message, problem) in left_out.items():
            del self._unacked[partition][position]
            kind = "touchpoint" if message.topic == self.by_person else "handoff"
            self._dead_letter(message, kind, problem)
            self._dead[partition].append(message)
        # (replaces an earlier rebuild's in this batch: this replay did all that one did again)
        self._carry[partition] = step

    def _report_refusals(self, partition: int, shard: JourneyShard) -> None:
        """Dead letters for the touches the shard refused: the input record that carried the
        touch when there is one waiting for it, else the touch itself."""
        if not shard.refusals:
            return
        refused = self._refused[partition]
        for touch, tokens in shard.refusals:
            error = refused.get(touch.event_id) or Failure("Refused", "", "")
            carriers = sorted(tokens, key=lambda m: m.topic != self.by_person)
            if carriers:
                self._dead_letter(carriers[0], "touchpoint", error)
            else:
                value = orjson.dumps(list(touch))
                self._send_dead_letter(
                    "touchpoint", error, self.handoff, partition, -1, None, value
                )
        shard.refusals.clear()

    def _dead_letter(self, message: Message, kind: str, error: Failure) -> None:
        value = message.value if isinstance(message.value, bytes) else b""
        key = message.key if isinstance(message.key, bytes) else None
        self._send_dead_letter(
            kind, error, message.topic, message.partition, message.offset, key, value
        )

    def _send_dead_letter(
        self,
        kind: str,
        error: Failure,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes,
    ) -> None:
        headers = failure_headers(kind, error, topic, partition, offset, datetime.now(UTC))
        self._sender.add_partitioned(
            self.dead_letters,
            key,
            value,
            [(name, text.encode()) for name, text in headers.items()],
            fallback=partition,
        )
        self._errors[kind].inc()
        log.error(
            "journey record sent to the dead-letter topic",
            extra={
                "kind": kind,
                "topic": topic,
                "partition": partition,
                "offset": offset,
                "error": f"{error.reason}: {error.detail}",
            },
        )

    def _letter_state(self, partition: int, key: str, value: bytes, error: Failure) -> None:
        """A state record left out goes to the dead letters once (a rebuild before its deletion
        is saved meets it again), a new value under the same key again."""
        lettered = self._lettered[partition]
        if lettered.get(key) != hash(value):
            lettered[key] = hash(value)
            key_bytes = f"{partition}|{key}".encode()
            self._send_dead_letter("state", error, self.changelog, partition, -1, key_bytes, value)

    def _written(self, partition: int, keys: Iterable[str]) -> None:
        """The table holds new values (or none) under ``keys``: what was left out under them
        is forgotten."""
        lettered, poisoned = self._lettered.get(partition), self._poisoned.get(partition)
        for key in keys:
            if lettered:
                lettered.pop(key, None)
            if poisoned:
                poisoned.pop(key, None)

    def _shard(self, partition: int) -> JourneyShard:
        shard = self.shards.get(partition)
        if shard is None:
            shard = self.shards[partition] = self._load(partition)
        return shard

    def _load(self, partition: int) -> JourneyShard:
        self._fresh.add(partition)
        engine = JourneyEngine(
            self.catalog,
            allowed_lateness_ms=int(self.settings.allowed_lateness_s * 1000),
            idle_after_ms=int(self.settings.idle_after_s * 1000),
            state_write_version=self.settings.state_write_version,
            channel_lateness_ms={
                channel.value: int(seconds * 1000)
                for channel, seconds in self.settings.channel_lateness_s.items()
            },
        )
        for journey, hold in engine.holds.items():
            DROPOFF_HOLD.labels(journey).set(hold / 1000)
        partitions = self.partitions
        # Writing the released format (the first restart of an upgrade): as the release,
        # without watermark alignment, whose frontier messages released workers cannot read
        # (docs/operations/upgrades.md).
        aligned = partitions if self.settings.state_write_version > 1 else 0
        # The outbox (a hand-off message saved with its decision before it leaves) is a record
        # released workers cannot read: written once every worker is this version.
        shard = JourneyShard(
            engine,
            partition,
            lambda key: kafka_partition(key, partitions),
            aligned,
            outbox=self.settings.state_write_version > 1,
        )
        shard.refused = set(self._refused[partition])
        # hand-off input before the committed offset was absorbed by an earlier owner (watermark
        # alignment: reported processed, so its senders stop waiting for it)
        shard.resume(committed_offset(self.app.consumer, TP(self.handoff, partition)) or 0)
        prefix = f"{partition}|".encode()
        started = time.perf_counter()
        open_store_partition(self.table.data, partition)
        with partition_context(self.by_person, partition):
            records = [
                (key[len(prefix) :].decode(), value)
                for key, value in self.table.items()
                if key.startswith(prefix)
            ]
        letters: list[tuple[str, bytes, Failure]] = []
        poisoned = self._poisoned.get(partition)
        if poisoned:
            kept = []
            for key, value in records:
                if key in poisoned:
                    letters.append((key, value, poisoned[key]))
                else:
                    kept.append((key, value))
            records = kept
        failed: list[tuple[str, bytes, Exception]] = []
        shard.load(records, failed)
        letters += [(key, value, failure_of(error)) for key, value, error in failed]
        del failed
        for key in poisoned or ():
            shard.discard(key)  # (deleted from the table with the next save)
        self._tell_committed(partition, shard)
        for key, value, error in letters:
            self._letter_state(partition, key, value, error)
        changes = engine.state_names.changes
        if changes:  # the journeys file was edited since this state was saved
            log.warning(
                "journey definitions changed since this partition's state was saved: in-flight "
                "journeys follow the rules of docs/journey-engine.md (editing journeys)",
                extra={"partition": partition, "journeys": dict(sorted(changes.items()))},
            )
            changes.clear()
        log.info(
            "journey partition loaded",
            extra={
                "partition": partition,
                "records": len(records),
                "seconds": round(time.perf_counter() - started, 3),
            },
        )
        return shard

    async def _complete(self, steps: dict[int, Step]) -> None:
        """Deliver outputs, save records, deliver hand-offs, then acknowledge (in that order),
        each one round of record batches for all partitions. A hand-off message leaves only
        once the state that decided it is saved (its outbox record among them): a crash cannot
        lose a decision that has already acted. (A shard without the outbox, while released
        workers share the partitions, sends with the outputs, before the save, as they do.)"""
        sender = self._sender
        now = time.time()
        journey_events, moments, observe = self.journey_events, self.moments, self._metrics.observe
        for step in steps.values():
            for output in step.outputs:
                topic = journey_events if output.type in JOURNEY_OUTPUT_TYPES else moments
                key = output.journey_id or output.person_id
                sender.add_keyed(topic, key, orjson.dumps(output.as_dict()))
                observe(output, now)
        self._metrics.flush()
        self._count_late()
        early = {p: step for p, step in steps.items() if not step.saved_first}
        await self._deliver(early)  # (the outputs with them; only the outputs when none)
        await self._state.write(
            {
                partition: [
                    ((f"{partition}|{key}").encode(), record)
                    for key, record in step.records.items()
                ]
                for partition, step in steps.items()
                if step.records
            }
        )
        for partition, step in steps.items():
            self._written(partition, step.records)
            self._failures.pop(partition, None)
        late = {p: step for p, step in steps.items() if step.saved_first}
        if late:
            await self._deliver(late)
        done: Tally[str] = Tally()
        unacked = self._unacked
        tokens: list[Message] = []
        for step in steps.values():
            for token in step.done:
                if token is not None:
                    tokens.append(token)
                    done[token.topic] += 1
                    unacked[token.partition].pop((token.topic, token.offset), None)
        acknowledge(self.app.consumer, tokens)
        for topic, count in done.items():
            self._inputs_done[topic].inc(count)

    async def _deliver(self, steps: dict[int, Step]) -> None:
        """Send the steps' hand-off messages, then their frontiers (with whatever else is added
        to the sender), and tell each shard the offsets its messages were written at."""
        sender = self._sender
        handoffs: Tally[str] = Tally()
        written: Tally[int] = Tally()  # hand-off records added per partition of the topic
        placed: dict[int, list[tuple[int, int]]] = {}  # per step: (partition, index) per send
        for partition, step in steps.items():
            places = placed[partition] = []
            for route, message in step.sends:
                handoffs[message_kind(message)] += 1  # (pipeline/codec.py)
                target = kafka_partition(route, self.partitions)
                sender.add(self.handoff, target, route.encode(), message)
                places.append((target, written[target]))
                written[target] += 1
            # frontiers after the sends: a partition reads what we sent before what we say later
            for target, message in step.notices:
                handoffs["frontier"] += 1
                sender.add(self.handoff, target, None, message)
                written[target] += 1
        for kind, count in handoffs.items():
            HANDOFF_MESSAGES.labels(kind).inc(count)
        last = await sender.send()
        # each hand-off message's offset (a partition's records keep the order they were added
        # in, and its last one is at ``last``): the shards wait for their destinations to
        # report them absorbed (watermark alignment)
        for partition, places in placed.items():
            shard = self.shards.get(partition)
            if shard is not None and places:
                shard.produced(
                    [
                        last[TP(self.handoff, target)] - (written[target] - 1 - index)
                        for target, index in places
                    ]
                )

    # --- the sweep ------------------------------------------------------------------------------
    async def _sweep(self) -> None:
        started = time.perf_counter()
        async with self.lock:
            wall = int(time.time() * 1000)
            steps: dict[int, Step] = {}
            for partition in self._assigned():
                shard = self._shard(partition)
                self._tell_committed(partition, shard)
                self._tick(partition, shard, wall)
                steps[partition] = self._drain(partition)
            await self._complete(steps)
        SWEEP_SECONDS.observe(time.perf_counter() - started)
        self._heap.settle()
        if time.monotonic() - self._last_gauges >= GAUGE_EVERY_S:
            self._last_gauges = time.monotonic()
            self._refresh_gauges()

    def _tell_committed(self, partition: int, shard: JourneyShard) -> None:
        """The consumer's committed offsets of the partition's two inputs: the shard forgets
        the input it finished before them (never read again)."""
        consumer = self.app.consumer
        shard.committed(
            committed_offset(consumer, TP(self.by_person, partition)) or 0,
            committed_offset(consumer, TP(self.handoff, partition)) or 0,
        )

    def _assigned(self) -> list[int]:
        if not self.readiness.checks.get("tables_recovered"):
            return []
        assigned = self.app.assignor.assigned_actives()
        return sorted({tp.partition for tp in assigned if tp.topic == self.by_person})

    def _count_late(self) -> None:
        """jw_late_events_total, brought up to date with every step (before its input is
        acknowledged: a reader that sees the input processed sees its late touchpoints)."""
        late = sum(shard.engine.counters.late_events for shard in self.shards.values())
        if late > self._late_seen:
            LATE_EVENTS.inc(late - self._late_seen)
        self._late_seen = late
        taken = sum(shard.taken for shard in self.shards.values())
        if taken > self._taken_seen:
            TOUCHES_TAKEN.inc(taken - self._taken_seen)
        self._taken_seen = taken

    def _refresh_gauges(self) -> None:
        self._refresh_shard_gauges()
        consumer = self.app.consumer
        changelogs = self.app.tables.changelog_topics  # read on recovery, never committed
        for tp in consumer.assignment():
            if tp.topic in changelogs:
                continue
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            done = committed_offset(consumer, tp) or 0
            CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(0, highwater - done))

    def _refresh_shard_gauges(self) -> None:
        """The gauges the shards give: alignment lag per partition, active journeys per journey
        and stage (the engines keep those counts as journeys change)."""
        active: Tally[tuple[str, str]] = Tally()
        for partition, shard in self.shards.items():
            engine = shard.engine
            # how far alignment holds the watermark behind what its own input allows
            behind = (
                max(0, engine.candidate - engine.watermark) if engine.watermark > -(2**62) else 0
            )
            WATERMARK_ALIGNMENT_LAG.labels(str(partition)).set(behind / 1000)
            # kept by the engine as journeys change: no walk over its persons
            for (index, position), count in engine.active_by_stage().items():
                definition = engine.definitions[index]
                active[(definition.name, definition.stages[position].name)] += count
        for definition in self.catalog.journeys:
            for stage in definition.stages:
                ACTIVE_JOURNEYS.labels(definition.name, stage.name).set(
                    active.get((definition.name, stage.name), 0)
                )


class _Metrics:
    """Journey metrics from outputs, with cached label children."""

    def __init__(self, catalog: JourneyCatalog) -> None:
        self.started = LabelCache(JOURNEYS_STARTED)
        self.entered = LabelCache(JOURNEY_STAGE_ENTERED)
        self.converted = LabelCache(JOURNEYS_CONVERTED)
        self.dropped = LabelCache(JOURNEYS_DROPPED_OFF)
        self.retracted = LabelCache(JOURNEYS_DROPOFFS_RETRACTED)
        self.retired = LabelCache(JOURNEYS_RETIRED)
        self.negative = LabelCache(NEGATIVE_MOMENTS)
        self.truth = LabelCache(MOMENTS_OF_TRUTH)
        self.latency = LabelCache(OUTPUT_LATENCY)
        self.kpis = ExperienceKpis(catalog)  # CSAT, NPS, FCR, complaint response, ...
        # per segment: journey x stage x segment (the file's names and "other": bounded)
        self.seg_entered = LabelCache(SEGMENT_STAGE_ENTERED)
        self.seg_converted = LabelCache(SEGMENT_CONVERTED)
        self.seg_dropped = LabelCache(SEGMENT_DROPPED_OFF)
        self.seg_retracted = LabelCache(SEGMENT_DROPOFFS_RETRACTED)
        self._segments = frozenset(catalog.segment_rules.names)
        self._counts: Tally[Any] = Tally()  # counter child → count not yet added
        # histogram (a latency child, the drop-off delay) → amounts not yet observed
        self._latencies: defaultdict[Any, list[float]] = defaultdict(list)
        # Every journey x stage x channel series exists from the start at 0: a stage whose
        # first drop-off comes during an incident must already have a rate (and a drop-off
        # ratio of 0) for the alert rules to compare with, and a restart must not make series
        # disappear (Prometheus "initialise your metrics").
        for definition in catalog.journeys:
            for channel in Channel:
                self.started.get(definition.name, channel.value)
                for stage in definition.stages:
                    for cache in (self.entered, self.converted, self.dropped, self.retracted):
                        cache.get(definition.name, stage.name, channel.value)
            for stage in definition.stages:
                for segment in catalog.segment_rules.labels():
                    for seg_cache in (
                        self.seg_entered,
                        self.seg_converted,
                        self.seg_dropped,
                        self.seg_retracted,
                    ):
                        seg_cache.get(definition.name, stage.name, segment)

    def _segment(self, o: Output) -> str:
        """The output's journey's segment label: one of the file's names, else "other" (a
        segment a newer or older journeys file named is "other" here: bounded labels)."""
        detail = o.detail
        if detail and detail[-1][0] == "segment" and detail[-1][1] in self._segments:
            return str(detail[-1][1])
        return OTHER

    def observe(self, o: Output, now: float) -> None:
        """Count ``o`` (counters are added up per batch: ``flush``) and observe its latency."""
        channel = o.channel or ""
        journey = o.journey or ""
        stage = o.stage or ""
        counts = self._counts
        if o.type == "journey":
            if o.name == "started":
                counts[self.started.get(journey, channel)] += 1
                counts[self.entered.get(journey, stage, channel)] += 1
                counts[self.seg_entered.get(journey, stage, self._segment(o))] += 1
            elif o.name == "stage_reached":
                counts[self.entered.get(journey, stage, channel)] += 1
                counts[self.seg_entered.get(journey, stage, self._segment(o))] += 1
            elif o.name == "converted":
                counts[self.converted.get(journey, stage, channel)] += 1
                counts[self.seg_converted.get(journey, stage, self._segment(o))] += 1
            elif o.name == "dropped_off":
                counts[self.dropped.get(journey, stage, channel)] += 1
                counts[self.seg_dropped.get(journey, stage, self._segment(o))] += 1
                self._latencies[DROPOFF_DELAY].append(max(0.0, now - o.at / 1000))
                return
            elif o.name == "dropoff_retracted":
                counts[self.retracted.get(journey, stage, channel)] += 1
                counts[self.seg_retracted.get(journey, stage, self._segment(o))] += 1
                return  # at is the drop-off's: not a latency
            elif o.name == "retired":
                reason = str(dict(o.detail).get("reason", ""))
                counts[self.retired.get(journey, stage, reason)] += 1
                return  # at is the journey's last activity: not a latency
        elif o.type == "negative_moment":
            counts[self.negative.get(o.name, channel, journey)] += 1
        elif o.type == "moment_of_truth":
            passed = dict(o.detail).get("passed")
            counts[self.truth.get(journey, o.name, channel, "passed" if passed else "failed")] += 1
        elif o.type in KPI_OUTPUT_TYPES:
            self.kpis.observe(o)
        if o.event_id is not None:
            self._latencies[self.latency.get(o.type)].append(max(0.0, now - o.at / 1000))

    def flush(self) -> None:
        """Add what was observed since the last flush to the metrics."""
        for child, count in self._counts.items():
            child.inc(count)
        self._counts.clear()
        for histogram, amounts in self._latencies.items():
            observe_many(histogram, amounts)
        self._latencies.clear()


def _too_many(partition: int) -> Failure:
    """Why an input record went to the dead letters unapplied (``MAX_FAILURES``)."""
    return Failure(
        "TooManyFailures",
        f"not applied: more than {MAX_FAILURES} records of journey partition {partition} "
        "failed in one batch; this one may be valid: produce it again once the cause is fixed "
        f"({RUNBOOK})",
        "",
    )


def _merge(first: Step, then: Step) -> Step:
    """Two steps of one partition as one: records saved later win."""
    return Step(
        first.outputs + then.outputs,
        first.sends + then.sends,
        first.records | then.records,
        first.done + then.done,
        first.notices + then.notices,
        first.saved_first or then.saved_first,
    )
