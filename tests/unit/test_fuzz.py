"""Fuzzing as a test: arbitrary valid contract events through the partitioned journey engine.

Hypothesis builds events that the contract accepts (every field within its bounds: identifiers
shared between customers and channels, customer ids reused as other identifiers, e-mail hashes
shared by a household, timestamps in any time zone up to the allowed clock skew, week-long
durations and waits, extreme scores, revenue with four decimals, free-form attributes), decodes
them as the ingest does, and delivers them to a cluster of ``JourneyShard``s (the in-process
Kafka model of tests/unit/test_shard.py: hand-off messages in any interleaving, arbitrary
batching, redelivered duplicates, crashes that lose everything not yet saved and rebalances,
the shard then restarting from its saved state). Properties: nothing raises, two customers are
never merged, every touch is applied, every input is committed in the end, and every journey
has one terminal outcome (a drop-off revised by a conversion is retracted: it does not count).

``make test`` runs a bounded number of examples (``JW_FUZZ_EXAMPLES``, 30 by default, about a
minute in all); ``make fuzz`` runs many more with new random draws, and the crash property,
which still finds a known open defect about once in 600 runs (its docstring).
"""

from __future__ import annotations

import json
import os
import random
import zlib
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.contract import Channel, OutcomeStatus, TouchpointEvent, decode_touchpoint
from pipeline.definitions import load_catalog
from pipeline.engine import Output
from pipeline.touch import Touch

from .test_scenario import START
from .test_shard import Cluster, committed_everything, identity_violations, play

CATALOG = load_catalog()
EXAMPLES = int(os.environ.get("JW_FUZZ_EXAMPLES", "30"))
RECEIVED = datetime.fromtimestamp(START / 1000, UTC) + timedelta(days=5)
LATENESS_MS = 60_000  # the cluster's engines (tests/unit/test_shard.py)
# Crashes per run, at most: after that many the cluster runs on without, so that a hand-off loop
# (traffic that goes on once crashes stop) is told from replays after crashes (``Cluster``)
MAX_CRASHES = 20
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _concrete(glob: str) -> str:
    """A touchpoint name that a journey pattern's glob matches."""
    name = glob.replace("*", "any").replace("?", "a")
    return ".".join(part if part[:1].isalpha() else "x" + part for part in name.split("."))


def _steps() -> list[tuple[str, str | None, tuple[str, ...]]]:
    """(touchpoint, action, channels) of every pattern of the default journeys: most fuzzed
    events start, advance or end journeys instead of matching nothing."""
    steps = []
    for journey in CATALOG.journeys:
        patterns = [p for stage in journey.stages for p in stage.match] + list(journey.goal)
        patterns += [p for moment in journey.moments_of_truth for p in moment.match]
        for pattern in patterns:
            channels = tuple(c.value for c in pattern.channel) if pattern.channel else ()
            steps.append((_concrete(pattern.touchpoint), pattern.action, channels))
    return steps


STEPS = _steps()
CHANNELS = [c.value for c in Channel]
OUTCOMES = [o.value for o in OutcomeStatus]
ZONES = [timezone(timedelta(hours=h, minutes=m)) for h, m in ((0, 0), (14, 0), (-12, 0), (5, 45))]
NAMES = st.from_regex(r"\A[a-z][a-z0-9_]{0,8}(\.[a-z][a-z0-9_]{0,8}){0,2}\Z")
SLUGS = st.from_regex(r"\A[a-z][a-z0-9_]{0,10}\Z")


@st.composite
def contract_event(draw: st.DrawFn, n: int, people: int, span_ms: int) -> dict[str, Any]:
    """One valid touchpoint event, as a client would send it (JSON-ready)."""
    # One pool of plain identifier values for every kind: a customer id may come back as a
    # device id or a loyalty number of someone else.
    pool = [f"c{i}" for i in range(people)] + ["kiosk", "tablet", "shared"]
    event: dict[str, Any] = {"event_id": f"fz-{n}"}
    kinds = draw(
        st.lists(
            st.sampled_from(["customer_id", "loyalty_id", "device_id", "anonymous_id", "email"]),
            min_size=1,
            max_size=3,
            unique=True,
        )
    )
    for kind in kinds:
        value = draw(st.sampled_from(pool))
        if kind == "email":  # a household's shared address
            event["email_hash"] = f"{zlib.crc32(value.encode()) % 7:064x}"
        else:
            event[kind] = value
    at = START + draw(st.integers(0, span_ms))
    zone = draw(st.sampled_from(ZONES))
    micros = draw(st.integers(0, 999))
    event["occurred_at"] = (
        (datetime.fromtimestamp(at / 1000, UTC) + timedelta(microseconds=micros))
        .astimezone(zone)
        .isoformat()
    )
    if draw(st.booleans()):
        touchpoint, action, channels = draw(st.sampled_from(STEPS))
        channel = draw(st.sampled_from(channels or tuple(CHANNELS)))
        action = action or draw(st.sampled_from(["view", "submit", "click"]))
    else:
        touchpoint, action, channel = draw(NAMES), draw(SLUGS), draw(st.sampled_from(CHANNELS))
    event.update(touchpoint=touchpoint, action=action, channel=channel)
    outcome = draw(st.sampled_from(OUTCOMES))
    if outcome != "ok":
        event["outcome"] = outcome
        if draw(st.booleans()):
            event["outcome_reason"] = draw(SLUGS)
    week = 7 * 24 * 3600 * 1000
    optional: dict[str, st.SearchStrategy[Any]] = {
        "session_hint": st.sampled_from(["call-1", "call-2", "visit-1"]),
        "duration_ms": st.integers(0, week),
        "wait_ms": st.integers(0, week),
        "csat": st.integers(1, 5),
        "nps": st.integers(0, 10),
        "sentiment": st.floats(-1.0, 1.0, allow_nan=False),
        "attributes": st.dictionaries(
            st.sampled_from(["issue", "plan", "note", "count"]),
            st.one_of(
                st.none(),
                st.booleans(),
                st.integers(-(2**63), 2**63 - 1),
                st.floats(-1e15, 1e15, allow_nan=False),
                st.text(max_size=20),
            ),
            max_size=3,
        ),
    }
    for name, values in optional.items():
        if draw(st.integers(0, 3)) == 0:
            event[name] = draw(values)
    if draw(st.integers(0, 4)) == 0:
        cents = draw(st.integers(-(10**17) + 1, 10**17 - 1))
        event["revenue"] = str(Decimal(cents).scaleb(-4))
        event["currency"] = draw(st.sampled_from(["EUR", "USD", "JPY"]))
    return event


@st.composite
def streams(draw: st.DrawFn) -> list[dict[str, Any]]:
    people = draw(st.integers(2, 8))
    size = draw(st.integers(5, 80))
    span_ms = draw(st.sampled_from([10 * 60_000, 6 * 3_600_000, 3 * 86_400_000]))
    return [draw(contract_event(n, people, span_ms)) for n in range(size)]


def decoded(events: list[dict[str, Any]]) -> list[Touch]:
    """As the ingest decodes them: every fuzzed event must be valid."""
    touches = []
    for event in events:
        result = decode_touchpoint(orjson.dumps(event), RECEIVED)
        assert isinstance(result, TouchpointEvent), (result, event)
        touches.append(Touch.from_event(result))
    return touches


def arrival(touches: list[Touch], rng: random.Random, duplicates: float) -> list[Touch]:
    """Each touch delayed by less than the lateness, some delivered twice."""
    delivered = touches + [t for t in touches if rng.random() < duplicates]
    delayed = sorted((t.at + rng.randrange(LATENESS_MS), n, t) for n, t in enumerate(delivered))
    return [t for _, _, t in delayed]


def terminal_outcomes(outputs: list[Output]) -> Counter[str]:
    """Terminal outcomes per journey (deduplicated by output id), a retracted drop-off not
    counted."""
    unique = {o.output_id: o for o in outputs if o.type == "journey"}
    count: Counter[str] = Counter()
    for o in unique.values():
        if o.name in ("converted", "dropped_off"):
            count[o.journey_id or ""] += 1
        elif o.name == "dropoff_retracted":
            count[o.journey_id or ""] -= 1
    return count


def check(
    events: list[dict[str, Any]],
    partitions: int,
    delivery: int,
    crash_rate: float,
    one_outcome: bool = True,
    restart_rate: float = 0.0,
    batch_ticks: bool = False,
) -> None:
    touches = decoded(events)
    rng = random.Random(delivery)
    cap = MAX_CRASHES if crash_rate or restart_rate else None
    cluster = Cluster(
        partitions,
        seed=delivery,
        crash_rate=crash_rate,
        max_crashes=cap,
        restart_rate=restart_rate,
        batch_ticks=batch_ticks,
    )
    play(cluster, arrival(touches, rng, duplicates=0.1), window_ms=rng.choice([1_000, 60_000]))
    assert identity_violations(cluster, touches) == []
    assert set(cluster.applied) == {t.event_id for t in touches}
    assert committed_everything(cluster)
    assert all(shard.held == 0 and not shard.parked for shard in cluster.shards.values())
    if one_outcome:
        several = {j: n for j, n in terminal_outcomes(cluster.outputs).items() if n > 1}
        assert several == {}, f"journeys with more than one terminal outcome: {several}"


CASES = sorted((Path(__file__).parent / "fuzz_cases").glob("*.json"))


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_the_cases_fuzzing_found_keep_every_invariant(case: Path) -> None:
    """Inputs the properties below once failed on, kept as they were found (events, partitions,
    delivery seed, and the crash rate when it was the crash variant, which does not assert one
    terminal outcome per journey: ``one_outcome``): each a defect of the identity hand-offs,
    fixed (docs/streaming-topology.md, "merge direction"). A random search may not meet them
    again; these run every time."""
    found = json.loads(case.read_text())
    crash_rate, one_outcome = found.get("crash_rate", 0.0), found.get("one_outcome", True)
    restart_rate = found.get("restart_rate", 0.0)
    events, partitions, delivery = found["events"], found["partitions"], found["delivery"]
    check(events, partitions, delivery, crash_rate, one_outcome, restart_rate)


@FUZZ
@given(events=streams(), partitions=st.integers(1, 4), delivery=st.integers(0, 10**9))
def test_valid_events_in_any_delivery_keep_every_invariant(
    events: list[dict[str, Any]], partitions: int, delivery: int
) -> None:
    check(events, partitions, delivery, crash_rate=0.0)


@FUZZ
@given(events=streams(), partitions=st.integers(2, 4), delivery=st.integers(0, 10**9))
def test_valid_events_with_rebalances_keep_every_invariant(
    events: list[dict[str, Any]], partitions: int, delivery: int
) -> None:
    """With rebalances (a partition's next owner starts from the saved state and reads again
    every input not committed, some of it finished already), every invariant above, one
    terminal outcome per journey included.

    It did not hold before the finished records (pipeline/shard.py): input finished but not
    yet committed (an earlier input held for the watermark keeps the commit back) was applied
    again after a restart, where an identifier's owner had changed since: the same touch was
    applied to two persons and its journey decided twice
    (``fuzz_cases/rebalance-replays-a-finished-touch.json``)."""
    check(events, partitions, delivery, crash_rate=0.0, restart_rate=0.05)


@FUZZ
@given(events=streams(), partitions=st.integers(2, 4), delivery=st.integers(0, 10**9))
def test_per_batch_ticks_with_crashes_and_rebalances_keep_every_invariant(
    events: list[dict[str, Any]], partitions: int, delivery: int
) -> None:
    """The worker also ticks a partition's shard just before each batch's drain, so that its
    frontier leaves with the batch's hand-off messages (streams/journeys.py ``_tell_now``, for
    the event-to-output latency: docs/streaming-topology.md): a tick where a sweep alone never
    comes, between a batch's input and its drain. With crashes and rebalances, every invariant
    above holds (1,600 runs of the properties with it before it was added here)."""
    check(events, partitions, delivery, crash_rate=0.05, restart_rate=0.02, batch_ticks=True)


@FUZZ
@given(events=streams(), partitions=st.integers(2, 4), delivery=st.integers(0, 10**9))
def test_valid_events_with_worker_crashes_keep_every_invariant(
    events: list[dict[str, Any]], partitions: int, delivery: int
) -> None:
    """With crashes (everything not saved lost: before a step's save, or after it and before
    its hand-off messages leave) and rebalances, every invariant above, one terminal outcome
    per journey included.

    Fixed: a shard sent its hand-off messages before it saved the state that decided them, so
    a crash could lose a decision that had already acted (36 of 1,500 runs before the outbox;
    ``fuzz_cases/touch-applied-to-two-persons.json``). Then a message sent again from the
    outbox after a crash was decided again where it arrived, after the identity graph had moved
    on, and its touch reached a second person (about one run in 600 before messages carried
    their identity; ``fuzz_cases/crash-sends-a-link-twice-and-decides-twice.json``)."""
    check(events, partitions, delivery, crash_rate=0.05, restart_rate=0.02)
