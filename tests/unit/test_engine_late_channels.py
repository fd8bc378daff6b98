"""Per-channel lateness (``channel_lateness_ms``): a journey that a late channel (a store or
contact-centre export) can move on waits that much longer before it is reported dropped off,
so that channel's touchpoints still reach it in time (docs/streaming-topology.md, "Late
channels")."""

from __future__ import annotations

import random
from collections import Counter

import orjson
import pytest
from faust.types import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.engine import JourneyEngine, Output, drop_off_hold
from pipeline.touch import Touch
from streams.journeys import advance_of
from tests.unit.journeys import CATALOG, T0, H, M, touch
from tests.unit.test_engine_properties import LATENESS, canonical, generate, run

LATE = {"store": 30 * H, "call_center": 6 * H}


def outcomes(outputs: list[Output]) -> Counter[tuple[object, ...]]:
    """Net terminal outcomes: a drop-off its conversion retracted counts as the conversion.
    (By person, not journey id: a late touch can let a later one start the journey.)"""
    retracted = {o.journey_id for o in outputs if o.name == "dropoff_retracted"}
    return Counter(
        (o.journey, o.person_id, o.name, o.stage)
        for o in outputs
        if o.type == "journey"
        and o.name in ("converted", "dropped_off", "merged")
        and not (o.name == "dropped_off" and o.journey_id in retracted)
    )


def revisions(outputs: list[Output]) -> Counter[tuple[object, ...]]:
    return Counter(
        (o.journey, o.person_id, o.stage) for o in outputs if o.name == "dropoff_retracted"
    )


def late_arrival(touches: list[Touch], rng: random.Random) -> list[Touch]:
    """Every touch of a late channel delayed by up to that channel's lateness, the others by
    up to the lateness, each channel's own touches in their order (an export, a feed): the
    order a point-of-sale export imported a day later gives."""
    last: dict[str, int] = {}
    arrival = []
    for index, t in enumerate(touches):  # (in event-time order)
        arrives = t.at + rng.randrange(LATE.get(t.channel, LATENESS))
        if t.channel in LATE:
            arrives = last[t.channel] = max(arrives, last.get(t.channel, arrives))
        arrival.append((arrives, index, t))
    return [t for _, _, t in sorted(arrival)]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**9))
def test_a_hold_changes_no_output_of_a_stream_in_order(seed: int) -> None:
    touches = [t for _, t in generate(seed)]
    assert canonical(run(touches, LATE)) == canonical(run(touches, None))


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 10**9), delays=st.integers(0, 10**9))
def test_late_channels_within_their_lateness_give_the_outcomes_in_order_without_revision(
    seed: int, delays: int
) -> None:
    touches = [t for _, t in generate(seed)]
    late = run(late_arrival(touches, random.Random(delays)), LATE)
    in_order = run(touches, None)
    assert outcomes(late) == outcomes(in_order)
    # no revision that the stream in order does not have (a journey that stalls, resumes
    # and converts is revised either way)
    assert revisions(late) <= revisions(in_order)


def test_a_journey_waits_for_its_late_channel_and_only_then_drops_off() -> None:
    """Locator on the web, a store visit; the purchase at the till that the store's export
    brings a day later. Without a hold the journey is reported dropped off at the visit's
    time-out (4 h) and then retracted; with it, only converted."""
    web = touch(0, "store_locator.search", "web", "search", loyalty="L1")
    visit = touch(1 * H, "store.visit", "store", "enter", loyalty="L1")
    pay = touch(2 * H, "till.purchase", "store", "pay", loyalty="L1")
    later = [touch(k * H, "home.view", "web", customer=f"other-{k}") for k in range(2, 29)]
    arrival = [web, visit, *later, pay]  # the purchase in the export after a day of traffic
    held = run(arrival, {"store": 30 * H})
    store = "browse_online_buy_in_store"
    assert [o.name for o in held if o.journey == store and o.type == "journey"] == [
        "started",
        "stage_reached",
        "converted",
    ]
    unheld = run(arrival, None)
    names = [o.name for o in unheld if o.journey == store]
    assert "dropped_off" in names and "dropoff_retracted" in names  # revised instead


def test_the_hold_is_the_latest_channel_that_can_move_the_journey_beyond_the_lateness() -> None:
    by_name = {d.name: d for d in CATALOG.journeys}
    lateness = {"store": 2 * H, "call_center": 30 * M}
    holds = {name: drop_off_hold(d, lateness, 10 * M) for name, d in by_name.items()}
    assert holds["browse_online_buy_in_store"] == 2 * H - 10 * M
    assert drop_off_hold(by_name["online_purchase"], {}, 10 * M) == 0
    assert drop_off_hold(by_name["online_purchase"], {"store": 5 * M}, 10 * M) == 0


def _record(headers: object, value: bytes) -> Message:
    return Message("touchpoints.by_person", 0, 7, 0.0, 0, headers, None, value, None)  # type: ignore[arg-type]


def test_a_backfills_end_resolves_its_last_journeys_at_once() -> None:
    """``journeywatch import --end-of-backfill``: the control record's event time moves the
    partition's watermark as a touchpoint would; a malformed one is refused (dead-lettered)."""
    engine = JourneyEngine(CATALOG, allowed_lateness_ms=LATENESS)
    engine.submit(touch(0, "cart.add", "web", "add", customer="c1"))  # (at T0)
    assert not [o for o in engine.advance(T0 + H) if o.name == "dropped_off"]
    now = T0 + 30 * 24 * H
    record = _record([("jw-control", b"advance")], orjson.dumps({"advance_to": now}))
    assert advance_of(record) == now
    dropped = [o for o in engine.reach(now) if o.name == "dropped_off"]
    assert [(o.journey, o.person_id) for o in dropped] == [("online_purchase", "c:c1")]
    assert engine.reach(now - 1) == []  # never back
    assert advance_of(_record(None, b"{}")) is None  # a touchpoint
    assert advance_of(_record({"jw-control": b"advance"}, b'{"advance_to": 5}')) == 5
    for headers, value in (
        ([("jw-control", b"rewind")], b'{"advance_to": 5}'),
        ([("jw-control", b"advance")], b'{"advance_to": "soon"}'),
        ([("jw-control", b"advance")], b"[1]"),
    ):
        with pytest.raises(ValueError):
            advance_of(_record(headers, value))
