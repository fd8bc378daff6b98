"""Validating raw bytes into a TouchpointEvent, against a plain JSON decode of the same bytes."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

import orjson

from pipeline.contract import TouchpointEvent, decode_touchpoint
from pipeline.simulator import SimpleTrafficSource

N = 50_000


def _rate(action: Callable[[bytes], object], payloads: list[bytes], repeats: int = 3) -> float:
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        for payload in payloads:
            action(payload)
        best = max(best, len(payloads) / (time.perf_counter() - started))
    return best


def run() -> str:
    now = datetime.now(UTC)
    payloads = [orjson.dumps(e) for e in SimpleTrafficSource(seed=3).events(now, N)]
    baseline = _rate(orjson.loads, payloads)
    validated = _rate(lambda raw: decode_touchpoint(raw, now), payloads)
    assert all(isinstance(decode_touchpoint(p, now), TouchpointEvent) for p in payloads[:100])
    mean_bytes = sum(map(len, payloads)) / len(payloads)
    return (
        "## Event contract: validate once at the edge\n\n"
        "Command: `make bench` (suite `benchmarks/contract_decode.py`), "
        f"{N:,} simulated events of {mean_bytes:.0f} bytes on average, best of 3, one core.\n\n"
        "| what | events/s | ratio to baseline |\n| --- | ---: | ---: |\n"
        f"| baseline: `orjson.loads` only | {baseline:,.0f} | 1.00 |\n"
        f"| `decode_touchpoint` (orjson + pydantic validation) | {validated:,.0f} | "
        f"{validated / baseline:.3f} |\n"
    )
