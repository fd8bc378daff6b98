"""Accuracy: a simulated day with every incident, through the real pipeline into ClickHouse,
against the simulator's ground truth.

About 100,000 events from ``DaySimulator`` (all four incident scenarios) go into
``touchpoints.raw`` as the collector would produce them, through two workers (ingest, identity
hand-offs, journeys) and the sink into an embedded ClickHouse (chdb), three ways (``MODES``):
paced, 1,200 times faster than their event time; all at once, as fast as the broker takes them
(a backfill); and paced with the store feed arriving 45 minutes of event time late (a
point-of-sale export). Outcomes must not depend on which. Then only ClickHouse is read:

- drop-offs ``(journey, person, stage)``, conversions ``(journey, person)`` and negative moments
  ``(journey, person, kind)`` from ``journey_events`` / ``experience_moments`` (deduplicated by
  output id), compared as multisets with the truth: precision and recall;
- identity stitching: each touchpoint's identifiers (``touchpoints``) belong to the person of
  the journey outputs that touchpoint caused (joined on ``event_id``), followed through the
  ``merged`` identity events to the final person. Pairwise F1 over identifiers: two identifiers
  put together by the pipeline and by the truth count as a true pair.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from itertools import combinations
from pathlib import Path
from typing import Any, NamedTuple

import orjson
from kafka import KafkaProducer

from pipeline.scenario import DaySimulator, GroundTruth, default_incidents
from pipeline.settings import Settings
from streams.broker import EmbeddedBroker
from streams.offsets import group_lag
from streams.topics import BY_PERSON, EXPERIENCE_MOMENTS, JOURNEY_EVENTS, RAW, ensure_topics
from tests.e2e.stack import PARTITIONS, Topology, clock_events, day_start, person_key, produce_day
from tests.helpers import free_port, query_chdb, stop_process, wait_until

PERSONAS = 27_500  # about 100,000 events
SEED = 2026
SPEED = 1_200
LATE_FEED_MS = 45 * 60_000
UNPACED = 1e12  # events per event-time second: no pacing at all


class Mode(NamedTuple):
    label: str
    speed: float
    late_channel: str | None  # the channel whose events arrive LATE_FEED_MS late


MODES = (
    Mode(f"paced ({SPEED:,}x)", SPEED, None),
    Mode("full speed (unpaced)", UNPACED, None),
    Mode(f"paced, store feed {LATE_FEED_MS // 60_000} min late", SPEED, "store"),
)
IDENTIFIERS = ("customer_id", "loyalty_id", "email_hash", "phone_hash", "device_id", "anonymous_id")


def _arrival_order(events: list[dict[str, Any]], late_channel: str | None) -> list[dict[str, Any]]:
    """The events in the order they reach the collector: by event time, the late channel's
    ``LATE_FEED_MS`` after it (a stable sort: each source keeps its own order)."""
    if late_channel is None:
        return events

    def arrives(event: dict[str, Any]) -> float:
        at = datetime.fromisoformat(event["occurred_at"]).timestamp() * 1000
        return at + (LATE_FEED_MS if event["channel"] == late_channel else 0)

    return sorted(events, key=arrives)


def _run_pipeline(tmp: Path, events: list[dict[str, Any]], speed: float) -> Path:
    with EmbeddedBroker(free_port(), tmp / "broker.log") as broker:
        ensure_topics(Settings(broker_url=broker.url, partitions=PARTITIONS))
        # the default lateness (0.5 s), as a user runs it: watermark alignment keeps unpaced
        # input in order, and a late feed's touchpoints revise what they change
        lateness = Settings.model_fields["allowed_lateness_s"].default
        topology = Topology(broker, tmp, allowed_lateness_s=lateness)
        try:
            topology.start_sink()
            topology.start(0)
            topology.start(1)
            wait_until(topology.balanced, 120, "two workers sharing the partitions", 0.5)
            produce_day(broker.url, events, speed, _progress(len(events)))
            wait_until(topology.drained, 600, "every touchpoint and hand-off processed", 1.0)
            producer = KafkaProducer(bootstrap_servers=broker.url)
            for event in clock_events(int(time.time() * 1000) - 60_000):
                producer.send(RAW, orjson.dumps(event), key=person_key(event))
            producer.close()
            wait_until(topology.drained, 600, "the clock events processed", 1.0)
            topics = [BY_PERSON, JOURNEY_EVENTS, EXPERIENCE_MOMENTS]
            wait_until(
                lambda: group_lag(broker.url, "journeywatch-sink", topics) == 0,
                600,
                "the sink to write everything",
                1.0,
            )
        finally:
            topology.stop()
            assert topology.sink is not None
            stop_process(topology.sink)
    return topology.chdb


def _progress(total: int) -> Any:
    marks = iter(range(10, 101, 10))
    state = {"next": next(marks)}

    def report(done: float) -> None:
        if done * 100 >= state["next"]:
            print(f"  replayed {state['next']}% of {total:,} events", flush=True)
            state["next"] = next(marks, 101)

    return report


def _scores(found: Counter[Any], truth: Counter[Any]) -> tuple[float, float, int, int]:
    hits = sum((found & truth).values())
    precision = hits / max(1, sum(found.values()))
    recall = hits / max(1, sum(truth.values()))
    return precision, recall, sum(found.values()), sum(truth.values())


def _follow(moves: dict[str, str], key: str) -> str:
    """Where ``key`` ended up through a chain of moves (person or journey merges)."""
    seen = set()
    while key in moves and key not in seen:
        seen.add(key)
        key = moves[key]
    return key


def _pairs(clusters: Iterable[set[str]]) -> set[tuple[str, str]]:
    return {tuple(sorted(p)) for c in clusters for p in combinations(c, 2)}  # type: ignore[misc]


def _identity_f1(chdb: Path, truth: GroundTruth) -> tuple[float, float, float, int]:
    merged = query_chdb(
        chdb,
        "SELECT JSONExtractString(detail, 'from_person'), person_id "
        "FROM journeywatch.journey_events FINAL "
        "WHERE type = 'identity' AND name = 'merged'",
    )
    moved = {source: target for source, target in merged}

    rows = query_chdb(
        chdb,
        "SELECT o.person_id, t.customer_id, t.loyalty_id, t.email_hash, t.phone_hash, "
        "t.device_id, t.anonymous_id "
        "FROM (SELECT DISTINCT event_id, person_id FROM journeywatch.journey_events FINAL "
        "      WHERE event_id != '' AND type = 'journey') AS o "
        "INNER JOIN journeywatch.touchpoints AS t ON t.event_id = o.event_id",
    )
    found_person: dict[str, str] = {}
    for person, *values in rows:
        for name, value in zip(IDENTIFIERS, values, strict=True):
            if value:
                found_person.setdefault(f"{name}:{value}", _follow(moved, person))
    true_person = {identifier: person for identifier, person in truth.identity_links}
    for identifier in found_person:
        if identifier.startswith("customer_id:"):
            true_person.setdefault(identifier, "c:" + identifier.split(":", 1)[1])
    universe = set(found_person)

    def clusters(assign: dict[str, str]) -> list[set[str]]:
        groups: dict[str, set[str]] = {}
        for identifier in universe:
            groups.setdefault(assign.get(identifier, identifier), set()).add(identifier)
        return list(groups.values())

    found_pairs, true_pairs = _pairs(clusters(found_person)), _pairs(clusters(true_person))
    hits = len(found_pairs & true_pairs)
    precision = hits / max(1, len(found_pairs))
    recall = hits / max(1, len(true_pairs))
    f1 = 2 * precision * recall / max(1e-9, precision + recall)
    return precision, recall, f1, len(true_pairs)


def _found(chdb: Path) -> tuple[Counter[Any], Counter[Any], Counter[Any]]:
    outcomes = query_chdb(
        chdb,
        "SELECT journey_id, name, journey, person_id, stage FROM journeywatch.journey_events FINAL "
        "WHERE type = 'journey' AND name IN ('converted', 'dropped_off')",
    )
    dropped: Counter[Any] = Counter()
    converted: Counter[Any] = Counter()
    owner: dict[str, tuple[str, str]] = {}
    for journey_id, name, journey, person, stage in outcomes:
        owner[journey_id] = (journey, person)
        if name == "dropped_off":
            dropped[(journey, person, stage)] += 1
        else:
            converted[(journey, person)] += 1
    moments = query_chdb(
        chdb,
        "SELECT journey_id, journey, name FROM journeywatch.experience_moments FINAL "
        "WHERE type = 'negative_moment' AND journey_id != ''",
    )
    # a journey absorbed by another when two persons merged: its moments are the survivor's
    absorbed = dict(
        query_chdb(
            chdb,
            "SELECT journey_id, JSONExtractString(detail, 'into_journey_id') "
            "FROM journeywatch.journey_events FINAL WHERE type = 'journey' AND name = 'merged'",
        )
    )

    negative: Counter[Any] = Counter(
        (*owner.get(_follow(absorbed, journey_id), (journey, "?")), kind)
        for journey_id, journey, kind in moments
    )
    return dropped, converted, negative


def _truth(truth: GroundTruth) -> tuple[Counter[Any], Counter[Any], Counter[Any]]:
    dropped: Counter[Any] = Counter()
    converted: Counter[Any] = Counter()
    negative: Counter[Any] = Counter()
    for j in truth.journeys:
        if j.outcome == "dropped_off":
            dropped[(j.journey, j.person, j.stage)] += 1
        else:
            converted[(j.journey, j.person)] += 1
        for kind in j.negative_moments:
            negative[(j.journey, j.person, kind)] += 1
    return dropped, converted, negative


def _two_outcomes(chdb: Path) -> int:
    """Journeys with more than one terminal outcome in ``journey_events`` (must be none)."""
    rows = query_chdb(
        chdb,
        "SELECT count() FROM (SELECT journey_id FROM journeywatch.journey_events FINAL "
        "WHERE type = 'journey' AND name IN ('converted', 'dropped_off') "
        "GROUP BY journey_id HAVING count() > 1)",
    )
    return int(rows[0][0])


def _measure(root: Path, mode: Mode, events: list[dict[str, Any]], truth: GroundTruth) -> str:
    print(f"accuracy: {mode.label}", flush=True)
    began = time.perf_counter()
    chdb = _run_pipeline(root, _arrival_order(events, mode.late_channel), mode.speed)
    elapsed = time.perf_counter() - began
    found = _found(chdb)
    precision, recall, f1, pairs = _identity_f1(chdb, truth)
    twice = _two_outcomes(chdb)
    rows = []
    for label, f, t in zip(
        ("drop-offs", "conversions", "negative moments"), found, _truth(truth), strict=True
    ):
        p, r, n_found, n_truth = _scores(f, t)
        rows.append(f"| {mode.label} | {label} | {n_truth:,} | {n_found:,} | {p:.4f} | {r:.4f} |")
    rows.append(
        f"| {mode.label} | identity stitching (pairs of identifiers; F1 {f1:.4f}) | {pairs:,} "
        f"| | {precision:.4f} | {recall:.4f} |"
    )
    rows.append(f"| {mode.label} | journeys with two terminal outcomes | 0 | {twice:,} | | |")
    rows.append(f"| {mode.label} | wall-clock time | | {elapsed:.0f} s | | |")
    return "\n".join(rows)


def run() -> str:
    start = day_start()
    simulator = DaySimulator(SEED, start, PERSONAS, default_incidents(start))
    events = simulator.generate()
    keep = os.environ.get("JW_BENCH_KEEP")  # a directory to keep, to look into afterwards
    rows = []
    for n, mode in enumerate(MODES):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(keep or tmp) / f"mode-{n}"
            root.mkdir(parents=True, exist_ok=True)
            rows.append(_measure(root, mode, events, simulator.truth))
    return (
        "## Accuracy: a simulated day against its ground truth\n\n"
        "Command: `make bench` (suite `benchmarks/accuracy.py`): a `DaySimulator` day "
        f"(seed {SEED}, {PERSONAS:,} personas, {len(events):,} events, all four incident "
        "scenarios) produced to `touchpoints.raw` as the collector keys it, through two workers "
        "and the sink into chdb, with the default settings (0.5 s lateness), three ways: paced "
        f"{SPEED:,} times faster than event time; all at once as fast as the broker takes it; "
        f"paced with the store feed {LATE_FEED_MS // 60_000} minutes of event time late. Then "
        "only ClickHouse is read. Outcomes and moments compare as multisets keyed by journey "
        "and final person; identity as pairs of identifiers that end up with one person "
        "(through the `merged` identity events). Target: precision and recall ≥ 0.999 in "
        "every mode (identity F1 ≥ 0.98), no journey with two terminal outcomes.\n\n"
        "| mode | what | truth | found | precision | recall |\n"
        "| --- | --- | ---: | ---: | ---: | ---: |\n" + "\n".join(rows) + "\n"
    )


if __name__ == "__main__":
    print(run())
