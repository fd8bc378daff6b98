"""The journey engine against the simulator's ground truth for a simulated day."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import orjson

from pipeline.contract import TouchpointEvent, decode_touchpoint
from pipeline.definitions import load_catalog
from pipeline.engine import JourneyEngine, Output
from pipeline.scenario import DAY, INCIDENT_KINDS, DaySimulator, GroundTruth, default_incidents
from pipeline.touch import Touch

START = int(datetime(2026, 11, 2, tzinfo=UTC).timestamp() * 1000)


def simulate(
    seed: int, personas: int, incidents: bool
) -> tuple[list[dict[str, object]], GroundTruth]:
    simulator = DaySimulator(seed, START, personas, default_incidents(START) if incidents else [])
    return simulator.generate(), simulator.truth


def engine_journeys(events: list[dict[str, object]]) -> Counter[tuple[object, ...]]:
    engine = JourneyEngine(load_catalog(), allowed_lateness_ms=60_000)
    received = datetime.fromtimestamp((START + 5 * DAY) / 1000, UTC)
    touches = []
    for event in events:
        decoded = decode_touchpoint(orjson.dumps(event), received)
        assert isinstance(decoded, TouchpointEvent), decoded
        touches.append(Touch.from_event(decoded))
    outputs: list[Output] = []
    for start in range(0, len(touches), 500):
        outputs += engine.submit_batch(touches[start : start + 500])
    outputs += engine.flush() + engine.advance(START + 30 * DAY)
    final: dict[str, Output] = {}
    moments: dict[str, list[str]] = {}
    for o in outputs:
        if o.type == "journey" and o.name in ("converted", "dropped_off") and o.journey_id:
            final[o.journey_id] = o
        elif o.type == "negative_moment":
            assert o.journey_id, f"a negative moment outside any journey: {o}"
            moments.setdefault(o.journey_id, []).append(o.name)
    return Counter(
        (o.journey, o.person_id, o.name, o.stage, tuple(sorted(moments.get(jid, []))))
        for jid, o in final.items()
    )


def truth_journeys(truth: GroundTruth) -> Counter[tuple[object, ...]]:
    return Counter(
        (j.journey, j.person, j.outcome, j.stage, tuple(sorted(j.negative_moments)))
        for j in truth.journeys
    )


def test_a_simulated_day_is_reproducible_valid_and_follows_the_traffic_curve() -> None:
    events, truth = simulate(seed=3, personas=400, incidents=True)
    assert events == simulate(seed=3, personas=400, incidents=True)[0]
    hours = Counter(int(str(e["occurred_at"])[11:13]) for e in events)
    assert (
        hours[20] > 3 * hours[4] and hours[12] > 3 * hours[4]
    )  # evening and noon peaks, quiet night
    assert {e["channel"] for e in events} == {"web", "app", "call_center", "store", "email"}
    assert len({e["event_id"] for e in events}) == len(events)
    assert {j.journey for j in truth.journeys} == {
        "online_purchase",
        "browse_online_buy_in_store",
        "support_case",
        "app_onboarding",
    }


def test_the_engine_finds_exactly_the_ground_truth_of_a_quiet_day() -> None:
    events, truth = simulate(seed=11, personas=600, incidents=False)
    assert engine_journeys(events) == truth_journeys(truth)


def test_the_engine_finds_exactly_the_ground_truth_of_a_day_with_every_incident() -> None:
    events, truth = simulate(seed=12, personas=1_500, incidents=True)
    found, expected = engine_journeys(events), truth_journeys(truth)
    assert found == expected, (found - expected, expected - found)
    moments = Counter(kind for j in truth.journeys for kind in j.negative_moments)
    # every incident left its mark in the truth the engine just matched
    assert moments["error"] and moments["long_wait"] and moments["call_abandoned"]
    assert moments["channel_switch_after_failure"] and moments["repeat_contact"]
    stock_outs = [
        j
        for j in truth.journeys
        if j.journey == "browse_online_buy_in_store" and j.outcome == "dropped_off"
    ]
    assert stock_outs and len(INCIDENT_KINDS) == 4


def test_time_to_convert_is_measured_from_the_journeys_first_touchpoint() -> None:
    """The conversion KPI (seconds from a journey's first touchpoint to its goal) equals what
    the simulator meant, for every converted journey: an anonymous start that a login later
    joins to the customer counts from the anonymous first touch."""
    events, truth = simulate(seed=13, personas=800, incidents=True)
    engine = JourneyEngine(load_catalog(), allowed_lateness_ms=60_000)
    received = datetime.fromtimestamp((START + 5 * DAY) / 1000, UTC)
    outputs: list[Output] = []
    for event in events:
        decoded = decode_touchpoint(orjson.dumps(event), received)
        assert isinstance(decoded, TouchpointEvent)
        outputs += engine.submit(Touch.from_event(decoded))
    outputs += engine.flush()
    measured = Counter(
        (o.journey, o.person_id, o.value)
        for o in outputs
        if o.type == "kpi" and o.name == "conversion"
    )
    meant = Counter(
        (j.journey, j.person, (j.converted_at - j.started_at) / 1000)
        for j in truth.journeys
        if j.outcome == "converted" and j.started_at is not None and j.converted_at is not None
    )
    assert measured == meant
    assert len({journey for journey, _, _ in meant}) >= 3 and len(meant) > 100
