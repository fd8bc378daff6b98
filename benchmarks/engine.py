"""The journey engine over a realistic mixed stream of already decoded touchpoints."""

from __future__ import annotations

import gc
import time

import orjson

from pipeline.definitions import load_catalog
from pipeline.engine import JourneyEngine
from pipeline.simulator import scripted_touches
from pipeline.touch import Touch
from streams.process import GC_THRESHOLDS as WORKER_GC_THRESHOLDS

EVENTS = 200_000

BATCH = 1_000  # as the worker's take() batches
T0 = 1_795_000_000_000
M = 60_000


def mixed_stream(events: int, seed: int = 5) -> list[Touch]:
    """Concurrent personas walking the default journeys, interleaved in event-time order."""
    stream = scripted_touches(seed, t0=T0, events=events, start_spread_ms=6 * 60 * M)
    return [touch for _, touch in stream]


def run() -> str:
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
    best_decode = best_engine = best_default_gc = 0.0
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
    gc.set_threshold(*default_thresholds)
    active = engine.active_journeys()
    snapshot = engine.snapshot()
    state_bytes = sum(len(raw) for raw in snapshot.values())
    journeys = sum(1 for p in engine.persons.values() for _ in p.journeys)
    return (
        "## Journey engine (pure core, one core)\n\n"
        f"Command: `make bench` (suite `benchmarks/engine.py`): {EVENTS:,} decoded touchpoints of "
        "personas walking the four default journeys (and browsers who leave), interleaved in "
        "event-time order, submitted in batches of 1,000, 60 s allowed lateness; best of 3.\n\n"
        "| what | events/s | ratio to baseline |\n| --- | ---: | ---: |\n"
        f"| baseline: `orjson.loads` of the same events | {best_decode:,.0f} | 1.00 |\n"
        f"| `JourneyEngine.submit_batch`, Python's default GC thresholds {default_thresholds} | "
        f"{best_default_gc:,.0f} | {best_default_gc / best_decode:.3f} |\n"
        f"| `JourneyEngine.submit_batch`, worker GC thresholds {WORKER_GC_THRESHOLDS} | "
        f"{best_engine:,.0f} | {best_engine / best_decode:.3f} |\n\n"
        "`submit_batch` does identity stitching, sessions, journeys, detectors, scores and "
        "KPIs. The "
        "workers raise the GC thresholds (`streams/roles.py`): the engine allocates many "
        "small, long-lived objects and the default young-generation threshold spends about a "
        f"third of the time in the collector. Target: 100,000 events/s; "
        f"{'met' if best_engine >= 100_000 else 'not met yet'}.\n\n"
        f"Outputs per run: {outputs:,}. At the end: {len(snapshot):,} persons holding "
        f"{journeys:,} journeys ({active:,} active); serialized person state "
        f"{state_bytes:,} bytes = **{state_bytes / max(journeys, 1):.0f} bytes per journey held** "
        f"(target ≤ 1 KiB).\n"
    )
