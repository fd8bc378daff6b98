"""The live page's figures (sinks/clickhouse/live.py, read from the rollups) against the raw
tables, on a ClickHouse filled from a simulated morning run through the journey engine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from pipeline.collect import prepare_event
from pipeline.contract import TouchpointEvent
from pipeline.definitions import JourneyCatalog, load_catalog
from pipeline.engine import JourneyEngine, Output
from pipeline.scenario import DaySimulator, Incident
from pipeline.touch import Touch
from sinks.clickhouse.live import JourneyShape, live_snapshot
from sinks.clickhouse.migrations import apply_migrations
from sinks.clickhouse.rows import OUTPUT_COLUMNS, TOUCHPOINT_COLUMNS, output_row, touchpoint_row
from sinks.clickhouse.writer import ClickHouseWriter, PartitionBatch
from streams.journeys import JOURNEY_OUTPUT_TYPES
from tests.helpers import ClickHouse
from tests.live_figures import (
    HOUR,
    comparable,
    event_ms,
    morning,
    raw_figures,
    snapshot_figures,
)

pytestmark = pytest.mark.integration

DAY = datetime(2026, 11, 2, tzinfo=UTC)  # a day inside the retention of the tables below


def engine_rows(
    events: list[dict[str, Any]], catalog: JourneyCatalog | None = None
) -> tuple[dict[str, list[list[Any]]], list[Output]]:
    """The rows the sink would write for ``events`` (table → rows, each row's Kafka offset its
    index), through the collector's preparation, the journey engine and the row builders
    (``catalog``: the journeys file, default the shipped one; its segments decide touches')."""
    catalog = catalog or load_catalog()
    engine = JourneyEngine(catalog, allowed_lateness_ms=60_000)
    touch_rows: list[list[Any]] = []
    outputs: list[Output] = []
    for n, data in enumerate(events):
        received = datetime.fromisoformat(data["occurred_at"]) + timedelta(seconds=1)
        event = prepare_event(
            n,
            dict(data),
            source="test",
            allowed_channels=None,
            received_at=received,
            pii_key=b"test-key",
        )
        assert isinstance(event, TouchpointEvent), event
        touch_rows.append(
            touchpoint_row(orjson.loads(event.to_json()), "touchpoints.by_person", "t", 0, n)
        )
        outputs.extend(engine.submit(Touch.from_event(event, catalog.segment_rules)))
    outputs.extend(engine.flush())
    tables = {"touchpoints": touch_rows}
    for table, kinds in (("journey_events", True), ("experience_moments", False)):
        chosen = [o for o in outputs if (o.type in JOURNEY_OUTPUT_TYPES) is kinds]
        tables[table] = [output_row(o.as_dict(), table, "t", 0, n) for n, o in enumerate(chosen)]
    return tables, outputs


def fill(
    client: Any, db: str, events: list[dict[str, Any]], catalog: JourneyCatalog | None = None
) -> list[Output]:
    """What the workers and the sink would write, through the same engine and row builders."""
    apply_migrations(client, db, retention_days=3650)
    tables, outputs = engine_rows(events, catalog)
    writer = ClickHouseWriter(client, db)
    touch_rows = tables["touchpoints"]
    writer.write(
        "touchpoints",
        TOUCHPOINT_COLUMNS,
        PartitionBatch("touchpoints.by_person", "t", 0, list(range(len(touch_rows))), touch_rows),
    )
    for table in ("journey_events", "experience_moments"):
        rows = tables[table]
        # written twice, as after a worker's crash: every figure counts each output once
        for half in (rows[: len(rows) // 2 + 50], rows[len(rows) // 2 :]):
            writer.write(
                table,
                OUTPUT_COLUMNS,
                PartitionBatch(table, "t", 0, [r[-1] for r in half], half),
            )
    return outputs


def scalar(client: Any, sql: str) -> Any:
    return client.query(sql).result_rows[0][0]


def test_the_live_figures_equal_the_raw_tables(clickhouse: ClickHouse) -> None:
    client, db = clickhouse
    start = int(DAY.timestamp() * 1000)
    fill(client, db, morning(start))
    catalog = load_catalog()
    shapes = [JourneyShape(j.name, tuple(s.name for s in j.stages)) for j in catalog.journeys]

    live = live_snapshot(client, db, shapes, window_minutes=30, baseline_minutes=60)

    as_of = scalar(client, f"SELECT toStartOfMinute(max(occurred_at)) FROM {db}.touchpoints")
    assert live["as_of"] == as_of.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")
    truth = raw_figures(lambda sql: client.query(sql).result_rows, db, as_of, 30, 60)
    assert comparable(snapshot_figures(live), truth) == truth
    assert all(len(t["per_minute"]) == 30 for t in live["traffic"])
    assert sum(sum(t["per_minute"]) for t in live["traffic"]) == truth["totals.touchpoints"] > 500
    # every kind of figure is there and not trivially zero
    assert truth["totals.converted"] and truth["totals.dropped_off"]
    assert truth["totals.negative_moments"] and truth["totals.at_risk"]
    assert len(live["at_risk"]) == min(truth["totals.at_risk"], 20)
    # the experience KPIs are there: survey answers, resolved cases, scores, revenue
    for name in ("csat", "nps", "first_contact_resolution", "peak_end"):
        assert truth[f"kpi.{name}"] is not None and truth[f"kpi.{name}.n"] > 0, name
        assert truth[f"kpi.{name}.baseline"] is not None, name
    assert truth["kpi.revenue.EUR"] > 0
    # the outage's payments time out in the window: drop-offs above the baseline
    purchase = next(j for j in live["journeys"] if j["journey"] == "online_purchase")
    assert purchase["drop_off_rate"] > purchase["baseline_drop_off_rate"]

    lo = f"toDateTime('{as_of:%Y-%m-%d %H:%M:%S}', 'UTC') - INTERVAL 29 MINUTE"
    in_window = f"at >= {lo} AND at < {lo} + INTERVAL 30 MINUTE"
    # the feed: the newest negative moments, each once, newest first
    newest = client.query(
        f"SELECT DISTINCT output_id, at FROM {db}.experience_moments "
        f"WHERE type = 'negative_moment' AND {in_window} ORDER BY at DESC LIMIT 20"
    ).result_rows
    feed_times = [m["at"] for m in live["negative_moments"]]
    assert len(feed_times) == 20
    assert feed_times == sorted(feed_times, reverse=True)
    assert feed_times[0] == newest[0][1].replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def test_the_kpis_compare_with_the_same_window_a_week_before(clickhouse: ClickHouse) -> None:
    """Last week's morning had a normal call centre; this morning's is understaffed from
    11:00: the window's CSAT is below the same window a week before."""
    client, db = clickhouse
    start = int(DAY.timestamp() * 1000)
    week = 7 * 24 * HOUR
    before = DaySimulator(6, start - week, 6000).generate()
    understaffed = Incident("call_centre_understaffed", start + 10 * HOUR, start + 12 * HOUR)
    now = DaySimulator(5, start, 6000, [understaffed]).generate()
    fill(
        client,
        db,
        [e for e in before + now if 9 * HOUR <= (event_ms(e) - start) % week < 12 * HOUR],
    )
    shapes = [
        JourneyShape(j.name, tuple(s.name for s in j.stages)) for j in load_catalog().journeys
    ]
    live = live_snapshot(client, db, shapes, window_minutes=60, baseline_minutes=60)
    as_of = scalar(client, f"SELECT toStartOfMinute(max(occurred_at)) FROM {db}.touchpoints")
    truth = raw_figures(lambda sql: client.query(sql).result_rows, db, as_of, 60, 60)
    assert comparable(snapshot_figures(live), truth) == truth
    csat = live["kpis"]["csat"]
    assert csat["week_before"] is not None and csat["baseline"] is not None
    assert csat["value"] < csat["week_before"] - 0.2, csat  # CSAT 1-3 only: far below
    for name in ("nps", "first_contact_resolution", "peak_end"):
        assert live["kpis"][name]["week_before"] is not None, name
    assert [r["currency"] for r in live["kpis"]["revenue"]] == ["EUR"]
    assert live["kpis"]["revenue"][0]["week_before"] > 0


def test_an_empty_database_gives_an_empty_page(clickhouse: ClickHouse) -> None:
    client, db = clickhouse
    apply_migrations(client, db, retention_days=30)
    live = live_snapshot(client, db, [JourneyShape("online_purchase", ("cart",))])
    assert live["as_of"] is None and live["totals"]["touchpoints"] == 0
    assert live["kpis"]["nps"] == {"n": 0, "value": None, "baseline": None, "week_before": None}
