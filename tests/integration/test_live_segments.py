"""The live figures of each segment (docs/segments.md) on a ClickHouse filled from a simulated
morning run through the journey engine with a journeys file naming segments: a journey is in one
segment, so the segments' figures add up to the unfiltered page's, stage by stage; and the gold
segment's equal what the engine emitted for it."""

from __future__ import annotations

import zlib
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import pytest

from pipeline.definitions import load_catalog, parse_catalog
from sinks.clickhouse.live import JourneyShape, live_snapshot
from sinks.clickhouse.migrations import apply_migrations
from tests.helpers import ClickHouse
from tests.integration.test_live_figures import DAY, fill
from tests.integration.test_one_outcome import scenario, write
from tests.live_figures import morning
from tests.unit.journeys import T0, H

pytestmark = pytest.mark.integration

SEGMENTS = """
segments:
  - name: gold
    match: {attributes: {tier: gold}}
  - name: eu
    match: {attributes: {region: EU}}
"""
NAMES = ("gold", "eu", "other")


def with_attributes(event: dict[str, Any]) -> dict[str, Any]:
    """A third of the identified customers are gold, another third in the EU, on every event that
    names them (anonymous events carry no attribute: their journeys are in other)."""
    customer = event.get("customer_id")
    if not customer:
        return event
    bucket = zlib.crc32(customer.encode()) % 3
    attributes = dict(event.get("attributes") or {})
    if bucket == 0:
        attributes["tier"] = "gold"
    elif bucket == 1:
        attributes["region"] = "EU"
    return {**event, "attributes": attributes}


def counts(body: dict[str, Any]) -> dict[tuple[str, str, str], int]:
    found = {}
    for journey in body["journeys"]:
        for key in ("started", "converted", "dropped_off"):
            found[(journey["journey"], "", key)] = journey[key]
        for stage in journey["stages"]:
            for key in ("entered", "dropped_off", "converted"):
                found[(journey["journey"], stage["stage"], key)] = stage[key]
    for key, value in body["totals"].items():
        if key != "touchpoints":
            found[("totals", "", key)] = value
    for name in ("csat", "nps", "peak_end"):
        found[("kpis", name, "n")] = body["kpis"][name]["n"]
    return found


def test_the_segments_figures_add_up_to_every_journeys(clickhouse: ClickHouse) -> None:
    client, db = clickhouse
    start = int(DAY.timestamp() * 1000)
    defaults = resources.files("pipeline").joinpath("defaults/journeys.yaml").read_text()
    catalog = parse_catalog(defaults + SEGMENTS, "journeys.yaml")
    outputs = fill(client, db, [with_attributes(e) for e in morning(start)], catalog)
    shapes = [JourneyShape(j.name, tuple(s.name for s in j.stages)) for j in catalog.journeys]

    every = live_snapshot(client, db, shapes, window_minutes=30, baseline_minutes=60)
    each = {s: live_snapshot(client, db, shapes, 30, 60, segment=s) for s in NAMES}
    whole = counts(every)
    added = {key: sum(counts(each[s])[key] for s in NAMES) for key in whole}
    assert added == whole
    assert all(each[s]["segment"] == s for s in NAMES) and every["segment"] is None
    assert each["gold"]["totals"]["started"] > 10 and each["eu"]["totals"]["started"] > 10
    assert each["gold"]["traffic"] == every["traffic"]  # the whole stream's
    assert all(r["per_100_touchpoints"] is None for r in each["gold"]["negative_moment_rates"])

    # the gold journeys' starts and drop-offs in the window, from the engine's outputs
    low = datetime.fromisoformat(every["minutes"][0].replace("Z", "+00:00"))
    high = datetime.fromisoformat(every["as_of"].replace("Z", "+00:00")) + timedelta(minutes=1)

    def gold(name: str) -> int:
        return len(
            {
                o.journey_id
                for o in outputs
                if o.type == "journey"
                and o.name == name
                and dict(o.detail).get("segment") == "gold"
                and low <= datetime.fromtimestamp(o.at / 1000, UTC) < high
            }
        )

    retracted = gold("dropoff_retracted")
    assert each["gold"]["totals"]["started"] == gold("started")
    assert each["gold"]["totals"]["dropped_off"] == gold("dropped_off") - retracted


def test_a_retracted_drop_off_leaves_a_segment_once(clickhouse: ClickHouse) -> None:
    """The sink deletes a retracted drop-off's row from journey_events (sinks/clickhouse/
    writer.py) while the rollups keep it and net the retraction out: a segment's figures, read
    from the raw rows, must not subtract the retraction a second time. The scenario of
    tests/integration/test_one_outcome.py (three drop-offs, one then converted by a late
    touchpoint and retracted) in a file without segments: the segment other holds every
    journey, so its figures are the unfiltered page's."""
    client, db = clickhouse
    apply_migrations(client, db, retention_days=3650)
    outputs = scenario()
    assert sum(1 for o in outputs if o.name == "dropoff_retracted") == 1
    write(client, db, outputs)
    newest = datetime.fromtimestamp((T0 + 3 * H) / 1000, UTC).replace(second=0, microsecond=0)
    client.insert(
        f"{db}.touchpoint_rollup_1m",
        [[newest, "web", "checkout.payment", "", 1]],
        column_names=["minute", "channel", "touchpoint", "outcome", "events"],
    )
    shapes = [
        JourneyShape(j.name, tuple(s.name for s in j.stages)) for j in load_catalog().journeys
    ]
    every = live_snapshot(client, db, shapes, window_minutes=300, baseline_minutes=60)
    other = live_snapshot(client, db, shapes, 300, 60, segment="other")
    assert every["totals"]["dropped_off"] == 2  # three reported, one retracted
    assert counts(other) == counts(every)
    assert other["drop_offs_per_minute"] == every["drop_offs_per_minute"]


def test_a_segment_the_file_no_longer_names_is_in_other(clickhouse: ClickHouse) -> None:
    """Journeys that started under an earlier journeys file keep its segment's name (in flight
    when the file was edited: docs/segments.md); the workers' metrics count a name their file
    lacks as other, so the live page and the journey map must too, or the segments' figures no
    longer add up to every journey's. Written under a file naming gold and eu_old, read under
    one naming gold and eu."""
    from sinks.clickhouse.journey_map import load_journey_map

    client, db = clickhouse
    start = int(DAY.timestamp() * 1000)
    defaults = resources.files("pipeline").joinpath("defaults/journeys.yaml").read_text()
    before = parse_catalog(defaults + SEGMENTS.replace("name: eu", "name: eu_old"), "j.yaml")
    fill(client, db, [with_attributes(e) for e in morning(start)], before)
    now = load_catalog()  # (the shapes; the file read is defaults + SEGMENTS)
    named = ("gold", "eu")
    shapes = [JourneyShape(j.name, tuple(s.name for s in j.stages)) for j in now.journeys]
    every = live_snapshot(client, db, shapes, window_minutes=30, baseline_minutes=60)
    each = {
        s: live_snapshot(client, db, shapes, 30, 60, segment=s, named_segments=named) for s in NAMES
    }
    assert each["eu"]["totals"]["started"] == 0  # nothing started under the new name yet
    whole = counts(every)
    assert {key: sum(counts(each[s])[key] for s in NAMES) for key in whole} == whole

    journey = now.journeys[0]
    stages = tuple(s.name for s in journey.stages)
    low, high = DAY, DAY + timedelta(days=1)

    def started(segment: str | None) -> int:
        return load_journey_map(
            client,
            db,
            journey.name,
            stages,
            low,
            high,
            segment=segment,
            named_segments=(*named, "other"),
        ).started

    assert started(None) > 0
    assert sum(started(s) for s in NAMES) == started(None)
