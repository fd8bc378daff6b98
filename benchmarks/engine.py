"""The journey engine over a realistic mixed stream of already decoded touchpoints."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

import pipeline.engine as engine_module
from pipeline.definitions import load_catalog
from pipeline.engine import JourneyEngine
from pipeline.simulator import scripted_touches
from pipeline.touch import Touch
from streams.process import GC_THRESHOLDS as WORKER_GC_THRESHOLDS
from streams.process import LongLivedHeap

EVENTS = 200_000
REPO = Path(__file__).resolve().parent.parent

BATCH = 1_000  # as the worker's take() batches
T0 = 1_795_000_000_000
M = 60_000


def mixed_stream(events: int, seed: int = 5) -> list[Touch]:
    """Concurrent personas walking the default journeys, interleaved in event-time order."""
    stream = scripted_touches(seed, t0=T0, events=events, start_spread_ms=6 * 60 * M)
    return [touch for _, touch in stream]


def measure() -> dict[str, Any]:
    """One build's figures (this process's ``pipeline.engine``): baseline and engine rates."""
    catalog = load_catalog()
    touches = mixed_stream(EVENTS)
    payloads = [
        orjson.dumps(
            {
                "event_id": t.event_id,
                "at": t.at,
                "channel": t.channel,
                "touchpoint": t.touchpoint,
                "action": t.action,
                "outcome": t.outcome,
                "ids": t.identifiers,
            }
        )
        for t in touches
    ]
    best_decode = best_engine = best_default_gc = best_frozen = 0.0
    outputs = 0
    engine = JourneyEngine(catalog)
    default_thresholds = gc.get_threshold()
    for _ in range(2):
        engine = JourneyEngine(catalog, allowed_lateness_ms=60_000)
        started = time.perf_counter()
        for start in range(0, len(touches), BATCH):
            engine.submit_batch(touches[start : start + BATCH])
        best_default_gc = max(best_default_gc, len(touches) / (time.perf_counter() - started))
    gc.set_threshold(*WORKER_GC_THRESHOLDS)
    for _ in range(3):
        started = time.perf_counter()
        for payload in payloads:
            orjson.loads(payload)
        best_decode = max(best_decode, len(payloads) / (time.perf_counter() - started))
        engine = JourneyEngine(catalog, allowed_lateness_ms=60_000)
        started = time.perf_counter()
        produced = 0
        for start in range(0, len(touches), BATCH):
            produced += len(engine.submit_batch(touches[start : start + BATCH]))
        best_engine = max(best_engine, len(touches) / (time.perf_counter() - started))
        outputs = produced
        # as a worker collects: what survives each batch frozen (streams/process.py)
        heap = LongLivedHeap(3600.0)
        engine = JourneyEngine(catalog, allowed_lateness_ms=60_000)
        started = time.perf_counter()
        for start in range(0, len(touches), BATCH):
            engine.submit_batch(touches[start : start + BATCH])
            heap.settle()
        best_frozen = max(best_frozen, len(touches) / (time.perf_counter() - started))
        gc.unfreeze()
    gc.set_threshold(*default_thresholds)
    snapshot = engine.snapshot()
    return {
        "module": engine_module.__file__,
        "default_gc": list(default_thresholds),
        "decode": best_decode,
        "engine": best_engine,
        "engine_default_gc": best_default_gc,
        "engine_frozen": best_frozen,
        "outputs": outputs,
        "active": engine.active_journeys(),
        "persons": len(snapshot),
        "state_bytes": sum(len(raw) for raw in snapshot.values()),
        "journeys": sum(1 for p in engine.persons.values() for _ in p.journeys),
    }


def _measure_build(compiled: bool) -> dict[str, Any]:
    """``measure`` in a process of its own, on the compiled build or the plain modules."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, benchmarks.engine as b; print(json.dumps(b.measure()))",
        ],
        cwd=REPO,
        env={**os.environ, "JW_COMPILED": "1" if compiled else "0"},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise RuntimeError(
            f"engine benchmark ({'compiled' if compiled else 'plain'}): {done.stderr}"
        )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def run() -> str:
    builds = {"plain Python": _measure_build(False), "compiled (mypyc)": _measure_build(True)}
    rows = []
    for label, m in builds.items():
        rows.append(
            f"| {label}: `orjson.loads` of the same events (baseline) | {m['decode']:,.0f} | 1.00 |"
        )
        rows.append(
            f"| {label}: `JourneyEngine.submit_batch`, default GC thresholds "
            f"{tuple(m['default_gc'])} | {m['engine_default_gc']:,.0f} | "
            f"{m['engine_default_gc'] / m['decode']:.3f} |"
        )
        rows.append(
            f"| {label}: `JourneyEngine.submit_batch`, worker GC thresholds "
            f"{WORKER_GC_THRESHOLDS} | {m['engine']:,.0f} | {m['engine'] / m['decode']:.3f} |"
        )
        rows.append(
            f"| {label}: `JourneyEngine.submit_batch`, as a worker collects (those thresholds, "
            "what survives each batch frozen: `streams/process.LongLivedHeap`) | "
            f"**{m['engine_frozen']:,.0f}** | {m['engine_frozen'] / m['decode']:.3f} |"
        )
    plain, compiled = builds["plain Python"], builds["compiled (mypyc)"]
    assert plain["outputs"] == compiled["outputs"], "the two builds disagree"
    best = max(plain["engine_frozen"], compiled["engine_frozen"])
    goal = compiled["engine_frozen"] / compiled["decode"]
    m = compiled
    return (
        "## Journey engine (pure core, one core)\n\n"
        f"Command: `make bench` (suite `benchmarks/engine.py`): {EVENTS:,} decoded touchpoints of "
        "personas walking the four default journeys (and browsers who leave), interleaved in "
        "event-time order, submitted in batches of 1,000, 60 s allowed lateness; best of 3; "
        "each build in a process of its own (`JW_COMPILED=0` and `1`), with its own baseline "
        "measured in that process.\n\n"
        "| build and what | events/s | ratio to baseline |\n| --- | ---: | ---: |\n"
        + "\n".join(rows)
        + "\n\nCompiled build: "
        f"{compiled['engine_frozen'] / plain['engine_frozen']:.2f} times as fast as the plain "
        "modules "
        "(`make compile`, `pipeline/_compiled.py`; the workers use it). "
        "`submit_batch` does identity stitching, sessions, journeys, detectors, scores and "
        "KPIs. The workers raise the GC thresholds (`streams/process.py`): the engine allocates "
        "many small, long-lived objects and the default young-generation threshold spends a "
        "large share of the time in the collector; and they freeze what survives each batch, "
        "so that collections stop walking the journey state. Target: 100,000 events/s; "
        f"{'met' if best >= 100_000 else 'not met'}. Goal (issue #25): the compiled engine, as "
        f"a worker runs it, at 0.1 of `orjson.loads` or more: {goal:.3f}, "
        f"{'met' if goal >= 0.1 else 'not met'}.\n\n"
        f"Outputs per run: {m['outputs']:,} (equal in both builds). At the end: "
        f"{m['persons']:,} persons holding {m['journeys']:,} journeys ({m['active']:,} active); "
        f"serialized person state {m['state_bytes']:,} bytes = "
        f"**{m['state_bytes'] / max(m['journeys'], 1):.0f} bytes per journey held** "
        "(target ≤ 1 KiB).\n"
    )
