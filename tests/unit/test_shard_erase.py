"""Erasure in the workers' state: ``JourneyShard.erase`` (docs/operations/erasure.md).

A control record ``erase`` on every partition of ``touchpoints.by_person`` names the erased
person's identifier keys; each partition forgets the persons it holds for them and its
identifier records of them, saved as deletions (tombstones in the compacted changelog).
"""

from __future__ import annotations

import orjson
import pytest

from pipeline.codec import Forward, encode_message
from pipeline.definitions import load_catalog
from pipeline.engine import JourneyEngine
from pipeline.shard import JourneyShard
from pipeline.touch import Touch
from streams.journeys import advance_of, control_of

from .test_scenario import START
from .test_shard import Cluster, partitioner

CATALOG = load_catalog()
JANE = (("customer_id", "jane-7"), ("email_hash", "e3b0c4"), ("device_id", "dev-jane"))
OTHER = (("customer_id", "other-2"), ("device_id", "dev-other"))
JANE_KEYS = ["customer_id:jane-7", "email_hash:e3b0c4", "device_id:dev-jane"]


def _shard() -> JourneyShard:
    return JourneyShard(JourneyEngine(CATALOG, allowed_lateness_ms=0), 0, partitioner(1))


def _touch(event_id: str, at: int, identifiers: tuple[tuple[str, str], ...]) -> Touch:
    return Touch(event_id, at, "web", "product.view", "view", identifiers=identifiers)


def _saved(shard: JourneyShard, store: dict[str, bytes]) -> dict[str, bytes | None]:
    step = shard.drain()
    for key, value in step.records.items():
        if value is None:
            store.pop(key, None)
        else:
            store[key] = value
    return step.records


def _mentions(store: dict[str, bytes], words: list[str]) -> list[str]:
    return [key for key, value in store.items() for w in words if w in key or w.encode() in value]


def test_erase_deletes_the_persons_records_and_a_later_touch_starts_a_new_person() -> None:
    shard, store = _shard(), dict[str, bytes]()
    shard.touch(_touch("e1", START, JANE), "t1")
    shard.touch(_touch("e2", START + 1_000, OTHER), "t2")
    shard.touch(_touch("e3", START + 2_000, JANE[1:]), "t3")
    _saved(shard, store)
    assert _mentions(store, ["jane-7", "dev-jane", "e3b0c4"])  # Jane is saved
    other_before = store["p:c:other-2"]

    assert shard.erase(["customer_id:jane-7"], "control") == 1
    step = shard.drain()
    assert "control" in step.done
    records = step.records
    for key, value in records.items():
        if value is None:
            store.pop(key, None)
        else:
            store[key] = value
    assert records["p:c:jane-7"] is None  # a tombstone
    assert not _mentions(store, ["jane-7", "dev-jane", "e3b0c4"])
    assert store["p:c:other-2"] == other_before  # the other customer untouched
    for key in JANE_KEYS:
        assert shard.graph.person_of(key) is None

    # a restarted worker loads the saved records: Jane does not come back
    again = _shard()
    again.load(store.items())
    assert "c:jane-7" not in again.engine.persons
    assert all(again.graph.person_of(key) is None for key in JANE_KEYS)
    # a later touchpoint with her device starts a new (anonymous) person
    again.touch(_touch("e4", START + 3_000, (("device_id", "dev-jane"),)), "t4")
    again.touch(_touch("e5", START + 4_000, OTHER), "t5")
    again.drain()
    assert again.graph.person_of("device_id:dev-jane") == "a:device_id:dev-jane"
    assert "c:jane-7" not in again.engine.persons


def test_erase_applied_again_is_harmless() -> None:
    shard, store = _shard(), dict[str, bytes]()
    shard.touch(_touch("e1", START, JANE), "t1")
    shard.touch(_touch("e2", START + 1_000, OTHER), "t2")
    _saved(shard, store)
    shard.erase(JANE_KEYS, "c1")
    first = dict(_saved(shard, store))
    kept = dict(store)
    assert shard.erase(JANE_KEYS, "c2") == 0  # a replayed control record: nothing left
    step = shard.drain()
    assert all(value is None for key, value in step.records.items() if not key.startswith("d:"))
    assert "c2" in step.done
    assert store == kept and first


def test_erase_drops_touches_held_for_the_watermark() -> None:
    shard = JourneyShard(JourneyEngine(CATALOG, allowed_lateness_ms=60_000), 0, partitioner(1))
    shard.touch(_touch("e1", START, JANE), "t1")
    shard.touch(_touch("e2", START + 1_000, OTHER), "t2")
    assert shard.held == 2  # both held for the watermark
    shard.erase(JANE_KEYS, None)
    step = shard.drain()
    assert "t1" in step.done and "t2" not in step.done  # Jane's input is done with
    shard.touch(_touch("e3", START + 10 * 60_000, OTHER), "t3")
    shard.drain()
    shard.engine.advance(START + 20 * 60_000)
    assert "c:jane-7" not in shard.engine.persons and "c:other-2" in shard.engine.persons


def test_erase_on_every_partition_leaves_no_record_of_the_person_after_a_restart() -> None:
    cluster = Cluster(4, seed=7)
    at = START
    for i in range(12):  # anonymous device first, then signed in: a merge across partitions
        ids = JANE[2:] if i < 4 else JANE
        cluster.produce(_touch(f"j{i}", at + i * 1_000, ids))
        cluster.produce(_touch(f"o{i}", at + i * 1_000 + 500, OTHER if i % 2 else OTHER[1:]))
    cluster.run(START + 60_000)
    words = ["jane-7", "dev-jane", "e3b0c4"]
    assert any(_mentions(store, words) for store in cluster.store.values())
    others = {p: _mentions(store, ["other-2", "dev-other"]) for p, store in cluster.store.items()}
    for partition, shard in cluster.shards.items():
        shard.erase(JANE_KEYS, None)
        cluster._finish(partition, shard.drain())
    for partition in list(cluster.shards):
        cluster._crash(partition)  # restarted from the saved records
    assert not any(_mentions(store, words) for store in cluster.store.values())
    assert {p: _mentions(s, ["other-2", "dev-other"]) for p, s in cluster.store.items()} == others
    for shard in cluster.shards.values():
        assert not any(p.endswith(("jane-7", "dev-jane")) for p in shard.engine.persons)
    cluster.produce(_touch("later", at + 60_000, (("device_id", "dev-jane"),)))
    cluster.finish(START + 120_000)
    home = partitioner(4)("device_id:dev-jane")
    assert cluster.shards[home].graph.person_of("device_id:dev-jane") == "a:device_id:dev-jane"
    later = {o.person_id for o in cluster.outputs if o.event_id == "later"}
    assert later <= {"a:device_id:dev-jane"}


def test_an_erase_control_record_is_read_and_a_malformed_one_refused() -> None:
    from faust.types import Message

    def record(headers: object, value: bytes) -> Message:
        return Message("touchpoints.by_person", 0, 7, 0.0, 0, headers, None, value, None)  # type: ignore[arg-type]

    body = orjson.dumps({"erase": JANE_KEYS})
    assert control_of(record([("jw-control", b"erase")], body)) == tuple(JANE_KEYS)
    assert control_of(record([("jw-control", b"advance")], b'{"advance_to": 5}')) == 5
    assert advance_of(record([("jw-control", b"erase")], body)) is None
    assert control_of(record(None, b"{}")) is None
    for value in (b'{"erase": "customer_id:x"}', b'{"erase": [1]}', b'{"erase": ["nocolon"]}'):
        with pytest.raises(ValueError):
            control_of(record([("jw-control", b"erase")], value))


def test_erase_comes_after_the_hops_of_the_input_before_it() -> None:
    """A touch read just before the control record may still be on a hop within the
    partition (a message to the same partition, delivered at the next drain): it is applied
    first and erased with the rest, never applied after the erasure."""
    shard = _shard()
    shard.touch(_touch("e1", START, JANE), "t1")
    shard.drain()
    later = _touch("e2", START + 1_000, (("customer_id", "jane-7"), ("loyalty_id", "L9")))
    shard._local.append((encode_message(Forward("c:jane-7", later)), later.at))
    shard.erase([*JANE_KEYS, "loyalty_id:L9"], "control")
    step = shard.drain()
    assert "c:jane-7" not in shard.engine.persons
    assert step.records.get("p:c:jane-7") is None
    assert shard.graph.person_of("loyalty_id:L9") is None
