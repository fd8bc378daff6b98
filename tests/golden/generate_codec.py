"""Write golden samples of every record a worker saves or sends, as a given version writes them.

    git archive <commit> | tar -x -C /tmp/jw-<commit>
    cp tests/golden/generate_codec.py /tmp/jw-<commit>/tests/golden/
    cd /tmp/jw-<commit> && JW_COMPILED=0 python -m tests.golden.generate_codec \
        <this repo>/tests/golden/codec-v<N> <commit>

The code of that commit plays simulated traffic through a cluster of journey shards (the
in-process Kafka model of tests/unit/test_shard.py): a simulated day (identities merged across
partitions), shared devices and kiosks (blocked identifiers, foreign identifiers, redirects),
the day again with ``state_write_version=1`` (the released person state) and a crash now and
then (redelivered hand-offs). Every hand-off message it sends (``Step.sends`` and
``Step.notices``) and every state record it saves (``Step.records``) is captured byte for byte;
a few of each distinct shape are kept, one file per kind: ``forward.json``, ``link.json``,
``redirect.json``, ``handoff.json``, ``frontier.json`` (hand-off messages) and ``person.json``,
``identifier.json`` and, from the version that saves hand-off messages before sending them,
``outbox.json`` and ``finished.json`` (state records, with their keys).
tests/unit/test_codec.py decodes them with the current codec. Golden files are never
regenerated: a new format adds a directory.

Written only with what every version has had: ``Cluster``, ``JourneyShard``, ``Step``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import orjson

from pipeline.engine import JourneyEngine
from pipeline.shard import JourneyShard, Step
from pipeline.touch import Touch
from tests.unit.test_shard import (
    CATALOG,
    HANDOFF,
    Cluster,
    partitioner,
    play,
    shared_device_stream,
    touches_of,
)

PER_SHAPE = 2  # samples kept of each distinct shape
MESSAGE_KINDS = ("forward", "link", "redirect", "handoff", "frontier")


class Capture(Cluster):
    """A cluster that keeps every hand-off message and state record its shards write."""

    def __init__(self, *args: Any, write_version: int | None = None, **kwargs: Any) -> None:
        self.write_version = write_version
        self.messages: list[bytes] = []
        self.records: list[tuple[str, bytes]] = []
        super().__init__(*args, **kwargs)

    def _start(self, partition: int) -> JourneyShard:
        if self.write_version is None:
            return super()._start(partition)
        engine = JourneyEngine(
            CATALOG, allowed_lateness_ms=self.lateness_ms, state_write_version=self.write_version
        )
        shard = JourneyShard(engine, partition, partitioner(self.partitions), 0)
        shard.load(self.store[partition].items())
        shard.on_applied = self.applied.update
        return shard

    def _finish(self, partition: int, step: Step) -> None:
        self.messages += [value for _, value in step.sends]
        self.messages += [value for _, value in step.notices]
        self.records += [(k, v) for k, v in step.records.items() if v is not None]
        super()._finish(partition, step)


def _message_shape(raw: bytes) -> tuple[Any, ...]:
    data = orjson.loads(raw)
    shape: list[Any] = [data["kind"], tuple(data)]
    if data["kind"] == "handoff":
        record = data["record"]
        state = record[0] if record else None
        shape += [
            record is None,
            None if state is None else type(state[0]).__name__,  # version 2: an int first
            data["source"] is None,
            bool(data["identifiers"]),
            bool(data["foreign"]),
            len(data["touches"]) > 1,
        ]
    if data["kind"] != "frontier":
        shape.append(data.get("awaits") is None)
    else:
        shape += [data["frontier"] >= 2**62, data["processed"] > 0, bool(data["open"])]
    return tuple(shape)


def _record_shape(key: str, raw: bytes) -> tuple[Any, ...]:
    data = orjson.loads(raw)
    if key.startswith("p:"):
        state = data[0][0] if data[0] else None
        return (
            "person",
            key[2:4],
            data[0] is None,
            None if state is None else type(state[0]).__name__,
            bool(data[0] and data[0][1]),
            bool(data[1]),
            data[2] is None,
        )
    if key.startswith("o:"):  # (an outbox record: a hand-off message saved before it is sent)
        return ("outbox", orjson.loads(data[1])["kind"])
    if key.startswith("d:"):  # (a finished record: input whose effects a step saved)
        return ("finished", bool(data[0]), bool(data[1]))
    return ("identifier", data[0] is None, bool(data[1]), bool(data[2]))


def _keep(found: dict[tuple[Any, ...], list[Any]], shape: tuple[Any, ...], item: Any) -> None:
    kept = found.setdefault(shape, [])
    if len(kept) < PER_SHAPE and item not in kept:
        kept.append(item)


def _every_field_forward() -> bytes:
    """A ``forward`` of a touch with every field set (non-ASCII text, floats, ``received_at``),
    written by the shard's own ``_send``."""
    part = partitioner(2)
    customer = next(f"c{i}" for i in range(100) if part(f"customer_id:c{i}") == 1)
    shard = JourneyShard(JourneyEngine(CATALOG), 0, part, 2)
    touch = Touch(
        "evt-ü-1",
        1_794_787_200_123,
        "call_center",
        "queue.wait",
        "wait",
        "failed",
        "timeout — «long»",
        (("customer_id", customer), ("email_hash", "e✓"), ("device_id", "d 1")),
        "call-7",
        61_000,
        420_000,
        2,
        -100,
        -0.75,
        12.5,
        "EUR",
        "billing",
        1_794_787_200_456,
    )
    shard.touch(touch, "t")
    ((_, raw),) = shard.drain().sends
    return raw


def generate(out: Path, commit: str) -> None:
    runs: list[Capture] = []
    day, _ = touches_of(41, 120)
    cluster = Capture(3, seed=41)
    play(cluster, day)
    runs.append(cluster)
    for seed, partitions in ((3, 3), (11, 4)):
        cluster = Capture(partitions, seed=seed)
        play(cluster, shared_device_stream(seed, customers=9, events=400))
        runs.append(cluster)
    cluster = Capture(3, seed=7, crash_rate=0.05)
    play(cluster, shared_device_stream(7, customers=9, events=400))
    runs.append(cluster)
    cluster = Capture(3, seed=41, write_version=1)  # the released person state, no alignment
    play(cluster, day[:3000])
    runs.append(cluster)

    messages: dict[tuple[Any, ...], list[bytes]] = {}
    records: dict[tuple[Any, ...], list[tuple[str, bytes]]] = {}
    for run in runs:
        for raw in run.messages:
            _keep(messages, _message_shape(raw), raw)
        for key, raw in run.records:
            _keep(records, _record_shape(key, raw), (key, raw))
    every = _every_field_forward()
    messages[("forward", "every field")] = [every]

    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Any] = {"commit": commit, "generator": "tests/golden/generate_codec.py"}
    for kind in MESSAGE_KINDS:
        samples = [
            raw.decode() for shape, kept in messages.items() if shape[0] == kind for raw in kept
        ]
        assert samples, f"no {kind} message written"
        body = written | {"kind": kind, "messages": samples}
        (out / f"{kind}.json").write_text(json.dumps(body, indent=1, ensure_ascii=False) + "\n")
    for kind in ("person", "identifier", "outbox", "finished"):
        samples_r = [
            {"key": key, "raw": raw.decode()}
            for shape, kept in records.items()
            if shape[0] == kind
            for key, raw in kept
        ]
        if not samples_r and kind in ("outbox", "finished"):
            continue  # (a version before the outbox)
        assert samples_r, f"no {kind} record written"
        body = written | {"kind": kind, "records": samples_r}
        (out / f"{kind}.json").write_text(json.dumps(body, indent=1, ensure_ascii=False) + "\n")
    counts: dict[str, int] = {}
    for found in (messages, records):
        for shape, kept in found.items():
            counts[shape[0]] = counts.get(shape[0], 0) + len(kept)
    print(f"{out}: {counts} (topic {HANDOFF})")


if __name__ == "__main__":
    generate(Path(sys.argv[1]), sys.argv[2])
