"""The journey agent's error policy (streams/journeys.py) without a broker: a ``JourneyRole``
on a fake app, table and producer, fed batches through ``_process`` as Faust would."""

from __future__ import annotations

import asyncio
import gc
import itertools
import weakref
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from pipeline import deadletter as dl
from pipeline.settings import Settings
from streams.app import Readiness
from streams.journeys import JourneyRole
from tests.unit.journeys import CATALOG, T0, D

PARTITIONS = 1
_offsets = itertools.count()


class FakeMessage:
    def __init__(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        self.topic, self.value, self.key = topic, value, key
        self.headers: list[tuple[str, bytes]] | None = None  # (aiokafka: a list, or None)
        self.partition = 0
        self.offset = next(_offsets)
        self.generation_id = 1
        self.tp = (topic, 0)
        self.acked = False  # (set by streams/faust_internals.acknowledge)
        self.refcount = 0


class FakeTable(dict[bytes, bytes]):
    data = None


class FakeConsumer:
    def __init__(self, role: JourneyRole) -> None:
        self.role = role
        # what streams/faust_internals.acknowledge reads (no offsets kept: acks not enabled)
        self.app = SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda topic: False))
        self._committed_offset: dict[Any, int] = {}
        self._acked_index: dict[Any, set[int]] = {}
        self._acked: dict[Any, list[int]] = {}
        self._unacked_messages: set[FakeMessage] = set()
        self._waiting_for_ack = None

    def assignment(self) -> set[tuple[str, int]]:
        return {(self.role.by_person, 0), (self.role.handoff, 0)}


class FakeApp:
    def __init__(self) -> None:
        self.table = FakeTable()
        self.consumer_generation_id = 1
        self.consumer: Any = None

    def Table(self, *args: Any, **kwargs: Any) -> FakeTable:
        return self.table


class FakeSender:
    def __init__(self) -> None:
        self.letters: list[tuple[bytes | None, bytes, dict[str, str]]] = []

    def add_partitioned(self, topic: str, key: Any, value: bytes, headers: Any, **_: Any) -> None:
        self.letters.append((key, value, {k: v.decode() for k, v in headers}))

    def add_keyed(self, *args: Any) -> None:
        pass

    def add(self, *args: Any) -> None:
        pass

    async def send(self) -> None:
        pass


class FakeWriter:
    def __init__(self, table: FakeTable) -> None:
        self.table = table

    async def write(self, changes: dict[int, list[tuple[bytes, bytes | None]]]) -> None:
        for records in changes.values():
            for key, value in records:
                if value is None:
                    self.table.pop(key, None)
                else:
                    self.table[key] = value


def make_role() -> tuple[JourneyRole, FakeApp, FakeSender]:
    app = FakeApp()
    settings = Settings(partitions=PARTITIONS, allowed_lateness_s=0, idle_after_s=3600)
    readiness = Readiness()
    role = JourneyRole(app, settings, readiness, CATALOG)  # type: ignore[arg-type]
    app.consumer = FakeConsumer(role)
    readiness.checks["tables_recovered"] = True
    sender = FakeSender()
    role._sender = sender  # type: ignore[assignment]
    role._state = FakeWriter(app.table)  # type: ignore[assignment]
    return role, app, sender


def event(event_id: str, at: int, customer: str, touchpoint: str = "home.view") -> dict[str, Any]:
    return {
        "event_id": event_id,
        "occurred_at": datetime.fromtimestamp(at / 1000, UTC).isoformat(),
        "channel": "web",
        "touchpoint": touchpoint,
        "action": "view",
        "customer_id": customer,
    }


def touchpoint(role: JourneyRole, event_id: str, at: int, customer: str) -> FakeMessage:
    return FakeMessage(role.by_person, orjson.dumps(event(event_id, at, customer)))


def poison_forward(role: JourneyRole, event_id: str, at: int) -> FakeMessage:
    """A forwarded touch without a touchpoint name: accepted, raises when applied."""
    touch = [event_id, at, "web", None, "view", "ok", None, [["customer_id", "poison"]]]
    body = {"kind": "forward", "person": "c:poison", "touch": touch + [None] * 9}
    return FakeMessage(role.handoff, orjson.dumps(body))


def run(role: JourneyRole, *messages: FakeMessage) -> None:
    asyncio.run(role._process(list(messages)))  # type: ignore[arg-type]


def test_a_poison_record_keeps_nothing_of_the_discarded_shard_alive() -> None:
    role, _, sender = make_role()
    run(role, touchpoint(role, "a", T0, "alice"))
    try:
        old: Any = weakref.ref(role.shards[0])
    except TypeError:  # a compiled shard has no weak references: one to what only it holds

        class Held:
            def __call__(self, applied: list[str]) -> None:
                pass

        role.shards[0].on_applied = held = Held()
        old = weakref.ref(held)
        del held
    run(role, poison_forward(role, "p-1", T0 + 1), touchpoint(role, "b", T0 + 2, "bob"))
    assert role.shards[0] is not old()
    assert [h[dl.REASON] for _, _, h in sender.letters] in (["TypeError"], ["AttributeError"])
    gc.collect()
    assert old() is None, gc.get_referrers(old())


# --- a person whose state raises on its deadline --------------------------------------------


@pytest.fixture
def poisoned_deadlines(monkeypatch: pytest.MonkeyPatch) -> None:
    """The role's engines raise on the deadline of a person whose last activity ends in 666 ms
    (a state that fails its own deadline; the same person with a later activity is healthy)."""
    import streams.journeys as journeys
    from pipeline.engine import JourneyEngine

    class PoisonedDeadlines(JourneyEngine):
        def _on_deadline(self, due: int, person_id: str, journey_id: str, out: Any) -> None:
            person = self.persons.get(person_id)
            if person is not None and person.last_activity % 1000 == 666:
                raise ZeroDivisionError(f"poisoned deadline of {person_id}")
            super()._on_deadline(due, person_id, journey_id, out)

    monkeypatch.setattr(journeys, "JourneyEngine", PoisonedDeadlines)


def kinds(sender: FakeSender) -> list[tuple[str, str]]:
    return [(h[dl.KIND], h[dl.REASON]) for _, _, h in sender.letters]


@pytest.mark.plain_engine
@pytest.mark.usefixtures("poisoned_deadlines")
def test_a_poisoned_person_back_with_a_healthy_state_is_kept_at_the_next_rebuild() -> None:
    role, app, sender = make_role()
    run(role, touchpoint(role, "x1", T0 + 666, "x"))
    run(role, touchpoint(role, "b1", T0 + 2 * D, "bob"))  # x's deadline raises: x dropped
    assert kinds(sender) == [("state", "ZeroDivisionError")]
    assert b"0|p:c:x" not in app.table
    run(role, touchpoint(role, "x2", T0 + 3 * D, "x"))  # x is back, healthy
    assert b"0|p:c:x" in app.table
    run(role, poison_forward(role, "p-1", T0 + 3 * D + 1))  # any other failure: a rebuild
    assert b"0|p:c:x" in app.table, "x's new state was deleted"
    assert "c:x" in role.shards[0].engine.persons
    assert [kind for kind, _ in kinds(sender)] == ["state", "touchpoint"]


def test_a_new_corrupt_value_under_a_key_dead_lettered_before_is_dead_lettered_too() -> None:
    role, app, sender = make_role()
    app.table[b"0|p:c:ghost"] = b"\xff not json"
    run(role, touchpoint(role, "a", T0, "alice"))
    assert [v for _, v, _ in sender.letters] == [b"\xff not json"]
    assert b"0|p:c:ghost" not in app.table  # deleted with the save
    app.table[b"0|p:c:ghost"] = b"\xfe corrupt again"  # (from the changelog, say)
    run(role, poison_forward(role, "p-1", T0 + 1))  # a rebuild reads the table again
    assert b"\xfe corrupt again" in [v for _, v, _ in sender.letters]


@pytest.mark.plain_engine
@pytest.mark.usefixtures("poisoned_deadlines")
def test_a_person_poisoned_within_one_batch_costs_no_valid_record() -> None:
    """x is created and its deadline raises in the same batch (never saved): the replay must
    not fail (and dead-letter) the valid touches that move the watermark past the deadline."""
    role, app, sender = make_role()
    batch = [
        touchpoint(role, "x1", T0 + 666, "x"),
        touchpoint(role, "b1", T0 + 2 * D, "bob"),
        touchpoint(role, "c1", T0 + 2 * D + 1, "carol"),
        touchpoint(role, "d1", T0 + 2 * D + 2, "dave"),
    ]
    run(role, *batch)
    assert kinds(sender) == [("state", "ZeroDivisionError")]  # x's state, not a touchpoint
    assert sender.letters[0][0] == b"0|p:c:x"
    persons = role.shards[0].engine.persons
    assert {"c:bob", "c:carol"} <= set(persons) and "c:x" not in persons
    assert all(message.acked for message in batch[:3])  # (d1: held for the watermark)
    assert b"0|p:c:x" not in app.table
    run(role, touchpoint(role, "x2", T0 + 5 * D, "x"))  # x back later: a new person, kept
    assert "c:x" in role.shards[0].engine.persons


def test_a_memory_error_is_the_workers_failure_not_the_records() -> None:
    role, _, sender = make_role()
    run(role, touchpoint(role, "a", T0, "alice"))

    class OutOfMemory:
        engine = role.shards[0].engine

        def touch(self, *args: Any) -> None:
            raise MemoryError

    role.shards[0] = OutOfMemory()  # type: ignore[assignment]
    message = touchpoint(role, "b", T0 + 1, "bob")
    with pytest.raises(MemoryError):
        run(role, message)
    assert sender.letters == [] and not message.acked  # read again after the restart


def test_a_systematic_failure_costs_a_bounded_number_of_rebuilds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every other record raising: after MAX_FAILURES of them the partition's remaining input
    of the batch goes to the dead letters unapplied (TooManyFailures), instead of one rebuild
    (the partition's state read again) per failure; the worker keeps going."""
    from streams.journeys import MAX_FAILURES

    role, _, sender = make_role()
    run(role, touchpoint(role, "a", T0, "alice"))
    loads = 0
    load = role._load

    def counted(partition: int) -> Any:
        nonlocal loads
        loads += 1
        return load(partition)

    monkeypatch.setattr(role, "_load", counted)
    batch = []
    for i in range(3 * MAX_FAILURES):
        batch.append(poison_forward(role, f"p-{i}", T0 + 10 * i + 1))
        batch.append(touchpoint(role, f"v-{i}", T0 + 10 * i + 2, f"c{i}"))
    run(role, *batch)
    assert loads <= MAX_FAILURES + 2, loads
    reasons = [h[dl.REASON] for _, _, h in sender.letters]
    assert reasons.count("TooManyFailures") > MAX_FAILURES, reasons
    assert all(message.acked for message in batch)
    assert any(
        "docs/runbooks/journey-records-failing.md" in h[dl.DETAIL] for *_, h in sender.letters
    )
    run(role, touchpoint(role, "later", T0 + 100 * MAX_FAILURES, "zed"))  # the next batch: as usual
    assert "c:zed" in role.shards[0].engine.persons


def control(role: JourneyRole, headers: list[tuple[str, bytes]], body: bytes) -> FakeMessage:
    message = FakeMessage(role.by_person, body)
    message.headers = headers
    return message


def test_a_backfills_end_moves_the_watermark_and_a_bad_control_record_is_dead_lettered() -> None:
    """``journeywatch import --end-of-backfill``'s control record: applied and acknowledged
    (bob's journey, held by nothing but its time-out, drops off); one this worker cannot read
    goes to journeys.dlq like any bad record, and the rest flows on."""
    role, _, sender = make_role()
    first = touchpoint(role, "b1", T0, "bob")
    run(role, first)
    bad = control(role, [("jw-control", b"rewind")], orjson.dumps({"advance_to": T0}))
    end = control(role, [("jw-control", b"advance")], orjson.dumps({"advance_to": T0 + 30 * D}))
    run(role, bad, end)
    assert kinds(sender) == [("touchpoint", "ValueError")]
    assert bad.acked and end.acked and first.acked
    assert role.shards[0].engine.watermark == T0 + 30 * D
    bob = role.shards[0].engine.persons.get("c:bob")
    assert bob is None or not bob.journeys  # dropped off a day in, forgotten after 7 more
