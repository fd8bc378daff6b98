"""Builders for engine scenarios: touches with readable times and identifiers."""

from __future__ import annotations

import itertools
from typing import Any

from pipeline.definitions import load_catalog
from pipeline.engine import JourneyEngine, Output
from pipeline.touch import Touch

S = 1_000
M = 60 * S
H = 60 * M
D = 24 * H
T0 = 1_795_000_000_000  # an arbitrary epoch-ms origin
CATALOG = load_catalog()
_ids = itertools.count()


def touch(
    at: int,
    touchpoint: str,
    channel: str = "web",
    action: str = "view",
    *,
    customer: str | None = None,
    device: str | None = None,
    loyalty: str | None = None,
    event_id: str | None = None,
    **fields: Any,
) -> Touch:
    identifiers = tuple(
        (kind, value)
        for kind, value in (
            ("customer_id", customer),
            ("loyalty_id", loyalty),
            ("device_id", device),
        )
        if value
    )
    return Touch(
        event_id or f"ev-{next(_ids)}",
        T0 + at,
        channel,
        touchpoint,
        action,
        identifiers=identifiers,
        **fields,
    )


def run(touches: list[Touch], until: int | None = None, lateness: int = 0) -> list[Output]:
    engine = JourneyEngine(CATALOG, allowed_lateness_ms=lateness)
    out: list[Output] = []
    for item in touches:
        out += engine.submit(item)
    out += engine.advance(T0 + until if until is not None else 2**62)
    return out


def named(outputs: list[Output], type_: str, name: str | None = None) -> list[Output]:
    return [o for o in outputs if o.type == type_ and (name is None or o.name == name)]
