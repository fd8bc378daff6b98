"""Write the golden records of a released version: run it from a checkout of that version.

    git worktree add /tmp/released <tag or commit>
    cp tests/golden/generate.py /tmp/released/tests/golden_generate.py
    cd /tmp/released && python -m tests.golden_generate <this repo>/tests/golden/released-<commit>

The released code plays the first half of a simulated day through a cluster of journey shards
(tests/unit/test_shard.py: the in-process Kafka model) and stops there, as a worker stopped for an
upgrade does: what it saved (state records, exactly as they go to RocksDB and its changelog
topic), the input it had not committed yet (touchpoints and identity hand-off messages, exactly
as on the topics), and the outputs it emitted. tests/unit/test_golden.py then has the new code
take over from there and checks that it decides every journey as it would have alone.

Written only with what every version has had: ``Cluster``, ``JourneyShard.load``, ``Log``.
"""

from __future__ import annotations

import base64
import json
import sys
from datetime import datetime
from pathlib import Path

import orjson

from pipeline.contract import TouchpointEvent, decode_touchpoint
from pipeline.scenario import DaySimulator, default_incidents
from pipeline.touch import Touch
from tests.unit.test_scenario import START
from tests.unit.test_shard import BY_PERSON, Cluster

SEED, PERSONAS, PARTITIONS, WINDOW_MS, TAIL = 41, 120, 3, 20_000, 40


def generate(out: Path) -> None:
    simulator = DaySimulator(SEED, START, PERSONAS, default_incidents(START))
    events = simulator.generate()
    received = "2026-11-07T00:00:00+00:00"
    stamp = datetime.fromisoformat(received)
    touches = []
    for event in events:
        decoded = decode_touchpoint(orjson.dumps(event), stamp)
        assert isinstance(decoded, TouchpointEvent)
        touches.append(Touch.from_event(decoded))
    half = len(touches) // 2
    cluster = Cluster(PARTITIONS, seed=SEED)
    batch: list[Touch] = []
    for touch in touches[:half]:
        if batch and touch.at - batch[0].at >= WINDOW_MS:
            cluster.run(wall_ms=batch[-1].at)
            batch = []
        cluster.produce(touch)
        batch.append(touch)
    cluster.run(wall_ms=batch[-1].at)
    # The next touchpoints are read and applied, but the identity hand-off messages they send
    # are not read yet: the upgrade finds messages of the released version in flight.
    stopped = half + TAIL
    for touch in touches[half:stopped]:
        cluster.produce(touch)
    log = cluster.log
    for partition, shard in cluster.shards.items():
        tp = (BY_PERSON, partition)
        start = log.position.get(tp, 0)
        records = log.records.get(tp, [])[start:]
        log.position[tp] = start + len(records)
        for offset, (_, value) in enumerate(records, start):
            assert isinstance(value, Touch)
            shard.touch(value, (BY_PERSON, partition, offset))
        cluster._finish(partition, shard.drain())
    # stopped here: what a restarted (upgraded) worker finds
    by_id = {e["event_id"]: e for e in events}
    pending = []
    for (topic, partition), records in sorted(cluster.log.records.items()):
        for key, value in records[cluster.log.committed.get((topic, partition), 0) :]:
            if topic == BY_PERSON:
                assert isinstance(value, Touch)
                pending.append({"topic": topic, "key": key, "event": by_id[value.event_id]})
            else:
                assert isinstance(value, bytes)
                pending.append({"topic": topic, "key": key, "value": value.decode()})
    out.mkdir(parents=True, exist_ok=True)
    (out / "events.json").write_bytes(orjson.dumps(events, option=orjson.OPT_INDENT_2))
    (out / "state.json").write_text(
        json.dumps(
            {
                str(p): {k: base64.b64encode(v).decode() for k, v in sorted(store.items())}
                for p, store in cluster.store.items()
            },
            indent=1,
        )
    )
    (out / "pending.json").write_text(json.dumps(pending, indent=1))
    (out / "outputs.json").write_text(
        json.dumps([o.as_dict() for o in cluster.outputs], indent=1, default=str)
    )
    (out / "run.json").write_text(
        json.dumps(
            {
                "seed": SEED,
                "personas": PERSONAS,
                "partitions": PARTITIONS,
                "window_ms": WINDOW_MS,
                "received_at": received,
                "stopped_after": stopped,
            },
            indent=1,
        )
    )
    print(f"{out}: {stopped} of {len(events)} events played, {len(pending)} records pending")


if __name__ == "__main__":
    generate(Path(sys.argv[1]))
